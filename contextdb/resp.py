"""A minimal Redis client: RESP2 over a stdlib socket.

The fleet store needs a dozen commands, one connection, pipelining and MULTI/EXEC; a
hundred lines do that without a dependency. Requests are arrays of bulk strings;
replies are parsed from a buffered reader so the parser is testable on bytes alone.

A reply comes from a server on the network, so the parser trusts nothing in it: every
malformed reply is one :class:`~contextdb.errors.ContextDBError` (never a traceback),
a bulk string may announce at most :attr:`Limits.max_bulk` bytes (Redis allows 512 MiB,
which a reader would allocate before the first byte arrives), arrays at most
:attr:`Limits.max_items` elements and :attr:`Limits.max_depth` levels of nesting, and a
status, error or integer line at most :data:`MAX_LINE` bytes.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, BinaryIO

from contextdb.errors import ContextDBError

MAX_LINE = 64 << 10  # a status, error or integer line; the fleet store's are short
DEFAULT_MAX_BULK = 16 << 20  # contextdb.fleet_max_reply's default


@dataclass(frozen=True)
class Limits:
    """Bounds of one reply (see the module text)."""

    max_bulk: int = DEFAULT_MAX_BULK
    max_items: int = 1 << 20
    max_depth: int = 4  # the fleet store's replies nest 2 deep (EXEC of LRANGE)


DEFAULT_LIMITS = Limits()


class RespError(ContextDBError):
    """The server answered with an error reply (``-ERR ...``)."""


def encode_command(*args: bytes | str | int | float) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int | float):
            a = repr(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _line(stream: BinaryIO) -> bytes:
    line = stream.readline(MAX_LINE + 2)
    if not line.endswith(b"\r\n"):
        if len(line) > MAX_LINE:
            raise ContextDBError(f"redis: reply line longer than {MAX_LINE} bytes")
        raise ContextDBError("redis: connection closed or reply line malformed")
    return line[:-2]


def _int(kind: bytes, rest: bytes) -> int:
    """A RESP integer: optional '-', then at most 19 ASCII digits (a signed 64-bit)."""
    digits = rest[1:] if rest[:1] == b"-" else rest
    if not digits.isdigit() or len(digits) > 19:  # bytes.isdigit is ASCII only
        raise ContextDBError(f"redis: malformed {kind.decode()!r} reply: {rest[:40]!r}")
    return int(rest)


def read_reply(stream: BinaryIO, limits: Limits = DEFAULT_LIMITS, _depth: int = 0) -> Any:
    """One reply: str for status, int, bytes or None for bulk, list (or None) for arrays.
    An error reply is returned as a :class:`RespError` instance, not raised, so that
    one failed command inside a pipeline does not desynchronise the ones after it.
    A reply beyond ``limits`` or malformed raises :class:`ContextDBError`; the
    connection is then out of step and must be closed."""
    line = _line(stream)
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode(errors="replace")
    if kind == b"-":
        return RespError(f"redis: {rest.decode(errors='replace')}")
    if kind == b":":
        return _int(kind, rest)
    if kind == b"$":
        n = _int(kind, rest)
        if n < 0:
            return None
        if n > limits.max_bulk:
            raise ContextDBError(
                f"redis: bulk reply of {n} bytes is larger than the limit of {limits.max_bulk} "
                "(contextdb.fleet_max_reply)"
            )
        data = stream.read(n + 2)
        if len(data) != n + 2 or data[-2:] != b"\r\n":
            raise ContextDBError("redis: connection closed inside a bulk reply")
        return data[:-2]
    if kind == b"*":
        n = _int(kind, rest)
        if n < 0:
            return None
        if n > limits.max_items:
            raise ContextDBError(f"redis: array reply of {n} elements (at most {limits.max_items})")
        if _depth >= limits.max_depth:
            raise ContextDBError(f"redis: reply nested deeper than {limits.max_depth} levels")
        return [read_reply(stream, limits, _depth + 1) for _ in range(n)]
    raise ContextDBError(f"redis: unexpected reply type {kind!r}")


class RespClient:
    """One connection to a Redis server; not thread-safe (one per thread).

    ``timeout`` bounds the connect and every read and write: a server that stops
    answering is an error after that long, not a hang."""

    def __init__(
        self,
        host: str,
        port: int,
        db: int = 0,
        timeout: float = 5.0,
        user: str | None = None,
        password: str | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.address = f"{host}:{port}"
        self.limits = limits
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise ContextDBError(f"redis {self.address}: cannot connect: {e}") from None
        self._rfile = self._sock.makefile("rb")
        try:
            if password is not None:
                self.execute("AUTH", *([user] if user else []), password)
            if db:
                self.execute("SELECT", db)
        except ContextDBError:
            self.close()
            raise

    def pipeline(self, commands: list[tuple]) -> list[Any]:
        """Send all commands, then read all replies; raise the first error reply."""
        try:
            self._sock.sendall(b"".join(encode_command(*c) for c in commands))
            replies = [read_reply(self._rfile, self.limits) for _ in commands]
        except OSError as e:  # TimeoutError included
            raise ContextDBError(f"redis {self.address}: {e or type(e).__name__}") from None
        except ContextDBError as e:
            raise ContextDBError(f"{e} (from {self.address})") from None
        for r in replies:
            if isinstance(r, RespError):
                raise r
        return replies

    def execute(self, *args) -> Any:
        return self.pipeline([args])[0]

    def transaction(self, commands: list[tuple]) -> list[Any]:
        """Run commands atomically (MULTI/EXEC); returns their replies."""
        replies = self.pipeline([("MULTI",), *commands, ("EXEC",)])
        result = replies[-1]
        if result is None:
            raise ContextDBError(f"redis {self.address}: transaction aborted")
        if not isinstance(result, list):
            raise ContextDBError(f"redis {self.address}: EXEC answered {type(result).__name__}")
        return result

    def close(self) -> None:
        self._rfile.close()
        self._sock.close()
