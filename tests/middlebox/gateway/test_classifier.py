"""The classifier without namespaces: the flow table's actions on segments (deny -> RST,
ACL bypass written back unchanged, drop) and the RST that refuses a segment."""

import ipaddress

from middlebox.config import AclRuleConfig, Config, GatewayConfig
from middlebox.gateway.classifier import Classifier, reset_for
from middlebox.gateway.flowtable import FlowTable
from middlebox.tcp.constants import ACK, RST, SYN
from middlebox.tcp.endpoint import EndpointTable
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


def classifier(**gw):
    cfg = GatewayConfig(**gw)
    flows = FlowTable.from_config(cfg)
    table = EndpointTable(Config().tcp.params())
    c = Classifier(table, flows)
    c.shell = FakeShell()
    return c, table, flows


def test_deny_answers_the_syn_with_rst_and_keeps_it_from_the_endpoint():
    c, table, flows = classifier(deny=["203.0.113.0/24"])
    c.receive_segment(syn(DENIED), 0.0)
    assert len(table) == 0 and c.denied == 1
    (rst,) = c.shell.sent
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
    assert c.shell.frames == [(s, c.shell.l2[CLIENT])] and c.shell.sent == []


def test_reset_for_an_ack_uses_its_ack_number():
    seg = Segment(CLIENT, SERVER, 40000, 80, 5, 777, ACK, 100)
    rst = reset_for(seg)
    assert (rst.flags, rst.seq, rst.dst, rst.dport) == (RST, 777, CLIENT, 40000)
