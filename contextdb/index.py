"""In-memory nearest-neighbour index of one cell's RSRP windows.

Each window is a point of W + 1 coordinates: its RSRP window (W seconds, dB) and the
throughput of its last second on a log scale (:func:`throughput_coord`). A query either
gives a recent throughput and is matched on all W + 1 coordinates, or gives none and is
matched on the RSRP coordinates only (the last one is ignored, in the bounds and the
distances alike). Exact K nearest by Euclidean distance, vectorised with numpy.

Large cells are cut into leaves of about LEAF windows by a k-d partition (split at the
median of the dimension that spreads most), each with its bounding box; there are two
partitions of the same rows, one on all W + 1 coordinates (the rows are stored in its
order) and one on the W RSRP coordinates, each serving its kind of query. A query
computes the distance from the query to every box at once (a lower bound for every
window in the box), scans the few leaves with the smallest bounds for a K-th distance, then
only the leaves whose bound is within that distance: exact, and at a million windows
only a few leaves are touched.
New windows wait in a small unsorted tail (searched by brute force) and are merged, by
rebuilding the partition, in batches of TAIL_MAX.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from contextdb.windows import Windows

PERF = ("thr", "rtt", "loss", "gap")
TAIL_MAX = 4096  # windows waiting unsorted before a rebuild
BRUTE_MAX = 4096  # up to this many windows, no partition: one vectorised scan
LEAF = 256  # windows per leaf of the partition
FIRST_LEAVES = 3  # leaves (smallest bounds first) scanned for the first K-th distance
MBIT = 1e6
# Throughput coordinate of a window whose last second was idle (throughput unknown): far
# from any query that gives a throughput (which lie within 0 .. ~1,000), ignored by
# RSRP-only queries.
MISSING = 1e4


def throughput_coord(bps, scale_db: float) -> np.ndarray:
    """``scale_db * ln(1 + bps / 1 Mbit/s)``: a factor e between two throughputs is as far
    apart as ``scale_db`` dB of RSRP in one second. Logarithmic, so one scale suits a
    30 Mbit/s carrier and a 300 Mbit/s one; unknown (nan) -> MISSING."""
    if isinstance(bps, float):  # one query's: the scalar path is ten times faster
        return scale_db * math.log1p(max(bps, 0.0) / MBIT) if math.isfinite(bps) else MISSING
    b = np.asarray(bps, dtype=np.float64)
    out = scale_db * np.log1p(np.maximum(np.nan_to_num(b, nan=0.0), 0.0) / MBIT)
    return np.where(np.isfinite(b), out, MISSING)


def dct_basis(width: int) -> np.ndarray:
    """Orthonormal DCT-II basis (rows). RSRP windows lie along the constant direction (the
    signal level) with smaller slope and wiggle: in these coordinates the k-d boxes fit
    the data, where boxes along the raw seconds would cut that diagonal badly. The
    transform is orthonormal, so Euclidean distances are unchanged."""
    n = np.arange(width)
    basis = np.cos(np.pi * (n[None, :] + 0.5) * n[:, None] / width)
    basis[0] *= 1 / np.sqrt(2)
    return basis * np.sqrt(2 / width)


def partition(x: np.ndarray, leaf: int) -> tuple[np.ndarray, np.ndarray]:
    """A k-d partition of the rows of ``x``: (row order, start of each leaf)."""
    order = np.arange(len(x))
    starts = []
    stack = [(0, len(x))]
    while stack:
        s, e = stack.pop()
        if e - s <= leaf:
            starts.append(s)
            continue
        idx = order[s:e]
        pts = x[idx]
        dim = int(np.argmax(pts.max(axis=0) - pts.min(axis=0)))
        mid = (e - s) // 2
        order[s:e] = idx[np.argpartition(pts[:, dim], mid)]
        stack.append((s + mid, e))
        stack.append((s, s + mid))
    return order, np.array(sorted(starts), dtype=np.int64)


@dataclass
class Tree:
    """A k-d partition: ``x`` (coordinates, contiguous, in leaf order) and ``norm2``
    (their squared norms); leaf ``i`` is ``x[starts[i] : starts[i + 1]]``, inside the
    box ``lo[i]`` .. ``hi[i]``. ``rows[j]`` is the index row of ``x[j]`` (None: the
    same)."""

    x: np.ndarray
    norm2: np.ndarray
    starts: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    rows: np.ndarray | None = None


def build_tree(x: np.ndarray, in_order: bool = False) -> Tree:
    """Partition ``x``; ``in_order``: ``x`` is already in partition order (no copy)."""
    if len(x) <= BRUTE_MAX:
        rows, starts = None, np.zeros(1, np.int64)
    else:
        order, starts = partition(x, LEAF)
        rows = None if in_order else order
        x = x if in_order else np.ascontiguousarray(x[order])
    lo = np.minimum.reduceat(x, starts, axis=0) if len(x) else np.zeros((0, x.shape[1]))
    hi = np.maximum.reduceat(x, starts, axis=0) if len(x) else np.zeros((0, x.shape[1]))
    return Tree(x, (x**2).sum(axis=1), np.append(starts, len(x)), lo, hi, rows)


class CellIndex:
    def __init__(self, width: int, throughput_scale_db: float = 0.0) -> None:
        self.width = width
        self.scale = throughput_scale_db
        self.basis = dct_basis(width)
        # DCT coordinates of the RSRP, then the throughput coordinate; float64: the
        # distance expansion below cancels large terms
        self.x = np.zeros((0, width + 1))
        self.perf = {k: np.zeros(0) for k in PERF}
        # Two partitions of the same rows: one on all W + 1 coordinates (``x`` is stored
        # in its order), one on the RSRP coordinates only (with its own copy of them, so
        # that a scan reads contiguous memory), for queries without a throughput, which
        # the first serves badly: it splits mostly on the throughput.
        self.tree = build_tree(self.x, in_order=True)
        self.rsrp_tree = build_tree(self.x[:, :width])
        self._tail: list[Windows] = []
        self._tail_n = 0
        self._tail_x: np.ndarray | None = None  # coordinates of the tail (raw RSRP seconds)

    def __len__(self) -> int:
        return len(self.x) + self._tail_n

    def coords(self, windows: Windows, rotate: bool = True) -> np.ndarray:
        """(n, W + 1) points: RSRP (DCT coordinates, or raw seconds when not ``rotate``)
        and the throughput coordinate of the last second."""
        x = np.empty((len(windows), self.width + 1))
        r = windows.rsrp.astype(np.float64)
        x[:, : self.width] = r @ self.basis.T if rotate else r
        x[:, self.width] = throughput_coord(windows.last, self.scale)
        return x

    def add(self, windows: Windows, merge: bool = True) -> None:
        """Add windows; ``merge=False`` defers the rebuild (bulk loads call
        :meth:`settle` once at the end instead of rebuilding every TAIL_MAX windows)."""
        if len(windows):
            self._tail.append(windows)
            self._tail_n += len(windows)
            self._tail_x = None
            if merge:
                self.settle()

    def settle(self) -> None:
        """Rebuild the partition if the unsorted tail has grown past TAIL_MAX."""
        if self._tail_n > TAIL_MAX:
            self._merge()

    def _merge(self) -> None:
        x = np.concatenate([self.x] + [self.coords(w) for w in self._tail])
        perf = {
            k: np.concatenate([self.perf[k]] + [getattr(w, k) for w in self._tail]) for k in PERF
        }
        order = partition(x, LEAF)[0] if len(x) > BRUTE_MAX else np.arange(len(x))
        self.x = np.ascontiguousarray(x[order])
        self.perf = {k: v[order] for k, v in perf.items()}
        self.tree = build_tree(self.x, in_order=True)
        self.rsrp_tree = build_tree(np.ascontiguousarray(self.x[:, : self.width]))
        self._tail, self._tail_n, self._tail_x = [], 0, None

    def _tail_arrays(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if len(self._tail) > 1:
            merged = Windows.concat(self._tail, self.width)
            self._tail = [merged]
        w = self._tail[0]
        if self._tail_x is None:
            self._tail_x = self.coords(w, rotate=False)
        return self._tail_x, {k: getattr(w, k) for k in PERF}

    def _scan(self, tree: Tree, leaves: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions (in ``tree.x``) and squared distances of every window in the given
        leaves of ``tree``."""
        begin, end = tree.starts[leaves], tree.starts[leaves + 1]
        if len(leaves) == 1:
            idx = np.arange(begin[0], end[0])
        else:  # the rows of several leaves, without a Python loop over them
            lengths = end - begin
            shift = np.repeat(begin - np.cumsum(lengths) + lengths, lengths)
            idx = np.arange(int(lengths.sum())) + shift
        # |x - q|^2 = |x|^2 - 2 x.q + |q|^2: one matrix-vector product per query
        d2 = tree.norm2[idx] - 2.0 * (np.take(tree.x, idx, axis=0) @ q) + float(q @ q)
        return idx, np.maximum(d2, 0.0)

    def _search_tree(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and squared distances of the k nearest indexed windows (unordered), over
        the first ``len(q)`` coordinates.

        Two vectorised steps: scan the leaf with the smallest bound to get an upper bound
        on the K-th distance, then every other leaf whose bound is within it, keeping
        only windows within it too (few, so the final selection is cheap).
        """
        tree = self.rsrp_tree if len(q) == self.width else self.tree
        if len(tree.lo) <= 1:
            idx, d2 = self._scan(tree, np.zeros(1, np.int64), q)
        else:
            # lo <= hi, so at most one of the two differences is positive
            gap = np.maximum(tree.lo - q, q - tree.hi)
            np.maximum(gap, 0.0, out=gap)
            bound = np.einsum("ij,ij->i", gap, gap)
            n_first = min(FIRST_LEAVES, len(bound))
            first = np.argpartition(bound, n_first - 1)[:n_first]
            idx, d2 = self._scan(tree, first, q)
            if len(d2) >= k:
                kth = float(np.partition(d2, k - 1)[k - 1])
                mask = bound <= kth
            else:
                kth = np.inf
                mask = np.ones(len(bound), bool)
            mask[first] = False
            more = np.flatnonzero(mask)
            if len(more):
                i2, e2 = self._scan(tree, more, q)
                idx, d2 = np.concatenate([idx, i2]), np.concatenate([d2, e2])
            keep = np.flatnonzero(d2 <= kth)
            idx, d2 = idx[keep], d2[keep]
        if len(d2) > k:
            part = np.argpartition(d2, k - 1)[:k]
            idx, d2 = idx[part], d2[part]
        return (idx if tree.rows is None else tree.rows[idx]), d2

    def nearest(
        self, rsrp: np.ndarray, k: int, recent_bps: float | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Distances (ascending) and performance of the k nearest windows (fewer when the
        cell holds fewer). With ``recent_bps`` (the throughput of the query's last
        second) the match includes the throughput coordinate; without, RSRP only. The
        performance includes ``coord``, each neighbour's throughput coordinate."""
        q = np.asarray(rsrp, dtype=np.float64)
        if recent_bps is not None:
            q = np.append(q, throughput_coord(recent_bps, self.scale))
        k = min(k, len(self))
        if len(self.x):
            qr = q[: self.width] @ self.basis.T
            idx, d2 = self._search_tree(np.append(qr, q[self.width :]), k)
        else:
            idx, d2 = np.zeros(0, np.int64), np.zeros(0, np.float32)
        perf = {name: self.perf[name][idx] for name in PERF}
        perf["coord"] = self.x[idx, self.width]
        if self._tail_n:
            tx, tperf = self._tail_arrays()
            td2 = ((tx[:, : len(q)] - q) ** 2).sum(axis=1)
            d2 = np.concatenate([d2, td2])
            tperf = {**tperf, "coord": tx[:, self.width]}
            perf = {name: np.concatenate([perf[name], tperf[name]]) for name in perf}
        order = np.argsort(d2, kind="stable")[:k]
        return np.sqrt(d2[order].astype(np.float64)), {n: v[order] for n, v in perf.items()}

    def all_perf(self) -> dict[str, np.ndarray]:
        """Every window's performance (for cell-wide fallbacks and statistics)."""
        if not self._tail_n:
            return self.perf
        _, tperf = self._tail_arrays()
        return {k: np.concatenate([self.perf[k], tperf[k]]) for k in PERF}
