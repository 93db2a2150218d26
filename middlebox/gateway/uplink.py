"""The gateway's side of the carrier paths: dialling, HELLO, probes, the session's mux.

:class:`Uplink` owns one slot per configured path (``gateway.carriers[].paths`` per
carrier). Each slot dials the node from its carrier's interface and address
(:func:`middlebox.paths.sockets.open_path_socket`: SO_BINDTODEVICE, per-path congestion
control, NODELAY, NOTSENT_LOWAT, keepalive, user timeout), runs TLS 1.3 with the
gateway's certificate, sends HELLO and waits for HELLO_ACK; until then the path
carries nothing. A path that fails at any point is taken down in the mux (its
unacknowledged messages go out again on the others) and dialled again after the
:class:`~middlebox.paths.sockets.ReconnectPolicy`'s backoff with jitter. A path from which
nothing arrived for ``paths.user_timeout`` (PROBEs go every ``paths.probe_interval``,
and the node answers each) is declared dead the same way, so a black-holed carrier is
left even when the kernel still believes in it.

Every path's kernel statistics (TCP_INFO) are read every :data:`INFO_INTERVAL` and fed
to the mux (srtt, rttvar) and to the scheduler's estimators. The uplink does no
blocking I/O except name resolution of its node's address when it is made.

One uplink serves one node (``node``, default ``gateway.node``): with several nodes
(``[[gateway.nodes]]``) the gateway's :class:`~middlebox.gateway.fleet.Fleet` holds one
per node in use, and a DRAIN from the node goes to ``on_drain``.
"""

from __future__ import annotations

import errno
import logging
import random
import selectors
import socket
from collections.abc import Callable

from middlebox.config import CarrierConfig, Config
from middlebox.errors import UserError
from middlebox.logs import kv
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
from middlebox.paths.sockets import PathOptions, PathSetupError, ReconnectPolicy, open_path_socket
from middlebox.paths.tls import gateway_context
from middlebox.session import wire
from middlebox.session.mux import Budget, Mux, Policy

log = logging.getLogger("mpproxy.uplink")


class Slot:
    """One configured path: carrier, index, and the connection currently dialled."""

    def __init__(self, pid: int, carrier: CarrierConfig, index: int, cfg: Config, rng) -> None:
        self.pid = pid
        self.carrier = carrier
        self.index = index
        self.name = f"{carrier.name}/{index}"
        self.opts = PathOptions.for_carrier(carrier, cfg.paths)
        self.reconnect = ReconnectPolicy.from_config(cfg.paths, rng)
        self.pc: PathConn | None = None
        self.deadline = 0.0  # for TCP, TLS and HELLO while dialling
        self.next_probe = 0.0
        self.probe_id = 0
        self.probe_rtt: float | None = None
        self.ups = 0
        self.failures = 0
        self.last_error = ""


class Uplink:
    """Carrier paths and the mux of one gateway run (one session)."""

    def __init__(
        self,
        cfg: Config,
        sel: selectors.BaseSelector,
        clock: Callable[[], float],
        policy: Policy | None = None,
        session: int | None = None,
        rng: random.Random | None = None,
        node: str | None = None,
        node_name: str = "node",
        first_pid: int = 1,
        first_conn_id: int = 1,
        budget: Budget | None = None,
    ) -> None:
        self.check(cfg)
        self.cfg = cfg
        self.sel = sel
        self.clock = clock
        self.rng = rng or random.Random()
        self.session = session if session is not None else self.rng.getrandbits(63)
        self.ctx = gateway_context(cfg.tls)
        self.node = node or cfg.gateway.node
        self.node_name = node_name
        host, _, port = self.node.rpartition(":")
        self.host = host.strip("[]")
        try:
            infos = socket.getaddrinfo(self.host, int(port), 0, socket.SOCK_STREAM)
        except socket.gaierror as e:
            key = f"gateway.nodes {node_name}" if cfg.gateway.nodes else "gateway.node"
            raise UserError(f"{key} {self.node}: cannot resolve ({e.strerror})") from None
        self.node_addr = infos[0][4][:2]
        self.family = infos[0][0]
        kw = {"policy": policy} if policy is not None else {}
        # the whole process's (shared by the uplinks of a fleet)
        self.budget = budget or Budget(cfg.gateway.memory_budget)
        self.mux = Mux("gateway", cfg.mux_params("gateway"), budget=self.budget,
                       first_conn_id=first_conn_id, **kw)  # fmt: skip
        self.policy = policy
        self.slots: dict[int, Slot] = {}
        for carrier in cfg.gateway.carriers:
            for index in range(carrier.paths):
                pid = first_pid + len(self.slots)
                self.slots[pid] = Slot(pid, carrier, index, cfg, self.rng)
        self.paths: dict[int, PathConn] = {}  # the slots that are up
        self._last_info = -1.0
        # called with (path id, carrier name, connection, TcpInfo | None, now) after each
        # TCP_INFO reading (the gateway's context loop measures carriers with it)
        self.on_info: Callable[[int, str, object, object, float], None] | None = None
        # called with each DATAGRAM from the node (middlebox/gateway/udp.py)
        self.datagrams: Callable[[wire.Datagram, float], None] = self._no_datagrams
        # called with (draining, now) when the node sends DRAIN (the fleet moves)
        self.on_drain: Callable[[bool, float], None] | None = None
        self.candidate = None  # the fleet's record of this node (middlebox/gateway/fleet.py)
        self.last_up = clock()  # when a path was last seen up (the fleet's lost rule)
        self.node_draining = False  # what the node's last DRAIN said
        self.counters = {
            "dials": 0,
            "path_failures": 0,
            "path_ups": 0,
            "paths_silent": 0,  # nothing received for paths.user_timeout
            "paths_unread": 0,  # the node did not read (paths.max_output)
        }

    def _no_datagrams(self, msg: wire.Datagram, now: float) -> None:
        self.counters["datagrams_ignored"] = self.counters.get("datagrams_ignored", 0) + 1

    @staticmethod
    def check(cfg: Config) -> None:
        """Refuse a configuration the uplink cannot run (before anything is created)."""
        if not cfg.gateway.carriers:
            raise UserError("gateway.carriers: at least one [[gateway.carriers]] table is needed")

    # -- timers and polling ---------------------------------------------------------------

    def next_timer(self) -> float | None:
        times = []
        for s in self.slots.values():
            if s.pc is None:
                if s.reconnect.next_attempt is not None:
                    times.append(s.reconnect.next_attempt)
            elif s.pc.state != UP:
                times.append(s.deadline)
            else:
                times.append(s.next_probe)
        t = self.mux.next_timer()
        if t is not None:
            times.append(t)
        if self.paths:
            times.append(self._last_info + INFO_INTERVAL)
        return min(times) if times else None

    def poll(self, now: float) -> None:
        """Dial what is due, time out handshakes and silent paths, probe, read TCP_INFO."""
        silence = self.cfg.paths.user_timeout
        for s in self.slots.values():
            pc = s.pc
            if pc is None:
                if s.reconnect.due(now):
                    self._dial(s, now)
            elif pc.state != UP:
                if now >= s.deadline:
                    self._fail(s, PathError("no HELLO_ACK in time"), now)
            elif now - pc.last_rx > silence:
                self.counters["paths_silent"] += 1
                self._fail(s, PathError(f"nothing received for {silence:g} s"), now)
            elif now >= s.next_probe:
                s.probe_id = (s.probe_id + 1) & 0xFFFFFFFF
                pc.write(wire.Probe(s.probe_id, int(now * 1e9)))
                s.next_probe = now + self.cfg.paths.probe_interval
        if now - self._last_info >= INFO_INTERVAL:
            self._last_info = now
            for pid, pc in self.paths.items():
                s = self.slots[pid]
                info = report_tcp_info(
                    self.mux, self.policy, pid, s.carrier.name, pc, now, s.probe_rtt
                )
                if self.on_info is not None:
                    self.on_info(pid, s.carrier.name, pc, info, now)

    def pump(self, now: float) -> None:
        for pid, e in pump_mux(self.mux, self.paths, now):
            self._fail(self.slots[pid], e, now)
        for s in self.slots.values():
            if s.pc is not None:
                self._watch(s)

    # -- dialling -------------------------------------------------------------------------

    def _dial(self, s: Slot, now: float) -> None:
        self.counters["dials"] += 1
        try:
            sock = open_path_socket(s.opts, self.family)
        except PathSetupError as e:
            s.last_error = str(e)
            self._failed_dial(s, str(e), now)
            return
        sock.setblocking(False)  # a blocking connect held the whole gateway up to the
        err = sock.connect_ex(self.node_addr)  # user timeout while a carrier was dark
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self._failed_dial(s, f"connect: {errno.errorcode.get(err, err)}", now)
            return
        s.pc = PathConn(
            sock,
            max_payload=self.cfg.wire.max_payload,
            lowat=self.cfg.paths.notsent_lowat,
            room_time=self.cfg.paths.notsent_time,
            ctx=self.ctx,
            server_hostname=self.host,
            connecting=True,
            label=s.name,
            max_output=self.cfg.paths.max_output,
        )
        s.pc.since = now
        s.deadline = now + self.cfg.paths.connect_timeout
        self._watch(s)

    def _failed_dial(self, s: Slot, why: str, now: float) -> None:
        s.failures += 1
        s.last_error = why
        again = s.reconnect.failed(now)
        log.info(
            "path dial failed %s", kv(path=s.name, why=repr(why), retry_in=f"{again - now:.2f}")
        )

    def _watch(self, s: Slot) -> None:
        pc = s.pc
        assert pc is not None
        set_interest(self.sel, pc.fd, pc.interest(), lambda m, t, s=s: self._ready(s, m, t))

    def _ready(self, s: Slot, mask: int, now: float) -> None:
        try:
            self._io(s, mask, now)
        except Exception as e:  # one bad path must never stop the gateway
            log.exception("path %s: unexpected error", s.name)
            self._fail(s, PathError(f"internal error: {e!r}"), now)

    def _io(self, s: Slot, mask: int, now: float) -> None:
        pc = s.pc
        if pc is None:
            return
        was = pc.state
        try:
            msgs = pc.handle(mask, now)
            if was != HELLO and pc.state == HELLO:
                c = s.carrier
                addrs = (c.address or pc.raw.getsockname()[0],)  # the kernel's choice
                pc.write(
                    wire.Hello(
                        self.cfg.gateway.id,
                        self.session,
                        c.name,
                        c.type,
                        s.index,
                        addrs,
                        self.cfg.wire.max_payload,
                    )
                )
                pc.flush()
            for msg in msgs:
                self._message(s, pc, msg, now)
                if s.pc is not pc:
                    return
        except PathError as e:
            self._fail(s, e, now)
            return
        self._watch(s)

    def _message(self, s: Slot, pc: PathConn, msg: wire.Message, now: float) -> None:
        t = type(msg)
        if pc.state == HELLO:
            if t is wire.HelloAck:
                pc.state = UP
                pc.peer_max_payload = msg.max_payload  # type: ignore[attr-defined]
                pc.last_rx = now
                s.ups += 1
                s.next_probe = now
                self.counters["path_ups"] += 1
                s.reconnect.connected(now)
                self.paths[s.pid] = pc
                info = pc.tcp_info()
                srtt = info.srtt if info is not None and info.srtt_us else 0.1
                self.mux.path_up(s.pid, now, srtt=srtt, room=pc.room())
                log.info(
                    "path up %s", kv(path=s.name, node=msg.node_id, srtt_ms=f"{srtt * 1e3:.1f}")
                )  # type: ignore[attr-defined]
                return
            if t is wire.Close:
                raise PathError(f"node closed the path: {msg.reason.name} {msg.detail!r}")  # type: ignore[attr-defined]
            raise PathError(f"{t.__name__} before HELLO_ACK", wire.CloseReason.PROTOCOL_ERROR)
        if t is wire.ProbeAck:
            if msg.probe_id == s.probe_id:  # type: ignore[attr-defined]
                held = max(0, msg.sent_ns - msg.recv_ns)  # type: ignore[attr-defined]
                s.probe_rtt = max(0.0, (now * 1e9 - msg.echo_ns - held) / 1e9)  # type: ignore[attr-defined]
        elif t is wire.Probe:
            pc.answer_probe(msg)  # type: ignore[arg-type]
        elif t is wire.Close:
            raise PathError(f"node closed the path: {msg.reason.name} {msg.detail!r}")  # type: ignore[attr-defined]
        elif t is wire.Datagram:
            self.datagrams(msg, now)  # type: ignore[arg-type]
        elif t is wire.Drain:
            self.counters["drains_heard"] = self.counters.get("drains_heard", 0) + 1
            if self.on_drain is not None:
                self.on_drain(msg.draining, now)  # type: ignore[attr-defined]
        elif t in (wire.Hello, wire.HelloAck, wire.Context):
            raise PathError(f"unexpected {t.__name__}", wire.CloseReason.PROTOCOL_ERROR)
        else:
            self.mux.receive(s.pid, msg, now)

    def _fail(self, s: Slot, e: PathError, now: float) -> None:
        pc = s.pc
        if pc is None:
            return
        up = pc.state == UP
        if isinstance(e, OutputOverflow):
            self.counters["paths_unread"] += 1
        forget(self.sel, pc.fd)
        pc.close(e.close, e.reason)
        s.pc = None
        s.last_error = e.reason
        self.paths.pop(s.pid, None)
        s.failures += 1
        self.counters["path_failures"] += 1
        if up:
            self.mux.path_down(s.pid, now)
            down = getattr(self.policy, "path_down", None)
            if down is not None:
                down(s.pid, now)
        again = s.reconnect.failed(now)
        log.info(
            "path down %s",
            kv(path=s.name, reason=repr(e.reason), was_up=up, retry_in=f"{again - now:.2f}"),
        )

    def cut(self, pid: int, now: float, why: str = "cut by operator") -> None:
        """Take one path down now (tests and operators); it is dialled again later."""
        s = self.slots[pid]
        if s.pc is not None:
            self._fail(s, PathError(why, wire.CloseReason.CARRIER_DOWN), now)

    # -- status and shutdown --------------------------------------------------------------

    def path_status(self) -> list[dict]:
        out = []
        transport = self.mux.stats()["paths"]
        for s in self.slots.values():
            pc = s.pc
            info = pc.info if pc is not None else None
            mp = transport.get(s.pid)
            out.append(
                {
                    "id": s.pid,
                    "name": s.name,
                    "carrier": s.carrier.name,
                    "interface": s.carrier.interface,
                    "state": pc.state if pc is not None else "down",
                    "rtt_ms": info.srtt_us / 1000 if info else 0.0,
                    "probe_rtt_ms": s.probe_rtt * 1000 if s.probe_rtt is not None else None,
                    "rate_mbit": info.delivery_rate * 8 / 1e6 if info else 0.0,
                    "lost": info.total_retrans if info else 0,
                    "cwnd": info.snd_cwnd if info else 0,
                    "queued": (pc.buffered + pc.notsent()) if pc is not None else 0,
                    "bytes_in": pc.bytes_in if pc is not None else 0,
                    "bytes_out": pc.bytes_out if pc is not None else 0,
                    "sent_bytes": mp["sent_bytes"] if mp else 0,
                    "transport": mp or {},
                    "kernel": pc.kernel_status() if pc is not None else {},
                    "ups": s.ups,
                    "failures": s.failures,
                    "last_error": s.last_error,
                }
            )
        return out

    def limits(self) -> dict[str, int | float]:
        """The gateway's limits on the session toward the node (for ``mpproxy status``)."""
        return {
            "memory_budget": self.budget.limit,
            "max_output": self.cfg.paths.max_output,
            "silent_timeout": self.cfg.paths.user_timeout,
            "reorder_overhead": self.cfg.wire.reorder_overhead,
        }

    def close(
        self,
        now: float,
        reason: wire.CloseReason = wire.CloseReason.SHUTDOWN,
        detail: str = "gateway stopping",
    ) -> None:
        """Reset every connection toward the node (RST on every path), close the paths."""
        for cid in self.mux.conn_ids():
            self.mux.abort(cid, wire.RstReason.SHUTDOWN, now)
        pump_mux(self.mux, self.paths, now)
        for s in self.slots.values():
            if s.pc is not None:
                forget(self.sel, s.pc.fd)
                s.pc.close(reason, detail)
                s.pc = None
        self.paths.clear()
