"""The vehicle gateway.

Listener namespace, capture shell, flow table, uplink to the node, the process.
"""
