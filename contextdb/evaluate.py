"""Does the history help? Train on some runs, predict held-out runs, compare baselines.

For every window of the test runs that has a known look-ahead throughput, these
predictions of that throughput are scored by mean absolute error:

- ``contextdb``: the K-nearest-neighbour prediction as the scheduler gets it when it
  passes the carrier's last-second throughput (windows of the same carrier and cell in
  the training runs, matched on RSRP and that throughput; distance-weighted median of
  what followed);
- ``rsrp only``: the same query without the recent throughput (matched on RSRP alone,
  mean of what followed): what the database predicts for a caller that cannot give it;
- ``last value``: the throughput of the window's last second;
- ``cell mean``: the mean look-ahead throughput of all training windows of that cell;
- ``fused``: what the scheduler does with both sources, the minimum-variance (inverse
  variance weighted) mean of the last value (variance: that of the window's own seconds)
  and the contextdb prediction (variance: ``throughput_var``).

Only windows for which all exist are scored, so the comparison is like for like;
how many were skipped (cell unseen in training, idle last second) is reported. The
disconnection forecast is scored with the Brier score of ``p_disconnect`` (both kinds of
query) against the cell's base rate of disconnections in training.

With ``position=True`` the position along the line is a key too (:mod:`contextdb.position`;
runs without an odometer are placed on a reference track, the longest training run's
GPS track). On the windows that also have a position forecast (:class:`PositionResult`):

- ``position``: the capacity the passes over the stretch ahead carried (x .. x + v L at
  the window's speed), ``position fused``: its MVUE with the last value (variances: the
  spread across passes, the window's own), beside the other predictors on the same
  windows;
- the Brier score of ``p_dark`` against the cell base rate and its skill score
  1 - Brier / Brier(cell base rate);
- dark spells longer than ``LONG_GAP_S``: asked ``lookahead_s`` seconds before one starts
  (horizon twice that), is it forecast (``p_dark >= 0.5``) to start within ``START_TOL_S``
  of when it did?
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from contextdb.config import ContextDBConfig
from contextdb.db import THR_VAR_FLOOR, ContextDB
from contextdb.position import ReferenceTrack
from contextdb.records import SUCCESS, HandoverEvent, Sample
from contextdb.store import MemoryStore
from contextdb.windows import RunResult, process

PREDICTORS = ("contextdb", "rsrp only", "last value", "cell mean", "fused")
POSITION_PREDICTORS = ("position", "position fused", "last value", "contextdb", "fused")
LONG_GAP_S = 2.0
START_TOL_S = 2.0


@dataclass
class EvalResult:
    train_windows: int = 0
    test_windows: int = 0
    scored: int = 0
    skipped: dict = field(default_factory=dict)
    mae_bps: dict = field(default_factory=dict)
    mae_confident_bps: dict = field(default_factory=dict)
    confident: int = 0
    brier: dict = field(default_factory=dict)
    position: PositionResult | None = None


@dataclass
class PositionResult:
    """The position key's scores (see the module docstring)."""

    scored: int = 0
    no_forecast: int = 0
    projected: bool = False  # positions from GPS on a reference track, not an odometer
    mae_bps: dict = field(default_factory=dict)
    brier: dict = field(default_factory=dict)
    brier_skill: float = math.nan
    long_gaps: int = 0
    long_gaps_forecast: int = 0
    start_error_s: list = field(default_factory=list)

    @property
    def long_gap_share(self) -> float:
        return self.long_gaps_forecast / self.long_gaps if self.long_gaps else math.nan


def _parts(run) -> tuple[list[Sample], list[HandoverEvent] | None]:
    """A run is a list of samples, or anything with ``samples`` and ``events``."""
    if hasattr(run, "samples"):
        return run.samples, getattr(run, "events", None)
    return run, None


def _place(runs: list, track: ReferenceTrack) -> list:
    """Runs whose samples carry the position along ``track`` (from their GPS)."""
    import dataclasses

    out = []
    for run in runs:
        samples, events = _parts(run)
        lat = np.array([s.lat for s in samples])
        lon = np.array([s.lon for s in samples])
        pos = track.project(lat, lon)
        placed = [
            dataclasses.replace(s, pos_km=float(p)) for s, p in zip(samples, pos, strict=True)
        ]
        out.append(_Run(placed, events))
    return out


@dataclass
class _Run:
    samples: list[Sample]
    events: list[HandoverEvent] | None = None


def _fuse(short: float, short_var: float, long: float, long_var: float) -> float:
    short_var = max(short_var, THR_VAR_FLOOR) if np.isfinite(short_var) else np.inf
    if not np.isfinite(short_var):
        return long
    ws, wl = 1.0 / short_var, 1.0 / long_var
    return (ws * short + wl * long) / (ws + wl)


def evaluate(
    train: list, test: list, cfg: ContextDBConfig | None = None, position: bool = False
) -> EvalResult:
    """``train`` and ``test`` are lists of runs (one list of samples per drive, or
    objects with ``samples`` and exactly timed ``events``, like a
    :class:`~contextdb.traces.TraceRun`): runs are cut separately, so two drives logged
    at overlapping times stay apart. ``position``: score the position key too."""
    cfg = cfg or ContextDBConfig()
    db = ContextDB(MemoryStore(), cfg)
    res = EvalResult()
    projected = False
    if position and not any(np.isfinite(s.pos_km) for r in train for s in _parts(r)[0]):
        longest = max((_parts(r)[0] for r in train), key=len, default=[])
        lat = np.array([s.lat for s in longest])
        lon = np.array([s.lon for s in longest])
        track = ReferenceTrack(lat, lon)
        train, test, projected = _place(train, track), _place(test, track), True
    for run in train:
        res.train_windows += db.ingest(*_parts(run)).windows
    cell_mean: dict[tuple[str, str], float] = {}
    cell_rate: dict[tuple[str, str], float] = {}
    for (carrier, cell), entry in db._cells.items():
        perf = entry.index.all_perf()
        if len(perf["thr"]):
            cell_mean[(carrier, cell)] = float(np.mean(perf["thr"]))
            cell_rate[(carrier, cell)] = float(np.mean(perf["gap"] > 0))
    rows = []
    unseen = idle = 0
    results = []
    for run in test:
        samples, events = _parts(run)
        results.extend(process(samples, cfg, events).items())
    for carrier, result in results:
        w = result.windows
        res.test_windows += len(w)
        for i in range(len(w)):
            key = (carrier, w.cell[i])
            if key not in cell_mean or db.predict(carrier, w.cell[i], w.rsrp[i]) is None:
                unseen += 1
                continue
            if not np.isfinite(w.last[i]):
                idle += 1
                continue
            p = db.predict(carrier, w.cell[i], w.rsrp[i], float(w.t[i]), float(w.last[i]))
            r = db.predict(carrier, w.cell[i], w.rsrp[i], float(w.t[i]))
            rows.append(
                {
                    "truth": w.thr[i],
                    "contextdb": p.throughput_mean,
                    "rsrp only": r.throughput_mean,
                    "last value": w.last[i],
                    "cell mean": cell_mean[key],
                    "fused": _fuse(w.last[i], w.recent_var[i], p.throughput_mean, p.throughput_var),
                    "confidence": p.confidence,
                    "disconnected": float(w.gap[i] > 0),
                    "p contextdb": p.p_disconnect,
                    "p rsrp only": r.p_disconnect,
                    "p cell base rate": cell_rate[key],
                }
            )
    res.skipped = {"cell unseen in training": unseen, "last second idle": idle}
    res.scored = len(rows)
    if position:
        res.position = _score_position(db, results, cell_rate, cfg)
        res.position.projected = projected
    if not rows:
        return res
    a = {name: np.array([row[name] for row in rows]) for name in rows[0]}

    def mae(sel: np.ndarray) -> dict:
        return {n: float(np.abs(a[n][sel] - a["truth"][sel]).mean()) for n in PREDICTORS}

    res.mae_bps = mae(np.ones(len(rows), bool))
    confident = a["confidence"] >= 0.5
    res.confident = int(confident.sum())
    if confident.any():
        res.mae_confident_bps = mae(confident)
    res.brier = {
        n: float(((a["p " + n] - a["disconnected"]) ** 2).mean())
        for n in ("contextdb", "rsrp only", "cell base rate")
    }
    res.brier["observed rate"] = float(a["disconnected"].mean())
    return res


def _pass_at(result: RunResult, t: float):
    """The pass of ``result`` that second ``t`` belongs to, and its index there."""
    for p in result.passes:
        i = math.floor(t - p.t0)
        if 0 <= i < len(p):
            return p, i
    return None, -1


def _score_position(
    db: ContextDB, results: list[tuple[str, RunResult]], cell_rate: dict, cfg: ContextDBConfig
) -> PositionResult:
    out = PositionResult()
    la = cfg.lookahead_s
    rows = []
    for carrier, result in results:
        w = result.windows
        for i in range(len(w)):
            key = (carrier, w.cell[i])
            if key not in cell_rate or not np.isfinite(w.last[i]):
                continue  # not scored by the cell key either
            c = db.predict(carrier, w.cell[i], w.rsrp[i], float(w.t[i]), float(w.last[i]))
            p, j = _pass_at(result, float(w.t[i]))
            f = None
            if p is not None:  # off the line (no position): no forecast
                f = db.forecast(carrier, p.direction * p.u[j], p.speed[j], la, p.direction)
            if f is None or c is None:
                out.no_forecast += 1
                continue
            rows.append(
                {
                    "truth": w.thr[i],
                    "position": f.throughput_mean,
                    "position fused": _fuse(
                        w.last[i], w.recent_var[i], f.throughput_mean, f.throughput_var
                    ),
                    "last value": w.last[i],
                    "contextdb": c.throughput_mean,
                    "fused": _fuse(w.last[i], w.recent_var[i], c.throughput_mean, c.throughput_var),
                    "disconnected": float(w.gap[i] > 0),
                    "p position": f.p_dark,
                    "p contextdb": c.p_disconnect,
                    "p cell base rate": cell_rate[key],
                }
            )
        for e in result.events:
            if e.kind == SUCCESS or e.gap <= LONG_GAP_S:
                continue
            asked = math.floor(e.t) - la
            p, j = _pass_at(result, asked)
            if p is None:
                continue
            out.long_gaps += 1
            f = db.forecast(carrier, p.direction * p.u[j], p.speed[j], 2 * la, p.direction)
            if f is None or f.p_dark < 0.5:
                continue
            err = f.dark_in_s - (e.t - (p.t0 + j))
            out.start_error_s.append(round(float(err), 3))
            out.long_gaps_forecast += int(abs(err) <= START_TOL_S)
    out.scored = len(rows)
    if not rows:
        return out
    a = {name: np.array([row[name] for row in rows]) for name in rows[0]}
    out.mae_bps = {n: float(np.abs(a[n] - a["truth"]).mean()) for n in POSITION_PREDICTORS}
    out.brier = {
        n: float(((a["p " + n] - a["disconnected"]) ** 2).mean())
        for n in ("position", "contextdb", "cell base rate")
    }
    out.brier["observed rate"] = float(a["disconnected"].mean())
    base = out.brier["cell base rate"]
    out.brier_skill = 1.0 - out.brier["position"] / base if base > 0 else math.nan
    return out
