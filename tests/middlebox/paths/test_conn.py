"""The path shell's write side on a socket pair (plaintext: no TLS, no carrier)."""

import selectors
import socket

import pytest

from middlebox.paths.conn import HELLO, PathConn
from middlebox.session import wire


def test_has_output_until_the_kernel_took_every_queued_byte():
    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        pc = PathConn(a, max_payload=1 << 20, lowat=1 << 16)
        assert pc.state == HELLO and not pc.has_output
        assert pc.interest() == selectors.EVENT_READ
        pc.write(wire.Probe(1, 0))
        assert pc.has_output and pc.interest() & selectors.EVENT_WRITE
        pc.flush()
        assert not pc.has_output and pc.buffered == 0
        pc.write(wire.Data(1, 0, b"x" * (512 << 10)))  # more than the socket takes at once
        pc.flush()
        assert pc.has_output and pc.buffered > 0
        while pc.has_output:
            b.recv(1 << 20)
            pc.flush()
        assert pc.buffered == 0 and pc.interest() == selectors.EVENT_READ
    finally:
        a.close()
        b.close()


def test_room_follows_the_paths_rate_and_the_kernel_is_told():
    """A slow path may hold only ``room_time`` of its rate unsent (at least MIN_ROOM, at
    most ``lowat``), and the socket's TCP_NOTSENT_LOWAT says the same, so the kernel wakes
    the loop at that level."""
    import dataclasses

    from middlebox.paths.conn import MIN_ROOM, UP
    from middlebox.paths.sockets import TCP_NOTSENT_LOWAT, tcp_info

    srv = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(srv.getsockname())
    b, _ = srv.accept()
    try:
        pc = PathConn(a, max_payload=1 << 20, lowat=128 << 10, room_time=0.04)
        pc.state = UP
        assert pc.room() == 128 << 10  # no rate known yet: the most
        base = tcp_info(a)

        def at(rate):
            pc.follow_rate(dataclasses.replace(base, pacing_rate=rate, delivery_rate=0))
            return pc.allowance, a.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT)

        assert at(500_000) == (20_000, 20_000)  # 4 Mbit/s: 40 ms is 20 kB
        assert at(550_000) == (20_000, 20_000)  # within a quarter: left alone
        assert at(2_000_000) == (80_000, 80_000)
        assert at(10_000) == (MIN_ROOM, MIN_ROOM)  # never below one message
        assert at(100_000_000) == (128 << 10, 128 << 10)  # never above lowat
        assert pc.room() == (128 << 10) - pc.queued()
        fixed = PathConn(b, max_payload=1 << 20, lowat=64 << 10)  # room_time 0: fixed
        fixed.follow_rate(dataclasses.replace(base, pacing_rate=500_000))
        assert fixed.allowance == 64 << 10
    finally:
        for s in (a, b, srv):
            s.close()


def test_a_peer_that_does_not_read_is_dropped_before_the_bound():
    """Answers (here PROBE_ACKs) pile up for a peer that never reads: once the write
    buffer holds more than lowat + max_output, flush() raises OutputOverflow."""
    from middlebox.paths.conn import OutputOverflow, PathError

    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        pc = PathConn(a, max_payload=1 << 20, lowat=16 << 10, max_output=64 << 10)
        limit = (16 << 10) + (64 << 10)
        answer = wire.ProbeAck(1, 2, 3, 4)
        size = len(wire.encode(answer))
        written = 0
        with pytest.raises(OutputOverflow, match="does not read") as e:
            for _ in range(100_000):
                for _ in range(10):
                    pc.write(answer)
                    written += size
                pc.flush()
        assert isinstance(e.value, PathError)
        assert limit < pc.buffered <= limit + 10 * size  # dropped at the first flush past it
        assert written < limit + (1 << 20)  # the kernel took a little, nothing more
    finally:
        a.close()
        b.close()


def test_one_read_takes_at_most_the_read_budget():
    """A peer that keeps the socket full gets READ_BUDGET per turn; the rest is read on
    the next readiness (the loop serves other paths meanwhile)."""
    from middlebox.paths.conn import READ_BUDGET, READ_SIZE

    a, b = socket.socketpair()
    try:
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        pc = PathConn(a, max_payload=1 << 20, lowat=1 << 16)
        probe = wire.encode(wire.Probe(1, 0))
        blob = probe * ((3 * READ_BUDGET) // len(probe))
        b.setblocking(False)
        sent = 0
        while sent < len(blob):
            try:
                sent += b.send(blob[sent:])
            except BlockingIOError:
                break
        assert sent > 2 * READ_BUDGET
        msgs = pc.handle(selectors.EVENT_READ, 1.0)
        assert READ_BUDGET <= pc.bytes_in < READ_BUDGET + READ_SIZE
        assert len(msgs) == pc.bytes_in // len(probe)
        total = len(msgs)
        while len(msgs := pc.handle(selectors.EVENT_READ, 1.0)):
            total += len(msgs)
        assert total == sent // len(probe)
    finally:
        a.close()
        b.close()
