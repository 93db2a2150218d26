"""``mpproxy bench``: replay traces through the simulator and compare schedulers.

``mpproxy bench replay`` runs the simulator; ``mpproxy bench emulate`` (registered from
``bench.emulate.command``) runs the same workloads on the emulated testbed with the real
gateway and node, and with ``--calibrate`` compares the two.
"""

from __future__ import annotations

import argparse
import shlex
import sys

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
    from bench.emulate.command import register as register_emulate

    register_emulate(bsub)


def carrier_arguments(p: argparse.ArgumentParser) -> None:
    """--lte / --rail / --trace (shared by replay and emulate)."""
    src = p.add_argument_group("carriers (one of --lte, --rail, --trace)")
    src.add_argument("--lte", action="store_true", help="the three bundled LTE traces")
    src.add_argument("--rail", type=int, metavar="SEED", help="a synthetic high-speed rail route")
    src.add_argument(
        "--trace",
        action="append",
        default=[],
        metavar="[NAME=]SPEC",
        help="one carrier per --trace: a Mahimahi file, a 5G CSV, <N>mbit or rail:<seed>:<carrier>",
    )


def link_arguments(p: argparse.ArgumentParser) -> None:
    """Per-carrier link knobs (shared by replay and emulate)."""
    p.add_argument("--delay", type=float, default=25.0, help="one-way delay per carrier, ms")
    p.add_argument("--queue-bytes", type=int, default=384_000, help="bottleneck queue per carrier")
    p.add_argument("--loss", type=float, default=0.0, help="random loss per packet")
    p.add_argument(
        "--outage",
        action="append",
        default=[],
        metavar="CARRIER:START-END",
        help="an extra outage in seconds (from the workload's start), e.g. att:30-40",
    )


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def _outages(specs: list[str], names: list[str]) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for spec in specs:
        name, _, span = spec.rpartition(":")
        a, _, b = span.partition("-")
        try:
            start, end = float(a), float(b)
        except ValueError:
            raise UserError(f"--outage {spec!r}: expected CARRIER:START-END in seconds") from None
        if name not in names:
            raise UserError(f"--outage {spec!r}: no carrier {name!r} (have {', '.join(names)})")
        if not 0 <= start < end:
            raise UserError(f"--outage {spec!r}: need 0 <= START < END")
        out.setdefault(name, []).append((start, end))
    return out


def build(args: argparse.Namespace):
    """The scenario the arguments describe (raises UserError on bad input)."""
    import dataclasses

    from bench.sim import scenarios
    from bench.sim.links import Carrier
    from bench.sim.runner import Scenario
    from bench.sim.transport import TransportParams
    from bench.sim.workloads import WorkloadError, parse
    from middlebox.config import Config, load

    chosen = sum([bool(args.lte), args.rail is not None, bool(args.trace)])
    if chosen != 1:
        raise UserError("give exactly one of --lte, --rail SEED, --trace SPEC (repeatable)")
    if args.duration <= 0 or args.warmup < 0 or args.warmup >= args.duration:
        raise UserError("--duration must be > 0 and --warmup in [0, duration)")
    if args.delay < 0 or not 0 <= args.loss < 1 or args.queue_bytes < 1500:
        raise UserError("--delay must be >= 0, --loss in [0, 1), --queue-bytes >= 1500")
    try:
        parse(args.workload)
    except WorkloadError as e:
        raise UserError(f"--workload: {e}") from None
    cfg = load(args.config) if args.config else Config()
    kw = {"delay": args.delay / 1000.0, "queue_bytes": args.queue_bytes, "loss": args.loss}
    route = None
    try:
        if args.lte:
            carriers = scenarios.lte(**kw)
            name = "bundled LTE traces"
        elif args.rail is not None:
            carriers, route = scenarios.rail(args.rail, args.duration, **kw)
            name = f"rail route seed {args.rail}"
        else:
            carriers = [scenarios.carrier_from_spec(s, i, **kw) for i, s in enumerate(args.trace)]
            name = "traces"
    except scenarios.ScenarioError as e:
        raise UserError(str(e)) from None
    names = [c.name for c in carriers]
    if len(set(names)) != len(names):
        raise UserError(f"carrier names must differ (got {', '.join(names)}); use NAME=SPEC")
    extra = _outages(args.outage, names)
    carriers = [
        dataclasses.replace(c, outages=tuple(extra[c.name])) if c.name in extra else c
        for c in carriers
    ]
    feed = None
    if args.contextdb and args.future_context:
        raise UserError("give --contextdb or --future-context, not both")
    if args.future_context:
        feed = scenarios.future_feed(carriers, args.duration)
    if args.contextdb:
        if route is None:
            raise UserError("--contextdb needs --rail (the route supplies cell ids and RSRP)")
        try:
            feed = scenarios.contextdb_feed(args.contextdb, route, args.config)
        except scenarios.ScenarioError as e:
            raise UserError(str(e)) from None
    return Scenario(
        carriers=list[Carrier](carriers),
        workload=args.workload,
        duration=args.duration,
        seed=args.seed,
        params=TransportParams.from_config(cfg),
        sched=cfg.scheduler,
        warmup=args.warmup,
        longterm=feed,
        name=name,
    )


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
