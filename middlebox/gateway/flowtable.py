"""The gateway's flow table: a fast path of one dict lookup, a slow path of rules (seed 002).

Every TCP packet the listener captures belongs to a flow, named by its tuple
``(src_addr, src_port, dst_addr, dst_port)`` as the capture parsed it (addresses as
packed ``bytes`` or as text; the table only hashes them on the fast path). The first
packet of a flow takes the *slow path*: the configured rules decide an
:class:`Action` and the table records it with the flow's connection state. Every later
packet takes the *fast path*: one dict lookup returns the cached action, the idle clock
is touched, and only packets carrying SYN, FIN or RST (or the handshake's last ACK) pay
for a state update.

Only a SYN of a flow the rules let pass (proxied or bypassed) makes an entry; a denied
or dropped one is answered from the rules and kept nowhere. A packet of no known flow
that is not a SYN (a bare ACK, a FIN, a RST, data after a gateway restart) gets the
rules' action without an entry (:meth:`FlowTable.classify` returns None, the caller
asks :meth:`FlowTable.decide`), so a flood of such packets costs no memory; the
user-space endpoint answers them as a host would (a rate-limited RST) and the caller
records a flow the endpoint turns out to know (:meth:`FlowTable.track`, e.g. after a
SYN-cookie handshake). New entries are held to
quotas, as HAProxy holds its clients: at most ``max_per_source`` entries and
``new_per_source`` new ones per second for each source address, and when the whole table
is full the oldest entry that is not established (a half-open handshake, a closed flow)
gives its place, as Linux conntrack's early drop does; only a table full of established
flows refuses a new one.

Each state has its own idle timeout, short while a handshake is half open and long once
established (RFC 5382 asks NATs for at least 2 h 4 min), so half-open floods cost little
memory while idle SSH sessions survive. Expiry is sans-I/O: the caller passes ``now``
and calls :meth:`FlowTable.expire` when :meth:`FlowTable.next_timer` says so; a lazy heap
keeps the per-packet cost at one attribute store (the heap entry is checked, and pushed
again with the true deadline, only when it comes due).

Rule order on the slow path: the ``[[gateway.acl]]`` rules in order (first match wins),
then the ``deny`` prefixes, then the ``bypass`` prefixes (plus the gateway's own local
prefixes the caller adds), and otherwise the flow is proxied.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import ipaddress
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

from middlebox.config import GatewayConfig

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
_CTL = FIN | SYN | RST
_DECIDED_MAX = 4096


class Action(enum.Enum):
    """What the gateway does with every packet of a flow."""

    PROXY = "proxy"  # terminate in the user-space endpoint, carry over the carrier paths
    BYPASS = "bypass"  # forward unchanged by ordinary routing
    DENY = "deny"  # refuse: answer the client with RST
    DROP = "drop"  # discard silently


class State(enum.Enum):
    """Connection state as far as the table can tell from flags (or the owner sets it)."""

    SYN_SEEN = "syn_seen"  # handshake begun, not complete
    ESTABLISHED = "established"
    FIN_WAIT = "fin_wait"  # one side has sent FIN
    CLOSED = "closed"  # RST seen, or FIN both ways


_ACL_ACTIONS = {
    "allow": Action.PROXY,
    "bypass": Action.BYPASS,
    "deny": Action.DENY,
    "drop": Action.DROP,
}


@dataclass(frozen=True)
class Timeouts:
    """Idle timeout per state, in seconds."""

    half_open: float = 30.0
    established: float = 7440.0
    closing: float = 240.0
    closed: float = 10.0

    def of(self, state: State) -> float:
        if state is State.ESTABLISHED:
            return self.established
        if state is State.FIN_WAIT:
            return self.closing
        if state is State.CLOSED:
            return self.closed
        return self.half_open


def _ranges(prefixes: Iterable[str]) -> tuple[tuple[int, int, int], ...]:
    """Prefixes as (version, first, last) integer ranges: cheap to test, no objects per test."""
    out = []
    for p in prefixes:
        net = ipaddress.ip_network(p, strict=False)
        out.append((net.version, int(net.network_address), int(net.broadcast_address)))
    return tuple(out)


def _port_ranges(ports: Iterable[str]) -> tuple[tuple[int, int], ...]:
    out = []
    for p in ports:
        lo, _, hi = p.partition("-")
        out.append((int(lo), int(hi or lo)))
    return tuple(out)


def _in(version: int, value: int, ranges: tuple[tuple[int, int, int], ...]) -> bool:
    return any(v == version and lo <= value <= hi for v, lo, hi in ranges)


@dataclass(frozen=True)
class Rule:
    """One ACL rule; an empty matcher matches anything."""

    action: Action
    src: tuple[tuple[int, int, int], ...] = ()
    dst: tuple[tuple[int, int, int], ...] = ()
    dst_ports: tuple[tuple[int, int], ...] = ()

    @classmethod
    def make(
        cls,
        action: Action | str,
        src: Sequence[str] = (),
        dst: Sequence[str] = (),
        dst_ports: Sequence[str] = (),
    ) -> Rule:
        if isinstance(action, str):
            action = _ACL_ACTIONS[action]
        return cls(action, _ranges(src), _ranges(dst), _port_ranges(dst_ports))

    def matches(self, ver: int, src: int, dst: int, dport: int) -> bool:
        if self.src and not _in(ver, src, self.src):
            return False
        if self.dst and not _in(ver, dst, self.dst):
            return False
        return not self.dst_ports or any(lo <= dport <= hi for lo, hi in self.dst_ports)


@dataclass(frozen=True)
class Rules:
    """The slow path's decision: ACL rules, then deny list, then bypass list, else proxy."""

    acl: tuple[Rule, ...] = ()
    deny: tuple[tuple[int, int, int], ...] = ()
    bypass: tuple[tuple[int, int, int], ...] = ()

    @classmethod
    def make(
        cls, acl: Sequence[Rule] = (), deny: Sequence[str] = (), bypass: Sequence[str] = ()
    ) -> Rules:
        return cls(tuple(acl), _ranges(deny), _ranges(bypass))

    @classmethod
    def from_config(cls, gw: GatewayConfig, local_prefixes: Sequence[str] = ()) -> Rules:
        """Rules of a gateway configuration; ``local_prefixes`` (the gateway's own networks,
        found at run time) are bypassed like the configured bypass list."""
        acl = [Rule.make(r.action, r.src, r.dst, r.dst_ports) for r in gw.acl]
        return cls.make(acl, gw.deny, [*gw.bypass, *local_prefixes])

    def decide(self, src_addr: object, dst_addr: object, dst_port: int) -> Action:
        src = ipaddress.ip_address(src_addr)  # type: ignore[arg-type]
        dst = ipaddress.ip_address(dst_addr)  # type: ignore[arg-type]
        ver, s, d = dst.version, int(src), int(dst)
        for rule in self.acl:
            if rule.matches(ver, s, d, dst_port):
                return rule.action
        if _in(ver, d, self.deny):
            return Action.DENY
        if _in(ver, d, self.bypass):
            return Action.BYPASS
        return Action.PROXY


class Flow:
    """One tracked flow. A slotted class, not a dataclass: the fast path touches it per packet."""

    __slots__ = (
        "key",
        "action",
        "state",
        "last_seen",
        "packets",
        "created",
        "fin_orig",
        "fin_reply",
    )

    def __init__(self, key: Hashable, action: Action, state: State, now: float) -> None:
        self.key = key
        self.action = action
        self.state = state
        self.created = now
        self.last_seen = now
        self.packets = 0
        self.fin_orig = False
        self.fin_reply = False

    def __repr__(self) -> str:
        return f"Flow({self.key!r}, {self.action.name}, {self.state.name}, packets={self.packets})"


@dataclass
class Counters:
    """Per action: flows created and packets seen (of flows still live and already expired)."""

    flows: dict[Action, int] = field(default_factory=lambda: dict.fromkeys(Action, 0))
    packets: dict[Action, int] = field(default_factory=lambda: dict.fromkeys(Action, 0))
    expired: int = 0
    overflow: int = 0  # new flows refused because the table was full of established flows
    evicted: int = 0  # half-open or closed flows dropped to make room for a new one
    source_full: int = 0  # new flows refused: the source had max_per_source entries
    source_rate: int = 0  # new flows refused: the source opened new_per_source this second
    untracked: int = 0  # packets of no flow that were not a SYN (no entry made)


class FlowTable:
    """Fast path / slow path flow table; sans-I/O (``now`` is always a parameter)."""

    def __init__(
        self,
        rules: Rules,
        timeouts: Timeouts | None = None,
        max_flows: int = 65536,
        max_per_source: int = 4096,
        new_per_source: int = 500,
    ) -> None:
        self.rules = rules
        self.timeouts = timeouts or Timeouts()
        self.max_flows = max_flows
        self.max_per_source = max_per_source
        self.new_per_source = new_per_source
        self._flows: dict[Hashable, Flow] = {}
        # early-drop order: closed flows, then half-open ones, each oldest first
        self._closed: dict[Hashable, None] = {}
        self._half_open: dict[Hashable, None] = {}
        self._per_source: dict[object, int] = {}  # entries per source address
        self._second = -1  # the second _new counts
        self._new: dict[object, int] = {}  # new entries per source in that second
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = 0  # heap tie-breaker: keys of mixed types must never be compared
        self._done_packets = dict.fromkeys(Action, 0)
        self._counters = Counters()

    @classmethod
    def from_config(cls, gw: GatewayConfig, local_prefixes: Sequence[str] = ()) -> FlowTable:
        timeouts = Timeouts(
            gw.flow_timeout_half_open,
            gw.flow_timeout_established,
            gw.flow_timeout_closing,
            gw.flow_timeout_closed,
        )
        return cls(
            Rules.from_config(gw, local_prefixes),
            timeouts,
            gw.flow_table_size,
            gw.flow_table_per_source,
            gw.flow_new_per_source,
        )

    @property
    def rules(self) -> Rules:
        return self._rules

    @rules.setter
    def rules(self, rules: Rules) -> None:
        """New rules (for flows not seen yet); forgets the answers of the old ones."""
        self._rules = rules
        self._decided: dict[tuple, Action] = {}  # the rules' answers (see decide)

    def __len__(self) -> int:
        return len(self._flows)

    def get(self, key: Hashable) -> Flow | None:
        return self._flows.get(key)

    def lookup(self, key: Hashable) -> Action | None:
        """Fast path only: the cached action of a known flow, else None. No side effects."""
        flow = self._flows.get(key)
        return flow.action if flow is not None else None

    def classify(self, key: Hashable, flags: int, now: float) -> Action | None:
        """Action for a packet from the client side of ``key`` carrying TCP ``flags``.

        ``key`` is ``(src_addr, src_port, dst_addr, dst_port)``. Known flows take the
        fast path; a SYN of a new flow (or a new SYN on a closed one) takes the slow path
        and makes an entry within the quotas (``DROP`` beyond them). Any other packet of
        no known flow returns None and makes no entry: :meth:`decide` gives its action.
        """
        flow = self._flows.get(key)
        if flow is None or flow.state is State.CLOSED:
            if flags & (SYN | ACK | RST) == SYN:
                return self._slow_path(key, now)
            if flow is None:
                self._counters.untracked += 1
                return None
        flow.last_seen = now
        flow.packets += 1
        if flags & _CTL or flow.state is State.SYN_SEEN:
            self._advance(flow, flags, reply=False)
        return flow.action

    def decide(self, key: Hashable) -> Action:
        """The rules' action for ``key`` without recording a flow (an untracked packet, or
        a new flow's first). Answers are remembered per (source, destination, port), a
        few thousand at most: a flood of stray packets to one server pays a dict lookup,
        not the rules."""
        src, _sport, dst, dport = key  # type: ignore[misc]
        k = (src, dst, dport)
        action = self._decided.get(k)
        if action is None:
            action = self.rules.decide(src, dst, dport)
            if len(self._decided) >= _DECIDED_MAX:
                self._decided.clear()
            self._decided[k] = action
        return action

    def track(self, key: Hashable, action: Action, state: State, now: float) -> bool:
        """Record a flow the caller knows to exist (e.g. a handshake completed with a SYN
        cookie); within the table's bound, not the per-source rate (the handshake was
        paid for). False when there is no room (the flow keeps working untracked)."""
        if key in self._flows:
            return True
        if not self._room(key[0], now, rate=False):  # type: ignore[index]
            return False
        self._add(Flow(key, action, state, now), now)
        return True

    def observe_reply(self, key: Hashable, flags: int, now: float) -> None:
        """A packet of the server side of flow ``key`` (``key`` as the client side names it),
        for shells that see both directions (bypassed flows)."""
        flow = self._flows.get(key)
        if flow is None:
            return
        flow.last_seen = now
        if flags & _CTL:
            self._advance(flow, flags, reply=True)

    def set_state(self, key: Hashable, state: State, now: float) -> None:
        """The owner (e.g. the user-space endpoint) knows better: record ``state``."""
        flow = self._flows.get(key)
        if flow is not None:
            flow.state = state
            flow.last_seen = now
            self._settle(flow)

    def remove(self, key: Hashable) -> Flow | None:
        flow = self._flows.pop(key, None)
        if flow is not None:
            self._done_packets[flow.action] += flow.packets
            self._closed.pop(key, None)
            self._half_open.pop(key, None)
            src = key[0]  # type: ignore[index]
            n = self._per_source[src] - 1
            if n:
                self._per_source[src] = n
            else:
                del self._per_source[src]
        return flow

    def next_timer(self) -> float | None:
        """Earliest time :meth:`expire` may have work (possibly early, never late)."""
        return self._heap[0][0] if self._heap else None

    def expire(self, now: float) -> list[Flow]:
        """Remove and return every flow idle longer than its state's timeout at ``now``."""
        gone = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, key = heapq.heappop(heap)
            flow = self._flows.get(key)
            if flow is None:
                continue  # removed earlier; its heap entry was left behind
            deadline = flow.last_seen + self.timeouts.of(flow.state)
            if deadline <= now:
                self.remove(key)
                self._counters.expired += 1
                gone.append(flow)
            else:
                self._push(deadline, key)
        return gone

    def counters(self) -> Counters:
        """A snapshot of the counters; packets include flows still in the table."""
        c = self._counters
        packets = dict(self._done_packets)
        for flow in self._flows.values():
            packets[flow.action] += flow.packets
        return dataclasses.replace(c, flows=dict(c.flows), packets=packets)

    def states(self) -> dict[State, int]:
        out = dict.fromkeys(State, 0)
        for flow in self._flows.values():
            out[flow.state] += 1
        return out

    # -- slow path -------------------------------------------------------------------

    def sources(self) -> int:
        """Source addresses with at least one entry."""
        return len(self._per_source)

    def _slow_path(self, key: Hashable, now: float) -> Action:
        """A SYN of a new flow: the rules, then (for flows that pass) the quotas and a
        SYN_SEEN entry. A denied or dropped flow keeps nothing: its answer needs no state."""
        self.remove(key)  # a closed flow's tuple used again
        action = self.decide(key)
        if action is Action.DENY or action is Action.DROP:
            self._counters.flows[action] += 1
            return action
        if not self._room(key[0], now, rate=True):  # type: ignore[index]
            return Action.DROP
        flow = Flow(key, action, State.SYN_SEEN, now)
        flow.packets = 1
        self._add(flow, now)
        self._counters.flows[action] += 1
        return action

    def _room(self, src: object, now: float, rate: bool) -> bool:
        """Whether a new entry of ``src`` fits its quotas and the table (making room by
        early drop when the table is full); refusals are counted."""
        c = self._counters
        if self._per_source.get(src, 0) >= self.max_per_source:
            c.source_full += 1
            return False
        if rate:
            second = int(now)
            if second != self._second:
                self._second = second
                self._new.clear()
            n = self._new.get(src, 0)
            if n >= self.new_per_source or (not n and len(self._new) >= self.max_flows):
                c.source_rate += 1
                return False
            self._new[src] = n + 1
        if len(self._flows) >= self.max_flows:
            self.expire(now)
            if len(self._flows) >= self.max_flows:
                victims = self._closed or self._half_open
                if not victims:
                    c.overflow += 1
                    return False
                self.remove(next(iter(victims)))
                c.evicted += 1
        return True

    def _add(self, flow: Flow, now: float) -> None:
        key = flow.key
        self._flows[key] = flow
        src = key[0]  # type: ignore[index]
        self._per_source[src] = self._per_source.get(src, 0) + 1
        self._settle(flow)
        self._push(now + self.timeouts.of(flow.state), key)

    def _push(self, deadline: float, key: Hashable) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, key))

    def _advance(self, flow: Flow, flags: int, reply: bool) -> None:
        """State change for one packet's flags. The heap entry is not touched: expiry
        recomputes the deadline from the state when the entry comes due, and a state
        whose timeout is shorter than the pending entry gets its own entry here."""
        old = flow.state
        if flags & RST:
            flow.state = State.CLOSED
        elif flags & FIN:
            if reply:
                flow.fin_reply = True
            else:
                flow.fin_orig = True
            flow.state = State.CLOSED if flow.fin_orig and flow.fin_reply else State.FIN_WAIT
        elif flow.state is State.SYN_SEEN and flags & ACK and not flags & SYN and not reply:
            flow.state = State.ESTABLISHED
        if flow.state is not old:
            self._settle(flow)
            if self.timeouts.of(flow.state) < self.timeouts.of(old):
                self._push(flow.last_seen + self.timeouts.of(flow.state), flow.key)

    def _settle(self, flow: Flow) -> None:
        """Keep the early-drop order (closed, then half-open flows, oldest change first)."""
        key = flow.key
        self._closed.pop(key, None)
        self._half_open.pop(key, None)
        if flow.state is State.CLOSED:
            self._closed[key] = None
        elif flow.state is State.SYN_SEEN:
            self._half_open[key] = None
