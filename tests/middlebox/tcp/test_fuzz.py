"""Fuzz: a million random and mutated frames through the shell's parsing and table path.

They must never raise, every frame must be accounted for (accepted or dropped with a
reason), and an established transfer sharing the same endpoint table must complete
byte-exact and without a reset.

Every byte comes from a seeded generator, so a failure reproduces: a mutation can keep
the checksum valid (two changed bytes that cancel in the ones' complement sum) and
then turns a frame into another legitimate input, whose effect depends on the bytes.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from middlebox.gateway.capture import CaptureShell
from middlebox.tcp.constants import ACK, FIN, PSH, RST, SYN, URG
from middlebox.tcp.endpoint import EndpointTable
from middlebox.tcp.events import Reset
from middlebox.tcp.packet import Segment, build_ipv4

ETH = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"
FLAG_CHOICES = [SYN, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK, SYN | ACK, URG | ACK, 0, 0xFF]


class _NullSock:
    def send(self, frame: bytes) -> int:
        return len(frame)

    def close(self) -> None:
        pass


def _valid_frame(rng: random.Random, src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    opts = rng.choice(
        [b"", b"\x02\x04\x05\xb4", b"\x01\x01\x08\x0a" + rng.randbytes(8), b"\x01\x03\x03\x07"]
    )
    seg = Segment(
        src,
        dst,
        sport,
        dport,
        rng.getrandbits(32),
        rng.getrandbits(32),
        rng.choice(FLAG_CHOICES),
        rng.getrandbits(16),
        rng.randbytes(rng.choice([0, 0, 1, 100, 1400])),
        raw_options=opts,
    )
    return ETH + build_ipv4(seg)


def _mutate(rng: random.Random, frame: bytes) -> bytes:
    b = bytearray(frame)
    for _ in range(rng.randrange(1, 6)):
        kind = rng.random()
        if kind < 0.6 and b:
            b[rng.randrange(len(b))] = rng.getrandbits(8)
        elif kind < 0.8:
            del b[rng.randrange(len(b) + 1) :]
        else:
            b += rng.randbytes(rng.randrange(1, 40))
    return bytes(b)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_million_frames_never_crash_nor_disturb_a_transfer(sim, cfg) -> None:
    cfg = dataclasses.replace(cfg, max_connections=3000)
    table = EndpointTable(cfg, auto_accept=True, secret=b"f" * 16)
    shell = CaptureShell("fuzz0", table, vnet=False, sock=_NullSock())
    net = sim.Net(table)
    c = sim.SimClient()
    net.add(c)
    net.run(1.0, lambda: c.established)
    conn = table.connections[c._seg(0, ACK, 0).key]
    rng = random.Random(2024)
    up, down = rng.randbytes(2_000_000), rng.randbytes(2_000_000)
    others = [
        _valid_frame(rng, bytes([10, 9, rng.randrange(256), 1]), sim.SERVER, 1000 + i, 80)
        for i in range(1500)
    ]
    # blind attacks on the transfer's own 4-tuple: valid checksums, random numbers
    blind = [_valid_frame(rng, sim.CLIENT, sim.SERVER, c.port, 80) for _ in range(1500)]
    blind = [f for f in blind if not (f[14 + 33] & (PSH | ACK) == PSH | ACK and len(f) > 80)]
    total = 1_000_000
    # the transfer runs while the frames arrive: a piece each way every 5000 frames (sent
    # at once, 2 MB take a few thousand frames' worth of steps and the rest hit an idle flow)
    pieces = 200
    piece = len(up) // pieces
    for i in range(total):
        if i % (total // pieces) == 0:
            k = i // (total // pieces) * piece
            c.send(up[k : k + piece])
            conn.send(down[k : k + piece])
        r = rng.random()
        if r < 0.3:
            frame = rng.randbytes(rng.randrange(0, 120))
        elif r < 0.45:
            frame = rng.choice(others)
        elif r < 0.9:
            frame = _mutate(rng, rng.choice(others if r < 0.8 else blind))
        else:
            frame = rng.choice(blind)
        shell.feed(frame, net.now)
        if i % 500 == 0:
            net.step()
    net.run(net.now + 60, lambda: len(c.received) == len(down) and len(net.data[c.port]) == len(up))
    st = shell.stats
    assert st.parse.accepted + st.parse.total_dropped + st.not_ip == total
    assert st.parse.total_dropped > total // 3
    assert bytes(c.received) == down and bytes(net.data[c.port]) == up
    assert not c.got_rst
    assert not any(isinstance(e, Reset) and e.conn is conn for e in net.events)


def test_vnet_frames_with_random_headers_never_raise(cfg) -> None:
    table = EndpointTable(cfg, auto_accept=True, secret=b"g" * 16)
    shell = CaptureShell("fuzz1", table, vnet=True, sock=_NullSock())
    rng = random.Random(5)
    base = _valid_frame(rng, bytes([10, 1, 1, 1]), bytes([192, 0, 2, 1]), 5555, 443)
    for i in range(20_000):
        vh = rng.randbytes(10) if i % 2 else bytes(10)
        frame = vh + (_mutate(rng, base) if i % 3 else base)
        shell.feed(frame, float(i))
        if i % 100 == 0:
            shell.pump(float(i), None)
    assert shell.stats.parse.accepted > 0 and shell.stats.parse.total_dropped > 0
