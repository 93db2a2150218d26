"""One carrier's bottleneck as a fluid FIFO over a capacity-over-time trace.

The trace is :class:`netns.traces.DeliveryTrace` (the shape every testbed reader
produces: delivery opportunities of 1500 IP bytes per millisecond, periodic), so a
Mahimahi file, a 5G drive log, a fixed rate and the synthetic rail route all replay here.

Why a fluid FIFO rather than packets: Python pays per operation, and the simulator moves
messages of kilobytes. Inside each millisecond the opportunities are spread evenly, so
the cumulative deliverable bytes D(t) is piecewise linear; a message of S link bytes that
starts service at s leaves at D^-1(D(s) + S). That is exact for a FIFO served by the
trace (up to the sub-millisecond spreading) and costs one binary search per message.

Also modelled, per carrier: a fixed one-way propagation delay, a bounded drop-tail queue
(bytes beyond the limit are lost and resent by the path's TCP one round trip later), a
random per-packet loss from a seeded RNG (same treatment), and outages: explicit
intervals with no capacity, plus every stretch of the trace without opportunities longer
than ``outage_min`` (a tunnel in a drive log, a rail handover gap).
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

OPPORTUNITY_BYTES = 1500
"""IP bytes per delivery opportunity (Mahimahi's convention, as in ``netns.traces``)."""


class Trace(Protocol):
    """What the link needs of a trace: ``netns.traces.DeliveryTrace`` has it."""

    counts: np.ndarray  # opportunities per millisecond, periodic
    name: str


MSS = 1448
"""TCP payload bytes per 1500-byte IP packet on a carrier path (timestamps on)."""

LINK_FACTOR = OPPORTUNITY_BYTES / MSS
"""IP bytes on the link per byte of TCP payload (the path's own headers)."""


@dataclass(frozen=True)
class Carrier:
    """One carrier as the simulator sees it (data direction: node to gateway)."""

    name: str
    trace: Trace
    delay: float = 0.025  # s, one-way propagation delay
    queue_bytes: int = 384_000  # drop-tail limit of the bottleneck queue (256 packets)
    loss: float = 0.0  # random loss per packet
    outages: tuple[tuple[float, float], ...] = field(default=())  # extra (start, end) in s

    def __post_init__(self) -> None:
        if self.delay < 0 or self.queue_bytes < OPPORTUNITY_BYTES or not 0 <= self.loss < 1:
            raise ValueError(
                f"carrier {self.name}: need delay >= 0, queue >= 1500 bytes, 0 <= loss < 1"
            )


class Link:
    """The bottleneck of one carrier: capacity D(t), queue, loss, outages."""

    def __init__(
        self, carrier: Carrier, duration: float, seed: int = 0, outage_min: float = 0.5
    ) -> None:
        self.carrier = carrier
        self.delay = carrier.delay
        self.loss = carrier.loss
        self.queue_limit = carrier.queue_bytes
        counts = np.asarray(carrier.trace.counts, dtype=np.int64)
        for a, b in carrier.outages:
            counts = _blank(counts, a, b, duration)
        self.counts = counts.astype(np.float64)
        self.period = len(counts)
        self.cum = np.concatenate(([0.0], np.cumsum(self.counts)))
        self.total = float(self.cum[-1])
        self.rng = random.Random(seed)
        self.free_at = 0.0  # when the FIFO has sent everything given to it so far
        self.last_arrival = 0.0  # in-order delivery of the path's TCP (head of line)
        self.dropped_packets = 0
        self.lost_packets = 0
        self.outages = find_outages(counts, duration, outage_min)
        self._out_starts = [a for a, _ in self.outages]

    # -- capacity ----------------------------------------------------------------------

    def cumulative(self, t: float) -> float:
        """IP bytes the link could deliver in [0, t)."""
        u = t * 1000.0
        k = int(u)
        rounds, r = divmod(k, self.period)
        return (rounds * self.total + self.cum[r] + (u - k) * self.counts[r]) * OPPORTUNITY_BYTES

    def inverse(self, x: float) -> float:
        """The earliest time by which ``x`` IP bytes can have been delivered."""
        if self.total <= 0.0:
            return math.inf
        y = x / OPPORTUNITY_BYTES
        rounds, r = divmod(y, self.total)
        k = int(np.searchsorted(self.cum, r, side="right")) - 1
        k = min(max(k, 0), self.period - 1)
        while self.counts[k] <= 0.0 and k + 1 < self.period:  # float edge cases
            k += 1
        frac = (r - self.cum[k]) / self.counts[k] if self.counts[k] > 0 else 0.0
        return (rounds * self.period + k + min(max(frac, 0.0), 1.0)) / 1000.0

    def capacity_between(self, a: float, b: float) -> float:
        """IP bytes deliverable in [a, b): the oracle's integral."""
        return self.cumulative(b) - self.cumulative(a)

    # -- outages -------------------------------------------------------------------------

    def outage_at(self, t: float) -> tuple[float, float] | None:
        i = bisect.bisect_right(self._out_starts, t) - 1
        if i >= 0 and self.outages[i][1] > t:
            return self.outages[i]
        return None

    def after_outage(self, t: float) -> float:
        """``t``, or the end of the outage ``t`` falls in (the reverse direction of a
        carrier is dead too while it is out)."""
        o = self.outage_at(t)
        return o[1] if o is not None else t

    # -- transmission ----------------------------------------------------------------------

    def queue_at(self, now: float) -> float:
        """IP bytes waiting in the bottleneck queue at ``now``."""
        if self.free_at <= now:
            return 0.0
        return self.cumulative(self.free_at) - self.cumulative(now)

    def transmit(self, now: float, payload_bytes: int, rtt: float) -> tuple[float, int, float]:
        """Send a TCP byte run of ``payload_bytes`` at ``now``; returns (arrival time at
        the receiver's TCP, packets lost, the run's own transmission time: what its last
        packet waited behind its first, which per-packet RTT samples do not include).
        A lost packet (queue overflow or random loss) is resent by the path's TCP: it
        costs link bytes and about one ``rtt`` of delay, and holds back
        everything behind it on this path (in-order delivery)."""
        size = payload_bytes * LINK_FACTOR
        packets = math.ceil(payload_bytes / MSS)
        lost = 0
        queue = self.queue_at(now)
        if queue + size > self.queue_limit:
            lost = min(packets, math.ceil((queue + size - self.queue_limit) / OPPORTUNITY_BYTES))
            self.dropped_packets += lost
        if self.loss > 0.0:
            p_any = 1.0 - (1.0 - self.loss) ** packets
            if self.rng.random() < p_any:
                lost += 1
                self.lost_packets += 1
        start = self.free_at if self.free_at > now else now
        done = self.inverse(self.cumulative(start) + size + lost * OPPORTUNITY_BYTES)
        self.free_at = done
        arrival = done + self.delay
        if lost:
            arrival += rtt
        if arrival < self.last_arrival:
            arrival = self.last_arrival
        self.last_arrival = arrival
        return arrival, lost, (done - start) * (1.0 - 1.0 / (packets + lost))

    def reset(self, now: float) -> None:
        """The path's TCP connection died: what it had queued is gone with it."""
        self.free_at = now
        self.last_arrival = now


def _blank(counts: np.ndarray, a: float, b: float, duration: float) -> np.ndarray:
    """Counts unrolled over the run (if needed) with [a, b) seconds set to zero."""
    period = len(counts)
    need = int(math.ceil(max(duration, b) * 1000.0)) + 1
    if need > period:
        reps = need // period + 1
        counts = np.tile(counts, reps)
    else:
        counts = counts.copy()
    counts[int(a * 1000) : int(math.ceil(b * 1000))] = 0
    return counts


def find_outages(counts: np.ndarray, duration: float, min_len: float) -> list[tuple[float, float]]:
    """Stretches of at least ``min_len`` seconds without any opportunity, within the run."""
    n = int(math.ceil(duration * 1000.0))
    period = len(counts)
    reps = n // period + 1
    c = np.tile(counts, reps)[:n] if reps > 1 else counts[:n]
    zero = np.concatenate(([False], c == 0, [False]))
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    out = []
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        if (b - a) / 1000.0 >= min_len:
            out.append((float(a) / 1000.0, float(b) / 1000.0))
    return out


@dataclass(frozen=True)
class SteppedTrace:
    """A trace built from a step function of rates: ``rates_bps[i]`` IP bits/s during
    step ``i`` of ``step`` seconds (for tests and scripted scenarios)."""

    counts: np.ndarray
    name: str = ""

    @classmethod
    def of(cls, rates_bps: list[float], step: float = 1.0, name: str = "") -> SteppedTrace:
        per_ms = np.repeat(np.asarray(rates_bps, dtype=np.float64), int(round(step * 1000)))
        per_ms = per_ms / (8 * OPPORTUNITY_BYTES * 1000)
        whole = np.floor(np.cumsum(per_ms) + 1e-9)
        return cls(np.diff(np.concatenate(([0.0], whole))).astype(np.int64), name)


def capacity_series(link: Link, duration: float, step: float = 1.0) -> list[float]:
    """IP bytes deliverable per ``step`` seconds over the run (for plots and the oracle)."""
    n = int(math.ceil(duration / step))
    return [link.capacity_between(i * step, min((i + 1) * step, duration)) for i in range(n)]
