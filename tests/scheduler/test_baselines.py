"""Each baseline makes the decision its definition says on small scripted scenarios."""

import pytest

from scheduler.config import SchedulerConfig
from scheduler.context import MessageInfo, PathContext
from scheduler.policies import UnknownPolicy, get, names


def p(pid, srtt, cwnd=50_000, inflight=0, queued=0, rttvar=0.005, up=True, mss=1000):
    return PathContext(
        pid,
        f"c{pid}",
        up=up,
        srtt=srtt,
        rttvar=rttvar,
        cwnd=cwnd,
        inflight=inflight,
        queued=queued,
        mss=mss,
        delivery_rate=1e6,
    )


M = MessageInfo(1, 1000)


def test_registry_names_and_errors():
    assert names() == ("context", "minrtt", "roundrobin", "redundant", "ecf", "blest")
    assert get("ours").name == "context"
    assert get(config=SchedulerConfig(policy="ecf")).name == "ecf"
    for n in names():
        assert get(n).name == n
    with pytest.raises(UnknownPolicy, match="unknown scheduling policy 'fastest'"):
        get("fastest")
    assert get("roundrobin") is not get("roundrobin")  # fresh state per run


def test_minrtt_lowest_rtt_with_room_else_lowest_rtt():
    pol = get("minrtt")
    paths = [p(0, 0.05), p(1, 0.02, inflight=50_000), p(2, 0.03)]
    assert pol.decide(M, paths, 0) == (2,)  # path 1 is faster but its window is full
    paths[1].inflight = 10_000
    assert pol.decide(M, paths, 0) == (1,)
    full = [p(0, 0.05, inflight=60_000), p(1, 0.02, queued=50_000)]
    assert pol.decide(M, full, 0) == (1,)  # all full: the fastest
    assert pol.decide(M, [p(0, 0.05, up=False)], 0) == ()


def test_roundrobin_cycles_over_up_paths():
    pol = get("roundrobin")
    paths = [p(0, 0.05), p(1, 0.02), p(2, 0.03)]
    assert [pol.decide(M, paths, 0)[0] for _ in range(5)] == [0, 1, 2, 0, 1]
    paths[2].up = False
    assert [pol.decide(M, paths, 0)[0] for _ in range(3)] == [0, 1, 0]


def test_redundant_every_up_path():
    paths = [p(0, 0.05), p(1, 0.02, up=False), p(2, 0.03)]
    assert get("redundant").decide(M, paths, 0) == (0, 2)


# ECF with f = path 0 (10 ms, window 50 kB full), s = path 1 (100 ms, room),
# delta = max(rttvar) = 5 ms, beta = 0.25.
def ecf_paths():
    return [p(0, 0.010, inflight=50_000), p(1, 0.100)]


def test_ecf_uses_fast_path_when_it_has_room():
    paths = ecf_paths()
    paths[0].inflight = 0
    assert get("ecf").decide(MessageInfo(1, 1000, backlog=10**6), paths, 0) == (0,)


def test_ecf_waits_for_fast_path_when_it_finishes_earlier():
    # k = 100 kB: n = 1 + 100/50 = 3; 3 * 0.010 = 0.03 < 0.105;
    # k / cwnd_s * rtt_s = 2 * 0.1 = 0.2 >= 2 * 0.010 + 0.005 -> wait (fast path)
    m = MessageInfo(1, 1000, backlog=99_000)
    assert get("ecf").decide(m, ecf_paths(), 0) == (0,)


def test_ecf_small_remainder_goes_on_slow_path():
    # k = 1 kB: n * rtt_f = 0.0102 < 0.105 but k / cwnd_s * rtt_s = 0.002 < 0.025 -> s
    assert get("ecf").decide(MessageInfo(1, 1000), ecf_paths(), 0) == (1,)


def test_ecf_large_backlog_uses_slow_path_too():
    # k = 1 MB: n = 21; 0.21 >= 0.105 -> s
    m = MessageInfo(1, 1000, backlog=999_000)
    assert get("ecf").decide(m, ecf_paths(), 0) == (1,)


def test_ecf_hysteresis_after_waiting():
    # k = 550 kB: n = 12, n * rtt_f = 0.12: above 0.105 (not waiting -> s) but below
    # 1.25 * 0.105 = 0.131 (waiting -> keeps waiting).
    pol = get("ecf")
    k550 = MessageInfo(1, 1000, backlog=549_000)
    assert pol.decide(k550, ecf_paths(), 0) == (1,)
    assert pol.decide(MessageInfo(1, 1000, backlog=99_000), ecf_paths(), 0) == (0,)  # waits
    assert pol.decide(k550, ecf_paths(), 0) == (0,)  # hysteresis
    assert pol.decide(MessageInfo(2, 1000, backlog=549_000), ecf_paths(), 0) == (1,)
    pol.forget(1)
    assert pol.decide(k550, ecf_paths(), 0) == (1,)


# BLEST: f = path 0 (10 ms, cwnd 10 segments of 1000 B, full), s = path 1 (100 ms).
# r = 10; X = (10000 + 1000 * 9 / 2) * 10 = 145 kB the fast path can send in one rtt_s.
def blest_paths():
    return [p(0, 0.010, cwnd=10_000, inflight=10_000), p(1, 0.100, inflight=5_000)]


def test_blest_fast_path_with_room():
    paths = blest_paths()
    paths[0].inflight = 0
    assert get("blest").decide(MessageInfo(1, 1000, window=10_000), paths, 0) == (0,)


def test_blest_waits_when_slow_path_would_block_the_window():
    # window 100 kB - (5000 + 1000) = 94 kB < 145 kB -> wait for the fast path
    assert get("blest").decide(MessageInfo(1, 1000, window=100_000), blest_paths(), 0) == (0,)


def test_blest_uses_slow_path_when_the_window_is_large():
    # 1 MB - 6 kB > 145 kB -> slow path
    assert get("blest").decide(MessageInfo(1, 1000, window=10**6), blest_paths(), 0) == (1,)
    # lambda scales the estimate: with lambda 10, 1.45 MB > 994 kB -> wait
    pol = get("blest", SchedulerConfig(blest_lambda=10.0))
    assert pol.decide(MessageInfo(1, 1000, window=10**6), blest_paths(), 0) == (0,)
    # an unknown window never blocks
    assert get("blest").decide(MessageInfo(1, 1000), blest_paths(), 0) == (1,)


def test_every_baseline_avoids_paths_the_message_used():
    paths = [p(0, 0.02), p(1, 0.05), p(2, 0.03)]
    m = MessageInfo(1, 1000, kind="reinjection", avoid=(0,))
    for name in ("minrtt", "ecf", "blest"):
        assert get(name).decide(m, paths, 0) == (2,), name
    assert get("redundant").decide(m, paths, 0) == (1, 2)
    rr = get("roundrobin")
    assert [rr.decide(m, paths, 0)[0] for _ in range(3)] == [1, 2, 1]
    # only used paths are up: they are offered again
    paths[1].up = paths[2].up = False
    for name in ("minrtt", "ecf", "blest", "redundant", "roundrobin"):
        assert get(name).decide(m, paths, 0) == (0,), name
