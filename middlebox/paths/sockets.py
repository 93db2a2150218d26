"""Carrier path sockets: one kernel TCP connection per path, pinned to its carrier.

A path must leave through its own modem even when the routing table would pick another
one, so the socket is bound to the carrier's interface (``SO_BINDTODEVICE``) and source
address before it connects. Each path then gets:

* its own congestion control (BBR by default: cellular links lose packets for reasons
  other than congestion, which loss-based algorithms mistake for a full queue);
* ``TCP_NODELAY``: messages are already large; waiting to coalesce only adds delay;
* a small ``TCP_NOTSENT_LOWAT``: the kernel keeps only a little unsent data, so the
  scheduler commits a message to a path shortly before it can leave ("keep decisions
  late") and the socket reports writable only when that backlog has drained;
* keepalive (``TCP_KEEPIDLE/INTVL/CNT``) and ``TCP_USER_TIMEOUT``, so a path whose
  carrier went silent is declared dead in seconds, not after the kernel's 15 minutes.

:func:`tcp_info` reads the kernel's ``struct tcp_info`` (RTT, delivery rate, cwnd, loss,
unsent bytes...) into :class:`TcpInfo` for the scheduler's path context. The
:class:`ReconnectPolicy` is the sans-I/O rule for when to dial a broken path again:
exponential backoff with jitter, capped, restarted once a connection has proved stable.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import random
import socket
import struct
from dataclasses import dataclass

from middlebox.config import CarrierConfig, PathConfig

SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
TCP_INFO = getattr(socket, "TCP_INFO", 11)


class PathSetupError(Exception):
    """A path socket could not be created as configured (the message says why)."""


@dataclass(frozen=True)
class PathOptions:
    """Everything that makes a socket a carrier path."""

    interface: str = ""  # empty: not bound to a device
    source: str = ""  # empty: the kernel picks
    congestion_control: str = "bbr"
    notsent_lowat: int = 4 << 20
    keepalive_idle: int = 5
    keepalive_interval: int = 2
    keepalive_count: int = 3
    user_timeout: float = 10.0

    @classmethod
    def for_carrier(cls, carrier: CarrierConfig, paths: PathConfig) -> PathOptions:
        return cls(
            interface=carrier.interface,
            source=carrier.address,
            congestion_control=carrier.congestion_control,
            **_socket_fields(paths),
        )

    @classmethod
    def for_node(cls, paths: PathConfig, congestion_control: str = "bbr") -> PathOptions:
        """Options for the node's end of accepted paths (no device or source binding)."""
        return cls(congestion_control=congestion_control, **_socket_fields(paths))


def _socket_fields(paths: PathConfig) -> dict:
    return {
        "notsent_lowat": paths.notsent_lowat,
        "keepalive_idle": paths.keepalive_idle,
        "keepalive_interval": paths.keepalive_interval,
        "keepalive_count": paths.keepalive_count,
        "user_timeout": paths.user_timeout,
    }


def configure(sock: socket.socket, opts: PathOptions) -> list[tuple[str, str]]:
    """Apply congestion control, NODELAY, NOTSENT_LOWAT, keepalive and user timeout.

    Each option is set on its own: one the kernel refuses (a congestion control module
    that is not loaded, say) must not leave the path without the others, above all the
    keepalive and user timeout that make a dead carrier's path fail in seconds. Returns
    the options that failed, as (name, reason); the caller decides whether that is fatal
    (the gateway: a configured congestion control that is missing is) and logs it.
    """
    failed = []
    for name, level, option, value in _options(opts):
        try:
            sock.setsockopt(level, option, value)
        except OSError as e:
            failed.append((name, e.strerror or str(e)))
    return failed


def _options(opts: PathOptions) -> list[tuple[str, int, int, int | bytes]]:
    tcp = socket.IPPROTO_TCP
    return [
        ("congestion_control", tcp, TCP_CONGESTION, opts.congestion_control.encode()),
        ("nodelay", tcp, socket.TCP_NODELAY, 1),
        ("notsent_lowat", tcp, TCP_NOTSENT_LOWAT, opts.notsent_lowat),
        ("keepalive", socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        ("keepalive_idle", tcp, socket.TCP_KEEPIDLE, opts.keepalive_idle),
        ("keepalive_interval", tcp, socket.TCP_KEEPINTVL, opts.keepalive_interval),
        ("keepalive_count", tcp, socket.TCP_KEEPCNT, opts.keepalive_count),
        ("user_timeout", tcp, TCP_USER_TIMEOUT, int(opts.user_timeout * 1000)),
    ]


def _setup_error(opts: PathOptions, failed: list[tuple[str, str]]) -> PathSetupError:
    name, why = failed[0]
    if name == "congestion_control":
        return PathSetupError(
            f"congestion control {opts.congestion_control!r} is not available "
            f"({why}; see /proc/sys/net/ipv4/tcp_available_congestion_control)"
        )
    return PathSetupError(f"socket option {name}: {why}")


def open_path_socket(opts: PathOptions, family: int | None = None) -> socket.socket:
    """A configured, unconnected TCP socket bound to the carrier's device and address.

    ``family`` defaults to the source address's, or IPv4. The caller connects it
    (blocking or not; :func:`connect_path` is the blocking convenience)."""
    if opts.source:
        src = ipaddress.ip_address(opts.source)
        src_family = socket.AF_INET6 if src.version == 6 else socket.AF_INET
        if family is not None and family != src_family:
            raise PathSetupError(
                f"source address {opts.source} cannot reach an "
                f"IPv{6 if family == socket.AF_INET6 else 4} node"
            )
        family = src_family
    family = family or socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if opts.interface:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, opts.interface.encode())
            except OSError as e:
                why = "no such interface" if e.errno == errno.ENODEV else e.strerror
                raise PathSetupError(f"interface {opts.interface!r}: cannot bind ({why})") from None
        if opts.source:
            try:
                sock.bind((opts.source, 0))
            except OSError as e:
                raise PathSetupError(
                    f"source address {opts.source}: cannot bind ({e.strerror})"
                ) from None
        failed = configure(sock, opts)
        if failed:  # a carrier path the configuration cannot have is not dialled
            raise _setup_error(opts, failed)
    except BaseException:
        sock.close()
        raise
    return sock


def connect_path(opts: PathOptions, host: str, port: int, timeout: float) -> socket.socket:
    """Open a path socket and connect it to the node, blocking up to ``timeout``."""
    want = None
    if opts.source:
        want = socket.AF_INET6 if ipaddress.ip_address(opts.source).version == 6 else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host, port, want or socket.AF_UNSPEC, socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise PathSetupError(f"node {host}:{port}: cannot resolve ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = open_path_socket(opts, family)
    sock.settimeout(timeout)
    try:
        sock.connect(addr)
    except BaseException:
        sock.close()
        raise
    return sock


# -- TCP_INFO ----------------------------------------------------------------------------

# struct tcp_info of <linux/tcp.h>, in order; times in the unit their name says,
# rates in bytes per second, windows in segments unless named otherwise.
_TCP_INFO_FIELDS = (
    ("state", "B"),
    ("ca_state", "B"),
    ("retransmits", "B"),
    ("probes", "B"),
    ("backoff", "B"),
    ("options", "B"),
    ("wscale", "B"),  # snd_wscale:4, rcv_wscale:4
    ("flags", "B"),  # delivery_rate_app_limited:1, fastopen_client_fail:2
    ("rto_us", "I"),
    ("ato_us", "I"),
    ("snd_mss", "I"),
    ("rcv_mss", "I"),
    ("unacked", "I"),
    ("sacked", "I"),
    ("lost", "I"),
    ("retrans", "I"),
    ("fackets", "I"),
    ("last_data_sent_ms", "I"),
    ("last_ack_sent_ms", "I"),
    ("last_data_recv_ms", "I"),
    ("last_ack_recv_ms", "I"),
    ("pmtu", "I"),
    ("rcv_ssthresh", "I"),
    ("srtt_us", "I"),  # tcpi_rtt: the smoothed RTT
    ("rttvar_us", "I"),
    ("snd_ssthresh", "I"),
    ("snd_cwnd", "I"),
    ("advmss", "I"),
    ("reordering", "I"),
    ("rcv_rtt_us", "I"),
    ("rcv_space", "I"),
    ("total_retrans", "I"),
    ("pacing_rate", "Q"),
    ("max_pacing_rate", "Q"),
    ("bytes_acked", "Q"),
    ("bytes_received", "Q"),
    ("segs_out", "I"),
    ("segs_in", "I"),
    ("notsent_bytes", "I"),
    ("min_rtt_us", "I"),
    ("data_segs_in", "I"),
    ("data_segs_out", "I"),
    ("delivery_rate", "Q"),
    ("busy_time_us", "Q"),
    ("rwnd_limited_us", "Q"),
    ("sndbuf_limited_us", "Q"),
    ("delivered", "I"),
    ("delivered_ce", "I"),
    ("bytes_sent", "Q"),
    ("bytes_retrans", "Q"),
    ("dsack_dups", "I"),
    ("reord_seen", "I"),
    ("rcv_ooopack", "I"),
    ("snd_wnd", "I"),  # bytes
    ("rcv_wnd", "I"),  # bytes
    ("rehash", "I"),
    ("total_rto", "H"),
    ("total_rto_recoveries", "H"),
    ("total_rto_time_ms", "I"),
)
_TCP_INFO = struct.Struct("@" + "".join(f for _, f in _TCP_INFO_FIELDS))

TCP_STATES = (
    "", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
    "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING",
)  # fmt: skip


@dataclass(frozen=True)
class TcpInfo:
    """The kernel's view of one TCP connection. Fields the running kernel does not
    report (older kernels return a shorter struct) read as 0; ``size`` says how many
    bytes it returned."""

    size: int
    state: int
    ca_state: int
    retransmits: int
    probes: int
    backoff: int
    options: int
    wscale: int
    flags: int
    rto_us: int
    ato_us: int
    snd_mss: int
    rcv_mss: int
    unacked: int
    sacked: int
    lost: int
    retrans: int
    fackets: int
    last_data_sent_ms: int
    last_ack_sent_ms: int
    last_data_recv_ms: int
    last_ack_recv_ms: int
    pmtu: int
    rcv_ssthresh: int
    srtt_us: int
    rttvar_us: int
    snd_ssthresh: int
    snd_cwnd: int
    advmss: int
    reordering: int
    rcv_rtt_us: int
    rcv_space: int
    total_retrans: int
    pacing_rate: int
    max_pacing_rate: int
    bytes_acked: int
    bytes_received: int
    segs_out: int
    segs_in: int
    notsent_bytes: int
    min_rtt_us: int
    data_segs_in: int
    data_segs_out: int
    delivery_rate: int
    busy_time_us: int
    rwnd_limited_us: int
    sndbuf_limited_us: int
    delivered: int
    delivered_ce: int
    bytes_sent: int
    bytes_retrans: int
    dsack_dups: int
    reord_seen: int
    rcv_ooopack: int
    snd_wnd: int
    rcv_wnd: int
    rehash: int
    total_rto: int
    total_rto_recoveries: int
    total_rto_time_ms: int

    @property
    def state_name(self) -> str:
        return TCP_STATES[self.state] if self.state < len(TCP_STATES) else str(self.state)

    @property
    def srtt(self) -> float:
        """Smoothed RTT in seconds."""
        return self.srtt_us / 1e6

    @property
    def rttvar(self) -> float:
        return self.rttvar_us / 1e6

    @property
    def min_rtt(self) -> float:
        return self.min_rtt_us / 1e6

    @property
    def cwnd_bytes(self) -> int:
        return self.snd_cwnd * self.snd_mss

    @property
    def app_limited(self) -> bool:
        """The last delivery rate sample was limited by the sender having nothing to send."""
        return bool(self.flags & 1)

    @classmethod
    def parse(cls, raw: bytes) -> TcpInfo:
        padded = raw[: _TCP_INFO.size].ljust(_TCP_INFO.size, b"\0")
        return cls(len(raw), *_TCP_INFO.unpack(padded))


assert [f.name for f in dataclasses.fields(TcpInfo)][1:] == [n for n, _ in _TCP_INFO_FIELDS]


def delivering(before: TcpInfo | None, info: TcpInfo) -> bool:
    """Whether a path showed between two readings that it delivers: its acknowledged
    bytes advanced since ``before`` (the previous reading, None: none), or nothing was in
    flight. The mux's stall rule reads this as the path's progress."""
    acked = before.bytes_acked if before is not None else 0
    return info.bytes_acked > acked or info.unacked == 0


def tcp_info(sock: socket.socket) -> TcpInfo:
    """Read TCP_INFO of a connected TCP socket (one system call)."""
    return TcpInfo.parse(sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 512))


# -- reconnection ------------------------------------------------------------------------


class ReconnectPolicy:
    """When to dial a path again: sans-I/O exponential backoff with jitter.

    The n-th consecutive failure waits ``min(maximum, initial * multiplier**n)`` scaled by
    a random factor in ``[1 - jitter, 1]``, so a fleet of gateways (or the paths of one
    gateway) that lost the node together do not all return in the same instant. A
    connection that stays up for ``stable`` seconds restarts the sequence at
    ``initial``; one that breaks sooner keeps climbing, so a flapping carrier is not
    redialled many times a second.
    """

    def __init__(
        self,
        initial: float = 0.2,
        maximum: float = 15.0,
        jitter: float = 0.5,
        stable: float = 10.0,
        multiplier: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if not (0 < initial and 0 <= jitter <= 1 and multiplier >= 1):
            raise ValueError("need initial > 0, 0 <= jitter <= 1, multiplier >= 1")
        self.initial = initial
        self.maximum = max(maximum, initial)
        self.jitter = jitter
        self.stable = stable
        self.multiplier = multiplier
        self.rng = rng or random.Random()
        self.failures = 0  # consecutive failures since the last stable connection
        self.up_since: float | None = None
        self.next_attempt: float | None = 0.0  # dial at once the first time

    @classmethod
    def from_config(cls, paths: PathConfig, rng: random.Random | None = None) -> ReconnectPolicy:
        return cls(
            paths.reconnect_initial,
            paths.reconnect_max,
            paths.reconnect_jitter,
            paths.reconnect_stable,
            rng=rng,
        )

    def delay(self, failures: int) -> float:
        base = min(self.maximum, self.initial * self.multiplier ** min(failures, 64))
        return base * (1.0 - self.jitter * self.rng.random())

    def connected(self, now: float) -> None:
        """The path is up (after TLS and HELLO, in the shell's judgement)."""
        self.up_since = now
        self.next_attempt = None

    def failed(self, now: float) -> float:
        """A dial failed, or an established path broke; returns when to dial again."""
        if self.up_since is not None and now - self.up_since >= self.stable:
            self.failures = 0
        self.up_since = None
        self.next_attempt = now + self.delay(self.failures)
        self.failures += 1
        return self.next_attempt

    def due(self, now: float) -> bool:
        return self.next_attempt is not None and now >= self.next_attempt
