"""The fleet store's Redis connection: redis-py, with a bound on what one reply may hold.

redis-py does the protocol, ``AUTH``/``SELECT``, pipelines and ``MULTI``/``EXEC``. A
reply comes from a server on the network, and measured against a hostile one (the
adversarial tests' fake server on loopback) redis-py's parser does not allocate what a
``$N`` announces (it keeps what arrives), but it keeps *everything* that arrives for a
reply: ``$2^40`` followed by 256 MiB holds 258 MiB; a status line that never ends grows
without limit at a cost quadratic in its length (16 MiB: 7-13 s of CPU); a malformed
integer or deep nesting is a ``ValueError`` or ``RecursionError``, not a Redis error. So:

* the socket of every connection counts the bytes received since the last request was
  sent; beyond ``max_reply`` (``contextdb.fleet_max_reply``) the read fails with
  :class:`ReplyTooLarge` and redis-py closes the connection. This holds whatever parser
  redis-py uses (its own, or hiredis where installed), and it also bounds a long line
  (at most ``max_reply`` bytes, read in pieces of up to :data:`READ_SIZE` so the line's
  quadratic cost stays small);
* one round trip (request out, complete reply in) has at most ``timeout`` seconds in
  all, not per read: a server that trickles a byte a second is a timeout, not a hang;
* every exception from inside redis-py, whatever the reply did to it, is one
  :class:`~contextdb.errors.ContextDBError` naming the server (:meth:`Client.run`).

No retries inside redis-py: the caller decides (a tool fails with one message; the
running gateway's :class:`contextdb.fleet.BackgroundStore` dials again with back-off).
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from contextdb.errors import ContextDBError

if TYPE_CHECKING:
    import redis

DEFAULT_MAX_REPLY = 16 << 20  # contextdb.fleet_max_reply's default
READ_SIZE = 1 << 20  # bytes asked of one recv (redis-py's default, 64 KiB, makes long lines slow)

T = TypeVar("T")


class RespError(ContextDBError):
    """The server refused a request: an error reply (a wrong password, an ACL, a key of
    another type)."""


class ReplyTooLarge(ContextDBError):
    """A reply went beyond ``max_reply`` bytes; the connection was closed."""


class _BoundedSocket:
    """A connected socket whose reads count against the current round trip: at most
    ``max_reply`` bytes and ``timeout`` seconds from the last send. Everything else is
    the socket's own."""

    def __init__(self, sock: socket.socket, max_reply: int, timeout: float | None) -> None:
        self._sock = sock
        self._max = max_reply
        self._timeout = timeout
        self._left = max_reply
        self._deadline: float | None = None

    def sendall(self, data: bytes, *flags: int) -> None:
        self._left = self._max
        self._deadline = None if not self._timeout else time.monotonic() + self._timeout
        self._sock.sendall(data, *flags)

    def recv(self, n: int, *flags: int) -> bytes:
        data = self._read(self._sock.recv, n, *flags)
        self._count(len(data))
        return data

    def recv_into(self, buf: Any, n: int = 0, *flags: int) -> int:
        got = self._read(self._sock.recv_into, buf, n, *flags)
        self._count(got)
        return got

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` within what is left of the round trip's time (redis-py's polls,
        with a timeout of 0, are left alone)."""
        was = self._sock.gettimeout()
        if not was or self._deadline is None:
            return fn(*args)
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete reply within {self._timeout} s")
        self._sock.settimeout(min(was, left))
        try:
            return fn(*args)
        finally:
            self._sock.settimeout(was)

    def _count(self, n: int) -> None:
        self._left -= n
        if self._left < 0:
            raise ReplyTooLarge(
                f"redis: reply larger than {self._max} bytes (contextdb.fleet_max_reply)"
            )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@functools.cache
def _connection_class() -> type:
    """redis-py's TCP connection over a :class:`_BoundedSocket` (redis-py is imported
    when a fleet store is first dialled: a gateway without one does not pay for it)."""
    import redis

    class Connection(redis.Connection):
        def __init__(self, *, max_reply: int = DEFAULT_MAX_REPLY, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.max_reply = max_reply

        def _connect(self) -> Any:
            return _BoundedSocket(super()._connect(), self.max_reply, self.socket_timeout)

    return Connection


class Client:
    """One connection to a Redis server (not thread-safe: one per thread). After an
    error the connection is closed and the next request dials again."""

    def __init__(
        self,
        host: str,
        port: int,
        db: int = 0,
        timeout: float = 5.0,
        user: str | None = None,
        password: str | None = None,
        max_reply: int = DEFAULT_MAX_REPLY,
    ) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.address = f"{host}:{port}"
        self._pool = redis.ConnectionPool(
            connection_class=_connection_class(),
            max_reply=max_reply,
            host=host,
            port=port,
            db=db,
            username=user,
            password=password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            socket_read_size=READ_SIZE,
            retry=Retry(NoBackoff(), 0),
            protocol=2,  # RESP2: every Redis server has it (redis-py 8 would ask for RESP3)
        )
        try:  # a single-connection client connects here: an unreachable server fails now
            self.redis = redis.Redis(connection_pool=self._pool, single_connection_client=True)
        except Exception as e:
            err = _error(self.address, e)
            if type(err) is ContextDBError and isinstance(
                e, redis.ConnectionError | redis.TimeoutError
            ):
                err = ContextDBError(f"redis {self.address}: cannot connect: {_text(e)}")
            raise err from None

    def run(self, fn: Callable[[redis.Redis], T]) -> T:
        """``fn(self.redis)``, with every failure one :class:`ContextDBError`."""
        try:
            return fn(self.redis)
        except Exception as e:  # whatever a hostile reply did inside redis-py
            raise _error(self.address, e) from None

    def transaction(self, ops: list[Callable[[Any], Any]]) -> list[Any]:
        """Each of ``ops`` queues one command on a ``MULTI``/``EXEC`` pipeline; all run
        atomically. Returns their replies."""

        def tx(r: redis.Redis) -> list[Any]:
            pipe = r.pipeline(transaction=True)
            for op in ops:
                op(pipe)
            return pipe.execute()

        return self.run(tx)

    def close(self) -> None:
        self.redis.close()
        self._pool.disconnect()


def _text(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _error(address: str, e: Exception) -> ContextDBError:
    import redis

    if isinstance(e, ContextDBError):
        return type(e)(f"{e} (from {address})")
    if isinstance(e, redis.ResponseError | redis.AuthenticationError):
        return RespError(f"redis {address}: {type(e).__name__}: {_text(e)}")
    if isinstance(e, redis.ConnectionError | redis.TimeoutError | OSError):
        return ContextDBError(f"redis {address}: {_text(e)}")
    # a parse failure (ValueError, RecursionError, redis-py's InvalidResponse) or a
    # reply of a type a response callback did not expect
    return ContextDBError(f"redis {address}: malformed reply ({type(e).__name__}: {_text(e)})")
