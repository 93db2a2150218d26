"""The emulation's report: every row on every stretch, means and spreads, paired ratios,
and both directions of the proxy rows.

``report.md`` and ``report.json`` in the output directory (plus the plots of the first
stretch, as ``bench.sim.report`` draws them). A row's figures are the mean over the
stretches with their spread (sample standard deviation, min-max) and the value of each
stretch; a ratio (a proxy row against kernel MPTCP, or against the best single carrier)
is taken per stretch, where both rows ran on the same trace seconds, and only then
summarised. "Best single carrier" is, per stretch, the single-carrier row that did best
on that stretch (highest goodput, lowest page load or stall time). JSON:

* ``kind``: "emulated"; ``scenario``: workload, duration, seed, warmup, carriers, command,
  lead, repeat, stride;
* ``stretches``: per stretch, its trace seconds (``start_s``/``end_s``, and per carrier the
  seconds of its own trace: ``from_s``, ``to_s``, ``period_s``, ``wraps``) and ``results``
  (row -> that run's summary);
* ``results``: row -> the mean summary (same shape as one run's: ``bench.sim.report.
  mean_summary``);
* ``spread``: row -> every number of the summary by dotted key -> mean, sd, min, max, n,
  values per stretch;
* ``headline``: row -> the metrics of the Markdown tables -> the same spread record;
* ``ratios``: "<row> / mptcp: <metric>" and "<row> / best single: <metric>" -> spread of
  the per-stretch ratios (with ``pairs``: the rows compared, per stretch).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bench.emulate.calibrate import METRICS
from bench.emulate.runner import MPTCP
from bench.emulate.stretches import Stretch, describe
from bench.sim import report
from bench.sim.runner import SINGLE, RunResult, Scenario

Getter = Callable[[dict], float | None]
MB = 1e6


def _dir(d: str, key: str, scale: float = 1.0) -> Getter:
    def get(s: dict) -> float | None:
        v = ((s.get("directions") or {}).get(d) or {}).get(key)
        return None if v is None else v * scale

    return get


def _part(key: str, other: str) -> Getter:
    """A direction's goodput, shown when the workload moves payload both ways."""
    return lambda s: s.get(key) if s.get(other) else None


HEADLINE: tuple[tuple[str, Getter], ...] = (
    METRICS[:1]
    + (
        ("download Mbit/s", _part("download_mbps", "upload_mbps")),
        ("upload Mbit/s", _part("upload_mbps", "download_mbps")),
    )
    + METRICS[1:]
    + tuple(
        (f"{label} {d}", _dir(d, key, scale))
        for d in ("down", "up")
        for label, key, scale in (
            ("redundant %", "redundant_fraction", 100),
            ("stall resends", "stall_resends", 1),
            ("resent copies MB", "resent_bytes", 1 / MB),
            ("needless copies MB", "needless_bytes", 1 / MB),
            ("ACKed late %", "late_fraction", 100),
            ("kernel retrans MB", "kernel_bytes_retrans", 1 / MB),
        )
    )
)
"""The metrics the Markdown spread table shows (the JSON's ``spread`` has every number)."""

RATIOS: tuple[tuple[str, Getter, bool], ...] = (
    ("goodput", lambda s: s["goodput_mbps"] or None, True),
    ("page load p50", lambda s: (s["page_load"] or {}).get("p50"), False),
    ("page load p95", lambda s: (s["page_load"] or {}).get("p95"), False),
    ("stall time", lambda s: s["stall_time"] if s["streams"] else None, False),
)
"""(metric, value, higher is better): the paired ratios."""


def row_names(per_stretch: Sequence[Sequence[RunResult]]) -> list[str]:
    return list(dict.fromkeys(r.name for rs in per_stretch for r in rs))


def _by_row(per_stretch: Sequence[Sequence[RunResult]]) -> dict[str, list[dict | None]]:
    """row -> its summary per stretch (None where it did not run)."""
    out: dict[str, list[dict | None]] = {n: [] for n in row_names(per_stretch)}
    for rs in per_stretch:
        have = {r.name: r.summary for r in rs}
        for n in out:
            out[n].append(have.get(n))
    return out


def mean_results(per_stretch: Sequence[Sequence[RunResult]]) -> list[RunResult]:
    """One result per row whose summary is the mean over the stretches (recorder, plots'
    series: the first stretch's)."""
    first: dict[str, RunResult] = {}
    for rs in per_stretch:
        for r in rs:
            first.setdefault(r.name, r)
    out = []
    for name, sums in _by_row(per_stretch).items():
        r = first[name]
        mean = report.mean_summary([s for s in sums if s is not None])
        out.append(RunResult(name, mean, r.rec, r.carriers, r.outages, r.capacity))
    return out


def headline(per_stretch: Sequence[Sequence[RunResult]]) -> dict[str, dict[str, dict]]:
    """row -> metric -> spread over the stretches, for the :data:`HEADLINE` metrics."""
    out: dict[str, dict[str, dict]] = {}
    for name, sums in _by_row(per_stretch).items():
        row: dict[str, dict] = {}
        for label, get in HEADLINE:
            sp = report.spread([get(s) if s is not None else None for s in sums])
            if sp is not None and (sp["min"] or sp["max"]):  # all zero: nothing to spread
                row[label] = sp
        out[name] = row
    return out


def spreads(per_stretch: Sequence[Sequence[RunResult]]) -> dict[str, dict[str, dict]]:
    """row -> every number of the summary (dotted key) -> spread over the stretches."""
    out: dict[str, dict[str, dict]] = {}
    for name, sums in _by_row(per_stretch).items():
        flat = [report.flatten(s) if s is not None else {} for s in sums]
        keys = list(dict.fromkeys(k for f in flat for k in f))
        out[name] = {k: sp for k in keys if (sp := report.spread([f.get(k) for f in flat]))}
    return out


def _is_proxy(name: str) -> bool:
    return name != MPTCP and not name.startswith(SINGLE)


def ratios(per_stretch: Sequence[Sequence[RunResult]]) -> dict[str, dict]:
    """Per proxy row and :data:`RATIOS` metric: its value over kernel MPTCP's and over the
    best single carrier's **on the same stretch**, summarised over the stretches."""
    names = row_names(per_stretch)
    out: dict[str, dict] = {}
    for name in filter(_is_proxy, names):
        base = name.partition("@")[0] if "@" in name else None  # a variant's own policy
        for metric, get, higher in RATIOS:
            for against in ("mptcp", "best single", *([base] if base in names else [])):
                values: list[float | None] = []
                pairs: list[str | None] = []
                for rs in per_stretch:
                    mine = next((get(r.summary) for r in rs if r.name == name), None)
                    if against in (MPTCP, base):
                        others = [(r.name, get(r.summary)) for r in rs if r.name == against]
                    else:
                        others = [
                            (r.summary.get("carrier") or r.name, get(r.summary))
                            for r in rs
                            if r.name.startswith(SINGLE)
                        ]
                    others = [(n, v) for n, v in others if v]
                    if mine is None or not others:
                        values.append(None)
                        pairs.append(None)
                        continue
                    pick = max if higher else min
                    who, v = pick(others, key=lambda nv: nv[1])
                    values.append(mine / v)
                    pairs.append(who)
                sp = report.spread(values)
                if sp is not None:
                    out[f"{name} / {against}: {metric}"] = {**sp, "pairs": pairs}
    return out


# -- Markdown ---------------------------------------------------------------------------------


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    a = abs(x)
    if a >= 100 or float(x).is_integer():
        return f"{x:.0f}"
    return f"{x:.1f}" if a >= 10 else f"{x:.2f}"


def _mean_sd(sp: Mapping) -> str:
    return _num(sp["mean"]) + (f" ±{_num(sp['sd'])}" if sp["n"] > 1 else "")


def spread_table(head: Mapping[str, Mapping[str, Mapping]]) -> str:
    rows = ["| row | metric | mean ±sd | min-max | per stretch |", "|---|---|---|---|---|"]
    for name, metrics in head.items():
        for label, sp in metrics.items():
            each = " / ".join(_num(v) for v in sp["values"])
            rows.append(
                f"| {name} | {label} | {_mean_sd(sp)} | {_num(sp['min'])}-{_num(sp['max'])} "
                f"| {each} |"
            )
    return "\n".join(rows)


def ratio_table(rat: Mapping[str, Mapping]) -> str:
    rows = [
        "| ratio (same stretch) | mean ±sd | min-max | per stretch | compared with |",
        "|---|---|---|---|---|",
    ]
    for label, sp in rat.items():
        each = " / ".join("-" if v is None else f"{v:.2f}" for v in sp["values"])
        who = " / ".join(p or "-" for p in sp["pairs"])
        rows.append(
            f"| {label} | {sp['mean']:.2f}"
            + (f" ±{sp['sd']:.2f}" if sp["n"] > 1 else "")
            + f" | {sp['min']:.2f}-{sp['max']:.2f} | {each} | {who} |"
        )
    return "\n".join(rows)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}"


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x / MB:.2f}"


def _secs(us: float | None) -> str:
    return "-" if us is None else f"{us / 1e6:.1f}"


def direction_table(results: Sequence[RunResult]) -> str:
    """Proxy rows, both directions (means over the stretches)."""
    rows = [
        "| row | direction | payload sent MB | first copies MB | redundant % | stall resends "
        "| resent copies MB | needless copies received MB | ACKed late % "
        "| kernel retrans MB (RTOs) |",
        "|" + "---|" * 10,
    ]
    for r in results:
        for d, v in (r.summary.get("directions") or {}).items():
            rows.append(
                f"| {r.name} | {d} | {_mb(v['sent_bytes'])} | {_mb(v['unique_bytes'])} "
                f"| {_pct(v['redundant_fraction'])} | {_num(v['stall_resends'])} "
                f"| {_mb(v['resent_bytes'])} | {_mb(v['needless_bytes'])} "
                f"| {_pct(v['late_fraction'])} "
                f"| {_mb(v['kernel_bytes_retrans'])} ({_num(v['kernel_rtos'])}) |"
            )
    return "\n".join(rows)


def path_table(results: Sequence[RunResult]) -> str:
    """Proxy rows per direction and carrier: resends, needless copies, and how the
    send-to-DATA_ACK times fell against the stall deadline (% of ACKed messages)."""
    buckets: list[str] = []
    for r in results:
        for v in (r.summary.get("directions") or {}).values():
            for p in v["paths"].values():
                buckets += [b for b in p["ack_delay_per_deadline"] if b not in buckets]
    rows = [
        "| row | direction | carrier | sent MB | stall resends | resent MB | needless MB "
        f"| ACKed late % | ACK delay / deadline ({' '.join(buckets)}) % |",
        "|" + "---|" * 9,
    ]
    for r in results:
        for d, v in (r.summary.get("directions") or {}).items():
            for c, p in v["paths"].items():
                hist = p["ack_delay_per_deadline"]
                n = sum(hist.values())
                shares = " ".join(f"{100 * hist.get(b, 0) / n:.0f}" for b in buckets) if n else "-"
                rows.append(
                    f"| {r.name} | {d} | {c} | {_mb(p['sent_bytes'])} "
                    f"| {_num(p['stall_resends'])} | {_mb(p['resent_bytes'])} "
                    f"| {_mb(p['needless_bytes'])} | {_pct(p['late_fraction'])} | {shares} "
                    f"| {_secs(p.get('kernel_busy_us'))} |"
                )
    return "\n".join(rows)


def stretch_lines(stretches: Sequence[Stretch], periods: Mapping[str, float | None]) -> str:
    return "\n".join(f"- {describe(s, periods)}" for s in stretches)


def late_starts(per_stretch: Sequence[Sequence[RunResult]]) -> list[str]:
    """Rows whose workload started later than the lead (not on the same seconds)."""
    return [
        f"stretch {r.summary['stretch']}, {r.name}: workload began at trace second "
        f"{r.summary['trace_start_s']:.2f} (lead {r.summary['lead_s']:.2f} s)"
        for rs in per_stretch
        for r in rs
        if r.summary.get("late_start")
    ]


def text(
    per_stretch: Sequence[Sequence[RunResult]],
    stretches: Sequence[Stretch],
    periods: Mapping[str, float | None],
) -> str:
    """What the command prints: the seconds, the means, spreads, ratios, directions."""
    means = mean_results(per_stretch)
    n = len(per_stretch)
    parts = [
        f"Emulated, {stretches[0].duration:g} s per row and stretch, {n} stretch"
        + ("es" if n > 1 else "")
        + ":",
        stretch_lines(stretches, periods),
        "",
        ("Mean over the stretches:" if n > 1 else "Results:"),
        "",
        report.table(means),
    ]
    if n > 1:
        parts += ["", "Spread over the stretches:", "", spread_table(headline(per_stretch))]
    rat = ratios(per_stretch)
    if rat:
        parts += ["", "Paired ratios (per stretch, then summarised):", "", ratio_table(rat)]
    if any(r.summary.get("directions") for r in means):
        parts += ["", "Proxy rows, both directions (mean):", "", direction_table(means)]
    late = late_starts(per_stretch)
    if late:
        parts += ["", "Not on the same seconds (started late):"] + [f"- {x}" for x in late]
    return "\n".join(parts)


def write(
    per_stretch: Sequence[Sequence[RunResult]],
    scn: Scenario,
    stretches: Sequence[Stretch],
    periods: Mapping[str, float | None],
    out_dir: str | Path,
    command: str = "",
    plots: bool = True,
    stride: float | None = None,
) -> Path:
    """report.md, report.json and the plots (first stretch); returns the path of report.md.
    ``scn``: the scenario as the first stretch's rows saw it (carriers shifted)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    means = mean_results(per_stretch)
    head = headline(per_stretch)
    rat = ratios(per_stretch)
    n = len(per_stretch)
    data = {
        "kind": "emulated",
        "scenario": {
            **report.scenario_json(scn, command),
            "lead_s": stretches[0].lead,
            "repeat": n,
            "stride_s": stride,
        },
        "stretches": [
            {**s.to_json(periods), "results": {r.name: r.summary for r in rs}}
            for s, rs in zip(stretches, per_stretch, strict=True)
        ],
        "results": {r.name: r.summary for r in means},
        "spread": spreads(per_stretch),
        "headline": head,
        "ratios": rat,
    }
    (out / "report.json").write_text(json.dumps(data, indent=2, default=float) + "\n")
    made, note = report.draw(list(per_stretch[0]), out, plots)
    wall = sum(r.summary["wall_s"] for rs in per_stretch for r in rs)
    rows = len(means)
    md = [
        f"# Emulated comparison{': ' + scn.name if scn.name else ''}",
        "",
        report.describe(scn, "emulated per row and stretch"),
        f"- {n} stretch{'es' if n > 1 else ''} of the traces, every row on each (a fresh "
        f"testbed per row and stretch, rows interleaved per stretch); the workload starts "
        f"{stretches[0].lead:g} s after the link emulator"
        + (f", stride {stride:g} s" if stride is not None and n > 1 else "")
        + ":",
        stretch_lines(stretches, periods),
        "",
        f"## {'Mean over the stretches' if n > 1 else 'Results'}",
        "",
        report.table(means),
        "",
        report.METRICS_NOTE + ' OOO delay is not exported by the gateway ("-"). For the '
        "proxy rows, redundant % is the payload the muxes put on paths beyond the first "
        "copy of each byte, over the payload sent, in the directions that carry the "
        "workload's payload; reinjections are every resent copy of both directions.",
        "",
    ]
    if n > 1:
        md += ["## Spread over the stretches", "", spread_table(head), ""]
    if rat:
        md += [
            "## Paired ratios",
            "",
            "Each ratio is taken per stretch, between rows that ran on the same trace "
            "seconds, then summarised; the best single carrier is the single-carrier row "
            "that did best on that stretch.",
            "",
            ratio_table(rat),
            "",
        ]
    if any(r.summary.get("directions") for r in means):
        md += [
            "## Proxy rows, both directions",
            "",
            "Down: node to gateway (downloads), sent by the node; up: gateway to node "
            "(the clients' requests and uploads). Payload: the DATA messages' bytes as the "
            "muxes count them, every copy (DATA_ACKs and other control messages are not "
            "payload); needless copies: copies that reached the other side with "
            "nothing new; ACKed late: DATA_ACKed after the stall deadline the message had; "
            "kernel retrans: the path sockets' own TCP retransmissions (TCP_INFO). Means "
            "over the stretches.",
            "",
            direction_table(means),
            "",
            path_table(means),
            "",
        ]
    late = late_starts(per_stretch)
    if late:
        md += ["Not on the same seconds (the workload started late):", ""]
        md += [f"- {x}" for x in late] + [""]
    md += [
        f"Emulated {scn.duration:g} s x {rows} rows x {n} stretch{'es' if n > 1 else ''} "
        f"in {wall:.0f} s of wall time.",
        "",
        *report.closing(command, made, note, " (stretch 0)"),
    ]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
