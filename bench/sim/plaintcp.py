"""Plain TCP over one carrier: the ``single:<carrier>`` rows, as the emulation runs them.

The emulation's single-carrier row is no proxy at all: the client's own kernel TCP to
the server over that carrier, one connection per request. So here each request is a
new TCP connection through the carrier's two :class:`~bench.sim.links.Link` directions:
SYN and SYN-ACK (the SYN sent again after 1 s, 2 s, ... when lost), the client's
request line, then the response on a fresh :class:`~bench.sim.tcp.Socket` (its own
congestion control, starting from the initial window as every real connection does; its
ACKs on the uplink), the server writing as fast as its socket takes it: Linux sizes a
socket's send buffer to about twice the congestion window (``tcp_sndbuf_expand``), so a
writer that never waits keeps about a window unsent beyond what is in flight (a few
units at least). An upload runs the other way. The kernel's own user timeout is minutes: a plain TCP
connection outlives every outage of a replay.
"""

from __future__ import annotations

from bench.sim.engine import Engine
from bench.sim.links import Link
from bench.sim.metrics import Recorder
from bench.sim.shell import REQUEST_BYTES, SYN_BYTES, SYN_RTO
from bench.sim.tcp import Socket
from bench.sim.transport import Conn, Transport, TransportParams

UNIT = 14_480  # bytes the server hands its socket at a time (ten packets)
AHEAD = 4 * UNIT  # the least it keeps unsent in its socket (a congestion window, if more)


class _Flow:
    """One TCP connection: its two directions and the handshake's state."""

    __slots__ = ("conn", "client", "server", "sender", "syn_at", "syns", "connected")

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.client: Socket | None = None
        self.server: Socket | None = None
        self.sender: Socket | None = None  # the side whose bytes flow, once it may send
        self.syn_at = 0.0
        self.syns = 0
        self.connected = False


class PlainTcp(Transport):
    """Plain TCP connections over one carrier (see module text)."""

    def __init__(
        self, engine: Engine, down: Link, up: Link, rec: Recorder, params: TransportParams
    ) -> None:
        super().__init__(engine, rec, params)
        self.down = down
        self.up = up
        self._ids = 0

    def _open(self, conn: Conn, now: float) -> None:
        self._ids += 1
        conn.id = self._ids
        flow = _Flow(conn)
        conn.state = flow
        self._syn(now, flow)

    def _syn(self, now: float, flow: _Flow) -> None:
        if flow.connected or flow.conn.closed:
            return
        flow.syn_at = now
        t, lost = self.up.send(now, SYN_BYTES, 1)
        self.engine.at(now + SYN_RTO * (1 << flow.syns), self._syn, flow)
        flow.syns += 1
        if not lost:
            self.engine.at(t, self._syn_arrives, flow)

    def _syn_arrives(self, now: float, flow: _Flow) -> None:
        t, lost = self.down.send(now, SYN_BYTES, 1)
        if not lost:
            self.engine.at(t, self._syn_ack_arrives, flow)

    def _syn_ack_arrives(self, now: float, flow: _Flow) -> None:
        if flow.connected:
            return
        flow.connected = True
        rtt = now - flow.syn_at
        engine = self.engine
        upload = flow.conn.upload
        writer = self._writer(flow)
        flow.client = Socket(
            engine, self.up, self.down, self._at_server(flow), on_acked=writer if upload else None
        )
        flow.server = Socket(
            engine, self.down, self.up, self._at_client(flow), on_acked=None if upload else writer
        )
        flow.client.connect(now, rtt)
        flow.server.connect(now, rtt)
        if upload:
            flow.sender = flow.client
            self._write(flow, now)
        else:
            flow.client.write(None, REQUEST_BYTES, now)

    def _at_server(self, flow: _Flow):
        def deliver(now: float, unit: object) -> bool:
            if unit is None:  # the request line: the response starts
                flow.sender = flow.server
                self._write(flow, now)
            else:
                self._received(flow, unit, now)  # type: ignore[arg-type]
            return True

        return deliver

    def _at_client(self, flow: _Flow):
        def deliver(now: float, unit: object) -> bool:
            self._received(flow, unit, now)  # type: ignore[arg-type]
            return True

        return deliver

    def _writer(self, flow: _Flow):
        def acked(now: float) -> None:
            self._write(flow, now)

        return acked

    def _write(self, flow: _Flow, now: float) -> None:
        """The sender keeps about a congestion window (a few units at least) unsent in
        its socket, as far as it has produced: what an application writing into an
        autotuned send buffer has queued. With less, a burst of ACKs (a cellular
        link's) drains the socket and the rate samples that follow count as
        application-limited, so BBR stops probing."""
        sock = flow.sender
        if sock is None:
            return
        conn = flow.conn
        limit = min(conn.avail, conn.total)
        ahead = max(AHEAD, sock.cc.cwnd)
        while sock.notsent < ahead and conn.snd_nxt < limit:
            n = int(min(UNIT, limit - conn.snd_nxt))
            conn.snd_nxt += n
            sock.write(n, n, now)

    def _received(self, flow: _Flow, n: int, now: float) -> None:
        # no copies and no messages: redundant bytes stay 0, as the emulation reports
        # for plain TCP (the kernel's own retransmissions are not counted there either)
        self.rec.useful(now, 0, n)
        self.deliver(flow.conn, n, now)

    def _produce(self, conn: Conn, now: float) -> None:
        flow = conn.state
        if isinstance(flow, _Flow):
            self._write(flow, now)
