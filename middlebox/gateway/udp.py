"""The passengers' UDP at the gateway: captured in the listener, carried as DATAGRAMs.

The listener steers LAN UDP into its namespace like TCP (an ``ip rule`` per protocol;
nftables drops the originals there before the kernel's stack, which would answer with
ICMP port unreachable), and the capture shell hands every IPv4/UDP frame to
:meth:`GatewayUdp.receive` instead of the TCP endpoint. Per packet:

1. :func:`~middlebox.session.datagrams.parse_udp4` checks it (a UDP GSO aggregate from a
   local sender is cut into its datagrams first); truncated, fragmented, mis-sized or
   badly summed packets and payloads above ``udp.max_datagram`` are counted by reason
   and dropped;
2. the flow table's rules (the same ``[[gateway.acl]]``, deny and bypass lists as TCP,
   ports included) decide: deny and drop drop it (counted), bypass writes it back
   toward the gateway's namespace unchanged (ordinary routing), proxy carries it;
3. the flow (5-tuple) is found or made within ``udp.max_flows`` and
   ``udp.max_flows_per_source`` (beyond them: counted, dropped) and the packet goes to
   the mux as DATAGRAM (flow id, the flow's next sequence, the client's IPv4 packet)
   with the flow's class (:class:`scheduler.datagrams.FlowClassifier`), which the
   scheduler adapter turns into one path or copies on several.

DATAGRAMs from the node (:meth:`GatewayUdp.deliver`) are de-duplicated per flow
(:class:`~middlebox.session.datagrams.ReplayWindow`), checked against the flow (the
packet must come from the flow's server address and port to its client), and written
to the client as a new IPv4/UDP packet from the original destination's address and
port (UDP checksum offloaded with the vnet header, else computed). A flow idle for
``udp.idle_timeout`` is forgotten; the node removes its mapping on the same timeout.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from middlebox.config import UdpConfig
from middlebox.gateway.capture import VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR_LEN
from middlebox.gateway.flowtable import Action
from middlebox.gateway.flowtable import FlowTable as Rules
from middlebox.session import wire
from middlebox.session.datagrams import (
    UDP4_OVERHEAD,
    DatagramSide,
    Flow,
    Udp4,
    build_udp4,
    parse_udp4,
)
from middlebox.tcp.constants import ETH_HEADER

_VNET_CSUM = struct.Struct("=BBHHHH")  # the capture shell's virtio-net header


class GatewayUdp(DatagramSide):
    """UDP flows of the gateway (see module text).

    ``send(msg, flow_class)`` hands a DATAGRAM to the session's mux; ``forget(flow_id)``
    tells the scheduler a flow ended. ``shell`` is the capture shell (its socket and
    learned link addresses).
    """

    def __init__(
        self,
        cfg: UdpConfig,
        rules: Rules,
        send: Callable[[wire.Datagram, str], None],
        forget: Callable[[int], None] = lambda flow_id: None,
    ) -> None:
        super().__init__(cfg, "gateway", send, forget)
        self.rules = rules
        self.shell = None
        self.ident = 0
        self.counters = {"packets_up": 0, "bytes_up": 0, "packets_down": 0, "bytes_down": 0,
                         "bypassed": 0, "denied": 0, "send_errors": 0}  # fmt: skip

    # -- from the passengers --------------------------------------------------------------

    def receive(self, frame: memoryview, ip: int, size: int, verify: bool, gso: int,
                now: float) -> None:  # fmt: skip
        """One captured frame holding IPv4/UDP at offset ``ip`` (capture shell hook)."""
        drop = self.flows.counters.drop
        pkt = parse_udp4(frame[ip:size], verify and not gso)
        if isinstance(pkt, str):
            drop(pkt)
            return
        if gso and len(pkt.payload) > gso:
            for i in range(0, len(pkt.payload), gso):
                part = pkt.payload[i : i + gso]
                self._packet(Udp4(pkt.src, pkt.sport, pkt.dst, pkt.dport, part), None, frame,
                             now)  # fmt: skip
            return
        self._packet(pkt, frame[ip:size], frame, now)

    def _packet(self, pkt: Udp4, raw: memoryview | None, frame: memoryview, now: float) -> None:
        flows = self.flows
        if len(pkt.payload) > self.cfg.max_datagram:
            flows.counters.drop("oversized")
            return
        key = pkt.key
        flow = flows.by_key.get(key)
        if flow is None:
            action = self.rules.decide(key)
            if action is Action.BYPASS:
                self._bypass(frame, pkt.src)
                return
            if action is not Action.PROXY:
                self.counters["denied"] += 1
                return
            flow = flows.open(key, pkt.src, pkt.dport, now)
            if flow is None:
                return  # beyond the caps: counted by the table
        flow.last_seen = now
        n = len(pkt.payload)
        flow.packets_out += 1
        flow.bytes_out += n
        self.counters["packets_up"] += 1
        self.counters["bytes_up"] += n
        if raw is None or len(raw) != UDP4_OVERHEAD + n:  # cut from an aggregate, or padded
            data = build_udp4(pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.payload)
        else:
            data = bytes(raw)
        cls = self.classify(flow.port, flow.meter.add(n, now))
        self.send(wire.Datagram(flow.flow_id, flow.next_seq(), data), cls)

    def _bypass(self, frame: memoryview, src: bytes) -> None:
        """Write the frame back toward the gateway's namespace (MACs swapped)."""
        shell = self.shell
        macs = shell.l2.get(src) if shell is not None else None
        if macs is None:
            return
        out = bytearray(frame)
        off = VNET_HDR_LEN if shell.vnet else 0
        out[off : off + 12] = macs
        try:
            shell.sock.send(out)
            self.counters["bypassed"] += 1
        except OSError:
            self.counters["send_errors"] += 1

    # -- from the node --------------------------------------------------------------------

    def deliver(self, msg: wire.Datagram, now: float) -> None:
        """A DATAGRAM from the node: de-duplicated, checked, written to the client."""
        flows = self.flows
        flow = flows.by_id.get(msg.flow_id)
        if flow is None:
            flows.counters.drop("unknown_flow")
            return
        if not flows.received(flow, msg.seq):
            return
        pkt = parse_udp4(msg.payload, False)
        if isinstance(pkt, str):
            flows.counters.drop("node_" + pkt)
            return
        src, sport, dst, dport = flow.key  # type: ignore[misc]
        if (pkt.src, pkt.sport, pkt.dst, pkt.dport) != (dst, dport, src, sport):
            flows.counters.drop("mismatch")
            return
        if len(pkt.payload) > self.cfg.max_datagram:
            flows.counters.drop("oversized")
            return
        flow.last_seen = now
        flow.packets_in += 1
        flow.bytes_in += len(pkt.payload)
        self._to_client(flow, pkt)

    def _to_client(self, flow: Flow, pkt: Udp4) -> None:
        shell = self.shell
        if shell is None:
            return
        macs = shell.l2.get(pkt.dst)
        if macs is None:
            self.flows.counters.drop("no_l2_address")
            return
        self.ident = (self.ident + 1) & 0xFFFF
        vnet = shell.vnet
        ip = build_udp4(pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.payload, self.ident,
                        udp_checksum=not vnet)  # fmt: skip
        frame = macs + b"\x08\x00" + ip
        if vnet:  # the kernel completes the UDP checksum
            hdr = ETH_HEADER + UDP4_OVERHEAD
            frame = (
                _VNET_CSUM.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, hdr, 0, ETH_HEADER + 20, 6) + frame
            )
        try:
            shell.sock.send(frame)
        except OSError:
            self.counters["send_errors"] += 1
            return
        self.counters["packets_down"] += 1
        self.counters["bytes_down"] += len(pkt.payload)

    # -- timers and status ----------------------------------------------------------------

    def status(self) -> dict:
        return {"enabled": self.cfg.enabled, **self.flows.status(), **self.counters}
