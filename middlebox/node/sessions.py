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
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
from collections.abc import Callable

from middlebox.config import Config
from middlebox.errors import UserError
from middlebox.logs import kv
from middlebox.node.context import SessionContext
from middlebox.node.relay import Relay
from middlebox.paths.conn import (
    HELLO,
    INFO_INTERVAL,
    UP,
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
from middlebox.session.mux import Mux
from middlebox.session.policy import SchedulerPolicy

log = logging.getLogger("mpproxy.node")

MAX_CONTEXT_CARRIERS = 32  # carriers whose CONTEXT a gateway may report (bounds memory)


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
        self.paths: dict[int, PathConn] = {}
        self.names: dict[int, str] = {}
        self.carriers: dict[int, str] = {}  # path id -> carrier name (from HELLO)
        self.next_path_id = 1
        self.started = now

    def done(self) -> bool:
        """No path, no connection and no server connection is left."""
        return not self.paths and not self.mux.conn_ids() and not self.relay.conns

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
        self.path_opts = PathOptions.for_node(cfg.paths)
        self.sessions: dict[str, Session] = {}  # by gateway id
        self.handshaking: dict[PathConn, float] = {}  # path -> deadline for HELLO
        # latest CONTEXT report per gateway id and carrier (kept across sessions)
        self.contexts: dict[str, dict[str, dict]] = {}
        self.counters = {"paths_accepted": 0, "paths_refused": 0, "sessions_replaced": 0}
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
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()
        self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
        self._last_info = 0.0

    # -- timers and polling ---------------------------------------------------------------

    def next_timer(self) -> float | None:
        """HELLO deadlines, the sessions' mux timers and the next TCP_INFO reading."""
        times = list(self.handshaking.values())
        for sess in self.sessions.values():
            t = sess.mux.next_timer()
            if t is not None:
                times.append(t)
        if self.sessions:
            times.append(self._last_info + INFO_INTERVAL)
        return min(times) if times else None

    def poll(self, now: float) -> None:
        """Refuse paths without HELLO in time; read TCP_INFO when due."""
        for pc, deadline in list(self.handshaking.items()):
            if now >= deadline:
                self._refuse_path(pc, "no HELLO in time", wire.CloseReason.IDLE_TIMEOUT)
        if now - self._last_info >= INFO_INTERVAL:
            self._last_info = now
            for sess in self.sessions.values():
                for pid, pc in sess.paths.items():
                    carrier = sess.carriers.get(pid, "")
                    info = report_tcp_info(sess.mux, sess.policy, pid, carrier, pc, now)
                    if sess.context is not None:
                        sess.context.on_info(pid, carrier, pc, info, now)
                if sess.context is not None:
                    sess.context.tick(now)

    def pump(self, sess: Session, now: float) -> None:
        """Write the session's messages on its paths; a path that fails is dropped."""
        for pid, e in pump_mux(sess.mux, sess.paths, now):
            log.info("path down %s", kv(path=sess.paths[pid].label, reason=e.reason))
            self._drop_path(sess, pid, sess.paths[pid], now)

    def settle(self, sess: Session) -> None:
        """Wait for the paths' next readiness; forget the session once it is done."""
        for pc in sess.paths.values():
            self._watch(pc)
        if sess.done() and self.sessions.get(sess.gateway_id) is sess:
            del self.sessions[sess.gateway_id]
            log.info("session ended %s", kv(gateway=sess.gateway_id, session=sess.session))

    # -- paths ----------------------------------------------------------------------------

    def _accept(self, mask: int, now: float) -> None:
        while True:
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("accept failed: %s", e)
                return
            try:
                configure(sock, self.path_opts)
            except Exception as e:  # congestion control missing etc.: keep the defaults
                log.warning("path socket options: %s", e)
            pc = PathConn(
                sock,
                max_payload=self.cfg.wire.max_payload,
                lowat=self.cfg.paths.notsent_lowat,
                room_time=self.cfg.paths.notsent_time,
                ctx=self.ctx,
                server_side=True,
                label=f"{peer[0]}:{peer[1]}",
            )
            pc.since = now
            self.handshaking[pc] = now + self.cfg.paths.connect_timeout
            self._watch(pc)

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
                pc, f"{type(msg).__name__} before HELLO", wire.CloseReason.PROTOCOL_ERROR
            )
            return
        if not msg.min_version <= wire.VERSION <= msg.max_version:
            self._refuse_path(
                pc,
                f"gateway speaks versions {msg.min_version}..{msg.max_version}",
                wire.CloseReason.VERSION_MISMATCH,
            )
            return
        if self.ctx is not None:
            try:
                check_gateway_id(pc.sock, msg.gateway_id)  # type: ignore[arg-type]
            except (PeerAuthError, ValueError) as e:  # ValueError: no finished handshake
                self._refuse_path(pc, str(e), wire.CloseReason.AUTH_FAILED)
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
        del self.handshaking[pc]
        pc.state = UP
        pc.peer_max_payload = msg.max_payload
        pc.label = f"{msg.carrier}/{msg.path_index}"
        pc.last_rx = now
        sess.paths[pid] = pc
        sess.names[pid] = pc.label
        sess.carriers[pid] = msg.carrier
        pc.write(wire.HelloAck(self.cfg.node.id, pid, max_payload=self.cfg.wire.max_payload))
        sess.mux.path_up(pid, now)
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
        )
        mux = Mux("node", params, policy)
        return Session(msg.gateway_id, msg.session, mux, policy, self.new_relay(mux), sctx, now)

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
        elif t in (wire.ProbeAck, wire.Datagram):
            pass  # datagrams are not used by the node yet
        elif t in (wire.Hello, wire.HelloAck):
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
        for sess in self.sessions.values():
            for pid, p in sess.paths.items():
                if p is pc:
                    return sess, pid
        return None, 0

    def _path_failed(self, pc: PathConn, e: PathError, now: float) -> None:
        if pc in self.handshaking:
            self._refuse_path(pc, e.reason, e.close)
            return
        sess, pid = self._owner(pc)
        log.info("path down %s", kv(path=pc.label, reason=e.reason))
        if sess is not None:
            self._drop_path(sess, pid, pc, now, e.close)
        else:
            forget(self.sel, pc.fd)
            pc.close()

    def _refuse_path(self, pc: PathConn, why: str, reason: wire.CloseReason | None) -> None:
        self.counters["paths_refused"] += 1
        log.warning("path refused %s", kv(peer=pc.label, why=repr(why)))
        self.handshaking.pop(pc, None)
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
        sess.mux.remove_path(pid, now)
        sess.policy.path_down(pid, now)

    # -- status and shutdown --------------------------------------------------------------

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
        for cid in sess.mux.conn_ids():
            sess.mux.abort(cid, reason, now)
        for pid, pc in list(sess.paths.items()):
            pump_mux(sess.mux, {pid: pc}, now)  # the RSTs, best effort
            forget(self.sel, pc.fd)
            pc.close(wire.CloseReason.SHUTDOWN)
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
        self.handshaking.clear()
        forget(self.sel, self.listener)
        self.listener.close()
