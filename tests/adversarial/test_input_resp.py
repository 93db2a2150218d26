"""A hostile or broken Redis server: one clear error, bounded memory, and a gateway whose
data path never waits for it.

Before: a malformed integer ended in a ValueError traceback, ``$N`` let a reply announce
512 MiB, nesting was unbounded, and the fleet store's blocking I/O ran inside the
gateway's loop (a server that stopped answering held it for the socket timeout, every
flush) and never reconnected after a timeout.
"""

from __future__ import annotations

import io
import socket
import threading
import time
import zipfile
from types import SimpleNamespace

import pytest

from contextdb import fleet
from contextdb.config import ContextDBConfig
from contextdb.db import ContextDB
from contextdb.errors import ContextDBError
from contextdb.fleet import BackgroundStore
from contextdb.records import Sample
from contextdb.resp import DEFAULT_LIMITS, Limits, RespClient, read_reply
from contextdb.store import MemoryStore


def parse(data: bytes, limits: Limits = DEFAULT_LIMITS):
    return read_reply(io.BytesIO(data), limits)


@pytest.mark.parametrize(
    "data, why",
    [
        (b":abc\r\n", "malformed"),
        (b":1.5\r\n", "malformed"),
        (b": 1\r\n", "malformed"),
        (b":" + b"9" * 30 + b"\r\n", "malformed"),  # beyond 64 bits
        (b":" + b"9" * 5000 + b"\r\n", "malformed"),  # int() would refuse it with a ValueError
        (b":\xd9\xa3\r\n", "malformed"),  # an Arabic-Indic digit
        (b"$x\r\n", "malformed"),
        (b"$\r\n", "malformed"),
        (b"*--1\r\n", "malformed"),
        (b"$17000000\r\n", "larger than the limit"),
        (b"$536870912\r\n", "larger than the limit"),  # Redis' own maximum
        (b"*2000000\r\n", "elements"),
        (b"*1\r\n" * 10 + b":1\r\n", "nested deeper"),
        (b"+" + b"x" * (70 << 10) + b"\r\n", "longer than"),
        (b"?what\r\n", "unexpected reply type"),
        (b"", "connection closed"),
        (b"$5\r\nab", "closed inside a bulk"),
    ],
)
def test_malformed_and_oversized_replies_are_one_error(data, why):
    with pytest.raises(ContextDBError, match=why):
        parse(data)


def test_an_oversized_bulk_is_refused_before_reading_it():
    class Stream(io.BytesIO):
        def read(self, n=-1):
            assert n < 1 << 20, "read the announced length"
            return super().read(n)

    with pytest.raises(ContextDBError, match="larger than the limit"):
        read_reply(Stream(b"$99999999\r\n" + b"x" * 100), Limits(max_bulk=1 << 20))
    assert parse(b"$3\r\nabc\r\n", Limits(max_bulk=3)) == b"abc"


def test_valid_edges_still_parse():
    assert parse(b":-9223372036854775808\r\n") == -(1 << 63)
    assert parse(b"+\xff\xfeok\r\n") == "\ufffd\ufffdok"  # not UTF-8: replaced, not raised
    assert parse(b"*1\r\n" * 3 + b":1\r\n") == [[[1]]]


class Server:
    """A loopback TCP server that answers every connection with ``reply(data)``."""

    def __init__(self, reply):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.accepted = 0
        self.conns = []
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
                out = self.reply(data)
                if out:
                    c.sendall(out)
        except OSError:
            pass

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def server():
    made = []

    def make(reply):
        s = Server(reply)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def test_client_against_a_garbage_server_is_one_error(server):
    s = server(lambda data: b"$-7x\r\n")
    c = RespClient("127.0.0.1", s.port, timeout=2.0)
    with pytest.raises(ContextDBError, match=r"malformed.*from 127.0.0.1"):
        c.execute("PING")
    c.close()


def test_client_against_a_silent_server_times_out(server):
    s = server(lambda data: b"")
    c = RespClient("127.0.0.1", s.port, timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(ContextDBError, match="redis 127.0.0.1"):
        c.execute("PING")
    assert time.monotonic() - t0 < 2.0
    c.close()


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

    def chunks(self, carrier, cell, start=0, count=None):
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
