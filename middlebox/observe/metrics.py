"""Prometheus metrics of gateway and node, read from a snapshot the loop publishes.

How the data path stays unblocked: the process's one selector loop calls
:meth:`Publisher.tick` on every iteration; once per ``[metrics] interval`` it builds the
process's status dict (the same one ``mpproxy status`` prints, made of fresh containers
each time), adds the per-path history and outage bookkeeping, and swaps the result into
``Publisher.snapshot`` with one attribute assignment. The HTTP thread
(:mod:`middlebox.observe.web`) only ever reads the snapshot that was current when a
request came in and never touches the loop's objects: no lock is shared with the loop,
a scrape never waits for the loop and the loop never waits for a scrape (only the GIL is
shared: a scrape costs the loop the CPU time of rendering it). The price is staleness of
up to one interval, and outages shorter than an interval may go unseen here (the
carriers' own counters, ``mpproxy_path_connects_total`` and ``_failures_total``, count
every one).

:class:`SnapshotCollector` is a custom collector of the Prometheus client library: at
each scrape it turns the current snapshot into metric families (names follow the
exporters' conventions: base units in the name, ``_total`` counters). docs/metrics.md
lists every series.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

# Outage lengths in seconds; the first bounds follow the context database's handover
# taxonomy (success < 0.1 s, failure up to 5 s, outage beyond).
OUTAGE_BOUNDS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
TRACK_EVERY = 5.0  # seconds between reads of the context database's track

# Counters of the status dicts that count a limit taking effect (the hardening counters:
# docs/threat-model.md) and those that count an error (and any named ...errors,
# ..._failures, ..._failed); every other integer counter of those dicts is an event
# (mpproxy_events_total). Names are the status dicts' own.
LIMIT_COUNTERS = frozenset(
    {
        # gateway flow table and kernel SYN rate
        "overflow", "evicted", "source_full", "source_rate", "syn_rate_dropped", "stray_dropped",
        # user-space TCP endpoint
        "refused_full", "refused_source", "syn_dropped", "syn_cookies_sent", "ofo_dropped",
        # connections over paths
        "open_over_limit", "reorder_overflow", "windows_shrunk", "growth_held",
        # paths (both sides)
        "paths_silent", "paths_unread",
        # node
        "handshakes_rejected", "handshakes_evicted", "gateways_refused", "open_denied",
        "sessions_revoked",
    }
)  # fmt: skip
ERROR_COUNTERS = frozenset(
    {
        "send_errors", "path_failures", "accept_errors", "socket_option_failures",
        "open_failed", "unknown_connection", "syn_cookies_bad", "list_reload_errors",
        "command_errors", "paths_refused",
    }
)  # fmt: skip
ERROR_SUFFIXES = ("errors", "_failures", "_failed")  # counters named so later count too


def is_error(name: str) -> bool:
    return name in ERROR_COUNTERS or name.endswith(ERROR_SUFFIXES)


# Integer entries of those dicts that are sizes, not counters (exported as gauges).
SIZES = frozenset({"tracked", "sources", "connections", "half_open"})


def _num(v: object) -> float | None:
    """A finite number from a status value, or None (absent, bool, text, nan)."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def path_carrier(p: dict) -> str:
    """A path's carrier: the gateway names it; the node knows the path's label
    ``carrier/index`` from HELLO."""
    return p.get("carrier") or p.get("name", "").rpartition("/")[0] or p.get("name", "")


@dataclass
class _Outages:
    """One path's outages: finished ones in histogram buckets, the current one's start."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(OUTAGE_BOUNDS) + 1))
    total: float = 0.0
    count: int = 0
    since: float | None = None  # monotonic start of the outage in progress

    def observe(self, seconds: float) -> None:
        i = next((k for k, b in enumerate(OUTAGE_BOUNDS) if seconds <= b), len(OUTAGE_BOUNDS))
        self.buckets[i] += 1
        self.total += seconds
        self.count += 1


@dataclass(frozen=True)
class Snapshot:
    """What the loop published: never changed after publication (the thread reads it).

    ``history`` per path key ``gateway|label`` (:func:`iter_paths`): rows ``[wall time,
    bytes/s in, bytes/s out, RTT seconds, up 0/1]``; ``outages`` per path key:
    ``(cumulative buckets, sum, count, seconds of the current outage)``; ``track``: the
    context database's recent track per carrier, rows ``[wall time, lat, lon, bit/s]``."""

    at: float  # wall-clock time of publication
    status: dict
    history: dict[str, list[list[float]]]
    outages: dict[str, tuple[tuple[int, ...], float, int, float]]
    track: dict[str, list[list[float]]]

    def document(self) -> dict:
        """The /status.json document."""
        return {
            "at": self.at,
            "status": self.status,
            "history": self.history,
            "outages": {
                k: {"count": v[2], "seconds_total": v[1], "current_s": v[3]}
                for k, v in self.outages.items()
            },
            "track": self.track,
            "paths": [[gw, label, p] for gw, label, p in iter_paths(self.status)],
            "clients": clients(self.status),
            "alerts": [row for row in classified(self.status) if row[2] != "event" and row[4]],
        }


EMPTY = Snapshot(0.0, {}, {}, {}, {})


class Publisher:
    """The loop's side: ``tick(now)`` on every loop iteration publishes a fresh snapshot
    at most once per ``interval`` seconds (see the module text).

    ``status`` builds the process's status dict; ``track(since_wall)`` (gateway with a
    context database) returns :meth:`contextdb.db.ContextDB.track`; ``wall`` is the
    wall clock the page's charts and the track are drawn in (the context database
    stores seconds since the epoch)."""

    def __init__(
        self,
        status: Callable[[], dict],
        interval: float = 1.0,
        history: int = 300,
        track: Callable[[float], dict] | None = None,
        track_seconds: float = 1800.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.status = status
        self.interval = interval
        self.history_len = history
        self.track_fn = track
        self.track_seconds = track_seconds
        self.wall = wall
        self.snapshot: Snapshot = EMPTY
        self.next_at = -math.inf
        self._history: dict[str, deque[list[float]]] = {}
        self._last: dict[str, tuple[float, float, float]] = {}  # key -> (now, in, out)
        self._outages: dict[str, _Outages] = {}
        self._track: dict[str, list[list[float]]] = {}
        self._track_at = -math.inf
        self.publish_ms_max = 0.0

    def tick(self, now: float) -> None:
        if now >= self.next_at:
            self.next_at = now + self.interval
            self.publish(now)

    def publish(self, now: float) -> Snapshot:
        t0 = time.perf_counter()
        status = self.status()
        wall = self.wall()
        seen = set()
        for gw, label, p in iter_paths(status):
            key = f"{gw}|{label}"
            seen.add(key)
            self._path(key, p, now, wall)
        for key in set(self._history) - seen:  # a node's session ended: its paths went
            del self._history[key]
            self._last.pop(key, None)
        if self.track_fn is not None and now - self._track_at >= TRACK_EVERY:
            self._track_at = now
            rows = self.track_fn(wall - self.track_seconds)
            self._track = {c: [list(r) for r in v] for c, v in rows.items()}
        self.snapshot = Snapshot(
            at=wall,
            status=status,
            history={k: list(v) for k, v in self._history.items()},
            outages={
                k: (
                    tuple(_cumulative(o.buckets)),
                    o.total,
                    o.count,
                    0.0 if o.since is None else now - o.since,
                )
                for k, o in self._outages.items()
            },
            track=self._track,
        )
        self.publish_ms_max = max(self.publish_ms_max, (time.perf_counter() - t0) * 1e3)
        return self.snapshot

    def _path(self, key: str, p: dict, now: float, wall: float) -> None:
        transport = p.get("transport") or {}
        got = (p.get("bytes_in") or 0) - (transport.get("duplicate_bytes_received") or 0)
        put = (p.get("bytes_out") or 0) - (transport.get("resent_bytes") or 0)
        last = self._last.get(key)
        self._last[key] = (now, got, put)
        rate_in = rate_out = 0.0
        if last is not None and now > last[0]:
            rate_in = max(0.0, got - last[1]) / (now - last[0])
            rate_out = max(0.0, put - last[2]) / (now - last[0])
        up = p.get("state") == "up"
        rtt = (p.get("rtt_ms") or 0.0) / 1e3
        hist = self._history.setdefault(key, deque(maxlen=self.history_len))
        hist.append([round(wall, 3), round(rate_in, 1), round(rate_out, 1), rtt, int(up)])
        o = self._outages.setdefault(key, _Outages())
        if up and o.since is not None:
            o.observe(now - o.since)
            o.since = None
        elif not up and o.since is None and last is not None:
            o.since = now  # a path seen up before (or down from the start) went down


def _cumulative(buckets: list[int]) -> list[int]:
    out, n = [], 0
    for b in buckets:
        n += b
        out.append(n)
    return out


def iter_paths(status: dict) -> Iterator[tuple[str, str, dict]]:
    """(gateway id, path label, path dict) of every session's paths in a status dict.

    The label is the path's name (``carrier/index``), unique per gateway: while a node
    still holds a silent path that the gateway has already dialled again under the same
    name, the later one is labelled ``name#id`` (two series with one label set would make
    the whole scrape invalid)."""
    for sess in status.get("sessions") or []:
        gw = sess.get("gateway", "")
        seen: set[str] = set()
        for p in sess.get("paths") or []:
            label = str(p.get("name") or p.get("id", ""))
            if label in seen:
                label = f"{label}#{p.get('id', '')}"
            seen.add(label)
            yield gw, label, p


class SnapshotCollector(Collector):
    """The Prometheus collector over :attr:`Publisher.snapshot` (``snapshot`` returns it)."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable:
        return families(self.snapshot())


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


PATH_LABELS = ["gateway", "carrier", "path"]

# (metric, help, where in the path dict, scale); counters end in _total
PATH_COUNTERS = (
    ("mpproxy_path_received_bytes", "Bytes read from the path's socket (framing included).",
     ("bytes_in",), 1.0),
    ("mpproxy_path_sent_bytes", "Bytes written to the path's socket (framing included).",
     ("bytes_out",), 1.0),
    ("mpproxy_path_data_sent_bytes", "Connection bytes sent on the path in DATA messages "
     "(resends included).", ("transport", "sent_bytes"), 1.0),
    ("mpproxy_path_data_sent_messages", "DATA messages sent on the path.",
     ("transport", "sent_messages"), 1.0),
    ("mpproxy_path_stall_resends", "Messages of this path resent on others because it "
     "went silent.", ("transport", "stall_resends"), 1.0),
    ("mpproxy_path_resent_messages", "Messages resent on this path (copies of messages "
     "first sent elsewhere or earlier).", ("transport", "resent_messages"), 1.0),
    ("mpproxy_path_resent_bytes", "Bytes of the messages resent on this path.",
     ("transport", "resent_bytes"), 1.0),
    ("mpproxy_path_duplicate_received_messages", "Messages received on this path that had "
     "already arrived (needless copies).", ("transport", "duplicates_received"), 1.0),
    ("mpproxy_path_duplicate_received_bytes", "Bytes of the needless copies received on "
     "this path.", ("transport", "duplicate_bytes_received"), 1.0),
    ("mpproxy_path_acked_messages", "Messages sent on this path that the peer acknowledged.",
     ("transport", "acked"), 1.0),
    ("mpproxy_path_acked_late_messages", "Acknowledged messages whose acknowledgement came "
     "after the stall deadline.", ("transport", "acked_late"), 1.0),
    ("mpproxy_path_kernel_retransmitted_segments", "Segments the kernel retransmitted on the "
     "path's TCP socket (TCP_INFO total_retrans).", ("lost",), 1.0),
    ("mpproxy_path_kernel_retransmitted_bytes", "Bytes the kernel retransmitted on the path "
     "(TCP_INFO bytes_retrans).", ("kernel", "bytes_retrans"), 1.0),
    ("mpproxy_path_kernel_timeouts", "Retransmission timeouts of the path's socket "
     "(TCP_INFO total_rto).", ("kernel", "total_rto"), 1.0),
    ("mpproxy_path_connects", "Times the path came up (gateway).", ("ups",), 1.0),
    ("mpproxy_path_failures", "Times dialling or running the path failed (gateway).",
     ("failures",), 1.0),
)  # fmt: skip
PATH_GAUGES = (
    ("mpproxy_path_rtt_seconds", "Smoothed RTT of the path's socket (TCP_INFO srtt).",
     ("rtt_ms",), 1e-3),
    ("mpproxy_path_min_rtt_seconds", "Minimum RTT the path's socket saw.",
     ("kernel", "min_rtt_ms"), 1e-3),
    ("mpproxy_path_probe_rtt_seconds", "RTT of the path's last PROBE (gateway).",
     ("probe_rtt_ms",), 1e-3),
    ("mpproxy_path_delivery_rate_bytes_per_second", "The kernel's delivery-rate estimate.",
     ("rate_mbit",), 1e6 / 8),
    ("mpproxy_path_cwnd_segments", "Congestion window of the path's socket (gateway).",
     ("cwnd",), 1.0),
    ("mpproxy_path_queued_bytes", "Bytes written to the path and not yet sent by the kernel.",
     ("queued",), 1.0),
)  # fmt: skip


def _get(d: dict, where: tuple[str, ...]) -> float | None:
    v: object = d
    for k in where:
        if not isinstance(v, dict):
            return None
        v = v.get(k)
    return _num(v)


def families(snap: Snapshot) -> list:
    """Every metric family of a snapshot (empty before the first publication)."""
    st = snap.status
    if not st:
        return []
    role, own = st.get("role", ""), st.get("id", "")
    out: list = []
    info = InfoMetricFamily("mpproxy", "The process: role (gateway or node) and id.")
    info.add_metric([], {"role": role, "id": own})
    out.append(info)
    up = _gauge("mpproxy_uptime_seconds", "Seconds since the process started.", [])
    up.add_metric([], _num(st.get("uptime")) or 0.0)
    out.append(up)
    pub = _gauge("mpproxy_snapshot_timestamp_seconds", "When the loop published the "
                 "snapshot these series come from (seconds since the epoch).", [])  # fmt: skip
    pub.add_metric([], snap.at)
    out.append(pub)
    out += _path_families(snap)
    out += _session_families(st, role, own)
    out += _carrier_families(st, role, own)
    out += _counter_families(st, role, own)
    out += _fleet_families(st)
    return out


FLEET_STATES = ("up", "draining", "lost")  # middlebox/gateway/fleet.py


def _fleet_families(st: dict) -> list:
    """The gateway's nodes (1 for the state each is in, and which is chosen) and the
    node's drain (1 while draining; what remains on it)."""
    out = []
    fleet = st.get("fleet")
    if isinstance(fleet, dict):
        state = _gauge("mpproxy_fleet_node_state", "1 for the state each configured node "
                       "is in as this gateway sees it (up, draining, lost), else 0.",
                       ["node", "state"])  # fmt: skip
        chosen = _gauge("mpproxy_fleet_node_chosen", "1 for the node new connections go "
                        "to, else 0.", ["node"])  # fmt: skip
        conns = _gauge("mpproxy_fleet_node_connections", "Connections this gateway has on "
                       "each node.", ["node"])  # fmt: skip
        for n in fleet.get("nodes") or []:
            name = str(n.get("name", ""))
            for s in FLEET_STATES:
                state.add_metric([name, s], 1.0 if n.get("state") == s else 0.0)
            chosen.add_metric([name], 1.0 if n.get("role") == "chosen" else 0.0)
            conns.add_metric([name], _num(n.get("connections")) or 0.0)
        out += [state, chosen, conns]
    drain = st.get("drain")
    if isinstance(drain, dict):
        g = _gauge("mpproxy_node_draining", "1 while the node drains (mpproxy node drain).", [])
        g.add_metric([], 1.0 if drain.get("draining") else 0.0)
        left = _gauge("mpproxy_node_drain_remaining", "What remains on the node: gateway "
                      "sessions, their connections, its server connections.", ["what"])  # fmt: skip
        remaining = drain.get("remaining") or {}
        for what in ("sessions", "connections", "server_connections"):
            left.add_metric([what], _num(remaining.get(what)) or 0.0)
        out += [g, left]
    return out


def _path_families(snap: Snapshot) -> list:
    counters = {m: _counter(m, h, PATH_LABELS) for m, h, _, _ in PATH_COUNTERS}
    gauges = {m: _gauge(m, h, PATH_LABELS) for m, h, _, _ in PATH_GAUGES}
    upg = _gauge("mpproxy_path_up", "1 while the path is up, else 0.", PATH_LABELS)
    goodput = _gauge(
        "mpproxy_path_goodput_bytes_per_second",
        "Useful bytes per second over the last interval: in = received less needless "
        "copies, out = sent less resends (framing included).",
        [*PATH_LABELS, "direction"],
    )
    outage_now = _gauge(
        "mpproxy_path_outage_current_seconds",
        "Seconds the path has been down in the outage in progress (0 while up).",
        PATH_LABELS,
    )
    hist = HistogramMetricFamily(
        "mpproxy_path_outage_duration_seconds",
        "Lengths of the path's finished outages (down to up again), at the publication "
        "interval's resolution.",
        labels=PATH_LABELS,
    )
    for gw, label, p in iter_paths(snap.status):
        labels = [gw, path_carrier(p), label]
        key = f"{gw}|{label}"
        for m, _, where, scale in PATH_COUNTERS:
            if (v := _get(p, where)) is not None:
                counters[m].add_metric(labels, v * scale)
        for m, _, where, scale in PATH_GAUGES:
            if (v := _get(p, where)) is not None:
                gauges[m].add_metric(labels, v * scale)
        upg.add_metric(labels, 1.0 if p.get("state") == "up" else 0.0)
        rows = snap.history.get(key)
        if rows:
            goodput.add_metric([*labels, "in"], rows[-1][1])
            goodput.add_metric([*labels, "out"], rows[-1][2])
        o = snap.outages.get(key)
        if o is not None:
            cum, total, _count, current = o
            bounds = [*(repr(b) for b in OUTAGE_BOUNDS), "+Inf"]
            hist.add_metric(labels, list(zip(bounds, cum, strict=True)), total)
            outage_now.add_metric(labels, current)
    return [*counters.values(), *gauges.values(), upg, goodput, outage_now, hist]


def _session_families(st: dict, role: str, own: str) -> list:
    conns = _gauge("mpproxy_connections", "Connections the session carries, by state.",
                   ["gateway", "state"])  # fmt: skip
    buffered = _gauge("mpproxy_buffered_bytes", "Bytes the session's connections hold in "
                      "this process (both directions).", ["gateway"])  # fmt: skip
    held = _gauge("mpproxy_memory_held_bytes", "Bytes charged to a memory budget.",
                  ["gateway", "budget"])  # fmt: skip
    limit = _gauge("mpproxy_memory_limit_bytes", "Size of a memory budget.",
                   ["gateway", "budget"])  # fmt: skip
    decisions = _counter("mpproxy_scheduler_decisions", "Messages the scheduler placed.",
                         ["gateway", "policy"])  # fmt: skip
    dup = _counter("mpproxy_scheduler_duplicated_decisions", "Scheduler decisions that "
                   "put one message on more than one path.", ["gateway", "policy"])  # fmt: skip
    sessions = st.get("sessions") or []
    for sess in sessions:
        gw = sess.get("gateway", "")
        by_state: dict[str, int] = {}
        for c in (sess.get("connections") or {}).values():
            s = str(c.get("state", "")) if isinstance(c, dict) else ""
            by_state[s] = by_state.get(s, 0) + 1
        for s, n in sorted(by_state.items()):
            conns.add_metric([gw, s], n)
        if (v := _num(sess.get("buffered_bytes"))) is not None:
            buffered.add_metric([gw], v)
        mem = sess.get("memory") or {}
        if (v := _num(mem.get("held"))) is not None:
            held.add_metric([gw, "session"], v)
        if (v := _num(mem.get("limit"))) is not None:
            limit.add_metric([gw, "session"], v)
        sched = sess.get("scheduler") or (st.get("scheduler") if role == "gateway" else None)
        if sched:
            policy = str(sched.get("policy", ""))
            decisions.add_metric([gw, policy], _num(sched.get("decisions")) or 0.0)
            dup.add_metric([gw, policy], _num(sched.get("duplicated")) or 0.0)
    mem = st.get("memory") if role == "node" else None
    if isinstance(mem, dict):
        if (v := _num(mem.get("held"))) is not None:
            held.add_metric(["", "process"], v)
        if (v := _num(mem.get("limit"))) is not None:
            limit.add_metric(["", "process"], v)
    out = [conns, buffered, held, limit, decisions, dup]
    nsess = _gauge("mpproxy_sessions", "Gateway sessions this process holds.", [])
    nsess.add_metric([], len(sessions))
    out.append(nsess)
    by_client = _gauge("mpproxy_client_connections", "Proxied connections by passenger "
                       "address (gateway) or gateway id (node).", ["client"])  # fmt: skip
    for client, n in clients(st):
        by_client.add_metric([client], n)
    out.append(by_client)
    sizes = _gauge("mpproxy_table_entries", "Sizes of the gateway's tables: flows tracked, "
                   "endpoint connections and half-open ones, source addresses.",
                   ["table"])  # fmt: skip
    for area in ("flows", "endpoint"):
        for k, v in sorted((st.get(area) or {}).items()):
            if k in SIZES and (n := _num(v)) is not None:
                sizes.add_metric([f"{area}_{k}"], n)
    handshaking = _num(st.get("handshaking"))
    if handshaking is not None:
        sizes.add_metric(["handshaking"], handshaking)
    out.append(sizes)
    configured = _gauge("mpproxy_configured_limit", "The process's configured limits "
                        "(the status dict's 'limits', in their own units).",
                        ["limit"])  # fmt: skip
    for k, v in sorted((st.get("limits") or {}).items()):
        if (n := _num(v)) is not None:
            configured.add_metric([k], n)
    out.append(configured)
    return out


def _carrier_families(st: dict, role: str, own: str) -> list:
    labels = ["gateway", "carrier"]
    cell = InfoMetricFamily("mpproxy_carrier_cell", "The carrier's serving cell.",
                            labels=labels)  # fmt: skip
    rsrp = _gauge("mpproxy_carrier_rsrp_dbm", "The carrier's latest RSRP.", labels)
    lat = _gauge("mpproxy_carrier_latitude_degrees", "Position of the latest reading.", labels)
    lon = _gauge("mpproxy_carrier_longitude_degrees", "Position of the latest reading.", labels)
    measured = _gauge("mpproxy_carrier_measured_bytes_per_second", "What the carrier "
                      "carried over the last second, per direction (gateway).",
                      [*labels, "direction"])  # fmt: skip
    predicted = _gauge("mpproxy_carrier_predicted_bytes_per_second", "The context "
                       "database's predicted throughput.", labels)  # fmt: skip
    confidence = _gauge("mpproxy_carrier_prediction_confidence_ratio", "Confidence of the "
                        "prediction (N/K of the nearest windows).", labels)  # fmt: skip
    age = _gauge("mpproxy_carrier_context_age_seconds", "Age of the carrier's latest "
                 "context reading or report.", labels)  # fmt: skip
    for sess in st.get("sessions") or []:
        gw = sess.get("gateway", "")
        for name, c in sorted((sess.get("context") or {}).items()):
            if not isinstance(c, dict):
                continue
            lab = [gw, name]
            if c.get("cell_id") not in (None, ""):
                cell.add_metric(lab, {"cell": str(c["cell_id"])})
            if (v := _num(c.get("rsrp"))) is not None:
                rsrp.add_metric(lab, v)
            pos = c.get("position")
            if isinstance(pos, list | tuple) and len(pos) == 2:
                if (a := _num(pos[0])) is not None and (b := _num(pos[1])) is not None:
                    lat.add_metric(lab, a)
                    lon.add_metric(lab, b)
            for d in ("down", "up"):
                if (v := _num(c.get(f"{d}_mbit"))) is not None:
                    measured.add_metric([*lab, d], v * 1e6 / 8)
            p = c.get("prediction")
            if isinstance(p, dict):
                if (v := _num(p.get("throughput_mbit"))) is not None:
                    predicted.add_metric(lab, v * 1e6 / 8)
                if (v := _num(p.get("confidence"))) is not None:
                    confidence.add_metric(lab, v)
            if (v := _num(c.get("age_s"))) is not None:
                age.add_metric(lab, v)
    return [cell, rsrp, lat, lon, measured, predicted, confidence, age]


def clients(st: dict) -> list[tuple[str, int]]:
    """Connections by client: by passenger address on the gateway (its status dict's
    ``clients``), by gateway session on the node."""
    if st.get("role") == "gateway":
        return sorted((str(a), int(n)) for a, n in (st.get("clients") or {}).items())
    sessions = st.get("sessions") or []
    return [(s.get("gateway", ""), len(s.get("connections") or {})) for s in sessions]


def classified(st: dict) -> Iterator[tuple[str, str, str, str, float]]:
    """Every integer counter of a status dict as ``(gateway, area, kind, name, value)``,
    ``kind`` one of limit, error, event (:data:`LIMIT_COUNTERS`, :data:`ERROR_COUNTERS`)."""
    role, own = st.get("role", ""), st.get("id", "")
    for gw, area, d in counter_areas(st, role, own):
        for k, v in sorted(d.items()):
            if k in SIZES or isinstance(v, float) or (n := _num(v)) is None:
                continue
            kind = "limit" if k in LIMIT_COUNTERS else "error" if is_error(k) else "event"
            yield gw, area, kind, k, n


def counter_areas(st: dict, role: str, own: str) -> Iterator[tuple[str, str, dict]]:
    """(gateway label, area, dict of counters) of a status dict: each session's counters,
    then the process's own dicts."""
    for sess in st.get("sessions") or []:
        yield sess.get("gateway", ""), "session", sess.get("counters") or {}
    proc = own if role == "gateway" else ""
    areas = ("flows", "endpoint", "capture", "counters", "admission", "context", "metrics",
             "fleet", "drain")  # fmt: skip
    for area in areas:
        d = st.get(area)
        if isinstance(d, dict):
            yield proc, "process" if area == "counters" else area, d


def _counter_families(st: dict, role: str, own: str) -> list:
    labels = ["gateway", "area"]
    limits = _counter("mpproxy_limit_hits", "Times a limit took effect (the hardening "
                      "counters: docs/threat-model.md).", [*labels, "limit"])  # fmt: skip
    errors = _counter("mpproxy_errors", "Errors counted by the process.", [*labels, "error"])
    events = _counter("mpproxy_events", "Every other event the process counts.",
                      [*labels, "event"])  # fmt: skip
    fams = {"limit": limits, "error": errors, "event": events}
    for gw, area, kind, name, n in classified(st):
        fams[kind].add_metric([gw, area, name], n)
    failed = _gauge("mpproxy_scheduler_failed", "1 once the configured policy raised and "
                    "the built-in lowest-RTT rule took over.", [])  # fmt: skip
    sched = st.get("scheduler") or {}
    failed.add_metric([], 1.0 if sched.get("failed") else 0.0)
    return [limits, errors, events, failed]
