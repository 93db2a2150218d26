"""The node's gateways and sessions on loopback: who may bring a path up, a gateway
restart, several gateways at once (harness: ../conftest.py)."""

import dataclasses
import os
import socket
import time

import pytest

from middlebox.session import mux as m
from middlebox.session import wire


def test_wrong_ca_and_wrong_gateway_id_are_refused(certs, tmp_path, loopback):
    _, rogue = certs
    node_cfg, good = loopback.configs(certs, tmp_path)
    n = loopback.NodeThread(node_cfg)
    try:
        rogue_tls = dataclasses.replace(
            good.tls,
            cert=str(rogue / "gateway-train-1.pem"),
            key=str(rogue / "gateway-train-1.key"),
        )
        liar = dataclasses.replace(good.gateway, id="train-2")  # with train-1's certificate
        for cfg, why in (
            (dataclasses.replace(good, tls=rogue_tls), ""),
            (dataclasses.replace(good, gateway=liar), "AUTH_FAILED"),
        ):
            g = loopback.Gateway(cfg)
            try:
                end = time.monotonic() + 1.5
                while time.monotonic() < end:
                    g.step()
                assert g.paths_up() == 0 and g.up.counters["dials"] >= 2
                assert why in " ".join(s.last_error for s in g.up.slots.values())
            finally:
                g.close()
        assert n.node.counters["paths_refused"] >= 4
        assert n.node.gateways.sessions == {}
    finally:
        n.close()


def test_gateway_restart_resets_the_old_session(pair, echo, certs, tmp_path, loopback):
    node, gw, gw_cfg = pair()
    gw.run_until(lambda: gw.paths_up() == 2)
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(5)
    try:
        cid = gw.open(srv.getsockname()[1], b"held", shutdown=False)
        gw.run_until(lambda: any(isinstance(e, m.Opened) for e in gw.conns[cid]["events"]))
        c, _ = srv.accept()
        old_session = gw.up.session
        gw.sel.close()  # the old gateway dies without a word
        for s in gw.up.slots.values():
            s.pc.raw.close()
        g2 = loopback.Gateway(gw_cfg)
        try:
            g2.run_until(lambda: g2.paths_up() == 2)
            c.settimeout(5)
            with pytest.raises(ConnectionResetError):
                while c.recv(100):
                    pass
            sessions = node.node.status()["sessions"]
            assert [s["session"] for s in sessions] == [g2.up.session] != [old_session]
            assert node.node.counters["sessions_replaced"] == 1
        finally:
            g2.close()
        c.close()
    finally:
        srv.close()


def test_peers_without_a_certificate_or_without_tls_are_refused(certs, tmp_path, loopback):
    import ssl

    node_cfg, _ = loopback.configs(certs, tmp_path)
    n = loopback.NodeThread(node_cfg)
    try:
        host, port = node_cfg.node.listen.split(":")
        d, _ = certs
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts the node, shows no certificate
        ctx.load_verify_locations(str(d / "ca.pem"))
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                s = ctx.wrap_socket(raw, server_hostname=host)
                s.sendall(wire.encode(wire.Hello("train-1", 1, "c0", "lte")))
                assert s.recv(100) == b""  # the node closes without a HELLO_ACK
                raise ConnectionError("closed")
        with socket.create_connection((host, int(port)), timeout=5) as s:  # plaintext HELLO
            s.sendall(wire.encode(wire.Hello("train-1", 1, "c0", "lte")))
            try:
                assert wire.HelloAck not in map(type, wire.decode_all(s.recv(4096), 1 << 20))
            except (ConnectionError, wire.ProtocolError):
                pass
        end = time.monotonic() + 5
        while n.node.counters["paths_refused"] < 2 and time.monotonic() < end:
            time.sleep(0.05)
        assert n.node.counters["paths_refused"] >= 2 and n.node.gateways.sessions == {}
    finally:
        n.close()


def test_one_node_serves_several_gateways(certs, tmp_path, echo, loopback):
    node_cfg, gw1_cfg = loopback.configs(certs, tmp_path)
    gw2_cfg = loopback.other_gateway(gw1_cfg)
    n = loopback.NodeThread(node_cfg)
    gws = [loopback.Gateway(gw1_cfg), loopback.Gateway(gw2_cfg)]
    try:
        data = [os.urandom(1 << 20), os.urandom(1 << 20)]
        cids = []
        for g in gws:
            g.run_until(lambda g=g: g.paths_up() == 2)
        for g, d in zip(gws, data, strict=True):
            cids.append(g.open(echo.port, d))
        end = time.monotonic() + 30
        while any(g.mux.pending(c) for g, c in zip(gws, cids, strict=True)):
            assert time.monotonic() < end
            for g in gws:
                g.step(0.005)
        for g, c, d in zip(gws, cids, data, strict=True):
            assert bytes(g.conns[c]["got"]) == d
        sessions = n.node.status()["sessions"]
        assert sorted(s["gateway"] for s in sessions) == ["train-1", "train-2"]
    finally:
        for g in gws:
            g.close()
        n.close()


def wait_for(cond, timeout, what="condition"):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_silent_path_is_closed_after_the_user_timeout(certs, tmp_path, loopback):
    """The gateway probes every paths.probe_interval; a path from which nothing arrives
    for paths.user_timeout is closed by the node (counted as paths_silent)."""
    node_cfg, gw_cfg = loopback.configs(certs, tmp_path)
    node_cfg = dataclasses.replace(
        node_cfg, paths=dataclasses.replace(node_cfg.paths, user_timeout=2.0)
    )
    gw_cfg = dataclasses.replace(
        gw_cfg, paths=dataclasses.replace(gw_cfg.paths, probe_interval=0.1)
    )
    n = loopback.NodeThread(node_cfg)
    g = loopback.Gateway(gw_cfg)
    try:
        g.run_until(lambda: g.paths_up() == 2)
        end = time.monotonic() + 3.0  # alive while the gateway runs (it probes)
        while time.monotonic() < end:
            g.step()
        assert n.node.counters["paths_silent"] == 0
        t = time.monotonic()  # the gateway falls silent (its loop stops)
        wait_for(lambda: n.node.counters["paths_silent"] == 2, 8, "silent paths closed")
        assert 1.6 < time.monotonic() - t < 5.0
        # the node's thread counts a path before it leaves its session: wait, not read
        wait_for(
            lambda: all(not s["paths"] for s in n.node.status()["sessions"]),
            2,
            "silent paths gone from the status",
        )
    finally:
        g.close()
        n.close()


def test_a_failing_socket_option_leaves_the_others_and_is_logged_once(
    certs, tmp_path, loopback, caplog
):
    from middlebox.paths.sockets import TCP_USER_TIMEOUT

    node_cfg, gw_cfg = loopback.configs(certs, tmp_path)
    n = loopback.NodeThread(node_cfg)
    g = None
    try:
        gws = n.node.gateways
        gws.path_opts = dataclasses.replace(gws.path_opts, congestion_control="nosuchcc")
        with caplog.at_level("WARNING", logger="mpproxy.node"):
            g = loopback.Gateway(gw_cfg)
            g.run_until(lambda: g.paths_up() == 2)
        assert gws.counters["socket_option_failures"] == 2
        assert sum("congestion_control failed" in r.getMessage() for r in caplog.records) == 1
        for sess in gws.sessions.values():
            for pc in sess.paths.values():
                assert pc.raw.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                want = int(node_cfg.paths.user_timeout * 1000)
                assert pc.raw.getsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT) == want
    finally:
        if g is not None:
            g.close()
        n.close()
