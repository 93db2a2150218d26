"""Rules every policy keeps, on random paths and messages."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.config import SchedulerConfig
from scheduler.context import KINDS, STATES, ConnectionContext, MessageInfo, PathContext
from scheduler.estimators import PathEstimator, PathSample
from scheduler.longterm import LongTermPrediction, StubSource
from scheduler.policies import get, names

path_st = st.builds(
    PathContext,
    path_id=st.integers(0, 15),
    carrier=st.sampled_from(["a", "b", "c"]),
    up=st.booleans(),
    srtt=st.floats(1e-4, 5.0),
    rttvar=st.floats(0.0, 1.0),
    delivery_rate=st.floats(0.0, 1e9),
    loss_rate=st.floats(0.0, 1.0),
    cwnd=st.integers(0, 10**7),
    inflight=st.integers(0, 10**7),
    queued=st.integers(0, 10**8),
    mss=st.integers(0, 9000),
    rtt_pred=st.none() | st.floats(1e-4, 5.0),
    rtt_jitter=st.none() | st.floats(0.0, 1.0),
    rate_var=st.none() | st.floats(0.0, 1e18),
    loss_pred=st.none() | st.floats(0.0, 1.0),
    loss_var=st.none() | st.floats(0.0, 1.0),
)


def unique_paths(paths):
    seen, out = set(), []
    for p in paths:
        if p.path_id not in seen:
            seen.add(p.path_id)
            out.append(p)
    return out


conn_st = st.none() | st.builds(
    ConnectionContext,
    conn_id=st.integers(0, 5),
    client=st.sampled_from(["", "x", "y"]),
    dst_port=st.sampled_from([0, 22, 443]),
    bytes_so_far=st.integers(0, 10**8),
    priority=st.integers(0, 3),
    stream=st.booleans(),
)
msg_st = st.builds(
    MessageInfo,
    conn_id=st.integers(0, 5),
    size=st.integers(1, 1 << 20),
    kind=st.sampled_from(KINDS),
    priority=st.integers(0, 3),
    offset=st.integers(0, 10**8),
    backlog=st.integers(0, 10**8),
    window=st.none() | st.integers(0, 10**8),
    conn=conn_st,
    avoid=st.lists(st.integers(0, 15), max_size=4).map(tuple),
)
pred_st = st.builds(
    LongTermPrediction,
    throughput_mean=st.floats(0, 1e9),
    throughput_var=st.floats(0, 1e18),
    rtt_mean=st.floats(0, 5),
    rtt_var=st.floats(0, 1),
    loss_mean=st.floats(0, 1),
    loss_var=st.floats(0, 1),
    confidence=st.floats(0, 1),
    p_disconnect=st.floats(0, 1),
    expected_gap=st.floats(0, 10),
)
scenario = st.lists(
    st.tuples(msg_st, st.lists(path_st, max_size=8).map(unique_paths)), min_size=1, max_size=6
)


def run(name, steps, preds):
    src = StubSource({c: [(0.0, 1e9, pr)] for c, pr in preds.items()})
    pol = get(name, longterm=src)
    return [pol.decide(m, paths, float(i)) for i, (m, paths) in enumerate(steps)]


@settings(max_examples=150, deadline=None)
@given(scenario, st.dictionaries(st.sampled_from(["a", "b"]), pred_st))
def test_policy_rules(steps, preds):
    for name in names():
        decisions = run(name, steps, preds)
        for (msg, paths), chosen in zip(steps, decisions, strict=True):
            up = {p.path_id for p in paths if p.up}
            assert set(chosen) <= up, (name, chosen, up)
            assert len(set(chosen)) == len(chosen), (name, chosen)
            if up:
                assert chosen, (name, paths)
            if up - set(msg.avoid):  # a path the message did not use is up: never reuse
                assert not set(chosen) & set(msg.avoid), (name, chosen, msg.avoid)
        # deterministic: a fresh policy on the same sequence decides the same
        assert run(name, steps, preds) == decisions, name


sample_st = st.builds(
    PathSample,
    rtt=st.none() | st.floats(0.0, 10.0),
    rttvar=st.none() | st.floats(0.0, 5.0),
    delivery_rate=st.none() | st.floats(0.0, 1e10),
    loss=st.none() | st.floats(-1.0, 2.0),
    retrans_total=st.none() | st.integers(0, 10**6),
    segs_out_total=st.none() | st.integers(0, 10**6),
    probe_rtt=st.none() | st.floats(0.0, 10.0),
    up=st.none() | st.booleans(),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(sample_st, st.floats(0.0, 0.5)), max_size=30))
def test_estimator_outputs_stay_in_range(samples):
    cfg = SchedulerConfig()
    est = PathEstimator(0, "a", cfg)
    now = 0.0
    for sample, dt in samples:
        now += dt
        ctx = est.update(sample, now)
        assert ctx.state in STATES
        assert ctx.rto is None or cfg.rto_min <= ctx.rto <= cfg.rto_max
        assert 0.0 <= ctx.loss_rate <= 1.0
        assert ctx.loss_pred is None or 0.0 <= ctx.loss_pred <= 1.0
        for v in (ctx.srtt, ctx.delivery_rate, ctx.rtt_pred, ctx.rtt_jitter, ctx.rate_var):
            assert v is None or (math.isfinite(v) and v >= 0.0)


ZERO_F = SchedulerConfig(
    f_data=0, f_bulk=0, f_interactive=0, f_reinjection=0, f_control=0, f_high=0
)


@settings(max_examples=150, deadline=None)
@given(scenario)
def test_zero_f_gives_one_path_and_it_can_send_when_any_can(steps):
    from scheduler.policies.base import has_room

    pol = get("context", ZERO_F)
    for i, (msg, paths) in enumerate(steps):
        chosen = pol.decide(msg, paths, float(i))
        up = [p for p in paths if p.up]
        if not up:
            assert chosen == ()
            continue
        assert len(chosen) == 1
        fresh = [p for p in up if p.path_id not in msg.avoid] or up
        if any(has_room(p) for p in fresh):
            (best,) = [p for p in paths if p.path_id == chosen[0]]
            assert has_room(best) and best in fresh
