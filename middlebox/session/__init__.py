"""The session between a gateway and the node.

Wire codec, connections over paths (the mux), the scheduler adapter.
"""
