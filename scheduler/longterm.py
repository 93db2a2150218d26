"""The interface through which long-term, location-aware predictions reach the scheduler.

``contextdb`` answers "what did this carrier deliver in the past when its signal looked
like now, here"; the scheduler only needs the answer. Any object with the attributes of
:class:`LongTermPrediction` works (structural typing), and any object with
``predict(carrier, now)`` is a :class:`LongTermSource`.

Choice made here: ``predict`` takes only the carrier and the time. The source tracks
each carrier's latest cell and RSRP window itself, from the third-party context the
caller passes to ``observe(CarrierContext)``. :class:`CarrierWindowSource` adapts a
function of the shape contextdb exposes, ``predict(carrier, cell, rsrp_window, now)``,
to this interface.

Units: throughput in bit/s (as contextdb stores it; the policy converts to bytes/s),
RTT in seconds, loss as a fraction, confidence N/K in 0..1, p_disconnect the probability
of a disconnection within the look-ahead, expected_gap its expected length in seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from scheduler.context import CarrierContext


@dataclass(frozen=True, slots=True)
class LongTermPrediction:
    throughput_mean: float = 0.0  # bit/s
    throughput_var: float = 0.0  # (bit/s)^2
    rtt_mean: float = 0.0  # s
    rtt_var: float = 0.0  # s^2
    loss_mean: float = 0.0  # fraction
    loss_var: float = 0.0
    confidence: float = 0.0  # 0..1 (N/K)
    p_disconnect: float = 0.0  # 0..1 within the look-ahead
    expected_gap: float = 0.0  # s


class PredictionLike(Protocol):
    throughput_mean: float
    throughput_var: float
    rtt_mean: float
    rtt_var: float
    loss_mean: float
    loss_var: float
    confidence: float
    p_disconnect: float
    expected_gap: float


@runtime_checkable
class LongTermSource(Protocol):
    def predict(self, carrier: str, now: float) -> PredictionLike | None: ...


class StubSource:
    """A scripted source for tests and the replay simulator's "oracle" runs.

    ``script[carrier]`` is a list of ``(start, end, prediction)``: the first interval
    containing ``now`` (start <= now < end) answers; otherwise ``None``. Counts calls so
    tests can check caching.
    """

    def __init__(
        self, script: dict[str, Sequence[tuple[float, float, PredictionLike]]] | None = None
    ):
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.calls = 0
        self.observed: list[CarrierContext] = []

    def observe(self, ctx: CarrierContext) -> None:
        self.observed.append(ctx)

    def predict(self, carrier: str, now: float) -> PredictionLike | None:
        self.calls += 1
        for start, end, pred in self.script.get(carrier, ()):
            if start <= now < end:
                return pred
        return None


class CarrierWindowSource:
    """Adapts ``predict(carrier, cell, rsrp_window, now)`` to :class:`LongTermSource`.

    Keeps the latest cell id and RSRP window per carrier from ``observe``; a carrier
    with no observation yet (or no cell id) gets no prediction. Once
    ``observe_throughput`` has reported what a carrier delivered in its last second, it
    is passed on as ``recent_dl_bps=`` (contextdb then matches on it too, which is what
    makes its prediction beat repeating the last value; docs/contextdb.md).
    """

    def __init__(
        self, predict: Callable[[str, str, Sequence[float], float], PredictionLike | None]
    ):
        self._predict = predict
        self._latest: dict[str, CarrierContext] = {}
        self._recent_bps: dict[str, float] = {}

    def observe(self, ctx: CarrierContext) -> None:
        self._latest[ctx.carrier] = ctx

    def observe_throughput(self, carrier: str, bps: float) -> None:
        """Bits the carrier delivered in its last full second, per second."""
        self._recent_bps[carrier] = bps

    def predict(self, carrier: str, now: float) -> PredictionLike | None:
        ctx = self._latest.get(carrier)
        if ctx is None or not ctx.cell_id:
            return None
        recent = self._recent_bps.get(carrier)
        if recent is None:
            return self._predict(carrier, ctx.cell_id, ctx.rsrp_window, now)
        return self._predict(carrier, ctx.cell_id, ctx.rsrp_window, now, recent_dl_bps=recent)
