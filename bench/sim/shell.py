"""The product's gateway and node over simulated carrier paths.

:class:`Proxy` holds a gateway-side and a node-side :class:`~middlebox.session.mux.Mux`,
each with its :class:`~middlebox.session.policy.SchedulerPolicy`, built as
``middlebox.gateway.process`` and ``middlebox.node.sessions`` build theirs (the
configuration's ``mux_params`` for the side, ``[scheduler]``, ``paths.notsent_lowat``).
Every rule of the transport and of scheduling is theirs; this module does what the I/O
shells do around them, with the same calls:

* **paths**: one :class:`Path` per carrier; each dial is a :class:`Connection`, one TCP
  connection of two :class:`~bench.sim.tcp.Socket` directions over the carrier's two
  :class:`~bench.sim.links.Link` directions. A dial runs the handshake through the links
  (SYN, SYN-ACK, the TLS 1.3 flights, HELLO, HELLO_ACK; ``paths.connect_timeout``); the
  gateway's slot redials after the configuration's
  :class:`~middlebox.paths.sockets.ReconnectPolicy` backoff. A path fails on the gateway
  when nothing arrived on it for ``paths.user_timeout`` (PROBEs go every
  ``paths.probe_interval``) or when its socket's user timeout expires; the node drops a
  path when nothing arrived on it for ``paths.user_timeout`` either, when its own
  socket's user timeout expires or the gateway's FIN or RST reaches it. A reconnected
  path is a new path id on the node, as live.
* **the loop**: each side runs an iteration whenever something arrived, its mux's
  timer came due, or its TCP_INFO reading did: the mux's events are handled, then
  :func:`~middlebox.paths.conn.pump_mux` offers each path's room (NOTSENT_LOWAT minus
  the socket's not-sent bytes) and writes what ``messages_to_send`` hands out, then the
  events again (the node, like its process, repeats while events come, at most 8 times).
* **TCP_INFO** every :data:`~middlebox.paths.conn.INFO_INTERVAL` per path and side
  through :func:`~middlebox.paths.conn.report_tcp_info` (srtt, rttvar and progress to
  the mux, the reading and the latest PROBE round trip to the adapter).
* **applications**: the gateway's client side opens a connection for a request (the
  mux's OPEN, the adapter's ``opened``), sends its request line and reads whatever
  arrives (goodput); the node's server side accepts after ``server_delay``, reads the
  request and produces the response into the mux as its send room allows, ends it with
  FIN; the client ends its side once it has every byte, as the emulation's client
  closes. Uploads run the other way (the client's bytes are produced into the gateway's
  mux, the server reads them).

Messages pass as the wire's objects (no encoding); a message costs on the path
``MESSAGE_OVERHEAD`` plus its payload (DATA) or its encoded length (everything else),
plus TLS records' 22 bytes per 16 KiB.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable
from dataclasses import dataclass

from bench.sim.engine import Engine
from bench.sim.links import MSS, Link
from bench.sim.metrics import Recorder
from bench.sim.tcp import Socket
from bench.sim.transport import Conn, Transport, TransportParams
from middlebox.config import Config, PathConfig
from middlebox.paths.conn import INFO_INTERVAL, UP, allowance_for, pump_mux, report_tcp_info
from middlebox.paths.sockets import ReconnectPolicy, delivering
from middlebox.session import wire
from middlebox.session.mux import (
    MESSAGE_OVERHEAD,
    Budget,
    Closed,
    Mux,
    OpenFailed,
    OpenRequested,
    PeerFinished,
    Readable,
    Reset,
    Writable,
)
from middlebox.session.policy import SchedulerPolicy
from scheduler.generators import CarrierTracker
from scheduler.longterm import LongTermSource

TLS_RECORD = 16 << 10  # plaintext bytes per TLS record
TLS_RECORD_OVERHEAD = 22  # TLS 1.3: header 5, content type 1, AEAD tag 16
SYN_BYTES = 74  # a SYN or SYN-ACK frame with options
SYN_RTO = 1.0  # s, the kernel's first SYN retransmission timeout
# TLS 1.3 handshake flights with ECDSA certificates on both sides (bytes on the wire)
CLIENT_HELLO = 517
SERVER_FLIGHT = 1700  # ServerHello .. CertificateRequest, Certificate, Verify, Finished
CLIENT_FLIGHT = 1300  # Certificate, CertificateVerify, Finished
REQUEST_BYTES = 16  # the client's request line (the emulation's server reads one)
SERVER_ADDR = ipaddress.ip_address("198.51.100.10")
_ZEROS = memoryview(bytes(1 << 20))


_FIXED_SIZE = (wire.OpenOk, wire.Fin, wire.Rst, wire.Probe, wire.ProbeAck, wire.OpenFail)
_sizes: dict[object, int] = {}


def wire_size(msg: object) -> int:
    """Bytes ``msg`` takes on a path: its encoding and the TLS records carrying it."""
    t = type(msg)
    if t is wire.Data:
        n = len(msg.payload) + MESSAGE_OVERHEAD  # type: ignore[attr-defined]
    elif t is Flight:
        n = msg.size  # type: ignore[attr-defined]
    else:
        # encoded once per shape: every message of these types (a DATA_ACK with as many
        # SACK ranges, an OPEN of the same address family) encodes to the same length
        if t is wire.DataAck:
            key: object = len(msg.ranges)  # type: ignore[attr-defined]
        elif t in _FIXED_SIZE:
            key = t
        elif t is wire.Open:
            key = (t, msg.src_addr.version)  # type: ignore[attr-defined]
        else:
            key = None
        n = _sizes.get(key, 0) if key is not None else 0
        if not n:
            n = len(wire.encode_header(msg))  # type: ignore[arg-type]
            if key is not None:
                _sizes[key] = n
    return n + TLS_RECORD_OVERHEAD * (-(-n // TLS_RECORD))


@dataclass(frozen=True)
class Flight:
    """A TLS handshake flight (not a mux message)."""

    name: str
    size: int


class End:
    """One end of a path connection as the shells see a ``PathConn``: what ``pump_mux``
    and ``report_tcp_info`` call on it (``state``, ``room()``, ``queued()``, ``write()``,
    ``has_output``, ``flush()``, ``tcp_info()``, ``delivering``). Its unsent allowance
    follows the socket's rate at each reading by ``PathConn``'s own rule
    (:func:`~middlebox.paths.conn.allowance_for`: ``paths.notsent_time`` of the pacing
    rate, 16 KiB to ``paths.notsent_lowat``).

    Messages written between two flushes reach the socket as one write, as
    ``PathConn.flush`` hands its buffer to the kernel: a small message rides in the same
    unit as the one before it (it would share its last packet), a large one starts a new
    unit, so each message still arrives about when its last byte would."""

    __slots__ = (
        "sock",
        "lowat",
        "room_time",
        "allowance",
        "state",
        "info",
        "delivering",
        "last_rx",
        "rec",
        "units",
        "buffered",
        "firsts",
    )

    def __init__(
        self, sock: Socket, paths: PathConfig, rec: Recorder | None, firsts: dict[int, int]
    ) -> None:
        self.sock = sock
        self.lowat = paths.notsent_lowat  # the most it may hold unsent
        self.room_time = paths.notsent_time
        self.allowance = self.lowat  # what it may hold now (until the first rate is known)
        self.state = "hello"
        self.info = None
        self.delivering = False
        self.last_rx = 0.0
        self.rec = rec
        self.units: list[list] = []  # [messages, wire bytes] written, not yet flushed
        self.buffered = 0  # their bytes
        self.firsts = firsts  # connection -> stream offset its side has sent up to

    @property
    def has_output(self) -> bool:
        return bool(self.units)

    def room(self) -> int:
        if self.state != UP:
            return 0
        n = self.allowance - self.sock.notsent - self.buffered
        return n if n > 0 else 0

    def queued(self) -> int:
        return self.sock.notsent + self.buffered

    def write(self, msg: object) -> None:
        size = wire_size(msg)
        rec = self.rec
        if rec is not None:  # the side that sends the applications' bytes
            rec.wire_sent += size
            if type(msg) is wire.Data:
                n = len(msg.payload)  # type: ignore[attr-defined]
                rec.payload_sent += n
                # first copies: the connection's stream offsets not written before (the
                # emulation's per-connection bytes_sent of the sending mux)
                cid, end = msg.conn_id, msg.seq + n  # type: ignore[attr-defined]
                upto = self.firsts.get(cid, 0)
                if end > upto:
                    rec.first_sent += end - max(upto, msg.seq)  # type: ignore[attr-defined]
                    self.firsts[cid] = end
        self.buffered += size
        units = self.units
        if units and size < MSS:
            last = units[-1]
            last[0].append(msg)
            last[1] += size
        else:
            units.append([[msg], size])

    def flush(self) -> None:
        sock = self.sock
        now = sock.engine.now
        for msgs, size in self.units:
            sock.write(msgs, size, now)
        self.units = []
        self.buffered = 0

    def send(self, msg: object) -> None:
        """Write and flush one message (PROBEs, HELLO and the like)."""
        self.write(msg)
        self.flush()

    def tcp_info(self):
        if not self.sock.alive:
            self.delivering = False
            return None
        before, self.info = self.info, self.sock.tcp_info()
        self.delivering = delivering(before, self.info)
        target = allowance_for(self.info, self.lowat, self.room_time, self.allowance)
        if target is not None:
            self.allowance = target
        return self.info


class Connection:
    """One dial of a path: a TCP connection, both its ends and their sockets."""

    def __init__(self, proxy: Proxy, path: Path, now: float) -> None:
        self.proxy = proxy
        self.path = path
        ut = proxy.cfg.paths.user_timeout
        engine = proxy.engine
        rec = proxy.rec
        gw_sock = Socket(
            engine,
            path.up,
            path.down,
            self._at_node,
            user_timeout=ut,
            on_error=self._gateway_error,
        )
        node_sock = Socket(
            engine,
            path.down,
            path.up,
            self._at_gateway,
            user_timeout=ut,
            on_error=self._node_error,
        )
        # the gateway's socket sends on the uplink, the node's on the downlink; the bytes
        # they write count towards redundancy on the side the applications' bytes leave
        # from (the node; the gateway too once a client uploads), as the emulation counts
        paths = proxy.cfg.paths
        self.gw = End(gw_sock, paths, rec if proxy.upstream else None, proxy.gateway_sent)
        self.node = End(node_sock, paths, rec, proxy.node_sent)
        self.gw_open = True  # the gateway holds its end
        self.node_open = False  # the node holds its end (from the SYN on)
        self.node_pid: int | None = None
        self.reset_sent = False
        self.syns = 0

    # -- the two ends hear of each other -------------------------------------------------

    def _at_node(self, now: float, unit: list) -> bool:
        if not self.node_open:
            self._refuse(now, to_gateway=True)
            return False
        self.node.last_rx = now
        receive = self.proxy.node.receive
        for msg in unit:
            receive(self, msg, now)
        return True

    def _at_gateway(self, now: float, unit: list) -> bool:
        if not self.gw_open:
            self._refuse(now, to_gateway=False)
            return False
        self.gw.last_rx = now
        receive = self.proxy.gateway.receive
        for msg in unit:
            receive(self, msg, now)
        return True

    def _refuse(self, now: float, to_gateway: bool) -> None:
        """A segment for a connection this end no longer has: the kernel answers RST."""
        if self.reset_sent:
            return
        self.reset_sent = True
        self.send_fin(now, to_node=not to_gateway)

    def send_fin(self, now: float, to_node: bool) -> None:
        """This end closed (FIN, or RST): the other end learns when it gets through."""
        link = self.path.up if to_node else self.path.down
        t, lost = link.send(now, SYN_BYTES, 1)
        if not lost:
            side = self.proxy.node if to_node else self.proxy.gateway
            self.proxy.engine.at(t, side.closed_by_peer, self)

    def _gateway_error(self, now: float) -> None:
        self.proxy.gateway.fail(self.path, now, "user timeout")

    def _node_error(self, now: float) -> None:
        self.proxy.node.drop(self, now)


class Path:
    """One carrier: its two link directions and the gateway's slot for it."""

    def __init__(self, proxy: Proxy, index: int, down: Link, up: Link, rng: random.Random):
        self.proxy = proxy
        self.index = index
        self.pid = index + 1  # the gateway's slot id (the node numbers its own)
        self.carrier = down.carrier.name
        self.down = down
        self.up = up
        self.reconnect = ReconnectPolicy.from_config(proxy.cfg.paths, rng)
        self.conn: Connection | None = None
        self.state = "down"  # down, dialling, hello, up
        self.probe_id = 0
        self.probe_rtt: float | None = None
        self.syn_at = 0.0  # the latest SYN (the handshake's RTT sample)


class _Loop:
    """A process's event loop, as far as the shells need one: an iteration soon after
    something arrived (:meth:`wake`), and at the mux's next timer."""

    mux: Mux
    paths: dict[int, End]

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.engine = proxy.engine
        self._pending = False
        self._timer_at: float | None = None

    def wake(self, now: float) -> None:
        """An iteration of the loop soon (after the model's loop delay)."""
        if not self._pending:
            self._pending = True
            self.engine.at(now + self.proxy.params.loop_delay, self._run)

    def _run(self, now: float, _arg: object = None) -> None:
        self._pending = False
        self.iteration(now)

    def iteration(self, now: float) -> None:
        raise NotImplementedError

    def _pump(self, now: float) -> None:
        """``pump_mux``, skipped when the mux has nothing to hand out after its timers
        (``Mux.output_pending``): offering the paths' room would then change nothing."""
        mux = self.mux
        mux.handle_timer(now)
        if mux.output_pending():
            pump_mux(mux, self.paths, now)

    def _arm(self, now: float) -> None:
        t = self.mux.next_timer()
        if t is None:
            return
        if t <= now:
            t = now + 1e-6  # due already: the live loop comes round a moment later
        if self._timer_at is None or t < self._timer_at:
            self._timer_at = t
            self.engine.at(t, self._timer, t)

    def _timer(self, now: float, t: float) -> None:
        if self._timer_at == t:
            self._timer_at = None
        self.iteration(now)


class Gateway(_Loop):
    """The gateway's duties (``Uplink``, ``Bridge`` and the clients)."""

    def __init__(self, proxy: Proxy, policy: SchedulerPolicy) -> None:
        super().__init__(proxy)
        cfg = proxy.cfg
        self.policy = policy
        # as Uplink does: the one session's budget is the whole process's
        self.mux = Mux(
            "gateway",
            cfg.mux_params("gateway"),
            policy=policy,
            budget=Budget(cfg.gateway.memory_budget),
        )
        self.paths: dict[int, End] = {}  # the slots that are up
        self.apps: dict[int, Conn] = {}  # the clients' connections by id
        self.session = 1
        self.on_up: list[Callable[[float], None]] = []
        self.uploading: set[int] = set()  # clients with bytes the mux had no room for

    # -- paths ---------------------------------------------------------------------------

    def dial(self, now: float, path: Path) -> None:
        """Dial ``path`` (``Uplink._dial``): SYN now, the handshake through the links."""
        if path.state != "down":
            return
        proxy = self.proxy
        cfg = proxy.cfg
        conn = path.conn = Connection(proxy, path, now)
        path.state = "dialling"
        self.engine.at(now + cfg.paths.connect_timeout, self._handshake_deadline, conn)
        self._syn(now, conn)

    def _syn(self, now: float, conn: Connection) -> None:
        path = conn.path
        if path.conn is not conn or path.state != "dialling":
            return
        path.syn_at = now
        t, lost = path.up.send(now, SYN_BYTES, 1)
        self.engine.at(now + SYN_RTO * (1 << conn.syns), self._syn, conn)  # unanswered: again
        conn.syns += 1
        if not lost:
            self.engine.at(t, self.proxy.node.syn, conn)

    def syn_ack(self, now: float, conn: Connection) -> None:
        """The SYN-ACK arrived: TCP is up, the TLS handshake starts."""
        path = conn.path
        if path.conn is not conn or path.state != "dialling":
            return
        rtt = now - path.syn_at
        path.state = "hello"
        conn.gw.sock.connect(now, rtt)
        conn.node.sock.connect(now, rtt)
        conn.gw.send(Flight("client hello", CLIENT_HELLO))

    def _handshake_deadline(self, now: float, conn: Connection) -> None:
        path = conn.path
        if path.conn is conn and path.state in ("dialling", "hello"):
            self.fail(path, now, "no HELLO_ACK in time")

    def fail(self, path: Path, now: float, why: str = "") -> None:
        """``Uplink._fail``: close the path, tell the mux and the adapter, redial later."""
        conn = path.conn
        if conn is None or path.state == "down":
            return
        was_up = path.state == UP
        path.state = "down"
        path.conn = None
        conn.gw_open = False
        conn.gw.state = "closed"
        conn.gw.sock.close()
        conn.send_fin(now, to_node=True)
        self.paths.pop(path.pid, None)
        if was_up:
            self.proxy.rec.path_downs += 1
            self.mux.path_down(path.pid, now)
            self.policy.path_down(path.pid, now)
        again = path.reconnect.failed(now)
        self.engine.at(again, self.dial, path)
        self.wake(now)

    def closed_by_peer(self, now: float, conn: Connection) -> None:
        if conn.path.conn is conn:
            self.fail(conn.path, now, "closed by peer")

    def _path_up(self, now: float, conn: Connection) -> None:
        path = conn.path
        path.state = UP
        end = conn.gw
        end.state = UP
        end.last_rx = now
        path.reconnect.connected(now)
        self.paths[path.pid] = end
        info = end.tcp_info()
        srtt = info.srtt if info is not None and info.srtt_us else 0.1
        self.mux.path_up(path.pid, now, srtt=srtt, room=end.room())
        self.engine.at(now, self._probe, conn)
        waiting, self.on_up = self.on_up, []
        for cb in waiting:
            cb(now)
        self.wake(now)

    def _probe(self, now: float, conn: Connection) -> None:
        path = conn.path
        if path.conn is not conn or path.state != UP:
            return
        path.probe_id = (path.probe_id + 1) & 0xFFFFFFFF
        conn.gw.send(wire.Probe(path.probe_id, int(now * 1e9)))
        self.engine.at(now + self.proxy.cfg.paths.probe_interval, self._probe, conn)

    def tick(self, now: float) -> None:
        """``Uplink.poll`` at its TCP_INFO cadence: silent paths fail, readings go on."""
        silence = self.proxy.cfg.paths.user_timeout
        for path in self.proxy.paths:
            conn = path.conn
            if path.state == UP and conn is not None and now - conn.gw.last_rx > silence:
                self.fail(path, now, f"nothing received for {silence:g} s")
        for pid, end in self.paths.items():
            path = self.proxy.paths[pid - 1]
            report_tcp_info(self.mux, self.policy, pid, path.carrier, end, now, path.probe_rtt)
        self.iteration(now)

    # -- what arrives ----------------------------------------------------------------------

    def receive(self, conn: Connection, unit: object, now: float) -> None:
        """``Uplink._message`` for whatever reached the gateway's end of ``conn``."""
        path = conn.path
        t = type(unit)
        if t is Flight:
            conn.gw.write(Flight("client flight", CLIENT_FLIGHT))
            cfg = self.proxy.cfg
            hello = wire.Hello(
                cfg.gateway.id, self.session, path.carrier, "lte", 0, (), cfg.wire.max_payload
            )
            conn.gw.send(hello)
            return
        if path.state == "hello":
            if t is wire.HelloAck:
                self._path_up(now, conn)
            return
        if path.state != UP:
            return
        if t is wire.ProbeAck:
            if unit.probe_id == path.probe_id:  # type: ignore[attr-defined]
                path.probe_rtt = max(0.0, now - unit.echo_ns / 1e9)  # type: ignore[attr-defined]
        elif t is wire.Probe:
            conn.gw.send(wire.ProbeAck(unit.probe_id, unit.sent_ns, 0, 0))  # type: ignore[attr-defined]
        else:
            self.proxy.received(self.mux, path.pid, path.index, unit, now)
            self.wake(now)

    # -- the loop --------------------------------------------------------------------------

    def iteration(self, now: float) -> None:
        """``Gateway.idle`` after ``Uplink.poll``: events, pump, events."""
        self._events(now)
        self._pump(now)
        self._events(now)
        self._arm(now)

    def _events(self, now: float) -> None:
        mux = self.mux
        proxy = self.proxy
        while (e := mux.next_event()) is not None:
            conn = self.apps.get(e.conn_id)
            if conn is None:
                continue
            t = type(e)
            if t is Readable:
                proxy.client_read(conn, now)
            elif t is Writable:
                proxy.client_write(conn, now)
            elif t is PeerFinished:
                proxy.client_read(conn, now)
            elif t is Reset or t is OpenFailed:
                self._forget(conn)
                proxy.client_reset(conn, now)
            elif t is Closed:
                self._forget(conn)
        if self.uploading:
            for cid in list(self.uploading):
                conn = self.apps.get(cid)
                if conn is None or proxy.client_write(conn, now):
                    self.uploading.discard(cid)

    def _forget(self, conn: Conn) -> None:
        self.uploading.discard(conn.id)
        if self.apps.pop(conn.id, None) is not None:
            self.policy.closed(conn.id)


class Server:
    """The node's side of one connection: the real server behind the relay."""

    __slots__ = ("conn", "connected", "request", "producing", "eof")

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.connected = False
        self.request = 0  # request bytes read
        self.producing = False
        self.eof = False  # every byte handed to the mux, FIN asked for


class Node(_Loop):
    """The node's duties (``Gateways`` for the paths, ``Relay`` and the servers)."""

    def __init__(self, proxy: Proxy, policy: SchedulerPolicy) -> None:
        super().__init__(proxy)
        cfg = proxy.cfg
        self.policy = policy
        # as Gateways._new_session does: a session's budget inside the process's
        budget = Budget(cfg.node.session_memory, Budget(cfg.node.memory_budget))
        self.mux = Mux("node", cfg.mux_params("node", cfg.wire.max_payload), policy, budget)
        self.paths: dict[int, End] = {}
        self.conns: dict[int, Connection] = {}  # node path id -> connection
        self.carrier_of: dict[int, int] = {}  # node path id -> carrier index
        self.next_pid = 1
        self.servers: dict[int, Server] = {}
        self.starved: set[int] = set()  # servers with bytes the mux had no room for

    # -- paths ---------------------------------------------------------------------------

    def syn(self, now: float, conn: Connection) -> None:
        """A SYN reached the node's kernel: it answers SYN-ACK."""
        if conn.path.conn is not conn:
            return
        conn.node_open = True
        t, lost = conn.path.down.send(now, SYN_BYTES, 1)
        if not lost:
            self.engine.at(t, self.proxy.gateway.syn_ack, conn)

    def receive(self, conn: Connection, unit: object, now: float) -> None:
        t = type(unit)
        end = conn.node
        if t is Flight:
            if unit.name == "client hello":  # type: ignore[attr-defined]
                end.send(Flight("server flight", SERVER_FLIGHT))
            return
        if t is wire.Hello:
            pid = self.next_pid
            self.next_pid += 1
            conn.node_pid = pid
            self.conns[pid] = conn
            self.carrier_of[pid] = conn.path.index
            end.state = UP
            self.paths[pid] = end
            cfg = self.proxy.cfg
            end.send(wire.HelloAck(cfg.node.id, pid, max_payload=cfg.wire.max_payload))
            self.mux.path_up(pid, now)
            self.wake(now)
            return
        pid = conn.node_pid
        if pid is None or end.state != UP:
            return
        if t is wire.Probe:
            end.send(wire.ProbeAck(unit.probe_id, unit.sent_ns, 0, 0))  # type: ignore[attr-defined]
        elif t is not wire.ProbeAck:
            self.proxy.received(self.mux, pid, conn.path.index, unit, now)
            self.wake(now)

    def closed_by_peer(self, now: float, conn: Connection) -> None:
        self.drop(conn, now, tell=False)

    def drop(self, conn: Connection, now: float, tell: bool = True) -> None:
        """``Gateways._drop_path``: the node's end of ``conn`` is gone."""
        if not conn.node_open:
            return
        conn.node_open = False
        conn.node.state = "closed"
        conn.node.sock.close()
        if tell:
            conn.send_fin(now, to_node=False)
        pid = conn.node_pid
        if pid is not None and self.conns.pop(pid, None) is not None:
            self.paths.pop(pid, None)
            self.mux.remove_path(pid, now)
            self.policy.path_down(pid, now)
            self.wake(now)

    def tick(self, now: float) -> None:
        """``Gateways.poll`` at its TCP_INFO cadence: silent paths are closed
        (``_close_silent``), readings go on."""
        silence = self.proxy.cfg.paths.user_timeout
        for pid, end in list(self.paths.items()):
            if now - end.last_rx > silence:
                self.drop(self.conns[pid], now)
        carriers = self.proxy.carriers
        for pid, end in self.paths.items():
            report_tcp_info(self.mux, self.policy, pid, carriers[self.carrier_of[pid]], end, now)
        self.iteration(now)

    # -- the loop --------------------------------------------------------------------------

    def iteration(self, now: float) -> None:
        """``Node._pump``: events and pumps while events come (at most 8), then the
        servers the mux's buffer had starved are read again."""
        for _ in range(8):
            self._events(now)
            self._refill(now)
            self._pump(now)
            if not self._events(now):
                break
        self._refill(now)
        self._arm(now)

    def _events(self, now: float) -> int:
        mux = self.mux
        n = 0
        while (e := mux.next_event()) is not None:
            n += 1
            t = type(e)
            cid = e.conn_id
            if t is OpenRequested:
                conn = self.proxy.conns.get(cid)
                if conn is None:
                    mux.refuse(cid, wire.OpenFailReason.REFUSED, now)
                    continue
                o = e.open
                self.policy.described(cid, str(o.src_addr), o.dst_port, now)  # Relay._open
                self.servers[cid] = Server(conn)
                delay = self.proxy.params.server_delay
                self.engine.at(now + delay, self._connected, cid)
                continue
            srv = self.servers.get(cid)
            if srv is None:
                continue
            if t is Readable:
                self._read(srv, now)
            elif t is PeerFinished:
                self._read(srv, now)
                if srv.conn.upload and not srv.eof:
                    srv.eof = True
                    mux.shutdown(cid)  # the server closes after the client's last byte
            elif t is Writable:
                self.starved.add(cid)
            elif t is Reset or t is Closed:
                del self.servers[cid]
                self.starved.discard(cid)
        return n

    def _connected(self, now: float, cid: int) -> None:
        """The server accepted (``Relay._ready``): OPEN_OK, then the request is read."""
        srv = self.servers.get(cid)
        if srv is None or not self.mux.pending(cid):
            return
        srv.connected = True
        self.mux.accept(cid)
        self._read(srv, now)
        self.wake(now)

    def _read(self, srv: Server, now: float) -> None:
        if not srv.connected:
            return
        data = self.mux.read(srv.conn.id)
        if not data:
            return
        conn = srv.conn
        if conn.upload:
            self.proxy.deliver(conn, len(data), now)
            return
        srv.request += len(data)
        if srv.request >= REQUEST_BYTES and not srv.producing:
            srv.producing = True
            self.starved.add(conn.id)

    def produce(self, conn: Conn, now: float) -> None:
        """The server has produced more (a live stream)."""
        srv = self.servers.get(conn.id) if conn.id is not None else None
        if srv is not None and srv.producing:
            self.starved.add(conn.id)
            self.wake(now)

    def _refill(self, now: float) -> None:
        """Servers write what the mux's send buffer takes (``Relay._from_server``)."""
        if not self.starved:
            return
        mux = self.mux
        for cid in list(self.starved):
            srv = self.servers.get(cid)
            if srv is None or srv.eof or not mux.pending(cid):
                self.starved.discard(cid)
                continue
            conn = srv.conn
            if push(mux, conn):
                srv.eof = True
                self.starved.discard(cid)
            elif conn.snd_nxt >= conn.avail:
                self.starved.discard(cid)  # nothing more produced yet


def push(mux: Mux, conn: Conn) -> bool:
    """Hand ``conn``'s produced bytes to ``mux`` as far as its send room goes; at the end
    of a finite stream, FIN. Returns True when the stream is ended."""
    cid = conn.id
    todo = min(conn.avail, conn.total) - conn.snd_nxt
    while todo > 0:
        n = int(min(todo, mux.send_room(cid), len(_ZEROS)))
        if n <= 0:
            break
        mux.send(cid, _ZEROS[:n])
        conn.snd_nxt += n
        todo -= n
    if conn.snd_nxt >= conn.total:
        mux.shutdown(cid)
        return True
    return False


class Proxy(Transport):
    """The gateway and the node over one simulated path per carrier (see module text).

    ``wrap(side, mux, policy)`` (tests) may return stand-ins for a side's mux and
    adapter that the shells then call instead (the mux keeps asking its own adapter)."""

    def __init__(
        self,
        engine: Engine,
        downs: list[Link],
        ups: list[Link],
        cfg: Config,
        policy_name: str,
        rec: Recorder,
        params: TransportParams,
        seed: int = 0,
        longterm: LongTermSource | None = None,
        carriers: CarrierTracker | None = None,
        wrap: Callable[[str, Mux, SchedulerPolicy], tuple[Mux, SchedulerPolicy]] | None = None,
    ) -> None:
        super().__init__(engine, rec, params)
        self.cfg = cfg
        self.carriers = [lk.carrier.name for lk in downs]
        self.conns: dict[int, Conn] = {}
        self.upstream = False  # a client uploaded: the gateway's bytes count as sent too
        self.gateway_sent: dict[int, int] = {}  # connection -> offset sent up to, per side
        self.node_sent: dict[int, int] = {}

        def adapter() -> SchedulerPolicy:
            return SchedulerPolicy(
                cfg.scheduler, name=policy_name, longterm=longterm, carriers=carriers
            )

        self.gateway = Gateway(self, adapter())
        self.node = Node(self, adapter())
        if wrap is not None:
            for side in (self.gateway, self.node):
                side.mux, side.policy = wrap(side.mux.side, side.mux, side.policy)
        rng = random.Random(seed)
        self.paths = [
            Path(self, i, d, u, rng) for i, (d, u) in enumerate(zip(downs, ups, strict=True))
        ]
        self._ooo: dict[int, list[tuple[int, float]]] = {}  # connection -> (end, arrival)
        engine.at(0.0, self._start)

    def _start(self, now: float, _arg: object = None) -> None:
        """Every path up at time 0, as the emulation starts its workload once its paths
        are: connected with the handshake's RTT measured, HELLO exchanged."""
        node = self.node
        for path in self.paths:
            conn = path.conn = Connection(self, path, now)
            rtt = (path.down.delay + path.up.delay) or 0.01
            conn.gw.sock.connect(now, rtt)
            conn.node.sock.connect(now, rtt)
            conn.node_open = True
            pid = node.next_pid
            node.next_pid += 1
            conn.node_pid = pid
            node.conns[pid] = conn
            node.carrier_of[pid] = path.index
            conn.node.state = UP
            node.paths[pid] = conn.node
            node.mux.path_up(pid, now)
            path.state = "hello"
            self.gateway._path_up(now, conn)
        self.engine.at(now, self._tick)

    def _tick(self, now: float, _arg: object = None) -> None:
        self.gateway.tick(now)
        self.node.tick(now)
        self.engine.at(now + INFO_INTERVAL, self._tick)

    # -- what a data message brings ------------------------------------------------------------

    def received(self, mux: Mux, pid: int, carrier: int, msg: object, now: float) -> None:
        """Hand ``msg`` to ``mux``; for DATA, record what was new in it (first copies per
        carrier) and how long it waited for the bytes before it (on the side that
        receives the connection's stream)."""
        if type(msg) is not wire.Data:
            mux.receive(pid, msg, now)
            return
        cid = msg.conn_id  # type: ignore[attr-defined]
        p = mux.path_state(pid)
        dup = p.duplicate_bytes if p is not None else 0
        unread = mux.unread(cid)
        mux.receive(pid, msg, now)
        size = len(msg.payload)  # type: ignore[attr-defined]
        rec = self.rec
        if p is not None and p.duplicate_bytes != dup:
            rec.duplicate_bytes += size
            return
        rec.messages_received += 1
        rec.useful(now, carrier, size)
        conn = self.conns.get(cid)
        if conn is None or conn.upload != (mux is self.node.mux):
            return  # the request line, or a connection already gone
        taken = conn.rcv_nxt - conn.base  # what the application read, in stream offsets
        head, after = taken + unread, taken + mux.unread(cid)
        seq = msg.seq  # type: ignore[attr-defined]
        if seq > head:
            self._ooo.setdefault(cid, []).append((seq + size, now))
        waiting = self._ooo.get(cid)
        if waiting and after > head:
            keep = []
            for end, t in waiting:
                if end <= after:
                    rec.ooo_delays.append(now - t)
                else:
                    keep.append((end, t))
            if keep:
                self._ooo[cid] = keep
            else:
                del self._ooo[cid]

    # -- the clients --------------------------------------------------------------------------

    def _open(self, conn: Conn, now: float) -> None:
        """The client's SYN: the gateway accepts it at once and sends OPEN (``Bridge``),
        then the client's request line, or its upload."""
        gw = self.gateway
        if conn.upload and not self.upstream:
            self.upstream = True
            for path in self.paths:
                if path.conn is not None:
                    path.conn.gw.rec = self.rec
        cid = gw.mux.open(conn.client_addr, conn.src_port, SERVER_ADDR, conn.dst_port)
        conn.id = cid
        self.conns[cid] = conn
        gw.apps[cid] = conn
        gw.policy.opened(cid, str(conn.client_addr), conn.dst_port, now)
        if conn.upload:
            self.client_write(conn, now)
        else:
            gw.mux.send(cid, _ZEROS[:REQUEST_BYTES])
        gw.wake(now)

    def client_read(self, conn: Conn, now: float) -> None:
        data = self.gateway.mux.read(conn.id)
        if data and not conn.upload:
            self.deliver(conn, len(data), now)

    def client_write(self, conn: Conn, now: float) -> bool:
        """An uploading client writes what the mux takes; True when it has no more."""
        if not conn.upload or conn.eof or not self.gateway.mux.pending(conn.id):
            return True
        conn.eof = push(self.gateway.mux, conn)
        if not conn.eof:
            self.gateway.uploading.add(conn.id)
        return conn.eof

    def client_reset(self, conn: Conn, now: float) -> None:
        self.conns.pop(conn.id, None)
        self._ooo.pop(conn.id, None)
        if not conn.done:
            conn.closed = True
            self.rec.resets += 1
            conn.app.reset(conn, now)

    def _completed(self, conn: Conn, now: float) -> None:
        self._ooo.pop(conn.id, None)
        if not conn.upload:
            self.gateway.mux.shutdown(conn.id)  # the client closes its side
            self.gateway.wake(now)

    def _produce(self, conn: Conn, now: float) -> None:
        if conn.upload:
            self.client_write(conn, now)
            self.gateway.wake(now)
        else:
            self.node.produce(conn, now)

    def any_up(self) -> bool:
        return bool(self.gateway.paths)

    def on_path_up(self, callback: Callable[[float], None]) -> None:
        self.gateway.on_up.append(callback)
