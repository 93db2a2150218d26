"""The session core against a hostile peer: holes cost time and memory in proportion,
a session's connections are capped, and the memory budget is held by the windows
advertised, never by dropping accepted data. Core level: messages straight into a
node-side Mux (and a gateway-side one for flows), no sockets, bounded loops."""

from __future__ import annotations

import random
import time
import tracemalloc

from middlebox.session import mux as m
from middlebox.session import wire
from middlebox.session.mux import INITIAL_WINDOW, Budget, Mux, MuxParams
from middlebox.session.reorder import PIECE_COST, RUN_COST


def open_conn(node: Mux, cid: int, now: float = 0.0) -> None:
    node.receive(1, wire.Open(cid, "10.0.0.1", 1000 + cid, "192.0.2.1", 80), now)
    ev = node.next_event()
    assert isinstance(ev, m.OpenRequested) and ev.conn_id == cid
    node.accept(cid)


def node_mux(**kw) -> Mux:
    budget = kw.pop("budget", None)
    node = Mux("node", MuxParams(**kw), budget=budget)
    node.path_up(1, 0.0)
    return node


def holes(node: Mux, cid: int, offsets: list[int]) -> float:
    """Seconds per one-byte DATA at ``offsets``."""
    t = time.perf_counter()
    for off in offsets:
        node.receive(1, wire.Data(cid, off, b"x"), 1.0)
    return (time.perf_counter() - t) / len(offsets)


def test_hole_cost_is_flat_from_1000_to_100000_holes():
    """One-byte DATA with gaps, in random order: the cost of a message does not grow
    with the holes already held (it was quadratic: 16 000 messages took 19 s)."""
    rng = random.Random(5)
    per = {}
    for n in (1_000, 100_000):
        node = node_mux(buffer_bytes=1 << 20, reorder_overhead=1 << 30)
        open_conn(node, 1)
        offsets = [2 * k + 1 for k in range(n + 2_000)]
        rng.shuffle(offsets)
        holes(node, 1, offsets[:n])  # n holes held
        assert len(node.conns[1].store) == n
        # the next 2 000, three times over on copies of the state would be best; the
        # machine is shared, so take the fastest of three slices of 2 000 instead
        rest = offsets[n:]
        per[n] = min(holes(node, 1, rest[i::3]) for i in range(3))
        node.messages_to_send(1.0)  # a DATA_ACK with the first 32 ranges: cheap too
    print(f"per message: {per[1_000] * 1e6:.1f} us at 1 000 holes, "
          f"{per[100_000] * 1e6:.1f} us at 100 000")  # fmt: skip
    assert per[100_000] < 8 * per[1_000]  # quadratic: about 100 times


def test_filling_100000_holes_delivers_everything_in_linear_time():
    node = node_mux(buffer_bytes=1 << 20, reorder_overhead=1 << 30)
    open_conn(node, 1)
    n = 100_000
    t = time.perf_counter()
    holes(node, 1, [2 * k + 1 for k in range(n)][::-1])  # worst order: always in front
    holes(node, 1, [2 * k for k in range(n)])  # each fills the first hole: delivers two
    took = time.perf_counter() - t
    data = node.read(1)
    assert data == b"x" * (2 * n) and not node.conns[1].store
    assert took < 20.0, took  # about 1-3 s on a loaded machine; quadratic: hours


def test_one_byte_holes_cannot_pin_megabytes():
    """64 000 one-byte holes (the attack held 6.9 MB; 20 KB of them held 3.6 MB): the
    store's bookkeeping is bounded by reorder_overhead, the connection is reset and
    counted, its memory returned; a connection beside it is unharmed."""
    overhead = 256 << 10
    node = node_mux(buffer_bytes=4 << 20, reorder_overhead=overhead)
    open_conn(node, 1)
    open_conn(node, 2)
    node.messages_to_send(0.0)
    data = random.Random(1).randbytes(1 << 20)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        peak = 0
        for k in range(64_000):
            node.receive(1, wire.Data(1, 2 * k + 1, b"x"), 1.0)
            if k % 1000 == 0:
                off = (k // 1000) * (16 << 10)
                node.receive(1, wire.Data(2, off, data[off : off + (16 << 10)]), 1.0)
                peak = max(peak, tracemalloc.get_traced_memory()[0] - base)
        peak = max(peak, tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    held_limit = overhead // (PIECE_COST + RUN_COST) + 1
    assert node.counters["reorder_overflow"] == 1
    assert not node.pending(1)
    resets = [e for e in iter(node.next_event, None) if isinstance(e, m.Reset)]
    assert [(e.conn_id, e.reason) for e in resets] == [(1, wire.RstReason.BUFFER_OVERFLOW)]
    print(f"reset after about {held_limit} holes; peak traced {peak / 1e6:.2f} MB")
    # the reset connection's pieces went; what is left is connection 2's in-order data
    # (64 pieces of 16 KiB, unread) and the tombstone
    assert peak < (1 << 20) + overhead + (256 << 10)  # was 6.9 MB for the holes alone
    assert node.held == len(node.conns[2].rbuf) == 64 * (16 << 10)
    assert bytes(node.read(2)) == data[: 64 * (16 << 10)]
    assert any(type(msg) is wire.Rst and msg.conn_id == 1 for _, msg in node.messages_to_send(1.0))


def test_a_session_beyond_its_connection_cap_gets_open_fail_and_another_is_unharmed():
    process = Budget(1 << 30)
    busy = Mux("node", MuxParams(max_connections=10), budget=Budget(1 << 28, process))
    calm = Mux("node", MuxParams(max_connections=10), budget=Budget(1 << 28, process))
    for mx in (busy, calm):
        mx.path_up(1, 0.0)
    for cid in range(1, 16):
        busy.receive(1, wire.Open(cid, "10.0.0.1", 1000 + cid, "192.0.2.1", 80), 0.0)
    asked = [e.conn_id for e in iter(busy.next_event, None) if isinstance(e, m.OpenRequested)]
    assert asked == list(range(1, 11))
    fails = [msg for _, msg in busy.messages_to_send(0.0) if type(msg) is wire.OpenFail]
    assert [(f.conn_id, f.reason) for f in fails] == [
        (cid, wire.OpenFailReason.NO_RESOURCES) for cid in range(11, 16)
    ]
    assert busy.counters["open_over_limit"] == 5
    # a repeated OPEN (from another path) gets the same answer, not a second count
    busy.receive(1, wire.Open(12, "10.0.0.1", 1012, "192.0.2.1", 80), 0.1)
    assert [type(msg) for _, msg in busy.messages_to_send(0.1)] == [wire.OpenFail]
    assert busy.counters["open_over_limit"] == 5
    open_conn(calm, 1)
    calm.receive(1, wire.Data(1, 0, b"hello"), 0.2)
    assert calm.read(1) == b"hello" and calm.counters["open_over_limit"] == 0


class Pair:
    """A gateway mux and a node mux joined by one lossless path (messages go straight
    across, through the codec); the node reads only what ``read`` allows."""

    def __init__(self, node_budget: Budget, buffer_bytes: int) -> None:
        params = MuxParams(buffer_bytes=buffer_bytes, buffer_max=buffer_bytes)
        self.gw = Mux("gateway", params)
        self.node = Mux("node", params, budget=node_budget)
        for mx in (self.gw, self.node):
            mx.path_up(1, 0.0)
        self.now = 0.0
        self.got: dict[int, bytearray] = {}
        self.windows: dict[int, int] = {}  # the largest window each DATA_ACK advertised
        self.resets = 0

    def step(self, read: int) -> None:
        self.now += 0.001
        for src, dst in ((self.gw, self.node), (self.node, self.gw)):
            src.update_path(1, room=1 << 30)  # the path itself is never the limit here
            for _, msg in src.messages_to_send(self.now):
                for decoded in wire.decode_all(wire.encode(msg), 1 << 20):
                    if type(decoded) is wire.DataAck and src is self.node:
                        w = self.windows.get(decoded.conn_id, 0)
                        self.windows[decoded.conn_id] = max(w, decoded.window)
                    dst.receive(1, decoded, self.now)
        while (e := self.node.next_event()) is not None:
            if isinstance(e, m.OpenRequested):
                self.node.accept(e.conn_id)
            elif isinstance(e, m.Reset):
                self.resets += 1
        for cid in self.node.conn_ids():
            self.got.setdefault(cid, bytearray()).extend(self.node.read(cid, read))


def test_the_budget_shrinks_new_windows_and_no_accepted_byte_is_dropped():
    """Readers that do not read fill the node's budget; new connections get smaller
    windows as it fills (down to INITIAL_WINDOW), growth stops, the senders hold back,
    nothing is reset; once the readers read, every byte arrives exact."""
    buffer = 1 << 20
    budget = Budget(6 << 20)
    p = Pair(budget, buffer)
    data = {}
    sent = {}
    for k in range(16):
        cid = p.gw.open("10.0.0.1", 2000 + k, "192.0.2.1", 80)
        data[cid] = random.Random(cid).randbytes(2 << 20)
        sent[cid] = 0
        for _ in range(200):  # the sender offers as much as it may; the node reads nothing
            sent[cid] += p.gw.send(cid, data[cid][sent[cid] : sent[cid] + (256 << 10)])
            p.step(read=0)
    windows = [p.node.conns[cid].window for cid in sorted(data)]
    print("windows of the 16 connections:", [w >> 10 for w in windows], "KiB;", budget.status())
    assert windows[0] == buffer  # plenty free: the full window
    assert windows == sorted(windows, reverse=True)  # smaller as the budget filled
    assert windows[-1] == INITIAL_WINDOW
    assert p.node.counters["windows_shrunk"] >= 6
    # what the node holds stays within the budget plus the windows it had advertised
    assert budget.peak <= budget.limit + sum(windows)
    assert p.resets == 0 and p.node.counters["resets_sent"] == 0
    # readers wake up: every byte arrives, in order, exactly once
    for _ in range(20_000):
        for cid in data:
            if p.gw.pending(cid) and sent[cid] < len(data[cid]):
                sent[cid] += p.gw.send(cid, data[cid][sent[cid] : sent[cid] + (256 << 10)])
        p.step(read=64 << 10)
        if all(len(p.got.get(c, b"")) == len(d) for c, d in data.items()):
            break
    for cid, d in data.items():
        assert bytes(p.got[cid]) == d
    assert p.resets == 0 and budget.held == p.node.held


def test_windows_stop_growing_when_the_budget_is_short():
    """A hole that holds back half the window doubles it (issue 12) only while the budget
    has room for it; otherwise the growth is held and counted."""
    for limit, grows in ((1 << 30, True), (4 << 20, False)):
        node = node_mux(buffer_bytes=1 << 20, buffer_max=8 << 20, budget=Budget(limit))
        open_conn(node, 1)
        filler = b"y" * (600 << 10)
        node.receive(1, wire.Data(1, 1, filler), 0.1)  # byte 0 missing: 600 KiB behind it
        assert (node.conns[1].window > 1 << 20) is grows
        assert (node.counters["growth_held"] > 0) is not grows
        node.receive(1, wire.Data(1, 0, b"x"), 0.2)
        assert node.read(1) == b"x" + filler


def test_work_per_message_is_flat_from_1000_to_100000_holes():
    """The same as the timing above, counted in calls (the same on a loaded machine):
    a one-byte DATA into a hole costs the same work with 1 000, 10 000 or 100 000 held."""
    import sys

    per = {}
    for n in (1_000, 10_000, 100_000):
        node = node_mux(buffer_bytes=1 << 20, reorder_overhead=1 << 30)
        open_conn(node, 1)
        offsets = [4 * k + 2 for k in range(n)]
        random.Random(n).shuffle(offsets)
        holes(node, 1, offsets)
        probe = [4 * k for k in random.Random(n + 1).sample(range(1, n), 500)]
        count = 0

        def tally(frame, event, arg) -> None:
            nonlocal count
            count += event in ("call", "c_call")

        sys.setprofile(tally)
        try:
            holes(node, 1, probe)
        finally:
            sys.setprofile(None)
        per[n] = count / len(probe)
    print("calls per message:", per)
    assert per[100_000] <= 1.2 * per[1_000] and per[10_000] <= 1.2 * per[1_000], per


def test_a_source_that_fills_the_budget_squeezes_its_own_connections_not_another_s():
    """One passenger's connections fill the budget (their reader never reads): its next
    connection gets a smaller window and send room, another passenger's a full window
    and full send room (it was squeezed as well: 64 connections of one passenger took
    another's download to 2-41 % on the testbed)."""
    buffer = 1 << 20
    node = node_mux(buffer_bytes=buffer, buffer_max=8 << 20, budget=Budget(8 << 20))

    def open_from(cid: int, src: str) -> None:
        node.receive(1, wire.Open(cid, src, 1000 + cid, "192.0.2.1", 80), 0.0)
        events = list(iter(node.next_event, None))
        assert any(isinstance(e, m.OpenRequested) and e.conn_id == cid for e in events)
        node.accept(cid)

    chunk = b"x" * (256 << 10)
    for cid in range(1, 11):
        open_from(cid, "10.0.0.1")
        for k in range(4):
            node.receive(1, wire.Data(cid, k * len(chunk), chunk), 0.1)
    list(iter(node.next_event, None))
    assert node.budget.free() < 4 * buffer  # short: new windows shrink
    open_from(20, "10.0.0.1")
    open_from(21, "10.0.0.2")
    assert node.conns[20].window < buffer and node.conns[21].window == buffer
    assert node.counters["windows_fair"] == 1 and node.stats()["memory"]["sources"] == 2
    # the other passenger may grow its window too; the first one may not
    node.receive(1, wire.Data(21, 1, b"y" * (600 << 10)), 0.2)  # byte 0 missing
    assert node.conns[21].window > buffer
    # once the first passenger's connections are gone, its tally goes with them
    for cid in (*range(1, 11), 20):
        node.receive(1, wire.Rst(cid, wire.RstReason.CLIENT_RESET), 0.3)
    list(iter(node.next_event, None))
    assert node.stats()["memory"]["sources"] == 1 and node.budget.held == node.held
