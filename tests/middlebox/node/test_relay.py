"""The node's relay to the servers on loopback: OPEN_FAIL reasons, a server's RST, and a
download larger than the buffers (harness: ../conftest.py)."""

import os
import socket
import threading

from middlebox.node.relay import open_fail_reason
from middlebox.session import mux as m
from middlebox.session import wire


def test_refused_and_denied_destinations_answer_open_fail(pair, echo, loopback):
    node, gw, _ = pair()
    gw.run_until(lambda: gw.paths_up() == 2)
    closed = loopback.free_port()  # nobody listens: the kernel refuses
    a = gw.open(closed, b"x")
    b = gw.open(80, b"x", dst="10.255.0.1")  # private, not allowed on this node
    gw.run_until(lambda: not gw.mux.pending(a) and not gw.mux.pending(b), 10)
    fa = [e for e in gw.conns[a]["events"] if isinstance(e, m.OpenFailed)]
    fb = [e for e in gw.conns[b]["events"] if isinstance(e, m.OpenFailed)]
    assert fa[0].reason == wire.OpenFailReason.REFUSED
    assert fb[0].reason == wire.OpenFailReason.DENIED
    assert node.node.counters["open_denied"] == 1


def test_connect_error_mapping():
    import errno

    assert open_fail_reason(errno.ECONNREFUSED) == wire.OpenFailReason.REFUSED
    assert open_fail_reason(errno.ETIMEDOUT) == wire.OpenFailReason.TIMEOUT
    assert open_fail_reason(errno.ENETUNREACH) == wire.OpenFailReason.UNREACHABLE
    assert open_fail_reason(errno.EMFILE) == wire.OpenFailReason.NO_RESOURCES


def test_server_reset_reaches_the_gateway_as_rst(pair):
    node, gw, _ = pair()
    gw.run_until(lambda: gw.paths_up() == 2)
    srv = socket.create_server(("127.0.0.1", 0))
    try:
        cid = gw.open(srv.getsockname()[1], b"hello", shutdown=False)
        srv.settimeout(5)
        gw.run_until(lambda: any(isinstance(e, m.Opened) for e in gw.conns[cid]["events"]))
        c, _ = srv.accept()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        c.close()  # RST
        gw.run_until(lambda: not gw.mux.pending(cid))
        resets = [e for e in gw.conns[cid]["events"] if isinstance(e, m.Reset)]
        assert resets and resets[0].reason == wire.RstReason.SERVER_RESET and resets[0].by_peer
    finally:
        srv.close()


def test_download_larger_than_the_buffers_keeps_flowing(pair):
    # the server only sends: the node must go back to reading it once the gateway's
    # DATA_ACKs free the mux's send buffer (256 KiB here), without any other event
    node, gw, _ = pair(buffer_bytes=256 << 10)
    gw.run_until(lambda: gw.paths_up() == 2)
    data = os.urandom(3 << 20)
    srv = socket.create_server(("127.0.0.1", 0))

    def serve():
        c, _ = srv.accept()
        c.sendall(data)
        c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        cid = gw.open(srv.getsockname()[1], b"", shutdown=True)
        gw.run_until(lambda: not gw.mux.pending(cid), 30)
        assert bytes(gw.conns[cid]["got"]) == data
    finally:
        srv.close()


def test_server_sockets_reset_unless_the_upload_ended_cleanly(pair):
    """SO_LINGER 0 from the start (a node that dies resets its servers: a truncated upload
    is never seen as complete); cleared when the gateway's FIN is passed on."""
    import struct
    import time

    node, gw, _ = pair()
    gw.run_until(lambda: gw.paths_up() == 2)
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(5)
    try:
        cid = gw.open(srv.getsockname()[1], b"part", shutdown=False)
        gw.run_until(lambda: any(isinstance(e, m.Opened) for e in gw.conns[cid]["events"]))
        c, _ = srv.accept()
        relay = node.node.gateways.sessions["train-1"].relay
        sock = relay.conns[cid].sock

        def linger():
            return struct.unpack("ii", sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))

        assert linger() == (1, 0)
        c.settimeout(5)
        assert c.recv(10) == b"part"
        gw.mux.shutdown(cid)
        gw.conns[cid]["shut"] = True
        end = time.monotonic() + 5
        while linger() != (0, 0):
            assert time.monotonic() < end
            gw.step()
        assert c.recv(10) == b""  # FIN: the upload is complete
        c.close()
    finally:
        srv.close()


def test_the_nodes_scheduler_learns_each_opens_client_and_port(pair, echo):
    """The node's adapter hears each accepted OPEN's client and destination port, so its
    policy classes a web response by port as the gateway's does (before, every node
    connection had port 0: its first bytes were never ``interactive``)."""
    from scheduler.registry import CONNECTION

    node, gw, _ = pair()
    gw.run_until(lambda: gw.paths_up() == 2)
    cid = gw.open(echo.port, b"hello")
    gw.run_until(lambda: bytes(gw.conns[cid]["got"]) == b"hello")
    (sess,) = node.node.gateways.sessions.values()
    ctx = sess.policy.registry.get(CONNECTION, cid)
    assert ctx is not None and ctx.dst_port == echo.port and ctx.client == "127.0.0.2"
