"""The knobs of the user-space TCP endpoint, as the core takes them.

The core owns this record and its defaults; the operator's ``[tcp]`` section of the
configuration (``TcpConfig``, with the documentation and the limits of each knob, and
defaults taken from here) maps onto it with ``TcpConfig.params()``, so the core never
imports the application's configuration. The
numbers the RFCs fix are in :mod:`middlebox.tcp.constants`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TcpParams:
    mtu: int = 1500  # of the passenger LAN: the MSS sent and accepted is at most MTU - 40
    window_scale: int = 9  # announced to clients that offer scaling (RFC 7323)
    sack: bool = True  # offer selective acknowledgements (RFC 2018)
    timestamps: bool = True  # use timestamps (RFC 7323) with clients that offer them
    delayed_ack: float = 0.04  # seconds an ACK may wait for a second segment
    rto_min: float = 0.2  # bounds of the retransmission timeout, seconds
    rto_max: float = 60.0
    max_retransmits: int = 12  # of one segment before the connection is reset
    initial_cwnd: int = 10  # segments
    idle_timeout: float = 7440.0  # seconds without a segment from the client: reset
    time_wait: float = 10.0  # seconds a connection closed first by the endpoint waits
    max_connections: int = 65536  # at once; SYNs beyond it are refused with RST
    max_connections_per_source: int = 2048  # of one client address; beyond: RST
    max_half_open: int = 1024  # connections in SYN-RECEIVED at once; beyond: SYN cookies
    max_half_open_per_source: int = 64  # of one client address; beyond: SYN cookies
    syn_cookies: bool = True  # beyond the half-open limits: cookies (True) or drop SYNs
    rst_rate: int = 1000  # RSTs per second to segments of no connection; beyond: dropped
    ofo_memory: int = 5 << 20  # out-of-order bytes one connection may hold, with overhead
    gso: bool = True  # hand segments of up to 64 KiB to the kernel to cut
