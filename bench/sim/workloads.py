"""Traffic the replay offers: bulk downloads and uploads, web browsing, a constant-bitrate
stream, a resumable file transfer, and mixtures of them with several clients.

A workload is given the transport at the start and opens connections on it; it hears
back through :class:`~bench.sim.transport.App` callbacks. Every random draw comes from
a per-client ``random.Random`` seeded from the run's seed, drawn in a fixed order per
client (page after page), so every policy sees the same requests, sizes and think
times whatever its timing: comparisons are paired.

Spec syntax (CLI and :func:`parse`): parts joined by ``+``, each ``name`` or
``name:key=value,key=value``, e.g. ``web:clients=20+bulk:clients=2+cbr:rate=4``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields

from bench.sim.engine import Engine
from bench.sim.metrics import Recorder, Stall, stream_stalls
from bench.sim.transport import App, Conn, Transport


class WorkloadError(ValueError):
    """A workload spec that cannot be parsed."""


@dataclass
class Runtime:
    engine: Engine
    transport: Transport
    rec: Recorder
    duration: float
    seed: int


def _rng(seed: int, *parts: object) -> random.Random:
    # A stable per-stream seed (str hashing is salted per process; this is not).
    key = ":".join(str(p) for p in (seed, *parts))
    h = 1469598103934665603
    for ch in key.encode():
        h = ((h ^ ch) * 1099511628211) & ((1 << 64) - 1)
    return random.Random(h)


# -- bulk ----------------------------------------------------------------------------------


@dataclass
class Bulk(App):
    """``clients`` downloads of ``size`` MB each (0: endless, for the whole run)."""

    clients: int = 1
    size: float = 0.0  # MB; 0 = endless
    start: float = 0.0  # s

    name = "bulk"

    def begin(self, rt: Runtime, index: int) -> None:
        self.rt = rt
        total = self.size * 1e6 if self.size > 0 else math.inf
        for i in range(self.clients):
            rt.transport.open(self.start, self, total, client=f"bulk{index}.{i}", dst_port=5001)

    def completed(self, conn: Conn, now: float) -> None:
        self.rt.rec.flows.append(("bulk", int(conn.total), conn.started, now - conn.started))

    def reset(self, conn: Conn, now: float) -> None:
        self.rt.rec.failed_flows += 1

    def end(self, now: float) -> None:
        pass


@dataclass
class Upload(Bulk):
    """``clients`` uploads of ``size`` MB each (0: endless) from the client to the server
    (port 5002); goodput is what the server's application received."""

    name = "upload"

    def begin(self, rt: Runtime, index: int) -> None:
        self.rt = rt
        total = self.size * 1e6 if self.size > 0 else math.inf
        for i in range(self.clients):
            rt.transport.open(
                self.start, self, total, client=f"upload{index}.{i}", dst_port=5002, upload=True
            )

    def completed(self, conn: Conn, now: float) -> None:
        self.rt.rec.flows.append(("upload", int(conn.total), conn.started, now - conn.started))


# -- web -----------------------------------------------------------------------------------


@dataclass
class Web(App):
    """Page loads: a main object, then its objects over up to ``parallel`` connections;
    think time between pages. Sizes are log-normal (median ``object_kb``, sigma
    ``sigma``: most objects small, a heavy tail of large ones), objects per page
    log-normal around ``objects``. The defaults (about 0.5 MB per page on average) are
    lighter than today's desktop pages: a passenger's phone on a train."""

    clients: int = 10
    think: float = 10.0  # s, mean (exponential)
    objects: float = 15.0  # median objects per page besides the main one
    objects_sigma: float = 0.8
    object_kb: float = 10.0  # median object size
    main_kb: float = 30.0  # median main document size
    sigma: float = 1.5
    parallel: int = 6
    max_kb: float = 5000.0
    stagger: float = 10.0  # s: clients load their first page uniformly in [0, stagger)
    # 1: open loop, the next page starts a think time after this one *started* (offered
    # load independent of how fast pages load; pages may overlap). 0: after it finished.
    open: int = 0

    name = "web"

    def begin(self, rt: Runtime, index: int) -> None:
        self.rt = rt
        self.index = index
        for i in range(self.clients):
            rng = _rng(rt.seed, "web", index, i)
            first = rng.uniform(0.0, self.stagger)
            rt.engine.at(first, self._page, (i, rng))

    def _size(self, rng: random.Random, median_kb: float) -> int:
        kb = rng.lognormvariate(math.log(median_kb), self.sigma)
        return max(200, int(min(kb, self.max_kb) * 1000))

    def _page(self, now: float, arg: tuple) -> None:
        i, rng = arg
        n = max(1, min(150, round(rng.lognormvariate(math.log(self.objects), self.objects_sigma))))
        sizes = [self._size(rng, self.object_kb) for _ in range(n)]
        think = rng.expovariate(1.0 / self.think)
        page = {"client": i, "rng": rng, "start": now, "todo": sizes, "open": 0, "think": think}
        main = self._size(rng, self.main_kb)
        self._fetch(now, page, main, main=True)
        if self.open and now + think < self.rt.duration:
            self.rt.engine.at(now + think, self._page, (i, rng))

    def _fetch(self, now: float, page: dict, size: int, main: bool = False) -> None:
        conn = self.rt.transport.open(
            now, self, size, client=f"web{self.index}.{page['client']}", dst_port=443
        )
        conn.tag = (page, main)
        page["open"] += 1

    def completed(self, conn: Conn, now: float) -> None:
        self.rt.rec.flows.append(("web", int(conn.total), conn.started, now - conn.started))
        self._done(conn, now)

    def reset(self, conn: Conn, now: float) -> None:
        self.rt.rec.failed_flows += 1
        self._done(conn, now)

    def _done(self, conn: Conn, now: float) -> None:
        page, main = conn.tag
        page["open"] -= 1
        if main:
            todo = page["todo"]
            for _ in range(min(self.parallel, len(todo))):
                self._fetch(now, page, todo.pop())
        elif page["todo"]:
            self._fetch(now, page, page["todo"].pop())
        if page["open"] == 0 and not page["todo"]:
            self.rt.rec.pages.append(now - page["start"])
            nxt = now + page["think"]
            if not self.open and nxt < self.rt.duration:
                self.rt.engine.at(nxt, self._page, (page["client"], page["rng"]))

    def end(self, now: float) -> None:
        pass


# -- constant bitrate ------------------------------------------------------------------------


@dataclass
class Stream(App):
    """``clients`` live streams of ``rate`` Mbit/s produced in ``chunk``-second pieces;
    the player starts with ``startup`` s buffered and resumes after a stall with
    ``resume`` s buffered. Measures startup delay, stall count and stall time."""

    clients: int = 1
    rate: float = 4.0  # Mbit/s
    chunk: float = 0.1  # s
    startup: float = 2.0  # s
    resume: float = 1.0  # s
    start: float = 0.0

    name = "cbr"

    def begin(self, rt: Runtime, index: int) -> None:
        self.rt = rt
        self.bps = self.rate * 1e6 / 8
        self.streams: list[tuple[Conn, list[tuple[float, int]]]] = []
        for i in range(self.clients):
            conn = rt.transport.open(
                self.start, self, math.inf, client=f"cbr{index}.{i}", dst_port=1935, produced=0
            )
            timeline: list[tuple[float, int]] = []
            conn.tag = timeline
            self.streams.append((conn, timeline))
        rt.engine.at(self.start + self.chunk, self._produce, 1)

    def _produce(self, now: float, k: int) -> None:
        upto = int(k * self.chunk * self.bps)
        for conn, _ in self.streams:
            self.rt.transport.produce(conn, conn.base + upto, now)
        if now + self.chunk <= self.rt.duration:
            self.rt.engine.at(now + self.chunk, self._produce, k + 1)

    def delivered(self, conn: Conn, now: float) -> None:
        conn.tag.append((now, conn.rcv_nxt - conn.base))

    def reset(self, conn: Conn, now: float) -> None:
        self.rt.rec.failed_flows += 1

    def end(self, now: float) -> None:
        rec = self.rt.rec
        for sid, (conn, timeline) in enumerate(self.streams):
            # content is produced live: the first chunk exists only after ``chunk`` s
            started, stalls = stream_stalls(
                timeline, self.bps, conn.started, now, self.startup, self.resume
            )
            rec.streams += 1
            if started is not None:
                rec.startup_delays.append(started)
            rec.stalls.extend(Stall(sid, a, b) for a, b in stalls)


# -- resumable file transfer ---------------------------------------------------------------------


@dataclass
class File(App):
    """A ``size`` MB download that survives disconnection (seed 003): when every path is
    lost long enough for the proxy to reset the connection, the client resumes from the
    last byte it received, on a new connection, as soon as a path is back."""

    size: float = 100.0  # MB
    start: float = 0.0

    name = "file"

    def begin(self, rt: Runtime, index: int) -> None:
        self.rt = rt
        self.index = index
        self.total = int(self.size * 1e6)
        self.t0 = self.start
        rt.engine.at(self.start, self._open, 0)

    def _open(self, now: float, offset: int) -> None:
        self.rt.transport.open(
            now, self, self.total - offset, client=f"file{self.index}", dst_port=21, base=offset
        )

    def completed(self, conn: Conn, now: float) -> None:
        rec = self.rt.rec
        rec.files_done.append(now - self.t0)
        rec.flows.append(("file", self.total, self.t0, now - self.t0))

    def reset(self, conn: Conn, now: float) -> None:
        rec = self.rt.rec
        rec.resumes += 1
        rec.resent_after_resume += conn.snd_nxt - conn.rcv_nxt
        offset = conn.rcv_nxt
        tr = self.rt.transport
        if tr.any_up():
            self._open(now, offset)
        else:
            tr.on_path_up(lambda t: self._open(t, offset))

    def end(self, now: float) -> None:
        pass


KINDS: dict[str, type] = {
    "bulk": Bulk,
    "upload": Upload,
    "web": Web,
    "cbr": Stream,
    "file": File,
}


def parse(spec: str) -> list:
    """Workload objects from a spec such as ``web:clients=20+bulk``."""
    parts = [s.strip() for s in spec.split("+") if s.strip()]
    if not parts:
        raise WorkloadError("empty workload spec")
    out = []
    for part in parts:
        name, _, args = part.partition(":")
        cls = KINDS.get(name.strip())
        if cls is None:
            raise WorkloadError(f"unknown workload {name!r} (known: {', '.join(KINDS)})")
        known = {f.name: f.type for f in fields(cls)}
        kwargs: dict[str, float | int] = {}
        for item in filter(None, (a.strip() for a in args.split(","))):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or key not in known:
                raise WorkloadError(
                    f"workload {name}: bad parameter {item!r} (known: {', '.join(known)})"
                )
            try:
                num = float(value)
            except ValueError:
                raise WorkloadError(f"workload {name}: {key} must be a number") from None
            if num < 0 or not math.isfinite(num):
                raise WorkloadError(f"workload {name}: {key} must be >= 0")
            kwargs[key] = int(num) if known[key] in ("int", int) else num
        w = cls(**kwargs)
        if getattr(w, "clients", 1) < 1 or getattr(w, "parallel", 1) < 1:
            raise WorkloadError(f"workload {name}: clients and parallel must be >= 1")
        for key in ("chunk", "rate", "think", "objects", "object_kb", "main_kb", "size"):
            endless = key == "size" and name in ("bulk", "upload")  # size 0: endless
            if key in kwargs and kwargs[key] <= 0 and not endless:
                raise WorkloadError(f"workload {name}: {key} must be > 0")
        out.append(w)
    return out
