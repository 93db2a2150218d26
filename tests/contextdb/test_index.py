import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contextdb import index as index_mod
from contextdb.index import CellIndex, throughput_coord
from contextdb.windows import Windows


def make_windows(x: np.ndarray, offset: int = 0) -> Windows:
    """Windows whose throughput is their row number in the full array."""
    n = len(x)
    ar = np.arange(offset, offset + n, dtype=np.float64)
    z = np.zeros(n)
    return Windows(["c"] * n, ar, z, z, x.astype(np.float32), ar, z, z, z, z, z)


def brute(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    d = np.sqrt(((x.astype(np.float64) - q) ** 2).sum(axis=1))
    return np.sort(d)[:k]


def check(idx: CellIndex, x: np.ndarray, q: np.ndarray, k: int) -> None:
    dist, perf = idx.nearest(q, k)
    ref = brute(x, q, k)
    assert len(dist) == len(ref)
    assert np.allclose(dist, ref, atol=1e-3)
    # the performance returned belongs to the windows at those distances
    got = np.sqrt(((x[perf["thr"].astype(int)].astype(np.float64) - q) ** 2).sum(axis=1))
    assert np.allclose(got, dist, atol=1e-3)


@pytest.mark.parametrize("n", [10, 5000, 60000])
def test_nearest_matches_brute_force(n):
    rng = np.random.default_rng(n)
    # integer dBm like real modems (many ties) plus a drifting trend
    base = rng.integers(-120, -70, size=(n, 1))
    x = (base + rng.integers(-6, 7, size=(n, 5))).astype(np.float32)
    idx = CellIndex(5)
    offset = 0
    for part in np.array_split(x, 7):
        idx.add(make_windows(part, offset))
        offset += len(part)
    assert len(idx) == n
    for _ in range(40):
        q = rng.integers(-130, -60) + rng.normal(0, 4, 5)
        for k in (1, 16, 50):
            check(idx, x, q, k)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 400),
    st.integers(1, 30),
    st.integers(0, 2**32 - 1),
    st.integers(0, 200),
)
def test_nearest_band_search_is_exact(n, k, seed, tail):
    """Force the partition (tiny brute-force limit and leaves) with an unsorted tail."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-100, -80, size=(n + tail, 4)).astype(np.float32)
    old = index_mod.BRUTE_MAX, index_mod.TAIL_MAX, index_mod.LEAF
    index_mod.BRUTE_MAX, index_mod.TAIL_MAX, index_mod.LEAF = 2, 1000, 3
    try:
        idx = CellIndex(4)
        idx.add(make_windows(x[:n]))
        idx._merge()
        idx.add(make_windows(x[n:], n))
        q = rng.normal(-90, 8, 4)
        check(idx, x, q, min(k, n + tail))
    finally:
        index_mod.BRUTE_MAX, index_mod.TAIL_MAX, index_mod.LEAF = old


def test_bulk_add_defers_the_rebuild(monkeypatch):
    rebuilds = []
    orig = CellIndex._merge
    monkeypatch.setattr(CellIndex, "_merge", lambda self: (rebuilds.append(1), orig(self)))
    rng = np.random.default_rng(3)
    x = rng.integers(-120, -70, size=(3 * index_mod.TAIL_MAX, 5)).astype(np.float32)
    idx = CellIndex(5)
    offset = 0
    for part in np.array_split(x, 300):
        idx.add(make_windows(part, offset), merge=False)
        offset += len(part)
    assert rebuilds == []
    idx.settle()
    assert rebuilds == [1] and len(idx) == len(x)
    check(idx, x, x[7].astype(np.float64), 16)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 400), st.integers(1, 30), st.integers(0, 2**32 - 1), st.integers(0, 200))
def test_nearest_with_the_throughput_coordinate_is_exact(n, k, seed, tail):
    """Matching on RSRP and the last second's throughput (some unknown) is exact too, and
    a query without a throughput ignores that coordinate, in the partition and the tail."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-100, -80, size=(n + tail, 4)).astype(np.float32)
    last = rng.lognormal(np.log(20e6), 1.0, n + tail)
    last[rng.random(n + tail) < 0.1] = np.nan
    scale = 30.0
    coord = throughput_coord(last, scale)
    old = index_mod.BRUTE_MAX, index_mod.TAIL_MAX, index_mod.LEAF
    index_mod.BRUTE_MAX, index_mod.TAIL_MAX, index_mod.LEAF = 2, 1000, 3
    try:
        idx = CellIndex(4, scale)
        w = make_windows(x)
        w.last = last
        idx.add(w.take(np.arange(n)))
        idx._merge()
        idx.add(w.take(np.arange(n, n + tail)))
        q = rng.normal(-90, 8, 4)
        recent = float(rng.lognormal(np.log(20e6), 1.0))
        kk = min(k, n + tail)
        full = np.column_stack([x, coord])
        qf = np.append(q, throughput_coord(recent, scale))
        dist, perf = idx.nearest(q, kk, recent)
        assert np.allclose(dist, brute(full, qf, kk), atol=1e-3)
        rows = perf["thr"].astype(int)
        assert np.allclose(perf["coord"], coord[rows])
        assert np.allclose(np.sqrt(((full[rows] - qf) ** 2).sum(axis=1)), dist, atol=1e-3)
        check(idx, x, q, kk)  # without a throughput: RSRP only
    finally:
        index_mod.BRUTE_MAX, index_mod.TAIL_MAX, index_mod.LEAF = old


def test_throughput_coordinate():
    c = throughput_coord([0.0, 1e6 * (math.e - 1), np.nan, -5.0], 100.0)
    assert c[0] == 0.0 and c[1] == pytest.approx(100.0)
    assert c[2] == index_mod.MISSING and c[3] == 0.0
