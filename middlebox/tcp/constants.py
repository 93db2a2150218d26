"""Protocol constants of the user-space TCP endpoint (not operator settings).

Operator-tunable values (MTU, buffer sizes, timeouts) are the endpoint's parameters
(:mod:`middlebox.tcp.params`, set from the ``[tcp]`` section of the configuration);
these are the numbers RFC 9293, 6298, 7323 and 2018 fix.
"""

from __future__ import annotations

# TCP header flags.
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

# Option kinds.
OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERM = 4
OPT_SACK = 5
OPT_TIMESTAMP = 8

IPPROTO_TCP = 6
IPV4_HEADER = 20
TCP_HEADER = 20
ETH_HEADER = 14
ETH_P_IP = 0x0800

SEQ_MOD = 1 << 32
SEQ_MASK = SEQ_MOD - 1
SEQ_HALF = 1 << 31

DEFAULT_MSS = 536  # RFC 9293 3.7.1: when the peer sends no MSS option
MAX_WSCALE = 14  # RFC 7323 2.3
MAX_WINDOW_FIELD = 0xFFFF
MAX_SACK_BLOCKS = 4
DUPACK_THRESHOLD = 3  # RFC 5681 3.2
INITIAL_WINDOW_SEGMENTS = 10  # RFC 6928
TIMESTAMP_OPTION_LEN = 12  # NOP NOP TS(10) as carried on every segment
RTO_INITIAL = 1.0  # RFC 6298 2.1
RTO_MAX = 60.0  # RFC 6298 2.5 allows a maximum of at least 60 s
RTO_G = 0.001  # clock granularity used in RTO = SRTT + max(G, 4*RTTVAR)
MAX_GSO_PAYLOAD = 65535 - IPV4_HEADER - TCP_HEADER - 40
HANDSHAKE_TIMEOUT = 75.0  # connection-establishment limit (RFC 1122 4.2.3.5, BSD's 75 s)
