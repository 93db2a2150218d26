"""The discrete-event loop: a heap of (time, order, callback, argument).

Time is in seconds (floats). Events at the same time run in the order they were
scheduled (the ``order`` counter), which makes a run a pure function of its inputs and
its seed. The loop reports progress through a callback every few thousand events so a
long replay can draw a progress bar without the model knowing about terminals.
"""

from __future__ import annotations

import heapq
import itertools
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

Callback = Callable[[float, Any], None]
_push = heapq.heappush


class Engine:
    __slots__ = ("now", "_heap", "_order", "events")

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callback, Any]] = []
        self._order = itertools.count()
        self.events = 0

    def at(self, t: float, callback: Callback, arg: Any = None) -> None:
        """Run ``callback(t, arg)`` at time ``t`` (never before ``now``)."""
        if t < self.now:
            t = self.now
        _push(self._heap, (t, next(self._order), callback, arg))

    def run(self, until: float, progress: Callable[[float], None] | None = None) -> None:
        """Process events up to and including time ``until``."""
        heap = self._heap
        pop = heapq.heappop
        n = 0
        while heap:
            item = pop(heap)
            t = item[0]
            if t > until:
                _push(heap, item)  # the first event after the run: back where it was
                break
            self.now = t
            item[2](t, item[3])
            n += 1
            if progress is not None and not n & 4095:
                progress(t)
        self.events += n
        self.now = max(self.now, until)


class ProgressBar:
    """A plain-text progress bar on stderr, drawn only after the run has taken a while."""

    def __init__(
        self, total: float, label: str = "", stream: TextIO | None = None, after: float = 2.0
    ):
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.after = after
        self.shown = False
        self._last = 0.0

    def __call__(self, t: float) -> None:
        wall = time.monotonic()
        if wall - self.start < self.after or wall - self._last < 0.2:
            return
        self._last = wall
        self.shown = True
        frac = min(max(t / self.total, 0.0), 1.0) if self.total > 0 else 1.0
        width = 30
        fill = int(frac * width)
        self.stream.write(
            f"\r{self.label:<24.24} [{'#' * fill}{'.' * (width - fill)}] {frac * 100:5.1f}% "
            f"sim {t:7.0f}/{self.total:.0f} s"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
