"""What the workloads see of a simulated transport, and the knobs of a run.

A workload (``bench.sim.workloads``) opens connections with :meth:`Transport.open` and
hears back through :class:`App` callbacks; the same calls run on real sockets in the
emulation (``bench.emulate.apps.SocketTransport``). Two transports carry the bytes:

* :class:`bench.sim.shell.Proxy`: the product's gateway and node (their ``Mux`` and
  scheduler adapter) over one simulated path per carrier;
* :class:`bench.sim.plaintcp.PlainTcp`: plain TCP over one carrier, a new connection per
  request (the ``single:<carrier>`` rows, as the emulation runs them).

Neither keeps a rule of the proxy's transport: those are the mux's.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.sim.engine import Engine
from bench.sim.metrics import Recorder
from middlebox.config import Config

CLIENT_NET = ipaddress.ip_network("10.0.0.0/16")  # the simulated passengers' addresses


@dataclass(frozen=True)
class TransportParams:
    """The configuration gateway and node run with (``config``: an mpproxy
    configuration, its defaults unless a file says otherwise) and the model's own knobs,
    both the real processes' latency as the calibration measured it (docs/replay.md):
    ``loop_delay`` (s from something arriving at the gateway or the node to the loop
    iteration that handles it) and ``server_delay`` (s from the node's OPEN to the
    server having accepted, read the request and started answering)."""

    config: Config = field(default_factory=Config)
    loop_delay: float = 0.005
    server_delay: float = 0.006

    @classmethod
    def from_config(cls, cfg: Config, **overrides: float) -> TransportParams:
        return cls(config=cfg, **overrides)

    def with_paths(self, **paths: float) -> TransportParams:
        """The same with some ``[paths]`` values changed (tests, scripted scenarios)."""
        cfg = self.config
        return dataclasses.replace(
            self, config=dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, **paths))
        )

    @property
    def max_data(self) -> int:
        """The largest DATA payload the node's mux sends."""
        return self.config.mux_params("node").max_data


class App:
    """What a workload hears about its connections (all optional)."""

    def delivered(self, conn: Conn, now: float) -> None:
        """In-order bytes advanced to ``conn.rcv_nxt``."""

    def completed(self, conn: Conn, now: float) -> None:
        """Every byte of a finite connection was delivered."""

    def reset(self, conn: Conn, now: float) -> None:
        """The connection was reset (the proxy lost every path for ``lost_timeout``)."""


class Conn:
    """One connection as the workload sees it. Offsets count from ``base`` (a resumed
    transfer starts where it stopped): ``rcv_nxt`` is what the receiving application has
    taken, ``snd_nxt`` what the sending one has handed to the transport, ``avail`` what
    it has produced so far, ``total`` where the stream ends (math.inf: never)."""

    __slots__ = (
        "id",
        "app",
        "total",
        "base",
        "avail",
        "started",
        "rcv_nxt",
        "snd_nxt",
        "tag",
        "done",
        "closed",
        "eof",
        "upload",
        "client",
        "client_addr",
        "src_port",
        "dst_port",
        "state",
    )

    def __init__(self, app: App, now: float, total: float, base: int, produced: float | None):
        self.id: int | None = None  # the transport's id, once opened
        self.app = app
        self.total = base + total
        self.base = base
        self.avail = base + (produced if produced is not None else total)
        self.started = now  # the client's request: completion times count from it
        self.rcv_nxt = base
        self.snd_nxt = base
        self.tag: object = None  # the workload's own data
        self.done = False
        self.closed = False
        self.eof = False  # the sender handed over its last byte
        self.upload = False
        self.client = ""
        self.client_addr = CLIENT_NET[1]
        self.src_port = 0
        self.dst_port = 0
        self.state: object = None  # the transport's own record


class Transport:
    """The calls workloads make; subclasses carry the bytes (:meth:`_open`,
    :meth:`_produce`)."""

    def __init__(self, engine: Engine, rec: Recorder, params: TransportParams) -> None:
        self.engine = engine
        self.rec = rec
        self.params = params
        self._clients: dict[str, ipaddress.IPv4Address] = {}
        self._port = 0

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
        upload: bool = False,
    ) -> Conn:
        """A client's request at ``now`` for ``total`` bytes (math.inf: endless) from the
        server (``upload``: to it); ``produced``: bytes the sender has at once (default:
        all of them)."""
        conn = Conn(app, now, total, base, produced)
        conn.upload = upload
        conn.client = client
        addr = self._clients.get(client)
        if addr is None:
            addr = self._clients[client] = CLIENT_NET[10 + len(self._clients)]
        conn.client_addr = addr
        self._port = self._port % 60000 + 1
        conn.src_port = 1024 + self._port
        conn.dst_port = dst_port
        if now <= self.engine.now:
            self._open(conn, now)
        else:
            self.engine.at(now, self._open_at, conn)
        return conn

    def _open_at(self, now: float, conn: Conn) -> None:
        self._open(conn, now)

    def produce(self, conn: Conn, upto: float, now: float) -> None:
        """The sending application has produced bytes up to offset ``upto``."""
        if conn.closed:
            return
        conn.avail = min(upto, conn.total)
        if conn.id is not None:
            self._produce(conn, now)

    def _open(self, conn: Conn, now: float) -> None:
        raise NotImplementedError

    def _produce(self, conn: Conn, now: float) -> None:
        raise NotImplementedError

    def any_up(self) -> bool:
        return True

    def on_path_up(self, callback: Callable[[float], None]) -> None:
        """Call ``callback(now)`` once, the next time a path comes up."""
        self.engine.at(self.engine.now, lambda t, _: callback(t))

    def deliver(self, conn: Conn, n: int, now: float) -> None:
        """``n`` more bytes reached the receiving application in order."""
        conn.rcv_nxt += n
        rec = self.rec
        rec.useful_bytes += n
        rec.delivered(now, n, up=conn.upload)
        conn.app.delivered(conn, now)
        if conn.rcv_nxt >= conn.total and not conn.done:
            conn.done = True
            self._completed(conn, now)
            conn.app.completed(conn, now)

    def _completed(self, conn: Conn, now: float) -> None:
        """The receiving application has every byte (before the workload hears it)."""
