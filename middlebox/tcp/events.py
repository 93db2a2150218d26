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
    """A client sent a SYN, to a table built with ``auto_accept=False`` (the proxy decides
    before the handshake). ``key`` is (client addr, client port, server addr, server port).

    The proxy calls ``conn.accept()`` (SYN-ACK) or ``conn.abort()`` (RST). Such a table
    cannot answer with SYN cookies: beyond its half-open limits it drops SYNs.
    """

    conn: Connection
    key: Key
    options: Options


@dataclass(slots=True)
class ConnectionEstablished:
    """The client's handshake completed (its ACK of our SYN-ACK, or of a SYN cookie).

    A table built with ``auto_accept=True`` answers SYNs itself and tells the proxy of a
    connection only now, so a SYN that is never completed costs the proxy nothing.
    ``options`` are the client's as the endpoint uses them (after a cookie: what
    survived it, see :mod:`middlebox.tcp.cookies`).
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
