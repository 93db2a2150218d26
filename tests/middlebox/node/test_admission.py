"""Revoking a gateway at a running node: refused at HELLO, its live session ended when
the list changes, no restart (harness: ../conftest.py)."""

import dataclasses
import os
import socket
import time

from middlebox.session import mux as m


def _gw2(certs, tmp_path, loopback, gw1):
    """train-2's configuration, dialling gw1's node."""
    _, gw2 = loopback.configs(certs, tmp_path, gw_id="train-2")
    return dataclasses.replace(gw2, gateway=dataclasses.replace(gw2.gateway, node=gw1.gateway.node))


def _touch(path, text):
    """Write the list and make sure its modification time moves (coarse clocks)."""
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_revocation_at_hello_and_of_a_live_session(certs, tmp_path, loopback):
    revoked = tmp_path / "revoked.txt"
    revoked.write_text("# stolen vehicles\ntrain-9\n")
    node_cfg, gw1_cfg = loopback.configs(certs, tmp_path, revoked_gateways=str(revoked),
                                         gateway_lists_interval=0.1)  # fmt: skip
    n = loopback.NodeThread(node_cfg)
    g1, g2 = loopback.Gateway(gw1_cfg), loopback.Gateway(_gw2(certs, tmp_path, loopback, gw1_cfg))
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(5)
    try:
        for g in (g1, g2):
            g.run_until(lambda g=g: g.paths_up() == 2)
        cid = g1.open(srv.getsockname()[1], b"held", shutdown=False)
        g1.run_until(lambda: any(isinstance(e, m.Opened) for e in g1.conns[cid]["events"]))
        server_side, _ = srv.accept()
        # train-1 is revoked while connected: its session ends, the server sees a reset
        _touch(revoked, "train-9\ntrain-1  # key leaked\n")
        server_side.settimeout(5)
        try:
            while server_side.recv(100):
                pass
            reset = False
        except ConnectionResetError:
            reset = True
        assert reset
        g1.run_until(lambda: any(isinstance(e, m.Reset) for e in g1.conns[cid]["events"]), 5)
        # ... and it cannot come back; train-2 is untouched
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            g1.step()
            g2.step()
        assert g1.paths_up() == 0 and g2.paths_up() == 2
        assert "AUTH_FAILED" in " ".join(s.last_error for s in g1.up.slots.values())
        st = n.node.status()
        assert [s["gateway"] for s in st["sessions"]] == ["train-2"]
        adm = st["admission"]
        assert adm["sessions_revoked"] == 1 and adm["gateways_refused"] >= 2
        assert adm["list_reloads"] == 1 and adm["revoked_gateways"]["ids"] == 2
        # a broken list leaves the last good one in force
        _touch(revoked, "train-1\ntrain é\n")
        time.sleep(0.5)
        st = n.node.status()["admission"]
        assert st["list_reload_errors"] >= 1 and "revoked.txt:2" in st["last_error"]
        # un-revoked: train-1 comes back without a node restart
        _touch(revoked, "")
        g1.run_until(lambda: g1.paths_up() == 2)
        server_side.close()
    finally:
        srv.close()
        for g in (g1, g2):
            g.close()
        n.close()


def test_allow_list(certs, tmp_path, loopback):
    allowed = tmp_path / "allowed.txt"
    allowed.write_text("train-2\n")
    node_cfg, gw1_cfg = loopback.configs(certs, tmp_path, allowed_gateways=str(allowed))
    n = loopback.NodeThread(node_cfg)
    g1, g2 = loopback.Gateway(gw1_cfg), loopback.Gateway(_gw2(certs, tmp_path, loopback, gw1_cfg))
    try:
        g2.run_until(lambda: g2.paths_up() == 2)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            g1.step()
        assert g1.paths_up() == 0
        assert n.node.status()["admission"]["gateways_refused"] >= 2
    finally:
        for g in (g1, g2):
            g.close()
        n.close()
