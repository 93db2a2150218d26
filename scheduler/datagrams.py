"""Per-flow treatment of datagrams (UDP carried as DATAGRAM messages): one rule.

A UDP flow is either

* ``single``: one path at a time. QUIC (UDP 443) and bulk UDP run their own congestion
  control end to end; copies waste the carriers and spreading packets over paths of
  different delay reorders them, which QUIC's loss detection reads as loss (a packet
  more than three behind, or late by 9/8 RTT, is declared lost and the window halves).
  The flow stays on its path until that path goes down or degrades (its smoothed RTT
  above ``move_factor`` times the best path's plus ``move_margin``, or its loss above
  ``move_loss``), then moves once, to the best path;
* ``duplicate``: a copy on each of ``copies`` paths, distinct carriers first (seed 000's
  redundant mode), for small interactive flows whose packets are worth more than the
  bandwidth of a copy: DNS, NTP, STUN/TURN and WebRTC, SIP, games. The receiver keeps
  the first copy (``middlebox.session.datagrams.ReplayWindow``).

:func:`flow_class` chooses: a port of ``single_ports`` is single, one of
``duplicate_ports`` duplicated, any other flow duplicated while its sending rate (bytes
per second over the last whole second, measured by the sender of each direction) stays
at or below ``duplicate_rate`` and single above it: a new flow starts duplicated and
becomes single once its rate shows it is bulk.

:class:`DatagramPlacer` is asked by the scheduler adapter
(``middlebox.session.policy.SchedulerPolicy``) for every DATAGRAM message, live on the
gateway and the node and in the replay simulator alike; it never opens a socket or
reads a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scheduler.context import MessageInfo, PathContext

SINGLE = "single"
DUPLICATE = "duplicate"
CLASSES = (SINGLE, DUPLICATE)
_PINS_MAX = 65536


@dataclass(frozen=True)
class DatagramClasses:
    """The class rule's parameters (``[udp]`` in the configuration names them too)."""

    single_ports: tuple[str, ...] = ("443",)
    duplicate_ports: tuple[str, ...] = (
        "53",  # DNS
        "123",  # NTP
        "3478-3481",  # STUN/TURN, WebRTC media relays (and Teams)
        "5060-5061",  # SIP
        "19302-19309",  # Google's STUN/WebRTC
    )
    duplicate_rate: int = 32_000  # bytes/s: a voice call or a game is well below it
    copies: int = 2
    move_factor: float = 2.0
    move_margin: float = 0.05  # s
    move_loss: float = 0.2

    def ports(self) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
        return _port_ranges(self.single_ports), _port_ranges(self.duplicate_ports)


def _port_ranges(ports: Sequence[str]) -> tuple[tuple[int, int], ...]:
    out = []
    for p in ports:
        lo, _, hi = str(p).partition("-")
        out.append((int(lo), int(hi or lo)))
    return tuple(out)


def _in(port: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= port <= hi for lo, hi in ranges)


def flow_class(classes: DatagramClasses, port: int, rate: float) -> str:
    """The class of a flow to or from server ``port`` sending ``rate`` bytes/s."""
    single, duplicate = classes.ports()
    if _in(port, single):
        return SINGLE
    if _in(port, duplicate):
        return DUPLICATE
    return DUPLICATE if rate <= classes.duplicate_rate else SINGLE


class FlowClassifier:
    """:func:`flow_class` with the port ranges parsed once (the per-packet caller)."""

    def __init__(self, classes: DatagramClasses) -> None:
        self.classes = classes
        self.single, self.duplicate = classes.ports()

    def __call__(self, port: int, rate: float) -> str:
        if _in(port, self.single):
            return SINGLE
        if _in(port, self.duplicate):
            return DUPLICATE
        return DUPLICATE if rate <= self.classes.duplicate_rate else SINGLE


class DatagramPlacer:
    """Paths for each DATAGRAM message by its flow's class (see module text).

    ``pins`` remembers each single flow's path; ``moves`` counts the times a single flow
    left its path (went down or degraded).
    """

    def __init__(self, classes: DatagramClasses | None = None) -> None:
        self.classes = classes or DatagramClasses()
        self.pins: dict[int, int] = {}
        self.moves = 0
        self.copies_sent = 0
        self.placed = 0

    def place(self, info: MessageInfo, paths: Sequence[PathContext], now: float) -> tuple[int, ...]:
        """Path ids for one datagram of flow ``info.conn_id`` among ``paths`` (those up
        that may take it); () when there is none (the datagram is dropped)."""
        if not paths:
            return ()
        self.placed += 1
        if info.flow_class == DUPLICATE:
            return self._duplicate(paths)
        return (self._single(info.conn_id, paths),)

    def forget(self, flow_id: int) -> None:
        self.pins.pop(flow_id, None)

    def _single(self, flow_id: int, paths: Sequence[PathContext]) -> int:
        best = min(paths, key=_rank)
        pin = self.pins.get(flow_id)
        if pin is not None:
            cur = next((p for p in paths if p.path_id == pin), None)
            if cur is not None and not self._degraded(cur, best):
                return pin
            self.moves += 1
        if pin is None and len(self.pins) >= _PINS_MAX:
            self.pins.pop(next(iter(self.pins)))
        self.pins[flow_id] = best.path_id
        return best.path_id

    def _degraded(self, cur: PathContext, best: PathContext) -> bool:
        c = self.classes
        if _loss(cur) > c.move_loss:
            return True
        return cur.srtt > c.move_factor * best.srtt + c.move_margin

    def _duplicate(self, paths: Sequence[PathContext]) -> tuple[int, ...]:
        n = self.classes.copies or len(paths)
        ranked = sorted(paths, key=_rank)
        chosen: list[PathContext] = []
        carriers: set[str] = set()
        for p in ranked:  # one per carrier first
            if len(chosen) < n and p.carrier not in carriers:
                chosen.append(p)
                carriers.add(p.carrier)
        for p in ranked:
            if len(chosen) < n and p not in chosen:
                chosen.append(p)
        self.copies_sent += len(chosen) - 1
        return tuple(p.path_id for p in chosen)

    def status(self) -> dict[str, int]:
        return {"placed": self.placed, "moves": self.moves, "copies": self.copies_sent,
                "pinned_flows": len(self.pins)}  # fmt: skip


def _loss(p: PathContext) -> float:
    return p.loss_pred if p.loss_pred is not None else p.loss_rate


def _rank(p: PathContext) -> tuple[float, float, int]:
    """Lowest delay first, a lossy path behind a clean one of similar delay."""
    return (p.srtt * (1.0 + 4.0 * min(max(_loss(p), 0.0), 1.0)), p.srtt, p.path_id)
