"""UDP carried as DATAGRAM messages: the sans-I/O core both ends share.

What a DATAGRAM carries (docs/PROTOCOL.md): ``flow id`` names one UDP flow (a 5-tuple),
chosen by the gateway, unique within the session; ``seq`` counts that flow's datagrams
in one direction from 0; the payload is the IPv4 packet (IPv4 header, UDP header,
data) as the receiving side is to deliver it: the client's packet toward the server
upward, a packet from the server's address and port to the client's downward.

* :func:`parse_udp4` checks one IPv4/UDP packet and returns a :class:`Udp4` or the
  name of the reason it is dropped (counted by the caller): truncated, not IPv4, a
  fragment, a length that disagrees, a bad checksum, port 0.
* :func:`build_udp4` makes the IPv4/UDP packet toward the client (the gateway) or the
  one the node relays downward.
* :class:`ReplayWindow` is the receiver's de-duplication per flow and direction: a
  sliding bitmap of the last ``size`` sequence numbers (as IPsec's anti-replay window,
  RFC 4303 3.4.3). A datagram is delivered at once when its sequence is new and not
  older than the window; a copy is counted and dropped. Nothing waits for a missing
  sequence: UDP applications handle loss and order themselves, and holding the
  packets behind a lost one would only add delay.
* :class:`FlowTable` holds the flows of one side: per flow an id, the next sequence to
  send, the receive window, a rate meter, an idle deadline (``short_timeout`` while the
  flow has sent at most one datagram toward its server, as a DNS lookup does, else
  ``idle_timeout``); caps on all flows and per source; expiry driven by ``now``.
"""

from __future__ import annotations

import heapq
import socket
import struct
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from middlebox.config import UdpConfig
from middlebox.session.wire import Datagram
from middlebox.tcp.checksum import checksum, pseudo_header_sum, verify
from middlebox.tcp.packet import ip_header
from scheduler.datagrams import FlowClassifier

IPPROTO_UDP = socket.IPPROTO_UDP
IP4_HEADER = 20
UDP_HEADER = 8
UDP4_OVERHEAD = IP4_HEADER + UDP_HEADER
MAX_UDP_PAYLOAD = 65507  # IPv4: 65535 - 20 - 8

_IP = struct.Struct("!BBHHHBBH4s4s")  # as parsed; built by the TCP codec's ip_header
_UDP = struct.Struct("!HHHH")


@dataclass(frozen=True, slots=True)
class Udp4:
    """One parsed IPv4/UDP packet; ``payload`` is the UDP data."""

    src: bytes
    sport: int
    dst: bytes
    dport: int
    payload: bytes

    @property
    def key(self) -> tuple[bytes, int, bytes, int]:
        return (self.src, self.sport, self.dst, self.dport)


def parse_udp4(buf: bytes | bytearray | memoryview, check: bool = True) -> Udp4 | str:
    """Parse ``buf`` (an IPv4 packet, possibly followed by link padding); the reason
    text when it is to be dropped. ``check``: verify the UDP checksum (False when the
    kernel says it did, or a local sender left it to offload)."""
    n = len(buf)
    if n < UDP4_OVERHEAD:
        return "truncated"
    vihl, _tos, total, _ident, frag, _ttl, proto, _csum, src, dst = _IP.unpack_from(buf, 0)
    if vihl >> 4 != 4:
        return "not_ipv4"
    ihl = (vihl & 15) * 4
    if ihl < IP4_HEADER or total < ihl + UDP_HEADER or total > n:
        return "bad_length"
    if proto != IPPROTO_UDP:
        return "not_udp"
    if frag & 0x3FFF:  # more fragments, or an offset: reassembly is not done here
        return "fragment"
    sport, dport, ulen, csum = _UDP.unpack_from(buf, ihl)
    if ulen < UDP_HEADER or ulen != total - ihl:
        return "bad_length"
    if sport == 0 or dport == 0:
        return "bad_port"
    if (
        check
        and csum
        and not verify(buf[ihl:total], pseudo_header_sum(src, dst, IPPROTO_UDP, ulen))
    ):
        return "bad_checksum"
    return Udp4(src, sport, dst, dport, bytes(buf[ihl + UDP_HEADER : total]))


def build_udp4(
    src: bytes,
    sport: int,
    dst: bytes,
    dport: int,
    payload: bytes | bytearray | memoryview,
    ident: int = 0,
    udp_checksum: bool = True,
    ttl: int = 64,
) -> bytes:
    """An IPv4/UDP packet; without ``udp_checksum`` the UDP checksum field holds the
    pseudo-header sum for a NIC (or the kernel) to complete (checksum offload)."""
    ulen = UDP_HEADER + len(payload)
    total = IP4_HEADER + ulen
    ip = ip_header(src, dst, total, ident & 0xFFFF, ttl, IPPROTO_UDP)
    pseudo = pseudo_header_sum(src, dst, IPPROTO_UDP, ulen)
    head = bytearray(_UDP.pack(sport, dport, ulen, 0))
    if udp_checksum:
        c = checksum(bytes(head) + bytes(payload), pseudo) or 0xFFFF  # 0 means "none"
    else:
        c = pseudo or 0xFFFF
    struct.pack_into("!H", head, 6, c)
    return ip + bytes(head) + bytes(payload)


class ReplayWindow:
    """De-duplication of one flow's sequence numbers in one direction (module text)."""

    __slots__ = ("size", "top", "mask")

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.top = -1  # highest sequence seen
        self.mask = 0  # bit i: sequence top - i seen

    def accept(self, seq: int) -> str | None:
        """None when ``seq`` is new (deliver it); else ``duplicate`` or ``stale``."""
        top = self.top
        if seq > top:
            shift = seq - top
            if shift < self.size:
                self.mask = ((self.mask << shift) | 1) & ((1 << self.size) - 1)
            else:
                self.mask = 1
            self.top = seq
            return None
        back = top - seq
        if back >= self.size:
            return "stale"
        bit = 1 << back
        if self.mask & bit:
            return "duplicate"
        self.mask |= bit
        return None


class RateMeter:
    """Bytes per second over the last whole second (0 before one has passed)."""

    __slots__ = ("second", "count", "rate")

    def __init__(self) -> None:
        self.second = -1
        self.count = 0
        self.rate = 0.0

    def add(self, n: int, now: float) -> float:
        """Count ``n`` bytes at ``now``; the rate to classify by: the last whole second,
        or this one's bytes so far when they are already more."""
        s = int(now)
        if s != self.second:
            self.rate = float(self.count) if s == self.second + 1 else 0.0
            self.second, self.count = s, 0
        self.count += n
        return max(self.rate, float(self.count))


class Flow:
    """One UDP flow as one side sees it (slotted: touched per packet)."""

    __slots__ = ("flow_id", "key", "source", "port", "created", "last_seen", "tx_seq",
                 "window", "meter", "packets_in", "packets_out", "bytes_in", "bytes_out",
                 "data")  # fmt: skip

    def __init__(self, flow_id: int, key: Hashable, source: object, port: int, now: float,
                 window: int) -> None:  # fmt: skip
        self.flow_id = flow_id
        self.key = key
        self.source = source
        self.port = port  # the server's port: the class rule reads it
        self.created = now
        self.last_seen = now
        self.tx_seq = 0
        self.window = ReplayWindow(window)
        self.meter = RateMeter()
        self.packets_in = self.packets_out = self.bytes_in = self.bytes_out = 0
        self.data: object = None  # the shell's (the node's socket)

    def next_seq(self) -> int:
        s = self.tx_seq
        self.tx_seq = s + 1
        return s


@dataclass
class FlowCounters:
    opened: int = 0
    expired: int = 0
    refused_full: int = 0  # new flows beyond the table's cap
    refused_source: int = 0  # new flows beyond the source's cap
    duplicates: int = 0  # copies received and dropped
    stale: int = 0  # received older than the window and dropped
    dropped: dict[str, int] = field(default_factory=dict)  # packets dropped, by reason

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


class FlowTable:
    """The flows of one side by key and by id, with caps and idle expiry; sans-I/O."""

    def __init__(self, max_flows: int, max_per_source: int, idle_timeout: float,
                 window: int = 4096, short_timeout: float | None = None) -> None:  # fmt: skip
        self.max_flows = max_flows
        self.max_per_source = max_per_source
        self.idle_timeout = idle_timeout
        # a flow that sent at most one datagram toward its server (a DNS lookup) goes
        # sooner, as Linux conntrack's unreplied/stream timeouts do
        self.short_timeout = min(idle_timeout, short_timeout or idle_timeout)
        self.window = window
        self.by_key: dict[Hashable, Flow] = {}
        self.by_id: dict[int, Flow] = {}
        self._per_source: dict[object, int] = {}
        self._heap: list[tuple[float, int]] = []  # (deadline, flow id), checked lazily
        self._next_id = 1
        self.counters = FlowCounters()

    @classmethod
    def from_config(cls, cfg: UdpConfig, side: str) -> FlowTable:
        """The ``[udp]`` table of ``side``: the gateway's caps are per source and in
        all; the node's is per session (one table per session)."""
        if side == "gateway":
            caps = (cfg.max_flows, cfg.max_flows_per_source)
        else:
            caps = (cfg.session_flows, cfg.session_flows)
        return cls(*caps, cfg.idle_timeout, cfg.window, cfg.short_timeout)

    def __len__(self) -> int:
        return len(self.by_id)

    def open(self, key: Hashable, source: object, port: int, now: float,
             flow_id: int | None = None) -> Flow | None:  # fmt: skip
        """A new flow (``flow_id`` given by the peer, or the next free one); None beyond
        the caps (counted)."""
        c = self.counters
        if len(self.by_id) >= self.max_flows:
            self.expire(now)
            if len(self.by_id) >= self.max_flows:
                c.refused_full += 1
                return None
        if self._per_source.get(source, 0) >= self.max_per_source:
            c.refused_source += 1
            return None
        if flow_id is None:
            flow_id = self._next_id
            while flow_id in self.by_id or flow_id == 0:
                flow_id = (flow_id + 1) & 0xFFFFFFFF
            self._next_id = (flow_id + 1) & 0xFFFFFFFF
        flow = Flow(flow_id, key, source, port, now, self.window)
        self.by_key[key] = flow
        self.by_id[flow_id] = flow
        self._per_source[source] = self._per_source.get(source, 0) + 1
        heapq.heappush(self._heap, (now + self.short_timeout, flow_id))
        c.opened += 1
        return flow

    def received(self, flow: Flow, seq: int) -> bool:
        """Whether datagram ``seq`` of ``flow`` is new (deliver it); copies are counted."""
        why = flow.window.accept(seq)
        if why is None:
            return True
        if why == "duplicate":
            self.counters.duplicates += 1
        else:
            self.counters.stale += 1
        return False

    def remove(self, flow: Flow) -> None:
        if self.by_id.pop(flow.flow_id, None) is None:
            return
        self.by_key.pop(flow.key, None)
        n = self._per_source[flow.source] - 1
        if n:
            self._per_source[flow.source] = n
        else:
            del self._per_source[flow.source]

    def timeout(self, flow: Flow) -> float:
        return self.short_timeout if flow.packets_out <= 1 else self.idle_timeout

    def next_timer(self) -> float | None:
        """Earliest time :meth:`expire` may have work (possibly early, never late)."""
        return self._heap[0][0] if self._heap else None

    def expire(self, now: float) -> list[Flow]:
        """Remove and return the flows idle longer than their timeout at ``now``."""
        gone = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, fid = heapq.heappop(heap)
            flow = self.by_id.get(fid)
            if flow is None:
                continue
            deadline = flow.last_seen + self.timeout(flow)
            if deadline <= now:
                self.remove(flow)
                self.counters.expired += 1
                gone.append(flow)
            else:
                heapq.heappush(heap, (deadline, fid))
        return gone

    def status(self) -> dict:
        c = self.counters
        return {
            "flows": len(self.by_id),
            "sources": len(self._per_source),
            "opened": c.opened,
            "expired": c.expired,
            "refused_full": c.refused_full,
            "refused_source": c.refused_source,
            "duplicates": c.duplicates,
            "stale": c.stale,
            "dropped": dict(c.dropped),
        }


class DatagramSide:
    """What the gateway's and the node's UDP shells share: the flow table, the class
    rule, the hand-off to the mux (``send(msg, flow_class)``) and to the scheduler when
    a flow ends (``forget(flow_id)``), and expiry (:meth:`_gone` per expired flow)."""

    def __init__(
        self,
        cfg: UdpConfig,
        side: str,
        send: Callable[[Datagram, str], None],
        forget: Callable[[int], None],
    ) -> None:
        self.cfg = cfg
        self.send = send
        self.forget = forget
        self.flows = FlowTable.from_config(cfg, side)
        self.classify = FlowClassifier(cfg.classes())

    def next_timer(self) -> float | None:
        return self.flows.next_timer()

    def expire(self, now: float) -> None:
        t = self.flows.next_timer()
        if t is not None and t <= now:
            for flow in self.flows.expire(now):
                self.forget(flow.flow_id)
                self._gone(flow)

    def _gone(self, flow: Flow) -> None:
        """An expired flow's own resources (the node's socket)."""
