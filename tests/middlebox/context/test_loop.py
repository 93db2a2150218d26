"""The gateway's context loop (middlebox/context/loop.py): its wiring into the scheduler
(stub database), live ingest into a real one, its configuration errors, the CONTEXT
messages it sends, and against a real node on loopback its reports reaching the node and
its status page (harness: ../conftest.py)."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

import pytest

from contextdb.db import ContextDB
from contextdb.store import MemoryStore, SqliteStore
from middlebox.config import Config
from middlebox.context.carriers import Reading, track
from middlebox.context.loop import ContextLoop, _cell_number
from middlebox.errors import UserError
from middlebox.session.mux import PathState
from middlebox.session.policy import SchedulerPolicy
from scheduler.context import DATA, MessageInfo
from scheduler.longterm import LongTermPrediction

from .helpers import CARRIERS, StubDB, drive, gw_config, info, run_command


def test_context_reports_reach_the_node_and_its_status(pair, echo, tmp_path):
    """CONTEXT gateway -> node: each carrier's latest report, on its own path, is kept per
    gateway and carrier and shown by ``mpproxy status``."""
    from middlebox import control
    from middlebox.context.carriers import Reading, track
    from middlebox.context.loop import ContextLoop

    node, gw, gw_cfg = pair()
    gw.run_until(lambda: gw.paths_up() == 2)
    loop = ContextLoop(gw_cfg)
    loop.attach(gw.up)
    now = time.monotonic()
    track(loop.tracker, Reading("c0", now, "26034", -97.25, 53.3498, -6.2603))
    track(loop.tracker, Reading("c1", now, "0x1f", None))
    assert loop.report(now) == 2
    gw.run_until(lambda: len(node.node.gateways.contexts.get("train-1", {})) == 2, 10)
    track(loop.tracker, Reading("c0", now + 1, "26035", -99.0, 53.35, -6.26))
    loop.report(now + 1)
    gw.run_until(lambda: node.node.gateways.contexts["train-1"]["c0"]["reports"] == 2, 10)
    st = control.query(str(tmp_path / "node.sock"))
    ctx = st["sessions"][0]["context"]
    assert ctx["c0"]["cell_id"] == 26035 and ctx["c0"]["rsrp"] == -99.0
    assert ctx["c0"]["position"] == pytest.approx([53.35, -6.26])
    assert ctx["c1"] == {**ctx["c1"], "cell_id": 31, "rsrp": None, "position": None}
    page = control.render(st)
    assert "context c0" in page and "cell 26035" in page and "rsrp -99.0 dBm" in page


def test_cell_number_for_the_wire():
    assert _cell_number("26034") == 26034
    assert _cell_number("0x1F") == 31
    assert _cell_number("") == 0
    assert _cell_number("abc") == 0


# -- the context loop and the scheduler -----------------------------------------------------


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
    loop, _ = run_command(gw_config(source="command", command=[sys.executable, "-c", prog]), 3)
    assert loop.tracker.contexts["rail1"].cell_id == "502"
    assert loop.source.proc.poll() is not None  # the helper is stopped at close


def test_a_hostile_helper_is_counted_and_the_loop_goes_on():
    """Lines that ended the gateway before (nesting a thousand deep: RecursionError; an
    RSRP of 400 digits: OverflowError), NaN, an endless line, then good lines."""
    prog = (
        "import sys, time\n"
        "out = sys.stdout.buffer\n"
        "out.write(b'{\"carrier\": \"rail1\", \"rsrp\": ' + b'[' * 1000 + b']' * 1000 + b'}\\n')\n"
        "out.write(b'{\"carrier\": \"rail1\", \"rsrp\": -' + b'9' * 400 + b'}\\n')\n"
        'out.write(b\'{"carrier": "rail1", "rsrp": NaN}\\n\')\n'
        "out.write(b'x' * 70000 + b'\\n')\n"
        "for k in range(3):\n"
        '    out.write(b\'{"carrier": "rail1", "cell_id": "%d"}\\n\' % (500 + k))\n'
        "out.flush()\n"
        "time.sleep(5)\n"
    )
    loop, st = run_command(gw_config(source="command", command=[sys.executable, "-c", prog]), 3)
    assert loop.tracker.contexts["rail1"].cell_id == "502" and st["readings"] == 3
    assert st["command_errors"] >= 4 and st["command_last_error"]


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
