"""The three context generators (paths, connections, carriers) and the one wiring of them.

Each generator keeps its own state and publishes into a
:class:`~scheduler.registry.ContextRegistry` once registered. They are fed by whoever
sees the events, with the same calls live and simulated:

* :class:`PathContextGenerator` -- the path sockets' TCP_INFO readings and PROBE round
  trips (the scheduler adapter, :mod:`middlebox.session.policy`, live and in the replay
  simulator, which runs the adapter over its model of the sockets);
* :class:`ConnectionTracker` -- connections opened and closed (the gateway's bridge) and
  what each message says about its connection (the adapter);
* :class:`CarrierTracker` -- cell and RSRP reports (the gateway's context loop, the
  node's CONTEXT messages, the simulator's rail route).

:class:`Generators` is the wiring every scheduling module uses: one registry, the three
generators registered with it, and the long-term source subscribed to its carrier
contexts. The policy then reads what it needs from the registry: the path contexts for
its decision, the connection context of the message, and (through the long-term source)
the carrier context.
"""

from __future__ import annotations

import math
from collections import deque

from scheduler.config import SchedulerConfig
from scheduler.context import CarrierContext, ConnectionContext, PathContext
from scheduler.estimators import PathEstimator, PathSample
from scheduler.longterm import LongTermSource
from scheduler.registry import CARRIER, CONNECTION, PATH, ContextRegistry

FORGET_AFTER = 120.0  # s without a message before an unannounced connection is forgotten


class _Generator:
    provides: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._registry: ContextRegistry | None = None

    def attach(self, registry: ContextRegistry) -> None:
        self._registry = registry

    def _publish(self, kind: str, key: object, context: object) -> None:
        if self._registry is not None:
            self._registry.publish(kind, key, context)


class PathContextGenerator(_Generator):
    """Path context: one :class:`PathEstimator` per path, fed with samples; every new
    context is published.

    ``contexts`` holds each path's current context. Between two samples the shell knows
    more than the last sample said (what it just put into the socket): :meth:`refresh`
    writes that into the current context in place, and the next sample starts from it,
    as the kernel's next reading would.
    """

    provides = (PATH,)

    def __init__(self, config: SchedulerConfig | None = None):
        super().__init__()
        self.cfg = config or SchedulerConfig()
        self.estimators: dict[int, PathEstimator] = {}
        self.contexts: dict[int, PathContext] = {}

    def _set(self, path_id: int, ctx: PathContext) -> PathContext:
        self.contexts[path_id] = ctx
        self._publish(PATH, path_id, ctx)
        return ctx

    def add_path(
        self, path_id: int, carrier: str, now: float, sample: PathSample | None = None
    ) -> PathContext:
        """A new path with a new estimator and its first sample (default: it is up)."""
        est = PathEstimator(path_id, carrier, self.cfg)
        self.estimators[path_id] = est
        first = PathSample(up=True) if sample is None else sample
        return self._set(path_id, est.update(first, now))

    def remove_path(self, path_id: int) -> None:
        self.estimators.pop(path_id, None)
        self.contexts.pop(path_id, None)
        self._publish(PATH, path_id, None)

    def sample(self, path_id: int, sample: PathSample, now: float) -> PathContext:
        return self._set(path_id, self.estimators[path_id].update(sample, now))

    def probe(self, path_id: int, rtt: float, now: float, idle: bool = True) -> PathContext:
        """An answered PROBE (:meth:`PathEstimator.probe`)."""
        return self._set(path_id, self.estimators[path_id].probe(rtt, now, idle=idle))

    def set_up(self, path_id: int, up: bool, now: float) -> PathContext | None:
        """The path went down (or up); a path without an estimator is left as it is."""
        est = self.estimators.get(path_id)
        return None if est is None else self._set(path_id, est.set_up(up, now))

    def placeholder(self, path_id: int, srtt: float, rttvar: float) -> PathContext:
        """A context for a path no sample has reached yet: the shell's smoothed RTT and no
        estimator state (policies then fall back to ``srtt``/``rttvar``). The path's
        first sample (:meth:`add_path`) replaces it."""
        return self._set(path_id, PathContext(path_id, srtt=srtt, rttvar=rttvar))

    def refresh(
        self,
        path_id: int,
        *,
        up: bool | None = None,
        cwnd: int | None = None,
        inflight: int | None = None,
        queued: int | None = None,
    ) -> PathContext:
        """What the path's socket holds right now, written into its current context in
        place (no estimator sample, no publish: the registry holds the same object)."""
        ctx = self.contexts[path_id]
        if up is not None:
            ctx.up = up
        if cwnd is not None:
            ctx.cwnd = cwnd
        if inflight is not None:
            ctx.inflight = inflight
        if queued is not None:
            ctx.queued = queued
        return ctx


class ConnectionTracker(_Generator):
    """Connection context: owner, port, age, bytes so far, priority, application-limited.

    A connection is announced with :meth:`opened` (the gateway knows the client and the
    port) or appears with its first message (:meth:`seen`; the node announces none);
    such an unannounced one is forgotten after ``forget_after`` seconds without a
    message (:meth:`sweep`), since nobody closes it.
    """

    provides = (CONNECTION,)

    def __init__(self, forget_after: float = FORGET_AFTER) -> None:
        super().__init__()
        self.forget_after = forget_after
        self.connections: dict[int, ConnectionContext] = {}
        # unannounced connection -> last message, in the order of their last messages
        # (while the times come in order), so a sweep stops at the first one still fresh
        self._implicit: dict[int, float] = {}
        self._latest = -math.inf
        self._in_order = True
        self._swept = 0.0

    def opened(
        self,
        conn_id: int,
        now: float,
        *,
        client: str = "",
        dst_port: int = 0,
        direction: str = "up",
        priority: int = 0,
    ) -> ConnectionContext:
        ctx = ConnectionContext(
            conn_id=conn_id,
            client=client,
            direction=direction,
            dst_port=dst_port,
            opened=now,
            priority=priority,
        )
        self.connections[conn_id] = ctx
        self._implicit.pop(conn_id, None)
        self._publish(CONNECTION, conn_id, ctx)
        return ctx

    def seen(self, conn_id: int, now: float) -> ConnectionContext:
        """The context of the connection a message at ``now`` belongs to; one never
        announced gets one here (opened now)."""
        ctx = self.connections.get(conn_id)
        if ctx is None:
            ctx = self.connections[conn_id] = ConnectionContext(conn_id, opened=now)
            self._touch(conn_id, now)
            self._publish(CONNECTION, conn_id, ctx)
        elif conn_id in self._implicit:
            self._touch(conn_id, now)
        return ctx

    def _touch(self, conn_id: int, now: float) -> None:
        implicit = self._implicit
        implicit.pop(conn_id, None)
        implicit[conn_id] = now
        if now < self._latest:
            self._in_order = False  # a caller went back in time: sweeps scan everything
        self._latest = now

    def carried_to(self, conn_id: int, offset: int) -> None:
        """The connection has carried ``offset`` bytes (the offset of its next message;
        updated in place: no publish per message). ``bytes_so_far`` never moves back."""
        ctx = self.connections.get(conn_id)
        if ctx is not None and offset > ctx.bytes_so_far:
            ctx.bytes_so_far = offset

    def app_limited(self, conn_id: int, now: float) -> None:
        """The connection's application had nothing more to send at ``now`` (everything
        it produced was committed to paths): a long-lived connection that keeps saying
        so is a stream (``scheduler.context.stream_like``)."""
        ctx = self.connections.get(conn_id)
        if ctx is not None:
            ctx.app_limited_at = now

    def closed(self, conn_id: int) -> None:
        self.connections.pop(conn_id, None)
        self._implicit.pop(conn_id, None)
        self._publish(CONNECTION, conn_id, None)

    def sweep(self, now: float) -> None:
        """Forget unannounced connections silent for ``forget_after``; at most once a
        second (call it from a periodic input)."""
        if now - self._swept < 1.0:
            return
        self._swept = now
        forget = self.forget_after
        if self._in_order:
            expired = []
            for cid, last in self._implicit.items():
                if now - last <= forget:
                    break
                expired.append(cid)
        else:
            expired = [cid for cid, last in self._implicit.items() if now - last > forget]
        for cid in expired:
            self.closed(cid)


class CarrierTracker(_Generator):
    """Third-party context per carrier: cell, RSRP window, handovers, position.

    Sources report once per carrier and second, so the window of the last ``window``
    values is that many seconds. A report without RSRP repeats the last value (as the
    drive-log import bridges short holes). A change of cell keeps the window: the RSRP
    history is the carrier's, and contextdb's stored windows span cell changes too (each
    is keyed by the cell at its end); the change is recorded as a handover event
    ``(t, "old->new")``, of which the last ``handovers_kept`` are kept. A report without
    a position keeps the last one.
    """

    provides = (CARRIER,)

    def __init__(self, window: int = 5, handovers_kept: int = 8) -> None:
        super().__init__()
        self.window = window
        self.handovers_kept = handovers_kept
        self.contexts: dict[str, CarrierContext] = {}
        self._windows: dict[str, deque[float]] = {}

    def report(
        self,
        carrier: str,
        now: float,
        *,
        cell_id: str = "",
        rsrp: float | None = None,
        position: tuple[float, float] | None = None,
    ) -> CarrierContext:
        """A modem report at ``now`` (``cell_id`` ``""``: unknown; ``rsrp`` dBm)."""
        win = self._windows.setdefault(carrier, deque(maxlen=self.window))
        value = rsrp if rsrp is not None else (win[-1] if win else None)
        if value is not None:
            win.append(value)
        prev = self.contexts.get(carrier)
        events = prev.handover_events if prev is not None else ()
        if prev is not None and prev.cell_id and cell_id and cell_id != prev.cell_id:
            events = (*events, (now, f"{prev.cell_id}->{cell_id}"))[-self.handovers_kept :]
        if position is None and prev is not None:
            position = prev.position
        ctx = CarrierContext(carrier, cell_id, rsrp, tuple(win), events, position, now)
        self.contexts[carrier] = ctx
        self._publish(CARRIER, carrier, ctx)
        return ctx


class Generators:
    """One scheduling module's context (seed 001's context manager): a registry, the
    three generators registered with it, and ``longterm`` (when it has ``observe``, as
    :class:`~scheduler.longterm.CarrierWindowSource` does) subscribed to the carrier
    contexts, so the long-term predictions follow each carrier's cell and RSRP window.

    ``carriers`` is the tracker whoever reads the modems feeds (the gateway's context
    loop, the node's session context, a simulator feed); without one the module has an
    empty tracker of its own.
    """

    def __init__(
        self,
        config: SchedulerConfig | None = None,
        carriers: CarrierTracker | None = None,
        longterm: LongTermSource | None = None,
    ) -> None:
        self.registry = ContextRegistry()
        self.paths = PathContextGenerator(config)
        self.connections = ConnectionTracker()
        self.carriers = carriers if carriers is not None else CarrierTracker()
        for g in (self.paths, self.connections, self.carriers):
            self.registry.register(g)
        observe = getattr(longterm, "observe", None)
        if observe is not None:

            def carrier_context(_carrier: object, ctx: CarrierContext | None) -> None:
                if ctx is not None:
                    observe(ctx)

            self.registry.subscribe(CARRIER, carrier_context)
