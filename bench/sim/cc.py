"""A BBR-like congestion controller per path, at message granularity.

Each carrier path of the real proxy is a kernel TCP connection with BBR. The model keeps
what decides how fast a path sends and how much it keeps in flight:

* **Bottleneck bandwidth** ``btlbw``: windowed maximum of the delivery-rate samples over
  the last 10 round trips, counted in data delivered as BBR does (so an outage, where no
  round trip completes, does not age the estimate out). A sample is BBR's: bytes
  delivered on the path between sending a message and receiving its acknowledgement,
  over the time that took.
  Application-limited samples (sent after the application let the socket run dry,
  until what was in flight then is delivered: Linux's ``tcp_rate_check_app_limited``)
  only count when they raise the estimate, as in BBR; the window moves on only with the
  samples it takes, as Linux's ``minmax_running_max`` does.
* **Round-trip propagation time** ``rtprop``: windowed minimum RTT over 10 s (no ProbeRTT
  phase: the 0.75 pacing phase drains the queue often enough at this granularity).
* **Startup**: pacing and window gain 2.885 until ``btlbw`` has not grown by 25 % for
  three rounds that were not application-limited (meanwhile the pacing rate never drops
  below the initial 2.885 x 10 packets per RTT, as in Linux); then **drain** (pacing
  gain 1/2.885) until inflight is down to one BDP; then **ProbeBW**: pacing gains cycle
  1.25, 0.75, 1, 1, 1, 1, 1, 1, one ``rtprop`` each.
* **cwnd** moves towards 2 x BDP (BDP = btlbw x rtprop; 2.885 x BDP in startup) by the
  bytes each acknowledgement covers, at least 4 packets; in startup it never shrinks
  (Linux's ``bbr_set_cwnd``).
* **Loss** does not lower the model (BBRv1); the cost of a loss is the resend delay the
  link model adds. **Silence** (no acknowledgement for one RTO while data is in flight:
  an outage) shrinks the window to 4 packets, as after a retransmission timeout; the
  first acknowledgement after it restores the window from before (Linux BBR's
  ``bbr_set_cwnd_to_recover_or_restore``: after an outage whose packets waited in the
  queue rather than being lost, the kernel's F-RTO finds the timeout spurious and leaves
  the loss state at once); ``btlbw`` is kept, so pacing resumes at the old rate.
"""

from __future__ import annotations

from collections import deque

from bench.sim.links import MSS

STARTUP_GAIN = 2.885
PROBE_GAINS = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
MIN_CWND = 4 * MSS
INITIAL_CWND = 10 * MSS
RTPROP_WINDOW = 10.0
BW_ROUNDS = 10


class Bbr:
    """State of one path's controller; ``on_ack`` feeds it, the attributes read it."""

    __slots__ = (
        "btlbw",
        "rtprop",
        "mode",
        "pacing_gain",
        "cwnd",
        "_bw",
        "_rt",
        "_full_bw",
        "_full_count",
        "rounds",
        "_next_round",
        "_cycle",
        "_cycle_start",
        "silenced",
        "prior_cwnd",
    )

    def __init__(self, initial_rtt: float = 0.1) -> None:
        self._bw: deque[tuple[int, float]] = deque()  # (round, rate), decreasing rate
        self._rt: deque[tuple[float, float]] = deque()  # (time, rtt), increasing rtt
        self.reset(initial_rtt)

    def reset(self, initial_rtt: float = 0.1) -> None:
        """A new connection (after the path reconnected): start over."""
        self.btlbw = 0.0
        self.rtprop = initial_rtt
        self.mode = "startup"
        self.pacing_gain = STARTUP_GAIN
        self.cwnd = INITIAL_CWND
        self._bw.clear()
        self._rt.clear()
        self._full_bw = 0.0
        self._full_count = 0
        self.rounds = 0
        self._next_round = 0
        self._cycle = 0
        self._cycle_start = 0.0
        self.silenced = False
        self.prior_cwnd = 0

    @property
    def pacing_rate(self) -> float:
        """Bytes per second the path paces at (before the first sample: 10 packets per RTT)."""
        rate = self.pacing_gain * self.btlbw
        if self.mode == "startup":  # as Linux: never below the initial rate in startup
            return max(rate, STARTUP_GAIN * INITIAL_CWND / max(self.rtprop, 1e-3))
        return rate

    def on_ack(
        self,
        now: float,
        rtt: float,
        rate: float,
        app_limited: bool,
        inflight: int,
        acked: int,
        prior_delivered: int,
        delivered: int,
    ) -> None:
        """One acknowledged message (``acked`` bytes): its RTT (0: none, e.g. resent after
        an RTO) and delivery-rate sample; ``prior_delivered`` was the path's delivered
        count when it was sent, ``delivered`` is it now (they count round trips)."""
        self.restore()
        new_round = prior_delivered >= self._next_round
        if new_round:
            self.rounds += 1
            self._next_round = delivered
        if rtt > 0.0:
            rt = self._rt
            while rt and rt[-1][1] >= rtt:
                rt.pop()
            rt.append((now, rtt))
            while rt[0][0] < now - RTPROP_WINDOW:
                rt.popleft()
            self.rtprop = rt[0][1]
        bw = self._bw
        if rate > 0.0 and not (app_limited and rate < self.btlbw):
            # the windowed max moves on with the samples it takes (Linux's
            # minmax_running_max): a path that only carries application-limited bits
            # keeps its estimate instead of letting it age out round by round
            while bw and bw[-1][1] <= rate:
                bw.pop()
            bw.append((self.rounds, rate))
            while bw[0][0] < self.rounds - BW_ROUNDS:
                bw.popleft()
            self.btlbw = bw[0][1]
        self._advance(now, inflight, app_limited, new_round)
        # Linux's bbr_set_cwnd: towards the target by the bytes acknowledged; in startup
        # the window only grows (an application-limited start must not shrink it).
        target = int((STARTUP_GAIN if self.mode == "startup" else 2.0) * self.btlbw * self.rtprop)
        if self.mode == "startup":
            if self.cwnd < target or self.cwnd < INITIAL_CWND:
                self.cwnd += acked
        else:
            self.cwnd = max(MIN_CWND, min(self.cwnd + acked, target))

    def _advance(self, now: float, inflight: int, app_limited: bool, new_round: bool) -> None:
        if self.mode == "startup":
            if new_round and not app_limited:
                if self.btlbw >= 1.25 * self._full_bw:
                    self._full_bw, self._full_count = self.btlbw, 0
                else:
                    self._full_count += 1
                    if self._full_count >= 3:
                        self.mode = "drain"
                        self.pacing_gain = 1.0 / STARTUP_GAIN
        if self.mode == "drain" and inflight <= self.btlbw * self.rtprop:
            self.mode = "probe_bw"
            self._cycle, self._cycle_start = 2, now  # start in a neutral phase
            self.pacing_gain = 1.0
        if self.mode == "probe_bw" and now - self._cycle_start >= self.rtprop:
            self._cycle = (self._cycle + 1) % len(PROBE_GAINS)
            self._cycle_start = now
            self.pacing_gain = PROBE_GAINS[self._cycle]

    def restore(self) -> None:
        """An acknowledgement after a timeout: the window from before it comes back."""
        if self.silenced:
            self.silenced = False
            self.cwnd = max(self.cwnd, self.prior_cwnd)

    def on_silence(self) -> None:
        """No acknowledgement for an RTO with data in flight (outage): as after an RTO."""
        if not self.silenced:
            self.prior_cwnd = self.cwnd
        self.silenced = True
        self.cwnd = MIN_CWND
