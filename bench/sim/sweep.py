"""Means over several seeds: every policy on the same cases and the same seeds.

    .venv/bin/python -m bench.sim.sweep [--cases lte-web,rail1-bulk,...] [--seeds 1,2,3]
        [--duration 600] [--policies context,minrtt,...] [--jobs 2] [--json FILE]

A single replay is one draw of requests, loss and (for the rail) one route; a policy
that wins on one seed may lose on the next. This runs each case under each policy for
every seed (paired: the same seed gives every policy the same requests and links) and
prints the mean and the range over seeds of the figures that matter for the workload:
goodput for bulk, flow completion and page load times for web, stalls for streams.

Cases are ``<carriers>-<workload>``: carriers ``lte`` (the bundled LTE traces; the seed
varies the requests and link loss) or ``rail<N>`` (synthetic route N; the seed varies
the requests); workloads ``web``, ``bulk``, ``cbr`` (web:clients=5 + two 8 Mbit/s
streams, as in docs/replay.md's long-term experiment), ``cbro`` (the same with
open-loop web clients) or any workload spec without commas after a colon
(``lte:web``). A policy name with ``+future`` (``context+future``) runs
with the source that knows the next 3 s (``--future-context``), ``+outages`` with the
same source reporting outages only (no capacity forecast), ``+db=PATH`` with a trained
context database (rail cases only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor

WORKLOADS = {
    "web": "web",
    "bulk": "bulk",
    "cbr": "web:clients=5+cbr:rate=8+cbr:rate=8",
    # the same with open-loop web clients (pages at times that do not depend on how fast
    # earlier pages loaded), so every policy's streams compete with the same web load
    "cbro": "web:clients=5,open=1+cbr:rate=8+cbr:rate=8",
}

# figure name -> (getter from a run's summary, lower is better)
FIGURES = {
    "goodput": (lambda s: s["goodput_mbps"], False),
    "small p50": (lambda s: _fct(s, "<=10KB", "p50"), True),
    "small p95": (lambda s: _fct(s, "<=10KB", "p95"), True),
    "mid p50": (lambda s: _fct(s, "10-100KB", "p50"), True),
    "mid p95": (lambda s: _fct(s, "10-100KB", "p95"), True),
    "page p50": (lambda s: (s["page_load"] or {}).get("p50"), True),
    "page p95": (lambda s: (s["page_load"] or {}).get("p95"), True),
    "stalls": (lambda s: s["stalls"] if s["streams"] else None, True),
    "stall s": (lambda s: s["stall_time"] if s["streams"] else None, True),
    "redundant %": (lambda s: s["redundant_fraction"] * 100, True),
}
SHOWN = {
    "bulk": ("goodput", "redundant %"),
    "web": ("small p50", "small p95", "mid p50", "mid p95", "page p50", "page p95", "redundant %"),
    "cbr": ("stalls", "stall s", "page p50", "page p95", "small p95", "redundant %"),
}


def _fct(s: dict, cls: str, q: str) -> float | None:
    st = s["fct"].get(cls)
    return None if st is None or st[q] is None else st[q] * 1000.0


def _case(case: str, seed: int, duration: float):
    from bench.sim import scenarios
    from bench.sim.runner import Scenario
    from bench.sim.transport import TransportParams
    from middlebox.config import Config

    where, _, work = case.partition("-") if ":" not in case else case.partition(":")
    workload = WORKLOADS.get(work, work)
    route = None
    if where == "lte":
        carriers = scenarios.lte()
    elif where.startswith("rail"):
        carriers, route = scenarios.rail(int(where[4:]), duration)
    else:
        raise SystemExit(f"unknown carriers {where!r} in case {case!r}")
    cfg = Config()
    scn = Scenario(
        carriers,
        workload,
        duration,
        seed=seed,
        params=TransportParams.from_config(cfg),
        sched=cfg.scheduler,
        warmup=10.0,
        name=case,
    )
    return scn, route


def one(case: str, seed: int, duration: float, policy: str) -> dict:
    """The summary of one replay (run in a worker process)."""
    from bench.sim import scenarios
    from bench.sim.runner import run

    scn, route = _case(case, seed, duration)
    name, _, extra = policy.partition("+")
    if extra in ("future", "outages"):
        scn.longterm = scenarios.future_feed(scn.carriers, duration, rates=extra == "future")
    elif extra.startswith("db="):
        if route is None:
            raise SystemExit("+db= needs a rail case")
        scn.longterm = scenarios.contextdb_feed(extra[3:], route)
    return run(scn, name).summary


def _kind(case: str) -> str:
    work = case.partition(":")[2] if ":" in case else case.partition("-")[2]
    if work in SHOWN:
        return work
    return "cbr" if "cbr" in work else "web" if "web" in work else "bulk"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.sim.sweep", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--cases", default="lte-web,lte-bulk,rail1-web,rail1-bulk,rail2-bulk")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--policies", default="context,minrtt,ecf,blest,roundrobin,redundant")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", help="write every run's figures here")
    args = ap.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    pols = [p for p in args.policies.split(",") if p]
    jobs = [(c, s, args.duration, p) for c in cases for p in pols for s in seeds]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        sums = list(ex.map(one, *zip(*jobs, strict=True)))
    by_key = {(c, p, s): r for (c, s, _, p), r in zip(jobs, sums, strict=True)}
    out: dict = {}
    print(f"means over seeds {args.seeds} ({args.duration:g} s each; [min..max] over seeds)")
    for c in cases:
        shown = SHOWN[_kind(c)]
        print(f"\n{c}")
        print(f"  {'policy':<16}" + "".join(f"{f:>22}" for f in shown))
        for p in pols:
            cells = []
            for f in shown:
                get = FIGURES[f][0]
                xs = [get(by_key[c, p, s]) for s in seeds]
                xs = [x for x in xs if x is not None]
                out.setdefault(c, {}).setdefault(p, {})[f] = xs
                if not xs:
                    cells.append(f"{'-':>22}")
                    continue
                m = statistics.fmean(xs)
                cells.append(f"{m:>9.2f} [{min(xs):.1f}..{max(xs):.1f}]".rjust(22))
            print(f"  {p:<16}" + "".join(cells))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
