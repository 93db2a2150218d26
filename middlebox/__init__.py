"""The data path: capture, flow table, user-space TCP, wire codec, paths, processes, CLI."""

__version__ = "0.1.0"
