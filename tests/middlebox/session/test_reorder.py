"""The out-of-order store against a byte-map model: any pieces in any order, overlapping
or repeated, give the same runs, the first copy of every byte, and exact delivery."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from middlebox.session import reorder
from middlebox.session.reorder import Reorder


def model_runs(held: dict[int, int]) -> list[tuple[int, int]]:
    runs: list[list[int]] = []
    for off in sorted(held):
        if runs and runs[-1][1] == off:
            runs[-1][1] = off + 1
        else:
            runs.append([off, off + 1])
    return [(s, e) for s, e in runs]


def check(store: Reorder, held: dict[int, int]) -> None:
    runs = model_runs(held)
    assert store.ranges(10**9) == runs
    assert len(store) == store.runs == len(runs)
    assert store.data_bytes == len(held)
    assert store.first() == (runs[0][0] if runs else None)
    assert store.memory == store.data_bytes + store.overhead


def deliver_all(store: Reorder) -> dict[int, int]:
    got = {}
    while store:
        start = store.first()
        end, pieces = store.pop_first()
        data = b"".join(pieces)
        assert len(data) == end - start
        got.update({start + k: b for k, b in enumerate(data)})
    assert store.data_bytes == 0 and store.pieces == 0 and store.overhead == 0
    return got


@settings(max_examples=300, deadline=None)
@given(
    cuts=st.lists(st.tuples(st.integers(0, 3000), st.integers(1, 400)), max_size=120),
    seed=st.integers(0, 1 << 30),
    block=st.sampled_from([2, 3, 8, 256]),
)
def test_store_matches_a_byte_map(cuts, seed, block):
    rng = random.Random(seed)
    old = reorder.BLOCK
    reorder.BLOCK = block  # small blocks: splits and deletes across blocks are exercised
    try:
        store = Reorder()
        held: dict[int, int] = {}
        for k, (a, n) in enumerate(cuts):
            fill = (k * 7 + 1) % 251
            payload = bytes([fill]) * n
            new = any(a + j not in held for j in range(n))
            assert store.insert(a, a + n, payload) == new
            for j in range(n):
                held.setdefault(a + j, fill)  # the first copy wins
            if rng.random() < 0.1:
                check(store, held)
        check(store, held)
        assert deliver_all(store) == held
    finally:
        reorder.BLOCK = old


def test_many_blocks_then_fill_every_hole():
    old = reorder.BLOCK
    reorder.BLOCK = 4
    try:
        store = Reorder()
        for k in range(500):
            store.insert(2 * k + 1, 2 * k + 2, b"b")
        assert store.runs == 500 and len(store._s) > 50
        store.insert(0, 1000, b"a" * 1000)  # one piece across every block
        assert store.runs == 1 and store.ranges(5) == [(0, 1000)]
        end, pieces = store.pop_first()
        assert end == 1000 and b"".join(pieces) == b"ab" * 500
    finally:
        reorder.BLOCK = old


def test_memory_counts_pieces_and_runs_not_offsets():
    store = Reorder()
    for k in range(1000):
        store.insert(1000 * k + 1, 1000 * k + 2, memoryview(b"xyz")[1:2])
    assert store.data_bytes == 1000
    assert store.overhead == 1000 * (reorder.PIECE_COST + reorder.RUN_COST)
    assert store.ranges(2) == [(1, 2), (1001, 1002)]
    held = store._pieces[1]
    assert type(held) is bytes and held == b"y"  # a copy: it pins no chunk
