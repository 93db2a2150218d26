"""Trace readers: what a carrier link can deliver, millisecond by millisecond.

Every source is turned into one shape, :class:`DeliveryTrace`: a periodic array of
delivery opportunities per millisecond, each opportunity worth up to
:data:`OPPORTUNITY_BYTES` (Mahimahi's convention: one opportunity = one 1500-byte packet).
The link emulator only knows this shape, so a Mahimahi trace, a 5G drive log, a fixed
rate and the synthetic rail route are interchangeable; :func:`netns.tracespec.load` picks
one from a command-line spec.

Readers never guess silently: a missing file, a malformed line or a non-monotonic
timestamp raises :class:`~netns.errors.TraceError` naming the file and the line.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netns.errors import TraceError

OPPORTUNITY_BYTES = 1500
"""Bytes one delivery opportunity can carry (IP bytes, as in Mahimahi)."""

_BITS_PER_OPPORTUNITY = OPPORTUNITY_BYTES * 8


@dataclass(frozen=True)
class DeliveryTrace:
    """Delivery opportunities per millisecond, repeating with period ``len(counts)`` ms.

    ``counts[t]`` is the number of opportunities in millisecond ``t`` of each period.
    ``name`` is for messages and reports (usually the file it came from).
    """

    counts: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        c = np.asarray(self.counts, dtype=np.int64)
        if c.ndim != 1 or len(c) == 0:
            raise ValueError("a delivery trace needs at least one millisecond")
        if (c < 0).any():
            raise ValueError("opportunity counts must be >= 0")
        object.__setattr__(self, "counts", c)

    @property
    def period_ms(self) -> int:
        return len(self.counts)

    def opportunities(self, start_ms: int, end_ms: int) -> int:
        """Opportunities in ``[start_ms, end_ms)`` of trace time (periodic)."""
        return self._cumulative(end_ms) - self._cumulative(start_ms)

    def _cumulative(self, t_ms: int) -> int:
        cum = self._cum
        rounds, rest = divmod(int(t_ms), self.period_ms)
        return rounds * int(cum[-1]) + int(cum[rest])

    @property
    def _cum(self) -> np.ndarray:
        cum = self.__dict__.get("_cum_cache")
        if cum is None:
            cum = np.concatenate(([0], np.cumsum(self.counts)))
            object.__setattr__(self, "_cum_cache", cum)
        return cum

    def rate_bps(self, start_ms: int, end_ms: int) -> float:
        """Mean deliverable rate (IP bits/s) over ``[start_ms, end_ms)``."""
        if end_ms <= start_ms:
            raise ValueError("empty window")
        return (
            self.opportunities(start_ms, end_ms)
            * _BITS_PER_OPPORTUNITY
            * 1000
            / (end_ms - start_ms)
        )

    def mean_rate_bps(self) -> float:
        return self.rate_bps(0, self.period_ms)

    def scaled(self, time_scale: float = 1.0, rate_scale: float = 1.0) -> DeliveryTrace:
        """Replay slower (``time_scale`` > 1) or faster (< 1), and/or scale the rate.

        Time-scaling stretches the *shape* of the trace in time and keeps its rates: a
        10 s dip becomes a 20 s dip at ``time_scale=2``. Rate-scaling multiplies every
        rate. Opportunities stay whole; fractions are carried so long-run totals are exact.
        """
        if time_scale <= 0 or rate_scale < 0:
            raise ValueError("time_scale must be > 0 and rate_scale >= 0")
        if time_scale == 1.0 and rate_scale == 1.0:
            return self
        period = max(1, round(self.period_ms * time_scale))
        grid = np.arange(period + 1, dtype=np.float64) / time_scale
        cum = np.interp(grid, np.arange(self.period_ms + 1), self._cum.astype(np.float64))
        total = np.floor(cum * time_scale * rate_scale + 1e-9)
        return DeliveryTrace(np.diff(total).astype(np.int64), self.name)


def from_rates(rates_bps: np.ndarray, step_ms: int, name: str = "") -> DeliveryTrace:
    """Opportunities from a step function of rates (bits/s, one value per ``step_ms``)."""
    rates = np.asarray(rates_bps, dtype=np.float64)
    if len(rates) == 0:
        raise ValueError("no rates")
    per_ms = np.repeat(rates / _BITS_PER_OPPORTUNITY / 1000.0, step_ms)
    total = np.floor(np.cumsum(per_ms) + 1e-9)
    return DeliveryTrace(np.diff(np.concatenate(([0.0], total))).astype(np.int64), name)


def fixed_rate(rate_bps: float) -> DeliveryTrace:
    """A constant-rate link (``rate_bps`` IP bits/s), exact over each 12 s period."""
    if rate_bps <= 0:
        raise ValueError(f"rate must be > 0 (got {rate_bps})")
    return from_rates(np.array([rate_bps]), 12_000, name=f"fixed {rate_bps / 1e6:g} Mbit/s")


def _open_text(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        raise TraceError(path, None, "no such trace file") from None
    except IsADirectoryError:
        raise TraceError(path, None, "is a directory, not a trace file") from None
    except UnicodeDecodeError as e:
        raise TraceError(path, None, f"not a text file ({e.reason})") from None
    except OSError as e:
        raise TraceError(path, None, f"cannot read: {e.strerror}") from None


def read_mahimahi(path: str | Path) -> DeliveryTrace:
    """A Mahimahi delivery trace: one ms timestamp per line, one 1500-byte opportunity each.

    The trace repeats with a period equal to its last timestamp, as in Mahimahi;
    opportunities stamped exactly at the period fall into millisecond 0 of the next round.
    """
    path = Path(path)
    stamps: list[int] = []
    last = 0
    for lineno, raw in enumerate(_open_text(path), 1):
        text = raw.strip()
        if not text:
            continue
        try:
            t = int(text)
        except ValueError:
            raise TraceError(
                path, lineno, f"expected a millisecond timestamp, got {text!r}"
            ) from None
        if t < last:
            raise TraceError(path, lineno, f"timestamp {t} goes back in time (previous {last})")
        last = t
        stamps.append(t)
    if not stamps:
        raise TraceError(path, None, "empty trace: no delivery opportunities")
    if last <= 0:
        raise TraceError(path, None, "the last timestamp must be > 0 (it is the trace's period)")
    counts = np.bincount(np.asarray(stamps) % last, minlength=last)
    return DeliveryTrace(counts, path.name)


# -- 5G drive logs --------------------------------------------------------------------

FIVEG_COLUMNS = (
    "Timestamp,Longitude,Latitude,Speed,Operatorname,CellID,NetworkMode,RSRP,RSRQ,SNR,CQI,"
    "RSSI,DL_bitrate,UL_bitrate,State,PINGAVG,PINGMIN,PINGMAX,PINGSTDEV,PINGLOSS,CELLHEX,"
    "NODEHEX,LACHEX,RAWCELLID,NRxRSRP,NRxRSRQ"
).split(",")
"""Column order of the 5G driving CSVs (the rail generator writes the same)."""

_NEEDED = ("Timestamp", "DL_bitrate", "UL_bitrate", "State", "CellID", "RSRP", "PINGAVG")
MISSING_POLICIES = ("hold", "zero")
FIVEG_UPLINK_MBIT = 20.0
"""Uplink capacity (Mbit/s) the testbed assumes for a 5G drive log, unless the trace spec
says ``<file>.csv:ul=<Mbit/s>``. The logs record the traffic the phone moved, not what the
carrier could carry: on a downloading row ``UL_bitrate`` is mostly the download's own
ACKs (100-300 kbit/s), and the logs have no upload runs. Played as the uplink it starves
the ACKs of every download (a single TCP download then gets a tenth of the downlink).
20 Mbit/s is a middling LTE uplink (5G NSA sends its uplink over LTE); the assumed rate
is offered in every second whose downlink delivers and withdrawn in seconds whose
downlink delivers nothing (an outage takes both directions)."""


@dataclass(frozen=True)
class FiveGSecond:
    """One second of a 5G drive log, after de-duplication and gap filling.

    ``dl_kbps``/``ul_kbps`` are None where the log had no usable value (``-``, idle
    state, or no row for that second); ``filled`` says a policy supplied the rate used.
    """

    t: int
    dl_kbps: float | None
    ul_kbps: float | None
    rtt_ms: float | None
    cell_id: str
    rsrp: float | None
    longitude: float | None
    latitude: float | None


@dataclass(frozen=True)
class FiveGTrace:
    """A parsed 5G drive log: per-second records plus the rule used for missing values."""

    path: str
    seconds: list[FiveGSecond]
    missing: str

    def delivery(self, direction: str, uplink_mbit: float = FIVEG_UPLINK_MBIT) -> DeliveryTrace:
        """The ``"down"`` delivery trace (DL_bitrate), or the ``"up"`` one the testbed
        assumes: ``uplink_mbit`` in every second the downlink delivers, nothing in the
        others (see :data:`FIVEG_UPLINK_MBIT`; ``UL_bitrate`` is traffic, not capacity).

        Seconds without a value follow the policy: ``hold`` repeats the last known rate
        (zero before the first), ``zero`` makes the link deliver nothing that second.
        """
        if direction not in ("down", "up"):
            raise ValueError("direction must be 'down' or 'up'")
        if not uplink_mbit > 0 or not math.isfinite(uplink_mbit):
            raise ValueError(f"uplink rate must be a positive number of Mbit/s (got {uplink_mbit})")
        rates = []
        last = 0.0
        for s in self.seconds:
            v = s.dl_kbps
            if v is None:
                v = last if self.missing == "hold" else 0.0
            else:
                last = v
            rates.append(v * 1000.0)
        down = np.array(rates)
        if direction == "up":
            down = np.where(down > 0, uplink_mbit * 1e6, 0.0)
        return from_rates(down, 1000, name=f"{Path(self.path).name}:{direction}")

    def median_rtt_ms(self) -> float | None:
        rtts = [s.rtt_ms for s in self.seconds if s.rtt_ms is not None]
        return float(np.median(rtts)) if rtts else None

    def missing_count(self, direction: str) -> int:
        attr = "dl_kbps" if direction == "down" else "ul_kbps"
        return sum(1 for s in self.seconds if getattr(s, attr) is None)


def _num(path: Path, lineno: int, col: str, text: str) -> float | None:
    if text.strip() in ("-", ""):
        return None
    try:
        return float(text)
    except ValueError:
        raise TraceError(
            path, lineno, f"column {col}: expected a number or '-', got {text!r}"
        ) from None


def read_5g_csv(
    path: str | Path, missing: str = "hold", idle_as_missing: bool = True
) -> FiveGTrace:
    """Read a 5G driving CSV (columns :data:`FIVEG_COLUMNS`) into per-second records.

    Rows are per second; when a second appears twice the later row wins, when a second
    is absent it becomes a record without rates. Rows in state ``I`` (idle, no download
    running) have no meaningful throughput and count as missing unless
    ``idle_as_missing`` is False.
    """
    path = Path(path)
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}")
    lines = _open_text(path)
    if not lines:
        raise TraceError(path, 1, "empty file: expected a header row")
    header = next(csv.reader([lines[0]]))
    absent = [c for c in _NEEDED if c not in header]
    if absent:
        raise TraceError(path, 1, f"header lacks column(s) {', '.join(absent)}")
    idx = {c: header.index(c) for c in header}
    by_second: dict[int, FiveGSecond] = {}
    start: dt.datetime | None = None
    prev_t = -1
    for lineno, row in enumerate(csv.reader(lines[1:]), 2):
        if not row:
            continue
        if len(row) != len(header):
            raise TraceError(path, lineno, f"expected {len(header)} columns, got {len(row)}")
        stamp = row[idx["Timestamp"]]
        try:
            when = dt.datetime.strptime(stamp, "%Y.%m.%d_%H.%M.%S")
        except ValueError:
            raise TraceError(path, lineno, f"bad Timestamp {stamp!r}") from None
        start = start or when
        t = int((when - start).total_seconds())
        if t < prev_t:
            raise TraceError(path, lineno, f"Timestamp {stamp} goes back in time")
        prev_t = t
        dl = _num(path, lineno, "DL_bitrate", row[idx["DL_bitrate"]])
        ul = _num(path, lineno, "UL_bitrate", row[idx["UL_bitrate"]])
        if idle_as_missing and row[idx["State"]].strip() == "I":
            dl = ul = None

        def opt(col: str, row: list[str] = row, lineno: int = lineno) -> float | None:
            return _num(path, lineno, col, row[idx[col]]) if col in idx else None

        by_second[t] = FiveGSecond(
            t=t,
            dl_kbps=dl,
            ul_kbps=ul,
            rtt_ms=opt("PINGAVG"),
            cell_id=row[idx["CellID"]].strip(),
            rsrp=opt("RSRP"),
            longitude=opt("Longitude"),
            latitude=opt("Latitude"),
        )
    if not by_second:
        raise TraceError(path, None, "no data rows")
    seconds = []
    for t in range(prev_t + 1):
        rec = by_second.get(t)
        if rec is None:
            before = seconds[-1]
            rec = FiveGSecond(t, None, None, None, before.cell_id, None, None, None)
        seconds.append(rec)
    return FiveGTrace(str(path), seconds, missing)
