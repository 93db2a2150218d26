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

Position along the line is the second key. A source with a ``forecast(carrier, pos_km,
speed_kmh, horizon_s, direction)`` (contextdb's ``ContextDB.forecast``) answers, per
carrier, when it goes dark in the next seconds and for how long
(:class:`PositionForecastLike`). :class:`CarrierWindowSource` takes one: it keeps the
vehicle's latest position and speed (``observe_position``), and its ``predict`` then
merges both answers (throughput: the MVUE of the cell's and the position's estimates;
disconnection: the position's, which knows where the tunnels are), while
``dark(carrier, now, horizon_s)`` hands a policy the position forecast itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from scheduler.context import CarrierContext
from scheduler.fusion import fuse2


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
    dark_in_s: float = math.inf  # s until the predicted disconnection (inf: none predicted)


class PositionForecastLike(Protocol):
    """When a carrier goes dark within ``horizon_s`` and for how long (contextdb's
    ``PositionForecast``): probability, seconds until, seconds dark, capacity meanwhile."""

    horizon_s: float
    p_dark: float
    dark_in_s: float
    dark_for_s: float
    kind: str
    throughput_mean: float
    throughput_var: float
    rtt_mean: float
    rtt_var: float
    loss_mean: float
    loss_var: float
    passes: int
    confidence: float


PositionForecaster = Callable[[str, float, float, float, int], PositionForecastLike | None]


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
        self,
        predict: Callable[[str, str, Sequence[float], float], PredictionLike | None],
        forecast: PositionForecaster | None = None,
        horizon_s: float = 5.0,
    ):
        self._predict = predict
        self._forecast = forecast
        self.horizon_s = horizon_s
        self._latest: dict[str, CarrierContext] = {}
        self._recent_bps: dict[str, float] = {}
        self._position: tuple[float, float, int] | None = None  # km, km/h, direction

    def observe(self, ctx: CarrierContext) -> None:
        self._latest[ctx.carrier] = ctx

    def observe_throughput(self, carrier: str, bps: float) -> None:
        """Bits the carrier delivered in its last full second, per second."""
        self._recent_bps[carrier] = bps

    def observe_position(self, pos_km: float, speed_kmh: float, direction: int = 1) -> None:
        """The vehicle's position along the line (km), speed and direction of travel
        (+1: the position grows), from the odometer or map-matched GPS."""
        if math.isfinite(pos_km) and math.isfinite(speed_kmh):
            self._position = (pos_km, max(0.0, speed_kmh), direction)

    def dark(
        self, carrier: str, now: float, horizon_s: float | None = None
    ) -> PositionForecastLike | None:
        """When ``carrier`` goes dark in the next ``horizon_s`` seconds (default: the
        source's horizon) and for how long; None without a position or history there."""
        if self._forecast is None or self._position is None:
            return None
        pos, speed, direction = self._position
        return self._forecast(carrier, pos, speed, horizon_s or self.horizon_s, direction)

    def predict(self, carrier: str, now: float) -> PredictionLike | None:
        ctx = self._latest.get(carrier)
        cell = None
        if ctx is not None and ctx.cell_id:
            recent = self._recent_bps.get(carrier)
            if recent is None:
                cell = self._predict(carrier, ctx.cell_id, ctx.rsrp_window, now)
            else:
                cell = self._predict(
                    carrier, ctx.cell_id, ctx.rsrp_window, now, recent_dl_bps=recent
                )
        where = self.dark(carrier, now)
        if where is None:
            return cell
        return merge(cell, where)


def merge(cell: PredictionLike | None, where: PositionForecastLike) -> LongTermPrediction:
    """One long-term answer from the cell key's prediction (may be None) and the
    position key's forecast: each quantity is the MVUE of the two estimates (inverse
    variance weights); the disconnection is the position's (it knows where the line
    goes dark), its ``expected_gap`` how long, ``dark_in_s`` when."""
    thr, thr_var = where.throughput_mean, where.throughput_var
    rtt, rtt_var = where.rtt_mean, where.rtt_var
    loss, loss_var = where.loss_mean, where.loss_var
    confidence = where.confidence
    if cell is not None:
        thr, thr_var = fuse2(cell.throughput_mean, cell.throughput_var, thr, thr_var)
        rtt, rtt_var = fuse2(cell.rtt_mean, cell.rtt_var, rtt, rtt_var)
        loss, loss_var = fuse2(cell.loss_mean, cell.loss_var, loss, loss_var)
        confidence = max(confidence, cell.confidence)
    dark = where.p_dark > 0 and math.isfinite(where.dark_in_s)
    return LongTermPrediction(
        throughput_mean=thr,
        throughput_var=thr_var,
        rtt_mean=rtt,
        rtt_var=rtt_var,
        loss_mean=loss,
        loss_var=loss_var,
        confidence=confidence,
        p_disconnect=where.p_dark,
        expected_gap=where.dark_for_s if dark else 0.0,
        dark_in_s=where.dark_in_s if dark else math.inf,
    )
