"""The gateway's context loop against a real node on loopback: its CONTEXT reports reach
the node and its status page (harness: ../conftest.py)."""

import time

import pytest


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
