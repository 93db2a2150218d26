"""The gateway's context loop: carrier context in, scheduler, node and database out.

Once a second (driven by the gateway's event loop through :meth:`ContextLoop.tick` and
:meth:`ContextLoop.next_timer`):

1. the configured source (``[context] source``) yields readings; each goes to the
   carrier tracker (:class:`scheduler.generators.CarrierTracker`, made here and
   registered by the gateway's scheduler adapter with its context registry), which
   publishes the carrier's :class:`~scheduler.context.CarrierContext`; the registry
   hands it to the long-term source (``CarrierWindowSource.observe``);
2. the paths' TCP_INFO readings of the last second (fed by the uplink through
   :meth:`ContextLoop.on_info`) become one :class:`~middlebox.context.carriers.CarrierSecond`
   per carrier: its throughput goes to ``observe_throughput`` and, with its RTT, loss and
   the carrier's context, to contextdb's :class:`~contextdb.live.LiveIngest`;
3. every ``report_interval`` each carrier's latest context goes to the node as a
   CONTEXT message, on the carrier's own path when it is up, else on any up path;
4. every ``flush_interval`` the matured windows are written to the database. The
   write runs in the event loop between packets; its duration is measured and shown in
   ``mpproxy status`` (``flush_ms_max``). With a fleet store (``contextdb.fleet_url``)
   the database's store is a :class:`contextdb.fleet.BackgroundStore`: the write goes
   to memory and a thread carries it to the server, so an unreachable server never holds
   up the loop; what other gateways added is loaded (``refreshes``) once the thread has
   fetched it.

Without ``[context] use_contextdb`` nothing reaches the scheduler and nothing is
learnt; with ``source = none`` there is no context at all and this loop only measures.
"""

from __future__ import annotations

import logging
import math
import os
import selectors
import subprocess
import time
from collections.abc import Callable

from middlebox.config import Config
from middlebox.context.carriers import (
    CarrierSecond,
    ContextSource,
    JsonLinesParser,
    PerfMeter,
    Reading,
    ReplaySource,
    load_replay,
    track,
)
from middlebox.context.modem import ModemSource, read_pipe
from middlebox.errors import UserError
from middlebox.logs import kv
from middlebox.paths.conn import forget, set_interest
from middlebox.session import wire
from scheduler.generators import CarrierTracker

log = logging.getLogger("mpproxy.context")

NAN = math.nan


class CommandSource:
    """A helper program whose stdout is JSON lines (:class:`JsonLinesParser`).

    The helper reads the modems (AT commands, a vendor API; ModemManager is built in:
    :mod:`middlebox.context.modem`) and prints one line per carrier per second. Its
    stdout is read non-blocking from the gateway's selector; when it exits, it is logged
    and context stops (no restart).
    """

    def __init__(self, argv: list[str], carriers: list[str]) -> None:
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True
            )
        except OSError as e:
            raise UserError(f"context.command: cannot start {argv[0]!r}: {e.strerror}") from None
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.parser = JsonLinesParser(carriers)
        self.pending: list[Reading] = []
        self.sel: selectors.BaseSelector | None = None
        self.eof = False

    def attach(self, sel: selectors.BaseSelector) -> None:
        self.sel = sel
        set_interest(sel, self.fd, selectors.EVENT_READ, self._ready)

    def _ready(self, mask: int, now: float) -> None:
        data = read_pipe(self.fd)
        if data is None:
            return
        if not data:
            self.eof = True
            if self.sel is not None:
                forget(self.sel, self.fd)
            log.warning("context command ended %s", kv(rc=self.proc.poll()))
            return
        self.pending.extend(self.parser.feed(data, now))

    def poll(self, now: float) -> list[Reading]:
        out, self.pending = self.pending, []
        return out

    def close(self) -> None:
        if self.sel is not None:
            forget(self.sel, self.fd)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(2.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def modem_source(cfg: Config) -> ModemSource:
    """The ModemManager source of ``[context]``: one modem per carrier (``modems``)."""
    c = cfg.context
    return ModemSource(c.modem_program, modem_mapping(cfg), c.modem_interval, c.modem_timeout,
                       c.modem_location, c.modem_signal_setup)  # fmt: skip


def modem_mapping(cfg: Config) -> list[tuple[str, str, str]]:
    """(carrier, ``[context] modems`` entry, interface) per carrier; :class:`UserError`
    when the entries cannot be matched to the carriers."""
    c = cfg.context
    carriers = cfg.gateway.carriers
    if len(c.modems) > len(carriers):
        raise UserError(
            f"context.modems: {len(c.modems)} entries for {len(carriers)} carrier(s); give "
            "at most one per [[gateway.carriers]] table, in the same order"
        )
    entries = [*c.modems, *[""] * (len(carriers) - len(c.modems))]
    for k, x in enumerate(carriers):
        if not entries[k] and not x.interface:
            raise UserError(
                f"context.modems[{k}]: carrier {x.name!r} has no interface to find its modem "
                "by: name its modem (index, equipment id or port) or set its interface"
            )
    return [(x.name, e, x.interface) for x, e in zip(carriers, entries, strict=True)]


def open_context_db(cfg: Config, origin: str, readonly: bool):
    """The ``[contextdb]`` database (a :class:`contextdb.db.ContextDB`); errors as
    :class:`UserError`. Close it with ``db.store.close()``."""
    from contextdb.db import ContextDB
    from contextdb.errors import ContextDBError
    from contextdb.fleet import open_store

    d = cfg.contextdb
    try:
        store = open_store(d.path, d.fleet_url, d.line, readonly=readonly, live=d)
        try:
            return ContextDB(store, d, origin=origin)
        except BaseException:
            store.close()
            raise
    except ContextDBError as e:
        raise UserError(f"contextdb: {e}") from None


def refresh_db(db, counters: dict) -> bool:
    """Load into ``db`` what its fleet store's thread fetched from other writers, when it
    fetched anything (``take_news``); the fetch ran in that thread, this reads memory.
    Counts ``refreshes``, ``refresh_errors`` and ``refresh_ms_max`` in ``counters``; a
    failure (a corrupt chunk from the fleet) is counted and logged, never raised."""
    take = getattr(getattr(db, "store", None), "take_news", None)
    if take is None or not take():
        return False
    t0 = time.perf_counter()
    try:
        db.refresh()
        counters["refreshes"] = counters.get("refreshes", 0) + 1
    except Exception as e:  # a corrupt chunk from the fleet: skipped, counted
        counters["refresh_errors"] = counters.get("refresh_errors", 0) + 1
        log.warning("context database refresh failed %s", kv(why=repr(e)))
    ms = (time.perf_counter() - t0) * 1e3
    counters["refresh_ms_max"] = round(max(counters.get("refresh_ms_max", 0.0), ms), 2)
    return True


def prediction_status(p) -> dict:
    """A prediction as ``mpproxy status`` shows it."""
    return {
        "throughput_mbit": round(p.throughput_mean / 1e6, 3),
        "confidence": p.confidence,
        "p_disconnect": round(p.p_disconnect, 4),
    }


def _cell_number(cell: str) -> int:
    """The wire's cell id: decimal text as is, hexadecimal (``0x...``) converted, 0 when
    unknown or not a number (the node then shows only the other fields)."""
    try:
        n = int(cell, 0) if cell.lower().startswith("0x") else int(cell)
    except ValueError:
        return 0
    return n if 0 <= n < 1 << 64 else 0


class ContextLoop:
    """See the module text. Create before the scheduler adapter and hand it
    ``tracker`` and ``longterm`` (``SchedulerPolicy(..., longterm=, carriers=)``),
    :meth:`attach` once the uplink exists, :meth:`close` at shutdown."""

    def __init__(
        self,
        cfg: Config,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        db=None,
    ) -> None:
        c = cfg.context
        self.cfg = c
        self.carriers = [x.name for x in cfg.gateway.carriers]
        now = clock()
        self.wall_offset = wall() - now
        self.source: ContextSource | None = None
        if c.source == "replay":
            if not c.replay_files:
                raise UserError("context.replay_files: needed when context.source = replay")
            rows = load_replay(c.replay_files, self.carriers)
            start = c.replay_start or now
            self.source = ReplaySource(rows, start, c.replay_loop, c.replay_time_scale)
        elif c.source == "command" and not c.command:
            raise UserError("context.command: needed when context.source = command")
        elif c.source == "modemmanager":
            self.source = modem_source(cfg)
        self.tracker = CarrierTracker(cfg.contextdb.window_s)
        self.meter = PerfMeter()
        self.latest: dict[str, CarrierSecond] = {}
        self.db = db
        self._own_db = False
        self.longterm = None
        self.ingest = None
        if c.use_contextdb:
            self._open_db(cfg)
        self.uplink = None
        self._timers(now)
        self.ticked = False
        self.counters = {"readings": 0, "reports_sent": 0, "seconds": 0, "samples_fed": 0,
                         "samples_unsaturated": 0, "windows_stored": 0, "flushes": 0,
                         "seconds_skipped": 0, "flush_errors": 0, "refreshes": 0,
                         "refresh_errors": 0}  # fmt: skip
        self.flush_ms_max = 0.0
        self.flush_ms_total = 0.0
        self._start_command = c.source == "command"

    def _open_db(self, cfg: Config) -> None:
        from contextdb.live import LiveIngest
        from scheduler.longterm import CarrierWindowSource

        if self.db is None:
            self.db = open_context_db(cfg, cfg.gateway.id, readonly=False)
            self._own_db = True
        self.longterm = CarrierWindowSource(self.db.predict)
        if self.cfg.learn:
            self.ingest = LiveIngest(self.db)

    def _timers(self, now: float) -> None:
        c = self.cfg
        self.next_second = now + 1.0
        self.next_report = now + c.report_interval if c.report_interval else math.inf
        self.next_flush = now + c.flush_interval

    def attach(self, uplink, sel: selectors.BaseSelector | None = None) -> None:
        """Start reading context: the uplink carries the reports and gives TCP_INFO."""
        self.uplink = uplink
        uplink.on_info = self.on_info
        if self._start_command:
            self._start_command = False
            self.source = CommandSource(list(self.cfg.command), self.carriers)
        if sel is not None and isinstance(self.source, CommandSource | ModemSource):
            self.source.attach(sel)

    # -- inputs ---------------------------------------------------------------------------

    def on_info(self, path_id: int, carrier: str, conn: object, info, now: float) -> None:
        if info is not None:
            self.meter.add(path_id, carrier, conn, info, now)

    # -- the loop -------------------------------------------------------------------------

    def next_timer(self) -> float:
        return min(self.next_second, self.next_report, self.next_flush)

    def tick(self, now: float) -> None:
        if not self.ticked:  # the seconds count from the event loop's start
            self.ticked = True
            self._timers(now)
        if self.source is not None:
            for r in self.source.poll(now):
                self.counters["readings"] += 1
                track(self.tracker, r)
        if now >= self.next_second:
            self._second(now)
            self.next_second += 1.0
            if self.next_second <= now:  # the loop was held up: skip, do not catch up
                log.warning("context loop %.2f s late: seconds skipped", now - self.next_second + 1)
                self.counters["seconds_skipped"] += 1
                self.next_second = now + 1.0
        if now >= self.next_report:
            self.report(now)
            self.next_report = now + self.cfg.report_interval
        if now >= self.next_flush:
            self.flush(now)
            self.next_flush = now + self.cfg.flush_interval

    def _second(self, now: float) -> None:
        from contextdb.records import Sample

        self.counters["seconds"] += 1
        self.refresh()
        direction = self.cfg.measure
        for s in self.meter.close(now):
            self.latest[s.carrier] = s
            bps = s.bps(direction)
            saturated = s.saturated(direction)
            if self.longterm is not None:
                # an unsaturated second says what passengers used, not what the carrier
                # can carry: contextdb then matches on the RSRP alone (nan = unknown)
                self.longterm.observe_throughput(s.carrier, bps if saturated else NAN)
            ctx = self.tracker.contexts.get(s.carrier)
            if self.ingest is None or ctx is None:
                continue
            keep = saturated or self.cfg.learn_unsaturated
            if not keep:
                self.counters["samples_unsaturated"] += 1
            pos = ctx.position or (NAN, NAN)
            self.ingest.feed(
                Sample(
                    carrier=s.carrier,
                    t=float(round(s.t + self.wall_offset)),
                    cell=ctx.cell_id or None,
                    rsrp=ctx.rsrp if ctx.rsrp is not None else NAN,
                    lat=pos[0],
                    lon=pos[1],
                    dl_bps=bps if keep else NAN,
                    rtt=s.rtt,
                    loss=s.loss,
                )
            )
            self.counters["samples_fed"] += 1

    def flush(self, now: float, final: bool = False) -> int:
        """Write matured windows; timed, because it runs in the event loop."""
        if self.ingest is None:
            return 0
        t0 = time.perf_counter()
        try:
            n = self.ingest.flush(math.inf if final else now + self.wall_offset)
        except Exception as e:  # disk full, an unreachable fleet store: learn less, run on
            self.counters["flush_errors"] += 1
            if self.counters["flush_errors"] in (1, 10, 100, 1000):
                log.warning(
                    "context database write failed %s",
                    kv(errors=self.counters["flush_errors"], why=repr(e)),
                )
            n = 0
        ms = (time.perf_counter() - t0) * 1e3
        self.counters["flushes"] += 1
        self.counters["windows_stored"] += n
        self.flush_ms_total += ms
        self.flush_ms_max = max(self.flush_ms_max, ms)
        if ms > 50:
            log.warning("context database write took %.0f ms", ms)
        return n

    def refresh(self) -> None:
        """Load what the fleet store's thread fetched from other gateways (memory only)."""
        refresh_db(self.db, self.counters)

    def messages(self, now: float) -> list[wire.Context]:
        """One CONTEXT message per carrier with a context."""
        out = []
        for carrier, ctx in self.tracker.contexts.items():
            pos = ctx.position
            if pos is not None and not (abs(pos[0]) <= 90 and abs(pos[1]) <= 180):
                pos = None  # a source's nonsense never reaches the wire (or stops the loop)
            out.append(
                wire.Context(
                    carrier,
                    _cell_number(ctx.cell_id),
                    int((ctx.updated + self.wall_offset) * 1e9),
                    ctx.rsrp if ctx.rsrp is not None and -200 <= ctx.rsrp <= 0 else None,
                    pos[0] if pos else None,
                    pos[1] if pos else None,
                )
            )
        return out

    def report(self, now: float) -> int:
        up = self.uplink
        if up is None or not up.paths:
            return 0
        sent = 0
        for msg in self.messages(now):
            pid = next(
                (p for p in up.paths if up.slots[p].carrier.name == msg.carrier),
                next(iter(up.paths)),
            )
            up.paths[pid].write(msg)
            sent += 1
        self.counters["reports_sent"] += sent
        return sent

    # -- status and shutdown --------------------------------------------------------------

    def status(self, now: float) -> dict:
        carriers = {}
        for name in self.carriers:
            ctx = self.tracker.contexts.get(name)
            s = self.latest.get(name)
            row: dict = {}
            if ctx is not None:
                row.update(
                    cell_id=ctx.cell_id,
                    rsrp=ctx.rsrp,
                    rsrp_window=list(ctx.rsrp_window),
                    position=list(ctx.position) if ctx.position else None,
                    age_s=round(now - ctx.updated, 3),
                )
            if s is not None:
                row.update(
                    down_mbit=round(s.down_bps / 1e6, 3),
                    up_mbit=round(s.up_bps / 1e6, 3),
                    rtt_ms=None if math.isnan(s.rtt) else round(s.rtt * 1e3, 1),
                    saturated=s.saturated(self.cfg.measure),
                )
            if self.longterm is not None:
                p = self.longterm.predict(name, now)
                row["prediction"] = None if p is None else prediction_status(p)
            carriers[name] = row
        out: dict = {"source": self.cfg.source, "carriers": carriers, **self.counters}
        if self.ingest is not None:
            out["flush_ms_max"] = round(self.flush_ms_max, 2)
            out["flush_ms_mean"] = round(self.flush_ms_total / max(1, self.counters["flushes"]), 2)
        if isinstance(self.source, CommandSource):
            out["command_errors"] = self.source.parser.errors
            out["command_last_error"] = self.source.parser.last_error
        if isinstance(self.source, ModemSource):
            out["modem"] = self.source.status()
        if self.ingest is not None:
            out.update(self.ingest.counters)
        fleet = getattr(getattr(self.db, "store", None), "status", None)
        if fleet is not None:
            out["fleet"] = fleet()
        return out

    def close(self) -> None:
        try:
            if self.ingest is not None:
                self.flush(0.0, final=True)
                self.ingest = None
        except Exception:
            log.exception("context database: final write failed")
        finally:
            if isinstance(self.source, CommandSource | ModemSource):
                self.source.close()
            if self._own_db and self.db is not None:
                self.db.store.close()
                self.db = None
