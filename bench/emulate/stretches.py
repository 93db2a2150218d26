"""Which seconds of the traces an emulation plays: ``--repeat N`` stretches per row.

A stretch is one run of every row: the testbed's link emulator starts ``offset`` seconds
into every trace (the runner hands it the traces from there on), the workload starts
``lead`` seconds later, once the proxy's paths are up, and lasts ``duration`` seconds. So
stretch ``k`` measures trace seconds ``start + lead + k * stride`` to that plus ``duration``
(``offset = start + k * stride``; ``--start`` defaults to 0), on every row: comparisons
pair rows on the same seconds.

Traces repeat with their own period (a Mahimahi file's last timestamp; the bundled
T-Mobile and Verizon LTE traces are 140 s long, AT&T's 786 s), so a stretch may wrap
around the end of a trace; :meth:`Stretch.covers` says which seconds of each trace it
played. The default stride (:func:`default_stride`) is the duration plus :data:`GAP_S`,
unless that many stretches would pass the end of the shortest varying trace: then the
stretches are spread evenly around it (stride = period / N), so they start at different
points of every trace even if they overlap. Steady traces (fixed rates) have no seconds to
choose and are left out of that choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from netns.traces import DeliveryTrace

GAP_S = 10.0
"""Seconds between the end of one stretch's workload and the start of the next one's."""


@dataclass(frozen=True)
class Stretch:
    """Stretch ``index``: the emulator starts at trace second ``offset``, the workload
    ``lead`` seconds later for ``duration`` seconds."""

    index: int
    offset: float
    lead: float
    duration: float

    @property
    def start(self) -> float:
        """Trace second at which the workload starts."""
        return self.offset + self.lead

    @property
    def end(self) -> float:
        return self.start + self.duration

    def covers(self, period: float | None) -> tuple[float, float, bool]:
        """(first, last, wraps): the seconds of a trace of ``period`` seconds the workload
        played, as positions in that trace; ``wraps`` when it passed the trace's end
        (then it played ``first`` to the end and 0 to ``last``). ``period`` None: a
        steady trace, reported in absolute seconds."""
        if not period:
            return self.start, self.end, False
        first = self.start % period
        wraps = first + self.duration > period
        last = (first + self.duration) % period if wraps else first + self.duration
        return first, last, wraps

    def to_json(self, periods: Mapping[str, float | None]) -> dict:
        out: dict = {
            "index": self.index,
            "offset_s": self.offset,
            "start_s": self.start,
            "end_s": self.end,
            "carriers": {},
        }
        for name, period in periods.items():
            first, last, wraps = self.covers(period)
            out["carriers"][name] = {
                "from_s": round(first, 3),
                "to_s": round(last, 3),
                "period_s": period,
                "wraps": wraps,
            }
        return out


def describe(stretch: Stretch, periods: Mapping[str, float | None]) -> str:
    """One line: the seconds the stretch measured, per varying trace where they differ."""
    parts = []
    for name, period in periods.items():
        if not period:
            continue
        first, last, wraps = stretch.covers(period)
        if wraps:
            parts.append(f"{name} {first:g}-{period:g} + 0-{last:g} s")
        elif (first, last) != (stretch.start, stretch.end):
            parts.append(f"{name} {first:g}-{last:g} s")
    where = f" ({'; '.join(parts)})" if parts else ""
    return f"stretch {stretch.index}: trace seconds {stretch.start:g}-{stretch.end:g}{where}"


def period_s(trace: DeliveryTrace) -> float | None:
    """The trace's period in seconds, or None for a steady trace (every whole second
    within one opportunity of the others: a fixed rate)."""
    counts = trace.counts
    whole = len(counts) // 1000
    if whole == 0:
        return None
    per_s = counts[: whole * 1000].reshape(whole, 1000).sum(axis=1)
    if int(per_s.max() - per_s.min()) <= 1 and len(counts) % 1000 == 0:
        return None
    return len(counts) / 1000


def default_stride(duration: float, n: int, periods: Sequence[float | None]) -> float:
    """``duration`` + :data:`GAP_S`, or, if ``n`` such stretches pass the end of the
    shortest varying trace, that period / ``n`` (the stretches spread evenly around it)."""
    stride = duration + GAP_S
    varying = [p for p in periods if p]
    if n > 1 and varying and (n - 1) * stride + duration > min(varying):
        stride = min(varying) / n
    return round(stride, 3)


def plan(n: int, lead: float, duration: float, stride: float, start: float = 0.0) -> list[Stretch]:
    """The ``n`` stretches: stretch ``k`` starts the emulator at trace second
    ``start + k * stride`` (its workload ``lead`` seconds later)."""
    if n < 1:
        raise ValueError("need at least one stretch")
    if start < 0:
        raise ValueError("the first stretch cannot start before the traces")
    return [Stretch(k, round(start + k * stride, 3), lead, duration) for k in range(n)]


def window(trace: DeliveryTrace, offset: float, seconds: float) -> DeliveryTrace:
    """The trace from ``offset`` seconds on (wrapping around its period), ``seconds`` long
    (at most one period: a longer run repeats it as the original would)."""
    counts = trace.counts
    ms = int(round(offset * 1000)) % len(counts)
    rolled = np.roll(counts, -ms)
    keep = min(len(counts), max(1, int(np.ceil(seconds * 1000))))
    return DeliveryTrace(rolled[:keep], trace.name)
