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

IPv6 addresses that embed an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, NAT64
``64:ff9b::/96``, 6to4 ``2002::/16``) are judged by the IPv4 address they carry, because
that is where a connection to them can end up.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from middlebox.config import NodeConfig

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
        ),
    ),
)
NEVER = frozenset({"unspecified", "broadcast", "multicast"})
_NAT64 = _NET("64:ff9b::/96")


def category(addr: IPAddress | str) -> str | None:
    """The special-purpose category of ``addr``, or None for a global unicast address."""
    a = ipaddress.ip_address(addr)
    if isinstance(a, ipaddress.IPv6Address):
        embedded = _embedded_v4(a)
        if embedded is not None:
            return category(embedded)
    for name, nets in _CATEGORIES:
        if any(a in n for n in nets if n.version == a.version):
            return name
    if not a.is_global:  # whatever else the running Python knows to be non-global
        return "reserved"
    return None


def _embedded_v4(a: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if a.ipv4_mapped is not None:
        return a.ipv4_mapped
    if a in _NAT64:
        return ipaddress.IPv4Address(int(a) & 0xFFFFFFFF)
    return a.sixtofour


@dataclass(frozen=True)
class DestinationPolicy:
    """Decides whether the node may connect to a destination address."""

    allow_private: bool = False
    allowed: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def make(cls, allow_private: bool = False, allowed: Sequence[str] = ()) -> DestinationPolicy:
        return cls(allow_private, tuple(ipaddress.ip_network(p, strict=False) for p in allowed))

    @classmethod
    def from_config(cls, node: NodeConfig) -> DestinationPolicy:
        return cls.make(node.allow_private_destinations, node.allowed_destinations)

    def refusal(self, addr: IPAddress | str) -> str | None:
        """Why a connection to ``addr`` is refused, or None when it is allowed."""
        try:
            a = ipaddress.ip_address(addr)
        except ValueError:
            return f"not an IP address: {addr!r}"
        cat = category(a)
        if cat is None:
            return None
        if cat in NEVER:
            return f"{a} is a {cat} address"
        if self.allow_private or any(a in n for n in self.allowed if n.version == a.version):
            return None
        return (
            f"{a} is a {cat} address (allow it with node.allowed_destinations "
            "or node.allow_private_destinations)"
        )

    def allows(self, addr: IPAddress | str) -> bool:
        return self.refusal(addr) is None
