"""The path shell's write side on a socket pair (plaintext: no TLS, no carrier)."""

import selectors
import socket

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
