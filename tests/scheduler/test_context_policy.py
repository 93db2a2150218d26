"""Our policy on small scenarios whose expectations are computed by hand."""

import pytest

from scheduler.config import SchedulerConfig
from scheduler.context import (
    CONTROL,
    REINJECTION,
    ConnectionContext,
    MessageInfo,
    PathContext,
    stream_like,
)
from scheduler.fusion import INF
from scheduler.longterm import LongTermPrediction, StubSource
from scheduler.policies import get
from scheduler.policies.opportunistic import ContextPolicy

# Hand-computed utilities with a = 1e-5 per byte, no queue discount, no loss floor:
#   path 0: 1/0.1  + 1e-5 * 1e6 = 20, u = 0.99 * 20 = 19.8
#   path 1: 1/0.05 + 1e-5 * 1e6 = 30, u = 0.98 * 30 = 29.4
#   path 2: 1/0.2  + 1e-5 * 4e6 = 45, u = 0.95 * 45 = 42.75
HAND = SchedulerConfig(a=1e-5, queue_delay=False, loss_floor=0.0, b=1000.0)


def three_paths():
    return [
        PathContext(0, "a", srtt=0.1, delivery_rate=1e6, loss_rate=0.01, queued=50_000),
        PathContext(1, "b", srtt=0.05, delivery_rate=1e6, loss_rate=0.02, queued=0),
        PathContext(2, "c", srtt=0.2, delivery_rate=4e6, loss_rate=0.05, queued=0),
    ]


def test_zero_f_gives_exactly_the_best_path():
    pol = ContextPolicy(HAND)
    assert pol.decide(MessageInfo(1, 10_000), three_paths(), 0.0) == (2,)
    # take the best away: the next by utility
    paths = three_paths()
    paths[2].up = False
    assert pol.decide(MessageInfo(1, 10_000), paths, 0.0) == (1,)


def test_large_f_adds_paths_in_utility_order_until_gain_stops_paying():
    # S = {2}: P_loss 0.05. Adding 1: gain F * 0.05 * 0.98, cost b * 10000 / 1e6 = 10.
    # Then P_loss 0.001. Adding 0: gain F * 0.001 * 0.99, cost b * 60000 / 1e6 = 60.
    cases = [
        (100.0, (2,)),  # 4.9 < 10
        (1000.0, (2, 1)),  # 49 > 10; then 0.99 < 60
        (1e5, (2, 1, 0)),  # 4900 > 10; 99 > 60
    ]
    for f, expected in cases:
        pol = ContextPolicy(SchedulerConfig(**{**HAND.__dict__, "f_reinjection": f}))
        got = pol.decide(MessageInfo(1, 10_000, kind=REINJECTION), three_paths(), 0.0)
        assert got == expected, f


def test_queued_bytes_make_extra_copies_unaffordable():
    paths = three_paths()
    paths[1].queued = 1_000_000  # cost b * 1.01e6 / 1e6 = 1010 > gain 49
    pol = ContextPolicy(SchedulerConfig(**{**HAND.__dict__, "f_reinjection": 1000.0}))
    assert pol.decide(MessageInfo(1, 10_000, kind=REINJECTION), paths, 0.0) == (2,)


def test_zero_f_gives_the_best_path_among_those_that_can_send():
    # Path 2 (u = 42.75) has a full window: the best path with room, 1 (29.4), is chosen.
    pol = ContextPolicy(HAND)
    paths = three_paths()
    paths[2].cwnd, paths[2].inflight = 100_000, 100_000
    assert pol.decide(MessageInfo(1, 10_000), paths, 0.0) == (1,)
    # Every window full: the best by utility again (queue_delay is off in HAND, so the
    # bytes ahead of the message do not count).
    for q in paths:
        q.cwnd, q.inflight = 100_000, 150_000
    assert pol.decide(MessageInfo(1, 10_000), paths, 0.0) == (2,)
    # An unknown window (cwnd 0) counts as room.
    paths[0].cwnd = 0
    assert pol.decide(MessageInfo(1, 10_000), paths, 0.0) == (0,)


def test_full_window_counts_the_overshoot_as_bytes_ahead():
    # Default config, both windows full. A: 50 ms, 1 MB/s, 400 kB beyond its window:
    # f = (20 + 10) * 0.05 / (0.05 + 410e3 / 1e6) = 3.26. B: 100 ms, 1 MB/s, window
    # exactly full: f = (10 + 10) * 0.1 / (0.1 + 10e3 / 1e6) = 18.2. B wins, although
    # A has the lower RTT (min-RTT would queue on A).
    paths = [
        PathContext(0, "A", srtt=0.05, delivery_rate=1e6, cwnd=100_000, inflight=500_000),
        PathContext(1, "B", srtt=0.1, delivery_rate=1e6, cwnd=100_000, inflight=100_000),
    ]
    assert ContextPolicy(SchedulerConfig()).decide(MessageInfo(1, 10_000), paths, 0.0) == (1,)
    assert get("minrtt").decide(MessageInfo(1, 10_000), paths, 0.0) == (0,)


def test_unmeasured_path_gets_a_window_per_rtt_prior():
    # Path 1 never carried data (rate 0): prior 60 kB / 50 ms = 1.2 MB/s, so
    # u = 0.99 * (20 + 12) = 31.7 beats path 0's 0.99 * (20 + 10) = 29.7.
    # Without the prior path 1 would rank at 0.99 * 20 and never be tried.
    paths = [
        PathContext(0, "a", srtt=0.05, delivery_rate=1e6, loss_rate=0.01, cwnd=60_000),
        PathContext(1, "b", srtt=0.05, delivery_rate=0.0, loss_rate=0.01, cwnd=60_000),
    ]
    assert ContextPolicy(HAND).decide(MessageInfo(1, 10_000), paths, 0.0) == (1,)
    paths[1].cwnd = 40_000  # prior 0.8 MB/s: u = 0.99 * 28 < 29.7
    assert ContextPolicy(HAND).decide(MessageInfo(1, 10_000), paths, 0.0) == (0,)


def test_reinjection_avoids_the_paths_the_message_used():
    pol = ContextPolicy(HAND)  # f_reinjection 1e5
    m = MessageInfo(1, 10_000, kind=REINJECTION, avoid=(2,))
    # Without 2: S = {1}; adding 0 gains 1e5 * 0.02 * 0.99 = 1980 > b * 60e3 / 1e6 = 60.
    assert pol.decide(m, three_paths(), 0.0) == (1, 0)
    # Every up path used already: they are all offered again (better than nothing).
    m = MessageInfo(1, 10_000, kind=REINJECTION, avoid=(0, 1, 2))
    assert pol.decide(m, three_paths(), 0.0) == (2, 1, 0)
    paths = three_paths()
    paths[0].up = paths[1].up = False
    m = MessageInfo(1, 10_000, kind=REINJECTION, avoid=(2,))
    assert pol.decide(m, paths, 0.0) == (2,)


def test_control_and_high_priority_use_their_f():
    cfg = SchedulerConfig(**{**HAND.__dict__, "f_control": 1000.0, "f_high": 1000.0})
    pol = ContextPolicy(cfg)
    assert pol.decide(MessageInfo(1, 10_000, kind=CONTROL), three_paths(), 0.0) == (2, 1)
    assert pol.decide(MessageInfo(1, 10_000, priority=1), three_paths(), 0.0) == (2, 1)
    conn = ConnectionContext(1, client="x", priority=3)
    assert pol.decide(MessageInfo(1, 10_000, conn=conn), three_paths(), 0.0) == (2, 1)
    assert pol.decide(MessageInfo(1, 10_000), three_paths(), 0.0) == (2,)


def test_queue_discount_spreads_load():
    # Default config: path 2's quality 45 is discounted by 0.2 / (0.2 + q / 4e6); at
    # q = 2 MB that is 45 * 0.2 / 0.7 = 12.9, below path 1's ~30: path 1 wins.
    paths = three_paths()
    pol = ContextPolicy(SchedulerConfig())
    assert pol.decide(MessageInfo(1, 10_000), paths, 0.0) == (2,)
    paths[2].queued = 2_000_000
    assert pol.decide(MessageInfo(1, 10_000), paths, 0.0) == (1,)


def pred(**kw):
    base = dict(
        throughput_mean=8e6,
        throughput_var=1e12,
        rtt_mean=0.05,
        rtt_var=1e-4,
        loss_mean=0.01,
        loss_var=1e-4,
        confidence=1.0,
    )
    base.update(kw)
    return LongTermPrediction(**base)


def test_path_predicted_to_disconnect_is_avoided_before_the_event():
    # Carrier "a" is the better path; the long-term source predicts a handover failure
    # at t = 15 (probability 0.9 within the look-ahead from t = 10 on).
    src = StubSource({"a": [(10.0, 15.0, pred(p_disconnect=0.9, expected_gap=1.0))]})
    pol = ContextPolicy(SchedulerConfig(longterm_refresh=0.25), src)
    paths = [
        PathContext(0, "a", srtt=0.03, delivery_rate=5e6),
        PathContext(1, "b", srtt=0.08, delivery_rate=2e6),
    ]
    m = MessageInfo(1, 16_384)
    before = [pol.decide(m, paths, t / 10) for t in range(50, 99)]
    assert set(before) == {(0,)}
    # From the prediction on (plus at most one refresh interval) path 0 is avoided while
    # it is still up.
    during = [pol.decide(m, paths, 10.3 + t / 10) for t in range(0, 46)]
    assert set(during) == {(1,)}
    assert all(p.up for p in paths)
    # Path 1's window is full: ordinary data queues there rather than go on the risky
    # path; bulk data takes the risky path's room (a dying path strands its bytes only
    # until they are reinjected; setting it aside for the whole look-ahead wastes it).
    paths[1].cwnd, paths[1].inflight = 50_000, 60_000
    assert pol.decide(m, paths, 12.0) == (1,)
    bulk = ConnectionContext(2, client="x", bytes_so_far=5 << 20)
    assert pol.decide(MessageInfo(2, 16_384, offset=5 << 20, conn=bulk), paths, 12.0) == (0,)
    # If nothing else is up, a risky path is still better than nothing.
    paths[1].up = False
    assert pol.decide(m, paths, 12.0) == (0,)


def test_longterm_source_is_cached_per_refresh_interval():
    src = StubSource({"a": [(0.0, 100.0, pred())]})
    pol = ContextPolicy(SchedulerConfig(longterm_refresh=1.0), src)
    paths = [PathContext(0, "a", srtt=0.05, delivery_rate=1e6)]
    for i in range(100):
        pol.decide(MessageInfo(1, 1000), paths, i * 0.05)  # 5 s
    assert src.calls == 5


def test_fusion_with_confident_history_changes_the_choice():
    # Short term: path 0 (carrier a) looks faster; its rate samples are noisy
    # (variance 1e12 (B/s)^2), path 1's are not. History with high confidence says
    # carrier a really delivers 0.25 MB/s: fused rate of path 0 drops to
    # (3e6/1e12 + 0.25e6/(1e12/64)) / (1/1e12 + 64/1e12) = 0.292 MB/s.
    src = StubSource({"a": [(0.0, 100.0, pred(throughput_mean=2e6, throughput_var=1e12))]})
    paths = [
        PathContext(0, "a", srtt=0.05, delivery_rate=3e6, rate_var=1e12),
        PathContext(1, "b", srtt=0.05, delivery_rate=2e6, rate_var=1e6),
    ]
    m = MessageInfo(1, 16_384)
    assert ContextPolicy(SchedulerConfig()).decide(m, paths, 1.0) == (0,)
    pol = ContextPolicy(SchedulerConfig(), src)
    rtt, bw, loss, p_disc = pol.fused(paths[0], 1.0)
    assert bw == pytest.approx((3e6 / 1e12 + 0.25e6 * 64 / 1e12) / (65 / 1e12))
    assert pol.decide(m, paths, 1.0) == (1,)
    # With zero confidence the history is ignored.
    src0 = StubSource({"a": [(0.0, 100.0, pred(throughput_mean=2e6, confidence=0.0))]})
    assert ContextPolicy(SchedulerConfig(), src0).decide(m, paths, 1.0) == (0,)


def test_inverse_confidence_variance_mode():
    # Seed 001 literally: variance 1 / confidence = 2 for confidence 0.5; short-term rtt
    # variance 2 as well -> the plain mean of 0.1 and 0.05.
    src = StubSource({"a": [(0.0, 100.0, pred(rtt_mean=0.05, confidence=0.5))]})
    pol = ContextPolicy(SchedulerConfig(longterm_variance="inverse_confidence"), src)
    p = PathContext(0, "a", srtt=0.1, rtt_jitter=2.0)
    assert pol.fused(p, 0.0)[0] == pytest.approx(0.075)


def test_interactive_first_bytes_favour_low_delay_and_may_be_duplicated():
    # L: 20 ms, 1 MB/s; H: 80 ms, 10 MB/s. Bulk-style quality prefers H
    # (12.5 + 100 against 50 + 10); the first bytes of a web flow rank by delay (a = 0).
    paths = [
        PathContext(0, "L", srtt=0.02, delivery_rate=1e6),
        PathContext(1, "H", srtt=0.08, delivery_rate=1e7),
    ]
    pol = ContextPolicy(SchedulerConfig())
    web = ConnectionContext(7, client="p1", dst_port=443)
    first = pol.decide(MessageInfo(7, 16_384, offset=0, conn=web), paths, 0.0)
    # gain 1e3 * 0.01 * 0.99 = 9.9 < cost 1e4 * (16384 + 0) / 1e7 = 16.4: no copy
    assert first == (0,)
    # with f_interactive = 1e4 (the default before the node knew its ports): gain 99, a
    # copy on H
    copies = ContextPolicy(SchedulerConfig(f_interactive=1e4))
    assert copies.decide(MessageInfo(7, 16_384, offset=0, conn=web), paths, 0.0) == (0, 1)
    # Past the first 128 KiB it is ordinary data (a = 1e-5, drain-time discount):
    # L: 60 * 0.02 / (0.02 + 16384 / 1e6) = 33, H: 112.5 * 0.08 / 0.0816 = 110: H.
    later = pol.decide(MessageInfo(7, 16_384, offset=200_000, conn=web), paths, 0.0)
    assert later == (1,)
    # Past bulk_bytes it is bulk: a_bulk = 0 and no discount rank by delay alone: L.
    bulk = pol.decide(MessageInfo(7, 16_384, offset=1 << 20, conn=web), paths, 0.0)
    assert bulk == (0,)
    other_port = ConnectionContext(8, client="p1", dst_port=22)
    assert pol.decide(MessageInfo(8, 16_384, conn=other_port), paths, 0.0) == (1,)


def test_light_load_connections_share_the_single_best_path():
    paths = [
        PathContext(0, "a", srtt=0.03, delivery_rate=5e6, queued=10_000),
        PathContext(1, "b", srtt=0.06, delivery_rate=2e6),
    ]
    pol = ContextPolicy(SchedulerConfig())
    got = set()
    for client in ("p1", "p2", "p3"):
        conn = ConnectionContext(hash(client) % 1000, client=client, bytes_so_far=5 << 20)
        for i in range(10):
            got.add(pol.decide(MessageInfo(conn.conn_id, 8192, offset=i, conn=conn), paths, i))
    assert got == {(0,)}


def fairness_run(cfg, steps=3000):
    """Two bulk clients, each offering four 13750-byte messages every 10 ms (11 MB/s in
    all); A's always come first. Paths: fast 10 MB/s at 20 ms, slow 2 MB/s at 60 ms; the
    queues drain at those rates, and a path is full once its queue reaches two
    bandwidth-delay products (400 kB, 240 kB). Returns bytes each client got on the fast
    path."""
    pol = get("context", cfg)
    rates = {0: 10e6, 1: 2e6}
    queued = {0: 0.0, 1: 0.0}
    conns = {
        "A": ConnectionContext(1, client="A", bytes_so_far=10 << 20),
        "B": ConnectionContext(2, client="B", bytes_so_far=10 << 20),
    }
    on_fast = {"A": 0, "B": 0}
    dt = 0.01
    for step in range(steps):
        now = step * dt
        for pid in queued:
            queued[pid] = max(0.0, queued[pid] - rates[pid] * dt)
        for name in ("A", "B"):
            for _ in range(4):
                paths = [
                    PathContext(
                        0, "f", srtt=0.02, delivery_rate=10e6, cwnd=400_000, queued=int(queued[0])
                    ),
                    PathContext(
                        1, "s", srtt=0.06, delivery_rate=2e6, cwnd=240_000, queued=int(queued[1])
                    ),
                ]
                m = MessageInfo(conns[name].conn_id, 13_750, conn=conns[name])
                (pid,) = pol.decide(m, paths, now)
                queued[pid] += 13_750
                if pid == 0:
                    on_fast[name] += 13_750
    return on_fast


def test_bulk_clients_on_equal_terms_get_fair_shares_of_the_best_path():
    shares = fairness_run(SchedulerConfig())
    a, b = shares["A"], shares["B"]
    assert abs(a - b) <= 0.1 * max(a, b), shares


def test_without_fair_accounting_the_first_client_takes_the_best_path():
    # Same run with the quantum so large that steering never happens: the test above
    # would fail, which shows that the accounting is what makes it pass.
    shares = fairness_run(SchedulerConfig(fair_quantum=1 << 30))
    assert shares["B"] < 0.9 * shares["A"], shares


def test_memoised_fusion_follows_in_place_changes():
    paths = [
        PathContext(0, "a", srtt=0.05, delivery_rate=5e6),
        PathContext(1, "b", srtt=0.05, delivery_rate=2e6),
    ]
    pol = ContextPolicy(SchedulerConfig())
    m = MessageInfo(1, 16_384)
    assert pol.decide(m, paths, 0.0) == (0,)
    paths[0].delivery_rate = 1e6  # a producer that updates its context in place
    assert pol.decide(m, paths, 0.1) == (1,)


def test_unmeasured_longterm_metric_is_ignored_not_averaged():
    # contextdb reports an unmeasured metric as mean 0.0 with infinite variance; the
    # short-term value (here with unknown variance too) must stand alone.
    unmeasured = pred(throughput_mean=16e6, rtt_mean=0.0, rtt_var=INF, loss_mean=0.0, loss_var=INF)
    pol = ContextPolicy(SchedulerConfig(), StubSource({"a": [(0.0, 100.0, unmeasured)]}))
    p = PathContext(0, "a", srtt=0.08, delivery_rate=1e6, loss_rate=0.04)
    rtt, bw, loss, _ = pol.fused(p, 0.0)
    assert rtt == 0.08 and loss == 0.04
    # the measured throughput (2 MB/s, finite variance) beats a rate of unknown variance
    assert bw == pytest.approx(2e6)


def test_stream_like_needs_age_and_a_recent_dry_spell():
    ctx = ConnectionContext(1, opened=100.0)
    assert not stream_like(ctx, 200.0, 10.0, 30.0)  # never application-limited: a download
    ctx.app_limited_at = 105.0
    assert not stream_like(ctx, 105.0, 10.0, 30.0)  # 5 s old: could be a web object
    assert stream_like(ctx, 110.0, 10.0, 30.0)  # 10 s old, dry 5 s ago
    assert stream_like(ctx, 135.0, 10.0, 30.0)  # fell behind for 30 s: still a stream
    assert not stream_like(ctx, 135.5, 10.0, 30.0)  # 30.5 s without running dry


def stream_paths():
    # A: 50 ms, 1 MB/s, 300 kB waiting in its socket; B: 100 ms, 1 MB/s, empty. Both
    # windows have room.
    return [
        PathContext(0, "A", srtt=0.05, delivery_rate=1e6, cwnd=10**7, queued=300_000),
        PathContext(1, "B", srtt=0.1, delivery_rate=1e6, cwnd=10**7, queued=0),
    ]


def test_a_stream_that_fell_behind_goes_where_it_arrives_first():
    # A stream with more than stream_behind (256 KiB) waiting ranks by arrival (a_stream
    # = 0 with the drain-time discount), 1 / (RTT + (queued + size) / BW):
    # A 1 / (0.05 + 0.31) = 2.8, B 1 / (0.1 + 0.01) = 9.1, so B. A stream that keeps up
    # ranks by delay alone (A 20 > B 10), as bulk and min-RTT do: it leaves B to web.
    pol = ContextPolicy(SchedulerConfig())
    tv = ConnectionContext(1, client="tv", dst_port=1935, bytes_so_far=5 << 20, stream=True)
    behind = MessageInfo(1, 10_000, offset=5 << 20, backlog=300_000, conn=tv)
    assert pol.classify(behind)[0] == "stream"
    assert pol.decide(behind, stream_paths(), 0.0) == (1,)
    keeping_up = MessageInfo(1, 10_000, offset=5 << 20, backlog=256 << 10, conn=tv)
    assert pol.decide(keeping_up, stream_paths(), 0.0) == (0,)
    dl = ConnectionContext(2, client="dl", dst_port=1935, bytes_so_far=5 << 20)
    m = MessageInfo(2, 10_000, offset=5 << 20, backlog=300_000, conn=dl)
    assert pol.classify(m)[0] == "bulk"
    assert pol.decide(m, stream_paths(), 0.0) == (0,)
    assert get("minrtt").decide(behind, stream_paths(), 0.0) == (0,)
    # A higher priority class still wins over the stream class.
    tv.priority = 1
    assert pol.classify(behind)[0] == "high"


def test_stream_f_adds_copies_like_every_class():
    # f_stream = 1e4 (default 0: one path), a stream that fell behind. B first; a copy on
    # A gains 1e4 * 0.01 * 0.99 = 99 and costs b * (10 kB + 300 kB) / 1e6 = 3100: no copy.
    cfg = SchedulerConfig(f_stream=1e4)
    stream = ConnectionContext(1, dst_port=1935, stream=True)
    m = MessageInfo(1, 10_000, backlog=1 << 20, conn=stream)
    assert ContextPolicy(cfg).decide(m, stream_paths(), 0.0) == (1,)
    paths = stream_paths()
    paths[0].queued = 0
    # A is now first (1 / 0.06 > 1 / 0.11); a copy on B costs 1e4 * 0.01 = 100 > 99.
    assert ContextPolicy(cfg).decide(m, paths, 0.0) == (0,)
    cheap = SchedulerConfig(f_stream=1e4, b=1e3)
    assert ContextPolicy(cheap).decide(m, paths, 0.0) == (0, 1)


def test_the_policy_classifies_streams_from_when_the_application_ran_dry():
    # The mux only records app_limited_at; the policy applies stream_like at `now`.
    pol = ContextPolicy(SchedulerConfig())
    tv = ConnectionContext(1, dst_port=1935, opened=0.0, bytes_so_far=5 << 20)
    m = MessageInfo(1, 10_000, offset=5 << 20, backlog=300_000, conn=tv)
    assert pol.classify(m, 20.0)[0] == "bulk"  # never ran dry: a download
    tv.app_limited_at = 19.0
    assert pol.classify(m, 5.0)[0] == "bulk"  # too young (stream_age 10 s)
    assert pol.classify(m, 20.0)[0] == "stream"
    assert pol.decide(m, stream_paths(), 20.0) == (1,)  # fell behind: by arrival
    assert pol.classify(m, 49.5)[0] == "bulk"  # 30.5 s without running dry
