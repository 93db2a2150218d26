"""A synthetic high-speed rail route: cells, RSRP, handovers and throughput per carrier.

Real HSR traces with cell identities are rare, so the testbed can make its own, shaped
by the handover taxonomy of seed 001:

* success: the link is gone for < 100 ms;
* failure: about a second (median 1 s, 95th percentile 5 s) until re-attachment;
* outage: seconds (median 3 s, 90th percentile 10 s), e.g. tunnels, which hit every
  carrier at the same place.

Each carrier has its own cell sites at its own positions along the track; RSRP follows
distance (3GPP-style log-distance path loss) plus correlated shadowing; the serving cell
changes when a neighbour is better by a hysteresis margin; throughput follows RSRP.
Everything is drawn from one ``numpy`` generator seeded by :attr:`RailParams.seed`, so
a seed names a route. The per-second context (cell id, RSRP, position, throughput,
connected share) is exported in the columns of the 5G drive CSVs so the context database
ingests it like a real drive.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netns.traces import FIVEG_COLUMNS, DeliveryTrace, from_rates

HANDOVER_KINDS = ("success", "failure", "outage")


@dataclass(frozen=True)
class RailParams:
    """The route and its carriers. Defaults: a 10-minute run at 320 km/h, 3 carriers."""

    seed: int = 1
    carriers: int = 3
    duration_s: int = 600
    speed_kmh: float = 320.0
    cell_spacing_km: float = 0.7
    track_distance_km: float = 0.05
    hysteresis_db: float = 3.0
    shadowing_db: float = 4.0
    p_failure: float = 0.08
    p_outage: float = 0.03
    tunnels_per_100km: float = 2.0
    peak_dl_mbit: tuple[float, ...] = (60.0, 40.0, 30.0, 50.0, 45.0, 35.0, 55.0, 25.0)
    ul_share: float = 0.25
    start: str = "2026.01.01_08.00.00"
    origin_lon_lat: tuple[float, float] = (116.38, 39.90)

    def __post_init__(self) -> None:
        if not 1 <= self.carriers <= len(self.peak_dl_mbit):
            raise ValueError(f"carriers must be in 1..{len(self.peak_dl_mbit)}")
        if self.duration_s < 1 or self.speed_kmh <= 0 or self.cell_spacing_km <= 0:
            raise ValueError("duration, speed and cell spacing must be > 0")
        if self.p_failure < 0 or self.p_outage < 0 or self.p_failure + self.p_outage > 1:
            raise ValueError("handover probabilities must be >= 0 and sum to <= 1")


@dataclass(frozen=True)
class Handover:
    """A change of serving cell (or a tunnel) and the gap it caused."""

    t: float
    kind: str
    gap_s: float
    from_cell: int
    to_cell: int


@dataclass(frozen=True)
class RailSecond:
    """Per-second context of one carrier, in the vocabulary of the context database."""

    carrier: str
    t: int
    cell_id: int
    rsrp: float
    position_km: float
    longitude: float
    latitude: float
    dl_kbps: float
    ul_kbps: float
    connected: float  # share of the second with a working link, 0..1


@dataclass
class CarrierRoute:
    name: str
    seconds: list[RailSecond]
    handovers: list[Handover]
    gaps: list[tuple[float, float]] = field(default_factory=list)  # (start s, end s)
    dl_capacity_bps: np.ndarray | None = None


@dataclass
class RailRoute:
    params: RailParams
    carriers: list[CarrierRoute]

    def delivery(self, carrier: int, direction: str = "down") -> DeliveryTrace:
        """The carrier's delivery trace: capacity per second, nothing during gaps."""
        c = self.carriers[carrier]
        assert c.dl_capacity_bps is not None
        rates = c.dl_capacity_bps * (1.0 if direction == "down" else self.params.ul_share)
        trace = from_rates(rates, 1000, name=f"rail:{self.params.seed}:{carrier}:{direction}")
        counts = trace.counts.copy()
        for a, b in c.gaps:
            counts[int(a * 1000) : math.ceil(b * 1000)] = 0
        return DeliveryTrace(counts, trace.name)

    def records(self) -> list[RailSecond]:
        """All carriers' per-second records, ordered by time then carrier."""
        rows = [s for c in self.carriers for s in c.seconds]
        return sorted(rows, key=lambda s: (s.t, s.carrier))


def _lognormal(rng: np.random.Generator, median: float, quantile: float, z: float) -> float:
    """A draw with the given median and the given value at the standard-normal point z."""
    sigma = math.log(quantile / median) / z
    return float(rng.lognormal(math.log(median), sigma))


def gap_duration(rng: np.random.Generator, kind: str) -> float:
    """Seconds without service for a handover of ``kind`` (seed 001's taxonomy)."""
    if kind == "success":
        return float(rng.uniform(0.015, 0.099))
    if kind == "failure":
        return _lognormal(rng, 1.0, 5.0, 1.6449)  # median 1 s, p95 5 s
    if kind == "outage":
        return _lognormal(rng, 3.0, 10.0, 1.2816)  # median 3 s, p90 10 s
    raise ValueError(kind)


def generate(params: RailParams) -> RailRoute:
    """Build the route deterministically from ``params.seed``."""
    rng = np.random.default_rng(params.seed)
    n = params.duration_s
    speed = params.speed_kmh / 3600.0  # km/s
    length = n * speed
    # tunnels: shared by all carriers
    tunnels: list[tuple[float, float]] = []
    n_tunnels = rng.poisson(params.tunnels_per_100km * length / 100.0)
    for start in np.sort(rng.uniform(0, n, n_tunnels)):
        dur = gap_duration(rng, "outage")
        if not tunnels or start > tunnels[-1][1]:
            tunnels.append((float(start), min(float(start) + dur, float(n))))
    carriers = [_carrier(rng, params, k, length, speed, tunnels) for k in range(params.carriers)]
    return RailRoute(params, carriers)


def _carrier(
    rng: np.random.Generator,
    p: RailParams,
    k: int,
    length: float,
    speed: float,
    tunnels: list[tuple[float, float]],
) -> CarrierRoute:
    name = f"rail{k}"
    spacing = rng.uniform(0.7, 1.3, int(length / p.cell_spacing_km) + 4) * p.cell_spacing_km
    sites = np.cumsum(spacing) - rng.uniform(0, p.cell_spacing_km) - p.cell_spacing_km
    ids = 1000 * (k + 1) + np.arange(len(sites))
    t = np.arange(p.duration_s)
    pos = t * speed
    dist = np.sqrt((pos[:, None] - sites[None, :]) ** 2 + p.track_distance_km**2)
    shadow = np.zeros((p.duration_s, len(sites)))
    noise = rng.normal(0, p.shadowing_db * math.sqrt(1 - 0.9**2), shadow.shape)
    shadow[0] = rng.normal(0, p.shadowing_db, len(sites))
    for i in range(1, p.duration_s):
        shadow[i] = 0.9 * shadow[i - 1] + noise[i]
    rsrp = -70.0 - 37.6 * np.log10(dist / p.track_distance_km) + shadow
    serving = int(np.argmax(rsrp[0]))
    handovers: list[Handover] = []
    gaps: list[tuple[float, float]] = list(tunnels)
    cell = np.empty(p.duration_s, dtype=np.int64)
    for i in range(p.duration_s):
        best = int(np.argmax(rsrp[i]))
        if best != serving and rsrp[i, best] > rsrp[i, serving] + p.hysteresis_db:
            u = rng.random()
            kind = (
                "outage"
                if u < p.p_outage
                else "failure"
                if u < p.p_outage + p.p_failure
                else "success"
            )
            at = i + float(rng.uniform(0, 1))
            gap = gap_duration(rng, kind)
            handovers.append(Handover(at, kind, gap, int(ids[serving]), int(ids[best])))
            gaps.append((at, min(at + gap, float(p.duration_s))))
            serving = best
        cell[i] = serving
    for a, b in tunnels:
        handovers.append(
            Handover(a, "outage", b - a, int(ids[cell[int(a)]]), int(ids[cell[int(a)]]))
        )
    handovers.sort(key=lambda h: h.t)
    gaps.sort()
    serving_rsrp = rsrp[t, cell]
    quality = np.clip((serving_rsrp + 120.0) / 45.0, 0.0, 1.0) ** 1.5
    peak = p.peak_dl_mbit[k] * 1e6
    capacity = peak * quality * rng.lognormal(0.0, 0.2, p.duration_s)
    capacity = np.maximum(capacity, 200e3)  # even a weak cell gives something
    connected = np.ones(p.duration_s)
    for a, b in gaps:
        for s in range(int(a), min(math.ceil(b), p.duration_s)):
            connected[s] -= max(0.0, min(b, s + 1) - max(a, s))
    connected = np.clip(connected, 0.0, 1.0)
    lon0, lat0 = p.origin_lon_lat
    km_per_deg_lon = 111.32 * math.cos(math.radians(lat0))
    seconds = [
        RailSecond(
            carrier=name,
            t=int(i),
            cell_id=int(ids[cell[i]]),
            rsrp=round(float(serving_rsrp[i]), 1),
            position_km=round(float(pos[i]), 4),
            longitude=round(lon0 + float(pos[i]) / km_per_deg_lon, 6),
            latitude=lat0,
            dl_kbps=round(float(capacity[i] * connected[i]) / 1000.0, 1),
            ul_kbps=round(float(capacity[i] * connected[i] * p.ul_share) / 1000.0, 1),
            connected=round(float(connected[i]), 3),
        )
        for i in range(p.duration_s)
    ]
    return CarrierRoute(name, seconds, handovers, gaps, capacity)


def write_csv(route: RailRoute, carrier: int, path: str | Path) -> None:
    """Write one carrier's seconds in the 5G drive CSV columns (``-`` where we have nothing).

    ``DL_bitrate``/``UL_bitrate`` hold the capacity actually available that second;
    ``Speed`` is km/h; ``Operatorname`` is the carrier's name.
    """
    start = dt.datetime.strptime(route.params.start, "%Y.%m.%d_%H.%M.%S")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIVEG_COLUMNS)
        for s in route.carriers[carrier].seconds:
            row = dict.fromkeys(FIVEG_COLUMNS, "-")
            row.update(
                Timestamp=(start + dt.timedelta(seconds=s.t)).strftime("%Y.%m.%d_%H.%M.%S"),
                Longitude=s.longitude,
                Latitude=s.latitude,
                Speed=round(route.params.speed_kmh),
                Operatorname=s.carrier,
                CellID=s.cell_id,
                NetworkMode="LTE",
                RSRP=s.rsrp,
                DL_bitrate=s.dl_kbps,
                UL_bitrate=s.ul_kbps,
                State="D",
            )
            w.writerow([row[c] for c in FIVEG_COLUMNS])
