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
from operator import attrgetter

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
    lo, hi = min(xs), max(xs)
    if lo == hi:
        return lo  # a constant series (a loss-free path) fits exactly, at any degree
    if degree <= 2:
        y = fit_at(ts, xs, at, degree)
    else:
        coef, t0 = polyfit(ts, xs, degree)
        dt = at - t0
        y = 0.0
        for c in reversed(coef):
            y = y * dt + c
    if clamp > 0.0:
        lo = lo / clamp if lo >= 0 else lo * clamp
        hi = hi * clamp if hi >= 0 else hi / clamp
        y = min(max(y, lo), hi)
    return y


def fit_at(ts: Sequence[float], xs: Sequence[float], at: float, degree: int) -> float:
    """:func:`polyfit` evaluated at ``at`` for degree <= 2, in closed form.

    The estimator refits six samples per update; Gaussian elimination in Python cost
    ~100 us per fit. Here one pass gathers the power sums of the centred, scaled times
    and Cramer's rule solves the 2x2 or 3x3 normal equations (same centring, scaling and
    degree lowering as :func:`polyfit`, so the results agree to rounding).
    """
    n = len(ts)
    if n == 0 or n != len(xs):
        raise ValueError("need as many times as values, at least one")
    q0 = 0.0
    for x in xs:
        q0 += x
    d = min(degree, n - 1)
    if d <= 0:
        return q0 / n
    t0 = 0.0
    for t in ts:
        t0 += t
    t0 /= n
    span = 0.0
    for t in ts:
        a = t - t0 if t >= t0 else t0 - t
        if a > span:
            span = a
    if span == 0.0:
        return q0 / n
    s1 = s2 = s3 = s4 = q1 = q2 = 0.0
    for t, x in zip(ts, xs, strict=True):
        u = (t - t0) / span
        u2 = u * u
        s1 += u
        s2 += u2
        s3 += u2 * u
        s4 += u2 * u2
        q1 += x * u
        q2 += x * u2
    v = (at - t0) / span
    if d >= 2:
        m0 = s2 * s4 - s3 * s3
        m1 = s1 * s4 - s3 * s2
        m2 = s1 * s3 - s2 * s2
        det = n * m0 - s1 * m1 + s2 * m2
        if abs(det) > 1e-12:
            c0 = (q0 * m0 - s1 * (q1 * s4 - s3 * q2) + s2 * (q1 * s3 - s2 * q2)) / det
            c1 = (n * (q1 * s4 - q2 * s3) - q0 * m1 + s2 * (s1 * q2 - q1 * s2)) / det
            c2 = (n * (s2 * q2 - q1 * s3) - s1 * (s1 * q2 - q1 * s2) + q0 * m2) / det
            return c0 + v * (c1 + v * c2)
    det = n * s2 - s1 * s1
    if abs(det) > 1e-12:
        c1 = (n * q1 - s1 * q0) / det
        return (q0 - c1 * s1) / n + c1 * v
    return q0 / n


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


_CONTEXT_FIELDS = attrgetter(*PathContext.__slots__)


class PathEstimator:
    """Short-term estimator of one path: raw samples in, :class:`PathContext` out.

    Keeps time-windowed EWMAs of RTT, delivery rate and loss, the last ``ls_samples``
    delays and losses for the least-squares extrapolation and jitter, and the minimum
    RTT over the last max(10 s, 10 EWMA windows) as the uncongested baseline.

    Loss is only measured while a path carries data. An idle path's loss therefore
    comes from :meth:`probe` (an answered PROBE is a loss-free sample) and, between
    samples, decays towards 0 with the time constant ``loss_decay``: otherwise a path
    that lost packets once (an outage) would look lossy for ever, since nothing is sent
    on it that could correct the estimate.
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
        # (time, loss_rate, loss_pred, loss_var) at the last loss sample: what decays.
        self._loss_at: tuple[float, float, float | None, float | None] | None = None

    def context(self) -> PathContext:
        """The current context (a fresh object per update; only
        :meth:`scheduler.generators.PathContextGenerator.refresh` writes into it, and the
        next update starts from what it wrote)."""
        return self._ctx

    def set_up(self, up: bool, now: float) -> PathContext:
        return self.update(PathSample(up=up), now)

    def probe(self, rtt: float, now: float, idle: bool = True) -> PathContext:
        """An application PROBE came back after ``rtt`` seconds.

        It is a delay sample (an idle path's TCP_INFO RTT is stale) and, when the path
        carries no data (``idle``), a loss-free loss sample: the probe got through, and
        nothing else measures loss there. On a busy path the kernel's counters measure
        loss, so ``idle=False`` adds the delay only.
        """
        return self.update(PathSample(probe_rtt=rtt, loss=0.0 if idle else None), now)

    def update(self, sample: PathSample, now: float) -> PathContext:
        """Fold in one sample taken at ``now``; returns the new context."""
        ctx = PathContext(*_CONTEXT_FIELDS(self._ctx))
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
        self._derive(ctx, now, loss is not None)
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

    def _derive(self, ctx: PathContext, now: float, loss_sampled: bool) -> None:
        cfg = self.cfg
        # Seed 003 extrapolates to "the next moment", one retransmission timeout ahead;
        # ls_horizon = 0 does that, a positive value fixes the horizon.
        at = now + (cfg.ls_horizon or (ctx.rto if ctx.rto is not None else cfg.rto_min))
        xs = self._rtt_x
        n = len(xs)
        if n:
            ctx.rtt_pred = extrapolate(self._rtt_t, xs, at, cfg.ls_degree, cfg.ls_clamp)
            mean = sum(xs) / n
            ctx.rtt_jitter = sum((x - mean) * (x - mean) for x in xs) / n if n > 1 else None
            ctx.min_rtt = self._min_rtt[0][1]
        if loss_sampled:
            lx = self._loss_x
            pred = extrapolate(self._loss_t, lx, at, cfg.ls_degree, cfg.ls_clamp)
            ctx.loss_pred = min(max(pred, 0.0), 1.0)
            ctx.loss_var = variance(lx) if len(lx) > 1 else None
            self._loss_at = (now, ctx.loss_rate, ctx.loss_pred, ctx.loss_var)
        elif self._loss_at is not None and now > self._loss_at[0]:
            # No loss sample: decay from the values at the last one (not compounding).
            t, rate, pred, var = self._loss_at
            k = math.exp(-(now - t) / cfg.loss_decay)
            ctx.loss_rate = rate * k
            ctx.loss_pred = pred * k if pred is not None else None
            ctx.loss_var = var * k * k if var is not None else None
        if ctx.rtt_pred is not None and ctx.min_rtt is not None:
            loss = ctx.loss_pred if ctx.loss_pred is not None else ctx.loss_rate
            ctx.state = classify(ctx.rtt_pred, ctx.min_rtt, mean, ctx.rtt_jitter or 0.0, loss, cfg)
            base = ctx.srtt + 4.0 * ctx.rttvar
            ctx.rto = adjust_rto(base, ctx.state, cfg)
