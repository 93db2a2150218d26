"""The capture shell's frame handling, in process: vnet headers, auxdata, L2 learning.

(``middlebox/gateway/capture.py`` without a socket: frames go in through ``feed``, and
what the shell sends is caught by a fake socket.)
"""

from __future__ import annotations

import struct

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from middlebox.gateway.capture import (
    PACKET_AUXDATA,
    SOL_PACKET,
    TP_STATUS_CSUMNOTREADY,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    CaptureShell,
    _aux_checked,
)
from middlebox.tcp.checksum import pseudo_header_sum
from middlebox.tcp.endpoint import EndpointTable
from middlebox.tcp.params import TcpParams

CLIENT_MAC, GW_MAC = "02:00:00:00:00:0c", "02:00:00:00:00:0a"
VNET = struct.Struct("=BBHHHH")


class FakeSock:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, frame: bytes) -> int:
        self.sent.append(frame)
        return len(frame)

    def close(self) -> None:
        pass


def _syn(**tcp) -> bytes:
    return bytes(
        Ether(src=CLIENT_MAC, dst=GW_MAC)
        / IP(src="10.1.0.2", dst="198.51.100.10")
        / TCP(sport=40000, dport=80, flags="S", seq=1000, options=[("MSS", 1460)], **tcp)
    )


def _shell(vnet: bool) -> tuple[CaptureShell, EndpointTable, FakeSock]:
    table = EndpointTable(TcpParams(gso=vnet), auto_accept=True, secret=b"x" * 16)
    sock = FakeSock()
    return CaptureShell("test0", table, vnet=vnet, sock=sock), table, sock


def test_synack_goes_back_to_the_learned_macs() -> None:
    shell, table, sock = _shell(vnet=False)
    shell.feed(_syn(), 0.0)
    shell.pump(0.0, None)
    (frame,) = sock.sent
    pkt = Ether(frame)
    assert pkt.src == GW_MAC and pkt.dst == CLIENT_MAC
    assert pkt[IP].src == "198.51.100.10" and pkt[TCP].flags == "SA"
    del pkt[TCP].chksum
    assert Ether(bytes(pkt))[TCP].chksum == Ether(frame)[TCP].chksum  # full checksum


def test_vnet_large_segment_asks_the_kernel_for_gso() -> None:
    shell, table, sock = _shell(vnet=True)
    shell.feed(bytes(10) + _syn(), 0.0)
    shell.pump(0.0, None)
    conn = next(iter(table.connections.values()))
    ack = bytes(
        Ether(src=CLIENT_MAC, dst=GW_MAC)
        / IP(src="10.1.0.2", dst="198.51.100.10")
        / TCP(sport=40000, dport=80, flags="A", seq=1001, ack=(conn.iss + 1) & 0xFFFFFFFF)
    )
    shell.feed(bytes(10) + ack, 0.01)
    conn.send(b"z" * 10_000)
    shell.pump(0.01, None)
    data = [f for f in sock.sent if len(f) > 1000]
    assert data
    flags, gso_type, hdr_len, gso_size, csum_start, csum_off = VNET.unpack_from(data[0])
    assert flags == VIRTIO_NET_HDR_F_NEEDS_CSUM and gso_type == VIRTIO_NET_HDR_GSO_TCPV4
    assert gso_size == conn.mss and hdr_len == 14 + 20 + 20 and (csum_start, csum_off) == (34, 16)
    pkt = Ether(data[0][10:])
    n = len(pkt[TCP])
    assert pkt[TCP].chksum == pseudo_header_sum(
        bytes([198, 51, 100, 10]), bytes([10, 1, 0, 2]), 6, n
    )  # the pseudo-header sum the kernel completes


def test_pending_checksum_is_trusted_only_when_the_kernel_says_so() -> None:
    bad = bytearray(_syn())
    bad[14 + 20 + 16] ^= 0x55  # TCP checksum not computed yet (local TSO)
    shell, table, _ = _shell(vnet=True)
    shell.feed(bytes(10) + bytes(bad), 0.0)
    assert len(table) == 0 and shell.stats.parse.dropped["bad_tcp_checksum"] == 1
    vh = VNET.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 16)
    shell.feed(vh + bytes(bad), 0.0)
    assert len(table) == 1 and shell.stats.checksum_skipped == 1


def test_auxdata_status_is_read() -> None:
    aux = struct.pack("=IIIHHHH", TP_STATUS_CSUMNOTREADY, 60, 60, 0, 14, 0, 0)
    assert _aux_checked([(SOL_PACKET, PACKET_AUXDATA, aux)])
    assert not _aux_checked([(SOL_PACKET, PACKET_AUXDATA, bytes(len(aux)))])
    assert not _aux_checked([])
    shell, table, _ = _shell(vnet=False)
    bad = bytearray(_syn())
    bad[14 + 20 + 16] ^= 0x55
    shell.feed(bytes(bad), 0.0, aux_ok=False)
    assert len(table) == 0
    shell.feed(bytes(bad), 0.0, aux_ok=True)
    assert len(table) == 1


def test_non_ip_and_short_frames_are_counted() -> None:
    shell, table, _ = _shell(vnet=False)
    shell.feed(b"\x00" * 12 + b"\x86\xdd" + b"\x00" * 40, 0.0)  # IPv6
    shell.feed(b"\x00" * 5, 0.0)
    assert shell.stats.not_ip == 2 and len(table) == 0


def test_l2_table_is_bounded(monkeypatch) -> None:
    import middlebox.gateway.capture as cap

    monkeypatch.setattr(cap, "L2_TABLE_MAX", 50)
    shell, table, _ = _shell(vnet=False)
    for i in range(200):
        frame = bytes(
            Ether(src=CLIENT_MAC, dst=GW_MAC)
            / IP(src=f"10.2.{i // 250}.{i % 250 + 1}", dst="198.51.100.10")
            / TCP(sport=1000 + i, dport=80, flags="A", seq=1, ack=1)
        )
        shell.feed(frame, 0.0)
    assert len(shell.l2) == 50
    assert table.counters["rst_sent"] == 200
