"""The wire protocol between gateway and node: messages, encoder, incremental decoder.

Sans-I/O: nothing here touches a socket or a clock. A sender turns a message into bytes
with :func:`encode` (or :func:`encode_header` plus the message's ``payload``, so that a
16 KiB DATA payload goes to ``sendmsg([head, payload])`` without being concatenated);
a receiver feeds whatever the socket returned to a :class:`Decoder` and iterates the
messages it yields. ``docs/PROTOCOL.md`` is the reference for the byte layout; every
number it mentions is a constant in this module.

Framing: an 8-byte header ``magic u16 | version u8 | type u8 | length u32`` (network
byte order) followed by ``length`` bytes of body. The body limit (``max_payload``) is the
caller's (the configuration's ``wire.max_payload``); a decoder refuses a header that
announces more before it allocates anything, so a peer cannot make it buffer more than
``HEADER_SIZE + max_payload`` bytes of its own.

Strictness: any malformed input (bad magic, unknown version or type, a length that does
not fit the type, trailing or missing bytes, out-of-range values, undefined flag bits,
invalid UTF-8) raises :class:`ProtocolError` and nothing else; the decoder then refuses
further input, because after one framing error nothing later on that path can be trusted.
The same checks run when a message object is built, so an invalid message cannot be
encoded either.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar

# -- protocol constants (the one place) ----------------------------------------------------

MAGIC = 0x4D50  # "MP"
VERSION = 1
SUPPORTED_VERSIONS = frozenset({VERSION})
HEADER_SIZE = 8
_HDR = struct.Struct("!HBBI")

# Message type numbers: 0x0_ path level, 0x1_ connection level, 0x2_ datagrams.
T_HELLO = 0x01
T_HELLO_ACK = 0x02
T_PROBE = 0x03
T_PROBE_ACK = 0x04
T_CONTEXT = 0x05
T_CLOSE = 0x06
T_DRAIN = 0x07  # node to gateway: move new connections to another node (docs/PROTOCOL.md)
T_OPEN = 0x10
T_OPEN_OK = 0x11
T_OPEN_FAIL = 0x12
T_DATA = 0x13
T_DATA_ACK = 0x14
T_FIN = 0x15
T_RST = 0x16
T_DATAGRAM = 0x20

#: Largest body of any message without a payload; also the smallest usable max_payload.
CONTROL_BODY_MAX = 1024
#: DATA body before the payload: conn_id u32, seq u64.
DATA_FIXED = 12
#: DATAGRAM body before the payload: flow_id u32, seq u64.
DATAGRAM_FIXED = 12
#: Bytes a DATA message adds to its payload on the wire.
DATA_OVERHEAD = HEADER_SIZE + DATA_FIXED
MAX_NAME = 64  # gateway id, node id, carrier name: 1..64 of [A-Za-z0-9._-]
MAX_ADDRESSES = 16  # per HELLO / HELLO_ACK
MAX_SACK_RANGES = 32  # per DATA_ACK
MAX_DETAIL = 255  # bytes of UTF-8 in CLOSE's detail text
MAX_WSCALE = 14  # RFC 7323
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1

#: Carrier (access technology) codes sent in HELLO; names match the configuration's.
CARRIER_TYPES: dict[str, int] = {
    "other": 0,
    "lte": 1,
    "5g": 2,
    "3g": 3,
    "satellite": 4,
    "wifi": 5,
    "ethernet": 6,
}
_CARRIER_NAMES = {code: name for name, code in CARRIER_TYPES.items()}

#: CONTEXT flag bits.
CTX_RSRP = 0x01
CTX_POSITION = 0x02
#: OPEN flag bits (the client's TCP options from its SYN).
OPT_SACK_PERMITTED = 0x01
OPT_TIMESTAMPS = 0x02
OPT_MSS = 0x04
OPT_WSCALE = 0x08

RSRP_SCALE = 100  # RSRP on the wire: signed 16-bit hundredths of a dBm
RSRP_RANGE = (-200.0, 0.0)
POSITION_SCALE = 10_000_000  # latitude/longitude on the wire: signed 32-bit 1e-7 degrees


class CloseReason(IntEnum):
    """Why a path is closed (CLOSE)."""

    NORMAL = 0
    SHUTDOWN = 1
    PROTOCOL_ERROR = 2
    VERSION_MISMATCH = 3
    AUTH_FAILED = 4
    IDLE_TIMEOUT = 5
    CARRIER_DOWN = 6
    INTERNAL_ERROR = 7


class OpenFailReason(IntEnum):
    """Why the node could not open a connection to the original destination (OPEN_FAIL)."""

    REFUSED = 0  # the destination answered RST
    TIMEOUT = 1  # no answer within node.connect_timeout
    UNREACHABLE = 2  # network or host unreachable
    DENIED = 3  # destination not allowed (private range, policy)
    NO_RESOURCES = 4  # node out of connections or memory
    DUPLICATE_ID = 5  # conn_id already in use in this session
    INTERNAL_ERROR = 6


class RstReason(IntEnum):
    """Why a connection is aborted (RST)."""

    CLIENT_RESET = 0  # the passenger's device sent RST
    SERVER_RESET = 1  # the destination sent RST
    TIMEOUT = 2  # idle or retransmission timeout
    PROTOCOL_ERROR = 3  # the peer broke connection-level rules (sequence beyond window...)
    BUFFER_OVERFLOW = 4  # more data than the advertised window
    PATHS_LOST = 5  # no path left to carry the connection
    SHUTDOWN = 6  # gateway or node is stopping
    UNKNOWN_CONNECTION = 7  # message for a conn_id the receiver does not know
    INTERNAL_ERROR = 8


class ProtocolError(Exception):
    """Malformed or invalid protocol data; ``reason`` says what, for logs and CLOSE."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- validation helpers --------------------------------------------------------------------

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _fail(reason: str) -> None:
    raise ProtocolError(reason)


def _check_int(what: str, value: object, lo: int, hi: int) -> None:
    if type(value) is not int or not lo <= value <= hi:
        _fail(f"{what}: must be an integer in {lo}..{hi} (got {value!r})")


def name_error(value: object) -> str | None:
    """Why ``value`` is not a valid name (gateway id, node id, carrier name), or None.

    The one rule for names: HELLO and HELLO_ACK refuse what it refuses, and the
    configuration and ``mpproxy pki`` use it too, so nothing is accepted at start that
    the peer would refuse on every dial."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_NAME
        or not _NAME_CHARS.issuperset(value)
    ):
        return f"must be 1..{MAX_NAME} characters of [A-Za-z0-9._-] (got {value!r:.80})"
    return None


def _check_name(what: str, value: object) -> None:
    if (err := name_error(value)) is not None:
        _fail(f"{what}: {err}")


def _to_address(what: str, value: object) -> Address:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    try:
        return ipaddress.ip_address(value)  # type: ignore[arg-type]
    except ValueError:
        raise ProtocolError(f"{what}: not an IP address ({value!r})") from None


def _to_addresses(what: str, values: object) -> tuple[Address, ...]:
    if isinstance(values, str | bytes) or not hasattr(values, "__iter__"):
        _fail(f"{what}: must be a sequence of IP addresses")
    out = tuple(_to_address(what, v) for v in values)  # type: ignore[union-attr]
    if len(out) > MAX_ADDRESSES:
        _fail(f"{what}: at most {MAX_ADDRESSES} addresses (got {len(out)})")
    return out


# -- messages ------------------------------------------------------------------------------


class Message:
    """Base of every message; each subclass has a ``TYPE`` number."""

    __slots__ = ()
    TYPE: ClassVar[int]

    def _body(self) -> bytes:  # the body without the payload
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """First message of a path, gateway to node: who is speaking, over which carrier.

    As in seed 000's control connection, each side tells the other its carrier type and
    addresses so that paths can be paired carrier to carrier.
    """

    TYPE: ClassVar[int] = T_HELLO
    gateway_id: str
    session: int  # random per gateway start: a new value tells the node old connections died
    carrier: str
    carrier_type: str  # a key of CARRIER_TYPES
    path_index: int = 0  # which of this carrier's paths (0..255)
    addresses: tuple[Address, ...] = ()  # the gateway's addresses on this carrier
    max_payload: int = 256 << 10  # largest body the gateway accepts
    min_version: int = VERSION
    max_version: int = VERSION

    def __post_init__(self) -> None:
        _check_name("HELLO gateway_id", self.gateway_id)
        _check_name("HELLO carrier", self.carrier)
        _check_int("HELLO session", self.session, 0, U64)
        if self.carrier_type not in CARRIER_TYPES:
            _fail(f"HELLO carrier_type: unknown {self.carrier_type!r}")
        _check_int("HELLO path_index", self.path_index, 0, 255)
        _check_int("HELLO max_payload", self.max_payload, CONTROL_BODY_MAX, U32)
        _check_int("HELLO min_version", self.min_version, 1, 255)
        _check_int("HELLO max_version", self.max_version, self.min_version, 255)
        object.__setattr__(self, "addresses", _to_addresses("HELLO addresses", self.addresses))

    def _body(self) -> bytes:
        return (
            _HELLO.pack(
                self.min_version,
                self.max_version,
                CARRIER_TYPES[self.carrier_type],
                self.path_index,
                self.session,
                self.max_payload,
            )
            + _pack_str(self.gateway_id)
            + _pack_str(self.carrier)
            + _pack_addresses(self.addresses)
        )


@dataclass(frozen=True, slots=True)
class HelloAck(Message):
    """The node accepts a path: chosen version, its identity, a path id, its limits."""

    TYPE: ClassVar[int] = T_HELLO_ACK
    node_id: str
    path_id: int  # node-assigned, unique among the session's paths
    addresses: tuple[Address, ...] = ()  # the node's addresses for this carrier type
    max_payload: int = 256 << 10  # largest body the node accepts
    version: int = VERSION

    def __post_init__(self) -> None:
        _check_name("HELLO_ACK node_id", self.node_id)
        _check_int("HELLO_ACK path_id", self.path_id, 0, U32)
        _check_int("HELLO_ACK max_payload", self.max_payload, CONTROL_BODY_MAX, U32)
        _check_int("HELLO_ACK version", self.version, 1, 255)
        object.__setattr__(self, "addresses", _to_addresses("HELLO_ACK addresses", self.addresses))

    def _body(self) -> bytes:
        return (
            _HELLO_ACK.pack(self.version, self.path_id, self.max_payload)
            + _pack_str(self.node_id)
            + _pack_addresses(self.addresses)
        )


@dataclass(frozen=True, slots=True)
class Probe(Message):
    """RTT probe; the receiver answers PROBE_ACK on the same path at once."""

    TYPE: ClassVar[int] = T_PROBE
    probe_id: int
    sent_ns: int  # sender's monotonic clock

    def __post_init__(self) -> None:
        _check_int("PROBE probe_id", self.probe_id, 0, U32)
        _check_int("PROBE sent_ns", self.sent_ns, 0, U64)

    def _body(self) -> bytes:
        return _PROBE.pack(self.probe_id, self.sent_ns)


@dataclass(frozen=True, slots=True)
class ProbeAck(Message):
    """Answer to PROBE. RTT = now - echo_ns - (sent_ns - recv_ns), as in NTP."""

    TYPE: ClassVar[int] = T_PROBE_ACK
    probe_id: int
    echo_ns: int  # the PROBE's sent_ns, unchanged
    recv_ns: int  # responder's clock when the PROBE was decoded
    sent_ns: int  # responder's clock when this answer was encoded

    def __post_init__(self) -> None:
        _check_int("PROBE_ACK probe_id", self.probe_id, 0, U32)
        _check_int("PROBE_ACK echo_ns", self.echo_ns, 0, U64)
        _check_int("PROBE_ACK recv_ns", self.recv_ns, 0, U64)
        _check_int("PROBE_ACK sent_ns", self.sent_ns, self.recv_ns, U64)

    def _body(self) -> bytes:
        return _PROBE_ACK.pack(self.probe_id, self.echo_ns, self.recv_ns, self.sent_ns)


@dataclass(frozen=True, slots=True)
class Context(Message):
    """Third-party context of one carrier (seed 001): cell, signal, position."""

    TYPE: ClassVar[int] = T_CONTEXT
    carrier: str
    cell_id: int
    timestamp_ns: int  # wall clock (Unix epoch) of the modem reading
    rsrp_dbm: float | None = None  # sent in hundredths of a dBm
    lat: float | None = None  # degrees, sent in 1e-7 degrees
    lon: float | None = None

    def __post_init__(self) -> None:
        _check_name("CONTEXT carrier", self.carrier)
        _check_int("CONTEXT cell_id", self.cell_id, 0, U64)
        _check_int("CONTEXT timestamp_ns", self.timestamp_ns, 0, U64)
        if self.rsrp_dbm is not None:
            lo, hi = RSRP_RANGE
            if not isinstance(self.rsrp_dbm, int | float) or not lo <= self.rsrp_dbm <= hi:
                _fail(f"CONTEXT rsrp_dbm: must be in {lo}..{hi} dBm (got {self.rsrp_dbm!r})")
        if (self.lat is None) != (self.lon is None):
            _fail("CONTEXT position: lat and lon must both be given or both be absent")
        if self.lat is not None:
            for what, v, lim in (("lat", self.lat, 90.0), ("lon", self.lon, 180.0)):
                if not isinstance(v, int | float) or not -lim <= v <= lim:
                    _fail(f"CONTEXT {what}: must be in -{lim}..{lim} degrees (got {v!r})")

    def _body(self) -> bytes:
        flags = 0
        rsrp = lat = lon = 0
        if self.rsrp_dbm is not None:
            flags |= CTX_RSRP
            rsrp = round(self.rsrp_dbm * RSRP_SCALE)
        if self.lat is not None:
            flags |= CTX_POSITION
            lat = round(self.lat * POSITION_SCALE)
            lon = round(self.lon * POSITION_SCALE)  # type: ignore[operator]
        return _CONTEXT.pack(self.timestamp_ns, self.cell_id, lat, lon, rsrp, flags) + _pack_str(
            self.carrier
        )


@dataclass(frozen=True, slots=True)
class Close(Message):
    """The sender closes this path (not the connections it carried: they move on)."""

    TYPE: ClassVar[int] = T_CLOSE
    reason: CloseReason
    detail: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", _enum(CloseReason, self.reason, "CLOSE reason"))
        if not isinstance(self.detail, str) or len(self.detail.encode()) > MAX_DETAIL:
            _fail(f"CLOSE detail: must be text of at most {MAX_DETAIL} UTF-8 bytes")

    def _body(self) -> bytes:
        return bytes((self.reason,)) + _pack_str(self.detail)


@dataclass(frozen=True, slots=True)
class Drain(Message):
    """The node is draining (``draining``) or accepts new connections again: a gateway
    opens paths to its next node and sends new connections there; the connections it has
    on this node finish here."""

    TYPE: ClassVar[int] = T_DRAIN
    draining: bool = True

    def __post_init__(self) -> None:
        if type(self.draining) is not bool:
            _fail("DRAIN draining: must be true or false")

    def _body(self) -> bytes:
        return bytes((int(self.draining),))


@dataclass(frozen=True, slots=True)
class Open(Message):
    """A client's SYN, gateway to node: connect to the original destination."""

    TYPE: ClassVar[int] = T_OPEN
    conn_id: int
    src_addr: Address
    src_port: int
    dst_addr: Address
    dst_port: int
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    timestamps: bool = False

    def __post_init__(self) -> None:
        _check_int("OPEN conn_id", self.conn_id, 0, U32)
        src = _to_address("OPEN src_addr", self.src_addr)
        dst = _to_address("OPEN dst_addr", self.dst_addr)
        if src.version != dst.version:
            _fail("OPEN: source and destination addresses of different families")
        object.__setattr__(self, "src_addr", src)
        object.__setattr__(self, "dst_addr", dst)
        _check_int("OPEN src_port", self.src_port, 1, 65535)
        _check_int("OPEN dst_port", self.dst_port, 1, 65535)
        if self.mss is not None:
            _check_int("OPEN mss", self.mss, 1, 65535)
        if self.wscale is not None:
            _check_int("OPEN wscale", self.wscale, 0, MAX_WSCALE)
        if type(self.sack_permitted) is not bool or type(self.timestamps) is not bool:
            _fail("OPEN sack_permitted, timestamps: must be booleans")

    def _body(self) -> bytes:
        flags = (
            (OPT_SACK_PERMITTED if self.sack_permitted else 0)
            | (OPT_TIMESTAMPS if self.timestamps else 0)
            | (OPT_MSS if self.mss is not None else 0)
            | (OPT_WSCALE if self.wscale is not None else 0)
        )
        return (
            _OPEN.pack(
                self.conn_id,
                self.src_addr.version,
                flags,
                self.mss or 0,
                self.wscale or 0,
                self.src_port,
                self.dst_port,
            )
            + self.src_addr.packed
            + self.dst_addr.packed
        )


@dataclass(frozen=True, slots=True)
class OpenOk(Message):
    """The node reached the destination; data may flow."""

    TYPE: ClassVar[int] = T_OPEN_OK
    conn_id: int

    def __post_init__(self) -> None:
        _check_int("OPEN_OK conn_id", self.conn_id, 0, U32)

    def _body(self) -> bytes:
        return _U32.pack(self.conn_id)


@dataclass(frozen=True, slots=True)
class OpenFail(Message):
    """The node could not reach the destination; the gateway resets the client."""

    TYPE: ClassVar[int] = T_OPEN_FAIL
    conn_id: int
    reason: OpenFailReason

    def __post_init__(self) -> None:
        _check_int("OPEN_FAIL conn_id", self.conn_id, 0, U32)
        object.__setattr__(self, "reason", _enum(OpenFailReason, self.reason, "OPEN_FAIL reason"))

    def _body(self) -> bytes:
        return _CONN_REASON.pack(self.conn_id, self.reason)


@dataclass(frozen=True, slots=True)
class Data(Message):
    """Bytes ``seq .. seq+len(payload)`` of one direction of a connection.

    ``seq`` is the offset of the first payload byte in the stream (the first byte of
    each direction is 0). On decode ``payload`` is a memoryview into the received
    bytes, never a copy. Not validated at construction (hot path): the encoder and the
    decoder check it.
    """

    TYPE: ClassVar[int] = T_DATA
    conn_id: int
    seq: int
    payload: bytes | bytearray | memoryview = field(repr=False)

    def _body(self) -> bytes:
        return _DATA_FIXED.pack(self.conn_id, self.seq)


@dataclass(frozen=True, slots=True)
class DataAck(Message):
    """Connection-level acknowledgement and flow control for one direction.

    ``ack``: every byte below it has been received. ``ranges``: received blocks above
    ``ack`` as half-open ``(start, end)`` pairs, ascending, not touching. ``window``:
    bytes beyond ``ack`` the receiver will buffer (the sender may send up to
    ``ack + window``).
    """

    TYPE: ClassVar[int] = T_DATA_ACK
    conn_id: int
    ack: int
    window: int
    ranges: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        _check_int("DATA_ACK conn_id", self.conn_id, 0, U32)
        _check_int("DATA_ACK ack", self.ack, 0, U64)
        _check_int("DATA_ACK window", self.window, 0, U32)
        try:
            ranges = tuple((int(s), int(e)) for s, e in self.ranges)
        except (TypeError, ValueError):
            raise ProtocolError("DATA_ACK ranges: must be (start, end) pairs") from None
        if len(ranges) > MAX_SACK_RANGES:
            _fail(f"DATA_ACK ranges: at most {MAX_SACK_RANGES} (got {len(ranges)})")
        floor = self.ack
        for start, end in ranges:
            if not floor < start < end <= U64:
                _fail(
                    "DATA_ACK ranges: must ascend above ack without touching "
                    f"(range {start}..{end} after {floor})"
                )
            floor = end
        object.__setattr__(self, "ranges", ranges)

    def _body(self) -> bytes:
        parts = [_DATA_ACK.pack(self.conn_id, self.window, self.ack)]
        parts += [_RANGE.pack(s, e) for s, e in self.ranges]
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Fin(Message):
    """The sender's direction ends after ``final_seq`` bytes (like TCP's FIN).

    Messages can overtake each other across paths, so FIN says how long the stream is;
    the FIN itself counts as one sequence number: ``DataAck.ack == final_seq + 1``
    acknowledges it.
    """

    TYPE: ClassVar[int] = T_FIN
    conn_id: int
    final_seq: int

    def __post_init__(self) -> None:
        _check_int("FIN conn_id", self.conn_id, 0, U32)
        _check_int("FIN final_seq", self.final_seq, 0, U64 - 1)

    def _body(self) -> bytes:
        return _FIN.pack(self.conn_id, self.final_seq)


@dataclass(frozen=True, slots=True)
class Rst(Message):
    """Abort the connection in both directions; not acknowledged."""

    TYPE: ClassVar[int] = T_RST
    conn_id: int
    reason: RstReason

    def __post_init__(self) -> None:
        _check_int("RST conn_id", self.conn_id, 0, U32)
        object.__setattr__(self, "reason", _enum(RstReason, self.reason, "RST reason"))

    def _body(self) -> bytes:
        return _CONN_REASON.pack(self.conn_id, self.reason)


@dataclass(frozen=True, slots=True)
class Datagram(Message):
    """A non-TCP packet, possibly sent on several paths; ``(flow_id, seq)`` de-duplicates.

    Not validated at construction (hot path): the encoder and the decoder check it.
    """

    TYPE: ClassVar[int] = T_DATAGRAM
    flow_id: int
    seq: int
    payload: bytes | bytearray | memoryview = field(repr=False)

    def _body(self) -> bytes:
        return _DATA_FIXED.pack(self.flow_id, self.seq)


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        HelloAck,
        Probe,
        ProbeAck,
        Context,
        Close,
        Drain,
        Open,
        OpenOk,
        OpenFail,
        Data,
        DataAck,
        Fin,
        Rst,
        Datagram,
    )
}

# Body layouts (after the 8-byte header); docs/PROTOCOL.md lists the offsets.
_HELLO = struct.Struct("!BBBBQI")  # min_ver, max_ver, carrier type, path index, session, max
_HELLO_ACK = struct.Struct("!BII")  # version, path_id, max_payload
_PROBE = struct.Struct("!IQ")
_PROBE_ACK = struct.Struct("!IQQQ")
_CONTEXT = struct.Struct("!QQiihB")  # timestamp, cell, lat, lon, rsrp, flags
_OPEN = struct.Struct("!IBBHBxHH")  # conn, family, flags, mss, wscale, pad, ports
_U32 = struct.Struct("!I")
_CONN_REASON = struct.Struct("!IB")
_DATA_FIXED = struct.Struct("!IQ")
_DATA_HEAD = struct.Struct("!HBBIIQ")  # header + DATA fixed part in one pack
_DATA_ACK = struct.Struct("!IIQ")  # conn, window, ack
_RANGE = struct.Struct("!QQ")
_FIN = struct.Struct("!IQ")
_FAMILY_SIZE = {4: 4, 6: 16}


def _enum(cls: type[IntEnum], value: object, what: str) -> IntEnum:
    try:
        return cls(value)
    except ValueError:
        raise ProtocolError(f"{what}: unknown code {value!r}") from None


def _pack_str(text: str) -> bytes:
    raw = text.encode()
    return bytes((len(raw),)) + raw


def _pack_addresses(addresses: tuple[Address, ...]) -> bytes:
    out = bytearray((len(addresses),))
    for a in addresses:
        out.append(a.version)
        out += a.packed
    return bytes(out)


# -- encoding ------------------------------------------------------------------------------


def encode_header(msg: Message, max_payload: int | None = None) -> bytes:
    """Everything of ``msg`` that precedes its payload.

    For DATA and DATAGRAM send ``msg.payload`` right after it (``sendmsg([head,
    msg.payload])``); every other message has no payload and this is its whole
    encoding. ``max_payload`` is the peer's limit (from its HELLO / HELLO_ACK); a body
    above it raises :class:`ProtocolError` instead of making the peer close the path.
    """
    cls = type(msg)
    if cls is Data or cls is Datagram:
        p = msg.payload  # type: ignore[attr-defined]
        n = p.nbytes if type(p) is memoryview else len(p)
        seq = msg.seq  # type: ignore[attr-defined]
        if n == 0 or type(seq) is not int or seq + n > U64 + 1:
            _fail(f"{_name(cls)}: payload must be non-empty and end at or below 2**64")
        length = DATA_FIXED + n
        if max_payload is not None and length > max_payload:
            _fail(f"{_name(cls)}: body of {length} bytes exceeds the peer's {max_payload}")
        ident = msg.conn_id if cls is Data else msg.flow_id  # type: ignore[attr-defined]
        try:
            return _DATA_HEAD.pack(MAGIC, VERSION, cls.TYPE, length, ident, seq)
        except struct.error:
            raise ProtocolError(f"{_name(cls)}: id must be in 0..{U32}, seq in 0..{U64}") from None
    try:
        body = msg._body()
    except struct.error as e:
        raise ProtocolError(f"{_name(cls)}: field out of range ({e})") from None
    if max_payload is not None and len(body) > max_payload:
        _fail(f"{_name(cls)}: body of {len(body)} bytes exceeds the peer's {max_payload}")
    return _HDR.pack(MAGIC, VERSION, cls.TYPE, len(body)) + body


def max_data_payload(peer_max_payload: int) -> int:
    """Largest DATA (or DATAGRAM) payload a peer with this body limit accepts."""
    return peer_max_payload - DATA_FIXED


def encode(msg: Message, max_payload: int | None = None) -> bytes:
    """The whole message as one bytes object (copies the payload; see encode_header)."""
    head = encode_header(msg, max_payload)
    payload = getattr(msg, "payload", None)
    return head if payload is None else head + payload


def _name(cls: type) -> str:
    return _TYPE_NAMES.get(cls, cls.__name__)


_TYPE_NAMES = {
    Hello: "HELLO",
    HelloAck: "HELLO_ACK",
    Probe: "PROBE",
    ProbeAck: "PROBE_ACK",
    Context: "CONTEXT",
    Close: "CLOSE",
    Drain: "DRAIN",
    Open: "OPEN",
    OpenOk: "OPEN_OK",
    OpenFail: "OPEN_FAIL",
    Data: "DATA",
    DataAck: "DATA_ACK",
    Fin: "FIN",
    Rst: "RST",
    Datagram: "DATAGRAM",
}


# -- decoding ------------------------------------------------------------------------------


class _Reader:
    """Reads a variable-length body; every short read is a ProtocolError."""

    __slots__ = ("mv", "pos", "what")

    def __init__(self, mv: memoryview, what: str) -> None:
        self.mv, self.pos, self.what = mv, 0, what

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.mv):
            _fail(f"{self.what}: body too short")
        out = self.mv[self.pos : end]
        self.pos = end
        return out

    def unpack(self, st: struct.Struct) -> tuple:
        return st.unpack(self.take(st.size))

    def text(self) -> str:
        raw = self.take(self.take(1)[0])
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{self.what}: text is not UTF-8") from None

    def addresses(self) -> tuple[Address, ...]:
        count = self.take(1)[0]
        if count > MAX_ADDRESSES:
            _fail(f"{self.what}: {count} addresses (at most {MAX_ADDRESSES})")
        out = []
        for _ in range(count):
            family = self.take(1)[0]
            size = _FAMILY_SIZE.get(family)
            if size is None:
                _fail(f"{self.what}: unknown address family {family}")
            out.append(ipaddress.ip_address(bytes(self.take(size))))
        return tuple(out)

    def end(self) -> None:
        if self.pos != len(self.mv):
            _fail(f"{self.what}: {len(self.mv) - self.pos} unexpected trailing bytes")


def _dec_hello(body: memoryview) -> Message:
    r = _Reader(body, "HELLO")
    vmin, vmax, ctype, index, session, max_payload = r.unpack(_HELLO)
    gateway_id, carrier, addresses = r.text(), r.text(), r.addresses()
    r.end()
    if ctype not in _CARRIER_NAMES:
        _fail(f"HELLO carrier_type: unknown code {ctype}")
    return Hello(
        gateway_id, session, carrier, _CARRIER_NAMES[ctype], index, addresses, max_payload,
        vmin, vmax,
    )  # fmt: skip


def _dec_hello_ack(body: memoryview) -> Message:
    r = _Reader(body, "HELLO_ACK")
    version, path_id, max_payload = r.unpack(_HELLO_ACK)
    node_id, addresses = r.text(), r.addresses()
    r.end()
    return HelloAck(node_id, path_id, addresses, max_payload, version)


def _dec_context(body: memoryview) -> Message:
    r = _Reader(body, "CONTEXT")
    ts, cell, lat, lon, rsrp, flags = r.unpack(_CONTEXT)
    carrier = r.text()
    r.end()
    if flags & ~(CTX_RSRP | CTX_POSITION):
        _fail(f"CONTEXT: undefined flag bits {flags:#x}")
    if not flags & CTX_RSRP and rsrp:
        _fail("CONTEXT: RSRP absent but its field is not zero")
    if not flags & CTX_POSITION and (lat or lon):
        _fail("CONTEXT: position absent but its fields are not zero")
    return Context(
        carrier,
        cell,
        ts,
        rsrp / RSRP_SCALE if flags & CTX_RSRP else None,
        lat / POSITION_SCALE if flags & CTX_POSITION else None,
        lon / POSITION_SCALE if flags & CTX_POSITION else None,
    )


def _dec_close(body: memoryview) -> Message:
    r = _Reader(body, "CLOSE")
    reason = r.take(1)[0]
    detail = r.text()
    r.end()
    return Close(reason, detail)  # type: ignore[arg-type]


def _dec_drain(body: memoryview) -> Message:
    flag = body[0]
    if flag > 1:
        _fail(f"DRAIN: state must be 0 or 1 (got {flag})")
    return Drain(bool(flag))


def _dec_open(body: memoryview) -> Message:
    conn_id, family, flags, mss, wscale, sport, dport = _OPEN.unpack_from(body)
    size = _FAMILY_SIZE.get(family)
    if size is None:
        _fail(f"OPEN: unknown address family {family}")
    if len(body) != _OPEN.size + 2 * size:
        _fail(f"OPEN: {len(body)} bytes do not fit address family {family}")
    if flags & ~(OPT_SACK_PERMITTED | OPT_TIMESTAMPS | OPT_MSS | OPT_WSCALE):
        _fail(f"OPEN: undefined flag bits {flags:#x}")
    if body[_OPEN.size - 5]:  # the pad byte after wscale
        _fail("OPEN: reserved byte is not zero")
    if not flags & OPT_MSS and mss or not flags & OPT_WSCALE and wscale:
        _fail("OPEN: an absent TCP option has a non-zero field")
    a = _OPEN.size
    return Open(
        conn_id,
        ipaddress.ip_address(bytes(body[a : a + size])),
        sport,
        ipaddress.ip_address(bytes(body[a + size :])),
        dport,
        mss if flags & OPT_MSS else None,
        wscale if flags & OPT_WSCALE else None,
        bool(flags & OPT_SACK_PERMITTED),
        bool(flags & OPT_TIMESTAMPS),
    )


def _dec_payload(cls: type[Data] | type[Datagram]) -> Callable[[memoryview], Message]:
    name = "DATA" if cls is Data else "DATAGRAM"

    def decode(body: memoryview) -> Message:
        ident, seq = _DATA_FIXED.unpack_from(body)
        if seq + len(body) - DATA_FIXED > U64 + 1:
            _fail(f"{name}: payload ends beyond 2**64")
        return cls(ident, seq, body[DATA_FIXED:])

    return decode


def _dec_data_ack(body: memoryview) -> Message:
    if (len(body) - _DATA_ACK.size) % _RANGE.size:
        _fail("DATA_ACK: length is not a whole number of ranges")
    conn_id, window, ack = _DATA_ACK.unpack_from(body)
    ranges = tuple(_RANGE.iter_unpack(body[_DATA_ACK.size :]))
    return DataAck(conn_id, ack, window, ranges)


def _dec_fixed(cls: type[Message], st: struct.Struct) -> Callable[[memoryview], Message]:
    def decode(body: memoryview) -> Message:
        return cls(*st.unpack(body))

    return decode


# type -> (decode(body), smallest body, largest body before max_payload applies)
_DECODERS: dict[int, tuple[Callable[[memoryview], Message], int, int]] = {
    T_HELLO: (_dec_hello, _HELLO.size + 5, CONTROL_BODY_MAX),
    T_HELLO_ACK: (_dec_hello_ack, _HELLO_ACK.size + 3, CONTROL_BODY_MAX),
    T_PROBE: (_dec_fixed(Probe, _PROBE), _PROBE.size, _PROBE.size),
    T_PROBE_ACK: (_dec_fixed(ProbeAck, _PROBE_ACK), _PROBE_ACK.size, _PROBE_ACK.size),
    T_CONTEXT: (_dec_context, _CONTEXT.size + 2, _CONTEXT.size + 1 + MAX_NAME),
    T_CLOSE: (_dec_close, 2, 2 + MAX_DETAIL),
    T_DRAIN: (_dec_drain, 1, 1),
    T_OPEN: (_dec_open, _OPEN.size + 8, _OPEN.size + 32),
    T_OPEN_OK: (_dec_fixed(OpenOk, _U32), _U32.size, _U32.size),
    T_OPEN_FAIL: (_dec_fixed(OpenFail, _CONN_REASON), _CONN_REASON.size, _CONN_REASON.size),
    T_DATA: (_dec_payload(Data), DATA_FIXED + 1, U32),
    T_DATA_ACK: (_dec_data_ack, _DATA_ACK.size, _DATA_ACK.size + MAX_SACK_RANGES * _RANGE.size),
    T_FIN: (_dec_fixed(Fin, _FIN), _FIN.size, _FIN.size),
    T_RST: (_dec_fixed(Rst, _CONN_REASON), _CONN_REASON.size, _CONN_REASON.size),
    T_DATAGRAM: (_dec_payload(Datagram), DATAGRAM_FIXED + 1, U32),
}
assert set(_DECODERS) == set(MESSAGE_TYPES)
assert max(hi for _, _, hi in _DECODERS.values() if hi < U32) <= CONTROL_BODY_MAX


class Decoder:
    """Incremental decoder: ``feed(chunk)`` bytes as they arrive, iterate the messages.

    Chunks may be cut anywhere, down to one byte. A message that lies inside one chunk
    is decoded in place: its payload is a memoryview into that chunk (zero copy). A
    message cut across chunks is assembled in a bytearray allocated for that message
    alone and never reused, so a payload handed out earlier never changes.

    Validity rule: the decoder keeps references to the chunks it was fed, so do not
    modify a chunk after feeding it (``socket.recv`` returns a new object each time; a
    ``recv_into`` caller must use a fresh buffer per call).

    A payload view keeps its whole chunk alive: a holder that keeps small payloads for
    long (an out-of-order queue) and counts memory by payload length should copy them
    (``bytes(msg.payload)``) or account for the chunk.

    Memory: the bytes the decoder itself holds (``buffered``) never exceed
    ``HEADER_SIZE + max_payload``: a header announcing a longer body is refused before
    anything is allocated.

    Errors: malformed input raises :class:`ProtocolError` from ``feed``; messages decoded
    before the bad bytes can still be iterated; every later ``feed`` raises again.
    """

    __slots__ = ("max_payload", "_limits", "_out", "_head", "_body", "_filled", "_decode",
                 "_error")  # fmt: skip

    def __init__(self, max_payload: int) -> None:
        if type(max_payload) is not int or not CONTROL_BODY_MAX <= max_payload <= U32:
            raise ValueError(f"max_payload must be in {CONTROL_BODY_MAX}..{U32}")
        self.max_payload = max_payload
        self._limits = {
            t: (dec, lo, min(hi, max_payload)) for t, (dec, lo, hi) in _DECODERS.items()
        }
        self._out: deque[Message] = deque()
        self._head = bytearray()  # a header cut across chunks
        self._body: bytearray | None = None  # a body cut across chunks
        self._filled = 0
        self._decode: Callable[[memoryview], Message] | None = None
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes held by the decoder itself (partial header plus partial body)."""
        return len(self._head) + (len(self._body) if self._body is not None else 0)

    @property
    def error(self) -> str | None:
        """The reason of the error that closed this decoder, if any."""
        return self._error

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        if self._out:
            return self._out.popleft()
        raise StopIteration

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Decode as much of ``chunk`` as possible; see the class docstring for rules."""
        if self._error is not None:
            raise ProtocolError(f"decoder closed by an earlier error: {self._error}")
        mv = memoryview(chunk)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        try:
            self._feed(mv)
        except ProtocolError as e:
            self._error = e.reason
            self._head = bytearray()
            self._body = None
            raise
        except (struct.error, ValueError) as e:  # a safety net; tests look for these
            self._error = f"malformed message ({e})"
            self._head = bytearray()
            self._body = None
            raise ProtocolError(self._error) from None

    def eof(self) -> None:
        """The peer closed the stream: raise ProtocolError if a message was cut short."""
        if self._error is None and self.buffered:
            self._error = f"stream ended inside a message ({self.buffered} bytes buffered)"
            raise ProtocolError(self._error)

    def _header(
        self, magic: int, version: int, mtype: int, length: int
    ) -> Callable[[memoryview], Message]:
        if magic != MAGIC:
            _fail(f"bad magic {magic:#06x} (not an mpproxy peer?)")
        if version not in SUPPORTED_VERSIONS:
            _fail(f"unsupported protocol version {version}")
        entry = self._limits.get(mtype)
        if entry is None:
            _fail(f"unknown message type {mtype:#04x}")
        decode, lo, hi = entry  # type: ignore[misc]
        if not lo <= length <= hi:
            name = _name(MESSAGE_TYPES[mtype])
            _fail(f"{name}: body length {length} outside {lo}..{hi}")
        self._decode = decode
        return decode

    def _feed(self, mv: memoryview) -> None:
        n = len(mv)
        off = 0
        out = self._out
        if self._body is not None:  # continue a body cut across chunks
            body, filled = self._body, self._filled
            take = min(len(body) - filled, n)
            body[filled : filled + take] = mv[:take]
            off = take
            if filled + take < len(body):
                self._filled = filled + take
                return
            self._body = None
            out.append(self._decode(memoryview(body)))  # type: ignore[misc]
        elif self._head:  # continue a header cut across chunks
            off = HEADER_SIZE - len(self._head)
            self._head += mv[:off]
            if len(self._head) < HEADER_SIZE:
                return
            magic, version, mtype, length = _HDR.unpack(self._head)
            self._head = bytearray()
            decode = self._header(magic, version, mtype, length)
            if off + length > n:
                return self._start_body(length, mv[off:])
            out.append(decode(mv[off : off + length]))
            off += length
        unpack, header = _HDR.unpack_from, self._header
        while n - off >= HEADER_SIZE:
            magic, version, mtype, length = unpack(mv, off)
            decode = header(magic, version, mtype, length)
            start = off + HEADER_SIZE
            off = start + length
            if off > n:
                return self._start_body(length, mv[start:])
            out.append(decode(mv[start:off]))
        if off < n:
            self._head += mv[off:]

    def _start_body(self, length: int, part: memoryview) -> None:
        body = bytearray(length)
        body[: len(part)] = part
        self._body, self._filled = body, len(part)


def decode_all(data: bytes | bytearray | memoryview, max_payload: int) -> list[Message]:
    """Decode a complete byte string of whole messages (tests, pcap analysis)."""
    dec = Decoder(max_payload)
    dec.feed(data)
    dec.eof()
    return list(dec)
