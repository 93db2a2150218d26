"""One replay, and every policy over the same trace and workload in one call.

A :class:`Scenario` is the input (carriers, workload spec, duration, seed, knobs);
:func:`run` replays it under one policy (or on one carrier alone); :func:`compare`
replays it under every named policy and every single-carrier baseline and returns the
results in a fixed order. The same scenario and seed give the same numbers.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.sim.engine import Engine, ProgressBar
from bench.sim.links import Carrier, Link, capacity_series
from bench.sim.metrics import Recorder, summarize
from bench.sim.plaintcp import PlainTcp
from bench.sim.shell import Proxy
from bench.sim.transport import Transport, TransportParams
from bench.sim.workloads import Runtime, parse
from scheduler import policies
from scheduler.config import SchedulerConfig
from scheduler.generators import CarrierTracker
from scheduler.longterm import LongTermSource

SINGLE = "single:"


@dataclass
class LongTerm:
    """What a long-term feed gives one run: the source our policy asks and, when the feed
    reports each carrier's cell and RSRP (as the gateway's context loop does live), the
    carrier tracker it reports into. Both scheduler adapters (gateway and node) get them,
    as a gateway's context loop and a node's session context feed theirs."""

    source: LongTermSource
    carriers: CarrierTracker | None = None


# A long-term feed: given the engine and carrier names, returns a fresh LongTerm (or None)
# and schedules its own reports (cell id, RSRP) on the engine.
LongTermFeed = Callable[[Engine, Sequence[str]], LongTerm | None]


@dataclass
class Scenario:
    carriers: list[Carrier]
    workload: str = "web"
    duration: float = 300.0
    seed: int = 1
    params: TransportParams = field(default_factory=TransportParams)
    sched: SchedulerConfig = field(default_factory=SchedulerConfig)
    warmup: float = 0.0  # s excluded from goodput (startup of the congestion control)
    outage_min: float = 0.5  # s of zero capacity that count as an outage
    longterm: LongTermFeed | None = None
    name: str = ""


@dataclass
class RunResult:
    name: str  # policy name, or "single:<carrier>"
    summary: dict
    rec: Recorder
    carriers: list[str]
    outages: list[list[tuple[float, float]]]
    capacity: list[list[float]]  # IP bytes per second per carrier


def _links(scn: Scenario, carriers: Sequence[Carrier], direction: str = "down") -> list[Link]:
    seed = 7919 if direction == "down" else 7883
    return [
        Link(
            c,
            scn.duration,
            seed=scn.seed * seed + i,
            outage_min=scn.outage_min,
            direction=direction,
        )
        for i, c in enumerate(carriers)
    ]


def oracle_bytes(scn: Scenario, direction: str = "down") -> float:
    """Integral over the measured span of the sum of every carrier's capacity (IP bytes)
    in ``direction`` ("down": node to gateway, "up")."""
    links = _links(scn, scn.carriers, direction)
    return sum(lk.capacity_between(scn.warmup, scn.duration) for lk in links)


def workload_oracle(scn: Scenario) -> float:
    """The oracle of ``scn``'s workload: the downlinks' capacity for downloads, the
    uplinks' for uploads, both for a mix (as the emulation reports it)."""
    kinds = [w.name for w in parse(scn.workload)]
    down = any(k != "upload" for k in kinds)
    return oracle_bytes(scn) * down + oracle_bytes(scn, "up") * ("upload" in kinds)


@dataclass
class Setup:
    """One run, built and not started: what :func:`run` drives (tests may look inside)."""

    name: str
    engine: Engine
    transport: Transport
    rec: Recorder
    links: list[Link]
    workloads: list
    carriers: list[Carrier]


def setup(scn: Scenario, policy: str, wrap=None) -> Setup:
    """The run of ``scn`` under ``policy`` (a scheduler policy name through the proxy, or
    ``single:<carrier>``: plain TCP over that carrier alone), ready to start. ``wrap``
    goes to :class:`~bench.sim.shell.Proxy`."""
    carriers = scn.carriers
    name = policy
    single = policy.startswith(SINGLE)
    if single:
        wanted = policy[len(SINGLE) :]
        carriers = [c for c in scn.carriers if c.name == wanted]
        if not carriers:
            raise ValueError(f"no carrier named {wanted!r}")
    engine = Engine()
    downs, ups = _links(scn, carriers), _links(scn, carriers, "up")
    rec = Recorder(scn.duration, len(downs))
    params = scn.params
    transport: Transport
    if single:
        transport = PlainTcp(engine, downs[0], ups[0], rec, params)
    else:
        lt = scn.longterm(engine, [c.name for c in carriers]) if scn.longterm else None
        cfg = dataclasses.replace(params.config, scheduler=scn.sched)
        transport = Proxy(
            engine,
            downs,
            ups,
            cfg,
            policy,
            rec,
            params,
            seed=scn.seed,
            longterm=lt.source if lt is not None else None,
            carriers=lt.carriers if lt is not None else None,
            wrap=wrap,
        )
    rt = Runtime(engine, transport, rec, scn.duration, scn.seed)
    workloads = parse(scn.workload)
    for i, w in enumerate(workloads):
        w.begin(rt, i)
    return Setup(name, engine, transport, rec, downs, workloads, list(carriers))


def run(
    scn: Scenario,
    policy: str,
    *,
    progress: bool = False,
    oracle: float | None = None,
    wrap=None,
) -> RunResult:
    """Replay ``scn`` under ``policy`` (see :func:`setup`)."""
    s = setup(scn, policy, wrap)
    bar = ProgressBar(scn.duration, f"{scn.name} {s.name}".strip()) if progress else None
    t0 = time.perf_counter()
    s.engine.run(scn.duration, bar)
    rec = s.rec
    rec.wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    for w in s.workloads:
        w.end(scn.duration)
    rec.events = s.engine.events
    if isinstance(s.transport, Proxy):
        for mux in (s.transport.gateway.mux, s.transport.node.mux):
            rec.reinjections += mux.counters["retransmits"]
            rec.stall_reinjections += mux.counters["stall_retransmits"]
    if oracle is None:
        oracle = workload_oracle(scn)
    summary = summarize(rec, oracle, scn.warmup)
    return RunResult(
        s.name,
        summary,
        rec,
        [c.name for c in s.carriers],
        [lk.outages for lk in s.links],
        [capacity_series(lk, scn.duration) for lk in s.links],
    )


def policy_names(singles: bool, carriers: Sequence[Carrier]) -> list[str]:
    names = ["context" if n == "context" else n for n in policies.names()]
    if singles:
        names += [SINGLE + c.name for c in carriers]
    return names


def compare(
    scn: Scenario,
    names: Sequence[str] | None = None,
    *,
    progress: bool = False,
    on_result: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Every policy (default: ours, the baselines, each carrier alone) over ``scn``."""
    names = list(names) if names is not None else policy_names(True, scn.carriers)
    oracle = workload_oracle(scn)
    out = []
    for n in names:
        r = run(scn, n, progress=progress, oracle=oracle)
        if on_result is not None:
            on_result(r)
        out.append(r)
    return out
