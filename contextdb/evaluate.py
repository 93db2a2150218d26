"""Does the history help? Train on some runs, predict held-out runs, compare baselines.

For every window of the test runs that has a known look-ahead throughput, three
predictions of that throughput are scored by mean absolute error:

- ``contextdb``: the K-nearest-neighbour prediction (windows of the same carrier and cell
  in the training runs, matched on RSRP);
- ``last value``: the throughput of the window's last second;
- ``cell mean``: the mean look-ahead throughput of all training windows of that cell;
- ``fused``: what the scheduler does with both sources, the minimum-variance (inverse
  variance weighted) mean of the last value (variance: that of the window's own seconds)
  and the contextdb prediction (variance: ``throughput_var``).

Only windows for which all three exist are scored, so the comparison is like for like;
how many were skipped (cell unseen in training, idle last second) is reported. The
disconnection forecast is scored with the Brier score of ``p_disconnect`` against the
cell's base rate of disconnections in training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from contextdb.config import ContextDBConfig
from contextdb.db import THR_VAR_FLOOR, ContextDB
from contextdb.records import Sample
from contextdb.store import MemoryStore
from contextdb.windows import process


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
    # truth, knn, last, cell mean, confidence, disconnected, p, base rate, fused
    rows = []
    unseen = idle = 0
    results = [item for run in test for item in process(run, cfg).items()]
    for carrier, result in results:
        w = result.windows
        res.test_windows += len(w)
        for i in range(len(w)):
            key = (carrier, w.cell[i])
            p = db.predict(carrier, w.cell[i], w.rsrp[i], float(w.t[i]))
            if p is None or key not in cell_mean:
                unseen += 1
                continue
            if not np.isfinite(w.last[i]):
                idle += 1
                continue
            rows.append(
                (
                    w.thr[i],
                    p.throughput_mean,
                    w.last[i],
                    cell_mean[key],
                    p.confidence,
                    float(w.gap[i] > 0),
                    p.p_disconnect,
                    cell_rate[key],
                    _fuse(w.last[i], w.recent_var[i], p.throughput_mean, p.throughput_var),
                )
            )
    res.skipped = {"cell unseen in training": unseen, "last second idle": idle}
    res.scored = len(rows)
    if not rows:
        return res
    a = np.array(rows)
    columns = {"contextdb": 1, "last value": 2, "cell mean": 3, "fused": 8}

    def mae(sel: np.ndarray) -> dict:
        return {n: float(np.abs(a[sel, j] - a[sel, 0]).mean()) for n, j in columns.items()}

    res.mae_bps = mae(np.ones(len(a), bool))
    confident = a[:, 4] >= 0.5
    res.confident = int(confident.sum())
    if confident.any():
        res.mae_confident_bps = mae(confident)
    res.brier = {
        "contextdb": float(((a[:, 6] - a[:, 5]) ** 2).mean()),
        "cell base rate": float(((a[:, 7] - a[:, 5]) ** 2).mean()),
        "observed rate": float(a[:, 5].mean()),
    }
    return res
