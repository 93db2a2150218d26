"""The raw-socket shell around the user-space TCP endpoint.

An AF_PACKET socket bound to one interface of the listener namespace receives the
clients' frames (the kernel's own stack never sees them: an nftables rule in that
namespace drops TCP before routing, so it does not answer with RST), feeds them to an
:class:`~middlebox.tcp.endpoint.EndpointTable`, and sends the endpoint's segments back
as Ethernet frames whose addresses were learned from the clients' frames.

Offloads (DESIGN.md, "Let the kernel cut packets"): with ``PACKET_VNET_HDR`` every
frame carries a virtio-net header. On receive it says whether the TCP checksum is
still to be computed (a local sender's TSO segment of up to 64 KiB crossing a veth) or
already verified, so Python checks checksums only when nobody else has. On send it lets
the endpoint hand over segments of up to 64 KiB with ``gso_size`` = MSS and a partial
checksum; the kernel (or the NIC) cuts and checksums them. Without the vnet header the
same information comes from ``PACKET_AUXDATA`` (``TP_STATUS_CSUMNOTREADY``) and every
segment is built at MSS size with a Python checksum.

The shell only opens its socket inside a namespace (:func:`netns.plumbing.entered`); the
namespace, its routing and the drop rule are the listener's
(:mod:`middlebox.gateway.listener`). ``python -m bench.capture_app`` runs the shell with a
small test or relay application behind the endpoint (the interop tests and the
benchmark).
"""

from __future__ import annotations

import random
import selectors
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from middlebox.errors import UserError
from middlebox.tcp.constants import ETH_HEADER, ETH_P_IP
from middlebox.tcp.endpoint import EndpointTable
from middlebox.tcp.packet import CSUM_FULL, CSUM_PARTIAL, ParseStats, Segment, build_ipv4
from middlebox.tcp.packet import parse_ipv4 as _parse_ipv4
from netns import plumbing
from netns.errors import PlumbingError

SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_VNET_HDR = 15
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
TP_STATUS_CSUMNOTREADY = 1 << 3
TP_STATUS_CSUM_VALID = 1 << 7
VNET_HDR_LEN = 10
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_TCPV4 = 1

_VNET = struct.Struct("=BBHHHH")
_AUX = struct.Struct("=IIIHHHH")
_ETH_TYPE = struct.Struct("!H")
RECV_BUFFER = 256 << 10
L2_TABLE_MAX = 65536


class CaptureError(UserError):
    """Capture could not start: a missing namespace or interface, or no permission."""


@dataclass
class CaptureStats:
    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    not_ip: int = 0
    checksum_skipped: int = 0
    no_l2_address: int = 0
    send_errors: int = 0
    impaired: int = 0
    parse: ParseStats = field(default_factory=ParseStats)


class Impairment:
    """Test hook: seeded random loss and reordering on the shell's own path.

    Loss drops a frame with probability ``loss``; reordering holds a frame back with
    probability ``reorder`` and releases it after the next one. Applied per direction.
    """

    def __init__(self, loss: float = 0.0, reorder: float = 0.0, seed: int = 1) -> None:
        self.loss, self.reorder = loss, reorder
        self.rng = random.Random(seed)
        self.held: list[bytes] = []

    def apply(self, frame: bytes) -> list[bytes]:
        r = self.rng.random()
        if r < self.loss:
            return []
        if r < self.loss + self.reorder and not self.held:
            self.held.append(bytes(frame))
            return []
        out = [frame] + self.held
        self.held = []
        return out


class CaptureShell:
    """AF_PACKET socket + EndpointTable + an application callback.

    ``table`` may be anything with the table's five methods (``receive_segment``,
    ``next_timer``, ``handle_timer``, ``next_event``, ``segments_to_send``): the gateway
    puts its flow classifier in front of the endpoint that way.
    """

    def __init__(
        self,
        interface: str,
        table: EndpointTable,
        netns: str | None = None,
        vnet: bool = True,
        batch: int = 256,
        sock: socket.socket | None = None,
        trust_aux: bool = True,
    ) -> None:
        self.interface = interface
        self.table = table
        self.netns = netns
        self.vnet = vnet
        self.trust_aux = trust_aux
        self.batch = batch
        self.stats = CaptureStats()
        self.l2: dict[bytes, bytes] = {}  # client IPv4 -> dst MAC + src MAC of replies
        self.rx_impair: Impairment | None = None
        self.tx_impair: Impairment | None = None
        self._buf = bytearray(RECV_BUFFER)
        self._mv = memoryview(self._buf)
        self.sock = sock if sock is not None else self._open()
        self.selector = selectors.DefaultSelector()
        self.csum_mode = CSUM_PARTIAL if vnet else CSUM_FULL

    def _open(self) -> socket.socket:
        try:
            with plumbing.entered(self.netns):  # the socket belongs to that namespace
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        except PlumbingError as e:
            raise CaptureError(str(e)) from None
        except PermissionError:
            raise CaptureError("AF_PACKET needs CAP_NET_RAW (run as root)") from None
        try:
            if self.vnet:
                s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            else:
                s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            for opt in (SO_RCVBUFFORCE, SO_SNDBUFFORCE):
                try:
                    s.setsockopt(socket.SOL_SOCKET, opt, 32 << 20)
                except OSError:
                    pass
            s.bind((self.interface, ETH_P_IP))  # names an interface of the socket's namespace
        except OSError as e:
            s.close()
            raise CaptureError(f"cannot capture on {self.interface!r}: {e}") from None
        s.setblocking(False)
        return s

    def close(self) -> None:
        self.sock.close()
        self.selector.close()

    # -- receive --------------------------------------------------------------------

    def drain(self, now: float) -> int:
        """Read up to ``batch`` frames and feed them to the table; returns frames read."""
        n = 0
        sock, buf, mv = self.sock, self._buf, self._mv
        table, stats = self.table, self.stats
        vnet = self.vnet
        while n < self.batch:
            try:
                if vnet:
                    size = sock.recv_into(buf)
                    aux_ok = False
                else:
                    size, anc, _flags, _addr = sock.recvmsg_into([buf], 64)
                    aux_ok = self.trust_aux and _aux_checked(anc)
            except (BlockingIOError, InterruptedError):
                break
            n += 1
            stats.frames_in += 1
            stats.bytes_in += size
            if self.rx_impair is not None:
                for frame in self.rx_impair.apply(bytes(mv[:size])):
                    self.feed(frame, now, aux_ok)
                continue
            self._frame(mv, size, now, vnet, aux_ok, table)
        return n

    def _frame(
        self,
        mv: memoryview,
        size: int,
        now: float,
        vnet: bool,
        aux_ok: bool,
        table: EndpointTable,
    ) -> None:
        off = 0
        if vnet:
            if size < VNET_HDR_LEN:
                self.stats.parse.drop("truncated_vnet")
                return
            verify = not mv[0] & (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID)
            off = VNET_HDR_LEN
        else:
            verify = not aux_ok
        if size - off < ETH_HEADER or _ETH_TYPE.unpack_from(mv, off + 12)[0] != ETH_P_IP:
            self.stats.not_ip += 1
            return
        if not verify:
            self.stats.checksum_skipped += 1
        seg = _parse_ipv4(mv[:size], off + ETH_HEADER, self.stats.parse, verify)
        if seg is None:
            return
        src = seg.src
        # reply to the client's MAC from the MAC the client addressed (refreshed on every
        # frame: a re-leased address may move to another device)
        l2 = self.l2
        macs = bytes(mv[off + 6 : off + 12]) + bytes(mv[off : off + 6])
        if l2.get(src) != macs:
            if len(l2) >= L2_TABLE_MAX and src not in l2:
                del l2[next(iter(l2))]  # spoofed sources must not grow memory
            l2[src] = macs
        table.receive_segment(seg, now)

    def feed(self, frame: bytes, now: float, aux_ok: bool = False) -> None:
        """Process one frame as if received (tests, fuzzing and the impairment hook)."""
        self._frame(memoryview(frame), len(frame), now, self.vnet, aux_ok, self.table)

    # -- send -------------------------------------------------------------------------

    def send(self, segments: list[Segment]) -> None:
        sock, stats = self.sock, self.stats
        for seg in segments:
            macs = self.l2.get(seg.dst)
            if macs is None:
                stats.no_l2_address += 1
                continue
            frame = self.build_frame(seg, macs)
            if self.tx_impair is not None:
                frames = self.tx_impair.apply(frame)
                stats.impaired += not frames
            else:
                frames = (frame,)
            for f in frames:
                try:
                    sock.send(f)
                    stats.frames_out += 1
                    stats.bytes_out += len(f)
                except (BlockingIOError, OSError):
                    stats.send_errors += 1  # TCP will retransmit

    def build_frame(self, seg: Segment, macs: bytes) -> bytes:
        """The frame for ``seg`` (vnet header first when enabled); ``macs`` = dst + src."""
        eth = macs + b"\x08\x00"
        if not self.vnet:
            return eth + build_ipv4(seg, CSUM_FULL)
        ip = build_ipv4(seg, CSUM_PARTIAL)
        hdr_len = ETH_HEADER + 20 + 20 + len(seg.raw_options)
        gso = seg.gso_size if len(seg.payload) > seg.gso_size > 0 else 0
        vh = _VNET.pack(
            VIRTIO_NET_HDR_F_NEEDS_CSUM,
            VIRTIO_NET_HDR_GSO_TCPV4 if gso else 0,
            hdr_len,
            gso,
            ETH_HEADER + 20,
            16,
        )
        return vh + eth + ip

    # -- loop -------------------------------------------------------------------------

    def pump(self, now: float, on_event: Callable[[object, float], None] | None) -> None:
        """Timers, events to the application, and everything due out."""
        table = self.table
        t = table.next_timer()
        if t is not None and t <= now:
            table.handle_timer(now)
        while (e := table.next_event()) is not None:
            if on_event is not None:
                on_event(e, now)
        out = table.segments_to_send(now)
        if out:
            self.send(out)

    def run(
        self,
        on_event: Callable[[object, float], None] | None = None,
        idle: Callable[[float], None] | None = None,
        stop: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Event loop: wait for frames, other sockets or the next timer; drain; pump.

        Applications register their own sockets on ``self.selector`` with a callback
        ``f(mask, now)`` as the key's data.
        """
        sel = self.selector
        sel.register(self.sock, selectors.EVENT_READ, None)
        try:
            while not stop():
                now = clock()
                t = self.table.next_timer()
                timeout = 0.2 if t is None else min(max(t - now, 0.0), 0.2)
                busy = self.drain(now) > 0
                for key, mask in sel.select(0 if busy else timeout):
                    now = clock()
                    if key.data is None:
                        self.drain(now)
                    else:
                        key.data(mask, now)
                self.pump(now, on_event)
                if idle is not None:
                    idle(now)
                    self.pump(now, on_event)
        finally:
            sel.unregister(self.sock)


def _aux_checked(anc: list) -> bool:
    """True when PACKET_AUXDATA says the checksum is pending (local TSO) or verified."""
    for level, kind, data in anc:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= _AUX.size:
            return bool(_AUX.unpack_from(data)[0] & (TP_STATUS_CSUMNOTREADY | TP_STATUS_CSUM_VALID))
    return False
