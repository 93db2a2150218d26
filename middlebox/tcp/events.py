"""Events the endpoint hands to the proxy (pulled with ``next_event()``).

Records only: the connection queues them, and :func:`middlebox.tcp.connection.pull_event`
hands them out. Each names its connection by :class:`Connection`, the part of
:class:`middlebox.tcp.connection.Connection` a shell may call, so this module needs
nothing from the module that makes the events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from middlebox.tcp.options import Options

Key = tuple[bytes, int, bytes, int]


class Connection(Protocol):
    """What the proxy may do with a connection an event names."""

    @property
    def send_queued(self) -> int:
        """Bytes accepted by :meth:`send` and not yet acknowledged by the client."""
        ...

    def accept(self) -> None: ...
    def abort(self) -> None: ...
    def send(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def set_buffer_room(self, n: int) -> None: ...


@dataclass(slots=True)
class ConnectionRequested:
    """A client sent a SYN. ``key`` is (client addr, client port, server addr, server port).

    The proxy calls ``conn.accept()`` (or the table accepts by itself when built with
    ``auto_accept=True``) or ``conn.abort()`` to refuse with RST.
    """

    conn: Connection
    key: Key
    options: Options


@dataclass(slots=True)
class DataReceived:
    """In-order bytes from the client; consecutive arrivals are coalesced into one event."""

    conn: Connection
    data: bytes


@dataclass(slots=True)
class PeerClosed:
    """The client sent FIN: it will send no more, but may still receive (half close)."""

    conn: Connection


@dataclass(slots=True)
class Reset:
    """The connection was reset: ``reason`` is 'peer', 'timeout', 'idle' or 'aborted'."""

    conn: Connection
    reason: str


@dataclass(slots=True)
class ConnectionGone:
    """All state of the connection is freed; always the last event of a connection."""

    conn: Connection
