"""The replay simulator: links, transport, workloads and metrics on hand-checkable cases."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from bench.sim.links import LINK_FACTOR, Carrier, Link, SteppedTrace, find_outages
from bench.sim.metrics import percentile, size_class, stream_stalls
from bench.sim.runner import Scenario, compare, run
from bench.sim.transport import TransportParams
from bench.sim.workloads import WorkloadError, parse
from middlebox.session.mux import MESSAGE_OVERHEAD


def fixed(name: str, mbit: float, delay: float = 0.025, **kw) -> Carrier:
    return Carrier(name, SteppedTrace.of([mbit * 1e6], 1.0, name), delay=delay, **kw)


def payload_rate(mbit: float) -> float:
    """Payload bytes/s a link of ``mbit`` IP Mbit/s can carry in large messages."""
    max_msg = TransportParams().max_data
    return mbit * 1e6 / 8 / LINK_FACTOR * max_msg / (max_msg + MESSAGE_OVERHEAD)


# -- links ----------------------------------------------------------------------------------


def test_link_cumulative_and_inverse_agree():
    link = Link(fixed("a", 12.0), duration=10.0)
    assert link.cumulative(1.0) == pytest.approx(1.5e6, rel=1e-3)
    for x in (1500.0, 123_456.0, 1.5e6, 7.77e6):
        assert link.cumulative(link.inverse(x)) == pytest.approx(x, rel=1e-6)


def test_link_fifo_queue_and_delay():
    link = Link(fixed("a", 12.0, delay=0.05), duration=10.0)
    size = 14480  # ten packets
    arrival, lost, _ = link.transmit(0.0, size, rtt=0.1)
    wire_time = size * LINK_FACTOR / 1.5e6
    assert lost == 0
    assert arrival == pytest.approx(wire_time + 0.05, abs=2e-3)
    second, _, _ = link.transmit(0.0, size, rtt=0.1)  # queued behind the first
    assert second == pytest.approx(2 * wire_time + 0.05, abs=2e-3)
    assert link.queue_at(0.0) == pytest.approx(2 * size * LINK_FACTOR, rel=0.02)


def test_link_drop_tail_costs_a_round_trip():
    link = Link(fixed("a", 1.2, queue_bytes=3000), duration=10.0)
    _, lost, _ = link.transmit(0.0, 100_000, rtt=0.2)
    assert lost > 0 and link.dropped_packets == lost


def test_outages_from_trace_and_explicit():
    trace = SteppedTrace.of([12e6, 0.0, 0.0, 12e6, 12e6, 0.0], 1.0)
    assert find_outages(trace.counts, 6.0, 0.5) == [(1.0, 3.0), (5.0, 6.0)]
    slow = SteppedTrace.of([8e6, 0.0, 0.0, 8e6], 1.0)  # 2/3 opportunity per ms: gaps of 1 ms
    assert find_outages(slow.counts, 4.0, 0.5) == [(pytest.approx(1.0, abs=0.002), 3.0)]
    link = Link(Carrier("a", SteppedTrace.of([12e6], 1.0), outages=((2.0, 4.5),)), 10.0)
    assert link.outages == [(2.0, 4.5)]
    assert link.capacity_between(2.0, 4.5) == 0.0
    assert link.after_outage(3.0) == 4.5 and link.after_outage(5.0) == 5.0


# -- analytical goodput ---------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["context", "minrtt", "roundrobin", "ecf", "blest"])
def test_fixed_rate_links_reach_analytical_goodput(policy):
    carriers = [fixed("a", 10.0, 0.02), fixed("b", 20.0, 0.04)]
    scn = Scenario(carriers, workload="bulk", duration=40.0, warmup=5.0)
    s = run(scn, policy).summary
    analytical = (payload_rate(10.0) + payload_rate(20.0)) * 8 / 1e6
    assert s["goodput_mbps"] == pytest.approx(analytical, rel=0.05)
    assert s["goodput_mbps"] <= analytical * 1.001  # never beats physics
    assert s["oracle_mbps"] == pytest.approx(30.0, rel=1e-3)


def test_single_fixed_link_goodput_and_rtt():
    scn = Scenario([fixed("a", 8.0, 0.03)], workload="bulk", duration=30.0, warmup=5.0)
    s = run(scn, "minrtt").summary
    assert s["goodput_mbps"] == pytest.approx(payload_rate(8.0) * 8 / 1e6, rel=0.05)
    assert s["redundant_fraction"] < 0.02


# -- outages --------------------------------------------------------------------------------


def outage_scenario(workload: str = "cbr:rate=3") -> Scenario:
    carriers = [fixed("a", 10.0, 0.02), fixed("b", 10.0, 0.03, outages=((20.0, 30.0),))]
    return Scenario(carriers, workload=workload, duration=45.0)


def test_outage_on_one_carrier_is_visible_and_redundant_does_not_stall():
    results = {
        r.name: r for r in compare(outage_scenario(), ["redundant", "roundrobin", "single:b"])
    }
    red = results["redundant"]
    assert red.outages[1] == [(20.0, pytest.approx(30.0, abs=0.002))] and red.outages[0] == []
    # nothing useful came over b during its outage, while a carried the stream
    assert sum(red.rec.path_useful[1][21:30]) == 0
    assert sum(red.rec.path_useful[0][21:30]) > 0.9 * 3e6 / 8 * 9
    assert red.summary["stalls"] == 0
    assert red.summary["redundant_fraction"] > 0.3  # copies cost bandwidth
    # round-robin put messages on b at the outage's start: they had to be reinjected
    assert results["roundrobin"].summary["reinjections"] > 0
    # b alone: the player runs dry (2 s startup buffer against a 10 s outage)
    single = results["single:b"].summary
    assert single["stalls"] >= 1 and single["stall_time"] >= 6.0


# -- determinism ----------------------------------------------------------------------------


def _stable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("wall_s", "speedup")}


def test_same_seed_same_numbers_other_seed_other_numbers():
    carriers = [fixed("a", 10.0, 0.02, loss=0.01), fixed("b", 6.0, 0.04, outages=((5.0, 8.0),))]
    scn = Scenario(carriers, workload="web:clients=4+cbr:rate=1", duration=30.0, seed=7)
    one, two = run(scn, "context"), run(scn, "context")
    assert _stable(one.summary) == _stable(two.summary)
    assert one.rec.flows == two.rec.flows
    other = run(dataclasses.replace(scn, seed=8), "context")
    assert other.rec.flows != one.rec.flows


# -- workloads on hand-checkable cases -----------------------------------------------------------


def test_bulk_finite_completion_time():
    scn = Scenario([fixed("a", 8.0, 0.025)], workload="bulk:size=2", duration=10.0)
    s = run(scn, "minrtt")
    (flow,) = s.rec.flows
    floor = 2 * 0.025 + 2e6 / payload_rate(8.0)  # request, transfer at line rate, delay
    assert floor <= flow[3] <= floor + 0.6  # BBR's startup costs a few round trips
    assert s.summary["fct"][">1MB"]["n"] == 1


def test_web_page_of_small_objects_takes_two_round_trips():
    # one client, one page: a 2 KB main document then 6 objects of 2 KB in parallel
    spec = (
        "web:clients=1,think=1e9,stagger=0,objects=6,objects_sigma=0,sigma=0,object_kb=2,main_kb=2"
    )
    # the transport's own arithmetic: no processing latency in gateway, node or server
    params = TransportParams(loop_delay=0.0, server_delay=0.0)
    scn = Scenario([fixed("a", 100.0, 0.025)], workload=spec, duration=20.0, params=params)
    r = run(scn, "minrtt")
    assert len(r.rec.flows) == 7
    main, *objects = r.rec.flows
    assert main[3] == pytest.approx(0.05, abs=0.001)  # one-way request + one-way data
    # the six objects leave paced: BBR's startup rate is 2.885 x 10 packets per RTT
    pacing = 2.885 * 14480 / 0.05
    for _, size, start, fct in objects:
        assert size == 2000 and start == pytest.approx(main[3])
        assert 0.05 <= fct <= 0.05 + 6 * (2000 + MESSAGE_OVERHEAD) / pacing + 0.001
    (page,) = r.rec.pages
    assert page == pytest.approx(main[3] + max(f[3] for f in objects))
    assert r.summary["fct"]["<=10KB"]["n"] == 7


def test_cbr_stall_matches_the_buffer_arithmetic():
    carrier = fixed("a", 10.0, 0.02, outages=((20.0, 25.0),))
    scn = Scenario([carrier], workload="cbr:rate=4,startup=2,resume=1", duration=40.0)
    r = run(scn, "minrtt")
    s = r.summary
    assert s["streams"] == 1
    # content is live: 2 s buffered takes 2 s of production (+ one chunk and the delay)
    assert 2.0 <= s["startup_delay"]["p50"] <= 2.3
    # the 5 s outage eats the 2 s buffer: one stall of about 3 s, plus the refill to 1 s
    assert s["stalls"] == 1
    (stall,) = r.rec.stalls
    assert 21.5 <= stall.start <= 23.5
    assert 3.0 <= stall.end - stall.start <= 4.8


def test_file_resumes_after_every_path_was_lost():
    carrier = fixed("a", 10.0, 0.02, outages=((5.0, 30.0),))
    params = TransportParams().with_paths(user_timeout=2.0, lost_timeout=5.0)
    scn = Scenario([carrier], workload="file:size=10", duration=60.0, params=params)
    r = run(scn, "minrtt")
    s = r.summary
    assert s["resets"] == 1 and s["resumes"] == 1 and s["path_downs"] >= 1
    (done,) = s["files_done"]
    # about 5 s of transfer before, the 25 s outage, reconnection, the rest after
    assert 30.0 + 10e6 / payload_rate(10.0) - 5.0 < done < 30.0 + 10e6 / payload_rate(10.0)
    assert sum(r.rec.goodput) == pytest.approx(10e6, abs=1)  # every byte exactly once


def test_mixture_with_several_clients():
    scn = Scenario(
        [fixed("a", 20.0), fixed("b", 10.0, 0.04)],
        workload="web:clients=3+bulk:clients=2,size=1+cbr:clients=2,rate=1",
        duration=20.0,
    )
    s = run(scn, "context").summary
    assert s["streams"] == 2 and s["page_load"]["n"] >= 3
    assert ">1MB" not in s["fct"] and s["fct"]["100KB-1MB"]["n"] >= 2  # the 1 MB bulk flows


def test_parse_rejects_bad_specs():
    assert [type(w).__name__ for w in parse("web:clients=2+bulk")] == ["Web", "Bulk"]
    bad_specs = ("", "ftp", "web:clients", "web:color=3", "cbr:rate=x", "web:clients=0")
    for bad in (*bad_specs, "cbr:chunk=0"):
        with pytest.raises(WorkloadError):
            parse(bad)


# -- metrics ----------------------------------------------------------------------------------


def test_stream_stalls_by_hand():
    rate = 100.0  # bytes/s
    # 300 bytes (3 s) at t=1, nothing until 300 more at t=6: playing from 1 s (2 s
    # startup met), dry at 4 s, resume needs 1 s buffered: at 6 s
    started, stalls = stream_stalls([(1.0, 300), (6.0, 600)], rate, 0.0, 10.0, 2.0, 1.0)
    assert started == 1.0
    assert stalls == [(4.0, 6.0), (9.0, 10.0)]


def test_percentile_and_classes():
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert size_class(10_000) == "<=10KB" and size_class(10_001) == "10-100KB"
    assert size_class(5_000_000) == ">1MB"
    assert math.isclose(float(np.mean([1, 2])), 1.5)


# -- the context database as long-term source ------------------------------------------------


def test_trained_context_database_feeds_our_policy(tmp_path):
    rail = pytest.importorskip("netns.rail")
    from bench.sim import scenarios
    from contextdb.config import ContextDBConfig
    from contextdb.db import ContextDB
    from contextdb.fleet import open_store
    from contextdb.traces import read_5g_csv

    route = rail.generate(rail.RailParams(seed=3, duration_s=120))
    db_path = tmp_path / "ctx.db"
    db = ContextDB(open_store(str(db_path), "", "default"), ContextDBConfig(path=str(db_path)))
    for k in range(len(route.carriers)):
        rail.write_csv(route, k, tmp_path / f"c{k}.csv")
        db.ingest(read_5g_csv(tmp_path / f"c{k}.csv").samples)
    db.store.commit()
    db.store.close()

    feed = scenarios.contextdb_feed(str(db_path), route)
    answers = []

    def spy(engine, names):
        lt = feed(engine, names)
        inner = lt.source._predict

        def predict(*a):
            p = inner(*a)
            answers.append(p)
            return p

        lt.source._predict = predict
        return lt

    carriers, _ = scenarios.rail(3, 120)
    scn = Scenario(carriers, workload="bulk", duration=60.0, longterm=spy)
    r = run(scn, "context")
    assert r.summary["goodput_mbps"] > 0
    assert any(p is not None and p.confidence > 0 for p in answers)
    with pytest.raises(scenarios.ScenarioError):
        scenarios.contextdb_feed(str(tmp_path / "missing.db"), route)


def test_future_context_moves_traffic_off_a_carrier_before_its_outage():
    from bench.sim import scenarios

    carriers = [fixed("a", 10.0, 0.04), fixed("b", 20.0, 0.02, outages=((20.0, 30.0),))]
    scn = Scenario(carriers, workload="cbr:rate=3", duration=40.0)
    plain = run(scn, "context")
    ahead = run(dataclasses.replace(scn, longterm=scenarios.future_feed(carriers, 40.0)), "context")
    assert sum(plain.rec.path_useful[1][10:20]) > 0.9 * 3e6 / 8 * 10  # b is the better path
    # avoided from 3 s before the outage: a takes over, and what a's room cannot take yet
    # spills onto b (a idle until then: its room is paths.notsent_time of its startup
    # pacing rate, about 20 KB, until its congestion control has learnt the rate), but
    # nothing is left on b when its outage begins
    assert sum(ahead.rec.path_useful[0][17:20]) > 0.4 * 3e6 / 8 * 3
    assert sum(ahead.rec.path_useful[1][20:30]) < 0.05 * 3e6 / 8 * 2
    assert sum(ahead.rec.path_useful[1][10:16]) > 0  # and used before that
    assert ahead.summary["stalls"] == 0
    assert ahead.summary["reinjections"] <= plain.summary["reinjections"]


class Recording:
    """A policy wrapper that keeps every question it was asked."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.asked = []

    def decide(self, message, paths, now):
        self.asked.append(message)
        return self.inner.decide(message, paths, now)


def test_requests_are_control_decisions_and_reinjections_name_the_paths_used(monkeypatch):
    from scheduler import policies
    from scheduler.context import CONTROL, REINJECTION

    made = []
    real_get = policies.get

    def recording_get(*a, **kw):
        made.append(Recording(real_get(*a, **kw)))
        return made[-1]

    monkeypatch.setattr("bench.sim.runner.policies.get", recording_get)
    carriers = [fixed("a", 10.0, 0.02), fixed("b", 10.0, 0.03, outages=((5.0, 9.0),))]
    r = run(Scenario(carriers, workload="cbr:rate=3+web:clients=2", duration=15.0), "roundrobin")
    gateway, node = made  # the gateway's adapter is built first
    controls = [m for m in gateway.asked if m.kind == CONTROL]
    opens = [m for m in controls if m.size == 32]  # the mux asks 32 bytes for an OPEN
    assert len(opens) >= len(r.rec.flows) + 1  # one per request (the stream's included)
    assert all(m.size in (32, 20) for m in controls)  # OPEN, or FIN (20)
    asked = gateway.asked + node.asked
    reinj = [m for m in asked if m.kind == REINJECTION]
    assert reinj and all(m.avoid for m in reinj)
    assert all(m.avoid == () for m in asked if m.kind != REINJECTION)


def test_a_live_stream_becomes_a_stream_a_download_does_not(monkeypatch):
    from scheduler import policies
    from scheduler.context import DATA

    seen = []  # (time, connection, class) at each data decision (the context is mutated)

    class Snoop(Recording):
        def decide(self, message, paths, now):
            if message.kind == DATA and message.conn is not None:
                cls = self.inner.classify(message, now)[0]
                seen.append((now, message.conn_id, cls))
            return self.inner.decide(message, paths, now)

    real_get = policies.get
    monkeypatch.setattr("bench.sim.runner.policies.get", lambda *a, **kw: Snoop(real_get(*a, **kw)))
    carriers = [fixed("a", 20.0, 0.02), fixed("b", 20.0, 0.03)]
    run(Scenario(carriers, workload="cbr:rate=2+bulk", duration=20.0), "context")
    # the node's adapter decides the downloads' data and knows no ports (the node announces
    # no connection): the stream is the first connection opened, the download the second
    cbr = [(t, c) for t, cid, c in seen if cid == 1]
    bulk = [c for _, cid, c in seen if cid == 2]
    assert bulk and "stream" not in bulk  # a download never runs dry
    assert cbr and all(c != "stream" for t, c in cbr if t < 10.0)  # stream_age 10 s
    assert all(c == "stream" for t, c in cbr if t >= 10.5)


def test_outage_only_future_feed_reports_no_rates():
    from bench.sim import scenarios

    carriers = [fixed("a", 10.0, 0.02, outages=((5.0, 6.0),))]
    full = scenarios.future_feed(carriers, 10.0)(None, ["a"]).source.predict("a", 3.0)
    bare = scenarios.future_feed(carriers, 10.0, rates=False)(None, ["a"]).source.predict("a", 3.0)
    assert full.p_disconnect == bare.p_disconnect == 1.0  # the outage starts within 3 s
    assert full.throughput_var > 0 and bare.throughput_var == 0.0  # 0: not measured


def test_sweep_pairs_seeds_and_prints_means(tmp_path, capsys):
    import json

    from bench.sim import sweep

    out = tmp_path / "s.json"
    assert (
        sweep.main(
            [
                "--cases",
                "rail1-bulk",
                "--seeds",
                "1,2",
                "--duration",
                "20",
                "--policies",
                "minrtt,context+outages",
                "--jobs",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "rail1-bulk" in text and "context+outages" in text
    got = json.loads(out.read_text())["rail1-bulk"]
    assert len(got["minrtt"]["goodput"]) == 2 and all(g > 0 for g in got["minrtt"]["goodput"])


def test_open_loop_web_offers_the_same_pages_however_fast_they_load(monkeypatch):
    from bench.sim.workloads import Web

    started = []
    real = Web._page

    def counting(self, now, arg):
        started.append(now)
        real(self, now, arg)

    monkeypatch.setattr(Web, "_page", counting)

    def pages(mbit: float, spec: str) -> list[float]:
        started.clear()
        run(Scenario([fixed("a", mbit, 0.05)], workload=spec, duration=120.0), "minrtt")
        return list(started)

    closed_fast, closed_slow = (
        pages(20.0, "web:clients=3,think=2"),
        pages(0.5, "web:clients=3,think=2"),
    )
    assert len(closed_slow) < len(closed_fast)  # slow pages delay the next ones
    open_fast = pages(20.0, "web:clients=3,think=2,open=1")
    open_slow = pages(0.5, "web:clients=3,think=2,open=1")
    assert open_fast == open_slow  # same start times: the offered load is fixed
    assert len(open_fast) >= len(closed_fast)


def test_a_line_day_feeds_position_forecasts_to_the_source(tmp_path):
    rail = pytest.importorskip("netns.rail")
    from bench.sim import scenarios
    from contextdb.config import ContextDBConfig
    from contextdb.db import ContextDB
    from contextdb.fleet import open_store
    from contextdb.traces import read_5g_csv

    yesterday = rail.route_from_spec("line:5:day:1")
    db_path = tmp_path / "ctx.db"
    db = ContextDB(open_store(str(db_path), "", "default"), ContextDBConfig(path=str(db_path)))
    for k, c in enumerate(yesterday.carriers):
        rail.write_csv(yesterday, k, tmp_path / f"{c.name}.csv")
        rail.write_events(yesterday, k, tmp_path / f"{c.name}.events")
        run_ = read_5g_csv(tmp_path / f"{c.name}.csv")
        db.ingest(run_.samples, run_.events)
    db.store.close()
    carriers, today = scenarios.rail("line:5:day:2", 60)
    feed = scenarios.contextdb_feed(str(db_path), today)
    seen = []

    def spy(engine, names):
        lt = feed(engine, names)
        seen.append(lt.source)
        return lt

    scn = Scenario(carriers, workload="bulk", duration=60.0, longterm=spy)
    assert run(scn, "context").summary["goodput_mbps"] > 0
    source = seen[0]
    f = source.dark("rail0", 60.0)
    assert f is not None and f.passes == 1
    assert source.predict("rail0", 60.0).throughput_mean > 0
