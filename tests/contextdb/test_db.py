import math
import multiprocessing
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contextdb.config import ContextDBConfig
from contextdb.db import PRIOR_WEIGHT, ContextDB
from contextdb.errors import ContextDBError
from contextdb.live import LiveIngest
from contextdb.store import MemoryStore, SqliteStore

from .helpers import T0, series


def two_regimes(carrier="A", cell="c1", t0=T0, n=200):
    """Blocks of 20 seconds of strong (-80 dBm) and weak (-110) signal; five seconds after
    a strong second the carrier delivers 50 Mbit/s, after a weak one 5 Mbit/s. So a
    window entirely at -80 is always followed by 50 Mbit/s over a 5-second look-ahead."""
    rsrp = [-80.0 if (i // 20) % 2 == 0 else -110.0 for i in range(n)]
    dl = [50e6 if rsrp[max(0, i - 5)] == -80.0 else 5e6 for i in range(n)]
    return series(rsrp, dl, cells=cell, carrier=carrier, t0=t0)


def test_prediction_follows_the_matching_signal():
    db = ContextDB(MemoryStore(), ContextDBConfig(k=8))
    db.ingest(two_regimes())
    strong = db.predict("A", "c1", [-80.0] * 5)
    weak = db.predict("A", "c1", [-110.0] * 5)
    assert strong.throughput_mean == pytest.approx(50e6)
    assert weak.throughput_mean == pytest.approx(5e6)
    assert strong.confidence == 1.0 and strong.n_neighbors == 8
    assert strong.nearest_distance == 0.0
    assert strong.throughput_var > 0  # floored: never infinite certainty
    # no ping in the history: rtt unknown, weight zero
    assert strong.rtt_mean == 0.0 and strong.rtt_var == math.inf
    assert 0.0 <= strong.p_disconnect <= 1.0


def test_confidence_counts_neighbours_under_the_threshold():
    cfg = ContextDBConfig(k=10, match_threshold_db=2.0, window_s=5, overlap=0.8)
    db = ContextDB(MemoryStore(), cfg)
    db.ingest(two_regimes(n=200))
    # 1 dB off everywhere: distance sqrt(5) * 1 < threshold sqrt(5) * 2
    assert db.predict("A", "c1", [-81.0] * 5).confidence == 1.0
    # 10 dB off: every neighbour beyond the threshold
    assert db.predict("A", "c1", [-95.0] * 5).confidence == 0.0
    # a cell with fewer windows than K can only reach N/K < 1
    db.ingest(series([-70.0] * 12, cells="small", t0=T0 + 10_000))
    p = db.predict("A", "small", [-70.0] * 5)
    assert p.n_neighbors == 3 and p.confidence == pytest.approx(3 / 10)


def test_no_prediction_cases():
    db = ContextDB(MemoryStore(), ContextDBConfig(min_neighbors=5))
    db.ingest(two_regimes())
    db.ingest(series([-90.0] * 12, cells="tiny", t0=T0 + 10_000))  # 3 windows
    assert db.predict("A", "unknown-cell", [-80.0] * 5) is None
    assert db.predict("other-carrier", "c1", [-80.0] * 5) is None
    assert db.predict("A", None, [-80.0] * 5) is None
    assert db.predict("A", "tiny", [-90.0] * 5) is None  # under min_neighbors
    assert db.predict("A", "c1", [-80.0] * 4) is None  # shorter than W
    assert db.predict("A", "c1", [-80.0, math.nan, -80.0, -80.0, -80.0]) is None
    # a longer window is cut to its last W seconds
    p = db.predict("A", "c1", [-110.0] * 3 + [-80.0] * 5)
    assert p.throughput_mean == pytest.approx(50e6)


def test_carriers_are_matched_independently():
    db = ContextDB(MemoryStore(), ContextDBConfig(k=4))
    a = series([-80.0] * 30, [10e6] * 30, carrier="A")
    b = series([-80.0] * 30, [90e6] * 30, carrier="B")
    db.ingest(a + b)
    assert db.predict("A", "c1", [-80.0] * 5).throughput_mean == pytest.approx(10e6)
    assert db.predict("B", "c1", [-80.0] * 5).throughput_mean == pytest.approx(90e6)


def test_disconnection_probability_and_gap():
    cfg = ContextDBConfig(k=5, window_s=5, overlap=0.8, lookahead_s=5)
    db = ContextDB(MemoryStore(), cfg)
    # before every 3-second dropout the signal sinks to -115; otherwise it stays at -85
    rsrp, dl = [], []
    for _ in range(10):
        rsrp += [-85.0] * 20 + [-115.0] * 6 + [-85.0] * 3
        dl += [20e6] * 26 + [0.0] * 3
    rsrp += [-85.0] * 10
    dl += [20e6] * 10
    db.ingest(series(rsrp, dl))
    falling = db.predict("A", "c1", [-115.0] * 5)
    steady = db.predict("A", "c1", [-85.0] * 5)
    base = db._cells[("A", "c1")].base_rate()
    assert 0 < base < 0.5
    # every neighbour of the falling window was followed by a dropout, none of the
    # steady one's; both are shrunk towards the cell's base rate
    assert falling.p_disconnect > base > steady.p_disconnect
    assert falling.p_disconnect == pytest.approx((5 + PRIOR_WEIGHT * base) / (5 + PRIOR_WEIGHT))
    assert falling.expected_gap == pytest.approx(3.0)


def test_persistence_across_reopen(tmp_path):
    path = tmp_path / "ctx.sqlite"
    db = ContextDB(SqliteStore(path))
    db.ingest(two_regimes())
    before = db.predict("A", "c1", [-80.0] * 5)
    stats = db.stats()
    db.store.close()
    again = ContextDB(SqliteStore(path, readonly=True))
    assert again.predict("A", "c1", [-80.0] * 5) == before
    assert again.stats() == stats
    again.store.close()
    with pytest.raises(ContextDBError, match="other parameters: window_s=5"):
        ContextDB(SqliteStore(path), ContextDBConfig(window_s=6))


def test_readonly_open_of_a_missing_file_is_an_error(tmp_path):
    with pytest.raises(ContextDBError, match="no such context database"):
        SqliteStore(tmp_path / "nope.sqlite", readonly=True)


def _writer(path: str, rounds: int, started) -> None:
    db = ContextDB(SqliteStore(path))
    started.set()
    for r in range(rounds):
        db.ingest(two_regimes(t0=T0 + r * 1000, n=60))
        time.sleep(0.01)
    db.store.close()


def test_concurrent_reader_while_a_writer_ingests(tmp_path):
    path = str(tmp_path / "ctx.sqlite")
    ContextDB(SqliteStore(path)).store.close()  # create with metadata
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    rounds = 40
    proc = ctx.Process(target=_writer, args=(path, rounds, started))
    proc.start()
    try:
        assert started.wait(30)
        reader = ContextDB(SqliteStore(path, readonly=True), ContextDBConfig(k=8))
        seen = []
        deadline = time.monotonic() + 60
        while proc.is_alive() and time.monotonic() < deadline:
            reader.refresh()
            n = sum(len(e.index) for e in reader._cells.values())
            seen.append(n)
            p = reader.predict("A", "c1", [-80.0] * 5)
            if p is not None:
                assert p.throughput_mean == pytest.approx(50e6)
        proc.join(30)
        assert proc.exitcode == 0
        reader.refresh()
        final = sum(len(e.index) for e in reader._cells.values())
        one = ContextDB(MemoryStore())
        one.ingest(two_regimes(n=60))
        assert final == rounds * sum(len(e.index) for e in one._cells.values())
        assert seen == sorted(seen)  # never saw a partial or shrinking state
        assert len(set(seen)) > 1  # and did read while the writer was writing
        reader.store.close()
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)


def test_live_ingest_stores_what_a_batch_import_stores():
    cfg = ContextDBConfig()
    rsrp = list(-90.0 + 10 * np.sin(np.arange(300) / 17.0))
    dl = [0.0 if 100 <= i < 102 or 200 <= i < 208 else 1e6 + i for i in range(300)]
    cells = ["c1"] * 150 + ["c2"] * 150
    samples = series(rsrp, dl, cells)
    batch = ContextDB(MemoryStore(), cfg)
    batch.ingest(samples)
    live_db = ContextDB(MemoryStore(), cfg)
    live = LiveIngest(live_db)
    for s in samples:
        live.feed(s)
        if int(s.t) % 15 == 0:
            live.flush(s.t)
    live.flush(math.inf)
    assert live_db.stats() == batch.stats()
    assert _content(live_db) == _content(batch)


def test_live_reported_disconnections_are_classified_exactly():
    db = ContextDB(MemoryStore())
    live = LiveIngest(db)
    for s in series([-90.0] * 40):
        live.feed(s)
    ev = live.disconnection("A", T0 + 20.5, 0.04, "c1", "c2")
    assert ev.kind == "success"
    assert live.disconnection("A", T0 + 30.2, 1.3, "c2").kind == "failure"
    live.flush(math.inf)
    h = db.stats()["carriers"]["A"]
    assert h["c1"]["handovers"]["success"] == 1
    assert h["c2"]["handovers"]["failure"] == 1


def test_live_ingest_closes_a_run_after_a_long_silence():
    db = ContextDB(MemoryStore())
    live = LiveIngest(db)
    for s in series([-90.0] * 30) + series([-100.0] * 30, t0=T0 + 3600):
        live.feed(s)  # the second drive starts an hour later: the first is stored whole
    assert len(db._cells[("A", "c1")].index) == 21
    live.flush(math.inf)
    assert len(db._cells[("A", "c1")].index) == 42


def test_exactly_timed_events_replace_inferred_ones():
    from contextdb.records import HandoverEvent

    db = ContextDB(MemoryStore())
    samples = series([-90.0] * 40, [1e6] * 20 + [0.0] * 2 + [1e6] * 18)
    exact = [
        HandoverEvent("A", T0 + 20.3, "c1", "c1", 0.05, "success"),
        HandoverEvent("A", T0 + 30.0, "c1", "c1", 7.5, "outage"),
        HandoverEvent("A", T0 + 999.0, "c1", "c1", 1.0, "failure"),  # outside the run
    ]
    db.ingest(samples, exact)
    h = db.stats()["carriers"]["A"]["c1"]
    assert h["handovers"] == {"success": 1, "failure": 0, "outage": 1}
    assert h["gap_s"]["outage"]["max"] == 7.5


def test_evaluate_keeps_overlapping_runs_apart_and_scores_baselines():
    from contextdb.evaluate import evaluate

    # two simulated drives of the same carrier at the same clock times, other cells
    a = two_regimes(cell="c1")
    b = two_regimes(cell="c2")
    res = evaluate([a, b], [two_regimes(cell="c1")], ContextDBConfig(k=4))
    one = ContextDB(MemoryStore())
    assert res.train_windows == 2 * one.ingest(a).windows
    assert res.scored > 0
    # the signal determines the throughput here: matching beats both baselines, with or
    # without the recent throughput (only 5 windows of each regime change are stored)
    for name in ("contextdb", "rsrp only"):
        assert res.mae_bps[name] < res.mae_bps["cell mean"]
        assert res.mae_bps[name] < res.mae_bps["last value"]


def test_predictions_plug_into_the_schedulers_long_term_source():
    from scheduler.context import CarrierContext
    from scheduler.longterm import CarrierWindowSource, LongTermPrediction, LongTermSource

    db = ContextDB(MemoryStore(), ContextDBConfig(k=8))
    db.ingest(two_regimes())
    source = CarrierWindowSource(db.predict)
    assert isinstance(source, LongTermSource)
    assert source.predict("A", 1.0) is None  # nothing observed yet
    source.observe(CarrierContext("A", cell_id="c1", rsrp_window=(-80.0,) * 5))
    p = source.predict("A", 2.0)
    assert p.throughput_mean == pytest.approx(50e6) and p.now == 2.0
    # every attribute the scheduler reads is there, as a finite float where it must be
    for name in LongTermPrediction.__dataclass_fields__:
        value = getattr(p, name)
        assert isinstance(value, float) and not math.isnan(value), name
    # once the carrier's last-second throughput is known, it goes into the match
    source.observe_throughput("A", 5e6)
    q = source.predict("A", 3.0)
    assert q == db.predict("A", "c1", [-80.0] * 5, 3.0, recent_dl_bps=5e6)
    assert q != db.predict("A", "c1", [-80.0] * 5, 3.0)


def _second_writer(path: str, rounds: int, offset: int, started) -> None:
    db = ContextDB(SqliteStore(path), origin=f"w{offset}")
    started.set()
    for r in range(rounds):
        db.ingest(two_regimes(t0=T0 + (offset + r) * 1000, n=60))
    db.store.close()


def test_two_writers_never_overwrite_each_other(tmp_path):
    path = str(tmp_path / "ctx.sqlite")
    ContextDB(SqliteStore(path)).store.close()
    ctx = multiprocessing.get_context("spawn")
    rounds = 25
    events = [ctx.Event(), ctx.Event()]
    procs = [
        ctx.Process(target=_second_writer, args=(path, rounds, off, ev))
        for off, ev in zip((0, 1000), events, strict=True)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(5)
    store = SqliteStore(path, readonly=True)
    assert store.chunk_count("A", "c1") == 2 * rounds
    db = ContextDB(store)
    one = ContextDB(MemoryStore())
    assert len(db._cells[("A", "c1")].index) == 2 * rounds * one.ingest(two_regimes(n=60)).windows
    store.close()


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(60, 400),
    st.sampled_from([5, 15, 40]),
)
def test_live_equals_batch_on_random_drives(seed, n, flush_every):
    """Holes, stalls and cell changes anywhere; the live ingester, flushing as it goes
    and trimming its buffer, must store what a batch import stores."""
    rng = np.random.default_rng(seed)
    rsrp = list(np.round(-95 + np.cumsum(rng.normal(0, 2, n))))
    dl = [0.0 if rng.random() < 0.08 else float(rng.integers(1, 100) * 1e5) for _ in range(n)]
    cells = []
    cell = "c0"
    for _ in range(n):
        if rng.random() < 0.03:
            cell = f"c{rng.integers(0, 4)}"
        cells.append(cell)
    skip = {i for i in range(1, n - 1) if rng.random() < 0.05}
    for start in rng.integers(1, n - 1, size=2):  # two longer holes
        skip |= set(range(int(start), min(n - 1, int(start) + int(rng.integers(3, 9)))))
    samples = series(rsrp, dl, cells, skip=skip)
    batch = ContextDB(MemoryStore())
    batch.ingest(samples)
    live_db = ContextDB(MemoryStore())
    live = LiveIngest(live_db)
    for s in samples:
        live.feed(s)
        if int(s.t) % flush_every == 0:
            live.flush(s.t)
    live.flush(math.inf)
    assert live_db.stats() == batch.stats()
    assert _content(live_db) == _content(batch)


def _content(db: ContextDB) -> dict:
    """Every stored window (its RSRP and what followed) and event, order-free."""
    out = {}
    for key, entry in db._cells.items():
        idx = entry.index
        if idx._tail_n:
            idx._merge()
        rows = np.column_stack([idx.x, *(idx.perf[k] for k in ("thr", "gap"))])
        rows = np.round(rows, 6)
        out[key] = (
            sorted(map(tuple, rows.tolist())),
            sorted((e.t, e.gap, e.kind, e.cell_to) for e in entry.events),
        )
    return out


def test_recent_throughput_query():
    db = ContextDB(MemoryStore(), ContextDBConfig(k=8))
    db.ingest(two_regimes())
    plain = db.predict("A", "c1", [-80.0] * 5)
    assert db.predict("A", "c1", [-80.0] * 5, recent_dl_bps=math.nan) == plain
    p = db.predict("A", "c1", [-80.0] * 5, recent_dl_bps=50e6)
    assert p.throughput_mean == pytest.approx(50e6)  # median of what followed
    # confidence counts the RSRP part of the distance only: a throughput unlike any
    # stored one still finds the same signal within the threshold
    odd = db.predict("A", "c1", [-80.0] * 5, recent_dl_bps=500e6)
    assert odd.confidence == 1.0 and odd.nearest_distance > 100


def test_weighted_median():
    from contextdb.db import weighted_median

    v = np.array([3.0, 1.0, 2.0])
    assert weighted_median(v, np.ones(3)) == 2.0
    assert weighted_median(v, np.array([1.0, 10.0, 1.0])) == 1.0  # the heavy one wins
    assert weighted_median(v, np.array([5.0, 1.0, 1.0])) == 3.0
