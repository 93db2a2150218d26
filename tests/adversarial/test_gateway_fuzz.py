"""The gateway's capture path fed hostile frames, with established flows beside them.

Core level, not over the network: the frames go into the real capture shell
(:class:`~middlebox.gateway.capture.CaptureShell`, its frame and vnet-header parsing),
through the gateway's flow classifier (:class:`~middlebox.gateway.classifier.Classifier`
with a :class:`~middlebox.gateway.flowtable.FlowTable` made from a configuration with
ACL, deny and bypass rules, so every action's path runs) to the user-space TCP endpoint.
Beside them three clients move data both ways through the same classifier and
endpoint (the simulated network of tests/middlebox/tcp/conftest.py). The frames:
random bytes; valid TCP of every flag combination, with random, empty and malformed
options, to proxied, denied, dropped and bypassed destinations, from many sources
(SYNs fill the per-source quotas); IPv4 with options, fragments (first, middle, last),
bad lengths, bad IP or TCP checksums, other protocols, multicast, broadcast, zero and
loopback addresses; truncated at every depth (Ethernet, IP, TCP header, options);
mutated (bytes changed, cut or added); random virtio-net headers; blind segments with
random numbers on the flows' own tuples (no data: a blind in-window data segment is
valid input and would change the stream).

Every frame must be accounted for (accepted by the parser, dropped with a reason, or
not IPv4), nothing may raise, and the flows must complete byte-exact without a reset.
Seeded and bounded: the suite runs 20 000 frames; as a script
(``python tests/adversarial/test_gateway_fuzz.py --frames 1000000``) it runs more and
prints figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import struct
import sys
import time
from pathlib import Path

from middlebox.config import AclRuleConfig, GatewayConfig
from middlebox.gateway.capture import CaptureShell
from middlebox.gateway.classifier import Classifier
from middlebox.gateway.flowtable import FlowTable
from middlebox.tcp.checksum import checksum
from middlebox.tcp.constants import ACK, PSH
from middlebox.tcp.endpoint import EndpointTable
from middlebox.tcp.events import Reset
from middlebox.tcp.packet import Segment, build_ipv4
from middlebox.tcp.params import TcpParams


def _load(name: str, rel: str):
    """A module of tests/middlebox by path (the tests are no package), loaded once."""
    path = Path(__file__).resolve().parents[1] / "middlebox" / rel
    spec = importlib.util.spec_from_file_location(name, path)
    if name not in sys.modules:
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


sim = _load("_tcp_sim_harness", "tcp/conftest.py")  # SimClient, Net, CLIENT, SERVER
tcp_fuzz = _load("_tcp_fuzz", "tcp/test_fuzz.py")  # ETH, the frame mutation, a null socket
ETH = tcp_fuzz.ETH
DENIED = bytes([198, 51, 100, 7])
DROPPED = bytes([203, 0, 113, 200])
BYPASSED = bytes([192, 168, 1, 1])
ODD_ADDRS = [bytes([224, 0, 0, 1]), bytes([255] * 4), bytes(4), bytes([127, 0, 0, 1]),
             bytes([100, 64, 0, 1])]  # fmt: skip
FLOWS = 3
FLOW_BYTES = 300_000


def config() -> GatewayConfig:
    return GatewayConfig(
        acl=[AclRuleConfig(action="drop", dst=["203.0.113.128/25"])],
        deny=["198.51.100.0/24"],
    )


def _fix_ip_checksum(ip: bytearray) -> None:
    ihl = (ip[0] & 15) * 4
    ip[10:12] = b"\0\0"
    ip[10:12] = checksum(bytes(ip[:ihl])).to_bytes(2, "big")


class Frames:
    """Hostile frames of the kinds the module text lists, from one seeded generator."""

    def __init__(self, rng: random.Random, flow_ports: list[int]) -> None:
        self.rng = rng
        self.flow_ports = flow_ports
        self.kinds = [
            (0.15, self.random_bytes),
            (0.20, self.valid),
            (0.10, self.with_ip_options),
            (0.08, self.fragment),
            (0.08, self.bad_checksum),
            (0.07, self.odd_header),
            (0.10, self.truncated),
            (0.12, self.mutated),
            (0.05, self.blind),
            (0.05, self.vnet_garbage),
        ]

    def frame(self) -> tuple[bytes, bool]:
        """A frame and whether it carries a virtio-net header."""
        x = self.rng.random()
        for p, make in self.kinds:
            if x < p:
                return make()
            x -= p
        return self.valid()

    # -- pieces -----------------------------------------------------------------------

    def addr(self) -> bytes:
        r = self.rng
        x = r.random()
        if x < 0.5:
            return sim.SERVER
        if x < 0.6:
            return DENIED
        if x < 0.7:
            return DROPPED
        if x < 0.8:
            return BYPASSED
        if x < 0.9:
            return r.choice(ODD_ADDRS)
        return r.randbytes(4)

    def source(self) -> bytes:
        r = self.rng
        return (
            bytes([10, 9, r.randrange(4), r.randrange(1, 255)])
            if r.random() < 0.9
            else r.randbytes(4)
        )

    def options(self) -> bytes:
        r = self.rng
        x = r.random()
        if x < 0.3:
            return b""
        if x < 0.5:
            return b"\x02\x04\x05\xb4\x01\x03\x03\x0e\x04\x02\x00\x00"  # MSS, wscale 14, SACK ok
        if x < 0.6:
            return b"\x01\x01\x08\x0a" + r.randbytes(8)
        if x < 0.7:  # SACK blocks, any numbers
            n = r.randrange(1, 5)
            return (
                b"\x01\x01\x05"
                + bytes([2 + 8 * n])
                + r.randbytes(8 * n)
                + b"\x01" * ((4 - (4 + 8 * n) % 4) % 4)
            )
        if x < 0.8:  # lengths of 0, 1 or past the end
            return bytes([r.randrange(2, 30), r.choice((0, 1, 39, 255)), 0, 0])
        return r.randbytes(4 * r.randrange(1, 11))

    def segment(self, src: bytes | None = None, dst: bytes | None = None,
                sport: int | None = None, dport: int | None = None) -> Segment:  # fmt: skip
        r = self.rng
        return Segment(
            src or self.source(),
            dst or self.addr(),
            sport if sport is not None else r.choice((r.randrange(1, 65536), 0, 40000)),
            dport if dport is not None else r.choice((80, 443, 25, 0, r.randrange(65536))),
            r.getrandbits(32),
            r.getrandbits(32),
            r.getrandbits(8),
            r.getrandbits(16),
            r.randbytes(r.choice((0, 0, 1, 100, 1400))),
            raw_options=self.options(),
        )

    # -- kinds ------------------------------------------------------------------------

    def random_bytes(self) -> tuple[bytes, bool]:
        r = self.rng
        if r.random() < 0.5:
            return r.randbytes(r.randrange(0, 200)), False
        return ETH + r.randbytes(r.randrange(0, 200)), False

    def valid(self) -> tuple[bytes, bool]:
        return ETH + build_ipv4(self.segment()), False

    def with_ip_options(self) -> tuple[bytes, bool]:
        r = self.rng
        ip = bytearray(build_ipv4(self.segment()))
        n = r.randrange(1, 11)
        opts = r.randbytes(4 * n) if r.random() < 0.5 else b"\x01" * (4 * n)  # NOPs
        ip[0] = 0x40 | (5 + n)
        ip = ip[:20] + opts + ip[20:]
        struct.pack_into("!H", ip, 2, len(ip))
        _fix_ip_checksum(ip)
        return ETH + bytes(ip), False

    def fragment(self) -> tuple[bytes, bool]:
        r = self.rng
        ip = bytearray(build_ipv4(self.segment()))
        mf, off = r.choice(((0x2000, 0), (0x2000, r.randrange(1, 8192)), (0, r.randrange(1, 8192))))
        struct.pack_into("!H", ip, 6, mf | off)
        _fix_ip_checksum(ip)
        return ETH + bytes(ip), False

    def bad_checksum(self) -> tuple[bytes, bool]:
        r = self.rng
        ip = bytearray(build_ipv4(self.segment()))
        at = r.choice((10, 11, 36, 37))  # the IP or the TCP checksum
        ip[at] ^= 1 << r.randrange(8)
        return ETH + bytes(ip), False

    def odd_header(self) -> tuple[bytes, bool]:
        r = self.rng
        ip = bytearray(build_ipv4(self.segment()))
        what = r.randrange(6)
        if what == 0:
            ip[0] = r.choice((0x40 | r.randrange(0, 5), 0x60 | 5, r.getrandbits(8)))  # IHL, version
        elif what == 1:
            struct.pack_into("!H", ip, 2, r.choice((0, 19, 20, 39, len(ip) + 1, 65535)))
        elif what == 2:
            ip[9] = r.choice((1, 17, 47, 50, 255))  # ICMP, UDP, GRE, ESP
        elif what == 3:
            ip[8] = 0  # TTL 0
        elif what == 4:
            ip[32] = r.getrandbits(8)  # TCP data offset (and reserved bits)
        else:
            ip[33] = r.getrandbits(8)  # flags, checksum kept valid below
        if what != 4 and what != 5:
            _fix_ip_checksum(ip)
        eth = (
            ETH
            if r.random() < 0.9
            else ETH[:12] + r.choice((b"\x81\x00", b"\x86\xdd", b"\x08\x06"))
        )
        return eth + bytes(ip), False

    def truncated(self) -> tuple[bytes, bool]:
        r = self.rng
        f = ETH + build_ipv4(self.segment())
        cut = r.choice(
            (
                r.randrange(0, 14),
                r.randrange(14, 34),
                r.randrange(34, 54),
                r.randrange(54, len(f) + 1),
            )
        )
        return f[:cut], False

    def mutated(self) -> tuple[bytes, bool]:
        return tcp_fuzz._mutate(self.rng, self.valid()[0]), False

    def blind(self) -> tuple[bytes, bool]:
        seg = self.segment(sim.CLIENT, sim.SERVER, self.rng.choice(self.flow_ports), 80)
        if seg.flags & ACK and seg.flags & PSH or seg.payload:
            seg = Segment(seg.src, seg.dst, seg.sport, seg.dport, seg.seq, seg.ack,
                          seg.flags & ~PSH, seg.window, b"",
                          raw_options=seg.raw_options)  # fmt: skip
        return ETH + build_ipv4(seg), False

    def vnet_garbage(self) -> tuple[bytes, bool]:
        r = self.rng
        vh = r.randbytes(10) if r.random() < 0.7 else bytes(10)
        body = self.mutated()[0] if r.random() < 0.5 else self.valid()[0]
        return (vh + body)[: r.choice((r.randrange(0, 10), 10 + len(body)))], True


def fuzz(frames: int, seed: int = 13) -> dict:
    """Run ``frames`` hostile frames beside ``FLOWS`` transfers; returns figures.
    Raises AssertionError when a flow is harmed or a frame is unaccounted for."""
    params = TcpParams(gso=False, time_wait=1.0)
    table = EndpointTable(params, auto_accept=True, secret=b"z" * 16)
    flows = FlowTable.from_config(config())
    classifier = Classifier(table, flows)
    shell = CaptureShell("fuzz0", classifier, vnet=False, sock=tcp_fuzz._NullSock())
    vshell = CaptureShell("fuzz1", classifier, vnet=True, sock=tcp_fuzz._NullSock())
    classifier.shell = shell
    net = sim.Net(classifier)
    clients = [sim.SimClient(port=40000 + k) for k in range(FLOWS)]
    for c in clients:
        net.add(c)
    net.run(1.0, lambda: all(c.established for c in clients))
    assert all(c.established for c in clients)
    conns = [table.connections[c._seg(0, ACK, 0).key] for c in clients]
    rng = random.Random(seed)
    up = [rng.randbytes(FLOW_BYTES) for _ in clients]
    down = [rng.randbytes(FLOW_BYTES) for _ in clients]
    gen = Frames(rng, [c.port for c in clients])
    pieces = 50
    every = max(1, frames // pieces)
    piece = FLOW_BYTES // pieces
    vnet_frames = 0
    t0 = time.perf_counter()
    for i in range(frames):
        if i % every == 0 and i // every < pieces:
            k = i // every * piece
            last = i // every == pieces - 1
            for c, conn, u, d in zip(clients, conns, up, down, strict=True):
                c.send(u[k:] if last else u[k : k + piece])
                conn.send(d[k:] if last else d[k : k + piece])
        frame, vnet = gen.frame()
        if vnet:
            vnet_frames += 1
            vshell.feed(frame, net.now)
        else:
            shell.feed(frame, net.now)
        if i % 200 == 0:
            net.step()
    if frames < pieces:  # a short run: the rest of the data at once
        for c, conn, u, d in zip(clients, conns, up, down, strict=True):
            c.send(u[frames * piece :])
            conn.send(d[frames * piece :])
    seconds = time.perf_counter() - t0

    def done() -> bool:
        return all(len(c.received) == FLOW_BYTES and len(net.data.get(c.port, b"")) == FLOW_BYTES
                   for c in clients)  # fmt: skip

    net.run(net.now + 120, done)
    accounted = 0
    for s in (shell, vshell):
        st = s.stats
        accounted += st.parse.accepted + st.parse.total_dropped + st.not_ip
    assert accounted == frames, (accounted, frames)
    for c, conn, u, d in zip(clients, conns, up, down, strict=True):
        assert bytes(c.received) == d and bytes(net.data[c.port]) == u, c.port
        assert not c.got_rst, c.port
        assert not any(isinstance(e, Reset) and e.conn is conn for e in net.events), c.port
    dropped = shell.stats.parse.dropped + vshell.stats.parse.dropped
    fc = flows.counters()
    return {
        "frames": frames,
        "vnet_frames": vnet_frames,
        "seconds": round(seconds, 2),
        "us_per_frame": round(seconds / max(1, frames) * 1e6, 2),
        "accepted": shell.stats.parse.accepted + vshell.stats.parse.accepted,
        "not_ip": shell.stats.not_ip + vshell.stats.not_ip,
        "dropped": dict(sorted(dropped.items())),
        "flows_tracked": len(flows),
        "untracked_packets": fc.untracked,
        "source_rate": fc.source_rate,
        "denied": classifier.denied,
        "bypassed": classifier.bypassed,
        "endpoint": {k: v for k, v in table.totals().items() if v},
    }


def test_gateway_fuzz_leaves_established_flows_exact():
    r = fuzz(20_000)
    # every path was taken: parser drops of many kinds, each action of the flow table
    assert len(r["dropped"]) >= 8, r
    assert r["accepted"] > 1_000 and r["denied"] > 0 and r["bypassed"] > 0, r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="gateway capture-path fuzz (figures)")
    p.add_argument("--frames", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=13)
    a = p.parse_args(argv)
    import json

    print(json.dumps(fuzz(a.frames, a.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
