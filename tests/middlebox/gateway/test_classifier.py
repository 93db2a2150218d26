"""The classifier without namespaces: the flow table's actions on segments (deny -> RST,
ACL bypass written back unchanged, drop), the RST that refuses a segment, and what makes
an entry (a SYN the endpoint keeps state for; a cookie handshake once complete)."""

import dataclasses
import ipaddress

from middlebox.config import AclRuleConfig, Config, GatewayConfig
from middlebox.gateway.classifier import Classifier
from middlebox.gateway.flowtable import FlowTable, State
from middlebox.tcp.constants import ACK, RST, SEQ_MASK, SYN
from middlebox.tcp.endpoint import EndpointTable, reset_for
from middlebox.tcp.options import Options
from middlebox.tcp.packet import Segment

CLIENT = ipaddress.ip_address("100.64.0.10").packed
SERVER = ipaddress.ip_address("198.51.100.10").packed
DENIED = ipaddress.ip_address("203.0.113.10").packed


def syn(dst=SERVER, dport=80, sport=40000):
    return Segment(CLIENT, dst, sport, dport, 1000, 0, SYN, 65535, opts=Options(mss=1460))


class FakeShell:
    def __init__(self):
        self.sent = []
        self.l2 = {CLIENT: b"\x02" * 6 + b"\x04" * 6}
        self.vnet = False
        self.frames = []
        self.stats = type("S", (), {"send_errors": 0})()
        self.sock = self

    def send(self, segs):
        if isinstance(segs, list):
            self.sent.extend(segs)
        else:
            self.frames.append(segs)

    def build_frame(self, seg, macs):
        return (seg, macs)


def classifier(tcp=None, **gw):
    cfg = GatewayConfig(**gw)
    flows = FlowTable.from_config(cfg)
    table = EndpointTable(tcp or Config().tcp.params(), auto_accept=True)
    c = Classifier(table, flows)
    c.shell = FakeShell()
    return c, table, flows


def test_deny_answers_the_syn_with_rst_and_keeps_it_from_the_endpoint():
    c, table, flows = classifier(deny=["203.0.113.0/24"])
    c.receive_segment(syn(DENIED), 0.0)
    assert len(table) == 0 and c.denied == 1
    (rst,) = c.segments_to_send(0.0)
    assert rst.flags == RST | ACK and rst.ack == 1001 and rst.src == DENIED
    c.receive_segment(syn(), 0.0)  # an allowed destination reaches the endpoint
    assert len(table) == 1


def test_bypass_writes_the_segment_back_unchanged_and_drop_is_silent():
    acl = [AclRuleConfig(action="bypass", dst=["198.51.100.0/24"], dst_ports=["8080"]),
           AclRuleConfig(action="drop", dst=["198.51.100.0/24"], dst_ports=["9"])]  # fmt: skip
    c, table, _ = classifier(acl=acl)
    s = syn(dport=8080)
    c.receive_segment(s, 0.0)
    c.receive_segment(syn(dport=9), 0.0)
    assert len(table) == 0 and c.bypassed == 1
    assert c.shell.frames == [(s, c.shell.l2[CLIENT])] and c.segments_to_send(0.0) == []


def test_reset_for_an_ack_uses_its_ack_number():
    seg = Segment(CLIENT, SERVER, 40000, 80, 5, 777, ACK, 100)
    rst = reset_for(seg)
    assert (rst.flags, rst.seq, rst.dst, rst.dport) == (RST, 777, CLIENT, 40000)


def test_a_stray_ack_is_refused_by_the_endpoint_within_its_rst_rate_and_leaves_no_entry():
    params = dataclasses.replace(Config().tcp.params(), rst_rate=10)
    c, table, flows = classifier(tcp=params)
    for i in range(100):
        c.receive_segment(Segment(CLIENT, SERVER, 1000 + i, 80, 5, 777, ACK, 100), 0.0)
    out = c.segments_to_send(0.0)
    assert len(out) == 10 and all(r.flags == RST for r in out)
    assert table.counters["rst_suppressed"] == 90 and len(flows) == 0
    assert flows.counters().untracked == 100
    c.receive_segment(Segment(CLIENT, SERVER, 999, 80, 5, 777, ACK, 100), 0.5)
    assert len(c.segments_to_send(0.5)) == 1  # the bucket refills at 10 per second


def test_a_cookie_syn_leaves_no_entry_and_its_handshake_makes_one():
    params = dataclasses.replace(Config().tcp.params(), max_half_open=1)
    c, table, flows = classifier(tcp=params)
    c.receive_segment(syn(sport=1), 0.0)  # half open: kept, tracked
    c.receive_segment(syn(sport=2), 0.0)  # over the limit: a cookie
    synacks = c.segments_to_send(0.0)
    assert len(synacks) == 2 and len(table) == 1 and len(flows) == 1
    assert table.counters["syn_cookies_sent"] == 1
    cookie = next(s for s in synacks if s.dport == 2)
    ack = Segment(CLIENT, SERVER, 2, 80, 1001, (cookie.seq + 1) & SEQ_MASK, ACK, 1000)
    c.receive_segment(ack, 0.1)
    assert table.connections[ack.key].state == "ESTABLISHED"
    assert flows.get(ack.key).state is State.ESTABLISHED
