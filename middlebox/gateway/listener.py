"""The gateway's listener namespace: where captured TCP is terminated.

::

    gateway namespace                              listener namespace
    lan0 --(ip rule: iif lan0, ipproto tcp         mpl-in  <- AF_PACKET capture
            -> table gateway.listener_table) -->   (nft: TCP in on mpl-in dropped before
    mpl-out 169.254.210.1/30  <====== veth =====>   routing; rp_filter off here only)
                                                   169.254.210.2/30

The gateway process runs in its own namespace (the vehicle's router, or the testbed's
gateway namespace). :meth:`Listener.setup` creates the listener namespace and a veth
pair into it, a routing table whose default route points into the listener, and an
``ip rule`` that sends TCP arriving from the LAN interface to that table; everything
else (UDP, ICMP, traffic the gateway itself originates) keeps ordinary routing.
Destinations of ``gateway.bypass`` get an ``ip rule`` of their own one priority earlier
that keeps them on ordinary routing, when no ACL rule could claim them first (the flow
table bypasses the rest itself). Replies leave the listener toward ``mpl-out`` with the
server's address as source; the gateway namespace forwards them to the client (loose
reverse-path filtering on ``mpl-out`` so that they pass).

:meth:`Listener.teardown` removes every rule, route, interface and the namespace it
made, and is safe to call after a partial setup.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess

from middlebox.config import GatewayConfig
from middlebox.gateway.capture import CaptureError, install_drop, remove_drop

log = logging.getLogger("mpproxy.listener")

OUTER_IF = "mpl-out"
INNER_IF = "mpl-in"
NFT_TABLE = "mpproxy_gateway"


class ListenerError(CaptureError):
    """The listener namespace could not be set up."""


def _ip(args: list[str], netns: str | None = None, check: bool = True) -> str:
    cmd = (["ip", "netns", "exec", netns] if netns else []) + ["ip", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and r.returncode:
        raise ListenerError(f"ip {' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def _sysctl(key: str, value: str | None = None) -> str | None:
    path = "/proc/sys/" + key.replace(".", "/")
    try:
        if value is None:
            with open(path) as f:
                return f.read().strip()
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise ListenerError(f"sysctl {key}: {e.strerror}") from None
    return value


def local_prefixes(interface: str | None = None) -> list[str]:
    """The prefixes of this namespace's own IPv4 addresses (of one interface if named)."""
    out = []
    args = ["-j", "addr", "show"] + (["dev", interface] if interface else [])
    for link in json.loads(_ip(args) or "[]"):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                net = ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False)
                out.append(str(net))
    return sorted(set(out))


class Listener:
    """Create and remove the listener namespace with its routing; see the module text."""

    def __init__(self, gw: GatewayConfig) -> None:
        self.gw = gw
        self.ns = gw.listener_namespace
        net = ipaddress.ip_network(gw.listener_subnet, strict=False)
        if net.version != 4 or net.num_addresses < 4:
            raise ListenerError(f"gateway.listener_subnet {net}: need an IPv4 /30 or larger")
        hosts = list(net.hosts())
        self.outer_addr, self.inner_addr = str(hosts[0]), str(hosts[1])
        self.prefixlen = net.prefixlen
        self.inner_if = INNER_IF
        self.rules: list[list[str]] = []
        self.made_ns = False
        self.made_veth = False
        self.made_route = False
        self.drop = False
        self.untracked = False
        self.old_forward: str | None = None
        self.old_rp: str | None = None

    def bypass_rules(self) -> list[str]:
        """Bypass prefixes safe to keep out of the listener by routing alone."""
        claimed = [r for r in self.gw.acl if r.action != "bypass"]
        if any(not r.dst for r in claimed):
            return []  # a rule for every destination comes first: the flow table decides
        taken = [ipaddress.ip_network(p, strict=False) for r in claimed for p in r.dst]
        taken += [ipaddress.ip_network(p, strict=False) for p in self.gw.deny]
        out = []
        for p in self.gw.bypass:
            net = ipaddress.ip_network(p, strict=False)
            if net.version == 4 and not any(net.overlaps(t) for t in taken):
                out.append(str(net))
        return out

    def setup(self) -> None:
        gw = self.gw
        if not os.path.exists(f"/sys/class/net/{gw.lan_interface}"):
            raise ListenerError(f"gateway.lan_interface {gw.lan_interface!r}: no such interface")
        if os.path.exists(f"/var/run/netns/{self.ns}"):
            raise ListenerError(
                f"network namespace {self.ns!r} exists already (another gateway running, or "
                f"left over: 'ip netns del {self.ns}')"
            )
        try:
            self._setup()
        except BaseException:
            self.teardown()
            raise

    def _setup(self) -> None:
        gw, ns = self.gw, self.ns
        _ip(["netns", "add", ns])
        self.made_ns = True
        _ip(["link", "set", "lo", "up"], ns)
        _ip(["link", "add", OUTER_IF, "type", "veth", "peer", "name", INNER_IF, "netns", ns])
        self.made_veth = True
        _ip(["addr", "add", f"{self.outer_addr}/{self.prefixlen}", "dev", OUTER_IF])
        _ip(["link", "set", OUTER_IF, "up"])
        _ip(["addr", "add", f"{self.inner_addr}/{self.prefixlen}", "dev", INNER_IF], ns)
        _ip(["link", "set", INNER_IF, "up"], ns)
        # the listener answers from every server address; it routes nothing itself
        _ip(["route", "add", "default", "via", self.outer_addr, "dev", INNER_IF], ns)
        table = str(gw.listener_table)
        _ip(["route", "replace", "default", "via", self.inner_addr, "dev", OUTER_IF,
             "table", table])  # fmt: skip
        self.made_route = True
        prio = gw.listener_priority
        for prefix in self.bypass_rules():
            self._rule(["iif", gw.lan_interface, "to", prefix, "lookup", "main",
                        "priority", str(prio - 1)])  # fmt: skip
        self._rule(["iif", gw.lan_interface, "ipproto", "tcp", "lookup", table,
                    "priority", str(prio)])  # fmt: skip
        self.old_rp = _sysctl(f"net.ipv4.conf.{OUTER_IF}.rp_filter")
        _sysctl(f"net.ipv4.conf.{OUTER_IF}.rp_filter", "2")
        self.old_forward = _sysctl("net.ipv4.ip_forward")
        if self.old_forward != "1":
            _sysctl("net.ipv4.ip_forward", "1")
        self._untrack()
        install_drop(ns, INNER_IF)
        self.drop = True
        log.info(
            "listener ready ns=%s lan=%s table=%s bypass_rules=%d",
            ns,
            gw.lan_interface,
            table,
            len(self.rules) - 1,
        )

    def _untrack(self) -> None:
        """Keep proxied traffic out of the gateway's connection tracking.

        Every captured packet crosses the gateway namespace twice (LAN to listener, and
        the listener's answers back to the LAN). Tracked, each proxied connection would
        hold conntrack entries, and a bypassed flow would be tracked on its way into the
        listener without NAT; when the listener writes it back out, the packet would
        match that entry and leave a carrier un-NATed. So TCP from the LAN (except the
        routing-level bypass prefixes) and the listener's answers to the LAN are not
        tracked; what the listener writes back out toward servers (bypass) is.
        """
        lan = [p for p in local_prefixes(self.gw.lan_interface)]
        keep = self.bypass_rules()
        skip = f" ip daddr != {{ {', '.join(keep)} }}" if keep else ""
        answers = (
            f'    iifname "{OUTER_IF}" ip daddr {{ {", ".join(lan)} }} notrack\n' if lan else ""
        )
        ruleset = (
            f"table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n"
            f"table inet {NFT_TABLE} {{\n"
            f"  chain pre {{ type filter hook prerouting priority raw; policy accept;\n"
            f'    iifname "{self.gw.lan_interface}" meta l4proto tcp{skip} notrack\n'
            f"{answers}  }}\n}}\n"
        )
        r = subprocess.run(["nft", "-f", "-"], input=ruleset, capture_output=True, text=True)
        if r.returncode:
            raise ListenerError(f"nft (gateway namespace): {r.stderr.strip()}")
        self.untracked = True

    def _rule(self, spec: list[str]) -> None:
        _ip(["rule", "add", *spec])
        self.rules.append(spec)

    def teardown(self) -> None:
        """Remove what setup made (in reverse); never raises."""
        for spec in reversed(self.rules):
            _ip(["rule", "del", *spec], check=False)
        self.rules.clear()
        if self.made_route:
            _ip(["route", "flush", "table", str(self.gw.listener_table)], check=False)
            self.made_route = False
        if self.old_forward is not None and self.old_forward != "1":
            try:
                _sysctl("net.ipv4.ip_forward", self.old_forward)
            except ListenerError:
                pass
        self.old_forward = None
        if self.untracked:
            subprocess.run(["nft", "delete", "table", "inet", NFT_TABLE], capture_output=True)
            self.untracked = False
        if self.drop:
            remove_drop(self.ns, INNER_IF)
            self.drop = False
        if self.made_veth:
            _ip(["link", "del", OUTER_IF], check=False)
            self.made_veth = False
        if self.made_ns:
            _ip(["netns", "del", self.ns], check=False)
            self.made_ns = False
