"""Reader for the per-second 5G/LTE driving logs (Raca et al., MMSys 2020).

Each file is one drive (a *run*). Optional columns: ``Speed`` (km/h) and ``Position``
(km along the line, written by the testbed's rail line generator). Rows become
:class:`Sample` records; ``-`` and values outside physical ranges become ``nan``/``None``
and are counted per column, so a user can see how much of a file was usable. A file that
is not such a log (missing columns, a row of the wrong width, text where a number
belongs) is rejected with file and line.
"""

from __future__ import annotations

import calendar
import csv
import datetime
import functools
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from contextdb.errors import ContextDBError
from contextdb.records import NAN, HandoverEvent, Sample, classify

REQUIRED = (
    "Timestamp",
    "Longitude",
    "Latitude",
    "Operatorname",
    "CellID",
    "RSRP",
    "DL_bitrate",
    "State",
    "PINGAVG",
    "PINGLOSS",
)
RSRP_RANGE = (-160.0, -20.0)  # dBm; the logs use 2147483647 for "not reported"


@dataclass
class TraceRun:
    """One drive: its samples in file order and what was missing."""

    name: str
    samples: list[Sample]
    rows: int = 0
    missing: Counter = field(default_factory=Counter)
    events: list[HandoverEvent] | None = None  # exactly timed, from a ``.events`` file


def _number(text: str, column: str, where: str, missing: Counter) -> float:
    if text in ("-", ""):
        missing[column] += 1
        return NAN
    try:
        value = float(text)
    except ValueError:
        raise ContextDBError(f"{where}: column {column}: not a number: {text!r}") from None
    if not math.isfinite(value):
        missing[column] += 1
        return NAN
    return value


_TIMESTAMP = re.compile(r"(\d{4})\.(\d\d)\.(\d\d)_(\d\d)\.(\d\d)\.(\d\d)")


@functools.lru_cache(maxsize=64)
def _day(year: int, month: int, day: int) -> int:
    return calendar.timegm(datetime.date(year, month, day).timetuple())


def _timestamp(text: str, where: str) -> float:
    """``YYYY.MM.DD_HH.MM.SS`` as UTC seconds (strptime is the slowest part of a read)."""
    m = _TIMESTAMP.fullmatch(text)
    try:
        if m is None:
            raise ValueError(text)
        y, mo, d, h, mi, sec = map(int, m.groups())
        if h > 23 or mi > 59 or sec > 60:
            raise ValueError(text)
        return float(_day(y, mo, d) + 3600 * h + 60 * mi + sec)
    except ValueError:
        raise ContextDBError(
            f"{where}: column Timestamp: expected YYYY.MM.DD_HH.MM.SS, got {text!r}"
        ) from None


def _optional(row: list[str], col: dict[str, int], name: str, where: str, missing: Counter):
    """A column some logs have (``Speed`` km/h; ``Position``, km along the line, which the
    rail generator writes): nan when the log has no such column."""
    i = col.get(name)
    return NAN if i is None else _number(row[i], name, where, missing)


def read_5g_csv(
    path: str | Path, carrier: str | None = None, classes: tuple[float, float] = (0.1, 5.0)
) -> TraceRun:
    """Read one driving log. ``carrier`` overrides the file's ``Operatorname``. A file
    ``<name>.events`` beside it holds exactly timed events (:func:`read_events`,
    classified with ``classes``)."""
    path = Path(path)
    try:
        fh = path.open(newline="", encoding="utf-8")
    except OSError as e:
        raise ContextDBError(f"{path}: cannot read: {e.strerror}") from None
    run = TraceRun(name=path.stem, samples=[])
    missing = run.missing
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise ContextDBError(f"{path}: empty file") from None
        except (csv.Error, UnicodeDecodeError) as e:
            raise ContextDBError(f"{path}:1: not a CSV file: {e}") from None
        absent = [c for c in REQUIRED if c not in header]
        if absent:
            raise ContextDBError(
                f"{path}:1: not a 5G driving log: missing column(s) {', '.join(absent)}"
            )
        col = {name: i for i, name in enumerate(header)}
        width = len(header)
        try:
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not row:
                    continue
                if len(row) != width:
                    raise ContextDBError(f"{where}: expected {width} fields, found {len(row)}")
                run.rows += 1
                t = _timestamp(row[col["Timestamp"]], where)
                rsrp = _number(row[col["RSRP"]], "RSRP", where, missing)
                if not RSRP_RANGE[0] <= rsrp <= RSRP_RANGE[1] and not math.isnan(rsrp):
                    missing["RSRP"] += 1
                    rsrp = NAN
                cell = row[col["CellID"]].strip()
                if cell in ("-", ""):
                    missing["CellID"] += 1
                    cell = None
                dl = _number(row[col["DL_bitrate"]], "DL_bitrate", where, missing)
                if row[col["State"]] != "D":
                    missing["DL_bitrate (idle)"] += 1
                    dl = NAN
                pos = _optional(row, col, "Position", where, missing)
                speed = _optional(row, col, "Speed", where, missing)
                rtt = _number(row[col["PINGAVG"]], "PINGAVG", where, missing)
                loss = _number(row[col["PINGLOSS"]], "PINGLOSS", where, missing)
                run.samples.append(
                    Sample(
                        carrier=carrier or row[col["Operatorname"]] or "unknown",
                        t=t,
                        cell=cell,
                        rsrp=rsrp,
                        lat=_number(row[col["Latitude"]], "Latitude", where, missing),
                        lon=_number(row[col["Longitude"]], "Longitude", where, missing),
                        dl_bps=dl * 1000.0,
                        rtt=rtt / 1000.0,
                        loss=loss / 100.0,
                        pos_km=pos,
                        speed_kmh=speed,
                    )
                )
        except (csv.Error, UnicodeDecodeError) as e:
            raise ContextDBError(f"{path}:{reader.line_num}: unreadable row: {e}") from None
    if run.rows == 0:
        raise ContextDBError(f"{path}: no data rows")
    events_path = path.with_suffix(".events")
    if events_path.is_file() and run.samples:
        run.events = read_events(events_path, run.samples[0], classes)
    return run


EVENT_COLUMNS = ("Seconds", "Gap", "FromCell", "ToCell")


def read_events(
    path: Path, first: Sample, classes: tuple[float, float] = (0.1, 5.0)
) -> list[HandoverEvent]:
    """Disconnections and handovers timed by the source (the testbed's rail generator
    writes them beside its CSV, like a gateway's path layer times them): ``Seconds``
    after the log's first row, ``Gap`` seconds, cells. Classified by gap with
    ``classes`` = (success_max_s, failure_max_s), like the events found in the rows."""
    try:
        fh = path.open(newline="", encoding="utf-8")
    except OSError as e:
        raise ContextDBError(f"{path}: cannot read: {e.strerror}") from None
    out = []
    with fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        absent = [c for c in EVENT_COLUMNS if c not in header]
        if absent:
            raise ContextDBError(f"{path}:1: not an events file: missing {', '.join(absent)}")
        col = {name: i for i, name in enumerate(header)}
        missing: Counter = Counter()
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if len(row) != len(header):
                raise ContextDBError(f"{where}: expected {len(header)} fields, found {len(row)}")
            t = _number(row[col["Seconds"]], "Seconds", where, missing)
            gap = _number(row[col["Gap"]], "Gap", where, missing)
            if not (t >= 0 and gap >= 0):
                raise ContextDBError(f"{where}: Seconds and Gap must be numbers >= 0")
            kind = classify(gap, *classes)
            to = row[col["ToCell"]].strip() or None
            out.append(
                HandoverEvent(
                    first.carrier, first.t + t, row[col["FromCell"]].strip(), to, gap, kind
                )
            )
    return out


def expand_paths(paths: list[str]) -> list[Path]:
    """Files named, and the ``*.csv`` files of directories named, in sorted order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.csv"))
            if not found:
                raise ContextDBError(f"{p}: no *.csv files in this directory")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise ContextDBError(f"{p}: no such file or directory")
    return out
