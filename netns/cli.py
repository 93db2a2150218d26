"""``mpproxy testbed up|down|status|exec``: the emulated testbed for people.

``up`` builds a testbed and leaves it running (its emulator detached), recording it in
``/run/mpproxy/testbed-<id>.json``; ``down`` removes it from any process; ``status``
lists what is recorded; ``exec`` runs a command inside one of its namespaces; ``rail``
writes a synthetic high-speed rail route as 5G-drive CSVs (for the context database).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from netns.errors import NetnsError, TestbedError

if TYPE_CHECKING:
    from netns.topology import TestbedSpec

BUNDLED = Path(__file__).resolve().parent.parent.parent / "shared" / "traces" / "mahimahi"
DEMO_TRACES = ("ATT-LTE-driving", "TMobile-LTE-short", "Verizon-LTE-short")


def default_traces() -> list[str]:
    """The three bundled Mahimahi LTE downlink traces, or a fixed rate if absent."""
    found = [str(BUNDLED / f"{n}.down") for n in DEMO_TRACES if (BUNDLED / f"{n}.down").exists()]
    return found or ["10mbit"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "testbed",
        help="emulated testbed: namespaces, trace-driven carrier links, rail traces",
        description="Build, inspect and remove the emulated testbed (needs root).",
    )
    p.set_defaults(user_errors=(NetnsError,))  # printed as one line by mpproxy
    tsub = p.add_subparsers(dest="testbed_cmd", metavar="ACTION", required=True)
    up = tsub.add_parser("up", help="build a testbed and leave it running")
    up.add_argument("--carriers", type=int, default=3, help="number of carriers, 1..8 (default 3)")
    up.add_argument(
        "--trace",
        action="append",
        default=[],
        help="downlink trace per carrier, repeat for each (cycled): a Mahimahi file (its "
        ".up sibling is used uplink), a 5G drive CSV, NUMmbit, or rail:SEED:CARRIER "
        "(default: the bundled Mahimahi LTE traces)",
    )
    up.add_argument("--delay", default="20", help="one-way delay ms, or a comma list per carrier")
    up.add_argument("--queue", type=int, default=256, help="queue per direction, packets")
    up.add_argument("--loss", type=float, default=0.0, help="random loss rate 0..1")
    up.add_argument(
        "--outage",
        action="append",
        default=[],
        metavar="[K@]START:END",
        help="seconds after start with no delivery, on carrier K or on every carrier (repeatable)",
    )
    up.add_argument(
        "--clients", type=int, default=0, help="client addresses (min: one per carrier)"
    )
    up.add_argument("--time-scale", type=float, default=1.0, help="replay traces slower (>1)")
    up.add_argument("--rate-scale", type=float, default=1.0, help="multiply trace rates")
    up.add_argument(
        "--no-offloads",
        action="store_true",
        help="turn TSO/GSO/GRO/checksum offload off on the carrier links (one frame per packet)",
    )
    up.add_argument("--id", help="testbed id (default: derived from the process id)")
    up.set_defaults(func=cmd_up)
    down = tsub.add_parser("down", help="remove a testbed (or all recorded ones)")
    down.add_argument("id", nargs="?")
    down.add_argument("--all", action="store_true", help="remove every recorded testbed")
    down.set_defaults(func=cmd_down)
    st = tsub.add_parser("status", help="list recorded testbeds")
    st.set_defaults(func=cmd_status)
    rl = tsub.add_parser(
        "rail",
        help="write a synthetic high-speed rail route as 5G-drive CSVs (one per carrier)",
    )
    rl.add_argument("--seed", type=int, default=1)
    rl.add_argument("--carriers", type=int, default=3)
    rl.add_argument("--duration", type=int, default=600, help="seconds")
    rl.add_argument("--speed", type=float, default=320.0, help="km/h")
    rl.add_argument("--out", required=True, help="directory for rail<k>.csv")
    rl.set_defaults(func=cmd_rail)
    ex = tsub.add_parser("exec", help="run a command in a namespace of a testbed")
    ex.add_argument("id")
    ex.add_argument("role", choices=("client", "gateway", "emulator", "node", "server"))
    ex.add_argument("argv", nargs=argparse.REMAINDER, help="command (after --)")
    ex.set_defaults(func=cmd_exec)


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise TestbedError(
            f"{what} must be a number or a comma list of numbers (got {text!r})"
        ) from None


def _outages(items: list[str], carrier: int) -> tuple[tuple[float, float], ...]:
    """Outages for one carrier from ``[K@]START:END`` items (no ``K@``: every carrier)."""
    out = []
    for item in items:
        target, at, window = item.rpartition("@")
        a, sep, b = window.partition(":")
        try:
            if at and int(target) != carrier:
                continue
            out.append((float(a), float(b)))
        except ValueError:
            raise TestbedError(
                f"--outage takes [CARRIER@]START:END in seconds (got {item!r})"
            ) from None
        if not sep:
            raise TestbedError(f"--outage takes [CARRIER@]START:END in seconds (got {item!r})")
    return tuple(sorted(out))


def spec_from_args(args: argparse.Namespace) -> TestbedSpec:
    from netns.topology import CarrierSpec, TestbedSpec

    n = args.carriers
    traces = args.trace or default_traces()
    delays = _floats(args.delay, "--delay")
    carriers = tuple(
        CarrierSpec(
            down=traces[k % len(traces)],
            delay_ms=delays[k % len(delays)],
            queue_packets=args.queue,
            loss=args.loss,
            outages=_outages(args.outage, k),
        )
        for k in range(max(n, 0))
    )
    return TestbedSpec(
        carriers=carriers,
        clients=args.clients,
        time_scale=args.time_scale,
        rate_scale=args.rate_scale,
        offloads=not args.no_offloads,
    )


def cmd_up(args: argparse.Namespace) -> int:
    from netns.topology import Testbed

    tb = Testbed(spec_from_args(args), tid=args.id, die_with_parent=False)
    tb.up()
    print(f"testbed {tb.tid} is up")
    for role, name in tb.ns.items():
        print(f"  {role:9s} {name}")
    for k, c in enumerate(tb.spec.carriers):
        print(
            f"  carrier {k}: {c.down} delay {c.delay_ms:g} ms"
            f" queue {c.queue_packets} loss {c.loss:g}"
        )
    print(f"run:    mpproxy testbed exec {tb.tid} client -- <command>")
    print(f"remove: mpproxy testbed down {tb.tid}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from netns.topology import STATE_DIR, down_from_state, recorded

    if args.all:
        ids = [down_from_state(Path(s["file"])) for s in recorded()]
        print(f"removed {len(ids)} testbed(s)" + (f": {', '.join(ids)}" if ids else ""))
        return 0
    if not args.id:
        raise TestbedError("give a testbed id (see 'mpproxy testbed status') or --all")
    path = STATE_DIR / f"testbed-{args.id}.json"
    if not path.exists():
        raise TestbedError(f"no recorded testbed {args.id!r} (no {path})")
    down_from_state(path)
    print(f"testbed {args.id} removed")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from netns.topology import recorded

    beds = recorded()
    if not beds:
        print("no testbed recorded")
        return 0
    for s in beds:
        state = "up" if s["alive"] else "BROKEN (namespaces missing; run down)"
        print(f"testbed {s['id']}: {state}, {len(s['spec']['carriers'])} carrier(s)")
        for role, name in s["namespaces"].items():
            print(f"  {role:9s} {name}")
    return 0


def cmd_rail(args: argparse.Namespace) -> int:
    from collections import Counter

    from netns import rail

    try:
        params = rail.RailParams(
            seed=args.seed, carriers=args.carriers, duration_s=args.duration, speed_kmh=args.speed
        )
    except ValueError as e:
        raise TestbedError(str(e)) from None
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        route = rail.generate(params)
        for k, c in enumerate(route.carriers):
            path = out / f"{c.name}.csv"
            rail.write_csv(route, k, path)
            kinds = Counter(h.kind for h in c.handovers)
            print(
                f"{path}: {len(c.seconds)} s, {len({s.cell_id for s in c.seconds})} cells, "
                + ", ".join(f"{kinds[x]} {x}" for x in rail.HANDOVER_KINDS)
            )
    except OSError as e:
        raise TestbedError(f"cannot write {out}: {e.strerror}") from None
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    from netns.topology import STATE_DIR

    path = STATE_DIR / f"testbed-{args.id}.json"
    if not path.exists():
        raise TestbedError(f"no recorded testbed {args.id!r}")
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise TestbedError("give a command after --")
    import json

    ns = json.loads(path.read_text())["namespaces"][args.role]
    os.execvp("ip", ["ip", "netns", "exec", ns, *argv])
    return 127  # not reached
