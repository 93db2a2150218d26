"""Gateway pieces without namespaces: classifier, bypass rules, scheduler adapter, bridge.

The assembled gateway runs in tests/e2e (testbed); here each piece is driven directly.
"""

import ipaddress

import pytest

from middlebox.config import AclRuleConfig, Config, GatewayConfig
from middlebox.gateway.flowtable import FlowTable
from middlebox.gateway.listener import Listener
from middlebox.gateway.process import Bridge, Classifier, reset_for
from middlebox.session import wire
from middlebox.session.mux import Mux, MuxParams, PathState
from middlebox.session.policy import SchedulerPolicy
from middlebox.tcp import events as ev
from middlebox.tcp.constants import ACK, RST, SYN
from middlebox.tcp.endpoint import EndpointTable
from middlebox.tcp.options import Options
from middlebox.tcp.packet import Segment
from scheduler.config import SchedulerConfig
from scheduler.context import ACK as ACK_KIND
from scheduler.context import DATA, REINJECTION, MessageInfo
from scheduler.registry import PATH

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
    table = EndpointTable(Config().tcp)
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


def test_routing_bypass_only_for_prefixes_no_rule_can_claim():
    gw = GatewayConfig(bypass=["10.0.0.0/8", "192.168.0.0/16"], deny=["10.9.0.0/16"])
    assert Listener(gw).bypass_rules() == ["192.168.0.0/16"]
    anyrule = [AclRuleConfig(action="allow", src=["100.64.0.0/24"])]  # every destination
    assert Listener(GatewayConfig(acl=anyrule)).bypass_rules() == []
    with pytest.raises(Exception, match="/30"):
        Listener(GatewayConfig(listener_subnet="169.254.1.0/31"))


def paths(*specs):
    return [PathState(i, up, srtt, 0.01, room) for i, up, srtt, room in specs]


@pytest.mark.parametrize("name", ["minrtt", "context", "roundrobin"])
def test_scheduler_policy_only_names_up_paths_with_room(name):
    pol = SchedulerPolicy(SchedulerConfig(policy=name))
    ps = paths((1, True, 0.02, 0), (2, False, 0.01, 1 << 20), (3, True, 0.05, 1 << 20))
    for seq in range(0, 10 << 14, 1 << 14):
        assert pol(MessageInfo(7, 16384, DATA, offset=seq), ps, 1.0) == (3,)
    # a reinjection avoids the paths that carried it; none left: wait
    assert pol(MessageInfo(7, 16384, REINJECTION, avoid=(3,)), ps, 1.0) == ()
    # ACKs go back where the data came from, even on a full path
    assert pol(MessageInfo(7, 32, ACK_KIND, prefer=1), ps, 1.0) == (1,)


def test_scheduler_policy_falls_back_to_builtin_when_the_policy_raises():
    pol = SchedulerPolicy(SchedulerConfig(policy="minrtt"))

    class Broken:
        def decide(self, *a):
            raise RuntimeError("bug")

    pol.policy = Broken()
    ps = paths((1, True, 0.05, 1 << 20), (2, True, 0.01, 1 << 20))
    assert pol(MessageInfo(1, 100, DATA), ps, 0.0) == (2,) and pol.failed


def test_scheduler_policy_estimators_take_tcp_info_samples():
    from middlebox.paths.sockets import TcpInfo

    pol = SchedulerPolicy(SchedulerConfig(policy="context"))
    raw = bytearray(300)
    info = TcpInfo.parse(bytes(raw))
    info = TcpInfo(**{**info.__dict__, "srtt_us": 30000, "rttvar_us": 5000, "snd_mss": 1448,
                      "snd_cwnd": 20, "delivery_rate": 2_000_000})  # fmt: skip
    ctx = pol.sample(4, "carrier-a", info, 1.0, probe_rtt=0.03)
    assert ctx.path_id == 4 and abs(ctx.srtt - 0.03) < 1e-9 and ctx.delivery_rate == 2_000_000
    pol.path_down(4, 2.0)
    assert pol.registry.get(PATH, 4).up is False


class FakeConn:
    def __init__(self):
        self.accepted = self.aborted = self.closed = False
        self.room = None
        self.sent = bytearray()
        self.send_queued = 0

    def accept(self):
        self.accepted = True

    def abort(self, reason="aborted"):
        self.aborted = True

    def close(self):
        self.closed = True

    def set_buffer_room(self, n):
        self.room = n

    def send(self, data):
        self.sent += data
        self.send_queued += len(data)


class FakeUplink:
    def __init__(self, params):
        self.mux = Mux("gateway", params)


def bridge(buffer=64 << 10):
    params = MuxParams(buffer_bytes=buffer)
    up = FakeUplink(params)
    up.mux.path_up(1, 0.0)
    flows = FlowTable.from_config(GatewayConfig())
    return Bridge(up, flows, buffer // 2), up.mux


def test_bridge_early_accept_window_follows_mux_room_and_open_fail_resets():
    b, mux = bridge()
    conn = FakeConn()
    key = (CLIENT, 40000, SERVER, 80)
    b.on_event(ev.ConnectionRequested(conn, key, Options(mss=1460)), 0.0)
    assert conn.accepted  # the client's handshake completes before the node answers
    (link,) = b.links.values()
    b.on_event(ev.DataReceived(conn, b"x" * (100 << 10)), 0.0)  # more than fits
    assert len(link.pending) == (100 << 10) - (64 << 10) and conn.room == 0
    assert link.cid in b.narrow
    out = mux.messages_to_send(0.0)
    assert isinstance(out[0][1], wire.Open)
    mux.receive(1, wire.OpenFail(link.cid, wire.OpenFailReason.REFUSED), 0.1)
    b.mux_events(0.1)
    assert conn.aborted and not b.links and b.counters["open_failed"] == 1


def test_bridge_downlink_bounded_by_the_client_queue_and_fin_after_the_last_byte():
    b, mux = bridge()
    conn = FakeConn()
    b.on_event(ev.ConnectionRequested(conn, (CLIENT, 40001, SERVER, 80), Options()), 0.0)
    (link,) = b.links.values()
    cid = link.cid
    mux.messages_to_send(0.0)
    mux.receive(1, wire.OpenOk(cid), 0.0)
    mux.receive(1, wire.Data(cid, 0, b"y" * 40000), 0.0)
    mux.receive(1, wire.Fin(cid, 40000), 0.0)
    conn.send_queued = 30000  # the client is slow: only 2768 bytes fit below the limit
    b.mux_events(0.0)
    assert len(conn.sent) == (32 << 10) - 30000 and not conn.closed and cid in b.blocked
    for _ in range(2):  # the client acknowledges everything it got, twice
        conn.send_queued = 0
        b.mux_events(0.1)
        assert conn.send_queued <= 32 << 10
    assert bytes(conn.sent) == b"y" * 40000 and conn.closed and cid not in b.blocked
