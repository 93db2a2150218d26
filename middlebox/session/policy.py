"""The scheduler package behind the mux's policy interface, fed with live TCP_INFO.

The mux asks ``policy(info, paths, now) -> tuple of path ids`` for every message; the
scheduler package answers ``decide(MessageInfo, [PathContext], now)``. This adapter keeps
one :class:`scheduler.estimators.PathEstimator` per path, fed by the shell with kernel
TCP_INFO readings and PROBE round trips, and translates each question:

* data and retransmissions go to the configured policy (``[scheduler] policy``), asked
  only about paths that are up and have room now (a retransmission only about paths it
  has not used yet), so it never commits a message to a full socket;
* connection control (OPEN, OPEN_OK, OPEN_FAIL, FIN) goes to the policy as its control
  class, asked about every up path (a control message is small and goes regardless of
  room); when it names none, the mux's built-in rule decides. RSTs go on every path
  (the mux does that without asking);
* DATA_ACKs stay with the built-in rule (:func:`middlebox.session.mux.lowest_rtt_policy`): an
  ACK must go back on the path its data came in on;
* ``builtin`` as the policy name uses the built-in rule for everything.

Streams: a data message whose ``backlog`` (bytes of the connection not yet cut into
messages behind it, from the mux) is 0 hands the last byte the application produced to
a path, so the connection's ``app_limited_at`` becomes ``now``; the backlog itself goes
on to the policy, which tells a stream that keeps up from one that fell behind by it.
Connections the shell did not announce with :meth:`SchedulerPolicy.opened` (the node
announces none) get a context at their first message, forgotten after
``FORGET_AFTER`` seconds without one.

PROBE round trips reach :meth:`PathEstimator.probe` once each (the shell passes the
latest one with every TCP_INFO reading); on an idle path (nothing unacknowledged or
unsent in the kernel) it is the delay sample and a loss-free loss sample, so the loss
estimate of a path that carries nothing follows what the probes see.

``longterm`` (a :class:`scheduler.longterm.LongTermSource`) is handed to the policy; the
gateway passes contextdb's predictions there when ``[context] use_contextdb`` is set
(:mod:`middlebox.context.loop` feeds it each carrier's context and last-second throughput).
Only ``ours`` uses it; without it nothing changes.

A policy that raises is logged once and replaced by the built-in rule, so a scheduler
bug degrades scheduling instead of stopping the data path.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from middlebox.paths.sockets import TcpInfo
from middlebox.session.mux import MessageInfo, PathState, lowest_rtt_policy
from scheduler import policies
from scheduler.config import SchedulerConfig
from scheduler.context import CONTROL, DATA, REINJECTION, ConnectionContext, PathContext
from scheduler.context import MessageInfo as SchedMessage
from scheduler.estimators import PathEstimator, PathSample
from scheduler.longterm import LongTermSource

log = logging.getLogger("mpproxy.scheduler")

BUILTIN = "builtin"
FORGET_AFTER = 120.0  # s without a message before an unannounced connection is forgotten
_KINDS = {"data": DATA, "retransmit": REINJECTION, "control": CONTROL}


class SchedulerPolicy:
    """A mux policy backed by ``scheduler.policies``; call it like the built-in one."""

    def __init__(
        self,
        cfg: SchedulerConfig,
        name: str | None = None,
        lowat: int = 128 << 10,
        longterm: LongTermSource | None = None,
    ):
        self.cfg = cfg
        self.name = name or cfg.policy
        self.lowat = lowat
        self.longterm = longterm  # contextdb's predictions (gateway with [context] use_contextdb)
        self.policy = None if self.name == BUILTIN else policies.get(self.name, cfg, longterm)
        self.estimators: dict[int, PathEstimator] = {}
        self.contexts: dict[int, PathContext] = {}
        self.conns: dict[int, ConnectionContext] = {}
        self._implicit: dict[int, float] = {}  # unannounced connection -> last message
        self._swept = 0.0
        self._probes: dict[int, float] = {}  # path -> last PROBE RTT fed to its estimator
        self.failed = False
        self.decisions = 0
        self.probes = 0

    # -- what the shell tells it ----------------------------------------------------------

    def sample(
        self,
        path_id: int,
        carrier: str,
        info: TcpInfo | None,
        now: float,
        probe_rtt: float | None = None,
    ) -> PathContext:
        """A TCP_INFO reading (None: the kernel gave none) and the path's latest PROBE
        round trip (None: none yet); a probe already seen is not counted again."""
        est = self.estimators.get(path_id)
        if est is None:
            est = self.estimators[path_id] = PathEstimator(path_id, carrier, self.cfg)
        fresh = probe_rtt is not None and self._probes.get(path_id) != probe_rtt
        idle = info is None or (info.unacked == 0 and info.notsent_bytes == 0)
        ctx = est.context()
        if info is not None and info.srtt_us:
            s = PathSample.from_tcp_info(
                tcpi_rtt=info.srtt_us,
                tcpi_rttvar=info.rttvar_us,
                tcpi_delivery_rate=info.delivery_rate,
                tcpi_snd_cwnd=info.snd_cwnd,
                tcpi_snd_mss=info.snd_mss,
                tcpi_unacked=info.unacked,
                tcpi_total_retrans=info.total_retrans,
                tcpi_notsent_bytes=info.notsent_bytes,
                tcpi_segs_out=info.segs_out,
            )
            if fresh and idle:
                # nothing in flight: the kernel's RTT is stale, the probe is the delay
                s = dataclasses.replace(s, rtt=None, rttvar=None)
            ctx = est.update(s, now)
        if fresh:
            self._probes[path_id] = probe_rtt  # type: ignore[assignment]
            self.probes += 1
            ctx = est.probe(probe_rtt, now, idle=idle)  # type: ignore[arg-type]
        elif info is None or not info.srtt_us:
            ctx = est.update(PathSample(), now)  # loss keeps decaying
        self.contexts[path_id] = ctx
        self._sweep(now)
        return ctx

    def path_down(self, path_id: int, now: float) -> None:
        est = self.estimators.get(path_id)
        if est is not None:
            self.contexts[path_id] = est.set_up(False, now)

    def opened(self, conn_id: int, client: str, dst_port: int, now: float) -> None:
        self.conns[conn_id] = ConnectionContext(conn_id, client, "up", dst_port, now)
        self._implicit.pop(conn_id, None)

    def closed(self, conn_id: int) -> None:
        self.conns.pop(conn_id, None)
        self._implicit.pop(conn_id, None)

    def _conn(self, conn_id: int, now: float) -> ConnectionContext:
        conn = self.conns.get(conn_id)
        if conn is None:
            conn = self.conns[conn_id] = ConnectionContext(conn_id, opened=now)
            self._implicit[conn_id] = now
        elif conn_id in self._implicit:
            self._implicit[conn_id] = now
        return conn

    def _sweep(self, now: float) -> None:
        """Forget unannounced connections silent for ``FORGET_AFTER`` (nobody closes
        them); at most once a second."""
        if now - self._swept < 1.0:
            return
        self._swept = now
        for cid, last in list(self._implicit.items()):
            if now - last > FORGET_AFTER:
                del self._implicit[cid]
                self.conns.pop(cid, None)

    # -- the mux's question ---------------------------------------------------------------

    def __call__(
        self, info: MessageInfo, paths: Sequence[PathState], now: float
    ) -> tuple[int, ...]:
        kind = _KINDS.get(info.kind)
        if self.policy is None or self.failed or kind is None:
            return lowest_rtt_policy(info, paths, now)
        if kind == CONTROL:
            cands = [p for p in paths if p.up]  # small: goes regardless of room
        else:
            cands = [p for p in paths if p.up and p.room > 0]
        if kind == REINJECTION:
            cands = [p for p in cands if p.id not in info.avoid]
        if not cands:
            return ()
        ctxs = []
        for p in cands:
            c = self.contexts.get(p.id)
            if c is None:
                c = self.contexts[p.id] = PathContext(p.id, srtt=p.srtt, rttvar=p.rttvar)
            c.up = True
            c.queued = max(0, self.lowat - p.room)
            ctxs.append(c)
        conn = self._conn(info.conn_id, now)
        backlog = 0
        if kind == DATA:
            backlog = info.backlog
            conn.bytes_so_far = max(conn.bytes_so_far, info.seq)
            if backlog == 0:
                conn.app_limited_at = now  # this message takes all the application gave
        msg = SchedMessage(
            info.conn_id,
            info.size,
            kind,
            offset=info.seq,
            backlog=backlog,
            conn=conn,
            avoid=info.avoid,
        )
        try:
            ids = self.policy.decide(msg, ctxs, now)
        except Exception:
            log.exception("policy %r failed; using the built-in lowest-RTT rule", self.name)
            self.failed = True
            return lowest_rtt_policy(info, paths, now)
        self.decisions += 1
        ok = {p.id for p in cands}
        chosen = tuple(i for i in ids if i in ok)
        if not chosen and kind == CONTROL:
            return lowest_rtt_policy(info, paths, now)
        return chosen
