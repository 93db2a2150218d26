"""The wire codec: round trips, chunking, strictness, memory bound, zero copy."""

from __future__ import annotations

import ipaddress
import re
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from middlebox import config
from middlebox.session import wire
from middlebox.session.wire import (
    HEADER_SIZE,
    MAGIC,
    U32,
    U64,
    VERSION,
    Close,
    CloseReason,
    Context,
    Data,
    DataAck,
    Datagram,
    Decoder,
    Drain,
    Fin,
    Hello,
    HelloAck,
    Open,
    OpenFail,
    OpenFailReason,
    OpenOk,
    Probe,
    ProbeAck,
    ProtocolError,
    Rst,
    RstReason,
    decode_all,
    encode,
    encode_header,
)

MAX = 4096
ROOT = Path(__file__).resolve().parents[3]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ------------------------------------------------------------------------------

u32 = st.integers(0, U32)
u64 = st.integers(0, U64)
names = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.",
    min_size=1,
    max_size=64,
)
any_address = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))
address_lists = st.lists(any_address, max_size=wire.MAX_ADDRESSES).map(tuple)
address_pair = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4)),
    st.tuples(st.ip_addresses(v=6), st.ip_addresses(v=6)),
)
ports = st.integers(1, 65535)
payloads = st.binary(min_size=1, max_size=2000)


@st.composite
def hellos(draw: st.DrawFn) -> Hello:
    vmin = draw(st.integers(1, 255))
    return Hello(
        gateway_id=draw(names),
        session=draw(u64),
        carrier=draw(names),
        carrier_type=draw(st.sampled_from(sorted(wire.CARRIER_TYPES))),
        path_index=draw(st.integers(0, 255)),
        addresses=draw(address_lists),
        max_payload=draw(st.integers(wire.CONTROL_BODY_MAX, U32)),
        min_version=vmin,
        max_version=draw(st.integers(vmin, 255)),
    )


@st.composite
def contexts(draw: st.DrawFn) -> Context:
    position = draw(
        st.none()
        | st.tuples(
            st.integers(-900_000_000, 900_000_000), st.integers(-1_800_000_000, 1_800_000_000)
        )
    )
    lat, lon = (None, None) if position is None else (position[0] / 1e7, position[1] / 1e7)
    rsrp = draw(st.none() | st.integers(-20000, 0).map(lambda k: k / 100))
    return Context(draw(names), draw(u64), draw(u64), rsrp, lat, lon)


@st.composite
def opens(draw: st.DrawFn) -> Open:
    src, dst = draw(address_pair)
    return Open(
        draw(u32),
        src,
        draw(ports),
        dst,
        draw(ports),
        draw(st.none() | st.integers(1, 65535)),
        draw(st.none() | st.integers(0, wire.MAX_WSCALE)),
        draw(st.booleans()),
        draw(st.booleans()),
    )


@st.composite
def data_acks(draw: st.DrawFn) -> DataAck:
    ack = draw(st.integers(0, U64 - 1))
    edges = sorted(draw(st.lists(st.integers(ack + 1, U64), unique=True, max_size=64)))
    edges = edges[: len(edges) // 2 * 2]
    ranges = tuple(zip(edges[::2], edges[1::2], strict=True))
    return DataAck(draw(u32), ack, draw(u32), ranges)


@st.composite
def datas(draw: st.DrawFn, cls: type = Data) -> Data | Datagram:
    payload = draw(payloads)
    return cls(draw(u32), draw(st.integers(0, U64 + 1 - len(payload))), payload)


STRATEGIES = {
    Hello: hellos(),
    HelloAck: st.builds(HelloAck, names, u32, address_lists,
                        st.integers(wire.CONTROL_BODY_MAX, U32), st.integers(1, 255)),
    Probe: st.builds(Probe, u32, u64),
    ProbeAck: u64.flatmap(lambda r: st.builds(ProbeAck, u32, u64, st.just(r), st.integers(r, U64))),
    Context: contexts(),
    Close: st.builds(Close, st.sampled_from(CloseReason), st.text(max_size=60)),
    Drain: st.builds(Drain, st.booleans()),
    Open: opens(),
    OpenOk: st.builds(OpenOk, u32),
    OpenFail: st.builds(OpenFail, u32, st.sampled_from(OpenFailReason)),
    Data: datas(),
    DataAck: data_acks(),
    Fin: st.builds(Fin, u32, st.integers(0, U64 - 1)),
    Rst: st.builds(Rst, u32, st.sampled_from(RstReason)),
    Datagram: datas(Datagram),
}  # fmt: skip
messages = st.one_of(*STRATEGIES.values())


def feed_in_pieces(dec: Decoder, stream: bytes, cuts: list[int]) -> list[wire.Message]:
    out: list[wire.Message] = []
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        dec.feed(stream[a:b])
        assert dec.buffered <= HEADER_SIZE + dec.max_payload
        out.extend(dec)
    return out


# -- round trips and chunking ----------------------------------------------------------------


@pytest.mark.parametrize("cls", list(STRATEGIES), ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_message_round_trips(cls: type, data: st.DataObject) -> None:
    msg = data.draw(STRATEGIES[cls])
    blob = encode(msg)
    (back,) = decode_all(blob, MAX)
    assert type(back) is type(msg)
    assert back == msg
    assert encode(back) == blob
    head = encode_header(msg)
    payload = getattr(msg, "payload", b"")
    assert head + payload == blob
    assert int.from_bytes(blob[4:8], "big") == len(blob) - HEADER_SIZE


def test_strategies_cover_every_message_type() -> None:
    assert set(STRATEGIES) == set(wire.MESSAGE_TYPES.values())


@SETTINGS
@given(st.lists(messages, min_size=1, max_size=12), st.lists(st.integers(0, 1 << 20), max_size=30))
def test_arbitrary_chunking_gives_the_same_messages(msgs: list, cuts: list[int]) -> None:
    stream = b"".join(encode(m) for m in msgs)
    whole = decode_all(stream, MAX)
    assert whole == msgs
    dec = Decoder(MAX)
    assert feed_in_pieces(dec, stream, cuts) == msgs
    dec.eof()
    assert dec.buffered == 0


def test_one_byte_at_a_time() -> None:
    msgs = [
        Hello("gw", 1, "carrier-a", "5g", 0, ("10.1.0.2", "2001:db8::2")),
        Data(1, 0, b"x" * 3000),
        DataAck(1, 3000, 65536, ((4000, 5000),)),
        Close(CloseReason.SHUTDOWN, "bye"),
    ]
    stream = b"".join(encode(m) for m in msgs)
    dec = Decoder(MAX)
    out = []
    for i in range(len(stream)):
        dec.feed(stream[i : i + 1])
        out.extend(dec)
    assert out == msgs


# -- zero copy and payload validity ------------------------------------------------------------


def test_payload_inside_one_chunk_is_a_view_not_a_copy() -> None:
    chunk = encode(Data(3, 10, b"abc" * 1000)) + encode(Datagram(1, 2, b"zz"))
    dec = Decoder(MAX)
    dec.feed(chunk)
    data, dgram = list(dec)
    assert isinstance(data.payload, memoryview) and data.payload.obj is chunk
    assert dgram.payload.obj is chunk
    assert data.payload == b"abc" * 1000 and dgram.payload == b"zz"


def test_payloads_cut_across_chunks_stay_valid_after_later_feeds() -> None:
    first, second = bytes(range(256)) * 8, b"\xff" * 2048
    stream = encode(Data(1, 0, first)) + encode(Data(1, len(first), second))
    dec = Decoder(MAX)
    out = []
    for i in range(0, len(stream), 100):  # every message is cut many times
        dec.feed(bytearray(stream[i : i + 100]))
        out.extend(dec)
    assert [bytes(m.payload) for m in out] == [first, second]
    # Each cut message got its own buffer: the two payloads do not share storage.
    assert out[0].payload.obj is not out[1].payload.obj


# -- strictness -----------------------------------------------------------------------------


def header(mtype: int, length: int, magic: int = MAGIC, version: int = VERSION) -> bytes:
    return wire._HDR.pack(magic, version, mtype, length)


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (header(wire.T_PROBE, 12, magic=0x4854) + bytes(12), "bad magic"),
        (header(wire.T_PROBE, 12, version=2) + bytes(12), "unsupported protocol version 2"),
        (header(0x7F, 0), "unknown message type 0x7f"),
        (header(wire.T_PROBE, 11) + bytes(11), "PROBE: body length 11"),
        (header(wire.T_DATA, 12) + bytes(12), "DATA: body length 12"),
        (header(wire.T_DATA, MAX + 1), f"DATA: body length {MAX + 1} outside 13..{MAX}"),
        (header(wire.T_HELLO_ACK, 2000), "HELLO_ACK: body length 2000"),
        (header(wire.T_RST, 5) + bytes(4) + b"\x63", "RST reason: unknown code 99"),
        (header(wire.T_CLOSE, 3) + b"\x00\x01\xff", "CLOSE: text is not UTF-8"),
        (header(wire.T_CLOSE, 4) + b"\x00\x01ab", "CLOSE: 1 unexpected trailing bytes"),
        (header(wire.T_CLOSE, 3) + b"\x00\x05a", "CLOSE: body too short"),
        (header(wire.T_DATA_ACK, 24) + bytes(24), "whole number of ranges"),
        (header(wire.T_DATA, 13) + b"\0\0\0\1" + b"\xff" * 8 + b"ab"[:1], None),
    ],
)
def test_malformed_input_raises_protocol_error(blob: bytes, reason: str | None) -> None:
    dec = Decoder(MAX)
    if reason is None:  # a control: the last case is valid (ends exactly at 2**64)
        dec.feed(blob)
        assert len(list(dec)) == 1
        return
    with pytest.raises(ProtocolError, match=re.escape(reason)):
        dec.feed(blob)
    assert dec.error is not None and reason in dec.error


@pytest.mark.parametrize(
    "body",
    [
        # OPEN: undefined flag bit, absent MSS with a value, bad family, IPv6 length for v4
        wire._OPEN.pack(1, 4, 0x10, 0, 0, 1, 2) + bytes(8),
        wire._OPEN.pack(1, 4, 0, 1460, 0, 1, 2) + bytes(8),
        wire._OPEN.pack(1, 5, 0, 0, 0, 1, 2) + bytes(8),
        wire._OPEN.pack(1, 4, 0, 0, 0, 1, 2) + bytes(32),
        wire._OPEN.pack(1, 4, 0, 0, 0, 0, 2) + bytes(8),  # port 0
        wire._OPEN.pack(1, 4, wire.OPT_WSCALE, 0, 15, 1, 2) + bytes(8),  # wscale > 14
    ],
)
def test_bad_open_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError, match="OPEN"):
        decode_all(header(wire.T_OPEN, len(body)) + body, MAX)


def test_bad_context_and_data_ack_bodies_are_refused() -> None:
    ctx = wire._CONTEXT.pack(1, 2, 5, 0, 0, 0) + b"\x01a"  # position absent, lat set
    with pytest.raises(ProtocolError, match="position absent"):
        decode_all(header(wire.T_CONTEXT, len(ctx)) + ctx, MAX)
    ack = wire._DATA_ACK.pack(1, 100, 50) + wire._RANGE.pack(50, 60)  # range touches ack
    with pytest.raises(ProtocolError, match="ascend above ack"):
        decode_all(header(wire.T_DATA_ACK, len(ack)) + ack, MAX)
    data = header(wire.T_DATA, 14) + wire._DATA_FIXED.pack(1, U64) + b"ab"  # ends past 2**64
    with pytest.raises(ProtocolError, match="beyond 2\\*\\*64"):
        decode_all(data, MAX)


def test_after_an_error_earlier_messages_remain_and_input_is_refused() -> None:
    good = encode(Probe(1, 2))
    dec = Decoder(MAX)
    with pytest.raises(ProtocolError, match="bad magic"):
        dec.feed(good + b"GET / HTTP/1.1\r\n")
    assert list(dec) == [Probe(1, 2)]
    with pytest.raises(ProtocolError, match="closed by an earlier error: bad magic"):
        dec.feed(good)
    assert dec.buffered == 0


def test_eof_inside_a_message_is_an_error() -> None:
    dec = Decoder(MAX)
    dec.feed(encode(Probe(1, 2))[:-1])
    with pytest.raises(ProtocolError, match="stream ended inside a message"):
        dec.eof()
    clean = Decoder(MAX)
    clean.feed(encode(Probe(1, 2)))
    clean.eof()


@pytest.mark.parametrize(
    "make",
    [
        lambda: Hello("bad name", 1, "c", "lte"),
        lambda: Hello("gw", 1, "c", "4g"),
        lambda: Hello("gw", 1, "c", "lte", addresses=["10.0.0.1"] * 17),
        lambda: Hello("gw", 1, "c", "lte", min_version=2, max_version=1),
        lambda: Open(1, "10.0.0.1", 1, "2001:db8::1", 2),
        lambda: Open(1, "not-an-ip", 1, "10.0.0.2", 2),
        lambda: DataAck(1, 10, 0, ((20, 30), (25, 40))),
        lambda: DataAck(1, 10, 0, ((20, 20),)),
        lambda: DataAck(1, 10, 1 << 32),
        lambda: Context("c", 1, 1, rsrp_dbm=10.0),
        lambda: Context("c", 1, 1, lat=91.0, lon=0.0),
        lambda: Context("c", 1, 1, lat=1.0),
        lambda: Close(CloseReason.NORMAL, "x" * 256),
        lambda: Close(42),
        lambda: ProbeAck(1, 1, recv_ns=10, sent_ns=9),
        lambda: Fin(1, -1),
    ],
)
def test_invalid_messages_cannot_be_built(make) -> None:
    with pytest.raises(ProtocolError):
        make()


@pytest.mark.parametrize(
    "msg",
    [
        Data(1, 0, b""),
        Data(1 << 32, 0, b"x"),
        Data(1, U64, b"xy"),
        Datagram(-1, 0, b"x"),
    ],
)
def test_invalid_data_is_refused_by_the_encoder(msg: wire.Message) -> None:
    with pytest.raises(ProtocolError):
        encode(msg)


def test_encoder_respects_the_peers_limit() -> None:
    msg = Data(1, 0, bytes(2000))
    assert wire.max_data_payload(2000 + wire.DATA_FIXED) == 2000
    assert len(encode(msg, max_payload=2000 + wire.DATA_FIXED)) == 2000 + wire.DATA_OVERHEAD
    with pytest.raises(ProtocolError, match="exceeds the peer's 2000"):
        encode_header(msg, max_payload=2000)


def test_decoder_limit_is_the_body_limit() -> None:
    dec = Decoder(MAX)
    n = MAX - wire.DATA_FIXED
    dec.feed(encode(Data(1, 0, bytes(n))))
    assert [m.payload.nbytes for m in dec] == [n]
    with pytest.raises(ValueError):
        Decoder(wire.CONTROL_BODY_MAX - 1)


# -- hostile streams: only ProtocolError, bounded memory -------------------------------------


def _feed_hostile(dec: Decoder, stream: bytes, cuts: list[int]) -> None:
    try:
        feed_in_pieces(dec, stream, cuts)
    except ProtocolError as e:
        assert e.reason and dec.error == e.reason
        assert dec.buffered == 0
        with pytest.raises(ProtocolError):
            dec.feed(b"\x00")
    assert dec.buffered <= HEADER_SIZE + dec.max_payload


@pytest.mark.timeout(120)
@SETTINGS
@given(st.binary(max_size=3000), st.lists(st.integers(0, 1 << 16), max_size=20))
def test_random_bytes_raise_only_protocol_error(stream: bytes, cuts: list[int]) -> None:
    _feed_hostile(Decoder(MAX), stream, cuts)


@pytest.mark.timeout(120)
@SETTINGS
@given(st.binary(max_size=200), st.lists(st.integers(0, 1 << 16), max_size=20))
def test_random_bodies_behind_valid_headers_raise_only_protocol_error(
    body: bytes, cuts: list[int]
) -> None:
    # Random bytes rarely pass the magic check; put them behind every valid header.
    for mtype in wire.MESSAGE_TYPES:
        _feed_hostile(Decoder(MAX), header(mtype, len(body)) + body, cuts)


@pytest.mark.timeout(120)
@SETTINGS
@given(
    st.lists(messages, min_size=1, max_size=6),
    st.lists(
        st.tuples(st.integers(0, 1 << 20), st.sampled_from("fid"), st.integers(0, 255)),
        min_size=1,
        max_size=8,
    ),  # fmt: skip
    st.lists(st.integers(0, 1 << 16), max_size=20),
)
def test_mutated_streams_raise_only_protocol_error(
    msgs: list, mutations: list, cuts: list[int]
) -> None:
    stream = bytearray(b"".join(encode(m) for m in msgs))
    for pos, op, value in mutations:
        i = pos % (len(stream) + 1)
        if op == "f" and i < len(stream):
            stream[i] ^= value or 1
        elif op == "i":
            stream[i:i] = bytes((value,))
        elif i < len(stream):
            del stream[i]
    _feed_hostile(Decoder(MAX), bytes(stream), cuts)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(sorted(wire.MESSAGE_TYPES)),
    st.integers(0, U32),
    st.binary(max_size=300),
    st.lists(st.integers(0, 1 << 16), max_size=10),
)
def test_any_announced_length_allocates_at_most_the_limit(
    mtype: int, length: int, body: bytes, cuts: list[int]
) -> None:
    dec = Decoder(MAX)
    tracemalloc.start()
    try:
        _feed_hostile(dec, header(mtype, length) + body, cuts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < HEADER_SIZE + MAX + (16 << 10)  # the body buffer plus small objects


def test_huge_announced_length_allocates_nothing() -> None:
    dec = Decoder(1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="body length"):
            dec.feed(header(wire.T_DATA, U32))
        dec2 = Decoder(1 << 20)
        dec2.feed(header(wire.T_DATA, 1 << 20) + b"x")  # legal: one buffer of the body
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dec2.buffered == (1 << 20)
    assert peak < (1 << 20) + (64 << 10)


# -- agreement with configuration and documentation ------------------------------------------


def test_carrier_types_match_the_configuration() -> None:
    assert set(wire.CARRIER_TYPES) == set(config.CARRIER_TYPES)
    assert config.WireConfig().max_payload >= wire.CONTROL_BODY_MAX
    Decoder(config.WireConfig().max_payload)  # the default is accepted


def test_protocol_doc_lists_every_message_type_with_its_number() -> None:
    doc = (ROOT / "docs" / "PROTOCOL.md").read_text()
    for mtype, cls in wire.MESSAGE_TYPES.items():
        name = wire._name(cls)
        assert re.search(rf"^#+ .*`{name}`.*0x{mtype:02x}", doc, re.M), name
    assert f"{MAGIC:#06x}" in doc and f"version {VERSION}" in doc.lower()


def test_addresses_are_normalised_to_ipaddress_objects() -> None:
    hello = Hello("gw", 1, "c", "lte", addresses=["10.0.0.1"])
    assert hello.addresses == (ipaddress.ip_address("10.0.0.1"),)


def test_codec_benchmark_runs() -> None:
    from bench import codec

    rows = codec.run(size=1024, count=50, chunk=4096, repeat=1)
    assert len(rows) == 7 and all(seconds > 0 and n == 50 for _, seconds, n in rows)


def test_sendmsg_with_separate_payload_over_a_socketpair() -> None:
    import socket

    msgs = [Data(9, i * 5000, bytes([i]) * 5000) for i in range(20)] + [Fin(9, 100000)]
    a, b = socket.socketpair()
    try:
        a.settimeout(5)
        b.settimeout(5)
        dec = Decoder(MAX * 2)
        out: list[wire.Message] = []
        for m in msgs:
            parts = [encode_header(m, dec.max_payload)]
            if isinstance(m, Data):
                parts.append(m.payload)
            assert a.sendmsg(parts) == sum(len(p) for p in parts)
            while dec.buffered or len(out) < msgs.index(m) + 1:
                dec.feed(b.recv(65536))
                out.extend(dec)
        assert out == msgs
    finally:
        a.close()
        b.close()
