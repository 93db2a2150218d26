"""Replay speed: one hour of the three bundled LTE carriers with the web workload.

    .venv/bin/python -m bench.sim.speed [--duration 3600] [--workload web] [--policies context]

Prints, per policy (default: ours), wall and CPU time, the speed-up over real time
(simulated seconds per wall second, and per CPU second), the machine's load average
before and after, and a line to quote with its command; with ``--profile`` the share of
the time spent
in the product's own code the simulator runs (``middlebox/``: the muxes, the scheduler
adapters, the shells' shared duties; ``scheduler/``: policies and estimators) against
the model around it (``bench/sim/``). The target is at most 30 s for the hour. The
machine is shared (2 cores, other work running): wall times are noisy, CPU times less.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

from bench.sim import scenarios
from bench.sim.runner import Scenario, run


def measure(duration: float, workload: str, policy: str, profile: bool = False) -> dict:
    t0 = time.perf_counter()
    carriers = scenarios.lte()
    load = time.perf_counter() - t0
    scn = Scenario(carriers, workload, duration, seed=1)
    prof = cProfile.Profile() if profile else None
    if prof is not None:
        prof.enable()
    cpu = time.process_time()
    r = run(scn, policy)
    cpu = time.process_time() - cpu
    if prof is not None:
        prof.disable()
    s = r.summary
    out = {
        "policy": policy,
        "trace_load_s": load,
        "wall_s": s["wall_s"],
        "cpu_s": cpu,
        "speedup": s["speedup"],
        "events": s["events"],
        "goodput_mbps": s["goodput_mbps"],
        "flows": s["flows_completed"],
    }
    if prof is not None:
        stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
        total = sum(v[2] for v in stats.values())
        for part in ("middlebox", "scheduler", "bench/sim"):
            own = sum(v[2] for k, v in stats.items() if f"/{part}/" in k[0])
            out[f"{part}_share"] = own / max(total, 1e-9)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=3600.0)
    ap.add_argument("--workload", default="web")
    ap.add_argument("--policies", default="context", help="comma-separated rows to time")
    ap.add_argument(
        "--profile", action="store_true", help="also report the product's share of the time"
    )
    args = ap.parse_args(argv)
    print(f"replay speed: {args.duration:g} s of 3 LTE carriers, workload {args.workload}")
    command = "python -m bench.sim.speed" + (
        f" --duration {args.duration:g}" if args.duration != 3600 else ""
    )
    if args.workload != "web":
        command += f" --workload {args.workload}"
    for policy in args.policies.split(","):
        before = os.getloadavg()[0]
        m = measure(args.duration, args.workload, policy, args.profile)
        after = os.getloadavg()[0]
        line = (
            f"  {policy:<11} {m['wall_s']:6.1f} s wall ({m['cpu_s']:.1f} s CPU)  speed-up "
            f"{m['speedup']:5.0f}x real time  {m['events']} events "
            f"({m['events'] / m['wall_s']:,.0f}/s)  {m['flows']} flows  "
            f"goodput {m['goodput_mbps']:.2f} Mbit/s  (traces read in {m['trace_load_s']:.1f} s)"
        )
        if "middlebox_share" in m:
            line += (
                f"\n    profiled (so slower): middlebox/ {m['middlebox_share'] * 100:.0f}%, "
                f"scheduler/ {m['scheduler_share'] * 100:.0f}%, "
                f"bench/sim/ {m['bench/sim_share'] * 100:.0f}%, the rest in the interpreter's "
                "built-ins and the standard library"
            )
        print(line)
        print(
            f"    {args.duration:g} s simulated in {m['wall_s']:.1f} s wall "
            f"({args.duration / m['wall_s']:.0f} simulated s per wall s), "
            f"{m['cpu_s']:.1f} s CPU ({args.duration / max(m['cpu_s'], 1e-9):.0f} per CPU s), "
            f"load average {before:.1f} -> {after:.1f} on {os.cpu_count()} cores: "
            f"`{command}{'' if policy == 'context' else ' --policies ' + policy}`"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
