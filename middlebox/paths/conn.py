"""One carrier path as a non-blocking I/O shell: TCP, TLS 1.3, framing, HELLO state.

Gateway and node both drive their paths through :class:`PathConn`. It owns the socket
and nothing else: the wire codec turns bytes into messages, the process decides what
the messages mean. The phases are ``connecting`` (gateway: TCP connect in progress),
``tls`` (handshake), ``hello`` (before HELLO / HELLO_ACK), ``up`` and ``closed``; a
failure in any phase raises :class:`PathError` with a reason for the logs, and the
owner closes the path.

Writes go to a buffer that is handed to the kernel as the socket takes it. The room a
path offers the mux is its unsent allowance minus the bytes the kernel has not sent yet
(``SIOCOUTQNSD``, one cheap ioctl) minus the buffer, so a message is committed to a path
only shortly before it can leave ("keep decisions late"). The allowance follows the
path's rate: ``notsent_time`` seconds of its pacing rate (the kernel's smoothed sending
rate, from TCP_INFO), at least :data:`MIN_ROOM` and at most ``notsent_lowat``, written to
the socket's ``TCP_NOTSENT_LOWAT`` too so that the kernel wakes the loop at the same
level. A fixed allowance held a slow carrier's messages for a quarter of a second or more
before they even left (128 KiB at 4 Mbit/s), which is what made a connection wait on that
carrier while the fast ones sat idle with their window full.

TLS over a non-blocking socket: OpenSSL must be given the same bytes again after a
``want write``, so a TLS write takes a fixed slice of the buffer and retries exactly
that slice until it goes through.

A peer that sends but does not read makes the answers it asks for (PROBE_ACK, DATA_ACK,
RST) pile up in the write buffer, which DATA alone never fills beyond the room. Beyond
``notsent_lowat + max_output`` bytes the path is broken or hostile: :meth:`PathConn.flush`
raises :class:`OutputOverflow` and the owner closes the path. A read takes at most
:data:`READ_BUDGET` bytes per call, so one fast peer cannot hold the loop (and the
messages it decodes) for as long as it keeps sending; the socket stays readable and the
rest comes on the next turn.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import selectors
import socket
import ssl
import struct
import time

from middlebox.paths.sockets import TCP_NOTSENT_LOWAT, TcpInfo, delivering, tcp_info
from middlebox.session import wire

log = logging.getLogger("mpproxy.path")

SIOCOUTQNSD = 0x894B  # bytes in the send queue not yet sent (linux/sockios.h)
_INT = struct.Struct("i")
TLS_WRITE_SLICE = 64 << 10
READ_SIZE = 256 << 10
MIN_ROOM = 16 << 10  # the least a path may hold unsent: one message of the default size
READ_BUDGET = 1 << 20  # bytes read per handle() call at most (see the module text)
MAX_OUTPUT = 4 << 20  # default of paths.max_output

CONNECTING, TLS, HELLO, UP, CLOSED = "connecting", "tls", "hello", "up", "closed"
INFO_INTERVAL = 0.2  # seconds between two TCP_INFO readings of a path (gateway and node)


def allowance_for(info: TcpInfo, lowat: int, room_time: float, current: int) -> int | None:
    """The unsent allowance a path should have after reading ``info``: ``room_time``
    seconds of its pacing rate (or delivery rate), at least :data:`MIN_ROOM`, at most
    ``lowat``; None to keep ``current`` (no rate yet, ``room_time`` 0, or within a
    quarter of it: not worth a system call). The replay simulator's path model sizes
    its room with the same rule."""
    rate = info.pacing_rate or info.delivery_rate
    if not rate or not room_time:
        return None
    target = min(lowat, max(MIN_ROOM, int(rate * room_time)))
    if abs(target - current) * 4 < current:
        return None
    return target


class PathError(Exception):
    """The path failed; ``reason`` says why (for logs and CLOSE)."""

    def __init__(self, reason: str, close: wire.CloseReason | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.close = close  # a CLOSE worth telling the peer, if the path can still carry it


class OutputOverflow(PathError):
    """The peer lets more than the path's output bound pile up: it does not read."""


def monotonic_ns() -> int:
    return time.monotonic_ns()


class PathConn:
    """A path socket with its codec. ``handle(mask, now)`` returns decoded messages."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_payload: int,
        lowat: int,
        room_time: float = 0.0,
        ctx: ssl.SSLContext | None = None,
        server_side: bool = False,
        server_hostname: str | None = None,
        connecting: bool = False,
        label: str = "",
        max_output: int = MAX_OUTPUT,
    ) -> None:
        sock.setblocking(False)
        self.raw = sock  # the TCP socket (the TLS socket takes its descriptor over)
        self.fd = sock.fileno()  # selectors key on this: it survives the TLS wrap
        self.sock: socket.socket = sock
        self.ctx = ctx
        self.server_side = server_side
        self.server_hostname = server_hostname
        self.label = label
        self.lowat = lowat  # the most it may hold unsent
        self.max_output = max_output  # write buffer bound beyond lowat (see module text)
        self.room_time = room_time  # seconds of its rate it may hold (0: always lowat)
        self.allowance = lowat  # what it may hold now (until the first rate is known)
        self.decoder = wire.Decoder(max_payload)
        self.peer_max_payload = max_payload
        self.out = bytearray()
        self._slice: bytes | None = None  # a TLS write being retried
        self._want_write = False  # TLS handshake asked for writability
        self.state = CONNECTING if connecting else TLS
        self.bytes_in = 0
        self.bytes_out = 0
        self.last_rx = 0.0
        self.since = 0.0
        self.info: TcpInfo | None = None
        # whether the latest TCP_INFO reading showed the path delivering: acknowledged
        # bytes advanced since the reading before, or nothing was in flight
        self.delivering = False
        if not connecting:
            self._start_tls()

    # -- phases ---------------------------------------------------------------------------

    def fileno(self) -> int:
        return self.fd

    def _start_tls(self) -> None:
        if self.ctx is None:
            self.state = HELLO
            return
        self.state = TLS
        self.sock = self.ctx.wrap_socket(
            self.raw,
            server_side=self.server_side,
            server_hostname=None if self.server_side else self.server_hostname,
            do_handshake_on_connect=False,
        )
        self.raw = self.sock

    def _handshake(self) -> None:
        try:
            self.sock.do_handshake()  # type: ignore[attr-defined]
        except ssl.SSLWantReadError:
            self._want_write = False
            return
        except ssl.SSLWantWriteError:
            self._want_write = True
            return
        except ssl.SSLError as e:
            raise PathError(f"TLS handshake failed: {e.reason or e}") from None
        except OSError as e:
            raise PathError(f"TLS handshake failed: {e.strerror or e}") from None
        self._want_write = False
        self.state = HELLO

    def interest(self) -> int:
        """The selector mask this path needs now."""
        if self.state == CONNECTING:
            return selectors.EVENT_WRITE
        if self.state == TLS:
            return selectors.EVENT_WRITE if self._want_write else selectors.EVENT_READ
        mask = selectors.EVENT_READ
        if self.has_output:
            mask |= selectors.EVENT_WRITE
        return mask

    # -- I/O ------------------------------------------------------------------------------

    def handle(self, mask: int, now: float) -> list[wire.Message]:
        """React to readiness; returns the messages decoded (raises PathError)."""
        if self.state == CONNECTING:
            err = self.raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise PathError(f"connect failed: {errno.errorcode.get(err, err)}")
            self._start_tls()
        if self.state == TLS:
            self._handshake()
            if self.state == TLS:
                return []
            mask |= selectors.EVENT_READ  # records may already wait behind the handshake
        msgs: list[wire.Message] = []
        if mask & selectors.EVENT_WRITE or self.out:
            self.flush()
        if mask & selectors.EVENT_READ:
            self._read(msgs, now)
        return msgs

    def _read(self, msgs: list[wire.Message], now: float) -> None:
        sock, dec = self.sock, self.decoder
        budget = READ_BUDGET
        while True:
            try:
                chunk = sock.recv(READ_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except ssl.SSLError as e:
                raise PathError(f"TLS error: {e.reason or e}") from None
            except (OSError, ValueError) as e:  # ValueError: ssl before its handshake
                raise PathError(f"read failed: {e}") from None
            if not chunk:
                try:
                    dec.eof()
                except wire.ProtocolError as e:
                    raise PathError(f"peer closed inside a message: {e.reason}") from None
                self._collect(msgs)
                if msgs:  # deliver what came before the end; the next call reports it
                    return
                raise PathError("closed by peer")
            self.bytes_in += len(chunk)
            self.last_rx = now
            try:
                dec.feed(chunk)
            except wire.ProtocolError as e:
                self._collect(msgs)
                raise PathError(
                    f"protocol error: {e.reason}", wire.CloseReason.PROTOCOL_ERROR
                ) from None
            self._collect(msgs)
            if len(chunk) < READ_SIZE and self.ctx is None:
                break
            budget -= len(chunk)
            # enough for one turn; the socket stays readable for the rest (TLS: unless
            # OpenSSL holds decrypted bytes, which no readiness would announce)
            if budget <= 0 and (self.ctx is None or not sock.pending()):  # type: ignore[attr-defined]
                break

    def _collect(self, msgs: list[wire.Message]) -> None:
        for m in self.decoder:
            msgs.append(m)

    def write(self, msg: wire.Message) -> None:
        """Queue one message (encoded for the peer's limit); flush() sends it."""
        head = wire.encode_header(msg, self.peer_max_payload)
        self.out += head
        payload = getattr(msg, "payload", None)
        if payload is not None:
            self.out += payload

    def flush(self) -> None:
        """Hand queued bytes to the kernel as far as it takes them."""
        sock = self.sock
        try:
            if self.ctx is None:
                while self.out:
                    n = sock.send(self.out)
                    self.bytes_out += n
                    del self.out[:n]
                return
            while self.out or self._slice:
                if self._slice is None:
                    self._slice = bytes(self.out[:TLS_WRITE_SLICE])
                    del self.out[:TLS_WRITE_SLICE]
                n = sock.send(self._slice)
                self.bytes_out += n
                self._slice = None if n >= len(self._slice) else self._slice[n:]
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            pass
        except ssl.SSLError as e:
            raise PathError(f"TLS error: {e.reason or e}") from None
        except OSError as e:
            raise PathError(f"write failed: {e.strerror or e}") from None
        if self.buffered > self.lowat + self.max_output:
            raise OutputOverflow(f"peer does not read: {self.buffered} bytes wait for it")

    @property
    def has_output(self) -> bool:
        """Bytes wait here for the kernel (queued, or a TLS slice being retried)."""
        return bool(self.out or self._slice)

    @property
    def buffered(self) -> int:
        return len(self.out) + (len(self._slice) if self._slice else 0)

    def notsent(self) -> int:
        try:
            buf = fcntl.ioctl(self.fd, SIOCOUTQNSD, b"\0\0\0\0")
        except OSError:
            return 0
        return _INT.unpack(buf)[0]

    def room(self) -> int:
        """Bytes the mux may commit to this path now."""
        if self.state != UP:
            return 0
        return max(0, self.allowance - self.notsent() - self.buffered)

    def queued(self) -> int:
        """Bytes committed to this path that have not left yet (kernel unsent + buffer)."""
        return self.notsent() + self.buffered

    def follow_rate(self, info: TcpInfo) -> None:
        """Size the unsent allowance to ``room_time`` of the rate ``info`` reports."""
        target = allowance_for(info, self.lowat, self.room_time, self.allowance)
        if target is None:
            return
        try:
            self.raw.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, target)
        except OSError:
            return
        self.allowance = target

    def tcp_info(self) -> TcpInfo | None:
        before = self.info
        try:
            self.info = tcp_info(self.raw)
        except OSError:
            self.delivering = False
            return None
        self.delivering = delivering(before, self.info)
        self.follow_rate(self.info)
        return self.info

    def kernel_status(self) -> dict:
        """What the latest TCP_INFO reading says limited this path's sender (for status):
        microseconds busy (data in flight), limited by the peer's receive window or by
        our send buffer, bytes resent, retransmission timeouts."""
        i = self.info
        if i is None:
            return {}
        return {
            "busy_us": i.busy_time_us,
            "rwnd_limited_us": i.rwnd_limited_us,
            "sndbuf_limited_us": i.sndbuf_limited_us,
            "bytes_sent": i.bytes_sent,
            "bytes_retrans": i.bytes_retrans,
            "total_rto": i.total_rto,
            "snd_wnd": i.snd_wnd,
            "min_rtt_ms": i.min_rtt_us / 1000,
            "pacing_mbit": i.pacing_rate * 8 / 1e6,
        }

    def close(self, reason: wire.CloseReason | None = None, detail: str = "") -> None:
        """Close the path; a CLOSE goes first (best effort) when the path is up."""
        if self.state == CLOSED:
            return
        if reason is not None and self.state in (HELLO, UP):
            try:
                self.write(wire.Close(reason, detail[: wire.MAX_DETAIL]))
                self.flush()
            except (PathError, wire.ProtocolError):
                pass
        self.state = CLOSED
        try:
            self.sock.close()
        except OSError:
            pass

    def answer_probe(self, probe: wire.Probe) -> None:
        t = monotonic_ns()
        self.write(wire.ProbeAck(probe.probe_id, probe.sent_ns, t, max(t, monotonic_ns())))


def set_interest(sel: selectors.BaseSelector, fileobj: object, mask: int, data: object) -> None:
    """Register, modify or unregister ``fileobj`` so that it waits for ``mask``."""
    key = sel.get_map().get(fileobj)  # type: ignore[call-overload]
    if key is None:
        if mask:
            sel.register(fileobj, mask, data)  # type: ignore[arg-type]
    elif not mask:
        sel.unregister(fileobj)  # type: ignore[arg-type]
    elif key.events != mask or key.data is not data:
        sel.modify(fileobj, mask, data)  # type: ignore[arg-type]


def forget(sel: selectors.BaseSelector, fileobj: object) -> None:
    """Unregister ``fileobj`` if registered (call before closing it)."""
    fmap = sel.get_map()  # None once the selector is closed
    try:
        if fmap is not None and fmap.get(fileobj) is not None:  # type: ignore[call-overload]
            sel.unregister(fileobj)  # type: ignore[arg-type]
    except (ValueError, KeyError):
        pass


def pump_mux(mux: object, paths: dict[int, PathConn], now: float) -> list[tuple[int, PathError]]:
    """Offer each up path's room to the mux, write what it hands out, flush every path.

    Returns the paths that failed while writing (the caller takes them down). A path is
    anything with ``state``, ``room()``, ``write(msg)``, ``has_output`` and ``flush()``
    (the replay simulator passes its model of a path socket)."""
    for pid, pc in paths.items():
        if pc.state == UP:
            mux.update_path(pid, room=pc.room(), queued=pc.queued())  # type: ignore[attr-defined]
    for pid, msg in mux.messages_to_send(now):  # type: ignore[attr-defined]
        pc = paths.get(pid)
        if pc is not None and pc.state == UP:
            pc.write(msg)
    failed = []
    for pid, pc in paths.items():
        if pc.has_output:
            try:
                pc.flush()
            except PathError as e:
                failed.append((pid, e))
    return failed


def report_tcp_info(
    mux: object,
    policy: object,
    path_id: int,
    carrier: str,
    pc: PathConn,
    now: float,
    probe_rtt: float | None = None,
) -> TcpInfo | None:
    """Read one path's TCP_INFO and hand it on, as gateway and node do every
    :data:`INFO_INTERVAL`: the mux gets srtt, rttvar and, when the reading shows the path
    delivering, ``progress`` (its stall rule waits for a silent path); the scheduler
    adapter (``policy.sample``, if it has one) gets the reading and ``probe_rtt``, the
    path's latest PROBE round trip. ``pc`` is anything with ``tcp_info()`` and
    ``delivering`` (the replay simulator passes its socket model). Returns the reading."""
    info = pc.tcp_info()
    if info is not None and info.srtt_us:
        mux.update_path(  # type: ignore[attr-defined]
            path_id,
            srtt=info.srtt,
            rttvar=info.rttvar,
            progress=now if pc.delivering else None,
        )
    sample = getattr(policy, "sample", None)
    if sample is not None:
        sample(path_id, carrier, info, now, probe_rtt)
    return info
