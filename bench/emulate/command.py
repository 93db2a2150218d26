"""``mpproxy bench emulate``: the replay's workloads on the emulated testbed, with the real
gateway and node, beside the best single carrier and kernel MPTCP, on ``--repeat N``
stretches of the traces (every row on each); ``--calibrate`` adds the simulator's numbers
for the same trace seconds and how closely they match."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from collections.abc import Collection
from pathlib import Path

from bench.arguments import build, carrier_arguments, link_arguments
from bench.emulate.variants import parse as parse_variant
from bench.emulate.variants import split_row
from middlebox.errors import UserError

DESCRIPTION = (
    "Run the replay's workloads (bulk, web, cbr, file, and upload) for real on the emulated "
    "testbed: "
    "through the proxy (real gateway and node; one row per scheduler policy), over the best "
    "single carrier and over Linux kernel MPTCP, each row on a fresh testbed over the same "
    "seconds of the traces; --repeat N runs every row on N stretches of the traces and "
    "reports means, spreads and ratios paired per stretch; same metrics as 'bench replay'. "
    "--calibrate also simulates the same rows on the same seconds and reports sim/emu per "
    "metric (docs/replay.md). Needs root."
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
    e.add_argument(
        "--workload",
        default="bulk",
        help="as for 'bench replay' (docs/replay.md), and upload (client to server)",
    )
    e.add_argument("--duration", type=float, default=60.0, help="seconds of workload per row")
    e.add_argument("--seed", type=int, default=1)
    e.add_argument(
        "--policies",
        default=DEFAULT_ROWS,
        help="comma-separated rows: scheduler policies (through the proxy), POLICY@VARIANT "
        "(the proxy with a --variant's settings), single:<carrier>, single:best, mptcp; "
        "'all' = every policy + single:best + mptcp",
    )
    e.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="an mpproxy TOML file of settings (gateway, node, paths, scheduler, wire, ...) "
        "for rows POLICY@NAME: two configurations compared in one run, paired per stretch "
        "(addresses, carriers and certificates stay the testbed's; --calibrate does not "
        "simulate such rows)",
    )
    link_arguments(e)
    e.add_argument("--warmup", type=float, default=0.0, help="seconds left out of goodput")
    e.add_argument(
        "--lead",
        type=float,
        default=4.0,
        help="seconds of trace before the workload starts (the proxy comes up meanwhile)",
    )
    e.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="stretches of the traces per row: stretch k's workload starts at trace second "
        "lead + k * stride",
    )
    e.add_argument(
        "--stride",
        type=float,
        help="seconds between the stretches' starts (default: duration + 10, or the shortest "
        "varying trace's period / N if the stretches would pass its end)",
    )
    e.add_argument(
        "--start",
        type=float,
        default=0.0,
        help="trace second at which the link emulator starts for the first stretch (its "
        "workload starts --lead seconds later)",
    )
    e.add_argument("--cc", default="bbr", help="server congestion control (TCP and MPTCP rows)")
    e.add_argument("--calibrate", action="store_true", help="also simulate and compare")
    e.add_argument("--out", default="emulate-report", help="directory for the reports")
    e.add_argument("--workdir", help="testbed files and logs (default: OUT/work)")
    e.add_argument("--no-plots", action="store_true", help="do not draw PNG plots")
    e.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    e.set_defaults(func=cmd_emulate)


def rows(
    spec: str, scn, starts: tuple[float, ...] = (0.0,), variants: Collection[str] = ()
) -> list[str]:
    """Row names from ``--policies`` (raises UserError). ``single:best`` is the carrier
    that offered the most over each stretch (workloads starting at trace seconds
    ``starts``): named ``single:<carrier>`` when that is the same carrier on every
    stretch, else kept as ``single:best`` and chosen per stretch by the runner."""
    from bench.emulate.runner import BEST, MPTCP, best_single
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
        if item == BEST:
            best = {best_single(scn, at) for at in starts}
            item = SINGLE + best.pop() if len(best) == 1 else BEST
        if item.startswith(SINGLE) and item != BEST:
            if item[len(SINGLE) :] not in names:
                raise UserError(f"--policies: no carrier {item[len(SINGLE) :]!r}")
        elif "@" in item:
            policy, name = split_row(item)
            if policy not in policies.names():
                raise UserError(f"--policies: unknown policy in {item!r}")
            if name not in variants:
                raise UserError(f"--policies: {item!r} names no --variant {name!r}")
        elif item != MPTCP and item != BEST and item not in policies.names():
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
        ("--repeat", args.repeat, 1),
        ("--stride", args.stride, None),
        ("--start", args.start, 0.0),
        ("--cc", args.cc, "bbr"),
    ):
        if value != default:
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    for o in args.outage:
        parts += ["--outage", o]
    for v in args.variant:
        parts += ["--variant", v]
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
    from bench.emulate import calibrate, stretches
    from bench.emulate import report as ereport
    from bench.emulate.runner import (
        MARGIN_S,
        EmulationError,
        EmuSetup,
        carrier_specs,
        emulate,
        shifted,
    )

    if os.geteuid() != 0:
        raise UserError("bench emulate builds network namespaces: run it as root")
    if args.lead < 0.5:
        raise UserError("--lead must be >= 0.5 s")
    if args.repeat < 1 or (args.stride is not None and args.stride <= 0):
        raise UserError("--repeat must be >= 1 and --stride > 0")
    if not args.start >= 0:
        raise UserError("--start must be >= 0 (a trace second)")
    args.contextdb, args.future_context, args.config = None, False, None
    scn = build(args)
    n, dur = args.repeat, scn.duration
    out_dir = Path(args.out)
    work = Path(args.workdir) if args.workdir else out_dir / "work"
    stride = args.stride
    if stride is None and args.rail is not None and not str(args.rail).startswith("line:"):
        stride = stretches.default_stride(dur, n, [])  # the route is made long enough
    span = (
        args.start + args.lead + (n - 1) * stride + dur + MARGIN_S if stride is not None else None
    )
    specs, carriers = carrier_specs(args, scn, work / "traces", span)
    scn.carriers = carriers
    variants = {v.name: v for v in map(parse_variant, args.variant)}
    setup = EmuSetup(
        scn, specs, work, lead=args.lead, paths=product_paths(), cc=args.cc, variants=variants
    )
    if stride is None:
        stride = stretches.default_stride(dur, n, setup.all_periods())
    plan = stretches.plan(n, args.lead, dur, stride, start=args.start)
    todo = rows(args.policies, scn, tuple(s.start for s in plan), setup.variants)
    periods = setup.periods()
    out = sys.stdout
    out.write(
        f"emulating {dur:g} s of {scn.name}, workload {scn.workload}, seed {scn.seed}: "
        f"{', '.join(todo)} (each on a fresh testbed)"
        + (f", on {n} stretches (stride {stride:g} s)" if n > 1 else "")
        + "\n"
        + "".join(f"  {stretches.describe(s, periods)}\n" for s in plan)
    )

    def done(r) -> None:
        s = r.summary
        where = f" #{s['stretch']}" if n > 1 else ""
        out.write(
            f"  {r.name + where:<22} goodput {s['goodput_mbps']:7.2f} Mbit/s  "
            f"{100 * (s['oracle_fraction'] or 0):5.1f} % of oracle  {s['wall_s']:6.1f} s wall\n"
        )
        out.flush()

    try:
        results = emulate(
            setup, todo, on_result=done, progress=not args.no_progress, stretches=plan
        )
    except EmulationError as e:
        raise UserError(str(e)) from None
    command = _command(args)
    view = dataclasses.replace(scn, carriers=shifted(scn.carriers, plan[0].start))
    path = ereport.write(
        results, view, plan, periods, out_dir, command, plots=not args.no_plots, stride=stride
    )
    out.write("\n" + ereport.text(results, plan, periods) + "\n\n")
    out.write(f"report: {path}\n")
    if args.calibrate:
        flat = [r for rs in results for r in rs]
        try:
            sim = calibrate.simulate_rows(scn, flat)
        except UserError as e:
            out.write(f"\ncalibration skipped: {e}\n")
            return 0
        recs = calibrate.compare(sim, flat)
        cpath = calibrate.write(recs, out_dir, scn.name, command)
        shown = calibrate.summarise(recs) if n > 1 else recs
        out.write("\n" + calibrate.table(shown) + "\n\n")
        out.write(f"calibration: {cpath}\n")
    return 0
