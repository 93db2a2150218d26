"""The three context generators: paths, connections, carriers (third party).

Each keeps its own state and publishes into a :class:`~scheduler.registry.ContextRegistry`
once registered. They are fed by whoever sees the events: the gateway's path sockets
(TCP_INFO samples), its flow table (connection events), the modem reader (cell and
RSRP reports) -- or the replay simulator, with the same calls.
"""

from __future__ import annotations

from collections import deque

from scheduler.config import SchedulerConfig
from scheduler.context import CarrierContext, ConnectionContext, PathContext
from scheduler.estimators import PathEstimator, PathSample
from scheduler.registry import CARRIER, CONNECTION, PATH, ContextRegistry


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
    """One :class:`PathEstimator` per path; publishes a PathContext per sample."""

    provides = (PATH,)

    def __init__(self, config: SchedulerConfig | None = None):
        super().__init__()
        self.cfg = config or SchedulerConfig()
        self.estimators: dict[int, PathEstimator] = {}

    def add_path(self, path_id: int, carrier: str, now: float) -> PathContext:
        est = PathEstimator(path_id, carrier, self.cfg)
        self.estimators[path_id] = est
        ctx = est.update(PathSample(up=True), now)
        self._publish(PATH, path_id, ctx)
        return ctx

    def remove_path(self, path_id: int) -> None:
        self.estimators.pop(path_id, None)
        self._publish(PATH, path_id, None)

    def sample(self, path_id: int, sample: PathSample, now: float) -> PathContext:
        ctx = self.estimators[path_id].update(sample, now)
        self._publish(PATH, path_id, ctx)
        return ctx


class ConnectionTracker(_Generator):
    """Connection context: owner, port, age, bytes so far, priority."""

    provides = (CONNECTION,)

    def __init__(self) -> None:
        super().__init__()
        self.connections: dict[int, ConnectionContext] = {}

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
        self._publish(CONNECTION, conn_id, ctx)
        return ctx

    def carried(self, conn_id: int, nbytes: int) -> None:
        """Count ``nbytes`` more carried (updated in place: no publish per message)."""
        ctx = self.connections.get(conn_id)
        if ctx is not None:
            ctx.bytes_so_far += nbytes

    def app_limited(self, conn_id: int, now: float) -> None:
        """The connection's application had nothing more to send at ``now`` (everything
        it produced was committed to paths): a long-lived connection that keeps saying
        so is a stream (``scheduler.context.stream_like``)."""
        ctx = self.connections.get(conn_id)
        if ctx is not None:
            ctx.app_limited_at = now

    def closed(self, conn_id: int) -> None:
        self.connections.pop(conn_id, None)
        self._publish(CONNECTION, conn_id, None)


class CarrierTracker(_Generator):
    """Third-party context per carrier: cell, RSRP window, handovers, position."""

    provides = (CARRIER,)

    def __init__(self, window: int = 10, handovers_kept: int = 16):
        super().__init__()
        self.window = window
        self.handovers_kept = handovers_kept
        self._rsrp: dict[str, deque[float]] = {}
        self._handovers: dict[str, deque[tuple[float, str]]] = {}
        self.carriers: dict[str, CarrierContext] = {}

    def report(
        self,
        carrier: str,
        now: float,
        *,
        cell_id: str,
        rsrp: float | None = None,
        position: tuple[float, float] | None = None,
    ) -> CarrierContext:
        """A modem report. A new cell id starts a new RSRP window (windows are per cell)."""
        old = self.carriers.get(carrier)
        window = self._rsrp.setdefault(carrier, deque(maxlen=self.window))
        if old is not None and old.cell_id != cell_id:
            window.clear()
        if rsrp is not None:
            window.append(rsrp)
        ctx = CarrierContext(
            carrier=carrier,
            cell_id=cell_id,
            rsrp=rsrp,
            rsrp_window=tuple(window),
            handover_events=tuple(self._handovers.get(carrier, ())),
            position=position if position is not None else (old.position if old else None),
            updated=now,
        )
        self.carriers[carrier] = ctx
        self._publish(CARRIER, carrier, ctx)
        return ctx

    def handover(self, carrier: str, now: float, kind: str) -> None:
        """A handover signal (e.g. 'request', 'success', 'failure')."""
        events = self._handovers.setdefault(carrier, deque(maxlen=self.handovers_kept))
        events.append((now, kind))
        old = self.carriers.get(carrier)
        ctx = CarrierContext(
            carrier=carrier,
            cell_id=old.cell_id if old else "",
            rsrp=old.rsrp if old else None,
            rsrp_window=old.rsrp_window if old else (),
            handover_events=tuple(events),
            position=old.position if old else None,
            updated=now,
        )
        self.carriers[carrier] = ctx
        self._publish(CARRIER, carrier, ctx)
