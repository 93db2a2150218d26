import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contextdb import index as index_mod
from contextdb.index import CellIndex
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
