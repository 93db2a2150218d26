"""One passively opened TCP connection: the server side of RFC 9293, sans I/O.

Sequence numbers are kept internally as unbounded stream offsets (offset 0 is the
first data byte in each direction) and converted to 32-bit wire values only at the
edges, so comparisons never need modular arithmetic and a 100 GB transfer is as
simple as a 1 kB one.

Input: ``receive_segment(seg, now)`` and the proxy's calls ``send``, ``close``,
``abort``, ``set_buffer_room``, ``accept``. Output: ``segments_to_send(now)``,
``next_timer()`` / ``handle_timer(now)`` and events (queued on the shared deque the
table owns, or the connection's own when used alone).

Sending follows RFC 5681/6582 (slow start, congestion avoidance, fast retransmit and
NewReno recovery), RFC 6675 in simplified form when SACK is on (every un-SACKed hole
below the highest SACK is taken as lost and resent once), RFC 6298 for the timer, and
Linux's zero-window probe (an ACK one below SND.UNA that makes the client answer with
its window). RST and SYN in a synchronized state are checked as RFC 5961 asks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from middlebox.tcp import events as ev
from middlebox.tcp import options as tcpopt
from middlebox.tcp.constants import (
    ACK,
    DEFAULT_MSS,
    DUPACK_THRESHOLD,
    FIN,
    HANDSHAKE_TIMEOUT,
    MAX_GSO_PAYLOAD,
    MAX_WINDOW_FIELD,
    MAX_WSCALE,
    PSH,
    RST,
    SEQ_HALF,
    SEQ_MASK,
    SEQ_MOD,
    SYN,
    TIMESTAMP_OPTION_LEN,
)
from middlebox.tcp.ofo import OutOfOrder
from middlebox.tcp.packet import Segment
from middlebox.tcp.params import TcpParams
from middlebox.tcp.rto import RtoEstimator

# States (RFC 9293 3.3.2); LISTEN and SYN-SENT do not occur on a passive-only endpoint.
SYN_RECEIVED = "SYN-RECEIVED"
ESTABLISHED = "ESTABLISHED"
CLOSE_WAIT = "CLOSE-WAIT"
LAST_ACK = "LAST-ACK"
FIN_WAIT_1 = "FIN-WAIT-1"
FIN_WAIT_2 = "FIN-WAIT-2"
CLOSING = "CLOSING"
TIME_WAIT = "TIME-WAIT"
CLOSED = "CLOSED"

_CAN_SEND = frozenset((SYN_RECEIVED, ESTABLISHED, CLOSE_WAIT))
_CAN_RECEIVE = frozenset((SYN_RECEIVED, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2))
_FIN_SENT = frozenset((FIN_WAIT_1, FIN_WAIT_2, CLOSING, LAST_ACK, TIME_WAIT))


def _s32(x: int) -> int:
    """A 32-bit difference as a signed number."""
    x &= SEQ_MASK
    return x - SEQ_MOD if x >= SEQ_HALF else x


class ConnectionError_(Exception):
    """The proxy used a connection in a way its state does not allow (a programming error)."""


class Connection:
    """State of one connection; ~60 attributes in slots, a few hundred bytes when idle."""

    __slots__ = (
        "id",
        "key",
        "state",
        "params",
        "events",
        "dirty",
        "out",
        "client_options",
        "accepted",
        "announced",
        # timestamps (RFC 7323)
        "ts_ok",
        "ts_recent",
        "ts_offset",
        "sack_ok",
        # receive side
        "irs",
        "rcv_nxt",
        "rcv_fin",
        "ofo",
        "rcv_wscale",
        "rcv_right",
        "room",
        "rcv_buf",
        "rcv_mss",
        "unacked_bytes",
        "ack_now",
        "ack_deadline",
        "rxbuf",
        "rx_marked",
        "peer_closed",
        # send side
        "iss",
        "snd_una",
        "snd_nxt",
        "sndbuf",
        "snd_end",
        "fin_queued",
        "fin_sent",
        "snd_wnd",
        "snd_wl1",
        "snd_wl2",
        "snd_wscale",
        "max_snd_wnd",
        "mss",
        "chunk",
        "cwnd",
        "ssthresh",
        "dupacks",
        "recovery",
        "recover",
        "rtx_next",
        "lost_end",
        "sacked",
        "sacked_bytes",
        "rtt",
        "rtt_off",
        "rtt_time",
        "rtx_deadline",
        "retries",
        "persist_deadline",
        "synack_due",
        # lifetime
        "idle_deadline",
        "close_deadline",
        "stats_retransmits",
        "stats_timeouts",
        "stats_ofo_dropped",
        "stats_after_fin",
        "rtx_round",
        "tlp_armed",
        "tlp_sent",
        "rack_deadline",
        "rack_shift",
    )

    def __init__(
        self,
        syn: Segment,
        now: float,
        iss: int,
        params: TcpParams | None = None,
        buffer_room: int = 4 << 20,
        ts_offset: int = 0,
        conn_id: int = 0,
        events: deque | None = None,
        dirty: set | None = None,
        chunk: int | None = None,
    ) -> None:
        params = self.params = params or TcpParams()
        self.id = conn_id
        self.key = syn.key
        self.state = SYN_RECEIVED
        self.events = events if events is not None else deque()
        self.dirty = dirty
        self.out: list[Segment] = []
        o = syn.opts
        self.client_options = o
        self.accepted = False
        self.announced = False  # the proxy has heard of it (Requested or Established)
        self.ts_ok = params.timestamps and o.tsval is not None
        self.ts_recent = o.tsval or 0
        self.ts_offset = ts_offset
        self.sack_ok = params.sack and o.sack_permitted
        own_mss = params.mtu - 40
        self.rcv_mss = own_mss
        self.mss = min(o.mss or DEFAULT_MSS, own_mss) - (TIMESTAMP_OPTION_LEN if self.ts_ok else 0)
        self.mss = max(self.mss, 64)
        if chunk is None:
            chunk = MAX_GSO_PAYLOAD if params.gso else self.mss
        self.chunk = max(self.mss, chunk // self.mss * self.mss)
        if o.wscale is not None:
            self.snd_wscale = min(o.wscale, MAX_WSCALE)
            self.rcv_wscale = params.window_scale
        else:
            self.snd_wscale = self.rcv_wscale = 0
        # receive side
        self.irs = syn.seq
        self.rcv_nxt = 0
        self.rcv_fin = -1
        self.ofo: OutOfOrder | None = None  # made at the first out-of-order segment
        self.room = buffer_room
        self.rcv_buf = buffer_room
        self.rcv_right = 0
        self.unacked_bytes = 0
        self.ack_now = False
        self.ack_deadline: float | None = None
        self.rxbuf = bytearray()
        self.rx_marked = False
        self.peer_closed = False
        # send side
        self.iss = iss
        self.snd_una = -1  # the SYN-ACK occupies offset -1
        self.snd_nxt = 0
        self.sndbuf = bytearray()
        self.snd_end = 0
        self.fin_queued = False
        self.fin_sent = False
        self.snd_wnd = syn.window  # never scaled on a SYN
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.max_snd_wnd = self.snd_wnd
        self.cwnd = params.initial_cwnd * self.mss
        self.ssthresh = 1 << 62
        self.dupacks = 0
        self.recovery = ""  # "", "fast" or "rto"
        self.recover = 0
        self.rtx_next = 0
        self.lost_end = 0
        self.sacked: list[list[int]] = []
        self.sacked_bytes = 0
        self.rtt = RtoEstimator(params.rto_min, params.rto_max)
        self.rtt_off = -1
        self.rtt_time = 0.0
        self.rtx_deadline: float | None = None
        self.retries = 0
        self.persist_deadline: float | None = None
        self.synack_due = False
        # until the handshake completes, the connection-establishment limit applies
        self.idle_deadline = now + min(params.idle_timeout, HANDSHAKE_TIMEOUT)
        self.close_deadline: float | None = None
        self.stats_retransmits = 0
        self.stats_timeouts = 0
        self.stats_ofo_dropped = 0
        self.stats_after_fin = 0
        self.rtx_round = 0.0
        self.tlp_armed = False
        self.tlp_sent = False
        self.rack_deadline: float | None = None
        self.rack_shift = 0
        self.rcv_right = min(buffer_room, MAX_WINDOW_FIELD)  # a SYN-ACK's window is unscaled

    # -- helpers ----------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.state} una={self.snd_una} nxt={self.snd_nxt}>"

    def _touch(self) -> None:
        if self.dirty is not None:
            self.dirty.add(self)

    def _tsval(self, now: float) -> int:
        return (int(now * 1000) + self.ts_offset) & SEQ_MASK

    def _emit(self, now: float, off: int, flags: int, payload: bytes = b"", gso: int = 0) -> None:
        """Queue one segment starting at send offset ``off`` carrying the current ACK."""
        ts = (self._tsval(now), self.ts_recent) if self.ts_ok else None
        sack = self._sack_blocks() if self.sack_ok and self.ofo else ()
        k = self.key
        wnd = self._update_window()
        self.out.append(
            Segment(
                k[2],
                k[0],
                k[3],
                k[1],
                (self.iss + 1 + off) & SEQ_MASK,
                (self.irs + 1 + self.rcv_nxt + self.peer_closed) & SEQ_MASK,
                flags | ACK,
                wnd,
                payload,
                tcpopt.EMPTY,
                gso,
                tcpopt.build(ts, sack),
            )
        )
        self.ack_now = False
        self.ack_deadline = None
        self.unacked_bytes = 0

    def _update_window(self) -> int:
        """Window field to advertise; the right edge never moves left (RFC 9293 3.8.6.2).

        The edge advances only by at least min(MSS, room/2) at a time, so a slowly
        draining proxy does not make the client send tiny segments (receiver SWS
        avoidance, RFC 9293 3.8.6.2.2). The field is rounded up to the scale unit.
        """
        ws = self.rcv_wscale
        room = self.room
        if room > 0 and self.rcv_nxt + room - self.rcv_right >= min(
            self.rcv_mss, self.rcv_buf // 2
        ):
            self.rcv_right = self.rcv_nxt + room
        field = (max(self.rcv_right - self.rcv_nxt, 0) + (1 << ws) - 1) >> ws
        if field > MAX_WINDOW_FIELD:
            return MAX_WINDOW_FIELD
        edge = self.rcv_nxt + (field << ws)
        if edge > self.rcv_right:
            self.rcv_right = edge
        return field

    def _sack_blocks(self) -> list[tuple[int, int]]:
        """Up to four SACK blocks, the most recently changed first (RFC 2018 4)."""
        base = self.irs + 1
        assert self.ofo is not None
        return [((base + s) & SEQ_MASK, (base + e) & SEQ_MASK) for s, e in self.ofo.sack_blocks()]

    # -- the proxy's side ---------------------------------------------------------------

    def accept(self) -> None:
        """Answer the SYN with a SYN-ACK (after ConnectionRequested)."""
        if self.state == SYN_RECEIVED and not self.accepted:
            self.accepted = True
            self.synack_due = True
            self._touch()

    def send(self, data: bytes) -> None:
        """Queue bytes for the client. Allowed until ``close()``."""
        if self.state not in _CAN_SEND or self.fin_queued:
            raise ConnectionError_(f"cannot send in state {self.state}")
        if data:
            self.sndbuf += data
            self.snd_end += len(data)
            self._touch()

    @property
    def send_queued(self) -> int:
        """Bytes handed to ``send`` that the client has not acknowledged yet."""
        return len(self.sndbuf)

    def close(self) -> None:
        """Send FIN after the queued bytes (our half of the connection is done)."""
        if self.fin_queued or self.state in (CLOSED, TIME_WAIT):
            return
        self.fin_queued = True
        if self.state == CLOSE_WAIT:
            self.state = LAST_ACK
        elif self.state == ESTABLISHED:
            self.state = FIN_WAIT_1
        self._touch()

    def abort(self, reason: str = "aborted") -> None:
        """Reset the connection: RST to the client, then Reset and ConnectionGone."""
        if self.state == CLOSED:
            return
        k = self.key
        seq = (self.iss + 1 + self.snd_nxt + self.fin_sent) & SEQ_MASK
        ack = (self.irs + 1 + self.rcv_nxt + self.peer_closed) & SEQ_MASK
        self.out.append(Segment(k[2], k[0], k[3], k[1], seq, ack, RST | ACK, 0))
        self._reset(reason)

    def set_buffer_room(self, n: int) -> None:
        """How many more bytes the proxy can take from this client; sets the window."""
        old_wnd = max(self.rcv_right - self.rcv_nxt, 0)
        self.room = n
        # A window update is due when the window reopens from (nearly) zero or doubles.
        if self.state in _CAN_RECEIVE and n - old_wnd >= 2 * self.rcv_mss:
            if old_wnd < self.rcv_mss or n >= 2 * old_wnd:
                self.ack_now = True
                self._touch()

    def _reset(self, reason: str) -> None:
        if self.announced:
            self.events.append(ev.Reset(self, reason))
        self._gone()

    def _gone(self) -> None:
        self.state = CLOSED
        self.sndbuf = bytearray()
        self.ofo = None
        self.rtx_deadline = self.persist_deadline = self.ack_deadline = None
        self.rack_deadline = None
        self.close_deadline = None
        if self.announced:
            self.events.append(ev.ConnectionGone(self))
        self._touch()

    def next_event(self) -> object | None:
        """The next event for the proxy, or None (used when the connection runs alone)."""
        return pull_event(self.events)

    # -- input ---------------------------------------------------------------------------

    def receive_segment(self, seg: Segment, now: float) -> None:
        """Process one segment from the client (RFC 9293 3.10.7.4, RFC 5961)."""
        if self.state == CLOSED:
            return
        self._touch()
        flags = seg.flags
        seq_off = self.rcv_nxt + _s32(seg.seq - self.irs - 1 - self.rcv_nxt)
        payload = seg.payload
        plen = len(payload)
        o = seg.opts
        # PAWS (RFC 7323 5): an old timestamp marks an old duplicate.
        if self.ts_ok and o.tsval is not None and not flags & RST:
            if _s32(o.tsval - self.ts_recent) < 0 and not flags & SYN:
                self.ack_now = True
                return
        if flags & SYN:
            if self.state == SYN_RECEIVED and seg.seq == self.irs and not flags & ACK:
                if self.accepted:
                    self.synack_due = True  # our SYN-ACK was lost
                return
            if flags & RST == 0:
                self.ack_now = True  # RFC 5961 4.2: challenge ACK, never reset on a SYN
                return
        edge = self.rcv_nxt + self.peer_closed  # next sequence offset expected
        if flags & RST:
            if self.state == SYN_RECEIVED:
                if seq_off == edge:
                    self._reset("peer")
            elif seq_off == edge:
                self._reset("peer")
            elif edge < seq_off < max(self.rcv_right, edge + 1):
                self.ack_now = True  # RFC 5961 3.2: challenge ACK
            return
        if not flags & ACK:
            return
        # Acceptability (3.10.7.4): old duplicates, keepalives and segments wholly beyond
        # the window are answered with an ACK; their ACK field may still be news. A
        # reordered older pure ACK is not answered (that would look like a dupack to the
        # client), except a keepalive (one below the edge), as Linux does.
        has_seq = plen or flags & FIN
        end_off = seq_off + plen + (flags & FIN and 1)
        stale_ack = not has_seq and seq_off < edge
        if stale_ack or (has_seq and end_off <= edge) or seq_off > max(self.rcv_right, edge):
            if not stale_ack or seq_off == edge - 1:
                self.ack_now = True
            if self.state != SYN_RECEIVED:
                self._process_ack(seg, now, seq_off)
            return
        if self.ts_ok and o.tsval is not None and seq_off <= self.rcv_nxt:
            self.ts_recent = o.tsval
        if self.state == SYN_RECEIVED:
            if seg.ack != (self.iss + 1) & SEQ_MASK or not self.accepted:
                k = self.key
                self.out.append(Segment(k[2], k[0], k[3], k[1], seg.ack, 0, RST, 0))
                return
            self.state = ESTABLISHED if not self.fin_queued else FIN_WAIT_1
            self.announced = True
            self.events.append(ev.ConnectionEstablished(self, self.key, self.client_options))
            self.snd_una = 0
            self.rtx_deadline = None
            if self.retries == 0 and self.rtt_time:
                self.rtt.sample(now - self.rtt_time)  # Karn: only an unrepeated SYN-ACK
            self.retries = 0
            self.rtt.reset_backoff()
            self.rtt_time = 0.0
            self.snd_wnd = seg.window << self.snd_wscale
            self.max_snd_wnd = self.snd_wnd
            self.snd_wl1, self.snd_wl2 = seq_off, 0
        elif not self._process_ack(seg, now, seq_off):
            return
        if self.state == CLOSED:
            return
        self.idle_deadline = now + self.params.idle_timeout
        if (plen or flags & FIN) and self.state in _CAN_RECEIVE:
            self._receive_data(seg, seq_off, now)
        elif plen and self.peer_closed:
            # new bytes after the client's FIN: ignored (RFC 9293 3.10.7.4, seventh), and
            # the ACK names where the stream ended
            self.stats_after_fin += 1
            self.ack_now = True

    def _process_ack(self, seg: Segment, now: float, seq_off: int) -> bool:
        """ACK field processing; False when the segment must be dropped."""
        if self.state == SYN_RECEIVED:
            return False
        ack_off = self.snd_una + _s32(seg.ack - self.iss - 1 - self.snd_una)
        if ack_off > self.snd_nxt + self.fin_sent or ack_off < self.snd_una - self.max_snd_wnd:
            self.ack_now = True  # RFC 5961 5.2: acknowledges what we never sent
            return False
        # window update (RFC 9293 3.10.7.4, SND.WL1/WL2)
        wnd = seg.window << self.snd_wscale
        if seq_off > self.snd_wl1 or (seq_off == self.snd_wl1 and ack_off >= self.snd_wl2):
            window_changed = wnd != self.snd_wnd
            self.snd_wnd = wnd
            self.snd_wl1, self.snd_wl2 = seq_off, ack_off
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
            if wnd and self.persist_deadline is not None:
                self.persist_deadline = None
                self.rtt.reset_backoff()
        else:
            window_changed = False
        if self.sack_ok and seg.opts.sack:
            self._take_sack(seg.opts.sack)
        if ack_off > self.snd_una:
            self._new_ack(ack_off, seg, now)
        elif (
            ack_off == self.snd_una
            and self.snd_nxt > self.snd_una
            and not seg.payload
            and not seg.flags & FIN
            and not window_changed
        ):
            self.dupacks += 1
            if not self.recovery and (
                self.dupacks >= DUPACK_THRESHOLD
                or (self.sack_ok and self.sacked_bytes > DUPACK_THRESHOLD * self.mss)
            ):
                self._enter_recovery("fast", now)
        if self.sack_ok and self.sacked:
            if self.recovery:
                self.lost_end = max(self.lost_end, self.sacked[-1][0])
                srtt = self.rtt.srtt or 0.0
                if (
                    self.rtx_next >= self.lost_end
                    and now - self.rtx_round > 1.25 * srtt + 0.002
                    and self.snd_una < self.lost_end
                ):
                    # Holes resent a round trip ago and still not SACKed while later
                    # data is: the retransmissions were lost too (in the spirit of RACK).
                    self.rtx_next = self.snd_una
                    self.rtx_round = now
            elif self.tlp_sent:
                self._enter_recovery("fast", now)  # the tail probe revealed a hole
        return True

    def _new_ack(self, ack_off: int, seg: Segment, now: float) -> None:
        acked = ack_off - self.snd_una
        data_acked = min(ack_off, self.snd_end) - self.snd_una
        if data_acked > 0:
            del self.sndbuf[:data_acked]
        self.snd_una = ack_off
        # RTT: timestamps if on, else one timed segment (Karn: never a retransmitted one).
        if self.ts_ok and seg.opts.tsecr:
            r = ((self._tsval(now) - seg.opts.tsecr) & SEQ_MASK) / 1000.0
            if r < 60:
                self.rtt.sample(r)
        elif self.rtt_off >= 0 and ack_off > self.rtt_off:
            self.rtt.sample(now - self.rtt_time)
            self.rtt_off = -1
        self.retries = 0
        self.rtt.reset_backoff()
        self.tlp_sent = False
        self.rack_shift = 0
        if self.sacked:
            self._prune_sacked()
        if self.recovery:
            if ack_off >= self.recover:
                if self.recovery == "fast":
                    self.cwnd = self.ssthresh
                self.recovery = ""
                self.rtx_next = self.lost_end = ack_off
            else:
                if self.rtx_next < ack_off:
                    self.rtx_next = ack_off
                if not self.sack_ok:  # NewReno partial ACK: the next hole is lost too
                    self.rtx_next = ack_off
                    self.lost_end = max(self.lost_end, min(ack_off + self.mss, self.snd_nxt))
                    self.dupacks = 0
                if self.recovery == "rto":
                    self._grow_cwnd(acked)
        else:
            self.dupacks = 0
            self._grow_cwnd(acked)
        self.rtx_deadline = None  # re-armed in _arm_timers if data remains in flight
        if self._fin_acked():
            self._our_fin_acked(now)

    def _grow_cwnd(self, acked: int) -> None:
        if self.cwnd < self.ssthresh:
            self.cwnd += min(acked, self.chunk)
        else:
            self.cwnd += max(1, self.mss * min(acked, self.chunk) // self.cwnd)

    def _fin_acked(self) -> bool:
        return self.fin_sent and self.snd_una == self.snd_end + 1

    def _our_fin_acked(self, now: float) -> None:
        if self.state == FIN_WAIT_1:
            self.state = FIN_WAIT_2
        elif self.state == CLOSING:
            self.state = TIME_WAIT
            self.close_deadline = now + self.params.time_wait
        elif self.state == LAST_ACK:
            self._gone()

    def _enter_recovery(self, kind: str, now: float) -> None:
        if kind == "fast" or self.retries <= 1:  # RFC 5681 (4): not again for the same loss
            self.ssthresh = max((self.snd_nxt - self.snd_una) // 2, 2 * self.mss)
        self.recover = self.snd_nxt + self.fin_sent
        self.rtx_next = self.snd_una
        self.rtx_round = now
        if kind == "rto":
            self.cwnd = self.mss
            self.lost_end = self.snd_nxt + self.fin_sent
        else:
            self.cwnd = self.ssthresh
            top = self.sacked[-1][0] if self.sack_ok and self.sacked else 0
            self.lost_end = max(top, min(self.snd_una + self.mss, self.snd_nxt + self.fin_sent))
        self.recovery = kind
        self.rtt_off = -1
        if self.tlp_armed:
            self.rtx_deadline = None  # the probe's short deadline must not become an RTO
        self.tlp_sent = self.tlp_armed = False

    def _take_sack(self, blocks: tuple[tuple[int, int], ...]) -> None:
        base = self.iss + 1
        una = self.snd_una
        top = self.snd_nxt
        for left, right in blocks:
            lo = una + _s32(left - base - una)
            hi = una + _s32(right - base - una)
            lo = max(lo, una)
            hi = min(hi, top)
            if lo >= hi:
                continue  # D-SACK or nonsense: ignored
            self._add_sacked(lo, hi)

    def _add_sacked(self, lo: int, hi: int) -> None:
        merged = []
        placed = False
        for s, e in self.sacked:
            if e < lo:
                merged.append([s, e])
            elif s > hi:
                if not placed:
                    merged.append([lo, hi])
                    placed = True
                merged.append([s, e])
            else:
                lo, hi = min(lo, s), max(hi, e)
        if not placed:
            merged.append([lo, hi])
        self.sacked = merged
        self.sacked_bytes = sum(e - s for s, e in merged)

    def _prune_sacked(self) -> None:
        una = self.snd_una
        kept = [[max(s, una), e] for s, e in self.sacked if e > una]
        self.sacked = kept
        self.sacked_bytes = sum(e - s for s, e in kept)

    def _receive_data(self, seg: Segment, seq_off: int, now: float) -> None:
        payload = seg.payload
        plen = len(payload)
        if seg.flags & FIN:
            # The FIN's sequence number ends the stream (RFC 9293 3.10.7.4); of FINs at
            # different places the first in sequence wins, as in-order processing has it.
            fin_off = seq_off + plen
            if fin_off >= self.rcv_nxt and (self.rcv_fin < 0 or fin_off < self.rcv_fin):
                self.rcv_fin = fin_off
        if self.rcv_fin >= 0 and seq_off + plen > self.rcv_fin:
            # bytes beyond the FIN are no part of the stream: not delivered, answered
            # with an ACK that names the stream's end
            payload = payload[: max(self.rcv_fin - seq_off, 0)]
            self.stats_after_fin += 1
            self.ack_now = True
        # trim to the window: old bytes in front, bytes beyond the right edge behind
        if seq_off < self.rcv_nxt:
            cut = self.rcv_nxt - seq_off
            payload = payload[cut:]
            seq_off = self.rcv_nxt
            self.ack_now = True  # duplicate data: tell the client at once (RFC 5681 4.2)
        over = seq_off + len(payload) - max(self.rcv_right, self.rcv_nxt)
        if over > 0:
            payload = payload[: len(payload) - over]
            self.ack_now = True
        if payload:
            if seq_off == self.rcv_nxt:
                self._deliver(payload)
                if self.ofo:
                    self._pull_ooo()
                    self.ack_now = True  # a hole was filled (RFC 5681 4.2)
                else:
                    self.unacked_bytes += len(payload)
                    if self.unacked_bytes >= 2 * self.rcv_mss:
                        self.ack_now = True
                    elif self.ack_deadline is None:
                        self.ack_deadline = now + self.params.delayed_ack
            else:
                self._store_ooo(seq_off, payload)
                self.ack_now = True
        if self.rcv_fin >= 0 and self.rcv_nxt == self.rcv_fin and not self.peer_closed:
            self._peer_fin(now)

    def _deliver(self, data: bytes | memoryview) -> None:
        self.rxbuf += data
        self.rcv_nxt += len(data)
        self.room -= len(data)
        if not self.rx_marked:
            self.rx_marked = True
            self.events.append(_DataMarker(self))

    def _store_ooo(self, start: int, data: bytes | memoryview) -> None:
        """Keep out-of-order bytes within the queue's memory bound (else drop, counted)."""
        if self.ofo is None:
            self.ofo = OutOfOrder(self.params.ofo_memory)
        if not self.ofo.add(start, data):
            self.stats_ofo_dropped += 1

    def _pull_ooo(self) -> None:
        assert self.ofo is not None
        fin = self.rcv_fin
        for mv in self.ofo.pull(self.rcv_nxt):
            if fin >= 0 and self.rcv_nxt + len(mv) > fin:
                mv = mv[: max(fin - self.rcv_nxt, 0)]  # a FIN that came later ends it sooner
            if mv:
                self._deliver(mv)
        if not self.ofo:
            self.ofo = None  # an idle connection keeps no queue

    def _peer_fin(self, now: float) -> None:
        self.peer_closed = True
        self.ofo = None  # whatever lay beyond the FIN is no part of the stream
        self.ack_now = True
        self.events.append(ev.PeerClosed(self))
        if self.state in (ESTABLISHED, SYN_RECEIVED):
            self.state = CLOSE_WAIT
        elif self.state == FIN_WAIT_1:
            self.state = CLOSING if not self._fin_acked() else TIME_WAIT
            if self.state == TIME_WAIT:
                self.close_deadline = now + self.params.time_wait
        elif self.state == FIN_WAIT_2:
            self.state = TIME_WAIT
            self.close_deadline = now + self.params.time_wait

    # -- output --------------------------------------------------------------------------

    def segments_to_send(self, now: float) -> list[Segment]:
        """Segments due now (SYN-ACK, data, retransmissions, FIN, ACKs); arms timers."""
        if self.state != CLOSED:
            self._transmit(now)
        out = self.out
        self.out = []
        return out

    def _transmit(self, now: float) -> None:
        if self.state == SYN_RECEIVED:
            if self.synack_due:
                self._send_synack(now)
            elif self.ack_now:
                self.ack_now = False
            return
        if self.state != TIME_WAIT and (self.snd_end > self.snd_una or self.fin_queued):
            self._send_data(now)
        if self.ack_now:
            self._emit(now, self.snd_nxt + self.fin_sent, 0)
        self._arm_timers(now)

    def _send_synack(self, now: float) -> None:
        self.synack_due = False
        k = self.key
        ts = (self._tsval(now), self.ts_recent) if self.ts_ok else None
        ws = self.rcv_wscale if self.client_options.wscale is not None else None
        opts = tcpopt.build_syn_ack(self.rcv_mss, ws, self.sack_ok, ts)
        self.out.append(syn_ack(k, self.iss, self.irs, self.room, opts))
        self.rtx_deadline = now + self.rtt.rto
        if self.retries == 0:
            self.rtt_time = now
        self.ack_now = False

    def _pipe(self) -> int:
        pipe = self.snd_nxt - self.snd_una - self.sacked_bytes
        if self.recovery:
            # holes taken as lost and not yet resent are not in the network
            pipe -= self._unsacked_between(self.rtx_next, self.lost_end)
            if not self.sack_ok:
                pipe -= self.dupacks * self.mss
        return pipe

    def _unsacked_between(self, lo: int, hi: int) -> int:
        if hi <= lo:
            return 0
        n = hi - lo
        for s, e in self.sacked:
            n -= max(0, min(e, hi) - max(s, lo))
        return n

    def _send_data(self, now: float) -> None:
        cwnd = self.cwnd
        pipe = self._pipe()
        # 1. retransmit holes taken as lost
        while self.recovery and self.rtx_next < self.lost_end and pipe < cwnd:
            lo = self.rtx_next
            for s, e in self.sacked:
                if s <= lo < e:
                    lo = e
            top = self.snd_nxt + self.fin_sent
            if lo >= self.lost_end or lo >= top:
                self.rtx_next = self.lost_end
                break
            hi = min(lo + self.chunk, self.lost_end, top)
            for s, _e in self.sacked:
                if s > lo:
                    hi = min(hi, s)
                    break
            hi = min(hi, lo + max(cwnd - pipe, self.mss))
            sent = self._send_range(now, lo, hi)
            if not sent:
                self.rtx_next = self.lost_end
                break
            self.stats_retransmits += 1
            self.rtx_next = lo + sent
            pipe += sent
        # 2. new data within both windows
        wnd_end = self.snd_una + self.snd_wnd
        while pipe < cwnd:
            nxt = self.snd_nxt
            if nxt >= self.snd_end:
                if self.fin_queued and not self.fin_sent:
                    self._send_range(now, nxt, nxt + 1)
                    self.fin_sent = True
                break
            hi = min(self.snd_end, wnd_end, nxt + self.chunk, nxt + max(cwnd - pipe, self.mss))
            if hi <= nxt:
                break
            if hi - nxt > self.mss:
                hi = nxt + (hi - nxt) // self.mss * self.mss
            sent = self._send_range(now, nxt, hi)
            if not self.ts_ok and self.rtt_off < 0 and not self.recovery:
                self.rtt_off = nxt
                self.rtt_time = now
            self.snd_nxt = nxt + sent
            pipe += sent

    def _send_range(self, now: float, lo: int, hi: int) -> int:
        """Send offsets [lo, hi) (hi may include the FIN); returns sequence space sent."""
        data_hi = min(hi, self.snd_end)
        flags = 0
        if data_hi > lo:
            mv = memoryview(self.sndbuf)
            payload = bytes(mv[lo - self.snd_una : data_hi - self.snd_una])
            mv.release()
            flags = PSH if data_hi == self.snd_end else 0
        else:
            payload = b""
        if self.fin_queued and hi > self.snd_end and lo <= self.snd_end:
            flags |= FIN
        if not payload and not flags & FIN:
            return 0
        gso = self.mss if len(payload) > self.mss else 0
        self._emit(now, lo, flags, payload, gso)
        return len(payload) + (1 if flags & FIN else 0)

    def _arm_timers(self, now: float) -> None:
        self.rack_deadline = None
        if (
            self.recovery == "fast"  # after an RTO nothing is known: its backoff rules
            and self.rtx_next >= self.lost_end
            and self.snd_una < self.lost_end
            and self.rtt.srtt is not None
        ):
            # Every hole was resent; if the ACKs stop before they are all repaired, a
            # retransmission was lost: resend after a round trip (RACK's reordering
            # timer, RFC 8985 6.2) instead of waiting for the RTO. Backs off while no
            # new data is acknowledged; the RTO still bounds the whole episode.
            wait = (1.25 * self.rtt.srtt + 0.002) * (1 << self.rack_shift)
            self.rack_deadline = self.rtx_round + wait
        if self.snd_nxt + self.fin_sent > self.snd_una:
            if self.rtx_deadline is None:
                rto = self.rtt.rto
                srtt = self.rtt.srtt
                if not self.recovery and not self.tlp_sent and srtt is not None:
                    # tail loss probe (RFC 8985 7): a lost last segment draws no dupacks
                    pto = max(2 * srtt, 0.01)
                    self.tlp_armed = pto < rto
                    rto = min(rto, pto)
                self.rtx_deadline = now + rto
            self.persist_deadline = None
        else:
            self.rtx_deadline = None
            pending = self.snd_end > self.snd_nxt
            if pending and self.snd_wnd < min(self.mss, self.snd_end - self.snd_nxt):
                if self.persist_deadline is None:
                    self.persist_deadline = now + self.rtt.rto
            else:
                self.persist_deadline = None

    # -- timers --------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """The earliest deadline of this connection, or None."""
        best = self.idle_deadline
        for t in (
            self.rtx_deadline,
            self.ack_deadline,
            self.persist_deadline,
            self.close_deadline,
            self.rack_deadline,
        ):
            if t is not None and t < best:
                best = t
        return best if self.state != CLOSED else None

    def handle_timer(self, now: float) -> None:
        """Run whatever timers are due at ``now``."""
        if self.state == CLOSED:
            return
        self._touch()
        if self.close_deadline is not None and now >= self.close_deadline:
            self._gone()
            return
        if now >= self.idle_deadline:
            self.abort("idle")
            return
        if self.ack_deadline is not None and now >= self.ack_deadline:
            self.ack_deadline = None
            self.ack_now = True
        if self.rtx_deadline is not None and now >= self.rtx_deadline:
            self._on_rto(now)
        elif self.rack_deadline is not None and now >= self.rack_deadline:
            self.rack_deadline = None
            self.rtx_next = self.snd_una
            self.rtx_round = now
            self.rack_shift = min(self.rack_shift + 1, 6)
        if self.persist_deadline is not None and now >= self.persist_deadline:
            # zero-window probe: an old sequence number makes the client send its window
            self._emit(now, self.snd_una - 1, 0)
            self.rtt.backoff()
            self.persist_deadline = now + self.rtt.rto

    def _on_rto(self, now: float) -> None:
        if self.tlp_armed:
            self.tlp_armed = False
            self.tlp_sent = True
            top = self.snd_nxt + self.fin_sent
            self._send_range(now, max(self.snd_una, top - self.mss), top)
            self.stats_retransmits += 1
            self.rtx_deadline = now + self.rtt.rto
            return
        self.retries += 1
        self.stats_timeouts += 1
        self.rtx_deadline = None
        if self.retries > (5 if self.state == SYN_RECEIVED else self.params.max_retransmits):
            self.abort("timeout")
            return
        self.rtt.backoff()
        self.stats_retransmits += 1
        if self.state == SYN_RECEIVED:
            self.synack_due = True
            return
        self._enter_recovery("rto", now)
        self.sacked, self.sacked_bytes = [], 0  # RFC 2018: the receiver may renege
        self.rtx_deadline = now + self.rtt.rto


def syn_ack(key: tuple, iss: int, irs: int, room: int, options: bytes) -> Segment:
    """The SYN-ACK answering the SYN with sequence ``irs`` of ``key`` (the client's view)."""
    window = min(room, MAX_WINDOW_FIELD)  # never scaled on a SYN
    return Segment(key[2], key[0], key[3], key[1], iss, (irs + 1) & SEQ_MASK, SYN | ACK,
                   window, b"", tcpopt.EMPTY, 0, options)  # fmt: skip


@dataclass(slots=True)
class _DataMarker:
    """Placeholder queued when bytes arrive; turned into one DataReceived when pulled, so
    consecutive arrivals reach the proxy as one event."""

    conn: Connection


def pull_event(events: deque) -> object | None:
    """Pop the next event of a queue connections share, materialising the bytes a
    connection received since its marker was queued as one :class:`~.events.DataReceived`."""
    while events:
        e = events.popleft()
        if type(e) is _DataMarker:
            c = e.conn
            c.rx_marked = False
            if not c.rxbuf:
                continue
            data = bytes(c.rxbuf)
            c.rxbuf.clear()
            return ev.DataReceived(c, data)
        return e
    return None
