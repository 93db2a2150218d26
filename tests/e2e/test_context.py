"""The context loop end to end: a gateway on rail links replays the route's context in
step with the emulator, reports it to the node, and learns into its database.

One testbed with the three carriers of rail route 7 (``rail:7:k``), the gateway's
``[context]`` replaying the same route's CSVs from the testbed's trace start, and a
``[contextdb]`` database seeded with one earlier run of the route (so predictions exist
from the start). A download runs through the proxy; ``mpproxy status`` must show each
carrier's current cell on both sides and predictions on both (the node reads the same
database for its downlink scheduler), the scheduler must not have failed, and the
database must grow while the gateway runs and again when it stops (the last windows are
written at shutdown).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from bench.proxy_bench import ROOT, ProxyBed, _section
from contextdb.db import ContextDB
from contextdb.store import SqliteStore
from contextdb.traces import read_5g_csv

pytestmark = [pytest.mark.netns, pytest.mark.slow]

CARRIERS = 3  # rail_case's (tests/e2e/conftest.py)
DOWNLOAD_S = 30


def windows_in(path) -> int:
    store = SqliteStore(path, readonly=True)
    try:
        db = ContextDB(store)
        return sum(row["windows"] for c in db.stats()["carriers"].values() for row in c.values())
    finally:
        store.close()


def status(bed, role: str, as_json: bool = False) -> str:
    argv = [
        sys.executable,
        "-m",
        "middlebox.cli",
        "status",
        "--socket",
        str(bed.dir / f"{role}.sock"),
    ]
    r = subprocess.run(argv + (["--json"] if as_json else []), capture_output=True, cwd=ROOT,
                       timeout=20)  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


def test_rail_context_reaches_status_and_the_database_grows(tmp_path, rail_case, download):
    route, files, spec = rail_case.route, rail_case.files, rail_case.spec
    db_path = tmp_path / "context.sqlite"
    store = SqliteStore(db_path)
    try:
        seed = ContextDB(store, origin="earlier-train")
        for k, f in enumerate(files):
            seed.ingest(read_5g_csv(f, carrier=f"carrier{k}").samples)
    finally:
        store.close()
    seeded = windows_in(db_path)
    assert seeded > 0
    with ProxyBed(spec, tmp_path / "bed", start=False) as bed:
        assert bed.tb.trace_start is not None
        context = {
            "source": "replay",
            "replay_files": files,
            "replay_start": bed.tb.trace_start,
            "use_contextdb": True,
            "report_interval": 1.0,
        }
        bed.gw_cfg.write_text(
            bed.gw_cfg.read_text()
            + _section("context", context)
            + _section("contextdb", {"path": str(db_path)})
        )
        bed.node_cfg.write_text(  # the node reads the same database for the downlink
            bed.node_cfg.read_text()
            + _section("context", {"use_contextdb": True})
            + _section("contextdb", {"path": str(db_path)})
        )
        bed.start_node()
        bed.start_gateway()
        bed.wait_paths(CARRIERS)
        srv, cl = download(bed, DOWNLOAD_S)
        node_saturated = False  # seen while the download runs: the node sent it
        try:
            deadline = time.monotonic() + DOWNLOAD_S + 60
            while cl.poll() is None and time.monotonic() < deadline:
                sess = bed.status("node")["sessions"]
                if sess and any(c.get("saturated") for c in sess[0]["context"].values()):
                    node_saturated = True
                time.sleep(0.5)
            if cl.poll() is None:
                cl.kill()
            out = cl.communicate(timeout=10)[0] or b""
            assert cl.returncode == 0, out.decode()[-2000:] + bed.log("gateway")[-2000:]
        finally:
            srv.wait(10)

        second = int(time.monotonic() - bed.tb.trace_start)
        gw = json.loads(status(bed, "gateway", as_json=True))
        page = status(bed, "gateway")
        node_page = status(bed, "node")
        node_ctx = json.loads(status(bed, "node", as_json=True))["sessions"][0]["context"]
        for k in range(CARRIERS):
            recent = {str(s.cell_id) for s in route.carriers[k].seconds[second - 3 : second + 2]}
            c = gw["context"]["carriers"][f"carrier{k}"]
            assert c["cell_id"] in recent, (c, recent)
            assert len(c["rsrp_window"]) == 5
            assert f"context carrier{k}" in page and f"context carrier{k}" in node_page
            assert str(node_ctx[f"carrier{k}"]["cell_id"]) in recent  # reported a second ago
            assert node_ctx[f"carrier{k}"]["age_s"] < 3
        ctx = gw["context"]
        rates = {k: (v.get("down_mbit"), v.get("saturated")) for k, v in ctx["carriers"].items()}
        print("gateway context:", {k: v for k, v in ctx.items() if k != "carriers"}, rates)
        # one second closed per replayed record: the loop was never held up for long, even
        # while the route's tunnel (trace seconds 3-14, every carrier dark) made the paths
        # redial (a blocking connect used to stall the gateway for seconds there)
        assert ctx["seconds_skipped"] == 0, bed.log("gateway")[-3000:]
        assert ctx["seconds"] >= ctx["readings"] // CARRIERS - 2
        assert ctx["seconds"] >= DOWNLOAD_S
        assert ctx["reports_sent"] >= CARRIERS * (DOWNLOAD_S - 8)
        assert ctx["samples_fed"] >= CARRIERS * (DOWNLOAD_S - 8)
        assert ctx["samples_unsaturated"] < ctx["samples_fed"]  # the download saturated some
        assert ctx["windows_stored"] > 0
        predicted = [c for c in ctx["carriers"].values() if c.get("prediction")]
        assert predicted, ctx["carriers"]  # the live gateway's scheduler gets predictions
        node_predicted = [c for c in node_ctx.values() if c.get("prediction")]
        assert node_predicted, node_ctx  # and so does the node's, for the downlink
        assert node_saturated  # the node sent the download
        assert "predicted" in page
        assert gw["scheduler"]["policy"] == "context" and gw["scheduler"]["decisions"] > 0
        assert "failed; using the built-in" not in bed.log("gateway")
        during = windows_in(db_path)
        assert during >= seeded + ctx["windows_stored"]  # (it keeps writing meanwhile)
        assert bed.stop_gateway() == 0
    after = windows_in(db_path)
    print(f"context database: seeded {seeded}, {during} while running, {after} after stop")
    assert after > during
