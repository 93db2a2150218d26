"""The proxy on the emulated testbed: a harness for end-to-end tests, benchmarks and the demo.

:class:`ProxyBed` brings up a :class:`netns.topology.Testbed`, creates certificates,
writes a node and a gateway configuration for it, starts ``mpproxy node`` in the node
namespace and ``mpproxy gateway`` in the gateway namespace (its listener namespace gets
a per-testbed name), waits until every carrier path is up, and on exit stops both with
SIGTERM and removes whatever is left. Clients run unmodified in the client namespace,
servers in the server namespace at the documentation addresses.

``python -m bench.proxy_bench`` measures bulk goodput through the proxy beside each single
carrier and kernel MPTCP, in the same run on the same emulated links and the same trace
seconds (each row on a fresh testbed, its download starting :data:`LEAD` s into the
traces, once the proxy's paths are up): three fixed-rate carriers (target: at least 90 %
of the sum of the carrier rates), and the three bundled LTE traces. The machine has 2
shared cores: figures are noisy. (``mpproxy bench emulate`` runs the same comparison with
the replay's workloads, several stretches and both directions.)
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from middlebox import control
from middlebox.paths import pki
from netns.topology import (
    SERVER_ADDRS,
    CarrierSpec,
    Testbed,
    TestbedSpec,
    gateway_carrier_addr,
    node_carrier_addr,
)

ROOT = Path(__file__).resolve().parent.parent
SERVER = SERVER_ADDRS[0]
MPPROXY = [sys.executable, "-m", "middlebox.cli"]
DOC_RANGES = '["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]'


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def _section(name: str, values: dict) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())


class ProxyBed:
    """Testbed + node + gateway; a context manager that always cleans up."""

    def __init__(
        self,
        spec: TestbedSpec,
        workdir: Path,
        *,
        policy: str | None = None,
        plaintext: bool = False,
        paths: dict | None = None,
        gateway: dict | None = None,
        node: dict | None = None,
        acl: list[dict] | None = None,
        start: bool = True,
        sections: dict[str, dict] | None = None,
    ) -> None:
        self.spec = spec
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tb = Testbed(spec)
        self.listener_ns = f"mpp{self.tb.tid}-ls"
        self.policy = policy
        self.plaintext = plaintext
        self.paths = {"user_timeout": 4.0, "reconnect_initial": 0.1, "reconnect_max": 1.0,
                      "lost_timeout": 10.0, **(paths or {})}  # fmt: skip
        self.gateway_extra = gateway or {}
        self.node_extra = node or {}
        self.acl = acl or []
        self.sections = sections or {}  # further sections in both configurations (e.g. udp)
        self.start = start
        self.gw: subprocess.Popen | None = None
        self.node: subprocess.Popen | None = None
        self.logs: list = []

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> ProxyBed:
        self.tb.__enter__()
        try:
            self._configure()
            if self.start:
                self.start_node()
                self.start_gateway()
                self.wait_paths(len(self.spec.carriers))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop_gateway()
            self.stop_node()
        finally:
            subprocess.run(["ip", "netns", "del", self.listener_ns], capture_output=True)
            self.tb.__exit__(None, None, None)
            for f in self.logs:
                f.close()

    def _configure(self) -> None:
        d = self.dir
        if not (d / "ca.pem").exists():
            pki.create_ca(d)
            pki.create_node(d, [node_carrier_addr(0)])
            pki.create_gateway(d, "train-1")
        tls = {"ca": str(d / "ca.pem"), "plaintext": self.plaintext}
        sched = {
            **self.sections.get("scheduler", {}),
            **({"policy": self.policy} if self.policy else {}),
        }
        node = {
            "id": "node-1",
            "listen": f"{node_carrier_addr(0)}:4433",  # every carrier's paths dial it
            "allowed_destinations": json.loads(DOC_RANGES),
            "control_socket": str(d / "node.sock"),
            "connect_timeout": 3.0,
            **self.node_extra,
        }
        self.node_cfg = d / "node.toml"
        self.node_cfg.write_text(
            _section("node", node)
            + _section("tls", {**tls, "cert": str(d / "node.pem"), "key": str(d / "node.key")})
            + _section("paths", self.paths)
            + (_section("scheduler", sched) if sched else "")
            + "".join(_section(k, v) for k, v in self.sections.items() if k != "scheduler")
        )
        gw = {
            "id": "train-1",
            "node": f"{node_carrier_addr(0)}:4433",
            "lan_interface": "lan0",
            "listener_namespace": self.listener_ns,
            "control_socket": str(d / "gateway.sock"),
            **self.gateway_extra,
        }
        carriers = "".join(
            "[[gateway.carriers]]\n"
            + "".join(
                f"{k} = {_toml_value(v)}\n"
                for k, v in {
                    "name": f"carrier{k}",
                    "interface": f"car{k}",
                    "address": gateway_carrier_addr(k),
                }.items()
            )
            for k in range(len(self.spec.carriers))
        )
        acl = "".join(
            "[[gateway.acl]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in r.items())
            for r in self.acl
        )
        self.gw_cfg = d / "gateway.toml"
        self.gw_cfg.write_text(
            _section("gateway", gw)
            + carriers
            + acl
            + _section(
                "tls",
                {
                    **tls,
                    "cert": str(d / "gateway-train-1.pem"),
                    "key": str(d / "gateway-train-1.key"),
                },
            )
            + _section("paths", self.paths)
            + (_section("scheduler", sched) if sched else "")
            + "".join(_section(k, v) for k, v in self.sections.items() if k != "scheduler")
        )

    def _popen(self, role: str, args: list[str], name: str) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "ab")
        self.logs.append(log)
        return self.tb.popen(role, [*MPPROXY, *args], stdout=log, stderr=log, cwd=ROOT)

    def start_node(self) -> None:
        self.node = self._popen("node", ["node", "--config", str(self.node_cfg)], "node")

    def start_gateway(self) -> None:
        self.gw = self._popen("gateway", ["gateway", "--config", str(self.gw_cfg)], "gateway")

    def _stop(self, p: subprocess.Popen | None, timeout: float = 15.0) -> int | None:
        if p is None or p.poll() is not None:
            return None if p is None else p.returncode
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
            return None

    def stop_gateway(self) -> int | None:
        rc = self._stop(self.gw)
        self.gw = None
        return rc

    def stop_node(self) -> int | None:
        rc = self._stop(self.node)
        self.node = None
        return rc

    # -- using it --------------------------------------------------------------------------

    def status(self, role: str = "gateway") -> dict:
        return control.query(str(self.dir / f"{role}.sock"))

    def paths_up(self) -> int:
        try:
            st = self.status()
        except control.ControlError:
            return 0
        return sum(p["state"] == "up" for p in st["sessions"][0]["paths"])

    def wait_paths(self, n: int, timeout: float = 20.0, enough_at: float | None = None) -> int:
        """Wait until ``n`` paths are up; with ``enough_at`` (CLOCK_MONOTONIC), once that
        time has passed one path is enough (a carrier in an outage comes up when it can:
        the emulation's rows start on time). Returns the paths up; raises after
        ``timeout`` s."""
        end = time.monotonic() + timeout
        while (up := self.paths_up()) < n:
            if up and enough_at is not None and time.monotonic() >= enough_at:
                return up
            for p, what in ((self.gw, "gateway"), (self.node, "node")):
                if p is not None and p.poll() is not None:
                    raise RuntimeError(f"{what} exited: {self.log(what)[-3000:]}")
            if time.monotonic() > end:
                raise RuntimeError(f"paths not up: {self.log('gateway')[-3000:]}")
            time.sleep(0.1)
        return up

    def log(self, name: str) -> str:
        try:
            return (self.dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def run(
        self, role: str, argv: list[str], timeout: float = 120.0, **kw
    ) -> subprocess.CompletedProcess:
        return self.tb.run(role, argv, capture_output=True, timeout=timeout, cwd=ROOT, **kw)

    def server(self, argv: list[str], **kw) -> subprocess.Popen:
        return self.tb.popen("server", argv, cwd=ROOT, **kw)


# -- workloads (small Python programs run inside the namespaces) -------------------------------

SINK = r"""
import hashlib, socket, sys
s = socket.create_server((sys.argv[1], int(sys.argv[2])), backlog=512)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    h, n = hashlib.sha256(), 0
    while d := c.recv(1 << 20):
        h.update(d); n += len(d)
    c.sendall(f"{n} {h.hexdigest()}\n".encode()); c.close()
"""


def start_ready(bed: ProxyBed, role: str, program: str, args: list[str]) -> subprocess.Popen:
    p = bed.tb.popen(role, [sys.executable, "-c", program, *args], stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, cwd=ROOT)  # fmt: skip
    line = p.stdout.readline() if p.stdout else b""
    if not line.startswith(b"ready"):
        err = p.stderr.read().decode() if p.stderr else ""
        raise RuntimeError(f"{role} program did not start: {err[-2000:]}")
    return p


LTE_TRACES = ("ATT-LTE-driving.down", "TMobile-LTE-short.down", "Verizon-LTE-short.down")
LEAD = 3.0
"""Seconds of trace before every row's download starts (the proxy comes up meanwhile)."""


def measure(spec: TestbedSpec, workdir: Path, row: int | str | None, seconds: float,
            cc: str = "bbr", **bed_kw) -> dict:  # fmt: skip
    """One timed download on a fresh testbed, starting :data:`LEAD` s into the traces (so
    every row sees the same seconds): over carrier ``row`` alone, over kernel MPTCP
    (``None``) or through the proxy (``"proxy"``; node and gateway started, the same
    client and server programs)."""
    from netns import baselines

    proxy = row == "proxy"
    with ProxyBed(spec, workdir, start=proxy, **bed_kw) as bed:
        srv = baselines.start_server(bed.tb)
        assert bed.tb.trace_start is not None
        time.sleep(max(0.0, bed.tb.trace_start + LEAD - time.monotonic()))
        try:
            r = baselines.download(bed.tb, 0 if proxy else row, seconds=seconds, cc=cc)
        finally:
            srv.terminate()
        used = [row] if isinstance(row, int) else list(range(bed.tb.carriers))
        offered = bed.tb.capacity_bps(used, r.start, r.seconds) / 1e6
        out = {
            "goodput_mbit": round(r.goodput_mbit, 2),
            "offered_mbit": round(offered, 2),
            "share": round(r.goodput_mbit / offered, 3) if offered else None,
            "started_s": round(r.start - (bed.tb.trace_start or r.start), 2),
        }
        if proxy:
            st = bed.status()["sessions"][0]
            out["paths_received_mb"] = [round(p["bytes_in"] / 1e6, 1) for p in st["paths"]]
            out["stall_retransmits"] = st["counters"]["stall_retransmits"]
        elif row is None:
            out["subflows"] = r.subflows
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=20.0, help="Mbit/s per fixed-rate carrier")
    ap.add_argument("--seconds", type=float, default=12.0, help="length of each download")
    ap.add_argument("--cases", default="fixed,lte", help="fixed, lte or both")
    ap.add_argument("--plaintext", action="store_true", help="paths without TLS")
    ap.add_argument("--policy", default=None, help="scheduler policy (default: configuration)")
    ap.add_argument("--cc", default="bbr", help="server congestion control of every row")
    ap.add_argument("--workdir", default="/tmp/mpproxy-bench")
    args = ap.parse_args(argv)
    traces = ROOT.parent / "shared" / "traces" / "mahimahi"
    cases = {
        "fixed": tuple(CarrierSpec(f"{args.rate:g}mbit", delay_ms=20) for _ in range(3)),
        "lte": tuple(CarrierSpec(str(traces / t), delay_ms=20) for t in LTE_TRACES),
    }
    print(
        f"# {args.seconds:g} s downloads, server cc {args.cc}, one fresh testbed per row, "
        f"every download from trace second {LEAD:g}; goodput and what the traces offered in "
        "the same seconds (Mbit/s). 2 shared cores: noisy"
    )
    kw = {"plaintext": args.plaintext, "policy": args.policy}
    for name in args.cases.split(","):
        spec = TestbedSpec(carriers=cases[name], clients=3)
        rows: list[tuple[str, int | str | None]] = [(f"carrier{k}", k) for k in range(3)]
        rows += [("mptcp", None), ("proxy", "proxy")]
        result: dict = {"case": name}
        for label, row in rows:
            d = Path(args.workdir) / name / label
            result[label] = measure(spec, d, row, args.seconds, args.cc, **kw)
            print(json.dumps({"case": name, "row": label, **result[label]}), flush=True)
        best = max(result[f"carrier{k}"]["goodput_mbit"] for k in range(3))
        summary = {
            "case": name,
            "proxy_mbit": result["proxy"]["goodput_mbit"],
            "mptcp_mbit": result["mptcp"]["goodput_mbit"],
            "best_single_mbit": best,
        }
        if name == "fixed":
            summary["proxy_share_of_sum_of_rates"] = round(
                result["proxy"]["goodput_mbit"] / (3 * args.rate), 3
            )
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
