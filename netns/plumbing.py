"""Namespace plumbing: namespaces, veths, addresses, routes, rules, sysctls, nftables.

The one module through which mpproxy changes network namespaces. Its users:

- the gateway's listener (:mod:`middlebox.gateway.listener`): the listener namespace,
  the veth pair into it, addresses, routes, ``ip rule``\\ s, sysctls and nft tables;
- the capture shell (:mod:`middlebox.gateway.capture`): :func:`entered`, to open its
  AF_PACKET socket inside the listener namespace;
- the testbed (:mod:`netns.topology`) and the benchmarks' namespace pairs.

So it is part of a deployment: it imports nothing from the testbed (topology, emulator,
traces, baselines, cli), only :mod:`netns.errors`, and it knows nothing about carriers,
traces or the proxy's rules: callers give the names, addresses and rulesets.

Every function takes a namespace by name; ``None`` means the namespace this thread is in
(the gateway runs in the vehicle router's namespace, or in the testbed namespace it was
started in). Failures raise :class:`~netns.errors.PlumbingError` naming the step, in
iproute2's words, and the reason. (:func:`ns` hands out the pyroute2 handle itself; what
a caller does with it raises pyroute2's own errors.)

How each thing is done, and why:

- Links, addresses, routes, rules: pyroute2 netlink (``IPRoute``), opened while this
  thread is switched into the namespace (a netlink socket stays bound to the namespace
  it was created in). Routes are added with protocol ``boot``, as ``ip route add`` does.
- Entering a namespace: ``setns`` in this thread only (:func:`entered`), which never
  creates one by accident. pyroute2's ``NetNS`` runs a helper process instead, and lost
  its namespace under CPU load in our runs.
- Creating one: ``ip netns add`` (iproute2). pyroute2's ``netns.create`` forks a helper
  with a reply timeout and lost namespaces under CPU load in our measurements.
- Sysctls: ``/proc/sys`` opened from a thread switched into the namespace (``net.*``
  entries are those of the namespace of the task that opens them).
- nftables: rulesets in nft's own language, loaded by the ``nft`` command (``nft -f -``,
  in the namespace through ``ip netns exec``). pyroute2's ``nftables`` module builds
  rules from raw netlink expressions only, with neither the rule language nor an atomic
  load of a whole ruleset, so it cannot express the rules callers need.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from netns.errors import PlumbingError

NETNS_DIR = "/var/run/netns"
MAIN_TABLE = 254  # the kernel's "main" routing table (``lookup main``)
COMMAND_TIMEOUT = 30.0  # seconds for one ``ip``/``nft`` command


# -- namespaces ---------------------------------------------------------------------------


def exists(name: str) -> bool:
    return name in netns.listnetns()


def create(name: str) -> None:
    """Create a named namespace (visible to ``ip netns``) with loopback up.

    Nothing is left behind when a step fails: a namespace this call added is removed.
    """
    if exists(name):
        raise PlumbingError(f"network namespace {name} already exists")
    # iproute2 rather than pyroute2's netns.create: see the module text
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if proc.returncode != 0:
        msg = proc.stderr.strip()
        if "Operation not permitted" in msg or "Permission denied" in msg:
            raise PlumbingError("creating network namespaces needs root (CAP_SYS_ADMIN)")
        raise PlumbingError(f"ip netns add {name}: {msg}")
    try:
        set_link(name, "lo", state="up")
    except BaseException:
        remove(name, kill=False)
        raise


def remove(name: str, kill: bool = True) -> None:
    """Delete the namespace (its links go with it); absent already is fine.

    With ``kill`` every process left in it is killed first (the testbed's hosts); without,
    they keep running in a namespace that no longer has a name (as ``ip netns del``).
    """
    if not exists(name):
        return
    if kill:
        kill_processes(name)
    try:
        netns.remove(name)
    except OSError as e:
        raise PlumbingError(f"ip netns del {name}: {e.strerror or e}") from None


@contextmanager
def entered(name: str | None) -> Iterator[None]:
    """This thread inside namespace ``name`` for the body, then back (``None``: stay).

    Sockets opened in the body belong to that namespace, and so do processes started
    from this thread. The namespace is never created here: a missing one is an error.
    """
    if name is None:
        yield
        return
    if not exists(name):
        raise PlumbingError(f"no network namespace {name!r} (see 'ip netns list')")
    # this thread's namespace, not the process's (/proc/self is the main thread's)
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        netns.setns(name, flags=0)  # flags=0: do not create it
    except OSError as e:
        os.close(back)
        raise PlumbingError(f"cannot enter network namespace {name!r}: {e}") from None
    try:
        yield
    finally:
        try:
            netns.setns(back)
        finally:
            os.close(back)


@contextmanager
def ns(name: str | None) -> Iterator[IPRoute]:
    """A pyroute2 netlink handle inside namespace ``name`` (``None``: this thread's).

    The socket is opened inside :func:`entered` (a netlink socket stays bound to the
    namespace it was created in); the handle is usable from any namespace afterwards.
    """
    with entered(name):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


@contextmanager
def _step(name: str | None, what: str) -> Iterator[IPRoute]:
    """A netlink handle for one step; a kernel refusal becomes a PlumbingError naming it."""
    try:
        with ns(name) as ipr:
            yield ipr
    except (NetlinkError, OSError) as e:
        where = f" (in {name})" if name else ""
        raise PlumbingError(f"{what}{where}: {_reason(e)}") from None


def _reason(e: Exception) -> str:
    if isinstance(e, NetlinkError):
        return os.strerror(e.code) if e.code > 0 else str(e)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)


# -- links, addresses, routes, rules -------------------------------------------------------


def index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise PlumbingError(f"no interface {ifname}")
    return found[0]


def has_link(name: str | None, ifname: str) -> bool:
    with _step(name, f"ip link show {ifname}") as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


def set_link(name: str | None, ifname: str, **attrs: object) -> None:
    """``ip link set ifname ...``: e.g. ``state="up"``, ``gso_max_size=1500``."""
    words = " ".join(f"{k} {v}" for k, v in attrs.items())
    with _step(name, f"ip link set {ifname} {words}") as ipr:
        ipr.link("set", index=index(ipr, ifname), **attrs)


def veth(ns_a: str | None, name_a: str, ns_b: str | None, name_b: str, up: bool = True) -> None:
    """A veth pair made directly between two namespaces (``None``: this thread's).

    The testbed never passes ``None``: its pairs are never in the root namespace.
    """
    peer: dict[str, object] = {"ifname": name_b}
    into = ""
    if ns_b is not None:
        peer["net_ns_fd"] = ns_b
        into = f" netns {ns_b}"
    with _step(ns_a, f"ip link add {name_a} type veth peer name {name_b}{into}") as ipr:
        ipr.link("add", ifname=name_a, kind="veth", peer=peer)
    if up:
        set_link(ns_a, name_a, state="up")
        set_link(ns_b if ns_b is not None else ns_a, name_b, state="up")


def delete_link(name: str | None, ifname: str) -> None:
    """``ip link del ifname`` (a veth takes its peer with it)."""
    with _step(name, f"ip link del {ifname}") as ipr:
        ipr.link("del", index=index(ipr, ifname))


def add_address(name: str | None, ifname: str, address: str, prefixlen: int) -> None:
    with _step(name, f"ip addr add {address}/{prefixlen} dev {ifname}") as ipr:
        ipr.addr("add", index=index(ipr, ifname), address=address, prefixlen=prefixlen)


def addresses(name: str | None, ifname: str | None = None) -> list[tuple[str, int]]:
    """IPv4 ``(address, prefixlen)`` of the namespace (of one interface if named)."""
    dev = f" dev {ifname}" if ifname else ""
    with _step(name, f"ip -4 addr show{dev}") as ipr:
        query: dict[str, object] = {"family": socket.AF_INET}
        if ifname:
            query["index"] = index(ipr, ifname)
        return [(a.get("address"), a["prefixlen"]) for a in ipr.get_addr(**query)]


def add_route(
    name: str | None,
    gateway: str,
    ifname: str,
    dst: str = "default",
    table: int | None = None,
    replace: bool = False,
) -> None:
    """``ip route add|replace <dst> via <gateway> dev <ifname> [table <table>]``."""
    verb = "replace" if replace else "add"
    in_table = f" table {table}" if table is not None else ""
    what = f"ip route {verb} {dst} via {gateway} dev {ifname}{in_table}"
    route: dict[str, object] = {"dst": "0.0.0.0/0" if dst == "default" else dst}
    if table is not None:
        route["table"] = table
    with _step(name, what) as ipr:
        ipr.route(verb, gateway=gateway, oif=index(ipr, ifname), proto="boot", **route)


def flush_table(name: str | None, table: int) -> None:
    """``ip route flush table <table>``."""
    with _step(name, f"ip route flush table {table}") as ipr:
        ipr.flush_routes(table=table)


@dataclass(frozen=True)
class Rule:
    """One IPv4 ``ip rule``: ``[iif I] [to P] [ipproto N] lookup TABLE priority PRIO``."""

    priority: int
    table: int
    iif: str | None = None
    to: str | None = None  # a destination prefix
    ipproto: int | None = None  # e.g. socket.IPPROTO_TCP

    def __str__(self) -> str:
        words = [f"iif {self.iif}"] if self.iif else []
        words += [f"to {self.to}"] if self.to else []
        words += [f"ipproto {self.ipproto}"] if self.ipproto is not None else []
        lookup = "main" if self.table == MAIN_TABLE else self.table
        return " ".join([*words, f"lookup {lookup}", f"priority {self.priority}"])

    def netlink(self) -> dict[str, object]:
        """The rule as pyroute2's ``IPRoute.rule`` keywords."""
        out: dict[str, object] = {
            "family": socket.AF_INET,
            "priority": self.priority,
            "table": self.table,
        }
        if self.iif:
            out["iifname"] = self.iif
        if self.to:
            net = ipaddress.ip_network(self.to, strict=False)
            out["dst"], out["dst_len"] = str(net.network_address), net.prefixlen
        if self.ipproto is not None:
            out["ip_proto"] = self.ipproto
        return out


def add_rule(name: str | None, rule: Rule) -> None:
    with _step(name, f"ip rule add {rule}") as ipr:
        ipr.rule("add", **rule.netlink())


def delete_rule(name: str | None, rule: Rule) -> None:
    with _step(name, f"ip rule del {rule}") as ipr:
        ipr.rule("del", **rule.netlink())


# -- sysctls, offloads ---------------------------------------------------------------------


def _sysctl_path(key: str) -> str:
    # as sysctl(8) spells keys: dots separate, a slash stands for a dot in a name
    # (net.ipv4.conf.eth0/100.rp_filter is the VLAN interface eth0.100)
    return "/proc/sys/" + key.translate(str.maketrans("./", "/."))


def sysctl(name: str | None, settings: dict[str, str | int]) -> None:
    """Write ``net.*`` sysctls as seen from inside namespace ``name``."""
    with entered(name):
        for key, value in settings.items():
            try:
                with open(_sysctl_path(key), "w") as f:
                    f.write(str(value))
            except OSError as e:
                raise PlumbingError(f"sysctl {key}: {e.strerror}") from None


def read_sysctl(name: str | None, key: str) -> str:
    """A sysctl's value as seen from inside namespace ``name``."""
    with entered(name):
        try:
            with open(_sysctl_path(key)) as f:
                return f.read().strip()
        except OSError as e:
            raise PlumbingError(f"sysctl {key}: {e.strerror}") from None


OFFLOAD_FEATURES = (
    "tx-checksum-ip-generic",
    "tx-tcp-segmentation",
    "tx-tcp-ecn-segmentation",
    "tx-tcp-mangleid-segmentation",
    "tx-tcp6-segmentation",
    "tx-generic-segmentation",
    "tx-udp-segmentation",
    "rx-gro",
)


def disable_offloads(name: str | None, ifname: str) -> None:
    """``ethtool -K ifname tx off tso off gso off gro off`` inside namespace ``name``.

    The kernel then hands the device one MTU-sized, fully checksummed packet at a time.
    """
    from pyroute2.ethtool import Ethtool

    with entered(name):
        tool = Ethtool()
    try:
        features = tool.get_features(ifname)
        for key in OFFLOAD_FEATURES:
            if key in features.features:
                features.features[key].enable = False
        tool.set_features(ifname, features)
    finally:
        tool.close()


# -- commands, nftables --------------------------------------------------------------------


def run(name: str | None, argv: list[str], input: str | None = None, check: bool = True) -> str:
    """Run a command inside namespace ``name`` (``ip netns exec``; ``None``: here).

    A failure (non-zero exit with ``check``, a missing program, a timeout) raises
    PlumbingError with the command's stderr.
    """
    full = ["ip", "netns", "exec", name, *argv] if name else argv
    where = f"in {name}: " if name else ""
    try:
        proc = subprocess.run(
            full, input=input, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PlumbingError(f"{where}{' '.join(argv)} failed: {e}") from None
    if check and proc.returncode != 0:
        why = proc.stderr.strip() or proc.stdout.strip()
        raise PlumbingError(f"{where}{' '.join(argv)} failed: {why}")
    return proc.stdout


def nft(name: str | None, ruleset: str) -> None:
    """Load an nftables ruleset (``nft -f -``, applied as one transaction) in ``name``."""
    run(name, ["nft", "-f", "-"], input=ruleset)


def nft_delete_table(name: str | None, family: str, table: str) -> None:
    """Delete an nft table; one that does not exist is fine."""
    nft(name, f"table {family} {table} {{}}\ndelete table {family} {table}\n")


# -- processes -----------------------------------------------------------------------------


def _ns_inode(name: str) -> int | None:
    try:
        return os.stat(os.path.join(NETNS_DIR, name)).st_ino
    except FileNotFoundError:
        return None


def pids(name: str) -> list[int]:
    """Processes whose network namespace is ``name``."""
    ino = _ns_inode(name)
    if ino is None:
        return []
    want = f"net:[{ino}]"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/net") == want:
                found.append(int(entry))
        except OSError:
            continue
    return found


def kill_processes(name: str, grace: float = 1.0) -> None:
    """SIGTERM every process in the namespace, SIGKILL what is still there after ``grace``."""
    victims = [p for p in pids(name) if p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in victims:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            victims = [p for p in victims if _alive(p)]
            if not victims:
                return
            time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone once reaped
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
