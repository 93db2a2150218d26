"""Parsing and building of IPv4/TCP checked against scapy, and strict validation."""

from __future__ import annotations

import os
import random

import pytest
from scapy.layers.inet import IP, TCP

from middlebox.tcp import options as tcpopt
from middlebox.tcp.checksum import checksum, verify
from middlebox.tcp.constants import ACK, FIN, PSH, RST, SYN
from middlebox.tcp.packet import (
    CSUM_PARTIAL,
    ParseStats,
    Segment,
    build_ipv4,
    parse_ipv4,
)

A = bytes([10, 0, 0, 1])
B = bytes([192, 0, 2, 7])


def _ref_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@pytest.mark.parametrize("n", [0, 1, 2, 3, 39, 40, 1459, 2047, 2049, 4097, 65535])
def test_checksum_matches_reference(n: int) -> None:
    rng = random.Random(n)
    for _ in range(5):
        data = bytes(rng.getrandbits(8) for _ in range(n))
        ref = _ref_checksum(data)
        got = checksum(data)
        # 0 and 0xFFFF are the two zeros of one's complement; Linux sends 0.
        assert got == ref or {got, ref} == {0, 0xFFFF}
        padded = data + (b"\0" if n % 2 else b"")
        assert verify(padded + got.to_bytes(2, "big"))


def test_checksum_of_all_ones_words() -> None:
    assert checksum(b"\xff\xff" * 10) == 0
    assert checksum(b"\xff\xff" * 3000) == 0


def _scapy_frame(**kw) -> bytes:
    payload = kw.pop("payload", b"")
    options = kw.pop("options", [])
    return bytes(IP(src="10.0.0.1", dst="192.0.2.7") / TCP(options=options, **kw) / payload)


def test_parse_scapy_syn_with_all_options() -> None:
    raw = _scapy_frame(
        sport=40000,
        dport=80,
        flags="S",
        seq=123456,
        window=64240,
        options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (111, 0)), ("WScale", 7)],
    )
    st = ParseStats()
    seg = parse_ipv4(raw, 0, st)
    assert seg is not None and st.accepted == 1
    assert seg.key == (A, 40000, B, 80)
    assert (seg.seq, seg.flags, seg.window) == (123456, SYN, 64240)
    assert seg.opts.mss == 1460 and seg.opts.wscale == 7 and seg.opts.sack_permitted
    assert (seg.opts.tsval, seg.opts.tsecr) == (111, 0)


def test_parse_data_with_sack_and_timestamps() -> None:
    raw = _scapy_frame(
        sport=1,
        dport=2,
        flags="PA",
        seq=5,
        ack=9,
        payload=b"hello",
        options=[
            ("NOP", None),
            ("NOP", None),
            ("Timestamp", (7, 8)),
            ("SAck", (100, 200, 300, 400)),
        ],
    )
    seg = parse_ipv4(raw)
    assert seg is not None
    assert bytes(seg.payload) == b"hello"
    assert seg.opts.sack == ((100, 200), (300, 400))
    assert (seg.opts.tsval, seg.opts.tsecr) == (7, 8)


def test_timestamp_fast_path_equals_generic_parser() -> None:
    raw = _scapy_frame(
        sport=1, dport=2, flags="A", options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]
    )
    seg = parse_ipv4(raw)
    assert seg is not None and (seg.opts.tsval, seg.opts.tsecr) == (1, 2)
    assert tcpopt.parse(raw[40:52]).tsval == 1


@pytest.mark.parametrize("partial", [False, True])
def test_build_is_valid_for_scapy(partial: bool) -> None:
    opts = tcpopt.build((1000, 2000), [(10, 20), (30, 40)])
    payload = os.urandom(3001)
    seg = Segment(B, A, 80, 40000, 77, 88, ACK | PSH, 500, payload, raw_options=opts)
    raw = build_ipv4(seg, CSUM_PARTIAL if partial else "full", ident=5)
    pkt = IP(raw)
    assert pkt[TCP].seq == 77 and pkt[TCP].ack == 88 and bytes(pkt[TCP].payload) == payload
    assert dict(pkt[TCP].options)["Timestamp"] == (1000, 2000)
    assert dict(pkt[TCP].options)["SAck"] == (10, 20, 30, 40)
    ip_ok = IP(bytes(pkt)).chksum
    pkt2 = IP(raw)
    del pkt2.chksum
    assert IP(bytes(pkt2)).chksum == ip_ok == pkt.chksum
    ref = IP(raw)
    del ref[TCP].chksum
    full = IP(bytes(ref))[TCP].chksum
    if partial:
        assert pkt[TCP].chksum != full  # left for the kernel to finish
    else:
        assert pkt[TCP].chksum == full
        assert parse_ipv4(raw) is not None


def test_syn_ack_options_parse_back() -> None:
    for sack in (False, True):
        for ts in (None, (5, 6)):
            for ws in (None, 7):
                raw = tcpopt.build_syn_ack(1400, ws, sack, ts)
                assert len(raw) % 4 == 0
                o = tcpopt.parse(raw)
                assert o.mss == 1400 and o.wscale == ws and o.sack_permitted == sack
                assert (o.tsval, o.tsecr) == (ts or (None, None))


def _good() -> bytes:
    return _scapy_frame(sport=1, dport=2, flags="A", seq=1, ack=1, payload=b"x" * 10)


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda b: b[:19], "truncated_ip"),
        (lambda b: b"\x65" + b[1:], "not_ipv4"),
        (lambda b: b[:2] + (9999).to_bytes(2, "big") + b[4:], "bad_ip_length"),
        (lambda b: b[:2] + (10).to_bytes(2, "big") + b[4:], "bad_ip_length"),
        (lambda b: b[:10] + bytes([b[10] ^ 1]) + b[11:], "bad_ip_checksum"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]), "bad_tcp_checksum"),
    ],
)
def test_invalid_frames_are_dropped_and_counted(mutate, reason: str) -> None:
    st = ParseStats()
    assert parse_ipv4(mutate(_good()), 0, st) is None
    assert st.dropped[reason] == 1 and st.accepted == 0


@pytest.mark.parametrize("flags", ["SF", "SR", "F", "", "P", "SRF"])
def test_impossible_flags_are_dropped(flags: str) -> None:
    st = ParseStats()
    assert parse_ipv4(_scapy_frame(sport=1, dport=2, flags=flags), 0, st) is None
    assert st.dropped["bad_flags"] == 1


def test_fragments_and_other_protocols_dropped() -> None:
    st = ParseStats()
    frag = bytes(IP(src="10.0.0.1", dst="192.0.2.7", flags="MF") / TCP(sport=1, dport=2))
    assert parse_ipv4(frag, 0, st) is None
    udp = bytes(IP(src="10.0.0.1", dst="192.0.2.7", proto=17) / (b"\0" * 20))
    assert parse_ipv4(udp, 0, st) is None
    assert st.dropped["fragment"] == 1 and st.dropped["not_tcp"] == 1


def test_bad_option_lengths_dropped() -> None:
    st = ParseStats()
    for bad in (b"\x02\x09\x05\xb4", b"\x01\x01\x01\x05", b"\x05\x06\0\0", b"\x08\x04\0\0"):
        seg = Segment(A, B, 1, 2, 0, 0, ACK, 0, raw_options=bad)
        assert parse_ipv4(build_ipv4(seg), 0, st) is None
    assert st.dropped["bad_option"] == 4


def test_unverified_checksum_mode_accepts_pending_checksum() -> None:
    bad = bytearray(_good())
    bad[36] ^= 0xFF  # TCP checksum field: pending in a locally generated GRO segment
    assert parse_ipv4(bytes(bad)) is None
    assert parse_ipv4(bytes(bad), verify_tcp_checksum=False) is not None


def test_random_bytes_never_raise() -> None:
    rng = random.Random(1)
    st = ParseStats()
    good = _good()
    for i in range(3000):
        if i % 2:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80)))
        else:
            data = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            data = bytes(data[: rng.randrange(len(data) + 1)])
        parse_ipv4(data, 0, st)
    assert st.accepted + st.total_dropped == 3000


def test_flags_helpers() -> None:
    seg = Segment(A, B, 1, 2, 0, 0, SYN | ACK, 0)
    assert seg.seg_len() == 1
    seg = Segment(A, B, 1, 2, 0, 0, FIN | ACK, 0, b"abc")
    assert seg.seg_len() == 4
    assert RST
