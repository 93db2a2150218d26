"""The arguments ``bench replay`` and ``bench emulate`` share, and the scenario they describe.

Both commands take their carriers (``--lte``, ``--rail``, ``--trace``) and per-carrier link
knobs the same way and turn them into the same :class:`~bench.sim.runner.Scenario`, so an
emulation replays exactly the stretch of traces the simulator reads. Bad input raises
:class:`~middlebox.errors.UserError` (one line from ``mpproxy``).
"""

from __future__ import annotations

import argparse

from middlebox.errors import UserError


def carrier_arguments(p: argparse.ArgumentParser) -> None:
    """--lte / --rail / --trace (shared by replay and emulate)."""
    src = p.add_argument_group("carriers (one of --lte, --rail, --trace)")
    src.add_argument("--lte", action="store_true", help="the three bundled LTE traces")
    src.add_argument(
        "--rail",
        metavar="SEED|line:SEED:day:N",
        help="a synthetic high-speed rail route (new per seed), or day N on rail line SEED",
    )
    src.add_argument(
        "--trace",
        action="append",
        default=[],
        metavar="[NAME=]SPEC",
        help="one carrier per --trace: a Mahimahi file, a 5G CSV, <N>mbit, rail:<seed>:<carrier> "
        "or line:<seed>:day:<n>:<carrier>",
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
        raise UserError(
            "give exactly one of --lte, --rail SEED|line:SEED:day:N, --trace SPEC (repeatable)"
        )
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
            name = f"rail route {route.spec}"
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
