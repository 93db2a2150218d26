"""How far to trust the simulator: the same trace seconds and workload in the simulator
and in the emulation, compared per row, stretch and metric.

For every emulated row that the simulator also has (a scheduler policy, or
``single:<carrier>``; kernel MPTCP has no simulated counterpart), :func:`simulate_rows`
replays the scenario with the carriers shifted to the trace second at which that row's
emulated workload began on its stretch (``trace_start_s``), so both saw the same seconds
of every trace; a ``single:best`` row chosen per stretch is simulated on that stretch's
carrier. :func:`compare` then reports, per metric and stretch, the simulated and the
emulated value, their ratio (simulated / emulated) and their difference.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.emulate.runner import MPTCP, shifted
from bench.sim.report import spread
from bench.sim.runner import SINGLE, RunResult, Scenario, run


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
    """The simulator's run of every emulated row it can model, on the same trace seconds
    (the result carries the emulated row's name and stretch)."""
    out = []
    for r in emulated:
        if r.name == MPTCP or "@" in r.name:  # a --variant's settings are not simulated
            continue
        at = r.summary.get("trace_start_s", r.summary["lead_s"])
        view = dataclasses.replace(scn, carriers=shifted(scn.carriers, at))
        carrier = r.summary.get("carrier")
        sim = run(view, SINGLE + carrier if carrier else r.name)
        sim.name = r.name
        sim.summary["stretch"] = r.summary.get("stretch", 0)
        out.append(sim)
    return out


def compare(sim: Sequence[RunResult], emu: Sequence[RunResult]) -> list[dict]:
    """One record per (row, stretch, metric) both runs have: sim, emu, ratio sim/emu,
    sim - emu."""
    by_run = {(r.name, r.summary.get("stretch", 0)): r for r in emu}
    out = []
    for s in sim:
        stretch = s.summary.get("stretch", 0)
        e = by_run.get((s.name, stretch))
        if e is None:
            continue
        for metric, get in METRICS:
            a, b = get(s.summary), get(e.summary)
            if a is None or b is None:
                continue
            out.append(
                {
                    "row": s.name,
                    "stretch": stretch,
                    "metric": metric,
                    "sim": a,
                    "emu": b,
                    "ratio": a / b if b else None,
                    "diff": a - b,
                }
            )
    return out


def table(records: Sequence[dict]) -> str:
    """The records as Markdown; a stretch column when there are several stretches."""
    many = any(r.get("stretch") for r in records)
    head = "| row | " + ("stretch | " if many else "") + "metric | simulated | emulated "
    rows = [
        head + "| simulated / emulated | simulated - emulated |",
        "|---|" + ("---|" if many else "") + "---|---|---|---|---|",
    ]
    for r in records:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        where = f"{r.get('stretch', 0)} | " if many else ""
        rows.append(
            f"| {r['row']} | {where}{r['metric']} | {r['sim']:.3g} | {r['emu']:.3g} | {ratio} "
            f"| {r['diff']:+.3g} |"
        )
    return "\n".join(rows)


def summarise(records: Sequence[dict]) -> list[dict]:
    """Per (row, metric) over the stretches: the mean simulated and emulated values,
    the ratio of the means, and the spread of the per-stretch ratios."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["row"], r["metric"]), []).append(r)
    out = []
    for (row, metric), rs in groups.items():
        sim = sum(r["sim"] for r in rs) / len(rs)
        emu = sum(r["emu"] for r in rs) / len(rs)
        out.append(
            {
                "row": row,
                "metric": metric,
                "sim": sim,
                "emu": emu,
                "ratio": sim / emu if emu else None,
                "diff": sim - emu,
                "ratios": spread([r["ratio"] for r in rs]),
            }
        )
    return out


def write(records: Sequence[dict], out_dir: str | Path, title: str, command: str) -> Path:
    """calibration.md and calibration.json in ``out_dir``; returns the .md path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(
        json.dumps(
            {
                "title": title,
                "command": command,
                "records": list(records),
                "over_stretches": summarise(records),
            },
            indent=2,
        )
        + "\n"
    )
    many = any(r.get("stretch") for r in records)
    md = [
        f"# Simulated versus emulated: {title}",
        "",
        "The same trace seconds and workload, simulated (`bench.sim`: the model) and "
        "emulated (real gateway and node, or plain TCP, on the testbed: the reference), "
        "per row and stretch. simulated / emulated near 1 means the simulator's figure can "
        "be taken at face value for this kind of case.",
        "",
    ]
    if many:
        md += [
            "Over the stretches (means; simulated / emulated of the means):",
            "",
            table(summarise(records)),
            "",
            "Per stretch:",
            "",
        ]
    md += [
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
