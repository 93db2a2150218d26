"""Deterministic tests of the connection-over-paths core with scripted paths.

``Net`` plays both shells: every message goes through the real wire codec, each path is a
FIFO with a fixed one-way delay and a bytes-in-flight limit (its "room"), and a path can
be cut (its queued messages are lost, both ends are told) or black-holed (messages
vanish, nobody is told: only the stall timer can notice). A path may also have a rate
(bytes/s): a message then leaves only after the bytes queued ahead of it.
"""

import random
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middlebox.session import mux as m
from middlebox.session import wire
from middlebox.session.mux import Mux, MuxParams
from scheduler.context import ACK, CONTROL, DATA, REINJECTION, MessageInfo

DT = 0.001


class Net:
    def __init__(
        self, delays, params=None, window=256 << 10, policy=m.lowest_rtt_policy, rates=None
    ):
        self.params = params or MuxParams(buffer_bytes=1 << 20, message_size=8 << 10)
        self.gw = Mux("gateway", self.params, policy)
        self.node = Mux("node", self.params, policy)
        self.delays = dict(delays)
        self.window = window
        self.up = set(self.delays)
        self.blackholed = set()
        self.rates = rates or {}
        self.busy = {}  # (side, pid) -> when the path's sender has sent what it holds
        self.q = {(side, pid): deque() for side in ("gw", "node") for pid in self.delays}
        self.inflight = {k: 0 for k in self.q}
        self.now = 0.0
        self.events = {"gw": [], "node": []}
        self.received = {"gw": bytearray(), "node": bytearray()}
        self.read_limit = {"gw": None, "node": None}  # bytes per step; None: all
        self.accept = True
        self.max_node_held = 0
        self.max_gw_queued = 0
        for pid, d in self.delays.items():
            self.gw.path_up(pid, 0.0, srtt=2 * d)
            self.node.path_up(pid, 0.0, srtt=2 * d)

    def mux(self, side):
        return self.gw if side == "gw" else self.node

    def cut(self, pid):
        self.up.discard(pid)
        for side in ("gw", "node"):
            self.q[(side, pid)].clear()
            self.inflight[(side, pid)] = 0
        self.gw.path_down(pid, self.now)
        self.node.path_down(pid, self.now)

    def restore(self, pid):
        self.up.add(pid)
        self.gw.path_up(pid, self.now, srtt=2 * self.delays[pid])
        self.node.path_up(pid, self.now, srtt=2 * self.delays[pid])

    def step(self):
        self.now = round(self.now + DT, 9)
        for side in ("gw", "node"):
            mx = self.mux(side)
            for pid in self.delays:
                if pid in self.up:
                    mx.update_path(pid, room=max(0, self.window - self.inflight[(side, pid)]))
            for pid, msg in mx.messages_to_send(self.now):
                assert pid in self.up, f"{side} wrote on dead path {pid}"
                data = wire.encode(msg)
                self.inflight[(side, pid)] += len(data)
                if pid in self.blackholed:
                    continue  # vanishes, and its bytes never leave the path's window
                leaves = self.now
                if pid in self.rates:
                    start = max(self.now, self.busy.get((side, pid), 0.0))
                    leaves = self.busy[(side, pid)] = start + len(data) / self.rates[pid]
                self.q[(side, pid)].append((leaves + self.delays[pid], data))
        for (side, pid), q in self.q.items():
            dst = "node" if side == "gw" else "gw"
            while q and q[0][0] <= self.now:
                _, data = q.popleft()
                self.inflight[(side, pid)] -= len(data)
                for msg in wire.decode_all(data, 1 << 20):
                    self.mux(dst).receive(pid, msg, self.now)
        for side in ("gw", "node"):
            self._app(side)
        held = sum(len(c.rbuf) + c.store.data_bytes for c in self.node.conns.values())
        self.max_node_held = max(self.max_node_held, held)
        queued = sum(c.queued_bytes for c in self.gw.conns.values())
        self.max_gw_queued = max(self.max_gw_queued, queued)

    def _app(self, side):
        mx = self.mux(side)
        while (ev := mx.next_event()) is not None:
            self.events[side].append(ev)
            if isinstance(ev, m.OpenRequested):
                if self.accept:
                    mx.accept(ev.conn_id)
                else:
                    mx.refuse(ev.conn_id, wire.OpenFailReason.REFUSED, self.now)
        for cid in list(mx.conns):
            limit = self.read_limit[side]
            self.received[side] += mx.read(cid, -1 if limit is None else limit)

    def run(self, until, limit=60.0):
        while not until():
            assert self.now < limit, "did not finish in simulated time"
            self.step()

    def kinds(self, side, cls):
        return [e for e in self.events[side] if isinstance(e, cls)]


def payload(n, seed=1):
    return random.Random(seed).randbytes(n)


class Feeder:
    """Feeds a byte string into a connection as send() accepts it, then shuts down."""

    def __init__(self, mx, cid, data, shutdown=True):
        self.mx, self.cid, self.data, self.off, self.shutdown = mx, cid, data, 0, shutdown
        self.done = False

    def __call__(self):
        if self.done or not self.mx.pending(self.cid):
            return
        if self.off < len(self.data):
            self.off += self.mx.send(self.cid, self.data[self.off : self.off + (256 << 10)])
        if self.off == len(self.data):
            if self.shutdown:
                self.mx.shutdown(self.cid)
            self.done = True


def transfer(net, up, down=b"", cut_at=None, cut_path=None, feed_down_after_open=True):
    cid = net.gw.open("10.1.0.5", 40000, "198.51.100.7", 443)
    feeders = [Feeder(net.gw, cid, up)]
    started_down = False

    def done():
        nonlocal started_down
        if not started_down and net.node.pending(cid) and feed_down_after_open:
            if net.node.conns[cid].state is m.ConnState.OPEN:
                feeders.append(Feeder(net.node, cid, down))
                started_down = True
        for f in feeders:
            f()
        if cut_at is not None and net.now >= cut_at and cut_path in net.up:
            net.cut(cut_path)
        return net.kinds("gw", m.Closed) and net.kinds("node", m.Closed)

    net.run(done)
    return cid


def test_bulk_both_ways_byte_exact_and_closed_cleanly():
    net = Net({1: 0.010, 2: 0.020, 3: 0.040})
    up, down = payload(3 << 20, 1), payload(2 << 20, 2)
    transfer(net, up, down)
    assert bytes(net.received["node"]) == up
    assert bytes(net.received["gw"]) == down
    assert net.kinds("gw", m.Opened) and net.kinds("gw", m.PeerFinished)
    assert not net.gw.conns and not net.node.conns
    st = net.gw.stats()
    assert st["connections"] == {} and st["buffered_bytes"] == 0
    assert sum(p["sent_bytes"] for p in st["paths"].values()) >= len(up)
    used = [p.sent_bytes for p in net.gw.paths.values()]
    assert sum(1 for b in used if b > 0) >= 2  # more than one path carried data
    # messages grew beyond the first size on a long queue (adaptive size)
    assert max(p.sent_bytes / max(p.sent_messages, 1) for p in net.gw.paths.values()) > 8 << 10


def test_path_cut_mid_transfer_loses_no_byte():
    net = Net({1: 0.010, 2: 0.030})
    up, down = payload(4 << 20, 3), payload(1 << 20, 4)
    transfer(net, up, down, cut_at=0.15, cut_path=1)
    assert 1 not in net.up
    assert bytes(net.received["node"]) == up
    assert bytes(net.received["gw"]) == down
    assert net.gw.counters["retransmits"] > 0
    assert net.gw.paths[1].sent_bytes > 0  # path 1 did carry data before the cut


def test_black_holed_path_is_detected_by_stall_and_data_resent():
    net = Net({1: 0.010, 2: 0.020})
    up = payload(2 << 20, 5)
    cid = net.gw.open("10.1.0.5", 40000, "198.51.100.7", 443)
    f = Feeder(net.gw, cid, up)

    def done():
        f()
        if net.now >= 0.05:
            net.blackholed.add(1)  # the preferred path: messages vanish, no one is told
        return bool(net.kinds("node", m.PeerFinished))

    net.run(done)
    assert bytes(net.received["node"]) == up
    assert net.gw.counters["stall_retransmits"] > 0


def _slow_deep_net():
    # ~4 Mbit/s paths with a window of ~370 KiB: up to 0.75 s of bytes ahead of a message,
    # longer than stall_min and than 3 x (srtt + 4 rttvar) of the idle paths: the shape
    # of a cellular carrier with a deep queue, where a timer counted from the send time
    # resent a fifth of all messages that were merely waiting their turn
    params = MuxParams(buffer_bytes=4 << 20, message_size=16 << 10)
    return Net({1: 0.02, 2: 0.03}, params, 370 << 10, rates={1: 500_000, 2: 600_000})


def _bulk(net, n, at=None, action=None):
    """Send ``n`` bytes up; record the longest time a path needed to drain what it held
    (the scripted path's truth, not the mux's estimate) and when the first stall
    retransmission happened."""
    up = payload(n, 7)
    f = Feeder(net.gw, net.gw.open("10.1.0.5", 40000, "198.51.100.7", 443), up)
    seen = {"drain": 0.0, "first_stall": None}

    def done():
        f()
        if at is not None and net.now >= at:
            action()
        for pid, rate in net.rates.items():
            seen["drain"] = max(seen["drain"], net.inflight[("gw", pid)] / rate)
        if seen["first_stall"] is None and net.gw.counters["stall_retransmits"]:
            seen["first_stall"] = net.now
        return bool(net.kinds("node", m.PeerFinished))

    net.run(done)
    assert bytes(net.received["node"]) == up
    return seen


def test_message_behind_a_deep_queue_on_a_healthy_path_is_not_resent():
    net = _slow_deep_net()
    seen = _bulk(net, 4 << 20)
    assert seen["drain"] > net.params.stall_min  # the queue really was deep
    assert net.gw.counters["stall_retransmits"] == 0
    assert sum(p.sent_bytes for p in net.gw.paths.values()) == 4 << 20  # no byte twice
    # the histograms show why a timer from the send time would have fired: many
    # messages were acknowledged after the deadline they were given
    for p in net.gw.paths.values():
        assert p.stall_resends == 0 and p.resent_messages == 0
        assert sum(p.ack_delay) == sum(p.ack_deadline) == p.acked > 0
    assert sum(p.late for p in net.gw.paths.values()) > 0


def test_message_on_a_black_holed_slow_path_is_still_resent():
    net = _slow_deep_net()
    seen = _bulk(net, 4 << 20, at=1.0, action=lambda: net.blackholed.add(1))
    assert net.gw.counters["stall_retransmits"] > 0
    assert net.gw.paths[1].stall_resends > 0 and net.gw.paths[2].resent_messages > 0
    # noticed once what was on its way before the black hole has drained and the path
    # then stayed silent for its stall interval (here stall_min, doubled at most once)
    assert seen["first_stall"] <= 1.0 + seen["drain"] + 2 * net.params.stall_min + 0.1


def test_shell_reported_progress_holds_the_stall_timer_until_the_path_goes_silent():
    """The kernel's acknowledged bytes advancing (reported by the shell) say the path
    delivers even when no DATA_ACK has come back yet: no resend while they advance; once
    they stop, the message is resent after the path's stall interval."""
    mx = Mux("gateway", MuxParams(stall_min=0.5))
    mx.path_up(1, 0.0, srtt=0.05)
    mx.path_up(2, 0.0, srtt=0.08)
    cid = mx.open("10.1.0.5", 40000, "198.51.100.7", 443)
    mx.receive(1, wire.OpenOk(cid), 0.0)
    mx.send(cid, b"x" * 4000)
    sent = [pid for pid, msg in mx.messages_to_send(0.0) if isinstance(msg, wire.Data)]
    assert sent == [1]
    t, resent_at = 0.0, None
    while t < 5.0 and resent_at is None:
        t = round(t + 0.1, 6)
        if t <= 2.0:
            mx.update_path(1, progress=t)  # the path's socket keeps getting ACKs
        out = mx.messages_to_send(t)
        if any(isinstance(msg, wire.Data) and pid == 2 for pid, msg in out):
            resent_at = t
    assert resent_at is not None
    assert 2.0 + 0.5 <= resent_at <= 2.0 + 0.5 + 0.2
    assert mx.paths[1].stall_resends == 1 and mx.paths[2].resent_messages == 1


def test_needless_copies_are_counted_on_the_path_they_arrived_on():
    def both(info, paths, now):
        return tuple(p.id for p in paths if p.up and (info.kind != "data" or p.room > 0))

    net = Net({1: 0.005, 2: 0.040}, policy=both)
    up = payload(4 << 20, 8)
    transfer(net, up, b"")
    assert bytes(net.received["node"]) == up
    fast, slow = net.node.paths[1], net.node.paths[2]
    # every data message went both ways: the copy on the slow path came second
    assert slow.duplicates > 0 and slow.duplicates > 10 * fast.duplicates
    assert slow.duplicate_bytes >= (256 << 10)
    assert net.node.counters["duplicates"] == fast.duplicates + slow.duplicates


def test_redundant_policy_duplicates_are_dropped():
    def everywhere(info, paths, now):
        return tuple(p.id for p in paths if p.up and (info.kind != "data" or p.room > 0))

    net = Net({1: 0.010, 2: 0.012, 3: 0.030}, policy=everywhere)
    up = payload(1 << 20, 6)
    transfer(net, up, b"")
    assert bytes(net.received["node"]) == up
    assert net.node.counters["duplicates"] > 0


def test_flow_control_bound_holds_with_a_slow_reader():
    params = MuxParams(buffer_bytes=256 << 10, message_size=8 << 10)
    net = Net({1: 0.005, 2: 0.010}, params=params, window=1 << 20)
    net.read_limit["node"] = 2000  # 2 MB/s reader against fast paths
    up = payload(2 << 20, 7)
    cid = net.gw.open("10.1.0.5", 40000, "198.51.100.7", 443)
    f = Feeder(net.gw, cid, up)
    refused = []

    def done():
        before = f.off
        f()
        if net.gw.pending(cid) and f.off - before < min(256 << 10, len(up) - before):
            refused.append(net.now)
        return bool(net.kinds("node", m.PeerFinished)) and not net.node.conns[cid].rbuf

    net.run(done)
    assert bytes(net.received["node"]) == up
    assert net.max_node_held <= params.buffer_bytes
    assert net.node.stats()["connections"][cid]["bytes_received"] == len(up)
    assert net.max_gw_queued <= params.buffer_bytes
    assert refused  # the sender was told to wait: the client's window would close
    assert net.kinds("gw", m.Writable)


def test_open_refused_reaches_the_gateway_and_data_is_dropped():
    net = Net({1: 0.010})
    net.accept = False
    cid = net.gw.open("10.1.0.5", 40000, "198.51.100.7", 443)
    net.gw.send(cid, b"GET / HTTP/1.1\r\n\r\n")  # early data before OPEN_OK
    net.run(lambda: net.kinds("gw", m.OpenFailed))
    assert net.kinds("gw", m.OpenFailed)[0].reason is wire.OpenFailReason.REFUSED
    assert not net.gw.pending(cid) and not net.node.pending(cid)
    for _ in range(100):
        net.step()
    assert net.received["node"] == b""
    assert not net.kinds("node", m.Reset)  # no RST storm for the dropped early data


def test_pinned_open_path_dies_before_open_ok():
    net = Net({1: 0.020, 2: 0.050})
    cid = net.gw.open("10.1.0.5", 40000, "198.51.100.7", 443)
    data = payload(100_000, 8)
    net.gw.send(cid, data)
    net.step()  # OPEN and early data leave on path 1
    assert net.gw.conns[cid].pinned == 1
    net.cut(1)  # both lost in flight
    net.run(lambda: len(net.received["node"]) == len(data))
    assert bytes(net.received["node"]) == data
    assert net.gw.conns[cid].state is m.ConnState.OPEN
    assert len(net.kinds("node", m.OpenRequested)) == 1


def test_rst_both_ways():
    net = Net({1: 0.010, 2: 0.020})
    cid = net.gw.open("10.1.0.5", 40000, "198.51.100.7", 443)
    net.run(lambda: net.kinds("gw", m.Opened))
    net.gw.abort(cid, wire.RstReason.CLIENT_RESET, net.now)
    net.run(lambda: net.kinds("node", m.Reset))
    ev = net.kinds("node", m.Reset)[0]
    assert ev.by_peer and ev.reason is wire.RstReason.CLIENT_RESET
    assert not net.node.pending(cid)
    # and from the node
    cid2 = net.gw.open("10.1.0.5", 40001, "198.51.100.7", 443)
    net.run(lambda: net.node.pending(cid2) and net.kinds("gw", m.Opened)[1:])
    net.node.abort(cid2, wire.RstReason.SERVER_RESET, net.now)
    net.run(lambda: net.kinds("gw", m.Reset))
    assert net.kinds("gw", m.Reset)[0].reason is wire.RstReason.SERVER_RESET


def test_rst_overtaking_its_open_leaves_nothing_at_the_node():
    net = Net({1: 0.100, 2: 0.010})
    net.gw.update_path(1, srtt=0.001)  # the gateway wrongly thinks the slow path is fastest
    cid = net.gw.open("10.1.0.5", 40000, "198.51.100.7", 443)
    net.step()  # OPEN leaves on path 1 (100 ms)
    net.gw.abort(cid, wire.RstReason.CLIENT_RESET, net.now)
    for _ in range(400):
        net.step()  # the RST on path 2 arrives first, the OPEN 90 ms later
    assert not net.kinds("node", m.OpenRequested) and not net.node.conns


def test_lost_rst_is_repeated_when_the_node_answers():
    net = Net({1: 0.010})
    cid = net.gw.open("10.1.0.5", 40000, "198.51.100.7", 443)
    net.step()  # OPEN on its way
    net.gw.abort(cid, wire.RstReason.CLIENT_RESET, net.now)
    lost = net.gw.messages_to_send(net.now)  # every copy of the RST is lost
    assert [type(msg) for _, msg in lost] == [wire.Rst]
    net.run(lambda: net.kinds("node", m.Reset), limit=5)
    assert net.kinds("node", m.OpenRequested)  # the node did connect...
    assert not net.node.conns  # ...and was told to let go when it answered OPEN_OK


def test_all_paths_down_too_long_resets_both_sides():
    params = MuxParams(paths_lost_timeout=2.0)
    net = Net({1: 0.010, 2: 0.020}, params=params)
    cid = net.gw.open("10.1.0.5", 40000, "198.51.100.7", 443)
    net.gw.send(cid, payload(50_000))
    net.run(lambda: net.kinds("gw", m.Opened))
    net.cut(1)
    net.cut(2)
    t0 = net.now
    net.run(lambda: net.kinds("gw", m.Reset) and net.kinds("node", m.Reset))
    assert net.now - t0 >= 2.0
    for side in ("gw", "node"):
        assert net.kinds(side, m.Reset)[0].reason is wire.RstReason.PATHS_LOST
    assert not net.gw.conns and not net.node.conns


def test_path_coming_back_is_used_again():
    net = Net({1: 0.010, 2: 0.030})
    cid = net.gw.open("10.1.0.5", 40000, "198.51.100.7", 443)
    up = payload(3 << 20, 9)
    f = Feeder(net.gw, cid, up)
    state = {"cut": False, "back": False, "bytes_at_return": 0}

    def done():
        f()
        if not state["cut"] and net.now >= 0.05:
            net.cut(1)
            state["cut"] = True
        if state["cut"] and not state["back"] and net.now >= 0.2:
            net.restore(1)
            state["back"] = True
            state["bytes_at_return"] = net.gw.paths[1].sent_bytes
        return bool(net.kinds("node", m.PeerFinished))

    net.run(done)
    assert bytes(net.received["node"]) == up
    assert net.gw.paths[1].sent_bytes > state["bytes_at_return"]


def test_half_close_keeps_the_other_direction():
    net = Net({1: 0.010})
    cid = net.gw.open("10.1.0.5", 40000, "198.51.100.7", 443)
    net.gw.send(cid, b"request")
    net.gw.shutdown(cid)
    net.run(lambda: net.kinds("node", m.PeerFinished))
    assert net.received["node"] == b"request"
    reply = payload(500_000, 10)
    f = Feeder(net.node, cid, reply)
    net.run(lambda: f() or (net.kinds("gw", m.Closed) and net.kinds("node", m.Closed)))
    assert bytes(net.received["gw"]) == reply


# -- receiver details, message by message ---------------------------------------------------


def opened_node(buffer_bytes=1 << 20):
    node = Mux("node", MuxParams(buffer_bytes=buffer_bytes))
    node.path_up(1, 0.0)
    node.receive(1, wire.Open(7, "10.0.0.1", 1000, "192.0.2.1", 80), 0.0)
    assert isinstance(node.next_event(), m.OpenRequested)
    node.accept(7)
    node.messages_to_send(0.0)
    return node


def acks(mx, now):
    return [msg for _, msg in mx.messages_to_send(now) if isinstance(msg, wire.DataAck)]


def test_reassembly_out_of_order_overlaps_and_sack_ranges():
    node = opened_node()
    data = payload(10_000, 11)
    node.receive(1, wire.Data(7, 6000, data[6000:8000]), 0.1)
    node.receive(1, wire.Data(7, 2000, data[2000:4000]), 0.1)
    (a,) = acks(node, 0.1)
    assert a.ack == 0 and a.ranges == ((2000, 4000), (6000, 8000))
    assert node.read(7) == b""
    node.receive(1, wire.Data(7, 3000, data[3000:7000]), 0.2)  # overlaps both, fills the gap
    (a,) = acks(node, 0.2)
    assert a.ranges == ((2000, 8000),)
    node.receive(1, wire.Data(7, 0, data[0:2500]), 0.3)
    (a,) = acks(node, 0.3)
    assert a.ack == 8000 and a.ranges == ()
    node.receive(1, wire.Data(7, 0, data[0:8000]), 0.4)  # a whole duplicate
    assert node.counters["duplicates"] == 1
    node.receive(1, wire.Data(7, 8000, data[8000:]), 0.5)
    assert node.read(7) == data


def test_first_copy_of_a_byte_wins():
    node = opened_node()
    node.receive(1, wire.Data(7, 4, b"EFGH"), 0.1)
    node.receive(1, wire.Data(7, 0, b"abcdXXXXij"), 0.1)  # disagrees with the held copy
    assert node.read(7) == b"abcdEFGHij"


def test_window_is_enforced_and_advertised():
    node = opened_node(buffer_bytes=64 << 10)
    node.receive(1, wire.Data(7, 0, b"x" * (60 << 10)), 0.1)
    (a,) = acks(node, 0.1)
    assert a.ack + a.window == 64 << 10
    node.read(7, 32 << 10)
    (a,) = acks(node, 0.2)  # a quarter of the buffer opened: window update
    assert a.ack + a.window == (64 + 32) << 10
    node.receive(1, wire.Data(7, 60 << 10, b"y" * (40 << 10)), 0.3)  # beyond the edge
    assert node.next_event() == m.Readable(7)
    ev = node.next_event()
    assert isinstance(ev, m.Reset) and ev.reason is wire.RstReason.BUFFER_OVERFLOW
    out = node.messages_to_send(0.3)
    assert any(isinstance(msg, wire.Rst) for _, msg in out)


def test_window_grows_while_half_of_it_waits_behind_a_hole():
    node = Mux("node", MuxParams(buffer_bytes=64 << 10, buffer_max=256 << 10))
    node.path_up(1, 0.0)
    node.receive(1, wire.Open(7, "10.0.0.1", 1000, "192.0.2.1", 80), 0.0)
    node.next_event()
    node.accept(7)
    node.messages_to_send(0.0)
    # bytes 0..8K are still on a slow path; 40 KiB arrived behind them on fast ones
    node.receive(1, wire.Data(7, 8 << 10, b"f" * (40 << 10)), 0.1)
    (a,) = acks(node, 0.1)
    assert a.ack == 0 and a.window == 128 << 10
    assert node.counters["window_grown"] == 1
    # what the grown window lets in is accepted (the old edge would have reset it)
    node.receive(1, wire.Data(7, 48 << 10, b"g" * (60 << 10)), 0.2)
    assert node.counters["window_grown"] == 2
    (a,) = acks(node, 0.2)
    assert a.window == 256 << 10  # and no further than buffer_max
    node.receive(1, wire.Data(7, 108 << 10, b"h" * (100 << 10)), 0.3)
    assert node.counters["window_grown"] == 2
    node.receive(1, wire.Data(7, 0, b"s" * (8 << 10)), 0.4)
    assert len(node.read(7)) == 208 << 10
    assert node.stats()["connections"][7]["window"] == 256 << 10


def test_window_does_not_grow_for_a_slow_reader():
    node = opened_node(buffer_bytes=64 << 10)
    node.receive(1, wire.Data(7, 0, b"x" * (60 << 10)), 0.1)  # in order, nobody reads
    (a,) = acks(node, 0.1)
    assert a.ack + a.window == 64 << 10
    assert node.counters["window_grown"] == 0


def test_a_grown_window_falls_back_when_the_reader_falls_behind():
    node = Mux("node", MuxParams(buffer_bytes=64 << 10, buffer_max=256 << 10))
    node.path_up(1, 0.0)
    node.receive(1, wire.Open(7, "10.0.0.1", 1000, "192.0.2.1", 80), 0.0)
    node.next_event()
    node.accept(7)
    node.receive(1, wire.Data(7, 8 << 10, b"f" * (40 << 10)), 0.1)
    (a,) = acks(node, 0.1)
    assert a.window == 128 << 10  # grown: the reader keeps up, a hole holds the bytes
    node.receive(1, wire.Data(7, 0, b"s" * (8 << 10)), 0.2)  # hole filled, nobody reads
    node.receive(1, wire.Data(7, 48 << 10, b"g" * (60 << 10)), 0.3)
    (a,) = acks(node, 0.3)
    edge = a.ack + a.window
    assert edge == 128 << 10 and node.counters["window_grown"] == 1  # behind: no growth
    node.read(7, 4 << 10)  # the reader is behind: the edge stays where it was
    assert node.stats()["connections"][7]["window"] == edge - (4 << 10)
    while node.read(7, 16 << 10):
        pass
    node.read(7)
    (a,) = acks(node, 0.4)
    assert a.ack + a.window >= edge  # never moves back
    assert node.stats()["connections"][7]["window"] == 64 << 10


def test_send_buffer_grows_while_a_hole_holds_the_front():
    gw = Mux("gateway", MuxParams(buffer_bytes=64 << 10, buffer_max=256 << 10, message_size=4096))
    gw.path_up(1, 0.0, room=10 << 20)
    cid = gw.open("10.1.0.5", 40000, "198.51.100.7", 443)
    assert gw.send(cid, b"a" * (1 << 20)) == 64 << 10
    gw.receive(1, wire.OpenOk(cid), 0.1)
    gw.receive(1, wire.DataAck(cid, 0, 64 << 10), 0.1)  # the peer's window is the buffer
    assert gw.send_room(cid) == 0
    gw.messages_to_send(0.1)
    assert gw.counters["send_grown"] == 0  # all in flight, but the window limits too
    # bytes 4K..60K arrived, 0..4K is still on its way: the peer waits on a hole
    gw.receive(1, wire.DataAck(cid, 0, 1 << 20, ((4096, 60 << 10),)), 0.2)
    assert gw.send_room(cid) == (120 - 64) << 10
    gw.receive(1, wire.DataAck(cid, 64 << 10, 1 << 20), 0.3)  # the hole filled
    assert gw.send_room(cid) == 64 << 10  # back to buffer_bytes, all of it free


def test_send_buffer_grows_while_all_of_it_is_on_the_paths_and_the_window_is_open():
    """On fast paths with a long acknowledgement round trip the whole buffer is in flight
    while the peer still has room: the buffer holds the connection back, so it doubles
    (up to buffer_max); a peer whose window is closed (a slow reader) never makes it."""
    p = MuxParams(buffer_bytes=64 << 10, buffer_max=256 << 10, message_size=4096)
    gw = Mux("gateway", p)
    gw.path_up(1, 0.0, room=10 << 20)
    cid = gw.open("10.1.0.5", 40000, "198.51.100.7", 443)
    gw.receive(1, wire.OpenOk(cid), 0.1)
    gw.receive(1, wire.DataAck(cid, 0, 1 << 20), 0.1)  # the peer's window: 1 MiB
    sizes = []
    for k in range(4):
        sizes.append(gw.send(cid, b"a" * (1 << 20)))  # the application always has more
        gw.messages_to_send(0.2 + k)
        assert gw.conns[cid].unsent == 0
        acked = gw.conns[cid].snd_nxt
        gw.receive(1, wire.DataAck(cid, acked, 1 << 20), 0.3 + k)
    assert sizes == [64 << 10, 128 << 10, 256 << 10, 256 << 10]  # doubled, then buffer_max
    assert gw.counters["send_grown"] == 2
    # a slow reader: the window closes before the buffer is all out, nothing grows
    slow = Mux("gateway", p)
    slow.path_up(1, 0.0, room=10 << 20)
    cid = slow.open("10.1.0.5", 40001, "198.51.100.7", 443)
    slow.receive(1, wire.OpenOk(cid), 0.1)
    slow.receive(1, wire.DataAck(cid, 0, 32 << 10), 0.1)
    for k in range(4):
        slow.send(cid, b"a" * (1 << 20))
        slow.messages_to_send(0.2 + k)
        slow.receive(1, wire.DataAck(cid, slow.conns[cid].snd_nxt, 0), 0.3 + k)
    assert slow.counters["send_grown"] == 0 and slow.conns[cid].send_limit(p) == 64 << 10


def test_unknown_connection_gets_one_rst_per_burst():
    node = Mux("node")
    node.path_up(1, 0.0)
    for i in range(5):
        node.receive(1, wire.Data(99, i, b"z"), 0.0)
    out = node.messages_to_send(0.0)
    assert [type(msg) for _, msg in out] == [wire.Rst]
    assert out[0][1].reason is wire.RstReason.UNKNOWN_CONNECTION


def test_sender_never_exceeds_advertised_window():
    gw = Mux("gateway", MuxParams(buffer_bytes=1 << 20, message_size=4096))
    gw.path_up(1, 0.0, room=10 << 20)
    cid = gw.open("10.1.0.5", 40000, "198.51.100.7", 443)
    gw.send(cid, b"a" * (1 << 20))
    sent = sum(
        len(msg.payload) for _, msg in gw.messages_to_send(0.0) if isinstance(msg, wire.Data)
    )
    assert sent == m.INITIAL_WINDOW
    gw.receive(1, wire.OpenOk(cid), 0.1)
    gw.receive(1, wire.DataAck(cid, 10_000, 20_000), 0.1)  # edge 30000 < what was sent
    assert not [msg for _, msg in gw.messages_to_send(0.1) if isinstance(msg, wire.Data)]
    gw.receive(1, wire.DataAck(cid, m.INITIAL_WINDOW, 50_000), 0.2)
    sent = sum(
        len(msg.payload) for _, msg in gw.messages_to_send(0.2) if isinstance(msg, wire.Data)
    )
    assert sent == 50_000
    # an older ACK arriving late on a slow path does not pull the edge back
    gw.receive(1, wire.DataAck(cid, 10_000, 0), 0.3)
    assert gw.conns[cid].peer_edge == m.INITIAL_WINDOW + 50_000


def test_ack_beyond_sent_data_is_a_protocol_error():
    gw = Mux("gateway")
    gw.path_up(1, 0.0)
    cid = gw.open("10.1.0.5", 40000, "198.51.100.7", 443)
    gw.send(cid, b"abc")
    gw.messages_to_send(0.0)
    gw.receive(1, wire.DataAck(cid, 10, 1000), 0.1)
    ev = gw.next_event()
    assert isinstance(ev, m.Reset) and ev.reason is wire.RstReason.PROTOCOL_ERROR


def test_policy_gets_message_info_and_lowest_rtt_default():
    seen = []

    def spy(info, paths, now):
        seen.append(info)
        return m.lowest_rtt_policy(info, paths, now)

    gw = Mux("gateway", policy=spy)
    gw.path_up(1, 0.0, srtt=0.05)
    gw.path_up(2, 0.0, srtt=0.02)
    cid = gw.open("10.1.0.5", 40000, "198.51.100.7", 443)
    out = gw.messages_to_send(0.0)
    assert out == [(2, gw.conns[cid].open_msg)]
    assert seen[0].kind == CONTROL and seen[0].conn_id == cid
    paths = [m.PathState(1, srtt=0.01, room=0), m.PathState(2, srtt=0.05, room=100)]
    assert m.lowest_rtt_policy(MessageInfo(1, 10, DATA), paths, 0) == (2,)
    assert m.lowest_rtt_policy(MessageInfo(1, 10, ACK), paths, 0) == (1,)
    assert m.lowest_rtt_policy(MessageInfo(1, 10, REINJECTION, avoid=(2,)), paths, 0) == ()


@pytest.mark.parametrize("seed", range(3))
def test_random_cuts_and_restores_never_lose_bytes(seed):
    rng = random.Random(seed)
    net = Net({1: 0.008, 2: 0.020, 3: 0.045})
    cid = net.gw.open("10.1.0.5", 40000, "198.51.100.7", 443)
    up = payload(1 << 20, 100 + seed)
    f = Feeder(net.gw, cid, up)

    def done():
        f()
        if rng.random() < 0.01:
            pid = rng.choice([1, 2, 3])
            if pid in net.up and len(net.up) > 1:
                net.cut(pid)
            elif pid not in net.up:
                net.restore(pid)
        return bool(net.kinds("node", m.PeerFinished))

    net.run(done)
    assert bytes(net.received["node"]) == up


# -- the blocks together over real loopback sockets -----------------------------------------


class _Shell:
    """A minimal non-blocking path shell for one side (what the processes will do)."""

    LIMIT = 256 << 10  # bytes a path may hold in our send buffer: its "room"

    def __init__(self, mux, socks):
        import selectors

        self.mux, self.socks = mux, dict(socks)
        self.out = {pid: bytearray() for pid in self.socks}
        self.dec = {pid: wire.Decoder(1 << 20) for pid in self.socks}
        self.sel = selectors.DefaultSelector()
        for pid, s in self.socks.items():
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, pid)

    def kill(self, pid, now):
        s = self.socks.pop(pid, None)
        if s is not None:
            self.sel.unregister(s)
            s.close()
            self.out.pop(pid)
            self.mux.path_down(pid, now)

    def turn(self, now):
        import ssl

        for pid in self.socks:
            self.mux.update_path(pid, room=max(0, self.LIMIT - len(self.out[pid])))
        for pid, msg in self.mux.messages_to_send(now):
            if pid in self.out:
                self.out[pid] += wire.encode(msg)
        for pid in list(self.socks):
            buf = self.out[pid]
            while buf:
                try:
                    n = self.socks[pid].send(buf[: 64 << 10])
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    break
                except OSError:
                    self.kill(pid, now)
                    break
                del buf[:n]
        for key, _ in self.sel.select(timeout=0.005):
            pid = key.data
            while pid in self.socks:
                try:
                    chunk = self.socks[pid].recv(1 << 16)
                except (ssl.SSLWantReadError, BlockingIOError):
                    break
                except OSError:
                    chunk = b""
                if not chunk:
                    self.kill(pid, now)
                    break
                self.dec[pid].feed(chunk)
                for msg in self.dec[pid]:
                    self.mux.receive(pid, msg, now)


def test_mux_over_tls_loopback_paths_survives_a_killed_path(tmp_path):
    import socket
    import threading
    import time

    from middlebox.config import TLSConfig
    from middlebox.paths import pki, tls
    from middlebox.paths.sockets import PathOptions, connect_path, tcp_info

    pki.create_ca(tmp_path)
    pki.create_node(tmp_path, ["127.0.0.1"])
    pki.create_gateway(tmp_path, "train-9")
    ca = str(tmp_path / "ca.pem")
    node_ctx = tls.node_context(
        TLSConfig(ca, str(tmp_path / "node.pem"), str(tmp_path / "node.key"))
    )
    gw_ctx = tls.gateway_context(
        TLSConfig(ca, str(tmp_path / "gateway-train-9.pem"), str(tmp_path / "gateway-train-9.key"))
    )
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(10)
    port = lsock.getsockname()[1]
    node_paths, errors = {}, []

    def node_accept():
        try:
            for path_id in (1, 2):
                raw, _ = lsock.accept()
                s = node_ctx.wrap_socket(raw, server_side=True)
                s.settimeout(10)
                dec = wire.Decoder(1 << 20)
                while not (hello := next(iter(dec), None)):
                    dec.feed(s.recv(4096))
                tls.check_gateway_id(s, hello.gateway_id)
                s.sendall(wire.encode(wire.HelloAck("node-1", path_id)))
                node_paths[path_id] = s
        except Exception as e:  # reported by the main thread
            errors.append(e)

    t = threading.Thread(target=node_accept)
    t.start()
    gw_paths = {}
    for index in (0, 1):
        raw = connect_path(PathOptions(congestion_control="bbr"), "127.0.0.1", port, 10)
        s = gw_ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        s.sendall(wire.encode(wire.Hello("train-9", 42, f"carrier-{index}", "lte", index)))
        dec = wire.Decoder(1 << 20)
        while not (ack := next(iter(dec), None)):
            dec.feed(s.recv(4096))
        gw_paths[ack.path_id] = s
    t.join(15)
    lsock.close()
    assert not errors and set(node_paths) == {1, 2}

    params = MuxParams(buffer_bytes=1 << 20, message_size=16 << 10)
    gw, node = Mux("gateway", params), Mux("node", params)
    t0 = time.monotonic()
    for pid in (1, 2):
        gw.path_up(pid, 0.0, srtt=tcp_info(gw_paths[pid]).srtt or 0.001)
        node.path_up(pid, 0.0)
    gws, nodes = _Shell(gw, gw_paths), _Shell(node, node_paths)
    up = payload(8 << 20, 77)
    cid = gw.open("10.1.0.5", 40000, "198.51.100.7", 443)
    feeder = Feeder(gw, cid, up)
    echoed, got, backlog, node_done = bytearray(), bytearray(), bytearray(), False
    killed = False
    try:
        while gw.pending(cid) or node.pending(cid):
            now = time.monotonic() - t0
            assert now < 60, f"stuck: node got {len(got)} of {len(up)}"
            feeder()
            if not killed and len(got) > len(up) // 3:
                gws.kill(1, now)  # the carrier dies mid-transfer; the node sees EOF
                killed = True
            for shell, mx in ((gws, gw), (nodes, node)):
                shell.turn(now)
                while (ev := mx.next_event()) is not None:
                    if isinstance(ev, m.OpenRequested):
                        mx.accept(ev.conn_id)
                    if isinstance(ev, m.PeerFinished) and mx is node:
                        node_done = True
            if node.pending(cid):
                if len(backlog) < (1 << 20):  # echo, reading only while the echo keeps up
                    data = node.read(cid)
                    got += data
                    backlog += data
                if backlog:
                    del backlog[: node.send(cid, backlog)]
                if node_done and not backlog and not node.conns[cid].fin_wanted:
                    node.shutdown(cid)
            if gw.pending(cid):
                echoed += gw.read(cid)
    finally:
        for s in list(gw_paths.values()) + list(node_paths.values()):
            s.close()
    assert killed and 1 not in gws.socks and 1 not in nodes.socks
    assert bytes(got) == up and bytes(echoed) == up
    assert gw.paths[2].sent_bytes > 0 and gw.paths[1].sent_bytes > 0


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(1, 5000),
    cuts=st.lists(st.tuples(st.integers(0, 4999), st.integers(1, 1500)), max_size=40),
    seed=st.integers(0, 1 << 30),
)
def test_reassembly_property_any_order_overlap_and_duplicates(size, cuts, seed):
    """Whatever pieces arrive, in whatever order, overlapping or repeated, the
    receiver delivers exactly the stream once every byte has arrived, and its SACK
    ranges always satisfy the wire rules (the DataAck constructor checks them)."""
    data = random.Random(seed).randbytes(size)
    pieces = [(a, min(size, a + n)) for a, n in cuts if a < size]
    pieces += [(a, min(size, a + 700)) for a in range(0, size, 700)]  # full coverage
    random.Random(seed).shuffle(pieces)
    node = opened_node()
    for i, (a, b) in enumerate(pieces):
        node.receive(1, wire.Data(7, a, data[a:b]), 0.001 * i)
        acks(node, 0.001 * i)  # builds DataAck: raises if ranges were malformed
    assert bytes(node.read(7)) == data
    assert not node.conns[7].store and node.conns[7].store.data_bytes == 0


def test_paths_lost_reset_reaches_the_peer_when_a_path_returns():
    # the peer may still hold the connection (its paths looked alive to it)
    gw = Mux("gateway", MuxParams(paths_lost_timeout=5.0))
    gw.path_up(1, 0.0)
    cid = gw.open("10.0.0.1", 1000, "198.51.100.1", 80)
    assert gw.messages_to_send(0.0)
    gw.path_down(1, 1.0)
    gw.handle_timer(7.0)
    ev = gw.next_event()
    assert isinstance(ev, m.Reset) and ev.reason == wire.RstReason.PATHS_LOST
    assert not gw.pending(cid)
    gw.path_up(1, 8.0)
    rsts = [x for _, x in gw.messages_to_send(8.0) if isinstance(x, wire.Rst)]
    assert [(r.conn_id, r.reason) for r in rsts] == [(cid, wire.RstReason.PATHS_LOST)]


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=25),
    data=st.data(),
)
def test_sack_ranges_free_exactly_the_messages_they_cover(sizes, data):
    mx = Mux("gateway")
    conn = m.Conn(1, m.ConnState.OPEN, mx.params)
    seq = 0
    for n in sizes:
        conn.inflight[seq] = m._Inflight(seq, seq + n, False, 1, 0.0)
        seq += n
    conn.snd_nxt = seq
    conn.sbuf = bytearray(seq)
    mx.conns[1] = conn
    k = data.draw(st.integers(0, min(2 * wire.MAX_SACK_RANGES, seq) // 2)) * 2
    points = sorted(data.draw(st.sets(st.integers(1, seq), min_size=k, max_size=k)))
    ranges = tuple(zip(points[::2], points[1::2], strict=True))
    want = {
        q for q, inf in conn.inflight.items() if not any(s <= q and inf.end <= e for s, e in ranges)
    }
    mx.receive(1, wire.DataAck(1, 0, 1 << 20, ranges), 1.0)
    assert set(conn.inflight) == want


# -- what shells read: unread bytes, connection ids, a path's state -------------------------


def test_unread_is_what_read_has_not_taken_yet():
    node = opened_node()
    assert node.unread(7) == 0
    node.receive(1, wire.Data(7, 0, b"x" * 100), 0.0)
    node.receive(1, wire.Data(7, 200, b"y" * 50), 0.0)  # out of order: not readable yet
    assert node.unread(7) == 100
    assert len(node.read(7, 30)) == 30 and node.unread(7) == 70
    node.read(7)
    assert node.unread(7) == 0
    assert node.unread(8) == 0  # a connection the mux does not hold


def test_conn_ids_are_a_copy_the_caller_may_abort_while_walking():
    gw = Mux("gateway")
    gw.path_up(1, 0.0)
    a = gw.open("10.0.0.1", 1000, "198.51.100.1", 80)
    b = gw.open("10.0.0.1", 1001, "198.51.100.1", 80)
    assert gw.conn_ids() == [a, b]
    for cid in gw.conn_ids():
        gw.abort(cid, wire.RstReason.SHUTDOWN, 1.0)
    assert gw.conn_ids() == [] and not gw.pending(a) and not gw.pending(b)


def test_path_state_shows_what_the_mux_knows_of_a_path():
    gw = Mux("gateway")
    assert gw.path_state(1) is None
    gw.path_up(1, 0.0, srtt=0.03, room=1 << 20)
    cid = gw.open("10.0.0.1", 1000, "198.51.100.1", 80)
    gw.send(cid, b"z" * 1000)
    assert [type(msg) for _, msg in gw.messages_to_send(0.0)] == [wire.Open, wire.Data]
    p = gw.path_state(1)
    assert p.up and p.srtt == 0.03 and (p.sent_bytes, p.sent_messages) == (1000, 1)  # DATA
    gw.path_down(1, 1.0)
    assert gw.path_state(1).up is False
