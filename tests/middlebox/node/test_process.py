"""The node process on loopback, driven by a gateway made of the real Uplink and mux.

The node runs in a thread with its own selector loop; the test thread plays the
gateway without capture: it opens connections on the uplink's mux directly and checks
what a local TCP server receives and sends back.
"""

import dataclasses
import hashlib
import os
import socket
import threading
import time

import pytest

from middlebox.config import (
    CarrierConfig,
    Config,
    GatewayConfig,
    NodeConfig,
    PathConfig,
    TLSConfig,
)
from middlebox.gateway.uplink import Uplink
from middlebox.node.process import Node, open_fail_reason
from middlebox.paths import pki
from middlebox.session import mux as m
from middlebox.session import wire


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    pki.create_ca(d)
    pki.create_node(d, ["127.0.0.1"])
    pki.create_gateway(d, "train-1")
    pki.create_gateway(d, "train-2")
    rogue = tmp_path_factory.mktemp("rogue")
    pki.create_ca(rogue, name="rogue CA")
    pki.create_gateway(rogue, "train-1")
    return d, rogue


def configs(certs, tmp_path, gw_id="train-1", cert_dir=None, carriers=2, **node_kw):
    d, _ = certs
    cert_dir = cert_dir or d
    port = free_port()
    paths = PathConfig(user_timeout=3.0, reconnect_initial=0.05, reconnect_max=0.5)
    node = Config(
        node=NodeConfig(
            listen=f"127.0.0.1:{port}",
            allowed_destinations=["127.0.0.0/8"],
            control_socket=str(tmp_path / "node.sock"),
            connect_timeout=node_kw.pop("connect_timeout", 2.0),
            **node_kw,
        ),
        tls=TLSConfig(str(d / "ca.pem"), str(d / "node.pem"), str(d / "node.key")),
        paths=paths,
    )
    gw = Config(
        gateway=GatewayConfig(
            id=gw_id,
            node=f"127.0.0.1:{port}",
            carriers=[
                CarrierConfig(name=f"c{k}", address="127.0.0.1", congestion_control="cubic")
                for k in range(carriers)
            ],
            buffer_bytes=1 << 20,
        ),
        tls=TLSConfig(
            str(d / "ca.pem"),
            str(cert_dir / f"gateway-{gw_id}.pem"),
            str(cert_dir / f"gateway-{gw_id}.key"),
        ),
        paths=paths,
    )
    return node, gw


class NodeThread:
    def __init__(self, cfg):
        self.node = Node(cfg)
        self.stop = threading.Event()
        self.error = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            self.node.run(self.stop.is_set)
        except Exception:  # reported by close()
            import traceback

            self.error = traceback.format_exc()
        finally:
            self.node.shutdown()

    def close(self):
        self.stop.set()
        self.t.join(10)
        assert not self.t.is_alive()
        assert self.error is None, self.error


class Gateway:
    """The uplink plus a tiny application: per connection, bytes out and bytes back."""

    def __init__(self, cfg, session=None):
        import selectors

        self.sel = selectors.DefaultSelector()
        self.up = Uplink(cfg, self.sel, time.monotonic, session=session)
        self.mux = self.up.mux
        self.conns = {}  # cid -> dict(out=bytes, sent=int, got=bytearray, events=list)

    def open(self, port, data=b"", dst="127.0.0.1", shutdown=True):
        cid = self.mux.open("127.0.0.2", 40000 + len(self.conns), dst, port)
        self.conns[cid] = {"out": data, "sent": 0, "got": bytearray(), "events": [],
                           "shutdown": shutdown}  # fmt: skip
        return cid

    def step(self, wait=0.01):
        for key, mask in self.sel.select(wait):
            key.data(mask, time.monotonic())
        now = time.monotonic()
        self.up.poll(now)
        for cid, c in self.conns.items():
            if self.mux.pending(cid):
                if c["sent"] < len(c["out"]):
                    c["sent"] += self.mux.send(cid, c["out"][c["sent"] : c["sent"] + (256 << 10)])
                if c["sent"] == len(c["out"]) and c["shutdown"] and not c.get("shut"):
                    self.mux.shutdown(cid)
                    c["shut"] = True
                c["got"] += self.mux.read(cid)
        while (e := self.mux.next_event()) is not None:
            c = self.conns.get(e.conn_id)
            if c is not None:
                c["events"].append(e)
                if isinstance(e, m.Readable) and self.mux.pending(e.conn_id):
                    c["got"] += self.mux.read(e.conn_id)
        self.up.pump(now)

    def run_until(self, cond, timeout=20.0):
        end = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < end, "timed out"
            self.step()

    def paths_up(self):
        return len(self.up.paths)

    def close(self):
        self.up.close(time.monotonic())
        self.sel.close()


class EchoServer:
    """Echoes every connection until EOF, then closes; counts what it saw."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peers = []
        self.resets = 0
        self.t = threading.Thread(target=self._serve, daemon=True)
        self.t.start()

    def _serve(self):
        while True:
            try:
                c, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer)
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    def _echo(self, c):
        try:
            while data := c.recv(1 << 16):
                c.sendall(data)
            c.shutdown(socket.SHUT_WR)
        except OSError:
            self.resets += 1
        finally:
            c.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def echo():
    s = EchoServer()
    yield s
    s.close()


@pytest.fixture
def pair(certs, tmp_path):
    made = []

    def make(**kw):
        node_cfg, gw_cfg = configs(certs, tmp_path, **kw)
        n = NodeThread(node_cfg)
        made.append(n)
        g = Gateway(gw_cfg)
        made.append(g)
        return n, g, gw_cfg

    yield make
    for x in reversed(made):
        x.close()


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


def test_refused_and_denied_destinations_answer_open_fail(pair, echo):
    node, gw, _ = pair()
    gw.run_until(lambda: gw.paths_up() == 2)
    closed = free_port()  # nobody listens: the kernel refuses
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


def test_wrong_ca_and_wrong_gateway_id_are_refused(certs, tmp_path):
    _, rogue = certs
    node_cfg, good = configs(certs, tmp_path)
    n = NodeThread(node_cfg)
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
            g = Gateway(cfg)
            try:
                end = time.monotonic() + 1.5
                while time.monotonic() < end:
                    g.step()
                assert g.paths_up() == 0 and g.up.counters["dials"] >= 2
                assert why in " ".join(s.last_error for s in g.up.slots.values())
            finally:
                g.close()
        assert n.node.counters["paths_refused"] >= 4
        assert n.node.sessions == {}
    finally:
        n.close()


def test_gateway_restart_resets_the_old_session(pair, echo, certs, tmp_path):
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
        g2 = Gateway(gw_cfg)
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


def test_status_over_control_socket(pair, echo, tmp_path):
    from middlebox import control

    node, gw, _ = pair()
    gw.run_until(lambda: gw.paths_up() == 2)
    st = control.query(str(tmp_path / "node.sock"))
    assert st["role"] == "node" and st["sessions"][0]["gateway"] == "train-1"
    assert len(st["sessions"][0]["paths"]) == 2
    assert "train-1" in control.render(st)


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


def test_peers_without_a_certificate_or_without_tls_are_refused(certs, tmp_path):
    import ssl

    node_cfg, _ = configs(certs, tmp_path)
    n = NodeThread(node_cfg)
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
        assert n.node.counters["paths_refused"] >= 2 and n.node.sessions == {}
    finally:
        n.close()


def test_one_node_serves_several_gateways(certs, tmp_path, echo):
    node_cfg, gw1_cfg = configs(certs, tmp_path)
    gw2_cfg = dataclasses.replace(
        gw1_cfg,
        gateway=dataclasses.replace(gw1_cfg.gateway, id="train-2"),
        tls=dataclasses.replace(
            gw1_cfg.tls,
            cert=gw1_cfg.tls.cert.replace("train-1", "train-2"),
            key=gw1_cfg.tls.key.replace("train-1", "train-2"),
        ),
    )
    n = NodeThread(node_cfg)
    gws = [Gateway(gw1_cfg), Gateway(gw2_cfg)]
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
    gw.run_until(lambda: len(node.node.contexts.get("train-1", {})) == 2, 10)
    track(loop.tracker, Reading("c0", now + 1, "26035", -99.0, 53.35, -6.26))
    loop.report(now + 1)
    gw.run_until(lambda: node.node.contexts["train-1"]["c0"]["reports"] == 2, 10)
    st = control.query(str(tmp_path / "node.sock"))
    ctx = st["sessions"][0]["context"]
    assert ctx["c0"]["cell_id"] == 26035 and ctx["c0"]["rsrp"] == -99.0
    assert ctx["c0"]["position"] == pytest.approx([53.35, -6.26])
    assert ctx["c1"] == {**ctx["c1"], "cell_id": 31, "rsrp": None, "position": None}
    page = control.render(st)
    assert "context c0" in page and "cell 26035" in page and "rsrp -99.0 dBm" in page


def test_node_downlink_scheduler_gets_predictions_from_context_reports(certs, tmp_path):
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
    node_cfg, gw_cfg = configs(certs, tmp_path)
    node_cfg = dataclasses.replace(
        node_cfg,
        context=ContextConfig(use_contextdb=True),
        contextdb=dataclasses.replace(node_cfg.contextdb, path=str(db_path)),
    )
    nt = NodeThread(node_cfg)
    gw = Gateway(gw_cfg)
    try:
        gw.run_until(lambda: gw.paths_up() == 2)
        sess = nt.node.sessions["train-1"]
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
        gw.run_until(lambda: nt.node.contexts.get("train-1", {}).get("c0", {}).get("reports") == 5)
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
