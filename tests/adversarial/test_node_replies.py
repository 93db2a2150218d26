"""A gateway path that sends but never reads: the answers it asks for (PROBE_ACK here)
pile up at the node until the path's output bound, then the node drops that path and
counts it, while the gateway's other sessions and paths go on (harness:
tests/middlebox/conftest.py)."""

from __future__ import annotations

import dataclasses
import os
import socket
import ssl
import time

from middlebox.paths.tls import gateway_context
from middlebox.session import mux as m
from middlebox.session import wire


def hello_path(gw_cfg, node_cfg, rcvbuf: int = 4096) -> socket.socket:
    """A TLS path of gateway ``gw_cfg`` that has been through HELLO / HELLO_ACK."""
    host, port = node_cfg.node.listen.rsplit(":", 1)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # the node's answers stay there
    raw.settimeout(5)
    raw.connect((host, int(port)))
    s = gateway_context(gw_cfg.tls).wrap_socket(raw, server_hostname=host)
    s.sendall(wire.encode(wire.Hello(gw_cfg.gateway.id, 7, "c9", "lte")))
    dec = wire.Decoder(1 << 20)
    while True:
        dec.feed(s.recv(4096))
        msgs = list(dec)
        if msgs:
            assert type(msgs[0]) is wire.HelloAck
            return s


def test_a_path_that_never_reads_is_dropped_and_others_go_on(certs, tmp_path, echo, loopback):
    node_cfg, gw_cfg = loopback.configs(certs, tmp_path)
    node_cfg = dataclasses.replace(
        node_cfg, paths=dataclasses.replace(node_cfg.paths, max_output=64 << 10)
    )
    gw2_cfg = loopback.other_gateway(gw_cfg)
    n = loopback.NodeThread(node_cfg)
    good = loopback.Gateway(gw2_cfg)
    bad = None
    try:
        good.run_until(lambda: good.paths_up() == 2)
        bad = hello_path(gw_cfg, node_cfg)
        probes = wire.encode(wire.Probe(1, 0)) * 5000  # 100 kB of PROBEs per write
        sent, end = 0, time.monotonic() + 30
        data = os.urandom(1 << 20)
        cid = good.open(echo.port, data)
        while n.node.counters["paths_unread"] == 0:
            assert time.monotonic() < end, "the node never dropped the path"
            try:
                bad.settimeout(0.01)
                sent += bad.send(probes)
            except (TimeoutError, ssl.SSLWantWriteError):
                pass
            except OSError:
                break  # the node closed it
            good.step(0.001)
        wait_for_drop = time.monotonic() + 5
        while n.node.counters["paths_unread"] == 0 and time.monotonic() < wait_for_drop:
            time.sleep(0.01)
        assert n.node.counters["paths_unread"] == 1
        # what the node may hold for it: lowat + max_output beyond what its kernel took
        # (the kernel's send buffer and the peer's small receive buffer)
        print(f"the peer had sent {sent} bytes of PROBEs when it was dropped")
        good.run_until(lambda: not good.mux.pending(cid), 30)
        assert bytes(good.conns[cid]["got"]) == data
        assert any(isinstance(e, m.Closed) for e in good.conns[cid]["events"])
        sessions = {s["gateway"]: s for s in n.node.status()["sessions"]}
        assert len(sessions["train-2"]["paths"]) == 2
        assert "train-1" not in sessions or not sessions["train-1"]["paths"]
    finally:
        if bad is not None:
            bad.close()
        good.close()
        n.close()
