"""Where chunks live: a small interface and the embedded implementation.

A store holds, per carrier and cell, an append-only list of chunks (bytes from
:mod:`contextdb.codec`) plus one metadata record (the parameters the chunks were cut
with). Append-only lists make sharing simple: a reader remembers how many chunks of a
cell it has and later asks only for the rest, whether the writer was its own process,
another process on the gateway, or another gateway of the fleet (:mod:`contextdb.fleet`).
Appends become visible together at :meth:`Store.commit`.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Protocol

from contextdb.codec import decode_json, encode_json
from contextdb.errors import ContextDBError

SEP = "\x1f"  # between carrier and cell in keys; never in a name read from a trace


class Store(Protocol):
    def get_meta(self) -> dict | None: ...

    def set_meta(self, meta: dict) -> None: ...

    def append(self, carrier: str, cell: str, chunk: bytes) -> None: ...

    def commit(self) -> None: ...

    def cells(self) -> list[tuple[str, str]]: ...

    def chunk_count(self, carrier: str, cell: str) -> int: ...

    def chunks(self, carrier: str, cell: str, start: int = 0) -> list[bytes]: ...

    def close(self) -> None: ...

    def get_state(self, name: str) -> dict | None: ...

    def set_state(self, name: str, value: dict) -> None:
        """Bookkeeping (e.g. sync cursors), written with the next :meth:`commit`."""


def check_name(kind: str, name: str) -> None:
    if not name or SEP in name:
        raise ContextDBError(f"{kind} name must be non-empty text without control characters")


class MemoryStore:
    """A store in a dict: for tests and for ``evaluate``, which need no file."""

    def __init__(self) -> None:
        self._meta: dict | None = None
        self._lists: dict[tuple[str, str], list[bytes]] = {}
        self._pending: list[tuple[str, str, bytes]] = []
        self._state: dict[str, dict] = {}

    def get_state(self, name: str) -> dict | None:
        return self._state.get(name)

    def set_state(self, name: str, value: dict) -> None:
        self._state[name] = value

    def get_meta(self) -> dict | None:
        return self._meta

    def set_meta(self, meta: dict) -> None:
        self._meta = dict(meta)

    def append(self, carrier: str, cell: str, chunk: bytes) -> None:
        check_name("carrier", carrier)
        check_name("cell", cell)
        self._pending.append((carrier, cell, chunk))

    def commit(self) -> None:
        for carrier, cell, chunk in self._pending:
            self._lists.setdefault((carrier, cell), []).append(chunk)
        self._pending.clear()

    def cells(self) -> list[tuple[str, str]]:
        return sorted(self._lists)

    def chunk_count(self, carrier: str, cell: str) -> int:
        return len(self._lists.get((carrier, cell), ()))

    def chunks(self, carrier: str, cell: str, start: int = 0) -> list[bytes]:
        return list(self._lists.get((carrier, cell), ())[start:])

    def close(self) -> None:
        pass


class SqliteStore:
    """The embedded default: one ``sqlitedict`` file per database.

    Write-ahead logging lets writers and any number of readers (other processes) work
    at once; a reader opened with ``readonly=True`` never takes a lock. The chunk count
    of a cell is written in the same transaction as its chunks, so a reader that reads
    the count first never asks for a chunk that is not there. Writers (the gateway's
    live ingest, a ``sync`` run, an import) take an exclusive ``flock`` on
    ``<file>.lock`` from their first write until their commit, and read the counts
    afresh under it: two writers never pick the same chunk number.
    """

    TABLE = "contextdb"

    def __init__(self, path: str | os.PathLike, readonly: bool = False) -> None:
        from sqlitedict import SqliteDict

        self.path = Path(path)
        self.readonly = readonly
        if readonly and not self.path.exists():
            raise ContextDBError(f"{self.path}: no such context database")
        try:
            self._db = SqliteDict(
                str(self.path),
                tablename=self.TABLE,
                flag="r" if readonly else "c",
                autocommit=False,
                journal_mode="WAL",
                encode=bytes,
                decode=bytes,
                outer_stack=False,
            )
        except (RuntimeError, sqlite3.Error, OSError) as e:
            raise ContextDBError(f"{self.path}: cannot open context database: {e}") from None
        self._counts: dict[tuple[str, str], int] = {}
        self._lockfile = None if readonly else open(f"{self.path}.lock", "a+b")
        self._locked = False

    def _lock(self) -> None:
        if not self._locked:
            if self._lockfile is None:
                raise ContextDBError(f"{self.path}: opened read-only")
            fcntl.flock(self._lockfile, fcntl.LOCK_EX)
            self._locked = True
            self._counts.clear()  # another writer may have appended since

    def _unlock(self) -> None:
        if self._locked:
            fcntl.flock(self._lockfile, fcntl.LOCK_UN)
            self._locked = False

    def _get(self, key: str) -> bytes | None:
        try:
            return self._db.get(key)
        except sqlite3.DatabaseError as e:
            raise ContextDBError(f"{self.path}: not a context database: {e}") from None

    def get_meta(self) -> dict | None:
        raw = self._get("meta")
        return None if raw is None else decode_json(raw)

    def set_meta(self, meta: dict) -> None:
        self._lock()
        self._db["meta"] = encode_json(meta)
        self.commit()

    def get_state(self, name: str) -> dict | None:
        raw = self._get(f"s{SEP}{name}")
        return None if raw is None else decode_json(raw)

    def set_state(self, name: str, value: dict) -> None:
        self._lock()
        self._db[f"s{SEP}{name}"] = encode_json(value)

    def append(self, carrier: str, cell: str, chunk: bytes) -> None:
        check_name("carrier", carrier)
        check_name("cell", cell)
        self._lock()
        key = (carrier, cell)
        if key not in self._counts:
            self._counts[key] = self.chunk_count(carrier, cell)
        i = self._counts[key]
        self._db[f"c{SEP}{carrier}{SEP}{cell}{SEP}{i:010d}"] = chunk
        self._counts[key] = i + 1
        self._db[f"n{SEP}{carrier}{SEP}{cell}"] = str(i + 1).encode()

    def commit(self) -> None:
        if not self._locked:
            return  # nothing written since the last commit
        try:
            known = set(self.cells())
            new = known | set(self._counts)
            if new != known:
                self._db["cells"] = encode_json(sorted(new))
            self._db.commit()
        finally:
            self._unlock()

    def cells(self) -> list[tuple[str, str]]:
        raw = self._get("cells")
        return [] if raw is None else [tuple(x) for x in decode_json(raw)]

    def chunk_count(self, carrier: str, cell: str) -> int:
        raw = self._get(f"n{SEP}{carrier}{SEP}{cell}")
        return 0 if raw is None else int(raw)

    def chunks(self, carrier: str, cell: str, start: int = 0) -> list[bytes]:
        n = self.chunk_count(carrier, cell)
        return [self._db[f"c{SEP}{carrier}{SEP}{cell}{SEP}{i:010d}"] for i in range(start, n)]

    def close(self) -> None:
        self._unlock()  # uncommitted writes are dropped with the connection
        self._db.close()
        if self._lockfile is not None:
            self._lockfile.close()
