"""Context database: query latency at 10^4, 10^5 and 10^6 stored windows, and ingest rate.

Run: ``.venv/bin/python -m bench.contextdb_bench [--sizes 1e4,1e5,1e6] [--queries N]``.

Stored windows are synthetic: integer RSRP (as modems report it) around a per-window
level drawn from -125..-65 dBm with a few dB of wander, five seconds each. Two layouts:
``one cell`` puts every window in one cell (the worst case for the index: every query
searches all of them); ``line`` spreads them over 200 cells (what a route looks like).
Each stored window also has a last-second throughput (log-normal around its look-ahead
throughput, one in ten unknown). Each query is a full ``ContextDB.predict`` (nearest
neighbours and all statistics), timed both ways the database is asked: ``rsrp+thr``
with the carrier's recent throughput (``recent_dl_bps``, what the scheduler passes, the
default) and ``rsrp`` without it.
The queries are timed over several passes: "first pass" is every query's first time,
"best of R" each query's fastest, which removes the preemptions a shared machine adds.
In the same run, a full vectorised scan of the same cell (what the index avoids) is
timed as the baseline. Ingest is measured on the bundled 5G drives, parse + cut +
store into a fresh sqlitedict file, in CSV rows per second. The machine's two cores are
shared with other work, so figures are noisy: p99 more than the median.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from contextdb.config import ContextDBConfig
from contextdb.db import ContextDB
from contextdb.index import throughput_coord
from contextdb.store import MemoryStore, SqliteStore
from contextdb.traces import expand_paths, read_5g_csv
from contextdb.windows import Windows

TARGET_P99_MS = 1.0
TRACES = Path(__file__).resolve().parent.parent.parent / "shared" / "traces" / "5g-driving"


def synthetic(n: int, width: int, rng: np.random.Generator) -> np.ndarray:
    level = rng.uniform(-125, -65, size=(n, 1))
    return np.round(level + rng.normal(0, 3, size=(n, width))).astype(np.float32)


def build(n: int, cells: int, cfg: ContextDBConfig, rng: np.random.Generator) -> ContextDB:
    db = ContextDB(MemoryStore(), cfg)
    x = synthetic(n, cfg.window_s, rng)
    owner = rng.integers(0, cells, size=n)
    for c in range(cells):
        sel = x[owner == c]
        m = len(sel)
        z = np.zeros(m)
        thr = rng.uniform(1e6, 1e8, m)
        last = thr * rng.lognormal(0.0, 0.5, m)
        last[rng.random(m) < 0.1] = np.nan
        w = Windows([f"cell{c}"] * m, np.arange(m, dtype=float), z, z, sel, thr, z, z, z, last, z)
        db.add("carrier", w, [], commit=False)
    db.commit()
    for entry in db._cells.values():  # merge every tail: measure the steady state
        entry.index._merge()
    return db


def percentiles(samples_ns: list[int]) -> tuple[float, float, float]:
    a = np.array(samples_ns) / 1e6
    return float(np.median(a)), float(np.percentile(a, 99)), float(a.mean())


def bench_queries(n: int, cells: int, queries: int, repeats: int, cfg: ContextDBConfig) -> dict:
    """Timings of both kinds of query against one database: {match: {first, best, scan}}."""
    rng = np.random.default_rng(n + cells)
    db = build(n, cells, cfg, rng)
    qs = synthetic(queries, cfg.window_s, rng).astype(np.float64)
    recent = rng.uniform(1e6, 1e8, queries)
    names = [f"cell{c}" for c in rng.integers(0, cells, size=queries)]
    out = {}
    for match in ("rsrp+thr", "rsrp"):
        rec = recent if match == "rsrp+thr" else [None] * queries
        for i in range(min(200, queries)):  # warm up
            db.predict("carrier", names[i], qs[i], 0.0, rec[i])
        perf = time.perf_counter_ns
        best = np.full(queries, np.iinfo(np.int64).max)
        first = []
        for r in range(repeats):
            for j in range(queries):
                t = perf()
                p = db.predict("carrier", names[j], qs[j], 0.0, rec[j])
                dt = perf() - t
                best[j] = min(best[j], dt)
                if r == 0:
                    first.append(dt)
                assert p is not None
        # baseline: one full vectorised scan of the queried cell, then argpartition
        scan = []
        for j in range(min(queries, 300)):
            index = db._cells[("carrier", names[j])].index
            q = qs[j] @ index.basis.T
            if match == "rsrp+thr":
                x = index.x
                q = np.append(q, throughput_coord(recent[j], cfg.throughput_match_db))
            else:
                x = index.x[:, : cfg.window_s]  # a view: no copy inside the timing
            t = perf()
            d2 = ((x - q) ** 2).sum(axis=1)
            kk = min(cfg.k, len(d2))
            np.argpartition(d2, kk - 1)[:kk]
            scan.append(perf() - t)
        out[match] = {
            "query": percentiles(first),
            "best": percentiles(list(best)),
            "scan": percentiles(scan),
        }
    return out


def bench_ingest(cfg: ContextDBConfig) -> tuple[int, float] | None:
    if not TRACES.is_dir():
        return None
    files = expand_paths([str(TRACES)])
    with tempfile.TemporaryDirectory() as tmp:
        db = ContextDB(SqliteStore(Path(tmp) / "bench.sqlite"), cfg)
        start = time.perf_counter()
        rows = 0
        for f in files:
            run = read_5g_csv(f)
            db.ingest(run.samples)
            rows += run.rows
        elapsed = time.perf_counter() - start
        db.store.close()
    return rows, elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1e4,1e5,1e6", help="stored windows, comma-separated")
    ap.add_argument("--queries", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3, help="passes over the same queries")
    args = ap.parse_args(argv)
    cfg = ContextDBConfig()
    print(f"contextdb query latency (W={cfg.window_s}, K={cfg.k}), ms per predict():")
    print(f"{'':>29} | {'first pass':^23} | {'best of ' + str(args.repeats):^15} | full scan")
    print(
        f"{'windows':>9} {'layout':>9} {'match':>9} | {'p50':>7} {'p99':>7} {'mean':>7} | "
        f"{'p50':>7} {'p99':>7} | {'p50':>8}  {'p99':>8}"
    )
    worst_p99 = {}
    for size in (int(float(s)) for s in args.sizes.split(",")):
        for layout, cells in (("one cell", 1), ("line", 200)):
            for match, r in bench_queries(size, cells, args.queries, args.repeats, cfg).items():
                p50, p99, mean = r["query"]
                b50, b99, _ = r["best"]
                s50, s99, _ = r["scan"]
                print(
                    f"{size:>9} {layout:>9} {match:>9} | {p50:7.3f} {p99:7.3f} {mean:7.3f} | "
                    f"{b50:7.3f} {b99:7.3f} | {s50:8.3f}  {s99:8.3f}"
                )
                if size == 10**6 and cells == 1:
                    worst_p99[match] = (p99, b99)
    for match, (raw, best) in worst_p99.items():
        print(
            f"target p99 <= {TARGET_P99_MS} ms at 10^6 windows in one cell, {match}: first "
            f"pass {'met' if raw <= TARGET_P99_MS else 'NOT met'} ({raw:.3f} ms), best of "
            f"{args.repeats} per query {'met' if best <= TARGET_P99_MS else 'NOT met'} "
            f"({best:.3f} ms; the difference is time the shared machine gave to others)"
        )
    ing = bench_ingest(cfg)
    if ing is None:
        print(f"ingest: bundled traces not found at {TRACES}")
    else:
        rows, elapsed = ing
        print(
            f"ingest (parse + cut + sqlitedict store), bundled 5G drives: {rows} rows in "
            f"{elapsed:.2f} s = {rows / elapsed:,.0f} rows/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
