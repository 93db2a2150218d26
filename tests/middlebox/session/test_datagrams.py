"""The datagram core: IPv4/UDP codec, de-duplication window, flow table, mux placement."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, UDP

from middlebox.session import wire
from middlebox.session.datagrams import (
    FlowTable,
    RateMeter,
    ReplayWindow,
    build_udp4,
    parse_udp4,
)
from middlebox.session.mux import DATAGRAM_QUEUE, Mux
from middlebox.session.policy import SchedulerPolicy
from scheduler.config import SchedulerConfig
from scheduler.datagrams import DUPLICATE, SINGLE

CLIENT, SERVER = bytes([10, 1, 0, 2]), bytes([198, 51, 100, 10])


def _udp(**kw) -> bytes:
    ip = {k: kw.pop(k) for k in ("flags", "frag", "len", "proto") if k in kw}
    udp = {"sport": 40000, "dport": 53, **kw}
    pkt = IP(src="10.1.0.2", dst="198.51.100.10", **ip) / UDP(**udp)
    return bytes(pkt / b"query")


def test_parse_accepts_a_good_packet_and_checks_its_checksum() -> None:
    p = parse_udp4(_udp())
    assert not isinstance(p, str)
    assert p.key == (CLIENT, 40000, SERVER, 53) and p.payload == b"query"
    assert parse_udp4(_udp() + b"\0" * 6).payload == b"query"  # link padding ignored
    assert parse_udp4(_udp(chksum=0)).payload == b"query"  # "no checksum" is allowed
    assert parse_udp4(_udp(chksum=0x1234)) == "bad_checksum"
    assert parse_udp4(_udp(chksum=0x1234), check=False).payload == b"query"


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (_udp()[:20], "truncated"),
        (_udp(flags="MF"), "fragment"),
        (_udp(frag=100), "fragment"),
        (_udp(len=9), "bad_length"),
        (_udp()[:-1], "bad_length"),
        (_udp(sport=0), "bad_port"),
        (_udp(proto=6), "not_udp"),
        (b"\x60" + _udp()[1:], "not_ipv4"),
    ],
)
def test_parse_names_why_a_packet_is_dropped(packet: bytes, reason: str) -> None:
    assert parse_udp4(packet) == reason


def test_build_makes_what_scapy_and_parse_accept() -> None:
    raw = build_udp4(SERVER, 53, CLIENT, 40000, b"answer", ident=7)
    pkt = IP(raw)
    assert pkt.src == "198.51.100.10" and pkt[UDP].dport == 40000 and pkt.flags == "DF"
    del pkt.chksum, pkt[UDP].chksum
    again = IP(bytes(pkt))
    assert (again.chksum, again[UDP].chksum) == (IP(raw).chksum, IP(raw)[UDP].chksum)
    assert parse_udp4(raw).payload == b"answer"
    # offloaded: the field holds the pseudo-header sum for the kernel to finish
    part = build_udp4(SERVER, 53, CLIENT, 40000, b"answer", udp_checksum=False)
    assert struct.unpack_from("!H", part, 26)[0] != IP(raw)[UDP].chksum


def test_replay_window_drops_copies_and_stale_but_never_waits() -> None:
    w = ReplayWindow(8)
    assert [w.accept(s) for s in (0, 2, 1, 1, 2)] == [None, None, None, "duplicate", "duplicate"]
    assert w.accept(100) is None  # a jump: delivered at once
    assert w.accept(92) == "stale" and w.accept(93) is None and w.accept(93) == "duplicate"


def test_flow_table_caps_expiry_and_dedup_counters() -> None:
    t = FlowTable(max_flows=3, max_per_source=2, idle_timeout=100.0, short_timeout=10.0)
    a = t.open(("a", 1), "a", 53, 0.0)
    b = t.open(("a", 2), "a", 53, 0.0)
    assert a is not None and b is not None and a.flow_id != b.flow_id
    assert t.open(("a", 3), "a", 53, 0.0) is None  # per source
    c = t.open(("b", 1), "b", 443, 0.0)
    assert t.open(("c", 1), "c", 443, 0.0) is None  # table full
    assert (t.counters.refused_source, t.counters.refused_full) == (1, 1)
    assert t.received(a, 0) and not t.received(a, 0) and t.counters.duplicates == 1
    c.packets_out = 5  # a flow of many packets keeps the long timeout
    assert {f.key for f in t.expire(10.0)} == {("a", 1), ("a", 2)}  # short: one query each
    assert t.expire(99.0) == [] and [f.key for f in t.expire(100.0)] == [("b", 1)]
    assert t.counters.expired == 3 and len(t) == 0 and t.status()["sources"] == 0


def test_rate_meter_reports_the_last_whole_second() -> None:
    m = RateMeter()
    assert m.add(100, 0.1) == 100 and m.add(100, 0.9) == 200
    assert m.add(10, 1.2) == 200  # last second's 200 bytes
    assert m.add(10, 5.0) == 10  # idle seconds in between: 0


def _mux(policy) -> Mux:
    mux = Mux("gateway", policy=policy)
    for pid in (1, 2, 3):
        mux.path_up(pid, 0.0, srtt=0.01 * pid)
    return mux


def test_mux_places_datagrams_by_class_through_the_adapter() -> None:
    policy = SchedulerPolicy(SchedulerConfig())
    mux = _mux(policy)
    mux.send_datagram(wire.Datagram(7, 0, b"dns"), DUPLICATE)
    mux.send_datagram(wire.Datagram(8, 0, b"quic"), SINGLE)
    out = mux.messages_to_send(0.0)
    dup = sorted(pid for pid, m in out if m.flow_id == 7)
    single = [pid for pid, m in out if m.flow_id == 8]
    assert dup == [1, 2] and single == [1]
    assert mux.counters["datagrams_sent"] == 3
    mux.path_down(1, 1.0)  # the single flow moves once its path is gone
    mux.send_datagram(wire.Datagram(8, 1, b"quic"), SINGLE)
    assert [pid for pid, _ in mux.messages_to_send(1.0)] == [2]
    assert policy.placer.moves == 1


def test_mux_drops_datagrams_without_a_path_and_beyond_its_queue() -> None:
    mux = Mux("gateway")
    for i in range(DATAGRAM_QUEUE + 5):
        mux.send_datagram(wire.Datagram(1, i, b"x"), SINGLE)
    assert mux.messages_to_send(0.0) == []
    assert mux.counters["datagrams_overflow"] == 5
    assert mux.counters["datagrams_no_path"] == DATAGRAM_QUEUE
