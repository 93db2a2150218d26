"""Carrier context from ModemManager (``[context] source = "modemmanager"``).

ModemManager owns the modems of a Linux router; its command-line client ``mmcli`` prints
what they report as JSON (``-J``). Every ``modem_interval`` seconds one *round* runs, one
program at a time:

1. ``mmcli -J -L``: the modems present (``/org/freedesktop/ModemManager1/Modem/N``);
2. ``mmcli -J -m N`` for each: ports, equipment id, state, access technologies, operator;
   each carrier is then matched to its modem (``[context] modems``, below);
3. for each carrier's modem ``mmcli -J -m N --signal-get`` (RSRP, RSRQ and SNR per
   technology: ``lte``, ``5g``; RSCP and Ec/Io for ``umts``; RSSI for ``gsm``) and, with
   ``modem_location``, ``mmcli -J -m N --location-get`` (serving cell: cell id, TAC or
   LAC, MCC/MNC; GPS latitude and longitude). A modem whose extended signal reporting is
   off (refresh rate 0: every value ``--``) is switched on once with ``mmcli -m N
   --signal-setup=R`` (``modem_signal_setup``).

At the end of the round each carrier whose modem reported a cell or an RSRP gets one
:class:`~middlebox.context.carriers.Reading`: the cell id (ModemManager's hexadecimal
``cid`` as decimal text, like the drive logs), the RSRP of the cell that id names (LTE's
when the modem reports LTE, which is also the anchor of a 5G NSA connection, else 5G's,
as on a standalone 5G cell; none on 3G/2G, whose RSCP and RSSI are another measure) and
the vehicle's position (the first carrier's modem with a GPS fix gives it to all). The
full detail of each modem (technology, operator, TAC, RSRQ, SNR, ...) is kept for
``mpproxy status``.

Which modem serves a carrier, ``[context] modems`` (one entry per ``[[gateway.carriers]]``
table, in order; missing or empty entries: match by the carrier's interface):

* ``""``: the modem one of whose ports is the carrier's ``interface`` (``wwan0 (net)``):
  robust, because ModemManager renumbers a modem that resets (``Modem/0`` comes back as
  ``Modem/1``);
* digits: ModemManager's index ``N``;
* anything else: the modem's equipment id (IMEI), device identifier, primary port or
  any port name.

Isolation, as for the helper program's lines: each run is a child process with a timeout
(``modem_timeout``; killed after it), its stdout read without blocking from the gateway's
selector and capped at :data:`MAX_OUTPUT` bytes. An output that is not JSON, not the
documented shape, or holds values out of range (an RSRP of +40 dBm, a latitude of 300) is
counted (``bad_output``), its text kept in ``last_error``, and dropped whole; a run that
fails (a modem that vanished, ModemManager not running) is counted in ``failures``. No
output ever ends the gateway or holds up its loop for more than starting a process (about
a millisecond). Modems that vanish are counted (``modems_lost``) and found again by their
mapping when they come back (``modems_found``).

:class:`ModemPoller` is the sans-I/O core (what to run next, what an output means);
:class:`ModemSource` is the shell that runs the programs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import selectors
import shutil
import subprocess
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from middlebox.context.carriers import READING_RANGES, Reading, _no_constant
from middlebox.errors import UserError
from middlebox.logs import kv
from middlebox.paths.conn import forget, set_interest

log = logging.getLogger("mpproxy.context.modem")

MAX_OUTPUT = 256 << 10  # bytes of one run's output; a modem's JSON is a few KiB
MODEM_PATH = re.compile(r"^/org/freedesktop/ModemManager1/Modem/(\d{1,9})$")
NUMBER = re.compile(r"^[+-]?\d{1,9}(\.\d{1,9})?$")
HEX = re.compile(r"^[0-9A-Fa-f]{1,16}$")
DIGITS = re.compile(r"^\d{1,4}$")
UNKNOWN = ("", "--", "unknown")

# What each technology's signal block may hold (ModemManager's keys) and the ranges a
# value must fall in (3GPP TS 36.133 / 38.133 give RSRP -156..-31 dBm, RSRQ -43..20 dB;
# SNR is reported -20..40 dB; wider bounds here refuse only nonsense).
SIGNAL_KEYS = {
    "lte": ("rsrp", "rsrq", "snr", "rssi"),
    "5g": ("rsrp", "rsrq", "snr"),
    "umts": ("rscp", "ecio", "rssi"),
    "gsm": ("rssi",),
}
SIGNAL_RANGES = {
    "rsrp": READING_RANGES["rsrp"],
    "rsrq": (-50.0, 30.0),
    "snr": (-50.0, 60.0),
    "rssi": (-150.0, 0.0),
    "rscp": (-150.0, 0.0),
    "ecio": (-50.0, 0.0),
}


class BadOutput(ValueError):
    """An output of ``mmcli`` that is not what ModemManager documents."""


# -- parsing ----------------------------------------------------------------------------


def decode(data: bytes) -> dict:
    """One run's output as a JSON object; :class:`BadOutput` for anything else."""
    if len(data) > MAX_OUTPUT:
        raise BadOutput(f"output longer than {MAX_OUTPUT} bytes")
    try:
        obj = json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        raise BadOutput(f"not JSON: {data[:80]!r}") from None
    if not isinstance(obj, dict):
        raise BadOutput(f"not a JSON object: {data[:80]!r}")
    return obj


def _table(obj: object, *keys: str) -> dict:
    """``obj[k1][k2]...``, each a JSON object; absent: empty."""
    for k in keys:
        if not isinstance(obj, dict):
            raise BadOutput(f"{k}: expected an object, got {type(obj).__name__}")
        obj = obj.get(k, {})
    if not isinstance(obj, dict):
        raise BadOutput(f"{'.'.join(keys)}: expected an object, got {type(obj).__name__}")
    return obj


def _text(obj: dict, key: str, limit: int = 64) -> str:
    """A text field ('' when unknown: absent, ``--``); printable and bounded."""
    v = obj.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise BadOutput(f"{key}: not text: {str(v)[:80]!r}")
    if len(v) > limit or not v.isprintable():
        raise BadOutput(f"{key}: longer than {limit} characters or not printable: {v[:80]!r}")
    return "" if v.strip().lower() in UNKNOWN else v.strip()


def _texts(obj: dict, key: str, limit: int = 32) -> tuple[str, ...]:
    v = obj.get(key)
    if v is None:
        return ()
    if isinstance(v, str):  # older mmcli: one comma-separated value
        v = [x.strip() for x in v.split(",")]
    if not isinstance(v, list) or len(v) > limit:
        raise BadOutput(f"{key}: not a list of at most {limit} entries")
    return tuple(t for t in (_text({key: x}, key) for x in v) if t)


def _number(obj: dict, key: str, lo: float, hi: float) -> float | None:
    """A number ModemManager prints as text (``"-95.00"``); None when unknown."""
    v = _text(obj, key)
    if not v:
        return None
    if not NUMBER.match(v):
        raise BadOutput(f"{key}: not a number: {v[:80]!r}")
    x = float(v)
    if not lo <= x <= hi:
        raise BadOutput(f"{key}: outside {lo}..{hi}: {v}")
    return x


def _hex(obj: dict, key: str) -> int | None:
    v = _text(obj, key)
    if not v:
        return None
    if not HEX.match(v):
        raise BadOutput(f"{key}: not hexadecimal: {v[:80]!r}")
    return int(v, 16)


def parse_list(obj: dict) -> list[str]:
    """``mmcli -J -L``: the indices of the modems present."""
    paths = obj.get("modem-list")
    if not isinstance(paths, list) or len(paths) > 64:
        raise BadOutput("modem-list: not a list of at most 64 modem paths")
    out = []
    for p in paths:
        m = MODEM_PATH.match(p) if isinstance(p, str) else None
        if m is None:
            raise BadOutput(f"modem-list: not a modem path: {str(p)[:80]!r}")
        out.append(str(int(m.group(1))))
    return out


@dataclass(frozen=True, slots=True)
class ModemInfo:
    """``mmcli -J -m N``: who the modem is and what it is attached to."""

    index: str
    manufacturer: str = ""
    model: str = ""
    equipment_id: str = ""
    device_id: str = ""
    primary_port: str = ""
    ports: tuple[str, ...] = ()  # names only: "wwan0 (net)" -> "wwan0"
    state: str = ""
    tech: tuple[str, ...] = ()  # access technologies, e.g. ("lte", "5gnr")
    operator: str = ""
    operator_code: str = ""
    quality: int | None = None  # ModemManager's signal quality, percent

    def names(self) -> set[str]:
        """What a ``[context] modems`` entry other than an index may name."""
        return {self.equipment_id, self.device_id, self.primary_port, *self.ports} - {""}


def parse_modem(obj: dict, index: str) -> ModemInfo:
    modem = _table(obj, "modem")
    if not modem:
        raise BadOutput("no 'modem' object")
    gen = _table(modem, "generic")
    g3 = _table(modem, "3gpp")
    quality = _number(_table(gen, "signal-quality"), "value", 0, 100)
    return ModemInfo(
        index=index,
        manufacturer=_text(gen, "manufacturer"),
        model=_text(gen, "model"),
        equipment_id=_text(gen, "equipment-identifier") or _text(g3, "imei"),
        device_id=_text(gen, "device-identifier"),
        primary_port=_text(gen, "primary-port"),
        ports=tuple(p.split(" (")[0] for p in _texts(gen, "ports")),
        state=_text(gen, "state"),
        tech=_texts(gen, "access-technologies"),
        operator=_text(g3, "operator-name"),
        operator_code=_text(g3, "operator-code"),
        quality=None if quality is None else int(quality),
    )


@dataclass(frozen=True, slots=True)
class Signal:
    """``mmcli -J -m N --signal-get``: values per technology (only those reported)."""

    values: dict[str, dict[str, float]] = field(default_factory=dict)
    refresh_rate: int | None = None  # seconds; 0: extended signal reporting is off

    def rsrp(self) -> float | None:
        """The RSRP of the reported cell: LTE's (also a 5G NSA connection's anchor),
        else 5G's (a standalone 5G cell)."""
        for tech in ("lte", "5g"):
            v = self.values.get(tech, {}).get("rsrp")
            if v is not None:
                return v
        return None


def parse_signal(obj: dict) -> Signal:
    sig = _table(obj, "modem", "signal")
    values: dict[str, dict[str, float]] = {}
    for tech, keys in SIGNAL_KEYS.items():
        block = _table(sig, tech)
        got = {k: x for k in keys if (x := _number(block, k, *SIGNAL_RANGES[k])) is not None}
        if got:
            values[tech] = got
    rate = _number(_table(sig, "refresh"), "rate", 0, 86400)
    return Signal(values, None if rate is None else int(rate))


@dataclass(frozen=True, slots=True)
class Location:
    """``mmcli -J -m N --location-get``: the serving cell and a GPS fix."""

    cell_id: str = ""  # decimal, like the drive logs
    tac: int | None = None
    lac: int | None = None
    mcc: str = ""
    mnc: str = ""
    lat: float | None = None
    lon: float | None = None


def parse_location(obj: dict) -> Location:
    loc = _table(obj, "modem", "location")
    g3 = _table(loc, "3gpp")
    gps = _table(loc, "gps")
    cid = _hex(g3, "cid")
    tac, lac = _hex(g3, "tac"), _hex(g3, "lac")
    mcc, mnc = _text(g3, "mcc"), _text(g3, "mnc")
    for key, v in (("mcc", mcc), ("mnc", mnc)):
        if v and not DIGITS.match(v):
            raise BadOutput(f"{key}: not 1-4 digits: {v[:80]!r}")
    lat = _number(gps, "latitude", *READING_RANGES["lat"])
    lon = _number(gps, "longitude", *READING_RANGES["lon"])
    if lat is None or lon is None:
        lat = lon = None
    return Location(
        cell_id="" if not cid else str(cid),  # 0: not camped (some modems say 00000000)
        tac=tac or None,
        lac=lac if lac not in (0, 0xFFFF, 0xFFFE) else None,  # reserved LAC values
        mcc=mcc,
        mnc=mnc,
        lat=lat,
        lon=lon,
    )


# -- the core ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """One ``mmcli`` run: ``kind`` is list, info, signal, location or setup."""

    kind: str
    index: str = ""

    def args(self, setup_rate: int) -> list[str]:
        if self.kind == "list":
            return ["-J", "-L"]
        if self.kind == "setup":
            return ["-m", self.index, f"--signal-setup={setup_rate}"]
        extra = {"info": [], "signal": ["--signal-get"], "location": ["--location-get"]}
        return ["-J", "-m", self.index, *extra[self.kind]]


@dataclass(slots=True)
class CarrierModem:
    """What one carrier's modem said in the latest round."""

    carrier: str
    selector: str  # the [context] modems entry ('' : by interface)
    interface: str
    info: ModemInfo | None = None
    signal: Signal | None = None
    location: Location | None = None
    present: bool = False
    ever: bool = False

    def matches(self, m: ModemInfo) -> bool:
        if not self.selector:
            return bool(self.interface) and self.interface in m.ports
        if self.selector.isdigit() and m.index == str(int(self.selector)):
            return True  # an index (an IMEI is digits too: matched as a name)
        return self.selector in m.names()

    def status(self) -> dict:
        i, s, loc = self.info, self.signal, self.location
        out: dict = {"present": self.present}
        if i is not None:
            out.update(modem=i.index, model=" ".join(x for x in (i.manufacturer, i.model) if x),
                       equipment_id=i.equipment_id, state=i.state, tech=list(i.tech),
                       operator=i.operator, operator_code=i.operator_code,
                       quality=i.quality)  # fmt: skip
        if s is not None:
            out["signal"] = s.values
        if loc is not None:
            out.update(cell_id=loc.cell_id, tac=loc.tac, lac=loc.lac, mcc=loc.mcc, mnc=loc.mnc)
        return out


class ModemPoller:
    """Sans-I/O: which ``mmcli`` run comes next (:meth:`next_job`) and what its output
    means (:meth:`finished`, which returns the readings of a completed round).

    ``carriers``: (name, ``[context] modems`` entry, interface) per carrier."""

    COUNTERS = ("rounds", "runs", "failures", "timeouts", "bad_output", "modems_lost",
                "modems_found", "readings", "empty_reports", "signal_setups")  # fmt: skip

    def __init__(
        self,
        carriers: Sequence[tuple[str, str, str]],
        interval: float = 1.0,
        location: bool = True,
        signal_setup: bool = True,
    ) -> None:
        self.carriers = [CarrierModem(n, sel, itf) for n, sel, itf in carriers]
        self.interval = interval
        self.location = location
        self.signal_setup = signal_setup
        self.setup_rate = max(1, math.ceil(interval))
        self.next_round = -math.inf
        self.pending: deque[Job] = deque()
        self.in_round = False
        self.phase = ""
        self.infos: dict[str, ModemInfo] = {}
        self.set_up: set[tuple[str, str]] = set()  # (index, equipment id) signal set up
        self.counters = dict.fromkeys(self.COUNTERS, 0)
        self.last_error = ""

    def next_job(self, now: float) -> Job | None:
        """The next run, or None (a round is complete and the next is not due)."""
        if not self.in_round:
            if now < self.next_round:
                return None
            self.in_round = True
            self.phase = "list"
            self.next_round = now + self.interval
            self.pending.append(Job("list"))
        return self.pending.popleft() if self.pending else None

    def finished(self, job: Job, output: bytes | None, now: float, why: str = "") -> list[Reading]:
        """Take one run's output (None: it failed; ``why`` says how). Returns the
        round's readings once its last run is done, else []."""
        self.counters["runs"] += 1
        obj = None
        if output is None or (len(output) <= MAX_OUTPUT and not output.strip()):
            if job.kind != "setup":
                self._count("failures", f"mmcli {' '.join(job.args(self.setup_rate))}: "
                                        f"{why or 'no output'}")  # fmt: skip
        elif job.kind != "setup":
            try:
                obj = decode(output)
                self._take(job, obj)
            except BadOutput as e:
                obj = None
                self._count("bad_output", f"mmcli {' '.join(job.args(self.setup_rate))}: {e}")
        if job.kind == "list" and obj is None:
            self.infos = {}
        if self.pending:
            return []
        if self.phase in ("list", "info"):
            self._resolve()
            if self.pending:
                self.phase = "detail"
                return []
        return self._end_round(now)

    def _count(self, counter: str, why: str) -> None:
        self.counters[counter] += 1
        self.last_error = why
        n = self.counters[counter]
        if n in (1, 10, 100) or n % 1000 == 0:
            log.warning("modem context: %s %s", why, kv(**{counter: n}))

    def _take(self, job: Job, obj: dict) -> None:
        if job.kind == "list":
            indices = parse_list(obj)
            self.infos = {}
            self.phase = "info"
            self.pending.extend(Job("info", i) for i in indices)
            return
        cm = next((c for c in self.carriers if c.info and c.info.index == job.index), None)
        if job.kind == "info":
            self.infos[job.index] = parse_modem(obj, job.index)
        elif cm is not None and job.kind == "signal":
            cm.signal = parse_signal(obj)
            if (self.signal_setup and cm.signal.refresh_rate == 0
                    and (key := (job.index, cm.info.equipment_id)) not in self.set_up):  # fmt: skip
                self.set_up.add(key)
                self.counters["signal_setups"] += 1
                self.pending.appendleft(Job("setup", job.index))
        elif cm is not None and job.kind == "location":
            cm.location = parse_location(obj)

    def _resolve(self) -> None:
        """Match each carrier to a modem of this round; queue their detail runs."""
        for cm in self.carriers:
            m = next((m for m in self.infos.values() if cm.matches(m)), None)
            if m is None:
                if cm.present:
                    self._count("modems_lost", f"carrier {cm.carrier}: its modem is gone")
                    if cm.info is not None:  # set its signal reporting up again when back
                        self.set_up.discard((cm.info.index, cm.info.equipment_id))
                cm.present, cm.info, cm.signal, cm.location = False, None, None, None
                continue
            if not cm.present and cm.ever:
                self.counters["modems_found"] += 1
                log.info("modem context: modem back %s", kv(carrier=cm.carrier, modem=m.index))
            cm.present = cm.ever = True
            cm.info, cm.signal, cm.location = m, None, None
            self.pending.append(Job("signal", m.index))
            if self.location:
                self.pending.append(Job("location", m.index))

    def _end_round(self, now: float) -> list[Reading]:
        self.in_round = False
        self.phase = ""
        self.counters["rounds"] += 1
        fix = next(
            ((c.location.lat, c.location.lon) for c in self.carriers
             if c.location is not None and c.location.lat is not None),
            (None, None),
        )  # fmt: skip
        out = []
        for cm in self.carriers:
            if not cm.present:
                continue
            cell = cm.location.cell_id if cm.location is not None else ""
            rsrp = cm.signal.rsrp() if cm.signal is not None else None
            if not cell and rsrp is None:  # a position alone says nothing of the carrier
                self.counters["empty_reports"] += 1
                continue
            out.append(Reading(cm.carrier, now, cell, rsrp, *fix))
        self.counters["readings"] += len(out)
        return out

    def status(self) -> dict:
        return {
            **self.counters,
            "last_error": self.last_error,
            "modems": {c.carrier: c.status() for c in self.carriers},
        }


# -- the shell ----------------------------------------------------------------------------


def read_pipe(fd: int) -> bytes | None:
    """What a child's non-blocking stdout holds: None when nothing yet, b"" at its end
    (or when it cannot be read)."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def modem_program(program: str) -> str:
    """``program`` as found on PATH; :class:`UserError` when it is not there."""
    found = shutil.which(program)
    if found is None:
        raise UserError(
            f"context.modem_program: {program!r} not found on PATH (install ModemManager: "
            "apt-get install modemmanager)"
        )
    return found


class ModemSource:
    """Runs the core's ``mmcli`` programs one at a time; see the module text.

    ``attach(sel)`` reads their output from the gateway's selector; without it
    :meth:`poll` reads whatever has arrived. ``poll(now)`` times runs out, reaps them,
    starts the next one due and hands over the readings of completed rounds."""

    def __init__(
        self,
        program: str,
        carriers: Sequence[tuple[str, str, str]],
        interval: float = 1.0,
        timeout: float = 5.0,
        location: bool = True,
        signal_setup: bool = True,
    ) -> None:
        self.program = modem_program(program)
        self.timeout = timeout
        self.core = ModemPoller(carriers, interval, location, signal_setup)
        self.sel: selectors.BaseSelector | None = None
        self.job: Job | None = None
        self.proc: subprocess.Popen | None = None
        self.fd = -1
        self.buf = bytearray()
        self.started = 0.0
        self.reap: list[subprocess.Popen] = []
        self.pending: list[Reading] = []

    def attach(self, sel: selectors.BaseSelector) -> None:
        self.sel = sel

    def poll(self, now: float) -> list[Reading]:
        self.reap = [p for p in self.reap if p.poll() is None]
        if self.proc is not None:
            if self.sel is None:
                self._read(now)
            if self.proc is not None and now - self.started > self.timeout:
                self.core.counters["timeouts"] += 1
                self._end(now, None, f"no answer within {self.timeout:g} s")
        if self.proc is None:
            self._start_next(now)
        out, self.pending = self.pending, []
        return out

    def _start_next(self, now: float) -> None:
        while self.proc is None and (job := self.core.next_job(now)) is not None:
            argv = [self.program, *job.args(self.core.setup_rate)]
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    env={**os.environ, "LC_ALL": "C"},
                )
            except OSError as e:
                self.job = job
                self._finish(now, None, f"cannot start: {e.strerror}")
                continue
            assert proc.stdout is not None
            self.job, self.proc, self.started = job, proc, now
            self.fd = proc.stdout.fileno()
            self.buf.clear()
            os.set_blocking(self.fd, False)
            if self.sel is not None:
                set_interest(self.sel, self.fd, selectors.EVENT_READ, self._ready)

    def _ready(self, mask: int, now: float) -> None:
        self._read(now)
        if self.proc is None:
            self._start_next(now)

    def _read(self, now: float) -> None:
        while self.proc is not None:
            data = read_pipe(self.fd)
            if data is None:
                return
            if not data:
                rc = self.proc.poll()
                ok = rc in (None, 0)
                self._end(now, bytes(self.buf) if ok else None, f"exit status {rc}")
                return
            self.buf += data
            if len(self.buf) > MAX_OUTPUT:
                self._end(now, bytes(self.buf), "")  # decode refuses it, counted
                return

    def _end(self, now: float, output: bytes | None, why: str) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        if self.sel is not None:
            forget(self.sel, self.fd)
        if proc.poll() is None:
            if output is None or len(output) > MAX_OUTPUT:
                proc.kill()
            self.reap.append(proc)
        proc.stdout.close()
        self.proc, self.fd = None, -1
        self._finish(now, output, why)

    def _finish(self, now: float, output: bytes | None, why: str) -> None:
        job, self.job = self.job, None
        assert job is not None
        self.pending.extend(self.core.finished(job, output, now, why))

    def status(self) -> dict:
        return self.core.status()

    def close(self) -> None:
        if self.proc is not None:
            if self.sel is not None:
                forget(self.sel, self.fd)
            self.proc.kill()
            self.reap.append(self.proc)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None
        for p in self.reap:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(2.0)
            except subprocess.TimeoutExpired:
                pass
        self.reap = []
