"""The node loads what other gateways added to the fleet store, on its loop, every
``contextdb.fleet_refresh`` seconds (issue 13: it never called ``refresh``), without
waiting for the store: the store's thread fetches, the loop reads memory."""

import dataclasses
import time
from types import SimpleNamespace

from contextdb.config import ContextDBConfig
from contextdb.db import ContextDB
from contextdb.fleet import BackgroundStore
from contextdb.records import Sample
from contextdb.store import MemoryStore, SqliteStore
from middlebox.config import ContextConfig
from middlebox.node.process import Node

CFG = ContextDBConfig(fleet_timeout=0.3, fleet_refresh=0.2)


def fake_fleet(lists: dict) -> SimpleNamespace:
    """The fleet store as the background store's thread sees a RedisStore; ``lists``
    may grow while it runs (other gateways appending)."""
    return SimpleNamespace(
        client=SimpleNamespace(address="fake"),
        get_meta=lambda: None,
        set_meta=lambda meta: None,
        cells=lambda: sorted(lists),
        chunks=lambda carrier, cell, start=0, count=None, skip_large=False: lists[(carrier, cell)][
            start:
        ][:count],
        close=lambda: None,
    )


def _chunk() -> bytes:
    db = ContextDB(MemoryStore(), CFG)
    t0 = 1_600_000_000.0
    db.ingest([Sample("A", t0 + i, "c1", -80.0, 52.0, -8.0, 30e6, 0.05, 0.0) for i in range(40)])
    return db.store.chunks("A", "c1")[0]


def _node_cfg(loopback, certs, tmp_path):
    node_cfg, _ = loopback.configs(certs, tmp_path)
    path = tmp_path / "node.sqlite"
    store = SqliteStore(path)  # the node opens its database read-only: it must exist
    ContextDB(store, CFG)
    store.close()
    return dataclasses.replace(
        node_cfg,
        context=ContextConfig(use_contextdb=True),
        contextdb=dataclasses.replace(CFG, path=str(path)),
    )


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_the_node_loads_what_the_fleet_store_fetched_on_its_interval(certs, tmp_path, loopback):
    node_cfg = _node_cfg(loopback, certs, tmp_path)
    clock = Clock()
    node = Node(node_cfg, clock=clock, control=False)
    lists: dict = {}
    store = BackgroundStore(
        "redis://fake:1", "L1", CFG, readonly=True, connect=lambda: fake_fleet(lists)
    )
    try:
        node.context_db.store.close()
        node.context_db = db = ContextDB(store, CFG, origin="node")
        assert db.predict("A", "c1", [-80.0] * 5) is None
        lists[("A", "c1")] = [_chunk()]  # another gateway learnt something
        end = time.monotonic() + 5
        while store.status()["pulled_chunks"] < 1 and time.monotonic() < end:
            time.sleep(0.02)
        assert store.status()["pulled_chunks"] == 1
        node.step(0)  # before the interval: not loaded
        assert node.context_counters["refreshes"] == 0
        assert db.predict("A", "c1", [-80.0] * 5) is None
        clock.t += CFG.fleet_refresh
        assert min(node._timers()) <= clock.t  # the loop wakes for it
        node.step(0)
        st = node.status()["context"]
        assert (st["refresh_checks"], st["refreshes"], st["refresh_errors"]) == (1, 1, 0), st
        assert st["fleet"]["state"] == "up" and st["fleet"]["pulled_chunks"] == 1, st
        assert db.predict("A", "c1", [-80.0] * 5) is not None
        clock.t += CFG.fleet_refresh
        node.step(0)  # nothing new: checked, nothing loaded
        assert (node.context_counters["refresh_checks"], node.context_counters["refreshes"]) == (
            2,
            1,
        )
    finally:
        node.shutdown()
        store.close(drain=0)


def test_a_failing_refresh_is_counted_and_the_node_goes_on(certs, tmp_path, loopback):
    node_cfg = _node_cfg(loopback, certs, tmp_path)
    clock = Clock()
    node = Node(node_cfg, clock=clock, control=False)
    real = node.context_db

    def broken():
        raise ValueError("a corrupt chunk")

    node.context_db = SimpleNamespace(
        store=SimpleNamespace(take_news=lambda: True, close=real.store.close), refresh=broken
    )
    try:
        clock.t += CFG.fleet_refresh
        node.step(0)
        st = node.status()["context"]
        assert (st["refreshes"], st["refresh_errors"]) == (0, 1), st
    finally:
        node.shutdown()


def test_without_a_context_database_nothing_is_checked(certs, tmp_path, loopback):
    node_cfg, _ = loopback.configs(certs, tmp_path)
    clock = Clock()
    node = Node(node_cfg, clock=clock, control=False)
    try:
        clock.t += 3600
        node.step(0)
        assert node.status()["context"] == {"use_contextdb": False}
    finally:
        node.shutdown()
