"""The loopback harness of the node's and the uplink's tests (no namespaces).

The node runs in a thread with its own selector loop (:class:`NodeThread`); the test
thread plays the gateway without capture (:class:`Gateway`: the real
:class:`~middlebox.gateway.uplink.Uplink` and its mux): it opens connections on the
mux directly and checks what a local TCP server receives and sends back. Test modules
reach the classes and helpers through the ``loopback`` fixture.
"""

import dataclasses
import socket
import threading
import time
import types

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
from middlebox.node.process import Node
from middlebox.paths import pki
from middlebox.session import mux as m


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="session")
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


def other_gateway(gw_cfg, gw_id="train-2"):
    """The configuration of another gateway of the same node (its own certificate)."""
    return dataclasses.replace(
        gw_cfg,
        gateway=dataclasses.replace(gw_cfg.gateway, id=gw_id),
        tls=dataclasses.replace(
            gw_cfg.tls,
            cert=gw_cfg.tls.cert.replace("train-1", gw_id),
            key=gw_cfg.tls.key.replace("train-1", gw_id),
        ),
    )


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


@pytest.fixture
def loopback():
    """The harness's helpers: ``configs``, ``other_gateway``, ``free_port``, ``NodeThread``,
    ``Gateway``."""
    return types.SimpleNamespace(
        configs=configs,
        other_gateway=other_gateway,
        free_port=free_port,
        NodeThread=NodeThread,
        Gateway=Gateway,
    )
