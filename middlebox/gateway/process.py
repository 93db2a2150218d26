"""The gateway process: captured TCP connections carried over the carrier paths.

Assembly (each piece is its own module):

* :class:`~middlebox.gateway.listener.Listener` makes the listener namespace and steers LAN TCP
  into it; :class:`~middlebox.gateway.capture.CaptureShell` reads the frames there.
* :class:`Classifier` puts the flow table (seed 002) in front of the user-space TCP
  endpoint: one dict lookup per segment; the first segment of a flow takes the slow
  path through the rules. ``PROXY`` segments go to the
  :class:`~middlebox.tcp.endpoint.EndpointTable`, ``BYPASS`` segments are written back
  unchanged toward the gateway's namespace (which routes them normally: they entered
  the listener by the LAN rule, they leave it from ``mpl-in``), ``DENY`` is answered
  with RST and ``DROP`` with nothing.
* :class:`~middlebox.gateway.uplink.Uplink` holds the carrier paths and the session's mux.
* :class:`Bridge` joins the endpoint's connections to the mux's: early accept (the
  client's handshake completes at once; OPEN goes to the node; OPEN_FAIL resets the
  client), bytes each way with both buffers bounded (the client's window is the mux's
  send room; bytes toward the client are taken from the mux only while the endpoint's
  queue is below its limit), FIN each way on its own (half-close), RST both ways.

Everything runs in the capture shell's selector loop; no threads.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import signal
import time
from collections.abc import Callable

from middlebox.config import Config
from middlebox.context.loop import ContextLoop
from middlebox.control import ControlServer
from middlebox.gateway.capture import CaptureShell
from middlebox.gateway.flowtable import Action, FlowTable, State
from middlebox.gateway.listener import Listener, local_prefixes
from middlebox.gateway.uplink import Uplink
from middlebox.logs import kv
from middlebox.paths.tls import gateway_context
from middlebox.session import wire
from middlebox.session.mux import (
    Closed,
    Opened,
    OpenFailed,
    PeerFinished,
    Readable,
    Reset,
    Writable,
)
from middlebox.session.policy import SchedulerPolicy
from middlebox.tcp import events as ev
from middlebox.tcp.connection import ConnectionError_
from middlebox.tcp.constants import ACK, RST, SEQ_MASK
from middlebox.tcp.endpoint import EndpointTable
from middlebox.tcp.packet import Segment

log = logging.getLogger("mpproxy.gateway")

BYPASS_MSS = 1448  # bypassed GRO aggregates are cut back to segments of this payload


def reset_for(seg: Segment) -> Segment:
    """The RST that refuses ``seg`` (RFC 9293 3.10.7.1), from the server's address."""
    if seg.flags & ACK:
        return Segment(seg.dst, seg.src, seg.dport, seg.sport, seg.ack, 0, RST, 0)
    ack = (seg.seq + seg.seg_len()) & SEQ_MASK
    return Segment(seg.dst, seg.src, seg.dport, seg.sport, 0, ack, RST | ACK, 0)


class Classifier:
    """The flow table in front of the endpoint table; the shell sees it as its table."""

    def __init__(self, table: EndpointTable, flows: FlowTable) -> None:
        self.table = table
        self.flows = flows
        self.shell: CaptureShell | None = None
        self.extra_timer: Callable[[], float | None] = lambda: None
        self.bypassed = 0
        self.denied = 0

    def receive_segment(self, seg: Segment, now: float) -> None:
        action = self.flows.classify(seg.key, seg.flags, now)
        if action is Action.PROXY:
            self.table.receive_segment(seg, now)
        elif action is Action.BYPASS:
            self._bypass(seg)
        elif action is Action.DENY:
            self.denied += 1
            if not seg.flags & RST and self.shell is not None:
                self.shell.send([reset_for(seg)])

    def _bypass(self, seg: Segment) -> None:
        """Write the segment back out unchanged; the gateway namespace routes it."""
        shell = self.shell
        if shell is None:
            return
        macs = shell.l2.get(seg.src)  # to the gateway side of the veth, from ours
        if macs is None:
            return
        if len(seg.payload) > BYPASS_MSS and shell.vnet:
            seg = dataclasses.replace(seg, payload=bytes(seg.payload), gso_size=BYPASS_MSS)
        try:
            shell.sock.send(shell.build_frame(seg, macs))
            self.bypassed += 1
        except OSError:
            shell.stats.send_errors += 1

    def next_timer(self) -> float | None:
        timers = (self.table.next_timer(), self.flows.next_timer(), self.extra_timer())
        return min((t for t in timers if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        t = self.table.next_timer()
        if t is not None and t <= now:
            self.table.handle_timer(now)
        t = self.flows.next_timer()
        if t is not None and t <= now:
            self.flows.expire(now)

    def next_event(self) -> object | None:
        return self.table.next_event()

    def segments_to_send(self, now: float) -> list[Segment]:
        return self.table.segments_to_send(now)


class Link:
    """One proxied connection: the endpoint's and the mux's view joined."""

    __slots__ = ("cid", "conn", "key", "pending", "client_fin", "shut", "down_fin", "fin_sent")

    def __init__(self, cid: int, conn, key) -> None:
        self.cid = cid
        self.conn = conn
        self.key = key
        self.pending = bytearray()  # from the client, not yet accepted by the mux
        self.client_fin = False
        self.shut = False
        self.down_fin = False  # the server's direction ended (node's FIN arrived)
        self.fin_sent = False


class Bridge:
    """Endpoint events to the mux and mux events to the endpoint (see module text)."""

    def __init__(self, uplink: Uplink, flows: FlowTable, down_limit: int, policy=None) -> None:
        self.uplink = uplink
        self.mux = uplink.mux
        self.flows = flows
        self.down_limit = down_limit
        self.policy = policy
        self.links: dict[int, Link] = {}
        self.by_conn: dict[object, Link] = {}
        self.blocked: set[int] = set()  # connections waiting for the client to drain
        self.narrow: set[int] = set()  # connections whose client window is below half
        self.counters = {"opened": 0, "open_failed": 0, "client_resets": 0, "node_resets": 0}

    # -- endpoint events --------------------------------------------------------------------

    def on_event(self, e: object, now: float) -> None:
        t = type(e)
        if t is ev.ConnectionRequested:
            self._requested(e, now)  # type: ignore[arg-type]
            return
        link = self.by_conn.get(e.conn)  # type: ignore[attr-defined]
        if link is None:
            return
        if t is ev.DataReceived:
            link.pending += e.data  # type: ignore[attr-defined]
            self._up(link)
        elif t is ev.PeerClosed:
            link.client_fin = True
            self._up(link)
        elif t is ev.Reset:
            self.counters["client_resets"] += 1
            reason = wire.RstReason.CLIENT_RESET if e.reason == "peer" else wire.RstReason.TIMEOUT  # type: ignore[attr-defined]
            self.mux.abort(link.cid, reason, now)
        elif t is ev.ConnectionGone:
            self._forget(link, now)
            if self.mux.pending(link.cid):
                self.mux.abort(link.cid, wire.RstReason.CLIENT_RESET, now)

    def _requested(self, e: ev.ConnectionRequested, now: float) -> None:
        src, sport, dst, dport = e.key
        o = e.options
        try:
            cid = self.mux.open(
                ipaddress.ip_address(src),
                sport,
                ipaddress.ip_address(dst),
                dport,
                mss=o.mss,
                wscale=o.wscale,
                sack_permitted=bool(o.sack_permitted),
                timestamps=o.tsval is not None,
            )
        except (ValueError, wire.ProtocolError) as err:
            log.warning("cannot open %s", kv(key=e.key, why=err))
            e.conn.abort()
            return
        link = Link(cid, e.conn, e.key)
        self.links[cid] = link
        self.by_conn[e.conn] = link
        self.counters["opened"] += 1
        if self.policy is not None:
            self.policy.opened(cid, str(ipaddress.ip_address(src)), dport, now)
        e.conn.accept()  # early accept: the client's handshake completes now

    def _up(self, link: Link) -> None:
        mux, cid = self.mux, link.cid
        if not mux.pending(cid):
            return
        if link.pending:
            n = mux.send(cid, link.pending)
            del link.pending[:n]
        if link.client_fin and not link.pending and not link.shut:
            link.shut = True
            mux.shutdown(cid)
        if not link.shut:
            room = max(0, mux.send_room(cid) - len(link.pending))
            link.conn.set_buffer_room(room)
            if room < self.mux.params.buffer_bytes // 2:
                self.narrow.add(cid)  # reopen the client's window as the node acknowledges
            else:
                self.narrow.discard(cid)

    def _down(self, link: Link) -> None:
        mux, cid, conn = self.mux, link.cid, link.conn
        room = self.down_limit - conn.send_queued
        if room > 0 and mux.pending(cid):
            data = mux.read(cid, room)
            if data:
                try:
                    conn.send(bytes(data))
                except ConnectionError_:
                    return  # the client is gone; its Reset/Gone events follow
        c = mux.conns.get(cid)
        unread = c is not None and bool(c.rbuf)
        if unread:
            self.blocked.add(cid)
        else:
            self.blocked.discard(cid)
            if link.down_fin and not link.fin_sent:
                link.fin_sent = True
                conn.close()

    def _forget(self, link: Link, now: float) -> None:
        self.flows.set_state(link.key, State.CLOSED, now)  # short timeout from now on
        self.links.pop(link.cid, None)
        self.by_conn.pop(link.conn, None)
        self.blocked.discard(link.cid)
        self.narrow.discard(link.cid)
        if self.policy is not None:
            self.policy.closed(link.cid)

    # -- mux events -------------------------------------------------------------------------

    def mux_events(self, now: float) -> None:
        mux = self.mux
        while (e := mux.next_event()) is not None:
            link = self.links.get(e.conn_id)
            if link is None:
                continue
            t = type(e)
            if t is Readable:
                self._down(link)
            elif t is Writable:
                self._up(link)
            elif t is PeerFinished:
                link.down_fin = True
                self._down(link)
            elif t is OpenFailed:
                self.counters["open_failed"] += 1
                log.info("open failed %s", kv(conn=link.cid, reason=e.reason.name))  # type: ignore[attr-defined]
                self._forget(link, now)
                link.conn.abort()
            elif t is Reset:
                self.counters["node_resets"] += 1
                self._forget(link, now)
                link.conn.abort()
            elif t in (Opened, Closed):
                pass
        for cid in list(self.narrow):
            link = self.links.get(cid)
            if link is None or link.shut:
                self.narrow.discard(cid)
            else:
                self._up(link)
        for cid in list(self.blocked):
            link = self.links.get(cid)
            if link is None:
                self.blocked.discard(cid)
            elif link.conn.send_queued < self.down_limit // 2:
                self._down(link)

    def buffered(self) -> int:
        """Bytes the gateway holds for its connections (mux buffers and pending input)."""
        return self.mux.stats()["buffered_bytes"] + sum(len(x.pending) for x in self.links.values())


class Gateway:
    """The gateway process: ``run()`` until stopped; ``close()`` undoes everything."""

    def __init__(self, cfg: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        self.started = clock()
        self.listener = Listener(cfg.gateway)
        self.shell: CaptureShell | None = None
        self.control: ControlServer | None = None
        self.stopping = False
        prefixes = local_prefixes()
        self.flows = FlowTable.from_config(cfg.gateway, prefixes)
        self.table = EndpointTable(cfg.tcp, buffer_room=cfg.gateway.buffer_bytes)
        self.classifier = Classifier(self.table, self.flows)
        Uplink.check(cfg)  # configuration errors before anything is created
        gateway_context(cfg.tls)
        self.context = ContextLoop(cfg, clock)  # reads context files, opens the database
        self.policy = SchedulerPolicy(
            cfg.scheduler,
            lowat=cfg.paths.notsent_lowat,
            longterm=self.context.longterm,
            carriers=self.context.tracker,
        )
        try:
            self.listener.setup()
        except BaseException:
            self.context.close()
            raise
        try:
            self.shell = CaptureShell(
                self.listener.inner_if, self.classifier, self.listener.ns, vnet=cfg.tcp.gso
            )
            self.classifier.shell = self.shell
            self.uplink = Uplink(cfg, self.shell.selector, clock, policy=self.policy)
            self.context.attach(self.uplink, self.shell.selector)
            self.classifier.extra_timer = self._next_timer
            self.bridge = Bridge(
                self.uplink, self.flows, max(64 << 10, cfg.gateway.buffer_bytes // 2), self.policy
            )
            self.control = ControlServer(cfg.gateway.control_socket, self.status)
            self.control.register(self.shell.selector)
        except BaseException:
            self.close()
            raise
        log.info(
            "gateway ready %s",
            kv(
                id=cfg.gateway.id,
                node=cfg.gateway.node,
                paths=len(self.uplink.slots),
                policy=self.policy.name,
                session=self.uplink.session,
            ),  # fmt: skip
        )

    def _next_timer(self) -> float | None:
        t = self.uplink.next_timer()
        c = self.context.next_timer()
        return c if t is None else min(t, c)

    def idle(self, now: float) -> None:
        up = self.uplink
        up.poll(now)
        self.context.tick(now)
        self.bridge.mux_events(now)
        up.pump(now)
        self.bridge.mux_events(now)
        if self.control is not None:
            self.control.expire(now)

    def run(self, stop: Callable[[], bool] | None = None) -> None:
        assert self.shell is not None
        self.shell.run(
            self.bridge.on_event,
            self.idle,
            stop=stop or (lambda: self.stopping),
            clock=self.clock,
        )

    def status(self) -> dict:
        mux = self.uplink.mux.stats()
        fc = self.flows.counters()
        shell = self.shell
        context = self.context.status(self.clock())
        return {
            "role": "gateway",
            "id": self.cfg.gateway.id,
            "uptime": self.clock() - self.started,
            "sessions": [
                {
                    "gateway": self.cfg.gateway.id,
                    "session": self.uplink.session,
                    "paths": self.uplink.path_status(),
                    "connections": mux["connections"],
                    "counters": {**mux["counters"], **self.uplink.counters},
                    "buffered_bytes": self.bridge.buffered(),
                    "context": context["carriers"],
                }
            ],
            "context": context,
            "flows": {
                "tracked": len(self.flows),
                **{f"flows_{a.value}": n for a, n in fc.flows.items()},
                **{f"packets_{a.value}": n for a, n in fc.packets.items()},
                "expired": fc.expired,
                "overflow": fc.overflow,
                "bypassed_packets": self.classifier.bypassed,
                "denied_packets": self.classifier.denied,
            },
            "endpoint": self.table.totals(),
            "capture": {
                "frames_in": shell.stats.frames_in if shell else 0,
                "frames_out": shell.stats.frames_out if shell else 0,
                "send_errors": shell.stats.send_errors if shell else 0,
            },
            "counters": dict(self.bridge.counters),
            "scheduler": {"policy": self.policy.name, "decisions": self.policy.decisions},
        }

    def close(self) -> None:
        """RST every client and connection, close the paths, remove rules and namespace."""
        now = self.clock()
        try:
            if self.shell is not None and hasattr(self, "bridge"):
                for link in list(self.bridge.links.values()):
                    link.conn.abort("shutdown")
                self.shell.pump(now, None)
                self.uplink.close(now)
        finally:
            if hasattr(self, "context"):
                self.context.close()
            if self.control is not None:
                self.control.close()
                self.control = None
            if self.shell is not None:
                self.shell.close()
                self.shell = None
            self.listener.teardown()
        log.info("stopped")


def install_signal_handlers(stop: Callable[[], None]) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop())
