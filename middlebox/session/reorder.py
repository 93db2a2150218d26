"""The out-of-order store of one receive direction: the bytes held above a hole.

A connection's messages travel on several paths and overtake each other, so the receiver
holds what arrived beyond the next byte it needs until the hole is filled. A hostile (or
broken) sender can make that as expensive as it likes: one-byte DATA with gaps between
them, in any order. The store is built so that this costs the receiver neither time nor
memory out of proportion:

* **Time.** The held ranges ("runs": disjoint, ascending, never touching, as the SACK
  ranges of a DATA_ACK must be) are kept in a list of sorted blocks of at most
  ``2 * BLOCK`` runs each, found by bisection over the blocks' first starts and then
  inside one block. An insertion finds its place in O(log n), merges the runs it touches
  (each run is merged away at most once: amortised O(1)) and inserts or deletes inside
  one block (a bounded memmove), whatever the hole pattern; delivery takes the first run.
* **Memory.** The payload of each piece is copied out of the chunk it was decoded from
  (a view would pin the whole chunk, see docs/PROTOCOL.md) and kept in a dict by
  offset; :attr:`Reorder.memory` counts the bytes plus :data:`PIECE_COST` per piece and
  :data:`RUN_COST` per run (measured: a one-byte piece in its own run takes about 175
  bytes of CPython objects), so the owner can bound what the holes cost, not the
  offsets they span (:attr:`Reorder.overhead`).

The first copy of every byte wins: a piece that overlaps what is held stores only the
gaps between the held runs.
"""

from __future__ import annotations

from bisect import bisect_right

PIECE_COST = 96  # bytes object header, dict slot and key of one held piece
RUN_COST = 96  # two offsets (int objects) and their list slots of one run
BLOCK = 256  # runs per block of the run list (split at twice this)


class Reorder:
    """Pieces held above ``rcv_nxt``; the owner trims what is already delivered."""

    __slots__ = ("_s", "_e", "_first", "_pieces", "runs", "data_bytes")

    def __init__(self) -> None:
        self._s: list[list[int]] = []  # run starts, per block
        self._e: list[list[int]] = []  # run ends (exclusive), per block
        self._first: list[int] = []  # each block's first start
        self._pieces: dict[int, bytes] = {}  # offset -> bytes held from there
        self.runs = 0
        self.data_bytes = 0

    def __len__(self) -> int:
        return self.runs

    @property
    def pieces(self) -> int:
        return len(self._pieces)

    @property
    def overhead(self) -> int:
        """Bytes of bookkeeping beyond the data held."""
        return len(self._pieces) * PIECE_COST + self.runs * RUN_COST

    @property
    def memory(self) -> int:
        """Bytes the store holds: data and bookkeeping."""
        return self.data_bytes + self.overhead

    def first(self) -> int | None:
        """Start of the lowest run, or None when nothing is held."""
        return self._first[0] if self._first else None

    def ranges(self, limit: int) -> list[tuple[int, int]]:
        """The lowest ``limit`` runs, ascending (the SACK ranges of a DATA_ACK)."""
        out: list[tuple[int, int]] = []
        for s_block, e_block in zip(self._s, self._e, strict=True):
            for s, e in zip(s_block, e_block, strict=True):
                if len(out) == limit:
                    return out
                out.append((s, e))
        return out

    def insert(self, seq: int, end: int, payload: bytes | memoryview) -> bool:
        """Hold the parts of ``[seq, end)`` (``payload``) not held yet; True if any was new."""
        b, i = self._find(seq)
        blocks_s, blocks_e = self._s, self._e
        if b < len(blocks_s) and blocks_s[b][i] <= seq and blocks_e[b][i] >= end:
            return False  # inside one run: a duplicate
        pieces = self._pieces
        pos, lo, hi = seq, seq, end
        stored = 0
        k = 0  # runs merged into the new one
        bi, ii = b, i
        while bi < len(blocks_s):
            starts, ends = blocks_s[bi], blocks_e[bi]
            n = len(starts)
            while ii < n:
                s = starts[ii]
                if s > end:
                    break
                if pos < s:  # a gap before this run
                    pieces[pos] = bytes(payload[pos - seq : s - seq])
                    stored += s - pos
                e = ends[ii]
                if e > pos:
                    pos = e
                if s < lo:
                    lo = s
                if e > hi:
                    hi = e
                ii += 1
                k += 1
            else:
                bi, ii = bi + 1, 0
                continue
            break
        if pos < end:
            pieces[pos] = bytes(payload[pos - seq :])
            stored += end - pos
        self.data_bytes += stored
        if k:
            self._delete(b, i, k)
        self._insert_run(b, i, lo, hi)
        self.runs += 1 - k
        return stored > 0

    def pop_first(self) -> tuple[int, list[bytes]]:
        """Take the lowest run: its end and its pieces in order (the owner delivers them
        when the run starts at the next byte it needs)."""
        starts, ends = self._s[0], self._e[0]
        s, e = starts.pop(0), ends.pop(0)
        if starts:
            self._first[0] = starts[0]
        else:
            del self._s[0], self._e[0], self._first[0]
        self.runs -= 1
        out = []
        pieces = self._pieces
        pos = s
        while pos < e:
            piece = pieces.pop(pos)
            out.append(piece)
            pos += len(piece)
        self.data_bytes -= e - s
        return e, out

    # -- the block list ----------------------------------------------------------------------

    def _find(self, x: int) -> tuple[int, int]:
        """(block, index) of the first run that ends at or after ``x`` (it may touch or
        overlap a range starting at ``x``); past the end when there is none."""
        first = self._first
        b = bisect_right(first, x) - 1
        if b < 0:
            return 0, 0
        starts = self._s[b]
        i = bisect_right(starts, x) - 1  # the last run starting at or before x
        if self._e[b][i] >= x:
            return b, i
        i += 1
        return (b + 1, 0) if i == len(starts) else (b, i)

    def _delete(self, b: int, i: int, k: int) -> None:
        """Remove ``k`` runs from position (b, i) on (they may span blocks)."""
        while k:
            starts, ends = self._s[b], self._e[b]
            take = min(k, len(starts) - i)
            del starts[i : i + take], ends[i : i + take]
            k -= take
            if not starts:
                del self._s[b], self._e[b], self._first[b]
            else:
                self._first[b] = starts[0]
                b += 1
            i = 0

    def _insert_run(self, b: int, i: int, s: int, e: int) -> None:
        if not self._s:
            self._s.append([s])
            self._e.append([e])
            self._first.append(s)
            return
        if b >= len(self._s):
            b = len(self._s) - 1
            i = len(self._s[b])
        starts, ends = self._s[b], self._e[b]
        starts.insert(i, s)
        ends.insert(i, e)
        if i == 0:
            self._first[b] = s
        if len(starts) > 2 * BLOCK:
            self._s.insert(b + 1, starts[BLOCK:])
            self._e.insert(b + 1, ends[BLOCK:])
            self._first.insert(b + 1, starts[BLOCK])
            del starts[BLOCK:], ends[BLOCK:]
