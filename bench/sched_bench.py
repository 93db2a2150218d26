"""Decision time per message of every scheduling policy, with 3 and 8 paths.

Run: ``.venv/bin/python -m bench.sched_bench [--messages N] [--repeats R]``.

Paths come from the real estimator (so our policy sees least-squares predictions,
jitter and rate variance) and our policy gets a long-term source (a scripted one:
the cost measured is the scheduler's, not contextdb's, whose answers are cached per
``longterm_refresh``). Two message mixes: plain data (the common case), and a mix of
data, interactive first bytes, bulk, a stream and reinjections. Each figure is the best of R
repeats of N decisions (the machine is shared, so the minimum is the least noisy
statistic); the median is printed too, and a no-op call with the same arguments is
measured in the same run as the floor of any Python policy. Last, the cost of one
``PathEstimator.update`` (closed-form fit, the default degree 2) against degree 3 (the
general Gaussian elimination, which every degree used before).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

from scheduler.config import SchedulerConfig
from scheduler.context import REINJECTION, ConnectionContext, MessageInfo, PathContext
from scheduler.estimators import PathEstimator, PathSample
from scheduler.longterm import LongTermPrediction, StubSource
from scheduler.policies import get, names

TARGET_US = 20.0


def make_paths(n: int, cfg: SchedulerConfig) -> list[PathContext]:
    paths = []
    for i in range(n):
        est = PathEstimator(i, f"carrier{i % 4}", cfg)
        base = 0.03 + 0.015 * i
        for k in range(12):
            est.update(
                PathSample(
                    rtt=base * (1.0 + 0.1 * ((k * 7 + i) % 5) / 5),
                    delivery_rate=(2 + i % 3) * 1e6 * (1.0 + 0.05 * (k % 3)),
                    loss=0.002 * (k % 4),
                    cwnd=200_000,
                    inflight=150_000 + 10_000 * (k % 3),
                    queued=8192 * (i % 3),
                ),
                0.05 * k,
            )
        paths.append(est.context())
    return paths


def messages(mix: str) -> list[MessageInfo]:
    web = ConnectionContext(1, client="p1", dst_port=443)
    bulk_a = ConnectionContext(2, client="p2", dst_port=22, bytes_so_far=50 << 20)
    bulk_b = ConnectionContext(3, client="p3", dst_port=22, bytes_so_far=50 << 20)
    plain = ConnectionContext(4, client="p4", dst_port=5000)
    tv = ConnectionContext(5, client="p5", dst_port=1935, bytes_so_far=50 << 20, stream=True)
    if mix == "data":
        return [
            MessageInfo(4, 16384, offset=16384 * i, backlog=65536, conn=plain) for i in range(8)
        ]
    return [
        MessageInfo(4, 16384, offset=16384, backlog=65536, conn=plain),
        MessageInfo(1, 16384, offset=0, conn=web),
        MessageInfo(2, 16384, offset=50 << 20, conn=bulk_a, window=1 << 20),
        MessageInfo(3, 16384, offset=50 << 20, conn=bulk_b, window=1 << 20),
        MessageInfo(4, 16384, kind=REINJECTION, conn=plain),
        MessageInfo(2, 16384, offset=(50 << 20) + 16384, conn=bulk_a, window=1 << 20),
        MessageInfo(3, 16384, offset=(50 << 20) + 16384, conn=bulk_b, window=1 << 20),
        MessageInfo(1, 16384, offset=16384, conn=web),
        MessageInfo(5, 16384, offset=50 << 20, conn=tv),
    ]


class _Noop:
    name = "no-op"

    def decide(self, message, paths, now):
        return ()


def time_policy(policy, paths, msgs, n: int, repeats: int) -> tuple[float, float]:
    """(best, median) microseconds per decision."""
    k = len(msgs)
    per_round = []
    now = 100.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            policy.decide(msgs[i % k], paths, now + i * 1e-4)
        per_round.append((time.perf_counter() - t0) / n * 1e6)
        now += n * 1e-4
    return min(per_round), statistics.median(per_round)


def time_estimator(cfg: SchedulerConfig, n: int, repeats: int) -> float:
    """Best microseconds per ``PathEstimator.update`` over a varying busy-path series."""
    samples = [
        PathSample(
            rtt=0.05 + 0.001 * (k % 7),
            rttvar=0.005,
            delivery_rate=1e6 + 1e4 * (k % 5),
            loss=0.001 * (k % 3),
            cwnd=100_000,
            inflight=50_000,
            queued=0,
            up=True,
            mss=1448,
        )
        for k in range(64)
    ]
    best = math.inf
    for _ in range(repeats):
        est = PathEstimator(0, "a", cfg)
        t0 = time.perf_counter()
        for i in range(n):
            est.update(samples[i & 63], i * 0.2)
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.sched_bench", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--messages", type=int, default=20000, help="decisions per repeat")
    ap.add_argument("--repeats", type=int, default=5, help="repeats (best is reported)")
    args = ap.parse_args(argv)
    if args.messages < 1 or args.repeats < 1:
        ap.error("--messages and --repeats must be positive")
    cfg = SchedulerConfig()
    pred = LongTermPrediction(
        throughput_mean=24e6,
        throughput_var=4e12,
        rtt_mean=0.05,
        rtt_var=1e-4,
        loss_mean=0.005,
        loss_var=1e-5,
        confidence=0.7,
    )
    src = StubSource({f"carrier{i}": [(0.0, 1e12, pred)] for i in range(4)})
    print(
        f"decision time per message, best (median) of {args.repeats} x {args.messages}, "
        f"microseconds; python {sys.version.split()[0]}; shared 2-core machine, figures are noisy"
    )
    print(f"{'policy':<12} {'mix':<5} {'3 paths':>18} {'8 paths':>18}")
    ours_3 = None
    for mix in ("data", "mix"):
        msgs = messages(mix)
        for name in ("no-op", *names()):
            cells = []
            for n_paths in (3, 8):
                paths = make_paths(n_paths, cfg)
                pol = _Noop() if name == "no-op" else get(name, cfg, longterm=src)
                best, med = time_policy(pol, paths, msgs, args.messages, args.repeats)
                cells.append(f"{best:7.2f} ({med:7.2f})")
                if name == "context" and n_paths == 3 and mix == "data":
                    ours_3 = best
            print(f"{name:<12} {mix:<5} {cells[0]:>18} {cells[1]:>18}")
    verdict = "meets" if ours_3 is not None and ours_3 <= TARGET_US else "MISSES"
    print(f"context, 3 paths, data: {ours_3:.2f} us -> {verdict} the {TARGET_US:.0f} us target")
    n_est = max(1, args.messages // 4)
    fast = time_estimator(cfg, n_est, args.repeats)
    general = time_estimator(SchedulerConfig(ls_degree=3), n_est, args.repeats)
    print(
        f"estimator update per sample, best of {args.repeats} x {n_est}: {fast:.1f} us "
        f"(degree {cfg.ls_degree}, closed form); {general:.1f} us with degree 3 "
        "(general least squares, the old code path for every degree)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
