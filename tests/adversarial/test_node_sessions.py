"""Per-session limits at the node on loopback: a gateway that opens more connections than
node.session_connections gets OPEN_FAIL (its clients are reset), counted, while another
gateway's connections go on; status shows each session's memory and the process budget
(harness: tests/middlebox/conftest.py)."""

from __future__ import annotations

import os
import socket

from middlebox.session import mux as m
from middlebox.session import wire


def test_a_session_over_its_connection_cap_is_refused_and_another_works(
    certs, tmp_path, echo, loopback
):
    node_cfg, gw_cfg = loopback.configs(certs, tmp_path, session_connections=4)
    n = loopback.NodeThread(node_cfg)
    greedy = loopback.Gateway(gw_cfg)
    other = loopback.Gateway(loopback.other_gateway(gw_cfg))
    held = socket.create_server(("127.0.0.1", 0), backlog=16)  # accepts, never answers
    try:
        for g in (greedy, other):
            g.run_until(lambda g=g: g.paths_up() == 2)
        cids = [greedy.open(held.getsockname()[1], b"x", shutdown=False) for _ in range(7)]

        def answered(cid):
            return any(isinstance(e, (m.Opened, m.OpenFailed)) for e in greedy.conns[cid]["events"])

        greedy.run_until(lambda: all(map(answered, cids)), 10)
        fails = [e for c in cids for e in greedy.conns[c]["events"] if isinstance(e, m.OpenFailed)]
        assert len(fails) == 3
        assert {e.reason for e in fails} == {wire.OpenFailReason.NO_RESOURCES}
        data = os.urandom(1 << 20)
        cid = other.open(echo.port, data)
        other.run_until(lambda: not other.mux.pending(cid), 30)
        assert bytes(other.conns[cid]["got"]) == data
        st = n.node.status()
        sessions = {s["gateway"]: s for s in st["sessions"]}
        assert sessions["train-1"]["counters"]["open_over_limit"] == 3
        assert sessions["train-2"]["counters"]["open_over_limit"] == 0
        assert sessions["train-1"]["memory"]["limit"] == node_cfg.node.session_memory
        assert st["memory"]["limit"] == node_cfg.node.memory_budget
        assert st["memory"]["held"] >= sessions["train-1"]["memory"]["held"]
    finally:
        held.close()
        greedy.close()
        other.close()
        n.close()
