"""What every policy is: ``decide(message, paths, now) -> tuple of path ids``.

"Pure" here means no I/O and no clock: time comes in as ``now``. A policy may keep state
(round-robin's position, ECF's waiting flags, our per-client byte accounting, a cache of
long-term predictions), so a decision depends on the sequence of calls; the same
sequence of inputs always gives the same sequence of decisions. Rules every policy
keeps (property tests check them): never name a path that is down; never return an
empty tuple while some path is up; return each path id at most once; name a path in
``message.avoid`` only when no other path is up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from scheduler.context import MessageInfo, PathContext


@runtime_checkable
class Policy(Protocol):
    name: str

    def decide(
        self, message: MessageInfo, paths: Sequence[PathContext], now: float
    ) -> tuple[int, ...]: ...


def offered(message: MessageInfo, paths: Sequence[PathContext]) -> Sequence[PathContext]:
    """The paths a policy may choose from: those not in ``message.avoid``, unless that
    leaves no path up (then all of them: another copy on a used path beats none)."""
    avoid = message.avoid
    if not avoid:
        return paths
    fresh = [p for p in paths if p.path_id not in avoid]
    return fresh if any(p.up for p in fresh) else paths


def has_room(p: PathContext) -> bool:
    """The path's congestion window has room (an unknown cwnd, 0, counts as room)."""
    return p.cwnd <= 0 or p.inflight + p.queued < p.cwnd


def fastest(paths: Sequence[PathContext], *, room: bool) -> PathContext | None:
    """The up path with the smallest srtt (ties: smallest id), optionally with room."""
    best = None
    for p in paths:
        if not p.up or (room and not has_room(p)):
            continue
        if best is None or (p.srtt, p.path_id) < (best.srtt, best.path_id):
            best = p
    return best
