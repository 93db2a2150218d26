"""The multipath transport of the proxy, modelled message by message (node to gateway).

The rules are the real mux's (``middlebox/session/mux.py``, docs/gateway.md), with its own
constants (``INITIAL_WINDOW``, ``SWS_MIN``, ``MESSAGE_OVERHEAD``) and the configuration's
defaults (``wire.message_size``, ``wire.max_payload``, ``node.buffer_bytes``,
``paths.notsent_lowat``, ``paths.stall_min``, ``paths.user_timeout``,
``paths.lost_timeout``):

* a connection's bytes are cut into DATA messages at an adaptive size (doubling while
  the queue is long, back towards ``message_size`` when dry, never more than the chosen
  path's room); the connection-level window (receiver's ``rcv_nxt + buffer``, 64 KiB
  before the first DATA_ACK) bounds what is sent;
* the policy from ``scheduler`` decides every message with context wired as the
  gateway wires it (:class:`scheduler.generators.Generators`): the path generator
  (one :class:`~scheduler.estimators.PathEstimator` per path) is fed every
  ``sample_interval`` with what TCP_INFO would report (srtt, rttvar, last delivery-rate
  sample, cwnd, unacknowledged and not-sent bytes, loss as resent/sent packets) and is
  refreshed with the live cwnd/inflight/queued just before each decision; the
  connection tracker hears of every connection opened and closed, its bytes so far and
  when its application ran dry; the policy reads both from the registry;
* a message is committed to a path only while that path's not-sent backlog is under
  ``notsent_lowat`` (keep decisions late); when a decision names several paths, copies
  go on those that can take one now, and the others get theirs once they have room
  unless a DATA_ACK covered the message meanwhile;
* every message stays buffered until a DATA_ACK covers it (the first copy to arrive
  wins; later copies are duplicates); DATA_ACKs return on the path the data came in on;
* a message without a DATA_ACK after max(``stall_min``, 3 x (srtt + 4 rttvar)) of its
  path (doubling per try) is reinjected: offered to the policy as a ``reinjection``
  message whose ``avoid`` names the paths it has used (policies use those only when no
  other path is up);
* a path with data unacknowledged for ``user_timeout`` is dropped (the kernel's
  TCP_USER_TIMEOUT); what it carried is reinjected; it reconnects when its carrier works
  again (``reconnect_initial`` later, one handshake round trip);
* no path up for ``lost_timeout``: every connection is reset (the workload may resume).

Not modelled: OPEN/FIN/RST messages themselves (a request is decided by the policy as a
``control`` message and takes one one-way delay of the first of the chosen paths to get
through, waiting out an outage; a flow ends when its last byte is delivered), the uplink's capacity
(requests and DATA_ACKs take the one-way delay, held while their carrier is out), and
TCP's RTO backoff after an outage (the path resumes as soon as its carrier does).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from bench.sim.cc import Bbr
from bench.sim.engine import Engine
from bench.sim.links import MSS, Link
from bench.sim.metrics import Recorder
from middlebox.config import Config
from middlebox.session.mux import INITIAL_WINDOW, MESSAGE_OVERHEAD, SWS_MIN
from middlebox.session.wire import max_data_payload
from scheduler.context import CONTROL, DATA, REINJECTION, ConnectionContext, MessageInfo
from scheduler.estimators import PathSample
from scheduler.generators import Generators
from scheduler.policies.base import Policy
from scheduler.registry import CONNECTION

REQUEST_SIZE = 64  # bytes the policy is told an OPEN message takes (a small control message)


@dataclass(frozen=True)
class TransportParams:
    """The proxy's knobs the model uses; :meth:`from_config` reads the real defaults."""

    message_size: int = 16 << 10
    max_data: int = (256 << 10) - 12
    buffer_bytes: int = 4 << 20
    notsent_lowat: int = 128 << 10
    stall_min: float = 0.5
    stall_rtt_factor: float = 3.0
    user_timeout: float = 10.0
    lost_timeout: float = 30.0
    reconnect_delay: float = 0.2
    sample_interval: float = 0.2  # s between two TCP_INFO samples of a busy path
    idle_sample: float = 1.0  # s between two samples of a path where nothing changed
    server_delay: float = 0.0  # s the node waits for the server's first byte
    probe_idle: bool = True  # an idle path's PROBE answers count as loss-free samples

    @classmethod
    def from_config(cls, cfg: Config, **overrides: float) -> TransportParams:
        base = cls(
            message_size=min(cfg.wire.message_size, max_data_payload(cfg.wire.max_payload)),
            max_data=max_data_payload(cfg.wire.max_payload),
            buffer_bytes=cfg.node.buffer_bytes,
            notsent_lowat=cfg.paths.notsent_lowat,
            stall_min=cfg.paths.stall_min,
            user_timeout=cfg.paths.user_timeout,
            lost_timeout=cfg.paths.lost_timeout,
            reconnect_delay=cfg.paths.reconnect_initial,
        )
        return cls(**{**base.__dict__, **overrides})


class Msg:
    """One DATA message of a connection (its copies share this record)."""

    __slots__ = ("conn", "seq", "end", "size", "paths", "sent_at", "tries", "acked", "queued")

    def __init__(self, conn: Conn, seq: int, size: int, now: float) -> None:
        self.conn = conn
        self.seq = seq
        self.end = seq + size
        self.size = size
        self.paths: list[int] = []
        self.sent_at = now
        self.tries = 0
        self.acked = False
        self.queued = False  # waiting in the connection's reinjection queue


class Conn:
    """Both ends of one proxied connection (data from the node to the gateway)."""

    __slots__ = (
        "id",
        "total",
        "avail",
        "app",
        "started",
        "live",
        "snd_nxt",
        "peer_edge",
        "target",
        "unacked",
        "rtx",
        "rcv_nxt",
        "ooo",
        "done",
        "closed",
        "base",
        "credited",
        "tag",
    )

    def __init__(self, cid: int, started: float, total: float, app: App, base: int):
        self.id = cid
        self.total = total  # stream length in bytes (math.inf: endless)
        self.avail = total  # bytes the sending application has produced so far
        self.app = app
        self.started = started  # the client's request (flow completion times count from it)
        self.live = False  # the request reached the node: it may send
        self.snd_nxt = base
        self.peer_edge = base + INITIAL_WINDOW
        self.target = 0
        self.unacked: dict[int, Msg] = {}
        self.rtx: deque[Msg] = deque()
        self.rcv_nxt = base
        self.ooo: dict[int, tuple[int, float, int]] = {}  # seq -> (end, arrival, path)
        self.done = False
        self.closed = False
        self.base = base  # first offset (a resumed transfer starts where it stopped)
        self.credited = base  # in-order bytes already counted as goodput
        self.tag: object = None  # the workload's own data


class App:
    """What a workload hears about its connections (all optional)."""

    def delivered(self, conn: Conn, now: float) -> None:
        """In-order bytes advanced to ``conn.rcv_nxt``."""

    def completed(self, conn: Conn, now: float) -> None:
        """Every byte of a finite connection was delivered."""

    def reset(self, conn: Conn, now: float) -> None:
        """The connection was reset (no path for ``lost_timeout``)."""


class SimPath:
    """One carrier path: its socket (not-sent backlog, in-flight copies), controller and
    link (its context is the path generator's)."""

    __slots__ = (
        "id",
        "carrier",
        "link",
        "cc",
        "up",
        "epoch",
        "notsent",
        "queued",
        "inflight",
        "flight",
        "delivered",
        "delivered_time",
        "pace_last",
        "pace_bytes",
        "rto_count",
        "first_sent",
        "pump_armed",
        "srtt",
        "rttvar",
        "has_rtt",
        "rate_sample",
        "last_progress",
        "sent_pkts",
        "lost_pkts",
        "acks",
        "sampled_at",
        "owed",
    )

    def __init__(self, pid: int, link: Link) -> None:
        self.id = pid
        self.carrier = link.carrier.name
        self.link = link
        self.cc = Bbr(initial_rtt=2 * link.delay or 0.01)
        self.up = True
        self.epoch = 0
        self.notsent: deque[Msg] = deque()
        self.queued = 0
        self.inflight = 0
        # in flight: (msg, wire bytes, sent, delivered at send, delivered time,
        # app limited, epoch, transmission time, RTO count at send, first sent)
        self.flight: deque[tuple] = deque()
        self.delivered = 0
        self.delivered_time = 0.0
        self.pace_last = 0.0  # time and size of the last send, for pacing
        self.pace_bytes = 0
        self.rto_count = 0
        self.first_sent = 0.0  # send time of the message acknowledged last (BBR)
        self.pump_armed = False
        # the kernel's first RTT sample is the handshake's (RFC 6298: rttvar = R/2)
        self.srtt = 2 * link.delay or 0.01
        self.rttvar = self.srtt / 2
        self.has_rtt = True
        self.rate_sample: float | None = None
        self.last_progress = 0.0
        self.sent_pkts = 0
        self.lost_pkts = 0
        self.acks = 0
        self.sampled_at = -1.0
        self.owed: deque[Msg] = deque()  # copies decided for this path, waiting for room

    def stall_after(self, p: TransportParams) -> float:
        return max(p.stall_min, p.stall_rtt_factor * (self.srtt + 4 * self.rttvar))

    def rto(self) -> float:
        return max(0.2, self.srtt + 4 * self.rttvar)


class Transport:
    """Connections over paths, driven by an :class:`Engine` and a ``scheduler`` policy
    that reads ``context``'s registry (the run's :class:`Generators`, fed here)."""

    def __init__(
        self,
        engine: Engine,
        links: list[Link],
        policy: Policy,
        rec: Recorder,
        params: TransportParams,
        context: Generators,
        duration: float,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.rec = rec
        self.p = params
        self.duration = duration
        self.registry = context.registry
        self.path_contexts = context.paths
        self.conn_contexts = context.connections
        self.paths = [SimPath(i, link) for i, link in enumerate(links)]
        self.conns: dict[int, Conn] = {}
        self.active: dict[int, Conn] = {}  # connections with something to send
        self._next_id = 1
        self._all_down_since: float | None = None
        self._waiting_for_path: list[Callable[[float], None]] = []
        for p in self.paths:  # connected: TCP_INFO already has the handshake's RTT
            first = PathSample(up=True, rtt=p.srtt, rttvar=p.rttvar, cwnd=p.cc.cwnd, mss=MSS)
            self.path_contexts.add_path(p.id, p.carrier, 0.0, first)
        engine.at(0.0, self._tick)

    # -- connections ---------------------------------------------------------------------

    def open(
        self,
        now: float,
        app: App,
        total: float,
        *,
        client: str = "",
        dst_port: int = 443,
        base: int = 0,
        produced: float | None = None,
    ) -> Conn:
        """A client's request at ``now``: the node starts sending after the request's
        one-way trip (fastest path up) and ``server_delay``. ``total`` bytes (math.inf for
        endless); ``produced``: bytes available at once (default: all of them)."""
        cid = self._next_id
        self._next_id += 1
        self.conn_contexts.opened(cid, now, client=client, direction="down", dst_port=dst_port)
        conn = Conn(cid, now, total, app, base)
        conn.avail = base + produced if produced is not None else base + total
        conn.total = base + total
        conn.target = self.p.message_size
        self.conns[cid] = conn
        up = [self.paths[i] for i in self._request_paths(conn, now)]
        if up:
            # the request (OPEN) goes on the paths the policy names for a control
            # message; the first copy to get through starts the server
            start = min(p.link.after_outage(now) + p.link.delay for p in up)
            start += self.p.server_delay
        else:
            start = now + self.p.server_delay  # held at the gateway until a path is up
        self.engine.at(start, self._start, conn)
        return conn

    def _request_paths(self, conn: Conn, now: float) -> list[int]:
        """The up paths the policy chooses for the connection's OPEN (a control message;
        the live cwnd, inflight and queued bytes as before a data decision)."""
        self._refresh()
        info = MessageInfo(conn.id, REQUEST_SIZE, CONTROL, conn=self._conn_context(conn))
        return [i for i in self._decide(info, now) if self.paths[i].up]

    def _refresh(self) -> None:
        """Every path socket's live state into its context, as before a decision round."""
        refresh = self.path_contexts.refresh
        for p in self.paths:
            refresh(p.id, up=p.up, cwnd=p.cc.cwnd, inflight=p.inflight, queued=p.queued)

    def _conn_context(self, conn: Conn) -> ConnectionContext | None:
        """The registry's context of ``conn`` (the tracker's, fed here)."""
        return self.registry.get(CONNECTION, conn.id)

    def _decide(self, info: MessageInfo, now: float) -> tuple[int, ...]:
        """The policy's answer, on the registry's path contexts."""
        return self.policy.decide(info, self.registry.paths(), now)

    def _start(self, now: float, conn: Conn) -> None:
        if conn.closed:
            return
        conn.live = True
        self.active[conn.id] = conn
        self._schedule(now)

    def produce(self, conn: Conn, upto: float, now: float) -> None:
        """The sending application has produced bytes up to offset ``upto``."""
        if conn.closed:
            return
        conn.avail = min(upto, conn.total)
        if conn.live:
            self.active[conn.id] = conn
            self._schedule(now)

    def on_path_up(self, callback: Callable[[float], None]) -> None:
        """Call ``callback(now)`` once, the next time a path comes up."""
        self._waiting_for_path.append(callback)

    def any_up(self) -> bool:
        return any(p.up for p in self.paths)

    # -- sending -----------------------------------------------------------------------------

    def _schedule(self, now: float) -> None:
        """Commit messages to paths while some path can take one (round-robin over
        connections, reinjections first, as the mux does)."""
        lowat = self.p.notsent_lowat
        paths = self.paths
        if not any(p.up and p.queued < lowat for p in paths):
            return
        self._refresh()
        for path in paths:
            if path.owed and path.up:
                self._pay_owed(path, now)
        active = self.active
        round_ = list(active.values())
        while round_:
            nxt = []
            for conn in round_:
                r = self._send_one(conn, now)
                if r == 1:
                    nxt.append(conn)
                elif r == 0:
                    active.pop(conn.id, None)
                if not any(p.up and p.queued < lowat for p in paths):
                    return
            round_ = nxt

    def _send_one(self, conn: Conn, now: float) -> int:
        """Place one message of ``conn``: 1 sent (may have more), 0 nothing left to send,
        -1 blocked for now (window, or the policy chose paths without room)."""
        if conn.closed:
            return 0
        p = self.p
        while conn.rtx:
            msg = conn.rtx[0]
            if msg.acked or conn.closed:
                conn.rtx.popleft()
                msg.queued = False
                continue
            return self._reinject(conn, msg, now)
        tracker = self.conn_contexts
        if conn.avail <= conn.snd_nxt:
            # the application has nothing more for now: the mux tells the connection
            # context (our policy classifies a long-lived connection that keeps doing
            # so as a stream, scheduler.context.stream_like)
            tracker.app_limited(conn.id, now)
        snd_una = next(iter(conn.unacked)) if conn.unacked else conn.snd_nxt
        written = min(conn.avail, snd_una + p.buffer_bytes)
        unsent = written - conn.snd_nxt
        if unsent <= 0:
            return 0
        allowance = conn.peer_edge - conn.snd_nxt
        want = int(min(conn.target, unsent, allowance, p.max_data))
        if want <= 0 or (want < SWS_MIN and want < unsent):
            return -1
        tracker.carried_to(conn.id, conn.snd_nxt - conn.base)
        info = MessageInfo(
            conn.id,
            want,
            DATA,
            offset=conn.snd_nxt - conn.base,
            backlog=int(min(unsent - want, 1 << 40)),
            window=int(allowance),
            conn=self._conn_context(conn),
        )
        ids, ready = self._usable(self._decide(info, now))
        if not ready:
            return -1
        room = p.notsent_lowat - self.paths[ready[0]].queued - MESSAGE_OVERHEAD
        size = min(want, room)
        if size <= 0 or (size < SWS_MIN and size < want):
            return -1
        msg = Msg(conn, conn.snd_nxt, size, now)
        conn.snd_nxt += size
        conn.unacked[msg.seq] = msg
        left = written - conn.snd_nxt
        if left > conn.target:
            conn.target = min(p.max_data, conn.target * 2)
        elif left <= 0:
            conn.target = max(p.message_size, conn.target // 2)
        self._place(ids, ready, msg, now)
        if conn.avail <= conn.snd_nxt:
            tracker.app_limited(conn.id, now)
        return 1 if left > 0 else 0

    def _reinject(self, conn: Conn, msg: Msg, now: float) -> int:
        info = MessageInfo(
            conn.id,
            msg.size,
            REINJECTION,
            offset=msg.seq - conn.base,
            conn=self._conn_context(conn),
            avoid=tuple(msg.paths),
        )
        ids, ready = self._usable(self._decide(info, now))
        if not ready:
            return -1
        conn.rtx.popleft()
        msg.queued = False
        msg.tries += 1
        msg.sent_at = now
        self.rec.reinjections += 1
        self._place(ids, ready, msg, now)
        return 1

    def _usable(self, ids: tuple[int, ...]) -> tuple[list[int], list[int]]:
        """(the decided paths that are up, those of them with room now)."""
        lowat = self.p.notsent_lowat
        paths = self.paths
        up = [i for i in ids if paths[i].up]
        return up, [i for i in up if paths[i].queued < lowat]

    def _place(self, ids: list[int], ready: list[int], msg: Msg, now: float) -> None:
        """Copies on the decided paths with room now; the others owe theirs: it goes when
        they have room, unless a DATA_ACK has covered the message by then (the way
        MPTCP's redundant scheduler lets a slow subflow catch up)."""
        for pid in ids:
            if pid in ready:
                self._enqueue(self.paths[pid], msg, now)
            else:
                self.paths[pid].owed.append(msg)

    def _pay_owed(self, path: SimPath, now: float) -> None:
        lowat = self.p.notsent_lowat
        owed = path.owed
        while owed and path.queued < lowat:
            msg = owed.popleft()
            if not (msg.acked or msg.conn.closed or path.id in msg.paths):
                self._enqueue(path, msg, now)

    def _enqueue(self, path: SimPath, msg: Msg, now: float) -> None:
        if path.id not in msg.paths:
            msg.paths.append(path.id)
        wire = msg.size + MESSAGE_OVERHEAD
        path.notsent.append(msg)
        path.queued += wire
        self.rec.payload_sent += msg.size
        self.rec.wire_sent += wire
        self._pump(path, now)

    def _pump(self, path: SimPath, now: float) -> None:
        """The path socket sends what its window and pacing allow."""
        cc = path.cc
        link = path.link
        notsent = path.notsent
        while notsent and path.up:
            msg = notsent[0]
            wire = msg.size + MESSAGE_OVERHEAD
            # TCP acknowledges a message's packets one by one: the oldest message in
            # flight is counted as draining, so a window smaller than a message does
            # not turn the path into stop-and-wait.
            if path.flight and path.inflight - path.flight[0][1] >= cc.cwnd:
                break
            # pacing: the last send's bytes at the current rate (recomputed, so a rate
            # that recovers after an outage is not stuck behind an old, slow schedule)
            due = path.pace_last + path.pace_bytes / cc.pacing_rate
            if due > now + 1e-9:
                if not path.pump_armed:
                    path.pump_armed = True
                    self.engine.at(due, self._pump_timer, path)
                break
            notsent.popleft()
            path.queued -= wire
            if path.inflight == 0:
                path.delivered_time = path.first_sent = now
                path.last_progress = max(path.last_progress, now)
            arrival, lost, ser = link.transmit(now, wire, path.srtt)
            path.sent_pkts += math.ceil(wire / MSS)
            path.lost_pkts += lost
            copy = (
                msg,
                wire,
                now,
                path.delivered,
                path.delivered_time,
                not notsent and not self.active,  # application-limited: nothing waits
                path.epoch,
                ser,  # its own transmission time: its last packet left that much later
                path.rto_count,  # an RTO while it is in flight: resent, no RTT sample
                path.first_sent,
            )
            path.flight.append(copy)
            path.inflight += wire
            path.pace_last, path.pace_bytes = now, wire
            self.engine.at(arrival, self._arrive, (path, copy))
        self.path_contexts.refresh(
            path.id, cwnd=cc.cwnd, inflight=path.inflight, queued=path.queued
        )

    def _pump_timer(self, now: float, path: SimPath) -> None:
        path.pump_armed = False
        self._pump(path, now)
        self._schedule(now)

    # -- receiving ---------------------------------------------------------------------------

    def _arrive(self, now: float, arg: tuple) -> None:
        path, copy = arg
        if copy[6] != path.epoch:
            return  # the path's connection died with this copy in it
        msg = copy[0]
        conn = msg.conn
        rec = self.rec
        if conn.closed or msg.end <= conn.rcv_nxt or msg.seq in conn.ooo:
            rec.duplicate_bytes += msg.size
        else:
            rec.messages_received += 1
            rec.useful_bytes += msg.size
            rec.useful(now, path.id, msg.size)
            if msg.seq == conn.rcv_nxt:
                conn.rcv_nxt = msg.end
                ooo = conn.ooo
                if ooo:
                    delays = rec.ooo_delays
                    while conn.rcv_nxt in ooo:
                        end, t_arr, _ = ooo.pop(conn.rcv_nxt)
                        delays.append(now - t_arr)
                        conn.rcv_nxt = end
                self._delivered(conn, now)
            else:
                conn.ooo[msg.seq] = (msg.end, now, path.id)
        link = path.link
        self.engine.at(link.after_outage(now) + link.delay, self._ack, (path, copy, conn.rcv_nxt))

    def _delivered(self, conn: Conn, now: float) -> None:
        got = conn.rcv_nxt
        self.rec.delivered(now, got - conn.credited)
        conn.credited = got
        conn.app.delivered(conn, now)
        if got >= conn.total and not conn.done:
            conn.done = True
            self._finish(conn)
            conn.app.completed(conn, now)

    def _finish(self, conn: Conn) -> None:
        """Sender and receiver are done with ``conn``: forget its state."""
        conn.closed = True
        conn.unacked.clear()
        conn.rtx.clear()
        conn.ooo.clear()
        self.active.pop(conn.id, None)
        self.conns.pop(conn.id, None)
        self.conn_contexts.closed(conn.id)

    # -- acknowledgements ------------------------------------------------------------------

    def _ack(self, now: float, arg: tuple) -> None:
        path, copy, ackval = arg
        if copy[6] != path.epoch:
            return
        flight = path.flight
        if flight and flight[0] is copy:
            flight.popleft()
        else:  # cannot happen (FIFO per path); be safe
            try:
                flight.remove(copy)
            except ValueError:
                return
        msg, wire, sent, d_sent, d_time, app_limited, _, ser, rtos, first_sent = copy
        path.inflight -= wire
        path.delivered += wire
        path.acks += 1
        path.last_progress = now
        rtt = now - sent - ser  # per-packet RTT of its last packet, as TCP measures
        # BBR's rate sample: delivered over the longer of the send and the ack intervals
        # (the send interval keeps ack compression from inflating the estimate)
        interval = max(now - d_time, sent - first_sent)
        rate = (path.delivered - d_sent) / interval if interval > 0 else 0.0
        path.delivered_time = now
        path.first_sent = sent
        path.rate_sample = rate if rate > 0 else path.rate_sample
        if rtos != path.rto_count:
            rtt = 0.0  # Karn: what a retransmission timeout resent gives no RTT sample
        elif path.has_rtt:
            path.rttvar = 0.75 * path.rttvar + 0.25 * abs(path.srtt - rtt)
            path.srtt = 0.875 * path.srtt + 0.125 * rtt
        else:
            path.srtt, path.rttvar, path.has_rtt = rtt, rtt / 2, True
        path.cc.on_ack(now, rtt, rate, app_limited, path.inflight, wire, d_sent, path.delivered)
        conn = msg.conn
        if not msg.acked:
            msg.acked = True
            conn.unacked.pop(msg.seq, None)
        if not conn.closed:
            edge = ackval + self.p.buffer_bytes
            if edge > conn.peer_edge:
                conn.peer_edge = edge
            if conn.snd_nxt < conn.avail and conn.live:
                self.active[conn.id] = conn
        self._pump(path, now)
        self._schedule(now)

    # -- periodic: samples, stalls, path failures ---------------------------------------------

    def _tick(self, now: float, _arg: object = None) -> None:
        p = self.p
        reinjected = False
        for path in self.paths:
            if path.up:
                since = path.last_progress
                if path.flight:
                    since = max(since, path.flight[0][2])
                    silent = now - since
                    if silent > path.rto() and not path.cc.silenced:
                        path.cc.on_silence()
                        path.rto_count += 1
                        path.lost_pkts += math.ceil(path.inflight / MSS)
                    if silent > p.user_timeout:
                        self._path_down(path, now)
                        reinjected = True
                        continue
                reinjected |= self._check_stalls(path, now)
            sent, lost = path.sent_pkts, path.lost_pkts
            if not (sent or lost or path.acks) and now - path.sampled_at < p.idle_sample:
                continue  # nothing changed on this path: TCP_INFO would say the same
            path.sent_pkts = path.lost_pkts = path.acks = 0
            path.sampled_at = now
            sample = PathSample(
                rtt=path.srtt if path.has_rtt else None,
                rttvar=path.rttvar if path.has_rtt else None,
                delivery_rate=path.rate_sample,
                cwnd=path.cc.cwnd,
                inflight=path.inflight,
                queued=path.queued,
                loss=self._loss_sample(path, sent, lost),
                up=path.up,
                mss=MSS,
            )
            self.path_contexts.sample(path.id, sample, now)
        self._check_lost(now)
        if reinjected:
            self._schedule(now)
        nxt = now + p.sample_interval
        if nxt <= self.duration:
            self.engine.at(nxt, self._tick)

    def _loss_sample(self, path: SimPath, sent: int, lost: int) -> float | None:
        """Resent/sent packets over the interval. An idle path gives no TCP_INFO loss
        sample; with ``probe_idle`` the gateway's PROBE on it counts as a loss-free one
        (without it a path that lost packets once keeps that loss estimate forever,
        since nothing is sent on it to update the estimate)."""
        if sent:
            return min(lost / sent, 1.0)
        if lost:
            return 1.0
        if self.p.probe_idle and path.up and not path.flight:
            return 0.0
        return None

    def _check_stalls(self, path: SimPath, now: float) -> bool:
        """Queue for reinjection the messages on ``path`` waiting too long for a DATA_ACK."""
        after = path.stall_after(self.p)
        found = False
        for queue in (path.flight, path.notsent):
            for item in queue:
                msg = item[0] if queue is path.flight else item
                if now - msg.sent_at < after:
                    if queue is path.flight:
                        break
                    continue
                if msg.acked or msg.queued or msg.conn.closed:
                    continue
                if now - msg.sent_at < after * (1 << min(msg.tries, 6)):
                    continue
                msg.queued = True
                msg.conn.rtx.append(msg)
                self.active[msg.conn.id] = msg.conn
                self.rec.stall_reinjections += 1
                found = True
        return found

    def _path_down(self, path: SimPath, now: float) -> None:
        """TCP_USER_TIMEOUT: the path's connection is dropped; reinject what it held."""
        self.rec.path_downs += 1
        path.up = False
        path.epoch += 1
        path.link.reset(now)
        for msg in [c[0] for c in path.flight] + list(path.notsent):
            if not msg.acked and not msg.queued and not msg.conn.closed:
                msg.queued = True
                msg.conn.rtx.append(msg)
                self.active[msg.conn.id] = msg.conn
        path.flight.clear()
        path.notsent.clear()
        path.owed.clear()
        path.inflight = path.queued = 0
        self.path_contexts.sample(path.id, PathSample(up=False, inflight=0, queued=0), now)
        self.engine.at(now + self.p.reconnect_delay, self._reconnect, path)

    def _reconnect(self, now: float, path: SimPath) -> None:
        link = path.link
        back = link.after_outage(now)
        if back > now:
            self.engine.at(back + self.p.reconnect_delay, self._reconnect, path)
            return
        self.engine.at(now + 2 * link.delay, self._path_up, path)

    def _path_up(self, now: float, path: SimPath) -> None:
        path.up = True
        path.cc.reset(initial_rtt=2 * path.link.delay or 0.01)
        path.srtt = 2 * path.link.delay or 0.01  # the new connection's handshake
        path.rttvar = path.srtt / 2
        path.pace_last, path.pace_bytes = now, 0
        path.last_progress = now
        sample = PathSample(up=True, rtt=path.srtt, rttvar=path.rttvar)
        self.path_contexts.sample(path.id, sample, now)
        self._all_down_since = None
        waiting, self._waiting_for_path = self._waiting_for_path, []
        for cb in waiting:
            cb(now)
        self._schedule(now)

    def _check_lost(self, now: float) -> None:
        if any(p.up for p in self.paths):
            self._all_down_since = None
            return
        if self._all_down_since is None:
            self._all_down_since = now
            return
        if now - self._all_down_since < self.p.lost_timeout:
            return
        for conn in list(self.conns.values()):
            self.rec.resets += 1
            self._finish(conn)
            conn.app.reset(conn, now)
