"""Carrier context on the node: one gateway session's carriers for its downlink scheduler.

With ``[context] use_contextdb`` the node opens the database read-only
(:func:`middlebox.context.loop.open_context_db`) and gives each session a
:class:`SessionContext`. The gateway's own loop (:mod:`middlebox.context.loop`) measures,
learns and reports; the node only listens to those reports and to its own paths.
"""

from __future__ import annotations

import math

from middlebox.context.carriers import CarrierSecond, PerfMeter, Reading, track
from middlebox.context.loop import prediction_status
from middlebox.session import wire
from scheduler.generators import CarrierTracker

NAN = math.nan


class SessionContext:
    """The node's side: one gateway session's carriers as its CONTEXT reports and the
    node's own paths show them, fed to that session's downlink scheduler.

    The node sends the downlink, so its TCP_INFO judges saturation on the sending side
    (the strong test): a second's bytes acknowledged by the gateway go to
    ``observe_throughput`` when the node's sending was busy and not application-limited,
    ``nan`` otherwise. The RSRP window is made of the reports (one per
    ``[context] report_interval`` on the gateway: keep it at 1 s). The tracker and the
    long-term source go to the session's scheduler adapter (``carriers``, ``longterm``),
    whose registry hands each carrier context to the source. Nothing is learnt here: the
    gateway learns.
    """

    def __init__(self, predict, window_s: int, now: float) -> None:
        from scheduler.longterm import CarrierWindowSource

        self.longterm = CarrierWindowSource(predict)
        self.tracker = CarrierTracker(window_s)
        self.meter = PerfMeter()
        self.next_second = now + 1.0
        self.latest: dict[str, CarrierSecond] = {}

    def report(self, msg: wire.Context, now: float) -> None:
        r = Reading(
            msg.carrier,
            now,
            str(msg.cell_id) if msg.cell_id else "",
            msg.rsrp_dbm,
            msg.lat,
            msg.lon,
        )
        track(self.tracker, r)

    def on_info(self, path_id: int, carrier: str, conn: object, info, now: float) -> None:
        if info is not None:
            self.meter.add(path_id, carrier, conn, info, now)

    def tick(self, now: float) -> None:
        if now < self.next_second:
            return
        self.next_second = max(self.next_second + 1.0, now + 0.5)
        for s in self.meter.close(now):
            self.latest[s.carrier] = s
            # "up" is what this side sent: the node's up is the gateway's downlink
            self.longterm.observe_throughput(s.carrier, s.up_bps if s.saturated_up else NAN)

    def status(self, carrier: str, now: float) -> dict:
        out: dict = {}
        s = self.latest.get(carrier)
        if s is not None:
            out["sent_mbit"] = round(s.up_bps / 1e6, 3)
            out["saturated"] = s.saturated_up
        p = self.longterm.predict(carrier, now)
        if p is not None:
            out["prediction"] = prediction_status(p)
        return out
