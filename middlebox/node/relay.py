"""The node's connections to the real servers: the counterpart of the gateway's Bridge.

One :class:`Relay` per gateway session joins the session's mux to kernel TCP sockets,
one :class:`ServerConn` per connection. An OPEN is checked against the destination
policy (the node is not an open proxy), then the node connects to the original
destination from its own address with ``node.connect_timeout``; a refusal, a timeout
or an unreachable network go back as OPEN_FAIL with that reason
(:func:`open_fail_reason`), so the gateway resets its client.

Relaying keeps both buffers bounded: bytes from the server are read only while the
mux's send buffer has room (``send_room``), and bytes for the server are taken out of
the mux (which is what opens the connection-level window toward the gateway) only as
the server's socket accepts them, :data:`RELAY_SLICE` at a time. Each direction ends on
its own (half-close); a server's RST becomes an RST message, an RST message an RST to
the server (SO_LINGER 0).

A server socket carries SO_LINGER 0 from the moment it is made: if the node dies
(SIGKILL, the OOM killer) the kernel resets it, so the server never mistakes a truncated
upload for a complete one. Only when the gateway's direction has ended cleanly, every
byte is written and the FIN is next, is the linger cleared (:func:`clean_end`), so that a
FIN from the node still means "complete".
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import selectors
import socket
import struct

from middlebox.logs import kv
from middlebox.node.destpolicy import DestinationPolicy
from middlebox.paths.conn import forget, set_interest
from middlebox.session import wire
from middlebox.session.mux import (
    Closed,
    Mux,
    OpenRequested,
    PeerFinished,
    Readable,
    Reset,
    Writable,
)
from middlebox.session.policy import SchedulerPolicy

log = logging.getLogger("mpproxy.node")

RELAY_SLICE = 256 << 10  # bytes taken from the mux for a server at a time
_LINGER_RST = struct.pack("ii", 1, 0)  # close() resets: l_onoff 1, l_linger 0
_LINGER_OFF = struct.pack("ii", 0, 0)  # close() ends cleanly (the kernel's default)

CONNECT_ERRORS = {
    errno.ECONNREFUSED: wire.OpenFailReason.REFUSED,
    errno.ETIMEDOUT: wire.OpenFailReason.TIMEOUT,
    errno.EHOSTUNREACH: wire.OpenFailReason.UNREACHABLE,
    errno.ENETUNREACH: wire.OpenFailReason.UNREACHABLE,
    errno.EHOSTDOWN: wire.OpenFailReason.UNREACHABLE,
    errno.ENETDOWN: wire.OpenFailReason.UNREACHABLE,
    errno.EADDRNOTAVAIL: wire.OpenFailReason.UNREACHABLE,
    errno.EACCES: wire.OpenFailReason.DENIED,
    errno.EPERM: wire.OpenFailReason.DENIED,
    errno.EMFILE: wire.OpenFailReason.NO_RESOURCES,
    errno.ENFILE: wire.OpenFailReason.NO_RESOURCES,
    errno.ENOBUFS: wire.OpenFailReason.NO_RESOURCES,
}


def open_fail_reason(err: int) -> wire.OpenFailReason:
    """The OPEN_FAIL reason for a connect error number."""
    return CONNECT_ERRORS.get(err, wire.OpenFailReason.UNREACHABLE)


def hard_close(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer learns the connection was aborted."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    sock.close()


def clean_end(sock: socket.socket) -> None:
    """Every byte for the server is written: clear SO_LINGER 0 and send FIN, which now
    means the stream is complete (even if the node dies before the server reads it)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


class ServerConn:
    """One connection to a destination server."""

    __slots__ = ("cid", "sock", "dest", "connected", "deadline", "pending", "peer_fin",
                 "shut_wr", "server_eof", "mux_done", "bytes_up", "bytes_down")  # fmt: skip

    def __init__(self, cid: int, sock: socket.socket, dest: tuple[str, int], deadline: float):
        self.cid = cid
        self.sock = sock
        self.dest = dest
        self.connected = False
        self.deadline = deadline
        self.pending = bytearray()  # taken from the mux, not yet accepted by the server
        self.peer_fin = False  # the gateway's direction ended
        self.shut_wr = False
        self.server_eof = False
        self.mux_done = False  # the mux closed the connection cleanly
        self.bytes_up = 0  # gateway -> server
        self.bytes_down = 0


class Relay:
    """Mux events to server sockets and server sockets to the mux (see module text).

    ``counters`` is the node's ``open_denied`` / ``open_failed`` / ``opened`` record,
    shared by the relays of every session so that it outlives them.
    """

    def __init__(
        self,
        mux: Mux,
        sel: selectors.BaseSelector,
        policy: DestinationPolicy,
        connect_timeout: float,
        counters: dict[str, int],
    ) -> None:
        self.mux = mux
        self.sel = sel
        self.policy = policy
        self.connect_timeout = connect_timeout
        self.counters = counters
        self.conns: dict[int, ServerConn] = {}
        self.starved: set[int] = set()  # not reading their server: the mux's buffer was full
        self.opened = 0
        self.refused = 0
        # the session's scheduler adapter, told each accepted OPEN's client and port
        self.scheduler: SchedulerPolicy | None = None

    # -- timers ---------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """The earliest connect deadline."""
        return min((r.deadline for r in self.conns.values() if not r.connected), default=None)

    def expire(self, now: float) -> None:
        """Connects past ``node.connect_timeout`` fail with OPEN_FAIL timeout."""
        for r in list(self.conns.values()):
            if not r.connected and now >= r.deadline:
                self._connect_failed(r, wire.OpenFailReason.TIMEOUT, now)

    # -- mux events -----------------------------------------------------------------------

    def mux_events(self, now: float) -> int:
        """Handle the mux's events; returns how many there were."""
        mux = self.mux
        n = 0
        while (e := mux.next_event()) is not None:
            n += 1
            t = type(e)
            if t is OpenRequested:
                self._open(e, now)  # type: ignore[arg-type]
                continue
            r = self.conns.get(e.conn_id)
            if r is None:
                continue
            if t is Readable:
                self._to_server(r, now)
            elif t is Writable:
                self._watch(r)
            elif t is PeerFinished:
                r.peer_fin = True
                self._to_server(r, now)
            elif t is Reset:
                del self.conns[r.cid]
                forget(self.sel, r.sock)
                hard_close(r.sock)
            elif t is Closed:
                r.mux_done = True
                self._to_server(r, now)  # closes once the last bytes are out
        return n

    def retry_starved(self) -> None:
        """Read again from servers whose connection has send room in the mux again (the
        mux says Writable only after a refused send, and the node never sends more than
        the room)."""
        mux = self.mux
        for cid in list(self.starved):
            r = self.conns.get(cid)
            if r is None:
                self.starved.discard(cid)
            elif mux.pending(cid) and mux.send_room(cid) > 0:
                self._watch(r)

    def _open(self, e: OpenRequested, now: float) -> None:
        o = e.open
        dst = ipaddress.ip_address(o.dst_addr)
        why = self.policy.refusal(dst)
        if why is not None:
            self.counters["open_denied"] += 1
            log.info("open denied %s", kv(conn=e.conn_id, dst=f"{dst}:{o.dst_port}", why=repr(why)))
            self.mux.refuse(e.conn_id, wire.OpenFailReason.DENIED, now)
            return
        if self.scheduler is not None:
            self.scheduler.described(e.conn_id, str(o.src_addr), o.dst_port, now)
        family = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as err:
            self.mux.refuse(e.conn_id, open_fail_reason(err.errno or 0), now)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # a node that dies resets its servers (see the module text)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        dest = (str(dst), o.dst_port)
        r = ServerConn(e.conn_id, sock, dest, now + self.connect_timeout)
        self.conns[e.conn_id] = r
        err = sock.connect_ex(dest)
        if err not in (0, errno.EINPROGRESS):
            self._connect_failed(r, open_fail_reason(err), now)
            return
        self._watch(r)

    def _connect_failed(self, r: ServerConn, reason: wire.OpenFailReason, now: float) -> None:
        self.counters["open_failed"] += 1
        self.refused += 1
        log.info(
            "open failed %s", kv(conn=r.cid, dst=f"{r.dest[0]}:{r.dest[1]}", reason=reason.name)
        )
        self.conns.pop(r.cid, None)
        forget(self.sel, r.sock)
        r.sock.close()
        self.mux.refuse(r.cid, reason, now)

    # -- server sockets -------------------------------------------------------------------

    def _watch(self, r: ServerConn) -> None:
        if r.cid not in self.conns:
            return
        mux = self.mux
        mask = 0
        if not r.connected or r.pending:
            mask |= selectors.EVENT_WRITE
        if r.connected and not r.server_eof and mux.pending(r.cid):
            if mux.send_room(r.cid) > 0:
                mask |= selectors.EVENT_READ
                self.starved.discard(r.cid)
            else:
                self.starved.add(r.cid)  # the mux says Writable only after a refused send
        set_interest(self.sel, r.sock, mask, lambda m, t, r=r: self._ready(r, m, t))

    def _ready(self, r: ServerConn, mask: int, now: float) -> None:
        mux = self.mux
        if not r.connected:
            err = r.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._connect_failed(r, open_fail_reason(err), now)
                return
            if not mux.pending(r.cid):  # the gateway gave up meanwhile
                self.conns.pop(r.cid, None)
                forget(self.sel, r.sock)
                hard_close(r.sock)
                return
            r.connected = True
            self.opened += 1
            self.counters["opened"] += 1
            mux.accept(r.cid)
        if mask & selectors.EVENT_WRITE:
            self._to_server(r, now)
        if mask & selectors.EVENT_READ and r.cid in self.conns:
            self._from_server(r, now)
        self._watch(r)

    def _from_server(self, r: ServerConn, now: float) -> None:
        mux = self.mux
        if not mux.pending(r.cid):
            return
        room = mux.send_room(r.cid)
        if room <= 0:
            return
        try:
            data = r.sock.recv(min(room, RELAY_SLICE))
        except BlockingIOError:
            return
        except OSError:
            self._server_reset(r, now)
            return
        if data:
            r.bytes_down += len(data)
            mux.send(r.cid, data)
        else:
            r.server_eof = True
            mux.shutdown(r.cid)

    def _to_server(self, r: ServerConn, now: float) -> None:
        if not r.connected:
            return
        mux = self.mux
        while True:
            if not r.pending:
                r.pending = mux.read(r.cid, RELAY_SLICE)
                if not r.pending:
                    break
            try:
                n = r.sock.send(r.pending)
            except BlockingIOError:
                break
            except OSError:
                self._server_reset(r, now)
                return
            r.bytes_up += n
            del r.pending[:n]
            if r.pending:
                break
        drained = not r.pending and not mux.unread(r.cid)
        if r.peer_fin and drained and not r.shut_wr:
            r.shut_wr = True
            clean_end(r.sock)
        if r.mux_done and drained:
            self._finish(r)
            return
        self._watch(r)

    def _finish(self, r: ServerConn) -> None:
        """The mux is done with the connection and the server has every byte: close."""
        self.conns.pop(r.cid, None)
        forget(self.sel, r.sock)
        r.sock.close()

    def _server_reset(self, r: ServerConn, now: float) -> None:
        self.conns.pop(r.cid, None)
        forget(self.sel, r.sock)
        hard_close(r.sock)
        self.mux.abort(r.cid, wire.RstReason.SERVER_RESET, now)

    # -- status and shutdown --------------------------------------------------------------

    def buffered(self) -> int:
        """Bytes the node holds for the session (mux buffers and bytes for servers)."""
        return self.mux.stats()["buffered_bytes"] + sum(len(r.pending) for r in self.conns.values())

    def close(self) -> None:
        """RST every server (the session ends); the mux's connections are the caller's."""
        for r in list(self.conns.values()):
            forget(self.sel, r.sock)
            hard_close(r.sock)
        self.conns.clear()
