"""The node's side of the carrier paths: accepting, HELLO, probes, the sessions' muxes.

The node's counterpart of the gateway's :class:`~middlebox.gateway.uplink.Uplink`.
:class:`Gateways` listens on ``node.listen``; each path is a TLS 1.3 connection whose
client certificate names a gateway, and whose first message (HELLO) must claim that
same gateway id and a wire version the node speaks, within ``paths.connect_timeout``.
Paths with the same ``(gateway id, session)`` form a :class:`Session` with one
:class:`~middlebox.session.mux.Mux`, its own downlink scheduler and its
:class:`~middlebox.node.relay.Relay` to the servers; a HELLO with a new session value
from a known gateway means the gateway restarted, and the old session's connections
are reset.

On an up path the node answers PROBEs, keeps each carrier's latest CONTEXT report (for
``mpproxy status`` and, with ``[context] use_contextdb``, the session's
:class:`~middlebox.node.context.SessionContext`), and hands every connection-level
message to the session's mux. Every path's TCP_INFO is read every :data:`INFO_INTERVAL`
and fed to the mux (srtt, rttvar), the scheduler's estimators and the session context.

The node faces the whole Internet, so everything before HELLO is cheap and bounded:

* at most ``node.max_handshakes`` paths may be pending (accepted, TLS and HELLO not
  done), at most ``node.max_handshakes_per_source`` from one address, each for
  ``paths.connect_timeout``. A connection beyond a cap is closed at once with RST, before
  any TLS work; when the global cap is full a newcomer from a lighter address takes the
  place of the oldest pending handshake of the heaviest one, so one flooding address (or
  a few) cannot keep a gateway out;
* ``accept()`` is called at most :data:`ACCEPT_BATCH` times per readiness; after a batch
  that hit a cap the listener rests :data:`FLOOD_PAUSE` (a flood is taken in batches,
  not one loop turn per connection), and when accept() fails for want of descriptors or
  memory it rests ``node.accept_backoff`` seconds (the queued connection would make the
  loop spin);
* refusals and accept failures are counted and logged at most once a minute per kind.

An up path from which nothing arrived for ``paths.user_timeout`` is closed (the gateway
probes every ``paths.probe_interval``, so a live one never is), and one whose peer lets
more than ``paths.max_output`` of answers pile up is closed too (``paths_unread``).
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import ssl
from collections.abc import Callable

from middlebox.config import Config
from middlebox.errors import UserError
from middlebox.logs import kv
from middlebox.node.context import SessionContext
from middlebox.node.relay import Relay, hard_close
from middlebox.node.udp import UdpRelay
from middlebox.paths.conn import (
    HELLO,
    INFO_INTERVAL,
    UP,
    OutputOverflow,
    PathConn,
    PathError,
    forget,
    pump_mux,
    report_tcp_info,
    set_interest,
)
from middlebox.paths.sockets import PathOptions, configure
from middlebox.paths.tls import PeerAuthError, check_gateway_id
from middlebox.session import wire
from middlebox.session.mux import Budget, Mux
from middlebox.session.policy import SchedulerPolicy

log = logging.getLogger("mpproxy.node")

MAX_CONTEXT_CARRIERS = 32  # carriers whose CONTEXT a gateway may report (bounds memory)
ACCEPT_BATCH = 64  # accept() calls per readiness of the listener (the loop serves the rest)
FLOOD_PAUSE = 0.02  # seconds the listener rests after a batch that hit a handshake cap
LISTEN_BACKLOG = 1024  # the kernel's queue of connections accept() has not taken yet
LOG_EVERY = 60.0  # seconds between two warnings of one kind under a flood
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Throttle:
    """Warnings of one kind at most once per :data:`LOG_EVERY`, saying how many were
    left out: a flood must not become a flood of log lines (nor of formatting them)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def due(self, kind: str, now: float) -> bool:
        """Whether a warning of ``kind`` may be logged now (then call :meth:`warn`)."""
        last = self._last.get(kind)
        if last is not None and now - last < LOG_EVERY:
            self._held[kind] = self._held.get(kind, 0) + 1
            return False
        self._last[kind] = now
        return True

    def warn(self, kind: str, msg: str, *args: object) -> None:
        held = self._held.pop(kind, 0)
        log.warning(msg + (f" ({held} more like it not logged)" if held else ""), *args)


class Session:
    """The paths and connections of one gateway run."""

    def __init__(
        self,
        gateway_id: str,
        session: int,
        mux: Mux,
        policy: SchedulerPolicy,
        relay: Relay,
        context: SessionContext | None,
        now: float,
    ) -> None:
        self.gateway_id = gateway_id
        self.session = session
        self.policy = policy
        self.mux = mux
        self.relay = relay
        self.context = context  # with [context] use_contextdb
        self.udp: UdpRelay | None = None  # the session's UDP mappings (node/udp.py)
        self.paths: dict[int, PathConn] = {}
        self.names: dict[int, str] = {}
        self.carriers: dict[int, str] = {}  # path id -> carrier name (from HELLO)
        self.next_path_id = 1
        self.started = now

    def done(self) -> bool:
        """No path, no connection and no server connection is left."""
        udp = self.udp is not None and len(self.udp.flows) > 0
        return not self.paths and not self.mux.conn_ids() and not self.relay.conns and not udp

    def path_status(self) -> list[dict]:
        out = []
        transport = self.mux.stats()["paths"]
        for pid, pc in self.paths.items():
            info = pc.info
            out.append(
                {
                    "id": pid,
                    "name": self.names.get(pid, ""),
                    "state": pc.state,
                    "rtt_ms": info.srtt_us / 1000 if info else 0.0,
                    "rate_mbit": info.delivery_rate * 8 / 1e6 if info else 0.0,
                    "lost": info.total_retrans if info else 0,
                    "queued": pc.buffered + pc.notsent(),
                    "bytes_in": pc.bytes_in,
                    "bytes_out": pc.bytes_out,
                    "transport": transport.get(pid, {}),
                    "kernel": pc.kernel_status(),
                }
            )
        return out


class Gateways:
    """The gateways' paths and sessions (see module text).

    ``ctx`` is the node's TLS context (:func:`~middlebox.paths.tls.node_context`);
    ``new_relay`` makes the relay of a new session's mux; ``context_db`` (optional) is
    the node's read-only database, whose predictions go to each session's scheduler.
    """

    def __init__(
        self,
        cfg: Config,
        sel: selectors.BaseSelector,
        ctx: ssl.SSLContext | None,
        new_relay: Callable[[Mux], Relay],
        context_db=None,
    ) -> None:
        self.cfg = cfg
        self.sel = sel
        self.new_relay = new_relay
        self.context_db = context_db
        self.ctx = ctx  # None with tls.plaintext
        self.admit: Callable[[str], str | None] = lambda gateway_id: None  # node/admission.py
        self.path_opts = PathOptions.for_node(cfg.paths)
        self.sessions: dict[str, Session] = {}  # by gateway id
        # what the connections of all sessions may hold, and each session's share
        self.budget = Budget(cfg.node.memory_budget)
        self.handshaking: dict[PathConn, float] = {}  # path -> deadline for HELLO, oldest first
        self._owners: dict[PathConn, tuple[Session, int]] = {}  # up path -> session, path id
        self._source: dict[PathConn, str] = {}  # pending path -> its peer address
        self._per_source: dict[str, int] = {}  # peer address -> its pending paths
        self._accept_paused: float | None = None  # listener left alone until then
        self._option_failed: set[str] = set()  # socket options already reported
        self.throttle = Throttle()
        self.draining = False  # set by the node's drain (middlebox/node/process.py)
        # latest CONTEXT report per gateway id and carrier (kept across sessions)
        self.contexts: dict[str, dict[str, dict]] = {}
        self.udp_counters: dict[str, int] = {}  # every session's UDP relay counts here
        self.counters = {
            "paths_accepted": 0,
            "paths_refused": 0,
            "sessions_replaced": 0,
            "handshakes_started": 0,  # connections accepted for TLS and HELLO
            "handshakes_rejected": 0,  # closed at accept: a handshake cap was reached
            "handshakes_evicted": 0,  # pending, closed for a newcomer (global cap full)
            "accept_errors": 0,  # accept() failed (EMFILE...): the listener paused
            "paths_silent": 0,  # up, nothing received for paths.user_timeout
            "paths_unread": 0,  # up, the gateway did not read (paths.max_output)
            "socket_option_failures": 0,
        }
        host, _, port = cfg.node.listen.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((host, int(port)))
        except OSError as e:
            self.listener.close()
            raise UserError(f"node.listen {cfg.node.listen}: cannot bind ({e.strerror})") from None
        self.listener.listen(LISTEN_BACKLOG)
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()
        self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
        self._last_info = 0.0

    # -- timers and polling ---------------------------------------------------------------

    def next_timer(self) -> float | None:
        """HELLO deadlines, the sessions' mux timers, the next TCP_INFO reading (which
        also looks for silent paths) and the end of an accept pause."""
        times = []
        if self.handshaking:
            times.append(next(iter(self.handshaking.values())))  # deadlines in order
        for sess in self.sessions.values():
            for t in (sess.mux.next_timer(), sess.udp.next_timer() if sess.udp else None):
                if t is not None:
                    times.append(t)
        if self.sessions:
            times.append(self._last_info + INFO_INTERVAL)
        if self._accept_paused is not None:
            times.append(self._accept_paused)
        return min(times) if times else None

    def poll(self, now: float) -> None:
        """Refuse paths without HELLO in time, close silent ones, accept again after a
        pause; read TCP_INFO when due."""
        while self.handshaking:
            pc, deadline = next(iter(self.handshaking.items()))  # the oldest first
            if now < deadline:
                break
            self._refuse_path(pc, "no HELLO in time", wire.CloseReason.IDLE_TIMEOUT, now)
        for sess in self.sessions.values():
            if sess.udp is not None:
                sess.udp.expire(now)
        if self._accept_paused is not None and now >= self._accept_paused:
            self._accept_paused = None
            self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
        if now - self._last_info >= INFO_INTERVAL:
            self._close_silent(now)
            self._last_info = now
            for sess in self.sessions.values():
                for pid, pc in sess.paths.items():
                    carrier = sess.carriers.get(pid, "")
                    info = report_tcp_info(sess.mux, sess.policy, pid, carrier, pc, now)
                    if sess.context is not None:
                        sess.context.on_info(pid, carrier, pc, info, now)
                if sess.context is not None:
                    sess.context.tick(now)

    def _close_silent(self, now: float) -> None:
        silence = self.cfg.paths.user_timeout
        for sess in list(self.sessions.values()):
            for pid, pc in list(sess.paths.items()):
                if now - pc.last_rx > silence:
                    self.counters["paths_silent"] += 1
                    log.info("path down %s", kv(path=pc.label, reason=f"silent {silence:g} s"))
                    self._drop_path(sess, pid, pc, now, wire.CloseReason.IDLE_TIMEOUT)

    def pump(self, sess: Session, now: float) -> None:
        """Write the session's messages on its paths; a path that fails is dropped."""
        for pid, e in pump_mux(sess.mux, sess.paths, now):
            self._count_failure(e)
            log.info("path down %s", kv(path=sess.paths[pid].label, reason=e.reason))
            self._drop_path(sess, pid, sess.paths[pid], now)

    def _count_failure(self, e: PathError) -> None:
        if isinstance(e, OutputOverflow):
            self.counters["paths_unread"] += 1

    def settle(self, sess: Session) -> None:
        """Wait for the paths' next readiness; forget the session once it is done."""
        for pc in sess.paths.values():
            self._watch(pc)
        if sess.done() and self.sessions.get(sess.gateway_id) is sess:
            del self.sessions[sess.gateway_id]
            log.info("session ended %s", kv(gateway=sess.gateway_id, session=sess.session))

    # -- paths ----------------------------------------------------------------------------

    def _accept(self, mask: int, now: float) -> None:
        flooded = False
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self._accept_failed(e, now)
                return
            if not self._admit(peer[0], now):
                flooded = True
                self.counters["handshakes_rejected"] += 1
                if self.throttle.due("rejected", now):
                    self.throttle.warn("rejected", "path rejected %s (handshake cap)", peer[0])
                hard_close(sock)  # RST: no TLS work, no TIME-WAIT
                continue
            self._configure(sock, now)
            pc = PathConn(
                sock,
                max_payload=self.cfg.wire.max_payload,
                lowat=self.cfg.paths.notsent_lowat,
                room_time=self.cfg.paths.notsent_time,
                ctx=self.ctx,
                server_side=True,
                label=f"{peer[0]}:{peer[1]}",
                max_output=self.cfg.paths.max_output,
            )
            pc.since = now
            self.counters["handshakes_started"] += 1
            self.handshaking[pc] = now + self.cfg.paths.connect_timeout
            self._source[pc] = peer[0]
            self._per_source[peer[0]] = self._per_source.get(peer[0], 0) + 1
            self._watch(pc)
        if flooded:
            # a flood: take the next batch a little later rather than wake the loop for
            # every connection it makes (a gateway's waits FLOOD_PAUSE in the backlog)
            self._pause_accepting(now + FLOOD_PAUSE)

    def _pause_accepting(self, until: float) -> None:
        self._accept_paused = until
        forget(self.sel, self.listener)

    def _accept_failed(self, e: OSError, now: float) -> None:
        """accept() failed. Out of descriptors or memory, the connection stays queued and
        the listener readable: leave it alone for ``node.accept_backoff``."""
        self.counters["accept_errors"] += 1
        if e.errno in RESOURCE_ERRORS:
            pause = self.cfg.node.accept_backoff
            self._pause_accepting(now + pause)
            if self.throttle.due("accept", now):
                self.throttle.warn("accept", "accept failed, pausing %.2f s: %s", pause, e)
        elif self.throttle.due("accept", now):
            self.throttle.warn("accept", "accept failed: %s", e)

    def _admit(self, source: str, now: float) -> bool:
        """Whether a new connection from ``source`` may start its handshake (see the
        module text); may close another pending handshake to make room."""
        node = self.cfg.node
        mine = self._per_source.get(source, 0)
        if mine >= node.max_handshakes_per_source:
            return False
        if len(self.handshaking) < node.max_handshakes:
            return True
        heavy, most = max(self._per_source.items(), key=lambda kv: kv[1])
        if most <= mine + 1:
            return False  # nobody holds more than the newcomer would: first come, first served
        victim = next(pc for pc, src in self._source.items() if src == heavy)  # its oldest
        self.counters["handshakes_evicted"] += 1
        self._refuse_path(victim, "evicted: too many pending handshakes", None, now)
        return True

    def _configure(self, sock: socket.socket, now: float) -> None:
        """The path's socket options, each on its own; a failure is reported once per
        option (congestion control missing on this kernel, say) and the rest still hold."""
        for name, why in configure(sock, self.path_opts):
            self.counters["socket_option_failures"] += 1
            if name not in self._option_failed:
                self._option_failed.add(name)
                log.warning("path socket option %s failed (%s); the others are set", name, why)

    def _unpend(self, pc: PathConn) -> None:
        """Forget a pending handshake (it failed, or its HELLO made it a path)."""
        self.handshaking.pop(pc, None)
        src = self._source.pop(pc, None)
        if src is not None:
            left = self._per_source[src] - 1
            if left:
                self._per_source[src] = left
            else:
                del self._per_source[src]

    def _watch(self, pc: PathConn) -> None:
        set_interest(self.sel, pc.fd, pc.interest(), lambda m, t, pc=pc: self._path_ready(pc, m, t))

    def _path_ready(self, pc: PathConn, mask: int, now: float) -> None:
        try:
            self._path_io(pc, mask, now)
        except Exception as e:  # one bad path must never stop the node
            log.exception("path %s: unexpected error", pc.label)
            self._path_failed(pc, PathError(f"internal error: {e!r}"), now)

    def _path_io(self, pc: PathConn, mask: int, now: float) -> None:
        try:
            msgs = pc.handle(mask, now)
        except PathError as e:
            self._path_failed(pc, e, now)
            return
        for msg in msgs:
            if pc.state == HELLO:
                self._hello(pc, msg, now)
            elif pc.state == UP:
                self._path_message(pc, msg, now)
            if pc.state not in (HELLO, UP):
                return
        if pc.state != "closed":
            self._watch(pc)

    def _hello(self, pc: PathConn, msg: wire.Message, now: float) -> None:
        if type(msg) is not wire.Hello:
            self._refuse_path(
                pc, f"{type(msg).__name__} before HELLO", wire.CloseReason.PROTOCOL_ERROR, now
            )
            return
        if not msg.min_version <= wire.VERSION <= msg.max_version:
            self._refuse_path(
                pc,
                f"gateway speaks versions {msg.min_version}..{msg.max_version}",
                wire.CloseReason.VERSION_MISMATCH,
                now,
            )
            return
        if self.ctx is not None:
            try:
                check_gateway_id(pc.sock, msg.gateway_id)  # type: ignore[arg-type]
            except (PeerAuthError, ValueError) as e:  # ValueError: no finished handshake
                self._refuse_path(pc, str(e), wire.CloseReason.AUTH_FAILED, now)
                return
        if (why := self.admit(msg.gateway_id)) is not None:
            self._refuse_path(pc, why, wire.CloseReason.AUTH_FAILED, now)
            return
        sess = self.sessions.get(msg.gateway_id)
        if sess is not None and sess.session != msg.session:
            log.info(
                "gateway restarted, resetting its old session %s",
                kv(gateway=msg.gateway_id, old=sess.session, new=msg.session),
            )
            self.counters["sessions_replaced"] += 1
            self.end_session(sess, wire.RstReason.SHUTDOWN, now)
            sess = None
        if sess is None:
            sess = self._new_session(msg, now)
            self.sessions[msg.gateway_id] = sess
        pid = sess.next_path_id
        sess.next_path_id += 1
        self._unpend(pc)
        pc.state = UP
        pc.peer_max_payload = msg.max_payload
        pc.label = f"{msg.carrier}/{msg.path_index}"
        pc.last_rx = now
        sess.paths[pid] = pc
        self._owners[pc] = (sess, pid)
        sess.names[pid] = pc.label
        sess.carriers[pid] = msg.carrier
        pc.write(wire.HelloAck(self.cfg.node.id, pid, max_payload=self.cfg.wire.max_payload))
        if self.draining:  # the gateway is to move its new connections elsewhere
            pc.write(wire.Drain(True))
        pc.tcp_info()  # the room follows the path's rate from its first message on
        sess.mux.path_up(pid, now, room=pc.room())
        self.counters["paths_accepted"] += 1
        log.info(
            "path up %s",
            kv(gateway=msg.gateway_id, carrier=msg.carrier, type=msg.carrier_type, path=pid),
        )

    def _new_session(self, msg: wire.Hello, now: float) -> Session:
        params = self.cfg.mux_params("node", msg.max_payload)
        sctx = None
        if self.context_db is not None:
            sctx = SessionContext(self.context_db.predict, self.cfg.contextdb.window_s, now)
        policy = SchedulerPolicy(
            self.cfg.scheduler,
            longterm=sctx.longterm if sctx is not None else None,
            carriers=sctx.tracker if sctx is not None else None,
            datagrams=self.cfg.udp.classes(),
        )
        mux = Mux("node", params, policy, Budget(self.cfg.node.session_memory, self.budget))
        relay = self.new_relay(mux)
        relay.scheduler = policy
        sess = Session(msg.gateway_id, msg.session, mux, policy, relay, sctx, now)
        sess.udp = UdpRelay(self.cfg.udp, self.sel, relay.policy, mux.send_datagram,
                            policy.forget_flow, self.udp_counters)  # fmt: skip
        return sess

    def _path_message(self, pc: PathConn, msg: wire.Message, now: float) -> None:
        sess, pid = self._owner(pc)
        if sess is None:
            return
        t = type(msg)
        if t is wire.Probe:
            pc.answer_probe(msg)  # type: ignore[arg-type]
        elif t is wire.Close:
            log.info("path closed by gateway %s", kv(path=pc.label, reason=msg.reason.name))  # type: ignore[attr-defined]
            self._drop_path(sess, pid, pc, now)
        elif t is wire.Context:
            self._context(sess, msg, now)  # type: ignore[arg-type]
        elif t is wire.Datagram:
            sess.udp.receive(msg, now)  # type: ignore[union-attr, arg-type]
        elif t is wire.ProbeAck:
            pass
        elif t in (wire.Hello, wire.HelloAck, wire.Drain):
            self._drop_path(sess, pid, pc, now, wire.CloseReason.PROTOCOL_ERROR)
        else:
            sess.mux.receive(pid, msg, now)

    def _context(self, sess: Session, msg: wire.Context, now: float) -> None:
        """Keep the latest report of a carrier (shown by ``mpproxy status``) and give it
        to the session context (with ``[context] use_contextdb``)."""
        per = self.contexts.setdefault(sess.gateway_id, {})
        if msg.carrier not in per and len(per) >= MAX_CONTEXT_CARRIERS:
            return
        if sess.context is not None:
            sess.context.report(msg, now)
        first = msg.carrier not in per
        per[msg.carrier] = {
            "cell_id": msg.cell_id,
            "rsrp": msg.rsrp_dbm,
            "position": [msg.lat, msg.lon] if msg.lat is not None else None,
            "timestamp_ns": msg.timestamp_ns,
            "received": now,
            "reports": per.get(msg.carrier, {}).get("reports", 0) + 1,
        }
        if first:
            log.info(
                "context %s", kv(gateway=sess.gateway_id, carrier=msg.carrier, cell=msg.cell_id)
            )

    def _owner(self, pc: PathConn) -> tuple[Session | None, int]:
        return self._owners.get(pc, (None, 0))

    def _path_failed(self, pc: PathConn, e: PathError, now: float) -> None:
        if pc in self.handshaking:
            self._refuse_path(pc, e.reason, e.close, now)
            return
        self._count_failure(e)
        sess, pid = self._owner(pc)
        log.info("path down %s", kv(path=pc.label, reason=e.reason))
        if sess is not None:
            self._drop_path(sess, pid, pc, now, e.close)
        else:
            forget(self.sel, pc.fd)
            pc.close()

    def _refuse_path(
        self, pc: PathConn, why: str, reason: wire.CloseReason | None, now: float
    ) -> None:
        self.counters["paths_refused"] += 1
        if self.throttle.due("refused", now):
            self.throttle.warn("refused", "path refused %s", kv(peer=pc.label, why=repr(why)))
        self._unpend(pc)
        forget(self.sel, pc.fd)
        pc.close(reason, why)

    def _drop_path(
        self,
        sess: Session,
        pid: int,
        pc: PathConn,
        now: float,
        reason: wire.CloseReason | None = None,
    ) -> None:
        forget(self.sel, pc.fd)
        pc.close(reason)
        sess.paths.pop(pid, None)
        self._owners.pop(pc, None)
        sess.mux.remove_path(pid, now)
        sess.policy.path_down(pid, now)

    # -- status and shutdown --------------------------------------------------------------

    def limits(self) -> dict[str, int | float]:
        """The node's limits against floods and exhaustion (for ``mpproxy status``)."""
        node, paths = self.cfg.node, self.cfg.paths
        return {
            "max_handshakes": node.max_handshakes,
            "max_handshakes_per_source": node.max_handshakes_per_source,
            "handshake_timeout": paths.connect_timeout,
            "accept_backoff": node.accept_backoff,
            "silent_timeout": paths.user_timeout,
            "max_output": paths.max_output,
            "session_connections": node.session_connections,
            "session_memory": node.session_memory,
            "memory_budget": node.memory_budget,
            "reorder_overhead": self.cfg.wire.reorder_overhead,
        }

    def context_status(self, sess: Session, now: float) -> dict:
        """The gateway's carriers as its last reports (and the session context) show them."""
        return {
            c: {
                **v,
                "age_s": round(now - v["received"], 3),
                **(sess.context.status(c, now) if sess.context is not None else {}),
            }
            for c, v in self.contexts.get(sess.gateway_id, {}).items()
        }

    def end_session(self, sess: Session, reason: wire.RstReason, now: float) -> None:
        """Reset the session's connections on both sides, close its paths, forget it."""
        sess.relay.close()
        if sess.udp is not None:
            sess.udp.close()
        for cid in sess.mux.conn_ids():
            sess.mux.abort(cid, reason, now)
        for pid, pc in list(sess.paths.items()):
            pump_mux(sess.mux, {pid: pc}, now)  # the RSTs, best effort
            forget(self.sel, pc.fd)
            pc.close(wire.CloseReason.SHUTDOWN)
            self._owners.pop(pc, None)
        sess.paths.clear()
        if self.sessions.get(sess.gateway_id) is sess:
            del self.sessions[sess.gateway_id]

    def close(self, now: float) -> None:
        """End every session (RST to servers and gateways), close all paths and listening."""
        for sess in list(self.sessions.values()):
            self.end_session(sess, wire.RstReason.SHUTDOWN, now)
        for pc in list(self.handshaking):
            forget(self.sel, pc.fd)
            pc.close()
            self._unpend(pc)
        forget(self.sel, self.listener)
        self.listener.close()
