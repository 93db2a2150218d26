"""The out-of-order queue: the same bytes as a plain model, bounded by memory, SACK order."""

from __future__ import annotations

import os
import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middlebox.tcp import ofo
from middlebox.tcp.ofo import ENTRY_OVERHEAD, OutOfOrder

STREAM = os.urandom(4096)


def check_invariants(q: OutOfOrder) -> None:
    """Pieces never overlap, exactly cover the ranges, and the byte count is right."""
    pieces = [(k, bytes(v)) for k, v in q.pieces.items()]
    ranges = q.ranges.items()
    assert len(pieces) == len(q.pieces) and len(ranges) == len(q.ranges)
    assert q.pieces.mins == [ks[0] for ks in q.pieces.keys]
    assert q.ranges.mins == [ks[0] for ks in q.ranges.keys]
    assert all(d for _, d in pieces) and sum(len(d) for _, d in pieces) == q.bytes
    for (s1, d1), (s2, _) in zip(pieces, pieces[1:], strict=False):
        assert s1 + len(d1) <= s2
    for (_, e1), (s2, _) in zip(ranges, ranges[1:], strict=False):
        assert e1 < s2  # touching ranges are merged
    merged: list[list[int]] = []
    for s, d in pieces:
        assert d == STREAM[s : s + len(d)]
        if merged and merged[-1][1] == s:
            merged[-1][1] = s + len(d)
        else:
            merged.append([s, s + len(d)])
    assert [tuple(m) for m in merged] == ranges


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 3000), st.integers(1, 600), st.booleans()), min_size=1, max_size=60
    ),
    st.sampled_from([4, 256]),
)
def test_queue_matches_a_model_whatever_the_order(segments, load) -> None:
    old = ofo._LOAD
    ofo._LOAD = load  # small sublists exercise the splits
    try:
        q = OutOfOrder(1 << 30)
        rcv_nxt = 0
        got = bytearray()
        held: set[int] = set()
        for start, n, advance in segments:
            end = min(start + n, len(STREAM))
            if advance:  # the hole at the front is filled in order
                k = min(rcv_nxt + 50, len(STREAM))
                got += STREAM[rcv_nxt:k]
                rcv_nxt = k
                for mv in q.pull(rcv_nxt):
                    got += mv
                    rcv_nxt += len(mv)
                held = {b for b in held if b >= rcv_nxt}
            if start > rcv_nxt and end > start:
                assert q.add(start, STREAM[start:end])
                held |= set(range(start, end))
                first = q.sack_blocks()[0]
                assert first[0] <= start and end <= first[1]  # the newest block first
            check_invariants(q)
            assert {b for s, e in q.sack_blocks() for b in range(s, e)} <= held
            assert sum(e - s for s, e in q.ranges.items()) == len(held)
        assert bytes(got) == STREAM[:rcv_nxt]
    finally:
        ofo._LOAD = old


def test_sack_blocks_are_the_four_ranges_touched_last() -> None:
    q = OutOfOrder(1 << 20)
    for s in (100, 200, 300, 400, 500, 600):
        q.add(s, b"x" * 10)
    assert q.sack_blocks() == [(600, 610), (500, 510), (400, 410), (300, 310)]
    q.add(205, b"x" * 20)  # extends an older range: it comes first again
    assert q.sack_blocks() == [(200, 225), (600, 610), (500, 510), (400, 410)]
    q.add(410, b"x" * 90)  # joins 400 and 500 into one block
    assert q.sack_blocks() == [(400, 510), (200, 225), (600, 610)]
    assert b"".join(q.pull(400)) == b"x" * 110
    assert q.sack_blocks() == [(600, 610)] and len(q) == 1  # below 400 counts as delivered


def test_right_to_left_fill_keeps_one_range_without_copying_it() -> None:
    q = OutOfOrder(1 << 30)
    for s in range(20_000, 10, -10):
        q.add(s, STREAM[:10] * 1)
    assert len(q) == 1 and q.sack_blocks() == [(20, 20_010)]
    assert len(q.pieces) == 1999  # one piece per segment: nothing was copied twice


def test_memory_bound_drops_segments_and_in_order_pull_frees() -> None:
    limit = 64 << 10
    q = OutOfOrder(limit)
    stored = sum(q.add(2 + 2 * i, b"z") for i in range(64_000))
    assert q.memory <= limit and q.dropped == 64_000 - stored
    assert stored == len(q) and stored < limit // (2 * ENTRY_OVERHEAD)
    q.pull(10**9)
    assert q.memory == 0 and q.add(5, b"z")


def test_entry_overhead_covers_what_python_really_holds() -> None:
    q = OutOfOrder(1 << 30)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(20_000):
        q.add(1_000_000 + 4 * i, b"q")
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert used <= q.memory, (used, q.memory)
    assert q.memory <= 1.6 * used  # and is not wildly pessimistic


@pytest.mark.parametrize("pattern", ["ascending", "random"])
def test_overlap_replaces_stored_bytes_and_drops_nothing(pattern) -> None:
    q = OutOfOrder(1 << 30)
    rng = random.Random(7)
    starts = list(range(100, 3000, 7))
    if pattern == "random":
        rng.shuffle(starts)
    for s in starts:
        q.add(s, STREAM[s : s + 3])
    q.add(50, STREAM[50:3500])  # one retransmission covering everything
    check_invariants(q)
    assert len(q) == 1 and len(q.pieces) == 1
    assert bytes(q.pull(50)[0]) == STREAM[50:3500]
