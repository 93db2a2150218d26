"""The node's destination filter: the node must not be an open relay into its own network.

An authenticated gateway asks the node to connect to a client's original destination.
Without a filter, anyone who controls (or spoofs traffic through) a gateway could reach
the node's loopback services, its cloud metadata endpoint (169.254.169.254) or its
private network. So destinations outside the global unicast Internet are refused unless
the operator allows them:

* ``node.allowed_destinations``: prefixes allowed whatever their category (narrow holes);
* ``node.allow_private_destinations = true``: every category allowed (closed testbeds).

Never allowed, whatever the configuration: the unspecified address (``connect()`` to
0.0.0.0 reaches the node itself), multicast and the limited broadcast address (no TCP
to them can succeed, and a clear refusal beats a confusing timeout).

Documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) are
refused by default like private ones: nothing legitimate lives there on the Internet,
so refusing them costs production nothing, while allowing them would let them alias
whatever an operator's network puts there. The testbed, whose servers use exactly these
ranges, lists them in ``node.allowed_destinations``.

IPv6 addresses that embed an IPv4 address are judged by the IPv4 address they carry,
because that is where a connection to them can end up: IPv4-mapped ``::ffff:a.b.c.d``,
IPv4-translated ``::ffff:0:a.b.c.d`` (SIIT), IPv4-compatible ``::a.b.c.d`` (deprecated,
but a dual-stack kernel may still deliver it to the IPv4 address), the well-known NAT64
prefix ``64:ff9b::/96`` and 6to4 ``2002::/16``. The local-use NAT64 prefix
``64:ff9b:1::/48`` (RFC 8215) is refused as reserved: where its IPv4 address sits
depends on the prefix length the operator's translator uses (RFC 6052), nothing on the
Internet lives there, and an operator who runs such a translator allows it explicitly.

The node's own addresses are refused too (a gateway could otherwise reach whatever the
node runs on its public address: its SSH, a database bound to every interface): the
addresses of its interfaces, read at start and again whenever the kernel reports an
address change (:class:`LocalAddresses`, a netlink subscription read without blocking
at each check), and whatever IPv4 address an IPv6 form above embeds. Only
``node.allow_private_destinations = true`` opens them; an ``allowed_destinations``
prefix that happens to contain one does not (it names a network beside the node, not
the node). Loopback keeps its own category: a prefix such as ``127.0.0.0/8`` names the
node's own services deliberately.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from middlebox.config import NodeConfig

log = logging.getLogger("mpproxy.node")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NET = ipaddress.ip_network
# Category of special-purpose ranges, checked in this order (the first match names it).
# Python's ipaddress flags cover most of these; the table keeps the reason precise and
# independent of the flags' changes across Python versions.
_CATEGORIES: tuple[tuple[str, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]], ...] = (
    ("unspecified", (_NET("0.0.0.0/32"), _NET("::/128"))),
    ("broadcast", (_NET("255.255.255.255/32"),)),
    ("multicast", (_NET("224.0.0.0/4"), _NET("ff00::/8"))),
    ("loopback", (_NET("127.0.0.0/8"), _NET("::1/128"))),
    ("link-local", (_NET("169.254.0.0/16"), _NET("fe80::/10"))),
    (
        "documentation",
        (
            _NET("192.0.2.0/24"),
            _NET("198.51.100.0/24"),
            _NET("203.0.113.0/24"),
            _NET("2001:db8::/32"),
            _NET("3fff::/20"),
        ),
    ),
    (
        "private",
        (
            _NET("10.0.0.0/8"),
            _NET("172.16.0.0/12"),
            _NET("192.168.0.0/16"),
            _NET("fc00::/7"),
        ),
    ),
    ("shared", (_NET("100.64.0.0/10"),)),  # carrier-grade NAT
    ("this-network", (_NET("0.0.0.0/8"),)),
    (
        "reserved",
        (
            _NET("240.0.0.0/4"),
            _NET("192.0.0.0/24"),  # IETF protocol assignments
            _NET("198.18.0.0/15"),  # benchmarking
            _NET("100::/64"),  # discard-only
            _NET("2001::/23"),  # IETF protocol assignments (Teredo and ORCHID inside)
            _NET("fec0::/10"),  # deprecated site-local
            _NET("64:ff9b:1::/48"),  # local-use NAT64 (see the module text)
        ),
    ),
)
NEVER = frozenset({"unspecified", "broadcast", "multicast"})
# IPv6 prefixes whose last 32 bits are an IPv4 address
_EMBEDDING = (
    _NET("::ffff:0:0/96"),  # IPv4-mapped
    _NET("::ffff:0:0:0/96"),  # IPv4-translated (SIIT)
    _NET("::/96"),  # IPv4-compatible (after :: and ::1, which are checked first)
    _NET("64:ff9b::/96"),  # NAT64, well-known prefix
)
_NOT_EMBEDDING = (ipaddress.IPv6Address("::"), ipaddress.IPv6Address("::1"))


def category(addr: IPAddress | str) -> str | None:
    """The special-purpose category of ``addr``, or None for a global unicast address."""
    a = ipaddress.ip_address(addr)
    if isinstance(a, ipaddress.IPv6Address) and a not in _NOT_EMBEDDING:
        embedded = embedded_v4(a)
        if embedded is not None:
            return category(embedded)
    for name, nets in _CATEGORIES:
        if any(a in n for n in nets if n.version == a.version):
            return name
    if not a.is_global:  # whatever else the running Python knows to be non-global
        return "reserved"
    return None


def embedded_v4(a: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (see the module text), or None."""
    if not isinstance(a, ipaddress.IPv6Address):
        return None
    if any(a in n for n in _EMBEDDING):
        return ipaddress.IPv4Address(int(a) & 0xFFFFFFFF)
    return a.sixtofour


# -- the node's own addresses --------------------------------------------------------------

_RTMGRP_IPV4_IFADDR = 0x10
_RTMGRP_IPV6_IFADDR = 0x100


def interface_addresses() -> set[IPAddress]:
    """Every address of this network namespace's interfaces (netlink)."""
    from pyroute2 import IPRoute

    out: set[IPAddress] = set()
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            # IFA_LOCAL is the own address of a point-to-point link (IFA_ADDRESS its peer)
            text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if text:
                out.add(ipaddress.ip_address(text.split("%")[0]))
    return out


class LocalAddresses:
    """The node's own addresses, kept current without a timer or a thread.

    A netlink socket subscribed to address changes is opened before the first read (so
    no change falls between the two); :meth:`current` reads it without blocking (one
    failing ``recv`` when nothing changed) and reads the addresses again when anything
    arrived, or when the kernel dropped notifications (ENOBUFS). ``read`` is the
    address source (tests pass their own); ``watch=False``: read once.
    """

    def __init__(
        self,
        read: Callable[[], Iterable[IPAddress]] = interface_addresses,
        watch: bool = True,
    ) -> None:
        self._read = read
        self._sock: socket.socket | None = None
        if watch:
            try:
                s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                                  socket.NETLINK_ROUTE)  # fmt: skip
                s.bind((0, _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV6_IFADDR))
                self._sock = s
            except OSError as e:  # no netlink here: the start's addresses stay
                log.warning("own addresses: no change notifications (%s)", e)
        self.addresses: frozenset[IPAddress] = frozenset()
        self.counters = {"own_address_reads": 0, "own_address_read_errors": 0}
        self._refresh()

    def _refresh(self) -> None:
        try:
            self.addresses = frozenset(self._read())
            self.counters["own_address_reads"] += 1
        except Exception as e:  # keep the last known set; a netlink hiccup is no reason to die
            self.counters["own_address_read_errors"] += 1
            log.warning("own addresses: cannot read (%r); keeping the last known", e)

    def _changed(self) -> bool:
        changed = False
        while self._sock is not None:
            try:
                if not self._sock.recv(65536):
                    break
                changed = True
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno != errno.ENOBUFS:  # ENOBUFS: notifications were lost
                    log.warning("own addresses: notifications failed (%s)", e)
                    self._sock.close()
                    self._sock = None
                changed = True
        return changed

    def current(self) -> frozenset[IPAddress]:
        if self._changed():
            self._refresh()
        return self.addresses

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@dataclass(frozen=True)
class DestinationPolicy:
    """Decides whether the node may connect to a destination address.

    ``local`` (the node's :class:`LocalAddresses`; None: not known, as in the cores'
    tests) adds the node's own addresses to what is refused."""

    allow_private: bool = False
    allowed: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    local: LocalAddresses | None = field(default=None, compare=False)

    @classmethod
    def make(
        cls,
        allow_private: bool = False,
        allowed: Sequence[str] = (),
        local: LocalAddresses | None = None,
    ) -> DestinationPolicy:
        nets = tuple(ipaddress.ip_network(p, strict=False) for p in allowed)
        return cls(allow_private, nets, local)

    @classmethod
    def from_config(cls, node: NodeConfig, local: bool = True) -> DestinationPolicy:
        """The node's policy; ``local``: refuse its own addresses (watched for changes)."""
        own = LocalAddresses() if local else None
        return cls.make(node.allow_private_destinations, node.allowed_destinations, own)

    def refusal(self, addr: IPAddress | str) -> str | None:
        """Why a connection to ``addr`` is refused, or None when it is allowed."""
        try:
            a = ipaddress.ip_address(addr)
        except ValueError:
            return f"not an IP address: {str(addr)[:64]!r}"
        cat = category(a)
        if cat in NEVER:
            return f"{a} is a {cat} address"
        if self.allow_private:
            return None
        if cat != "loopback" and self.local is not None:
            own = self.local.current()
            if a in own or embedded_v4(a) in own:
                return (
                    f"{a} is an address of the node itself (allow it with "
                    "node.allow_private_destinations)"
                )
        if cat is None:
            return None
        if any(a in n for n in self.allowed if n.version == a.version):
            return None
        return (
            f"{a} is a {cat} address (allow it with node.allowed_destinations "
            "or node.allow_private_destinations)"
        )

    def allows(self, addr: IPAddress | str) -> bool:
        return self.refusal(addr) is None

    def close(self) -> None:
        if self.local is not None:
            self.local.close()

    def status(self) -> dict:
        """For ``mpproxy status``: the own addresses refused and how often they were read."""
        if self.local is None:
            return {}
        return {"own_addresses": sorted(map(str, self.local.addresses)), **self.local.counters}
