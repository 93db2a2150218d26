"""The host: demultiplexes segments to connections, answers strangers, owns the timers.

``EndpointTable`` is what the capture shell drives. It behaves like a host that
listens on every address and port (the gateway impersonates every server): a SYN for
an unknown 4-tuple opens a connection, any other segment for an unknown 4-tuple gets a
RST as RFC 9293 3.10.7.1 asks, except a bare ACK for a connection that closed recently
(a late ACK of our FIN must not reset the client's next connection attempt). Timers of
all connections share one heap with lazy deletion.

Like a Linux listener it holds SYN floods off with limits and SYN cookies:

* at most ``max_connections`` connections, and ``max_connections_per_source`` of one
  client address; a SYN beyond them is refused with RST;
* at most ``max_half_open`` connections in SYN-RECEIVED, and
  ``max_half_open_per_source`` of one address; beyond them a table that answers SYNs
  itself (``auto_accept=True``) sends a SYN cookie (:mod:`middlebox.tcp.cookies`) and
  keeps nothing, and a table whose proxy accepts each SYN drops it;
* with ``auto_accept=True`` the proxy hears of a connection only when its handshake is
  complete (:class:`~middlebox.tcp.events.ConnectionEstablished`): a SYN that is never
  completed costs it nothing;
* RSTs to segments of no connection (and those the caller asks for with
  :meth:`EndpointTable.refuse`) are limited to ``rst_rate`` per second; the rest are
  dropped and counted, so a flood of stray segments is not answered one for one.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
from collections import OrderedDict, deque

from middlebox.tcp import cookies
from middlebox.tcp import events as ev
from middlebox.tcp import options as tcpopt
from middlebox.tcp.connection import (
    CLOSED,
    SYN_RECEIVED,
    TIME_WAIT,
    Connection,
    pull_event,
    syn_ack,
)
from middlebox.tcp.constants import ACK, FIN, RST, SEQ_MASK, SYN
from middlebox.tcp.events import Key
from middlebox.tcp.options import Options
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
        self._half_open: set[Connection] = set()
        self._per_source: dict[bytes, list[int]] = {}  # address -> [connections, half-open]
        self._cookies_until = -1.0  # cookie ACKs are looked for until then
        self._rst_tokens = float(self.params.rst_rate)
        self._rst_time = 0.0
        self.counters = {
            "opened": 0,
            "closed": 0,
            "rst_sent": 0,
            "rst_suppressed": 0,
            "stray_ack_ignored": 0,
            "refused_full": 0,
            "refused_source": 0,
            "syn_dropped": 0,
            "syn_cookies_sent": 0,
            "syn_cookies_ok": 0,
            "syn_cookies_bad": 0,
            "retransmits": 0,
            "timeouts": 0,
            "ofo_dropped": 0,
            "data_after_fin": 0,
        }

    def __len__(self) -> int:
        return len(self.connections)

    def totals(self) -> dict[str, int]:
        """Counters, with those of live connections included, and the current sizes."""
        out = dict(self.counters)
        for conn in self.connections.values():
            self._add_stats(out, conn)
        out["connections"] = len(self.connections)
        out["half_open"] = len(self._half_open)
        out["sources"] = len(self._per_source)
        return out

    @staticmethod
    def _add_stats(counters: dict[str, int], conn: Connection) -> None:
        counters["retransmits"] += conn.stats_retransmits
        counters["timeouts"] += conn.stats_timeouts
        counters["ofo_dropped"] += conn.stats_ofo_dropped
        counters["data_after_fin"] += conn.stats_after_fin

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
                if conn in self._half_open and conn.state != SYN_RECEIVED:
                    self._settle(conn)
                return
        flags = seg.flags
        if flags & RST:
            return
        if flags & SYN and not flags & ACK:
            self._open(seg, now)
            return
        if flags & ACK and not flags & SYN and now < self._cookies_until:
            if self._cookie_ack(seg, now):
                return
        if flags & ACK and not seg.payload and not flags & (SYN | FIN) and key in self._closed:
            self.counters["stray_ack_ignored"] += 1
            return
        self.refuse(seg, now)

    def _admit(self, seg: Segment, now: float) -> bool:
        """The connection limits, total and per source; False (RST, counted) beyond them."""
        if len(self.connections) >= self.params.max_connections:
            self.counters["refused_full"] += 1
        elif self._source(seg.src)[0] >= self.params.max_connections_per_source:
            self.counters["refused_source"] += 1
        else:
            return True
        self.refuse(seg, now)
        return False

    def _source(self, src: bytes) -> list[int]:
        return self._per_source.get(src) or [0, 0]

    def _open(self, seg: Segment, now: float) -> None:
        if not self._admit(seg, now):
            return
        p = self.params
        if len(self._half_open) >= p.max_half_open or (
            self._source(seg.src)[1] >= p.max_half_open_per_source
        ):
            if self.auto_accept and p.syn_cookies:
                self._send_cookie(seg, now)
            else:
                self.counters["syn_dropped"] += 1  # the client sends it again
            return
        key = seg.key
        iss, ts_offset = self.initial_numbers(key, now)
        conn = self._new(seg, now, iss, ts_offset)
        self._half_open.add(conn)
        self._per_source[seg.src][1] += 1
        if self.auto_accept:
            conn.accept()
        else:
            conn.announced = True
            self.events.append(ev.ConnectionRequested(conn, key, seg.opts))

    def _new(self, syn: Segment, now: float, iss: int, ts_offset: int) -> Connection:
        key = syn.key
        self._closed.pop(key, None)
        conn = Connection(
            syn,
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
        self._per_source.setdefault(syn.src, [0, 0])[0] += 1
        self.counters["opened"] += 1
        self._dirty.add(conn)
        return conn

    def _settle(self, conn: Connection) -> None:
        """The connection left SYN-RECEIVED (established or gone): no longer half open."""
        self._half_open.discard(conn)
        counts = self._per_source.get(conn.key[0])
        if counts is not None:
            counts[1] -= 1

    # -- SYN cookies ------------------------------------------------------------------

    def _send_cookie(self, seg: Segment, now: float) -> None:
        """Answer ``seg`` (a SYN) with a SYN-ACK that keeps no state (see cookies.py)."""
        p = self.params
        key = seg.key
        o = seg.opts
        cookie = cookies.make(self._secret, key, seg.seq, o.mss, now)
        if p.timestamps and o.tsval is not None:
            ts_offset = self.initial_numbers(key, now)[1]
            sack = p.sack and o.sack_permitted
            tsval = cookies.encode_ts((int(now * 1000) + ts_offset) & SEQ_MASK, o.wscale, sack)
            ws = p.window_scale if o.wscale is not None else None
            opts = tcpopt.build_syn_ack(p.mtu - 40, ws, sack, (tsval, o.tsval))
        else:
            opts = tcpopt.build_syn_ack(p.mtu - 40, None, False, None)  # only the MSS survives
        self._out.append(syn_ack(key, cookie, seg.seq, self.buffer_room, opts))
        self.counters["syn_cookies_sent"] += 1
        self._cookies_until = now + 2 * cookies.SLOT

    def _cookie_ack(self, seg: Segment, now: float) -> bool:
        """Make the connection a valid cookie ACK names; False when it names none."""
        key = seg.key
        isn = (seg.seq - 1) & SEQ_MASK
        cookie = (seg.ack - 1) & SEQ_MASK
        mss = cookies.check(self._secret, key, isn, cookie, now)
        if mss is None:
            self.counters["syn_cookies_bad"] += 1
            return False
        if not self._admit(seg, now):
            return True
        o = seg.opts
        wscale, sack, tsval = None, False, None
        if self.params.timestamps and o.tsval is not None and o.tsecr:
            wscale, sack = cookies.decode_ts(o.tsecr)
            tsval = o.tsval
        opts = Options(mss=mss, wscale=wscale, sack_permitted=sack, tsval=tsval)
        syn = Segment(seg.src, seg.dst, seg.sport, seg.dport, isn, 0, SYN, seg.window, b"", opts)
        conn = self._new(syn, now, cookie, self.initial_numbers(key, now)[1])
        conn.accepted = True  # our SYN-ACK was the cookie: the handshake ends with this ACK
        self.counters["syn_cookies_ok"] += 1
        conn.receive_segment(seg, now)
        return True

    def initial_numbers(self, key: Key, now: float) -> tuple[int, int]:
        """ISN and timestamp offset: RFC 6528, a 4 us clock plus a keyed hash of the tuple."""
        digest = hashlib.blake2s(
            b"%b%d%b%d" % (key[0], key[1], key[2], key[3]), key=self._secret, digest_size=8
        ).digest()
        iss = (int(now * 250_000) + int.from_bytes(digest[:4], "big")) & SEQ_MASK
        return iss, int.from_bytes(digest[4:], "big")

    def refuse(self, seg: Segment, now: float) -> None:
        """RST for a segment of no known connection (RFC 9293 3.10.7.1), within the rate
        limit (beyond it: dropped, counted). Never for a RST."""
        if seg.flags & RST:
            return
        rate = self.params.rst_rate
        tokens = min(rate, self._rst_tokens + (now - self._rst_time) * rate)
        self._rst_time = now
        if tokens < 1.0:
            self._rst_tokens = tokens
            self.counters["rst_suppressed"] += 1
            return
        self._rst_tokens = tokens - 1.0
        self.counters["rst_sent"] += 1
        self._out.append(reset_for(seg))

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
        if conn in self._half_open and conn.state != SYN_RECEIVED:
            self._settle(conn)
        if conn.state == CLOSED:
            if self.connections.get(conn.key) is conn:
                del self.connections[conn.key]
                src = conn.key[0]
                counts = self._per_source[src]
                counts[0] -= 1
                if not counts[0]:
                    del self._per_source[src]
                self.counters["closed"] += 1
                self._add_stats(self.counters, conn)
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


def reset_for(seg: Segment) -> Segment:
    """The RST that refuses ``seg`` (RFC 9293 3.10.7.1), from the address it was sent to."""
    if seg.flags & ACK:
        return Segment(seg.dst, seg.src, seg.dport, seg.sport, seg.ack, 0, RST, 0)
    ack = (seg.seq + seg.seg_len()) & SEQ_MASK
    return Segment(seg.dst, seg.src, seg.dport, seg.sport, 0, ack, RST | ACK, 0)
