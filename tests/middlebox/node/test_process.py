"""The assembled node on loopback: a gateway made of the real Uplink and mux echoes
through it byte-exact, and its status counts what happened (harness: ../conftest.py)."""

import hashlib
import os

from middlebox.session import mux as m


def test_echo_both_directions_byte_exact_over_two_tls_paths(pair, echo):
    node, gw, _ = pair()
    gw.run_until(lambda: gw.paths_up() == 2)
    data = os.urandom(3 << 20)
    cid = gw.open(echo.port, data)
    c = gw.conns[cid]
    gw.run_until(lambda: any(isinstance(e, m.PeerFinished) for e in c["events"]), 30)
    gw.run_until(lambda: not gw.mux.pending(cid), 10)
    assert hashlib.sha256(c["got"]).digest() == hashlib.sha256(data).digest()
    assert any(isinstance(e, m.Closed) for e in c["events"])
    sent = [gw.mux.paths[p].sent_bytes for p in gw.up.slots]
    assert sum(sent) >= len(data)
    st = node.node.status()
    assert st["counters"]["opened"] == 1 and st["counters"]["paths_accepted"] == 2
    assert echo.peers and echo.peers[0][0] == "127.0.0.1"  # the node's own address
