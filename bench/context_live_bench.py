"""Does the context database help the live proxy? Downloads on rail links, with and without.

``python -m bench.context_live_bench [--seed 7] [--seconds 30] [--runs 1]`` builds, per
run and per case, a fresh testbed with the three carriers of a rail route
(``rail:SEED:K``), starts node and gateway and downloads with iperf3 (``-R``) for
``--seconds``:

* ``no context``: policy ``context`` without a database (short-term estimates only);
* ``context + db``: the gateway replays the route's context in step with the emulator
  and both gateway and node read a database seeded with one earlier pass of the same
  route (the oracle case: the history is exactly this route).

It prints goodput beside what the traces offered in the same seconds (the testbed's
``capacity_bps``), so the cases can be compared by share although each starts at a
slightly different trace time. The machine has 2 shared cores: one run is noisy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from bench.proxy_bench import ProxyBed, _section
from netns.topology import SERVER_ADDRS, CarrierSpec, TestbedSpec

CARRIERS = 3


def _seed_db(files: list[str], path: Path) -> None:
    from contextdb.db import ContextDB
    from contextdb.store import SqliteStore
    from contextdb.traces import read_5g_csv

    store = SqliteStore(path)
    try:
        db = ContextDB(store, origin="earlier-train")
        for k, f in enumerate(files):
            db.ingest(read_5g_csv(f, carrier=f"carrier{k}").samples)
    finally:
        store.close()


def one(seed: int, seconds: int, workdir: Path, with_context: bool, files: list[str]) -> dict:
    spec = TestbedSpec(
        carriers=tuple(CarrierSpec(f"rail:{seed}:{k}", delay_ms=20) for k in range(CARRIERS)),
        clients=CARRIERS,
    )
    db = workdir / "context.sqlite"
    if with_context:
        _seed_db(files, db)
    with ProxyBed(spec, workdir / "bed", start=False) as bed:
        if with_context:
            ctx = {"source": "replay", "replay_files": files,
                   "replay_start": bed.tb.trace_start, "use_contextdb": True}  # fmt: skip
            for cfg, section in ((bed.gw_cfg, ctx), (bed.node_cfg, {"use_contextdb": True})):
                cfg.write_text(
                    cfg.read_text()
                    + _section("context", section)
                    + _section("contextdb", {"path": str(db)})
                )
        bed.start_node()
        bed.start_gateway()
        bed.wait_paths(CARRIERS)
        srv = bed.server(["iperf3", "-s", "-p", "5201", "-1"], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        t0 = time.monotonic()
        try:
            r = bed.run(
                "client",
                ["iperf3", "-c", SERVER_ADDRS[0], "-p", "5201", "-t", str(seconds), "-R", "-J"],
                timeout=seconds + 60,
            )
        finally:
            srv.wait(10)
        if r.returncode != 0:
            raise RuntimeError(r.stdout.decode()[-2000:] + bed.log("gateway")[-2000:])
        got = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]
        offered = bed.tb.capacity_bps(list(range(CARRIERS)), t0, seconds)
        trace_t = t0 - (bed.tb.trace_start or t0)
    return {"goodput": got, "offered": offered, "trace_t": trace_t}


def main(argv: list[str] | None = None) -> int:
    from netns import rail

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--runs", type=int, default=1)
    a = ap.parse_args(argv)
    route = rail.generate(rail.RailParams(seed=a.seed, carriers=CARRIERS))
    print(f"rail route {a.seed}, {CARRIERS} carriers, iperf3 -R {a.seconds} s (2 shared cores)")
    for run in range(a.runs):
        for with_context in (False, True):
            with tempfile.TemporaryDirectory() as d:
                files = []
                for k in range(CARRIERS):
                    p = Path(d) / f"rail{k}.csv"
                    rail.write_csv(route, k, p)
                    files.append(str(p))
                res = one(a.seed, a.seconds, Path(d), with_context, files)
            name = "context + db" if with_context else "no context"
            print(
                f"  run {run + 1} {name:<13}: {res['goodput'] / 1e6:6.1f} of "
                f"{res['offered'] / 1e6:6.1f} Mbit/s offered "
                f"({100 * res['goodput'] / max(res['offered'], 1):.0f} %), "
                f"trace from {res['trace_t']:.1f} s"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
