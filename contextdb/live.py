"""Live ingest: per-second samples from a running gateway, stored as they mature.

A sans-I/O accumulator: the gateway's context generator calls :meth:`LiveIngest.feed`
with one :class:`Sample` per carrier per second (cell id and RSRP from the modem's
CONTEXT report; ``dl_bps``, ``rtt`` and ``loss`` from the carrier's measured path
performance, e.g. summed TCP_INFO delivery rate, smoothed RTT and retransmission share)
and, when the path layer timed a disconnection exactly, :meth:`disconnection`. Calling
:meth:`flush` (off the data path, with the current time) cuts every window whose
look-ahead has completed with the same code as a batch import, and stores it.
The running gateway feeds it from ``middlebox/context/loop.py`` (one sample per carrier per second
from TCP_INFO and the carrier context), flushing every ``context.flush_interval``.

What comes in is checked (:func:`clean`): a sample whose time is not a finite number
of seconds since the epoch is refused, and a value that is infinite or beyond
:data:`MAX_ABS` (which no unit here comes near, and which the windows' float32 columns
would turn into an infinity) becomes unknown, so no glitch of a modem or a measurement
puts an infinity into the windows a fleet shares. Values are not clamped to physical
ranges here: a live ingest stores exactly what a batch import of the same samples
stores (the property test in tests/contextdb/test_db.py); the gateway range-checks what
its context source reports (:mod:`middlebox.context.carriers`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from contextdb.db import ContextDB
from contextdb.records import HandoverEvent, Sample, classify
from contextdb.windows import RUN_BREAK_S, cut_windows, detect_events, to_grid

SETTLE_S = 10.0  # seconds a window waits after its look-ahead before it is stored
MAX_ABS = 1e15  # any value beyond: unknown (a petabit per second, a million years of RTT)
MAX_T = 1e11  # seconds since the epoch (the year 5138)
VALUES = ("rsrp", "lat", "lon", "dl_bps", "rtt", "loss")


def clean(sample: Sample) -> Sample | None:
    """``sample`` with every value that is not a number, infinite or beyond
    :data:`MAX_ABS` unknown (nan), or None when its time is unusable."""
    t = sample.t
    if isinstance(t, bool) or not isinstance(t, int | float) or not abs(t) <= MAX_T:
        return None  # nan fails the comparison too
    bad = {}
    for name in VALUES:
        v = getattr(sample, name)
        ok = isinstance(v, int | float) and not isinstance(v, bool) and abs(v) <= MAX_ABS
        if not ok and not (isinstance(v, float) and math.isnan(v)):
            bad[name] = math.nan
    return dataclasses.replace(sample, **bad) if bad else sample


@dataclass
class _Carrier:
    samples: list[Sample] = field(default_factory=list)
    reported: list[HandoverEvent] = field(default_factory=list)
    exact: bool = False  # the gateway reports disconnections itself
    last_window_t: float = float("-inf")
    last_event_t: float = float("-inf")


class LiveIngest:
    def __init__(self, db: ContextDB) -> None:
        self.db = db
        self.cfg = db.cfg
        self._carriers: dict[str, _Carrier] = {}
        # seconds of history kept so that a window and its look-ahead can be re-cut
        self.keep_s = self.cfg.window_s + self.cfg.lookahead_s + SETTLE_S + 60
        self.counters = {"samples_refused": 0, "values_dropped": 0}

    def feed(self, sample: Sample) -> None:
        checked = clean(sample)
        if checked is None:
            self.counters["samples_refused"] += 1
            return
        if checked is not sample:
            self.counters["values_dropped"] += 1
            sample = checked
        st = self._carriers.setdefault(sample.carrier, _Carrier())
        if st.samples and sample.t - st.samples[-1].t >= RUN_BREAK_S:
            self.flush(math.inf, sample.carrier)
            st.samples.clear()
        if st.samples and sample.t < st.samples[-1].t:
            return  # out of order: a live source never goes back in time
        st.samples.append(sample)

    def disconnection(
        self, carrier: str, t: float, gap: float, cell: str, cell_to: str | None = None
    ) -> HandoverEvent:
        """A disconnection timed by the gateway (sub-second precision). Once a carrier
        has reported one, its events come only from these reports, not from the
        one-second throughput grid."""
        st = self._carriers.setdefault(carrier, _Carrier())
        kind = classify(gap, self.cfg.success_max_s, self.cfg.failure_max_s)
        ev = HandoverEvent(carrier, t, cell, cell_to, gap, kind)
        st.exact = True
        st.reported.append(ev)
        return ev

    def flush(self, now: float, only: str | None = None) -> int:
        """Store what matured by ``now``; returns the number of windows stored.

        A window is mature when its look-ahead ended ``SETTLE_S`` seconds ago, so that a
        disconnection starting in it has usually ended (and been measured) by then; pass
        ``math.inf`` at the end of a session to store everything.
        """
        stored = 0
        for carrier, st in self._carriers.items():
            if not st.samples or (only is not None and carrier != only):
                continue
            grid = to_grid(st.samples, self.cfg.fill_gap_s)
            events = st.reported if st.exact else detect_events(grid, self.cfg)
            new_events = [e for e in events if e.t > st.last_event_t]
            horizon = min(now, st.samples[-1].t) - self.cfg.lookahead_s - SETTLE_S
            if now == math.inf:
                horizon = math.inf
            wins = cut_windows(grid, events, self.cfg)
            fresh = (wins.t > st.last_window_t) & (wins.t <= horizon)
            wins = wins.take(np.flatnonzero(fresh))
            if new_events or len(wins):
                self.db.add(carrier, wins, new_events, commit=False)
                stored += len(wins)
            if len(wins):
                st.last_window_t = float(wins.t.max())
            if new_events:
                st.last_event_t = max(e.t for e in new_events)
            cutoff = min(now, st.samples[-1].t) - self.keep_s
            st.samples = [s for s in st.samples if s.t >= cutoff]
            st.reported = [e for e in st.reported if e.t >= cutoff]
        self.db.commit()
        return stored
