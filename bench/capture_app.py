"""The user-space TCP endpoint on one interface, with a test or relay application behind it.

``python -m bench.capture_app`` runs the gateway's raw-socket shell
(:class:`~middlebox.gateway.capture.CaptureShell`) and endpoint on one interface, with a
small local application behind the endpoint instead of the carrier paths: a testing aid
for the endpoint alone, used by the interop tests and by ``bench.tcp_bench``.
``--app test`` is :class:`TestApp` (echo, sink, source, a minimal HTTP GET); ``--app
relay`` is :class:`RelayApp` (every connection relayed to one kernel-TCP destination,
e.g. an iperf3 server). ``mpproxy capture`` is the same command, for example
``python -m bench.capture_app --netns NS --interface IF --app test``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import selectors
import signal
import socket
import struct
import sys
import time
from typing import TYPE_CHECKING

from middlebox.errors import UserError
from middlebox.tcp import events as ev
from middlebox.tcp.endpoint import EndpointTable
from middlebox.tcp.params import TcpParams

if TYPE_CHECKING:
    from middlebox.gateway.capture import CaptureShell

OFFLOADS = ("aux", "csum", "gso")  # --offload: what the shell and endpoint leave to the kernel


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
        if isinstance(e, ev.ConnectionEstablished):
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
        help="run the user-space TCP endpoint on an interface with a test or relay "
        "application behind it (a testing aid for the endpoint alone)",
    )
    _add_arguments(p)
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    """Capture on ``args.interface`` until SIGTERM/SIGINT; CaptureError on setup failures."""
    # here, not at the top: they bring pyroute2, and ``mpproxy --help`` (or ``status``)
    # builds this command's parser without running it
    from middlebox.gateway.capture import CaptureError, CaptureShell, Impairment
    from middlebox.gateway.listener import install_drop, remove_drop

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
    # The relay accepts a SYN only once its destination answered; the test application at
    # once, so the table answers for it (with SYN cookies beyond its half-open limits).
    table = EndpointTable(cfg, buffer_room=4 << 20, chunk=0 if args.loss else None,
                          auto_accept=args.app != "relay")  # fmt: skip
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
