"""Plain records that flow into the context database.

``Sample`` is the one ingest format: a per-second observation of one carrier. The 5G
CSV reader, the testbed's rail generator and a live gateway all produce it, so the rest
of the package never knows where a measurement came from (format: docs/contextdb.md).
Unknown values are ``nan`` (numbers) or ``None`` (cell), never a sentinel number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

NAN = math.nan

SUCCESS = "success"
FAILURE = "failure"
OUTAGE = "outage"
CLASSES = (SUCCESS, FAILURE, OUTAGE)


@dataclass(frozen=True, slots=True)
class Sample:
    """What one carrier showed during one second.

    ``t`` is seconds since the epoch (the second the sample describes), ``rsrp`` dBm,
    ``dl_bps`` bit/s delivered during that second (``nan``: not measured, e.g. idle),
    ``rtt`` seconds, ``loss`` fraction 0..1; ``pos_km`` the vehicle's position along its
    line (odometer or map-matched GPS, km; ``nan`` when unknown), ``speed_kmh`` its speed.
    """

    carrier: str
    t: float
    cell: str | None
    rsrp: float = NAN
    lat: float = NAN
    lon: float = NAN
    dl_bps: float = NAN
    rtt: float = NAN
    loss: float = NAN
    pos_km: float = NAN
    speed_kmh: float = NAN


@dataclass(frozen=True, slots=True)
class HandoverEvent:
    """A disconnection or cell change of one carrier.

    ``gap`` is how long the carrier delivered nothing (0 for a seamless cell change);
    ``cell`` is the cell it was in before, ``cell_to`` the one after (the same cell when
    the link dropped without a handover; ``None`` when unknown).
    """

    carrier: str
    t: float
    cell: str
    cell_to: str | None
    gap: float
    kind: str


def classify(gap: float, success_max: float, failure_max: float) -> str:
    """Success (< success_max), failure (up to failure_max, a handover that took about a
    second or a few), or outage (coverage lost for longer)."""
    if gap < success_max:
        return SUCCESS
    if gap <= failure_max:
        return FAILURE
    return OUTAGE
