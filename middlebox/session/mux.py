"""Connections over paths: the sans-I/O core shared by gateway and node.

One :class:`Mux` per session (a gateway and the node's view of that gateway) carries
many TCP connections over several paths. It knows no socket and no clock: the shell
feeds it messages it decoded (:meth:`Mux.receive`), path news (:meth:`Mux.path_up`,
:meth:`Mux.path_down`, :meth:`Mux.update_path`), bytes from its side's TCP
(:meth:`Mux.send`, :meth:`Mux.shutdown`), and the time; it hands back messages to write
on named paths (:meth:`Mux.messages_to_send`), events (:meth:`Mux.next_event`) and the
time it next wants to be woken (:meth:`Mux.next_timer`).

Per connection and direction (docs/PROTOCOL.md has the messages):

* **Send queue.** Bytes from :meth:`Mux.send` are kept in one buffer from the lowest
  unacknowledged offset on, bounded by ``buffer_bytes`` (:meth:`send` accepts only what
  fits, so the shell shrinks the TCP window it advertises). The queue is cut into DATA
  messages at an adaptive size: a connection with a long queue doubles its message size
  (fewer, larger messages: Python pays per message) up to the largest payload, and one
  that runs dry falls back towards ``message_size``; a message is never larger than
  the room its path has.
* **Nothing is lost.** Every message stays buffered until a DATA_ACK covers it, by the
  cumulative ``ack`` or a selective range. When its path goes down, or the path has
  been silent (nothing it carried acknowledged, its socket's acknowledged bytes not
  advancing) for the path's stall threshold since the message was sent, it is sent again
  on another path (the receiver keeps the first copy of each byte and drops the rest).
* **Flow control.** The receiver advertises ``window`` so that ``ack + window`` is
  ``consumed`` plus the connection's window: a right edge that never moves backwards,
  whatever order the DATA_ACKs arrive in. The window starts at ``buffer_bytes`` and
  doubles, up to ``buffer_max``, whenever more than half of it is held behind a hole
  (bytes that arrived on fast paths while the byte the reader needs next is still on a
  slow one) while the reader keeps up (at most a quarter of the window waits unread):
  the connection then waits on its slowest path, and a larger window lets the others
  keep sending meanwhile. A reader that is merely slow never makes it grow, and when the
  reader falls behind a grown window falls back to ``buffer_bytes`` (its edge stops
  advancing until then). The sender never sends beyond the highest edge it has seen
  (before the first DATA_ACK: :data:`INITIAL_WINDOW`); it holds ``buffer_bytes``,
  doubled (up to ``buffer_max``, as the budget allows) each time all of it went out on
  the paths while the peer's window was still open (the buffer, not the paths, held the
  connection: a download on fast paths whose acknowledgements take a long round trip),
  or while a hole holds the front twice what the peer has acknowledged beyond it. Bytes
  leave the receive buffer only when the shell takes them with :meth:`Mux.read`, so a
  slow reader closes the window all the way back to the client's TCP window.
* **FIN, RST, half-close.** Each direction ends on its own with FIN (stream length,
  retransmitted until acknowledged as one extra sequence number); RST aborts both
  directions and goes out on every path. A connection ends when both FINs are
  acknowledged and everything received has been read; it then lingers as a tombstone
  that answers late duplicates instead of resetting them.
* **Holes and memory.** Data above the next byte needed waits in the connection's
  :class:`~middlebox.session.reorder.Reorder` store: O(log n) per message whatever the
  hole pattern, and its memory counted as bytes plus a cost per piece and per run. The
  bytes are bounded by the window; the bookkeeping beyond them by ``reorder_overhead``:
  a peer that cuts more holes than that (a legitimate sender's holes are one per message
  in flight on a slower path) is reset and counted (``reorder_overflow``). Resetting is
  the choice because dropping the pieces would not do: a sender resends only when a
  path goes silent, so a dropped piece on a delivering path would never come again.
* **Budget.** The bytes a connection holds (send buffer, received and out-of-order
  data) are charged to a :class:`Budget` (at the node one per session inside one per
  process, at the gateway one per process). As it fills, new connections get smaller
  windows (down to :data:`INITIAL_WINDOW`) and windows stop growing, and the send side
  takes no more than the budget has free beyond :data:`INITIAL_WINDOW` per connection:
  the limit is applied by what is advertised and accepted, never by dropping data.
  The budget is shared fairly among the connections' sources (the passengers, from
  OPEN): while a source holds less than an even share of it, its connections keep full
  windows and send room however short the budget is, so one passenger that fills the
  budget squeezes its own new connections, not the others' (HAProxy's per-source
  limits). What fair sources hold stays within the budget, so a process holds at most
  twice its budget plus the windows it had advertised.
* **OPEN.** The gateway's OPEN and any data sent before OPEN_OK go on one path (pinned)
  so the node never sees data of a connection it does not know yet; if that path dies,
  OPEN and the data are sent again on another. The node reports OPEN as an event and
  answers with :meth:`Mux.accept` (OPEN_OK) or :meth:`Mux.refuse` (OPEN_FAIL). Beyond
  ``max_connections`` the node's mux answers OPEN_FAIL (no resources) itself.

Path choice goes through a policy ``decide(info, paths, now) -> tuple of path ids`` (the
interface the scheduler package fills; several ids send copies). ``info`` is the
scheduler's own record, :class:`scheduler.context.MessageInfo` (a plain dataclass: the
core imports nothing else of the scheduler), of kind ``data``, ``reinjection`` (sent
again after a stall or a lost path), ``control`` (OPEN, OPEN_OK, OPEN_FAIL, FIN) or
``ack`` (DATA_ACK). The built-in :func:`lowest_rtt_policy` takes the path with the
lowest smoothed RTT among those with room.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from middlebox.session.reorder import Reorder
from middlebox.session.wire import (
    DATA_FIXED,
    MAX_SACK_RANGES,
    U32,
    Data,
    DataAck,
    Datagram,
    Fin,
    Message,
    Open,
    OpenFail,
    OpenFailReason,
    OpenOk,
    Rst,
    RstReason,
)
from scheduler.context import ACK, CONTROL, DATA, DATAGRAM, REINJECTION, MessageInfo

INITIAL_WINDOW = 64 << 10  # bytes a sender may send before the first DATA_ACK (the
# smallest buffer_bytes a peer may configure, so it never overflows a conforming receiver)
SWS_MIN = 1024  # do not cut a message smaller than this while more is queued (silly window)
MESSAGE_OVERHEAD = 8 + DATA_FIXED  # header and DATA fields, counted against a path's room
DATAGRAM_QUEUE = 256  # datagrams waiting for the next messages_to_send; older ones dropped
BUDGET_SLACK = 4  # a budget with less free than this many windows shrinks new ones
# Upper bounds of the buckets of a path's send-to-DATA_ACK histograms (the last bucket
# takes the rest): seconds, and multiples of the stall deadline the message had.
ACK_DELAY_BOUNDS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
ACK_DEADLINE_BOUNDS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)


@dataclass(frozen=True)
class MuxParams:
    """The knobs of a session; the configuration maps onto them (``Config.mux_params``),
    so the core never imports it."""

    buffer_bytes: int = 4 << 20  # receive window and send buffer bound, per connection
    buffer_max: int = 32 << 20  # ... to which they may grow (a hole; a send buffer all in flight)
    message_size: int = 16 << 10  # first DATA payload size; adapted per connection
    max_data: int = (256 << 10) - DATA_FIXED  # largest DATA payload the peer accepts
    stall_min: float = 0.5  # seconds without DATA_ACK before a message is sent again
    stall_rtt_factor: float = 3.0  # ... or this many (srtt + 4 rttvar) of its path if longer
    paths_lost_timeout: float = 30.0  # no path up this long: reset every connection
    linger: float = 10.0  # seconds a finished connection answers late duplicates
    reorder_overhead: int = 512 << 10  # bookkeeping bytes of held out-of-order pieces, per conn
    max_connections: int = 1 << 22  # node: OPENs beyond it are refused (no resources)


class Budget:
    """Bytes the connections' buffers may hold; ``parent`` (the process's, for a node's
    session) is charged too, and the tighter of the two says what is free.

    The muxes charge what their connections hold (:meth:`add`); they read :meth:`free`
    to choose windows and send room. ``held`` may exceed ``limit`` by the windows already
    advertised: a window is never taken back, so the bound is approached, not enforced
    by dropping."""

    __slots__ = ("limit", "held", "parent", "peak")

    def __init__(self, limit: int, parent: Budget | None = None) -> None:
        self.limit = limit
        self.held = 0
        self.parent = parent
        self.peak = 0

    def add(self, n: int) -> None:
        self.held += n
        if self.held > self.peak:
            self.peak = self.held
        if self.parent is not None:
            self.parent.add(n)

    def free(self) -> int:
        free = self.limit - self.held
        if self.parent is not None:
            free = min(free, self.parent.free())
        return free

    def status(self) -> dict[str, int]:
        return {"held": self.held, "limit": self.limit, "peak": self.peak, "free": self.free()}


@dataclass
class PathState:
    """What the core knows of one path; the shell keeps it current.

    ``progress`` is the last time the path showed that it delivers: the shell reports
    its kernel socket's acknowledged bytes advancing (or nothing in flight), and a
    DATA_ACK covering a message sent only on this path counts too. The stall rule reads
    it (a message is resent only when its path has gone silent, see
    :meth:`Mux.handle_timer`); the counters below it are for ``mpproxy status`` and the
    emulation reports.
    """

    id: int
    up: bool = True
    srtt: float = 0.1  # seconds (TCP_INFO srtt, or PROBE)
    rttvar: float = 0.05
    room: int = 1 << 20  # bytes the path accepts now (e.g. NOTSENT_LOWAT minus notsent)
    queued: int = 0  # bytes committed to the path that have not left yet (the shell says)
    progress: float = 0.0
    sent_bytes: int = 0
    sent_messages: int = 0
    stall_resends: int = 0  # messages sent again because this path went silent
    resent_messages: int = 0  # copies of earlier messages sent on this path
    resent_bytes: int = 0
    duplicates: int = 0  # received on this path, nothing new in it (a needless copy)
    duplicate_bytes: int = 0
    acked: int = 0  # messages sent once, on this path only, acknowledged
    late: int = 0  # ... of which acknowledged after the stall deadline they had
    ack_delay: list[int] = field(default_factory=lambda: [0] * (len(ACK_DELAY_BOUNDS) + 1))
    ack_deadline: list[int] = field(default_factory=lambda: [0] * (len(ACK_DEADLINE_BOUNDS) + 1))

    def stall_after(self, params: MuxParams) -> float:
        return max(params.stall_min, params.stall_rtt_factor * (self.srtt + 4 * self.rttvar))


Policy = Callable[[MessageInfo, Sequence[PathState], float], tuple[int, ...]]


def lowest_rtt_policy(info: MessageInfo, paths: Sequence[PathState], now: float) -> tuple[int, ...]:
    """One path: the lowest smoothed RTT among the paths that are up and have room
    (control and ACK messages are small and go regardless of room), preferring paths
    the message has not used yet. An ACK goes back on the path its data came in on
    when that path is up: that path demonstrably works, while the fastest one may be
    silently dropping everything."""
    small = info.kind in (CONTROL, ACK)
    if info.prefer is not None:
        for p in paths:
            if p.id == info.prefer and p.up:
                return (p.id,)
    usable = [p for p in paths if p.up and (small or p.room > 0)]
    fresh = [p for p in usable if p.id not in info.avoid]
    pool = fresh or ([] if info.kind == REINJECTION else usable)
    if not pool:
        return ()
    return (min(pool, key=lambda p: (p.srtt, p.id)).id,)


def _histogram(bounds: tuple[float, ...], counts: list[int]) -> dict[str, int]:
    """Bucket counts keyed by upper bound ("<=0.05", ..., ">5")."""
    out = {f"<={b:g}": n for b, n in zip(bounds, counts, strict=False)}
    out[f">{bounds[-1]:g}"] = counts[-1]
    return out


# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenRequested:
    """Node: the gateway asks for a connection; answer with accept() or refuse()."""

    conn_id: int
    open: Open


@dataclass(frozen=True)
class Opened:
    """Gateway: the node reached the destination (OPEN_OK)."""

    conn_id: int


@dataclass(frozen=True)
class OpenFailed:
    """Gateway: the node could not reach the destination; reset the client."""

    conn_id: int
    reason: OpenFailReason


@dataclass(frozen=True)
class Readable:
    """Bytes wait in the connection's receive buffer: call read()."""

    conn_id: int


@dataclass(frozen=True)
class Writable:
    """send() refused bytes earlier and there is room again."""

    conn_id: int


@dataclass(frozen=True)
class PeerFinished:
    """The peer's direction has ended and every byte of it has arrived; after reading
    the rest of the buffer, shut down this side's writing to its TCP peer."""

    conn_id: int


@dataclass(frozen=True)
class Reset:
    """The connection is aborted (by the peer's RST or locally, e.g. all paths lost)."""

    conn_id: int
    reason: RstReason
    by_peer: bool


@dataclass(frozen=True)
class Closed:
    """Both directions finished cleanly; the connection is gone."""

    conn_id: int


Event = OpenRequested | Opened | OpenFailed | Readable | Writable | PeerFinished | Reset | Closed


# -- connection state ----------------------------------------------------------------------


_CONN_MESSAGES = frozenset({Open, OpenOk, OpenFail, Data, DataAck, Fin, Rst})


class ConnState(Enum):
    OPENING = "opening"  # gateway: OPEN sent, no answer yet; node: waiting for accept()
    OPEN = "open"


class _Inflight:
    """A message (a byte range, or the FIN) waiting for its DATA_ACK."""

    __slots__ = ("seq", "end", "fin", "paths", "sent_at", "queued", "tries", "deadline")

    def __init__(self, seq: int, end: int, fin: bool, path: int, now: float) -> None:
        self.seq = seq
        self.end = end
        self.fin = fin
        self.paths = [path]
        self.sent_at = now
        self.queued = False  # in the connection's retransmission queue
        self.tries = 0  # retransmissions so far (backs the stall timer off)
        self.deadline = 0.0  # the stall interval it was given when last sent


class Conn:
    """Both directions of one connection. Shells read the public counters only."""

    def __init__(self, conn_id: int, state: ConnState, params: MuxParams) -> None:
        self.id = conn_id
        self.state = state
        self.open_msg: Open | None = None
        self.pinned: int | None = None  # the path of OPEN while OPENING (gateway)
        # send side
        self.sbuf = bytearray()  # stream bytes from sbase on: in flight, then unsent
        self.sbase = 0  # lowest unacknowledged offset
        self.snd_nxt = 0  # next offset to cut into a new message
        self.peer_edge = INITIAL_WINDOW  # highest ack + window seen
        self.sack_top = 0  # highest byte the peer acknowledged selectively
        self.inflight: dict[int, _Inflight] = {}
        self.rtx: deque[_Inflight] = deque()
        self.fin_wanted = False
        self.fin_seq: int | None = None
        self.fin_acked = False
        self.target = params.message_size
        self.send_cap = params.buffer_bytes  # grows while the buffer, not the paths, limits
        self.blocked = False
        self.window = params.buffer_bytes  # what we let the peer send beyond what was read
        self.charged = 0  # bytes held, as last charged to the budget
        # receive side
        self.rcv_nxt = 0
        self.rbuf = bytearray()
        self.consumed = 0
        self.store = Reorder()  # what arrived above rcv_nxt
        self.peer_fin: int | None = None
        self.eof = False  # peer's FIN reached: every byte below it has arrived
        self.ack_due = False
        self.adv_edge = 0  # right edge last advertised
        self.max_seen = 0  # highest byte offset received + 1
        self.rx_path: int | None = None  # path the latest DATA or FIN came in on
        # counters
        self.bytes_sent = 0
        self.retransmits = 0
        self.duplicates = 0

    @property
    def queued_bytes(self) -> int:
        """Bytes held by the send side: in flight and not yet sent."""
        return len(self.sbuf)

    def send_limit(self, params: MuxParams) -> int:
        """Bytes the send side may hold: ``send_cap`` (``buffer_bytes``, doubled each time
        the whole buffer went out on the paths while the peer's window was open), or
        while a hole holds the front (the peer acknowledged bytes beyond it selectively)
        twice the span from the hole to the highest byte acknowledged; at most
        ``buffer_max``: the sender's side of the window growth (the peer grows its window
        when a hole holds the front)."""
        return min(params.buffer_max, max(self.send_cap, 2 * (self.sack_top - self.sbase)))

    def held(self) -> int:
        """Bytes this connection holds: send buffer, received and out-of-order data."""
        return len(self.sbuf) + len(self.rbuf) + self.store.memory

    @property
    def unsent(self) -> int:
        return self.sbase + len(self.sbuf) - self.snd_nxt

    def ack_value(self) -> int:
        return self.rcv_nxt + 1 if self.eof else self.rcv_nxt


class _Tombstone:
    """What is left of a connection for ``linger`` seconds after it ended."""

    __slots__ = ("expires", "final_ack", "answer", "reset")

    def __init__(
        self,
        expires: float,
        final_ack: DataAck | None,
        answer: Message | None,
        reset: Rst | None = None,
    ) -> None:
        self.expires = expires
        self.final_ack = final_ack  # answers late DATA / FIN of a cleanly closed connection
        self.answer = answer  # answers a repeated OPEN (OPEN_FAIL)
        self.reset = reset  # we aborted it: repeated once if the peer still speaks of it


# -- the session ---------------------------------------------------------------------------


class Mux:
    """Connections of one session over its paths; ``side`` is "gateway" or "node"."""

    def __init__(
        self,
        side: str,
        params: MuxParams | None = None,
        policy: Policy = lowest_rtt_policy,
        budget: Budget | None = None,
        first_conn_id: int = 1,
    ) -> None:
        if side not in ("gateway", "node"):
            raise ValueError("side must be 'gateway' or 'node'")
        self.side = side
        self.params = params or MuxParams()
        self.policy = policy
        self.budget = budget  # None: no bound but the per-connection windows
        self.held = 0  # bytes the connections hold (what is charged to the budget)
        self._sources: dict[object, list[int]] = {}  # source -> [bytes held, connections]
        self.paths: dict[int, PathState] = {}
        self.conns: dict[int, Conn] = {}
        self._tombs: dict[int, _Tombstone] = {}
        self._tomb_heap: list[tuple[float, int]] = []  # (expiry, conn id), checked lazily
        self._events: deque[Event] = deque()
        # (conn id, message, on every path that is up)
        self._control: deque[tuple[int, Message, bool]] = deque()
        self._now = 0.0  # the latest time any call told us, for the few that take none
        self._stalls: list[tuple[float, int, int, float]] = []  # deadline, conn, seq, sent_at
        self._next_id = first_conn_id  # a gateway's muxes to several nodes use disjoint ids
        self._all_down_since: float | None = None
        self.counters = {
            "messages_sent": 0,
            "retransmits": 0,
            "stall_retransmits": 0,
            "duplicates": 0,
            "resets_sent": 0,
            "unknown_connection": 0,
            "window_grown": 0,
            "send_grown": 0,  # send buffers doubled (all of it on the paths, window open)
            "reorder_overflow": 0,  # connections reset: their holes cost beyond reorder_overhead
            "open_over_limit": 0,  # OPENs refused: max_connections reached
            "windows_shrunk": 0,  # connections started with less than buffer_bytes (budget)
            "growth_held": 0,  # window growths the budget did not allow
            "windows_fair": 0,  # full windows to a source below its share of a short budget
            "datagrams_sent": 0,  # DATAGRAM messages placed (each copy counted)
            "datagrams_no_path": 0,  # dropped: no path up (or none the policy would take)
            "datagrams_overflow": 0,  # dropped: more than DATAGRAM_QUEUE waiting
        }
        self._datagrams: deque[tuple[Datagram, str]] = deque()  # (message, flow class)

    # -- paths -------------------------------------------------------------------------

    def path_up(self, path_id: int, now: float, srtt: float = 0.1, room: int = 1 << 20) -> None:
        self._now = now
        p = self.paths.get(path_id)
        if p is None:
            self.paths[path_id] = PathState(path_id, True, srtt, srtt / 2, room, progress=now)
        else:
            p.up, p.srtt, p.room, p.progress = True, srtt, room, now
        self._all_down_since = None

    def update_path(
        self,
        path_id: int,
        *,
        srtt: float | None = None,
        rttvar: float | None = None,
        room: int | None = None,
        progress: float | None = None,
        queued: int | None = None,
    ) -> None:
        """``progress``: a time at which the path was seen delivering (its socket's
        acknowledged bytes advanced, or it had nothing in flight)."""
        p = self.paths[path_id]
        if srtt is not None:
            p.srtt = srtt
        if rttvar is not None:
            p.rttvar = rttvar
        if room is not None:
            p.room = room
        if queued is not None:
            p.queued = queued
        if progress is not None and progress > p.progress:
            p.progress = progress

    def path_down(self, path_id: int, now: float) -> None:
        """The path broke: everything it carried without an ACK goes out again elsewhere."""
        self._now = now
        p = self.paths.get(path_id)
        if p is None or not p.up:
            return
        p.up = False
        p.room = 0
        up = {q.id for q in self.paths.values() if q.up}
        if not up and self._all_down_since is None:
            self._all_down_since = now
        for conn in self.conns.values():
            if conn.rcv_nxt or conn.peer_fin is not None:
                conn.ack_due = True  # our DATA_ACKs on that path may be lost with it
            if conn.state is ConnState.OPENING and conn.pinned == path_id:
                # OPEN and its early data go again, together, on one other path
                conn.pinned = None
                if conn.open_msg is not None:
                    self._control.append((conn.id, conn.open_msg, False))
                for inf in conn.inflight.values():
                    self._queue_rtx(conn, inf)
                continue
            for inf in conn.inflight.values():
                if path_id in inf.paths and not up.intersection(inf.paths):
                    self._queue_rtx(conn, inf)

    def remove_path(self, path_id: int, now: float) -> None:
        self.path_down(path_id, now)
        self.paths.pop(path_id, None)

    # -- connections: shell side -------------------------------------------------------

    def open(
        self,
        src_addr: object,
        src_port: int,
        dst_addr: object,
        dst_port: int,
        conn_id: int | None = None,
        **tcp_options: object,
    ) -> int:
        """Gateway: a client's SYN was captured; returns the connection id. Data may be
        sent at once (early accept); it waits on the OPEN's path."""
        if self.side != "gateway":
            raise RuntimeError("only the gateway opens connections")
        if conn_id is None:
            while self._next_id in self.conns or self._next_id in self._tombs:
                self._next_id = self._next_id % U32 + 1
            conn_id = self._next_id
            self._next_id = self._next_id % U32 + 1
        if conn_id in self.conns:
            raise ValueError(f"connection {conn_id} exists")
        self._tombs.pop(conn_id, None)
        msg = Open(conn_id, src_addr, src_port, dst_addr, dst_port, **tcp_options)  # type: ignore[arg-type]
        self._new_conn(conn_id, msg)
        self._control.append((conn_id, msg, False))
        return conn_id

    def _new_conn(self, conn_id: int, msg: Open) -> Conn:
        conn = Conn(conn_id, ConnState.OPENING, self.params)
        conn.open_msg = msg
        self._sources.setdefault(msg.src_addr, [0, 0])[1] += 1
        conn.window = self._start_window(msg.src_addr)
        conn.adv_edge = conn.window
        self.conns[conn_id] = conn
        return conn

    def _start_window(self, source: object) -> int:
        """A new connection's window: ``buffer_bytes`` while the budget has room for
        :data:`BUDGET_SLACK` of them or its source is below its share (:meth:`_fair`),
        less as it fills, never below INITIAL_WINDOW."""
        full = self.params.buffer_bytes
        if self.budget is None:
            return full
        free = self.budget.free()
        if free >= BUDGET_SLACK * full:
            return full
        if self._fair(source):
            self.counters["windows_fair"] += 1
            return full
        self.counters["windows_shrunk"] += 1
        return max(INITIAL_WINDOW, min(full, free // BUDGET_SLACK))

    def _fair(self, source: object) -> bool:
        """Whether ``source``'s connections hold less than an even share of the budget
        among the sources that have connections, by a window. One source alone never
        is: the budget's own rule applies."""
        n = len(self._sources)
        if n < 2 or self.budget is None:
            return False
        return self._sources[source][0] + self.params.buffer_bytes <= self.budget.limit // n

    def _account(self, conn: Conn) -> None:
        """Charge the budget with what ``conn`` holds now (after its buffers changed)."""
        delta = conn.held() - conn.charged
        if delta:
            conn.charged += delta
            self.held += delta
            self._sources[conn.open_msg.src_addr][0] += delta  # type: ignore[union-attr]
            if self.budget is not None:
                self.budget.add(delta)

    def _drop(self, conn_id: int) -> Conn | None:
        """Take a connection out of the table and its bytes off the budget."""
        conn = self.conns.pop(conn_id, None)
        if conn is None:
            return None
        src = conn.open_msg.src_addr  # type: ignore[union-attr]
        tally = self._sources[src]
        if conn.charged:
            self.held -= conn.charged
            tally[0] -= conn.charged
            if self.budget is not None:
                self.budget.add(-conn.charged)
            conn.charged = 0
        tally[1] -= 1
        if not tally[1]:
            del self._sources[src]
        return conn

    def accept(self, conn_id: int) -> None:
        """Node: the destination accepted; data may flow both ways."""
        conn = self.conns[conn_id]
        conn.state = ConnState.OPEN
        self._control.append((conn_id, OpenOk(conn_id), False))

    def refuse(self, conn_id: int, reason: OpenFailReason, now: float) -> None:
        """Node: the destination cannot be reached (or is not allowed)."""
        self._drop(conn_id)
        answer = OpenFail(conn_id, reason)
        self._control.append((conn_id, answer, False))
        self._bury(conn_id, now + self.params.linger, None, answer)

    def send(self, conn_id: int, data: bytes | bytearray | memoryview) -> int:
        """Queue bytes for the peer; returns how many fit (the rest must wait for a
        Writable event). Nothing is dropped: what is refused stays with the caller."""
        conn = self.conns[conn_id]
        if conn.fin_wanted:
            raise RuntimeError(f"connection {conn_id}: send after shutdown")
        n = min(self._send_room(conn), len(data))
        if n > 0:
            conn.sbuf += data[:n]
            self._account(conn)
        if n < len(data):
            conn.blocked = True
        return max(n, 0)

    def send_room(self, conn_id: int) -> int:
        return self._send_room(self.conns[conn_id])

    def _send_room(self, conn: Conn) -> int:
        """What the send side takes now: up to its limit, and no more than the budget
        has free (but every connection may hold INITIAL_WINDOW, so none is starved)."""
        held = len(conn.sbuf)
        room = conn.send_limit(self.params) - held
        if self.budget is not None and not self._fair(conn.open_msg.src_addr):  # type: ignore[union-attr]
            room = min(room, max(self.budget.free(), INITIAL_WINDOW - held))
        return max(room, 0)

    def shutdown(self, conn_id: int) -> None:
        """This side's direction ends after the bytes already queued (FIN)."""
        self.conns[conn_id].fin_wanted = True

    def read(self, conn_id: int, max_bytes: int = -1) -> bytearray:
        """Take received bytes out of the connection (this is what opens the window).
        The caller owns the returned buffer."""
        conn = self.conns.get(conn_id)
        if conn is None:
            return bytearray()
        n = len(conn.rbuf) if max_bytes < 0 else min(max_bytes, len(conn.rbuf))
        if n == len(conn.rbuf):  # all of it: hand the buffer over instead of copying
            out, conn.rbuf = conn.rbuf, bytearray()
        else:
            out = conn.rbuf[:n]
            del conn.rbuf[:n]
        conn.consumed += n
        if n:
            self._account(conn)
        if conn.window > self.params.buffer_bytes and len(conn.rbuf) > conn.window // 4:
            # the reader, not a hole, holds the connection now: the window falls back
            # (the advertised edge never moves back, it stops advancing meanwhile)
            conn.window = max(self.params.buffer_bytes, conn.adv_edge - conn.consumed)
        edge = conn.consumed + conn.window
        opened = edge - conn.adv_edge
        if opened >= conn.window // 4 or (opened > 0 and conn.adv_edge - conn.rcv_nxt < SWS_MIN):
            conn.ack_due = True  # tell the sender the window opened
        if not conn.rbuf:
            self._check_closed(conn)
        return out

    def abort(self, conn_id: int, reason: RstReason, now: float) -> None:
        """Reset the connection both ways; RST goes out on every path that is up."""
        if self._drop(conn_id) is None:
            return
        self._send_rst(conn_id, reason)
        self._bury(conn_id, now + self.params.linger, None, None, Rst(conn_id, reason))

    def pending(self, conn_id: int) -> bool:
        return conn_id in self.conns

    def unread(self, conn_id: int) -> int:
        """Bytes received for the connection that :meth:`read` has not taken yet (0 once
        it is gone): a shell passes the peer's FIN on, or closes, only when this is 0."""
        conn = self.conns.get(conn_id)
        return len(conn.rbuf) if conn is not None else 0

    def conn_ids(self) -> list[int]:
        """The connections held now, as a new list (the caller may abort them while it
        walks the list)."""
        return list(self.conns)

    def path_state(self, path_id: int) -> PathState | None:
        """What the mux knows of a path (the record policies see; read it, do not change
        it: :meth:`update_path` does), or None for a path it does not know."""
        return self.paths.get(path_id)

    def stats(self) -> dict:
        """A plain snapshot for ``mpproxy status`` and logs: counters, paths, connections."""
        return {
            "counters": dict(self.counters),
            "paths": {
                p.id: {
                    "up": p.up,
                    "srtt": p.srtt,
                    "room": p.room,
                    "sent_bytes": p.sent_bytes,
                    "sent_messages": p.sent_messages,
                    "stall_resends": p.stall_resends,
                    "resent_messages": p.resent_messages,
                    "resent_bytes": p.resent_bytes,
                    "duplicates_received": p.duplicates,
                    "duplicate_bytes_received": p.duplicate_bytes,
                    "acked": p.acked,
                    "acked_late": p.late,
                    "ack_delay_s": _histogram(ACK_DELAY_BOUNDS, p.ack_delay),
                    "ack_delay_per_deadline": _histogram(ACK_DEADLINE_BOUNDS, p.ack_deadline),
                }
                for p in self.paths.values()
            },
            "connections": {
                c.id: {
                    "state": c.state.value,
                    "queued_bytes": c.queued_bytes,
                    "in_flight": c.snd_nxt - c.sbase,
                    "received_unread": len(c.rbuf),
                    "window": c.window,
                    "bytes_sent": c.bytes_sent,
                    "bytes_received": c.rcv_nxt,
                    "retransmits": c.retransmits,
                    "duplicates": c.duplicates,
                }
                for c in self.conns.values()
            },
            "buffered_bytes": self.held,
            "memory": {
                **(self.budget.status() if self.budget is not None else {"held": self.held}),
                "sources": len(self._sources),
            },
        }

    # -- events and timers -------------------------------------------------------------

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def next_timer(self) -> float | None:
        t = self._stalls[0][0] if self._stalls else None
        if self._all_down_since is not None and self.conns:
            lost = self._all_down_since + self.params.paths_lost_timeout
            if t is None or lost < t:
                t = lost
        if self._tomb_heap:
            tomb = self._tomb_heap[0][0]
            if t is None or tomb < t:
                t = tomb
        return t

    def handle_timer(self, now: float) -> None:
        self._now = now
        stalls = self._stalls
        while stalls and stalls[0][0] <= now:
            _, cid, seq, sent_at = heapq.heappop(stalls)
            conn = self.conns.get(cid)
            if conn is None or conn.state is ConnState.OPENING:
                continue  # OPENING: everything rides the pinned path; only its loss matters
            inf = conn.inflight.get(seq)
            if inf is None or inf.sent_at != sent_at or inf.queued:
                continue
            p = self.paths.get(inf.paths[-1])
            if p is not None and p.up and p.progress > sent_at:
                # The path delivered since the message went out: it is on its way
                # behind the bytes ahead of it (a path is one in-order TCP stream).
                # A resend now would only duplicate it; wait until the path has been
                # silent for the whole interval.
                due = p.progress + inf.deadline
                if due > now:
                    heapq.heappush(stalls, (due, cid, seq, sent_at))
                    continue
            if p is not None:
                p.stall_resends += 1
            self.counters["stall_retransmits"] += 1
            self._queue_rtx(conn, inf)
        if self.conns and not any(p.up for p in self.paths.values()):
            if self._all_down_since is None:
                self._all_down_since = now
            elif now - self._all_down_since >= self.params.paths_lost_timeout:
                for cid in list(self.conns):
                    # the RST waits for a path: a peer that kept its end (its paths looked
                    # alive to it) learns of the reset when one comes back
                    self.abort(cid, RstReason.PATHS_LOST, now)
                    self._events.append(Reset(cid, RstReason.PATHS_LOST, by_peer=False))
        heap = self._tomb_heap
        while heap and heap[0][0] <= now:
            _, cid = heapq.heappop(heap)
            tomb = self._tombs.get(cid)
            if tomb is not None and tomb.expires <= now:
                del self._tombs[cid]

    # -- receiving ---------------------------------------------------------------------

    def receive(self, path_id: int, msg: Message, now: float) -> None:
        """A connection-level message decoded from path ``path_id``."""
        t = type(msg)
        if t not in _CONN_MESSAGES:
            raise ValueError(f"not a connection-level message: {type(msg).__name__}")
        self._now = now
        cid = msg.conn_id  # type: ignore[attr-defined]
        conn = self.conns.get(cid)
        if t is Open:
            return self._on_open(msg, conn)  # type: ignore[arg-type]
        if conn is None:
            return self._on_unknown(cid, msg, now)
        if t is Data:
            conn.rx_path = path_id
            self._on_data(conn, msg, now)  # type: ignore[arg-type]
        elif t is DataAck:
            self._on_ack(conn, msg, now)  # type: ignore[arg-type]
        elif t is Fin:
            conn.rx_path = path_id
            self._on_fin(conn, msg, now)  # type: ignore[arg-type]
        elif t is Rst:
            self._drop(cid)
            self._events.append(Reset(cid, msg.reason, by_peer=True))  # type: ignore[attr-defined]
        elif t is OpenOk and self.side == "gateway":
            if conn.state is ConnState.OPENING:
                conn.state = ConnState.OPEN
                conn.pinned = None
                self._events.append(Opened(cid))
        elif t is OpenFail and self.side == "gateway":
            self._drop(cid)
            self._bury(cid, now + self.params.linger, None, None)
            self._events.append(OpenFailed(cid, msg.reason))  # type: ignore[attr-defined]
        else:
            self._protocol_error(conn, now)

    def _on_open(self, msg: Open, conn: Conn | None) -> None:
        cid = msg.conn_id
        if self.side != "node":
            return
        if conn is not None:
            if conn.open_msg != msg:
                self._control.append((cid, OpenFail(cid, OpenFailReason.DUPLICATE_ID), False))
            elif conn.state is ConnState.OPEN:
                self._control.append((cid, OpenOk(cid), False))  # lost with a path
            return
        tomb = self._tombs.get(cid)
        if tomb is not None:
            if tomb.answer is not None:
                self._control.append((cid, tomb.answer, False))
            return
        if len(self.conns) >= self.params.max_connections:
            # the session's share of the node: the gateway resets its client
            self.counters["open_over_limit"] += 1
            answer = OpenFail(cid, OpenFailReason.NO_RESOURCES)
            self._control.append((cid, answer, False))
            self._bury(cid, self._now + self.params.linger, None, answer)
            return
        self._new_conn(cid, msg)
        self._events.append(OpenRequested(cid, msg))

    def _on_unknown(self, cid: int, msg: Message, now: float) -> None:
        tomb = self._tombs.get(cid)
        t = type(msg)
        if tomb is not None:
            if tomb.final_ack is not None and t in (Data, Fin):
                self._control.append((cid, tomb.final_ack, False))
            elif tomb.reset is not None and t is not Rst:
                # the peer missed our RST (all its copies lost, or the OPEN overtook
                # it): say it once more
                self._control.append((cid, tomb.reset, True))
                tomb.reset = None
            return
        if t is Rst:
            # an RST that overtook its OPEN (they may travel on different paths):
            # remember it, so the late OPEN is ignored instead of connecting
            self._bury(cid, now + self.params.linger, None, None)
            return
        if t in (Data, DataAck, Fin):
            self.counters["unknown_connection"] += 1
            self._send_rst(cid, RstReason.UNKNOWN_CONNECTION)
            # one RST per burst of such messages, not one per message
            self._bury(cid, now + self.params.stall_min, None, None)

    def _on_data(self, conn: Conn, msg: Data, now: float) -> None:
        seq = msg.seq
        payload = msg.payload
        end = seq + len(payload)
        if end > conn.consumed + conn.window:
            return self._reset(conn, RstReason.BUFFER_OVERFLOW, now)
        if conn.peer_fin is not None and end > conn.peer_fin:
            return self._protocol_error(conn, now)
        conn.ack_due = True
        if end > conn.max_seen:
            conn.max_seen = end
        rcv_nxt = conn.rcv_nxt
        if end <= rcv_nxt:
            return self._duplicate(conn, end - seq)
        if seq < rcv_nxt:
            payload = payload[rcv_nxt - seq :]
            seq = rcv_nxt
        was_empty = not conn.rbuf
        store = conn.store
        if seq == rcv_nxt and not store:
            conn.rbuf += payload  # in order, nothing waiting: the common case
            conn.rcv_nxt = end
            self._account(conn)
        else:
            if not store.insert(seq, end, payload):  # keeps the first copy of each byte
                self._duplicate(conn, end - seq)
            if store.overhead > self.params.reorder_overhead:
                self.counters["reorder_overflow"] += 1
                return self._reset(conn, RstReason.BUFFER_OVERFLOW, now)
            self._deliver(conn)
            self._account(conn)
            if (
                conn.max_seen - conn.rcv_nxt > conn.window // 2
                and len(conn.rbuf) <= conn.window // 4
                and conn.window < self.params.buffer_max
            ):
                # half the window waits behind a hole: the connection is held by its
                # slowest path; let the other paths go on (see the module text)
                grown = min(self.params.buffer_max, conn.window * 2)
                if self._may_grow(conn, grown - conn.window):
                    conn.window = grown
                    conn.ack_due = True
                    self.counters["window_grown"] += 1
        if was_empty and conn.rbuf:
            self._events.append(Readable(conn.id))
        self._check_eof(conn)

    def _may_grow(self, conn: Conn, more: int) -> bool:
        """Whether the budget allows a window ``more`` bytes larger (with the slack new
        windows get: growth stops before new connections are squeezed), or the
        connection's source is below its share."""
        if self.budget is None or self.budget.free() >= BUDGET_SLACK * more:
            return True
        if self._fair(conn.open_msg.src_addr):  # type: ignore[union-attr]
            return True
        self.counters["growth_held"] += 1
        return False

    def _duplicate(self, conn: Conn, size: int) -> None:
        """A message that brought nothing new: a needless copy (counted per path too)."""
        conn.duplicates += 1
        self.counters["duplicates"] += 1
        p = self.paths.get(conn.rx_path) if conn.rx_path is not None else None
        if p is not None:
            p.duplicates += 1
            p.duplicate_bytes += size

    def _deliver(self, conn: Conn) -> None:
        store = conn.store
        if store.first() == conn.rcv_nxt:
            end, pieces = store.pop_first()  # runs never touch: one is all there is
            for piece in pieces:
                conn.rbuf += piece
            conn.rcv_nxt = end

    def _on_fin(self, conn: Conn, msg: Fin, now: float) -> None:
        if conn.peer_fin is not None and conn.peer_fin != msg.final_seq:
            return self._protocol_error(conn, now)
        if msg.final_seq < conn.max_seen:
            return self._protocol_error(conn, now)
        conn.peer_fin = msg.final_seq
        conn.ack_due = True
        self._check_eof(conn)

    def _check_eof(self, conn: Conn) -> None:
        if not conn.eof and conn.peer_fin is not None and conn.rcv_nxt == conn.peer_fin:
            conn.eof = True
            conn.ack_due = True
            self._events.append(PeerFinished(conn.id))
            self._check_closed(conn)

    def _on_ack(self, conn: Conn, msg: DataAck, now: float) -> None:
        ack = msg.ack
        top = conn.snd_nxt + (1 if conn.fin_seq is not None else 0)
        if ack > top or any(e > top for _, e in msg.ranges):
            return self._protocol_error(conn, now)
        data_ack = min(ack, conn.snd_nxt)
        if data_ack > conn.sbase:
            del conn.sbuf[: data_ack - conn.sbase]
            conn.sbase = data_ack
            self._account(conn)
            done = []
            for seq, inf in conn.inflight.items():  # insertion order is sequence order
                if inf.end > ack:
                    break
                done.append(seq)
            for seq in done:
                self._acked(conn.inflight.pop(seq), now)
        if msg.ranges:
            # one merge pass: messages (disjoint, in sequence order) against the ranges
            # (disjoint, ascending, as the codec enforces); a message is covered by the
            # first range that ends at or after it, or by none
            ranges = msg.ranges
            nr = len(ranges)
            i = 0
            covered = []
            for q, inf in conn.inflight.items():
                end = inf.end
                while i < nr and ranges[i][1] < end:
                    i += 1
                if i == nr:
                    break
                if ranges[i][0] <= q:
                    covered.append(q)
            for seq in covered:
                self._acked(conn.inflight.pop(seq), now)
            conn.sack_top = max(conn.sack_top, max(e for _, e in ranges))
        if conn.rtx:
            conn.rtx = deque(i for i in conn.rtx if i.seq in conn.inflight)
        edge = ack + msg.window
        if edge > conn.peer_edge:
            conn.peer_edge = edge
        if conn.fin_seq is not None and ack > conn.fin_seq and not conn.fin_acked:
            conn.fin_acked = True
            self._check_closed(conn)
        if conn.blocked and self._send_room(conn) > 0:
            conn.blocked = False
            self._events.append(Writable(conn.id))

    def _acked(self, inf: _Inflight, now: float) -> None:
        """A message's DATA_ACK arrived: the delay histograms and the progress of its path
        (only for a message sent once on one path: a copy makes the carrier unknown)."""
        if inf.tries or len(inf.paths) != 1:
            return
        p = self.paths.get(inf.paths[0])
        if p is None:
            return
        delay = now - inf.sent_at
        p.acked += 1
        p.ack_delay[bisect_left(ACK_DELAY_BOUNDS, delay)] += 1
        d = inf.deadline
        p.ack_deadline[bisect_left(ACK_DEADLINE_BOUNDS, delay / d if d > 0 else 0.0)] += 1
        if delay > d:
            p.late += 1
        if now > p.progress:
            p.progress = now

    def _check_closed(self, conn: Conn) -> None:
        if conn.fin_acked and conn.eof and not conn.rbuf and self.conns.get(conn.id) is conn:
            self._drop(conn.id)
            final = DataAck(conn.id, conn.ack_value(), 0)
            # the peer may not have our final ACK yet; answer its repeats for a while
            self._bury(conn.id, self._now + self.params.linger, final, None)
            self._events.append(Closed(conn.id))

    def _bury(
        self,
        cid: int,
        expires: float,
        final_ack: DataAck | None,
        answer: Message | None,
        reset: Rst | None = None,
    ) -> None:
        self._tombs[cid] = _Tombstone(expires, final_ack, answer, reset)
        heapq.heappush(self._tomb_heap, (expires, cid))

    def _protocol_error(self, conn: Conn, now: float) -> None:
        self._reset(conn, RstReason.PROTOCOL_ERROR, now)

    def _reset(self, conn: Conn, reason: RstReason, now: float) -> None:
        self.abort(conn.id, reason, now)
        self._events.append(Reset(conn.id, reason, by_peer=False))

    # -- sending -----------------------------------------------------------------------

    def send_datagram(self, msg: Datagram, flow_class: str) -> None:
        """Queue one DATAGRAM for the next :meth:`messages_to_send`, which places it by
        the policy (kind ``datagram``, the flow's class) or drops it (counted): a
        datagram is never retransmitted and never waits for a path."""
        q = self._datagrams
        if len(q) >= DATAGRAM_QUEUE:
            q.popleft()
            self.counters["datagrams_overflow"] += 1
        q.append((msg, flow_class))

    def _send_datagrams(self, out: list, paths: list[PathState], now: float) -> None:
        q, counters = self._datagrams, self.counters
        while q:
            msg, cls = q.popleft()
            size = len(msg.payload) + DATA_FIXED
            ids = self.policy(MessageInfo(msg.flow_id, size, DATAGRAM, flow_class=cls), paths, now)
            if not ids:
                counters["datagrams_no_path"] += 1
                continue
            for pid in ids:
                out.append((pid, msg))
                self._charge(pid, size - DATA_FIXED)
            counters["datagrams_sent"] += len(ids)

    def output_pending(self) -> bool:
        """Whether :meth:`messages_to_send` may have anything to hand out (call it after
        :meth:`handle_timer`): a control message or datagram queued, or a connection
        with a DATA_ACK due, a copy to resend, bytes not yet sent or its FIN. While it
        is False, offering the paths' room and asking would change nothing."""
        if self._control or self._datagrams:
            return True
        for c in self.conns.values():
            if (
                c.ack_due
                or c.rtx
                or c.sbase + len(c.sbuf) > c.snd_nxt
                or (c.fin_wanted and c.fin_seq is None)
            ):
                return True
        return False

    def messages_to_send(self, now: float) -> list[tuple[int, Message]]:
        """Messages to write now, each with the path to write it on, in order."""
        self.handle_timer(now)
        self._now = now
        out: list[tuple[int, Message]] = []
        paths = list(self.paths.values())
        if not any(p.up for p in paths):
            self.counters["datagrams_no_path"] += len(self._datagrams)
            self._datagrams.clear()
            return out
        if self._control:
            self._send_control(out, paths, now)
        if self._datagrams:
            self._send_datagrams(out, paths, now)
        # One pass over the connections finds the three kinds of work, in connection
        # order (sending an ACK or a copy changes none of what the other lists hold)
        acks, rtx, new = [], [], []
        for c in self.conns.values():
            if c.ack_due:
                acks.append(c)
            if c.rtx:
                rtx.append(c)
            if c.sbase + len(c.sbuf) > c.snd_nxt or (c.fin_wanted and c.fin_seq is None):
                new.append(c)
        if acks:
            self._send_acks(out, acks, paths, now)
        for conn in rtx:
            self._send_rtx(conn, out, paths, now)
        if new:
            self._send_new(out, new, paths, now)
        self.counters["messages_sent"] += len(out)
        return out

    def _send_control(self, out: list, paths: list[PathState], now: float) -> None:
        keep: deque[tuple[int, Message, bool]] = deque()
        while self._control:
            cid, msg, everywhere = self._control.popleft()
            conn = self.conns.get(cid)
            is_open = type(msg) is Open
            if is_open and (conn is None or conn.state is not ConnState.OPENING):
                continue  # answered or gone meanwhile
            if is_open and self._pinned_path(conn) is not None:  # type: ignore[arg-type]
                continue  # already on a live path
            if everywhere:
                ids: tuple[int, ...] = tuple(p.id for p in paths if p.up)
            else:
                ids = self.policy(MessageInfo(cid, 32, CONTROL), paths, now)
            if not ids:
                keep.append((cid, msg, everywhere))
                continue
            if is_open:
                conn.pinned = ids[0]  # type: ignore[union-attr]
                ids = ids[:1]
            for pid in ids:
                out.append((pid, msg))
        self._control = keep

    def _send_acks(self, out: list, conns: list[Conn], paths: list[PathState], now: float) -> None:
        for conn in conns:
            ack = conn.ack_value()
            edge = conn.consumed + conn.window
            ranges = tuple(conn.store.ranges(MAX_SACK_RANGES))
            msg = DataAck(conn.id, ack, min(max(edge - ack, 0), U32), ranges)
            info = MessageInfo(conn.id, 32 + 16 * len(ranges), ACK, prefer=conn.rx_path)
            ids = self.policy(info, paths, now)
            if not ids:
                continue
            conn.ack_due = False
            conn.adv_edge = edge
            for pid in ids:
                out.append((pid, msg))

    def _send_rtx(self, conn: Conn, out: list, paths: list[PathState], now: float) -> None:
        while conn.rtx:
            inf = conn.rtx[0]
            if inf.seq not in conn.inflight:
                conn.rtx.popleft()
                inf.queued = False
                continue
            if conn.state is ConnState.OPENING:
                pid = self._pinned_path(conn)
                if pid is None:
                    return
                ids: tuple[int, ...] = (pid,)
            else:
                size = inf.end - max(inf.seq, conn.sbase)
                info = MessageInfo(
                    conn.id, size, REINJECTION, offset=inf.seq, avoid=tuple(inf.paths)
                )
                ids = self.policy(info, paths, now)
                if not ids:
                    # No fresh path with room: either the other paths are full (perhaps
                    # for good: a path that silently drops everything never drains) or
                    # the copy reached the peer and only its DATA_ACK was lost. Send it
                    # on the best path with room, even one it used: the receiver answers
                    # a duplicate with an ACK, and the stall timer backs off per try.
                    live = [p for p in paths if p.up and p.room > 0]
                    if not live:
                        return
                    ids = (min(live, key=lambda p: (p.srtt, p.id)).id,)
            conn.rtx.popleft()
            inf.queued = False
            msg = self._message_for(conn, inf)
            for pid in ids:
                out.append((pid, msg))
                self._charge(pid, inf.end - inf.seq)
                p = self.paths[pid]
                p.resent_messages += 1
                p.resent_bytes += inf.end - inf.seq
                if pid not in inf.paths:
                    inf.paths.append(pid)
            inf.sent_at = now
            inf.tries += 1
            conn.retransmits += 1
            self.counters["retransmits"] += 1
            self._arm(conn, inf, now)

    def _send_new(self, out: list, active: list[Conn], paths: list[PathState], now: float) -> None:
        while active:
            still = []
            for conn in active:
                if self._cut_one(conn, out, paths, now):
                    still.append(conn)
            active = still

    def _cut_one(self, conn: Conn, out: list, paths: list[PathState], now: float) -> bool:
        """Send one new message of ``conn``; True if it may have more to send now."""
        if conn.state is ConnState.OPENING and self.side == "node":
            return False  # the node sends nothing before accept()
        unsent = conn.unsent
        if unsent == 0:
            if conn.fin_wanted and conn.fin_seq is None:
                self._send_fin(conn, out, paths, now)
            return False
        allowance = conn.peer_edge - conn.snd_nxt
        want = min(conn.target, unsent, allowance, self.params.max_data)
        if want <= 0 or (want < SWS_MIN and want < unsent):
            return False  # window closed (or nearly): wait for the receiver to read
        # the last of the queue with the send buffer full: the buffer, not the application,
        # ran out (asked only of a queue's last message: the others cost nothing more)
        full = want == unsent and self._send_room(conn) < self.params.message_size
        if conn.state is ConnState.OPENING:
            pid = self._pinned_path(conn)
            if pid is None:
                return False
        else:
            info = MessageInfo(
                conn.id,
                want,
                DATA,
                offset=conn.snd_nxt,
                backlog=unsent - want,
                buffer_full=full,
            )
            ids = self.policy(info, paths, now)
            if not ids:
                return False
            pid = ids[0]
        room = self.paths[pid].room - MESSAGE_OVERHEAD
        size = min(want, room)
        if size <= 0 or (size < SWS_MIN and size < want):
            return False
        seq = conn.snd_nxt
        start = seq - conn.sbase
        msg = Data(conn.id, seq, conn.sbuf[start : start + size])  # one copy
        conn.snd_nxt += size
        conn.bytes_sent += size
        targets = (pid,) if conn.state is ConnState.OPENING else ids
        inf = _Inflight(seq, seq + size, False, pid, now)
        inf.paths = list(targets)
        conn.inflight[seq] = inf
        self._arm(conn, inf, now)
        for p in targets:
            out.append((p, msg))
            self._charge(p, size)
        if (
            full  # cutting a message leaves the send buffer as it was: still full
            and conn.unsent == 0
            and conn.send_cap < self.params.buffer_max
            and conn.peer_edge - conn.snd_nxt >= self.params.message_size
        ):
            self._grow_send(conn)
        # adapt: a long queue earns larger messages, a dry one returns to the base size
        if conn.unsent > conn.target:
            conn.target = min(self.params.max_data, conn.target * 2)
        elif conn.unsent == 0:
            conn.target = max(self.params.message_size, conn.target // 2)
        return conn.unsent > 0 or (conn.fin_wanted and conn.fin_seq is None)

    def _grow_send(self, conn: Conn) -> None:
        """The whole send buffer is on the paths and the peer's window is still open: the
        buffer, not the paths or the peer, holds the connection back (Linux grows a
        socket's send buffer on the same sign, tcp_sndbuf_expand). Double it, up to
        ``buffer_max`` and as the budget allows."""
        grown = min(self.params.buffer_max, conn.send_cap * 2)
        if self._may_grow(conn, grown - conn.send_cap):
            conn.send_cap = grown
            self.counters["send_grown"] += 1

    def _send_fin(self, conn: Conn, out: list, paths: list[PathState], now: float) -> bool:
        if conn.state is ConnState.OPENING:
            pid = self._pinned_path(conn)
            if pid is None:
                return False
            ids: tuple[int, ...] = (pid,)
        else:
            ids = self.policy(MessageInfo(conn.id, 20, CONTROL, offset=conn.snd_nxt), paths, now)
            if not ids:
                return False
        conn.fin_seq = conn.snd_nxt
        inf = _Inflight(conn.fin_seq, conn.fin_seq + 1, True, ids[0], now)
        inf.paths = list(ids)
        conn.inflight[conn.fin_seq] = inf
        self._arm(conn, inf, now)
        msg = Fin(conn.id, conn.fin_seq)
        for pid in ids:
            out.append((pid, msg))
        return True

    def _pinned_path(self, conn: Conn) -> int | None:
        pid = conn.pinned
        if pid is None:
            return None
        p = self.paths.get(pid)
        return pid if p is not None and p.up else None

    def _message_for(self, conn: Conn, inf: _Inflight) -> Message:
        if inf.fin:
            return Fin(conn.id, inf.seq)
        seq = max(inf.seq, conn.sbase)  # the front may have been acknowledged since
        lo, hi = seq - conn.sbase, inf.end - conn.sbase
        return Data(conn.id, seq, conn.sbuf[lo:hi])

    def _queue_rtx(self, conn: Conn, inf: _Inflight) -> None:
        if not inf.queued:
            inf.queued = True
            conn.rtx.append(inf)

    def _arm(self, conn: Conn, inf: _Inflight, now: float) -> None:
        p = self.paths.get(inf.paths[-1])
        after = p.stall_after(self.params) if p is not None else self.params.stall_min
        after *= 1 << min(inf.tries, 6)
        inf.deadline = after
        heapq.heappush(self._stalls, (now + after, conn.id, inf.seq, inf.sent_at))

    def _charge(self, pid: int, size: int) -> None:
        p = self.paths[pid]
        p.room -= size + MESSAGE_OVERHEAD
        p.queued += size + MESSAGE_OVERHEAD
        p.sent_bytes += size
        p.sent_messages += 1

    def _send_rst(self, cid: int, reason: RstReason) -> None:
        # on every path: an RST is not acknowledged, so it must survive the loss of one
        self.counters["resets_sent"] += 1
        self._control.append((cid, Rst(cid, reason), True))
