"""The node's session context on loopback: CONTEXT reports and a seeded database give the
session's downlink scheduler predictions (harness: ../conftest.py)."""

import dataclasses
import time

import pytest


def test_node_downlink_scheduler_gets_predictions_from_context_reports(certs, tmp_path, loopback):
    """``[context] use_contextdb`` on the node: the gateway's CONTEXT reports make the
    RSRP window, the node's database answers, and the session's scheduler sees it."""
    from contextdb.db import ContextDB
    from contextdb.store import SqliteStore
    from contextdb.traces import read_5g_csv
    from middlebox import control
    from middlebox.config import ContextConfig
    from middlebox.context.carriers import Reading, track
    from middlebox.context.loop import ContextLoop
    from netns import rail

    route = rail.generate(rail.RailParams(seed=5, carriers=2, duration_s=120))
    db_path = tmp_path / "node-context.sqlite"
    store = SqliteStore(db_path)
    db = ContextDB(store)
    for k in range(2):
        rail.write_csv(route, k, tmp_path / f"r{k}.csv")
        db.ingest(read_5g_csv(tmp_path / f"r{k}.csv", carrier=f"c{k}").samples)
    store.close()
    node_cfg, gw_cfg = loopback.configs(certs, tmp_path)
    node_cfg = dataclasses.replace(
        node_cfg,
        context=ContextConfig(use_contextdb=True),
        contextdb=dataclasses.replace(node_cfg.contextdb, path=str(db_path)),
    )
    nt = loopback.NodeThread(node_cfg)
    gw = loopback.Gateway(gw_cfg)
    try:
        gw.run_until(lambda: gw.paths_up() == 2)
        sess = nt.node.gateways.sessions["train-1"]
        assert sess.context is not None and sess.policy.policy.longterm is sess.context.longterm
        assert sess.context.longterm.predict("c0", time.monotonic()) is None  # no report yet
        loop = ContextLoop(gw_cfg)
        loop.attach(gw.up)
        seconds = route.carriers[0].seconds[40:45]
        for s in seconds:  # five reports: the node's RSRP window
            now = time.monotonic()
            track(loop.tracker, Reading("c0", now, str(s.cell_id), s.rsrp))
            loop.report(now)
            gw.step()
        gw.run_until(
            lambda: nt.node.gateways.contexts.get("train-1", {}).get("c0", {}).get("reports") == 5
        )
        ctx = sess.context.tracker.contexts["c0"]
        assert ctx.cell_id == str(seconds[-1].cell_id)
        assert ctx.rsrp_window == pytest.approx([s.rsrp for s in seconds], abs=0.01)
        pred = sess.context.longterm.predict("c0", time.monotonic())
        assert pred is not None and pred.cell == ctx.cell_id
        st = control.query(str(tmp_path / "node.sock"))
        assert st["sessions"][0]["context"]["c0"]["prediction"]["throughput_mbit"] > 0
        assert "predicted" in control.render(st)
    finally:
        gw.close()
        nt.close()
    assert nt.node.context_db is None  # closed at shutdown
