"""The cloud node.

Accepts gateways' paths, relays connections to the real servers, destination policy.
"""
