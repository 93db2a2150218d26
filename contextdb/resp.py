"""A minimal Redis client: RESP2 over a stdlib socket.

The fleet store needs a dozen commands, one connection, pipelining and MULTI/EXEC; a
hundred lines do that without a dependency. Requests are arrays of bulk strings;
replies are parsed from a buffered reader so the parser is testable on bytes alone.
"""

from __future__ import annotations

import socket
from typing import Any, BinaryIO

from contextdb.errors import ContextDBError

MAX_BULK = 512 << 20  # Redis' own limit for one string


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
    line = stream.readline(MAX_BULK)
    if not line.endswith(b"\r\n"):
        raise ContextDBError("redis: connection closed or reply line malformed")
    return line[:-2]


def read_reply(stream: BinaryIO) -> Any:
    """One reply: str for status, int, bytes or None for bulk, list (or None) for arrays.
    An error reply is returned as a :class:`RespError` instance, not raised, so that
    one failed command inside a pipeline does not desynchronise the ones after it."""
    line = _line(stream)
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RespError(f"redis: {rest.decode(errors='replace')}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        if n > MAX_BULK:
            raise ContextDBError(f"redis: bulk reply of {n} bytes is too large")
        data = stream.read(n + 2)
        if len(data) != n + 2 or data[-2:] != b"\r\n":
            raise ContextDBError("redis: connection closed inside a bulk reply")
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [read_reply(stream) for _ in range(n)]
    raise ContextDBError(f"redis: unexpected reply type {kind!r}")


class RespClient:
    """One connection to a Redis server; not thread-safe (one per thread)."""

    def __init__(
        self,
        host: str,
        port: int,
        db: int = 0,
        timeout: float = 5.0,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        self.address = f"{host}:{port}"
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
            replies = [read_reply(self._rfile) for _ in commands]
        except OSError as e:
            raise ContextDBError(f"redis {self.address}: {e}") from None
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
        return result

    def close(self) -> None:
        self._rfile.close()
        self._sock.close()
