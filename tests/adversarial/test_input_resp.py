"""A hostile or broken Redis server: one clear error, bounded memory and time, and a
gateway whose data path never waits for it.

Before (the hand-written client): a malformed integer ended in a ValueError traceback,
``$N`` let a reply announce 512 MiB, nesting was unbounded, and the fleet store's
blocking I/O ran inside the gateway's loop (a server that stopped answering held it for
the socket timeout, every flush) and never reconnected after a timeout. The client is
now redis-py, which keeps whatever a reply sends: its bound is the socket's
(``contextdb.resp``), tested here against a fake server on loopback.
"""

from __future__ import annotations

import io
import socket
import threading
import time
import tracemalloc
import zipfile
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contextdb import fleet
from contextdb.config import ContextDBConfig
from contextdb.db import ContextDB
from contextdb.errors import ContextDBError
from contextdb.fleet import BackgroundStore, RedisStore
from contextdb.records import Sample
from contextdb.resp import ReplyTooLarge, RespError
from contextdb.store import MemoryStore

MIB = 1 << 20


class Server:
    """A loopback TCP server that answers every request of every connection with
    ``reply(data)``: bytes, or an iterable of pieces sent one after the other (a stream;
    a number in it is a pause in seconds). With ``handshake``, redis-py's CLIENT SETINFO
    at connect gets +OK, so the reply under test answers the first real command; with
    ``close``, the connection is closed after each reply."""

    def __init__(self, reply, handshake=False, close=False):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}"
        self.reply = reply
        self.handshake = handshake
        self.close_after = close
        self.accepted = 0
        self.conns = []
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(c)
            threading.Thread(target=self._talk, args=(c,), daemon=True).start()

    def _talk(self, c):
        try:
            while data := c.recv(65536):
                if self.handshake and b"SETINFO" in data:
                    c.sendall(b"+OK\r\n" * data.count(b"SETINFO"))
                    continue
                out = self.reply(data)
                for piece in [out] if isinstance(out, bytes) else out:
                    if self.stop.is_set():
                        return
                    if isinstance(piece, bytes):
                        c.sendall(piece)
                    else:
                        time.sleep(piece)
                if self.close_after:
                    c.close()
                    return
        except OSError:
            pass

    def close(self):
        self.stop.set()
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def server():
    made = []

    def make(reply, **kw):
        s = Server(reply, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _stream(head: bytes, piece: bytes, total: int):
    """``head``, then ``piece`` repeated up to ``total`` bytes (a bounded loop)."""
    yield head
    for _ in range(total // len(piece)):
        yield piece


@pytest.mark.parametrize(
    "data, why",
    [
        (b":abc\r\n", "malformed"),
        (b":1.5\r\n", "malformed"),
        (b":" + b"9" * 5000 + b"\r\n", "malformed"),  # int() refuses it with a ValueError
        (b":\xd9\xa3\r\n", "malformed"),  # an Arabic-Indic digit
        (b":" + b"9" * 30 + b"\r\n", "unexpected reply int"),  # parsed; not what GET answers
        (b": 1\r\n", "unexpected reply int"),
        (b"$x\r\n", "malformed"),
        (b"$\r\n", "malformed"),
        (b"*--1\r\n", "malformed"),
        (b"*1\r\n" * 10000 + b":1\r\n", "malformed"),  # nested: a RecursionError inside
        (b"?what\r\n", "malformed"),
        (b"$5\r\nab", "closed"),  # truncated, then the server hangs up
        (b"", "closed"),
        (b"-ERR no\r\n", "ResponseError: no"),
    ],
)
def test_malformed_replies_are_one_error(server, data, why):
    s = server(lambda d: data, handshake=True, close=True)
    store = RedisStore(s.url, "L1", timeout=2.0)
    with pytest.raises(ContextDBError, match=why) as err:
        store.get_meta()
    if "unexpected" not in why:  # what redis-py raised names the server
        assert "127.0.0.1" in str(err.value)
    store.close()


@pytest.mark.parametrize(
    "head, piece",
    [
        (b"$1099511627776\r\n", b"x" * 65536),  # announces 1 TiB, sends 64 MiB
        (b"$536870912\r\n", b"x" * 65536),  # Redis' own maximum
        (b"+", b"x" * 65536),  # a status line that never ends
        (b"*2000000000\r\n", b":1\r\n" * 16384),  # two billion elements, as many as sent
    ],
)
def test_a_reply_is_bounded_by_what_it_may_hold_not_what_it_sends(server, head, piece):
    """redis-py keeps what a reply sends (measured: 256 MiB sent, 258 MiB held); the
    socket stops it at ``fleet_max_reply``: bounded memory, bounded time."""
    s = server(lambda d: _stream(head, piece, 64 * MIB), handshake=True)
    store = RedisStore(s.url, "L1", timeout=20.0, max_reply=256 << 10)
    tracemalloc.start()
    try:
        t = time.monotonic()
        with pytest.raises(ReplyTooLarge, match="larger than 262144 bytes"):
            store.get_meta()
        took = time.monotonic() - t
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert took < 5.0, took  # the array: redis-py parses some 10^5 elements a second
    assert peak < 8 * MIB, peak
    store.close()


def _trickle():
    yield b"$200\r\n"
    for _ in range(200):  # 20 s in all, if nothing stopped it
        yield 0.1
        yield b"x"


@pytest.mark.parametrize("kind", ["announced, never sent", "trickled"])
def test_a_reply_that_does_not_come_whole_in_time_is_a_timeout(server, kind):
    """Before, the timeout bounded each read: a byte every 0.1 s held the thread for
    as long as the server liked. Now it bounds the whole reply."""
    replies = {
        "announced, never sent": lambda d: b"$536870912\r\n",
        "trickled": lambda d: _trickle(),
    }
    s = server(replies[kind], handshake=True)
    store = RedisStore(s.url, "L1", timeout=0.5)
    t = time.monotonic()
    with pytest.raises(ContextDBError, match="(?i)timeout|no complete reply"):
        store.get_meta()
    assert time.monotonic() - t < 1.5
    store.close()


def test_a_refusing_server_is_an_error_reply_not_a_crash(server):
    s = server(lambda d: b"-NOPERM this user has no permissions\r\n", handshake=True)
    store = RedisStore(s.url, "L1", timeout=1.0)
    with pytest.raises(RespError, match="no permissions"):
        store.get_meta()
    store.close()


_REPLY_BYTES = st.lists(
    st.sampled_from([b"+", b"-", b":", b"$", b"*", b"?", b"\r\n", b"-1", b"0", b"3", b"x"])
    | st.binary(max_size=8),
    max_size=12,
).map(b"".join)


@settings(max_examples=150, deadline=None)
@given(data=_REPLY_BYTES)
def test_any_reply_is_a_value_or_one_error(data):
    """Random and mutated replies to every request of the fleet store: a result or one
    ContextDBError, never another exception."""
    s = Server(lambda d: data, handshake=True, close=True)
    try:
        store = RedisStore(s.url, "L1", timeout=0.5)
        for call in (store.get_meta, store.cells, lambda: store.chunks("A", "c1", 0, 4)):
            try:
                call()
            except ContextDBError:
                pass
        store.close()
    except ContextDBError:
        pass
    finally:
        s.close()


# -- the gateway's fleet store --------------------------------------------------------------

CFG = ContextDBConfig(fleet_timeout=0.3, fleet_retry_max=1.0, fleet_refresh=1.0)


def samples(n=40, t0=1_600_000_000.0):
    return [Sample("A", t0 + i, "c1", -80.0, 52.0, -8.0, 30e6, 0.05, 0.0) for i in range(n)]


@pytest.mark.parametrize("kind", ["silent", "garbage", "refused"])
def test_the_data_path_never_waits_for_a_broken_fleet_store(server, monkeypatch, kind):
    monkeypatch.setattr(fleet, "RETRY_INITIAL", 0.05)
    if kind == "refused":
        probe = socket.create_server(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
    else:
        port = server({"silent": lambda d: b"", "garbage": lambda d: b":x\r\n"}[kind]).port
    t0 = time.monotonic()
    store = BackgroundStore(f"redis://127.0.0.1:{port}", "L1", CFG)
    assert time.monotonic() - t0 < 1.5  # one attempt at start, within fleet_timeout
    db = ContextDB(store, CFG, origin="gw")
    try:
        worst = 0.0
        for k in range(5):
            t = time.perf_counter()
            db.ingest(samples(t0=1_600_000_000.0 + 1000 * k))
            db.predict("A", "c1", [-80.0] * 5)
            worst = max(worst, time.perf_counter() - t)
        assert worst < 0.25, worst  # memory only: no round trip, no timeout
        assert db.predict("A", "c1", [-80.0] * 5) is not None  # its own history counts
        end = time.monotonic() + 5
        while store.status()["errors"] < 3 and time.monotonic() < end:
            time.sleep(0.05)
        st = store.status()
        assert st["state"] in ("down", "connecting") and st["errors"] >= 3, st
        assert st["queued_chunks"] == 5 and st["pushed_chunks"] == 0
        assert st["last_error"]
    finally:
        t = time.monotonic()
        store.close(drain=0.2)
        assert time.monotonic() - t < 3.0


def test_back_off_grows_to_its_maximum(monkeypatch):
    monkeypatch.setattr(fleet, "RETRY_INITIAL", 0.05)
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    attempts = []

    def connect():
        attempts.append(time.monotonic())
        raise ContextDBError("redis: cannot connect")

    store = BackgroundStore(f"redis://127.0.0.1:{port}", "L1", CFG, connect=connect)
    time.sleep(2.5)
    store.close(drain=0)
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert 4 <= len(attempts) <= 12, gaps  # not a busy loop
    assert max(gaps) <= CFG.fleet_retry_max + 0.2
    assert gaps[-1] > gaps[0]


def test_a_server_failing_after_the_first_answer_is_backed_off_too(server, monkeypatch):
    """Before, the back-off started again at every connect: a server that answered the
    first request (GET meta) and sent garbage to the next was dialled every 0.5-1 s for
    ever, each attempt costing a reply's worth of parsing."""
    monkeypatch.setattr(fleet, "RETRY_INITIAL", 0.05)
    s = server(lambda d: b"$-1\r\n" if b"GET" in d else b"*x\r\n", handshake=True)
    store = BackgroundStore(s.url, "L1", CFG)
    time.sleep(2.5)
    store.close(drain=0)
    st = store.status()
    assert 4 <= s.accepted <= 12 and st["connects"] == s.accepted, (s.accepted, st)
    assert "malformed" in st["last_error"]


def test_the_queue_for_an_unreachable_store_is_bounded(monkeypatch):
    cfg = ContextDBConfig(fleet_timeout=0.3, fleet_max_queued=1 << 20)

    def connect():
        raise ContextDBError("redis: cannot connect")

    store = BackgroundStore("redis://127.0.0.1:1", "L1", cfg, connect=connect)
    chunk = b"x" * (300 << 10)
    for k in range(10):
        store.append("A", f"c{k}", chunk)
        store.commit()
    st = store.status()
    assert st["queued_bytes"] <= 1 << 20 and st["dropped_chunks"] == 7, st
    assert store.chunks("A", "c9") == [chunk]  # memory still has it
    store.close(drain=0)


class FakeFleet:
    """A fleet store in memory, as the background store's thread sees a RedisStore."""

    def __init__(self, lists):
        self.lists = lists
        self.client = SimpleNamespace(address="fake")

    def get_meta(self):
        return None

    def set_meta(self, meta):
        pass

    def cells(self):
        return sorted(self.lists)

    def chunks(self, carrier, cell, start=0, count=None, skip_large=False):
        items = self.lists[(carrier, cell)][start:]
        return items if count is None else items[:count]

    def close(self):
        pass


def test_a_chunk_that_would_unpack_to_gigabytes_is_refused():
    cfg = ContextDBConfig(fleet_max_reply=1 << 20)
    good_db = ContextDB(MemoryStore(), cfg)
    good_db.ingest(samples())
    good = good_db.store.chunks("A", "c1")[0]
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("t.npy", b"\0" * (64 << 20))  # 64 MiB in about 64 KiB
    assert len(bomb.getvalue()) < 1 << 17
    lists = {("A", "c1"): [good, bomb.getvalue(), b"not a zip"]}
    store = BackgroundStore("redis://fake:1", "L1", cfg, connect=lambda: FakeFleet(lists))
    try:
        st = store.status()
        assert (st["pulled_chunks"], st["refused_chunks"]) == (1, 2), st
        db = ContextDB(store, cfg)
        assert db.predict("A", "c1", [-80.0] * 5) is not None
    finally:
        store.close(drain=0)
