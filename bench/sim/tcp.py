"""One direction of a kernel TCP connection, at message granularity.

A carrier path of the proxy is one TCP connection; each of its directions is a
:class:`Socket` here: the sending kernel's socket and the receiving kernel's in-order
delivery, over the direction's :class:`~bench.sim.links.Link`, with the ACKs crossing the
reverse link. What the socket models, and why it matters for the mux above it:

* **Send queue and not-sent bytes.** ``write`` queues a unit (what one write of the
  shell hands the kernel: mux messages, a TLS flight, a slice of a server's response)
  with its size on the wire. Units leave in chunks of at most ten packets, no larger
  than the congestion window lets out (in whole packets), as pacing allows; ``notsent``
  is what the kernel has not sent yet,
  so a shell offers the mux ``paths.notsent_lowat`` minus it as room, as
  ``PathConn.room()`` does with ``SIOCOUTQNSD``.
* **Congestion control**: :class:`bench.sim.cc.Bbr`, fed per acknowledged chunk with
  BBR's delivery-rate sample.
* **In-order delivery.** A unit reaches the receiver only once every byte before it on
  this connection has: a unit that lost packets arrives one smoothed RTT late (fast
  retransmit) and holds back everything behind it.
* **Crawling chunks.** A chunk that needs seconds to cross (a trace that delivers a
  packet a second during a "gap") is acknowledged packet by packet, as the kernel would:
  each ACK frees window (so the socket sends a little and its not-sent bytes creep
  down), advances the acknowledged bytes (the mux sees the path progressing), is an RTT
  sample (srtt grows to seconds) and restarts the timeout.
* **ACKs cross the reverse link**: one 66-byte ACK per two packets of a unit, sent when
  the unit arrives, queued and served with whatever else goes that way (the proxy's
  DATA_ACKs, requests, uploads), dropped when that queue is full. ACKs are cumulative: a
  later one covers a lost one.
* **Retransmission timeout with exponential backoff.** Without an acknowledgement for
  ``srtt + max(4 rttvar, 200 ms)`` (doubled per expiry, at most 120 s) the head packet is
  sent again and the window drops (``Bbr.on_silence``); the receiver answers the resent
  packet with a cumulative ACK of what it has. So after an outage during which ACKs were
  lost, the sender only learns the path is back at its next, backed-off, expiry.
* **User timeout** (``TCP_USER_TIMEOUT``): data unacknowledged that long fails the
  connection (the expiry is clamped to that deadline, as Linux does); ``on_error`` tells
  the owner.
* **TCP_INFO**: :meth:`Socket.tcp_info` reports what the kernel would (smoothed RTT and
  mean deviation by Linux's estimator, fed as many samples as the unit's ACKs would
  give, delivery rate, cwnd, unacknowledged and not-sent bytes, packets sent and
  resent, bytes acknowledged).

Simplifications: a chunk is the granule (no per-packet timing inside it; a chunk's own
transmission time is taken out of its RTT sample); a unit reaches the receiver with its
last chunk; a lost packet is repaired by fast
retransmit in one smoothed RTT whatever the state of the reverse direction; pure ACKs
never ride on data going the other way; no delayed-ACK timer, no receive window (the
receiving shells read at once), no SACK scoreboard.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable

from bench.sim.cc import Bbr
from bench.sim.engine import Engine
from bench.sim.links import ACK_BYTES, MSS, OPPORTUNITY_BYTES, Link
from middlebox.paths.sockets import TcpInfo

RTO_MIN = 0.2  # s (Linux tcp_rto_min)
CHUNK = 10 * MSS  # bytes sent, queued and acknowledged as one piece (ten packets)
PART = object()  # a chunk that is not the last of its unit
RTO_MAX = 120.0  # s (Linux TCP_RTO_MAX)
SLOW = 0.5  # s beyond two RTTs: a chunk this slow to arrive is acknowledged packet by packet

_ZERO_INFO = {f.name: 0 for f in dataclasses.fields(TcpInfo)}
_ZERO_INFO["state"] = 1  # ESTABLISHED

# a chunk in flight: (number, unit, wire bytes, packets, sent at, delivered at send,
# delivered time at send, app limited, own transmission time, RTO count at send,
# first sent of the rate sample, epoch, where in the link's D(t) its service starts)
N, UNIT, WIRE, PACKETS, SENT, D_SENT, D_TIME, APP_LIMITED, SER, RTOS, FIRST, EPOCH, BASE = range(13)


class Socket:
    """One direction of a TCP connection (see module text). ``deliver(now, unit)`` is
    the receiver's side: called in order, once per unit; it returns False when the
    receiver has no such connection (no ACK then)."""

    __slots__ = (
        "engine",
        "fwd",
        "rev",
        "deliver",
        "user_timeout",
        "on_error",
        "on_acked",
        "cc",
        "epoch",
        "alive",
        "unsent",
        "notsent",
        "flight",
        "inflight",
        "delivered",
        "delivered_time",
        "first_sent",
        "srtt",
        "rttvar",
        "rate_sample",
        "pace_last",
        "pace_bytes",
        "pump_at",
        "rto_armed",
        "rto_base",
        "backoff",
        "rto_count",
        "segs_out",
        "total_retrans",
        "rx_last",
        "rx_upto",
        "sent_n",
        "acks",
        "ack_wake_at",
        "partial_n",
        "partial",
        "app_mark",
    )

    def __init__(
        self,
        engine: Engine,
        fwd: Link,
        rev: Link,
        deliver: Callable[[float, object], bool],
        *,
        user_timeout: float | None = None,
        on_error: Callable[[float], None] | None = None,
        on_acked: Callable[[float], None] | None = None,
    ) -> None:
        self.engine = engine
        self.fwd = fwd
        self.rev = rev
        self.deliver = deliver
        self.user_timeout = user_timeout
        self.on_error = on_error
        self.on_acked = on_acked
        self.cc = Bbr()
        self.epoch = 0
        self.alive = False
        self.unsent: deque[list] = deque()  # [unit, wire bytes not sent yet]
        self.flight: deque[tuple] = deque()
        # ACKs on their way that nothing waits for (nothing unsent): (arrival, covers up to),
        # taken into account when the socket is next used instead of one event each
        self.acks: deque[tuple[float, int]] = deque()
        self.connect(0.0, 2 * fwd.delay or 0.01)
        self.alive = False

    def connect(self, now: float, rtt: float) -> None:
        """A new connection whose handshake measured ``rtt`` (the kernel's first sample,
        RFC 6298: rttvar = rtt / 2); whatever the old one held is gone."""
        self.epoch += 1
        self.alive = True
        self.cc.reset(initial_rtt=rtt)
        self.unsent.clear()
        self.flight.clear()
        self.notsent = 0
        self.inflight = 0
        self.delivered = 0
        self.delivered_time = now
        self.first_sent = now
        self.srtt = rtt
        self.rttvar = rtt / 2
        self.rate_sample = 0.0
        self.pace_last = now
        self.pace_bytes = 0
        self.pump_at = math.inf  # the pacing timer's time (inf: none armed)
        self.rto_armed = False
        self.rto_base = now
        self.backoff = 0
        self.rto_count = 0
        self.segs_out = 0
        self.total_retrans = 0
        self.rx_last = now
        self.rx_upto = 0
        self.sent_n = 0
        self.acks.clear()
        self.ack_wake_at = math.inf
        self.partial_n = 0  # the chunk whose first packets were acknowledged one by one
        self.partial = 0  # ... and how many of its bytes
        self.app_mark = 0  # application-limited until this many bytes are delivered

    def close(self) -> None:
        """The connection is gone on this side: nothing more is sent or delivered."""
        self.epoch += 1
        self.alive = False
        self.unsent.clear()
        self.flight.clear()
        self.acks.clear()
        self.notsent = self.inflight = 0

    # -- sending -----------------------------------------------------------------------

    def write(self, unit: object, wire: int, now: float) -> None:
        """Queue ``unit`` of ``wire`` bytes (as the application's send() does)."""
        if not self.alive:
            return
        if self.acks:
            self._catch_up(now)
        if self.notsent < MSS and self.inflight < self.cc.cwnd:
            # Linux's tcp_rate_check_app_limited, called as the application writes: the
            # socket had run dry, so what goes out until the bytes in flight now are
            # delivered is application-limited (its rate samples say little)
            self.app_mark = self.delivered + self.inflight or 1
        self.unsent.append([unit, wire])
        self.notsent += wire
        self.pump(now)
        if self.unsent and self.acks and self.acks[0][0] < self.ack_wake_at:
            # bytes wait now: the ACKs on their way matter at the time they arrive
            self.ack_wake_at = t = self.acks[0][0]
            self.engine.at(t, self._ack_wake, (self.epoch, t))

    def rto(self) -> float:
        return min(RTO_MAX, self.srtt + max(4 * self.rttvar, RTO_MIN))

    def pump(self, now: float) -> None:
        """Send what the window and pacing allow."""
        unsent = self.unsent
        if unsent and self.alive:  # nothing below changes either, nor the controller
            cc = self.cc
            cwnd = cc.cwnd
            rate = cc.pacing_rate
            flight = self.flight
            fwd = self.fwd
            at = self.engine.at
            epoch = self.epoch
            while unsent:
                window = cwnd - self.inflight
                if window <= 0:
                    break  # the window is full
                head = unsent[0]
                # pacing: the last send's bytes at the current rate (recomputed, so a rate
                # that recovers after an outage is not stuck behind an old, slow schedule)
                due = self.pace_last + self.pace_bytes / rate
                if due > now + 1e-9:
                    if due < self.pump_at:
                        self.pump_at = due
                        at(due, self._pump_timer, (epoch, due))
                    break
                left = head[1]
                # at most a chunk, and no more than the window lets out (whole packets): an
                # ACK that frees one packet lets one packet go, as the kernel's ACK clock
                size = CHUNK if window >= CHUNK else -(-window // MSS) * MSS
                if left > size:  # a large unit leaves piece by piece; it arrives with its last
                    head[1] = left - size
                    wire, unit = size, PART
                else:
                    unsent.popleft()
                    wire, unit = left, head[0]
                self.notsent -= wire
                if not flight:
                    self.delivered_time = self.first_sent = self.rto_base = now
                srtt = self.srtt
                arrival, lost, ser = fwd.transmit(now, wire, srtt)
                if arrival < self.rx_last:
                    arrival = self.rx_last  # in order: behind everything sent before
                self.rx_last = arrival
                packets = -(-wire // MSS)
                self.segs_out += packets
                self.total_retrans += lost
                self.sent_n = n = self.sent_n + 1
                self.inflight += wire
                seg = (
                    n,
                    unit,
                    wire,
                    packets,
                    now,
                    self.delivered,
                    self.delivered_time,
                    self.app_mark != 0,  # application-limited (see write)
                    ser,
                    self.rto_count,
                    self.first_sent,
                    epoch,
                    fwd.last_base,
                )
                flight.append(seg)
                self.pace_last, self.pace_bytes = now, wire
                at(arrival, self._arrive, seg)
                if packets > 1 and arrival - now > SLOW + 2 * srtt:
                    # a chunk that crawls through (a trace that trickles a packet a
                    # second): the kernel hears of its packets one by one, and so does
                    # this socket
                    base = seg[BASE]
                    for k in range(1, packets):
                        t = fwd.inverse(base + k * OPPORTUNITY_BYTES) + fwd.delay
                        at(t, self._packet_arrives, (epoch, n, k))
        if self.flight and not self.rto_armed:
            self._arm_rto()

    def _pump_timer(self, now: float, arg: tuple[int, float]) -> None:
        epoch, due = arg
        if epoch != self.epoch or due != self.pump_at:
            return  # the connection is gone, or a sooner timer took over
        self.pump_at = math.inf
        self.pump(now)

    # -- receiving ---------------------------------------------------------------------

    def _arrive(self, now: float, seg: tuple) -> None:
        epoch = seg[EPOCH]
        if epoch != self.epoch:
            return  # the connection died with this unit in it
        self.rx_upto = seg[N]
        unit = seg[UNIT]
        if unit is not PART and (not self.deliver(now, unit) or epoch != self.epoch):
            return  # the receiver has no such connection (any more)
        acks = seg[PACKETS] // 2 or 1
        t, lost = self.rev.send(now, ACK_BYTES * acks, acks)
        if lost < acks:
            if self.unsent or self.on_acked is not None:
                self.engine.at(t, self._ack, (epoch, seg[N]))
            else:
                self.acks.append((t, seg[N]))

    def _packet_arrives(self, now: float, arg: tuple[int, int, int]) -> None:
        if arg[0] == self.epoch:
            t, lost = self.rev.send(now, ACK_BYTES, 1)
            if not lost:
                self.engine.at(t, self._packet_acked, arg)

    def _packet_acked(self, now: float, arg: tuple[int, int, int]) -> None:
        """The ACK of packet ``k`` of a crawling chunk: what it covers leaves the window
        (the chunk's own ACK takes the rest), an RTT sample, the timeout restarts."""
        epoch, n, k = arg
        flight = self.flight
        if epoch != self.epoch or not flight or flight[0][N] != n:
            return  # gone, acknowledged whole already, or not the oldest (only SACKed)
        if self.acks:
            self._catch_up(now)
        if self.partial_n != n:
            self.partial_n, self.partial = n, 0
        acked = k * MSS
        if acked <= self.partial:
            return
        freed = acked - self.partial
        self.partial = acked
        self.inflight -= freed
        self.delivered += freed
        self._rtt_sample(now - flight[0][SENT], 1)
        self.cc.restore()
        self.backoff = 0
        self.rto_base = now
        if self.unsent:
            self.pump(now)

    def _catch_up(self, now: float) -> None:
        """The ACKs that arrived by ``now`` without an event, each at its own time."""
        acks = self.acks
        while acks and acks[0][0] <= now:
            t, upto = acks.popleft()
            self._acked(t, upto)

    def _ack_wake(self, now: float, arg: tuple[int, float]) -> None:
        epoch, t = arg
        if epoch != self.epoch or t != self.ack_wake_at:
            return
        self.ack_wake_at = math.inf
        self._catch_up(now)
        if self.unsent:
            self.pump(now)
        if self.unsent and self.acks:
            self.ack_wake_at = t = self.acks[0][0]
            self.engine.at(t, self._ack_wake, (self.epoch, t))

    def _ack(self, now: float, arg: tuple[int, int]) -> None:
        epoch, upto = arg
        if epoch != self.epoch:
            return
        if self.acks:
            self._catch_up(now)
        if self._acked(now, upto):
            if self.on_acked is not None:
                self.on_acked(now)
            if self.unsent:
                self.pump(now)
            elif self.flight and not self.rto_armed:
                self._arm_rto()

    def _acked(self, now: float, upto: int) -> bool:
        """An ACK covering every unit up to number ``upto`` arrived at ``now``."""
        flight = self.flight
        if not flight or flight[0][N] > upto:
            return False  # stale: a later ACK covered it already
        acked = 0
        last = flight[0]
        while flight and flight[0][N] <= upto:
            last = flight.popleft()
            acked += last[WIRE]
            if last[N] == self.partial_n:
                acked -= self.partial  # acknowledged packet by packet already
                self.partial_n = self.partial = 0
        self.inflight -= acked
        self.delivered += acked
        if self.app_mark and self.delivered > self.app_mark:
            self.app_mark = 0
        sent = last[SENT]
        # BBR's rate sample: delivered over the longer of the send and the ack intervals
        # (the send interval keeps ack compression from inflating the estimate)
        interval = max(now - last[D_TIME], sent - last[FIRST])
        rate = (self.delivered - last[D_SENT]) / interval if interval > 0 else 0.0
        self.delivered_time = now
        self.first_sent = sent
        if rate > 0 and (not last[APP_LIMITED] or rate >= self.rate_sample):
            # TCP_INFO's delivery rate, as Linux's tcp_rate_gen keeps it: the last sample
            # that was not application-limited, or a higher one that was
            self.rate_sample = rate
        if last[RTOS] != self.rto_count:
            rtt = 0.0  # Karn: what a timeout resent gives no RTT sample
        else:
            rtt = now - sent - last[SER]  # the RTT of its last packet, as TCP measures
            self._rtt_sample(rtt, last[PACKETS] // 2 or 1)
        self.cc.on_ack(
            now, rtt, rate, last[APP_LIMITED], self.inflight, acked, last[D_SENT], self.delivered
        )
        self.backoff = 0
        self.rto_base = now
        return True

    def _rtt_sample(self, rtt: float, acks: int) -> None:
        """Linux's ``tcp_rtt_estimator``, once per ACK the unit's packets would have drawn
        (one per two packets, at most 16: the rest change little): srtt moves by 1/8 of
        the error; the mean deviation by 1/4, but by only 1/32 when the sample is below
        srtt (a falling RTT hardly widens it). Many correlated samples per unit, as the
        kernel takes them, keep ``rttvar`` as small as TCP_INFO reports it."""
        srtt, mdev = self.srtt, self.rttvar
        for _ in range(acks if acks < 16 else 16):
            err = rtt - srtt
            srtt += err / 8
            if err < 0:
                d = -err - mdev
                mdev += d / 32 if d > 0 else d / 4
            else:
                mdev += (err - mdev) / 4
        self.srtt, self.rttvar = srtt, mdev

    # -- retransmission timeout --------------------------------------------------------

    def _rto_due(self) -> float:
        due = self.rto_base + self.rto() * (1 << min(self.backoff, 16))
        if self.user_timeout is not None and self.flight:
            due = min(due, self.flight[0][SENT] + self.user_timeout)
        return due

    def _arm_rto(self) -> None:
        self.rto_armed = True
        self.engine.at(self._rto_due(), self._rto_timer, self.epoch)

    def _rto_timer(self, now: float, epoch: int) -> None:
        if epoch != self.epoch:
            return
        self.rto_armed = False
        if self.acks:
            self._catch_up(now)
        flight = self.flight
        if not flight:
            return
        due = self._rto_due()
        if now < due - 1e-9:
            self._arm_rto()
            return
        ut = self.user_timeout
        if ut is not None and now - flight[0][SENT] >= ut - 1e-9:
            self.close()
            if self.on_error is not None:
                self.on_error(now)
            return
        # expiry: the window drops, the head packet goes again; the receiver answers it
        # with a cumulative ACK of what it holds
        self.backoff += 1
        self.rto_count += 1
        self.total_retrans += 1
        self.segs_out += 1
        self.cc.on_silence()
        self.rto_base = now
        t, lost = self.fwd.send(now, OPPORTUNITY_BYTES, 1)
        if not lost:
            self.engine.at(t, self._resent_arrives, epoch)
        self._arm_rto()

    def _resent_arrives(self, now: float, epoch: int) -> None:
        if epoch != self.epoch:
            return
        t, lost = self.rev.send(now, ACK_BYTES, 1)
        if not lost:
            self.engine.at(t, self._ack, (epoch, self.rx_upto))

    # -- what the kernel reports ---------------------------------------------------------

    def tcp_info(self) -> TcpInfo:
        """This direction's TCP_INFO, as the sending kernel would report it."""
        if self.acks:
            self._catch_up(self.engine.now)
        info = dict(_ZERO_INFO)
        info.update(
            size=232,
            srtt_us=int(self.srtt * 1e6),
            rttvar_us=int(self.rttvar * 1e6),
            rto_us=int(self.rto() * 1e6),
            backoff=self.backoff,
            snd_mss=MSS,
            snd_cwnd=max(1, self.cc.cwnd // MSS),
            unacked=-(-self.inflight // MSS),
            total_retrans=self.total_retrans,
            pacing_rate=int(self.cc.pacing_rate),
            bytes_acked=self.delivered,
            segs_out=self.segs_out,
            notsent_bytes=self.notsent,
            delivery_rate=int(self.rate_sample),
            total_rto=self.rto_count,
        )
        return TcpInfo(**info)
