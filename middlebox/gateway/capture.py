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

``python -m middlebox.gateway.capture --netns NS --interface IF --app test`` runs the endpoint
with a small local application behind it (used by the interop tests and the benchmark):
see :class:`TestApp`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

from middlebox.errors import UserError
from middlebox.tcp import events as ev
from middlebox.tcp.constants import ETH_HEADER, ETH_P_IP
from middlebox.tcp.endpoint import EndpointTable
from middlebox.tcp.packet import CSUM_FULL, CSUM_PARTIAL, ParseStats, Segment, build_ipv4
from middlebox.tcp.packet import parse_ipv4 as _parse_ipv4
from middlebox.tcp.params import TcpParams

log = logging.getLogger("mpproxy.capture")

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
_NO_VNET = _VNET.pack(0, 0, 0, 0, 0, 0)
RECV_BUFFER = 256 << 10
L2_TABLE_MAX = 65536
OFFLOADS = ("aux", "csum", "gso")


class CaptureError(UserError):
    """The listener could not be set up (missing namespace, interface or permission)."""


@contextmanager
def in_netns(name: str | None):
    """Run the body in network namespace ``name`` (this thread only), then come back."""
    if not name:
        yield
        return
    from pyroute2 import netns

    if not os.path.exists(os.path.join(netns.NETNS_RUN_DIR, name)):
        raise CaptureError(f"no network namespace {name!r} (see 'ip netns list')")
    try:
        netns.pushns(name)  # never creates one: checked above
    except OSError as e:
        raise CaptureError(f"cannot enter network namespace {name!r}: {e}") from None
    try:
        yield
    finally:
        netns.popns()


def _run(cmd: list[str], netns: str | None, stdin: str | None = None) -> None:
    full = (["ip", "netns", "exec", netns] if netns else []) + cmd
    r = subprocess.run(full, input=stdin, capture_output=True, text=True, timeout=30)
    if r.returncode:
        raise CaptureError(f"{' '.join(cmd)} failed: {r.stderr.strip() or r.stdout.strip()}")


def nft_table_name(interface: str) -> str:
    return "mpproxy_" + "".join(c if c.isalnum() else "_" for c in interface)


def install_drop(netns: str | None, interface: str) -> None:
    """Drop the captured originals before the namespace's own stack sees them.

    AF_PACKET taps run before netfilter, so the capture still sees every frame; the
    kernel, which has no socket for these connections, would otherwise answer them
    with RST. Reverse-path filtering is turned off because the clients' sources are
    not routed through this interface.
    """
    t = nft_table_name(interface)
    rules = (
        f"table inet {t} {{}}\ndelete table inet {t}\n"
        f"table inet {t} {{\n"
        f"  chain pre {{ type filter hook prerouting priority raw; policy accept;\n"
        f'    iifname "{interface}" meta l4proto tcp drop\n  }}\n}}\n'
    )
    _run(["nft", "-f", "-"], netns, rules)
    for conf in ("all", "default", interface):
        _run(["sysctl", "-q", "-w", f"net.ipv4.conf.{conf}.rp_filter=0"], netns)


def remove_drop(netns: str | None, interface: str) -> None:
    t = nft_table_name(interface)
    try:
        _run(["nft", "delete", "table", "inet", t], netns)
    except CaptureError:
        pass


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
        with in_netns(self.netns):
            try:
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
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
                s.bind((self.interface, ETH_P_IP))
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

    _build = build_frame  # older name, kept for callers

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


# -- a small application behind the endpoint (tests and benchmark) -----------------------

PATTERN_BLOCK = 1_000_003  # not a multiple of any segment size: misplaced bytes show


def pattern(n: int, seed: int = 7) -> bytes:
    """``n`` bytes of a reproducible stream; clients compute the same to check hashes."""
    block = random.Random(seed).randbytes(PATTERN_BLOCK)
    reps, rest = divmod(n, PATTERN_BLOCK)
    return block * reps + block[:rest]


class _Pattern:
    def __init__(self, seed: int = 7) -> None:
        self.block = random.Random(seed).randbytes(PATTERN_BLOCK)
        self.pos = 0

    def take(self, n: int) -> bytes:
        out = bytearray()
        while n:
            k = min(n, PATTERN_BLOCK - self.pos)
            out += self.block[self.pos : self.pos + k]
            self.pos = (self.pos + k) % PATTERN_BLOCK
            n -= k
        return bytes(out)


class TestApp:
    """Echo, sink and source behind the endpoint, chosen by the client's first line.

    ``ECHO\\n``: every byte comes back; the endpoint closes after the client does.
    ``PUT\\n``: bytes are counted and hashed; after the client's FIN the endpoint
    sends ``<count> <sha256>\\n`` and closes. ``GET n\\n``: the endpoint sends ``n``
    bytes of :func:`pattern` and closes, whether or not the client already sent FIN.
    """

    __test__ = False  # not a pytest class

    def __init__(self, queue_limit: int = 4 << 20, room: int = 4 << 20) -> None:
        self.queue_limit = queue_limit
        self.room = room
        self.state: dict[object, dict] = {}
        self.sources: set = set()
        self.completed = 0
        self.resets = 0

    def on_event(self, e: object, now: float) -> None:
        if isinstance(e, ev.ConnectionRequested):
            e.conn.accept()
            self.state[e.conn] = {"mode": None, "head": b"", "n": 0, "h": hashlib.sha256()}
        elif isinstance(e, ev.DataReceived):
            self._data(e.conn, e.data)
        elif isinstance(e, ev.PeerClosed):
            st = self.state.get(e.conn)
            if st is None:
                return
            st["peer_closed"] = True
            if st["mode"] == "PUT":
                e.conn.send(f"{st['n']} {st['h'].hexdigest()}\n".encode())
                e.conn.close()
            elif st["mode"] in ("ECHO", None):
                e.conn.close()
        elif isinstance(e, ev.Reset):
            self.resets += 1
        elif isinstance(e, ev.ConnectionGone):
            self.state.pop(e.conn, None)
            self.sources.discard(e.conn)
            self.completed += 1

    def _data(self, conn, data: bytes) -> None:
        st = self.state.get(conn)
        if st is None:
            return
        conn.set_buffer_room(self.room)  # consumed at once: the window stays open
        if st["mode"] is None:
            st["head"] += data
            line, sep, rest = st["head"].partition(b"\n")
            if not sep:
                return
            words = line.split()
            st["mode"] = words[0].decode(errors="replace") if words else "ECHO"
            data = rest
            if st["mode"] == "GET" and len(words) == 3 and words[1].startswith(b"/bytes/"):
                # an HTTP/1.x request for /bytes/N (curl): a minimal response, then close
                st["left"] = _int(words[1][7:])
                conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % st["left"])
                conn.send(b"Connection: close\r\n\r\n")
                words = [b"GET", b"%d" % st["left"]]
            if st["mode"] == "GET":
                st["left"] = _int(words[1]) if len(words) > 1 else 0
                st["pat"] = _Pattern()
                self.sources.add(conn)
                self.top_up(conn)
        if st["mode"] == "ECHO" and data:
            conn.send(data)
        elif st["mode"] == "PUT":
            st["n"] += len(data)
            st["h"].update(data)

    def top_up(self, conn) -> None:
        st = self.state[conn]
        room = self.queue_limit - conn.send_queued
        if room > self.queue_limit // 2 and st["left"]:
            k = min(room, st["left"])
            conn.send(st["pat"].take(k))
            st["left"] -= k
            if not st["left"]:
                conn.close()
                self.sources.discard(conn)

    def idle(self, now: float) -> None:
        for conn in list(self.sources):
            if conn.state in ("CLOSED",):
                self.sources.discard(conn)
            else:
                self.top_up(conn)


class _Link:
    __slots__ = ("conn", "sock", "pending", "connected", "client_fin", "server_eof", "mask")

    def __init__(self, conn, sock: socket.socket) -> None:
        self.conn, self.sock = conn, sock
        self.pending = bytearray()  # client bytes not yet taken by the destination
        self.connected = self.client_fin = self.server_eof = False
        self.mask = 0


class RelayApp:
    """Relays every captured connection to one kernel-TCP destination (e.g. iperf3).

    A miniature of what the gateway does with the paths, used to run unmodified servers
    behind the endpoint: the SYN is answered only once the destination accepted (a
    refused destination refuses the client with RST); a slow destination shrinks the
    client's window through ``set_buffer_room``; a slow client stops reads from the
    destination through ``send_queued``. Both buffers are bounded by ``limit``.
    """

    def __init__(self, shell: CaptureShell, target: tuple[str, int], limit: int = 1 << 20):
        self.shell, self.target, self.limit = shell, target, limit
        self.links: dict[object, _Link] = {}
        self.completed = 0
        self.resets = 0
        self.max_pending = 0

    def on_event(self, e: object, now: float) -> None:
        if isinstance(e, ev.ConnectionRequested):
            s = socket.socket()
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.connect_ex(self.target)
            link = _Link(e.conn, s)
            self.links[e.conn] = link
            self._watch(link, selectors.EVENT_WRITE)
            return
        link = self.links.get(e.conn)
        if link is None:
            return
        if isinstance(e, ev.DataReceived):
            link.pending += e.data
            self.max_pending = max(self.max_pending, len(link.pending))
            self._write(link)
        elif isinstance(e, ev.PeerClosed):
            link.client_fin = True
            self._write(link)
        elif isinstance(e, ev.Reset):
            self.resets += 1
            link.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif isinstance(e, ev.ConnectionGone):
            self.completed += 1
            self._drop(link)
        if e.conn in self.links:
            self._update(link)

    def _watch(self, link: _Link, mask: int) -> None:
        sel = self.shell.selector
        if mask == link.mask:
            return
        if not mask:
            sel.unregister(link.sock)
        elif not link.mask:
            sel.register(link.sock, mask, lambda m, now, link=link: self._ready(link, m))
        else:
            sel.modify(link.sock, mask, lambda m, now, link=link: self._ready(link, m))
        link.mask = mask

    def _update(self, link: _Link) -> None:
        conn = link.conn
        if not link.connected:
            return
        mask = 0
        if not link.server_eof and conn.send_queued < self.limit:
            mask |= selectors.EVENT_READ
        if link.pending:
            mask |= selectors.EVENT_WRITE
        self._watch(link, mask)
        conn.set_buffer_room(self.limit - len(link.pending))

    def _ready(self, link: _Link, mask: int) -> None:
        conn = link.conn
        if not link.connected:
            err = link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                conn.abort()  # the destination refused: so does the endpoint
                return
            link.connected = True
            conn.accept()
        if mask & selectors.EVENT_WRITE:
            self._write(link)
        if mask & selectors.EVENT_READ:
            try:
                data = link.sock.recv(min(256 << 10, self.limit))
            except BlockingIOError:
                data = None
            except OSError:
                conn.abort()
                return
            if data is not None:
                if data and conn.state in ("ESTABLISHED", "CLOSE-WAIT") and not conn.fin_queued:
                    conn.send(data)
                elif not data:
                    link.server_eof = True
                    conn.close()
        if conn in self.links:
            self._update(link)

    def _write(self, link: _Link) -> None:
        if link.pending and link.connected:
            try:
                n = link.sock.send(link.pending)
                del link.pending[:n]
            except BlockingIOError:
                pass
            except OSError:
                link.conn.abort()
                return
        if link.client_fin and not link.pending and link.connected:
            try:
                link.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _drop(self, link: _Link) -> None:
        self._watch(link, 0)
        link.sock.close()
        self.links.pop(link.conn, None)

    def idle(self, now: float) -> None:
        for link in list(self.links.values()):
            self._update(link)


def _int(b: bytes) -> int:
    return int(b) if b.isdigit() and len(b) < 13 else 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--netns", default=None, help="listener namespace (default: current)")
    p.add_argument("--interface", required=True, help="interface facing the clients")
    p.add_argument("--app", choices=("test", "relay"), default="test")
    p.add_argument("--relay-to", default="127.0.0.1:5201", help="HOST:PORT for --app relay")
    p.add_argument("--relay-limit", type=int, default=1 << 20, help="bytes buffered each way")
    p.add_argument(
        "--offload",
        choices=OFFLOADS,
        default="gso",
        help="aux: PACKET_AUXDATA on receive, Python checksums and MSS segments on send; "
        "csum: vnet header, checksum offload on send; gso: vnet header and 64 KiB GSO sends",
    )
    p.add_argument("--no-drop-rule", action="store_true", help="do not install the nft drop")
    p.add_argument("--loss", type=float, default=0.0, help="test hook: random loss, both ways")
    p.add_argument("--reorder", type=float, default=0.0, help="test hook: reordering")
    p.add_argument("--stats", default=None, help="write counters here every 0.5 s (JSON)")
    p.add_argument("--ready", default=None, help="touch this file once capturing")
    p.add_argument("--max-retransmits", type=int, default=TcpParams.max_retransmits)
    p.add_argument("--rto-max", type=float, default=TcpParams.rto_max)


def register(sub: argparse._SubParsersAction) -> None:
    """``mpproxy capture``: the endpoint on one interface with a test or relay app."""
    p = sub.add_parser(
        "capture",
        help="run the user-space TCP endpoint on an interface (testing aid: a test or relay "
        "application behind it; the gateway that carries connections to the node is not "
        "built here)",
    )
    _add_arguments(p)
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    """Capture on ``args.interface`` until SIGTERM/SIGINT; CaptureError on setup failures."""
    if not 0.0 <= args.loss < 1.0 or not 0.0 <= args.reorder < 1.0:
        raise CaptureError("--loss and --reorder must be in [0, 1)")
    host, _, port = args.relay_to.rpartition(":")
    if args.app == "relay" and not (host and port.isdigit() and 0 < int(port) < 65536):
        raise CaptureError(f"--relay-to must be HOST:PORT (got {args.relay_to!r})")
    vnet = args.offload in ("csum", "gso")
    cfg = TcpParams(
        gso=args.offload == "gso",
        max_retransmits=args.max_retransmits,
        rto_max=args.rto_max,
    )
    # With impairment on, segments are cut at the MSS here so that one loss is one packet.
    table = EndpointTable(cfg, buffer_room=4 << 20, chunk=0 if args.loss else None)
    shell = CaptureShell(args.interface, table, args.netns, vnet=vnet)  # fails early if no such
    if not args.no_drop_rule:
        install_drop(args.netns, args.interface)
    if args.loss or args.reorder:
        shell.rx_impair = Impairment(args.loss, args.reorder, seed=1)
        shell.tx_impair = Impairment(args.loss, args.reorder, seed=2)
    if args.app == "relay":
        app = RelayApp(shell, (host, int(port)), args.relay_limit)
    else:
        app = TestApp()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    if args.ready:
        open(args.ready, "w").close()
    cpu0 = time.process_time()
    last = [0.0]

    def idle(now: float) -> None:
        app.idle(now)
        if args.stats and now - last[0] > 0.5:
            last[0] = now
            write_stats()

    def write_stats() -> None:
        s = shell.stats
        out = {
            "frames_in": s.frames_in,
            "frames_out": s.frames_out,
            "bytes_in": s.bytes_in,
            "bytes_out": s.bytes_out,
            "checksum_skipped": s.checksum_skipped,
            "dropped": dict(s.parse.dropped),
            "accepted": s.parse.accepted,
            "send_errors": s.send_errors,
            "cpu_seconds": time.process_time() - cpu0,
            "connections_left": len(table),
            "completed": app.completed,
            "resets": app.resets,
            "relay_max_pending": getattr(app, "max_pending", 0),
            "table": table.totals(),
        }
        tmp = args.stats + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f)
        os.replace(tmp, args.stats)

    try:
        shell.run(app.on_event, idle, stop=lambda: bool(stopping))
    finally:
        if not args.no_drop_rule:
            remove_drop(args.netns, args.interface)
        if args.stats:
            write_stats()
        shell.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _add_arguments(p)
    try:
        return serve(p.parse_args(argv))
    except UserError as e:
        print(f"mpproxy capture: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
