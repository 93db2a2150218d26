"""Position along the line as a key: what each carrier did the last times it passed here.

A train crosses the same tunnels, coverage holes and handover points every day, so the
place it is at predicts what comes next better than the signal does (seed 001: a cell id
does not map to one place, and RSRP windows of the same place differ between days). The
history of a carrier is a set of *passes*: runs over the line in one direction, one
sample per second with the position (km along the line, from the context source's
odometer or GPS), speed, throughput, RTT and loss, and the disconnections of the pass
with where they started and how far the train went during them.

Per carrier and direction the passes are laid on position bins of ``bin_m`` metres
(:class:`Table`): per pass and bin the seconds spent there and their throughput, RTT and
loss. A :meth:`PositionHistory.forecast` at position x and speed v over the next T
seconds looks at the stretch the train will cover, x .. x + v T, in every pass that
covered it:

- *when does the carrier go dark, and for how long*: the first failure or outage that
  started in that stretch in each pass; its distance from x at today's speed is when,
  its length is its gap (a failure: the re-attachment takes its time wherever the train
  is) or the distance the train covered during it at today's speed (an outage: tunnels
  and holes are so many metres long);
- capacity, RTT and loss: the time-weighted means over the bins of the stretch, one value
  per pass; their mean and variance across passes are the estimate (the variance is what
  the MVUE fusion weighs it by, against the short-term estimate);
- the share of passes that went dark there, shrunk a little towards the carrier's rate
  of dark spells per km (one pass's worth), is the probability; the confidence is how
  much history there is and how much it agrees (see :class:`PositionForecast`).

Pure numpy, no store and no clock; :class:`contextdb.db.ContextDB` persists the passes.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from contextdb.errors import ContextDBError
from contextdb.records import CLASSES, FAILURE, OUTAGE, SUCCESS, HandoverEvent

POSITION_CELL = "@position"  # the store key (per carrier) under which passes are kept
REVERSE_M = 50.0  # a pass ends when the position goes back by this much
MAX_HOLE_S = 30  # or when this many seconds have no position
PRIOR_PASSES = 1.0  # weight of the carrier-wide rate in the dark probability
EPS_KM = 1e-6  # positions this close are the same place (float rounding)
THR_VAR_FLOOR = 1e3**2  # (1 kbit/s)^2: a unanimous history is not infinitely sure


@dataclass
class Pass:
    """One carrier's run over the line in one direction.

    ``u`` is the position in the pass's direction (``direction * km``, non-decreasing),
    one entry per second from ``t0``; ``dl`` bit/s (0 while down, nan unknown), ``rtt``
    s, ``loss`` fraction, ``speed`` km/h. Events: where each failure, outage or
    successful handover started (``ev_u``), how far the train went while it lasted
    (``ev_km``), its gap (s) and kind."""

    t0: float
    direction: int
    u: np.ndarray
    speed: np.ndarray
    dl: np.ndarray
    rtt: np.ndarray
    loss: np.ndarray
    ev_u: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ev_km: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ev_gap: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ev_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))

    def __len__(self) -> int:
        return len(self.u)


ARRAYS = ("u", "speed", "dl", "rtt", "loss", "ev_u", "ev_km", "ev_gap", "ev_kind")


def encode_passes(passes: list[Pass], origin: str = "") -> bytes:
    """One chunk: the passes of one carrier from one ingest (``.npz``, no pickles), with
    the gateway that measured them (``origin``, as in :func:`contextdb.codec.encode_chunk`)."""
    arrays: dict[str, np.ndarray] = {
        "origin": np.array([origin], dtype=str),
        "t0": np.array([p.t0 for p in passes], np.float64),
        "direction": np.array([p.direction for p in passes], np.int8),
        "n": np.array([len(p) for p in passes], np.int64),
        "n_ev": np.array([len(p.ev_u) for p in passes], np.int64),
    }
    for k in ARRAYS:
        parts = [getattr(p, k) for p in passes]
        arrays[k] = np.concatenate(parts) if parts else np.zeros(0)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode_passes(data: bytes, carrier: str) -> list[Pass]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        cut = np.concatenate([[0], np.cumsum(a["n"])])
        cut_ev = np.concatenate([[0], np.cumsum(a["n_ev"])])
        out = []
        for i in range(len(a["t0"])):
            s, e = int(cut[i]), int(cut[i + 1])
            es, ee = int(cut_ev[i]), int(cut_ev[i + 1])
            kinds = a["ev_kind"][es:ee].astype(np.uint8)
            if len(kinds) and int(kinds.max()) >= len(CLASSES):
                raise ValueError("unknown event kind")
            out.append(
                Pass(
                    float(a["t0"][i]),
                    1 if int(a["direction"][i]) >= 0 else -1,
                    *(a[k][s:e].astype(np.float64) for k in ("u", "speed", "dl", "rtt", "loss")),
                    *(a[k][es:ee].astype(np.float64) for k in ("ev_u", "ev_km", "ev_gap")),
                    kinds,
                )
            )
    except (ValueError, KeyError, OSError, IndexError, TypeError) as e:
        raise ContextDBError(f"unreadable position history of carrier {carrier!r}: {e}") from None
    return out


def split_passes(
    t0: float,
    pos_km: np.ndarray,
    speed: np.ndarray,
    dl: np.ndarray,
    rtt: np.ndarray,
    loss: np.ndarray,
    events: list[HandoverEvent],
) -> list[Pass]:
    """Cut one carrier's run (one second per entry from ``t0``) into passes: stretches
    with a known position that move one way (a reversal of REVERSE_M, or MAX_HOLE_S
    seconds without a position, ends one). Jitter backwards within a pass is flattened
    (the position never decreases within it); seconds without a position inside a pass
    take the last known one."""
    known = np.flatnonzero(np.isfinite(pos_km))
    spans: list[tuple[int, int, int]] = []  # (first, last, direction)
    if len(known):
        start = prev = ext_i = int(known[0])
        ext, direction = pos_km[start], 0
        for i in known[1:]:
            i = int(i)
            x = pos_km[i]
            if i - prev > MAX_HOLE_S:
                spans.append((start, prev, direction or 1))
                start, ext, ext_i, direction = i, x, i, 0
            elif direction == 0:
                if abs(x - pos_km[start]) * 1000.0 > REVERSE_M:
                    direction = 1 if x > pos_km[start] else -1
                    ext, ext_i = x, i
            elif (x - ext) * direction > 0:
                ext, ext_i = x, i
            elif (ext - x) * direction * 1000.0 > REVERSE_M:
                spans.append((start, ext_i, direction))
                start, ext, ext_i, direction = ext_i, pos_km[ext_i], ext_i, 0
            prev = i
        spans.append((start, prev, direction or 1))
    out = []
    for first, last, direction in spans:
        if last - first < 2:
            continue
        sl = slice(first, last + 1)
        u = direction * pos_km[sl]
        u = np.maximum.accumulate(np.where(np.isfinite(u), u, -np.inf))
        d = np.asarray(dl[sl], np.float64)
        p = Pass(t0 + first, direction, u, speed[sl].astype(np.float64), d, rtt[sl], loss[sl])
        ev = []
        for e in events:
            i = math.floor(e.t - t0) - first
            if 0 <= i <= last - first:
                j = min(math.floor(e.t + e.gap - t0) - first, last - first)
                ev.append((u[i], max(0.0, u[max(j, i)] - u[i]), e.gap, CLASSES.index(e.kind)))
        if ev:
            a = np.array(ev)
            p.ev_u, p.ev_km, p.ev_gap = a[:, 0], a[:, 1], a[:, 2]
            p.ev_kind = a[:, 3].astype(np.uint8)
        out.append(p)
    return out


@dataclass(frozen=True)
class PositionForecast:
    """One carrier over the next ``horizon_s`` seconds from ``pos_km`` at ``speed_kmh``.

    ``p_dark``: probability the carrier goes dark (a handover failure or an outage
    starts) within the horizon; ``dark_in_s``: seconds until it does (median over the
    passes that went dark; ``inf`` when none did), ``dark_in_spread_s`` their spread
    (half the inter-quartile range); ``dark_for_s``: how long it stays dark (median),
    ``dark_for_p90_s``; ``kind``: "failure" or "outage" (the majority; "" when none).
    ``throughput_mean`` / ``_var``: capacity over the stretch, bit/s, (bit/s)^2; RTT s
    and loss fraction likewise (variance ``inf`` when no pass measured them).
    ``passes``: how many past passes covered the stretch; ``confidence`` in 0..1:
    passes / (passes + 1) times the share of passes that agree with ``p_dark >= 0.5``.
    Units as in :class:`contextdb.db.Prediction`; never ``nan``."""

    carrier: str
    pos_km: float
    speed_kmh: float
    horizon_s: float
    p_dark: float
    dark_in_s: float
    dark_in_spread_s: float
    dark_for_s: float
    dark_for_p90_s: float
    kind: str
    throughput_mean: float
    throughput_var: float
    rtt_mean: float
    rtt_var: float
    loss_mean: float
    loss_var: float
    passes: int
    confidence: float


@dataclass
class Table:
    """Passes of one carrier and direction on bins of ``bin_km``: row = pass, column =
    bin from ``u0``. ``seconds`` spent in each bin, sums of throughput (and how many
    seconds knew it), RTT and loss; ``first``/``last`` bin each pass covered."""

    bin_km: float
    u0: float
    seconds: np.ndarray
    dl_sum: np.ndarray
    dl_n: np.ndarray
    rtt_sum: np.ndarray
    rtt_n: np.ndarray
    loss_sum: np.ndarray
    loss_n: np.ndarray
    first: np.ndarray
    last: np.ndarray
    ev_pass: np.ndarray  # failures and outages only, ordered by (pass, start)
    ev_u: np.ndarray
    ev_km: np.ndarray
    ev_gap: np.ndarray
    ev_kind: np.ndarray
    dark_per_km: float

    def bin_of(self, u: float) -> int:
        return math.floor((u - self.u0) / self.bin_km)


def build_table(passes: list[Pass], bin_km: float) -> Table | None:
    if not passes:
        return None
    u0 = math.floor(min(float(p.u[0]) for p in passes) / bin_km) * bin_km
    width = max(math.floor((float(p.u[-1]) - u0) / bin_km) for p in passes) + 1
    shape = (len(passes), width)
    z = {k: np.zeros(shape) for k in ("seconds", "dl_sum", "dl_n", "rtt_sum", "rtt_n")}
    z["loss_sum"], z["loss_n"] = np.zeros(shape), np.zeros(shape)
    first, last = np.zeros(len(passes), np.int64), np.zeros(len(passes), np.int64)
    ev: list[tuple[int, float, float, float, int]] = []
    dark, km = 0, 0.0
    for r, p in enumerate(passes):
        b = np.floor((p.u - u0) / bin_km).astype(np.int64)
        first[r], last[r] = b[0], b[-1]
        np.add.at(z["seconds"][r], b, 1.0)
        for name, values in (("dl", p.dl), ("rtt", p.rtt), ("loss", p.loss)):
            ok = np.isfinite(values)
            np.add.at(z[f"{name}_sum"][r], b[ok], values[ok])
            np.add.at(z[f"{name}_n"][r], b[ok], 1.0)
        km += float(p.u[-1] - p.u[0])
        for i in range(len(p.ev_u)):
            if CLASSES[int(p.ev_kind[i])] != SUCCESS:
                ev.append(
                    (r, float(p.ev_u[i]), float(p.ev_km[i]), float(p.ev_gap[i]), int(p.ev_kind[i]))
                )
                dark += 1
    ev.sort()
    a = np.array(ev, dtype=np.float64).reshape(-1, 5)
    return Table(
        bin_km,
        u0,
        **z,
        first=first,
        last=last,
        ev_pass=a[:, 0].astype(np.int64),
        ev_u=a[:, 1],
        ev_km=a[:, 2],
        ev_gap=a[:, 3],
        ev_kind=a[:, 4].astype(np.uint8),
        dark_per_km=dark / km if km > 0 else 0.0,
    )


def _mean_var(values: np.ndarray, floor: float) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return 0.0, math.inf
    mean = float(v.mean())
    var = float(v.var(ddof=1)) if len(v) > 1 else 0.0
    return mean, max(var, floor)


class PositionHistory:
    """Every carrier's passes, and the bin tables built from them on first use."""

    def __init__(self, bin_m: float = 50.0) -> None:
        self.bin_km = bin_m / 1000.0
        self._passes: dict[tuple[str, int], list[Pass]] = {}
        self._tables: dict[tuple[str, int], Table | None] = {}

    def add(self, carrier: str, passes: list[Pass]) -> None:
        for p in passes:
            key = (carrier, p.direction)
            self._passes.setdefault(key, []).append(p)
            self._tables.pop(key, None)

    def carriers(self) -> list[str]:
        return sorted({c for c, _ in self._passes})

    def passes(self, carrier: str) -> list[Pass]:
        return [p for (c, _), ps in sorted(self._passes.items()) if c == carrier for p in ps]

    def table(self, carrier: str, direction: int) -> Table | None:
        key = (carrier, direction)
        if key not in self._tables:
            self._tables[key] = build_table(self._passes.get(key, []), self.bin_km)
        return self._tables[key]

    def forecast(
        self,
        carrier: str,
        pos_km: float,
        speed_kmh: float,
        horizon_s: float,
        direction: int = 1,
    ) -> PositionForecast | None:
        """When does ``carrier`` go dark in the next ``horizon_s`` seconds, for how long,
        and what does it carry meanwhile; None when no past pass covered the stretch
        (or an input is not a finite number). ``direction``: +1 when the position
        grows as the train goes, -1 otherwise. A stopped train (speed 0) looks only at
        the bin it is in."""
        if not (math.isfinite(pos_km) and math.isfinite(speed_kmh) and horizon_s > 0):
            return None
        if direction not in (1, -1):
            raise ValueError("direction must be +1 or -1")
        tab = self.table(carrier, direction)
        if tab is None:
            return None
        u = direction * pos_km
        v = max(speed_kmh, 0.0) / 3600.0  # km/s
        reach = v * horizon_s
        # the seconds ahead are where the train will be 1 .. T seconds from now
        b0, b1 = tab.bin_of(u + v * min(1.0, horizon_s) + EPS_KM), tab.bin_of(u + reach + EPS_KM)
        here = tab.bin_of(u + EPS_KM)
        rows = np.flatnonzero((tab.first <= here) & (tab.last >= b1))
        if len(rows) == 0:
            return None
        sl = slice(b0, b1 + 1)

        def per_pass(total: np.ndarray, count: np.ndarray) -> np.ndarray:
            s, c = total[rows, sl].sum(axis=1), count[rows, sl].sum(axis=1)
            out = np.full(len(rows), np.nan)
            np.divide(s, c, out=out, where=c > 0)
            return out

        thr_mean, thr_var = _mean_var(per_pass(tab.dl_sum, tab.dl_n), 0.0)
        thr_var = max(thr_var, (0.01 * thr_mean) ** 2, THR_VAR_FLOOR)
        rtt_mean, rtt_var = _mean_var(per_pass(tab.rtt_sum, tab.rtt_n), 1e-6)
        loss_mean, loss_var = _mean_var(per_pass(tab.loss_sum, tab.loss_n), 1e-4)
        # the first dark spell of each covering pass that starts in (u, u + reach]
        ahead = (tab.ev_u > u + EPS_KM) & (tab.ev_u <= u + reach + EPS_KM)
        sel = np.isin(tab.ev_pass, rows) & ahead
        idx = np.flatnonzero(sel)
        if len(idx):
            _, first_of_pass = np.unique(tab.ev_pass[idx], return_index=True)
            idx = idx[first_of_pass]
        hits = len(idx)
        n = len(rows)
        prior = min(1.0, tab.dark_per_km * max(reach, tab.bin_km))
        p_dark = (hits + PRIOR_PASSES * prior) / (n + PRIOR_PASSES)
        if hits:
            when = (tab.ev_u[idx] - u) / v if v > 0 else np.zeros(hits)
            kinds = tab.ev_kind[idx]
            outage = kinds == CLASSES.index(OUTAGE)
            spatial = tab.ev_km[idx] / v if v > 0 else tab.ev_gap[idx]
            length = np.where(outage & (tab.ev_km[idx] > 0), spatial, tab.ev_gap[idx])
            q1, med, q3 = np.percentile(when, [25, 50, 75])
            dark_in, spread = float(med), float(q3 - q1) / 2.0
            dark_for, dark_p90 = (float(x) for x in np.percentile(length, [50, 90]))
            votes = Counter(CLASSES[int(k)] for k in kinds)
            kind = OUTAGE if votes[OUTAGE] >= votes[FAILURE] else FAILURE
        else:
            dark_in, spread, dark_for, dark_p90, kind = math.inf, 0.0, 0.0, 0.0, ""
        agree = max(hits, n - hits) / n
        return PositionForecast(
            carrier=carrier,
            pos_km=pos_km,
            speed_kmh=speed_kmh,
            horizon_s=float(horizon_s),
            p_dark=float(p_dark),
            dark_in_s=dark_in,
            dark_in_spread_s=spread,
            dark_for_s=dark_for,
            dark_for_p90_s=dark_p90,
            kind=kind,
            throughput_mean=thr_mean,
            throughput_var=thr_var,
            rtt_mean=rtt_mean,
            rtt_var=rtt_var,
            loss_mean=loss_mean,
            loss_var=loss_var,
            passes=n,
            confidence=n / (n + 1.0) * agree,
        )


class ReferenceTrack:
    """A GPS track that positions are measured along (for logs without an odometer).

    ``project`` maps latitude/longitude to km along the track: the cumulative length at
    the nearest track point, or nan when that point is more than ``max_offset_m`` away
    (a road the track does not take). Local equirectangular metres: fine over a city."""

    def __init__(self, lat: np.ndarray, lon: np.ndarray, max_offset_m: float = 50.0) -> None:
        ok = np.isfinite(lat) & np.isfinite(lon)
        if ok.sum() < 2:
            raise ContextDBError("reference track: fewer than two positions")
        self.lat0 = float(np.mean(lat[ok]))
        self.xy = self._xy(lat[ok], lon[ok])
        step = np.sqrt((np.diff(self.xy, axis=0) ** 2).sum(axis=1))
        self.km = np.concatenate([[0.0], np.cumsum(step)]) / 1000.0
        self.max_offset_m = max_offset_m

    def _xy(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        k = 111_320.0
        return np.column_stack([lon * k * math.cos(math.radians(self.lat0)), lat * k])

    def project(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        out = np.full(len(lat), np.nan)
        ok = np.flatnonzero(np.isfinite(lat) & np.isfinite(lon))
        pts = self._xy(np.asarray(lat)[ok], np.asarray(lon)[ok])
        for s in range(0, len(pts), 512):
            d2 = ((pts[s : s + 512, None, :] - self.xy[None, :, :]) ** 2).sum(axis=2)
            j = np.argmin(d2, axis=1)
            near = d2[np.arange(len(j)), j] <= self.max_offset_m**2
            out[ok[s : s + 512][near]] = self.km[j[near]]
        return out
