"""The fleet store against a real Redis server started for the test."""

import contextlib
import shutil
import socket
import subprocess
import time

import pytest

from contextdb import fleet as fleet_module
from contextdb.config import ContextDBConfig
from contextdb.db import ContextDB
from contextdb.errors import ContextDBError
from contextdb.fleet import BackgroundStore, RedisStore, open_store, parse_url
from contextdb.resp import Client, RespError

from .helpers import T0, series


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_redis(tmp_path, *extra: str, port: int | None = None):
    """A redis-server on a loopback port (a free one by default), data in tmp_path;
    stopped in any case."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    port = port or _free_port()
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    args += ["--save", "", "--appendonly", "no", *extra]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def redis_url(tmp_path):
    with running_redis(tmp_path) as port:
        yield f"redis://127.0.0.1:{port}/0"


def test_parse_url():
    assert parse_url("redis://10.0.0.1:7000/3") == ("10.0.0.1", 7000, 3, None, None)
    assert parse_url("redis://host") == ("host", 6379, 0, None, None)
    assert parse_url("redis://:p%40ss@h:1") == ("h", 1, 0, None, "p@ss")
    assert parse_url("redis://gw:pw@h:1/2") == ("h", 1, 2, "gw", "pw")
    for bad in ("http://x:1", "redis://:1", "redis://h:x", "redis://h:1/db"):
        with pytest.raises(ContextDBError, match="fleet URL"):
            parse_url(bad)
    with pytest.raises(ContextDBError) as err:
        parse_url("http://user:secret@h:1")
    assert "secret" not in str(err.value)


def test_password_protected_server(tmp_path):
    with running_redis(tmp_path, "--requirepass", "s3cret") as port:
        with pytest.raises(ContextDBError, match="NOAUTH|Authentication required"):
            ContextDB(RedisStore(f"redis://127.0.0.1:{port}"))
        with pytest.raises(
            ContextDBError, match="WRONGPASS|invalid password|invalid username-password"
        ):
            RedisStore(f"redis://:wrong@127.0.0.1:{port}")
        db = ContextDB(RedisStore(f"redis://:s3cret@127.0.0.1:{port}/1"))
        db.ingest(series([-80.0] * 20))
        assert db.predict("A", "c1", [-80.0] * 5) is not None
        db.store.close()


def test_client_commands_and_errors(redis_url):
    c = Client("127.0.0.1", int(redis_url.split(":")[2].split("/")[0]))
    assert c.run(lambda r: r.ping()) is True
    assert c.run(lambda r: r.rpush("l", b"\x00\xff", "b")) == 2
    assert c.run(lambda r: r.lrange("l", 0, -1)) == [b"\x00\xff", b"b"]
    assert c.transaction([lambda p: p.incr("n"), lambda p: p.incr("n")]) == [1, 2]
    with pytest.raises(RespError, match="WRONGTYPE|wrong kind"):
        c.run(lambda r: r.incr("l"))
    assert c.run(lambda r: r.ping()) is True  # still in step after an error
    c.close()


def test_a_page_larger_than_the_reply_limit_is_fetched_in_halves(redis_url):
    """``fleet_max_reply`` bounds one reply, so a page of many chunks that together
    exceed it is fetched in smaller pages; a single chunk beyond it is refused."""
    store = RedisStore(redis_url, "L1", max_reply=1 << 16)
    chunks = [bytes([i]) * 5000 for i in range(40)]  # 200 KB in all, 5 KB each
    for c in chunks:
        store.append("A", "c1", c)
    store.append("A", "c1", b"x" * (100 << 10))  # one chunk beyond the limit
    store.append("A", "c1", b"last")
    store.commit()
    assert store.chunks("A", "c1", 0, 40) == chunks
    assert store.chunks("A", "c1", 3, 50, skip_large=True) == [*chunks[3:], None, b"last"]
    with pytest.raises(ContextDBError, match="larger than 65536 bytes"):
        store.chunks("A", "c1")
    assert store.chunk_count("A", "c1") == 42  # the connection was dialled again
    store.close()


SMALL_K = ContextDBConfig(k=8)


def test_gateways_on_a_line_share_what_they_learn(redis_url):
    # K below the ~30 windows of each drive, so a query at -100 dBm sees only those
    a = ContextDB(RedisStore(redis_url, line="L1"), SMALL_K)
    b = ContextDB(RedisStore(redis_url, line="L1"), SMALL_K)
    other = ContextDB(RedisStore(redis_url, line="L2"), SMALL_K)
    a.ingest(series([-80.0] * 40, [30e6] * 40, carrier="X"))
    assert other.predict("X", "c1", [-80.0] * 5) is None  # another line
    # queries read memory only: b learns of a's cell at its next refresh
    assert b.predict("X", "c1", [-80.0] * 5) is None
    assert b.refresh() == 1
    p = b.predict("X", "c1", [-80.0] * 5)
    assert p is not None and p.throughput_mean == pytest.approx(30e6)
    # a gateway opened later loads everything at once
    c = ContextDB(RedisStore(redis_url, line="L1"), SMALL_K)
    assert c.predict("X", "c1", [-80.0] * 5) == p
    # b learns more; a picks up only the new chunk on refresh
    b.ingest(series([-100.0] * 40, [2e6] * 40, carrier="X", t0=T0 + 5000))
    assert a.refresh() == 1
    assert a.predict("X", "c1", [-100.0] * 5).throughput_mean == pytest.approx(2e6)
    assert a.stats() == b.stats()
    with pytest.raises(ContextDBError, match="other parameters"):
        ContextDB(RedisStore(redis_url, line="L1"), ContextDBConfig(lookahead_s=3))
    for db in (a, b, c, other):
        db.store.close()


def test_open_store_reports_an_unreachable_server():
    port = _free_port()
    with pytest.raises(ContextDBError, match="cannot connect"):
        open_store("", f"redis://127.0.0.1:{port}")


def test_cli_imports_into_and_queries_the_fleet(redis_url, tmp_path, capsys):
    import json

    from middlebox.cli import main

    from .test_traces import row, write

    csv = write(tmp_path, [row(s, dl=str(20000)) for s in range(40)], name="drive.csv")
    fleet = ["--fleet", redis_url, "--line", "north"]
    assert main(["contextdb", "import", *fleet, str(csv)]) == 0
    capsys.readouterr()
    argv = [
        "contextdb",
        "query",
        *fleet,
        "--carrier",
        "B",
        "--cell",
        "12",
        "--rsrp=-99,-99,-99,-99,-99",
    ]
    assert main([*argv, "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["throughput_mean"] == pytest.approx(20e6)
    assert main(["contextdb", "stats", "--fleet", redis_url, "--line", "south"]) == 0
    assert "empty database" in capsys.readouterr().out


def test_sync_pushes_own_history_and_pulls_the_others(redis_url, tmp_path):
    from contextdb.store import SqliteStore
    from contextdb.sync import sync

    a = ContextDB(SqliteStore(tmp_path / "a.sqlite"), origin="train-a")
    b = ContextDB(SqliteStore(tmp_path / "b.sqlite"), origin="train-b")
    a.ingest(series([-80.0] * 40, [30e6] * 40, carrier="X"))
    fleet = RedisStore(redis_url, line="L1")
    r = sync(a.store, fleet, "train-a")
    assert (r.pushed, r.pulled) == (1, 0)
    r = sync(b.store, fleet, "train-b")
    assert (r.pushed, r.pulled) == (0, 1)
    b.refresh()
    assert b.predict("X", "c1", [-80.0] * 5).throughput_mean == pytest.approx(30e6)
    # b's own measurements go up, and only those; a pulls them, not its own back
    b.ingest(series([-100.0] * 40, [2e6] * 40, carrier="X", t0=T0 + 5000))
    r = sync(b.store, fleet, "train-b")
    assert (r.pushed, r.pulled) == (1, 0)
    r = sync(a.store, fleet, "train-a")
    assert (r.pushed, r.pulled) == (0, 1)
    assert fleet.chunk_count("X", "c1") == 2
    # nothing new: nothing moves
    for db, name in ((a, "train-a"), (b, "train-b")):
        r = sync(db.store, fleet, name)
        assert (r.pushed, r.pulled) == (0, 0)
    a.refresh()
    assert a.stats() == b.stats()
    for db in (a, b):
        db.store.close()
    fleet.close()


def test_sync_cli_and_unreachable_fleet(redis_url, tmp_path, capsys):
    from middlebox.cli import main

    from .test_traces import row, write

    csv = write(tmp_path, [row(s) for s in range(40)], name="drive.csv")
    db = str(tmp_path / "local.sqlite")
    assert main(["contextdb", "import", "--db", db, "--origin", "gw1", str(csv)]) == 0
    argv = ["contextdb", "sync", "--db", db, "--line", "L9", "--origin", "gw1"]
    assert main([*argv, "--fleet", redis_url]) == 0
    assert "pushed 1 chunk(s), pulled 0" in capsys.readouterr().out
    dead = f"redis://127.0.0.1:{_free_port()}"
    assert main([*argv, "--fleet", dead]) == 2
    err = capsys.readouterr().err
    assert "cannot connect" in err and "Traceback" not in err
    assert main(["contextdb", "sync", "--db", db]) == 2
    assert "no fleet store" in capsys.readouterr().err


# -- the background store of a running gateway or node -------------------------------------

LIVE = ContextDBConfig(k=8, fleet_timeout=1.0, fleet_retry_max=1.0, fleet_refresh=1.0)


def _wait(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_background_stores_share_a_line(redis_url):
    a = ContextDB(open_store("", redis_url, "L1", live=LIVE), LIVE, origin="a")
    b = ContextDB(open_store("", redis_url, "L1", live=LIVE), LIVE, origin="b")
    assert isinstance(a.store, BackgroundStore)
    a.ingest(series([-80.0] * 40, [30e6] * 40, carrier="X"))
    assert a.predict("X", "c1", [-80.0] * 5) is not None  # at once, from memory
    _wait(lambda: b.store.status()["pulled_chunks"] == 1)
    assert b.store.take_news() and b.refresh() == 1
    p = b.predict("X", "c1", [-80.0] * 5)
    assert p is not None and p.throughput_mean == pytest.approx(30e6)
    assert not b.store.take_news()
    # a does not pull its own chunk back (it would count twice)
    _wait(lambda: a.store.status()["pulls"] >= 3)
    assert a.store.status()["pulled_chunks"] == 0 and a.stats() == b.stats()
    # a gateway opened later loads everything at start, as a RedisStore does
    c = ContextDB(open_store("", redis_url, "L1", live=LIVE), LIVE)
    assert c.predict("X", "c1", [-80.0] * 5) == p
    st = a.store.status()
    assert (st["state"], st["pushed_chunks"], st["errors"]) == ("up", 1, 0)
    for db in (a, b, c):
        db.store.close()
    other = open_store("", redis_url, "L1", live=LIVE)
    with pytest.raises(ContextDBError, match="other parameters"):
        ContextDB(other, ContextDBConfig(lookahead_s=3))
    other.close()


def test_background_store_starts_without_its_server_and_catches_up(tmp_path, monkeypatch):
    """A gateway that boots in a tunnel: it learns into memory, and what it learnt reaches
    the server once the server is there, and again after the server restarts."""
    monkeypatch.setattr(fleet_module, "RETRY_INITIAL", 0.1)
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    db = ContextDB(open_store("", url, "L1", live=LIVE), LIVE, origin="a")
    assert db.store.status()["state"] == "down"
    db.ingest(series([-80.0] * 40, [30e6] * 40, carrier="X"))
    with running_redis(tmp_path, port=port):
        _wait(lambda: db.store.status()["pushed_chunks"] == 1)
        check = RedisStore(url, "L1")
        assert check.chunk_count("X", "c1") == 1 and check.get_meta() is not None
        check.close()
    # the server is gone again: the next commit waits in the queue
    db.ingest(series([-100.0] * 40, [2e6] * 40, carrier="X", t0=T0 + 5000))
    _wait(lambda: db.store.status()["state"] == "down")
    with running_redis(tmp_path, port=port):  # no persistence: an empty server
        _wait(lambda: db.store.status()["pushed_chunks"] == 2)
        st = db.store.status()
        assert st["connects"] >= 2 and st["errors"] >= 2 and st["queued_chunks"] == 0
        check = RedisStore(url, "L1")
        assert check.chunk_count("X", "c1") == 1
        check.close()
        db.store.close()


def test_the_cli_bounds_its_fleet_store_by_the_configured_limits(redis_url, tmp_path, monkeypatch):
    """``--config``'s ``fleet_timeout`` and ``fleet_max_reply`` reach the tools' store
    (they opened it with the defaults, 5 s and 16 MiB, whatever the file said)."""
    from contextdb import fleet
    from middlebox.cli import main

    seen = []
    real = fleet.RedisStore.__init__

    def spy(self, url, line="default", timeout=5.0, max_reply=fleet.DEFAULT_MAX_REPLY):
        seen.append((timeout, max_reply))
        real(self, url, line, timeout, max_reply)

    monkeypatch.setattr(fleet.RedisStore, "__init__", spy)
    conf = tmp_path / "gw.toml"
    conf.write_text(
        f'[contextdb]\nfleet_url = "{redis_url}"\nfleet_timeout = 7.5\nfleet_max_reply = 65536\n'
    )
    assert main(["contextdb", "stats", "--config", str(conf)]) == 0
    db = str(tmp_path / "local.db")
    assert main(["contextdb", "sync", "--config", str(conf), "--db", db, "--origin", "g"]) == 0
    assert seen == [(7.5, 65536), (7.5, 65536)]
