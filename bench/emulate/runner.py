"""Rows of an emulation: the same workload, each row on a fresh testbed.

A row is a scheduler policy through the real proxy (``mpproxy gateway`` + ``mpproxy node``
via :class:`bench.proxy_bench.ProxyBed`), ``single:<carrier>`` (plain TCP over that
carrier, the testbed's source routing and NAT) or ``mptcp`` (Linux kernel MPTCP, one
subflow per carrier). Every row gets a fresh testbed and starts its workload at the same
point of the traces (``lead`` seconds after the link emulator started, once the proxy's
paths are up), so all rows see the same stretch of every trace.

The carriers come from the same scenario ``mpproxy bench replay`` builds
(``bench.arguments.build``), so the emulator replays exactly the traces the simulator reads;
a synthetic rail route is written out as Mahimahi files first (the route depends on its
length, and the testbed's ``rail:`` spec always makes a 600 s one). For the report and the
calibration the simulator's view of the carriers is shifted by ``lead``
(:func:`shifted`): simulated time 0 is the trace time at which the emulated workload began.

Metrics are the simulator's (``bench.sim.metrics.summarize``) over the
``Recorder`` the client program filled. What the emulation cannot see: the receive
buffer's out-of-order delay (not exported by the gateway: reported as "-"), copies per
message (for proxy rows, redundant bytes = bytes the node wrote on its paths, wire
headers included, minus bytes the clients received; 0 for TCP and MPTCP rows), and
per-path useful bytes (the per-path plot shows the IP bytes the emulator delivered per
carrier, retransmissions and copies included).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.emulate.apps import recorder_from_json
from bench.sim.links import OPPORTUNITY_BYTES, Carrier, Link, capacity_series
from bench.sim.metrics import summarize
from bench.sim.runner import SINGLE, RunResult, Scenario, oracle_bytes
from netns.topology import SERVER_ADDRS, CarrierSpec, TestbedSpec, client_addr
from netns.traces import DeliveryTrace

MPTCP = "mptcp"
ROOT = Path(__file__).resolve().parents[2]


class EmulationError(RuntimeError):
    """A row could not run (a process did not start, the testbed failed)."""


@dataclass
class EmuSetup:
    """What every row shares: the scenario (as the simulator reads it), the testbed's
    carrier specs, and how the proxy is configured."""

    scn: Scenario
    specs: list[CarrierSpec]
    workdir: Path
    lead: float = 4.0  # s of trace before the workload starts (proxy start-up fits in it)
    paths: dict | None = None  # [paths] for node and gateway
    cc: str = "bbr"  # server congestion control (single and MPTCP rows)


def write_mahimahi(trace: DeliveryTrace, path: Path) -> None:
    """A delivery trace as a Mahimahi file that ``netns.traces.read_mahimahi`` reads back
    with the same counts (opportunities of ms 0 are stamped with the period; a trace with
    none in ms 0 gets one there, 1500 bytes per period, so the period survives)."""
    c = trace.counts
    p = len(c)
    stamps = np.concatenate(
        (np.repeat(np.arange(1, p), c[1:]), np.full(max(int(c[0]), 1), p, dtype=np.int64))
    )
    path.write_text("\n".join(map(str, stamps.tolist())) + "\n")


def carrier_specs(args, scn: Scenario, workdir: Path) -> tuple[list[CarrierSpec], list[Carrier]]:
    """Testbed carriers for the scenario's carriers (same traces, delay, queue, loss;
    explicit outages moved by ``args.lead``, the emulator counts from its own start), and
    the scenario's carriers (for a rail route: the route long enough for the lead, the
    same one the files hold)."""
    from bench.sim import scenarios

    downs: list[str] = []
    ups: list[str | None] = []
    carriers = list(scn.carriers)
    if args.lte:
        base = scenarios.traces_dir() / "mahimahi"
        downs = [str(base / f) for _, f in scenarios.LTE_TRACES]
        ups = [None] * len(downs)
    elif args.rail is not None:
        _, route = scenarios.rail(args.rail, args.duration + args.lead + 5)
        workdir.mkdir(parents=True, exist_ok=True)
        for k, c in enumerate(route.carriers):
            for d in ("down", "up"):
                write_mahimahi(route.delivery(k, d), workdir / f"{c.name}.{d}")
            downs.append(str(workdir / f"{c.name}.down"))
            ups.append(str(workdir / f"{c.name}.up"))
            carriers[k] = dataclasses.replace(
                carriers[k], trace=route.delivery(k, "down"), up=route.delivery(k, "up")
            )
    else:
        for spec in args.trace:
            name, eq, rest = spec.partition("=")
            downs.append(rest if eq and name and "/" not in name else spec)
            ups.append(None)
    out = []
    for c, down, up in zip(carriers, downs, ups, strict=True):
        out.append(
            CarrierSpec(
                down,
                up=up,
                delay_ms=c.delay * 1000,
                queue_packets=max(1, c.queue_bytes // OPPORTUNITY_BYTES),
                loss=c.loss,
                outages=tuple((a + args.lead, b + args.lead) for a, b in c.outages),
                name=c.name,
            )
        )
    return out, carriers


def shifted(carriers: Sequence[Carrier], lead: float) -> list[Carrier]:
    """The carriers as seen from ``lead`` s into their traces (time 0 = the workload's
    start in the emulation)."""
    ms = int(round(lead * 1000))
    out = []

    def roll(t):
        return DeliveryTrace(np.roll(t.counts, -(ms % len(t.counts))), t.name)

    for c in carriers:
        outs = tuple((max(0.0, a), b) for a, b in c.outages if b > 0)
        up = None if c.up is None else roll(c.up)
        out.append(dataclasses.replace(c, trace=roll(c.trace), up=up, outages=outs))
    return out


def best_single(scn: Scenario) -> str:
    """The carrier that offered the most over the measured span."""
    links = [Link(c, scn.duration) for c in scn.carriers]
    caps = [lk.capacity_between(scn.warmup, scn.duration) for lk in links]
    return scn.carriers[int(np.argmax(caps))].name


def _start_server(bed, cc: str) -> subprocess.Popen:
    p = bed.tb.popen(
        "server",
        [sys.executable, "-m", "bench.emulate.apps", "server", "--cc", cc],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    line = p.stdout.readline() if p.stdout else b""
    if not line.startswith(b"ready"):
        err = p.stderr.read().decode(errors="replace") if p.stderr else ""
        raise EmulationError(f"workload server did not start: {err.strip()[-1500:]}")
    return p


def run_row(setup: EmuSetup, row: str, tick: Callable[[float], None] | None = None) -> RunResult:
    """One row on a fresh testbed; a :class:`RunResult` like the simulator's."""
    from bench.proxy_bench import ProxyBed

    scn = setup.scn
    names = [c.name for c in scn.carriers]
    proxy = row != MPTCP and not row.startswith(SINGLE)
    policy = row if proxy else None
    if row.startswith(SINGLE):
        k = names.index(row[len(SINGLE) :])
        bind, mptcp, used = client_addr(k), False, [k]
    else:
        bind, mptcp, used = client_addr(0), row == MPTCP, list(range(len(names)))
    d = setup.workdir / row.replace(":", "-")
    spec = TestbedSpec(carriers=tuple(setup.specs), clients=len(names))
    wall0 = time.perf_counter()
    with ProxyBed(spec, d, policy=policy, start=proxy, paths=setup.paths) as bed:
        srv = _start_server(bed, setup.cc)
        tb = bed.tb
        assert tb.trace_start is not None
        start_at = max(tb.trace_start + setup.lead, time.monotonic() + 0.3)
        lead = start_at - tb.trace_start
        out = d / "client.json"
        argv = [sys.executable, "-m", "bench.emulate.apps", "client"]
        argv += ["--workload", scn.workload, "--duration", f"{scn.duration:g}"]
        argv += ["--seed", str(scn.seed), "--server", SERVER_ADDRS[0], "--bind", bind]
        argv += ["--start-at", repr(start_at), "--paths", str(len(names)), "--out", str(out)]
        argv += ["--mptcp"] if mptcp else []
        err = open(d / "client.err", "wb")
        sent: dict[int, int] = {}  # node path id -> bytes written (ids are never reused)
        try:
            cl = tb.popen("client", argv, stderr=err, cwd=ROOT)
            per_path = _sample(
                tb, cl, names, start_at, scn.duration, tick, bed if proxy else None, sent
            )
        finally:
            err.close()
        if cl.returncode != 0 or not out.exists():
            raise EmulationError(
                f"row {row}: client program failed: {(d / 'client.err').read_text()[-1500:]}"
            )
        node = bed.status("node") if proxy else None
        if node is not None:
            _count_sent(node, sent)
        srv.terminate()
    rec = recorder_from_json(json.loads(out.read_text()))
    rec.path_useful = [
        per_path[i] if i in used else [0.0] * len(per_path[i]) for i in range(len(names))
    ]
    total = sum(rec.goodput)
    if node is not None and node["sessions"]:
        sess = node["sessions"][0]
        rec.wire_sent = rec.payload_sent = sum(sent.values())
        rec.useful_bytes = min(int(total), rec.payload_sent)
        rec.reinjections = sess["counters"]["retransmits"]
        rec.stall_reinjections = sess["counters"]["stall_retransmits"]
    view = dataclasses.replace(scn, carriers=shifted(scn.carriers, lead))
    links = [Link(c, scn.duration, outage_min=scn.outage_min) for c in view.carriers]
    summary = summarize(rec, oracle_bytes(view), scn.warmup)
    summary["lead_s"] = lead
    summary["wall_s"] = time.perf_counter() - wall0
    summary["emulated"] = True
    return RunResult(
        row,
        summary,
        rec,
        names,
        [lk.outages for lk in links],
        [capacity_series(lk, scn.duration) for lk in links],
    )


def _count_sent(node: dict, sent: dict[int, int]) -> None:
    for sess in node["sessions"][:1]:
        for p in sess["paths"]:
            sent[p["id"]] = max(sent.get(p["id"], 0), p["bytes_out"])


def _sample(tb, cl, names, start_at, duration, tick, bed=None, sent=None) -> list[list[float]]:
    """IP bytes the emulator delivered per carrier per second, until the client ends; with
    ``bed``, also what the node wrote on each path (a path that reconnects is a new path
    with its own counter, so the old one is kept from the last sample)."""
    n = int(np.ceil(duration)) + 1
    per_path = [[0.0] * n for _ in names]
    last = None
    deadline = start_at + duration + 60
    while cl.poll() is None:
        if time.monotonic() > deadline:
            cl.kill()
            cl.wait(5)
            break
        time.sleep(0.25 if last is None else 1.0)
        now = time.monotonic()
        if now < start_at:
            continue
        try:
            st = tb.emulator_stats()
        except Exception:  # noqa: BLE001 - counters are for the plot only
            continue
        cur = [st.get(f"{name}/down", {}).get("delivered_bytes", 0) for name in names]
        if last is not None:
            i = min(int(now - start_at), n - 1)
            for k in range(len(names)):
                per_path[k][i] += cur[k] - last[k]
        last = cur
        if bed is not None and sent is not None:
            try:
                _count_sent(bed.status("node"), sent)
            except Exception:  # noqa: BLE001 - a missed sample loses at most a second
                pass
        if tick is not None:
            tick(now - start_at)
    cl.wait(10)
    return per_path


def emulate(
    setup: EmuSetup,
    rows: Sequence[str],
    on_result: Callable[[RunResult], None] | None = None,
    progress: bool = False,
) -> list[RunResult]:
    """Every row in turn, each on a fresh testbed."""
    from bench.sim.engine import ProgressBar

    out = []
    for row in rows:
        bar = ProgressBar(setup.scn.duration, f"emulate {row}") if progress else None
        r = run_row(setup, row, bar)
        if bar is not None:
            bar.close()
        if on_result is not None:
            on_result(r)
        out.append(r)
    return out
