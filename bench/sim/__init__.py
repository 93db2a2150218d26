"""Offline trace replay: the product's gateway and node (their ``Mux`` and scheduler
adapter) over a discrete-event model of the carriers' TCP paths (docs/replay.md).

``run(scenario, policy)`` replays one policy, ``compare(scenario)`` every policy and
every single-carrier baseline; ``report.write`` turns results into Markdown, JSON and
PNG; :func:`quick_comparison` is the short run ``make demo`` ends with.
"""

from __future__ import annotations

from pathlib import Path

from bench.sim.links import Carrier
from bench.sim.runner import RunResult, Scenario, compare, run

__all__ = ["Carrier", "RunResult", "Scenario", "compare", "quick_comparison", "run"]

QUICK_WORKLOAD = "web:clients=5+cbr:rate=2"
QUICK_DURATION = 60.0


def quick_comparison(out_dir: str | Path, progress: bool = False) -> Path:
    """A short comparison for the demo: every policy and each carrier alone, 60 s of web
    browsing plus a 2 Mbit/s stream, over the three bundled LTE traces (or, when they are
    not found, a synthetic high-speed rail route). Returns the path of report.md."""
    from bench.sim import report, scenarios

    try:
        carriers = scenarios.lte()
        label, source = "bundled LTE traces", "--lte"
    except scenarios.ScenarioError:
        carriers, _ = scenarios.rail(1, QUICK_DURATION)
        label, source = "synthetic rail route, seed 1", "--rail 1"
    scn = Scenario(carriers, QUICK_WORKLOAD, QUICK_DURATION, seed=1, name=f"quick ({label})")
    results = compare(scn, progress=progress)
    cmd = (
        f"mpproxy bench replay {source} --workload '{QUICK_WORKLOAD}' "
        f"--duration {QUICK_DURATION:g} --seed 1 --out {out_dir}"
    )
    return report.write(results, scn, out_dir, command=cmd)
