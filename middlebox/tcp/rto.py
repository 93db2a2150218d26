"""Retransmission timeout estimation (RFC 6298) with exponential backoff."""

from __future__ import annotations

from middlebox.tcp.constants import RTO_G, RTO_INITIAL


class RtoEstimator:
    """SRTT/RTTVAR smoothing and the RTO derived from them.

    ``backoff()`` doubles the timeout after a retransmission timer expires (5.5) and a
    new sample resets the backoff, as Linux does once an ACK for new data arrives.
    """

    __slots__ = ("srtt", "rttvar", "rto_min", "rto_max", "_base", "shift")

    def __init__(self, rto_min: float, rto_max: float) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto_min = rto_min
        self.rto_max = rto_max
        self._base = max(RTO_INITIAL, rto_min)
        self.shift = 0

    def sample(self, rtt: float) -> None:
        """Fold one round-trip measurement (seconds) into the estimate (2.2, 2.3)."""
        if rtt < 0:
            return
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self._base = max(self.rto_min, self.srtt + max(RTO_G, 4 * self.rttvar))
        self.shift = 0

    def backoff(self) -> None:
        """Double the timeout (bounded by ``rto_max``) after a timer expiry."""
        if self.rto < self.rto_max:
            self.shift += 1

    def reset_backoff(self) -> None:
        self.shift = 0

    @property
    def rto(self) -> float:
        return min(self.rto_max, self._base * (1 << self.shift))
