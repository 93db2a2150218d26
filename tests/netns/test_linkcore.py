"""The emulator core in virtual time: rate, delay, queue bound, outages, loss."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netns import rail
from netns import traces as tr
from netns.linkcore import Link, LinkParams


def saturate(link: Link, seconds: float, size: int = 1500, backlog: int = 400) -> list[float]:
    """Keep the queue busy for ``seconds``; return the virtual times frames came out."""
    out: list[float] = []
    for ms in range(int(seconds * 1000)):
        now = ms / 1000.0
        while link.queued_packets < backlog and link.receive(now, size, now):
            pass
        out.extend(now for _ in link.poll(now))
    return out


def delivered_bps(out: list[float], start: float, end: float, size: int = 1500) -> float:
    times = np.asarray(out)
    n = np.count_nonzero((times >= start) & (times < end))
    return n * size * 8 / (end - start)


@pytest.mark.parametrize(
    "name", ["ATT-LTE-driving.down", "TMobile-LTE-short.down", "Verizon-LTE-short.up"]
)
def test_rate_over_10s_windows_matches_mahimahi_trace(traces, name):
    trace = tr.read_mahimahi(traces / "mahimahi" / name)
    delay = 0.025
    link = Link(trace, LinkParams(delay_ms=delay * 1000, queue_packets=1000))
    out = saturate(link, 61.0)
    checked = 0
    for w in range(0, 60, 10):
        want = trace.rate_bps(w * 1000, w * 1000 + 10_000)
        if want < 1e6:  # near-empty windows: relative error is meaningless
            continue
        got = delivered_bps(out, w + delay, w + 10 + delay)
        assert got == pytest.approx(want, rel=0.10), f"window {w}s"
        checked += 1
    assert checked >= 3


def test_rate_matches_5g_and_rail_traces(traces):
    csv = sorted((traces / "5g-driving").glob("*.csv"))[1]
    route = rail.generate(rail.RailParams(seed=11, duration_s=60))
    for trace in (tr.read_5g_csv(csv).delivery("down"), route.delivery(1, "down")):
        link = Link(trace, LinkParams(delay_ms=0, queue_packets=4000))
        out = saturate(link, 40.0, backlog=3000)
        for w in (0, 10, 20, 30):
            want = trace.rate_bps(w * 1000, w * 1000 + 10_000)
            if want >= 1e6:
                assert delivered_bps(out, w, w + 10) == pytest.approx(want, rel=0.10)


def run_events(link: Link, arrivals: list[tuple[float, int]]) -> list[tuple[float, float]]:
    """Event-driven virtual time: returns (arrival, departure) per delivered frame."""
    pending = sorted(arrivals)
    done: list[tuple[float, float]] = []
    i = 0
    while i < len(pending) or link.next_deadline() is not None:
        nxt = link.next_deadline()
        if i < len(pending) and (nxt is None or pending[i][0] <= nxt):
            t, size = pending[i]
            link.receive(t, size, t)
            i += 1
        else:
            assert nxt is not None
            done.extend((a, nxt) for a in link.poll(nxt))
    return done


@pytest.mark.parametrize("delay_ms", [0.0, 10.0, 47.5])
def test_added_delay_at_low_load(delay_ms):
    link = Link(tr.fixed_rate(10e6), LinkParams(delay_ms=delay_ms))
    arrivals = [(0.0123 + 0.05 * i, 1200) for i in range(100)]  # ~0.2 Mbit/s
    done = run_events(link, arrivals)
    assert len(done) == 100
    added = np.array([d - a for a, d in done]) * 1000
    assert np.all(np.abs(added - delay_ms) <= 2.0)
    assert added.min() >= delay_ms - 1e-9


def test_queue_bound_holds_and_drops_are_counted():
    link = Link(tr.fixed_rate(1.2e6), LinkParams(queue_packets=50))
    accepted = sum(link.receive(i, 1500, 0.0) for i in range(200))
    assert accepted == 50
    assert link.stats.dropped_queue == 150
    assert link.stats.max_queue_packets == 50
    out = [f for ms in range(2000) for f in link.poll(ms / 1000)]
    assert out == list(range(50))  # FIFO, and only what was accepted
    byte_link = Link(tr.fixed_rate(1.2e6), LinkParams(queue_packets=None, queue_bytes=15_000))
    assert sum(byte_link.receive(i, 1000, 0.0) for i in range(40)) == 15
    assert byte_link.stats.dropped_queue == 25


def test_outage_delivers_nothing_and_traffic_resumes():
    delay = 0.02
    link = Link(tr.fixed_rate(12e6), LinkParams(delay_ms=delay * 1000, outages=((2.0, 4.0),)))
    out = np.asarray(saturate(link, 7.0))
    during = (out > 2.0 + delay + 0.001) & (out < 4.0 + delay)
    assert np.count_nonzero(during) == 0
    assert delivered_bps(list(out), 1.0, 2.0) == pytest.approx(12e6, rel=0.02)
    assert delivered_bps(list(out), 5.0, 6.0) == pytest.approx(12e6, rel=0.02)


def test_trace_gap_is_an_outage_too():
    counts = np.ones(3000, dtype=np.int64)
    counts[1000:2000] = 0
    link = Link(tr.DeliveryTrace(counts), LinkParams(queue_packets=2000))
    out = np.asarray(saturate(link, 2.9))
    assert np.count_nonzero((out >= 1.0) & (out < 2.0)) == 0
    assert np.count_nonzero(out >= 2.0) > 800


def test_random_loss_rate_within_tolerance():
    link = Link(tr.fixed_rate(100e6), LinkParams(loss=0.1, queue_packets=None, seed=7))
    n = 20_000
    for i in range(n):
        link.receive(i, 100, i / 1000.0)
    rate = link.stats.dropped_loss / n
    assert abs(rate - 0.1) < 0.0065  # ~3 standard deviations
    again = Link(tr.fixed_rate(100e6), LinkParams(loss=0.1, queue_packets=None, seed=7))
    for i in range(n):
        again.receive(i, 100, i / 1000.0)
    assert again.stats.dropped_loss == link.stats.dropped_loss  # seeded


def test_opportunity_bytes_are_shared_and_large_frames_use_several():
    # one opportunity per ms: ten 150-byte frames share one, a 4500-byte frame needs three
    trace = tr.DeliveryTrace(np.ones(10, dtype=np.int64))
    link = Link(trace, LinkParams(queue_packets=None), start=0.001)  # first slot at 0.001
    for i in range(10):
        link.receive(("small", i), 150, 0.0)
    link.receive("big", 4500, 0.0, segments=3)
    assert link.poll(0.001) == [("small", i) for i in range(10)]
    assert link.poll(0.003) == []
    assert link.poll(0.004) == ["big"]


@pytest.mark.parametrize(
    "kw",
    [
        {"delay_ms": -1},
        {"queue_packets": 0},
        {"loss": 1.0},
        {"loss": -0.1},
        {"outages": ((3.0, 2.0),)},
        {"outages": ((1.0, 3.0), (2.0, 4.0))},
    ],
)
def test_impossible_link_parameters_are_refused(kw):
    with pytest.raises(ValueError):
        LinkParams(**kw)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3000), st.integers(40, 9000)), min_size=1, max_size=80),
    st.integers(1, 40),
)
def test_conservation_and_order(arrivals, queue):
    link = Link(tr.fixed_rate(5e6), LinkParams(delay_ms=3, queue_packets=queue))
    events = sorted((ms / 1000.0, size) for ms, size in arrivals)
    accepted = []
    out = []
    for n, (t, size) in enumerate(events):
        out.extend(link.poll(t))
        if link.receive(n, size, t, segments=1):
            accepted.append(n)
    out.extend(link.poll(1e6))
    assert out == accepted
    s = link.stats
    assert s.received == s.delivered + s.dropped_queue + s.dropped_loss
    assert s.max_queue_packets <= queue
