"""The node fed random and mutated messages from an authenticated gateway, with
established flows of that gateway beside them.

Core level, not over the network: the node is the real :class:`~middlebox.node.process.Node`
(its ``Gateways``, the session's mux and :class:`~middlebox.node.relay.Relay`, real server
sockets to a loopback echo server); its paths are socket pairs brought up with HELLO,
and the hostile messages go straight into the node's handling of an up path
(``Gateways._path_message``: PROBE, CONTEXT, CLOSE, HELLO and every connection-level
message), as a path shell would hand them over after decoding. A small share of the
mutated byte strings go through the fuzz path's socket instead, so the decoder's errors
and the closing of a path are exercised too (the fuzz path is brought up again). The
gateway side of the established flows is a real gateway mux fed what the node writes.

The hostile messages never name the flows' own connection ids (a gateway may of course
break its own connections). Seeded and bounded: the suite runs 10^4 messages; as a
script (``python tests/adversarial/test_node_fuzz.py --messages 1000000``) it runs
more and prints figures.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import socket
import sys
import time
from pathlib import Path

from middlebox.config import Config, NodeConfig, PathConfig, TLSConfig
from middlebox.node.destpolicy import DestinationPolicy
from middlebox.node.process import Node
from middlebox.paths.conn import PathConn
from middlebox.session import mux as m
from middlebox.session import wire

FLOWS = 4
FLOW_BYTES = 256 << 10
LOCAL = ipaddress.ip_address("127.0.0.1")


class OnlyLoopback(DestinationPolicy):
    """The destination policy of this test: loopback only (random OPENs never leave the
    machine)."""

    def refusal(self, addr) -> str | None:
        return None if ipaddress.ip_address(addr) == LOCAL else "test: loopback only"


class Fuzzer:
    """Random valid messages of every kind, and mutated encodings of them."""

    CONN_KINDS = ("open", "data", "ack", "fin", "rst", "open_ok", "open_fail")
    PATH_KINDS = ("probe", "probe_ack", "context", "datagram")
    RARE_KINDS = ("close", "hello", "hello_ack")  # each of these ends the path

    def __init__(self, rng: random.Random, protected: set[int]) -> None:
        self.rng = rng
        self.protected = protected

    def conn_id(self) -> int:
        r = self.rng
        while True:
            cid = r.randrange(1, 400) if r.random() < 0.9 else r.randrange(1, 1 << 32)
            if cid not in self.protected:
                return cid

    def offset(self) -> int:
        r = self.rng
        x = r.random()
        if x < 0.6:
            return r.randrange(0, 1 << 16)
        if x < 0.9:
            return r.randrange(0, 8 << 20)
        return r.randrange(0, 1 << 63)

    def message(self) -> wire.Message:
        r = self.rng
        x = r.random()
        if x < 0.85:
            kind = r.choice(self.CONN_KINDS)
        elif x < 0.999:
            kind = r.choice(self.PATH_KINDS)
        else:
            kind = r.choice(self.RARE_KINDS)
        return getattr(self, f"_{kind}")()

    def _open(self) -> wire.Message:
        r = self.rng
        dst = "127.0.0.1" if r.random() < 0.3 else str(ipaddress.ip_address(r.getrandbits(32)))
        return wire.Open(self.conn_id(), "10.0.0.9", r.randrange(1, 65536), dst,
                         r.randrange(1, 65536), mss=r.choice([None, 1460]))  # fmt: skip

    def _data(self) -> wire.Message:
        r = self.rng
        seq = self.offset()
        n = r.choice([1, 1, 1, 7, 100, 1500, 16384])
        n = min(n, (1 << 64) - seq)
        return wire.Data(self.conn_id(), seq, r.randbytes(n))

    def _ack(self) -> wire.Message:
        r = self.rng
        ack = self.offset()
        ranges, pos = [], ack
        for _ in range(r.randrange(0, 4)):
            s = pos + 1 + r.randrange(0, 5000)
            e = s + 1 + r.randrange(0, 5000)
            if e >= 1 << 64:
                break
            ranges.append((s, e))
            pos = e
        return wire.DataAck(self.conn_id(), ack, r.randrange(0, 1 << 32), tuple(ranges))

    def _fin(self) -> wire.Message:
        return wire.Fin(self.conn_id(), self.offset())

    def _rst(self) -> wire.Message:
        return wire.Rst(self.conn_id(), self.rng.choice(list(wire.RstReason)))

    def _open_ok(self) -> wire.Message:
        return wire.OpenOk(self.conn_id())

    def _open_fail(self) -> wire.Message:
        return wire.OpenFail(self.conn_id(), self.rng.choice(list(wire.OpenFailReason)))

    def _probe(self) -> wire.Message:
        return wire.Probe(self.rng.getrandbits(32), self.rng.getrandbits(63))

    def _probe_ack(self) -> wire.Message:
        r = self.rng
        return wire.ProbeAck(r.getrandbits(32), r.getrandbits(62), 5, 6)

    def _context(self) -> wire.Message:
        r = self.rng
        pos = r.choice([(None, None), (48.1, 11.5)])
        return wire.Context(f"c{r.randrange(0, 64)}", r.getrandbits(40), r.getrandbits(62),
                            rsrp_dbm=r.choice([None, -95.5]), lat=pos[0], lon=pos[1])  # fmt: skip

    def _datagram(self) -> wire.Message:
        return wire.Datagram(self.rng.getrandbits(32), self.rng.getrandbits(40), b"dgram")

    def _close(self) -> wire.Message:
        return wire.Close(wire.CloseReason.NORMAL, "fuzz")

    def _hello(self) -> wire.Message:
        return wire.Hello("fuzz-gw", 1, "c0", "lte")

    def _hello_ack(self) -> wire.Message:
        return wire.HelloAck("node", 1)

    def mutated(self) -> bytes:
        """A valid message's encoding with bytes flipped, cut, repeated or appended."""
        r = self.rng
        b = bytearray(wire.encode(self.message()))
        for _ in range(r.randrange(1, 4)):
            x = r.random()
            if len(b) < 8:
                b += r.randbytes(r.randrange(1, 40))
            elif x < 0.5:
                b[r.randrange(len(b))] = r.getrandbits(8)
            elif x < 0.65:
                del b[r.randrange(1, len(b)) :]
            elif x < 0.8:
                b += r.randbytes(r.randrange(1, 40))
            elif x < 0.9:
                b[3] = r.getrandbits(8)  # the type
            else:
                i = r.randrange(4, 8)  # the length field
                b[i] = r.getrandbits(8)
        return bytes(b)


class Harness:
    """The node, its paths (socket pairs), the gateway mux of the established flows."""

    def __init__(self, tmp: Path, echo_port: int, seed: int) -> None:
        self.rng = random.Random(seed)
        cfg = Config(
            node=NodeConfig(
                listen="127.0.0.1:0",
                control_socket=str(tmp / "node.sock"),
                connect_timeout=2.0,
                session_connections=128,
                session_memory=64 << 20,
            ),
            tls=TLSConfig(plaintext=True),
            paths=PathConfig(user_timeout=60.0),
        )
        self.cfg = cfg
        self.node = Node(cfg, control=False)
        self.node.policy.close()
        self.node.policy = OnlyLoopback.make()
        self.g = self.node.gateways
        self.session = self.rng.getrandbits(63)
        self.paths: dict[int, tuple[PathConn, socket.socket, wire.Decoder]] = {}
        self.gw = m.Mux("gateway", cfg.mux_params("gateway"))
        self.legit = [self.add_path(f"legit{k}") for k in range(2)]
        for pid in self.legit:
            self.gw.path_up(pid, time.monotonic(), srtt=0.001)
        self.fuzz_pid = self.add_path("fuzz")
        self.echo_port = echo_port
        self.flows: dict[int, dict] = {}
        self.stats = {"fed": 0, "undecodable": 0, "via_socket": 0, "fuzz_paths": 1}

    def add_path(self, carrier: str) -> int:
        a, b = socket.socketpair()
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        b.setblocking(False)
        pc = PathConn(a, max_payload=self.cfg.wire.max_payload, lowat=128 << 10,
                      server_side=True, label=carrier)  # fmt: skip
        now = time.monotonic()
        self.g._hello(pc, wire.Hello("fuzz-gw", self.session, carrier, "lte"), now)
        sess, pid = self.g._owner(pc)
        assert sess is not None, "HELLO refused"
        self.g._watch(pc)
        self.paths[pid] = (pc, b, wire.Decoder(1 << 20))
        return pid

    def feed(self, pid: int, msg: wire.Message) -> None:
        pc = self.paths[pid][0]
        pc.last_rx = time.monotonic()  # what the path shell notes when it reads
        self.g._path_message(pc, msg, time.monotonic())

    def fuzz_path_up(self) -> bool:
        pc = self.paths[self.fuzz_pid][0]
        return self.g._owner(pc)[0] is not None

    def step(self) -> None:
        """Gateway to node, the node's loop, node to gateway, the flows' application."""
        now = time.monotonic()
        for pid in self.legit:
            self.gw.update_path(pid, room=1 << 20)
            self.paths[pid][0].last_rx = now  # the gateway probes its paths
        for pid, msg in self.gw.messages_to_send(now):
            self.feed(pid, msg)
        self.node.step(0.0)
        for pid, (_, far, dec) in list(self.paths.items()):
            while True:
                try:
                    chunk = far.recv(1 << 20)
                except BlockingIOError:
                    break
                except OSError:
                    chunk = b""
                if not chunk:  # the node closed this (fuzz) path
                    if pid not in self.legit and pid != self.fuzz_pid:
                        far.close()
                        del self.paths[pid]
                    break
                try:
                    dec.feed(chunk)
                except wire.ProtocolError as e:
                    raise AssertionError(f"the node wrote an invalid message: {e}") from None
                for msg in dec:
                    if type(msg) in m._CONN_MESSAGES:
                        self.gw.receive(pid, msg, time.monotonic())
        while (e := self.gw.next_event()) is not None:
            f = self.flows.get(e.conn_id)
            if f is not None:
                f["events"].append(type(e).__name__)
        for cid, f in self.flows.items():
            if not self.gw.pending(cid):
                continue
            if f["sent"] < len(f["data"]):
                f["sent"] += self.gw.send(cid, f["data"][f["sent"] : f["sent"] + (64 << 10)])
            elif not f["shut"]:
                self.gw.shutdown(cid)
                f["shut"] = True
            f["got"] += self.gw.read(cid)

    def open_flows(self) -> None:
        for k in range(FLOWS):
            data = self.rng.randbytes(FLOW_BYTES)
            cid = self.gw.open("10.0.0.2", 30000 + k, "127.0.0.1", self.echo_port)
            self.flows[cid] = {"data": data, "sent": 0, "got": bytearray(), "shut": False,
                               "events": []}  # fmt: skip

    def flows_done(self) -> bool:
        return all(not self.gw.pending(c) for c in self.flows)

    def run(self, messages: int, per_step: int = 50) -> None:
        fz = Fuzzer(self.rng, set(self.flows))
        sent = 0
        while sent < messages:
            for _ in range(per_step):
                sent += 1
                if not self.fuzz_path_up():
                    self.fuzz_pid = self.add_path("fuzz")
                    self.stats["fuzz_paths"] += 1
                if self.rng.random() < 0.5:
                    self.feed(self.fuzz_pid, fz.message())
                    self.stats["fed"] += 1
                    continue
                raw = fz.mutated()
                if self.rng.random() < 0.002:  # through the socket: the shell's decoder
                    self.paths[self.fuzz_pid][1].sendall(raw)
                    self.stats["via_socket"] += 1
                    continue
                dec = wire.Decoder(self.cfg.wire.max_payload)
                try:
                    dec.feed(raw)
                    dec.eof()
                except wire.ProtocolError:  # what came before the error is still handed on
                    self.stats["undecodable"] += 1
                for msg in list(dec):
                    self.feed(self.fuzz_pid, msg)
                    self.stats["fed"] += 1
            self.step()

    def check(self) -> dict:
        for cid, f in self.flows.items():
            assert bytes(f["got"]) == f["data"], f"flow {cid}: {len(f['got'])} bytes, {f['events']}"
            assert "Closed" in f["events"], f["events"]
        st = self.node.status()
        (sess,) = st["sessions"]
        assert len(sess["connections"]) <= self.cfg.node.session_connections
        return {**self.stats, **sess["counters"], **st["counters"], "memory": st["memory"]}

    def close(self) -> None:
        self.node.shutdown()
        for _, far, _ in self.paths.values():
            far.close()


def fuzz(tmp: Path, echo_port: int, messages: int, seed: int, timeout: float) -> dict:
    h = Harness(tmp, echo_port, seed)
    try:
        h.open_flows()
        t = time.monotonic()
        h.run(messages)
        took = time.monotonic() - t
        end = time.monotonic() + timeout
        while not h.flows_done():
            assert time.monotonic() < end, "the established flows did not finish"
            h.step()
            time.sleep(0.0005)
        out = h.check()
        out["seconds"] = round(took, 2)
        out["messages_per_second"] = round(messages / took)
        return out
    finally:
        h.close()


def test_node_fuzz_leaves_established_flows_exact(tmp_path, echo):
    out = fuzz(tmp_path, echo.port, 10_000, seed=13, timeout=60)
    print(out)
    assert out["fed"] > 5_000 and out["undecodable"] > 100
    assert out["unknown_connection"] > 0 and out["open_denied"] > 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args(argv)
    import importlib.util
    import tempfile

    # the echo server of the node's loopback harness (tests/middlebox/conftest.py)
    path = Path(__file__).resolve().parents[1] / "middlebox" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_node_loopback_harness", path)
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    echo = harness.EchoServer()
    try:
        with tempfile.TemporaryDirectory() as d:
            out = fuzz(Path(d), echo.port, args.messages, args.seed, timeout=300)
    finally:
        echo.close()
    for k, v in out.items():
        print(f"{k:>24}: {v}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[2]))
    sys.exit(main())
