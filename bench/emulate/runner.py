"""Rows of an emulation: the same workload, each row on a fresh testbed, on the same
trace seconds.

A row is a scheduler policy through the real proxy (``mpproxy gateway`` + ``mpproxy node``
via :class:`bench.proxy_bench.ProxyBed`), ``single:<carrier>`` (plain TCP over that
carrier, the testbed's source routing and NAT), ``single:best`` (the carrier that offered
the most over the stretch being run) or ``mptcp`` (Linux kernel MPTCP, one subflow per
carrier). Every row runs on every stretch (``bench.emulate.stretches``): a fresh testbed
whose link emulator plays the traces from the stretch's ``offset`` on (written out as
Mahimahi windows of the traces when the offset is not 0), its workload starting ``lead``
seconds later, once the proxy's paths are up. Rows are interleaved per stretch (every row
of stretch 0, then every row of stretch 1, ...), so slow drift of the machine hits all
rows alike. A row whose workload could not start at the lead (the proxy took longer to
come up) starts later; its ``trace_start_s`` says so and the report flags it.

The carriers come from the same scenario ``mpproxy bench replay`` builds
(``bench.arguments.build``), so the emulator replays exactly the traces the simulator reads;
a synthetic rail route is written out as Mahimahi files first (the route depends on its
length, and the testbed's ``rail:`` spec always makes a 600 s one). For the report and the
calibration the simulator's view of the carriers is shifted (:func:`shifted`) to the trace
second at which the row's workload began.

Metrics are the simulator's (``bench.sim.metrics.summarize``) over the ``Recorder`` the
client program filled; the oracle is the downlink capacity for downloads, the uplink's for
uploads (both for a mix). For proxy rows the gateway's and the node's status are read
every second and exactly at the workload's start and end: ``summary["directions"]``
holds, per direction and per carrier, what ``bench.emulate.directions`` derives (payload
sent, stall resends, resent copies, needless copies received, ACK delays against the
stall deadline, the kernel's retransmissions), and the row's ``redundant %`` is payload
the proxy's muxes put on paths beyond the first copy of each byte, over payload sent,
counted in the directions that carry the workload's payload. What the emulation
cannot see: the receive buffer's out-of-order delay (not exported: reported as "-") and
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.emulate import stretches as st
from bench.emulate.apps import recorder_from_json
from bench.emulate.directions import PathCounters, directions
from bench.emulate.variants import Variant, split_row
from bench.sim.links import OPPORTUNITY_BYTES, Carrier, Link, capacity_series
from bench.sim.metrics import summarize
from bench.sim.runner import SINGLE, RunResult, Scenario, oracle_bytes
from bench.sim.workloads import parse
from middlebox.session.mux import MESSAGE_OVERHEAD
from netns import tracespec
from netns.topology import SERVER_ADDRS, CarrierSpec, TestbedSpec, client_addr, up_counterpart
from netns.traces import DeliveryTrace

MPTCP = "mptcp"
BEST = SINGLE + "best"
ROOT = Path(__file__).resolve().parents[2]
MARGIN_S = 30.0
"""Seconds of trace a stretch's testbed gets beyond lead + duration (late starts, the end)."""
LEAD_SLACK_S = 0.05
"""A row that started more than this after the lead is flagged: not on the same seconds."""


class EmulationError(RuntimeError):
    """A row could not run (a process did not start, the testbed failed)."""


@dataclass
class EmuSetup:
    """What every row shares: the scenario (as the simulator reads it), the testbed's
    carrier specs, the traces they play (downlink, uplink), and how the proxy is
    configured."""

    scn: Scenario
    specs: list[CarrierSpec]
    workdir: Path
    lead: float = 4.0  # s of trace before the workload starts (proxy start-up fits in it)
    paths: dict | None = None  # [paths] for node and gateway
    variants: dict[str, Variant] = field(default_factory=dict)  # rows POLICY@NAME
    cc: str = "bbr"  # server congestion control (single and MPTCP rows)
    traces: list[tuple[DeliveryTrace, DeliveryTrace]] = field(default_factory=list)
    _written: dict[int, tuple[CarrierSpec, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.traces:
            self.traces = [played(s) for s in self.specs]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.scn.carriers]

    def periods(self) -> dict[str, float | None]:
        """Each carrier's downlink period in seconds (None: steady), for the report."""
        return {n: st.period_s(down) for n, (down, _) in zip(self.names, self.traces, strict=True)}

    def all_periods(self) -> list[float | None]:
        """The periods of every trace the testbed plays, both directions."""
        return [st.period_s(t) for pair in self.traces for t in pair]

    def up_carriers(self) -> list[Carrier]:
        """The scenario's carriers with their uplink traces (for the uploads' oracle)."""
        return [
            dataclasses.replace(c, trace=up)
            for c, (_, up) in zip(self.scn.carriers, self.traces, strict=True)
        ]

    def stretch_specs(self, stretch: st.Stretch) -> tuple[CarrierSpec, ...]:
        """The testbed's carriers for a stretch: the traces from its offset on."""
        if stretch.offset == 0:
            return tuple(self.specs)
        if stretch.index in self._written:
            return self._written[stretch.index]
        d = self.workdir / "traces" / f"stretch{stretch.index}"
        d.mkdir(parents=True, exist_ok=True)
        span = stretch.lead + stretch.duration + MARGIN_S
        out = []
        for spec, (down, up) in zip(self.specs, self.traces, strict=True):
            files = []
            for trace, direction, given in ((down, "down", spec.down), (up, "up", spec.up)):
                if st.period_s(trace) is None:
                    files.append(given)  # steady: every offset plays the same
                    continue
                path = d / f"{spec.name or 'carrier'}.{direction}"
                write_mahimahi(st.window(trace, stretch.offset, span), path)
                files.append(str(path))
            out.append(dataclasses.replace(spec, down=files[0], up=files[1]))
        self._written[stretch.index] = tuple(out)
        return self._written[stretch.index]


def played(spec: CarrierSpec) -> tuple[DeliveryTrace, DeliveryTrace]:
    """The (downlink, uplink) traces the testbed plays for a carrier spec (its rules:
    ``up`` or the downlink's counterpart, ``netns.topology.up_counterpart``)."""
    up = spec.up or up_counterpart(spec.down)
    return tracespec.load(spec.down, "down"), tracespec.load(up, "up")


def scenario_for(specs: Sequence[CarrierSpec], workload: str, duration: float) -> Scenario:
    """The simulator's view of testbed carrier specs (their downlink traces, delay, queue,
    loss), for rows built from specs rather than from ``bench replay``'s arguments (the
    demo); explicit outages are not carried over."""
    carriers = [
        Carrier(
            s.name or f"carrier{k}",
            tracespec.load(s.down, "down"),
            delay=s.delay_ms / 1000,
            queue_bytes=s.queue_packets * OPPORTUNITY_BYTES,
            loss=s.loss,
        )
        for k, s in enumerate(specs)
    ]
    return Scenario(carriers, workload=workload, duration=duration)


def offered_mbps(r: RunResult) -> float:
    """What the carriers a row used could deliver over its workload's seconds (IP
    Mbit/s): every carrier for the proxy and MPTCP, its own for a single-carrier row; the
    uplinks for an upload."""
    used = [i for i, c in enumerate(r.carriers) if r.summary.get("carrier") in (None, c)]
    seconds = r.rec.duration
    return sum(sum(r.capacity[i]) for i in used) * 8 / seconds / 1e6 if seconds else 0.0


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


def carrier_specs(
    args, scn: Scenario, workdir: Path, span: float | None = None
) -> tuple[list[CarrierSpec], list[Carrier]]:
    """Testbed carriers for the scenario's carriers (same traces, delay, queue, loss;
    explicit outages moved by ``args.lead``, the emulator counts from its own start), and
    the scenario's carriers (for a rail route: the route long enough for ``span`` seconds
    of trace, default lead + duration, the same one the files hold)."""
    from bench.sim import scenarios

    downs: list[str] = []
    ups: list[str | None] = []
    carriers = list(scn.carriers)
    if args.lte:
        base = scenarios.traces_dir() / "mahimahi"
        downs = [str(base / f) for _, f in scenarios.LTE_TRACES]
        ups = [None] * len(downs)
    elif args.rail is not None:
        length = (span if span is not None else args.duration + args.lead) + 5
        _, route = scenarios.rail(args.rail, length)
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
    start in the emulation): both directions."""
    out = []

    def view(t: DeliveryTrace) -> DeliveryTrace:
        return st.window(t, lead, len(t.counts) / 1000)

    for c in carriers:
        outs = tuple((max(0.0, a), b) for a, b in c.outages if b > 0)
        up = None if c.up is None else view(c.up)
        out.append(dataclasses.replace(c, trace=view(c.trace), up=up, outages=outs))
    return out


def best_single(scn: Scenario, at: float = 0.0) -> str:
    """The carrier that offered the most over the measured span of the workload that
    starts at trace second ``at``."""
    view = shifted(scn.carriers, at) if at else scn.carriers
    links = [Link(c, scn.duration) for c in view]
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


def _directions_of(workload: str) -> tuple[bool, bool]:
    """(carries downloads, carries uploads)."""
    kinds = [w.name for w in parse(workload)]
    return any(k != "upload" for k in kinds), "upload" in kinds


def run_row(
    setup: EmuSetup,
    row: str,
    tick: Callable[[float], None] | None = None,
    stretch: st.Stretch | None = None,
) -> RunResult:
    """One row on a fresh testbed over one stretch (default: the traces from their start);
    a :class:`RunResult` like the simulator's, named ``row``."""
    scn = setup.scn
    stretch = stretch or st.Stretch(0, 0.0, setup.lead, scn.duration)
    names = setup.names
    proxy = row != MPTCP and not row.startswith(SINGLE)
    carrier = None
    if row.startswith(SINGLE):
        carrier = best_single(scn, stretch.start) if row == BEST else row[len(SINGLE) :]
        k = names.index(carrier)
        bind, mptcp, used = client_addr(k), False, [k]
    else:
        bind, mptcp, used = client_addr(0), row == MPTCP, list(range(len(names)))
    down, up = _directions_of(scn.workload)
    d = setup.workdir / (f"stretch{stretch.index}" if stretch.index else "") / row.replace(":", "-")
    spec = TestbedSpec(carriers=setup.stretch_specs(stretch), clients=len(names))
    wall0 = time.perf_counter()
    try:
        per_path, marks, lead, got = _run(setup, row, stretch, tick, spec, d, bind, mptcp, down)
    except RuntimeError as e:  # ProxyBed: a process exited, the paths did not come up
        if isinstance(e, EmulationError):
            raise
        raise EmulationError(f"row {row}: {e}") from None
    rec = recorder_from_json(got["recorder"])
    rec.path_useful = [
        per_path[i] if i in used else [0.0] * len(per_path[i]) for i in range(len(names))
    ]
    at = stretch.offset + lead  # the trace second at which the workload began
    view = dataclasses.replace(scn, carriers=shifted(scn.carriers, at))
    up_view = dataclasses.replace(scn, carriers=shifted(setup.up_carriers(), at))
    oracle_down, oracle_up = oracle_bytes(view), oracle_bytes(up_view)
    dirs = None
    if proxy:
        uploaded = int(sum(rec.uploaded))
        useful = {
            "down": int(sum(rec.goodput)) - uploaded if down else None,
            "up": uploaded if up else None,
        }
        dirs = directions(marks[0], marks[1], useful)
        _proxy_totals(rec, dirs)
    summary = summarize(rec, oracle_down * down + oracle_up * up, scn.warmup)
    span = scn.duration - scn.warmup
    summary["oracle_down_mbps"] = oracle_down * 8 / span / 1e6 if span > 0 else 0.0
    summary["oracle_up_mbps"] = oracle_up * 8 / span / 1e6 if span > 0 else 0.0
    summary["directions"] = dirs
    summary["lead_s"] = lead
    summary["stretch"] = stretch.index
    summary["trace_start_s"] = at
    summary["late_start"] = lead - stretch.lead > LEAD_SLACK_S
    summary["carrier"] = carrier
    summary["subflows"] = got.get("subflows") or None
    summary["wall_s"] = time.perf_counter() - wall0
    summary["emulated"] = True
    plotted = up_view if up and not down else view
    links = [Link(c, scn.duration, outage_min=scn.outage_min) for c in plotted.carriers]
    return RunResult(
        row,
        summary,
        rec,
        names,
        [lk.outages for lk in links],
        [capacity_series(lk, scn.duration) for lk in links],
    )


def _run(
    setup: EmuSetup,
    row: str,
    stretch: st.Stretch,
    tick: Callable[[float], None] | None,
    spec: TestbedSpec,
    d: Path,
    bind: str,
    mptcp: bool,
    down: bool,
) -> tuple[list[list[float]], list, float, dict]:
    """The row's testbed, processes and client; (per-carrier bytes per second, the start
    and end snapshots of the proxy's counters, the lead it started at, the client's
    output)."""
    from bench.proxy_bench import ProxyBed

    scn, names = setup.scn, setup.names
    proxy = row != MPTCP and not row.startswith(SINGLE)
    counters = PathCounters(names)
    policy, vname = split_row(row)
    v = setup.variants[vname] if vname else Variant("", "")
    with ProxyBed(
        spec,
        d,
        policy=policy if proxy else None,
        start=False,
        paths={**(setup.paths or {}), **v.section("paths")},
        gateway=v.section("gateway"),
        node=v.section("node"),
        sections=v.others(),
    ) as bed:
        tb = bed.tb
        assert tb.trace_start is not None
        if proxy:
            bed.start_node()
            bed.start_gateway()
        srv = _start_server(bed, setup.cc)
        if proxy:
            # every path, or at least one once the lead is nearly over: a carrier in an
            # outage at the stretch's start joins when it can, as it would on the road
            bed.wait_paths(len(names), enough_at=tb.trace_start + stretch.lead - 0.3)
        start_at = max(tb.trace_start + stretch.lead, time.monotonic() + 0.3)
        out = d / "client.json"
        argv = [sys.executable, "-m", "bench.emulate.apps", "client"]
        argv += ["--workload", scn.workload, "--duration", f"{scn.duration:g}"]
        argv += ["--seed", str(scn.seed), "--server", SERVER_ADDRS[0], "--bind", bind]
        argv += ["--start-at", repr(start_at), "--paths", str(len(names)), "--out", str(out)]
        argv += ["--mptcp"] if mptcp else []
        err = open(d / "client.err", "wb")
        try:
            cl = tb.popen("client", argv, stderr=err, cwd=ROOT)
            watch = _Watch(tb, names, start_at, scn.duration, "down" if down else "up")
            per_path, marks = watch.run(cl, tick, bed if proxy else None, counters)
        finally:
            err.close()
        if cl.returncode != 0 or not out.exists():
            raise EmulationError(
                f"row {row}: client program failed: {(d / 'client.err').read_text()[-1500:]}"
            )
        srv.terminate()
    return per_path, marks, start_at - tb.trace_start, json.loads(out.read_text())


def _proxy_totals(rec, dirs: dict) -> None:
    """The recorder's overhead fields from both directions of a proxy row: payload and
    wire bytes the muxes sent and its first copies (in the directions carrying the
    workload's payload), resent copies, stall resends, needless copies."""
    payload = useful = 0
    for d in dirs.values():
        if d["unique_bytes"] is not None:
            payload += d["sent_bytes"]
            useful += min(d["unique_bytes"], d["sent_bytes"])
    rec.payload_sent = payload
    rec.useful_bytes = useful
    rec.wire_sent = payload + MESSAGE_OVERHEAD * sum(
        d["sent_messages"] for d in dirs.values() if d["unique_bytes"] is not None
    )
    rec.reinjections = sum(d["resent_messages"] for d in dirs.values())
    rec.stall_reinjections = sum(d["stall_resends"] for d in dirs.values())
    rec.duplicate_bytes = sum(d["needless_bytes"] for d in dirs.values())


class _Watch:
    """What the runner samples while a row's client runs: the IP bytes the emulator
    delivered per carrier each second (direction ``direction``, for the plot), and for a
    proxy row both processes' status every second and exactly at the workload's start
    and end (the two snapshots the row's transport figures are the difference of)."""

    def __init__(self, tb, names: list[str], start_at: float, duration: float, direction: str):
        self.tb = tb
        self.names = names
        self.start_at = start_at
        self.duration = duration
        self.direction = direction

    def _delivered(self) -> list[int] | None:
        try:
            stats = self.tb.emulator_stats()
        except Exception:  # noqa: BLE001 - counters are for the plot only
            return None
        key = self.direction
        return [stats.get(f"{n}/{key}", {}).get("delivered_bytes", 0) for n in self.names]

    @staticmethod
    def _feed(bed, counters: PathCounters) -> None:
        for role in ("node", "gateway"):
            try:
                counters.feed(role, bed.status(role))
            except Exception:  # noqa: BLE001 - a missed sample loses at most a second
                pass

    def run(self, cl, tick, bed, counters: PathCounters):
        """Until the client ends: (per-carrier bytes per second, (start, end) snapshots)."""
        n = int(np.ceil(self.duration)) + 1
        per_path = [[0.0] * n for _ in self.names]
        t0, end_t = self.start_at, self.start_at + self.duration
        events = [(t0 - 0.05, "start")]
        events += [(t0 + i, "second") for i in range(1, int(np.ceil(self.duration)) + 1)]
        events.append((end_t, "end"))
        events.sort()
        marks: list[PathCounters | None] = [None, None]
        last = None
        deadline = end_t + 60
        while cl.poll() is None and events:
            now = time.monotonic()
            if now > deadline:
                cl.kill()
                cl.wait(5)
                break
            at, what = events[0]
            if now < at:
                time.sleep(min(at - now, 0.25))
                continue
            events.pop(0)
            if bed is not None:
                self._feed(bed, counters)
                if what == "start":
                    marks[0] = counters.snapshot()
                elif what == "end":
                    marks[1] = counters.snapshot()
            if what != "end":
                cur = self._delivered()
                if cur is not None and last is not None:
                    i = min(int(round(at - t0)) - 1, n - 1)
                    for k in range(len(self.names)):
                        per_path[k][max(i, 0)] += cur[k] - last[k]
                last = cur if cur is not None else last
            if tick is not None:
                tick(max(0.0, at - t0))
        cl.wait(30)
        if bed is not None:
            if marks[0] is None:
                marks[0] = PathCounters(self.names)
            if marks[1] is None:  # the client ended early: what there is now
                self._feed(bed, counters)
                marks[1] = counters.snapshot()
        return per_path, marks


def emulate(
    setup: EmuSetup,
    rows: Sequence[str],
    on_result: Callable[[RunResult], None] | None = None,
    progress: bool = False,
    stretches: Sequence[st.Stretch] | None = None,
) -> list[list[RunResult]]:
    """Every row on every stretch, each on a fresh testbed, rows interleaved per stretch
    (all rows of stretch 0, then of stretch 1, ...); one list of results per stretch."""
    from bench.sim.engine import ProgressBar

    plan = stretches or [st.Stretch(0, 0.0, setup.lead, setup.scn.duration)]
    out = []
    for stretch in plan:
        results = []
        for row in rows:
            label = f"emulate {row}" + (f" #{stretch.index}" if len(plan) > 1 else "")
            bar = ProgressBar(setup.scn.duration, label) if progress else None
            r = run_row(setup, row, bar, stretch)
            if bar is not None:
                bar.close()
            if on_result is not None:
                on_result(r)
            results.append(r)
        out.append(results)
    return out
