"""One carrier's bottleneck as a fluid FIFO over a capacity-over-time trace.

The trace is :class:`netns.traces.DeliveryTrace` (the shape every testbed reader
produces: delivery opportunities of 1500 IP bytes per millisecond, periodic), so a
Mahimahi file, a 5G drive log, a fixed rate and the synthetic rail route all replay here.

Why a fluid FIFO rather than packets: Python pays per operation, and the simulator moves
messages of kilobytes. Inside each millisecond the opportunities are spread evenly, so
the cumulative deliverable bytes D(t) is piecewise linear; a message of S link bytes that
starts service at s leaves at D^-1(D(s) + S). That is exact for a FIFO served by the
trace (up to the sub-millisecond spreading) and costs one binary search per message.

Also modelled, per direction of a carrier (one :class:`Link` each, as the testbed's
emulator has one per direction): a fixed one-way propagation delay, a bounded drop-tail
queue counted in packets like the emulator's (``queue_bytes`` / 1500 packets; a data
packet and a 66-byte ACK count one each), a random per-packet loss from a seeded RNG, and
outages: explicit intervals with no capacity (both directions), plus every stretch of the
trace without opportunities longer than ``outage_min`` (a tunnel in a drive log, a rail
handover gap). What a lost packet costs the TCP that sent it is the socket model's
business (:mod:`bench.sim.tcp`); the link reports how many were lost.
"""

from __future__ import annotations

import bisect
import math
import random
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

_bisect_right = bisect.bisect_right

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


ACK_BYTES = 66
"""Wire bytes of a pure TCP ACK frame (Ethernet 14 + IP 20 + TCP with timestamps 32)."""


@dataclass(frozen=True)
class Carrier:
    """One carrier as the simulator sees it: ``trace`` is its downlink (node to gateway),
    ``up`` its uplink (None: the same trace, as for a fixed rate). Delay, queue, loss and
    the explicit outages apply to both directions, as in the testbed."""

    name: str
    trace: Trace
    delay: float = 0.025  # s, one-way propagation delay
    queue_bytes: int = 384_000  # drop-tail limit of the bottleneck queue (256 packets)
    loss: float = 0.0  # random loss per packet
    outages: tuple[tuple[float, float], ...] = field(default=())  # extra (start, end) in s
    up: Trace | None = None  # uplink trace (gateway to node)

    @property
    def up_trace(self) -> Trace:
        return self.trace if self.up is None else self.up

    def __post_init__(self) -> None:
        if self.delay < 0 or self.queue_bytes < OPPORTUNITY_BYTES or not 0 <= self.loss < 1:
            raise ValueError(
                f"carrier {self.name}: need delay >= 0, queue >= 1500 bytes, 0 <= loss < 1"
            )


class Link:
    """One direction of a carrier's bottleneck: capacity D(t), queue, loss, outages.

    ``direction`` picks the carrier's trace ("down": node to gateway, "up")."""

    def __init__(
        self,
        carrier: Carrier,
        duration: float,
        seed: int = 0,
        outage_min: float = 0.5,
        direction: str = "down",
    ) -> None:
        self.carrier = carrier
        self.direction = direction
        self.delay = carrier.delay
        self.loss = carrier.loss
        self.queue_limit = carrier.queue_bytes
        self.queue_packets = max(1, carrier.queue_bytes // OPPORTUNITY_BYTES)
        trace = carrier.trace if direction == "down" else carrier.up_trace
        counts = np.asarray(trace.counts, dtype=np.int64)
        for a, b in carrier.outages:
            counts = _blank(counts, a, b, duration)
        self.counts = counts.astype(np.float64)
        self._counts = _floats(self.counts)  # indexed per send: cheaper than numpy
        self.period = len(counts)
        self.cum = np.concatenate(([0.0], np.cumsum(self.counts)))
        self._cum = _floats(self.cum)
        self.total = float(self.cum[-1])
        self.rng = random.Random(seed)
        self.free_at = 0.0  # when the FIFO has sent everything given to it so far
        self.last_base = 0.0
        self._free_cum = 0.0  # cumulative(free_at), kept to save one evaluation per send
        # packets in the queue: (start of service, end of service, packets), oldest first
        self._queue: deque[tuple[float, float, int]] = deque()
        self._queued = 0
        self.dropped_packets = 0
        self.lost_packets = 0
        self.sent_bytes = 0.0  # link bytes offered, lost ones included
        self.outages = find_outages(counts, duration, outage_min)
        self._out_starts = [a for a, _ in self.outages]

    # -- capacity ----------------------------------------------------------------------

    def cumulative(self, t: float) -> float:
        """IP bytes the link could deliver in [0, t)."""
        u = t * 1000.0
        k = int(u)
        rounds, r = divmod(k, self.period)
        return (rounds * self.total + self._cum[r] + (u - k) * self._counts[r]) * OPPORTUNITY_BYTES

    def inverse(self, x: float) -> float:
        """The earliest time by which ``x`` IP bytes can have been delivered."""
        total = self.total
        if total <= 0.0:
            return math.inf
        rounds, r = divmod(x / OPPORTUNITY_BYTES, total)
        cum, counts, period = self._cum, self._counts, self.period
        k = _bisect_right(cum, r) - 1
        if k < 0:
            k = 0
        elif k > period - 1:
            k = period - 1
        c = counts[k]
        while c <= 0.0 and k + 1 < period:  # float edge cases
            k += 1
            c = counts[k]
        frac = (r - cum[k]) / c if c > 0 else 0.0
        if frac < 0.0:
            frac = 0.0
        elif frac > 1.0:
            frac = 1.0
        return (rounds * period + k + frac) / 1000.0

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
        """``t``, or the end of the outage ``t`` falls in."""
        o = self.outage_at(t)
        return o[1] if o is not None else t

    # -- transmission ----------------------------------------------------------------------

    def queue_at(self, now: float) -> float:
        """IP bytes waiting in the bottleneck queue at ``now``."""
        if self.free_at <= now:
            return 0.0
        return self._free_cum - self.cumulative(now)

    def packets_queued(self, now: float) -> float:
        """Packets waiting in the bottleneck queue at ``now`` (the part of the frame in
        service that has left is not counted)."""
        q = self._queue
        while q and q[0][1] <= now:
            self._queued -= q.popleft()[2]
        if not q:
            return 0.0
        start, end, n = q[0]
        if now <= start:
            return float(self._queued)
        return self._queued - n * (now - start) / (end - start)

    def send(self, now: float, link_bytes: float, packets: int) -> tuple[float, int]:
        """Frames of ``link_bytes`` in ``packets`` packets offered at ``now``; returns
        (arrival time of the last one at the far end, packets lost). Packets beyond the
        queue's limit are dropped (drop-tail), each packet may be lost at random; lost
        packets still count as sent through the FIFO (their retransmission crosses it
        about as soon), so a lossy burst does not arrive early."""
        lost = 0
        queue = self._queue
        if queue:
            over = self.packets_queued(now) + packets - self.queue_packets
        else:
            over = packets - self.queue_packets
        if over > 0:
            lost = min(packets, math.ceil(over))
            self.dropped_packets += lost
        if self.loss > 0.0:
            p_any = 1.0 - (1.0 - self.loss) ** packets
            if self.rng.random() < p_any:
                lost += 1
                self.lost_packets += 1
        free_at = self.free_at
        if free_at > now:
            start, base = free_at, self._free_cum
        else:
            start, base = now, self.cumulative(now)
        self.last_base = base  # where in D(t) this transmission's first byte is served
        self._free_cum = end = base + link_bytes
        done = self.inverse(end)
        self.free_at = done
        queue.append((start, done, packets))
        self._queued += packets
        self.sent_bytes += link_bytes
        return done + self.delay, lost

    def transmit(
        self, now: float, payload_bytes: int, rtt: float = 0.0
    ) -> tuple[float, int, float]:
        """Send a TCP byte run of ``payload_bytes`` at ``now``; returns (arrival time at
        the receiver's TCP, packets lost, the run's own transmission time: what its last
        packet waited behind its first, which per-packet RTT samples do not include).
        A lost packet is resent by the sender's TCP about one ``rtt`` later (fast
        retransmit): the run arrives that much later."""
        packets = -(-payload_bytes // MSS)
        start = self.free_at if self.free_at > now else now
        arrival, lost = self.send(now, payload_bytes * LINK_FACTOR, packets)
        done = arrival - self.delay
        if lost:
            arrival += rtt
        return arrival, lost, (done - start) * (1.0 - 1.0 / packets)


def _floats(a: np.ndarray) -> array:
    out = array("d")
    out.frombytes(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    return out


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
    starts, ends = edges[::2], edges[1::2]
    long = (ends - starts) / 1000.0 >= min_len
    return [
        (float(a) / 1000.0, float(b) / 1000.0)
        for a, b in zip(starts[long], ends[long], strict=True)
    ]


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
