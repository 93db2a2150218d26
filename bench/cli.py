"""``mpproxy bench``: replay traces through the simulator and compare schedulers.

``mpproxy bench replay`` runs the simulator; ``mpproxy bench emulate`` (registered from
``bench.emulate.command``) runs the same workloads on the emulated testbed with the real
gateway and node, and with ``--calibrate`` compares the two. Both read their carriers and
links with the same arguments and build the same scenario (``bench.arguments``).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from bench.arguments import build, carrier_arguments, link_arguments
from bench.emulate.command import register as register_emulate
from middlebox.errors import UserError

DESCRIPTION = (
    "Offline trace replay: every scheduling policy (ours, min-RTT, round-robin, redundant, "
    "ECF, BLEST) and each carrier alone over the same traces and workload, in a discrete-"
    "event model of the proxy's transport (docs/replay.md). 'bench emulate' runs the same "
    "workloads through the real gateway and node on the emulated testbed."
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="replay traces and compare schedulers; emulate them on the testbed",
        description=DESCRIPTION,
    )
    bsub = p.add_subparsers(dest="bench_command", metavar="COMMAND")
    p.set_defaults(func=lambda args: _usage(p))
    r = bsub.add_parser(
        "replay",
        help="simulate every policy over traces and write a report",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    carrier_arguments(r)
    r.add_argument(
        "--workload",
        default="web",
        help="e.g. web, bulk, cbr:rate=4, file:size=50, web:clients=20+bulk (docs/replay.md)",
    )
    r.add_argument("--duration", type=float, default=300.0, help="simulated seconds")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument(
        "--policies",
        default="all",
        help="comma-separated policies and single:<carrier> baselines, or 'all'",
    )
    r.add_argument("--no-singles", action="store_true", help="skip single-carrier baselines")
    link_arguments(r)
    r.add_argument("--warmup", type=float, default=0.0, help="seconds left out of goodput")
    r.add_argument("--contextdb", metavar="PATH", help="trained context database (with --rail)")
    r.add_argument(
        "--future-context",
        action="store_true",
        help="our policy's long-term source knows each carrier's next 3 s (capacity, "
        "outages): a bound on what the context database can add",
    )
    r.add_argument("--config", metavar="FILE", help="mpproxy TOML configuration to take knobs from")
    r.add_argument("--out", default="replay-report", help="directory for report.md/.json/.png")
    r.add_argument("--no-plots", action="store_true", help="do not draw PNG plots")
    r.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    r.set_defaults(func=cmd_replay)
    register_emulate(bsub)


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def _policies(spec: str, scn) -> list[str]:
    from bench.sim.runner import SINGLE, policy_names
    from scheduler import policies

    if spec == "all":
        return policy_names(True, scn.carriers)
    out = []
    carriers = {c.name for c in scn.carriers}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if item.startswith(SINGLE):
            if item[len(SINGLE) :] not in carriers:
                raise UserError(f"--policies: no carrier {item[len(SINGLE) :]!r}")
        elif item not in policies.names() and item != "ours":
            raise UserError(
                f"--policies: unknown policy {item!r} (known: {', '.join(policies.names())})"
            )
        out.append("context" if item == "ours" else item)
    if not out:
        raise UserError("--policies: nothing to run")
    return out


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this replay (for the report)."""
    parts = ["mpproxy", "bench", "replay"]
    if args.lte:
        parts.append("--lte")
    if args.rail is not None:
        parts += ["--rail", str(args.rail)]
    for t in args.trace:
        parts += ["--trace", t]
    parts += ["--workload", args.workload, "--duration", f"{args.duration:g}"]
    parts += ["--seed", str(args.seed)]
    for flag, value, default in (
        ("--policies", args.policies, "all"),
        ("--delay", args.delay, 25.0),
        ("--queue-bytes", args.queue_bytes, 384_000),
        ("--loss", args.loss, 0.0),
        ("--warmup", args.warmup, 0.0),
        ("--contextdb", args.contextdb, None),
        ("--config", args.config, None),
    ):
        if value != default:
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    for o in args.outage:
        parts += ["--outage", o]
    if args.no_singles:
        parts.append("--no-singles")
    if args.future_context:
        parts.append("--future-context")
    parts += ["--out", args.out]
    return " ".join(shlex.quote(p) for p in parts)


def cmd_replay(args: argparse.Namespace) -> int:
    from bench.sim import report
    from bench.sim.runner import SINGLE, compare

    scn = build(args)
    names = _policies(args.policies, scn)
    if args.no_singles:
        names = [n for n in names if not n.startswith(SINGLE)]
    out = sys.stdout
    out.write(
        f"replaying {scn.duration:g} s of {scn.name}, workload {scn.workload}, seed {scn.seed}\n"
    )

    def done(r) -> None:
        s = r.summary
        out.write(
            f"  {r.name:<18} goodput {s['goodput_mbps']:7.2f} Mbit/s  "
            f"{s['wall_s']:6.2f} s wall  speed-up {s['speedup']:.0f}x real time\n"
        )
        out.flush()

    results = compare(scn, names, progress=not args.no_progress, on_result=done)
    command = _command(args)
    path = report.write(results, scn, args.out, command=command, plots=not args.no_plots)
    out.write("\n" + report.table(results) + "\n\n")
    out.write(f"report: {path}\n")
    return 0
