"""How long the gateway's context loop holds up the event loop.

``python -m bench.context_bench [--seconds N] [--carriers K]`` drives a
:class:`middlebox.context.loop.ContextLoop` on simulated time (rail-route context replayed,
five TCP_INFO readings per path and second, every second saturated) against a fresh
SQLite context database, and prints per-call times of the once-a-second work
(``tick`` closing a second: meter, tracker, ingest feed) and of the database write
(``flush``, every ``--flush-interval`` seconds), beside a baseline loop without database
in the same run. All of it runs in the gateway's event loop (the fleet store's thread only
moves chunks to and from the server), so the maximum is what a packet may wait. The machine has
2 shared cores: figures are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from contextdb.config import ContextDBConfig
from middlebox.config import CarrierConfig, Config, ContextConfig, GatewayConfig
from netns import rail


def _info(n: int, t: float) -> SimpleNamespace:
    return SimpleNamespace(bytes_received=n, bytes_acked=n // 10, segs_out=n // 1400,
                           total_retrans=0, busy_time_us=int(t * 1e6), srtt_us=50_000,
                           app_limited=False, notsent_bytes=0)  # fmt: skip


def run(seconds: int, carriers: int, workdir: Path, use_db: bool, flush_s: float = 1.0) -> dict:
    from middlebox.context.loop import ContextLoop

    route = rail.generate(rail.RailParams(seed=3, carriers=carriers, duration_s=seconds + 5))
    files = []
    for k in range(carriers):
        p = workdir / f"rail{k}.csv"
        rail.write_csv(route, k, p)
        files.append(str(p))
    names = [c.name for c in route.carriers]
    cfg = Config(
        gateway=GatewayConfig(carriers=[CarrierConfig(name=n) for n in names]),
        context=ContextConfig(
            source="replay",
            replay_files=files,
            replay_start=1.0,
            use_contextdb=use_db,
            flush_interval=flush_s,
        ),
        contextdb=ContextDBConfig(path=str(workdir / f"ctx{int(use_db)}.sqlite")),
    )
    loop = ContextLoop(cfg, clock=lambda: 1.0, wall=lambda: 1.7e9)
    keys = {n: object() for n in names}
    ticks, flushes = [], []
    for step in range(seconds * 5):
        now = 1.0 + step * 0.2
        for pid, n in enumerate(names, 1):
            loop.on_info(pid, n, keys[n], _info(250_000 * step, now - 1.0), now)
        flush_due = now >= loop.next_flush
        t0 = time.perf_counter()
        loop.tick(now)
        dt = (time.perf_counter() - t0) * 1e3
        (flushes if flush_due and use_db else ticks).append(dt)
    t0 = time.perf_counter()
    loop.close()
    final = (time.perf_counter() - t0) * 1e3
    return {"ticks": ticks, "flushes": flushes, "final_ms": final,
            "windows": loop.counters["windows_stored"]}  # fmt: skip


def _fmt(xs: list[float]) -> str:
    if not xs:
        return "-"
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(0.99 * len(xs)))]
    return (
        f"mean {statistics.fmean(xs):.3f} ms, p99 {p99:.3f} ms, max {xs[-1]:.3f} ms (n={len(xs)})"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--carriers", type=int, default=3)
    ap.add_argument("--flush-interval", type=float, default=1.0, help="[context] flush_interval")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        base = run(a.seconds, a.carriers, Path(d), use_db=False)
        db = run(a.seconds, a.carriers, Path(d), use_db=True, flush_s=a.flush_interval)
    print(f"{a.carriers} carriers, {a.seconds} s of simulated time (2 shared cores: noisy)")
    print(f"  tick without database : {_fmt(base['ticks'])}")
    print(f"  tick with database    : {_fmt(db['ticks'])}")
    print(f"  tick closing a second and flushing (every {a.flush_interval:g} s, SQLite commit): "
          f"{_fmt(db['flushes'])}")  # fmt: skip
    print(f"  final flush at close  : {db['final_ms']:.1f} ms; windows stored {db['windows']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
