"""``mpproxy bench emulate``: the replay's workloads on the emulated testbed, with the real
gateway and node, beside the best single carrier and kernel MPTCP; ``--calibrate`` adds
the simulator's numbers for the same trace stretch and how closely they match."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path

from bench.arguments import build, carrier_arguments, link_arguments
from middlebox.errors import UserError

DESCRIPTION = (
    "Run the replay's workloads (bulk, web, cbr, file) for real on the emulated testbed: "
    "through the proxy (real gateway and node; one row per scheduler policy), over the best "
    "single carrier and over Linux kernel MPTCP, each row on a fresh testbed over the same "
    "stretch of the traces; same metrics and report as 'bench replay'. --calibrate also "
    "simulates the same rows and reports sim/emu per metric (docs/replay.md). Needs root."
)
DEFAULT_ROWS = "context,single:best,mptcp"


def register(bsub: argparse._SubParsersAction) -> None:
    e = bsub.add_parser(
        "emulate",
        help="run workloads through the real proxy on the testbed (and calibrate the simulator)",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    carrier_arguments(e)
    e.add_argument("--workload", default="bulk", help="as for 'bench replay' (docs/replay.md)")
    e.add_argument("--duration", type=float, default=60.0, help="seconds of workload per row")
    e.add_argument("--seed", type=int, default=1)
    e.add_argument(
        "--policies",
        default=DEFAULT_ROWS,
        help="comma-separated rows: scheduler policies (through the proxy), single:<carrier>, "
        "single:best, mptcp; 'all' = every policy + single:best + mptcp",
    )
    link_arguments(e)
    e.add_argument("--warmup", type=float, default=0.0, help="seconds left out of goodput")
    e.add_argument(
        "--lead",
        type=float,
        default=4.0,
        help="seconds of trace before the workload starts (the proxy comes up meanwhile)",
    )
    e.add_argument("--cc", default="bbr", help="server congestion control (TCP and MPTCP rows)")
    e.add_argument("--calibrate", action="store_true", help="also simulate and compare")
    e.add_argument("--out", default="emulate-report", help="directory for the reports")
    e.add_argument("--workdir", help="testbed files and logs (default: OUT/work)")
    e.add_argument("--no-plots", action="store_true", help="do not draw PNG plots")
    e.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    e.set_defaults(func=cmd_emulate)


def rows(spec: str, scn) -> list[str]:
    """Row names from ``--policies`` (raises UserError)."""
    from bench.emulate.runner import MPTCP, best_single
    from bench.sim.runner import SINGLE
    from scheduler import policies

    names = [c.name for c in scn.carriers]
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if items == ["all"]:
        items = [*policies.names(), "single:best", MPTCP]
    out: list[str] = []
    for item in items:
        if item == "ours":
            item = "context"
        if item == "single:best":
            item = SINGLE + best_single(scn)
        if item.startswith(SINGLE):
            if item[len(SINGLE) :] not in names:
                raise UserError(f"--policies: no carrier {item[len(SINGLE) :]!r}")
        elif item != MPTCP and item not in policies.names():
            raise UserError(
                f"--policies: unknown row {item!r} (policies: {', '.join(policies.names())}; "
                "single:<carrier>, single:best, mptcp)"
            )
        if item not in out:
            out.append(item)
    if not out:
        raise UserError("--policies: nothing to run")
    return out


def _command(args: argparse.Namespace) -> str:
    parts = ["mpproxy", "bench", "emulate"]
    parts += ["--lte"] if args.lte else []
    parts += ["--rail", str(args.rail)] if args.rail is not None else []
    for t in args.trace:
        parts += ["--trace", t]
    parts += ["--workload", args.workload, "--duration", f"{args.duration:g}"]
    parts += ["--seed", str(args.seed), "--policies", args.policies]
    for flag, value, default in (
        ("--delay", args.delay, 25.0),
        ("--queue-bytes", args.queue_bytes, 384_000),
        ("--loss", args.loss, 0.0),
        ("--warmup", args.warmup, 0.0),
        ("--lead", args.lead, 4.0),
    ):
        if value != default:
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    for o in args.outage:
        parts += ["--outage", o]
    parts += ["--calibrate"] if args.calibrate else []
    parts += ["--out", args.out]
    return " ".join(shlex.quote(p) for p in parts)


def product_paths() -> dict:
    """The configuration's [paths] defaults for the timers the testbed harness shortens
    for its tests: emulation and simulation then run the same settings."""
    from middlebox.config import Config

    p = Config().paths
    keys = ("user_timeout", "reconnect_initial", "reconnect_max", "lost_timeout")
    return {k: getattr(p, k) for k in keys}


def cmd_emulate(args: argparse.Namespace) -> int:
    from bench.emulate import calibrate
    from bench.emulate.runner import EmulationError, EmuSetup, carrier_specs, emulate, shifted
    from bench.sim import report

    if os.geteuid() != 0:
        raise UserError("bench emulate builds network namespaces: run it as root")
    if args.lead < 0.5:
        raise UserError("--lead must be >= 0.5 s")
    args.contextdb, args.future_context, args.config = None, False, None
    scn = build(args)
    todo = rows(args.policies, scn)
    out_dir = Path(args.out)
    work = Path(args.workdir) if args.workdir else out_dir / "work"
    specs, carriers = carrier_specs(args, scn, work / "traces")
    scn.carriers = carriers
    setup = EmuSetup(scn, specs, work, lead=args.lead, paths=product_paths(), cc=args.cc)
    out = sys.stdout
    out.write(
        f"emulating {scn.duration:g} s of {scn.name}, workload {scn.workload}, seed {scn.seed}: "
        f"{', '.join(todo)} (each on a fresh testbed)\n"
    )

    def done(r) -> None:
        s = r.summary
        out.write(
            f"  {r.name:<18} goodput {s['goodput_mbps']:7.2f} Mbit/s  "
            f"{100 * (s['oracle_fraction'] or 0):5.1f} % of oracle  {s['wall_s']:6.1f} s wall\n"
        )
        out.flush()

    try:
        results = emulate(setup, todo, on_result=done, progress=not args.no_progress)
    except EmulationError as e:
        raise UserError(str(e)) from None
    command = _command(args)
    view = dataclasses.replace(
        scn, carriers=shifted(scn.carriers, args.lead), name=f"emulation, {scn.name}"
    )
    path = report.write(results, view, out_dir, command=command, plots=not args.no_plots)
    out.write("\n" + report.table(results) + "\n\n")
    out.write(f"report: {path}\n")
    if args.calibrate:
        sim = calibrate.simulate_rows(scn, results)
        recs = calibrate.compare(sim, results)
        cpath = calibrate.write(recs, out_dir, scn.name, command)
        out.write("\n" + calibrate.table(recs) + "\n\n")
        out.write(f"calibration: {cpath}\n")
    return 0
