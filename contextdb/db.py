"""The context database: ingest into a store, keep per-cell indexes, predict.

``ContextDB.predict(carrier, cell, rsrp_window, now)`` is the long-term source the
scheduler consumes. Carriers are matched independently: a query only ever looks at
windows of the same carrier and cell.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import asdict, dataclass, field

import numpy as np

from contextdb.codec import decode_chunk, encode_chunk
from contextdb.config import ContextDBConfig
from contextdb.errors import ContextDBError
from contextdb.index import CellIndex, throughput_coord
from contextdb.position import (
    POSITION_CELL,
    PositionForecast,
    PositionHistory,
    decode_passes,
    encode_passes,
)
from contextdb.records import CLASSES, HandoverEvent, Sample
from contextdb.store import Store
from contextdb.windows import Windows, process

# Parameters that shape what is stored; a store only accepts data cut the same way.
META_KEYS = ("window_s", "overlap", "lookahead_s", "fill_gap_s", "success_max_s", "failure_max_s")
FORMAT = 1
TRACK_MAX = 20000  # windows per carrier kept for track() (a day at one window per 4 s)

# Variance floors keep a unanimous neighbourhood from claiming infinite certainty when the
# scheduler weights sources by inverse variance.
THR_VAR_FLOOR_REL = 0.01  # (1 % of the mean)^2
THR_VAR_FLOOR = 1e3**2  # (1 kbit/s)^2
RTT_VAR_FLOOR = 1e-3**2  # (1 ms)^2
LOSS_VAR_FLOOR = 1e-4
PRIOR_WEIGHT = 64.0
# Neighbours weigh 1 / (distance + WEIGHT_DISTANCE) in the throughput median: nearer ones
# count more, but none dominates (chosen on the December drives and the rail routes).
WEIGHT_DISTANCE = 10.0


@dataclass(frozen=True)
class Prediction:
    """What a carrier will likely deliver over the next ``lookahead_s`` seconds.

    Units: bit/s, seconds, fraction 0..1. ``confidence`` is N/K: of the K nearest stored
    windows, the share whose RSRP is within the match threshold. ``throughput_mean`` is
    the neighbours' distance-weighted median when the query gave the recent throughput
    (their mean otherwise); the name stays for the scheduler. When no neighbour measured RTT or
    loss (the logs ping only every ~13 s), that metric's variance is ``inf`` (weight 0
    in an inverse-variance fusion) and its mean 0.0, a placeholder to ignore; never
    ``nan``, which would poison a fused estimate.
    """

    throughput_mean: float
    throughput_var: float
    rtt_mean: float
    rtt_var: float
    loss_mean: float
    loss_var: float
    confidence: float
    p_disconnect: float
    expected_gap: float
    carrier: str = ""
    cell: str = ""
    n_neighbors: int = 0
    nearest_distance: float = math.nan
    now: float = 0.0
    dark_in_s: float = math.inf  # the cell key does not say when; the position key does


@dataclass
class IngestReport:
    samples: int = 0
    windows: int = 0
    events: Counter = field(default_factory=Counter)
    counts: Counter = field(default_factory=Counter)


@dataclass
class _Cell:
    index: CellIndex
    events: list[HandoverEvent]
    loaded: int = 0  # chunks of the store already in memory
    disconnected: int = 0  # windows followed by a failure or outage

    def add(self, windows: Windows, events: list[HandoverEvent], merge: bool = True) -> None:
        self.index.add(windows, merge)
        self.events.extend(events)
        self.disconnected += int((windows.gap > 0).sum())
        self.loaded += 1

    def base_rate(self) -> float:
        return self.disconnected / len(self.index) if len(self.index) else 0.0


def _mean_var(values: np.ndarray, floor: float) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    n = len(v)
    if n == 0:
        return 0.0, math.inf
    mean = float(np.add.reduce(v)) / n
    var = float(np.add.reduce((v - mean) ** 2)) / (n - 1) if n > 1 else 0.0
    return mean, max(var, floor)


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The smallest value at which the cumulative weight reaches half the total."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, 0.5 * cum[-1])])


class ContextDB:
    def __init__(
        self,
        store: Store,
        cfg: ContextDBConfig | None = None,
        preload: bool = True,
        origin: str = "",
    ) -> None:
        """Open a database on ``store``; ``preload`` loads every cell now (see
        :meth:`predict`: queries never read the store). ``origin`` names this gateway in
        the chunks it writes, so that :func:`contextdb.sync.sync` can tell its own
        history from what it pulled from the fleet."""
        self.store = store
        self.origin = origin
        self.cfg = cfg or ContextDBConfig()
        self._cells: dict[tuple[str, str], _Cell] = {}
        self._touched: set[tuple[str, str]] = set()
        self.positions = PositionHistory(self.cfg.position_bin_m)
        self._positions_loaded: dict[str, int] = {}  # chunks per carrier in memory
        # (end second, lat, lon, bit/s that followed) of the windows this process added
        self._track: dict[str, deque[tuple[float, float, float, float]]] = {}
        want = {"format": FORMAT, **{k: getattr(self.cfg, k) for k in META_KEYS}}
        have = store.get_meta()
        if have is None:
            store.set_meta(want)
            have = store.get_meta() or want
        if have != want:
            diff = ", ".join(
                f"{k}={have.get(k)!r} (configured {want[k]!r})"
                for k in want
                if have.get(k) != want[k]
            )
            raise ContextDBError(f"store was built with other parameters: {diff}")
        if preload:
            self.refresh()

    # -- ingest ----------------------------------------------------------------------

    def ingest(
        self, samples: list[Sample], events: list[HandoverEvent] | None = None
    ) -> IngestReport:
        """Cut samples (any carriers, one or more runs) into windows and events, store
        them in one commit and add them to the in-memory indexes. ``events``: exactly
        timed disconnections, used instead of those inferred from the samples.

        One carrier's samples form one timeline: drives of the same carrier logged at
        overlapping times (two vehicles, two simulations) must be ingested in separate
        calls, or their seconds are merged."""
        report = IngestReport(samples=len(samples))
        for carrier, result in process(samples, self.cfg, events).items():
            report.counts.update(result.counts)
            self.add(carrier, result.windows, result.events, commit=False)
            if result.passes:
                self.store.append(carrier, POSITION_CELL, encode_passes(result.passes, self.origin))
                self._touched.add((carrier, POSITION_CELL))
            report.windows += len(result.windows)
            report.events.update(e.kind for e in result.events)
        self.commit()
        return report

    def add(
        self, carrier: str, windows: Windows, events: list[HandoverEvent], commit: bool = True
    ) -> None:
        """Store windows and events of one carrier (grouped into one chunk per cell)."""
        self._remember(carrier, windows)
        by_cell = windows.by_cell()
        ev_by_cell: dict[str, list[HandoverEvent]] = {}
        for e in events:
            ev_by_cell.setdefault(e.cell, []).append(e)
        for cell in sorted(set(by_cell) | set(ev_by_cell)):
            w = by_cell.get(cell) or Windows.concat([], self.cfg.window_s)
            ev = ev_by_cell.get(cell, [])
            self.store.append(carrier, cell, encode_chunk(w, ev, self.origin))
            self._touched.add((carrier, cell))
        if commit:
            self.commit()

    def _remember(self, carrier: str, windows: Windows) -> None:
        placed = np.flatnonzero(np.isfinite(windows.lat) & np.isfinite(windows.lon))
        if not len(placed):
            return
        ring = self._track.setdefault(carrier, deque(maxlen=TRACK_MAX))
        cols = (windows.t, windows.lat, windows.lon, windows.thr)
        rows = zip(*(c[placed].tolist() for c in cols), strict=True)
        ring.extend(sorted(rows))

    def track(self, since: float) -> dict[str, list[tuple[float, float, float, float]]]:
        """Where the vehicle was and what each carrier delivered there: per carrier, the
        ``(t, lat, lon, thr)`` of the windows with a position that this process added
        (ingested or learnt live) and whose end ``t`` is at or after ``since``, oldest
        first; ``thr`` is bit/s over the window's look-ahead (nan: unknown). Windows
        loaded from other writers are not the vehicle's track and are left out; the last
        :data:`TRACK_MAX` windows per carrier are kept."""
        out = {}
        for carrier, ring in self._track.items():
            rows = [r for r in ring if r[0] >= since]
            if rows:
                out[carrier] = rows
        return out

    def commit(self) -> None:
        """Commit the store, then load the touched cells back from it. The store is the
        one source of truth: memory holds a prefix of each cell's chunk list, whoever
        (this process, another writer, another gateway) appended them."""
        self.store.commit()
        touched, self._touched = self._touched, set()
        for carrier, cell in sorted(touched):
            if cell == POSITION_CELL:
                self._load_positions(carrier)
                continue
            self._entry(carrier, cell)
            self._load(carrier, cell, self._cells[(carrier, cell)])

    # -- loading -----------------------------------------------------------------------

    def _entry(self, carrier: str, cell: str) -> _Cell:
        key = (carrier, cell)
        entry = self._cells.get(key)
        if entry is None:
            index = CellIndex(self.cfg.window_s, self.cfg.throughput_match_db)
            entry = self._cells[key] = _Cell(index, [])
            self._load(carrier, cell, entry)
        return entry

    def _load(self, carrier: str, cell: str, entry: _Cell) -> int:
        new = self.store.chunks(carrier, cell, entry.loaded)
        for raw in new:
            entry.add(*decode_chunk(raw, carrier, cell), merge=False)
        entry.index.settle()
        return len(new)

    def _load_positions(self, carrier: str) -> int:
        start = self._positions_loaded.get(carrier, 0)
        new = self.store.chunks(carrier, POSITION_CELL, start)
        for raw in new:
            self.positions.add(carrier, decode_passes(raw, carrier))
        self._positions_loaded[carrier] = start + len(new)
        return len(new)

    def refresh(self) -> int:
        """Load every cell and whatever other writers (processes, gateways of the fleet)
        appended since the last call; returns the number of new chunks. Call it off the
        data path, e.g. every few tens of seconds."""
        n = 0
        for carrier, cell in self.store.cells():
            if cell == POSITION_CELL:
                n += self._load_positions(carrier)
            elif (carrier, cell) not in self._cells:
                self._entry(carrier, cell)
                n += self._cells[(carrier, cell)].loaded
            else:
                n += self._load(carrier, cell, self._cells[(carrier, cell)])
        return n

    # -- query -------------------------------------------------------------------------

    def predict(
        self,
        carrier: str,
        cell: str | None,
        rsrp_window,
        now: float = 0.0,
        recent_dl_bps: float | None = None,
    ) -> Prediction | None:
        """Predict the next ``lookahead_s`` seconds of one carrier, or None when there is
        nothing to go on: unknown cell, too few stored windows, a window shorter than W
        or with unknown values. A longer window is cut to its last W seconds.

        ``recent_dl_bps``, the throughput the carrier delivered in the last second (bit/s;
        None or nan when unknown), makes the prediction much better: stored windows are
        then matched on it as well as on the RSRP, and the throughput predicted is the
        median of what followed the K nearest. Without it the match is on RSRP alone and
        the throughput is the neighbours' mean, which on the bundled drives is worse than
        simply repeating the last value (docs/contextdb.md, "Does the history help?").

        Only memory is read: the scheduler calls this on the data path, and a fleet
        store may be a cellular round trip away (or unreachable). What other writers
        added arrives with :meth:`refresh`."""
        if cell is None:
            return None
        entry = self._cells.get((carrier, cell))
        if entry is None:
            return None
        w = self.cfg.window_s
        q = np.asarray(rsrp_window, dtype=np.float64)
        if q.ndim != 1 or len(q) < w or not np.isfinite(q[-w:]).all():
            return None
        if len(entry.index) < max(1, self.cfg.min_neighbors):
            return None
        recent = None
        if (
            recent_dl_bps is not None
            and math.isfinite(recent_dl_bps)
            and self.cfg.throughput_match_db > 0
        ):
            recent = max(0.0, float(recent_dl_bps))
        dist, perf = entry.index.nearest(q[-w:], self.cfg.k, recent)
        thr_mean, thr_var = _mean_var(perf["thr"], 0.0)
        if recent is not None:
            # The median, not the mean: a few neighbours followed by a burst or a stall
            # pull the mean far off; on the drives the median has the smaller error.
            thr_mean = weighted_median(perf["thr"], 1.0 / (dist + WEIGHT_DISTANCE))
            # confidence counts RSRP distance only: the throughput term is not a match
            # of the signal, and it would put nearly every neighbour past the threshold
            extra = perf["coord"] - throughput_coord(recent, self.cfg.throughput_match_db)
            rsrp_dist = np.sqrt(np.maximum(dist**2 - extra**2, 0.0))
        else:
            rsrp_dist = dist
        thr_var = max(thr_var, (THR_VAR_FLOOR_REL * thr_mean) ** 2, THR_VAR_FLOOR)
        rtt_mean, rtt_var = _mean_var(perf["rtt"], RTT_VAR_FLOOR)
        loss_mean, loss_var = _mean_var(perf["loss"], LOSS_VAR_FLOOR)
        gaps = perf["gap"]
        hit = gaps > 0
        # The share of neighbours followed by a disconnection, shrunk towards the cell's
        # base rate (a Beta prior worth PRIOR_WEIGHT windows): K is small and
        # disconnections are rare, so the raw share alone is noisy.
        p_disc = (hit.sum() + PRIOR_WEIGHT * entry.base_rate()) / (len(gaps) + PRIOR_WEIGHT)
        return Prediction(
            throughput_mean=thr_mean,
            throughput_var=thr_var,
            rtt_mean=rtt_mean,
            rtt_var=rtt_var,
            loss_mean=loss_mean,
            loss_var=loss_var,
            confidence=float((rsrp_dist <= self.cfg.distance_threshold()).sum()) / self.cfg.k,
            p_disconnect=float(p_disc),
            expected_gap=float(gaps[hit].mean()) if hit.any() else 0.0,
            carrier=carrier,
            cell=cell,
            n_neighbors=len(dist),
            nearest_distance=float(dist[0]),
            now=now,
        )

    def forecast(
        self,
        carrier: str,
        pos_km: float,
        speed_kmh: float,
        horizon_s: float,
        direction: int = 1,
    ) -> PositionForecast | None:
        """In the next ``horizon_s`` seconds from ``pos_km`` (km along the line) at
        ``speed_kmh``: when ``carrier`` goes dark, for how long, and what it carries
        (:class:`contextdb.position.PositionForecast`); None without history there.
        Memory only, like :meth:`predict`."""
        return self.positions.forecast(carrier, pos_km, speed_kmh, horizon_s, direction)

    # -- statistics ----------------------------------------------------------------------

    def stats(self) -> dict:
        """Per carrier and cell: windows, mean look-ahead throughput, handover counts by
        class and gap percentiles. Loads everything."""
        self.refresh()
        out: dict = {
            "parameters": {k: getattr(self.cfg, k) for k in META_KEYS},
            "carriers": {},
            "positions": {},
        }
        for carrier in self.positions.carriers():
            passes = self.positions.passes(carrier)
            kinds = Counter(CLASSES[int(k)] for p in passes for k in p.ev_kind)
            out["positions"][carrier] = {
                "passes": len(passes),
                "km": round(sum(float(p.u[-1] - p.u[0]) for p in passes), 3),
                "handovers": {k: kinds[k] for k in CLASSES},
            }
        for (carrier, cell), entry in sorted(self._cells.items()):
            perf = entry.index.all_perf()
            kinds = Counter(e.kind for e in entry.events)
            gaps = {
                kind: [e.gap for e in entry.events if e.kind == kind]
                for kind in CLASSES
                if kinds[kind]
            }
            row = {
                "windows": len(entry.index),
                "throughput_mean_bps": float(np.nanmean(perf["thr"])) if len(perf["thr"]) else None,
                "handovers": {k: kinds[k] for k in CLASSES},
                "gap_s": {
                    k: {
                        "p50": float(np.percentile(g, 50)),
                        "p90": float(np.percentile(g, 90)),
                        "max": float(max(g)),
                    }
                    for k, g in gaps.items()
                },
            }
            out["carriers"].setdefault(carrier, {})[cell] = row
        return out


def prediction_dict(p: Prediction) -> dict:
    return asdict(p)
