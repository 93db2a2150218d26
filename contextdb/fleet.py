"""The fleet store: the same chunk lists in a Redis server that many gateways share.

Keys live under ``mpctx:<line>:`` so one server can hold several lines (routes):
``meta`` (JSON parameters), ``cells`` (a set of ``carrier\\x1fcell``) and one list per
cell ``chunks:<carrier>\\x1f<cell>`` to which gateways RPUSH what they learn. Lists are
append-only: a gateway remembers how many chunks of each cell it has loaded and fetches
only the tail with LRANGE (see docs/contextdb.md, "Sharing along a line"). Appends of one
commit go in one MULTI/EXEC transaction, so readers see all of an ingest or nothing.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from contextdb.codec import decode_json, encode_json
from contextdb.errors import ContextDBError
from contextdb.resp import RespClient
from contextdb.store import SEP, check_name


def parse_url(url: str) -> tuple[str, int, int, str | None, str | None]:
    """``redis://[[USER]:PASSWORD@]HOST:PORT[/DB]`` -> (host, port, db, user, password)."""
    parts = urlsplit(url)
    try:
        port = parts.port or 6379
        db = int(parts.path.strip("/") or 0)
    except ValueError:
        port, db = -1, -1
    if parts.scheme != "redis" or not parts.hostname or port <= 0 or db < 0:
        safe = url.split("@")[-1]  # never echo a password
        raise ContextDBError(
            f"fleet URL must be redis://[[USER]:PASSWORD@]HOST:PORT[/DB] (got ...{safe!r})"
        )
    password = unquote(parts.password) if parts.password else None
    user = unquote(parts.username) if parts.username else None
    return parts.hostname, port, db, user, password


class RedisStore:
    def __init__(self, url: str, line: str = "default", timeout: float = 5.0) -> None:
        check_name("line", line)
        host, port, db, user, password = parse_url(url)
        self.client = RespClient(host, port, db, timeout, user=user, password=password)
        self.prefix = f"mpctx:{line}:"
        self._pending: list[tuple] = []

    def _list(self, carrier: str, cell: str) -> str:
        return f"{self.prefix}chunks:{carrier}{SEP}{cell}"

    def get_meta(self) -> dict | None:
        raw = self.client.execute("GET", self.prefix + "meta")
        return None if raw is None else decode_json(raw)

    def set_meta(self, meta: dict) -> None:
        # SET NX: the first gateway fixes the parameters; a later one with others fails
        # the meta comparison in ContextDB instead of overwriting them.
        self.client.execute("SET", self.prefix + "meta", encode_json(meta), "NX")

    def get_state(self, name: str) -> dict | None:
        raw = self.client.execute("GET", f"{self.prefix}state:{name}")
        return None if raw is None else decode_json(raw)

    def set_state(self, name: str, value: dict) -> None:
        self._pending.append(("SET", f"{self.prefix}state:{name}", encode_json(value)))

    def append(self, carrier: str, cell: str, chunk: bytes) -> None:
        check_name("carrier", carrier)
        check_name("cell", cell)
        self._pending.append(("RPUSH", self._list(carrier, cell), chunk))
        self._pending.append(("SADD", self.prefix + "cells", f"{carrier}{SEP}{cell}"))

    def commit(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            self.client.transaction(pending)

    def cells(self) -> list[tuple[str, str]]:
        members = self.client.execute("SMEMBERS", self.prefix + "cells")
        return sorted(tuple(m.decode().split(SEP, 1)) for m in members)

    def chunk_count(self, carrier: str, cell: str) -> int:
        return self.client.execute("LLEN", self._list(carrier, cell))

    def chunks(self, carrier: str, cell: str, start: int = 0) -> list[bytes]:
        return self.client.execute("LRANGE", self._list(carrier, cell), start, -1)

    def close(self) -> None:
        self.client.close()


def open_store(path: str, fleet_url: str = "", line: str = "default", readonly: bool = False):
    """The fleet store when a URL is given, else the embedded file."""
    if fleet_url:
        return RedisStore(fleet_url, line)
    from contextdb.store import SqliteStore

    return SqliteStore(path, readonly=readonly)
