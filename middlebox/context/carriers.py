"""Third-party context of the carriers (seed 001): cell, signal, position; and what each
carrier delivered, second by second.

Sans-I/O pieces the gateway's context loop (:mod:`middlebox.context.loop`) joins:

* a **source** yields :class:`Reading` records (``poll(now) -> list[Reading]``):
  :class:`ReplaySource` plays per-second records of 5G-drive CSV files (the layout the
  rail generator writes: ``mpproxy testbed rail``), one file per configured carrier, in
  step with the testbed's trace time; :class:`JsonLinesParser` turns the JSON lines a
  modem helper prints into readings (the I/O shell that runs the helper is
  :class:`middlebox.context.loop.CommandSource`). Reading a modem itself (ModemManager, AT
  commands) is out of scope: a helper program does that and prints JSON lines.
* :func:`track` hands a reading to the scheduler's carrier tracker
  (:class:`scheduler.generators.CarrierTracker`, registered with the scheduling
  module's registry), which keeps each carrier's :class:`scheduler.context.CarrierContext`
  (latest cell and RSRP, the RSRP window of the last W seconds, handovers, position).
* :class:`PerfMeter` turns the paths' TCP_INFO readings into one :class:`CarrierSecond`
  per carrier and second: bytes each way, smoothed RTT, retransmitted share, and whether
  the carrier was saturated (see its docstring: measured throughput is what passengers
  used, not what the carrier could carry).

Times are the caller's clock (``now``, seconds); nothing here reads a clock or a file
except :func:`load_replay`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from middlebox.errors import UserError
from middlebox.session.wire import RSRP_RANGE
from scheduler.context import CarrierContext
from scheduler.generators import CarrierTracker

MEASURE_DIRECTIONS = ("down", "up")
BUSY_SHARE = 0.8  # share of a second with data moving that counts as saturated


@dataclass(frozen=True, slots=True)
class Reading:
    """One report of one carrier's modem (and the vehicle's GPS).

    ``t`` is the gateway's clock when the reading took effect; ``cell_id`` is text as in
    the drive logs (``""`` when unknown); ``rsrp`` dBm; ``lat``/``lon`` degrees.
    """

    carrier: str
    t: float
    cell_id: str = ""
    rsrp: float | None = None
    lat: float | None = None
    lon: float | None = None


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# -- sources ------------------------------------------------------------------------------


class ContextSource(Protocol):
    """Anything that yields carrier readings when asked, at most a few per second.

    ``poll`` must not block: a source that reads a device or a program does the reading
    in the event loop's selector (as :class:`middlebox.context.loop.CommandSource` does) and
    hands over what has arrived. A new kind of source needs only this method, a
    ``[context] source`` choice and a line in ``ContextLoop.__init__``.
    """

    def poll(self, now: float) -> list[Reading]: ...


@dataclass(frozen=True, slots=True)
class _Row:
    cell_id: str
    rsrp: float | None
    lat: float | None
    lon: float | None


class ReplaySource:
    """Per-second records of each carrier, played so that record ``k`` is current during
    ``[start + k, start + k + 1)`` on the caller's clock.

    ``start`` is the testbed's trace time 0 (``Testbed.trace_start``, CLOCK_MONOTONIC,
    the same in every namespace), so the context played matches the delivery trace the
    link emulator plays for the same file. With ``loop`` the records repeat (the emulator
    repeats its traces too); without it a carrier falls silent after its last record.
    ``time_scale`` stretches the records in time like the testbed's ``time_scale`` does
    its traces (2.0: each record lasts two seconds). Each poll returns at most one
    reading per carrier: the current record's, once.
    """

    def __init__(
        self,
        rows: dict[str, Sequence[_Row]],
        start: float,
        loop: bool = True,
        time_scale: float = 1.0,
    ) -> None:
        self.rows = {c: list(r) for c, r in rows.items() if r}
        self.start = start
        self.loop = loop
        self.time_scale = time_scale
        self._last: dict[str, int] = {}

    def poll(self, now: float) -> list[Reading]:
        k = self.trace_second(now)
        if k < 0:
            return []
        out = []
        for carrier, rows in self.rows.items():
            if self._last.get(carrier) == k:
                continue
            if k >= len(rows) and not self.loop:
                continue
            self._last[carrier] = k
            r = rows[k % len(rows)]
            out.append(Reading(carrier, now, r.cell_id, r.rsrp, r.lat, r.lon))
        return out

    def trace_second(self, now: float) -> int:
        """The record index (before wrapping) current at ``now``."""
        return math.floor((now - self.start) / self.time_scale)


def load_replay(files: Sequence[str], carriers: Sequence[str]) -> dict[str, list[_Row]]:
    """Read one 5G-drive CSV per carrier (the k-th file belongs to the k-th carrier).

    Seconds missing in a file become rows without values (the drive logs skip seconds);
    a file that cannot be read or is not such a log raises :class:`UserError`.
    """
    from contextdb.errors import ContextDBError
    from contextdb.traces import read_5g_csv

    if len(files) != len(carriers):
        raise UserError(
            f"context.replay_files: {len(files)} file(s) for {len(carriers)} carrier(s); "
            "give one file per [[gateway.carriers]] table, in the same order"
        )
    out: dict[str, list[_Row]] = {}
    for path, carrier in zip(files, carriers, strict=True):
        try:
            run = read_5g_csv(Path(path), carrier=carrier)
        except ContextDBError as e:
            raise UserError(f"context.replay_files: {e}") from None
        samples = sorted(run.samples, key=lambda s: s.t)
        t0 = samples[0].t
        rows = [_Row("", None, None, None)] * (int(samples[-1].t - t0) + 1)
        for s in samples:
            rows[int(s.t - t0)] = _Row(
                s.cell or "", _finite(s.rsrp), _finite(s.lat), _finite(s.lon)
            )
        out[carrier] = rows
    return out


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


# What a reading's numbers may be (a modem reports RSRP from -156 to -31 dBm; the wire
# carries -200..0, the range used here so that whatever is tracked can be reported).
READING_RANGES = {"rsrp": RSRP_RANGE, "lat": (-90.0, 90.0), "lon": (-180.0, 180.0)}


class JsonLinesParser:
    """Readings from JSON lines, one object per line, as a modem helper prints them::

        {"carrier": "vodafone", "cell_id": "26034", "rsrp": -97.5, "lat": 53.3, "lon": -6.2}

    ``carrier`` is required; the other keys are optional (absent or null: unknown). A
    line that is not such an object is counted in ``errors`` (and its text kept in
    ``last_error``) and skipped: a misbehaving helper never stops the gateway. That
    includes whatever the JSON decoder raises on hostile input (nesting a thousand deep
    raises RecursionError), NaN and Infinity (not JSON, though Python's decoder takes
    them), integers too large for a float and numbers outside :data:`READING_RANGES`.
    ``feed`` takes any chunking.
    """

    MAX_LINE = 4096

    def __init__(self, carriers: Sequence[str] | None = None) -> None:
        self.carriers = set(carriers) if carriers is not None else None
        self._buf = bytearray()
        self.errors = 0
        self.last_error = ""

    def feed(self, data: bytes, now: float) -> list[Reading]:
        self._buf += data
        out = []
        while (i := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[:i])
            del self._buf[: i + 1]
            if line.strip():
                try:
                    r = self._parse(line, now)
                except Exception as e:  # the line boundary: no line ends the gateway
                    self._error(f"unusable line ({type(e).__name__}): {line[:80]!r}")
                    continue
                if r is not None:
                    out.append(r)
        if len(self._buf) > self.MAX_LINE:
            self._error(f"line longer than {self.MAX_LINE} bytes")
            self._buf.clear()
        return out

    def _error(self, why: str) -> None:
        self.errors += 1
        self.last_error = why

    def _parse(self, line: bytes, now: float) -> Reading | None:
        try:
            obj = json.loads(line, parse_constant=_no_constant)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            self._error(f"not JSON: {line[:80]!r}")
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("carrier"), str):
            self._error(f"not an object with a carrier name: {line[:80]!r}")
            return None
        carrier = obj["carrier"]
        if self.carriers is not None and carrier not in self.carriers:
            self._error(f"unknown carrier {carrier!r}")
            return None
        cell = obj.get("cell_id") or ""  # absent or null: unknown
        if isinstance(cell, bool) or not isinstance(cell, str | int):
            self._error(f"cell_id: not text or a number: {cell!r}")
            return None
        cell = str(cell)
        if len(cell) > 64 or not cell.isprintable():
            self._error(f"cell_id: more than 64 characters or control characters: {cell[:80]!r}")
            return None
        num: dict[str, float | None] = {}
        for key, (lo, hi) in READING_RANGES.items():
            v = obj.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                self._error(f"{key}: not a number: {str(v)[:80]!r}")
                return None
            if v is not None and not lo <= v <= hi:  # exact for ints of any size
                self._error(f"{key}: outside {lo}..{hi}: {str(v)[:80]}")
                return None
            num[key] = None if v is None else float(v)
        if (num["lat"] is None) != (num["lon"] is None):
            num["lat"] = num["lon"] = None
        return Reading(carrier, now, cell, **num)


# -- per-carrier state --------------------------------------------------------------------


def track(tracker: CarrierTracker, r: Reading) -> CarrierContext:
    """Report one reading to the carrier tracker (a position only when both coordinates
    are known)."""
    pos = (r.lat, r.lon) if r.lat is not None and r.lon is not None else None
    return tracker.report(r.carrier, r.t, cell_id=r.cell_id, rsrp=r.rsrp, position=pos)


@dataclass(slots=True)
class CarrierSecond:
    """What one carrier's paths did during one second (``t`` is its start).

    ``saturated`` says whether the measured direction was limited by the carrier rather
    than by demand: for ``up`` the gateway's sending side had data queued for (nearly)
    the whole second and the last rate sample was not application-limited; for ``down``
    data arrived in (nearly) every TCP_INFO interval of the second (the gateway is the
    receiver there and cannot see the node's queue, so this is the weaker test).
    """

    carrier: str
    t: float
    down_bps: float = 0.0
    up_bps: float = 0.0
    rtt: float = math.nan  # s, smoothed RTT, mean over the carrier's paths
    loss: float = math.nan  # fraction of segments retransmitted
    saturated_up: bool = False
    saturated_down: bool = False
    paths: int = 0

    def bps(self, direction: str) -> float:
        return self.down_bps if direction == "down" else self.up_bps

    def saturated(self, direction: str) -> bool:
        return self.saturated_down if direction == "down" else self.saturated_up


@dataclass(slots=True)
class _PathMeter:
    carrier: str
    key: object  # identity of the connection: counters restart with a new one
    rx: int = 0
    tx: int = 0
    segs: int = 0
    retrans: int = 0
    busy_us: int = 0
    # accumulated over the open second
    d_rx: int = 0
    d_tx: int = 0
    d_segs: int = 0
    d_retrans: int = 0
    d_busy_us: int = 0
    readings: int = 0
    rx_readings: int = 0
    app_limited: bool = True
    srtt: float = 0.0


@dataclass
class PerfMeter:
    """Per-carrier, per-second performance from TCP_INFO readings of the carrier paths.

    ``add`` takes every reading (the uplink reads each path every 0.2 s); ``close(now)``
    ends the second that began at the last close and returns one :class:`CarrierSecond`
    per carrier that had a path up in it. Counters are differences of the kernel's
    cumulative ones (``bytes_received``, ``bytes_acked``, ``segs_out``,
    ``total_retrans``, ``busy_time``); a new connection on a path starts from its own
    first reading.
    """

    paths: dict[int, _PathMeter] = field(default_factory=dict)
    opened: float | None = None

    def add(self, path_id: int, carrier: str, key: object, info, now: float) -> None:
        if self.opened is None:
            self.opened = now
        m = self.paths.get(path_id)
        if m is None or m.key is not key:
            self.paths[path_id] = _PathMeter(
                carrier,
                key,
                info.bytes_received,
                info.bytes_acked,
                info.segs_out,
                info.total_retrans,
                info.busy_time_us,
            )
            return
        d_rx = max(0, info.bytes_received - m.rx)
        m.d_rx += d_rx
        m.d_tx += max(0, info.bytes_acked - m.tx)
        m.d_segs += max(0, info.segs_out - m.segs)
        m.d_retrans += max(0, info.total_retrans - m.retrans)
        m.d_busy_us += max(0, info.busy_time_us - m.busy_us)
        m.rx, m.tx, m.segs = info.bytes_received, info.bytes_acked, info.segs_out
        m.retrans, m.busy_us = info.total_retrans, info.busy_time_us
        m.readings += 1
        m.rx_readings += d_rx > 0
        m.app_limited = info.app_limited and info.notsent_bytes == 0
        if info.srtt_us:
            m.srtt = info.srtt_us / 1e6

    def drop(self, path_id: int) -> None:
        self.paths.pop(path_id, None)

    def close(self, now: float) -> list[CarrierSecond]:
        start = self.opened if self.opened is not None else now
        span = max(1e-3, now - start)
        self.opened = now
        out: dict[str, CarrierSecond] = {}
        rtts: dict[str, list[float]] = {}
        segs: dict[str, list[int]] = {}
        for m in self.paths.values():
            if m.readings == 0:
                continue
            s = out.setdefault(m.carrier, CarrierSecond(m.carrier, start))
            s.paths += 1
            s.down_bps += m.d_rx * 8 / span
            s.up_bps += m.d_tx * 8 / span
            if m.srtt:
                rtts.setdefault(m.carrier, []).append(m.srtt)
            acc = segs.setdefault(m.carrier, [0, 0])
            acc[0] += m.d_segs
            acc[1] += m.d_retrans
            if m.d_busy_us >= BUSY_SHARE * span * 1e6 and not m.app_limited:
                s.saturated_up = True
            if m.rx_readings >= BUSY_SHARE * m.readings and m.d_rx:
                s.saturated_down = True
            m.d_rx = m.d_tx = m.d_segs = m.d_retrans = m.d_busy_us = 0
            m.readings = m.rx_readings = 0
        for carrier, s in out.items():
            r = rtts.get(carrier)
            if r:
                s.rtt = sum(r) / len(r)
            n, lost = segs[carrier]
            if n:
                s.loss = min(1.0, lost / n)
        return list(out.values())
