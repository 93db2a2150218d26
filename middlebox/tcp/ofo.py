"""The receive side's out-of-order queue: bounded by memory, O(log n) whatever the holes.

A client may send its bytes in any order and leave any number of holes. Linux keeps
such data in a red-black tree and prunes it when the socket's memory is exhausted; this
module does the same in Python terms:

* two sorted maps (:class:`SortedMap`, a list of short sorted lists, so an insert or a
  removal costs a bisection and a bounded ``list.insert``): *pieces* (offset ->
  bytearray, the bytes held, never overlapping) and *ranges* (offset -> end, the
  contiguous stretches that SACK reports). They are separate because a stretch filled
  from right to left would otherwise copy its whole data at every prepended segment;
* a segment that covers stored data replaces it (its bytes are the same stream), so
  retransmissions do not multiply pieces, and one appended right after a piece extends
  that piece;
* the SACK blocks are the ranges last touched, the one that changed most recently
  first (RFC 2018 4), looked up by bisection instead of walking every range;
* the memory held is counted as payload plus :data:`ENTRY_OVERHEAD` per piece and per
  range, which is about what CPython pays for them; a segment that could take the
  queue over ``limit`` is dropped (the client sends it again; in-order data never
  comes here and is always accepted within the window).

Offsets are the connection's unbounded stream offsets (see ``connection.py``).
"""

from __future__ import annotations

from bisect import bisect_right

ENTRY_OVERHEAD = 96
"""Bytes counted per stored piece and per range besides the payload: CPython's cost of a
small bytearray, its key, a range's two ints and the list slots, rounded up (a test
measures it). Payload counts by length; a piece grown by appends may hold up to an
eighth more in spare capacity."""

_LOAD = 256  # sublist length of SortedMap; split at twice this
_RECENT = 4  # ranges remembered for SACK (RFC 2018: at most 4 blocks fit)


class SortedMap:
    """Integer keys in order, each with a value, in sublists of at most ``2 * _LOAD``.

    Positions are ``(sublist, index)`` pairs, valid until the next change. Finding a key
    is two bisections; inserting or removing one moves at most ``2 * _LOAD`` list slots
    (a ``memmove``), so every operation costs O(log n) plus a bounded constant.
    """

    __slots__ = ("keys", "vals", "mins", "n")

    def __init__(self) -> None:
        self.keys: list[list[int]] = []
        self.vals: list[list] = []
        self.mins: list[int] = []
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def floor(self, x: int) -> tuple[int, int] | None:
        """Position of the largest key <= ``x``, or None."""
        i = bisect_right(self.mins, x) - 1
        if i < 0:
            return None
        return i, bisect_right(self.keys[i], x) - 1

    def after(self, pos: tuple[int, int] | None) -> tuple[int, int] | None:
        """The position following ``pos`` (None: the first), or None at the end."""
        if pos is None:
            return (0, 0) if self.n else None
        i, j = pos
        if j + 1 < len(self.keys[i]):
            return i, j + 1
        return (i + 1, 0) if i + 1 < len(self.keys) else None

    def key(self, pos: tuple[int, int]) -> int:
        return self.keys[pos[0]][pos[1]]

    def value(self, pos: tuple[int, int]):
        return self.vals[pos[0]][pos[1]]

    def set(self, pos: tuple[int, int], key: int, value: object) -> None:
        """Replace the entry at ``pos``; ``key`` must keep the order."""
        i, j = pos
        self.keys[i][j] = key
        self.vals[i][j] = value
        if j == 0:
            self.mins[i] = key

    def insert(self, key: int, value: object) -> None:
        if not self.n:
            self.keys, self.vals, self.mins = [[key]], [[value]], [key]
            self.n = 1
            return
        i = max(bisect_right(self.mins, key) - 1, 0)
        ks, vs = self.keys[i], self.vals[i]
        j = bisect_right(ks, key)
        ks.insert(j, key)
        vs.insert(j, value)
        if j == 0:
            self.mins[i] = key
        self.n += 1
        if len(ks) > 2 * _LOAD:
            self.keys.insert(i + 1, ks[_LOAD:])
            self.vals.insert(i + 1, vs[_LOAD:])
            del ks[_LOAD:], vs[_LOAD:]
            self.mins.insert(i + 1, self.keys[i + 1][0])

    def delete(self, pos: tuple[int, int]) -> None:
        i, j = pos
        ks = self.keys[i]
        del ks[j], self.vals[i][j]
        self.n -= 1
        if not ks:
            del self.keys[i], self.vals[i], self.mins[i]
        elif j == 0:
            self.mins[i] = ks[0]

    def items(self) -> list[tuple[int, object]]:
        """Every (key, value) in order (for inspection; O(n))."""
        pairs = zip(self.keys, self.vals, strict=True)
        return [kv for ks, vs in pairs for kv in zip(ks, vs, strict=True)]

    def first(self) -> tuple[int, object] | None:
        return (self.keys[0][0], self.vals[0][0]) if self.n else None

    def pop_first(self) -> None:
        self.delete((0, 0))

    def last(self) -> tuple[int, object] | None:
        return (self.keys[-1][-1], self.vals[-1][-1]) if self.n else None

    def pop_last(self) -> None:
        self.delete((len(self.keys) - 1, len(self.keys[-1]) - 1))


class OutOfOrder:
    """Out-of-order bytes of one connection (see the module text)."""

    __slots__ = ("limit", "pieces", "ranges", "bytes", "recent", "dropped")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pieces = SortedMap()  # start -> bytearray
        self.ranges = SortedMap()  # start -> end
        self.bytes = 0
        self.recent: list[int] = []  # starts of the ranges touched last, newest first
        self.dropped = 0  # segments refused because of the memory bound

    def __len__(self) -> int:
        """Number of contiguous ranges held (the holes between them plus one)."""
        return len(self.ranges)

    @property
    def memory(self) -> int:
        """Bytes counted against ``limit``: payload plus the per-entry overhead."""
        return self.bytes + ENTRY_OVERHEAD * (len(self.pieces) + len(self.ranges))

    def add(self, start: int, data: bytes | memoryview) -> bool:
        """Keep ``data`` at offset ``start``; False (counted) when it does not fit.

        The check is conservative (a segment adds at most its length, one piece, one
        range and one piece split), so a refused segment costs no walk of the queue.
        """
        n = len(data)
        if not n:
            return True
        if self.memory + n + 3 * ENTRY_OVERHEAD > self.limit:
            self.dropped += 1
            return False
        end = start + n
        self._put_piece(start, end, data)
        lo, hi = self._put_range(start, end)
        recent = [s for s in self.recent if not lo <= s < hi]
        recent.insert(0, lo)
        del recent[_RECENT:]
        self.recent = recent
        return True

    def _put_piece(self, start: int, end: int, data: bytes | memoryview) -> None:
        """Store [start, end) as one piece, cutting or removing the pieces it covers."""
        pieces = self.pieces
        pos = pieces.floor(start)
        if pos is not None:
            ps = pieces.key(pos)
            pd = pieces.value(pos)
            pe = ps + len(pd)
            if pe >= end:  # wholly inside one piece: the bytes are already here
                return
            if pe > start:
                del pd[start - ps :]  # keep the piece's head, the segment brings the rest
                self.bytes -= pe - start
                pe = start
        nxt = pieces.after(pos)
        while nxt is not None and pieces.key(nxt) < end:
            ns = pieces.key(nxt)
            nd = pieces.value(nxt)
            ne = ns + len(nd)
            if ne > end:  # the last one only loses its head
                del nd[: end - ns]
                self.bytes -= end - ns
                pieces.set(nxt, end, nd)
                break
            self.bytes -= ne - ns
            pieces.delete(nxt)
            nxt = pieces.after(pos) if pos is not None else pieces.after(None)
        self.bytes += end - start
        if pos is not None and pe == start and len(pd):
            pd += data  # appended right after a piece: one piece grows
        elif pos is not None and not len(pd):
            pieces.set(pos, start, bytearray(data))  # the emptied piece is reused
        else:
            pieces.insert(start, bytearray(data))

    def _put_range(self, start: int, end: int) -> tuple[int, int]:
        """Merge [start, end) into the ranges; returns the range that now holds it."""
        ranges = self.ranges
        pos = ranges.floor(start)
        if pos is not None and ranges.value(pos) >= start:
            lo = ranges.key(pos)
            hi = max(ranges.value(pos), end)
        else:
            lo, hi = start, end
            ranges.insert(start, end)
            pos = ranges.floor(start)
        assert pos is not None
        nxt = ranges.after(pos)
        while nxt is not None and ranges.key(nxt) <= hi:
            hi = max(hi, ranges.value(nxt))
            ranges.delete(nxt)
            nxt = ranges.after(pos)
        ranges.set(pos, lo, hi)
        return lo, hi

    def pull(self, rcv_nxt: int) -> list[memoryview]:
        """Remove and return, in order, the bytes that continue the stream at ``rcv_nxt``."""
        out = []
        pieces, ranges = self.pieces, self.ranges
        while (f := pieces.first()) is not None and f[0] <= rcv_nxt:
            ps, pd = f
            pieces.pop_first()
            self.bytes -= len(pd)
            pe = ps + len(pd)
            if pe > rcv_nxt:
                out.append(memoryview(pd)[rcv_nxt - ps :])
                rcv_nxt = pe
        while (f := ranges.first()) is not None and f[0] <= rcv_nxt:
            ranges.pop_first()
        return out

    def sack_blocks(self) -> list[tuple[int, int]]:
        """The ranges last touched as (start, end) offsets, most recent first (RFC 2018)."""
        ranges = self.ranges
        out: list[tuple[int, int]] = []
        for s in self.recent:
            pos = ranges.floor(s)
            if pos is None:
                continue
            b = (ranges.key(pos), ranges.value(pos))
            if b[1] > s and b not in out:
                out.append(b)
        return out

    def clear(self) -> None:
        self.pieces = SortedMap()
        self.ranges = SortedMap()
        self.bytes = 0
        self.recent = []
