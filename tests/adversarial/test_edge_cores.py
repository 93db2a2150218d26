"""The gateway's edge under attack, on its cores (flow table, endpoint, bridge, mux; no
network): each attack with a bounded loop, beside a passenger that must not notice."""

from __future__ import annotations

import ipaddress
import random
import sys

from bench.edge_bench import held_holes
from middlebox.config import Config
from middlebox.gateway.bridge import Bridge
from middlebox.gateway.classifier import Classifier
from middlebox.gateway.flowtable import FlowTable
from middlebox.session import wire
from middlebox.session.mux import Mux, MuxParams
from middlebox.tcp.constants import ACK, RST, SEQ_MASK, SYN
from middlebox.tcp.endpoint import EndpointTable
from middlebox.tcp.options import Options
from middlebox.tcp.packet import Segment

ATTACKER = ipaddress.ip_address("100.64.0.66").packed
VICTIM = ipaddress.ip_address("100.64.0.10").packed
SERVER = ipaddress.ip_address("198.51.100.10").packed


class _Uplink:
    def __init__(self) -> None:
        self.mux = Mux("gateway", MuxParams())
        self.mux.path_up(1, 0.0)


def gateway_edge():
    """Flow table, endpoint, classifier and bridge as the gateway assembles them."""
    cfg = Config()
    flows = FlowTable.from_config(cfg.gateway)
    table = EndpointTable(cfg.tcp.params(), buffer_room=cfg.gateway.buffer_bytes, auto_accept=True)
    up = _Uplink()
    bridge = Bridge(up, flows, cfg.gateway.buffer_bytes // 2)  # type: ignore[arg-type]
    return Classifier(table, flows), bridge, up.mux


def pump(edge, bridge, now: float) -> list[Segment]:
    out = edge.segments_to_send(now)
    while (e := edge.next_event()) is not None:
        bridge.on_event(e, now)
    return out + edge.segments_to_send(now)


def handshake(edge, bridge, src: bytes, sport: int, now: float) -> Segment:
    syn = Segment(src, SERVER, sport, 443, 1000, 0, SYN, 65535, b"", Options(mss=1460))
    edge.receive_segment(syn, now)
    (synack,) = [s for s in pump(edge, bridge, now) if s.dport == sport and s.dst == src]
    assert synack.flags == SYN | ACK
    ack = Segment(src, SERVER, sport, 443, 1001, (synack.seq + 1) & SEQ_MASK, ACK, 65535)
    edge.receive_segment(ack, now + 0.001)
    pump(edge, bridge, now + 0.001)
    return synack


def opens(mux: Mux, now: float) -> int:
    return sum(isinstance(m, wire.Open) for _, m in mux.messages_to_send(now))


def test_syn_flood_from_one_source_never_reaches_the_mux_and_spares_another() -> None:
    edge, bridge, mux = gateway_edge()
    for i in range(10_000):  # 10 000 SYNs in 2 s from one passenger, never completed
        syn = Segment(ATTACKER, SERVER, 1024 + i, 443, i, 0, SYN, 65535, b"", Options(mss=1460))
        edge.receive_segment(syn, i / 5000)
        if i % 100 == 0:
            pump(edge, bridge, i / 5000)
    pump(edge, bridge, 2.0)
    assert mux.conn_ids() == [] and opens(mux, 2.0) == 0  # no OPEN for a half-open one
    totals, fc = edge.table.totals(), edge.flows.counters()
    assert totals["half_open"] <= 64 and len(edge.flows) <= 64
    assert fc.source_rate > 0 and totals["syn_cookies_sent"] > 0
    handshake(edge, bridge, VICTIM, 40000, 2.0)  # another passenger, at once
    assert len(mux.conn_ids()) == 1 and opens(mux, 2.01) == 1


def test_65536_bare_acks_from_one_source_leave_room_for_another_source() -> None:
    edge, bridge, mux = gateway_edge()
    rsts = 0
    for i in range(65_536):  # about 2 200 packets/s, as in the issue
        now = i / 2200
        ack = Segment(ATTACKER, SERVER, 1024 + i % 60000, 443 + i // 60000, i, i, ACK, 100)
        edge.receive_segment(ack, now)
        if i % 200 == 0:
            rsts += sum(s.flags == RST for s in pump(edge, bridge, now))
    rsts += sum(s.flags == RST for s in pump(edge, bridge, now))
    assert len(edge.flows) == 0 and edge.flows.counters().untracked == 65_536
    counters = edge.table.counters  # answered as a host would, at most rst_rate per second
    assert rsts == counters["rst_sent"] and rsts + counters["rst_suppressed"] == 65_536
    assert rsts <= 1000 * (65_536 / 2200 + 1)
    handshake(edge, bridge, VICTIM, 40000, 30.0)
    assert len(edge.flows) == 1 and len(mux.conn_ids()) == 1


def calls(fn) -> int:
    """Python and C function calls made by ``fn()``: a count of the work done, the same
    on a loaded machine as on an idle one."""
    n = 0

    def count(frame, event, arg) -> None:
        nonlocal n
        if event in ("call", "c_call"):
            n += 1

    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return n


def test_per_segment_work_is_flat_from_1000_to_100000_sack_holes() -> None:
    """The receive path (segment in, ACK with SACK blocks out) does the same work per
    segment with 1 000, 10 000 or 100 000 one-byte holes held: counted in calls, not
    timed (the walk it replaced grew linearly: 647 us at 1 000 holes, 10.8 ms at 16 000)."""
    per = {}
    for n in (1_000, 10_000, 100_000):
        table, probe = held_holes(n, "random")
        segs = [probe(k) for k in random.Random(n).sample(range(1, n), 500)]

        def run(table=table, segs=segs) -> None:
            for s in segs:
                table.receive_segment(s, 0.0)
                table.segments_to_send(0.0)

        per[n] = calls(run) / len(segs)
    print("calls per segment:", per)
    assert per[100_000] <= 1.2 * per[1_000] and per[10_000] <= 1.2 * per[1_000], per
