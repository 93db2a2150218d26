"""``mpproxy demo`` (what ``make demo`` runs): the most complete end-to-end slice built so far.

The emulated testbed with three carriers replaying the bundled Mahimahi LTE traces
(AT&T, T-Mobile, Verizon): a timed download over each carrier alone (plain TCP), over
Linux kernel MPTCP using all three, and through the proxy (``mpproxy node`` and
``mpproxy gateway`` started in the testbed, an unmodified client in the client
namespace), plus an upload through the proxy; a table of goodput next to what the
traces offered in the same seconds, then teardown; and last a short offline replay of
every scheduler policy over the same traces (``bench.sim.quick_comparison``), whose report
it points at.

The rows are the emulation runner's (``bench.emulate.runner.run_row``): each on a fresh
testbed, its workload (the replay's ``bulk`` or ``upload``) starting :data:`LEAD` seconds
into the traces, after the proxy's paths came up, so every row plays the same trace
seconds and the goodputs compare as they are.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from middlebox.errors import UserError

LEAD = 3.0
"""Seconds of trace before every row's workload starts (the proxy comes up meanwhile)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo on built-in defaults (needs root: namespaces)",
        description="Testbed with three emulated LTE carriers; single-path TCP on each, "
        "kernel MPTCP over all, and the proxy (gateway + node) over all, with goodput per path.",
    )
    p.add_argument("--seconds", type=float, default=8.0, help="length of each download (s)")
    p.add_argument("--cc", default="cubic", help="server congestion control (cubic, bbr, reno)")
    p.add_argument("--delay", type=float, default=20.0, help="one-way delay per carrier (ms)")
    p.add_argument("--out", default="demo-report", help="directory for the replay report")
    p.set_defaults(func=run)


# (component, built?) in data-path order; updated as issues land.
STATUS = [
    ("configuration and CLI", True),
    ("wire protocol codec", True),
    ("emulated testbed and baselines", True),
    ("user-space TCP endpoint", True),
    ("gateway and node processes", True),
    ("context-aware scheduler", True),
    ("context database", True),
    ("replay simulator", True),
    ("proxy end to end on the testbed (in this demo)", True),
]


def run(args: argparse.Namespace) -> int:
    import tempfile

    from bench.emulate.command import product_paths
    from bench.emulate.runner import (
        MPTCP,
        EmulationError,
        EmuSetup,
        offered_mbps,
        run_row,
        scenario_for,
    )
    from bench.sim.runner import SINGLE
    from middlebox.config import Config
    from netns.cli import BUNDLED, DEMO_TRACES
    from netns.errors import NetnsError
    from netns.topology import CarrierSpec

    out = sys.stdout
    out.write("mpproxy demo\n\nComponents:\n")
    for name, built in STATUS:
        out.write(f"  [{'x' if built else ' '}] {name}{'' if built else '  (not yet)'}\n")
    if args.seconds <= 0 or args.seconds > 120:
        raise UserError("--seconds must be in (0, 120]")
    files = [Path(BUNDLED) / f"{n}.down" for n in DEMO_TRACES]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise UserError(f"bundled traces not found: {', '.join(missing)}")
    specs = [
        CarrierSpec(str(f), delay_ms=args.delay, name=n)
        for f, n in zip(files, DEMO_TRACES, strict=True)
    ]
    out.write(
        f"\nTestbed: {len(files)} carriers replaying Mahimahi LTE traces, one-way delay "
        f"{args.delay:g} ms, queue 256 packets; {args.seconds:g} s downloads, server "
        f"congestion control {args.cc}; every row's workload starts {LEAD:g} s into the "
        f"traces (trace seconds {LEAD:g}-{LEAD + args.seconds:g}).\n"
    )
    out.flush()
    policy = Config().scheduler.policy
    plan = [(f"TCP over {n}", SINGLE + n, "bulk") for n in DEMO_TRACES]
    plan.append(("kernel MPTCP, all carriers", MPTCP, "bulk"))
    plan.append(("mpproxy, all carriers", policy, "bulk"))
    plan.append(("mpproxy upload, all carriers", policy, "upload"))
    t0 = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mpproxy-demo-") as work:
        setups = {
            w: EmuSetup(
                scenario_for(specs, w, args.seconds),
                specs,
                Path(work) / w,
                LEAD,
                product_paths(),
                args.cc,
            )
            for w in ("bulk", "upload")
        }
        try:
            for label, row, workload in plan:
                r = run_row(setups[workload], row)
                rows.append((label, r))
                out.write(f"  {label}: done\n")
                out.flush()
        except (NetnsError, EmulationError) as e:
            raise UserError(str(e)) from None
    out.write(f"\n{'path':32s} {'goodput':>10s} {'offered':>10s} {'share':>6s} {'subflows':>8s}\n")
    for label, r in rows:
        s = r.summary
        cap, goodput = offered_mbps(r), s["goodput_mbps"]
        share = f"{100 * goodput / cap:5.0f}%" if cap > 0 else "     -"
        sub = "-" if s["subflows"] is None else str(s["subflows"])
        out.write(f"{label:32s} {goodput:7.2f} Mb {cap:7.2f} Mb {share:>6s} {sub:>8s}\n")
    late = [label for label, r in rows if r.summary["late_start"]]
    out.write(
        "\nmpproxy rows: node and gateway started in the testbed (TLS 1.3 paths, scheduler "
        f"policy\nfrom the default configuration: {policy}); the client and server programs "
        "are the same\nfor every row (the upload row: the client sends, the server counts, "
        f"offered is the\nuplink traces). Every row ran on trace seconds {LEAD:g}-"
        f"{LEAD + args.seconds:g}, so the goodputs compare as they are"
        + (f"\n(except {', '.join(late)}: started late)" if late else "")
        + ".\n"
    )
    out.write(
        "\ngoodput: application bytes received in those seconds / their length. offered: "
        "what the\ntrace(s) could deliver (IP bits/s) in the same seconds. Each row ran on "
        "a fresh testbed,\neach testbed was removed "
        f"({time.monotonic() - t0:.0f} s in all).\n"
    )
    _replay(out, args.out)
    return 0


def _replay(out, out_dir: str) -> None:
    """The short offline comparison of every scheduler policy (``bench.sim``)."""
    from bench.sim import quick_comparison

    out.write(
        "\nOffline replay of every scheduler policy on the same traces (60 s of web "
        "browsing\nplus a 2 Mbit/s stream, simulated; see docs/replay.md):\n"
    )
    out.flush()
    report = quick_comparison(out_dir)
    table = [ln for ln in Path(report).read_text().splitlines() if ln.startswith("|")]
    out.write("\n".join(table) + "\n")
    out.write(f"\nreplay report: {report}\n")
