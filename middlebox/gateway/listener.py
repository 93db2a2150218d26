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
``ip rule`` that sends TCP (and UDP, with ``udp.enabled``) arriving from the LAN interface
to that table; everything else (ICMP, traffic the gateway itself originates, packets for
the gateway's own addresses, which the local table takes first) keeps ordinary routing.
Destinations of ``gateway.bypass`` get an ``ip rule`` of their own one priority earlier
that keeps them on ordinary routing, when no ACL rule could claim them first (the flow
table bypasses the rest itself). Replies leave the listener toward ``mpl-out`` with the
server's address as source; the gateway namespace forwards them to the client (loose
reverse-path filtering on ``mpl-out`` so that they pass).

:meth:`Listener.teardown` removes every rule, route, interface and the namespace it
made, and is safe to call after a partial setup.

In the listener namespace :func:`install_drop` keeps the kernel away from the captured
originals (the capture shell reads them there). Every change to a namespace goes through
:mod:`netns.plumbing` (``ip netns add`` for the namespace, pyroute2 for links, addresses,
routes and rules, ``/proc/sys`` for sysctls, the ``nft`` command for nftables); its
:class:`~netns.errors.PlumbingError` becomes a :class:`ListenerError` here (a
:class:`CaptureError` from :func:`install_drop`), so the CLI prints one line.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable
from contextlib import suppress

from middlebox.config import GatewayConfig
from middlebox.gateway.capture import CaptureError
from netns import plumbing
from netns.errors import PlumbingError

log = logging.getLogger("mpproxy.listener")

OUTER_IF = "mpl-out"
INNER_IF = "mpl-in"
NFT_TABLE = "mpproxy_gateway"
SYN_COUNTER = "syn_rate_dropped"
STRAY_COUNTER = "stray_dropped"


class ListenerError(CaptureError):
    """The listener namespace could not be set up."""


def nft_table_name(interface: str) -> str:
    return "mpproxy_" + "".join(c if c.isalnum() else "_" for c in interface)


def install_drop(netns: str | None, interface: str, udp: bool = False) -> None:
    """Drop the captured originals before the namespace's own stack sees them.

    AF_PACKET taps run before netfilter, so the capture still sees every frame; the
    kernel, which has no socket for these connections, would otherwise answer them
    with RST. Reverse-path filtering is turned off because the clients' sources are
    not routed through this interface. The listener does this for ``mpl-in``;
    ``bench.capture_app`` for whichever interface it captures on (``netns=None``: here).
    With ``udp`` UDP is dropped too (the capture carries it: middlebox/gateway/udp.py).
    """
    t = nft_table_name(interface)
    protos = "{ tcp, udp }" if udp else "tcp"
    rules = (
        f"table inet {t} {{}}\ndelete table inet {t}\n"
        f"table inet {t} {{\n"
        f"  chain pre {{ type filter hook prerouting priority raw; policy accept;\n"
        f'    iifname "{interface}" meta l4proto {protos} drop\n  }}\n}}\n'
    )
    conf = interface.replace(".", "/")  # sysctl's spelling of a dot in a name
    off = {f"net.ipv4.conf.{c}.rp_filter": 0 for c in ("all", "default", conf)}
    try:
        plumbing.nft(netns, rules)
        plumbing.sysctl(netns, off)
    except PlumbingError as e:
        raise CaptureError(str(e)) from None


def remove_drop(netns: str | None, interface: str) -> None:
    """Remove what :func:`install_drop` added to nftables; never raises."""
    with suppress(PlumbingError):
        plumbing.nft_delete_table(netns, "inet", nft_table_name(interface))


def local_prefixes(interface: str | None = None) -> list[str]:
    """The prefixes of this namespace's own IPv4 addresses (of one interface if named)."""
    try:
        found = plumbing.addresses(None, interface)
    except PlumbingError as e:
        raise ListenerError(str(e)) from None
    nets = {str(ipaddress.ip_network(f"{a}/{n}", strict=False)) for a, n in found}
    return sorted(nets)


class Listener:
    """Create and remove the listener namespace with its routing; see the module text."""

    def __init__(self, gw: GatewayConfig, udp: bool = False) -> None:
        self.gw = gw
        self.udp = udp  # steer LAN UDP into the listener too
        self.ns = gw.listener_namespace
        net = ipaddress.ip_network(gw.listener_subnet, strict=False)
        if net.version != 4 or net.num_addresses < 4:
            raise ListenerError(f"gateway.listener_subnet {net}: need an IPv4 /30 or larger")
        hosts = list(net.hosts())
        self.outer_addr, self.inner_addr = str(hosts[0]), str(hosts[1])
        self.prefixlen = net.prefixlen
        self.inner_if = INNER_IF
        self.rules: list[plumbing.Rule] = []
        self.made_ns = False
        self.made_veth = False
        self.made_route = False
        self.drop = False
        self.untracked = False
        self.old_forward: str | None = None
        self._counted: tuple[float, dict[str, int]] = (-1.0, {})

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
        lan = self.gw.lan_interface
        try:
            if not plumbing.has_link(None, lan):
                raise ListenerError(f"gateway.lan_interface {lan!r}: no such interface")
            if plumbing.exists(self.ns):
                raise ListenerError(
                    f"network namespace {self.ns!r} exists already (another gateway running, "
                    f"or left over: 'ip netns del {self.ns}')"
                )
            self._setup()
        except PlumbingError as e:
            self.teardown()
            raise ListenerError(str(e)) from None
        except BaseException:
            self.teardown()
            raise

    def _setup(self) -> None:
        gw, ns = self.gw, self.ns
        plumbing.create(ns)  # with lo up
        self.made_ns = True
        plumbing.veth(None, OUTER_IF, ns, INNER_IF, up=False)
        self.made_veth = True
        plumbing.add_address(None, OUTER_IF, self.outer_addr, self.prefixlen)
        plumbing.set_link(None, OUTER_IF, state="up")
        plumbing.add_address(ns, INNER_IF, self.inner_addr, self.prefixlen)
        plumbing.set_link(ns, INNER_IF, state="up")
        # the listener answers from every server address; it routes nothing itself
        plumbing.add_route(ns, self.outer_addr, INNER_IF)
        table = gw.listener_table
        plumbing.add_route(None, self.inner_addr, OUTER_IF, table=table, replace=True)
        self.made_route = True
        prio = gw.listener_priority
        lan = gw.lan_interface
        for prefix in self.bypass_rules():
            self._rule(plumbing.Rule(prio - 1, plumbing.MAIN_TABLE, iif=lan, to=prefix))
        self._rule(plumbing.Rule(prio, table, iif=lan, ipproto=socket.IPPROTO_TCP))
        if self.udp:
            self._rule(plumbing.Rule(prio, table, iif=lan, ipproto=socket.IPPROTO_UDP))
        plumbing.sysctl(None, {f"net.ipv4.conf.{OUTER_IF}.rp_filter": 2})
        self.old_forward = plumbing.read_sysctl(None, "net.ipv4.ip_forward")
        if self.old_forward != "1":
            plumbing.sysctl(None, {"net.ipv4.ip_forward": 1})
        self._untrack()
        install_drop(ns, INNER_IF, udp=self.udp)
        self.drop = True
        log.info(
            "listener ready ns=%s lan=%s table=%s bypass_rules=%d",
            ns,
            lan,
            table,
            len(self.rules) - 1 - self.udp,
        )

    def _untrack(self) -> None:
        """Keep proxied traffic out of the gateway's connection tracking, and hold what a
        passenger can make the capture read to rates set in the kernel.

        SYNs: each passenger's are held to ``gateway.flow_new_per_source`` per second. The
        flow table holds new flows to that rate too, exactly, but only after the capture
        has read and parsed each SYN in Python; the same limit here, per source address in
        a dynamic nft set before routing, drops a flood beyond it at the cost of the kernel
        (a few hundred nanoseconds a packet), counted in ``syn_rate_dropped``.

        Stray packets (TCP that is no SYN and belongs to no flow the gateway answered):
        WireGuard's lesson, cheap rejection before costly work. The kernel learns a flow
        from what goes out to the LAN: every TCP packet the gateway (or a bypassed server)
        sends to a passenger that is neither a SYN-ACK nor an RST puts the flow's tuple in
        the set ``flows`` for ``gateway.flow_timeout_established`` (refreshed by each; the
        set holds four times ``gateway.flow_table_size``). A passenger's packets of a known
        flow are never limited, whatever the rate of its transfer; the others are held to
        ``gateway.stray_per_source`` a second per source and dropped beyond, counted in
        ``stray_dropped``. A SYN-ACK makes its tuple known only half: it goes in the set
        ``half`` (for ``gateway.flow_timeout_half_open``), which admits one packet, the one
        that completes the handshake, and forgets the tuple as it passes. Had a SYN-ACK
        made its tuple known, a passenger could have made its SYN rate times the half-open
        timeout tuples known (cookies keep no state, so without a cap) and flooded on them
        at any rate; now it can send at most its SYN rate plus its stray rate a second
        outside the flows the gateway answered. What follows the handshake's ACK before the
        gateway's first answer (a request, a first flight of data) counts as stray, within
        the rate and its burst. What a legitimate passenger sends outside known flows is
        little: that first flight, the packets in flight when the gateway reset a
        connection (a window, once), a flow idle past its timeout (one packet, then
        answered and known again), retransmissions after a close; a flood of stray ACKs
        beyond the rate never reaches the capture's socket, where it would crowd out other
        passengers' frames.
        TCP to the gateway's own addresses (SSH to the router) and to the routing-level
        bypass prefixes never goes to the listener and is not held.

        Every captured packet crosses the gateway namespace twice (LAN to listener, and
        the listener's answers back to the LAN). Tracked, each proxied connection would
        hold conntrack entries, and a bypassed flow would be tracked on its way into the
        listener without NAT; when the listener writes it back out, the packet would
        match that entry and leave a carrier un-NATed. So TCP from the LAN (except the
        routing-level bypass prefixes) and the listener's answers to the LAN are not
        tracked; what the listener writes back out toward servers (bypass) is.
        """
        gw = self.gw
        lan = local_prefixes(gw.lan_interface)
        keep = self.bypass_rules()
        skip = f" ip daddr != {{ {', '.join(keep)} }}" if keep else ""
        answers = (
            f'    iifname "{OUTER_IF}" ip daddr {{ {", ".join(lan)} }} notrack\n' if lan else ""
        )
        rate = gw.flow_new_per_source
        iif = f'iifname "{gw.lan_interface}"'
        oif = f'oifname "{gw.lan_interface}"'
        stray = ""
        learn = ""
        if gw.stray_per_source:
            stray_rate = gw.stray_per_source
            key = "ip saddr . tcp sport . ip daddr . tcp dport"
            back = "ip daddr . tcp dport . ip saddr . tcp sport"
            half, est = int(gw.flow_timeout_half_open), int(gw.flow_timeout_established)
            stray = (
                f"    {iif} tcp flags & (fin | syn | rst | ack) == syn accept\n"
                f"    {iif} meta l4proto tcp {key} @flows accept\n"
                f"    {iif} meta l4proto tcp {key} @half delete @half {{ {key} }} accept\n"
                f"    {iif} meta l4proto tcp fib daddr type local accept\n"
                f"    {iif} meta l4proto tcp{skip} add @stray_rate {{ ip saddr limit rate over "
                f"{stray_rate}/second burst {stray_rate} packets }} "
                f'counter name "{STRAY_COUNTER}" drop\n'
            )
            learn = (
                "  chain learn { type filter hook forward priority filter; policy accept;\n"
                f"    {oif} tcp flags & (syn | rst) == 0 "
                f"update @flows {{ {back} timeout {est}s }}\n"
                f"    {oif} tcp flags & (syn | rst | ack) == syn | ack "
                f"update @half {{ {back} timeout {half}s }}\n"
                "  }\n"
            )
        ruleset = (
            f"table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n"
            f"table inet {NFT_TABLE} {{\n"
            f"  counter {SYN_COUNTER} {{ }}\n"
            f"  counter {STRAY_COUNTER} {{ }}\n"
            "  set syn_rate { type ipv4_addr; size 65536; flags dynamic,timeout; timeout 10s; }\n"
            "  set stray_rate { type ipv4_addr; size 65536; flags dynamic,timeout; timeout 10s; }\n"
            "  set flows { type ipv4_addr . inet_service . ipv4_addr . inet_service; "
            f"size {4 * gw.flow_table_size}; flags dynamic,timeout; timeout 30s; }}\n"
            "  set half { type ipv4_addr . inet_service . ipv4_addr . inet_service; "
            f"size {4 * gw.flow_table_size}; flags dynamic,timeout; timeout 30s; }}\n"
            f"  chain pre {{ type filter hook prerouting priority raw; policy accept;\n"
            f"    {iif} tcp flags & (fin | syn | rst | ack) == syn "
            f"add @syn_rate {{ ip saddr limit rate over {rate}/second burst {rate} packets }} "
            f'counter name "{SYN_COUNTER}" drop\n'
            f"    {iif} meta l4proto tcp{skip} notrack\n"
            f"{answers}"
            f"{stray}"
            "  }\n"
            f"{learn}"
            "}\n"
        )
        plumbing.nft(None, ruleset)
        self.untracked = True

    def kernel_counters(self, now: float | None = None) -> dict[str, int]:
        """What the kernel dropped for the gateway (``syn_rate_dropped``,
        ``stray_dropped``), read with ``nft`` at most once a second; empty when it cannot
        be read."""
        now = time.monotonic() if now is None else now
        when, counted = self._counted
        if self.untracked and now - when >= 1.0:
            try:
                out = plumbing.run(None, ["nft", "-j", "list", "counters", "table", "inet",
                                          NFT_TABLE])  # fmt: skip
                items = [i["counter"] for i in json.loads(out)["nftables"] if "counter" in i]
                counted = {
                    i["name"]: int(i["packets"])
                    for i in items
                    if i.get("name") in (SYN_COUNTER, STRAY_COUNTER)
                }
            except (PlumbingError, ValueError, KeyError, TypeError):
                counted = {}
            self._counted = (now, counted)
        return dict(counted)

    def _rule(self, rule: plumbing.Rule) -> None:
        plumbing.add_rule(None, rule)
        self.rules.append(rule)

    def teardown(self) -> None:
        """Remove what setup made (in reverse); never raises.

        Each step is tried even when an earlier one failed (the namespace may be half
        gone already); what this listener did not make is left alone.
        """
        for rule in reversed(self.rules):
            _quietly(plumbing.delete_rule, None, rule)
        self.rules.clear()
        if self.made_route:
            _quietly(plumbing.flush_table, None, self.gw.listener_table)
            self.made_route = False
        if self.old_forward is not None and self.old_forward != "1":
            _quietly(plumbing.sysctl, None, {"net.ipv4.ip_forward": self.old_forward})
        self.old_forward = None
        if self.untracked:
            _quietly(plumbing.nft_delete_table, None, "inet", NFT_TABLE)
            self.untracked = False
        if self.drop:
            remove_drop(self.ns, INNER_IF)
            self.drop = False
        if self.made_veth:
            _quietly(plumbing.delete_link, None, OUTER_IF)
            self.made_veth = False
        if self.made_ns:
            _quietly(plumbing.remove, self.ns, kill=False)
            self.made_ns = False


def _quietly(step: Callable[..., object], *args: object, **kw: object) -> None:
    """One teardown step; a failure is logged and the next step runs."""
    try:
        step(*args, **kw)
    except PlumbingError as e:
        log.debug("teardown step failed: %s", e)
