"""The node's UDP mappings with real sockets on loopback (an echo server stands in for
the destination; the destination policy opens 127.0.0.0/8 for it)."""

from __future__ import annotations

import selectors
import socket
import time

import pytest

from middlebox.config import UdpConfig
from middlebox.node.destpolicy import DestinationPolicy
from middlebox.node.udp import UdpRelay
from middlebox.session import wire
from middlebox.session.datagrams import build_udp4, parse_udp4
from scheduler.datagrams import DUPLICATE, SINGLE

CLIENT = bytes([10, 1, 0, 2])
LO = bytes([127, 0, 0, 1])


@pytest.fixture
def echo():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    yield s
    s.close()


def _relay(allowed=("127.0.0.0/8",), **cfg):
    sel = selectors.DefaultSelector()
    sent, forgot, counters = [], [], {}
    relay = UdpRelay(UdpConfig(**cfg), sel, DestinationPolicy.make(allowed=allowed),
                     lambda m, c: sent.append((m, c)), forgot.append, counters)  # fmt: skip
    return relay, sel, sent, forgot, counters


def _pump(sel, until=lambda: False, wait=1.0):
    end = time.monotonic() + wait
    while time.monotonic() < end and not until():
        for key, mask in sel.select(0.05):
            key.data(mask, time.monotonic())


def _bounce(echo):
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        try:
            d, a = echo.recvfrom(65535)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        echo.sendto(d, a)
        return a
    raise AssertionError("nothing reached the destination")


def test_mapping_relays_both_ways_from_its_own_socket(echo) -> None:
    relay, sel, sent, forgot, counters = _relay()
    port = echo.getsockname()[1]
    up = build_udp4(CLIENT, 40000, LO, port, b"hello")
    relay.receive(wire.Datagram(5, 0, up), 0.0)
    relay.receive(wire.Datagram(5, 0, up), 0.0)  # the copy: not sent twice
    _bounce(echo)
    _pump(sel, lambda: bool(sent))
    ((msg, cls),) = sent
    back = parse_udp4(msg.payload, False)
    assert (msg.flow_id, msg.seq) == (5, 0) and cls == DUPLICATE
    assert back.key == (LO, port, CLIENT, 40000) and back.payload == b"hello"
    st = relay.status()
    assert st["flows"] == 1 and st["duplicates"] == 1 and counters["udp_mappings"] == 1
    relay.close()
    assert relay.status()["flows"] == 0 and forgot == [5]


def test_refused_destinations_and_the_session_cap(echo) -> None:
    relay, sel, sent, forgot, counters = _relay(allowed=(), session_flows=1)
    port = echo.getsockname()[1]
    relay.receive(wire.Datagram(1, 0, build_udp4(CLIENT, 1, LO, port, b"x")), 0.0)
    assert counters["udp_denied"] == 1 and relay.status()["flows"] == 0
    relay, sel, sent, forgot, counters = _relay(session_flows=1)
    relay.receive(wire.Datagram(1, 0, build_udp4(CLIENT, 1, LO, port, b"x")), 0.0)
    relay.receive(wire.Datagram(2, 0, build_udp4(CLIENT, 2, LO, port, b"x")), 0.0)
    assert relay.status()["refused_full"] == 1 and relay.status()["flows"] == 1
    # a flow id reused for another 5-tuple, and garbage, are dropped
    relay.receive(wire.Datagram(1, 1, build_udp4(CLIENT, 9, LO, port, b"x")), 0.0)
    relay.receive(wire.Datagram(1, 2, b"\x45\x00junk"), 0.0)
    assert relay.status()["dropped"] == {"mismatch": 1, "truncated": 1}
    relay.close()


def test_idle_mappings_are_removed_and_counted(echo) -> None:
    relay, sel, sent, forgot, counters = _relay(idle_timeout=10.0, short_timeout=10.0)
    port = echo.getsockname()[1]
    relay.receive(wire.Datagram(3, 0, build_udp4(CLIENT, 1, LO, port, b"x")), 0.0)
    sock = relay.flows.by_id[3].data
    assert relay.next_timer() == 10.0
    relay.expire(10.0)
    assert relay.status()["flows"] == 0 and counters["udp_mappings_expired"] == 1
    assert forgot == [3] and sock.fileno() == -1 and not sel.get_map()


def test_bulk_answers_become_single_class(echo) -> None:
    relay, sel, sent, forgot, counters = _relay(duplicate_rate=1000)
    port = echo.getsockname()[1]
    relay.receive(wire.Datagram(4, 0, build_udp4(CLIENT, 1, LO, port, b"x" * 1200)), 0.0)
    peer = _bounce(echo)
    for _ in range(3):
        echo.sendto(b"y" * 1200, peer)
    _pump(sel, lambda: len(sent) >= 4)
    assert [c for _, c in sent] == [SINGLE] * 4  # above duplicate_rate from the first
    assert [m.seq for m, _ in sent] == [0, 1, 2, 3]
    relay.close()
