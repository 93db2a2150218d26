"""Our policy ("context"): fused path quality and opportunistic reinjection (seed 001).

Per message:

1. Per up path, fuse short-term (estimator) and long-term (``LongTermSource``) values of
   RTT, bandwidth and loss by MVUE (``scheduler.fusion``). Long-term predictions are
   cached per carrier for ``longterm_refresh`` seconds.
2. Effective loss L = 1 - (1 - max(loss, loss_floor)) * (1 - p_disconnect). Paths with
   p_disconnect >= ``disconnect_threshold`` are set aside (used only if nothing else is up):
   they are avoided before the predicted handover failure or outage, not after.
3. Quality f = 1 / RTT + a * BW, discounted when ``queue_delay`` by RTT / RTT' where
   RTT' = RTT + (queued + size) / BW is the delay including the drain time of what waits
   ahead (a loaded path is worth less in both of its terms); utility u = (1 - L) * f.
   Candidates sorted by u (ties: lower path id).
4. Class of the message gives F and a: control, reinjection, high priority, the first
   ``interactive_bytes`` of a flow to an interactive port (a = ``a_interactive``: delay
   first), bulk (past ``bulk_bytes``), ordinary data.
5. Bulk fairness: when the best path is loaded (queued > ``light_load_bytes``), a bulk
   client that leads the least-served active bulk client on a path by more than
   ``fair_quantum`` (decayed per-client byte counts) takes the next path instead.
6. Opportunistic reinjection: S starts with the best path; the next paths in utility
   order are added while F * (gain in delivery probability) > b * (size + queued_i) / BW_i,
   where the gain of adding i is P_loss(S) * (1 - L_i) with P_loss(S) the product of the
   losses in S. This is the greedy form of maximizing
   max_{i in S} u_i + F * (1 - prod_{i in S} L_i) - b * sum_{i in S, i != best} cost_i;
   with F = 0 it returns exactly the best path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scheduler.config import SchedulerConfig
from scheduler.context import CONTROL, REINJECTION, MessageInfo, PathContext, stream_like
from scheduler.fusion import INF, fuse2
from scheduler.longterm import LongTermSource, PredictionLike


class ContextPolicy:
    name = "context"

    def __init__(
        self, config: SchedulerConfig | None = None, longterm: LongTermSource | None = None
    ):
        self.cfg = cfg = config or SchedulerConfig()
        self.longterm = longterm
        self._ports = frozenset(cfg.interactive_ports)
        self._scaled = cfg.longterm_variance == "scaled"
        self._lt: dict[str, tuple[float, PredictionLike | None]] = {}
        self._memo: dict[int, tuple[object, tuple, tuple[float, float, float, float]]] = {}
        # Bulk fairness: path id -> client -> [decayed bytes, time of last update].
        self._fair: dict[int, dict[str, list[float]]] = {}
        self._last_bulk: dict[str, float] = {}
        self._bulk_count = 0

    # -- long-term ---------------------------------------------------------------------------

    def prediction(self, carrier: str, now: float) -> PredictionLike | None:
        """The carrier's long-term prediction, queried at most every ``longterm_refresh``."""
        if self.longterm is None:
            return None
        hit = self._lt.get(carrier)
        if hit is not None and 0.0 <= now - hit[0] < self.cfg.longterm_refresh:
            return hit[1]
        pred = self.longterm.predict(carrier, now)
        self._lt[carrier] = (now, pred)
        return pred

    def fused(self, p: PathContext, now: float) -> tuple[float, float, float, float]:
        """(RTT s, BW bytes/s, loss, p_disconnect) of path ``p`` after fusion.

        Memoised per path on every input it reads (so a context mutated in place is
        never served a stale result): a path's statistics change per TCP_INFO sample,
        far less often than messages arrive.
        """
        pred = self.prediction(p.carrier, now) if self.longterm is not None else None
        key = (
            p.carrier,
            p.srtt,
            p.rttvar,
            p.rtt_pred,
            p.rtt_jitter,
            p.delivery_rate,
            p.rate_var,
            p.loss_rate,
            p.loss_pred,
            p.loss_var,
        )
        hit = self._memo.get(p.path_id)
        if hit is not None and hit[0] is pred and hit[1] == key:
            return hit[2]
        result = self._fuse(p, pred)
        self._memo[p.path_id] = (pred, key, result)
        return result

    def _fuse(
        self, p: PathContext, pred: PredictionLike | None
    ) -> tuple[float, float, float, float]:
        rtt = p.rtt_pred if p.rtt_pred is not None else p.srtt
        if p.rtt_jitter is not None:
            rtt_var = p.rtt_jitter
        else:
            rtt_var = p.rttvar * p.rttvar if p.rttvar > 0 else INF
        bw = p.delivery_rate
        bw_var = p.rate_var if p.rate_var is not None else INF
        loss = p.loss_pred if p.loss_pred is not None else p.loss_rate
        loss_var = p.loss_var if p.loss_var is not None else INF
        if pred is None:
            return rtt, bw, loss, 0.0
        conf = pred.confidence
        if conf > 0.0:
            if self._scaled:
                v_rtt = pred.rtt_var / conf if pred.rtt_var > 0 else INF
                v_bw = pred.throughput_var / (64.0 * conf) if pred.throughput_var > 0 else INF
                v_loss = pred.loss_var / conf if pred.loss_var > 0 else INF
            else:
                v_rtt = v_bw = v_loss = 1.0 / conf
            # An infinite long-term variance means "not measured" (contextdb then puts a
            # placeholder mean of 0): the short-term value stands alone, even when its
            # own variance is unknown too.
            if v_rtt < INF and pred.rtt_mean > 0:
                rtt = fuse2(rtt, rtt_var, pred.rtt_mean, v_rtt)[0]
            if v_bw < INF:
                bw = fuse2(bw, bw_var, pred.throughput_mean / 8.0, v_bw)[0]
            if v_loss < INF:
                loss = fuse2(loss, loss_var, pred.loss_mean, v_loss)[0]
        return rtt, bw, loss, pred.p_disconnect

    # -- message classes ---------------------------------------------------------------------

    def classify(self, m: MessageInfo, now: float | None = None) -> tuple[str, float, float]:
        """(class name, F, a) of message ``m`` (at ``now``: a connection whose context
        records when its application ran dry may be a stream, ``stream_like``)."""
        cfg = self.cfg
        if m.kind == CONTROL:
            return "control", cfg.f_control, cfg.a
        if m.kind == REINJECTION:
            return "reinjection", cfg.f_reinjection, cfg.a
        conn = m.conn
        prio = m.priority
        if conn is not None and conn.priority > prio:
            prio = conn.priority
        if prio >= cfg.high_priority:
            return "high", cfg.f_high, cfg.a
        if conn is not None:
            if conn.stream or (
                now is not None
                and conn.app_limited_at is not None
                and stream_like(conn, now, cfg.stream_age, cfg.stream_window)
            ):
                return "stream", cfg.f_stream, cfg.a_stream
            if m.offset < cfg.interactive_bytes and conn.dst_port in self._ports:
                return "interactive", cfg.f_interactive, cfg.a_interactive
            if conn.bytes_so_far >= cfg.bulk_bytes:
                return "bulk", cfg.f_bulk, cfg.a_bulk
        if m.offset >= cfg.bulk_bytes:
            return "bulk", cfg.f_bulk, cfg.a_bulk
        return "data", cfg.f_data, cfg.a

    # -- the decision ------------------------------------------------------------------------

    def decide(
        self, message: MessageInfo, paths: Sequence[PathContext], now: float
    ) -> tuple[int, ...]:
        cfg = self.cfg
        cls, big_f, a = self.classify(message, now)
        size = message.size
        floor = cfg.loss_floor
        threshold = cfg.disconnect_threshold
        # A bulk message's own delay does not matter, the order of arrival does: it skips
        # the drain-time discount (see docs/scheduler.md, "why bulk ranks by delay").
        queue_delay = cfg.queue_delay and cls != "bulk"
        if cls == "stream" and message.backlog <= cfg.stream_behind:
            # A stream that keeps up goes by delay, as bulk does, and leaves the other
            # paths to web flows; one that fell behind goes where its bytes arrive first
            # (see docs/scheduler.md, "Streams").
            queue_delay = False
        avoid = message.avoid
        mss_default = cfg.mss
        entries = []
        tier_min = 8
        for p in paths:
            if not p.up:
                continue
            rtt, bw, loss, p_disc = self.fused(p, now)
            if rtt <= 0.0:
                rtt = 1e-6
            if loss < floor:
                loss = floor
            elif loss > 1.0:
                loss = 1.0
            if p_disc > 0.0:
                loss = 1.0 - (1.0 - loss) * (1.0 - p_disc)
            mss = p.mss or mss_default
            cwnd = p.cwnd
            if bw <= 0.0:
                # Never measured (TCP_INFO reports no rate before data flows): a prior of
                # one window per RTT, so an unused path is tried rather than ranked last.
                bw = (cwnd if cwnd > 0 else 10 * mss) / rtt
            drain = bw if bw * rtt > mss else mss / rtt
            # Bytes ahead of this message: what waits in the socket, and when the
            # window is full, what must be acknowledged before the message may leave.
            ahead = p.queued + size
            room = True
            if cwnd > 0:
                over = p.inflight + p.queued - cwnd
                if over >= 0:
                    room = False
                    ahead += over
            f = 1.0 / rtt + a * bw
            if queue_delay:
                f *= rtt / (rtt + ahead / drain)
            u = (1.0 - loss) * f
            # Tiers, best first: paths that can send now, then full ones; paths predicted
            # to disconnect after every other (except for bulk, whose bytes a dying path
            # strands at most until reinjection, while setting it aside for the whole
            # look-ahead wastes its capacity); paths the message used after all others.
            tier = 0 if room else 1
            if p_disc > 0.0 and p_disc >= threshold and cls != "bulk":
                tier += 2
            if avoid and p.path_id in avoid:
                tier += 4
            if tier < tier_min:
                tier_min = tier
            entries.append((tier, u, -p.path_id, loss, p.queued, drain))
        if not entries:
            return ()
        cands = [e[1:] for e in entries if e[0] == tier_min]
        cands.sort(reverse=True)
        client = message.conn.client if message.conn is not None else ""
        if cls == "bulk" and client:
            if len(cands) > 1 and cands[0][3] > cfg.light_load_bytes:
                self._steer(cands, client, now)
            self._account(-cands[0][1], client, size, now)
        best = cands[0]
        if big_f <= 0.0 or len(cands) == 1:
            return (-best[1],)
        chosen = [-best[1]]
        p_loss = best[2]
        b = cfg.b
        for _u, neg_id, loss, queued, drain in cands[1:]:
            gain = big_f * p_loss * (1.0 - loss)
            cost = b * (size + queued) / drain
            if gain <= cost:
                break
            chosen.append(-neg_id)
            p_loss *= loss
        return tuple(chosen)

    # -- bulk fairness -------------------------------------------------------------------------

    def _decayed(self, entry: list[float], now: float) -> float:
        dt = now - entry[1]
        if dt > 0.0:
            entry[0] *= math.exp(-dt / self.cfg.fair_window)
            entry[1] = now
        return entry[0]

    def _steer(self, cands: list, client: str, now: float) -> None:
        """Move to the front the first path on which ``client`` does not lead too much."""
        horizon = now - self.cfg.fair_window
        active = [c for c, t in self._last_bulk.items() if t >= horizon and c != client]
        if not active:
            return
        quantum = self.cfg.fair_quantum
        for i, entry in enumerate(cands):
            per_client = self._fair.get(-entry[1], {})
            mine = per_client.get(client)
            mine_b = self._decayed(mine, now) if mine is not None else 0.0
            least = INF
            for c in active:
                e = per_client.get(c)
                v = self._decayed(e, now) if e is not None else 0.0
                if v < least:
                    least = v
            if mine_b - least <= quantum:
                if i:
                    cands.insert(0, cands.pop(i))
                return
        # Leads everywhere (cannot happen with two clients; possible with more): keep order.

    def _account(self, path_id: int, client: str, size: int, now: float) -> None:
        per_client = self._fair.setdefault(path_id, {})
        entry = per_client.get(client)
        if entry is None:
            per_client[client] = [float(size), now]
        else:
            self._decayed(entry, now)
            entry[0] += size
        self._last_bulk[client] = now
        self._bulk_count += 1
        if self._bulk_count % 1024 == 0:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Forget clients idle for ten fairness windows (bounded memory)."""
        cutoff = now - 10.0 * self.cfg.fair_window
        gone = [c for c, t in self._last_bulk.items() if t < cutoff]
        for c in gone:
            del self._last_bulk[c]
            for per_client in self._fair.values():
                per_client.pop(c, None)
