"""The one TOML configuration format for gateway and node.

A file is parsed with ``tomllib`` and mapped onto the frozen dataclasses below. The
mapping is strict because a typo in a fleet's configuration should stop the process
at start, not silently fall back to a default at 300 km/h: unknown keys, wrong types
and out-of-range values raise :class:`ConfigError` naming the file and the dotted key.

Every field carries its documentation in its metadata (``doc``) so that
``docs/configuration.md`` is generated from the code (``mpproxy config docs``) and a
test keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import reprlib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contextdb.config import ContextDBConfig
from middlebox.errors import UserError
from middlebox.session.mux import MuxParams
from middlebox.session.wire import DATA_FIXED, max_data_payload, name_error
from middlebox.tcp.params import TcpParams
from scheduler.config import SchedulerConfig
from scheduler.datagrams import DatagramClasses


class ConfigError(UserError):
    """A configuration file or value was rejected."""


def opt(
    default: Any,
    doc: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] | None = None,
    check: typing.Callable[[Any], str | None] | None = None,
) -> Any:
    """A documented, validated configuration field.

    ``check`` returns an error text or None; it runs after type and range checks.
    Mutable defaults (lists, dataclasses) are wrapped in a factory.
    """
    meta = {"doc": doc, "min": min, "max": max, "choices": choices, "check": check}
    if isinstance(default, list) or dataclasses.is_dataclass(default):
        proto = default
        return field(default_factory=lambda: _copy(proto), metadata=meta)
    return field(default=default, metadata=meta)


def _buffer_max_opt(peer: str) -> Any:
    """``buffer_max_bytes`` of one side (the same rule both ways, see MuxParams)."""
    return opt(
        32 << 20,
        f"The most a connection's window toward the {peer} may grow to while more than half "
        "of it waits behind a hole (a byte still on a slow carrier), and its send buffer "
        "toward the peer while all of it is on the paths with the peer's window open; at "
        "least buffer_bytes.",
        min=64 << 10,
        max=1 << 30,
    )


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value)
    return value


# -- numbers ------------------------------------------------------------------------------

INT_BITS = 64  # TOML's integers are 64-bit (its specification); tomllib accepts any size


def number_error(value: float, lo: float | None = None, hi: float | None = None) -> str | None:
    """Why a number from a file or a command line is unacceptable, or None.

    The one numeric rule of every input an operator writes: NaN and infinities pass
    every comparison (``nan < 1.0`` and ``nan > 600.0`` are both false), so they are
    refused before the range; integers must fit in 64 bits."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number (got {value!r})"
    if isinstance(value, int) and not -(1 << (INT_BITS - 1)) <= value < 1 << (INT_BITS - 1):
        return f"must be an integer of at most {INT_BITS} bits (got {value.bit_length()} bits)"
    if lo is not None and value < lo:
        return f"must be >= {lo} (got {value!r})"
    if hi is not None and value > hi:
        return f"must be <= {hi} (got {value!r})"
    return None


def number_arg(kind: type, lo: float, hi: float) -> typing.Callable[[str], Any]:
    """An ``argparse`` type for a numeric command-line argument under :func:`number_error`
    (``type=number_arg(int, 1, 36500)``): argparse reports a refusal as one usage line."""
    import argparse

    def parse(text: str) -> Any:
        try:
            value = kind(text.strip()) if text.isascii() else None
        except ValueError:  # also an int of more than 4300 digits
            value = None
        if value is None:
            raise argparse.ArgumentTypeError(f"not {_TYPE_NAMES[kind]}: {_show(text)}")
        if err := number_error(value, lo, hi):
            raise argparse.ArgumentTypeError(err)
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80


def _show(value: Any) -> str:
    """``repr`` for error messages, bounded in length and nesting (a hostile file may hold
    a string of megabytes or a list nested hundreds deep)."""
    return _REPR.repr(value)


# -- checks ---------------------------------------------------------------------------------

# Where tls.plaintext may be used: loopback and the testbed's address plan (netns/topology.py:
# 100.64-100.66, inside RFC 6598's shared space, which no public Internet path carries).
PLAINTEXT_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "100.64.0.0/10")
)


def plaintext_error(key: str, address: str) -> ConfigError | None:
    """The error to raise when ``tls.plaintext`` is set and ``address`` (HOST:PORT of
    ``key``: the node's ``node.listen``, the gateway's ``gateway.node``) is neither
    loopback nor the testbed's, or None. Paths without TLS are neither encrypted nor
    authenticated: on any other address anyone could read them, or claim to be any
    gateway and use the node as an open proxy. A wildcard listen address is refused too
    (it listens on every interface, public ones included): name the testbed address."""
    host = address.rpartition(":")[0].strip("[]")
    try:
        a = ipaddress.ip_address(host)
    except ValueError:
        a = None
    if a is not None and any(a in n for n in PLAINTEXT_NETWORKS if n.version == a.version):
        return None
    nets = ", ".join(str(n) for n in PLAINTEXT_NETWORKS)
    return ConfigError(
        f"tls.plaintext: only for loopback or the testbed ({nets}), but {key} is "
        f"{_show(address)}; use TLS (mpproxy pki) on any other address"
    )


def _port(text: str) -> int | None:
    """A port number written in ASCII digits (``str.isdigit`` also takes '²' and '٣')."""
    if not (text.isascii() and text.isdigit() and len(text) <= 5):
        return None
    return int(text)


def _check_hostport(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    p = _port(port)
    if (
        not sep
        or not host
        or not (host.isascii() and host.isprintable() and " " not in host)
        or p is None
        or not 0 < p < 65536
    ):
        return f"must be HOST:PORT with a port in 1..65535 (got {_show(value)})"
    return None


def _check_address(value: str) -> str | None:
    if value == "":
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"must be an IP address (got {_show(value)})"
    return None


def _check_prefixes(values: list[str]) -> str | None:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            return f"must be a list of IP prefixes such as '10.0.0.0/8' (bad entry {_show(v)})"
    return None


def _check_ports(values: list[str]) -> str | None:
    for v in values:
        lo, _, hi = v.partition("-")
        a, b = _port(lo), _port(hi or lo)
        if a is None or b is None or not 0 <= a <= b <= 65535:
            return (
                "must be a list of ports or ranges such as '443' or '8000-8999' "
                f"(bad entry {_show(v)})"
            )
    return None


CARRIER_TYPES = ("lte", "5g", "3g", "satellite", "wifi", "ethernet", "other")
ACL_ACTIONS = ("allow", "bypass", "deny", "drop")


@dataclass(frozen=True)
class AclRuleConfig:
    """One access rule of the gateway's flow table; rules are tried in order, first match wins."""

    action: str = opt(
        "deny",
        "allow: proxy through the node; bypass: forward by ordinary routing; "
        "deny: refuse with RST; drop: discard silently.",
        choices=ACL_ACTIONS,
    )
    src: list[str] = opt(
        [], "Client source prefixes this rule matches; empty: any.", check=_check_prefixes
    )
    dst: list[str] = opt(
        [], "Destination prefixes this rule matches; empty: any.", check=_check_prefixes
    )
    dst_ports: list[str] = opt(
        [], "Destination ports or ranges ('443', '8000-8999'); empty: any.", check=_check_ports
    )


@dataclass(frozen=True)
class CarrierConfig:
    """One cellular modem of the gateway, one carrier path group to the node."""

    name: str = opt("", "Carrier name, unique per gateway (e.g. 'vodafone').", check=name_error)
    type: str = opt("lte", "Access technology, sent in HELLO.", choices=CARRIER_TYPES)
    interface: str = opt("", "Interface of the modem (bound with SO_BINDTODEVICE).")
    address: str = opt(
        "", "Source address on that interface; empty: the interface's first.", check=_check_address
    )
    paths: int = opt(1, "Long-lived TCP connections to the node over this carrier.", min=1, max=16)
    congestion_control: str = opt(
        "bbr",
        "Kernel congestion control of this carrier's paths.",
        choices=("bbr", "cubic", "reno"),
    )


@dataclass(frozen=True)
class FleetNodeConfig:
    """One node of a fleet the gateway may use (docs/deployment.md, "Several nodes")."""

    name: str = opt(
        "", "Name of the node (its node.id); the choice rule hashes it.", check=name_error
    )
    address: str = opt("", "Address of the node, HOST:PORT.", check=_check_hostport)


def _check_fleet(nodes: list[FleetNodeConfig]) -> str | None:
    names = [n.name for n in nodes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    return f"node names must be unique (repeated: {', '.join(dupes)})" if dupes else None


DEFAULT_NODE = "127.0.0.1:4433"


@dataclass(frozen=True)
class GatewayConfig:
    id: str = opt(
        "gateway",
        "Identity of this gateway, sent in HELLO and matched against its certificate.",
        check=name_error,
    )
    node: str = opt(
        DEFAULT_NODE,
        "Address of the cloud node, HOST:PORT (one node; for several, [[gateway.nodes]]).",
        check=_check_hostport,
    )
    nodes: list[FleetNodeConfig] = opt(
        [],
        "Several nodes, one [[gateway.nodes]] table each (then leave gateway.node unset): "
        "the gateway uses the one that ranks first by rendezvous hash of its id and the "
        "node's name among those neither lost nor draining, and moves when that one is.",
        check=_check_fleet,
    )
    node_lost_time: float = opt(
        30.0,
        "Seconds without any path up to the chosen node before it counts as lost and the "
        "gateway moves to the next node (its connections there are reset); with one node, "
        "its paths are only dialled again.",
        min=0.5,
        max=3600.0,
    )
    node_retry_time: float = opt(
        120.0,
        "Seconds a lost node is passed over before the rule may choose it again.",
        min=1.0,
        max=86400.0,
    )

    def __post_init__(self) -> None:
        if self.nodes and self.node != DEFAULT_NODE:
            raise ConfigError(
                "nodes: give either gateway.node (one node) or [[gateway.nodes]] tables, not both"
            )

    def fleet(self) -> list[FleetNodeConfig]:
        """The nodes to choose from: the [[gateway.nodes]] tables, or ``gateway.node``
        alone (named "node": with one candidate the name changes nothing)."""
        return list(self.nodes) or [FleetNodeConfig("node", self.node)]

    lan_interface: str = opt("lan0", "Interface facing the passengers.")
    listener_namespace: str = opt("mpp-listen", "Network namespace of the capturing listener.")
    buffer_bytes: int = opt(
        4 << 20,
        "Bytes buffered per connection before the client's TCP window closes (and the "
        "window the gateway first lets the node send beyond what the client has read).",
        min=64 << 10,
        max=1 << 30,
    )
    buffer_max_bytes: int = _buffer_max_opt("node")
    bypass: list[str] = opt(
        ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
        "Destination prefixes forwarded by ordinary routing, not proxied.",
        check=_check_prefixes,
    )
    deny: list[str] = opt(
        [], "Destination prefixes whose connections are refused with RST.", check=_check_prefixes
    )
    carriers: list[CarrierConfig] = opt([], "The carriers, one [[gateway.carriers]] table each.")
    acl: list[AclRuleConfig] = opt(
        [],
        "Access rules, one [[gateway.acl]] table each, tried in order before the deny and "
        "bypass lists; the first match decides; no match: deny list, then bypass list, then proxy.",
    )
    flow_table_size: int = opt(
        65536,
        "Most flows tracked at once. When full, a new flow takes the place of the oldest "
        "half-open or closed one; only a table full of established flows drops it.",
        min=64,
        max=1 << 24,
    )
    flow_table_per_source: int = opt(
        4096,
        "Most flows tracked at once for one passenger (source address); its new flows "
        "beyond it are dropped, so one passenger cannot fill the table.",
        min=1,
        max=1 << 24,
    )
    flow_new_per_source: int = opt(
        500,
        "Most new flows (SYNs of new tuples) one passenger may start per second; beyond "
        "it they are dropped (the client retries), before any endpoint work.",
        min=1,
        max=1 << 20,
    )
    stray_per_source: int = opt(
        1000,
        "Most TCP packets a second one passenger may send outside every flow the gateway "
        "has answered (bare ACKs, data or FINs of no connection); beyond it the kernel drops "
        "them before the capture reads them. Packets of answered flows are never limited. "
        "0: no limit.",
        min=0,
        max=1 << 24,
    )
    flow_timeout_half_open: float = opt(
        30.0,
        "Seconds a flow may stay idle before its handshake completes (and a SYN-ACK's tuple "
        "waits in the kernel for the one packet it admits, the handshake's ACK).",
        min=1.0,
        max=3600.0,
    )
    flow_timeout_established: float = opt(
        7440.0,
        "Seconds an established flow may stay idle (RFC 5382 asks at least 7440).",
        min=60.0,
        max=864000.0,
    )
    flow_timeout_closing: float = opt(
        240.0, "Seconds a flow may stay idle after its first FIN.", min=1.0, max=3600.0
    )
    flow_timeout_closed: float = opt(
        10.0, "Seconds a reset or fully closed flow stays recorded.", min=0.0, max=600.0
    )
    listener_subnet: str = opt(
        "169.254.210.0/30",
        "IPv4 /30 of the veth pair between the gateway's namespace (first address) and the "
        "listener namespace (second address).",
        check=lambda v: _check_prefixes([v]),
    )
    listener_table: int = opt(
        210, "Routing table that sends LAN TCP to the listener namespace.", min=1, max=2**31 - 1
    )
    listener_priority: int = opt(
        900,
        "Priority of the ip rules that steer LAN TCP into the listener (and keep bypass "
        "prefixes out of it); must come before other rules matching LAN sources.",
        min=1,
        max=32765,
    )
    control_socket: str = opt(
        "/run/mpproxy/gateway.sock", "Unix socket 'mpproxy status' reads the gateway's state from."
    )
    memory_budget: int = opt(
        512 << 20,
        "Bytes the connections' buffers toward the node may hold at the gateway together "
        "(received, out-of-order and unacknowledged data). As it fills, new connections get "
        "smaller windows and windows stop growing; no accepted byte is dropped.",
        min=1 << 20,
        max=1 << 40,
    )


@dataclass(frozen=True)
class NodeConfig:
    id: str = opt("node", "Identity of this node, sent in HELLO_ACK.", check=name_error)
    revoked_gateways: str = opt(
        "",
        "File of revoked gateway ids, one per line ('#' comments): their paths are refused "
        "at HELLO, and when the file changes their sessions end (reloaded without restart). "
        "Empty: none.",
    )
    allowed_gateways: str = opt(
        "",
        "File of the only gateway ids admitted, in the same format; empty: every gateway "
        "whose certificate the CA signed.",
    )
    gateway_lists_interval: float = opt(
        1.0,
        "Seconds between checks of the gateway lists' modification times.",
        min=0.1,
        max=3600.0,
    )
    listen: str = opt(
        "0.0.0.0:4433",
        "Address the node accepts carrier paths on, HOST:PORT.",
        check=_check_hostport,
    )
    connect_timeout: float = opt(
        10.0, "Seconds to wait for a destination to accept.", min=0.1, max=300.0
    )
    allow_private_destinations: bool = opt(
        False,
        "Allow destinations in private, loopback, "
        "link-local and multicast ranges (never on the "
        "public Internet: it makes the node an open relay "
        "into its own network).",
    )
    allowed_destinations: list[str] = opt(
        [],
        "Private prefixes allowed even when allow_private_destinations is false.",
        check=_check_prefixes,
    )
    buffer_bytes: int = opt(
        4 << 20,
        "Bytes buffered per connection on the node (and the window it first lets the "
        "gateway send beyond what the server has taken).",
        min=64 << 10,
        max=1 << 30,
    )
    buffer_max_bytes: int = _buffer_max_opt("gateway")
    control_socket: str = opt(
        "/run/mpproxy/node.sock", "Unix socket 'mpproxy status' reads the node's state from."
    )
    max_handshakes: int = opt(
        512,
        "Paths accepted at once that have not finished TLS and HELLO (each has "
        "paths.connect_timeout). Beyond it a newcomer takes the place of the oldest pending "
        "handshake of the address holding the most, or is closed at once, before any TLS work.",
        min=1,
        max=1 << 20,
    )
    max_handshakes_per_source: int = opt(
        32,
        "Pending handshakes from one address; beyond it new connections from that address "
        "are closed at once.",
        min=1,
        max=1 << 20,
    )
    accept_backoff: float = opt(
        0.5,
        "Seconds the node stops accepting paths after accept() failed for want of "
        "descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM); counted, logged once a minute.",
        min=0.01,
        max=60.0,
    )
    session_connections: int = opt(
        16384,
        "Connections one gateway session may hold at the node; an OPEN beyond it is answered "
        "with OPEN_FAIL (no resources), so the gateway resets that client.",
        min=1,
        max=1 << 22,
    )
    session_memory: int = opt(
        256 << 20,
        "Bytes the connections of one gateway session may hold in their buffers at the node "
        "(received, out-of-order and unacknowledged data). As it fills, new connections get "
        "smaller windows and windows stop growing; no accepted byte is dropped.",
        min=1 << 20,
        max=1 << 40,
    )
    memory_budget: int = opt(
        1 << 30,
        "Bytes the connection buffers of all sessions may hold at the node together; "
        "enforced like session_memory.",
        min=1 << 20,
        max=1 << 40,
    )


@dataclass(frozen=True)
class TLSConfig:
    ca: str = opt("", "CA certificate (PEM) that signs node and gateway certificates.")
    cert: str = opt("", "This process's certificate (PEM).")
    key: str = opt("", "This process's private key (PEM).")
    plaintext: bool = opt(
        False,
        "Carry paths without TLS. For benchmarks on a closed testbed only; logged loudly at "
        "start, and refused unless the node's listen address and the gateway's node address "
        "are loopback or in the testbed's 100.64.0.0/10.",
    )


@dataclass(frozen=True)
class PathConfig:
    """Socket options of the carrier paths, on the gateway and on the node."""

    notsent_lowat: int = opt(
        4 << 20,
        "TCP_NOTSENT_LOWAT of a path socket: the most unsent bytes the kernel may hold, so a "
        "message is committed to a path only shortly before it can leave (see notsent_time, "
        "which sets the level below this bound; the bound only caps very fast carriers).",
        min=4096,
        max=64 << 20,
    )
    notsent_time: float = opt(
        0.04,
        "Seconds of a path's current sending rate it may hold unsent: its room for the "
        "mux is that many bytes (at least 16 KiB, at most notsent_lowat), so a slow "
        "carrier is not handed more than it can send soon. 0: always notsent_lowat.",
        min=0.0,
        max=10.0,
    )
    keepalive_idle: int = opt(
        5, "Seconds of silence before the first keepalive probe.", min=1, max=7200
    )
    keepalive_interval: int = opt(2, "Seconds between keepalive probes.", min=1, max=600)
    keepalive_count: int = opt(
        3, "Unanswered probes before the path is declared dead.", min=1, max=60
    )
    user_timeout: float = opt(
        10.0,
        "Seconds sent data may stay unacknowledged before the kernel drops the path "
        "(TCP_USER_TIMEOUT); also how long a path may stay silent (nothing received) before "
        "the gateway or the node closes it.",
        min=1.0,
        max=600.0,
    )
    reconnect_initial: float = opt(0.2, "First reconnection delay in seconds.", min=0.01, max=60.0)
    reconnect_max: float = opt(15.0, "Longest reconnection delay in seconds.", min=0.1, max=3600.0)
    reconnect_jitter: float = opt(
        0.5,
        "Fraction of each delay drawn at random, so paths do not retry in step.",
        min=0.0,
        max=1.0,
    )
    reconnect_stable: float = opt(
        10.0,
        "Seconds a path must stay up before its backoff starts again from the first delay.",
        min=0.0,
        max=3600.0,
    )
    stall_min: float = opt(
        0.5,
        "Seconds a message may wait for its connection-level ACK before it is sent again "
        "on another path (longer on slow paths: 3 x (srtt + 4 rttvar) of its path).",
        min=0.01,
        max=60.0,
    )
    connect_timeout: float = opt(
        5.0,
        "Seconds a gateway allows for a path's TCP connect, TLS handshake and HELLO.",
        min=0.1,
        max=120.0,
    )
    probe_interval: float = opt(
        1.0,
        "Seconds between PROBEs on each path (RTT of idle paths); a path from which nothing "
        "arrived for paths.user_timeout is closed and dialled again.",
        min=0.05,
        max=60.0,
    )
    lost_timeout: float = opt(
        30.0,
        "Seconds with no path up before every connection is reset on both sides.",
        min=1.0,
        max=3600.0,
    )
    max_output: int = opt(
        4 << 20,
        "Bytes a path may hold for its peer beyond notsent_lowat (answers such as PROBE_ACK, "
        "DATA_ACK and RST that a peer which does not read lets pile up); beyond it the path "
        "is closed and counted (paths_unread).",
        min=64 << 10,
        max=1 << 30,
    )


@dataclass(frozen=True)
class WireConfig:
    max_payload: int = opt(
        256 << 10,
        "Largest message payload accepted from a peer, in bytes; "
        "the decoder never buffers more than this plus one header.",
        min=1024,
        max=16 << 20,
    )
    message_size: int = opt(
        16 << 10,
        "Target DATA message size in bytes (adapted at run time up to max_payload).",
        min=512,
        max=16 << 20,
    )
    reorder_overhead: int = opt(
        512 << 10,
        "Bytes of bookkeeping a connection's out-of-order data may cost beyond the data "
        "itself (each piece held above a hole costs about 200 bytes more than its payload); "
        "a peer that cuts more holes than this is reset (counted as reorder_overflow).",
        min=16 << 10,
        max=1 << 30,
    )


_TCP = TcpParams()  # the [tcp] defaults are the endpoint's own, written once (tcp/params.py)


@dataclass(frozen=True)
class TcpConfig:
    """The gateway's user-space TCP endpoint (``middlebox/tcp``), facing the passengers."""

    mtu: int = opt(
        _TCP.mtu,
        "MTU of the passenger LAN; the MSS sent and accepted is clamped to MTU - 40.",
        min=576,
        max=65535,
    )
    window_scale: int = opt(
        _TCP.window_scale,
        "Window scale announced to clients that offer scaling (RFC 7323).",
        min=0,
        max=14,
    )
    sack: bool = opt(_TCP.sack, "Offer selective acknowledgements (RFC 2018) to clients.")
    timestamps: bool = opt(
        _TCP.timestamps, "Use timestamps (RFC 7323) with clients that offer them."
    )
    delayed_ack: float = opt(
        _TCP.delayed_ack, "Seconds an ACK may wait for a second segment.", min=0.001, max=0.5
    )
    rto_min: float = opt(
        _TCP.rto_min, "Lower bound of the retransmission timeout, seconds.", min=0.01, max=2.0
    )
    rto_max: float = opt(
        _TCP.rto_max, "Upper bound of the retransmission timeout, seconds.", min=1.0, max=120.0
    )
    max_retransmits: int = opt(
        _TCP.max_retransmits,
        "Retransmissions of one segment before the connection is reset.",
        min=2,
        max=30,
    )
    initial_cwnd: int = opt(
        _TCP.initial_cwnd, "Initial congestion window in segments.", min=1, max=100
    )
    idle_timeout: float = opt(
        _TCP.idle_timeout,
        "Seconds without a segment from the client before the endpoint resets.",
        min=1.0,
        max=864000.0,
    )
    time_wait: float = opt(
        _TCP.time_wait,
        "Seconds a connection the endpoint closed first stays in TIME-WAIT.",
        min=0.0,
        max=240.0,
    )
    max_connections: int = opt(
        _TCP.max_connections,
        "Most connections at once; SYNs beyond it are refused with RST.",
        min=1,
        max=1 << 22,
    )
    max_connections_per_source: int = opt(
        _TCP.max_connections_per_source,
        "Most connections of one passenger (client address) at once; its SYNs beyond it are "
        "refused with RST.",
        min=1,
        max=1 << 22,
    )
    max_half_open: int = opt(
        _TCP.max_half_open,
        "Most connections whose handshake is not complete (SYN-RECEIVED) at once; SYNs "
        "beyond it are answered with SYN cookies (no state kept).",
        min=1,
        max=1 << 22,
    )
    max_half_open_per_source: int = opt(
        _TCP.max_half_open_per_source,
        "Most half-open connections of one passenger; its SYNs beyond it get SYN cookies.",
        min=1,
        max=1 << 22,
    )
    syn_cookies: bool = opt(
        _TCP.syn_cookies,
        "Answer SYNs beyond the half-open limits with SYN cookies; false: drop them (the "
        "client retries). A cookie keeps the MSS (rounded down to 536, 1300, 1440 or 1460), "
        "window scaling and SACK only with clients that use timestamps.",
    )
    rst_rate: int = opt(
        _TCP.rst_rate,
        "Most RSTs per second answering segments of no connection (stray ACKs, FINs, data; "
        "refused SYNs); beyond it they are dropped and counted.",
        min=1,
        max=1 << 24,
    )
    ofo_memory: int = opt(
        _TCP.ofo_memory,
        "Bytes one connection's out-of-order data may hold, counting 96 bytes per stored "
        "piece and per range besides the payload; out-of-order segments beyond it are "
        "dropped (the client sends them again). Keep it above gateway.buffer_bytes.",
        min=64 << 10,
        max=1 << 30,
    )
    gso: bool = opt(
        _TCP.gso, "Hand segments of up to 64 KiB to the kernel to cut (PACKET_VNET_HDR + GSO)."
    )

    def params(self) -> TcpParams:
        """The endpoint's parameters these settings give (one field each, same names)."""
        return TcpParams(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TcpParams)})


@dataclass(frozen=True)
class ContextConfig:
    """Third-party context on the gateway (docs/gateway.md, "Carrier context")."""

    source: str = opt(
        "none",
        "Where each carrier's cell id, RSRP and position come from: none; replay (one "
        "5G-drive CSV per carrier, e.g. written by 'mpproxy testbed rail'); command (a "
        "helper program printing JSON lines); modemmanager (the modems themselves, read "
        "with ModemManager's mmcli).",
        choices=("none", "replay", "command", "modemmanager"),
    )
    replay_files: list[str] = opt(
        [], "For source = replay: one CSV per [[gateway.carriers]] table, in the same order."
    )
    replay_start: float = opt(
        0.0,
        "CLOCK_MONOTONIC time (s) at which the files' first second plays, e.g. the testbed's "
        "trace start so that the context matches the emulated links; 0: when the gateway "
        "starts.",
        min=0.0,
        max=1e9,
    )
    replay_loop: bool = opt(True, "Start the files again after their last second.")
    replay_time_scale: float = opt(
        1.0,
        "Seconds each record lasts, like the testbed's time_scale for its traces (2: twice "
        "as slow).",
        min=0.01,
        max=100.0,
    )
    command: list[str] = opt(
        [], "For source = command: program and arguments; its stdout is read as JSON lines."
    )
    modems: list[str] = opt(
        [],
        "For source = modemmanager: which modem serves each [[gateway.carriers]] table, in "
        "the same order: its ModemManager index ('0'), equipment id (IMEI), device id or a "
        "port name; a missing or empty entry: the modem owning the carrier's interface.",
    )
    modem_program: str = opt("mmcli", "For source = modemmanager: the mmcli program (on PATH).")
    modem_interval: float = opt(
        1.0,
        "For source = modemmanager: seconds between polls of the modems (each runs mmcli "
        "once, plus two or three times per carrier; the loop looks once a second).",
        min=1.0,
        max=3600.0,
    )
    modem_timeout: float = opt(
        5.0,
        "For source = modemmanager: seconds one mmcli run may take before it is killed "
        "and counted (timeouts).",
        min=0.1,
        max=600.0,
    )
    modem_location: bool = opt(
        True,
        "For source = modemmanager: also ask each modem for its serving cell and GPS fix "
        "(mmcli --location-get; enable the modem's 3GPP and GPS location first).",
    )
    modem_signal_setup: bool = opt(
        True,
        "For source = modemmanager: switch a modem's extended signal reporting on (mmcli "
        "--signal-setup) when it is off, once per modem appearance.",
    )
    report_interval: float = opt(
        1.0,
        "Seconds between CONTEXT reports to the node per carrier; 0: none.",
        min=0.0,
        max=3600.0,
    )
    use_contextdb: bool = opt(
        False,
        "Open the [contextdb] database: its predictions feed the scheduler (policy "
        "'context'). The gateway writes it; the node opens an existing one read-only and "
        "feeds it the gateways' CONTEXT reports.",
    )
    learn: bool = opt(
        True, "With use_contextdb: store the context and measured performance as the train runs."
    )
    measure: str = opt(
        "down",
        "Direction whose measured throughput is learnt and matched (the drive logs hold downlink).",
        choices=("down", "up"),
    )
    learn_unsaturated: bool = opt(
        False,
        "Also store throughput of seconds in which the carrier was not saturated (it is "
        "what passengers used, not what the carrier could carry); false: stored as unknown.",
    )
    flush_interval: float = opt(
        1.0, "Seconds between writes of learnt windows to the database.", min=0.1, max=3600.0
    )


def _check_listen(value: str) -> str | None:
    return None if value == "" else _check_hostport(value)


def listen_is_loopback(address: str) -> bool:
    """Whether HOST:PORT names a loopback address (``localhost`` counts; a wildcard such
    as ``0.0.0.0`` or any name that needs resolving does not)."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics and the live status page (docs/metrics.md)."""

    listen: str = opt(
        "",
        "HOST:PORT of the HTTP listener serving /metrics (Prometheus text format), "
        "/status.json and the status page at /; empty: off. Loopback unless allow_remote.",
        check=_check_listen,
    )
    allow_remote: bool = opt(
        False,
        "Allow a listen address that is not loopback. The page and /status.json name the "
        "passengers' addresses and the carriers' positions and have no authentication: put "
        "a proxy with TLS and authentication in front, or scrape over a private network.",
    )
    interval: float = opt(
        1.0,
        "Seconds between the snapshots the data-path loop publishes for the listener (each "
        "builds the status dict of 'mpproxy status' once; scrapes and page loads in between "
        "read the last one).",
        min=0.1,
        max=60.0,
    )
    history: int = opt(
        300,
        "Snapshots kept for the page's charts of goodput and RTT (per path).",
        min=10,
        max=3600,
    )
    track_seconds: float = opt(
        1800.0,
        "Seconds of the vehicle's recent track (windows this gateway stored in the context "
        "database) drawn on the gateway's page.",
        min=10.0,
        max=86400.0,
    )

    def __post_init__(self) -> None:
        if self.listen and not self.allow_remote and not listen_is_loopback(self.listen):
            raise ConfigError(
                f"listen: {_show(self.listen)} is not a loopback address; the status "
                "page is unauthenticated and names passengers' addresses: listen on "
                "127.0.0.1, or set metrics.allow_remote = true behind an authenticating proxy"
            )


_DG = DatagramClasses()  # the class rule's defaults, written once (scheduler/datagrams.py)


@dataclass(frozen=True)
class UdpConfig:
    """UDP carried over the paths as DATAGRAM messages (docs/gateway.md, "UDP")."""

    enabled: bool = opt(
        True,
        "Gateway: capture the passengers' UDP in the listener and carry it over the paths; "
        "node: relay it (false: the gateway leaves UDP to ordinary routing, the node drops "
        "datagrams).",
    )
    idle_timeout: float = opt(
        120.0,
        "Seconds without a datagram either way before a flow's state (gateway) and its "
        "mapping and socket (node) are removed (Linux conntrack's UDP stream timeout).",
        min=1.0,
        max=86400.0,
    )
    short_timeout: float = opt(
        30.0,
        "The same for a flow that sent at most one datagram toward its server (a DNS "
        "lookup from a port of its own); at most idle_timeout.",
        min=1.0,
        max=86400.0,
    )
    max_flows: int = opt(
        16384, "Gateway: most UDP flows at once; new flows beyond it are dropped.", min=1,
        max=1 << 22,
    )  # fmt: skip
    max_flows_per_source: int = opt(
        1024, "Gateway: most UDP flows of one passenger address.", min=1, max=1 << 22
    )
    session_flows: int = opt(
        16384, "Node: most UDP mappings (sockets) per gateway session.", min=1, max=1 << 22
    )
    max_datagram: int = opt(
        1472,
        "Largest UDP payload carried, bytes (1472 fills a 1500-byte IPv4 packet); larger "
        "ones are dropped and counted (nothing is fragmented).",
        min=512,
        max=65507,
    )
    window: int = opt(
        4096,
        "Sequence numbers per flow and direction the receiver remembers to drop copies; a "
        "datagram older than that is dropped as stale.",
        min=64,
        max=1 << 20,
    )
    single_ports: list[str] = opt(
        list(_DG.single_ports),
        "Server ports whose flows take one path at a time (QUIC).",
        check=_check_ports,
    )
    duplicate_ports: list[str] = opt(
        list(_DG.duplicate_ports),
        "Server ports whose flows are duplicated (DNS, NTP, STUN/TURN, SIP, WebRTC).",
        check=_check_ports,
    )
    duplicate_rate: int = opt(
        _DG.duplicate_rate,
        "Other flows are duplicated while they send at most this many bytes per second, "
        "and take one path above it.",
        min=0,
        max=1 << 40,
    )
    copies: int = opt(
        _DG.copies, "Copies of a duplicated datagram (0: one on every path).", min=0, max=16
    )

    def classes(self) -> DatagramClasses:
        """The scheduler's class rule with these settings."""
        return dataclasses.replace(
            _DG,
            single_ports=tuple(self.single_ports),
            duplicate_ports=tuple(self.duplicate_ports),
            duplicate_rate=self.duplicate_rate,
            copies=self.copies,
        )


@dataclass(frozen=True)
class LoggingConfig:
    level: str = opt("info", "Log level.", choices=("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class Config:
    gateway: GatewayConfig = opt(GatewayConfig(), "The vehicle side.")
    node: NodeConfig = opt(NodeConfig(), "The cloud side.")
    tls: TLSConfig = opt(TLSConfig(), "Path encryption and mutual authentication.")
    paths: PathConfig = opt(PathConfig(), "Carrier path sockets (both sides).")
    wire: WireConfig = opt(WireConfig(), "Message framing between gateway and node.")
    tcp: TcpConfig = opt(TcpConfig(), "User-space TCP endpoint facing the passengers.")
    scheduler: SchedulerConfig = opt(
        SchedulerConfig(), "Per-message path scheduling (see docs/scheduler.md)."
    )
    contextdb: ContextDBConfig = opt(
        ContextDBConfig(), "Long-term, location-aware history (see docs/contextdb.md)."
    )
    context: ContextConfig = opt(
        ContextConfig(), "Carrier context on the gateway: source, reports, live learning."
    )
    metrics: MetricsConfig = opt(
        MetricsConfig(), "Prometheus metrics and the live status page (gateway and node)."
    )
    udp: UdpConfig = opt(UdpConfig(), "UDP over the paths (gateway capture, node relay).")
    logging: LoggingConfig = opt(LoggingConfig(), "Logging.")

    def __post_init__(self) -> None:
        names = [c.name for c in self.gateway.carriers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(
                f"gateway.carriers: carrier names must be unique (repeated: {', '.join(dupes)})"
            )
        if self.wire.message_size + DATA_FIXED > self.wire.max_payload:
            raise ConfigError(
                "wire.message_size: must leave room for the DATA header within "
                f"wire.max_payload ({self.wire.message_size} + {DATA_FIXED} > "
                f"{self.wire.max_payload})"
            )

    def mux_params(self, side: str, peer_max_payload: int | None = None) -> MuxParams:
        """The session core's parameters on ``side`` ("gateway" or "node");
        ``peer_max_payload``: the limit the peer announced in HELLO / HELLO_ACK."""
        own = self.gateway if side == "gateway" else self.node
        max_data = max_data_payload(peer_max_payload or self.wire.max_payload)
        return MuxParams(
            buffer_bytes=own.buffer_bytes,
            buffer_max=max(own.buffer_bytes, own.buffer_max_bytes),
            message_size=min(self.wire.message_size, max_data),
            max_data=max_data,
            stall_min=self.paths.stall_min,
            paths_lost_timeout=self.paths.lost_timeout,
            reorder_overhead=self.wire.reorder_overhead,
            **({"max_connections": self.node.session_connections} if side == "node" else {}),
        )


# -- loading -----------------------------------------------------------------------------

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: must be a list (got {type(value).__name__})")
        return [_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"{key}: union types are not supported in configuration")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: must be a table (got {type(value).__name__})")
        return from_dict(tp, value, prefix=key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{key}: must be {_TYPE_NAMES.get(tp, tp.__name__)} (got {_show(value)})")
    if tp in (int, float) and (err := number_error(value)):
        raise ConfigError(f"{key}: {err}")
    return value


def _validate(f: dataclasses.Field, value: Any, key: str) -> None:
    meta = f.metadata
    lo, hi, choices, check = (
        meta.get("min"),
        meta.get("max"),
        meta.get("choices"),
        meta.get("check"),
    )
    if (lo is not None or hi is not None) and (err := number_error(value, lo, hi)):
        raise ConfigError(f"{key}: {err}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)} (got {_show(value)})")
    if check is not None and (err := check(value)):
        raise ConfigError(f"{key}: {err}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a parsed TOML table, strictly."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{key}: unknown key (known here: {known})")
        converted = _convert(hints[name], value, key)
        _validate(fields[name], converted, key)
        kwargs[name] = converted
    # Defaults are validated too, so a field whose default is invalid (an empty carrier
    # name) must be given explicitly.
    for name, f in fields.items():
        if name not in kwargs and f.metadata.get("check") is not None:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            key = f"{prefix}.{name}" if prefix else name
            if err := f.metadata["check"](default):
                raise ConfigError(f"{key}: required ({err})")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if prefix:
            raise ConfigError(f"{prefix}.{e}") from None
        raise


def load(path: str | Path) -> Config:
    """Load and validate a configuration file; errors name the file and the key."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise ConfigError(f"{path}: not usable TOML: {e}") from None
    except RecursionError:  # arrays or tables nested hundreds deep
        raise ConfigError(f"{path}: not usable TOML: nested too deeply") from None
    try:
        return from_dict(Config, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


# -- documentation -------------------------------------------------------------------------


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def _doc_rows(cls: type, prefix: str) -> list[str]:
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}.{f.name}"
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            sub = typing.get_args(tp)[0]
            rows.append(f"| `{key}` | array of tables | | {f.metadata['doc']} |")
            rows.extend(_doc_rows(sub, f"{key}[]"))
            continue
        meta = f.metadata
        limits = []
        if meta.get("min") is not None:
            limits.append(f">= {meta['min']}")
        if meta.get("max") is not None:
            limits.append(f"<= {meta['max']}")
        if meta.get("choices"):
            limits.append("one of " + ", ".join(f"`{c}`" for c in meta["choices"]))
        default = _toml_value(_default_of(f))
        doc = meta["doc"] + (f" ({'; '.join(limits)})" if limits else "")
        rows.append(f"| `{key}` | `{default}` | {getattr(tp, '__name__', str(tp))} | {doc} |")
    return rows


def render_docs() -> str:
    """The body of docs/configuration.md, generated from the dataclasses."""
    out = [
        "# Configuration",
        "",
        "<!-- Generated by `mpproxy config docs`; tests/middlebox/test_config.py checks it. -->",
        "",
        "Gateway and node read one TOML file (`--config FILE`). Every key is optional",
        "unless marked required; unknown keys, wrong types and out-of-range values are",
        "refused at start with a message naming the file and the key. Check a file with",
        "`mpproxy config check FILE`; print a file with every default with",
        "`mpproxy config defaults`.",
        "",
    ]
    for f in dataclasses.fields(Config):
        sub = typing.get_type_hints(Config)[f.name]
        out += [
            f"## [{f.name}]",
            "",
            f.metadata["doc"],
            "",
            "| key | default | type | meaning |",
            "| --- | --- | --- | --- |",
        ]
        out += _doc_rows(sub, f.name)
        out.append("")
    out += [
        "Carrier tables (`[[gateway.carriers]]`) have no usable default for `name`: each",
        "must be given. Example:",
        "",
        "```toml",
        "[gateway]",
        'id = "train-0042"',
        'node = "203.0.113.10:4433"',
        "",
        "[[gateway.carriers]]",
        'name = "carrier-a"',
        'interface = "wwan0"',
        "",
        "[[gateway.carriers]]",
        'name = "carrier-b"',
        'type = "5g"',
        'interface = "wwan1"',
        "```",
        "",
    ]
    return "\n".join(out)


def render_defaults() -> str:
    """A TOML file that sets every key to its default (carriers left empty)."""
    out = []
    cfg = Config()
    for f in dataclasses.fields(Config):
        section = getattr(cfg, f.name)
        out.append(f"[{f.name}]")
        for sf in dataclasses.fields(section):
            value = getattr(section, sf.name)
            if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
                continue
            if isinstance(value, list) and not value and sf.name == "carriers":
                continue
            out.append(f"{sf.name} = {_toml_value(value)}")
        out.append("")
    return "\n".join(out)
