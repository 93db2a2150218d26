"""The host: demultiplexes segments to connections, answers strangers, owns the timers.

``EndpointTable`` is what the capture shell drives. It behaves like a host that
listens on every address and port (the gateway impersonates every server): a SYN for
an unknown 4-tuple opens a connection, any other segment for an unknown 4-tuple gets a
RST as RFC 9293 3.10.7.1 asks, except a bare ACK for a connection that closed recently
(a late ACK of our FIN must not reset the client's next connection attempt). Timers of
all connections share one heap with lazy deletion.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
from collections import OrderedDict, deque

from middlebox.tcp import events as ev
from middlebox.tcp.connection import CLOSED, TIME_WAIT, Connection, pull_event
from middlebox.tcp.constants import ACK, FIN, RST, SEQ_MASK, SYN
from middlebox.tcp.events import Key
from middlebox.tcp.packet import Segment
from middlebox.tcp.params import TcpParams

_RECENTLY_CLOSED_MAX = 65536
_RECENTLY_CLOSED_TTL = 120.0


class EndpointTable:
    """All connections of one listener; sans I/O (``now`` is always a parameter)."""

    def __init__(
        self,
        params: TcpParams | None = None,
        buffer_room: int = 4 << 20,
        auto_accept: bool = False,
        secret: bytes | None = None,
        chunk: int | None = None,
    ) -> None:
        self.params = params or TcpParams()
        self.buffer_room = buffer_room
        self.auto_accept = auto_accept
        self.chunk = chunk
        self._secret = secret if secret is not None else os.urandom(16)
        self.connections: dict[Key, Connection] = {}
        self.events: deque = deque()
        self._dirty: set[Connection] = set()
        self._out: list[Segment] = []
        self._heap: list[tuple[float, int, Connection]] = []
        self._deadline: dict[Connection, float] = {}
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self._closed: OrderedDict[Key, float] = OrderedDict()
        self.counters = {
            "opened": 0,
            "closed": 0,
            "rst_sent": 0,
            "stray_ack_ignored": 0,
            "refused_full": 0,
            "retransmits": 0,
            "timeouts": 0,
        }

    def __len__(self) -> int:
        return len(self.connections)

    def totals(self) -> dict[str, int]:
        """Counters, with retransmissions and timeouts of live connections included."""
        out = dict(self.counters)
        for conn in self.connections.values():
            out["retransmits"] += conn.stats_retransmits
            out["timeouts"] += conn.stats_timeouts
        out["connections"] = len(self.connections)
        return out

    # -- input -----------------------------------------------------------------------

    def receive_segment(self, seg: Segment, now: float) -> None:
        """Feed one parsed segment from a client."""
        key = seg.key
        conn = self.connections.get(key)
        if conn is not None:
            if conn.state == TIME_WAIT and seg.flags & (SYN | ACK) == SYN:
                # a new incarnation of the same 4-tuple (RFC 9293 3.10.7.4 allows reuse)
                conn._gone()
                self._flush(conn, now)
            else:
                conn.receive_segment(seg, now)
                return
        flags = seg.flags
        if flags & RST:
            return
        if flags & SYN and not flags & ACK:
            self._open(seg, now)
            return
        if flags & ACK and not seg.payload and not flags & (SYN | FIN) and key in self._closed:
            self.counters["stray_ack_ignored"] += 1
            return
        self._reset_stranger(seg)

    def _open(self, seg: Segment, now: float) -> None:
        if len(self.connections) >= self.params.max_connections:
            self.counters["refused_full"] += 1
            self._reset_stranger(seg)
            return
        key = seg.key
        self._closed.pop(key, None)
        iss, ts_offset = self.initial_numbers(key, now)
        conn = Connection(
            seg,
            now,
            iss,
            self.params,
            self.buffer_room,
            ts_offset=ts_offset,
            conn_id=next(self._ids),
            events=self.events,
            dirty=self._dirty,
            chunk=self.chunk,
        )
        self.connections[key] = conn
        self.counters["opened"] += 1
        self.events.append(ev.ConnectionRequested(conn, key, seg.opts))
        if self.auto_accept:
            conn.accept()
        self._dirty.add(conn)

    def initial_numbers(self, key: Key, now: float) -> tuple[int, int]:
        """ISN and timestamp offset: RFC 6528, a 4 us clock plus a keyed hash of the tuple."""
        digest = hashlib.blake2s(
            b"%b%d%b%d" % (key[0], key[1], key[2], key[3]), key=self._secret, digest_size=8
        ).digest()
        iss = (int(now * 250_000) + int.from_bytes(digest[:4], "big")) & SEQ_MASK
        return iss, int.from_bytes(digest[4:], "big")

    def _reset_stranger(self, seg: Segment) -> None:
        """RST for a segment of no known connection (RFC 9293 3.10.7.1)."""
        if seg.flags & ACK:
            rst = Segment(seg.dst, seg.src, seg.dport, seg.sport, seg.ack, 0, RST, 0)
        else:
            ack = (seg.seq + seg.seg_len()) & SEQ_MASK
            rst = Segment(seg.dst, seg.src, seg.dport, seg.sport, 0, ack, RST | ACK, 0)
        self.counters["rst_sent"] += 1
        self._out.append(rst)

    # -- output ----------------------------------------------------------------------

    def segments_to_send(self, now: float) -> list[Segment]:
        """Everything due: replies to strangers and every touched connection's segments."""
        out = self._out
        self._out = []
        while self._dirty:
            conn = self._dirty.pop()
            out.extend(conn.segments_to_send(now))
            self._flush(conn, now)
        return out

    def _flush(self, conn: Connection, now: float) -> None:
        if conn.state == CLOSED:
            if self.connections.get(conn.key) is conn:
                del self.connections[conn.key]
                self.counters["closed"] += 1
                self.counters["retransmits"] += conn.stats_retransmits
                self.counters["timeouts"] += conn.stats_timeouts
                self._closed[conn.key] = now + _RECENTLY_CLOSED_TTL
                self._closed.move_to_end(conn.key)
                while len(self._closed) > _RECENTLY_CLOSED_MAX:
                    self._closed.popitem(last=False)
            self._deadline.pop(conn, None)
            return
        t = conn.next_timer()
        if t is not None and self._deadline.get(conn) != t:
            self._deadline[conn] = t
            heapq.heappush(self._heap, (t, next(self._seq), conn))

    def next_event(self) -> object | None:
        """The next event for the proxy, or None."""
        return pull_event(self.events)

    # -- timers ----------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """Earliest deadline over all connections (stale heap entries skipped)."""
        heap = self._heap
        while heap:
            t, _, conn = heap[0]
            if self._deadline.get(conn) == t:
                return t
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        """Run every timer due at ``now``; follow with ``segments_to_send(now)``."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            t, _, conn = heapq.heappop(heap)
            if self._deadline.get(conn) != t:
                continue
            del self._deadline[conn]
            conn.handle_timer(now)
            self._dirty.add(conn)
        while self._closed:
            key, exp = next(iter(self._closed.items()))
            if exp > now:
                break
            del self._closed[key]
