"""The scheduler package behind the mux's policy interface, fed with live TCP_INFO.

The mux asks ``policy(info, paths, now) -> tuple of path ids`` for every message; the
scheduler package answers ``decide(MessageInfo, [PathContext], now)``. This adapter keeps
one :class:`scheduler.estimators.PathEstimator` per path, fed by the shell with kernel
TCP_INFO readings (and PROBE round trips for idle paths), and translates each question:

* data and retransmissions go to the configured policy (``[scheduler] policy``), asked
  only about paths that are up and have room now (a retransmission only about paths it
  has not used yet), so it never commits a message to a full socket;
* connection control and DATA_ACKs stay with the mux's built-in rule
  (:func:`middlebox.mux.lowest_rtt_policy`): they are small, and an ACK must go back on
  the path its data came in on;
* ``builtin`` as the policy name uses the built-in rule for everything.

``longterm`` (a :class:`scheduler.longterm.LongTermSource`) is handed to the policy; the
gateway passes contextdb's predictions there when ``[context] use_contextdb`` is set
(:mod:`middlebox.ctxloop` feeds it each carrier's context and last-second throughput).
Only ``ours`` uses it; without it nothing changes.

A policy that raises is logged once and replaced by the built-in rule, so a scheduler
bug degrades scheduling instead of stopping the data path.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from middlebox.mux import MessageInfo, PathState, lowest_rtt_policy
from middlebox.pathsock import TcpInfo
from scheduler import policies
from scheduler.config import SchedulerConfig
from scheduler.context import DATA, REINJECTION, ConnectionContext, PathContext
from scheduler.context import MessageInfo as SchedMessage
from scheduler.estimators import PathEstimator, PathSample
from scheduler.longterm import LongTermSource

log = logging.getLogger("mpproxy.scheduler")

BUILTIN = "builtin"


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
        self.failed = False
        self.decisions = 0

    # -- what the shell tells it ----------------------------------------------------------

    def sample(
        self,
        path_id: int,
        carrier: str,
        info: TcpInfo | None,
        now: float,
        probe_rtt: float | None = None,
    ) -> PathContext:
        est = self.estimators.get(path_id)
        if est is None:
            est = self.estimators[path_id] = PathEstimator(path_id, carrier, self.cfg)
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
            if probe_rtt is not None:
                s = dataclasses.replace(s, probe_rtt=probe_rtt)
        else:
            s = PathSample(probe_rtt=probe_rtt)
        ctx = est.update(s, now)
        self.contexts[path_id] = ctx
        return ctx

    def path_down(self, path_id: int, now: float) -> None:
        est = self.estimators.get(path_id)
        if est is not None:
            self.contexts[path_id] = est.set_up(False, now)

    def opened(self, conn_id: int, client: str, dst_port: int, now: float) -> None:
        self.conns[conn_id] = ConnectionContext(conn_id, client, "up", dst_port, now)

    def closed(self, conn_id: int) -> None:
        self.conns.pop(conn_id, None)

    # -- the mux's question ---------------------------------------------------------------

    def __call__(
        self, info: MessageInfo, paths: Sequence[PathState], now: float
    ) -> tuple[int, ...]:
        if self.policy is None or self.failed or info.kind in ("control", "ack"):
            return lowest_rtt_policy(info, paths, now)
        cands = [p for p in paths if p.up and p.room > 0]
        retransmit = info.kind == "retransmit"
        if retransmit:
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
        conn = self.conns.get(info.conn_id)
        if conn is not None:
            conn.bytes_so_far = info.seq
        msg = SchedMessage(
            info.conn_id,
            info.size,
            REINJECTION if retransmit else DATA,
            offset=info.seq,
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
        return tuple(i for i in ids if i in ok)
