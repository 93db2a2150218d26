"""Reports of a comparison: a Markdown table, the full numbers as JSON, and PNG plots.

Plots need matplotlib (the optional ``plot`` extra); without it the report says so and
the table and JSON are still written. The same table, description and plots serve the
emulation's report (``bench.emulate.report``), whose headings say "Emulated"; the
aggregation over several runs of a row (:func:`spread`, :func:`mean_summary`) is here
too. Files written to ``out_dir``:

* ``report.md``  -- the scenario, the table, the plots, how to read them;
* ``report.json`` -- every summary number of every run;
* ``goodput.png`` -- goodput over time per path for each multipath policy, with each
  carrier's capacity and its outages shaded;
* ``fct.png`` -- flow completion time CDFs per policy (when the workload has flows);
* ``stalls.png`` -- stall timelines per policy (when it has streams).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from bench.sim.runner import SINGLE, RunResult, Scenario

METRICS_NOTE = (
    "Goodput is payload delivered in order to the receiving applications; the oracle is "
    "the integral of the sum of every carrier's instantaneous capacity (IP bytes), the "
    "same for every row, so `% of oracle` reads as a share of what was physically "
    "possible (a demand-limited workload such as web browsing stays far below it). "
    "FCT: request to last byte. OOO delay: time an arrived message waited for earlier "
    "bytes (all messages; most wait 0). Redundant %: payload sent beyond what was "
    "needed (copies and resends). `single:<carrier>` is that carrier alone."
)


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"


def short_fct(s: dict, cls: str, q: str = "p50") -> float | None:
    c = s["fct"].get(cls)
    return c[q] if c else None


def table(results: Sequence[RunResult]) -> str:
    """One row per run: the numbers a person compares first."""
    head = (
        "| policy | goodput Mbit/s | % of oracle | FCT <=10KB p50/p95 ms | FCT 10-100KB p50/p95 ms "
        "| page load p50/p95 s | stalls (n / s) | OOO delay p95/max ms | redundant % "
        "| reinjections |"
    )
    sep = "|" + "---|" * 10
    rows = [head, sep]
    for r in results:
        s = r.summary
        page = s["page_load"] or {}
        ooo = s["ooo_delay"] or {}
        frac = s["oracle_fraction"]
        rows.append(
            f"| {r.name} | {_f(s['goodput_mbps'])} | {_f(frac * 100 if frac else None, '.1f')} "
            f"| {_ms(short_fct(s, '<=10KB'))} / {_ms(short_fct(s, '<=10KB', 'p95'))} "
            f"| {_ms(short_fct(s, '10-100KB'))} / {_ms(short_fct(s, '10-100KB', 'p95'))} "
            f"| {_f(page.get('p50'))} / {_f(page.get('p95'))} "
            f"| {_f(s['stalls'], '.0f')} / {_f(s['stall_time'], '.1f')} "
            f"| {_ms(ooo.get('p95'))} / {_ms(ooo.get('max'))} "
            f"| {_f(s['redundant_fraction'] * 100, '.1f')} | {_f(s['reinjections'], '.0f')} |"
        )
    return "\n".join(rows)


def describe(scn: Scenario, kind: str = "simulated") -> str:
    """The scenario as a Markdown list; ``kind``: "simulated" or "emulated"."""
    lines = [
        f"- workload: `{scn.workload}`, {scn.duration:g} s {kind}, seed {scn.seed}"
        + (f", first {scn.warmup:g} s not counted in goodput" if scn.warmup else ""),
    ]
    for c in scn.carriers:
        extra = f", loss {c.loss:g}" if c.loss else ""
        if c.outages:
            extra += ", outages " + ", ".join(f"{a:g}-{b:g} s" for a, b in c.outages)
        lines.append(
            f"- carrier `{c.name}`: trace `{c.trace.name}`, one-way delay {c.delay * 1000:g} ms, "
            f"queue {c.queue_bytes} bytes{extra}"
        )
    return "\n".join(lines)


def write(
    results: Sequence[RunResult],
    scn: Scenario,
    out_dir: str | Path,
    command: str = "",
    plots: bool = True,
) -> Path:
    """Write report.md, report.json and the plots; returns the path of report.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "scenario": scenario_json(scn, command),
        "results": {r.name: r.summary for r in results},
    }
    (out / "report.json").write_text(json.dumps(data, indent=2, default=float) + "\n")
    made, note = draw(results, out, plots)
    wall = sum(r.summary["wall_s"] for r in results)
    md = [
        f"# Replay comparison{': ' + scn.name if scn.name else ''}",
        "",
        describe(scn),
        "",
        table(results),
        "",
        METRICS_NOTE,
        "",
        f"Simulated {scn.duration:g} s x {len(results)} runs in {wall:.1f} s of wall time.",
        "",
        *closing(command, made, note),
    ]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


def scenario_json(scn: Scenario, command: str) -> dict:
    """The scenario's part of ``report.json``."""
    return {
        "workload": scn.workload,
        "duration": scn.duration,
        "seed": scn.seed,
        "warmup": scn.warmup,
        "carriers": [
            {"name": c.name, "trace": c.trace.name, "delay": c.delay, "loss": c.loss}
            for c in scn.carriers
        ],
        "command": command,
    }


def closing(command: str, made: Sequence[tuple[str, str]], note: str, of: str = "") -> list[str]:
    """The end of ``report.md``: the command, the plots (titles followed by ``of``), or
    the note saying why there are none."""
    md = ["Command:", "", f"    {command}", ""] if command else []
    for name, title in made:
        md += [f"## {title}{of}", "", f"![{title}]({name})", ""]
    return md + ([f"({note})", ""] if note else [])


def draw(results: Sequence[RunResult], out: Path, plots: bool = True) -> tuple[list, str]:
    """The plots (file name, title) and, if none were drawn, a note saying why."""
    if not plots:
        return [], "plots skipped (--no-plots)"
    try:
        return _plots(results, out), ""
    except ImportError:
        return [], "plots skipped: matplotlib is not installed (pip install '.[plot]')"


def spread(values: Sequence[float | None]) -> dict | None:
    """Mean and spread of one metric over several runs of a row (None where a run had
    no value): mean, sample standard deviation (0 for one value), min, max, n, and the
    values in run order. None if no run had a value."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {
        "mean": mean,
        "sd": sd,
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
        "values": list(values),
    }


def _number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def mean_summary(summaries: Sequence[dict]) -> dict:
    """One summary from several runs of a row, in the same shape: numbers are the mean
    over the runs that have them, flags are true if any run's is, lists are pooled,
    other values kept if all runs agree (else the list of them, in run order)."""

    def merge(vals: list) -> object:
        have = [v for v in vals if v is not None]
        if not have:
            return None
        if all(isinstance(v, dict) for v in have):
            keys = list(dict.fromkeys(k for v in have for k in v))
            return {k: merge([v.get(k) for v in have]) for k in keys}
        if all(_number(v) for v in have):
            return sum(have) / len(have)
        if all(isinstance(v, bool) for v in have):
            return any(have)
        if all(isinstance(v, list) for v in have):
            return [x for v in have for x in v]
        return have[0] if all(v == have[0] for v in have) else vals

    return merge(list(summaries))  # type: ignore[return-value]


def flatten(summary: dict, prefix: str = "") -> dict[str, float]:
    """Every number of a summary by dotted key (``fct.<=10KB.p50``), for spreads."""
    out: dict[str, float] = {}
    for k, v in summary.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif _number(v):
            out[key] = v
    return out


def _plots(results: Sequence[RunResult], out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    multi = [r for r in results if not r.name.startswith(SINGLE)] or list(results)
    carriers = multi[0].carriers
    # goodput over time per path, one panel per policy
    fig, axes = plt.subplots(
        len(multi), 1, figsize=(10, 2.0 * len(multi) + 0.8), sharex=True, squeeze=False
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, r in zip(axes[:, 0], multi, strict=True):
        for i, name in enumerate(r.carriers):
            col = colors[i % len(colors)]
            cap = [b * 8 / 1e6 for b in r.capacity[i]]
            ax.plot(range(len(cap)), cap, color=col, lw=0.6, ls=":", alpha=0.8)
            use = [b * 8 / 1e6 for b in r.rec.path_useful[i][: len(cap)]]
            ax.plot(range(len(use)), use, color=col, lw=0.9, label=name)
            for a, b in r.outages[i]:
                ax.axvspan(a, b, color=col, alpha=0.15, lw=0)
        ax.set_ylabel("Mbit/s")
        ax.set_title(
            f"{r.name}: useful bytes per path (dotted: capacity; shaded: outages)", fontsize=9
        )
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(out / "goodput.png", dpi=90)
    plt.close(fig)
    made.append(("goodput.png", "Goodput over time per path"))
    del carriers
    # FCT CDFs
    if any(r.rec.flows for r in results):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in results:
            xs = sorted(f[3] for f in r.rec.flows)
            if xs:
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax.plot(xs, ys, label=r.name, lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("flow completion time (s)")
        ax.set_ylabel("CDF")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "fct.png", dpi=90)
        plt.close(fig)
        made.append(("fct.png", "Flow completion time CDF"))
    # stall timelines
    if any(r.rec.streams for r in results):
        fig, ax = plt.subplots(figsize=(10, 0.45 * len(results) + 1.2))
        for row, r in enumerate(results):
            spans = [(s.start, s.end - s.start) for s in r.rec.stalls]
            if spans:
                ax.broken_barh(spans, (row - 0.35, 0.7), color="tab:red")
        ax.set_yticks(range(len(results)))
        ax.set_yticklabels([r.name for r in results], fontsize=8)
        ax.set_xlim(0, results[0].rec.duration)
        ax.set_xlabel("time (s): stalls of the constant-bitrate streams")
        fig.tight_layout()
        fig.savefig(out / "stalls.png", dpi=90)
        plt.close(fig)
        made.append(("stalls.png", "Stall timeline"))
    return made
