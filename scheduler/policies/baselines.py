"""The baselines, under the same interface as our policy, so one run compares them all.

Our architecture commits a message to a path socket that queues it, so a scheduler that
"waits for the fast path" (ECF, BLEST, min-RTT with every window full) is expressed by
returning the fast path: the message then leaves when that path has room. A decision is
never empty while a path is up.
"""

from __future__ import annotations

from collections.abc import Sequence

from scheduler.config import SchedulerConfig
from scheduler.context import MessageInfo, PathContext
from scheduler.policies.base import fastest, has_room, offered


class _Baseline:
    name = ""

    def __init__(self, config: SchedulerConfig | None = None):
        self.cfg = config or SchedulerConfig()


class MinRtt(_Baseline):
    """Linux MPTCP's default: the lowest-RTT path whose congestion window has room.

    When every window is full it picks the lowest-RTT path anyway (the kernel would wait
    for that path or for the first to open; queueing on the fastest is the closest
    equivalent with committed messages).
    """

    name = "minrtt"

    def decide(
        self, message: MessageInfo, paths: Sequence[PathContext], now: float
    ) -> tuple[int, ...]:
        paths = offered(message, paths)
        p = fastest(paths, room=True) or fastest(paths, room=False)
        return (p.path_id,) if p is not None else ()


class RoundRobin(_Baseline):
    """Each message on the next up path in path-id order, cyclically.

    State: the id of the last path used. Windows and RTTs are ignored on purpose: this
    is the naive baseline.
    """

    name = "roundrobin"

    def __init__(self, config: SchedulerConfig | None = None):
        super().__init__(config)
        self._last: int | None = None

    def decide(
        self, message: MessageInfo, paths: Sequence[PathContext], now: float
    ) -> tuple[int, ...]:
        paths = offered(message, paths)
        after = lowest = None
        last = self._last
        for p in paths:
            if not p.up:
                continue
            pid = p.path_id
            if lowest is None or pid < lowest:
                lowest = pid
            if last is not None and pid > last and (after is None or pid < after):
                after = pid
        chosen = after if after is not None else lowest
        if chosen is None:
            return ()
        self._last = chosen
        return (chosen,)


class Redundant(_Baseline):
    """Every message on every up path (seed 000's N copies over N carriers)."""

    name = "redundant"

    def decide(
        self, message: MessageInfo, paths: Sequence[PathContext], now: float
    ) -> tuple[int, ...]:
        paths = offered(message, paths)
        return tuple(sorted(p.path_id for p in paths if p.up))


def _fast_and_slow(
    paths: Sequence[PathContext],
) -> tuple[PathContext | None, PathContext | None]:
    """The fastest up path, and the fastest other up path with room (or None)."""
    f = fastest(paths, room=False)
    if f is None:
        return None, None
    s = fastest([p for p in paths if p.path_id != f.path_id], room=True)
    return f, s


class Ecf(_Baseline):
    """Earliest Completion First (Lim et al., CoNEXT 2017), in bytes instead of packets.

    With f the fastest path and s the fastest other path with room: if f has room, f.
    Otherwise with k = bytes waiting in the connection (this message plus its backlog),
    n = 1 + k / cwnd_f and delta = max(rttvar_f, rttvar_s): if
    n * rtt_f < (1 + waiting * beta) * (rtt_s + delta), the fast path would finish first;
    then if k / cwnd_s * rtt_s >= 2 * rtt_f + delta, wait for f (waiting = 1, returns f),
    else use s. Otherwise use s and clear waiting. ``waiting`` is per connection.
    """

    name = "ecf"

    def __init__(self, config: SchedulerConfig | None = None):
        super().__init__(config)
        self._waiting: set[int] = set()

    def decide(
        self, message: MessageInfo, paths: Sequence[PathContext], now: float
    ) -> tuple[int, ...]:
        paths = offered(message, paths)
        f, s = _fast_and_slow(paths)
        if f is None:
            return ()
        if has_room(f) or s is None:
            return (f.path_id,)
        k = message.size + message.backlog
        cwnd_f = max(f.cwnd, f.mss or self.cfg.mss)
        cwnd_s = max(s.cwnd, s.mss or self.cfg.mss)
        n = 1.0 + k / cwnd_f
        delta = max(f.rttvar, s.rttvar)
        waiting = message.conn_id in self._waiting
        if n * f.srtt < (1.0 + waiting * self.cfg.ecf_beta) * (s.srtt + delta):
            if k / cwnd_s * s.srtt >= 2.0 * f.srtt + delta:
                self._waiting.add(message.conn_id)
                return (f.path_id,)
            return (s.path_id,)
        self._waiting.discard(message.conn_id)
        return (s.path_id,)

    def forget(self, conn_id: int) -> None:
        """Drop the connection's waiting flag (call when it closes)."""
        self._waiting.discard(conn_id)


class Blest(_Baseline):
    """BLocking ESTimation (Ferlin et al., IFIP Networking 2016), in bytes.

    With f the fastest path and s the fastest other path with room: if f has room, f.
    Otherwise estimate what f could send during one RTT of s, growing its window by one
    segment per RTT: X = (cwnd_f + mss_f * (r - 1) / 2) * r with r = rtt_s / rtt_f. If
    X * lambda > W - (inflight_s + size), with W the connection-level send window
    (``message.window``), sending on s would block the window: wait for f (returns f);
    else use s. An unknown window (None) never blocks.
    """

    name = "blest"

    def decide(
        self, message: MessageInfo, paths: Sequence[PathContext], now: float
    ) -> tuple[int, ...]:
        paths = offered(message, paths)
        f, s = _fast_and_slow(paths)
        if f is None:
            return ()
        if has_room(f) or s is None:
            return (f.path_id,)
        if message.window is None:
            return (s.path_id,)
        r = s.srtt / f.srtt if f.srtt > 0 else 1.0
        mss = f.mss or self.cfg.mss
        x = (f.cwnd + mss * (r - 1.0) / 2.0) * r
        if x * self.cfg.blest_lambda > message.window - (s.inflight + message.size):
            return (f.path_id,)
        return (s.path_id,)
