"""IPv4 + TCP parsing and building for the per-packet path (``struct`` only).

Parsing is strict and never raises: a frame that is truncated, has bad lengths, a bad
checksum, is a fragment, or carries an impossible flag combination is dropped and the
reason counted in :class:`ParseStats`. scapy is used by the tests to check this module,
never here.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field

from middlebox.tcp import options as tcpopt
from middlebox.tcp.checksum import checksum, ones_sum, pseudo_header_sum, verify
from middlebox.tcp.constants import ACK, FIN, IPPROTO_TCP, OPT_NOP, OPT_TIMESTAMP, RST, SYN
from middlebox.tcp.options import Options

_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
_TS_ONLY = struct.Struct("!BBBBII")

CSUM_FULL = "full"  # compute the TCP checksum in Python
CSUM_PARTIAL = "partial"  # leave the pseudo-header sum for the kernel/NIC (vnet offload)


@dataclass(slots=True)
class Segment:
    """One TCP segment with its IPv4 addresses; ``payload`` may be a memoryview.

    ``gso_size`` is set on outgoing segments larger than one MSS: the shell asks the
    kernel to cut them (PACKET_VNET_HDR + GSO).
    """

    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes | memoryview = b""
    opts: Options = field(default_factory=Options)
    gso_size: int = 0
    raw_options: bytes = b""

    @property
    def key(self) -> tuple[bytes, int, bytes, int]:
        """(client address, client port, server address, server port) for incoming segments."""
        return (self.src, self.sport, self.dst, self.dport)

    def seg_len(self) -> int:
        """Sequence space the segment occupies (payload plus SYN and FIN)."""
        return len(self.payload) + (self.flags & SYN and 1) + (self.flags & FIN and 1)


@dataclass(slots=True)
class ParseStats:
    """Accepted frames and dropped ones by reason."""

    accepted: int = 0
    dropped: Counter = field(default_factory=Counter)

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())


def parse_ipv4(
    buf: bytes | bytearray | memoryview,
    offset: int = 0,
    stats: ParseStats | None = None,
    verify_tcp_checksum: bool = True,
) -> Segment | None:
    """Parse the IPv4/TCP packet starting at ``offset``; None (counted) when invalid.

    ``verify_tcp_checksum`` is False when the kernel says the checksum was verified or
    is still to be computed (a locally generated GRO/TSO segment; see PACKET_AUXDATA).
    The payload is a memoryview into ``buf`` (no copy); the caller must copy before
    reusing the buffer.
    """
    st = stats if stats is not None else _SINK
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    avail = len(mv) - offset
    if avail < 20:
        st.drop("truncated_ip")
        return None
    vihl, _tos, tot_len, _ident, frag, _ttl, proto, _csum, src, dst = _IP.unpack_from(mv, offset)
    if vihl >> 4 != 4:
        st.drop("not_ipv4")
        return None
    ihl = (vihl & 0x0F) * 4
    if ihl < 20 or tot_len < ihl or tot_len > avail:
        st.drop("bad_ip_length")
        return None
    if proto != IPPROTO_TCP:
        st.drop("not_tcp")
        return None
    if frag & 0x3FFF:
        st.drop("fragment")
        return None
    if not verify(mv[offset : offset + ihl]):
        st.drop("bad_ip_checksum")
        return None
    t = offset + ihl
    tcp_len = tot_len - ihl
    if tcp_len < 20:
        st.drop("truncated_tcp")
        return None
    sport, dport, seq, ack, doff, flags, window, _tcsum, _urg = _TCP.unpack_from(mv, t)
    hlen = (doff >> 4) * 4
    if hlen < 20 or hlen > tcp_len:
        st.drop("bad_tcp_length")
        return None
    if verify_tcp_checksum and not verify(
        mv[t : t + tcp_len], pseudo_header_sum(src, dst, IPPROTO_TCP, tcp_len)
    ):
        st.drop("bad_tcp_checksum")
        return None
    if (
        (flags & SYN and flags & (FIN | RST))
        or not flags & (SYN | RST | ACK)
        or (flags & FIN and not flags & ACK)
        or sport == 0
        or dport == 0
    ):
        st.drop("bad_flags")
        return None
    if hlen == 20:
        opts = tcpopt.EMPTY if not flags & SYN else Options()
    elif hlen == 32 and mv[t + 20] == OPT_NOP and mv[t + 22] == OPT_TIMESTAMP:
        _n, _n2, _k, ln, tsval, tsecr = _TS_ONLY.unpack_from(mv, t + 20)
        if ln != 10 or mv[t + 21] != OPT_NOP:
            opts = _parse_options(mv[t + 20 : t + hlen], st)
        else:
            opts = Options(tsval=tsval, tsecr=tsecr)
    else:
        opts = _parse_options(mv[t + 20 : t + hlen], st)
    if opts is None:
        return None
    st.accepted += 1
    return Segment(
        src, dst, sport, dport, seq, ack, flags, window, mv[t + hlen : t + tcp_len], opts
    )


def _parse_options(data: memoryview, st: ParseStats) -> Options | None:
    try:
        return tcpopt.parse(data)
    except tcpopt.OptionError:
        st.drop("bad_option")
        return None


_SINK = ParseStats()


def tcp_header(seg: Segment, tcp_len: int, csum_mode: str) -> bytes:
    """The TCP header with options and a checksum for ``seg`` (payload not included)."""
    opt = seg.raw_options
    hlen = 20 + len(opt)
    hdr = _TCP.pack(
        seg.sport, seg.dport, seg.seq, seg.ack, (hlen // 4) << 4, seg.flags, seg.window, 0, 0
    )
    hdr += opt
    psum = pseudo_header_sum(seg.src, seg.dst, IPPROTO_TCP, tcp_len)
    if csum_mode == CSUM_PARTIAL:
        c = psum or 0xFFFF
    else:  # the header is word aligned, so header and payload sums simply add
        c = checksum(seg.payload, (ones_sum(hdr) + psum) % 65535)
    return hdr[:16] + c.to_bytes(2, "big") + hdr[18:]


def ip_header(
    src: bytes, dst: bytes, total_len: int, ident: int = 0, ttl: int = 64, proto: int = IPPROTO_TCP
) -> bytes:
    """A 20-byte IPv4 header with DF set and its checksum (TCP's unless ``proto``)."""
    hdr = _IP.pack(0x45, 0, total_len, ident, 0x4000, ttl, proto, 0, src, dst)
    c = checksum(hdr)
    return hdr[:10] + c.to_bytes(2, "big") + hdr[12:]


def build_ipv4(seg: Segment, csum_mode: str = CSUM_FULL, ident: int = 0) -> bytes:
    """IPv4 header + TCP header + payload of an outgoing segment.

    With ``CSUM_PARTIAL`` the TCP checksum field holds the pseudo-header sum and the
    kernel (or NIC) finishes it: PACKET_VNET_HDR with NEEDS_CSUM.
    """
    tcp_len = 20 + len(seg.raw_options) + len(seg.payload)
    return (
        ip_header(seg.src, seg.dst, 20 + tcp_len, ident)
        + tcp_header(seg, tcp_len, csum_mode)
        + bytes(seg.payload)
    )
