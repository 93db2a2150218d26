"""``mpproxy contextdb import|sync|query|stats|evaluate``.

Registered with ``mpproxy`` as an entry point (pyproject.toml), so contextdb never imports
the product: bad input raises :class:`~contextdb.errors.ContextDBError`, which the
parser declares as its user error (``mpproxy`` prints it as one line), and ``--config``
reads the gateway's configuration file through the loader the CLI hands every command
(``args.load_config``), of which only the ``[contextdb]`` section is used.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import socket
import sys

from contextdb.errors import ContextDBError

EXAMPLE_SPLIT = (
    "example: mpproxy contextdb evaluate "
    "--train ../shared/traces/5g-driving/B_2019.12.* "
    "--test ../shared/traces/5g-driving/B_2020.01.*"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "contextdb",
        help="long-term, location-aware history of each carrier",
        description="Import traces into the context database, query predictions, show "
        "statistics, and evaluate predictions on held-out runs.",
    )
    p.set_defaults(user_errors=(ContextDBError,))  # printed as one line by mpproxy
    cmds = p.add_subparsers(dest="contextdb_command", metavar="ACTION", required=True)

    def store_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", help="TOML configuration; its [contextdb] section is used")
        q.add_argument("--db", help="database file (default: contextdb.path)")
        q.add_argument("--fleet", help="shared store redis://HOST:PORT[/DB] instead of a file")
        q.add_argument("--line", help="line (route) name in the fleet store")

    q = cmds.add_parser("import", help="import 5G driving CSV files or directories of them")
    store_args(q)
    q.add_argument("paths", nargs="+", metavar="PATH", help="CSV files or directories")
    q.add_argument("--carrier", help="carrier name (default: the file's Operatorname)")
    q.add_argument(
        "--origin",
        default=socket.gethostname(),
        help="name of this gateway in the chunks written (default: host name); "
        "`sync` pushes the chunks of its own origin",
    )
    q.set_defaults(func=cmd_import)

    q = cmds.add_parser(
        "sync",
        help="push this gateway's history to the fleet store, pull the others'",
        description="Exchange history between the local database file and the fleet "
        "store of a line: chunks this gateway wrote (its --origin) go up, chunks of every "
        "other gateway come down. Only what is new since the last sync moves.",
    )
    q.add_argument("--config", help="TOML configuration; its [contextdb] section is used")
    q.add_argument("--db", help="local database file (default: contextdb.path)")
    q.add_argument(
        "--fleet", help="fleet store redis://HOST:PORT[/DB] (default: contextdb.fleet_url)"
    )
    q.add_argument("--line", help="line (route) name in the fleet store")
    q.add_argument(
        "--origin", default=socket.gethostname(), help="this gateway's name (default: host name)"
    )
    q.set_defaults(func=cmd_sync)

    q = cmds.add_parser("query", help="predict one carrier's next seconds")
    store_args(q)
    q.add_argument("--carrier", required=True)
    q.add_argument("--cell", required=True)
    q.add_argument(
        "--rsrp", required=True, help="recent RSRP, comma-separated dBm, oldest first: -90,-91,..."
    )
    q.add_argument(
        "--recent-mbit",
        type=float,
        default=None,
        metavar="MBIT_S",
        help="what the carrier delivered in its last second, Mbit/s: matched too (better "
        "predictions); without it the match is on RSRP alone",
    )
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_query)

    q = cmds.add_parser("stats", help="windows and handovers per carrier and cell")
    store_args(q)
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_stats)

    q = cmds.add_parser(
        "evaluate",
        help="train on some runs, test on others, compare with baselines",
        epilog=EXAMPLE_SPLIT,
    )
    q.add_argument("--config", help="TOML configuration; its [contextdb] section is used")
    q.add_argument("--train", nargs="+", metavar="PATH", help="runs to learn from")
    q.add_argument("--test", nargs="+", metavar="PATH", help="held-out runs to predict")
    q.add_argument(
        "--leave-one-out",
        nargs="+",
        metavar="PATH",
        help="instead of --train/--test: test each run with all the others as training",
    )
    q.add_argument("--k", type=int, help="override contextdb.k")
    q.add_argument(
        "--position",
        action="store_true",
        help="score the position along the line as a key too (the logs' Position column, "
        "or their GPS placed on the longest training run's track)",
    )
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_evaluate)


def _config(args: argparse.Namespace):
    from contextdb.config import ContextDBConfig

    if getattr(args, "config", None):
        cfg = args.load_config(args.config).contextdb
    else:
        cfg = ContextDBConfig()
    changes = {}
    for name, field in (("db", "path"), ("fleet", "fleet_url"), ("line", "line"), ("k", "k")):
        value = getattr(args, name, None)
        if value is not None:
            changes[field] = value
    if changes.get("k") is not None and changes["k"] < 1:
        raise ContextDBError("--k: must be >= 1")
    return dataclasses.replace(cfg, **changes)


def _open(args: argparse.Namespace, readonly: bool):
    from contextdb.db import ContextDB
    from contextdb.fleet import open_store

    cfg = _config(args)
    store = open_store(cfg.path, cfg.fleet_url, cfg.line, readonly=readonly, limits=cfg)
    try:
        return ContextDB(store, cfg, origin=getattr(args, "origin", ""))
    except BaseException:
        store.close()
        raise


def cmd_sync(args: argparse.Namespace) -> int:
    from contextdb.db import ContextDB
    from contextdb.fleet import RedisStore
    from contextdb.store import SqliteStore
    from contextdb.sync import sync

    cfg = _config(args)
    if not cfg.fleet_url:
        raise ContextDBError("sync: no fleet store (give --fleet or set contextdb.fleet_url)")
    local = SqliteStore(cfg.path)
    try:
        ContextDB(local, cfg, preload=False)  # checks or writes the parameters
        fleet = RedisStore.configured(cfg.fleet_url, cfg.line, cfg)
        try:
            report = sync(local, fleet, args.origin)
        finally:
            fleet.close()
    finally:
        local.close()
    print(
        f"sync {cfg.path} <-> line {cfg.line!r} as {args.origin!r}: pushed {report.pushed} "
        f"chunk(s), pulled {report.pulled} chunk(s), {report.cells} cell(s) in the fleet"
    )
    return 0


def _read(paths: list[str], carrier: str | None = None, cfg=None):
    from contextdb.config import ContextDBConfig
    from contextdb.traces import expand_paths, read_5g_csv

    cfg = cfg or ContextDBConfig()
    classes = (cfg.success_max_s, cfg.failure_max_s)
    return [read_5g_csv(p, carrier, classes) for p in expand_paths(paths)]


def cmd_import(args: argparse.Namespace) -> int:
    import time

    runs = _read(args.paths, args.carrier, _config(args))
    db = _open(args, readonly=False)
    try:
        start = time.perf_counter()
        rows = 0
        for run in runs:
            report = db.ingest(run.samples, run.events)
            rows += run.rows
            missing = ", ".join(f"{k} {v}" for k, v in sorted(run.missing.items())) or "none"
            print(
                f"{run.name}: {run.rows} rows, {report.windows} windows, "
                f"handovers {dict(sorted(report.events.items()))}, unknown values: {missing}"
            )
        elapsed = time.perf_counter() - start
        print(f"imported {len(runs)} file(s), {rows} rows (cut and stored in {elapsed:.2f} s)")
    finally:
        db.store.close()
    return 0


def _parse_rsrp(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ContextDBError(f"--rsrp: expected comma-separated numbers (got {text!r})") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ContextDBError("--rsrp: expected at least one finite number")
    return values


def cmd_query(args: argparse.Namespace) -> int:
    rsrp = _parse_rsrp(args.rsrp)
    db = _open(args, readonly=True)
    try:
        w = db.cfg.window_s
        if len(rsrp) < w:
            raise ContextDBError(f"--rsrp: need at least {w} values (the window length)")
        recent = args.recent_mbit
        if recent is not None and not (recent >= 0 and math.isfinite(recent)):
            raise ContextDBError(f"--recent-mbit: must be a finite number >= 0, not {recent}")
        p = db.predict(
            args.carrier, args.cell, rsrp, recent_dl_bps=None if recent is None else recent * 1e6
        )
    finally:
        db.store.close()
    if args.json:
        print(json.dumps(None if p is None else dataclasses.asdict(p), indent=2))
        return 0
    if p is None:
        print(
            f"no prediction: carrier {args.carrier!r} has too little history in cell {args.cell!r}"
        )
        return 0
    print(f"carrier {p.carrier} cell {p.cell}, next {db.cfg.lookahead_s} s:")
    print(
        f"  throughput  {p.throughput_mean / 1e6:.2f} Mbit/s "
        f"(sd {math.sqrt(p.throughput_var) / 1e6:.2f})"
    )
    print(f"  rtt         {p.rtt_mean * 1e3:.1f} ms (sd {math.sqrt(p.rtt_var) * 1e3:.1f})")
    print(f"  loss        {p.loss_mean * 100:.2f} % (sd {math.sqrt(p.loss_var) * 100:.2f})")
    print(
        f"  confidence  {p.confidence:.2f} ({p.n_neighbors} neighbours, "
        f"nearest at distance {p.nearest_distance:.1f})"
    )
    print(f"  disconnect  p={p.p_disconnect:.2f}, expected gap {p.expected_gap:.1f} s")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    db = _open(args, readonly=True)
    try:
        stats = db.stats()
    finally:
        db.store.close()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    params = ", ".join(f"{k}={v}" for k, v in stats["parameters"].items())
    print(f"parameters: {params}")
    if not stats["carriers"]:
        print("empty database")
    for carrier, cells in stats["carriers"].items():
        total = sum(c["windows"] for c in cells.values())
        print(f"carrier {carrier}: {len(cells)} cells, {total} windows")
        for cell, c in sorted(cells.items(), key=lambda kv: -kv[1]["windows"]):
            thr = c["throughput_mean_bps"]
            thr_s = "-" if thr is None or math.isnan(thr) else f"{thr / 1e6:.1f} Mbit/s"
            h = c["handovers"]
            gaps = " ".join(
                f"{k} p50 {g['p50']:.1f}s p90 {g['p90']:.1f}s"
                for k, g in c["gap_s"].items()
                if k != "success"
            )
            print(
                f"  cell {cell:>8}: {c['windows']:6d} windows, {thr_s:>14}, handovers "
                f"{h['success']} ok / {h['failure']} failed / {h['outage']} outage {gaps}"
            )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from contextdb.evaluate import evaluate

    cfg = _config(args)
    if args.leave_one_out:
        if args.train or args.test:
            raise ContextDBError("evaluate: give --leave-one-out or --train/--test, not both")
        return _leave_one_out(args, cfg)
    if not args.train or not args.test:
        raise ContextDBError(f"evaluate: --train and --test are required ({EXAMPLE_SPLIT})")
    res = evaluate(_read(args.train, None, cfg), _read(args.test, None, cfg), cfg, args.position)
    if args.json:
        out = dataclasses.asdict(res)
        if res.position is not None:
            out["position"]["long_gap_share"] = res.position.long_gap_share
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"train {res.train_windows} windows; test {res.test_windows} windows, {res.scored} "
        f"scored (skipped: {', '.join(f'{k} {v}' for k, v in res.skipped.items())})"
    )
    if not res.scored:
        print("nothing to score: no test window falls in a cell seen in training", file=sys.stderr)
        return 1
    la = cfg.lookahead_s
    print(f"mean absolute error of the {la}-second-ahead throughput (Mbit/s):")
    for name, v in res.mae_bps.items():
        conf = res.mae_confident_bps.get(name)
        extra = f"   (confidence >= 0.5, {res.confident} windows: {conf / 1e6:.2f})" if conf else ""
        print(f"  {name:<11} {v / 1e6:7.2f}{extra}")
    print(_brier_line(la, res.brier))
    if res.position is not None:
        _print_position(res.position, la)
    return 0


def _print_position(pos, la: int) -> None:
    where = "GPS placed on a reference track" if pos.projected else "odometer"
    print(
        f"position as a key ({where}): {pos.scored} windows with a position forecast "
        f"({pos.no_forecast} without one)"
    )
    if not pos.scored:
        return
    last = pos.mae_bps["last value"]
    for name, v in pos.mae_bps.items():
        print(f"  {name:<14} {v / 1e6:7.2f} Mbit/s  ({v / last:.2f}x last value)")
    b = pos.brier
    print(
        f"  disconnection within {la} s (observed in {b['observed rate']:.1%}), Brier score: "
        f"position {b['position']:.4f}, contextdb {b['contextdb']:.4f}, cell base rate "
        f"{b['cell base rate']:.4f}; skill score vs the cell base rate {pos.brier_skill:.2f}"
    )
    share = pos.long_gap_share
    share_s = "-" if math.isnan(share) else f"{share:.0%}"
    print(
        f"  dark spells > 2 s: {pos.long_gaps_forecast} of {pos.long_gaps} ({share_s}) "
        f"forecast {la} s ahead to start within 2 s of when they did"
    )


def _leave_one_out(args: argparse.Namespace, cfg) -> int:
    from contextdb.evaluate import PREDICTORS, evaluate

    runs = _read(args.leave_one_out, None, cfg)
    if len(runs) < 2:
        raise ContextDBError("evaluate: --leave-one-out needs at least two runs")
    folds = {}
    for i, held in enumerate(runs):
        train = [r for j, r in enumerate(runs) if j != i]
        folds[held.name] = evaluate(train, [held], cfg)
    if args.json:
        print(json.dumps({k: dataclasses.asdict(v) for k, v in folds.items()}, indent=2))
        return 0
    names = PREDICTORS
    print(f"mean absolute error of the {cfg.lookahead_s}-second-ahead throughput (Mbit/s),")
    print("each run predicted from all the others:")
    print(f"{'held-out run':<24} {'scored':>6} " + " ".join(f"{n:>10}" for n in names))
    total = dict.fromkeys(names, 0.0)
    brier = dict.fromkeys(BRIER, 0.0)
    scored = 0
    for name, res in folds.items():
        if not res.scored:
            print(f"{name:<24} {0:>6}   (no window in a cell seen in the other runs)")
            continue
        scored += res.scored
        for n in names:
            total[n] += res.mae_bps[n] * res.scored
        for n in BRIER:
            brier[n] += res.brier[n] * res.scored
        cols = " ".join(f"{res.mae_bps[n] / 1e6:10.2f}" for n in names)
        print(f"{name:<24} {res.scored:>6} {cols}")
    if scored:
        cols = " ".join(f"{total[n] / scored / 1e6:10.2f}" for n in names)
        print(f"{'all (window-weighted)':<24} {scored:>6} {cols}")
        print(_brier_line(cfg.lookahead_s, {n: v / scored for n, v in brier.items()}))
    return 0


BRIER = ("contextdb", "rsrp only", "cell base rate", "observed rate")


def _brier_line(lookahead_s: int, b: dict) -> str:
    return (
        f"disconnection within {lookahead_s} s (observed in {b['observed rate']:.1%} of "
        f"windows), Brier score: contextdb {b['contextdb']:.4f}, rsrp only "
        f"{b['rsrp only']:.4f}, cell base rate {b['cell base rate']:.4f}"
    )
