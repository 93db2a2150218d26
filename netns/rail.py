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
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netns.traces import FIVEG_COLUMNS, DeliveryTrace, from_rates

HANDOVER_KINDS = ("success", "failure", "outage")
POSITION_COLUMN = "Position"  # km along the line, after the 5G drive columns


def _check_carriers(carriers: int, peaks: tuple[float, ...]) -> None:
    if not 1 <= carriers <= len(peaks):
        raise ValueError(f"carriers must be in 1..{len(peaks)}")


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
        _check_carriers(self.carriers, self.peak_dl_mbit)
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
    position_km: float = math.nan  # where it started, on a line (nan: unknown)


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
    speed_kmh: float = math.nan  # what the odometer (or GPS) reports that second


@dataclass
class CarrierRoute:
    name: str
    seconds: list[RailSecond]
    handovers: list[Handover]
    gaps: list[tuple[float, float]] = field(default_factory=list)  # (start s, end s)
    dl_capacity_bps: np.ndarray | None = None


@dataclass
class RailRoute:
    """A run's carriers; ``name`` is the spec it came from (``rail:<seed>`` or
    ``line:<seed>:day:<n>``), ``line`` and ``day`` are set for a day on a line."""

    params: RailParams
    carriers: list[CarrierRoute]
    name: str = ""
    line: Line | None = None
    day: int | None = None

    def delivery(self, carrier: int, direction: str = "down") -> DeliveryTrace:
        """The carrier's delivery trace: capacity per second, nothing during gaps."""
        c = self.carriers[carrier]
        assert c.dl_capacity_bps is not None
        rates = c.dl_capacity_bps * (1.0 if direction == "down" else self.params.ul_share)
        trace = from_rates(rates, 1000, name=f"{self.spec}:{carrier}:{direction}")
        counts = trace.counts.copy()
        for a, b in c.gaps:
            counts[int(a * 1000) : math.ceil(b * 1000)] = 0
        return DeliveryTrace(counts, trace.name)

    @property
    def spec(self) -> str:
        return self.name or f"rail:{self.params.seed}"

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
    speeds = np.full(p.duration_s, p.speed_kmh)
    return _carrier_route(
        name,
        p.origin_lon_lat,
        p.ul_share,
        pos,
        speeds,
        ids[cell],
        serving_rsrp,
        capacity,
        handovers,
        gaps,
    )


def _carrier_route(
    name: str,
    origin: tuple[float, float],
    ul_share: float,
    pos: np.ndarray,
    speed: np.ndarray,
    cells: np.ndarray,
    rsrp: np.ndarray,
    capacity: np.ndarray,
    handovers: list[Handover],
    gaps: list[tuple[float, float]],
) -> CarrierRoute:
    """Per-second records of one carrier: what its modem and the odometer report."""
    n = len(pos)
    connected = np.ones(n)
    for a, b in gaps:
        for s in range(int(a), min(math.ceil(b), n)):
            connected[s] -= max(0.0, min(b, s + 1) - max(a, s))
    connected = np.clip(connected, 0.0, 1.0)
    lon0, lat0 = origin
    km_per_deg_lon = 111.32 * math.cos(math.radians(lat0))
    seconds = [
        RailSecond(
            carrier=name,
            t=int(i),
            cell_id=int(cells[i]),
            rsrp=round(float(rsrp[i]), 1),
            position_km=round(float(pos[i]), 4),
            longitude=round(lon0 + float(pos[i]) / km_per_deg_lon, 6),
            latitude=lat0,
            dl_kbps=round(float(capacity[i] * connected[i]) / 1000.0, 1),
            ul_kbps=round(float(capacity[i] * connected[i] * ul_share) / 1000.0, 1),
            connected=round(float(connected[i]), 3),
            speed_kmh=round(float(speed[i]), 1),
        )
        for i in range(n)
    ]
    return CarrierRoute(name, seconds, handovers, gaps, capacity)


def write_csv(route: RailRoute, carrier: int, path: str | Path) -> None:
    """Write one carrier's seconds in the 5G drive CSV columns (``-`` where we have nothing).

    ``DL_bitrate``/``UL_bitrate`` hold the capacity actually available that second;
    ``Speed`` is km/h; ``Operatorname`` is the carrier's name; a last column,
    ``Position``, is the km along the line (the odometer the context source reads).
    """
    start = dt.datetime.strptime(route.params.start, "%Y.%m.%d_%H.%M.%S")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow((*FIVEG_COLUMNS, POSITION_COLUMN))
        for s in route.carriers[carrier].seconds:
            row = dict.fromkeys(FIVEG_COLUMNS, "-")
            row.update(
                Timestamp=(start + dt.timedelta(seconds=s.t)).strftime("%Y.%m.%d_%H.%M.%S"),
                Longitude=s.longitude,
                Latitude=s.latitude,
                Speed=round(s.speed_kmh if math.isfinite(s.speed_kmh) else route.params.speed_kmh),
                Operatorname=s.carrier,
                CellID=s.cell_id,
                NetworkMode="LTE",
                RSRP=s.rsrp,
                DL_bitrate=s.dl_kbps,
                UL_bitrate=s.ul_kbps,
                State="D",
            )
            w.writerow([*(row[c] for c in FIVEG_COLUMNS), s.position_km])


# -- lines and days -----------------------------------------------------------------------
#
# A *line* is what stays the same every day: stations, tunnels, cuttings, each carrier's
# cell sites and the handover points between them, coverage holes. A *day* is one run of
# one train over the line with what changes from day to day: the timetable and speed
# profile, the cell load at that hour, fading, extra radio-link failures, a site down.
# Parameters and the sources of their values: docs/replay.md ("Rail lines and days").


@dataclass(frozen=True)
class LineParams:
    """What a line is drawn from (defaults: docs/replay.md says where each comes from)."""

    seed: int = 1
    carriers: int = 3
    length_km: float = 100.0
    station_spacing_km: float = 40.0  # intermediate stops, on average
    cruise_kmh: float = 300.0
    accel_ms2: float = 0.4
    brake_ms2: float = 0.5
    dwell_s: tuple[float, float] = (60.0, 150.0)
    cell_spacing_km: float = 0.75
    site_offset_km: tuple[float, float] = (0.03, 0.2)
    hysteresis_db: float = 3.0
    min_rsrp_dbm: float = -121.0  # below: no service
    shadowing_db: float = 4.0
    tunnels_per_100km: float = 6.0
    tunnel_km: tuple[float, float] = (0.4, 2.5)  # median, 90th percentile of the length
    tunnel_covered: float = 0.25  # chance a carrier has in-tunnel coverage (leaky feeder)
    cuttings_per_100km: float = 8.0
    cutting_db: tuple[float, float] = (6.0, 14.0)
    holes_per_100km: float = 2.0  # per carrier: stretches without a site
    hole_km: tuple[float, float] = (1.5, 3.0)
    bad_handover_share: float = 0.12  # handover points that usually fail
    p_fail_bad: tuple[float, float] = (0.5, 0.9)
    p_fail_good: tuple[float, float] = (0.0, 0.04)
    reattach_s: tuple[float, float] = (0.3, 1.5)  # after leaving a tunnel or a hole
    extra_failures_per_hour: float = 1.0  # per carrier, anywhere (not tied to the line)
    p_site_down: float = 0.15  # per carrier and day
    peak_dl_mbit: tuple[float, ...] = RailParams.peak_dl_mbit
    ul_share: float = 0.25
    fading_db: float = 2.0
    origin_lon_lat: tuple[float, float] = (116.38, 39.90)

    def __post_init__(self) -> None:
        _check_carriers(self.carriers, self.peak_dl_mbit)
        if self.length_km < 2 or self.cruise_kmh <= 0 or self.cell_spacing_km <= 0:
            raise ValueError("length >= 2 km, cruise speed and cell spacing > 0")


@dataclass(frozen=True)
class Site:
    """A carrier's cell site: its cell id, km along the track, distance from it, bias."""

    cell_id: int
    km: float
    offset_km: float
    bias_db: float  # antenna and power differences, fixed
    p_fail: float  # probability a handover *into* this cell fails


@dataclass
class Line:
    """One line: fixed features in km along the track (start, end) pairs."""

    params: LineParams
    stations: list[float]
    tunnels: list[tuple[float, float]]
    cuttings: list[tuple[float, float, float]]  # (start, end, extra loss dB)
    sites: list[list[Site]]  # per carrier, ordered by km
    holes: list[list[tuple[float, float]]]  # per carrier
    covered: list[list[bool]]  # per carrier, per tunnel: in-tunnel coverage
    shadow_step_km: float = 0.01
    shadow: np.ndarray | None = None  # (carriers, steps) dB, fixed in space

    def dark(self, carrier: int) -> list[tuple[float, float]]:
        """Where ``carrier`` has no service on every day: uncovered tunnels and holes."""
        spans = [t for t, c in zip(self.tunnels, self.covered[carrier], strict=True) if not c]
        return sorted(spans + list(self.holes[carrier]))


def _spans(rng: np.random.Generator, per_100km: float, length: float, km: tuple[float, float]):
    """Non-overlapping (start, end) stretches, Poisson in number, log-normal in length."""
    n = rng.poisson(per_100km * length / 100.0)
    out: list[tuple[float, float]] = []
    for start in np.sort(rng.uniform(1.0, length - 1.0, n)):
        size = _lognormal(rng, km[0], km[1], 1.2816)
        end = min(float(start) + size, length - 0.5)
        if end > start and (not out or start > out[-1][1] + 0.2):
            out.append((float(start), end))
    return out


def make_line(params: LineParams) -> Line:
    """Draw the line from ``params.seed``: the same seed is the same line."""
    rng = np.random.default_rng([params.seed, 0x11E])
    length = params.length_km
    n_stops = max(0, round(length / params.station_spacing_km) - 1)
    inner = (np.arange(1, n_stops + 1) + rng.uniform(-0.2, 0.2, n_stops)) / (n_stops + 1)
    stations = [0.0] + [round(float(x) * length, 3) for x in inner] + [length]
    tunnels = _spans(rng, params.tunnels_per_100km, length, params.tunnel_km)
    cut_spans = _spans(rng, params.cuttings_per_100km, length, (0.5, 1.5))
    cuttings = [(a, b, float(rng.uniform(*params.cutting_db))) for a, b in cut_spans]
    sites, holes, covered = [], [], []
    for k in range(params.carriers):
        hole = _spans(rng, params.holes_per_100km, length, params.hole_km)
        spacing = rng.uniform(0.7, 1.3, int(length / params.cell_spacing_km) + 4)
        kms = np.cumsum(spacing * params.cell_spacing_km) - rng.uniform(0, params.cell_spacing_km)
        row = []
        for j, x in enumerate(kms):
            if x > length + params.cell_spacing_km or any(a < x < b for a, b in hole):
                continue
            bad = rng.random() < params.bad_handover_share
            row.append(
                Site(
                    cell_id=10_000 * (k + 1) + j,
                    km=float(x),
                    offset_km=float(rng.uniform(*params.site_offset_km)),
                    bias_db=float(rng.normal(0.0, 2.0)),
                    p_fail=float(rng.uniform(*(params.p_fail_bad if bad else params.p_fail_good))),
                )
            )
        sites.append(row)
        holes.append(hole)
        covered.append([bool(rng.random() < params.tunnel_covered) for _ in tunnels])
    line = Line(params, stations, tunnels, cuttings, sites, holes, covered)
    steps = int(length / line.shadow_step_km) + 2
    rho = math.exp(-line.shadow_step_km / 0.05)  # 50 m decorrelation distance
    shadow = np.empty((params.carriers, steps))
    noise = rng.normal(0.0, params.shadowing_db * math.sqrt(1 - rho**2), shadow.shape)
    shadow[:, 0] = rng.normal(0.0, params.shadowing_db, params.carriers)
    for i in range(1, steps):
        shadow[:, i] = rho * shadow[:, i - 1] + noise[:, i]
    line.shadow = shadow
    return line


def _timetable(line: Line, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Position (km) and speed (km/h) per second of one day's run, station to station.

    Cruise speed, dwell times and an occasional speed restriction vary by day; the train
    accelerates and brakes at the line's rates (braking curve to the next stop)."""
    p = line.params
    vmax = p.cruise_kmh * float(np.clip(rng.normal(1.0, 0.03), 0.9, 1.05)) / 3.6  # m/s
    slow: tuple[float, float, float] | None = None
    if rng.random() < 0.3:
        at = float(rng.uniform(0.1, 0.9) * p.length_km)
        slow = (at, at + float(rng.uniform(2.0, 5.0)), float(rng.uniform(160, 220)) / 3.6)
    stops = list(line.stations[1:])
    x, v = 0.0, 0.0  # km, m/s
    dwell = 0.0
    pos, speed = [], []
    while True:
        pos.append(x)
        speed.append(v * 3.6)
        if not stops:
            break
        if dwell > 0:
            dwell -= 1.0
            continue
        limit = vmax if slow is None or not slow[0] <= x <= slow[1] else slow[2]
        if slow is not None and x < slow[0]:  # brake ahead of the restriction
            limit = min(limit, math.sqrt(slow[2] ** 2 + 2 * p.brake_ms2 * (slow[0] - x) * 1000))
        to_stop = (stops[0] - x) * 1000.0
        target = min(limit, math.sqrt(max(0.0, 2 * p.brake_ms2 * to_stop)))
        nv = min(target, v + p.accel_ms2) if v < target else max(target, v - p.brake_ms2)
        step = (v + nv) / 2.0
        if to_stop <= max(step, 1.0):
            x, v = stops.pop(0), 0.0
            dwell = float(rng.uniform(*p.dwell_s)) if stops else 0.0
            continue
        x += step / 1000.0
        v = nv
    return np.array(pos), np.array(speed)


def _load(hour: np.ndarray, phase: float) -> np.ndarray:
    """Cell load 0..1 by hour of day: low at night, peaks in the morning and evening."""
    morning = np.exp(-(((hour - 8.5 - phase) / 1.5) ** 2))
    evening = np.exp(-(((hour - 18.0 - phase) / 2.0) ** 2))
    return np.clip(0.15 + 0.55 * morning + 0.5 * evening, 0.0, 0.95)


def line_day(line: Line, day: int) -> RailRoute:
    """Day ``day`` (>= 1) on ``line``: deterministic in (line seed, day)."""
    if day < 1:
        raise ValueError("days are numbered from 1")
    p = line.params
    rng = np.random.default_rng([p.seed, day, 0xDA7])
    pos, speed = _timetable(line, rng)
    hour0 = float(rng.uniform(6.0, 21.0))
    start = dt.datetime(2026, 1, 1) + dt.timedelta(days=day - 1, hours=hour0)
    n = len(pos)
    carriers = [_line_carrier(line, k, day, pos, speed, hour0, rng) for k in range(p.carriers)]
    params = RailParams(
        seed=p.seed,
        carriers=p.carriers,
        duration_s=n,
        speed_kmh=p.cruise_kmh,
        peak_dl_mbit=p.peak_dl_mbit,
        ul_share=p.ul_share,
        start=start.strftime("%Y.%m.%d_%H.%M.%S"),
        origin_lon_lat=p.origin_lon_lat,
    )
    return RailRoute(params, carriers, name=f"line:{p.seed}:day:{day}", line=line, day=day)


def _line_carrier(
    line: Line,
    k: int,
    day: int,
    pos: np.ndarray,
    speed: np.ndarray,
    hour0: float,
    rng: np.random.Generator,
) -> CarrierRoute:
    p = line.params
    name = f"rail{k}"
    sites = list(line.sites[k])
    if sites and rng.random() < p.p_site_down:  # one site off the air all day
        sites.pop(int(rng.integers(len(sites))))
    n = len(pos)
    km = np.array([s.km for s in sites])
    off = np.array([s.offset_km for s in sites])
    dist = np.sqrt((pos[:, None] - km[None, :]) ** 2 + off[None, :] ** 2)
    mean = -70.0 - 37.6 * np.log10(dist / 0.05) + np.array([s.bias_db for s in sites])[None, :]
    assert line.shadow is not None
    shadow = line.shadow[k][
        np.minimum((pos / line.shadow_step_km).astype(int), line.shadow.shape[1] - 1)
    ]
    extra = np.zeros(n)
    for a, b, db in line.cuttings:
        extra[(pos >= a) & (pos <= b)] -= db
    dark = np.zeros(n, dtype=bool)
    for a, b in line.dark(k):
        dark |= (pos >= a) & (pos <= b)
    # Serving cell: best mean signal by a hysteresis margin (layer-3 filtering removes
    # fast fading from the decision, so handover points stay where the sites put them)
    serving = int(np.argmax(mean[0]))
    cell = np.empty(n, dtype=np.int64)
    handovers: list[Handover] = []
    gaps: list[tuple[float, float]] = []
    ttt = float(rng.uniform(0.0, 0.5))  # time-to-trigger jitter of the day
    for i in range(n):
        best = int(np.argmax(mean[i]))
        if best != serving and mean[i, best] > mean[i, serving] + p.hysteresis_db and not dark[i]:
            at = i + ttt
            fail = rng.random() < sites[best].p_fail
            kind = "failure" if fail else "success"
            gap = gap_duration(rng, kind)
            handovers.append(
                Handover(at, kind, gap, sites[serving].cell_id, sites[best].cell_id, float(pos[i]))
            )
            gaps.append((at, min(at + gap, float(n))))
            serving = best
        cell[i] = serving
    serving_mean = mean[np.arange(n), cell] + shadow + extra
    no_service = dark | (serving_mean < p.min_rsrp_dbm)
    # each stretch without service is an outage, until shortly after service returns
    i = 0
    while i < n:
        if not no_service[i]:
            i += 1
            continue
        j = i
        while j < n and no_service[j]:
            j += 1
        a = i + float(rng.uniform(0.0, 1.0)) if i else 0.0
        b = min(float(j) + float(rng.uniform(*p.reattach_s)), float(n))
        c = sites[cell[i]].cell_id
        handovers.append(
            Handover(a, "outage", b - a, c, sites[cell[min(j, n - 1)]].cell_id, float(pos[i]))
        )
        gaps.append((a, b))
        i = j
    for _ in range(rng.poisson(p.extra_failures_per_hour * n / 3600.0)):
        at = float(rng.uniform(0, n))
        gap = gap_duration(rng, "failure")
        c = sites[cell[int(at)]].cell_id
        handovers.append(Handover(at, "failure", gap, c, c, float(pos[int(at)])))
        gaps.append((at, min(at + gap, float(n))))
    handovers.sort(key=lambda h: h.t)
    gaps.sort()
    fading = np.zeros(n)
    noise = rng.normal(0.0, p.fading_db * math.sqrt(1 - 0.7**2), n)
    for i in range(1, n):
        fading[i] = 0.7 * fading[i - 1] + noise[i]
    rsrp = serving_mean + fading
    hour = (hour0 + np.arange(n) / 3600.0) % 24.0
    load = np.clip(_load(hour, k * 0.3) + rng.normal(0.0, 0.05), 0.0, 0.95)
    quality = np.clip((rsrp + 120.0) / 45.0, 0.0, 1.0) ** 1.5
    capacity = p.peak_dl_mbit[k] * 1e6 * quality * (1.0 - 0.6 * load)
    capacity = np.maximum(capacity * rng.lognormal(0.0, 0.15, n), 200e3)
    ids = np.array([s.cell_id for s in sites])[cell]
    return _carrier_route(
        name, p.origin_lon_lat, p.ul_share, pos, speed, ids, rsrp, capacity, handovers, gaps
    )


LINE_SPEC = "line:<seed>:day:<n>"


@functools.lru_cache(maxsize=32)
def _cached_day(seed: int, carriers: int, day: int) -> RailRoute:
    return line_day(make_line(LineParams(seed=seed, carriers=carriers)), day)


def parse_spec(text: str) -> tuple[str, int, int]:
    """``<seed>``, ``rail:<seed>`` -> ("rail", seed, 0); ``line:<seed>:day:<n>`` ->
    ("line", seed, n). Raises ValueError with the accepted forms."""
    parts = text.strip().split(":")
    if len(parts) == 1 and parts[0].isdigit():
        return "rail", int(parts[0]), 0
    if len(parts) == 2 and parts[0] == "rail" and parts[1].isdigit():
        return "rail", int(parts[1]), 0
    if (
        len(parts) == 4
        and parts[0] == "line"
        and parts[2] == "day"
        and parts[1].isdigit()
        and parts[3].isdigit()
        and int(parts[3]) >= 1
    ):
        return "line", int(parts[1]), int(parts[3])
    raise ValueError(f"rail route {text!r}: expected <seed> or {LINE_SPEC} (days from 1)")


def route_from_spec(text: str, duration_s: int = 600, carriers: int = 3) -> RailRoute:
    """The route a spec names: ``<seed>`` draws a new route of ``duration_s`` seconds
    (another seed, another route); ``line:<seed>:day:<n>`` is day n on line ``seed``,
    as long as that day's run takes (the same line every day)."""
    kind, seed, day = parse_spec(text)
    if kind == "rail":
        return generate(RailParams(seed=seed, carriers=carriers, duration_s=duration_s))
    _check_carriers(carriers, LineParams.peak_dl_mbit)
    return _cached_day(seed, carriers, day)


EVENT_COLUMNS = ("Seconds", "Kind", "Gap", "FromCell", "ToCell", "Position")


def write_events(route: RailRoute, carrier: int, path: str | Path) -> None:
    """The carrier's disconnections and handovers as the path layer would time them:
    ``Seconds`` after the run's first row, ``Gap`` seconds, ``Position`` km. The context
    database reads this file next to the CSV (``rail0.events`` beside ``rail0.csv``)
    instead of inferring gaps from the one-second rows."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(EVENT_COLUMNS)
        for h in route.carriers[carrier].handovers:
            w.writerow(
                [
                    round(h.t, 3),
                    h.kind,
                    round(h.gap_s, 3),
                    h.from_cell,
                    h.to_cell,
                    round(h.position_km, 4),
                ]
            )
