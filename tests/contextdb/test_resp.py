"""The bound under redis-py: what one round trip may receive (contextdb.resp)."""

import socket

import pytest

from contextdb.resp import ReplyTooLarge, _BoundedSocket


def test_reads_count_against_the_round_trip_they_belong_to():
    a, b = socket.socketpair()
    a.settimeout(1.0)
    s = _BoundedSocket(a, max_reply=10, timeout=1.0)
    s.sendall(b"GET")
    b.sendall(b"12345678")
    assert s.recv(100) == b"12345678"
    b.sendall(b"abc")
    buf = bytearray(16)
    with pytest.raises(ReplyTooLarge, match="larger than 10 bytes"):
        s.recv_into(buf)  # the path hiredis reads by
    s.sendall(b"GET")  # a new request: a new allowance
    b.sendall(b"abc")
    assert s.recv_into(buf) == 3 and buf[:3] == b"abc"
    assert s.gettimeout() == 1.0 and s.fileno() == a.fileno()  # the rest is the socket's
    a.close()
    b.close()


def test_the_timeout_is_for_the_whole_reply_and_polls_are_left_alone():
    a, b = socket.socketpair()
    a.settimeout(0.2)
    s = _BoundedSocket(a, max_reply=1 << 20, timeout=0.2)
    s.sendall(b"GET")
    with pytest.raises(TimeoutError):
        s.recv(10)
    assert a.gettimeout() == 0.2  # restored after the read
    a.settimeout(0)  # redis-py's poll for pending data
    with pytest.raises(BlockingIOError):
        s.recv(10)
    a.close()
    b.close()
