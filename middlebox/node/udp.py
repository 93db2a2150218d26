"""The node's NAT-like UDP mappings: one socket per flow toward its destination.

One :class:`UdpRelay` per gateway session. The first DATAGRAM of a flow id (its
payload: the client's IPv4/UDP packet, docs/PROTOCOL.md) makes a mapping: the
destination policy is asked as for an OPEN (refused: counted, dropped), the
session's cap ``udp.session_flows`` is applied (beyond it: counted, dropped), and a UDP
socket of the node's own is connected to the original destination (the kernel picks
the node's address and a port: the server sees the node, like behind a NAT, and keeps
seeing it whichever carrier the gateway's copies use). Later datagrams of the flow are
de-duplicated by sequence (:class:`~middlebox.session.datagrams.ReplayWindow`), must
name the mapping's 5-tuple (else counted and dropped), and their payload is sent.

Answers read from a mapping's socket go back as DATAGRAMs (the flow id, the node's own
sequence for that direction, an IPv4/UDP packet from the destination to the client),
placed by the scheduler by the flow's class as on the gateway. A mapping idle for
``udp.idle_timeout`` is closed and counted (``expired``). ICMP errors the kernel
reports on a connected socket (port unreachable) are counted and the mapping kept.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import selectors
import socket
from collections.abc import Callable

from middlebox.config import UdpConfig
from middlebox.node.destpolicy import DestinationPolicy
from middlebox.paths.conn import forget
from middlebox.session import wire
from middlebox.session.datagrams import (
    MAX_UDP_PAYLOAD,
    DatagramSide,
    Flow,
    build_udp4,
    parse_udp4,
)

log = logging.getLogger("mpproxy.node")

READ_BATCH = 64  # datagrams read from one socket per readiness


class UdpRelay(DatagramSide):
    """UDP mappings of one gateway session (see module text).

    ``send(msg, flow_class)`` hands a DATAGRAM to the session's mux, ``forget(flow_id)``
    tells its scheduler a flow ended; ``counters`` is shared by every session's relay.
    """

    def __init__(
        self,
        cfg: UdpConfig,
        sel: selectors.BaseSelector,
        policy: DestinationPolicy,
        send: Callable[[wire.Datagram, str], None],
        forget: Callable[[int], None],
        counters: dict[str, int],
    ) -> None:
        super().__init__(cfg, "node", send, forget)
        self.sel = sel
        self.policy = policy
        self.counters = counters

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # -- from the gateway -----------------------------------------------------------------

    def receive(self, msg: wire.Datagram, now: float) -> None:
        flows = self.flows
        if not self.cfg.enabled:
            flows.counters.drop("disabled")
            return
        pkt = parse_udp4(msg.payload, False)  # the gateway checked the client's checksum
        if isinstance(pkt, str):
            flows.counters.drop(pkt)
            return
        flow = flows.by_id.get(msg.flow_id)
        if flow is None:
            flow = self._open(msg.flow_id, pkt.key, now)
            if flow is None:
                return
        elif flow.key != pkt.key:
            flows.counters.drop("mismatch")
            return
        if not flows.received(flow, msg.seq):
            return
        if len(pkt.payload) > self.cfg.max_datagram:
            flows.counters.drop("oversized")
            return
        flow.last_seen = now
        try:
            flow.data.send(pkt.payload)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            self._count("udp_send_full")
            return
        except OSError as e:
            self._count("udp_icmp_errors" if e.errno == errno.ECONNREFUSED else "udp_send_errors")
            return
        flow.packets_out += 1
        flow.bytes_out += len(pkt.payload)

    def _open(self, flow_id: int, key: tuple, now: float) -> Flow | None:
        src, sport, dst, dport = key
        addr = ipaddress.ip_address(dst)
        why = self.policy.refusal(addr)
        if why is not None:
            self._count("udp_denied")
            self.flows.counters.drop("denied")
            return None
        flow = self.flows.open(key, None, dport, now, flow_id=flow_id)
        if flow is None:
            return None  # beyond udp.session_flows: counted by the table
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        except OSError:
            self.flows.remove(flow)
            self._count("udp_socket_errors")
            return None
        sock.setblocking(False)
        try:
            sock.connect((str(addr), dport))
        except OSError:
            sock.close()
            self.flows.remove(flow)
            self._count("udp_unreachable")
            return None
        flow.data = sock
        self.sel.register(sock, selectors.EVENT_READ, lambda m, t, f=flow: self._readable(f, t))
        self._count("udp_mappings")
        log.debug("udp mapping %s:%d -> %s:%d as %s", ipaddress.ip_address(src), sport, addr,
                  dport, sock.getsockname())  # fmt: skip
        return flow

    # -- from the servers -----------------------------------------------------------------

    def _readable(self, flow: Flow, now: float) -> None:
        sock = flow.data
        if self.flows.by_id.get(flow.flow_id) is not flow:
            return
        src, sport, dst, dport = flow.key  # type: ignore[misc]
        for _ in range(READ_BATCH):
            try:
                data = sock.recv(MAX_UDP_PAYLOAD + 1)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._count(
                    "udp_icmp_errors" if e.errno == errno.ECONNREFUSED else "udp_recv_errors"
                )
                return
            if len(data) > self.cfg.max_datagram:
                self.flows.counters.drop("oversized")
                continue
            flow.last_seen = now
            flow.packets_in += 1
            flow.bytes_in += len(data)
            packet = build_udp4(dst, dport, src, sport, data, udp_checksum=False)
            cls = self.classify(dport, flow.meter.add(len(data), now))
            self.send(wire.Datagram(flow.flow_id, flow.next_seq(), packet), cls)

    # -- timers, status, shutdown ---------------------------------------------------------

    def _gone(self, flow: Flow) -> None:
        self._count("udp_mappings_expired")
        self._close(flow)

    def _close(self, flow: Flow) -> None:
        if flow.data is not None:
            forget(self.sel, flow.data)
            flow.data.close()  # type: ignore[attr-defined]
            flow.data = None

    def status(self) -> dict:
        return self.flows.status()

    def close(self) -> None:
        for flow in list(self.flows.by_id.values()):
            self.flows.remove(flow)
            self.forget(flow.flow_id)
            self._close(flow)
