"""The cloud node: accepts gateways' carrier paths and talks to the real servers.

One process, one ``selectors`` loop; the other threads are the fleet store's
(``contextdb.fleet_url``), which does that store's network I/O, and the ``[metrics]``
listener's (it reads only the snapshots the loop publishes); neither touches the loop's
state. Assembly (each piece is its own module):

* :class:`~middlebox.node.sessions.Gateways` listens on ``node.listen``, checks each
  path's certificate and HELLO, and groups the paths of one gateway run into a
  :class:`~middlebox.node.sessions.Session` with its mux and downlink scheduler;
* :class:`~middlebox.node.relay.Relay`, one per session, connects to the original
  destinations the destination policy (:mod:`middlebox.node.destpolicy`) allows and
  relays bytes, FIN and RST between them and the mux;
* with ``[context] use_contextdb``, the read-only context database gives each session a
  :class:`~middlebox.node.context.SessionContext`; every ``contextdb.fleet_refresh``
  seconds the loop loads what the fleet store's thread fetched from the gateways
  (memory only; ``context`` in status);
* :class:`~middlebox.control.ControlServer` answers ``mpproxy status`` and ``mpproxy node
  drain`` / ``resume``: a draining node sends DRAIN (docs/PROTOCOL.md) on every path, and
  on every path it accepts while it drains, so its gateways move their new connections
  to their next node; it keeps serving the connections it has (``drain`` in status
  counts what remains) and accepts whatever still comes.
"""

from __future__ import annotations

import logging
import selectors
import time
from collections.abc import Callable

from middlebox import observe
from middlebox.config import Config
from middlebox.context.loop import open_context_db, refresh_db
from middlebox.control import ControlServer
from middlebox.logs import kv
from middlebox.node.admission import Admission
from middlebox.node.destpolicy import DestinationPolicy
from middlebox.node.relay import Relay
from middlebox.node.sessions import Gateways, Session
from middlebox.paths.tls import node_context
from middlebox.session import wire
from middlebox.session.mux import Mux

log = logging.getLogger("mpproxy.node")


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
        self.admission = Admission.from_config(cfg.node, self.started)
        ctx = node_context(cfg.tls, cfg.node.listen)
        self.sel = selectors.DefaultSelector()
        # contextdb's predictions for the downlink scheduler (read-only: gateways learn)
        self.context_db = (
            open_context_db(cfg, cfg.node.id, readonly=True) if cfg.context.use_contextdb else None
        )
        # what the fleet store's thread fetched is loaded this often (memory only)
        self.refresh_interval = cfg.contextdb.fleet_refresh
        self.next_refresh = self.started + self.refresh_interval
        self.context_counters: dict = {"refresh_checks": 0, "refreshes": 0, "refresh_errors": 0}
        # the relays' counters, kept across sessions
        self.open_counters = {"open_denied": 0, "open_failed": 0, "opened": 0}
        self.gateways = Gateways(cfg, self.sel, ctx, self._new_relay, self.context_db)
        self.gateways.admit = self.admission.refusal
        self.control: ControlServer | None = None
        if control:
            self.control = ControlServer(
                cfg.node.control_socket,
                self.status,
                {"drain": lambda: self.drain(True), "resume": lambda: self.drain(False)},
            )
            self.control.register(self.sel)
        self.drain_counters = {"drains": 0, "resumes": 0, "drain_messages": 0}
        self.drain_since: float | None = None
        self.observer = observe.start(cfg.metrics, self.status)
        log.info("listening %s", kv(address=cfg.node.listen, tls=ctx is not None))

    def _new_relay(self, mux: Mux) -> Relay:
        return Relay(mux, self.sel, self.policy, self.cfg.node.connect_timeout, self.open_counters)

    @property
    def counters(self) -> dict[str, int]:
        """Paths and sessions (:class:`Gateways`) and connections opened (the relays)."""
        return {**self.gateways.counters, **self.open_counters}

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
        self.gateways.poll(now)
        self.admission.enforce(now, self.gateways)
        sessions = list(self.gateways.sessions.values())
        for sess in sessions:
            sess.relay.expire(now)
        for sess in sessions:
            self._pump(sess, now)
        if now >= self.next_refresh:
            self.refresh(now)
        if self.control is not None:
            self.control.expire(now)
        if self.observer is not None:
            self.observer.tick(now)

    def refresh(self, now: float) -> None:
        """Load what the fleet store's thread fetched since the last call (never waits
        for the store: its I/O is that thread's); the next call one interval later."""
        self.next_refresh = now + self.refresh_interval
        if self.context_db is not None:
            self.context_counters["refresh_checks"] += 1
            refresh_db(self.context_db, self.context_counters)

    def _timers(self) -> list[float]:
        times = [self.gateways.next_timer()]
        if self.context_db is not None:
            times.append(self.next_refresh)
        times.extend(sess.relay.next_timer() for sess in self.gateways.sessions.values())
        return [t for t in times if t is not None]

    def _pump(self, sess: Session, now: float) -> None:
        relay = sess.relay
        for _ in range(8):  # events produce messages and messages events; bounded
            relay.mux_events(now)
            self.gateways.pump(sess, now)
            if not relay.mux_events(now):
                break
        relay.retry_starved()
        self.gateways.settle(sess)

    # -- drain ----------------------------------------------------------------------------

    def drain(self, draining: bool = True) -> dict:
        """Start (or end) draining: tell every gateway on every up path; new paths are
        told after their HELLO_ACK (:class:`Gateways`). Returns the drain status."""
        now = self.clock()
        changed = self.gateways.draining != draining
        self.gateways.draining = draining
        if changed:
            self.drain_counters["drains" if draining else "resumes"] += 1
            self.drain_since = now if draining else None
            log.info("%s %s", "draining" if draining else "resumed", kv(**self._remaining()))
            for sess in self.gateways.sessions.values():
                for pc in sess.paths.values():
                    pc.write(wire.Drain(draining))
                    self.drain_counters["drain_messages"] += 1
        return self.drain_status(now)

    def _remaining(self) -> dict[str, int]:
        sessions = self.gateways.sessions.values()
        return {
            "sessions": len(sessions),
            "connections": sum(len(s.mux.conn_ids()) for s in sessions),
            "server_connections": sum(len(s.relay.conns) for s in sessions),
        }

    def drain_status(self, now: float) -> dict:
        since = self.drain_since
        return {
            "draining": self.gateways.draining,
            "draining_for": round(now - since, 3) if since is not None else None,
            "remaining": self._remaining(),
            **self.drain_counters,
        }

    # -- status and shutdown --------------------------------------------------------------

    def status(self) -> dict:
        now = self.clock()
        sessions = []
        for sess in self.gateways.sessions.values():
            st = sess.mux.stats()
            sessions.append(
                {
                    "gateway": sess.gateway_id,
                    "session": sess.session,
                    "paths": sess.path_status(),
                    "connections": st["connections"],
                    "counters": st["counters"],
                    "buffered_bytes": sess.relay.buffered(),
                    "memory": st["memory"],
                    "relays": len(sess.relay.conns),
                    "scheduler": {
                        "policy": sess.policy.name,
                        "decisions": sess.policy.decisions,
                        "duplicated": sess.policy.duplicated,
                    },
                    "udp": sess.udp.status() if sess.udp is not None else {},
                    "datagrams": sess.policy.placer.status(),
                    "context": self.gateways.context_status(sess, now),
                }
            )
        return {
            "role": "node",
            "id": self.cfg.node.id,
            "uptime": now - self.started,
            "listen": self.cfg.node.listen,
            "sessions": sessions,
            "counters": self.counters,
            "udp": {"enabled": self.cfg.udp.enabled, **self.gateways.udp_counters},
            "handshaking": len(self.gateways.handshaking),
            "admission": self.admission.status(),
            "drain": self.drain_status(now),
            "destinations": self.policy.status(),
            "limits": self.gateways.limits(),
            "memory": self.gateways.budget.status(),
            **({"metrics": self.observer.status()} if self.observer else {}),
            "context": self._context_status(),
        }

    def _context_status(self) -> dict:
        if self.context_db is None:
            return {"use_contextdb": False}
        out = {"use_contextdb": True, **self.context_counters}
        fleet = getattr(self.context_db.store, "status", None)
        if fleet is not None:
            out["fleet"] = fleet()
        return out

    def close(self) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Reset every connection (RST to servers, RST messages to gateways), close all."""
        self.gateways.close(self.clock())
        self.policy.close()
        if self.control is not None:
            self.control.close()
        if self.observer is not None:
            self.observer.close()
            self.observer = None
        if self.context_db is not None:
            self.context_db.store.close()
            self.context_db = None
        self.sel.close()
        log.info("stopped")
