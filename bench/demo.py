"""``mpproxy demo`` (what ``make demo`` runs): the most complete end-to-end slice built so far.

The emulated testbed with three carriers replaying the bundled Mahimahi LTE traces
(AT&T, T-Mobile, Verizon): a timed download over each carrier alone (plain TCP), over
Linux kernel MPTCP using all three, and through the proxy (``mpproxy node`` and
``mpproxy gateway`` started in the testbed, an unmodified client in the client
namespace), plus an upload through the proxy; a table of goodput next to what the
traces offered in the same seconds, then teardown; and last a short offline replay of
every scheduler policy over the same traces (``bench.sim.quick_comparison``), whose report
it points at.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from middlebox.errors import UserError


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
    from netns import baselines
    from netns.cli import BUNDLED, DEMO_TRACES
    from netns.errors import NetnsError
    from netns.topology import CarrierSpec, Testbed, TestbedSpec

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
    spec = TestbedSpec(
        carriers=tuple(
            CarrierSpec(str(f), delay_ms=args.delay, name=n)
            for f, n in zip(files, DEMO_TRACES, strict=True)
        )
    )
    out.write(
        f"\nTestbed: {len(files)} carriers replaying Mahimahi LTE traces, one-way delay "
        f"{args.delay:g} ms, queue 256 packets; {args.seconds:g} s downloads, server "
        f"congestion control {args.cc}.\n"
    )
    out.flush()
    t0 = time.monotonic()
    rows = []
    # a fresh testbed per row: every download starts at the same point of the traces, so
    # the rows see the same stretch of road and MPTCP is offered the sum of the singles
    plan = [(f"TCP over {DEMO_TRACES[k]}", k) for k in range(len(files))]
    plan.append(("kernel MPTCP, all carriers", None))
    plan.append(("mpproxy, all carriers", "proxy"))
    plan.append(("mpproxy upload, all carriers", "upload"))
    all_carriers = list(range(len(files)))
    try:
        for label, k in plan:
            if k in ("proxy", "upload"):
                rows.append(_proxy_row(spec, label, k, args))
            else:
                with Testbed(spec) as tb:
                    baselines.start_server(tb)
                    r = baselines.download(tb, k, seconds=args.seconds, cc=args.cc)
                    used = all_carriers if k is None else [k]
                    rows.append((label, r, tb.capacity_bps(used, r.start, r.seconds)))
            out.write(f"  {label}: done\n")
            out.flush()
    except NetnsError as e:  # the testbed's or its plumbing's
        raise UserError(str(e)) from None
    except RuntimeError as e:
        raise UserError(f"demo download failed: {e}") from None
    out.write(f"\n{'path':32s} {'goodput':>10s} {'offered':>10s} {'share':>6s} {'subflows':>8s}\n")
    for label, r, cap in rows:
        share = f"{100 * r.goodput_mbit * 1e6 / cap:5.0f}%" if cap > 0 else "     -"
        sub = "-" if r.subflows is None else str(r.subflows)
        out.write(
            f"{label:32s} {r.goodput_mbit:7.2f} Mb {cap / 1e6:7.2f} Mb {share:>6s} {sub:>8s}\n"
        )
    out.write(
        "\nmpproxy rows: node and gateway (TLS 1.3 paths, scheduler policy from the default "
        "configuration)\nstarted in the testbed; the client and server programs are the "
        "same as for the baselines\n(the upload row: the client sends, offered is the "
        "uplink traces). They start ~1.5 s later into the\ntraces than the baselines "
        "(processes and paths come up first): compare shares.\n"
    )
    out.write(
        "\ngoodput: application bytes / download time. offered: what the trace(s) could "
        "deliver\n(IP bits/s) in those same seconds. Each row ran on a fresh testbed "
        "(traces from\ntheir start), each testbed was removed "
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


def _proxy_row(spec, label: str, kind: str, args: argparse.Namespace):
    """One row through the proxy on a fresh testbed: download (or upload) for --seconds."""
    import tempfile

    from bench.proxy_bench import SINK, ProxyBed, start_ready, upload_for
    from netns import baselines

    with tempfile.TemporaryDirectory(prefix="mpproxy-demo-") as d, ProxyBed(spec, Path(d)) as bed:
        tb = bed.tb
        used = list(range(tb.carriers))
        if kind == "upload":
            start_ready(bed, "server", SINK, ["0.0.0.0", "5002"])
            r = upload_for(bed, args.seconds)
            cap = sum(tb.trace(k, "up").rate_bps(*_window(tb, r)) for k in used)
            return label, r, cap
        baselines.start_server(tb)
        r = baselines.download(tb, 0, seconds=args.seconds, cc=args.cc)  # captured
        return label, r, tb.capacity_bps(used, r.start, r.seconds)


def _window(tb, r) -> tuple[int, int]:
    a = int((r.start - tb.trace_start) * 1000)
    return a, a + max(1, int(r.seconds * 1000))
