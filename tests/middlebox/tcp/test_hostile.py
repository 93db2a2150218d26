"""What a hostile client can make the endpoint do: each attack with a bounded loop.

Holes in the stream (cost per segment flat, memory bounded), data after a FIN, SYN
floods (half-open limits per source and in total, SYN cookies and what survives them),
the per-source connection cap and the rate of RSTs to strangers.
"""

from __future__ import annotations

import dataclasses
import os
import tracemalloc

import pytest

from bench.edge_bench import hole_cost
from middlebox.tcp import connection as C
from middlebox.tcp import cookies
from middlebox.tcp.constants import ACK, FIN, RST, SEQ_MASK, SYN
from middlebox.tcp.endpoint import EndpointTable
from middlebox.tcp.events import ConnectionEstablished
from middlebox.tcp.options import Options
from middlebox.tcp.packet import Segment

PORT = 40000


def table(cfg, **kw) -> EndpointTable:
    return EndpointTable(dataclasses.replace(cfg, **kw), auto_accept=True, secret=b"h" * 16)


def connect(sim, net, **client_kw):
    c = sim.SimClient(**client_kw)
    net.add(c)
    key = (sim.CLIENT, c.port, sim.SERVER, 80)

    def up() -> bool:
        conn = net.table.connections.get(key)
        return conn is not None and conn.state == C.ESTABLISHED

    net.run(net.now + 5.0, up)  # after a cookie, the connection exists only now
    assert up() and c.established
    return c, net.table.connections[key]


def syn_from(src: bytes, sport: int, seq: int = 5000, ts: bool = False) -> Segment:
    o = Options(mss=1460, wscale=7, sack_permitted=True, tsval=12345 if ts else None, tsecr=0)
    return Segment(src, bytes([203, 0, 113, 5]), sport, 80, seq, 0, SYN, 65535, b"", o)


# -- holes ------------------------------------------------------------------------------


@pytest.mark.slow
def test_cost_per_segment_is_flat_from_1000_to_100000_holes() -> None:
    # Wall-clock, so with a wide margin: the old per-ACK walk of every range cost about
    # 100x more at 100 000 holes than at 1 000; an O(log n) queue costs about the same.
    small = min(hole_cost(1_000, 1000, "random", seed) for seed in (1, 2, 3))
    large = min(hole_cost(100_000, 1000, "random", seed) for seed in (1, 2))
    assert large < 5 * small, (small, large)


@pytest.mark.slow
def test_64000_one_byte_holes_stay_within_the_memory_bound(sim, cfg) -> None:
    limit = 1 << 20
    net = sim.Net(table(cfg, ofo_memory=limit))
    c, conn = connect(sim, net)
    base = c.snd_nxt
    stream = os.urandom(128_000)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    t = net.table
    for k in range(64_000):  # one byte at every odd offset: 64 000 holes
        t.receive_segment(c._seg(net.now, ACK, base + 2 * k + 1, stream[2 * k + 1 : 2 * k + 2]), 0)
        t.segments_to_send(net.now)  # the ACKs (with SACK) are not kept
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert conn.ofo.memory <= limit and held <= limit * 1.1, held
    assert 0 < conn.stats_ofo_dropped < 64_000 and conn.rcv_nxt == 0
    assert net.table.totals()["ofo_dropped"] == conn.stats_ofo_dropped
    # in-order data is always taken within the window, so the stream still completes
    for off in range(0, len(stream), 1400):
        net.inject(c._seg(net.now, ACK, base + off, stream[off : off + 1400]))
    assert bytes(net.data[c.port]) == stream and conn.ofo is None


# -- data after FIN --------------------------------------------------------------------


def test_data_after_the_fin_is_not_delivered_and_is_answered(sim, make_net) -> None:
    net = make_net()
    c, conn = connect(sim, net)
    base = c.snd_nxt
    net.inject(c._seg(net.now, ACK | FIN, base, b"hello"))
    assert conn.state == C.CLOSE_WAIT
    out = net.inject(c._seg(net.now, ACK, base + 6, b"world"))  # bytes beyond the FIN
    assert bytes(net.data[c.port]) == b"hello" and conn.stats_after_fin == 1
    assert [s.ack for s in out] == [(base + 6) & SEQ_MASK]  # an ACK naming the end
    # a FIN that arrives out of order ends the stream at its place, too
    c2, conn2 = connect(sim, net, port=PORT + 1)
    b2 = c2.snd_nxt
    net.inject(c2._seg(net.now, ACK | FIN, b2 + 5, b""))
    out = net.inject(c2._seg(net.now, ACK, b2, b"helloworld"))  # straddles the FIN
    assert bytes(net.data[c2.port]) == b"hello" and conn2.state == C.CLOSE_WAIT
    assert conn2.stats_after_fin == 1 and out[-1].ack == (b2 + 6) & SEQ_MASK
    # and data stored beyond a FIN that comes later is dropped with the queue
    c3, conn3 = connect(sim, net, port=PORT + 2)
    b3 = c3.snd_nxt
    net.inject(c3._seg(net.now, ACK, b3 + 10, b"late"))
    net.inject(c3._seg(net.now, ACK | FIN, b3 + 3, b""))
    net.inject(c3._seg(net.now, ACK, b3, b"abc"))
    assert bytes(net.data[c3.port]) == b"abc" and conn3.ofo is None
    assert net.table.totals()["data_after_fin"] == 2


# -- SYN floods ------------------------------------------------------------------------


def test_syn_flood_from_one_source_costs_bounded_state_and_spares_another(sim, cfg) -> None:
    t = table(cfg, max_half_open=256, max_half_open_per_source=64)
    net = sim.Net(t)
    attacker = bytes([10, 1, 0, 66])
    for i in range(10_000):
        t.receive_segment(syn_from(attacker, 1024 + i % 60000, seq=i), i / 1000)
    out = t.segments_to_send(10.0)
    st = t.totals()
    assert st["half_open"] == 64 and len(t) == 64  # the rest got cookies: no state
    assert st["syn_cookies_sent"] == 10_000 - 64 and len(out) == 10_000
    assert not net.events  # nothing reached the proxy
    c, conn = connect(sim, net)  # another passenger: a normal handshake
    assert conn.accepted and st["half_open"] == 64
    assert [type(e) for e in net.events] == [ConnectionEstablished]


def test_global_half_open_limit_gives_cookies_to_everyone_and_they_still_connect(sim, cfg) -> None:
    net = sim.Net(table(cfg, max_half_open=1))
    net.table.receive_segment(syn_from(bytes([10, 1, 0, 9]), 1), 0.0)  # fills the queue
    net.table.segments_to_send(0.0)
    c, conn = connect(sim, net)
    assert net.table.counters["syn_cookies_ok"] == 1 and net.table.totals()["half_open"] == 1
    data = os.urandom(200_000)
    c.send(data)
    conn.send(data[::-1])
    net.run(net.now + 20, lambda: len(c.received) == len(data))
    assert bytes(net.data[c.port]) == data and bytes(c.received) == data[::-1]


@pytest.mark.parametrize("ts", [True, False])
def test_a_cookie_handshake_keeps_what_survives_a_cookie(sim, cfg, ts) -> None:
    net = sim.Net(table(cfg, max_half_open_per_source=1))
    net.table.receive_segment(syn_from(sim.CLIENT, 1), 0.0)  # this source's one slot
    net.table.segments_to_send(0.0)
    rule = lambda s, r: not s.flags & SYN and r.random() < 0.02  # noqa: E731
    net.drop_down = net.drop_up = rule
    c, conn = connect(sim, net, mss=1400, wscale=7, sack=True, ts=ts)
    synack = next(s for s in net.to_client if s.flags & SYN and s.dport == c.port)
    assert synack.opts.mss == 1460  # ours, as always
    assert conn.mss == 1300 - (12 if ts else 0)  # the client's 1400 rounded down to the table
    assert conn.ts_ok == ts and conn.sack_ok == ts
    assert conn.snd_wscale == (7 if ts else 0) and conn.rcv_wscale == (9 if ts else 0)
    assert (synack.opts.wscale is not None) == ts and synack.opts.sack_permitted == ts
    (est,) = [e for e in net.events if isinstance(e, ConnectionEstablished)]
    assert est.options.mss == 1300 and (est.options.tsval is not None) == ts
    data = os.urandom(300_000)
    c.send(data)
    conn.send(data)
    done = lambda: len(c.received) == len(data) == len(net.data[c.port])  # noqa: E731
    net.run(net.now + 60, done)
    assert bytes(c.received) == data and bytes(net.data[c.port]) == data


def test_a_forged_or_stale_cookie_ack_is_a_stranger(sim, cfg) -> None:
    t = table(cfg, max_half_open=0)
    t.receive_segment(syn_from(sim.CLIENT, 7, seq=100), 0.0)
    (synack,) = t.segments_to_send(0.0)
    good = (synack.seq + 1) & SEQ_MASK

    def ack(ack_no: int, seq: int = 101) -> Segment:
        return Segment(sim.CLIENT, synack.src, 7, 80, seq, ack_no, ACK, 1000)

    for bad in (ack(good ^ 1), ack(good, seq=102)):  # another cookie, another client ISN
        t.receive_segment(bad, 1.0)
        assert [s.flags for s in t.segments_to_send(1.0)] == [RST]
    later = 2 * cookies.SLOT + 1  # more than two slots later, while cookies are sent
    t.receive_segment(syn_from(sim.CLIENT, 8, seq=100), later)
    t.receive_segment(ack(good), later)
    assert [s.flags for s in t.segments_to_send(later)] == [SYN | ACK, RST]
    assert t.counters["syn_cookies_bad"] == 3 and not t.connections
    t.receive_segment(ack(good), 10.0)
    assert t.connections and t.counters["syn_cookies_ok"] == 1


def test_cookie_timestamps_never_go_back_and_carry_the_options() -> None:
    for tsval in (0, 63, 64, 1000, SEQ_MASK):
        for ws, sack in ((None, False), (0, True), (14, True), (7, False)):
            t = cookies.encode_ts(tsval, ws, sack)
            assert 0 <= (tsval - t) & SEQ_MASK < 128
            assert cookies.decode_ts(t) == (ws, sack)


def test_without_cookies_or_with_a_deciding_proxy_syns_beyond_the_limit_are_dropped(
    sim, cfg
) -> None:
    for t in (
        table(cfg, max_half_open=2, syn_cookies=False),
        EndpointTable(dataclasses.replace(cfg, max_half_open=2), secret=b"d" * 16),
    ):
        for i in range(5):
            t.receive_segment(syn_from(sim.CLIENT, 100 + i), 0.0)
        assert len(t) == 2 and t.counters["syn_dropped"] == 3
        assert t.counters["syn_cookies_sent"] == 0


def test_per_source_connection_cap_refuses_with_rst_and_spares_others(sim, cfg) -> None:
    net = sim.Net(table(cfg, max_connections_per_source=3))
    conns = [connect(sim, net, port=PORT + i)[1] for i in range(3)]
    c4 = sim.SimClient(port=PORT + 9)
    net.add(c4)
    net.run(net.now + 1)
    assert c4.got_rst and not c4.established and net.table.counters["refused_source"] == 1
    t = net.table
    t.receive_segment(syn_from(bytes([10, 1, 0, 77]), 5), net.now)  # another passenger
    assert len(t) == 4 and t.totals()["sources"] == 2
    conns[0].abort()
    net.run(net.now + 1)
    c5, _ = connect(sim, net, port=PORT + 10)  # a place became free
    assert c5.established


def test_rsts_to_strangers_are_rate_limited(sim, cfg) -> None:
    t = table(cfg, rst_rate=100)
    for i in range(1000):  # 1000 stray ACKs in 0.1 s
        t.receive_segment(Segment(sim.CLIENT, sim.SERVER, 1000 + i, 80, 1, 2, ACK, 100), i / 1e4)
    out = t.segments_to_send(0.1)
    assert 100 <= len(out) <= 111 and t.counters["rst_suppressed"] == 1000 - len(out)
