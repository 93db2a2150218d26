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
