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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from contextdb.config import ContextDBConfig
from contextdb.db import THR_VAR_FLOOR, ContextDB
from contextdb.records import Sample
from contextdb.store import MemoryStore
from contextdb.windows import process

PREDICTORS = ("contextdb", "rsrp only", "last value", "cell mean", "fused")


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


def _fuse(short: float, short_var: float, long: float, long_var: float) -> float:
    short_var = max(short_var, THR_VAR_FLOOR) if np.isfinite(short_var) else np.inf
    if not np.isfinite(short_var):
        return long
    ws, wl = 1.0 / short_var, 1.0 / long_var
    return (ws * short + wl * long) / (ws + wl)


def evaluate(
    train: list[list[Sample]], test: list[list[Sample]], cfg: ContextDBConfig | None = None
) -> EvalResult:
    """``train`` and ``test`` are lists of runs (one list of samples per drive): runs
    are cut separately, so two drives logged at overlapping times stay apart."""
    cfg = cfg or ContextDBConfig()
    db = ContextDB(MemoryStore(), cfg)
    res = EvalResult()
    for run in train:
        res.train_windows += db.ingest(run).windows
    cell_mean: dict[tuple[str, str], float] = {}
    cell_rate: dict[tuple[str, str], float] = {}
    for (carrier, cell), entry in db._cells.items():
        perf = entry.index.all_perf()
        if len(perf["thr"]):
            cell_mean[(carrier, cell)] = float(np.mean(perf["thr"]))
            cell_rate[(carrier, cell)] = float(np.mean(perf["gap"] > 0))
    rows = []
    unseen = idle = 0
    results = [item for run in test for item in process(run, cfg).items()]
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
