"""The replay's figures do not move when only its speed changes.

A few short, fixed scenarios (every policy family, plain TCP, an upload, a rail route
with handover gaps and tunnels, the bundled LTE traces when present) are replayed and
compared with the figures recorded in ``data/sim_golden.json``: the summary exactly and
a digest of everything the recorder holds (every flow, page, stall, out-of-order delay,
per-second goodput). A speed-up of the simulator must leave them all identical; a change
of the model or of the product that moves them on purpose regenerates the file:

    .venv/bin/python -m tests.bench.test_sim_golden

and says in its commit why the figures moved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.sim import scenarios
from bench.sim.links import Carrier, SteppedTrace
from bench.sim.runner import Scenario, run

GOLDEN = Path(__file__).parent / "data" / "sim_golden.json"
_SKIP = {"events", "wall"}  # how the run went, not what it found
_NOT_FIGURES = {"wall_s", "speedup", "events"}


def fixed(name: str, mbit: float, delay: float = 0.025, **kw) -> Carrier:
    return Carrier(name, SteppedTrace.of([mbit * 1e6], 1.0, name), delay=delay, **kw)


def _cases() -> dict[str, tuple[Callable[[], Scenario], str]]:
    """name -> (scenario factory, policy); the factories load traces lazily."""

    def two():
        return [fixed("a", 10.0, 0.02, loss=0.01), fixed("b", 6.0, 0.04, outages=((5.0, 8.0),))]

    def fixed_web():
        return Scenario(two(), workload="web:clients=4+cbr:rate=1", duration=30.0, seed=7)

    def fixed_upload():
        return Scenario(two(), workload="upload:size=3+web:clients=2", duration=20.0, seed=3)

    def rail_bulk():
        return Scenario(scenarios.rail(1, 15.0)[0], workload="bulk", duration=15.0, seed=2)

    def lte_web():
        return Scenario(scenarios.lte(), workload="web", duration=60.0, seed=1, warmup=10)

    def lte_bulk():
        return Scenario(scenarios.lte(), workload="bulk+cbr:rate=2", duration=30.0, seed=1)

    return {
        "fixed web context": (fixed_web, "context"),
        "fixed web redundant": (fixed_web, "redundant"),
        "fixed web single:b": (fixed_web, "single:b"),
        "fixed upload minrtt": (fixed_upload, "minrtt"),
        "rail bulk context": (rail_bulk, "context"),
        "rail bulk roundrobin": (rail_bulk, "roundrobin"),
        "lte web context": (lte_web, "context"),
        "lte web ecf": (lte_web, "ecf"),
        "lte web single:tmobile": (lte_web, "single:tmobile"),
        "lte bulk blest": (lte_bulk, "blest"),
    }


def _digest(rec) -> str:
    h = hashlib.sha256()
    for f in dataclasses.fields(rec):
        if f.name in _SKIP:
            continue
        v = getattr(rec, f.name)
        h.update(f.name.encode())
        h.update(repr(list(v) if not isinstance(v, (int, float, list)) else v).encode())
    return h.hexdigest()


def figures(name: str) -> dict:
    make, policy = _cases()[name]
    r = run(make(), policy)
    summary = {k: v for k, v in r.summary.items() if k not in _NOT_FIGURES}
    return {"summary": json.loads(json.dumps(summary)), "digest": _digest(r.rec)}


def _golden() -> dict:
    return json.loads(GOLDEN.read_text())


_SLOW = {
    "rail bulk context",
    "rail bulk roundrobin",
    "lte web ecf",
    "lte bulk blest",
}  # a few seconds each


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW else n for n in _cases()]
)
def test_figures_as_recorded(name):
    want = _golden().get(name)
    assert want is not None, f"no recorded figures for {name!r}: regenerate (module text)"
    try:
        got = figures(name)
    except scenarios.ScenarioError as e:
        pytest.skip(str(e))
    assert got["summary"] == want["summary"]
    assert got["digest"] == want["digest"]


if __name__ == "__main__":
    out = {}
    for case in _cases():
        out[case] = figures(case)
        print(case, out[case]["digest"][:12], file=sys.stderr)
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
