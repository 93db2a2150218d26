"""How far to trust the simulator: the same trace stretch and workload in the simulator
and in the emulation, compared per row and metric.

For every emulated row that the simulator also has (a scheduler policy, or
``single:<carrier>``; kernel MPTCP has no simulated counterpart), :func:`simulate_rows`
replays the scenario with the carriers shifted by that row's own lead (the trace time at
which its emulated workload began), so both saw the same seconds of every trace.
:func:`compare` then reports, per metric, the simulated and the emulated value, their
ratio (simulated / emulated) and their difference.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.emulate.runner import MPTCP, shifted
from bench.sim.runner import RunResult, Scenario, run


def _fct(cls: str, q: str) -> Callable[[dict], float | None]:
    def get(s: dict) -> float | None:
        c = s["fct"].get(cls)
        return c[q] * 1000 if c and c[q] is not None else None

    return get


def _page(q: str) -> Callable[[dict], float | None]:
    return lambda s: (s["page_load"] or {}).get(q)


METRICS: tuple[tuple[str, Callable[[dict], float | None]], ...] = (
    ("goodput Mbit/s", lambda s: s["goodput_mbps"]),
    ("% of oracle", lambda s: s["oracle_fraction"] * 100 if s["oracle_fraction"] else None),
    ("FCT <=10KB p50 ms", _fct("<=10KB", "p50")),
    ("FCT <=10KB p95 ms", _fct("<=10KB", "p95")),
    ("FCT 10-100KB p50 ms", _fct("10-100KB", "p50")),
    ("FCT 10-100KB p95 ms", _fct("10-100KB", "p95")),
    ("FCT 100KB-1MB p50 ms", _fct("100KB-1MB", "p50")),
    ("page load p50 s", _page("p50")),
    ("page load p95 s", _page("p95")),
    ("flows completed", lambda s: s["flows_completed"] or None),
    ("stall time s", lambda s: s["stall_time"] if s["streams"] else None),
    ("file done s", lambda s: max(s["files_done"]) if s["files_done"] else None),
    # bytes the proxy's sending side wrote beyond what was delivered (both measure it
    # the same way, docs/replay.md "Metrics"); compare by the difference, in points
    ("redundant %", lambda s: s["redundant_fraction"] * 100 if "redundant_fraction" in s else None),
)


def simulate_rows(scn: Scenario, emulated: Sequence[RunResult]) -> list[RunResult]:
    """The simulator's run of every emulated row it can model, on the same trace stretch."""
    out = []
    for r in emulated:
        if r.name == MPTCP:
            continue
        view = dataclasses.replace(scn, carriers=shifted(scn.carriers, r.summary["lead_s"]))
        out.append(run(view, r.name))
    return out


def compare(sim: Sequence[RunResult], emu: Sequence[RunResult]) -> list[dict]:
    """One record per (row, metric) both runs have: sim, emu, ratio sim/emu, sim - emu."""
    by_name = {r.name: r for r in emu}
    out = []
    for s in sim:
        e = by_name.get(s.name)
        if e is None:
            continue
        for metric, get in METRICS:
            a, b = get(s.summary), get(e.summary)
            if a is None or b is None:
                continue
            out.append(
                {
                    "row": s.name,
                    "metric": metric,
                    "sim": a,
                    "emu": b,
                    "ratio": a / b if b else None,
                    "diff": a - b,
                }
            )
    return out


def table(records: Sequence[dict]) -> str:
    rows = [
        "| row | metric | simulator | emulation | sim / emu | sim - emu |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        rows.append(
            f"| {r['row']} | {r['metric']} | {r['sim']:.3g} | {r['emu']:.3g} | {ratio} "
            f"| {r['diff']:+.3g} |"
        )
    return "\n".join(rows)


def write(records: Sequence[dict], out_dir: str | Path, title: str, command: str) -> Path:
    """calibration.md and calibration.json in ``out_dir``; returns the .md path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(
        json.dumps({"title": title, "command": command, "records": list(records)}, indent=2) + "\n"
    )
    md = [
        f"# Simulator versus emulation: {title}",
        "",
        "The same trace stretch and workload, simulated (`bench.sim`) and emulated (real "
        "gateway and node, or plain TCP, on the testbed). sim / emu near 1 means the "
        "simulator's figure can be taken at face value for this kind of case.",
        "",
        table(records),
        "",
        "Command:",
        "",
        f"    {command}",
        "",
    ]
    path = out / "calibration.md"
    path.write_text("\n".join(md))
    return path
