"""The scheduler package behind the mux's policy interface, fed with live TCP_INFO.

The mux asks ``policy(info, paths, now) -> tuple of path ids`` for every message, with
the scheduler's own record (:class:`scheduler.context.MessageInfo`); the scheduler
package answers ``decide(MessageInfo, [PathContext], now)``. This adapter is the
scheduling module of seed 001: it holds the context registry with its three generators
(:class:`scheduler.generators.Generators`) and feeds them:

* the shell's TCP_INFO readings and PROBE round trips (:meth:`SchedulerPolicy.sample`,
  :meth:`SchedulerPolicy.path_down`) go to the path generator, one
  :class:`~scheduler.estimators.PathEstimator` per path;
* connections opened and closed (:meth:`SchedulerPolicy.opened`,
  :meth:`SchedulerPolicy.closed`) and what each message says about its connection go
  to the connection tracker;
* the carrier tracker is the one the gateway's context loop or the node's session
  context feeds (``carriers``); the long-term source is subscribed to it.

Each question is then translated:

* data and reinjections go to the configured policy (``[scheduler] policy``), asked
  only about paths that are up and have room now (a reinjection only about paths it
  has not used yet), so it never commits a message to a full socket;
* connection control (OPEN, OPEN_OK, OPEN_FAIL, FIN) goes to the policy as its control
  class, asked about every up path (a control message is small and goes regardless of
  room); when it names none, the mux's built-in rule decides. RSTs go on every path
  (the mux does that without asking);
* datagrams (DATAGRAM messages of a UDP flow, kind ``datagram``) go to the one rule of
  :class:`scheduler.datagrams.DatagramPlacer` by the flow's class, whatever the policy
  (``builtin`` included): ``single`` flows one path at a time among the paths with room,
  ``duplicate`` flows a copy on each of the best ``copies`` paths, which may be up to
  :data:`DATAGRAM_SLACK` bytes past their room (a DNS query must not wait behind a
  download);
* DATA_ACKs stay with the built-in rule (:func:`middlebox.session.mux.lowest_rtt_policy`): an
  ACK must go back on the path its data came in on;
* ``builtin`` as the policy name uses the built-in rule for everything.

The policy sees the registry's path contexts of the candidate paths (with the bytes
each holds unsent, as the shell reports them to the mux, written in) and the registry's
context of the message's connection (the adapter fills ``MessageInfo.conn``).

Streams: a data message whose ``backlog`` (bytes of the connection not yet cut into
messages behind it, from the mux) is 0 hands the last byte the application produced to
a path, so the connection's ``app_limited_at`` becomes ``now`` -- unless the mux says
the send buffer was full (``buffer_full``: the application may hold more, but the
buffer is all in flight; a bulk download on fast paths reached that state and was taken
for a stream, ranked by delay instead of bandwidth); the backlog itself goes
on to the policy, which tells a stream that keeps up from one that fell behind by it.
Connections the shell did not announce with :meth:`SchedulerPolicy.opened` (the node
announces none) get a context at their first message, forgotten after
``scheduler.generators.FORGET_AFTER`` seconds without one; the node's relay passes
each OPEN's client and destination port to :meth:`SchedulerPolicy.described`, so its
web responses are classed by port as the gateway's requests are (before, every node
message was ``data`` or ``bulk``: see docs/scheduler.md, "Web tails on the node").

PROBE round trips reach :meth:`PathEstimator.probe` once each (the shell passes the
latest one with every TCP_INFO reading); on an idle path (nothing unacknowledged or
unsent in the kernel) it is the delay sample and a loss-free loss sample, so the loss
estimate of a path that carries nothing follows what the probes see.

``longterm`` (a :class:`scheduler.longterm.LongTermSource`) is handed to the policy; the
gateway passes contextdb's predictions there when ``[context] use_contextdb`` is set
(:mod:`middlebox.context.loop` feeds the carrier tracker and each carrier's
last-second throughput). Only ``ours`` uses it; without it nothing changes.

A policy that raises is logged once and replaced by the built-in rule, so a scheduler
bug degrades scheduling instead of stopping the data path.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from middlebox.paths.sockets import TcpInfo
from middlebox.session.mux import PathState, lowest_rtt_policy
from scheduler import policies
from scheduler.config import SchedulerConfig
from scheduler.context import CONTROL, DATA, DATAGRAM, REINJECTION, MessageInfo, PathContext
from scheduler.datagrams import DUPLICATE, DatagramClasses, DatagramPlacer
from scheduler.estimators import PathSample
from scheduler.generators import CarrierTracker, Generators
from scheduler.longterm import LongTermSource
from scheduler.registry import CONNECTION, PATH

log = logging.getLogger("mpproxy.scheduler")

BUILTIN = "builtin"
_ASKED = (DATA, REINJECTION, CONTROL)  # the kinds the policy decides (ACKs: built-in rule)
DATAGRAM_SLACK = 64 << 10  # bytes a duplicated datagram may go past a path's room


class SchedulerPolicy:
    """A mux policy backed by ``scheduler.policies``; call it like the built-in one."""

    def __init__(
        self,
        cfg: SchedulerConfig,
        name: str | None = None,
        longterm: LongTermSource | None = None,
        carriers: CarrierTracker | None = None,
        datagrams: DatagramClasses | None = None,
    ):
        self.cfg = cfg
        self.placer = DatagramPlacer(datagrams)  # the datagram rule (scheduler.datagrams)
        self.name = name or cfg.policy
        self.longterm = longterm  # contextdb's predictions (gateway with [context] use_contextdb)
        self.policy = None if self.name == BUILTIN else policies.get(self.name, cfg, longterm)
        gens = Generators(cfg, carriers, longterm)
        self.registry = gens.registry  # what the policy reads
        self.paths, self.connections, self.carriers = gens.paths, gens.connections, gens.carriers
        self._probes: dict[int, float] = {}  # path -> last PROBE RTT fed to its estimator
        self.failed = False
        self.decisions = 0
        self.duplicated = 0  # decisions that put one message on more than one path
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
        gen = self.paths
        if path_id not in gen.estimators:
            gen.add_path(path_id, carrier, now)
        fresh = probe_rtt is not None and self._probes.get(path_id) != probe_rtt
        idle = info is None or (info.unacked == 0 and info.notsent_bytes == 0)
        ctx = gen.contexts[path_id]
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
            ctx = gen.sample(path_id, s, now)
        if fresh:
            self._probes[path_id] = probe_rtt  # type: ignore[assignment]
            self.probes += 1
            ctx = gen.probe(path_id, probe_rtt, now, idle=idle)  # type: ignore[arg-type]
        elif info is None or not info.srtt_us:
            ctx = gen.sample(path_id, PathSample(), now)  # loss keeps decaying
        self.connections.sweep(now)
        return ctx

    def path_down(self, path_id: int, now: float) -> None:
        self.paths.set_up(path_id, False, now)

    def opened(self, conn_id: int, client: str, dst_port: int, now: float) -> None:
        self.connections.opened(conn_id, now, client=client, dst_port=dst_port)

    def closed(self, conn_id: int) -> None:
        self.connections.closed(conn_id)

    def described(self, conn_id: int, client: str, dst_port: int, now: float) -> None:
        """The node's OPEN of ``conn_id`` named its client and destination port: its
        context gets them, so the node's policy classes its messages as the gateway's
        does (the first bytes of a web response are ``interactive``). The node closes
        none of its contexts: this one is still forgotten after ``FORGET_AFTER``
        seconds without a message, as an unannounced one is."""
        ctx = self.connections.seen(conn_id, now)
        ctx.client = client
        ctx.dst_port = dst_port

    # -- the mux's question ---------------------------------------------------------------

    def __call__(
        self, info: MessageInfo, paths: Sequence[PathState], now: float
    ) -> tuple[int, ...]:
        kind = info.kind
        if kind == DATAGRAM:
            return self._datagram(info, paths, now)
        if self.policy is None or self.failed or kind not in _ASKED:
            return lowest_rtt_policy(info, paths, now)
        if kind == CONTROL:
            cands = [p for p in paths if p.up]  # small: goes regardless of room
        else:
            cands = [p for p in paths if p.up and p.room > 0]
        if kind == REINJECTION:
            cands = [p for p in cands if p.id not in info.avoid]
        if not cands:
            return ()
        conns, cid = self.connections, info.conn_id
        conns.seen(cid, now)
        if kind == DATA:
            conns.carried_to(cid, info.offset)
            if info.backlog == 0 and not info.buffer_full:
                conns.app_limited(cid, now)  # this message takes all the application gave
        registry = self.registry
        ctxs = self._contexts(cands)
        info.conn = registry.get(CONNECTION, cid)
        try:
            ids = self.policy.decide(info, ctxs, now)
        except Exception:
            log.exception("policy %r failed; using the built-in lowest-RTT rule", self.name)
            self.failed = True
            return lowest_rtt_policy(info, paths, now)
        self.decisions += 1
        if type(ids) is tuple and len(ids) == 1:  # the usual answer: one path
            chosen = ids if any(p.id == ids[0] for p in cands) else ()
        else:
            ok = {p.id for p in cands}
            chosen = tuple(i for i in ids if i in ok)
        if len(chosen) > 1:
            self.duplicated += 1
        if not chosen and kind == CONTROL:
            return lowest_rtt_policy(info, paths, now)
        return chosen

    def _contexts(self, cands: Sequence[PathState]) -> list[PathContext]:
        """Feed the generators what the mux knows now, then read the registry."""
        gen = self.paths
        for p in cands:
            if p.id not in gen.contexts:
                gen.placeholder(p.id, p.srtt, p.rttvar)
            gen.refresh(p.id, up=True, queued=p.queued)
        registry = self.registry
        return [registry.get(PATH, p.id) for p in cands]

    def _datagram(
        self, info: MessageInfo, paths: Sequence[PathState], now: float
    ) -> tuple[int, ...]:
        least = -DATAGRAM_SLACK if info.flow_class == DUPLICATE else 0
        cands = [p for p in paths if p.up and p.room > least]
        if not cands:
            return ()
        return self.placer.place(info, self._contexts(cands), now)

    def forget_flow(self, flow_id: int) -> None:
        """A datagram flow ended: its pinned path is forgotten."""
        self.placer.forget(flow_id)
