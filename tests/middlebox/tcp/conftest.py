"""A scripted client TCP and a fake network for driving the sans-I/O endpoint.

The client is deliberately small: it sends a byte stream with go-back-N retransmission
on a timer and on three duplicate ACKs, and receives with out-of-order buffering,
SACK blocks and an ACK for every segment. The network delivers after a fixed delay and
can drop or reorder by a seeded random rule, in each direction separately. Every
segment crosses the real codec (build, then parse with checksum checks).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable

import pytest

from middlebox.tcp import options as tcpopt
from middlebox.tcp.constants import ACK, FIN, RST, SEQ_MASK, SYN
from middlebox.tcp.endpoint import EndpointTable
from middlebox.tcp.events import ConnectionGone, DataReceived, PeerClosed, Reset
from middlebox.tcp.packet import Segment, build_ipv4, parse_ipv4
from middlebox.tcp.params import TcpParams

CLIENT = bytes([10, 1, 0, 2])
SERVER = bytes([203, 0, 113, 5])


def roundtrip(seg: Segment) -> Segment:
    """Encode and decode a segment so that every test also exercises the codec."""
    if not seg.raw_options:
        seg.raw_options = _options_of(seg)
    out = parse_ipv4(build_ipv4(seg))
    assert out is not None, seg
    out.payload = bytes(out.payload)
    out.gso_size = seg.gso_size
    return out


def _options_of(seg: Segment) -> bytes:
    o = seg.opts
    if seg.flags & SYN:
        ts = (o.tsval, o.tsecr or 0) if o.tsval is not None else None
        raw = tcpopt.build_syn_ack(o.mss or 1460, o.wscale, o.sack_permitted, ts)
        return raw if o.mss is not None else raw[4:]
    ts = (o.tsval, o.tsecr) if o.tsval is not None else None
    return tcpopt.build(ts, list(o.sack))


class SimClient:
    """The client side of one connection, talking to an EndpointTable."""

    def __init__(
        self,
        port: int = 40000,
        mss: int | None = 1460,
        wscale: int | None = 7,
        sack: bool = True,
        ts: bool = True,
        rwnd: int = 1 << 20,
    ) -> None:
        self.port = port
        self.mss_opt, self.wscale, self.sack, self.ts = mss, wscale, sack, ts
        self.iss = 7_000_000 + port
        self.snd_una = self.snd_nxt = self.iss + 1
        self.out = bytearray()  # stream to send; index 0 == iss + 1
        self.fin = False
        self.fin_sent = False
        self.irs: int | None = None
        self.rcv_nxt = 0
        self.received = bytearray()
        self.ooo: dict[int, bytes] = {}
        self.peer_fin: int | None = None
        self.got_fin = False
        self.got_rst = False
        self.rwnd = rwnd
        self.read_paused = False
        self.peer_wnd = 65535
        self.peer_wscale = 0
        self.peer_mss = 536
        self.ts_recent = 0
        self.established = False
        self.dupacks = 0
        self.rto_deadline: float | None = None
        self.rto = 0.3
        self.last_sack: list[tuple[int, int]] = []
        self.sent_log: list[Segment] = []
        self.peer_ts_ok = False
        self.foreign: list[Segment] = []

    # segments the client sends
    def _seg(self, now: float, flags: int, seq: int, payload: bytes = b"", **kw) -> Segment:
        o = tcpopt.Options()
        if self.ts and (flags & SYN or self.peer_ts_ok):
            o.tsval = int(now * 1000) & SEQ_MASK
            o.tsecr = self.ts_recent
        if flags & SYN:
            o.mss, o.wscale, o.sack_permitted = self.mss_opt, self.wscale, self.sack
        elif self.sack and self.ooo:
            o.sack = tuple(self._sack_blocks())
        ack = (self.irs + 1 + self.rcv_nxt + self.got_fin) & SEQ_MASK if self.irs is not None else 0
        wnd = self._window()
        if not flags & SYN:
            wnd >>= self.wscale if self.wscale is not None and self.peer_wscale_ok else 0
        seg = Segment(
            CLIENT,
            SERVER,
            self.port,
            80,
            seq & SEQ_MASK,
            kw.get("ack", ack),
            flags,
            min(wnd, 0xFFFF),
            payload,
            o,
        )
        return seg

    peer_wscale_ok = False

    def _window(self) -> int:
        used = len(self.received) - self.consumed if self.read_paused else 0
        return max(self.rwnd - used, 0)

    consumed = 0

    def _sack_blocks(self) -> list[tuple[int, int]]:
        runs: list[list[int]] = []
        for s in sorted(self.ooo):
            e = s + len(self.ooo[s])
            if runs and s <= runs[-1][1]:
                runs[-1][1] = max(runs[-1][1], e)
            else:
                runs.append([s, e])
        base = self.irs + 1
        return [((base + s) & SEQ_MASK, (base + e) & SEQ_MASK) for s, e in runs[-3:]][::-1]

    def syn(self, now: float) -> Segment:
        return self._seg(now, SYN, self.iss)

    def send(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.fin = True

    def poll(self, now: float) -> list[Segment]:
        """New data (within the peer's window), the FIN, and retransmission on timeout."""
        if not self.established:
            return []
        segs = []
        if self.rto_deadline is not None and now >= self.rto_deadline:
            self.snd_nxt = self.snd_una  # go back N
            if self.fin_sent and self.snd_una == self.iss + 2 + len(self.out):
                self.snd_nxt -= 1
            self.fin_sent = self.fin_sent and self.snd_nxt > self.iss + 1 + len(self.out)
            self.rto_deadline = None
            self.rto = min(self.rto * 2, 5.0)
        end = self.iss + 1 + len(self.out)
        limit = self.snd_una + self.peer_wnd
        mss = self.peer_mss - (12 if self.peer_ts_ok else 0)
        while self.snd_nxt < end and self.snd_nxt < limit:
            n = min(mss, end - self.snd_nxt, limit - self.snd_nxt)
            off = self.snd_nxt - self.iss - 1
            segs.append(self._seg(now, ACK, self.snd_nxt, bytes(self.out[off : off + n])))
            self.snd_nxt += n
        if self.fin and not self.fin_sent and self.snd_nxt == end:
            segs.append(self._seg(now, FIN | ACK, self.snd_nxt))
            self.fin_sent = True
        if segs and self.rto_deadline is None:
            self.rto_deadline = now + self.rto
        return segs

    def on_segment(self, seg: Segment, now: float) -> list[Segment]:
        """Process a segment from the endpoint; returns the client's immediate replies.

        Like a host, the client takes only segments of its own 4-tuple (RFC 9293 3.10.7
        demultiplexes by the whole tuple). The endpoint also answers segments of other
        tuples (a stranger's RST, a new SYN's SYN-ACK) and the network delivers by port
        alone, so replies that belong to another connection sharing the client's port
        arrive here too; they are kept in ``foreign``, not processed.
        """
        if (seg.src, seg.sport, seg.dst, seg.dport) != (SERVER, 80, CLIENT, self.port):
            self.foreign.append(seg)
            return []
        o = seg.opts
        if seg.flags & RST:
            self.got_rst = True
            return []
        if o.tsval is not None:
            self.ts_recent = o.tsval
        if seg.flags & SYN:
            self.irs = seg.seq
            self.peer_mss = o.mss or 536
            self.peer_ts_ok = self.ts and o.tsval is not None
            self.peer_wscale = o.wscale or 0
            self.peer_wscale_ok = o.wscale is not None and self.wscale is not None
            if not self.peer_wscale_ok:
                self.peer_wscale = 0
            self.peer_wnd = seg.window
            self.snd_una = seg.ack
            self.established = True
            return [self._seg(now, ACK, self.snd_nxt)]
        if self.irs is None:
            return []
        # ACK field
        ack = seg.ack
        if 0 < (ack - self.snd_una) & SEQ_MASK < 1 << 31:
            self.snd_una = ack
            self.dupacks = 0
            self.rto = 0.3
            self.rto_deadline = None if self.snd_una == self.snd_nxt + self.fin_sent else now + 0.3
        elif ack == self.snd_una and not seg.payload and self.snd_nxt != self.snd_una:
            self.dupacks += 1
            if self.dupacks == 3:
                self.snd_nxt = self.snd_una  # crude fast retransmit: go back N
        self.peer_wnd = seg.window << self.peer_wscale
        # data
        off = (seg.seq - self.irs - 1) & SEQ_MASK
        replies = []
        if seg.payload or seg.flags & FIN:
            if seg.payload:
                if off <= self.rcv_nxt < off + len(seg.payload):
                    self.received += seg.payload[self.rcv_nxt - off :]
                    self.rcv_nxt = len(self.received)
                    while True:
                        nxt = [s for s in self.ooo if s <= self.rcv_nxt]
                        if not nxt:
                            break
                        for s in nxt:
                            d = self.ooo.pop(s)
                            if s + len(d) > self.rcv_nxt:
                                self.received += d[self.rcv_nxt - s :]
                                self.rcv_nxt = len(self.received)
                elif off > self.rcv_nxt:
                    self.ooo[off] = bytes(seg.payload)
            if seg.flags & FIN:
                self.peer_fin = off + len(seg.payload)
            if self.peer_fin is not None and self.rcv_nxt == self.peer_fin:
                self.got_fin = True
            replies.append(self._seg(now, ACK, self.snd_nxt + self.fin_sent))
        elif off != self.rcv_nxt + self.got_fin and not seg.payload:
            # a window probe (old sequence number): answer with our window
            replies.append(self._seg(now, ACK, self.snd_nxt + self.fin_sent))
        return replies


Rule = Callable[[Segment, random.Random], bool]


class Net:
    """Fake clock and two one-way links with a fixed delay and optional drop/reorder rules."""

    def __init__(
        self,
        table: EndpointTable,
        delay: float = 0.005,
        drop_down: Rule | None = None,
        drop_up: Rule | None = None,
        reorder: float = 0.0,
        seed: int = 1,
    ) -> None:
        self.table = table
        self.delay = delay
        self.drop_down, self.drop_up = drop_down, drop_up
        self.reorder = reorder
        self.rng = random.Random(seed)
        self.now = 0.0
        self.heap: list = []
        self.seq = itertools.count()
        self.clients: dict[int, SimClient] = {}
        self.events: list = []
        self.data: dict[int, bytearray] = {}
        self.to_client: list[Segment] = []

    def add(self, client: SimClient) -> None:
        self.clients[client.port] = client
        self._send_up(client.syn(self.now))

    def _send_up(self, seg: Segment) -> None:
        if self.drop_up and self.drop_up(seg, self.rng):
            return
        extra = self.delay * 3 if self.reorder and self.rng.random() < self.reorder else 0
        heapq.heappush(self.heap, (self.now + self.delay + extra, next(self.seq), "up", seg))

    def inject(self, seg: Segment) -> list[Segment]:
        """Hand a scripted segment to the endpoint now; return what it sends at once."""
        self.table.receive_segment(roundtrip(seg), self.now)
        return self.flush()

    def flush(self) -> list[Segment]:
        out = [roundtrip(s) for s in self.table.segments_to_send(self.now)]
        for s in out:
            self.to_client.append(s)
            if self.drop_down and self.drop_down(s, self.rng):
                continue
            extra = self.delay * 3 if self.reorder and self.rng.random() < self.reorder else 0
            heapq.heappush(self.heap, (self.now + self.delay + extra, next(self.seq), "down", s))
        self._collect()
        return out

    def _collect(self) -> None:
        while (e := self.table.next_event()) is not None:
            self.events.append(e)
            if isinstance(e, DataReceived):
                self.data.setdefault(e.conn.key[1], bytearray()).extend(e.data)

    def step(self, until: float = float("inf")) -> bool:
        """Advance to the next thing that happens; False when nothing is left."""
        self.flush()  # whatever the test queued through the proxy API goes out now
        for c in self.clients.values():
            for s in c.poll(self.now):
                self._send_up(roundtrip(s))
        cands = []
        if self.heap:
            cands.append(self.heap[0][0])
        t = self.table.next_timer()
        if t is not None:
            cands.append(t)
        for c in self.clients.values():
            if c.rto_deadline is not None:
                cands.append(c.rto_deadline)
        if not cands or min(cands) > until:
            self.now = max(self.now, until) if until != float("inf") else self.now
            return False
        self.now = max(self.now, min(cands))
        while self.heap and self.heap[0][0] <= self.now:
            _, _, d, seg = heapq.heappop(self.heap)
            if d == "up":
                self.table.receive_segment(seg, self.now)
            else:
                c = self.clients.get(seg.dport)
                if c is not None:
                    for r in c.on_segment(seg, self.now):
                        self._send_up(roundtrip(r))
        self.table.handle_timer(self.now)
        self.flush()
        for c in self.clients.values():
            for s in c.poll(self.now):
                self._send_up(roundtrip(s))
        return True

    def run(self, until: float, stop: Callable[[], bool] = lambda: False) -> None:
        n = 0
        while self.now < until and not stop():
            if not self.step(until):
                break
            n += 1
            assert n < 2_000_000

    def kinds(self, conn_port: int | None = None) -> list[str]:
        return [
            type(e).__name__ for e in self.events if conn_port is None or e.conn.key[1] == conn_port
        ]


@pytest.fixture
def cfg() -> TcpParams:
    return TcpParams(gso=False, time_wait=1.0)


@pytest.fixture
def make_net(cfg: TcpParams):
    def make(**kw) -> Net:
        table_kw = {k: kw.pop(k) for k in ("buffer_room", "chunk") if k in kw}
        table = EndpointTable(cfg, auto_accept=True, secret=b"k" * 16, **table_kw)
        return Net(table, **kw)

    return make


@pytest.fixture
def sim():
    """This module, so tests can use SimClient, Net, roundtrip, CLIENT and SERVER."""
    import sys

    return sys.modules[__name__]


__all__ = ["ConnectionGone", "PeerClosed", "Reset", "SimClient", "Net"]
