"""The gateway process: captured TCP connections carried over the carrier paths.

Assembly (each piece is its own module):

* :class:`~middlebox.gateway.listener.Listener` makes the listener namespace and steers LAN TCP
  into it; :class:`~middlebox.gateway.capture.CaptureShell` reads the frames there.
* :class:`~middlebox.gateway.classifier.Classifier` puts the flow table (seed 002) in front
  of the user-space TCP endpoint (:class:`~middlebox.tcp.endpoint.EndpointTable`):
  proxied, bypassed, denied or dropped per flow.
* :class:`~middlebox.gateway.uplink.Uplink` holds the carrier paths and the session's mux,
  one per node in use; :class:`~middlebox.gateway.fleet.Fleet` chooses the node among
  ``[[gateway.nodes]]`` and moves when it is lost or draining.
* :class:`~middlebox.gateway.bridge.Bridge` joins the endpoint's connections to the mux's:
  OPEN at the client's completed handshake, bytes each way with both buffers bounded,
  FIN each way on its own, RST both ways.
* :class:`~middlebox.gateway.udp.GatewayUdp` carries the passengers' UDP as DATAGRAM
  messages (``[udp]``).
* :class:`~middlebox.context.loop.ContextLoop` measures the carriers, reports their
  context to the node and feeds the scheduler (``[context]``).

Everything runs in the capture shell's selector loop; the other threads are the fleet
store's (``contextdb.fleet_url``), which does that store's network I/O, and the
``[metrics]`` listener's (:mod:`middlebox.observe.web`), which reads the snapshots the loop
publishes; neither touches the loop's state.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable

from middlebox import observe
from middlebox.config import Config
from middlebox.context.loop import ContextLoop
from middlebox.control import ControlServer
from middlebox.gateway.bridge import Bridge
from middlebox.gateway.capture import CaptureShell
from middlebox.gateway.classifier import Classifier
from middlebox.gateway.fleet import Fleet
from middlebox.gateway.flowtable import FlowTable
from middlebox.gateway.listener import Listener, local_prefixes
from middlebox.gateway.udp import GatewayUdp
from middlebox.gateway.uplink import Uplink
from middlebox.logs import kv
from middlebox.paths.tls import gateway_context
from middlebox.session import wire
from middlebox.session.policy import SchedulerPolicy
from middlebox.tcp.endpoint import EndpointTable

log = logging.getLogger("mpproxy.gateway")


class Gateway:
    """The gateway process: ``run()`` until stopped; ``close()`` undoes everything."""

    def __init__(self, cfg: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        self.started = clock()
        self.listener = Listener(cfg.gateway, udp=cfg.udp.enabled)
        self.shell: CaptureShell | None = None
        self.control: ControlServer | None = None
        self.observer: observe.Observer | None = None
        self.stopping = False
        prefixes = local_prefixes()
        self.flows = FlowTable.from_config(cfg.gateway, prefixes)
        self.table = EndpointTable(
            cfg.tcp.params(), buffer_room=cfg.gateway.buffer_bytes, auto_accept=True
        )
        self.classifier = Classifier(self.table, self.flows)
        Uplink.check(cfg)  # configuration errors before anything is created
        for n in cfg.gateway.fleet():
            gateway_context(cfg.tls, n.address)  # plaintext only toward testbed addresses
        self.context = ContextLoop(cfg, clock)  # reads context files, opens the database
        self.policy = SchedulerPolicy(
            cfg.scheduler,
            longterm=self.context.longterm,
            carriers=self.context.tracker,
            datagrams=cfg.udp.classes(),
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
            self.fleet = Fleet(cfg, self.shell.selector, clock, policy=self.policy)
            self.context.attach(self.fleet, self.shell.selector)
            self.classifier.extra_timer = self._next_timer
            self.udp = GatewayUdp(cfg.udp, self.flows,
                                  lambda msg, cls: self.fleet.mux.send_datagram(msg, cls),
                                  self.policy.forget_flow)  # fmt: skip
            self.udp.shell = self.shell
            if cfg.udp.enabled:
                self.shell.udp = self.udp.receive
            self.fleet.datagrams = self.udp.deliver
            self.bridge = Bridge(
                self.fleet, self.flows, max(64 << 10, cfg.gateway.buffer_bytes // 2), self.policy
            )
            self.fleet.on_lost = lambda up, now: self.bridge.reset_all(
                up.mux, wire.RstReason.PATHS_LOST, now
            )
            self.fleet.in_use = lambda up: self.bridge.holds(up.mux)
            self.control = ControlServer(cfg.gateway.control_socket, self.status)
            self.control.register(self.shell.selector)
            db = self.context.db
            self.observer = observe.start(cfg.metrics, self.status, db.track if db else None)
        except BaseException:
            self.close()
            raise
        log.info(
            "gateway ready %s",
            kv(
                id=cfg.gateway.id,
                node=self.fleet.current.node_name,
                nodes=len(self.fleet.nodes),
                paths=len(self.fleet.slots),
                policy=self.policy.name,
                session=self.fleet.session,
            ),  # fmt: skip
        )

    def _next_timer(self) -> float | None:
        times = (self.fleet.next_timer(), self.context.next_timer(), self.udp.next_timer())
        return min((t for t in times if t is not None), default=None)

    def idle(self, now: float) -> None:
        up = self.fleet
        up.poll(now)
        self.context.tick(now)
        self.udp.expire(now)
        self.bridge.mux_events(now)
        up.pump(now)
        self.bridge.mux_events(now)
        if self.control is not None:
            self.control.expire(now)
        if self.observer is not None:
            self.observer.tick(now)

    def run(self, stop: Callable[[], bool] | None = None) -> None:
        assert self.shell is not None
        self.shell.run(
            self.bridge.on_event,
            self.idle,
            stop=stop or (lambda: self.stopping),
            clock=self.clock,
        )

    def status(self) -> dict:
        fc = self.flows.counters()
        shell = self.shell
        context = self.context.status(self.clock())
        sessions = []
        for up in self.fleet.uplinks:  # the current node's first
            mux = up.mux.stats()
            sessions.append(
                {
                    "gateway": self.cfg.gateway.id,
                    "node": up.node_name,
                    "session": up.session,
                    "paths": up.path_status(),
                    "connections": mux["connections"],
                    "counters": {**mux["counters"], **up.counters},
                    "buffered_bytes": mux["buffered_bytes"],
                    "memory": mux["memory"],
                    "context": context["carriers"],
                }
            )
        # the client bytes the mux has not taken yet wait for the current node's
        sessions[0]["buffered_bytes"] += sum(len(x.pending) for x in self.bridge.links.values())
        return {
            "role": "gateway",
            "id": self.cfg.gateway.id,
            "uptime": self.clock() - self.started,
            "sessions": sessions[:1],  # the current node's; the others' under fleet
            "fleet": {**self.fleet.status(self.clock()), "sessions": sessions[1:]},
            "context": context,
            "flows": {
                "tracked": len(self.flows),
                **{f"flows_{a.value}": n for a, n in fc.flows.items()},
                **{f"packets_{a.value}": n for a, n in fc.packets.items()},
                "expired": fc.expired,
                "overflow": fc.overflow,
                "evicted": fc.evicted,
                "source_full": fc.source_full,
                "source_rate": fc.source_rate,
                "untracked_packets": fc.untracked,
                "sources": self.flows.sources(),
                **self.listener.kernel_counters(),
                "bypassed_packets": self.classifier.bypassed,
                "denied_packets": self.classifier.denied,
            },
            "udp": self.udp.status(),
            "endpoint": self.table.totals(),
            "capture": {
                "frames_in": shell.stats.frames_in if shell else 0,
                "frames_out": shell.stats.frames_out if shell else 0,
                "send_errors": shell.stats.send_errors if shell else 0,
            },
            "counters": dict(self.bridge.counters),
            "limits": self.fleet.current.limits(),
            "scheduler": {
                "policy": self.policy.name,
                "decisions": self.policy.decisions,
                "duplicated": self.policy.duplicated,
                "failed": self.policy.failed,
                "datagrams": self.policy.placer.status(),
            },
            "clients": by_client(link.key for link in self.bridge.links.values()),
            **({"metrics": self.observer.status()} if self.observer else {}),
        }

    def close(self) -> None:
        """RST every client and connection, close the paths, remove rules and namespace."""
        now = self.clock()
        try:
            if self.shell is not None and hasattr(self, "bridge"):
                for link in list(self.bridge.links.values()):
                    link.conn.abort("shutdown")
                self.shell.pump(now, None)
                self.fleet.close(now)
        finally:
            if hasattr(self, "context"):
                self.context.close()
            if self.control is not None:
                self.control.close()
                self.control = None
            if self.observer is not None:
                self.observer.close()
                self.observer = None
            if self.shell is not None:
                self.shell.close()
                self.shell = None
            self.listener.teardown()
        log.info("stopped")


def by_client(keys) -> dict[str, int]:
    """Proxied connections per passenger address, from the connections' flow keys."""
    out: dict[str, int] = {}
    for key in keys:
        addr = str(ipaddress.ip_address(key[0]))
        out[addr] = out.get(addr, 0) + 1
    return out
