"""Plain records the scheduler reads: path, connection and third-party context, messages.

Units: seconds and bytes throughout; rates in bytes per second; losses as fractions 0..1.
These are data, not behaviour: the context generators (``scheduler.generators``)
produce ``PathContext``, ``ConnectionContext`` and ``CarrierContext``; the mux
(``middlebox.session.mux``) or the replay simulator builds each ``MessageInfo``.
A policy never mutates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Message kinds: new data; data sent again (after a stall or a lost path); connection
# control (OPEN, OPEN_OK, OPEN_FAIL, FIN); a DATA_ACK; a datagram (a UDP packet carried as
# DATAGRAM, placed by its flow's class: scheduler.datagrams).
DATA = "data"
REINJECTION = "reinjection"
CONTROL = "control"
ACK = "ack"
DATAGRAM = "datagram"
KINDS = (DATA, REINJECTION, CONTROL, ACK, DATAGRAM)

# Network states of a path (seed 003).
NORMAL = "normal"
INTERFERED = "interfered"
CONGESTED = "congested"
STABLE = "stable"
STATES = (NORMAL, INTERFERED, CONGESTED, STABLE)


@dataclass(slots=True)
class PathContext:
    """What the scheduler knows about one carrier path at one moment.

    The first block is what TCP_INFO (or the simulator) reports, smoothed; the second is
    short-term estimator state (``None`` when the producer has no estimator: policies then
    fall back to ``srtt``/``rttvar`` and treat other variances as unknown).
    """

    path_id: int
    carrier: str = ""
    up: bool = True
    srtt: float = 0.1  # s, smoothed RTT
    rttvar: float = 0.0  # s, RTT mean deviation (kernel style)
    delivery_rate: float = 0.0  # bytes/s
    loss_rate: float = 0.0  # fraction of segments lost/retransmitted
    cwnd: int = 0  # bytes
    inflight: int = 0  # bytes sent, not acknowledged
    queued: int = 0  # bytes accepted by the path, not yet sent
    probe_rtt: float | None = None  # s, last application-level probe RTT
    mss: int = 0  # bytes; 0 = unknown (policies use their configured mss)
    # -- short-term estimator state ---------------------------------------------------------
    rtt_pred: float | None = None  # s, least-squares extrapolation of the delay
    rtt_jitter: float | None = None  # s^2, variance of the last samples (seed 003 jitter)
    min_rtt: float | None = None  # s, smallest RTT in the estimator's window
    rate_var: float | None = None  # (bytes/s)^2, variance of the delivery rate
    loss_pred: float | None = None  # least-squares extrapolation of the loss
    loss_var: float | None = None  # variance of recent loss samples
    state: str = NORMAL  # one of STATES
    rto: float | None = None  # s, retransmission timeout after the state's adjustment
    updated: float = 0.0  # s, time of the last sample


@dataclass(slots=True)
class ConnectionContext:
    """One proxied TCP connection, as the gateway or node tracks it."""

    conn_id: int
    client: str = ""  # owner (passenger address or account): the unit of fairness
    direction: str = "up"  # "up" (client to server) or "down"
    dst_port: int = 0
    opened: float = 0.0  # s, time the connection was opened
    bytes_so_far: int = 0  # bytes carried so far in this direction
    priority: int = 0  # priority class; 0 ordinary
    # s, last time the sending application had nothing more for the mux (everything it
    # had produced was committed to paths); None: never. Fed by the mux or simulator.
    app_limited_at: float | None = None
    # a stream whatever ``stream_like`` says (a mux that knows it otherwise may set it);
    # our policy also classifies by ``stream_like`` from ``app_limited_at``
    stream: bool = False

    def age(self, now: float) -> float:
        return now - self.opened


def stream_like(ctx: ConnectionContext, now: float, min_age: float, window: float) -> bool:
    """Whether ``ctx`` is a stream: a long-lived connection whose sender is
    application-limited (live video, audio, a game), not a download.

    A download's backlog never runs dry while it lasts (the server sends as fast as the
    paths take it); a web object is short. A connection older than ``min_age`` whose
    application ran out of bytes to send within the last ``window`` produces them at its
    own pace: its bytes are due in order at that pace and a late one stalls the player.
    The window is long (tens of seconds) because a stream that falls behind when capacity
    is short builds a backlog, and it must not lose the class exactly then.
    """
    dry = ctx.app_limited_at
    return dry is not None and now - ctx.opened >= min_age and now - dry <= window


@dataclass(slots=True)
class CarrierContext:
    """Third-party context of one carrier: what the modem and the GPS report."""

    carrier: str
    cell_id: str = ""
    rsrp: float | None = None  # dBm, latest
    rsrp_window: tuple[float, ...] = ()  # dBm, most recent last
    handover_events: tuple[tuple[float, str], ...] = ()  # (time, kind)
    position: tuple[float, float] | None = None  # (latitude, longitude)
    updated: float = 0.0


@dataclass(slots=True)
class MessageInfo:
    """One message to place on paths: the question the mux (or the simulator) asks.

    ``size`` is the payload for data, the bytes on the wire for the others.
    ``backlog`` (data: bytes of the same connection not yet cut into messages behind
    this one; 0: the message takes everything its application has handed over so far)
    and ``window`` (connection-level send window still open at the peer, bytes; None
    when unknown) are what ECF and BLEST need. ``avoid`` names the paths that carry or
    carried this message already (a reinjection, or a copy of a message a path lost):
    every policy uses them only when no other path is up, since a second copy on the
    same path shares the fate of the first. ``prefer`` (ACKs) is the path the
    acknowledged data arrived on. ``conn`` is the connection's context from the
    registry; the mux leaves it None (it knows no owner) and the scheduler adapter
    fills it in. For a datagram ``conn_id`` is its flow id and ``flow_class`` the
    flow's class (``scheduler.datagrams``: ``single`` or ``duplicate``).
    ``buffer_full`` (data) says the connection's send buffer is at its limit: a backlog
    of 0 then means the sender holds the application back, not that the application ran
    out of bytes (a download whose buffer is all in flight is not a stream).
    """

    conn_id: int
    size: int
    kind: str = DATA  # one of KINDS
    priority: int = 0
    offset: int = 0  # byte offset of the message in its connection's stream
    backlog: int = 0
    window: int | None = None
    conn: ConnectionContext | None = field(default=None)
    avoid: tuple[int, ...] = ()  # path ids the message used already
    prefer: int | None = None  # ACKs: the path the acknowledged data arrived on
    flow_class: str = ""  # datagrams: the flow's class
    buffer_full: bool = False  # data: the send buffer is at its limit (see above)
