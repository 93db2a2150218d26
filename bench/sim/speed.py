"""Replay speed: one hour of the three bundled LTE carriers with the web workload.

    .venv/bin/python -m bench.sim.speed [--duration 3600] [--workload web]

Prints wall time and speed-up over real time for our policy and, as a baseline measured
in the same run, for round-robin (the cheapest policy), and with ``--profile`` the share
of the time spent in the product's own code the simulator runs (``middlebox/session``:
the muxes and scheduler adapters; ``scheduler/``: policies and estimators) against the
model around it. The target is at most 30 s for the hour. The machine is shared (2
cores, other work running): numbers are noisy.
"""

from __future__ import annotations

import argparse
import cProfile
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
    r = run(scn, policy)
    if prof is not None:
        prof.disable()
    s = r.summary
    out = {
        "policy": policy,
        "trace_load_s": load,
        "wall_s": s["wall_s"],
        "speedup": s["speedup"],
        "events": s["events"],
        "goodput_mbps": s["goodput_mbps"],
        "flows": s["flows_completed"],
    }
    if prof is not None:
        stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
        total = sum(v[2] for v in stats.values())
        sched = sum(v[2] for k, v in stats.items() if "/scheduler/" in k[0])
        session = sum(v[2] for k, v in stats.items() if "/middlebox/session/" in k[0])
        out["scheduler_share"] = sched / max(total, 1e-9)
        out["session_share"] = session / max(total, 1e-9)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=3600.0)
    ap.add_argument("--workload", default="web")
    ap.add_argument("--profile", action="store_true", help="also report the scheduler's share")
    args = ap.parse_args(argv)
    print(f"replay speed: {args.duration:g} s of 3 LTE carriers, workload {args.workload}")
    for policy in ("roundrobin", "context"):
        m = measure(args.duration, args.workload, policy, args.profile)
        line = (
            f"  {policy:<11} {m['wall_s']:6.1f} s wall  speed-up {m['speedup']:5.0f}x real time  "
            f"{m['events']} events ({m['events'] / m['wall_s']:,.0f}/s)  "
            f"{m['flows']} flows  goodput {m['goodput_mbps']:.2f} Mbit/s  "
            f"(traces read in {m['trace_load_s']:.1f} s)"
        )
        if "scheduler_share" in m:
            line += (
                f"  time in middlebox/session/ {m['session_share'] * 100:.0f}%, in "
                f"scheduler/ {m['scheduler_share'] * 100:.0f}% (profiled, so slower)"
            )
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
