"""Short-term estimators: what a path did in the last seconds, and where it is heading.

* :class:`Ewma` -- exponentially weighted mean and variance over a time window: the gain
  of a sample is ``1 - exp(-dt / window)``, so irregular sampling (TCP_INFO polled when
  the loop has time, simulator steps) weighs samples by the time they stand for.
* :func:`extrapolate` -- least-squares polynomial through the last samples, evaluated
  ahead (seed 003: last six samples, degree 2..4); clamped, because a polynomial pushed
  beyond its data runs away.
* :func:`variance` -- jitter as the variance of the last samples (seed 003).
* :func:`classify` and :func:`adjust_rto` -- the four network states of seed 003 and the
  retransmission-timeout adjustment of each, exposed as context.
* :class:`PathEstimator` -- one per path: ``update(sample, now)`` with a raw
  :class:`PathSample` (from TCP_INFO via :meth:`PathSample.from_tcp_info`, or from the
  simulator's model), ``context()`` gives the :class:`PathContext`.

All pure: time is a parameter.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from scheduler.config import SchedulerConfig
from scheduler.context import CONGESTED, INTERFERED, NORMAL, STABLE, PathContext


class Ewma:
    """Time-windowed EWMA of a value and of its variance (West's incremental form)."""

    __slots__ = ("window", "mean", "var", "last", "count")

    def __init__(self, window: float) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        self.window = window
        self.mean: float | None = None
        self.var = 0.0
        self.last: float | None = None
        self.count = 0

    def update(self, x: float, now: float) -> float:
        """Fold in sample ``x`` taken at ``now``; returns the new mean."""
        self.count += 1
        if self.mean is None or self.last is None:
            self.mean, self.var, self.last = x, 0.0, now
            return x
        dt = now - self.last
        self.last = max(self.last, now)
        # A sample at the same instant (or out of order) still counts, a little.
        gain = 1.0 - math.exp(-dt / self.window) if dt > 0 else 1.0 / (self.count + 1)
        diff = x - self.mean
        incr = gain * diff
        self.mean += incr
        self.var = (1.0 - gain) * (self.var + diff * incr)
        return self.mean


def variance(xs: Sequence[float]) -> float:
    """Population variance of ``xs`` (0 for fewer than two samples): seed 003's jitter."""
    n = len(xs)
    if n < 2:
        return 0.0
    m = sum(xs) / n
    return sum((x - m) * (x - m) for x in xs) / n


def polyfit(ts: Sequence[float], xs: Sequence[float], degree: int) -> tuple[list[float], float]:
    """Least-squares fit x(t) = sum_k c_k (t - t0)^k; returns ([c_0..c_d], t0).

    ``t0`` is the mean sample time. Normal equations solved by Gaussian elimination with
    partial pivoting; times are centred and scaled to [-1, 1] so that degree 4 over six
    samples stays well conditioned. The degree is lowered to ``len(ts) - 1`` (to 0 when
    all times coincide, and further when the system is singular).
    """
    n = len(ts)
    if n == 0 or n != len(xs):
        raise ValueError("need as many times as values, at least one")
    t0 = sum(ts) / n
    span = max(abs(t - t0) for t in ts)
    if span == 0.0 or degree <= 0:
        return [sum(xs) / n], t0
    us = [(t - t0) / span for t in ts]
    d = min(degree, n - 1)
    while d > 0:
        coef = _solve_normal(us, xs, d)
        if coef is not None:
            return [c / span**k for k, c in enumerate(coef)], t0
        d -= 1
    return [sum(xs) / n], t0


def _solve_normal(us: Sequence[float], xs: Sequence[float], d: int) -> list[float] | None:
    m = d + 1
    powers = [[u**k for k in range(2 * d + 1)] for u in us]
    a = [[sum(p[j + k] for p in powers) for k in range(m)] for j in range(m)]
    rhs = [sum(x * p[j] for x, p in zip(xs, powers, strict=True)) for j in range(m)]
    for col in range(m):
        piv = max(range(col, m), key=lambda r: abs(a[r][col]))
        if abs(a[piv][col]) < 1e-12:
            return None
        a[col], a[piv] = a[piv], a[col]
        rhs[col], rhs[piv] = rhs[piv], rhs[col]
        for r in range(col + 1, m):
            f = a[r][col] / a[col][col]
            for k in range(col, m):
                a[r][k] -= f * a[col][k]
            rhs[r] -= f * rhs[col]
    coef = [0.0] * m
    for j in range(m - 1, -1, -1):
        coef[j] = (rhs[j] - sum(a[j][k] * coef[k] for k in range(j + 1, m))) / a[j][j]
    return coef


def extrapolate(
    ts: Sequence[float], xs: Sequence[float], at: float, degree: int, clamp: float = 0.0
) -> float:
    """Value at time ``at`` of the least-squares polynomial through (ts, xs).

    With ``clamp`` > 0 the result is kept within [min(xs)/clamp, max(xs)*clamp] (and never
    below 0 when every sample is >= 0): a quadratic through six noisy RTTs extrapolated
    ahead must not predict a negative or a tenfold delay.
    """
    coef, t0 = polyfit(ts, xs, degree)
    dt = at - t0
    y = 0.0
    for c in reversed(coef):
        y = y * dt + c
    if clamp > 0.0:
        lo, hi = min(xs), max(xs)
        lo = lo / clamp if lo >= 0 else lo * clamp
        hi = hi * clamp if hi >= 0 else hi / clamp
        y = min(max(y, lo), hi)
    return y


def classify(
    rtt: float,
    min_rtt: float,
    mean_rtt: float,
    jitter: float,
    loss: float,
    cfg: SchedulerConfig,
) -> str:
    """One of the four network states of seed 003 from delay, jitter and loss.

    congested: the delay has inflated (queues) or loss is heavy; interfered: loss or
    jitter without queueing (radio trouble); stable: low jitter and almost no loss;
    normal: the rest. ``jitter`` is a variance (s^2); it is compared as a standard
    deviation relative to the mean delay so that the thresholds hold on any RTT.
    """
    if (min_rtt > 0 and rtt >= cfg.congested_rtt_ratio * min_rtt) or loss >= cfg.congested_loss:
        return CONGESTED
    cv = math.sqrt(jitter) / mean_rtt if mean_rtt > 0 else 0.0
    if loss >= cfg.interfered_loss or cv >= cfg.interfered_jitter:
        return INTERFERED
    if cv <= cfg.stable_jitter and loss <= cfg.stable_loss:
        return STABLE
    return NORMAL


def adjust_rto(base: float, state: str, cfg: SchedulerConfig) -> float:
    """Seed 003's RTO adjustment for ``state``, applied to ``base`` (not cumulative).

    normal: minus ``rto_step`` (never below ``rto_min``); interfered: plus ``rto_step``;
    congested: times ``rto_congested_factor``; stable: unchanged. Clamped to
    [rto_min, rto_max]. Applied to the RFC 6298 base each time rather than to the last
    result, so a long congested spell does not compound to the maximum.
    """
    if state == NORMAL:
        rto = base - cfg.rto_step
    elif state == INTERFERED:
        rto = base + cfg.rto_step
    elif state == CONGESTED:
        rto = base * cfg.rto_congested_factor
    else:
        rto = base
    return min(max(rto, cfg.rto_min), cfg.rto_max)


@dataclass(frozen=True, slots=True)
class PathSample:
    """One raw measurement of a path; any field may be missing (None).

    Either ``loss`` (a fraction over the interval, e.g. from a simulator) or the
    cumulative counters ``retrans_total``/``segs_out_total`` (TCP_INFO) give loss.
    """

    rtt: float | None = None  # s
    rttvar: float | None = None  # s
    delivery_rate: float | None = None  # bytes/s
    cwnd: int | None = None  # bytes
    inflight: int | None = None  # bytes
    queued: int | None = None  # bytes
    loss: float | None = None  # fraction in this interval
    retrans_total: int | None = None  # cumulative retransmitted segments
    segs_out_total: int | None = None  # cumulative segments sent
    probe_rtt: float | None = None  # s
    mss: int | None = None
    up: bool | None = None

    @classmethod
    def from_tcp_info(
        cls,
        *,
        tcpi_rtt: int,
        tcpi_rttvar: int,
        tcpi_delivery_rate: int,
        tcpi_snd_cwnd: int,
        tcpi_snd_mss: int,
        tcpi_unacked: int,
        tcpi_total_retrans: int,
        tcpi_notsent_bytes: int,
        tcpi_segs_out: int | None = None,
    ) -> PathSample:
        """Convert kernel units (microseconds, segments) to seconds and bytes."""
        return cls(
            rtt=tcpi_rtt / 1e6 if tcpi_rtt > 0 else None,
            rttvar=tcpi_rttvar / 1e6,
            delivery_rate=float(tcpi_delivery_rate) if tcpi_delivery_rate > 0 else None,
            cwnd=tcpi_snd_cwnd * tcpi_snd_mss,
            inflight=tcpi_unacked * tcpi_snd_mss,
            queued=tcpi_notsent_bytes,
            retrans_total=tcpi_total_retrans,
            segs_out_total=tcpi_segs_out,
            mss=tcpi_snd_mss,
        )


class PathEstimator:
    """Short-term estimator of one path: raw samples in, :class:`PathContext` out.

    Keeps time-windowed EWMAs of RTT, delivery rate and loss, the last ``ls_samples``
    delays and losses for the least-squares extrapolation and jitter, and the minimum
    RTT over the last max(10 s, 10 EWMA windows) as the uncongested baseline.
    """

    def __init__(self, path_id: int, carrier: str = "", config: SchedulerConfig | None = None):
        self.cfg = cfg = config or SchedulerConfig()
        self._ctx = PathContext(path_id=path_id, carrier=carrier, mss=cfg.mss)
        self._rtt = Ewma(cfg.ewma_window)
        self._rate = Ewma(cfg.ewma_window)
        self._loss = Ewma(cfg.ewma_window)
        n = cfg.ls_samples
        self._rtt_t: deque[float] = deque(maxlen=n)
        self._rtt_x: deque[float] = deque(maxlen=n)
        self._loss_t: deque[float] = deque(maxlen=n)
        self._loss_x: deque[float] = deque(maxlen=n)
        self._min_rtt: deque[tuple[float, float]] = deque()  # (time, rtt), increasing rtt
        self._counters: tuple[int, int] | None = None

    def context(self) -> PathContext:
        """The current context (a fresh object per update; do not mutate it)."""
        return self._ctx

    def set_up(self, up: bool, now: float) -> PathContext:
        return self.update(PathSample(up=up), now)

    def update(self, sample: PathSample, now: float) -> PathContext:
        """Fold in one sample taken at ``now``; returns the new context."""
        old = self._ctx
        ctx = PathContext(**{name: getattr(old, name) for name in PathContext.__slots__})
        ctx.updated = now
        if sample.up is not None:
            ctx.up = sample.up
        for name in ("cwnd", "inflight", "queued", "probe_rtt", "mss"):
            value = getattr(sample, name)
            if value is not None:
                setattr(ctx, name, value)
        # An idle path's kernel RTT is stale; an application probe is then the only
        # fresh delay measurement, so it stands in for the missing one.
        rtt = sample.rtt if sample.rtt is not None else sample.probe_rtt
        if rtt is not None and rtt > 0:
            ctx.srtt = self._rtt.update(rtt, now)
            ctx.rttvar = sample.rttvar if sample.rttvar is not None else math.sqrt(self._rtt.var)
            self._rtt_t.append(now)
            self._rtt_x.append(rtt)
            self._track_min(rtt, now)
        if sample.delivery_rate is not None and sample.delivery_rate >= 0:
            ctx.delivery_rate = self._rate.update(sample.delivery_rate, now)
            ctx.rate_var = self._rate.var if self._rate.count > 1 else None
        loss = self._loss_sample(sample)
        if loss is not None:
            ctx.loss_rate = self._loss.update(loss, now)
            self._loss_t.append(now)
            self._loss_x.append(loss)
        self._derive(ctx, now)
        self._ctx = ctx
        return ctx

    def _loss_sample(self, sample: PathSample) -> float | None:
        if sample.loss is not None:
            return min(max(sample.loss, 0.0), 1.0)
        if sample.retrans_total is None or sample.segs_out_total is None:
            return None
        prev, self._counters = self._counters, (sample.retrans_total, sample.segs_out_total)
        if prev is None:
            return None
        d_retr, d_out = sample.retrans_total - prev[0], sample.segs_out_total - prev[1]
        if d_out <= 0 or d_retr < 0:
            return None  # idle interval or counters reset (new socket)
        return min(d_retr / d_out, 1.0)

    def _track_min(self, rtt: float, now: float) -> None:
        window = self._min_rtt
        while window and window[-1][1] >= rtt:
            window.pop()
        window.append((now, rtt))
        horizon = max(self.cfg.ewma_window * 10.0, 10.0)
        while window[0][0] < now - horizon:
            window.popleft()

    def _derive(self, ctx: PathContext, now: float) -> None:
        cfg = self.cfg
        # Seed 003 extrapolates to "the next moment", one retransmission timeout ahead;
        # ls_horizon = 0 does that, a positive value fixes the horizon.
        at = now + (cfg.ls_horizon or (ctx.rto if ctx.rto is not None else cfg.rto_min))
        if self._rtt_x:
            xs = self._rtt_x
            ctx.rtt_pred = extrapolate(self._rtt_t, xs, at, cfg.ls_degree, cfg.ls_clamp)
            ctx.rtt_jitter = variance(xs) if len(xs) > 1 else None
            ctx.min_rtt = self._min_rtt[0][1]
        if self._loss_x:
            xs = self._loss_x
            pred = extrapolate(self._loss_t, xs, at, cfg.ls_degree, cfg.ls_clamp)
            ctx.loss_pred = min(max(pred, 0.0), 1.0)
            ctx.loss_var = variance(xs) if len(xs) > 1 else None
        if ctx.rtt_pred is not None and ctx.min_rtt is not None:
            mean = sum(self._rtt_x) / len(self._rtt_x)
            loss = ctx.loss_pred if ctx.loss_pred is not None else ctx.loss_rate
            ctx.state = classify(ctx.rtt_pred, ctx.min_rtt, mean, ctx.rtt_jitter or 0.0, loss, cfg)
            base = ctx.srtt + 4.0 * ctx.rttvar
            ctx.rto = adjust_rto(base, ctx.state, cfg)
