"""What a replay measures, and the summary a report prints.

The :class:`Recorder` is filled during the run (cheap appends and counters); the
summary functions turn it into numbers a person compares across policies:

* **goodput**: bytes delivered in order to the receiving application, per second and
  over the run; the part carried upstream (uploads: client to server) is kept apart too,
  so a report gives download and upload goodput;
* **oracle bound**: the integral of the sum of every carrier's instantaneous capacity
  (IP bytes), so a goodput reads as a fraction of what was physically possible;
* **flow completion time** per size class (request sent to last byte delivered);
* **page load time** (web), **stalls** (count and time, constant-bitrate streams);
* **out-of-order delay**: how long a message that arrived waited in the receive buffer
  for the bytes before it;
* **overhead**: redundant payload (DATA payload the sending side's mux put on its paths
  beyond the first copy of each byte, over the payload it put there: copies and resends;
  the emulation's measure, ``bench.emulate.directions``) and the share of what it wrote
  that is not DATA payload.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

SIZE_CLASSES: tuple[tuple[str, int], ...] = (
    ("<=10KB", 10_000),
    ("10-100KB", 100_000),
    ("100KB-1MB", 1_000_000),
    (">1MB", 1 << 62),
)


def size_class(size: int) -> str:
    for name, top in SIZE_CLASSES:
        if size <= top:
            return name
    return SIZE_CLASSES[-1][0]


@dataclass
class Stall:
    stream: int
    start: float
    end: float


@dataclass
class Recorder:
    """Raw measurements of one run."""

    duration: float
    n_paths: int
    step: float = 1.0
    goodput: list[float] = field(default_factory=list)  # in-order bytes per step
    uploaded: list[float] = field(default_factory=list)  # ... of which client to server
    path_useful: list[list[float]] = field(default_factory=list)  # first copies per path
    # (kind, size, start, completion time)
    flows: list[tuple[str, int, float, float]] = field(default_factory=list)
    failed_flows: int = 0
    pages: list[float] = field(default_factory=list)
    stalls: list[Stall] = field(default_factory=list)
    streams: int = 0
    startup_delays: list[float] = field(default_factory=list)
    ooo_delays: array = field(default_factory=lambda: array("d"))
    messages_received: int = 0  # first copies
    payload_sent: int = 0  # DATA payload the sending side wrote on its paths, every copy
    first_sent: int = 0  # ... of it, the first copy of each byte
    wire_sent: int = 0  # every byte it wrote on them (all messages, framing, TLS)
    useful_bytes: int = 0  # bytes delivered to the receiving applications
    duplicate_bytes: int = 0  # copies that reached the receiver after the first
    reinjections: int = 0
    stall_reinjections: int = 0
    path_downs: int = 0
    resets: int = 0
    resumes: int = 0
    resent_after_resume: int = 0
    files_done: list[float] = field(default_factory=list)
    events: int = 0
    wall: float = 0.0

    def __post_init__(self) -> None:
        n = int(math.ceil(self.duration / self.step)) + 1
        self.goodput = [0.0] * n
        self.uploaded = [0.0] * n
        self.path_useful = [[0.0] * n for _ in range(self.n_paths)]

    def delivered(self, t: float, nbytes: int, up: bool = False) -> None:
        """``nbytes`` reached a receiving application in order at ``t``; ``up``: the
        server's, from an upload."""
        i = int(t / self.step)
        if i < len(self.goodput):
            self.goodput[i] += nbytes
            if up:
                self.uploaded[i] += nbytes

    def useful(self, t: float, path: int, nbytes: int) -> None:
        i = int(t / self.step)
        if i < len(self.goodput):
            self.path_useful[path][i] += nbytes


def percentile(xs: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile ``q`` in 0..100 of ``xs`` (None if empty)."""
    if not xs:
        return None
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _stats(xs: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(xs),
        "mean": sum(xs) / len(xs) if xs else None,
        "p50": percentile(xs, 50),
        "p95": percentile(xs, 95),
        "p99": percentile(xs, 99),
        "max": max(xs) if xs else None,
    }


def summarize(rec: Recorder, oracle_bytes: float, measure_from: float = 0.0) -> dict:
    """The numbers of one run, as plain JSON-able values (bytes, seconds, Mbit/s)."""
    span = rec.duration - measure_from
    first = int(measure_from / rec.step)
    delivered = sum(rec.goodput[first:])
    uploaded = sum(rec.uploaded[first:])
    goodput_mbps = delivered * 8 / span / 1e6 if span > 0 else 0.0
    upload_mbps = uploaded * 8 / span / 1e6 if span > 0 else 0.0
    oracle_mbps = oracle_bytes * 8 / span / 1e6 if span > 0 else 0.0
    fct: dict[str, dict] = {}
    for name, _ in SIZE_CLASSES:
        xs = [f[3] for f in rec.flows if size_class(f[1]) == name]
        if xs:
            fct[name] = _stats(xs)
    stall_time = sum(s.end - s.start for s in rec.stalls)
    ooo = list(rec.ooo_delays)
    n_msgs = rec.messages_received
    ooo_all = ooo + [0.0] * max(n_msgs - len(ooo), 0)
    return {
        "goodput_mbps": goodput_mbps,
        "download_mbps": goodput_mbps - upload_mbps,
        "upload_mbps": upload_mbps,
        "delivered_bytes": delivered,
        "oracle_mbps": oracle_mbps,
        "oracle_fraction": goodput_mbps / oracle_mbps if oracle_mbps > 0 else None,
        "flows_completed": len(rec.flows),
        "flows_failed": rec.failed_flows,
        "fct": fct,
        "page_load": _stats(rec.pages) if rec.pages else None,
        "streams": rec.streams,
        "stalls": len(rec.stalls),
        "stall_time": stall_time,
        "startup_delay": _stats(rec.startup_delays) if rec.startup_delays else None,
        "ooo_messages": len(ooo),
        "ooo_delay": _stats(ooo_all) if n_msgs else None,
        "ooo_delay_of_late": _stats(ooo) if ooo else None,
        "payload_sent": rec.payload_sent,
        "wire_sent": rec.wire_sent,
        "useful_bytes": rec.useful_bytes,
        "duplicate_bytes": rec.duplicate_bytes,
        "redundant_fraction": max(0, rec.payload_sent - max(rec.useful_bytes, rec.first_sent))
        / rec.payload_sent
        if rec.payload_sent
        else 0.0,
        "header_fraction": (rec.wire_sent - rec.payload_sent) / rec.wire_sent
        if rec.wire_sent
        else 0.0,
        "reinjections": rec.reinjections,
        "stall_reinjections": rec.stall_reinjections,
        "path_downs": rec.path_downs,
        "resets": rec.resets,
        "resumes": rec.resumes,
        "resent_after_resume": rec.resent_after_resume,
        "files_done": list(rec.files_done),
        "events": rec.events,
        "wall_s": rec.wall,
        "speedup": rec.duration / rec.wall if rec.wall > 0 else None,
    }


def stream_stalls(
    deliveries: Sequence[tuple[float, int]],
    rate: float,
    start: float,
    end: float,
    startup: float,
    resume: float,
    length: float | None = None,
) -> tuple[float | None, list[tuple[float, float]]]:
    """Play a constant-bitrate stream against its in-order deliveries.

    ``deliveries`` are (time, bytes delivered in order so far), increasing. The player
    starts once ``startup`` seconds of content are buffered, plays at ``rate`` bytes/s,
    stalls when the buffer runs dry and resumes once ``resume`` seconds are buffered
    again (or the rest of the stream, if shorter). Returns (startup delay or None if it
    never started, stall intervals). ``length`` is the stream's content in seconds
    (None: it lasts past ``end``). A stall still running at ``end`` is cut there.
    """
    total = length * rate if length is not None else math.inf
    stalls: list[tuple[float, float]] = []
    playing = False
    started: float | None = None
    pos = 0.0  # bytes played
    t_pos = start  # time at which ``pos`` is valid
    got = 0.0  # bytes available
    stall_from: float | None = None
    points = list(deliveries) + [(end, -1)]
    for t, b in points:
        t = min(t, end)
        # advance playback until t with the buffer we had
        if playing:
            drain_until = t_pos + (got - pos) / rate
            if drain_until < t and got < total:
                pos = got
                playing = False
                stall_from = drain_until
            else:
                pos = min(pos + (t - t_pos) * rate, got)
        t_pos = t
        if b < 0:
            break
        got = float(b)
        if not playing and pos < total:
            need = (startup if started is None else resume) * rate
            if got - pos >= min(need, total - pos):
                playing = True
                if started is None:
                    started = t - start
                elif stall_from is not None:
                    stalls.append((stall_from, t))
                    stall_from = None
    if stall_from is not None and stall_from < end:
        stalls.append((stall_from, end))
    return started, stalls
