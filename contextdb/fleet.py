"""The fleet store: the same chunk lists in a Redis server that many gateways share.

Keys live under ``mpctx:<line>:`` so one server can hold several lines (routes):
``meta`` (JSON parameters), ``cells`` (a set of ``carrier\\x1fcell``) and one list per
cell ``chunks:<carrier>\\x1f<cell>`` to which gateways RPUSH what they learn. Lists are
append-only: a gateway remembers how many chunks of each cell it has loaded and fetches
only the tail with LRANGE (see docs/contextdb.md, "Sharing along a line"). Appends of one
commit go in one MULTI/EXEC transaction, so readers see all of an ingest or nothing.

Two ways to use it. :class:`RedisStore` is the store itself, blocking: for tools
(``mpproxy contextdb``) and :func:`contextdb.sync.sync`. :class:`BackgroundStore` is
what a running gateway or node opens (:func:`open_store` with ``live=``): the same
interface served from memory, while a thread moves chunks to and from the server,
dialling it again with back-off after an error or a timeout. The data path then never
waits for a server that a train in a tunnel cannot reach.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import threading
import time
import zipfile
from collections import Counter, deque
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from contextdb.codec import encode_json
from contextdb.config import ContextDBConfig
from contextdb.errors import ContextDBError
from contextdb.resp import DEFAULT_MAX_REPLY, Client, ReplyTooLarge, RespError
from contextdb.store import SEP, check_name

log = logging.getLogger("mpproxy.contextdb")

PAGE = 256  # chunks fetched per LRANGE at most (fewer when the reply would exceed fleet_max_reply)
RETRY_INITIAL = 1.0  # seconds before the first reconnection; doubles up to fleet_retry_max


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


def _json(raw: Any, what: str) -> dict | None:
    """A JSON object stored by a gateway, or None when absent; anything else is an error."""
    if raw is None:
        return None
    try:
        value = json.loads(_reply(raw, bytes, what).decode())
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise ContextDBError(f"fleet store: {what} is not a JSON object")
    return value


def _reply(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ContextDBError(f"fleet store: {what}: unexpected reply {type(value).__name__}")
    return value


class RedisStore:
    """The chunk lists in the Redis server itself (every call a round trip)."""

    def __init__(
        self,
        url: str,
        line: str = "default",
        timeout: float = 5.0,
        max_reply: int = DEFAULT_MAX_REPLY,
    ) -> None:
        check_name("line", line)
        host, port, db, user, password = parse_url(url)
        self.client = Client(host, port, db, timeout, user=user, password=password,
                             max_reply=max_reply)  # fmt: skip
        self.prefix = f"mpctx:{line}:"
        self._pending: list[Callable[[Any], Any]] = []  # queued on the next commit's MULTI

    @classmethod
    def configured(cls, url: str, line: str, cfg: ContextDBConfig) -> RedisStore:
        """A store bounded by the configuration's ``fleet_timeout`` and ``fleet_max_reply``
        (the one place these two options reach the client)."""
        return cls(url, line, cfg.fleet_timeout, cfg.fleet_max_reply)

    def _list(self, carrier: str, cell: str) -> str:
        return f"{self.prefix}chunks:{carrier}{SEP}{cell}"

    def get_meta(self) -> dict | None:
        return _json(self.client.run(lambda r: r.get(self.prefix + "meta")), "meta")

    def set_meta(self, meta: dict) -> None:
        # SET NX: the first gateway fixes the parameters; a later one with others fails
        # the meta comparison in ContextDB instead of overwriting them.
        self.client.run(lambda r: r.set(self.prefix + "meta", encode_json(meta), nx=True))

    def get_state(self, name: str) -> dict | None:
        key = f"{self.prefix}state:{name}"
        return _json(self.client.run(lambda r: r.get(key)), f"state {name}")

    def set_state(self, name: str, value: dict) -> None:
        key, raw = f"{self.prefix}state:{name}", encode_json(value)
        self._pending.append(lambda p: p.set(key, raw))

    def append(self, carrier: str, cell: str, chunk: bytes) -> None:
        check_name("carrier", carrier)
        check_name("cell", cell)
        key, member = self._list(carrier, cell), f"{carrier}{SEP}{cell}"
        self._pending.append(lambda p: p.rpush(key, chunk))
        self._pending.append(lambda p: p.sadd(self.prefix + "cells", member))

    def commit(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            self.client.transaction(pending)

    def cells(self) -> list[tuple[str, str]]:
        members = _reply(self.client.run(lambda r: r.smembers(self.prefix + "cells")),
                         set, "cells")  # fmt: skip
        out = set()
        for m in members:
            carrier, sep, cell = _reply(m, bytes, "cells").decode(errors="replace").partition(SEP)
            if sep and carrier and cell:  # anything else was not written by a gateway
                out.add((carrier, cell))
        return sorted(out)

    def chunk_count(self, carrier: str, cell: str) -> int:
        key = self._list(carrier, cell)
        return _reply(self.client.run(lambda r: r.llen(key)), int, "LLEN")

    def chunks(
        self,
        carrier: str,
        cell: str,
        start: int = 0,
        count: int | None = None,
        skip_large: bool = False,
    ) -> list[bytes | None]:
        """The chunks from ``start`` on (at most ``count`` of them), fetched in pages of
        at most :data:`PAGE`; a page whose reply would exceed ``fleet_max_reply`` is
        fetched again in halves. A single chunk beyond that limit raises
        :class:`ReplyTooLarge`, or with ``skip_large`` is None in the list (not fetched)."""
        key, out, page = self._list(carrier, cell), [], PAGE
        while count is None or len(out) < count:
            n = page if count is None else min(page, count - len(out))
            first = start + len(out)
            try:
                got = self.client.run(lambda r, a=first, b=first + n - 1: r.lrange(key, a, b))
            except ReplyTooLarge:
                if n > 1:
                    page = n // 2
                    continue
                if not skip_large:
                    raise
                got = [None]
            else:
                got = [_reply(c, bytes, "LRANGE") for c in _reply(got, list, "LRANGE")]
            out += got
            if len(got) < n:
                break
        return out

    def close(self) -> None:
        self.client.close()


def _digest(chunk: bytes) -> bytes:
    return hashlib.blake2b(chunk, digest_size=16).digest()


def _unpacks_within(chunk: bytes, limit: int) -> bool:
    """Whether a chunk from the fleet is an archive whose members unpack to at most
    ``limit`` bytes: chunks are written uncompressed (``np.savez``), so a writer that
    sends a small compressed archive unpacking to gigabytes is refused before anything
    loads it."""
    try:
        with zipfile.ZipFile(io.BytesIO(chunk)) as z:
            return sum(i.file_size for i in z.infolist()) <= limit
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        return False


class _Mirror:
    """The chunk lists in memory, for one reader: a chunk is kept until it has been
    handed out once (``ContextDB`` asks only for the tail it has not loaded), so the
    store does not hold a second copy of the history the indexes hold. A reader that
    asks again for chunks it was handed (it could not decode one of them: a corrupt
    chunk from the fleet) gets what follows them."""

    def __init__(self) -> None:
        self.meta: dict | None = None
        self.state: dict[str, dict] = {}
        self.lists: dict[tuple[str, str], list] = {}  # key -> [handed out, [chunks after]]

    def add(self, key: tuple[str, str], chunks: list[bytes]) -> None:
        self.lists.setdefault(key, [0, []])[1].extend(chunks)

    def count(self, key: tuple[str, str]) -> int:
        done, rest = self.lists.get(key, (0, ()))
        return done + len(rest)

    def take(self, key: tuple[str, str], start: int) -> list[bytes]:
        entry = self.lists.get(key)
        if entry is None:
            return []
        done, rest = entry
        out = rest[max(0, start - done) :]
        entry[0], entry[1] = done + len(rest), []
        return out


class BackgroundStore:
    """The store interface in memory; a thread keeps it in step with the fleet store.

    * Opening tries the server once, in the caller's thread and within
      ``fleet_timeout``: when it answers, everything is loaded as with
      :class:`RedisStore` (and wrong parameters or a refused password are errors at
      start); when it does not, the store starts empty and the thread keeps trying.
    * :meth:`commit` puts the appended chunks in memory at once (so ``ContextDB`` sees
      them) and queues them for the server; the thread sends each commit as one
      MULTI/EXEC, at least once (after an error whose outcome is unknown it is sent
      again). While the server is unreachable at most ``fleet_max_queued`` bytes wait;
      beyond that the oldest commits are dropped and counted.
    * Every ``fleet_refresh`` seconds the thread fetches what others appended (in pages
      of at most :data:`PAGE` chunks), skipping the chunks this process sent itself
      (known by digest) and refusing any larger than ``fleet_max_reply`` or that would
      unpack to more (counted), and adds them to memory; :meth:`take_news` tells the owner to call
      ``ContextDB.refresh()``, which then reads memory only.
    * An error or a timeout closes the connection; the next attempt follows after 1 s,
      doubling up to ``fleet_retry_max``, with jitter, until a pull succeeds again.
      Everything is counted (:meth:`status`).
    """

    def __init__(
        self,
        url: str,
        line: str,
        cfg: ContextDBConfig,
        readonly: bool = False,
        connect: Callable[[], RedisStore] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_name("line", line)
        parse_url(url)  # a malformed URL is an error at start
        self._connect = connect or (lambda: RedisStore.configured(url, line, cfg))
        self.cfg = cfg
        self.readonly = readonly
        self.clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._mirror = _Mirror()
        self._pending: list[tuple[str, str, bytes]] = []  # appended, not yet committed
        self._outbox: deque[list[tuple[str, str, bytes]]] = deque()  # committed, not yet sent
        self._outbox_bytes = 0
        self._sending: list[tuple[str, str, bytes]] | None = None
        self._meta_unsent = False
        self._own: dict[tuple[str, str], Counter] = {}  # digests of chunks this process sent
        self._cursor: dict[tuple[str, str], int] = {}  # fleet chunks seen per cell
        self._news = False
        self._stop = False
        self._fleet: RedisStore | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._next_pull = 0.0
        self.state = "connecting"
        self.last_error = ""
        self.counters = {"connects": 0, "errors": 0, "pushed_chunks": 0, "pulled_chunks": 0,
                         "dropped_chunks": 0, "pulls": 0, "refused_chunks": 0}  # fmt: skip
        try:
            self._dial()
            self._pull()
        except RespError:  # the server refused us (password, ACL): a configuration error
            self._close_fleet()
            raise
        except ContextDBError as e:
            self._failed(e)
        self._news = False  # what the first attempt loaded, ContextDB loads when it opens
        self._thread = threading.Thread(target=self._run, name="fleet-store", daemon=True)
        self._thread.start()

    # -- the Store interface (the owner's thread; memory only) ----------------------------

    def get_meta(self) -> dict | None:
        with self._lock:
            return self._mirror.meta

    def set_meta(self, meta: dict) -> None:
        with self._lock:
            self._mirror.meta = dict(meta)
            self._meta_unsent = not self.readonly
            self._wake.notify()

    def get_state(self, name: str) -> dict | None:
        with self._lock:
            return self._mirror.state.get(name)

    def set_state(self, name: str, value: dict) -> None:
        """Kept in memory only (no tool keeps state on a background store)."""
        with self._lock:
            self._mirror.state[name] = value

    def append(self, carrier: str, cell: str, chunk: bytes) -> None:
        if self.readonly:
            raise ContextDBError("fleet store: opened read-only")
        check_name("carrier", carrier)
        check_name("cell", cell)
        self._pending.append((carrier, cell, chunk))

    def commit(self) -> None:
        if not self._pending:
            return
        tx, self._pending = self._pending, []
        with self._lock:
            for carrier, cell, chunk in tx:
                self._mirror.add((carrier, cell), [chunk])
            self._outbox.append(tx)
            self._outbox_bytes += sum(len(c) for _, _, c in tx)
            while self._outbox_bytes > self.cfg.fleet_max_queued and len(self._outbox) > 1:
                old = self._outbox.popleft()
                self._outbox_bytes -= sum(len(c) for _, _, c in old)
                self.counters["dropped_chunks"] += len(old)
            self._wake.notify()

    def cells(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._mirror.lists)

    def chunk_count(self, carrier: str, cell: str) -> int:
        with self._lock:
            return self._mirror.count((carrier, cell))

    def chunks(self, carrier: str, cell: str, start: int = 0) -> list[bytes]:
        """The chunks from ``start`` on; each is handed out once (see :class:`_Mirror`)."""
        with self._lock:
            return self._mirror.take((carrier, cell), start)

    def take_news(self) -> bool:
        """Whether chunks of other writers arrived since the last call (then call
        ``ContextDB.refresh()``)."""
        with self._lock:
            news, self._news = self._news, False
            return news

    def status(self) -> dict:
        with self._lock:
            queued = sum(len(tx) for tx in self._outbox)
            return {
                "state": self.state,
                **self.counters,
                "queued_chunks": queued,
                "queued_bytes": self._outbox_bytes,
                "retry_in_s": round(max(0.0, self._retry_at - self.clock()), 1)
                if self.state == "down"
                else 0.0,
                "last_error": self.last_error,
            }

    def close(self, drain: float | None = None) -> None:
        """Stop the thread after it has sent what is queued (waiting at most ``drain``
        seconds, by default ``fleet_timeout``), and close the connection."""
        deadline = self.clock() + (self.cfg.fleet_timeout if drain is None else drain)
        with self._lock:
            while (self._outbox or self._sending) and self.state == "up":
                left = deadline - self.clock()
                if left <= 0:
                    break
                self._wake.wait(min(left, 0.1))
            self._stop = True
            self._wake.notify_all()
        self._thread.join(self.cfg.fleet_timeout + 1.0)
        if not self._thread.is_alive():
            self._close_fleet()

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stop:
                    return
                wait = self._next_wait()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
            try:
                if self._fleet is None:
                    self._dial()
                self._push()
                if self.clock() >= self._next_pull:
                    self._pull()
            except ContextDBError as e:
                self._failed(e)
            except Exception as e:  # a bug must not end the thread silently
                log.exception("fleet store: unexpected error")
                self._failed(ContextDBError(repr(e)))

    def _next_wait(self) -> float:
        """Seconds until there is work (called with the lock held)."""
        now = self.clock()
        if self._fleet is None:
            return self._retry_at - now
        if self._outbox or self._meta_unsent:
            return 0.0
        return self._next_pull - now

    def _dial(self) -> None:
        fleet = self._connect()
        try:
            meta = fleet.get_meta()
            with self._lock:
                mine = self._mirror.meta
                if meta is not None and mine is None:
                    self._mirror.meta = meta
                elif meta is not None and mine is not None and meta != mine:
                    raise ContextDBError(
                        f"fleet store was built with other parameters ({meta}) than this "
                        f"one ({mine}): not synchronised"
                    )
        except BaseException:
            fleet.close()
            raise
        self._fleet = fleet
        with self._lock:
            self.state = "up"
            self.counters["connects"] += 1
            self._wake.notify_all()
        if self.counters["connects"] > 1:
            log.info("fleet store reachable again %s", fleet.client.address)

    def _push(self) -> None:
        assert self._fleet is not None
        with self._lock:
            meta = self._mirror.meta if self._meta_unsent else None
            if self._sending is None and self._outbox:
                self._sending = self._outbox.popleft()
                self._outbox_bytes -= sum(len(c) for _, _, c in self._sending)
            tx = self._sending
            if tx is not None:  # recorded before sending: a reply lost on the way is fine
                for carrier, cell, chunk in tx:
                    self._own.setdefault((carrier, cell), Counter())[_digest(chunk)] += 1
        if meta is not None:
            self._fleet.set_meta(meta)
            with self._lock:
                self._meta_unsent = False
        if tx is None:
            return
        for carrier, cell, chunk in tx:
            self._fleet.append(carrier, cell, chunk)
        self._fleet.commit()
        with self._lock:
            self._sending = None
            self.counters["pushed_chunks"] += len(tx)
            self._wake.notify_all()

    def _pull(self) -> None:
        assert self._fleet is not None
        fleet = self._fleet
        for key in fleet.cells():
            start = self._cursor.get(key, 0)
            foreign = []
            while True:
                page = fleet.chunks(*key, start, PAGE, skip_large=True)
                own = self._own.get(key)
                for raw in page:
                    if raw is None:  # one chunk beyond fleet_max_reply: never fetched
                        self.counters["refused_chunks"] += 1
                        continue
                    d = _digest(raw) if own else b""
                    if own and own[d] > 0:
                        own[d] -= 1
                        if own[d] == 0:
                            del own[d]
                    elif _unpacks_within(raw, self.cfg.fleet_max_reply):
                        foreign.append(raw)
                    else:
                        self.counters["refused_chunks"] += 1
                start += len(page)
                if len(page) < PAGE:
                    break
            self._cursor[key] = start
            if foreign:
                with self._lock:
                    self._mirror.add(key, foreign)
                    self._news = True
                    self.counters["pulled_chunks"] += len(foreign)
        with self._lock:
            self.counters["pulls"] += 1
            self._next_pull = self.clock() + self.cfg.fleet_refresh
            # the back-off starts again after a whole round, not after a connect: a
            # server that answers the first request and fails the next is not dialled
            # at the initial rate for ever
            self._failures = 0

    def _failed(self, e: ContextDBError) -> None:
        self._close_fleet()
        with self._lock:
            self._failures += 1
            self.counters["errors"] += 1
            self.last_error = str(e)
            delay = min(self.cfg.fleet_retry_max, RETRY_INITIAL * 2 ** min(self._failures - 1, 30))
            self._retry_at = self.clock() + delay * random.uniform(0.5, 1.0)
            self.state = "down"
            self._wake.notify_all()
        if self.counters["errors"] in (1, 10, 100) or self.counters["errors"] % 1000 == 0:
            log.warning("fleet store unreachable (errors: %d): %s", self.counters["errors"], e)

    def _close_fleet(self) -> None:
        fleet, self._fleet = self._fleet, None
        if fleet is not None:
            try:
                fleet.close()
            except OSError:
                pass


def open_store(
    path: str,
    fleet_url: str = "",
    line: str = "default",
    readonly: bool = False,
    live: ContextDBConfig | None = None,
    limits: ContextDBConfig | None = None,
):
    """The fleet store when a URL is given, else the embedded file. ``live``: the
    configuration of a running gateway or node, which gets a :class:`BackgroundStore`
    (its timeouts and limits from that configuration); tools get :class:`RedisStore`,
    with ``limits``' ``fleet_timeout`` and ``fleet_max_reply`` (the defaults without)."""
    if fleet_url and live is not None:
        return BackgroundStore(fleet_url, line, live, readonly=readonly)
    if fleet_url:
        return RedisStore.configured(fleet_url, line, limits or ContextDBConfig())
    from contextdb.store import SqliteStore

    return SqliteStore(path, readonly=readonly)
