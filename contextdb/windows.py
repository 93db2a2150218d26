"""From per-second samples to windows, look-ahead performance and handover events.

Pure functions over numpy arrays: no store, no clock. One *run* (a drive, or a live
session) of one carrier is laid on a one-second grid; the grid yields

- handover events: every stretch in which the carrier delivered nothing, and every
  seamless cell change, with its gap (see :func:`detect_events`);
- windows: W seconds of RSRP ending at second e, keyed by the cell at e, with the
  throughput, RTT and loss measured over the look-ahead e+1 .. e+L (after the window,
  never during it: a query at e must be compared with what followed e), and the longest
  failure/outage starting in that look-ahead (0 when none).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from contextdb.config import ContextDBConfig
from contextdb.position import Pass, split_passes
from contextdb.records import SUCCESS, HandoverEvent, Sample, classify

RUN_BREAK_S = 300  # a hole this long ends a run: what follows is another drive


@dataclass
class Grid:
    """One carrier's run, one slot per second from ``t0``.

    ``present`` is False for seconds with no sample that were not bridged (a hole longer
    than ``fill_gap_s``); such seconds count as delivering nothing.
    """

    carrier: str
    t0: int
    cell: list[str | None]
    rsrp: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    dl: np.ndarray
    rtt: np.ndarray
    loss: np.ndarray
    present: np.ndarray
    pos: np.ndarray  # km along the line, nan unknown
    speed: np.ndarray  # km/h

    def __len__(self) -> int:
        return len(self.cell)


@dataclass
class Windows:
    """A batch of windows (parallel arrays), all of one carrier."""

    cell: list[str]
    t: np.ndarray  # end second of the window
    lat: np.ndarray
    lon: np.ndarray
    rsrp: np.ndarray  # (n, W) float32
    thr: np.ndarray  # bit/s over the look-ahead
    rtt: np.ndarray  # seconds, nan when no ping ran in the look-ahead
    loss: np.ndarray  # fraction, nan likewise
    gap: np.ndarray  # longest failure/outage starting in the look-ahead, 0 if none
    last: np.ndarray  # bit/s in the window's last second (the "last value" baseline)
    recent_var: np.ndarray  # variance of the bit/s over the window's seconds (short-term)
    pos: np.ndarray = None  # type: ignore[assignment]  # km along the line at the last second
    speed: np.ndarray = None  # type: ignore[assignment]  # km/h likewise (nan unknown)

    def __post_init__(self) -> None:
        for k in OPTIONAL_FIELDS:  # callers that know no position leave them out
            if getattr(self, k) is None:
                setattr(self, k, np.full(len(self.cell), np.nan))

    def __len__(self) -> int:
        return len(self.cell)

    def take(self, idx) -> Windows:
        idx = np.asarray(idx, dtype=np.int64)
        return Windows(
            cell=[self.cell[i] for i in idx],
            **{k: getattr(self, k)[idx] for k in ARRAY_FIELDS},
        )

    def by_cell(self) -> dict[str, Windows]:
        groups: dict[str, list[int]] = {}
        for i, c in enumerate(self.cell):
            groups.setdefault(c, []).append(i)
        return {c: self.take(ix) for c, ix in groups.items()}

    @staticmethod
    def concat(parts: list[Windows], width: int) -> Windows:
        if not parts:
            return empty_windows(width)
        return Windows(
            cell=[c for p in parts for c in p.cell],
            **{k: np.concatenate([getattr(p, k) for p in parts]) for k in ARRAY_FIELDS},
        )


ARRAY_FIELDS = (
    "t",
    "lat",
    "lon",
    "rsrp",
    "thr",
    "rtt",
    "loss",
    "gap",
    "last",
    "recent_var",
    "pos",
    "speed",
)
OPTIONAL_FIELDS = ("pos", "speed")  # absent from chunks written before they existed: nan


def empty_windows(width: int) -> Windows:
    z = np.zeros(0)
    return Windows([], z, z, z, np.zeros((0, width), np.float32), z, z, z, z, z, z)


@dataclass
class RunResult:
    windows: Windows
    events: list[HandoverEvent]
    counts: Counter = field(default_factory=Counter)
    passes: list[Pass] = field(default_factory=list)  # runs over a line (position known)


def _merge(old: Sample, new: Sample) -> Sample:
    """Two samples for the same second: keep the later value of each field unless unknown."""

    def pick(a, b):
        return a if b is None or (isinstance(b, float) and math.isnan(b)) else b

    return Sample(
        carrier=new.carrier,
        t=new.t,
        cell=pick(old.cell, new.cell),
        rsrp=pick(old.rsrp, new.rsrp),
        lat=pick(old.lat, new.lat),
        lon=pick(old.lon, new.lon),
        dl_bps=pick(old.dl_bps, new.dl_bps),
        rtt=pick(old.rtt, new.rtt),
        loss=pick(old.loss, new.loss),
        pos_km=pick(old.pos_km, new.pos_km),
        speed_kmh=pick(old.speed_kmh, new.speed_kmh),
    )


def split_runs(samples: list[Sample]) -> list[list[Sample]]:
    """Sort one carrier's samples by time and cut where RUN_BREAK_S passes without one."""
    ordered = sorted(samples, key=lambda s: s.t)
    runs: list[list[Sample]] = []
    for s in ordered:
        if runs and s.t - runs[-1][-1].t < RUN_BREAK_S:
            runs[-1].append(s)
        else:
            runs.append([s])
    return runs


def to_grid(samples: list[Sample], fill_gap_s: int, counts: Counter | None = None) -> Grid:
    """Lay one run (time-ordered, one carrier) on a one-second grid.

    Loggers that tick slightly slower than once a second write two rows in one second
    and none in the next; a second row for an occupied slot whose predecessor is empty
    moves the first row back into it. Other duplicates are merged field by field.
    Holes up to ``fill_gap_s`` seconds get interpolated RSRP, the cell carried over and
    unknown performance; longer holes stay absent.
    """
    counts = counts if counts is not None else Counter()
    t0 = math.floor(samples[0].t)
    n = math.floor(samples[-1].t) - t0 + 1
    slots: list[Sample | None] = [None] * n
    for s in samples:
        i = math.floor(s.t) - t0
        if slots[i] is None:
            slots[i] = s
        elif i > 0 and slots[i - 1] is None:
            slots[i - 1], slots[i] = slots[i], s
            counts["slots re-timed"] += 1
        else:
            slots[i] = _merge(slots[i], s)
            counts["samples merged"] += 1
    nan = np.full(n, np.nan)
    rsrp, lat, lon, dl, rtt, loss, pos, speed = (nan.copy() for _ in range(8))
    present = np.zeros(n, dtype=bool)
    cell: list[str | None] = [None] * n
    for i, s in enumerate(slots):
        if s is None:
            continue
        present[i] = True
        cell[i] = s.cell
        rsrp[i], lat[i], lon[i] = s.rsrp, s.lat, s.lon
        dl[i], rtt[i], loss[i] = s.dl_bps, s.rtt, s.loss
        pos[i], speed[i] = s.pos_km, s.speed_kmh
    # bridge short holes
    i = 0
    while i < n:
        if present[i]:
            i += 1
            continue
        j = i
        while j < n and not present[j]:
            j += 1
        if 0 < i and j < n and j - i <= fill_gap_s:
            present[i:j] = True
            for k in range(i, j):
                cell[k] = cell[i - 1]
            a, b = rsrp[i - 1], rsrp[j]
            rsrp[i:j] = a + (b - a) * (np.arange(1, j - i + 1) / (j - i + 1))
            counts["seconds bridged"] += j - i
        else:
            counts["seconds absent"] += j - i
        i = j
    return Grid(samples[0].carrier, t0, cell, rsrp, lat, lon, dl, rtt, loss, present, pos, speed)


def detect_events(grid: Grid, cfg: ContextDBConfig) -> list[HandoverEvent]:
    """Disconnections and cell changes of one run.

    A second is *up* when the carrier delivered something, *down* when it delivered
    nothing or is absent from the log, and unknown otherwise (idle). Down seconds
    between two up seconds form one disconnection whose gap is their count (the logs
    resolve one second; a live gateway reports exact gaps through
    :meth:`contextdb.live.LiveIngest.disconnection`). A cell change between adjacent up
    seconds is a successful handover with gap 0.
    """
    events: list[HandoverEvent] = []
    last_up = -1
    last_cell: str | None = None
    down = 0
    first_down = -1
    for i in range(len(grid)):
        present, dl = grid.present[i], grid.dl[i]
        if present and dl > 0:
            cell = grid.cell[i]
            if last_up >= 0 and last_cell is not None:
                if down:
                    gap = float(down)
                    kind = classify(gap, cfg.success_max_s, cfg.failure_max_s)
                    t = float(grid.t0 + first_down)
                    events.append(HandoverEvent(grid.carrier, t, last_cell, cell, gap, kind))
                elif cell is not None and cell != last_cell:
                    t = float(grid.t0 + i)
                    events.append(HandoverEvent(grid.carrier, t, last_cell, cell, 0.0, SUCCESS))
            last_up, last_cell, down = i, cell if cell is not None else last_cell, 0
        elif not present or dl == 0:
            if last_up >= 0:
                if down == 0:
                    first_down = i
                down += 1
    return events


def cut_windows(grid: Grid, events: list[HandoverEvent], cfg: ContextDBConfig) -> Windows:
    """Windows of ``cfg.window_s`` seconds every ``cfg.step_s()`` seconds from the run's
    start, each with the performance of the ``cfg.lookahead_s`` seconds after it.

    Windows start on absolute seconds divisible by the step, so a live ingester that
    re-cuts a sliding buffer finds the same windows as a batch import of the whole run.
    A window is kept when its RSRP is fully known, its last second has a cell and at
    least half of its look-ahead has a known throughput (absent seconds count as 0).
    """
    w, la, step = cfg.window_s, cfg.lookahead_s, cfg.step_s()
    n = len(grid)
    first = w - 1 + (-grid.t0) % step
    ends = np.arange(first, n - la, step)
    if len(ends) == 0:
        return empty_windows(w)
    rsrp_win = np.lib.stride_tricks.sliding_window_view(grid.rsrp, w)[ends - (w - 1)]
    dl = np.where(grid.present, grid.dl, 0.0)
    ahead = np.lib.stride_tricks.sliding_window_view(dl, la)[ends + 1]
    known = np.isfinite(ahead).sum(axis=1)
    keep = (
        np.isfinite(rsrp_win).all(axis=1)
        & np.array([grid.cell[e] is not None for e in ends])
        & (known * 2 >= la)
    )
    ends, rsrp_win, ahead, known = ends[keep], rsrp_win[keep], ahead[keep], known[keep]
    thr = np.nansum(ahead, axis=1) / np.maximum(known, 1)

    def ahead_mean(values: np.ndarray) -> np.ndarray:
        v = np.lib.stride_tricks.sliding_window_view(values, la)[ends + 1]
        cnt = np.isfinite(v).sum(axis=1)
        out = np.full(len(ends), np.nan)
        np.divide(np.nansum(v, axis=1), cnt, out=out, where=cnt > 0)
        return out

    gap = np.zeros(len(ends))
    for ev in events:
        if ev.kind == SUCCESS:
            continue
        off = math.floor(ev.t) - grid.t0  # the second the disconnection starts in
        lo, hi = np.searchsorted(ends, [off - la, off], side="left")  # off-la <= e < off
        np.maximum(gap[lo:hi], ev.gap, out=gap[lo:hi])
    return Windows(
        cell=[grid.cell[e] for e in ends],
        t=(grid.t0 + ends).astype(np.float64),
        lat=grid.lat[ends],
        lon=grid.lon[ends],
        rsrp=rsrp_win.astype(np.float32),
        thr=thr,
        rtt=ahead_mean(grid.rtt),
        loss=ahead_mean(grid.loss),
        gap=gap,
        last=grid.dl[ends],
        recent_var=_recent_var(grid.dl, ends, w),
        pos=grid.pos[ends],
        speed=grid.speed[ends],
    )


def _recent_var(dl: np.ndarray, ends: np.ndarray, w: int) -> np.ndarray:
    """Sample variance of the known throughputs inside each window (nan below two)."""
    if len(ends) == 0:
        return np.zeros(0)
    v = np.lib.stride_tricks.sliding_window_view(dl, w)[ends - (w - 1)]
    cnt = np.isfinite(v).sum(axis=1)
    mean = np.nansum(v, axis=1) / np.maximum(cnt, 1)
    ss = np.nansum((v - mean[:, None]) ** 2, axis=1)
    out = np.full(len(ends), np.nan)
    np.divide(ss, cnt - 1, out=out, where=cnt > 1)
    return out


def grid_passes(grid: Grid, events: list[HandoverEvent]) -> list[Pass]:
    """The passes over the line of one run: seconds absent from the log delivered
    nothing, like in the windows."""
    dl = np.where(grid.present, grid.dl, 0.0)
    return split_passes(float(grid.t0), grid.pos, grid.speed, dl, grid.rtt, grid.loss, events)


def process(
    samples: list[Sample], cfg: ContextDBConfig, events: list[HandoverEvent] | None = None
) -> dict[str, RunResult]:
    """Samples of any carriers and runs -> per carrier windows, events and counters.

    ``events``, when given, are disconnections timed by the source itself (a simulator,
    a gateway's path layer); they replace those inferred from the one-second grid.
    """
    by_carrier: dict[str, list[Sample]] = {}
    for s in samples:
        by_carrier.setdefault(s.carrier, []).append(s)
    out: dict[str, RunResult] = {}
    for carrier, ss in by_carrier.items():
        counts: Counter = Counter()
        parts, found, line_passes = [], [], []
        for run in split_runs(ss):
            grid = to_grid(run, cfg.fill_gap_s, counts)
            if events is None:
                ev = detect_events(grid, cfg)
            else:
                end = grid.t0 + len(grid)
                ev = [e for e in events if e.carrier == carrier and grid.t0 <= e.t < end]
            wins = cut_windows(grid, ev, cfg)
            if np.isfinite(grid.pos).any():
                passes = grid_passes(grid, ev)
                counts["passes"] += len(passes)
                line_passes.extend(passes)
            counts["samples"] += len(run)
            counts["windows"] += len(wins)
            parts.append(wins)
            found.extend(ev)
        out[carrier] = RunResult(Windows.concat(parts, cfg.window_s), found, counts, line_passes)
    return out
