"""In-memory nearest-neighbour index of one cell's RSRP windows.

Exact K nearest by Euclidean distance, vectorised with numpy. Windows are kept sorted
by their mean RSRP: for any two windows of W seconds, sqrt(W) * |mean(x) - mean(q)| <=
||x - q|| (Cauchy-Schwarz), so once K candidates near the query's mean give a K-th
distance d, only windows whose mean lies within d / sqrt(W) of the query's can be
closer. That band is usually a small slice of a large cell, which keeps a query well
under a millisecond at a million windows. New windows wait in a small unsorted tail
(searched by brute force) and are merged into the sorted part in batches.
"""

from __future__ import annotations

import math

import numpy as np

from contextdb.windows import Windows

PERF = ("thr", "rtt", "loss", "gap")
TAIL_MAX = 4096  # windows waiting unsorted before a merge
BRUTE_MAX = 4096  # below this many sorted windows, no band search


class CellIndex:
    def __init__(self, width: int) -> None:
        self.width = width
        self.x = np.zeros((0, width), np.float32)
        self.mean = np.zeros(0, np.float32)
        self.perf = {k: np.zeros(0) for k in PERF}
        self._tail: list[Windows] = []
        self._tail_n = 0

    def __len__(self) -> int:
        return len(self.x) + self._tail_n

    def add(self, windows: Windows) -> None:
        if len(windows):
            self._tail.append(windows)
            self._tail_n += len(windows)
            if self._tail_n > TAIL_MAX:
                self._merge()

    def _merge(self) -> None:
        xs = [self.x] + [w.rsrp.astype(np.float32) for w in self._tail]
        x = np.concatenate(xs)
        mean = x.mean(axis=1, dtype=np.float64).astype(np.float32)
        order = np.argsort(mean, kind="stable")
        self.x, self.mean = np.ascontiguousarray(x[order]), mean[order]
        for k in PERF:
            v = np.concatenate([self.perf[k]] + [getattr(w, k) for w in self._tail])
            self.perf[k] = v[order]
        self._tail, self._tail_n = [], 0

    def _tail_arrays(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if len(self._tail) > 1:
            merged = Windows.concat(self._tail, self.width)
            self._tail = [merged]
        w = self._tail[0]
        return w.rsrp.astype(np.float32), {k: getattr(w, k) for k in PERF}

    def _search_sorted(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices and squared distances of the k nearest sorted windows (unordered)."""
        n = len(self.x)
        if n <= BRUTE_MAX:
            lo, hi = 0, n
        else:
            mq = float(q.mean(dtype=np.float64))
            pos = int(np.searchsorted(self.mean, mq))
            lo, hi = max(0, pos - k), min(n, pos + k)
            d2 = ((self.x[lo:hi] - q) ** 2).sum(axis=1)
            kth = float(np.partition(d2, k - 1)[k - 1]) if hi - lo > k else float(d2.max())
            r = math.sqrt(kth / self.width) * (1 + 1e-6) + 1e-3
            lo = int(np.searchsorted(self.mean, mq - r, side="left"))
            hi = int(np.searchsorted(self.mean, mq + r, side="right"))
        d2 = ((self.x[lo:hi] - q) ** 2).sum(axis=1)
        if len(d2) > k:
            part = np.argpartition(d2, k - 1)[:k]
            return part + lo, d2[part]
        return np.arange(lo, hi), d2

    def nearest(self, rsrp: np.ndarray, k: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Distances (ascending) and performance of the k nearest windows (fewer when the
        cell holds fewer)."""
        q = np.asarray(rsrp, dtype=np.float32)
        k = min(k, len(self))
        idx, d2 = self._search_sorted(q, k) if len(self.x) else (np.zeros(0, int), np.zeros(0))
        perf = {name: self.perf[name][idx] for name in PERF}
        if self._tail_n:
            tx, tperf = self._tail_arrays()
            td2 = ((tx - q) ** 2).sum(axis=1)
            d2 = np.concatenate([d2, td2])
            perf = {name: np.concatenate([perf[name], tperf[name]]) for name in PERF}
        order = np.argsort(d2, kind="stable")[:k]
        return np.sqrt(d2[order].astype(np.float64)), {n: v[order] for n, v in perf.items()}

    def all_perf(self) -> dict[str, np.ndarray]:
        """Every window's performance (for cell-wide fallbacks and statistics)."""
        if not self._tail_n:
            return self.perf
        _, tperf = self._tail_arrays()
        return {k: np.concatenate([self.perf[k], tperf[k]]) for k in PERF}
