"""Which node of a fleet the gateway uses, and its moves between them.

The rule (:func:`rank`, pure: names, states and the clock in, an order out) ranks the
configured nodes (``[[gateway.nodes]]``, or ``gateway.node`` alone):

1. nodes that are neither lost nor draining come first, then draining ones (they still
   serve, so they beat lost ones), then lost ones, the longest lost first (so with every
   node lost the gateway tries each in turn, ``gateway.node_lost_time`` apiece);
2. within each group, the highest rendezvous weight: the first 8 bytes of
   SHA-256(gateway id, NUL, node name). Every gateway computes its own order with no
   coordination; the gateways of a fleet spread evenly over its nodes; a node that
   leaves or joins moves only the gateways that ranked it first (highest random weight
   hashing, Thaler and Ravishankar);
3. a tie of weights (which 64-bit weights make vanishingly rare) goes to the lower
   measured PROBE round trip, then to the name.

A node is *lost* when the gateway had no path up to it for ``gateway.node_lost_time``
seconds, and *draining* while it says so (DRAIN, docs/PROTOCOL.md); both marks last
``gateway.node_retry_time`` seconds after the gateway last saw them (a drained node that
came back is tried again, and says DRAIN again if it still drains).

:class:`Fleet` is the shell: one :class:`~middlebox.gateway.uplink.Uplink` (paths, mux,
session) per node in use. It starts on the first-ranked node and stays there until that
node is lost or draining (it never moves back by itself: a move costs a new session).

* lost: its connections are reset (the clients see RST, never a silent hang) and the
  gateway dials the next node at once; new connections open there;
* draining: the gateway dials the next node while new connections still open on the
  draining one; once a path to the next node is up, new connections open there, and
  the draining node's connections finish where they are (its uplink is closed when the
  last one ends), so no new connection fails during the move.

Connection ids are disjoint across the uplinks (a range of 2**24 per uplink) and so are
path ids, so the bridge and the scheduler keep one namespace for each.
"""

from __future__ import annotations

import hashlib
import logging
import math
import selectors
from collections.abc import Callable
from dataclasses import dataclass

from middlebox.config import Config
from middlebox.errors import UserError
from middlebox.gateway.uplink import Uplink
from middlebox.logs import kv
from middlebox.session import wire
from middlebox.session.mux import Budget

log = logging.getLogger("mpproxy.fleet")

UP, DRAINING, LOST = "up", "draining", "lost"  # a node's state as the gateway sees it
_ORDER = {UP: 0, DRAINING: 1, LOST: 2}
CONN_RANGE = 1 << 24  # conn ids per uplink: uplink k opens ids from (k % 256) * 2**24 + 1


def weight(gateway_id: str, node: str) -> int:
    """The rendezvous weight of ``node`` for ``gateway_id`` (higher ranks first)."""
    digest = hashlib.sha256(gateway_id.encode() + b"\0" + node.encode()).digest()
    return int.from_bytes(digest[:8], "big")


@dataclass
class Candidate:
    """One configured node and what the gateway knows of it."""

    name: str
    address: str
    weight: int
    lost_at: float | None = None
    draining_at: float | None = None
    rtt: float | None = None  # the lowest PROBE round trip seen on its paths (s)

    def state(self, now: float, retry: float) -> str:
        if self.lost_at is not None and now - self.lost_at < retry:
            return LOST
        if self.draining_at is not None and now - self.draining_at < retry:
            return DRAINING
        return UP


def rank(candidates: list[Candidate], now: float, retry: float) -> list[Candidate]:
    """The candidates in the order the rule prefers them (see module text)."""

    def key(c: Candidate) -> tuple:
        st = c.state(now, retry)
        lost = c.lost_at if st == LOST else 0.0
        rtt = c.rtt if c.rtt is not None else math.inf
        return (_ORDER[st], lost, -c.weight, rtt, c.name)

    return sorted(candidates, key=key)


def candidates(cfg: Config) -> list[Candidate]:
    gid = cfg.gateway.id
    return [Candidate(n.name, n.address, weight(gid, n.name)) for n in cfg.gateway.fleet()]


class UplinkHook:
    """A hook of the fleet that every uplink gets: set on the fleet, it is given to each
    uplink open now and to each one made later (the application sets it once and need
    not know that uplinks come and go)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, fleet: Fleet | None, owner: type | None = None):
        if fleet is None:
            return self
        return fleet._hooks.get(self.name)

    def __set__(self, fleet: Fleet, hook: Callable | None) -> None:
        fleet._hooks[self.name] = hook
        for up in fleet.uplinks:
            setattr(up, self.name, hook)


class Fleet:
    """The gateway's uplinks to the nodes of its fleet (see module text).

    ``current`` takes new connections; ``uplinks`` lists every uplink still in use
    (``current`` first, then the next node being dialled, then draining ones)."""

    def __init__(
        self,
        cfg: Config,
        sel: selectors.BaseSelector,
        clock: Callable[[], float],
        policy=None,
        make: Callable[..., Uplink] = Uplink,
    ) -> None:
        self.cfg = cfg
        self.sel = sel
        self.clock = clock
        self.policy = policy
        self.make = make
        self.nodes = candidates(cfg)
        self.lost_time = cfg.gateway.node_lost_time
        self.retry = cfg.gateway.node_retry_time
        self._made = 0
        self.budget = Budget(cfg.gateway.memory_budget)  # the whole process's, shared
        self._next_pid = 1
        self._hooks: dict[str, Callable | None] = {}  # UplinkHook values, by name
        # called with (uplink, now) when a lost node's connections are to be reset
        self.on_lost: Callable[[Uplink, float], None] | None = None
        # whether the application still holds connections of an uplink (the bridge's
        # links): a retiring uplink is closed only once neither its mux nor this does,
        # so the last events of its connections (data, FIN) are read before it goes
        self.in_use: Callable[[Uplink], bool] = lambda up: False
        self.counters = {
            "moves": 0,  # new connections go to another node since
            "moves_lost": 0,
            "moves_drain": 0,
            "drains_heard": 0,  # DRAIN messages received (either state)
            "nodes_lost": 0,
            "uplinks_retired": 0,  # a draining node's uplink closed after its last connection
            "node_errors": 0,  # a node's address did not resolve (counted lost)
        }
        now = clock()
        self.retiring: list[Uplink] = []
        self.next: Uplink | None = None
        first = rank(self.nodes, now, self.retry)[0]
        self.current = self._open(first, now)  # an unresolvable single node stops the start

    # -- uplinks --------------------------------------------------------------------------

    def _open(self, cand: Candidate, now: float) -> Uplink:
        base = (self._made % 256) * CONN_RANGE + 1
        up = self.make(self.cfg, self.sel, self.clock, policy=self.policy, node=cand.address,
                       node_name=cand.name, first_pid=self._next_pid,
                       first_conn_id=base, budget=self.budget)  # fmt: skip
        self._made += 1
        self._next_pid += len(up.slots)
        up.candidate = cand
        up.last_up = now  # no path yet: lost after node_lost_time from now
        up.node_draining = False  # the node's last DRAIN said so
        up.on_drain = lambda draining, t, up=up: self._drain_heard(up, draining, t)
        for name, hook in self._hooks.items():
            setattr(up, name, hook)
        log.info("node chosen %s", kv(node=cand.name, address=cand.address, session=up.session))
        return up

    def _try_open(self, cand: Candidate, now: float) -> Uplink | None:
        try:
            return self._open(cand, now)
        except UserError as e:
            self.counters["node_errors"] += 1
            log.warning("node unusable %s", kv(node=cand.name, why=str(e)))
            cand.lost_at = now
            return None

    @property
    def uplinks(self) -> list[Uplink]:
        nxt = [self.next] if self.next is not None else []
        return [self.current, *nxt, *self.retiring]

    @property
    def mux(self):
        """The mux new connections open on (the bridge's view of the uplink)."""
        return self.current.mux

    def muxes(self) -> list:
        return [up.mux for up in self.uplinks]

    # what the context loop reads of "the uplink": the current one's paths
    @property
    def paths(self):
        return self.current.paths

    @property
    def slots(self):
        return self.current.slots

    @property
    def session(self) -> int:
        return self.current.session

    # hooks every uplink gets, now and when it is made (set like an Uplink's)
    on_info = UplinkHook()  # the context loop's TCP_INFO hook
    datagrams = UplinkHook()  # the UDP shell's DATAGRAM hook

    # -- the loop -------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        times = [t for up in self.uplinks if (t := up.next_timer()) is not None]
        if len(self.nodes) > 1:
            times += [up.last_up + self.lost_time for up in (self.current, self.next) if up]
        return min(times, default=None)

    def poll(self, now: float) -> None:
        for up in self.uplinks:
            up.poll(now)
        self.decide(now)

    def pump(self, now: float) -> None:
        for up in self.uplinks:
            up.pump(now)

    def decide(self, now: float) -> None:
        """Mark lost nodes, start and finish moves, close drained uplinks."""
        for up in self.uplinks:
            if up.node_draining:  # it says so still: the mark lasts while the gateway is on it
                up.candidate.draining_at = now
            if up.paths:
                up.last_up = now
                rtts = [s.probe_rtt for s in up.slots.values() if s.probe_rtt is not None]
                cand = up.candidate
                if rtts and (cand.rtt is None or min(rtts) < cand.rtt):
                    cand.rtt = min(rtts)
        if len(self.nodes) > 1:
            self._lost(now)
            self._drain(now)
        for up in list(self.retiring):
            if not up.mux.conn_ids() and not self.in_use(up):
                self.retiring.remove(up)
                up.close(now, wire.CloseReason.NORMAL, "gateway moved to another node")
                self.counters["uplinks_retired"] += 1
                log.info("node left %s", kv(node=up.candidate.name, session=up.session))

    def _lost(self, now: float) -> None:
        nxt = self.next
        if nxt is not None and now - nxt.last_up >= self.lost_time:
            self._mark_lost(nxt, now)
            self.next = None
            nxt.close(now, wire.CloseReason.NORMAL, "node lost before it came up")
        cur = self.current
        if now - cur.last_up < self.lost_time:
            return
        self._mark_lost(cur, now)
        new = self.next
        self.next = None
        if new is None:
            best = rank(self.nodes, now, self.retry)[0]
            new = self._try_open(best, now) if best is not cur.candidate else None
        if new is None:
            cur.last_up = now  # nothing better: keep dialling this one, look again later
            return
        if self.on_lost is not None:
            self.on_lost(cur, now)  # its clients are reset; the uplink goes once they are
        self.retiring.append(cur)
        self.current = new
        self.counters["moves"] += 1
        self.counters["moves_lost"] += 1
        log.warning("node lost, moved %s", kv(lost=cur.candidate.name, to=new.candidate.name))

    def _mark_lost(self, up: Uplink, now: float) -> None:
        up.candidate.lost_at = now
        self.counters["nodes_lost"] += 1
        log.warning(
            "node lost %s", kv(node=up.candidate.name, no_path_for=f"{now - up.last_up:.1f}")
        )

    def _drain(self, now: float) -> None:
        cur = self.current
        if cur.candidate.state(now, self.retry) != DRAINING:
            return
        if self.next is None:
            best = rank(self.nodes, now, self.retry)[0]
            if best is cur.candidate or best.state(now, self.retry) != UP:
                return  # nowhere better: stay (the draining node still serves)
            self.next = self._try_open(best, now)
            return
        if self.next.paths:  # the next node can take connections: move
            self.retiring.append(cur)
            self.current, self.next = self.next, None
            self.counters["moves"] += 1
            self.counters["moves_drain"] += 1
            log.info(
                "node draining, moved %s",
                kv(draining=cur.candidate.name, to=self.current.candidate.name,
                   connections_left=len(cur.mux.conn_ids())),
            )  # fmt: skip

    def _drain_heard(self, up: Uplink, draining: bool, now: float) -> None:
        self.counters["drains_heard"] += 1
        cand = up.candidate
        was = up.node_draining
        up.node_draining = draining
        cand.draining_at = now if draining else None
        if draining != was:
            log.info("node %s %s", "draining" if draining else "resumed", kv(node=cand.name))

    # -- status and shutdown --------------------------------------------------------------

    def status(self, now: float) -> dict:
        on = {id(up.candidate): up for up in self.uplinks}
        nodes = []
        for c in rank(self.nodes, now, self.retry):
            up = on.get(id(c))
            role = (
                "chosen" if up is self.current
                else "next" if up is not None and up is self.next
                else "retiring" if up is not None
                else "standby"
            )  # fmt: skip
            nodes.append(
                {
                    "name": c.name,
                    "address": c.address,
                    "state": c.state(now, self.retry),
                    "role": role,
                    "rtt_ms": round(c.rtt * 1e3, 3) if c.rtt is not None else None,
                    "paths_up": len(up.paths) if up is not None else 0,
                    "connections": len(up.mux.conn_ids()) if up is not None else 0,
                }
            )
        return {
            "chosen": self.current.candidate.name,
            "next": self.next.candidate.name if self.next is not None else None,
            "nodes": nodes,
            "node_lost_time": self.lost_time,
            "node_retry_time": self.retry,
            **self.counters,
        }

    def close(self, now: float) -> None:
        for up in self.uplinks:
            up.close(now)
        self.retiring.clear()
        self.next = None
