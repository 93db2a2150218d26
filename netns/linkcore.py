"""The link emulator's core: one carrier, one direction, no I/O.

Frames and the time go in, frames and the next deadline come out, in the manner of
Mahimahi's link shell:

* an arriving frame may be lost at random (Bernoulli per segment), else it joins a
  bounded drop-tail queue (limit in packets and/or bytes; drops are counted);
* the queue is served only at the trace's delivery opportunities; each opportunity
  carries up to :data:`~netns.traces.OPPORTUNITY_BYTES`, a frame larger than that uses
  several, an unused opportunity is lost (a link does not save capacity for later);
* during a scheduled outage no opportunity exists: nothing passes, the queue fills;
* a frame that completed transmission leaves after the fixed one-way delay.

The clock is a parameter (seconds, any origin), so tests run hours of trace in
virtual time; the AF_PACKET shell in :mod:`netns.emulator` feeds it real time.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from netns.traces import OPPORTUNITY_BYTES, DeliveryTrace


@dataclass
class LinkStats:
    """Counters of one emulated direction (packets count GSO segments)."""

    received: int = 0
    received_bytes: int = 0
    delivered: int = 0
    delivered_bytes: int = 0
    delivered_frames: int = 0  # reads/writes the shell did (a GSO frame is one)
    dropped_queue: int = 0
    dropped_loss: int = 0
    max_queue_packets: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class LinkParams:
    """How one direction of a carrier behaves, besides its trace."""

    delay_ms: float = 0.0
    queue_packets: int | None = 256
    queue_bytes: int | None = None
    loss: float = 0.0
    outages: tuple[tuple[float, float], ...] = field(default=())
    seed: int = 0

    def __post_init__(self) -> None:
        if self.delay_ms < 0:
            raise ValueError(f"delay must be >= 0 ms (got {self.delay_ms})")
        if self.queue_packets is not None and self.queue_packets < 1:
            raise ValueError(f"queue must hold at least 1 packet (got {self.queue_packets})")
        if self.queue_bytes is not None and self.queue_bytes < OPPORTUNITY_BYTES:
            raise ValueError(f"queue must hold at least {OPPORTUNITY_BYTES} bytes")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"loss must be in [0, 1) (got {self.loss})")
        last = 0.0
        for start, end in self.outages:
            if start < last or end <= start:
                raise ValueError("outages must be sorted, non-overlapping (start, end) pairs")
            last = end


class Link:
    """One emulated carrier direction. Times are seconds; ``start`` is trace time 0."""

    def __init__(self, trace: DeliveryTrace, params: LinkParams, start: float = 0.0) -> None:
        self.trace = trace
        self.params = params
        self.start = start
        self.stats = LinkStats()
        self._rng = random.Random(params.seed)
        self._delay = params.delay_ms / 1000.0
        self._queue: deque[tuple[Any, int, int]] = deque()  # (frame, wire bytes, segments)
        self._queue_packets = 0
        self._queue_bytes = 0
        self._head_left = 0  # bytes of the head frame not yet transmitted
        self._in_flight: deque[tuple[float, Any]] = deque()  # (exit time, frame)
        self._period = trace.period_ms
        self._nz = np.flatnonzero(trace.counts).tolist()
        self._nz_counts = trace.counts[self._nz].tolist()
        self._outages = [(start + a, start + b) for a, b in params.outages]
        self._outage_i = 0
        # cursor: the next millisecond slot with opportunities (absolute trace ms)
        self._round = 0
        self._i = 0
        self._left = self._nz_counts[0] if self._nz else 0

    # -- inputs ------------------------------------------------------------------------

    def receive(self, frame: Any, size: int, now: float, segments: int = 1) -> bool:
        """Offer a frame of ``size`` wire bytes (``segments`` packets) arriving at ``now``.

        Returns False if it was dropped (random loss or full queue).
        """
        self._serve(now)
        st = self.stats
        st.received += segments
        st.received_bytes += size
        p = self.params
        if p.loss and self._rng.random() < 1.0 - (1.0 - p.loss) ** segments:
            st.dropped_loss += segments
            return False
        if (p.queue_packets is not None and self._queue_packets + segments > p.queue_packets) or (
            p.queue_bytes is not None and self._queue_bytes + size > p.queue_bytes
        ):
            st.dropped_queue += segments
            return False
        if not self._queue:
            self._head_left = size
            self._skip_to(now)
        self._queue.append((frame, size, segments))
        self._queue_packets += segments
        self._queue_bytes += size
        st.max_queue_packets = max(st.max_queue_packets, self._queue_packets)
        return True

    def poll(self, now: float) -> list[Any]:
        """Frames whose one-way delay has elapsed by ``now``, in order."""
        self._serve(now)
        out = []
        fl = self._in_flight
        while fl and fl[0][0] <= now:
            out.append(fl.popleft()[1])
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`poll` next has something to do (None: only a new frame can change that)."""
        t = self._in_flight[0][0] if self._in_flight else None
        if self._queue:
            self._skip_outages()
            if self._nz:
                o = self._slot_time()
                t = o if t is None else min(t, o)
        return t

    @property
    def queued_packets(self) -> int:
        return self._queue_packets

    # -- internals ---------------------------------------------------------------------

    def _slot_time(self) -> float:
        return self.start + (self._round * self._period + self._nz[self._i]) / 1000.0

    def _advance_slot(self) -> None:
        self._i += 1
        if self._i == len(self._nz):
            self._i = 0
            self._round += 1
        self._left = self._nz_counts[self._i]

    def _skip_to(self, now: float) -> None:
        """Move the cursor to the first slot at or after ``now`` (queue was empty)."""
        if not self._nz or self._slot_time() >= now:
            return
        ms = math.ceil((now - self.start) * 1000.0 - 1e-9)
        rnd, rest = divmod(ms, self._period)
        i = bisect.bisect_left(self._nz, rest)
        if i == len(self._nz):
            i, rnd = 0, rnd + 1
        self._round, self._i = rnd, i
        self._left = self._nz_counts[i]

    def _skip_outages(self) -> None:
        """If the cursor's slot lies in an outage, move it past the outage's end."""
        outs = self._outages
        while self._outage_i < len(outs) and self._nz:
            a, b = outs[self._outage_i]
            t = self._slot_time()
            if t >= b:
                self._outage_i += 1
            elif t >= a:
                self._skip_to(b)
            else:
                return

    def _serve(self, now: float) -> None:
        """Use every opportunity up to ``now`` on the queue."""
        if not self._nz:
            return
        q = self._queue
        fl = self._in_flight
        delay = self._delay
        st = self.stats
        while q:
            self._skip_outages()
            t = self._slot_time()
            if t > now:
                return
            while self._left and q:
                self._left -= 1
                budget = OPPORTUNITY_BYTES
                while q and budget:
                    take = min(budget, self._head_left)
                    budget -= take
                    self._head_left -= take
                    if self._head_left == 0:
                        frame, size, segs = q.popleft()
                        self._queue_packets -= segs
                        self._queue_bytes -= size
                        st.delivered += segs
                        st.delivered_bytes += size
                        st.delivered_frames += 1
                        fl.append((t + delay, frame))
                        if q:
                            self._head_left = q[0][1]
            if not self._left:
                self._advance_slot()
