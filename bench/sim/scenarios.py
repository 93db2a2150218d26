"""Where carriers come from: trace specs, the bundled LTE traces, the synthetic rail route,
and the context database as a long-term source.

Trace files are read by ``netns.traces`` (every format the testbed reads) and the rail
route is ``netns.rail``'s generator: the simulator replays exactly what the emulated
testbed would.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from bench.sim.engine import Engine
from bench.sim.links import Carrier
from bench.sim.runner import LongTerm, LongTermFeed

LTE_TRACES = (
    ("att", "ATT-LTE-driving.down"),
    ("tmobile", "TMobile-LTE-short.down"),
    ("verizon", "Verizon-LTE-short.down"),
)


class ScenarioError(ValueError):
    """A trace, route or database the replay cannot use (the CLI turns it into a
    one-line error)."""


def traces_dir() -> Path:
    """``$MPPROXY_TRACES``, else ``../shared/traces`` from the working directory, else
    the one beside the source checkout."""
    env = os.environ.get("MPPROXY_TRACES")
    if env:
        return Path(env)
    here = Path("../shared/traces")
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[3] / "shared" / "traces"


def load_trace(spec: str, direction: str = "down"):
    """A delivery trace from a testbed spec: a Mahimahi file, a 5G CSV, ``<N>mbit`` or
    ``rail:<seed>:<carrier>``."""
    from netns.errors import TraceError
    from netns.tracespec import load

    try:
        return load(spec, direction)
    except TraceError as e:
        raise ScenarioError(str(e)) from None
    except ValueError as e:
        raise ScenarioError(f"{spec}: {e}") from None


def uplink_trace(spec: str):
    """The uplink the testbed plays for the downlink ``spec``
    (``netns.topology.up_counterpart``: a Mahimahi ``X.down``'s ``X.up`` when it exists;
    the UL direction of a 5G log, a rail carrier or a fixed rate)."""
    from netns.topology import up_counterpart

    return load_trace(up_counterpart(spec), "up")


def carrier_from_spec(spec: str, index: int, **kw: float) -> Carrier:
    """``[name=]trace-spec``; the name defaults to the file's stem (or ``c<index>``)."""
    name, eq, rest = spec.partition("=")
    if not eq or "/" in name or not name:
        name, rest = "", spec
    trace = load_trace(rest)
    if not name:
        stem = Path(rest).name.split(".")[0]
        name = (
            stem if stem and ":" not in rest and not rest.lower().endswith("mbit") else f"c{index}"
        )
    return Carrier(name, trace, up=uplink_trace(rest), **kw)  # type: ignore[arg-type]


def lte(directory: Path | None = None, **kw: float) -> list[Carrier]:
    """The three bundled LTE traces (AT&T, T-Mobile, Verizon), one carrier each: the
    downlink traces and their uplinks."""
    base = (directory or traces_dir()) / "mahimahi"
    missing = [f for _, f in LTE_TRACES if not (base / f).is_file()]
    if missing:
        raise ScenarioError(
            f"bundled LTE traces not found in {base} (missing {', '.join(missing)}); "
            "set MPPROXY_TRACES to the traces folder"
        )
    return [
        Carrier(n, load_trace(str(base / f)), up=uplink_trace(str(base / f)), **kw)  # type: ignore[arg-type]
        for n, f in LTE_TRACES
    ]


def rail(spec: int | str, duration: float, carriers: int = 3, **kw: float):
    """Carriers of a synthetic high-speed rail route (``SEED``) or of a day on a rail
    line (``line:SEED:day:N``), and the route itself (for the per-second cell, RSRP and
    position context)."""
    from netns import rail as railgen

    try:
        route = railgen.route_from_spec(str(spec), max(1, int(duration)), carriers)
    except ValueError as e:
        raise ScenarioError(str(e) if "rail route" in str(e) else f"rail route: {e}") from None
    out = [
        Carrier(c.name, route.delivery(k, "down"), up=route.delivery(k, "up"), **kw)  # type: ignore[arg-type]
        for k, c in enumerate(route.carriers)
    ]
    return out, route


def contextdb_feed(db_path: str, route, config_path: str | None = None) -> LongTermFeed:
    """Long-term predictions from a trained context database, and the route's per-second
    cell id and RSRP (what the modems would report on the train) reported into a carrier
    tracker, as the gateway's context loop does (the run registers the tracker, and its
    registry hands each carrier context to the source).

    ``route`` is a ``netns.rail.RailRoute`` (the only replayable source that carries
    cell identities besides 5G drive logs; those could feed it the same way).
    """
    from contextdb.db import ContextDB
    from contextdb.fleet import open_store
    from scheduler.generators import CarrierTracker
    from scheduler.longterm import CarrierWindowSource

    if not Path(db_path).exists():
        raise ScenarioError(f"context database {db_path}: no such file")
    if config_path:
        from middlebox.config import load

        cfg = load(config_path).contextdb
    else:
        from contextdb.config import ContextDBConfig

        cfg = ContextDBConfig()
    try:
        store = open_store(db_path, "", cfg.line, readonly=True)
    except Exception as e:  # noqa: BLE001 - any failure to open is the user's file
        raise ScenarioError(f"context database {db_path}: {e}") from None
    db = ContextDB(store, cfg)
    per_carrier = {c.name: c.seconds for c in route.carriers}

    def feed(engine: Engine, names: Sequence[str]) -> LongTerm:
        tracker = CarrierTracker(window=cfg.window_s)
        source = CarrierWindowSource(db.predict, db.forecast, cfg.lookahead_s)
        first = route.carriers[0].seconds if route.carriers else []

        def second(now: float, t: int) -> None:
            if t < len(first) and math.isfinite(first[t].speed_kmh):  # the odometer
                source.observe_position(first[t].position_km, first[t].speed_kmh)
            for name in names:
                secs = per_carrier.get(name)
                if secs is not None and t < len(secs):
                    s = secs[t]
                    tracker.report(name, now, cell_id=str(s.cell_id), rsrp=s.rsrp)
            if t + 1 < max((len(v) for v in per_carrier.values()), default=0):
                engine.at(t + 1.0, second, t + 1)

        engine.at(0.0, second, 0)
        return LongTerm(source, tracker)

    return feed


class _FutureSource:
    """A long-term source that knows the trace ahead (``LongTermSource``): throughput over
    the next ``lookahead`` seconds and whether an outage starts within it. Answers are
    precomputed per 0.25 s and looked up by index."""

    STEP = 0.25

    def __init__(self, links: dict, duration: float, lookahead: float, rates: bool = True) -> None:
        from scheduler.longterm import LongTermPrediction

        self._table: dict[str, list] = {}
        n = int(duration / self.STEP) + 1
        for name, link in links.items():
            rows = []
            for i in range(n):
                t = i * self.STEP
                thr = link.capacity_between(t, t + lookahead) * 8 / lookahead
                gap = 0.0
                for a, b in link.outages:
                    if a < t + lookahead and b > t:
                        gap = b - max(a, t)
                        break
                rows.append(
                    LongTermPrediction(
                        throughput_mean=thr,
                        # variance 0 = "not measured": only the outage forecast is used
                        throughput_var=(0.05 * thr) ** 2 + 1.0 if rates else 0.0,
                        confidence=1.0,
                        p_disconnect=1.0 if gap > 0 else 0.0,
                        expected_gap=gap,
                    )
                )
            self._table[name] = rows

    def predict(self, carrier: str, now: float):
        rows = self._table.get(carrier)
        if not rows:
            return None
        return rows[min(int(now / self.STEP), len(rows) - 1)]


def future_feed(
    carriers: Sequence[Carrier], duration: float, lookahead: float = 3.0, rates: bool = True
):
    """A long-term feed that knows each carrier's future (capacity and outages over the
    next ``lookahead`` seconds, confidence 1): the best a context database could do, so
    a bound on what long-term context can add to our policy. With ``rates=False`` it
    forecasts outages only (the capacity is reported as not measured), which separates
    what the disconnection forecast adds from what the rate forecast adds."""
    from bench.sim.links import Link

    by_name = {c.name: c for c in carriers}

    def feed(engine: Engine, names: Sequence[str]) -> LongTerm:
        links = {n: Link(by_name[n], duration) for n in names if n in by_name}
        return LongTerm(_FutureSource(links, duration, lookahead, rates))

    return feed
