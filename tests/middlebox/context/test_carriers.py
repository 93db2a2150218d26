"""Carrier context on the gateway: sources, tracker, per-second meter, the context loop's
wiring into the scheduler (stub database) and live ingest into a real one."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from types import SimpleNamespace

import pytest

from contextdb.db import ContextDB
from contextdb.store import MemoryStore, SqliteStore
from middlebox.config import CarrierConfig, Config, ContextConfig, GatewayConfig
from middlebox.context.carriers import (
    JsonLinesParser,
    PerfMeter,
    Reading,
    ReplaySource,
    load_replay,
    track,
)
from middlebox.context.loop import ContextLoop, _cell_number
from middlebox.errors import UserError
from middlebox.session.mux import PathState
from middlebox.session.policy import SchedulerPolicy
from netns import rail
from scheduler.context import DATA, MessageInfo
from scheduler.generators import CarrierTracker
from scheduler.longterm import LongTermPrediction

CARRIERS = ["rail0", "rail1"]


@pytest.fixture(scope="module")
def route():
    return rail.generate(rail.RailParams(seed=7, carriers=2, duration_s=120))


@pytest.fixture(scope="module")
def csvs(route, tmp_path_factory):
    d = tmp_path_factory.mktemp("rail")
    files = []
    for k in range(2):
        p = d / f"rail{k}.csv"
        rail.write_csv(route, k, p)
        files.append(str(p))
    return files


# -- replay source ------------------------------------------------------------------------


def test_replay_follows_the_trace_clock(route, csvs):
    rows = load_replay(csvs, CARRIERS)
    src = ReplaySource(rows, start=1000.0)
    assert src.poll(999.5) == []  # before trace time 0
    first = src.poll(1000.2)
    assert [r.carrier for r in first] == CARRIERS
    assert src.poll(1000.9) == []  # once per second
    for k in (1, 37, 119):
        got = {r.carrier: r for r in src.poll(1000.0 + k + 0.3)}
        for carrier in route.carriers:
            want = carrier.seconds[k]
            r = got[carrier.name]
            assert r.cell_id == str(want.cell_id)
            assert r.rsrp == pytest.approx(want.rsrp)
            assert r.lat == pytest.approx(want.latitude)
            assert r.t == 1000.0 + k + 0.3
    # looping: second 120 plays record 0 again; without loop the carriers fall silent
    again = {r.carrier: r for r in src.poll(1120.5)}
    assert again["rail0"].cell_id == str(route.carriers[0].seconds[0].cell_id)
    once = ReplaySource(rows, start=1000.0, loop=False)
    assert once.poll(1120.5) == []
    slow = ReplaySource(rows, start=1000.0, time_scale=2.0)  # like TestbedSpec.time_scale
    assert slow.poll(1000.1)[0].cell_id == str(route.carriers[0].seconds[0].cell_id)
    assert slow.poll(1001.9) == []  # record 0 lasts two seconds
    assert slow.poll(1075.0)[0].cell_id == str(route.carriers[0].seconds[37].cell_id)


def test_replay_errors_are_user_errors(csvs, tmp_path):
    with pytest.raises(UserError, match="1 file"):
        load_replay(csvs[:1], CARRIERS)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not a 5G driving log"):
        load_replay([str(bad), csvs[1]], CARRIERS)
    with pytest.raises(UserError, match="no-such"):
        load_replay([str(tmp_path / "no-such.csv"), csvs[1]], CARRIERS)


# -- JSON lines ---------------------------------------------------------------------------


def test_json_lines_any_chunking_and_bad_lines_counted():
    p = JsonLinesParser(["a", "b"])
    text = (
        b'{"carrier": "a", "cell_id": "0x1f", "rsrp": -90.5, "lat": 1.5, "lon": 2.5}\n'
        b"not json\n"
        b'{"carrier": "zz"}\n'
        b'{"carrier": "b", "rsrp": "loud"}\n'
        b'{"carrier": "b", "cell_id": "a\\u0001b"}\n'
        b'{"carrier": "b", "cell_id": [1]}\n'
        b'{"carrier": "b", "cell_id": 77}\n'
    )
    out = []
    for i in range(0, len(text), 7):
        out += p.feed(text[i : i + 7], 5.0)
    assert out == [
        Reading("a", 5.0, "0x1f", -90.5, 1.5, 2.5),
        Reading("b", 5.0, "77", None, None, None),
    ]
    assert p.errors == 5
    p.feed(b"x" * 5000, 6.0)  # an endless line is dropped, not buffered forever
    assert p.errors == 6 and "longer" in p.last_error


def test_cell_number_for_the_wire():
    assert _cell_number("26034") == 26034
    assert _cell_number("0x1F") == 31
    assert _cell_number("") == 0
    assert _cell_number("abc") == 0


# -- tracker ------------------------------------------------------------------------------


def test_tracker_window_holds_rsrp_and_records_cell_changes():
    tr = CarrierTracker(window=3)
    for t, cell, rsrp in [(1, "10", -80.0), (2, "10", -81.0), (3, "10", None), (4, "11", -90.0)]:
        ctx = track(tr, Reading("a", float(t), cell, rsrp, 50.0, 8.0))
    assert ctx.rsrp_window == (-81.0, -81.0, -90.0)
    assert ctx.cell_id == "11" and ctx.rsrp == -90.0
    assert ctx.handover_events == ((4.0, "10->11"),)
    assert ctx.position == (50.0, 8.0)
    ctx = track(tr, Reading("a", 5.0, "11", -91.0))  # no position: keep the last one
    assert ctx.position == (50.0, 8.0)


# -- meter --------------------------------------------------------------------------------


def info(rx=0, acked=0, segs=0, retrans=0, busy=0, srtt=0.05, app_limited=False, notsent=0):
    return SimpleNamespace(
        bytes_received=rx,
        bytes_acked=acked,
        segs_out=segs,
        total_retrans=retrans,
        busy_time_us=busy,
        srtt_us=int(srtt * 1e6),
        app_limited=app_limited,
        notsent_bytes=notsent,
    )


def test_meter_rates_loss_and_saturation():
    m = PerfMeter()
    k0, k1 = object(), object()
    m.add(1, "a", k0, info(), 0.0)
    m.add(2, "a", k1, info(), 0.0)
    for i in range(1, 6):  # five readings in one second
        t = i * 0.2
        # path 1: receives 250 kB every interval, sends with a backlog the whole time
        m.add(1, "a", k0, info(rx=250_000 * i, acked=50_000 * i, segs=100 * i, retrans=2 * i,
                               busy=int(t * 1e6)), t)  # fmt: skip
        # path 2: received once, sender idle
        m.add(2, "a", k1, info(rx=10_000 if i >= 3 else 0, app_limited=True, srtt=0.15), t)
    (s,) = m.close(1.0)
    assert s.carrier == "a" and s.paths == 2
    assert s.down_bps == pytest.approx((1_250_000 + 10_000) * 8)
    assert s.up_bps == pytest.approx(250_000 * 8)
    assert s.loss == pytest.approx(10 / 500)
    assert s.rtt == pytest.approx(0.1)
    assert s.saturated_up and s.saturated_down
    # next second: path 1 quiet (no bytes, no busy time): nothing saturated
    for i in range(6, 11):
        m.add(1, "a", k0, info(rx=1_250_000, acked=250_000, segs=500, retrans=10,
                               busy=1_000_000, app_limited=True), i * 0.2)  # fmt: skip
    (s,) = m.close(2.0)
    assert s.down_bps == 0 and not s.saturated_up and not s.saturated_down
    # a new connection on path 1 starts from its own counters, not a negative delta
    k2 = object()
    m.add(1, "a", k2, info(rx=5), 2.2)
    m.add(1, "a", k2, info(rx=1005), 2.4)
    (s,) = m.close(3.0)
    assert s.down_bps == pytest.approx(1000 * 8)


# -- the context loop and the scheduler -----------------------------------------------------


def gw_config(**context) -> Config:
    return Config(
        gateway=GatewayConfig(carriers=[CarrierConfig(name=c) for c in CARRIERS]),
        context=ContextConfig(**context),
    )


class StubDB:
    """Stands in for ContextDB: scripted predictions, remembers what it was asked."""

    def __init__(self, preds):
        self.preds = preds
        self.calls = []

    def predict(self, carrier, cell, window, now, recent_dl_bps=None):
        self.calls.append((carrier, cell, tuple(window), recent_dl_bps))
        return self.preds.get(carrier)


def drive(loop, seconds, start=100.0, rx_per_s=1_000_000):
    """Tick the loop for ``seconds`` s with both carriers receiving ``rx_per_s``."""
    keys = {c: object() for c in CARRIERS}
    for step in range(int(seconds * 5) + 1):
        now = start + step * 0.2
        for pid, c in enumerate(CARRIERS, 1):
            n = int(rx_per_s * step * 0.2)
            loop.on_info(pid, c, keys[c], info(rx=n, acked=n // 10, busy=int(step * 0.2e6)), now)
        loop.tick(now)
    return start + seconds


def test_scheduler_sees_predictions(csvs):
    cfg = gw_config(source="replay", replay_files=csvs, replay_start=100.0, use_contextdb=True,
                    learn=False)  # fmt: skip
    # rail0 predicted to disconnect: the policy must take rail1's path although both
    # paths look the same in the short term
    same = LongTermPrediction(2e6, 1e10, 0.05, 1e-4, 0.0, 1e-4, confidence=1.0)
    db = StubDB({"rail0": dataclasses.replace(same, p_disconnect=0.99, expected_gap=3.0),
                 "rail1": same})  # fmt: skip
    loop = ContextLoop(cfg, clock=lambda: 100.0, wall=lambda: 1e9, db=db)
    pol = SchedulerPolicy(cfg.scheduler, longterm=loop.longterm, carriers=loop.tracker)
    assert pol.policy.longterm is loop.longterm and pol.carriers is loop.tracker
    end = drive(loop, 8)
    assert db.calls == []  # predictions are asked for by the policy, not by the loop
    paths = [PathState(1, srtt=0.05, room=1 << 20), PathState(2, srtt=0.05, room=1 << 20)]
    for p, c in zip(paths, CARRIERS, strict=True):
        pol.sample(p.id, c, None, end)
    msg = MessageInfo(conn_id=1, size=4096, kind=DATA, offset=0)
    assert pol(msg, paths, end) == (2,)
    blind = SchedulerPolicy(cfg.scheduler)  # the same paths without the database
    for p, c in zip(paths, CARRIERS, strict=True):
        blind.sample(p.id, c, None, end)
    assert blind(msg, paths, end) == (1,)
    asked = {c[0]: c for c in db.calls}
    assert set(asked) == set(CARRIERS)
    carrier, cell, window, recent = asked["rail0"]
    ctx = loop.tracker.contexts["rail0"]
    assert cell == ctx.cell_id and cell != ""
    assert window == ctx.rsrp_window and len(window) == cfg.contextdb.window_s
    assert recent == pytest.approx(8e6, rel=0.05)  # 1 MB/s received in the last second
    st = loop.status(end)
    assert st["carriers"]["rail0"]["prediction"]["p_disconnect"] == 0.99
    assert st["readings"] >= 2 * 8
    # idle paths: the last second's rate is not a capacity; the match is on RSRP alone
    keys = {c: object() for c in CARRIERS}  # new connections, counters from zero
    for step in range(1, 11):
        for pid, c in enumerate(CARRIERS, 1):
            loop.on_info(pid, c, keys[c], info(app_limited=True), end + step * 0.2)
        loop.tick(end + step * 0.2)
    db.calls.clear()
    loop.longterm.predict("rail0", end + 2.5)
    assert math.isnan(db.calls[-1][3])


def test_without_database_nothing_reaches_the_scheduler(csvs):
    cfg = gw_config(source="replay", replay_files=csvs)
    loop = ContextLoop(cfg, clock=lambda: 0.0)
    assert loop.longterm is None and loop.ingest is None
    pol = SchedulerPolicy(cfg.scheduler, longterm=loop.longterm, carriers=loop.tracker)
    assert pol.policy.longterm is None
    drive(loop, 3, start=0.0)
    assert set(loop.tracker.contexts) == set(CARRIERS)  # context is still tracked and shown
    assert "prediction" not in loop.status(3.0)["carriers"]["rail0"]


def test_configuration_errors(csvs, tmp_path):
    with pytest.raises(UserError, match="replay_files"):
        ContextLoop(gw_config(source="replay"))
    with pytest.raises(UserError, match="context.command"):
        ContextLoop(gw_config(source="command"))
    path = str(tmp_path / "db.sqlite")
    store = SqliteStore(path)
    ContextDB(store)  # a database cut into 5 s windows
    store.close()
    cfg = dataclasses.replace(gw_config(use_contextdb=True), contextdb=dataclasses.replace(
        Config().contextdb, path=path, window_s=7))  # fmt: skip
    with pytest.raises(UserError, match="contextdb: .*window_s"):
        ContextLoop(cfg)


def test_command_source_reads_json_lines(tmp_path):
    prog = (
        "import json, time\n"
        "for k in range(3):\n"
        "    print(json.dumps({'carrier': 'rail1', 'cell_id': str(500 + k), 'rsrp': -95.0}),"
        " flush=True)\n"
        "time.sleep(5)\n"
    )
    import selectors
    import time

    cfg = gw_config(source="command", command=[sys.executable, "-c", prog])
    loop = ContextLoop(cfg, clock=time.monotonic)
    sel = selectors.DefaultSelector()
    loop.attach(SimpleNamespace(on_info=None, paths={}), sel)
    try:
        end = time.monotonic() + 10
        while loop.counters["readings"] < 3 and time.monotonic() < end:
            for key, mask in sel.select(0.1):
                key.data(mask, time.monotonic())
            loop.tick(time.monotonic())
        assert loop.tracker.contexts["rail1"].cell_id == "502"
    finally:
        loop.close()
        sel.close()
    assert loop.source.proc.poll() is not None  # the helper is stopped at close


# -- live ingest ----------------------------------------------------------------------------


def test_live_ingest_stores_windows_and_skips_unsaturated_seconds(csvs):
    db = ContextDB(MemoryStore())
    cfg = gw_config(source="replay", replay_files=csvs, replay_start=100.0, use_contextdb=True)
    loop = ContextLoop(cfg, clock=lambda: 100.0, wall=lambda: 1.7e9, db=db)
    end = drive(loop, 60)
    assert loop.counters["samples_fed"] >= 2 * 58
    assert loop.counters["windows_stored"] > 0
    assert loop.flush_ms_max > 0
    stats = db.stats()["carriers"]
    assert set(stats) == set(CARRIERS)
    stored = sum(row["windows"] for row in stats["rail0"].values())
    assert stored == sum(
        len(db._cells[k].index) for k in db._cells if k[0] == "rail0"
    )  # stats and index agree
    assert stored > 5
    # the measured 8 Mbit/s is what the database learnt
    means = [r["throughput_mean_bps"] for r in stats["rail0"].values() if r["windows"]]
    assert all(m == pytest.approx(8e6, rel=0.1) for m in means)
    # the database now answers for a cell it learnt, with the live RSRP window
    ctx = loop.tracker.contexts["rail0"]
    cell = max(stats["rail0"], key=lambda c: stats["rail0"][c]["windows"])
    pred = db.predict("rail0", cell, ctx.rsrp_window, end, recent_dl_bps=8e6)
    assert pred is not None and pred.throughput_mean == pytest.approx(8e6, rel=0.1)
    n_before = loop.counters["windows_stored"]

    # idle passengers: the paths receive nothing; those seconds are not learnt as 0
    keys = {c: object() for c in CARRIERS}
    for step in range(5 * 30):
        now = end + step * 0.2
        for pid, c in enumerate(CARRIERS, 1):
            loop.on_info(pid, c, keys[c], info(app_limited=True), now)
        loop.tick(now)
    assert loop.counters["samples_unsaturated"] >= 2 * 28
    loop.close()  # stores everything left
    assert loop.counters["windows_stored"] > n_before
    means = [r["throughput_mean_bps"] for r in db.stats()["carriers"]["rail0"].values()]
    assert all(m is None or math.isnan(m) or m > 1e6 for m in means)


def test_a_failing_database_write_is_counted_not_raised(csvs):
    db = ContextDB(MemoryStore())
    cfg = gw_config(source="replay", replay_files=csvs, replay_start=100.0, use_contextdb=True)
    loop = ContextLoop(cfg, clock=lambda: 100.0, wall=lambda: 1.7e9, db=db)

    def broken(*a, **kw):
        raise OSError("disk full")

    db.store.commit = broken
    drive(loop, 5)  # the loop keeps running
    assert loop.counters["flush_errors"] >= 4
    assert loop.counters["samples_fed"] >= 8
    loop.close()  # the final write fails the same way, quietly


def test_gateway_cli_reports_a_missing_context_file_in_one_line(tmp_path):
    """Refused before the listener namespace or any rule exists: no root work is done."""
    import subprocess

    from middlebox.paths import pki

    pki.create_ca(tmp_path)
    pki.create_gateway(tmp_path, "train-1")
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        '[gateway]\nid = "train-1"\nnode = "127.0.0.1:4433"\n'
        f'listener_namespace = "mpt{os.getpid() % 10000}ctx"\n'
        '[[gateway.carriers]]\nname = "a"\n'
        f'[tls]\nca = "{tmp_path}/ca.pem"\ncert = "{tmp_path}/gateway-train-1.pem"\n'
        f'key = "{tmp_path}/gateway-train-1.key"\n'
        f'[context]\nsource = "replay"\nreplay_files = ["{tmp_path}/nope.csv"]\n'
    )
    r = subprocess.run([sys.executable, "-m", "middlebox.cli", "gateway", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"mpproxy: error: context.replay_files: {tmp_path}/nope.csv: cannot read: "
        "No such file or directory"
    ]
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"mpt{os.getpid() % 10000}ctx" not in ns


def test_context_messages_carry_only_valid_values():
    loop = ContextLoop(gw_config(), clock=lambda: 10.0, wall=lambda: 1000.0)
    track(loop.tracker, Reading("rail0", 10.0, "123", -250.0, 95.0, 10.0))
    track(loop.tracker, Reading("rail1", 10.5, "0xff", -80.0, 45.0, 9.0))
    m0, m1 = loop.messages(11.0)
    assert (m0.cell_id, m0.rsrp_dbm, m0.lat, m0.lon) == (123, None, None, None)
    assert (m1.cell_id, m1.rsrp_dbm, m1.lat, m1.lon) == (255, -80.0, 45.0, 9.0)
    assert m1.timestamp_ns == int(1000.5 * 1e9)  # wall clock of the reading
