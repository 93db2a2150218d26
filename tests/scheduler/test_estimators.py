import math

import pytest

from scheduler.config import SchedulerConfig
from scheduler.context import CONGESTED, INTERFERED, NORMAL, STABLE
from scheduler.estimators import (
    Ewma,
    PathEstimator,
    PathSample,
    adjust_rto,
    classify,
    extrapolate,
    fit_at,
    polyfit,
    variance,
)

T6 = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]


def test_ewma_time_weighted_gain_hand_computed():
    e = Ewma(window=1.0)
    assert e.update(0.0, now=0.0) == 0.0
    g = 1 - math.exp(-1.0)  # one window elapsed
    assert e.update(10.0, now=1.0) == pytest.approx(10 * g)
    # West's update: var = (1 - g) * (0 + diff * g * diff)
    assert e.var == pytest.approx((1 - g) * 10 * 10 * g)
    # a constant series has no variance
    c = Ewma(0.5)
    for i in range(20):
        c.update(3.0, i * 0.1)
    assert c.mean == pytest.approx(3.0) and c.var == pytest.approx(0.0)


def test_ewma_short_gap_weighs_less_than_long_gap():
    a, b = Ewma(1.0), Ewma(1.0)
    a.update(0.0, 0.0)
    b.update(0.0, 0.0)
    assert a.update(1.0, 0.1) < b.update(1.0, 2.0)


def test_jitter_is_population_variance():
    assert variance([1, 2, 3, 4, 5, 6]) == pytest.approx(35 / 12)
    assert variance([7.0]) == 0.0


def test_extrapolation_exact_on_polynomials():
    lin = [0.05 + 0.02 * t for t in T6]
    assert extrapolate(T6, lin, 0.6, degree=1) == pytest.approx(0.062)
    assert extrapolate(T6, lin, 0.6, degree=2) == pytest.approx(0.062)
    quad = [1 + 2 * t + 3 * t * t for t in T6]
    assert extrapolate(T6, quad, 0.7, degree=2) == pytest.approx(1 + 1.4 + 3 * 0.49)
    # degree 1 through a parabola is a least-squares line, not the parabola
    assert extrapolate(T6, quad, 0.7, degree=1) != pytest.approx(1 + 1.4 + 3 * 0.49)
    quart = [t**4 - t for t in T6]
    assert extrapolate(T6, quart, 0.8, degree=4) == pytest.approx(0.8**4 - 0.8)


def test_least_squares_line_hand_computed():
    # points (0,0) (1,1) (2,1) (3,3): means 1.5 and 1.25, Sxy 4.5, Sxx 5 -> slope 0.9,
    # intercept 1.25 - 0.9 * 1.5 = -0.1
    coef, t0 = polyfit([0, 1, 2, 3], [0, 1, 1, 3], 1)
    assert t0 == 1.5
    assert coef[1] == pytest.approx(0.9)
    assert extrapolate([0, 1, 2, 3], [0, 1, 1, 3], 4, 1) == pytest.approx(-0.1 + 0.9 * 4)


def test_degree_lowered_and_clamped():
    assert extrapolate([1.0], [5.0], 10.0, degree=4) == 5.0
    assert extrapolate([1.0, 1.0], [4.0, 6.0], 3.0, degree=2) == 5.0
    steep = [0.05, 0.06, 0.08, 0.11, 0.15, 0.20]
    free = extrapolate(T6, steep, 2.0, degree=2)
    assert free > 0.4
    assert extrapolate(T6, steep, 2.0, degree=2, clamp=2.0) == pytest.approx(0.40)
    falling = [0.20, 0.17, 0.14, 0.11, 0.08, 0.05]  # the line goes negative at t = 0.67
    assert extrapolate(T6, falling, 3.0, degree=1) < 0
    assert extrapolate(T6, falling, 3.0, degree=1, clamp=2.0) == pytest.approx(0.025)


CFG = SchedulerConfig()


@pytest.mark.parametrize(
    "rtt, min_rtt, mean, jitter, loss, expected",
    [
        (0.050, 0.050, 0.050, 0.0, 0.0, STABLE),
        (0.050, 0.045, 0.050, (0.005) ** 2, 0.0, NORMAL),  # cv 0.1
        (0.050, 0.045, 0.050, (0.015) ** 2, 0.0, INTERFERED),  # cv 0.3
        (0.050, 0.050, 0.050, 0.0, 0.02, INTERFERED),
        (0.100, 0.050, 0.080, 0.0, 0.0, CONGESTED),  # delay doubled
        (0.050, 0.050, 0.050, 0.0, 0.08, CONGESTED),  # heavy loss
    ],
)
def test_four_states(rtt, min_rtt, mean, jitter, loss, expected):
    assert classify(rtt, min_rtt, mean, jitter, loss, CFG) == expected


def test_rto_adjustments_seed_003():
    cfg = SchedulerConfig(rto_min=0.001)
    assert adjust_rto(0.3, NORMAL, cfg) == pytest.approx(0.29)
    assert adjust_rto(0.3, INTERFERED, cfg) == pytest.approx(0.31)
    assert adjust_rto(0.3, CONGESTED, cfg) == pytest.approx(0.6)
    assert adjust_rto(0.3, STABLE, cfg) == pytest.approx(0.3)
    assert adjust_rto(0.005, NORMAL, cfg) == 0.001  # never below the floor
    assert adjust_rto(40.0, CONGESTED, cfg) == cfg.rto_max


def feed(est, rtts, losses=None, t0=0.0, dt=0.05):
    ctx = None
    for i, r in enumerate(rtts):
        loss = losses[i] if losses else 0.0
        ctx = est.update(PathSample(rtt=r, delivery_rate=1e6, loss=loss), t0 + i * dt)
    return ctx


def test_estimator_states_on_synthetic_series():
    cfg = SchedulerConfig(rto_min=0.001)
    stable = feed(PathEstimator(0, "a", cfg), [0.05] * 8)
    assert stable.state == STABLE and stable.rtt_jitter == pytest.approx(0.0)
    rising = feed(PathEstimator(0, "a", cfg), [0.05, 0.05, 0.06, 0.08, 0.11, 0.15, 0.20])
    assert rising.state == CONGESTED
    assert rising.rtt_pred > 0.20  # extrapolated ahead, beyond the last sample
    assert rising.rto == pytest.approx(2 * (rising.srtt + 4 * rising.rttvar))
    lossy = feed(PathEstimator(0, "a", cfg), [0.05] * 8, [0.02] * 8)
    assert lossy.state == INTERFERED and lossy.loss_pred == pytest.approx(0.02)
    assert lossy.rto == pytest.approx(lossy.srtt + 4 * lossy.rttvar + 0.010)
    calm = feed(PathEstimator(0, "a", cfg), [0.04, 0.06] * 4)
    assert calm.state == NORMAL  # jitter std 0.01 / mean 0.05 = 0.2 < 0.25
    noisy = feed(PathEstimator(0, "a", cfg), [0.035, 0.065] * 4)
    assert noisy.state == INTERFERED  # 0.015 / 0.05 = 0.3; no delay inflation


def tcp_info(retrans, segs_out, notsent):
    return PathSample.from_tcp_info(
        tcpi_rtt=40_000,
        tcpi_rttvar=5_000,
        tcpi_delivery_rate=2_000_000,
        tcpi_snd_cwnd=20,
        tcpi_snd_mss=1000,
        tcpi_unacked=12,
        tcpi_total_retrans=retrans,
        tcpi_notsent_bytes=notsent,
        tcpi_segs_out=segs_out,
    )


def test_estimator_from_tcp_info_counters():
    est = PathEstimator(3, "b")
    ctx = est.update(tcp_info(5, 100, 7000), 1.0)
    assert (ctx.srtt, ctx.rttvar, ctx.delivery_rate) == (0.04, 0.005, 2e6)
    assert (ctx.cwnd, ctx.inflight, ctx.queued, ctx.mss) == (20000, 12000, 7000, 1000)
    assert ctx.loss_pred is None  # one counter reading is no rate yet
    ctx = est.update(tcp_info(8, 200, 0), 1.1)
    assert ctx.loss_rate == pytest.approx(0.03)  # 3 retransmissions in 100 segments
    assert ctx.queued == 0
    ctx = est.update(tcp_info(0, 10, 0), 1.2)  # counters reset (new socket): no sample
    # no sample for 0.1 s: the estimate decays by exp(-0.1 / loss_decay), nothing else
    assert ctx.loss_rate == pytest.approx(0.03 * math.exp(-0.1 / 5.0))


def test_loss_decays_without_samples_and_probes_count_as_loss_free():
    est = PathEstimator(0, "a", SchedulerConfig(loss_decay=2.0))
    est.update(PathSample(rtt=0.05, loss=0.0), 0.0)
    hit = est.update(PathSample(rtt=0.05, loss=0.4), 1.0)  # gain 1 - e^-1
    assert hit.loss_rate == pytest.approx(0.4 * (1 - math.exp(-1.0)))
    # An outage, then nothing is sent: 4 s later (two time constants) the estimate has
    # decayed by e^-2, from the value at the last sample (not compounded per update).
    est.update(PathSample(up=True), 3.0)
    idle = est.update(PathSample(up=True), 5.0)
    assert idle.loss_rate == pytest.approx(hit.loss_rate * math.exp(-2.0))
    assert idle.loss_pred == pytest.approx(hit.loss_pred * math.exp(-2.0))
    # A PROBE answered on the idle path: an RTT sample and a loss-free loss sample.
    prev = est.context()
    probed = est.probe(0.08, 6.0)
    assert probed.probe_rtt == 0.08 and probed.srtt > prev.srtt
    g = 1 - math.exp(-5.0 / 1.0)  # EWMA gain over the 5 s since the last loss sample
    assert probed.loss_rate == pytest.approx(hit.loss_rate * (1 - g))
    # On a busy path a probe adds the delay only: the loss estimate just decays.
    busy = est.probe(0.07, 7.0, idle=False)
    assert busy.loss_rate == pytest.approx(probed.loss_rate * math.exp(-1.0 / 2.0))


def test_closed_form_fit_agrees_with_the_general_least_squares():
    ts = [0.0, 0.13, 0.2, 0.41, 0.5, 0.77]
    xs = [0.05, 0.061, 0.058, 0.07, 0.069, 0.09]
    for degree in (0, 1, 2):
        coef, t0 = polyfit(ts, xs, degree)
        want = sum(c * (0.9 - t0) ** k for k, c in enumerate(coef))
        assert fit_at(ts, xs, 0.9, degree) == pytest.approx(want, rel=1e-9)
    # coinciding times lower the degree the same way: two distinct times give the line
    # through (1, mean 2) and (2, 5), which reaches 8 at t = 3
    assert fit_at([1.0, 1.0, 2.0], [1.0, 3.0, 5.0], 3.0, 2) == pytest.approx(8.0)
    assert fit_at([1.0, 1.0], [1.0, 3.0], 3.0, 2) == pytest.approx(2.0)


def test_estimator_up_down_and_fresh_objects():
    est = PathEstimator(1, "a")
    first = est.context()
    down = est.set_up(False, 2.0)
    assert not down.up and first.up and down is est.context() and down is not first


def test_probe_rtt_stands_in_for_a_missing_kernel_rtt():
    est = PathEstimator(0, "a")
    est.update(PathSample(rtt=0.05), 0.0)
    ctx = est.update(PathSample(probe_rtt=0.5), 10.0)  # ten windows later: gain ~1
    assert ctx.probe_rtt == 0.5 and ctx.srtt == pytest.approx(0.5, rel=1e-3)
    ctx = est.update(PathSample(rtt=0.05, probe_rtt=0.9), 20.0)  # the kernel's wins
    assert ctx.srtt == pytest.approx(0.05, rel=1e-3)


def test_horizon_zero_extrapolates_one_rto_ahead():
    ramp = [0.05 + 0.01 * i for i in range(6)]  # 50 ms apart: +0.2 s of delay per second
    fixed = feed(PathEstimator(0, "a", SchedulerConfig(ls_horizon=0.1, ls_clamp=100)), ramp)
    assert fixed.rtt_pred == pytest.approx(0.10 + 0.2 * 0.1)
    est = PathEstimator(0, "a", SchedulerConfig(ls_horizon=0.0, ls_clamp=100))
    rto = feed(est, ramp[:5]).rto  # the RTO in force when the last sample arrives
    assert rto >= 0.2
    last = est.update(PathSample(rtt=ramp[5], delivery_rate=1e6, loss=0.0), 0.25)
    assert last.rtt_pred == pytest.approx(0.10 + 0.2 * rto)
