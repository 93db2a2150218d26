"""Carrier paths.

Kernel TCP sockets pinned to a carrier, the non-blocking TLS shell, certificates.
"""
