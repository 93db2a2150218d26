"""Metrics and the live status page of real gateway and node processes on the testbed.

One testbed on the three carriers of rail route 7 (its tunnel, trace seconds 3-14, takes
every carrier down: outages), the gateway replaying the route's context (cells, RSRP,
positions) into a fresh context database, both processes with ``[metrics] listen`` on
their namespace's loopback. A download runs through the proxy; meanwhile headless
Chromium loads the gateway's page (any console message or script error fails the test;
the screenshot is kept in the test's directory, and copied to docs/status-page.png when
MPPROXY_UPDATE_DOCS is set). After it, /metrics of both processes is parsed with the
Prometheus client library's text-format parser and must hold the expected series and
labels (the texts are kept beside the screenshot).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.proxy_bench import ROOT, ProxyBed, _section
from middlebox import control
from netns.topology import client_addr

pytestmark = [pytest.mark.netns, pytest.mark.slow]

CARRIERS = 3  # rail_case's (tests/e2e/conftest.py)
DOWNLOAD_S = 60
PAGE_AT_S = 32  # into the download: the context database has windows to draw by then
LISTEN = "127.0.0.1:9464"
FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode())"  # noqa: E501


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("no Chromium on this machine: run scripts/sysdeps.sh as root (Debian: chromium)")


def scrape(bed, role: str, keep) -> dict:
    """``role``'s /metrics parsed into families; the text is kept in the file ``keep``."""
    r = bed.run(role, [sys.executable, "-c", FETCH, f"http://{LISTEN}/metrics"], timeout=60)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    keep.write_bytes(r.stdout)
    return {f.name: f for f in text_string_to_metric_families(r.stdout.decode())}


def series(fams: dict, name: str, suffix: str = "") -> list[tuple[dict, float]]:
    assert name in fams, f"{name} missing; have {sorted(fams)}"
    return [(s.labels, s.value) for s in fams[name].samples if s.name == name + suffix]


def browse(bed, tmp_path) -> tuple[str, list[str]]:
    """Chromium inside the gateway's namespace: the page's DOM after its scripts ran, a
    screenshot, and every console line it printed (from both runs)."""
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium'}", "--enable-logging=stderr", "--v=0",
            "--window-size=1280,1000", "--virtual-time-budget=8000"]  # fmt: skip
    url = f"http://{LISTEN}/"
    dom = bed.run("gateway", [*base, "--dump-dom", url], timeout=120)
    assert dom.returncode == 0, dom.stderr.decode()[-2000:]
    shot = tmp_path / "status-page.png"
    pic = bed.run("gateway", [*base, f"--screenshot={shot}", url], timeout=120)
    assert pic.returncode == 0 and shot.stat().st_size > 10_000, pic.stderr.decode()[-2000:]
    console = [
        line
        for out in (dom.stderr, pic.stderr)
        for line in out.decode(errors="replace").splitlines()
        if ":CONSOLE" in line
    ]
    if os.environ.get("MPPROXY_UPDATE_DOCS"):
        shutil.copy(shot, ROOT / "docs" / "status-page.png")
    return dom.stdout.decode(errors="replace"), console


def test_metrics_and_status_page_after_a_download(tmp_path, rail_case, download):
    metrics = _section("metrics", {"listen": LISTEN, "interval": 0.5})
    with ProxyBed(rail_case.spec, tmp_path / "bed", start=False) as bed:
        context = {"source": "replay", "replay_files": rail_case.files,
                   "replay_start": bed.tb.trace_start, "use_contextdb": True}  # fmt: skip
        bed.gw_cfg.write_text(
            bed.gw_cfg.read_text()
            + _section("context", context)
            + _section("contextdb", {"path": str(tmp_path / "context.sqlite")})
            + metrics
        )
        bed.node_cfg.write_text(bed.node_cfg.read_text() + metrics)
        bed.start_node()
        bed.start_gateway()
        bed.wait_paths(CARRIERS)
        srv, cl = download(bed, DOWNLOAD_S)
        try:
            time.sleep(PAGE_AT_S)
            dom, console = browse(bed, tmp_path)
            out = cl.communicate(timeout=DOWNLOAD_S + 60)[0] or b""
            assert cl.returncode == 0, out.decode()[-2000:] + bed.log("gateway")[-2000:]
        finally:
            srv.wait(10)
        gw = scrape(bed, "gateway", tmp_path / "gateway-metrics.txt")
        node = scrape(bed, "node", tmp_path / "node-metrics.txt")
        gw_log = bed.log("gateway")
        status_page = control.render(bed.status("gateway"))

    # the page: no script error, no console output, carriers and a track drawn
    assert console == [], console
    body = re.search(r"<body[^>]*>", dom).group(0)
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', body))
    assert attrs.get("errors") == "0" and attrs.get("ready") == "1", body
    assert attrs["carriers"] == str(CARRIERS), body
    # windows reach the track once they mature (look-ahead + ~10 s): a few by now, more
    # on a quiet machine (6 to 20 seen); a line needs at least three to be a track
    assert int(attrs["trackpoints"]) >= 3, body
    for k in range(CARRIERS):
        assert f'data-path="carrier{k}/0"' in dom and f'data-carrier="carrier{k}"' in dom
    assert "<circle" in dom and "<polyline" in dom
    assert f"<td>{client_addr(0)}</td>" in dom  # the passenger, under connections by client

    # the gateway's series and labels
    paths = {f"carrier{k}/0" for k in range(CARRIERS)}
    got = series(gw, "mpproxy_path_received_bytes", "_total")
    assert {lab["path"] for lab, _ in got} == paths
    assert all(lab["gateway"] == "train-1" and lab["carrier"] == lab["path"][:-2] for lab, _ in got)
    assert sum(v for _, v in got) > 1 << 20  # the download came in over the paths
    assert any(v > 0 for _, v in series(gw, "mpproxy_path_rtt_seconds"))
    directions = {
        lab["direction"] for lab, _ in series(gw, "mpproxy_path_goodput_bytes_per_second")
    }
    assert directions == {"in", "out"}
    for name in ("mpproxy_path_kernel_retransmitted_segments", "mpproxy_path_stall_resends",
                 "mpproxy_path_duplicate_received_bytes", "mpproxy_path_connects"):  # fmt: skip
        assert {lab["path"] for lab, _ in series(gw, name, "_total")} == paths, name
    outages = series(gw, "mpproxy_path_outage_duration_seconds", "_count")
    assert {lab["path"] for lab, _ in outages} == paths
    cells = series(gw, "mpproxy_carrier_cell_info")
    assert {lab["carrier"] for lab, _ in cells} == {f"carrier{k}" for k in range(CARRIERS)}
    assert all(lab["cell"] for lab, _ in cells)
    assert all(-160 < v < -20 for _, v in series(gw, "mpproxy_carrier_rsrp_dbm"))
    assert [v for _, v in series(gw, "mpproxy_scheduler_decisions", "_total")][0] > 0
    assert series(gw, "mpproxy_scheduler_duplicated_decisions", "_total")
    limits = {lab["limit"] for lab, _ in series(gw, "mpproxy_limit_hits", "_total")}
    assert {"overflow", "refused_full", "open_over_limit"} <= limits
    assert series(gw, "mpproxy_errors", "_total") and series(gw, "mpproxy_events", "_total")
    assert series(gw, "mpproxy_buffered_bytes") and series(gw, "mpproxy_memory_held_bytes")
    assert gw["mpproxy_path_outage_duration_seconds"].type == "histogram"
    assert gw["mpproxy_path_received_bytes"].type == "counter"

    # the node's: the same paths, under the gateway they belong to
    sent = series(node, "mpproxy_path_sent_bytes", "_total")
    assert {(lab["gateway"], lab["carrier"], lab["path"]) for lab, _ in sent} == {
        ("train-1", p[:-2], p) for p in paths
    }
    assert sum(v for _, v in sent) > 1 << 20  # the node sent the download
    assert [v for _, v in series(node, "mpproxy_sessions")] == [1.0]
    assert [v for _, v in series(node, "mpproxy_scheduler_decisions", "_total")][0] > 0
    assert series(node, "mpproxy_scheduler_duplicated_decisions", "_total")
    served = series(node, "mpproxy_events", "_total")  # the listener's own counters
    assert any(lab["area"] == "metrics" and lab["event"] == "requests" for lab, _ in served)
    assert {lab["client"] for lab, _ in series(node, "mpproxy_client_connections")} == {"train-1"}
    assert {lab["carrier"] for lab, _ in series(node, "mpproxy_carrier_cell_info")} == {
        f"carrier{k}" for k in range(CARRIERS)
    }
    assert {"handshakes_rejected", "reorder_overflow"} <= {
        lab["limit"] for lab, _ in series(node, "mpproxy_limit_hits", "_total")
    }
    assert "metrics request" not in gw_log  # no request failed in the listener
    # mpproxy status shows the listener's counters
    assert re.search(r"metrics: errors=0 publish_ms_max=\S+ requests=[1-9]", status_page)
