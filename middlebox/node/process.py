"""The cloud node: accepts gateways' carrier paths and talks to the real servers.

One process, one ``selectors`` loop. Paths arrive on ``node.listen``; each is a TLS 1.3
connection whose client certificate names a gateway, and whose first message (HELLO)
must claim that same gateway id. Paths with the same ``(gateway id, session)`` form a
:class:`Session` with one :class:`~middlebox.session.mux.Mux`; a HELLO with a new session value
from a known gateway means the gateway restarted, and the old session's connections
are reset. An OPEN is checked against the destination policy (the node is not an open
proxy), then the node connects to the original destination from its own address with
``node.connect_timeout``; a refusal, a timeout or an unreachable network go back as
OPEN_FAIL with that reason, so the gateway resets its client.

Relaying keeps both buffers bounded: bytes from the server are read only while the
mux's send buffer has room (``send_room``), and bytes for the server are taken out of
the mux (which is what opens the connection-level window toward the gateway) only as
the server's socket accepts them, a slice at a time.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import selectors
import socket
import struct
import time
from collections.abc import Callable

from middlebox.config import Config
from middlebox.context.loop import SessionContext, open_context_db
from middlebox.control import ControlServer
from middlebox.logs import kv
from middlebox.node.destpolicy import DestinationPolicy
from middlebox.paths.conn import HELLO, UP, PathConn, PathError, forget, pump_mux, set_interest
from middlebox.paths.sockets import PathOptions, configure
from middlebox.paths.tls import PeerAuthError, check_gateway_id, node_context
from middlebox.session import wire
from middlebox.session.mux import (
    Closed,
    Mux,
    MuxParams,
    OpenRequested,
    PeerFinished,
    Readable,
    Reset,
    Writable,
)
from middlebox.session.policy import SchedulerPolicy

log = logging.getLogger("mpproxy.node")

RELAY_SLICE = 256 << 10  # bytes taken from the mux for a server at a time
INFO_INTERVAL = 0.2  # seconds between TCP_INFO readings of a path
MAX_CONTEXT_CARRIERS = 32  # carriers whose CONTEXT a gateway may report (bounds memory)
_LINGER_RST = struct.pack("ii", 1, 0)

CONNECT_ERRORS = {
    errno.ECONNREFUSED: wire.OpenFailReason.REFUSED,
    errno.ETIMEDOUT: wire.OpenFailReason.TIMEOUT,
    errno.EHOSTUNREACH: wire.OpenFailReason.UNREACHABLE,
    errno.ENETUNREACH: wire.OpenFailReason.UNREACHABLE,
    errno.EHOSTDOWN: wire.OpenFailReason.UNREACHABLE,
    errno.ENETDOWN: wire.OpenFailReason.UNREACHABLE,
    errno.EADDRNOTAVAIL: wire.OpenFailReason.UNREACHABLE,
    errno.EACCES: wire.OpenFailReason.DENIED,
    errno.EPERM: wire.OpenFailReason.DENIED,
    errno.EMFILE: wire.OpenFailReason.NO_RESOURCES,
    errno.ENFILE: wire.OpenFailReason.NO_RESOURCES,
    errno.ENOBUFS: wire.OpenFailReason.NO_RESOURCES,
}


def open_fail_reason(err: int) -> wire.OpenFailReason:
    """The OPEN_FAIL reason for a connect error number."""
    return CONNECT_ERRORS.get(err, wire.OpenFailReason.UNREACHABLE)


def hard_close(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer learns the connection was aborted."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    sock.close()


class Relay:
    """One connection to a destination server."""

    __slots__ = ("cid", "sock", "dest", "connected", "deadline", "pending", "peer_fin",
                 "shut_wr", "server_eof", "mux_done", "bytes_up", "bytes_down")  # fmt: skip

    def __init__(self, cid: int, sock: socket.socket, dest: tuple[str, int], deadline: float):
        self.cid = cid
        self.sock = sock
        self.dest = dest
        self.connected = False
        self.deadline = deadline
        self.pending = bytearray()  # taken from the mux, not yet accepted by the server
        self.peer_fin = False  # the gateway's direction ended
        self.shut_wr = False
        self.server_eof = False
        self.mux_done = False  # the mux closed the connection cleanly
        self.bytes_up = 0  # gateway -> server
        self.bytes_down = 0


class Session:
    """The paths and connections of one gateway run."""

    def __init__(
        self, gateway_id: str, session: int, params: MuxParams, now: float, policy
    ) -> None:
        self.gateway_id = gateway_id
        self.session = session
        self.policy = policy
        self.mux = Mux("node", params, policy)
        self.paths: dict[int, PathConn] = {}
        self.names: dict[int, str] = {}
        self.carriers: dict[int, str] = {}  # path id -> carrier name (from HELLO)
        self.context: SessionContext | None = None  # with [context] use_contextdb
        self.relays: dict[int, Relay] = {}
        self.starved: set[int] = set()  # relays not reading: the mux's send buffer was full
        self.next_path_id = 1
        self.started = now
        self.opened = 0
        self.refused = 0


class Node:
    """The node process: ``run()`` until ``stop()`` says so, then ``shutdown()``."""

    def __init__(
        self,
        cfg: Config,
        clock: Callable[[], float] = time.monotonic,
        control: bool = True,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.started = clock()
        self.policy = DestinationPolicy.from_config(cfg.node)
        self.ctx = node_context(cfg.tls)
        self.path_opts = PathOptions.for_node(cfg.paths)
        self.sel = selectors.DefaultSelector()
        self.sessions: dict[str, Session] = {}
        self.handshaking: dict[PathConn, float] = {}  # path -> deadline for HELLO
        # latest CONTEXT report per gateway id and carrier (kept across sessions)
        self.contexts: dict[str, dict[str, dict]] = {}
        # contextdb's predictions for the downlink scheduler (read-only: gateways learn)
        self.context_db = (
            open_context_db(cfg, cfg.node.id, readonly=True) if cfg.context.use_contextdb else None
        )
        self.counters = {
            "paths_accepted": 0,
            "paths_refused": 0,
            "sessions_replaced": 0,
            "open_denied": 0,
            "open_failed": 0,
            "opened": 0,
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
            from middlebox.errors import UserError

            raise UserError(f"node.listen {cfg.node.listen}: cannot bind ({e.strerror})") from None
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()
        self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
        self.control: ControlServer | None = None
        if control:
            self.control = ControlServer(cfg.node.control_socket, self.status)
            self.control.register(self.sel)
        self._last_info = 0.0
        log.info("listening %s", kv(address=cfg.node.listen, tls=self.ctx is not None))

    # -- the loop -------------------------------------------------------------------------

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        while not stop():
            self.step(0.2)

    def step(self, max_wait: float) -> None:
        """One loop iteration: wait for sockets or the next timer, then do the work."""
        now = self.clock()
        timeout = max_wait
        for t in self._timers():
            timeout = min(timeout, max(t - now, 0.0))
        for key, mask in self.sel.select(timeout):
            key.data(mask, self.clock())
        now = self.clock()
        self._timeouts(now)
        for sess in list(self.sessions.values()):
            self._pump(sess, now)
        if self.control is not None:
            self.control.expire(now)

    def _timers(self) -> list[float]:
        out = list(self.handshaking.values())
        for sess in self.sessions.values():
            t = sess.mux.next_timer()
            if t is not None:
                out.append(t)
            out.extend(r.deadline for r in sess.relays.values() if not r.connected)
        if self.sessions:
            out.append(self._last_info + INFO_INTERVAL)
        return out

    def _timeouts(self, now: float) -> None:
        for pc, deadline in list(self.handshaking.items()):
            if now >= deadline:
                self._refuse_path(pc, "no HELLO in time", wire.CloseReason.IDLE_TIMEOUT)
        for sess in self.sessions.values():
            for r in list(sess.relays.values()):
                if not r.connected and now >= r.deadline:
                    self._connect_failed(sess, r, wire.OpenFailReason.TIMEOUT, now)
        if now - self._last_info >= INFO_INTERVAL:
            self._last_info = now
            for sess in self.sessions.values():
                for pid, pc in sess.paths.items():
                    info = pc.tcp_info()
                    if info is not None and info.srtt_us:
                        sess.mux.update_path(pid, srtt=info.srtt, rttvar=info.rttvar)
                    carrier = sess.carriers.get(pid, "")
                    sess.policy.sample(pid, carrier, info, now)
                    if sess.context is not None:
                        sess.context.on_info(pid, carrier, pc, info, now)
                if sess.context is not None:
                    sess.context.tick(now)

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
            self._end_session(sess, wire.RstReason.SHUTDOWN, now)
            sess = None
        if sess is None:
            params = MuxParams.from_config(self.cfg, "node", msg.max_payload)
            sctx = None
            if self.context_db is not None:
                sctx = SessionContext(self.context_db.predict, self.cfg.contextdb.window_s, now)
            policy = SchedulerPolicy(
                self.cfg.scheduler,
                lowat=self.cfg.paths.notsent_lowat,
                longterm=sctx.longterm if sctx is not None else None,
                carriers=sctx.tracker if sctx is not None else None,
            )
            sess = Session(msg.gateway_id, msg.session, params, now, policy)
            sess.context = sctx
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
        """Keep the latest report of a carrier (shown by ``mpproxy status``); the node's
        own scheduling does not use it yet."""
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

    # -- connections ----------------------------------------------------------------------

    def _pump(self, sess: Session, now: float) -> None:
        for _ in range(8):  # events produce messages and messages events; bounded
            self._events(sess, now)
            for pid, e in pump_mux(sess.mux, sess.paths, now):
                log.info("path down %s", kv(path=sess.paths[pid].label, reason=e.reason))
                self._drop_path(sess, pid, sess.paths[pid], now)
            if not self._events(sess, now):
                break
        for cid in list(sess.starved):
            r = sess.relays.get(cid)
            if r is None:
                sess.starved.discard(cid)
            elif sess.mux.pending(cid) and sess.mux.send_room(cid) > 0:
                self._watch_relay(sess, r)
        for pc in sess.paths.values():
            self._watch(pc)
        if not sess.paths and not sess.mux.conns and not sess.relays:
            if self.sessions.get(sess.gateway_id) is sess:
                del self.sessions[sess.gateway_id]
                log.info("session ended %s", kv(gateway=sess.gateway_id, session=sess.session))

    def _events(self, sess: Session, now: float) -> int:
        """Handle the mux's events; returns how many there were."""
        mux = sess.mux
        n = 0
        while (e := mux.next_event()) is not None:
            n += 1
            t = type(e)
            if t is OpenRequested:
                self._open(sess, e, now)  # type: ignore[arg-type]
                continue
            r = sess.relays.get(e.conn_id)
            if r is None:
                continue
            if t is Readable:
                self._to_server(sess, r, now)
            elif t is Writable:
                self._watch_relay(sess, r)
            elif t is PeerFinished:
                r.peer_fin = True
                self._to_server(sess, r, now)
            elif t is Reset:
                del sess.relays[r.cid]
                forget(self.sel, r.sock)
                hard_close(r.sock)
            elif t is Closed:
                r.mux_done = True
                self._to_server(sess, r, now)  # closes once the last bytes are out
        return n

    def _open(self, sess: Session, e: OpenRequested, now: float) -> None:
        o = e.open
        dst = ipaddress.ip_address(o.dst_addr)
        why = self.policy.refusal(dst)
        if why is not None:
            self.counters["open_denied"] += 1
            log.info("open denied %s", kv(conn=e.conn_id, dst=f"{dst}:{o.dst_port}", why=repr(why)))
            sess.mux.refuse(e.conn_id, wire.OpenFailReason.DENIED, now)
            return
        family = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as err:
            sess.mux.refuse(e.conn_id, open_fail_reason(err.errno or 0), now)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        dest = (str(dst), o.dst_port)
        r = Relay(e.conn_id, sock, dest, now + self.cfg.node.connect_timeout)
        sess.relays[e.conn_id] = r
        err = sock.connect_ex(dest)
        if err not in (0, errno.EINPROGRESS):
            self._connect_failed(sess, r, open_fail_reason(err), now)
            return
        self._watch_relay(sess, r)

    def _connect_failed(
        self, sess: Session, r: Relay, reason: wire.OpenFailReason, now: float
    ) -> None:
        self.counters["open_failed"] += 1
        sess.refused += 1
        log.info(
            "open failed %s", kv(conn=r.cid, dst=f"{r.dest[0]}:{r.dest[1]}", reason=reason.name)
        )
        sess.relays.pop(r.cid, None)
        forget(self.sel, r.sock)
        r.sock.close()
        sess.mux.refuse(r.cid, reason, now)

    def _watch_relay(self, sess: Session, r: Relay) -> None:
        if r.cid not in sess.relays:
            return
        mask = 0
        if not r.connected or r.pending:
            mask |= selectors.EVENT_WRITE
        if r.connected and not r.server_eof and sess.mux.pending(r.cid):
            if sess.mux.send_room(r.cid) > 0:
                mask |= selectors.EVENT_READ
                sess.starved.discard(r.cid)
            else:
                sess.starved.add(r.cid)  # the mux says Writable only after a refused send
        set_interest(
            self.sel, r.sock, mask, lambda m, t, s=sess, r=r: self._relay_ready(s, r, m, t)
        )

    def _relay_ready(self, sess: Session, r: Relay, mask: int, now: float) -> None:
        mux = sess.mux
        if not r.connected:
            err = r.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._connect_failed(sess, r, open_fail_reason(err), now)
                return
            if not mux.pending(r.cid):  # the gateway gave up meanwhile
                sess.relays.pop(r.cid, None)
                forget(self.sel, r.sock)
                hard_close(r.sock)
                return
            r.connected = True
            sess.opened += 1
            self.counters["opened"] += 1
            mux.accept(r.cid)
        if mask & selectors.EVENT_WRITE:
            self._to_server(sess, r, now)
        if mask & selectors.EVENT_READ and r.cid in sess.relays:
            self._from_server(sess, r, now)
        self._watch_relay(sess, r)

    def _from_server(self, sess: Session, r: Relay, now: float) -> None:
        mux = sess.mux
        if not mux.pending(r.cid):
            return
        room = mux.send_room(r.cid)
        if room <= 0:
            return
        try:
            data = r.sock.recv(min(room, RELAY_SLICE))
        except BlockingIOError:
            return
        except OSError:
            self._server_reset(sess, r, now)
            return
        if data:
            r.bytes_down += len(data)
            mux.send(r.cid, data)
        else:
            r.server_eof = True
            mux.shutdown(r.cid)

    def _to_server(self, sess: Session, r: Relay, now: float) -> None:
        if not r.connected:
            return
        mux = sess.mux
        while True:
            if not r.pending:
                r.pending = mux.read(r.cid, RELAY_SLICE)
                if not r.pending:
                    break
            try:
                n = r.sock.send(r.pending)
            except BlockingIOError:
                break
            except OSError:
                self._server_reset(sess, r, now)
                return
            r.bytes_up += n
            del r.pending[:n]
            if r.pending:
                break
        conn = mux.conns.get(r.cid)
        drained = not r.pending and (conn is None or not conn.rbuf)
        if r.peer_fin and drained and not r.shut_wr:
            r.shut_wr = True
            try:
                r.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if r.mux_done and drained:
            self._finish(sess, r)
            return
        self._watch_relay(sess, r)

    def _finish(self, sess: Session, r: Relay) -> None:
        """The mux is done with the connection and the server has every byte: close."""
        sess.relays.pop(r.cid, None)
        forget(self.sel, r.sock)
        r.sock.close()

    def _server_reset(self, sess: Session, r: Relay, now: float) -> None:
        sess.relays.pop(r.cid, None)
        forget(self.sel, r.sock)
        hard_close(r.sock)
        sess.mux.abort(r.cid, wire.RstReason.SERVER_RESET, now)

    def _end_session(self, sess: Session, reason: wire.RstReason, now: float) -> None:
        for r in list(sess.relays.values()):
            forget(self.sel, r.sock)
            hard_close(r.sock)
        sess.relays.clear()
        for cid in list(sess.mux.conns):
            sess.mux.abort(cid, reason, now)
        for pid, pc in list(sess.paths.items()):
            pump_mux(sess.mux, {pid: pc}, now)  # the RSTs, best effort
            forget(self.sel, pc.fd)
            pc.close(wire.CloseReason.SHUTDOWN)
        sess.paths.clear()
        if self.sessions.get(sess.gateway_id) is sess:
            del self.sessions[sess.gateway_id]

    # -- status and shutdown --------------------------------------------------------------

    def status(self) -> dict:
        now = self.clock()
        sessions = []
        for sess in self.sessions.values():
            st = sess.mux.stats()
            paths = []
            for pid, pc in sess.paths.items():
                info = pc.info
                paths.append(
                    {
                        "id": pid,
                        "name": sess.names.get(pid, ""),
                        "state": pc.state,
                        "rtt_ms": info.srtt_us / 1000 if info else 0.0,
                        "rate_mbit": info.delivery_rate * 8 / 1e6 if info else 0.0,
                        "lost": info.total_retrans if info else 0,
                        "queued": pc.buffered + pc.notsent(),
                        "bytes_in": pc.bytes_in,
                        "bytes_out": pc.bytes_out,
                    }
                )
            sessions.append(
                {
                    "gateway": sess.gateway_id,
                    "session": sess.session,
                    "paths": paths,
                    "connections": st["connections"],
                    "counters": st["counters"],
                    "buffered_bytes": st["buffered_bytes"]
                    + sum(len(r.pending) for r in sess.relays.values()),
                    "relays": len(sess.relays),
                    "context": {
                        c: {
                            **v,
                            "age_s": round(now - v["received"], 3),
                            **(sess.context.status(c, now) if sess.context is not None else {}),
                        }
                        for c, v in self.contexts.get(sess.gateway_id, {}).items()
                    },
                }
            )
        return {
            "role": "node",
            "id": self.cfg.node.id,
            "uptime": now - self.started,
            "listen": self.cfg.node.listen,
            "sessions": sessions,
            "counters": dict(self.counters),
            "handshaking": len(self.handshaking),
        }

    def close(self) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Reset every connection (RST to servers, RST messages to gateways), close all."""
        now = self.clock()
        for sess in list(self.sessions.values()):
            self._end_session(sess, wire.RstReason.SHUTDOWN, now)
        for pc in list(self.handshaking):
            forget(self.sel, pc.fd)
            pc.close()
        self.handshaking.clear()
        forget(self.sel, self.listener)
        self.listener.close()
        if self.control is not None:
            self.control.close()
        if self.context_db is not None:
            self.context_db.store.close()
            self.context_db = None
        self.sel.close()
        log.info("stopped")
