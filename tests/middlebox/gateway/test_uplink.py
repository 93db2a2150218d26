"""The uplink on loopback against a real node: a path cut mid-transfer loses nothing and
is dialled again (harness: ../conftest.py)."""

import os
import time


def test_path_cut_mid_transfer_loses_nothing_and_path_returns(pair, echo):
    node, gw, _ = pair()
    gw.run_until(lambda: gw.paths_up() == 2)
    data = os.urandom(6 << 20)
    cid = gw.open(echo.port, data)
    c = gw.conns[cid]
    gw.run_until(lambda: len(c["got"]) > len(data) // 4, 30)
    first = min(gw.up.paths)
    gw.up.cut(first, time.monotonic())
    assert gw.paths_up() == 1
    gw.run_until(lambda: not gw.mux.pending(cid), 40)
    assert bytes(c["got"]) == data
    gw.run_until(lambda: gw.paths_up() == 2, 10)  # dialled again after the backoff
    assert gw.up.slots[first].ups == 2


def test_the_gateway_charges_its_connections_to_its_memory_budget(pair, echo):
    node, gw, cfg = pair()
    gw.run_until(lambda: gw.paths_up() == 2)
    assert gw.up.budget.limit == cfg.gateway.memory_budget
    assert gw.up.limits()["memory_budget"] == cfg.gateway.memory_budget
    cid = gw.open(echo.port, b"x" * 100_000, shutdown=False)
    gw.step()
    assert gw.up.budget.held == gw.mux.held == 100_000  # queued for the node
    gw.run_until(lambda: len(gw.conns[cid]["got"]) == 100_000, 20)
    gw.run_until(lambda: gw.up.budget.held == 0, 20)  # acknowledged, and read back
    assert gw.mux.stats()["memory"]["peak"] >= 100_000
