"""``mpproxy bench emulate``: the replay's workloads on the testbed, and the calibration.

The first tests need no namespaces (trace files, shifting, which seconds each stretch
covers, the comparison's and the aggregation's arithmetic, both directions from status
dicts, the report's headings and JSON, the recorder's round trip, uploads' progress
reports, argument errors). The last three run the real thing (root, namespaces, about 2
minutes together): a short bulk run through the proxy and over the best single carrier
with the calibration, a short web run, and two stretches of every row.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bench.emulate import calibrate, stretches
from bench.emulate import report as ereport
from bench.emulate.apps import (
    EmuConn,
    RealTimeEngine,
    SocketTransport,
    recorder_from_json,
    recorder_json,
)
from bench.emulate.directions import PathCounters, directions
from bench.emulate.runner import EmuSetup, shifted, write_mahimahi
from bench.sim import report
from bench.sim.links import Carrier
from bench.sim.metrics import Recorder, Stall, summarize
from bench.sim.runner import RunResult, Scenario, run
from bench.sim.workloads import parse
from middlebox import cli
from netns.topology import CarrierSpec
from netns.traces import DeliveryTrace, fixed_rate, from_rates, read_mahimahi


@pytest.mark.parametrize("first", [3, 0])
def test_mahimahi_file_reads_back_as_the_same_trace(tmp_path, first):
    counts = np.array([first, 0, 2, 1, 0, 5, 0, 1], dtype=np.int64)
    write_mahimahi(DeliveryTrace(counts, "t"), tmp_path / "t.down")
    back = read_mahimahi(tmp_path / "t.down").counts
    assert len(back) == len(counts)
    assert list(back[1:]) == list(counts[1:])
    assert back[0] == max(first, 1)  # an empty ms 0 gets one opportunity: period kept


def test_shifted_carriers_start_lead_seconds_into_the_trace():
    counts = np.zeros(10_000, dtype=np.int64)
    counts[2000:3000] = 4  # a burst at 2-3 s
    c = Carrier("a", DeliveryTrace(counts, "burst"), outages=((5.0, 6.0),))
    (s,) = shifted([c], 1.5)
    assert s.trace.counts[500:1500].sum() == 4000 and s.trace.counts[:500].sum() == 0
    assert s.outages == ((5.0, 6.0),)  # explicit outages count from the workload's start
    assert shifted([Carrier("f", fixed_rate(8e6))], 3.0)[0].trace.mean_rate_bps() == 8e6


def _result(name: str, goodput: float, p50: float | None, **extra) -> RunResult:
    s = {
        "goodput_mbps": goodput,
        "oracle_fraction": goodput / 20.0,
        "fct": {"<=10KB": {"p50": p50, "p95": None}} if p50 is not None else {},
        "page_load": None,
        "flows_completed": 0,
        "streams": 0,
        "stall_time": 0.0,
        "files_done": [],
        **extra,
    }
    return RunResult(name, s, Recorder(1.0, 1), ["a"], [[]], [[]])


def test_calibration_ratios_and_differences_come_from_both_runs():
    sim = [_result("context", 18.0, 0.050), _result("single:a", 9.0, None)]
    emu = [_result("context", 20.0, 0.100), _result("mptcp", 19.0, None)]
    recs = {(r["row"], r["metric"]): r for r in calibrate.compare(sim, emu)}
    assert set(recs) == {
        ("context", "goodput Mbit/s"),
        ("context", "% of oracle"),
        ("context", "FCT <=10KB p50 ms"),
    }  # single:a has no emulated row, mptcp no simulated one, p95 is None
    g = recs[("context", "goodput Mbit/s")]
    assert g["ratio"] == pytest.approx(0.9) and g["diff"] == pytest.approx(-2.0)
    assert recs[("context", "FCT <=10KB p50 ms")]["ratio"] == pytest.approx(0.5)
    assert "| context | goodput Mbit/s | 18 | 20 | 0.90 | -2 |" in calibrate.table(
        list(recs.values())
    )


def test_recorder_survives_the_trip_through_json():
    rec = Recorder(3.0, 2)
    rec.delivered(1.2, 1000)
    rec.flows.append(("web", 5000, 0.5, 0.25))
    rec.stalls.append(Stall(0, 1.0, 1.5))
    rec.ooo_delays.append(0.01)
    back = recorder_from_json(json.loads(json.dumps(recorder_json(rec))))
    assert back.goodput == rec.goodput and back.flows == rec.flows
    assert back.stalls == rec.stalls and list(back.ooo_delays) == [0.01]


# -- stretches ---------------------------------------------------------------------------------


def test_stretch_k_starts_at_lead_plus_k_strides_and_says_which_seconds_it_covered():
    plan = stretches.plan(3, lead=4.0, duration=30.0, stride=40.0)
    assert [(s.offset, s.start, s.end) for s in plan] == [(0, 4, 34), (40, 44, 74), (80, 84, 114)]
    # a 140 s trace: inside it; a 100 s one: the third stretch wraps past its end
    assert plan[2].covers(140.0) == (84.0, 114.0, False)
    assert plan[2].covers(100.0) == (84.0, 14.0, True)
    assert plan[1].covers(None) == (44.0, 74.0, False)  # steady: absolute seconds
    line = stretches.describe(plan[2], {"att": 786.0, "tm": 100.0, "fixed": None})
    assert line == "stretch 2: trace seconds 84-114 (tm 84-100 + 0-14 s)"
    js = plan[2].to_json({"tm": 100.0})
    assert js["start_s"] == 84 and js["carriers"]["tm"] == {
        "from_s": 84.0,
        "to_s": 14.0,
        "period_s": 100.0,
        "wraps": True,
    }
    # --start moves every stretch by the same number of trace seconds
    later = stretches.plan(2, lead=4.0, duration=30.0, stride=40.0, start=400.0)
    assert [(s.offset, s.start, s.end) for s in later] == [(400, 404, 434), (440, 444, 474)]
    with pytest.raises(ValueError):
        stretches.plan(1, lead=4.0, duration=30.0, stride=40.0, start=-1.0)


def test_default_stride_is_duration_plus_gap_unless_the_shortest_trace_would_wrap():
    gap = stretches.GAP_S
    assert stretches.default_stride(30, 3, [140.0, 786.0, None]) == 30 + gap  # 110 s fit
    assert stretches.default_stride(60, 3, [140.0, 786.0]) == pytest.approx(140 / 3, abs=1e-3)
    assert stretches.default_stride(120, 3, [None, None]) == 120 + gap  # fixed rates only
    assert stretches.default_stride(120, 1, [140.0]) == 120 + gap


def test_period_of_a_steady_trace_is_none_and_of_a_varying_one_its_length():
    assert stretches.period_s(fixed_rate(20e6)) is None
    assert stretches.period_s(from_rates(np.array([6e6, 3e6]), 1000)) == 2.0


def test_window_is_the_trace_from_the_offset_on_and_wraps_around(tmp_path):
    counts = np.arange(10_000, dtype=np.int64) % 7
    trace = DeliveryTrace(counts, "t")
    w = stretches.window(trace, 8.5, 3.0)  # 8.5-10 s, then 0-1.5 s
    assert len(w.counts) == 3000
    assert list(w.counts[:1500]) == list(counts[8500:])
    assert list(w.counts[1500:]) == list(counts[:1500])
    assert len(stretches.window(trace, 2.0, 60.0).counts) == 10_000  # at most one period
    write_mahimahi(w, tmp_path / "w.down")
    back = read_mahimahi(tmp_path / "w.down").counts
    assert list(back[1:]) == list(w.counts[1:])


def test_a_stretch_testbed_plays_windows_of_varying_traces_and_keeps_steady_ones(tmp_path):
    rates = from_rates(np.array([6e6] * 20 + [3e6] * 20), 1000)
    write_mahimahi(rates, tmp_path / "b.down")
    specs = [CarrierSpec("12mbit", name="a"), CarrierSpec(str(tmp_path / "b.down"), name="b")]
    carriers = [Carrier("a", fixed_rate(12e6)), Carrier("b", rates)]
    setup = EmuSetup(Scenario(carriers, "bulk", 8.0), specs, tmp_path / "work", lead=4.0)
    assert setup.periods() == {"a": None, "b": 40.0}
    first, second = stretches.plan(2, 4.0, 8.0, 20.0)
    assert setup.stretch_specs(first) == tuple(specs)  # offset 0: the traces themselves
    a, b = setup.stretch_specs(second)
    assert (a.down, a.up) == ("12mbit", None)
    played = read_mahimahi(b.down)  # trace seconds 20-40, then 0-20 again
    assert played.rate_bps(1000, 20000) == pytest.approx(3e6, rel=0.01)
    assert played.rate_bps(20000, 40000) == pytest.approx(6e6, rel=0.01)
    assert b.up.endswith("b.up") and read_mahimahi(b.up).rate_bps(0, 1000) > 0


# -- aggregation, ratios, report ----------------------------------------------------------------


def test_spread_and_mean_summary_over_the_stretches():
    sp = report.spread([1.0, None, 3.0, 2.0])
    assert (sp["mean"], sp["sd"], sp["min"], sp["max"], sp["n"]) == (2.0, 1.0, 1.0, 3.0, 3)
    assert sp["values"] == [1.0, None, 3.0, 2.0]  # per stretch, in order
    assert report.spread([None]) is None and report.spread([5.0])["sd"] == 0.0
    mean = report.mean_summary(
        [
            {"g": 10.0, "fct": {"p50": 0.1}, "late": False, "files": [1.0], "who": "a"},
            {"g": 20.0, "fct": {"p50": None}, "late": True, "files": [2.0], "who": "b"},
            {"g": 30.0, "fct": {"p50": 0.3}, "late": False, "files": [], "who": "a"},
        ]
    )
    assert mean == {
        "g": 20.0,
        "fct": {"p50": pytest.approx(0.2)},
        "late": True,
        "files": [1.0, 2.0],
        "who": ["a", "b", "a"],
    }
    assert report.flatten({"a": 1, "b": {"c": 2.5, "d": None}, "e": True}) == {"a": 1, "b.c": 2.5}


def test_ratios_pair_the_rows_of_each_stretch_before_summarising():
    per_stretch = [
        [
            _result("context", 20.0, None),
            _result("mptcp", 10.0, None),
            _result("single:best", 8.0, None, carrier="a"),
        ],
        [
            _result("context", 12.0, None),
            _result("mptcp", 12.0, None),
            _result("single:best", 4.0, None, carrier="b"),
        ],
    ]
    rat = ereport.ratios(per_stretch)
    vs_mptcp = rat["context / mptcp: goodput"]
    assert vs_mptcp["values"] == [2.0, 1.0]  # not mean/mean (16 / 11)
    assert vs_mptcp["mean"] == 1.5 and vs_mptcp["min"] == 1.0 and vs_mptcp["max"] == 2.0
    vs_single = rat["context / best single: goodput"]
    assert vs_single["values"] == [2.5, 3.0] and vs_single["pairs"] == ["a", "b"]
    assert "context / mptcp: page load p50" not in rat  # no page loads in a bulk run
    assert set(ereport.headline(per_stretch)["context"]) >= {"goodput Mbit/s", "% of oracle"}


def test_a_variant_row_is_paired_with_its_policy_on_each_stretch():
    per_stretch = [
        [_result("context", 20.0, None), _result("context@big", 22.0, None),
         _result("mptcp", 10.0, None)],
        [_result("context", 10.0, None), _result("context@big", 12.0, None),
         _result("mptcp", 12.0, None)],
    ]  # fmt: skip
    rat = ereport.ratios(per_stretch)
    assert rat["context@big / context: goodput"]["values"] == [1.1, 1.2]
    assert rat["context@big / mptcp: goodput"]["values"] == [2.2, 1.0]
    assert not any(k.startswith("context / context") for k in rat)


def test_variant_files_are_read_strictly_and_keep_to_tuning(tmp_path):
    from bench.emulate import variants
    from bench.emulate.command import rows
    from bench.proxy_bench import ProxyBed
    from middlebox.errors import UserError
    from netns.topology import TestbedSpec

    good = tmp_path / "big.toml"
    good.write_text("[node]\nbuffer_bytes = 8388608\n[paths]\nlost_timeout = 5.0\n"
                    "[scheduler]\nf_data = 0.5\n")  # fmt: skip
    v = variants.parse(f"big={good}")
    assert v.section("node") == {"buffer_bytes": 8 << 20} and v.section("gateway") == {}
    assert v.others() == {"scheduler": {"f_data": 0.5}}
    scn = Scenario([Carrier("a", fixed_rate(8e6))], "bulk", 1.0)
    assert rows("context,context@big,mptcp", scn, variants={"big": v}) == [
        "context", "context@big", "mptcp"]  # fmt: skip
    # the best carrier differs between the stretches: kept as single:best, chosen per stretch
    swap = [Carrier("a", from_rates(np.array([9e6] * 10 + [1e6] * 10), 1000)),
            Carrier("b", from_rates(np.array([1e6] * 10 + [9e6] * 10), 1000))]  # fmt: skip
    assert rows("single:best", Scenario(swap, "bulk", 5.0), (0.0, 10.0)) == ["single:best"]
    with pytest.raises(UserError, match="names no --variant"):
        rows("context@small", scn, variants={"big": v})
    with pytest.raises(UserError, match="unknown policy"):
        rows("nosuch@big", scn, variants={"big": v})
    for text, why in (
        ("[node]\nbuffer_bytez = 1\n", "unknown key"),
        ("[node]\nbuffer_bytes = 1\n", "buffer_bytes"),  # below its minimum
        ("[node]\nlisten = '1.2.3.4:1'\n", "set by the testbed"),
        ("[tls]\nplaintext = true\n", "set by the testbed"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(UserError, match=why):
            variants.parse(f"x={bad}")
    with pytest.raises(UserError, match="NAME=FILE"):
        variants.parse(str(good))
    # the settings reach both processes' files, the row's policy beside the variant's
    one = TestbedSpec([CarrierSpec("12mbit")])
    bed = ProxyBed(one, tmp_path / "bed", policy="minrtt", start=False,
                   node=v.section("node"), sections=v.others())  # fmt: skip
    bed._configure()
    node = (tmp_path / "bed" / "node.toml").read_text()
    assert "buffer_bytes = 8388608" in node and node.count("[scheduler]") == 1
    assert 'policy = "minrtt"' in node and "f_data = 0.5" in node
    from middlebox.config import load

    assert load(tmp_path / "bed" / "gateway.toml").scheduler.policy == "minrtt"


def _path(pid, name, sent, resent, stall, dups, retrans, ups=1, hist=(3, 1)):
    return {
        "id": pid,
        "name": f"{name}/0",
        "carrier": name if ups else None,
        "ups": ups,
        "transport": {
            "sent_bytes": sent,
            "sent_messages": sent // 1000,
            "stall_resends": stall,
            "resent_messages": resent // 1000,
            "resent_bytes": resent,
            "duplicates_received": dups // 1000,
            "duplicate_bytes_received": dups,
            "acked": sum(hist),
            "acked_late": hist[1],
            "ack_delay_s": {"<=0.05": hist[0], ">5": hist[1]},
            "ack_delay_per_deadline": {"<=1": hist[0], ">4": hist[1]},
        },
        "kernel": {
            "bytes_sent": sent + retrans,
            "bytes_retrans": retrans,
            "total_rto": 1,
            "busy_us": 3 * retrans,
        },
    }


def _status(paths, conns=None):
    return {"sessions": [{"session": 7, "paths": paths, "connections": conns or {}}]}


def test_both_directions_from_the_gateway_and_the_node_status():
    pc = PathCounters(["att", "tm"])
    # the workload's start: the node's path 1 has sent 1000 bytes already
    pc.feed("node", _status([_path(1, "carrier0", 1000, 0, 0, 0, 0, ups=0)]))
    pc.feed("gateway", _status([_path(1, "carrier0", 100, 0, 0, 0, 0)]))
    base = pc.snapshot()
    # carrier0's node path dies and is replaced by path 3; the last sample of path 1 stays
    pc.feed("node", _status([_path(1, "carrier0", 51_000, 2000, 2, 0, 500, ups=0)]))
    pc.feed(
        "node",
        _status(
            [
                _path(2, "carrier1", 40_000, 3000, 1, 0, 100, ups=0),
                _path(3, "carrier0", 9000, 0, 0, 0, 0, ups=0),
            ],
            {"5": {"bytes_sent": 95_000}},
        ),
    )
    pc.feed(
        "gateway",
        _status(
            [
                _path(1, "carrier0", 300, 0, 0, 1000, 0, ups=2),
                _path(2, "carrier1", 200, 0, 0, 3000, 0),
            ]
        ),
    )
    dirs = directions(base, pc.snapshot(), {"down": 90_000, "up": None})
    down, up = dirs["down"], dirs["up"]
    assert down["sent_bytes"] == 50_000 + 40_000 + 9000  # from the workload's start
    assert down["resent_bytes"] == 5000 and down["stall_resends"] == 3
    assert down["needless_bytes"] == 4000  # the gateway received them
    assert down["kernel_bytes_retrans"] == 600 and down["kernel_rtos"] == 2  # path 1: 1 - 1
    assert down["kernel_busy_us"] == 1800  # the sockets' busy time, as their retransmissions
    assert down["ack_delay_per_deadline"] == {"<=1": 6, ">4": 2}  # path 1's deltas are 0
    assert down["late_fraction"] == pytest.approx(2 / 8)
    # first copies: the node's connection sent 95 000 once, more than the clients got
    assert down["unique_bytes"] == 95_000
    assert down["redundant_fraction"] == pytest.approx(4000 / 99_000)
    assert set(down["paths"]) == {"att", "tm"} and down["paths"]["att"]["sent_bytes"] == 59_000
    assert up["sent_bytes"] == 200 + 200 and up["redundant_fraction"] is None  # requests only
    assert up["needless_bytes"] == 0


def _stretch_results(k: int, goodput: float) -> list[RunResult]:
    extra = {"wall_s": 1.0, "stretch": k, "trace_start_s": 4.0 + 20 * k, "lead_s": 4.0}
    common = {
        "page_load": None,
        "ooo_delay": None,
        "stalls": 0,
        "redundant_fraction": 0.01,
        "reinjections": 3,
        "late_start": False,
        "emulated": True,
    }
    return [
        _result("context", goodput, 0.08, **extra, **common),
        _result("mptcp", goodput / 2, 0.09, **extra, **common),
    ]


def test_emulation_report_headings_and_json(tmp_path):
    per_stretch = [_stretch_results(0, 18.0), _stretch_results(1, 12.0)]
    plan = stretches.plan(2, 4.0, 1.0, 20.0)
    scn = Scenario([Carrier("a", fixed_rate(20e6))], "bulk", 1.0, name="fixed")
    path = ereport.write(per_stretch, scn, plan, {"a": None}, tmp_path, "cmd", False, 20.0)
    md = path.read_text()
    assert md.startswith("# Emulated comparison: fixed")
    assert "Simulated" not in md and "s simulated" not in md
    assert "1 s emulated per row and stretch" in md and "Emulated 1 s x 2 rows x 2 stretches" in md
    assert "## Spread over the stretches" in md and "## Paired ratios" in md
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["kind"] == "emulated"
    assert {"scenario", "stretches", "results", "spread", "headline", "ratios"} <= set(data)
    assert data["scenario"]["repeat"] == 2 and data["scenario"]["stride_s"] == 20.0
    assert [s["start_s"] for s in data["stretches"]] == [4.0, 24.0]
    assert data["stretches"][1]["results"]["context"]["goodput_mbps"] == 12.0
    assert data["results"]["context"]["goodput_mbps"] == 15.0  # the mean
    g = data["spread"]["context"]["goodput_mbps"]
    assert (
        g["values"] == [18.0, 12.0] and g["min"] == 12.0 and g["sd"] == pytest.approx(4.243, 1e-3)
    )
    assert data["headline"]["context"]["goodput Mbit/s"]["mean"] == 15.0
    assert data["ratios"]["context / mptcp: goodput"]["values"] == [2.0, 2.0]
    out = ereport.text(per_stretch, plan, {"a": None})
    assert out.startswith("Emulated, 1 s per row and stretch, 2 stretches:")
    assert "stretch 1: trace seconds 24-25" in out and "| context / mptcp: goodput | 2.00" in out


def test_simulator_report_still_says_simulated(tmp_path):
    scn = Scenario([Carrier("a", fixed_rate(10e6))], "bulk", 2.0)
    path = report.write([run(scn, "minrtt")], scn, tmp_path, plots=False)
    md = path.read_text()
    assert md.startswith("# Replay comparison") and "2 s simulated" in md
    assert "Simulated 2 s x 1 runs" in md


def test_calibration_pairs_each_stretch_and_simulates_the_stretch_seconds():
    carriers = [Carrier("a", from_rates(np.array([8e6] * 10 + [2e6] * 10), 1000))]
    scn = Scenario(carriers, "bulk", 3.0)
    emu = [
        _result("context", 7.0, None, stretch=0, trace_start_s=0.5, lead_s=0.5),
        _result("single:best", 1.5, None, stretch=1, trace_start_s=10.5, lead_s=0.5, carrier="a"),
    ]
    sim = calibrate.simulate_rows(scn, emu)
    assert [(r.name, r.summary["stretch"]) for r in sim] == [("context", 0), ("single:best", 1)]
    assert sim[0].summary["goodput_mbps"] > 3 * sim[1].summary["goodput_mbps"]  # 8 vs 2 Mbit/s
    recs = calibrate.compare(sim, emu)
    assert {(r["row"], r["stretch"]) for r in recs} == {("context", 0), ("single:best", 1)}
    assert "| single:best | 1 | goodput Mbit/s |" in calibrate.table(recs)
    two = [
        {"row": "context", "stretch": k, "metric": "goodput Mbit/s", "sim": a, "emu": b,
         "ratio": a / b, "diff": a - b}
        for k, (a, b) in enumerate(((18.0, 20.0), (12.0, 10.0)))
    ]  # fmt: skip
    (over,) = calibrate.summarise(two)
    assert (over["sim"], over["emu"], over["ratio"]) == (15.0, 15.0, 1.0)
    assert over["ratios"]["values"] == [0.9, 1.2] and over["ratios"]["min"] == 0.9


# -- uploads ------------------------------------------------------------------------------------


def test_upload_is_a_workload_the_simulator_runs_over_the_uplink():
    (w,) = parse("upload:size=0,clients=2")
    assert w.name == "upload" and w.clients == 2
    # a 10 Mbit/s downlink whose uplink carries 4 Mbit/s: the uplink limits the upload,
    # and the oracle is the uplink's capacity
    up = fixed_rate(4e6)
    scn = Scenario([Carrier("a", fixed_rate(10e6), up=up)], "upload", 10.0, warmup=2.0)
    for row in ("minrtt", "single:a"):
        s = run(scn, row).summary
        assert s["download_mbps"] == 0 and s["upload_mbps"] == s["goodput_mbps"]
        assert 3.0 < s["upload_mbps"] < 4.0
        assert s["oracle_mbps"] == pytest.approx(4.0, rel=0.01)


def test_upload_goodput_comes_from_the_servers_reports_at_the_servers_times():
    engine = RealTimeEngine(100.0)
    rec = Recorder(3.0, 1)
    tr = SocketTransport(engine, rec, "192.0.2.1", "0.0.0.0", False)
    conn = EmuConn(1, type("App", (), {"delivered": lambda *a: None})(), 1e9, 0, 0.0, True)
    tr._reports(conn, b"100.5 1000\n101.5 3000\n102", 1.9)  # a partial line waits
    assert rec.uploaded[:3] == [1000.0, 2000.0, 0.0] and rec.goodput[:2] == [1000.0, 2000.0]
    # the run ends at 3 s: a report at 3.5 s is pro-rated to it (0.5 of the 1 s since the
    # report at 2.5 s, which brought nothing new)
    tr._reports(conn, b".5 3000\n103.5 7000\n", 3.6, until=3.0)
    assert conn.rcv_nxt == 3000 + 2000 and sum(rec.uploaded) == 5000
    summary = summarize(rec, 1e6)
    assert summary["upload_mbps"] == summary["goodput_mbps"] and summary["download_mbps"] == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trace", "a=10mbit", "--policies", "fastest"], "unknown row"),
        (["--trace", "a=10mbit", "--policies", "single:b"], "no carrier"),
        (["--trace", "a=10mbit", "--lead", "0"], "--lead"),
        (["--trace", "a=10mbit", "--repeat", "0"], "--repeat"),
        (["--trace", "a=10mbit", "--stride", "-1"], "--stride"),
        ([], "exactly one of --lte"),
    ],
)
def test_user_errors_are_one_line(capsys, args, message):
    if os.geteuid() != 0:
        pytest.skip("needs root (the root check comes first)")
    assert cli.main(["bench", "emulate", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mpproxy: error: ") and message in err[0]


# -- on the testbed ---------------------------------------------------------------------------

# Tolerance of the calibration check: 25 %. On fixed-rate links without loss both the
# simulator and the emulation are limited by the same bottleneck after start-up, so a
# larger gap is a bug; what remains is the start-up of the congestion control (the
# simulator's BBR model against the kernel's BBR) in a 12 s run and the noise of the
# emulation on two cores shared with other work (a few percent between runs).
TOLERANCE = 0.25


@pytest.mark.netns
@pytest.mark.slow
def test_emulated_bulk_through_the_proxy_and_calibration(tmp_path, capsys):
    out = tmp_path / "rep"
    code = cli.main(
        ["bench", "emulate", "--trace", "a=12mbit", "--trace", "b=6mbit", "--workload", "bulk",
         "--duration", "12", "--warmup", "3", "--policies", "context,single:best",
         "--calibrate", "--out", str(out), "--no-progress", "--no-plots"]
    )  # fmt: skip
    assert code == 0
    data = json.loads((out / "report.json").read_text())["results"]
    assert set(data) == {"context", "single:a"}
    proxy, single = data["context"], data["single:a"]
    assert proxy["emulated"] and 0.6 < proxy["oracle_fraction"] <= 1.02
    assert single["goodput_mbps"] < proxy["goodput_mbps"]  # the second carrier is used
    assert (out / "report.md").read_text().startswith("# Emulated comparison: traces")
    recs = json.loads((out / "calibration.json").read_text())["records"]
    by = {(r["row"], r["metric"]): r for r in recs}
    for row in ("context", "single:a"):
        r = by[(row, "goodput Mbit/s")]
        assert r["ratio"] == pytest.approx(r["sim"] / r["emu"])
        assert abs(r["ratio"] - 1) <= TOLERANCE, r
    assert "calibration:" in capsys.readouterr().out


@pytest.mark.netns
@pytest.mark.slow
def test_emulated_web_loads_the_same_pages_as_the_simulator(tmp_path):
    out = tmp_path / "rep"
    code = cli.main(
        ["bench", "emulate", "--trace", "a=10mbit", "--trace", "b=5mbit", "--workload",
         "web:clients=4", "--duration", "12", "--policies", "context", "--calibrate",
         "--out", str(out), "--no-progress", "--no-plots"]
    )  # fmt: skip
    assert code == 0
    s = json.loads((out / "report.json").read_text())["results"]["context"]
    assert s["flows_failed"] == 0 and s["page_load"]["n"] >= 4
    assert s["fct"]["<=10KB"]["p50"] < 1.0
    recs = json.loads((out / "calibration.json").read_text())["records"]
    flows = next(r for r in recs if r["metric"] == "flows completed")
    # same seed, same pages: the count differs only by flows cut at the end of the run
    assert abs(flows["sim"] - flows["emu"]) <= max(3, 0.1 * flows["emu"])


@pytest.mark.netns
@pytest.mark.slow
def test_two_stretches_run_every_row_on_the_same_seconds(tmp_path):
    # carrier b: 6 Mbit/s for 20 s, then 3 Mbit/s for 20 s (a 40 s trace); stretch 0
    # measures trace seconds 4-12 (b at 6), stretch 1 seconds 24-32 (b at 3)
    write_mahimahi(from_rates(np.array([6e6] * 20 + [3e6] * 20), 1000), tmp_path / "b.down")
    out = tmp_path / "rep"
    code = cli.main(
        ["bench", "emulate", "--trace", "a=12mbit", "--trace", f"b={tmp_path / 'b.down'}",
         "--workload", "bulk", "--duration", "8", "--repeat", "2", "--stride", "20",
         "--policies", "context,single:best", "--out", str(out), "--no-progress",
         "--no-plots"]
    )  # fmt: skip
    assert code == 0
    data = json.loads((out / "report.json").read_text())
    assert [s["start_s"] for s in data["stretches"]] == [4.0, 24.0]
    for k, (stretch, oracle) in enumerate(zip(data["stretches"], (18.0, 15.0), strict=True)):
        runs = stretch["results"]
        assert set(runs) == {"context", "single:a"}  # a offered the most on both stretches
        for name, s in runs.items():
            assert s["stretch"] == k and not s["late_start"], name
            assert s["trace_start_s"] == pytest.approx(4.0 + 20 * k, abs=0.06), name
            assert s["oracle_mbps"] == pytest.approx(oracle, rel=0.02), name
        # the emulator played the stretch's own seconds: never more than they offered
        assert 0.5 * oracle < runs["context"]["goodput_mbps"] <= 1.02 * oracle
        down = runs["context"]["directions"]["down"]
        assert down["sent_bytes"] > 0 and down["redundant_fraction"] < 0.05
    assert data["spread"]["context"]["goodput_mbps"]["n"] == 2
    ratio = data["ratios"]["context / best single: goodput"]
    assert len(ratio["values"]) == 2 and ratio["pairs"] == ["a", "a"]
    assert "## Spread over the stretches" in (out / "report.md").read_text()
