"""Namespace plumbing with pyroute2: namespaces, veths, addresses, routes, rules, sysctls.

Small, idempotent-where-cheap helpers shared by the testbed and (later) the gateway's
listener namespace setup. Nothing here knows about carriers or traces.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import IPRoute, netns

from netns.errors import TestbedError

NETNS_DIR = "/var/run/netns"


def exists(name: str) -> bool:
    return name in netns.listnetns()


def create(name: str) -> None:
    """Create a named namespace (visible to ``ip netns``) with loopback up."""
    if exists(name):
        raise TestbedError(f"network namespace {name} already exists")
    # iproute2 rather than pyroute2's netns.create: the latter forks a helper with a
    # reply timeout and lost namespaces under CPU load in our measurements.
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if proc.returncode != 0:
        msg = proc.stderr.strip()
        if "Operation not permitted" in msg or "Permission denied" in msg:
            raise TestbedError("creating network namespaces needs root (CAP_SYS_ADMIN)")
        raise TestbedError(f"ip netns add {name}: {msg}")
    with ns(name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def remove(name: str) -> None:
    """Kill every process left in the namespace, then delete it (its links go with it)."""
    if not exists(name):
        return
    kill_processes(name)
    netns.remove(name)


@contextmanager
def ns(name: str) -> Iterator[IPRoute]:
    """A pyroute2 netlink handle inside namespace ``name``.

    The socket is opened while this thread is switched into the namespace (a netlink
    socket stays bound to the namespace it was created in). pyroute2's ``NetNS`` runs a
    helper process instead, and lost its namespace under CPU load in our runs.
    """
    if not exists(name):
        raise TestbedError(f"no network namespace {name}")
    netns.pushns(name)
    try:
        ipr = IPRoute()
    finally:
        netns.popns()
    try:
        yield ipr
    finally:
        ipr.close()


def index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise TestbedError(f"no interface {ifname}")
    return found[0]


def veth(ns_a: str, name_a: str, ns_b: str, name_b: str, up: bool = True) -> None:
    """A veth pair created directly between two namespaces (never in the root namespace)."""
    with ns(ns_a) as ipr:
        ipr.link("add", ifname=name_a, kind="veth", peer={"ifname": name_b, "net_ns_fd": ns_b})
        if up:
            ipr.link("set", index=index(ipr, name_a), state="up")
    if up:
        with ns(ns_b) as ipr:
            ipr.link("set", index=index(ipr, name_b), state="up")


def sysctl(name: str, settings: dict[str, str | int]) -> None:
    """Write ``net.*`` sysctls as seen from inside namespace ``name``."""
    netns.pushns(name)
    try:
        for key, value in settings.items():
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(str(value))
    finally:
        netns.popns()


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


def disable_offloads(name: str, ifname: str) -> None:
    """``ethtool -K ifname tx off tso off gso off gro off`` inside namespace ``name``.

    The kernel then hands the device one MTU-sized, fully checksummed packet at a time.
    """
    from pyroute2.ethtool import Ethtool

    netns.pushns(name)
    try:
        tool = Ethtool()
    finally:
        netns.popns()
    try:
        features = tool.get_features(ifname)
        for key in OFFLOAD_FEATURES:
            if key in features.features:
                features.features[key].enable = False
        tool.set_features(ifname, features)
    finally:
        tool.close()


def run(name: str, argv: list[str], input: str | None = None, check: bool = True) -> str:
    """Run a command inside namespace ``name``; a failure raises TestbedError with its stderr."""
    proc = subprocess.run(
        ["ip", "netns", "exec", name, *argv], input=input, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise TestbedError(f"in {name}: {' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout


def nft(name: str, ruleset: str) -> None:
    """Load an nftables ruleset (``nft -f -``) inside namespace ``name``."""
    run(name, ["nft", "-f", "-"], input=ruleset)


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
