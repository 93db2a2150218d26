"""The emulated testbed: five namespaces, one emulated link per carrier, always torn down.

::

    client        gateway                emulator          node                server
    cl0 ------- lan0 100.64.0.1
    100.64.0.10+i car0 100.65.0.1 --- g0 [Link] n0 --- car0 100.65.0.2
                  car1 100.65.1.1 --- g1 [Link] n1 --- car1 100.65.1.2
                  ...                                  srv0 100.66.0.1 --- up0 100.66.0.2
                                                                           lo 198.51.100.10
                                                                              203.0.113.10
                                                                              192.0.2.10

Address plan (all inside the testbed's own namespaces; nothing is linked to the root
namespace or a real interface):

* ``100.64.0.0/24`` LAN: gateway ``.1``; client addresses ``.10`` upwards. Client address
  ``i`` is mapped by the gateway's source rules to carrier ``i % carriers``, so the first
  ``carriers`` client addresses select one carrier each (single-path baselines and the
  kernel MPTCP subflows use them).
* ``100.65.<k>.0/24`` carrier ``k``: gateway ``.1`` (its "modem" address, routing table
  ``100+k`` with a default route over that carrier and an ``ip rule`` from ``.1``), node
  ``.2``. The emulator's two veth ends in between have no addresses. The gateway
  masquerades (NAT) whatever leaves on a carrier, as a multi-modem router does.
* ``100.66.0.0/30`` node ``.1`` -- server ``.2``; the server holds the documentation
  addresses :data:`SERVER_ADDRS` and the node routes their /24s to it.

Namespaces are named ``mpp<id>-cl|gw|em|nd|sv`` with a per-testbed id, so parallel
testbeds never collide. What a testbed made is recorded in ``/run/mpproxy/testbed-<id>.json``
so ``mpproxy testbed down`` can remove it from another process.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netns import plumbing, traces, tracespec
from netns.emulator import CarrierLink, Direction
from netns.errors import TestbedError, TraceError
from netns.linkcore import LinkParams

MAX_CARRIERS = 8
LAN_GATEWAY = "100.64.0.1"
SERVER_ADDRS = ("198.51.100.10", "203.0.113.10", "192.0.2.10")
NODE_SERVER_SIDE = "100.66.0.1"
SERVER_LINK_ADDR = "100.66.0.2"
STATE_DIR = Path(os.environ.get("MPPROXY_STATE_DIR", "/run/mpproxy"))
ROLES = ("client", "gateway", "emulator", "node", "server")
_SUFFIX = {"client": "cl", "gateway": "gw", "emulator": "em", "node": "nd", "server": "sv"}
_counter = itertools.count()


def client_addr(i: int) -> str:
    return f"100.64.0.{10 + i}"


def gateway_carrier_addr(k: int) -> str:
    return f"100.65.{k}.1"


def node_carrier_addr(k: int) -> str:
    return f"100.65.{k}.2"


@dataclass(frozen=True)
class CarrierSpec:
    """One carrier: its traces (see :func:`netns.tracespec.load`) and link behaviour.

    ``up`` defaults to the counterpart of ``down``: ``X.up`` for a Mahimahi ``X.down``,
    the UL column of the same 5G CSV, the same rail carrier or fixed rate.
    """

    down: str
    up: str | None = None
    delay_ms: float = 20.0
    queue_packets: int = 256
    loss: float = 0.0
    outages: tuple[tuple[float, float], ...] = ()
    name: str = ""


@dataclass(frozen=True)
class TestbedSpec:
    """A whole testbed. ``clients``: client addresses (at least one per carrier).

    ``offloads=False`` turns TSO/GSO/GRO and checksum offload off on the carrier
    interfaces of gateway and node, so the emulator sees one frame per packet (more
    per-packet work, per-packet loss); see docs/testbed.md for what each costs.
    """

    __test__ = False

    carriers: tuple[CarrierSpec, ...]
    clients: int = 0
    time_scale: float = 1.0
    rate_scale: float = 1.0
    seed: int = 0
    offloads: bool = True

    def validate(self) -> None:
        """Refuse impossible parameters with one clear message."""
        n = len(self.carriers)
        if not 1 <= n <= MAX_CARRIERS:
            raise TestbedError(f"number of carriers must be 1..{MAX_CARRIERS} (got {n})")
        if not 0 <= self.clients <= 200:
            raise TestbedError(f"clients must be 0..200 (got {self.clients})")
        if self.time_scale <= 0 or self.rate_scale <= 0:
            raise TestbedError("time and rate scale must be > 0")
        for k, c in enumerate(self.carriers):
            try:
                LinkParams(c.delay_ms, c.queue_packets, None, c.loss, tuple(c.outages))
            except ValueError as e:
                raise TestbedError(f"carrier {k}: {e}") from None

    @property
    def n_clients(self) -> int:
        return max(self.clients, len(self.carriers))


def up_counterpart(down: str) -> str:
    if down.endswith(".down"):
        sibling = down[: -len(".down")] + ".up"
        if Path(sibling).exists():
            return sibling
    return down


def load_direction(spec: str, direction: str, t: TestbedSpec) -> traces.DeliveryTrace:
    try:
        trace = tracespec.load(spec, direction)
    except ValueError as e:
        raise TraceError(spec, None, str(e)) from None
    return trace.scaled(t.time_scale, t.rate_scale)


def new_id() -> str:
    return f"{os.getpid() % 100000}{next(_counter)}"


class Testbed:
    """Build the testbed on ``up()``/``__enter__``, remove everything on ``down()``/``__exit__``.

    Teardown runs on normal exit, on exceptions, on Ctrl-C and (while inside ``with``) on
    SIGTERM/SIGHUP. ``die_with_parent`` makes the emulator exit if this process dies
    hard; ``mpproxy testbed up`` turns it off so the testbed outlives the command.
    """

    __test__ = False

    def __init__(
        self,
        spec: TestbedSpec,
        tid: str | None = None,
        state_dir: Path = STATE_DIR,
        die_with_parent: bool = True,
    ) -> None:
        spec.validate()
        self.spec = spec
        self.tid = tid or new_id()
        self.ns = {role: f"mpp{self.tid}-{_SUFFIX[role]}" for role in ROLES}
        self.state_file = Path(state_dir) / f"testbed-{self.tid}.json"
        self.die_with_parent = die_with_parent
        self.emulator: subprocess.Popen[bytes] | None = None
        self._procs: list[subprocess.Popen[Any]] = []
        self._old_handlers: dict[int, Any] = {}
        self._links: list[CarrierLink] = []
        self.trace_start: float | None = None
        """``time.monotonic()`` value (same clock in every namespace) of trace time 0."""

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Testbed:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                self._old_handlers[sig] = signal.signal(sig, _raise_exit)
        try:
            self.up()
        except BaseException:
            self._restore_handlers()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.down()
        finally:
            self._restore_handlers()

    def _restore_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers.clear()

    def up(self) -> None:
        self._links = self._load_links()  # trace errors before anything is created
        try:
            self._write_state()
            self._build()
            self._start_emulator()
            self._write_state()
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Remove every namespace, process and file this testbed made. Never raises."""
        main = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            for p in [*self._procs, *([self.emulator] if self.emulator else [])]:
                _stop(p)
            self._procs.clear()
            for name in self.ns.values():
                try:
                    plumbing.remove(name)
                except Exception as e:  # keep removing the others
                    print(f"testbed: could not remove {name}: {e}", file=sys.stderr)
            self.state_file.unlink(missing_ok=True)
        finally:
            if main:
                signal.signal(signal.SIGINT, old)

    # -- building ------------------------------------------------------------------------

    def _load_links(self) -> list[CarrierLink]:
        links = []
        s = self.spec
        for k, c in enumerate(s.carriers):
            up_spec = c.up or up_counterpart(c.down)
            seed = s.seed * 1000 + 2 * k
            common = dict(delay_ms=c.delay_ms, queue_packets=c.queue_packets, loss=c.loss)
            common["outages"] = tuple(tuple(o) for o in c.outages)
            links.append(
                CarrierLink(
                    name=c.name or f"carrier{k}",
                    gw_if=f"g{k}",
                    node_if=f"n{k}",
                    up=Direction(load_direction(up_spec, "up", s), LinkParams(**common, seed=seed)),
                    down=Direction(
                        load_direction(c.down, "down", s), LinkParams(**common, seed=seed + 1)
                    ),
                )
            )
        return links

    def _build(self) -> None:
        ns = self.ns
        for name in ns.values():
            plumbing.create(name)
            plumbing.sysctl(
                name, {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1}
            )
        for role in ("gateway", "node"):
            plumbing.sysctl(
                ns[role],
                {
                    "net.ipv4.ip_forward": 1,
                    "net.ipv4.conf.all.rp_filter": 0,
                    "net.ipv4.conf.default.rp_filter": 0,
                },
            )
        k_count = len(self.spec.carriers)
        plumbing.veth(ns["client"], "cl0", ns["gateway"], "lan0")
        for k in range(k_count):
            plumbing.veth(ns["gateway"], f"car{k}", ns["emulator"], f"g{k}")
            plumbing.veth(ns["emulator"], f"n{k}", ns["node"], f"car{k}")
        plumbing.veth(ns["node"], "srv0", ns["server"], "up0")
        if not self.spec.offloads:
            for k in range(k_count):
                plumbing.disable_offloads(ns["gateway"], f"car{k}")
                plumbing.disable_offloads(ns["node"], f"car{k}")

        with plumbing.ns(ns["client"]) as ipr:
            cl0 = plumbing.index(ipr, "cl0")
            for i in range(self.spec.n_clients):
                ipr.addr("add", index=cl0, address=client_addr(i), prefixlen=24)
            ipr.route("add", dst="0.0.0.0/0", gateway=LAN_GATEWAY)
        with plumbing.ns(ns["gateway"]) as ipr:
            ipr.addr("add", index=plumbing.index(ipr, "lan0"), address=LAN_GATEWAY, prefixlen=24)
            for k in range(k_count):
                idx = plumbing.index(ipr, f"car{k}")
                ipr.addr("add", index=idx, address=gateway_carrier_addr(k), prefixlen=24)
                ipr.route("add", dst="0.0.0.0/0", gateway=node_carrier_addr(k), table=100 + k)
                ipr.rule(
                    "add", src=gateway_carrier_addr(k), src_len=32, table=100 + k, priority=1000 + k
                )
            ipr.route("add", dst="0.0.0.0/0", gateway=node_carrier_addr(0))
            for i in range(self.spec.n_clients):
                k = i % k_count
                ipr.rule("add", src=client_addr(i), src_len=32, table=100 + k, priority=2000 + i)
        with plumbing.ns(ns["node"]) as ipr:
            for k in range(k_count):
                idx = plumbing.index(ipr, f"car{k}")
                ipr.addr("add", index=idx, address=node_carrier_addr(k), prefixlen=24)
            ipr.addr(
                "add", index=plumbing.index(ipr, "srv0"), address=NODE_SERVER_SIDE, prefixlen=30
            )
            for a in SERVER_ADDRS:
                ipr.route("add", dst=a.rsplit(".", 1)[0] + ".0/24", gateway=SERVER_LINK_ADDR)
        with plumbing.ns(ns["server"]) as ipr:
            ipr.addr(
                "add", index=plumbing.index(ipr, "up0"), address=SERVER_LINK_ADDR, prefixlen=30
            )
            lo = plumbing.index(ipr, "lo")
            for a in SERVER_ADDRS:
                ipr.addr("add", index=lo, address=a, prefixlen=32)
            # replies (and anything the server starts) leave from a documentation address
            ipr.route("add", dst="0.0.0.0/0", gateway=NODE_SERVER_SIDE, prefsrc=SERVER_ADDRS[0])
        plumbing.nft(
            ns["gateway"],
            "table ip mpptestbed {\n chain post {\n  type nat hook postrouting priority 100;\n"
            '  oifname "car*" masquerade\n }\n}\n',
        )
        # kernel MPTCP: one subflow endpoint per extra carrier address on the client
        for role in ("client", "server"):
            plumbing.run(
                ns[role],
                ["ip", "mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "8"],
            )
        for i in range(1, k_count):
            plumbing.run(
                ns["client"],
                ["ip", "mptcp", "endpoint", "add", client_addr(i), "dev", "cl0", "subflow"],
            )

    def _start_emulator(self) -> None:
        cmd = ["ip", "netns", "exec", self.ns["emulator"], sys.executable, "-m", "netns.emulator"]
        self.emulator = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.emulator.stdin and self.emulator.stdout
        cfg = {"carriers": self._links, "die_with_parent": self.die_with_parent}
        self.emulator.stdin.write(pickle.dumps(cfg))
        self.emulator.stdin.close()
        line = _read_line(self.emulator.stdout, 20.0)
        word, _, start = line.decode(errors="replace").partition(" ")
        if word != "ready":
            self.emulator.kill()
            err = (
                self.emulator.stderr.read().decode(errors="replace") if self.emulator.stderr else ""
            )
            raise TestbedError(f"link emulator did not start: {err.strip()[-2000:] or line!r}")
        self.trace_start = float(start)

    def _write_state(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "id": self.tid,
            "namespaces": self.ns,
            "emulator_pid": self.emulator.pid if self.emulator else None,
            "spec": dataclasses.asdict(self.spec),
            "created": time.time(),
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.state_file)

    # -- using it ------------------------------------------------------------------------

    def argv(self, role: str, argv: list[str]) -> list[str]:
        if role not in self.ns:
            raise TestbedError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        return ["ip", "netns", "exec", self.ns[role], *argv]

    def run(self, role: str, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command to completion inside ``role``'s namespace."""
        return subprocess.run(self.argv(role, argv), **kw)

    def popen(self, role: str, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a command inside ``role``'s namespace; it is stopped at teardown."""
        p = subprocess.Popen(self.argv(role, argv), **kw)
        self._procs.append(p)
        return p

    def emulator_stats(self) -> dict[str, dict[str, int]]:
        """The emulator's counters per ``<carrier>/<up|down>`` (asks it with SIGUSR1)."""
        if not self.emulator or self.emulator.poll() is not None or not self.emulator.stdout:
            raise TestbedError("link emulator is not running")
        self.emulator.send_signal(signal.SIGUSR1)
        return json.loads(_read_line(self.emulator.stdout, 5.0))

    def trace(self, carrier: int, direction: str = "down") -> traces.DeliveryTrace:
        """The (scaled) delivery trace the emulator plays for a carrier direction."""
        link = self._links[carrier]
        return link.down.trace if direction == "down" else link.up.trace

    def capacity_bps(self, carriers: list[int], start: float, seconds: float) -> float:
        """What the traces offered (IP bits/s, summed over ``carriers``) in a time window.

        ``start`` is on CLOCK_MONOTONIC, like :attr:`trace_start`.
        """
        if self.trace_start is None:
            raise TestbedError("testbed is not up")
        a = int((start - self.trace_start) * 1000)
        b = a + max(1, int(seconds * 1000))
        return sum(self.trace(k).rate_bps(a, b) for k in carriers)

    @property
    def carriers(self) -> int:
        return len(self.spec.carriers)


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _stop(p: subprocess.Popen[Any]) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(2.0)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(2.0)
    for f in (p.stdin, p.stdout, p.stderr):
        if f:
            f.close()


def _read_line(stream: Any, timeout: float) -> bytes:
    """One line from a child's pipe, or b'' after ``timeout`` seconds."""
    fd = stream.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 1)
        if not chunk:
            break
        buf += chunk
    return buf


def down_from_state(path: Path) -> str:
    """Tear down the testbed recorded in a state file (another process made it)."""
    state = json.loads(path.read_text())
    for name in state["namespaces"].values():
        plumbing.remove(name)
    path.unlink(missing_ok=True)
    return str(state["id"])


def recorded(state_dir: Path = STATE_DIR) -> list[dict[str, Any]]:
    """Testbeds with a state file, with whether their namespaces still exist."""
    out = []
    for f in sorted(Path(state_dir).glob("testbed-*.json")):
        try:
            state = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        state["file"] = str(f)
        state["alive"] = all(plumbing.exists(n) for n in state["namespaces"].values())
        out.append(state)
    return out
