"""The gateway's UDP shell in process: capture hook, flows, rules, delivery to clients.

Frames go in through the capture shell's ``feed`` (a fake socket catches what is sent);
the mux is replaced by a list of the DATAGRAMs handed to it.
"""

from __future__ import annotations

import struct

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from middlebox.config import UdpConfig
from middlebox.gateway.capture import VIRTIO_NET_HDR_F_NEEDS_CSUM, CaptureShell
from middlebox.gateway.flowtable import FlowTable, Rule, Rules
from middlebox.gateway.udp import GatewayUdp
from middlebox.session.datagrams import build_udp4, parse_udp4
from middlebox.tcp.endpoint import EndpointTable
from middlebox.tcp.params import TcpParams
from scheduler.datagrams import DUPLICATE, SINGLE
from tests.middlebox.gateway.test_capture_frames import CLIENT_MAC, GW_MAC, FakeSock

CLIENT, SERVER = "10.1.0.2", "198.51.100.10"
C, S = bytes([10, 1, 0, 2]), bytes([198, 51, 100, 10])
VNET = struct.Struct("=BBHHHH")


def _frame(payload: bytes = b"q", dport: int = 53, sport: int = 40000, dst: str = SERVER,
           **ip) -> bytes:  # fmt: skip
    return bytes(Ether(src=CLIENT_MAC, dst=GW_MAC) / IP(src=CLIENT, dst=dst, **ip)
                 / UDP(sport=sport, dport=dport) / payload)  # fmt: skip


def _gateway(vnet: bool = False, rules: Rules | None = None, **cfg):
    table = EndpointTable(TcpParams(gso=vnet), auto_accept=True, secret=b"x" * 16)
    sock = FakeSock()
    shell = CaptureShell("test0", table, vnet=vnet, sock=sock)
    sent: list = []
    forgot: list = []
    udp = GatewayUdp(UdpConfig(**cfg), FlowTable(rules or Rules()),
                     lambda m, c: sent.append((m, c)), forgot.append)  # fmt: skip
    udp.shell = shell
    shell.udp = udp.receive
    return shell, udp, sock, sent, forgot


def test_captured_udp_goes_to_the_mux_with_sequence_and_class() -> None:
    shell, udp, sock, sent, _ = _gateway()
    for i in range(3):
        shell.feed(_frame(b"q%d" % i), 0.1 * i)
    shell.feed(_frame(b"quic", dport=443), 0.5)
    got = [(m.flow_id, m.seq, c) for m, c in sent]
    assert got == [(1, 0, DUPLICATE), (1, 1, DUPLICATE), (1, 2, DUPLICATE), (2, 0, SINGLE)]
    p = parse_udp4(sent[0][0].payload)
    assert p.key == (C, 40000, S, 53) and p.payload == b"q0"
    assert udp.status()["flows"] == 2 and udp.status()["packets_up"] == 4
    assert shell.table.connections == {}  # nothing reached the TCP endpoint


def test_tcp_still_goes_to_the_endpoint_beside_the_hook() -> None:
    shell, udp, sock, sent, _ = _gateway()
    syn = Ether(src=CLIENT_MAC, dst=GW_MAC) / IP(src=CLIENT, dst=SERVER) / TCP(dport=80, flags="S")
    shell.feed(bytes(syn), 0.0)
    assert len(shell.table.connections) == 1 and sent == []


def test_answers_reach_the_client_from_the_original_destination_once() -> None:
    from middlebox.session import wire

    for vnet in (False, True):
        shell, udp, sock, sent, _ = _gateway(vnet=vnet)
        shell.feed((bytes(10) if vnet else b"") + _frame(), 0.0)
        fid = sent[0][0].flow_id
        answer = build_udp4(S, 53, C, 40000, b"answer", udp_checksum=False)
        udp.deliver(wire.Datagram(fid, 0, answer), 0.1)
        udp.deliver(wire.Datagram(fid, 0, answer), 0.1)  # the copy from another path
        (frame,) = sock.sent
        if vnet:
            flags, _gso, _hl, _gs, start, off = VNET.unpack_from(frame)
            assert flags == VIRTIO_NET_HDR_F_NEEDS_CSUM and (start, off) == (34, 6)
            frame = frame[10:]
        pkt = Ether(frame)
        assert pkt.dst == CLIENT_MAC and pkt.src == GW_MAC
        assert (pkt[IP].src, pkt[UDP].sport, pkt[IP].dst, pkt[UDP].dport) == (
            SERVER, 53, CLIENT, 40000)  # fmt: skip
        assert bytes(pkt[UDP].payload) == b"answer"
        if not vnet:
            assert parse_udp4(frame[14:]).payload == b"answer"  # checksum verified
        st = udp.status()
        assert st["duplicates"] == 1 and st["packets_down"] == 1


def test_node_datagrams_that_do_not_fit_the_flow_are_dropped() -> None:
    from middlebox.session import wire

    shell, udp, sock, sent, _ = _gateway(max_datagram=512)
    shell.feed(_frame(), 0.0)
    fid = sent[0][0].flow_id
    other = build_udp4(bytes([203, 0, 113, 9]), 53, C, 40000, b"spoof")
    udp.deliver(wire.Datagram(fid, 0, other), 0.1)
    udp.deliver(wire.Datagram(fid + 7, 0, build_udp4(S, 53, C, 40000, b"x")), 0.1)
    udp.deliver(wire.Datagram(fid, 1, b"\x45garbage"), 0.1)
    udp.deliver(wire.Datagram(fid, 2, build_udp4(S, 53, C, 40000, b"x" * 600)), 0.1)
    assert sock.sent == []
    assert udp.status()["dropped"] == {"mismatch": 1, "unknown_flow": 1, "node_truncated": 1,
                                       "oversized": 1}  # fmt: skip


def test_hostile_udp_is_counted_and_dropped() -> None:
    shell, udp, sock, sent, _ = _gateway(max_datagram=512, max_flows_per_source=2)
    shell.feed(_frame(flags="MF"), 0.0)
    shell.feed(_frame(frag=10), 0.0)
    shell.feed(_frame(b"x" * 600), 0.0)
    bad = bytearray(_frame())
    bad[40] ^= 0xFF  # the UDP checksum
    shell.feed(bytes(bad), 0.0)
    shell.feed(_frame()[:38], 0.0)  # cut inside the UDP header
    for port in (1, 2, 3, 4):  # flows beyond the source's cap
        shell.feed(_frame(sport=port), 0.0)
    st = udp.status()
    assert st["dropped"] == {"fragment": 2, "oversized": 1, "bad_checksum": 1, "truncated": 1}
    assert st["refused_source"] == 2 and len(sent) == 2


def test_rules_deny_and_bypass_udp_like_tcp() -> None:
    rules = Rules.make([Rule.make("deny", dst_ports=["5000"]), Rule.make("bypass",
                        dst=["192.0.2.0/24"])])  # fmt: skip
    shell, udp, sock, sent, _ = _gateway(rules=rules)
    shell.feed(_frame(dport=5000), 0.0)
    shell.feed(_frame(dst="192.0.2.1"), 0.0)
    assert sent == [] and udp.status()["denied"] == 1 and udp.status()["bypassed"] == 1
    back = Ether(sock.sent[0])  # written back unchanged toward the gateway's namespace
    assert back.dst == CLIENT_MAC and back.src == GW_MAC and back[IP].dst == "192.0.2.1"


def test_udp_gso_aggregate_is_cut_into_datagrams() -> None:
    shell, udp, sock, sent, _ = _gateway(vnet=True)
    frame = _frame(b"a" * 1000 + b"b" * 1000 + b"c" * 500, dport=443)
    vh = VNET.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 5, 42, 1000, 34, 6)  # GSO_UDP_L4
    shell.feed(vh + frame, 0.0)
    assert [parse_udp4(m.payload, False).payload[:1] for m, _ in sent] == [b"a", b"b", b"c"]
    assert [m.seq for m, _ in sent] == [0, 1, 2]


def test_idle_flows_expire_and_the_scheduler_forgets_them() -> None:
    shell, udp, sock, sent, forgot = _gateway(idle_timeout=60.0, short_timeout=5.0)
    shell.feed(_frame(), 0.0)  # a lookup: one datagram
    for i in range(3):
        shell.feed(_frame(dport=9000), float(i))  # a stream
    assert udp.next_timer() == 5.0
    udp.expire(5.0)
    assert forgot == [1] and udp.status()["flows"] == 1
    udp.expire(61.9)
    assert udp.status()["flows"] == 1
    udp.expire(62.0)
    assert forgot == [1, 2] and udp.status()["expired"] == 2
