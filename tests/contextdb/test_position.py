"""Position along the line as a key: binning, look-ahead alignment, persistence, scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest

from contextdb.config import ContextDBConfig
from contextdb.db import ContextDB
from contextdb.evaluate import evaluate
from contextdb.position import (
    Pass,
    PositionHistory,
    ReferenceTrack,
    build_table,
    decode_passes,
    encode_passes,
    split_passes,
)
from contextdb.records import FAILURE, OUTAGE, HandoverEvent, Sample
from contextdb.store import MemoryStore

KMH = 360.0  # 0.1 km per second


def _pass(n: int = 60, events=(), direction: int = 1, dl: float = 10e6, t0: float = 0.0) -> Pass:
    """A scripted pass at 0.1 km/s from km 0.025 (off the 50 m bin edges)."""
    u = 0.1 * np.arange(n) + 0.025
    p = Pass(t0, direction, u, np.full(n, KMH), np.full(n, dl), np.full(n, np.nan), np.full(n, 0.0))
    if events:
        a = np.array([(0.1 * s + 0.025, km, gap, kind) for s, km, gap, kind in events])
        p.ev_u, p.ev_km, p.ev_gap = a[:, 0], a[:, 1], a[:, 2]
        p.ev_kind = a[:, 3].astype(np.uint8)
    return p


def test_binning_counts_the_seconds_spent_in_each_bin():
    n = 40
    u = np.concatenate([np.full(10, 0.01), 0.02 + 0.03 * np.arange(n - 10)])  # 10 s stopped
    p = Pass(0.0, 1, u, np.zeros(n), np.arange(n, dtype=float), np.full(n, np.nan), np.zeros(n))
    tab = build_table([p], 0.05)
    assert tab is not None and tab.u0 == 0.0
    bins = np.floor(u / 0.05).astype(int)
    assert tab.seconds[0].sum() == n
    for b in range(tab.seconds.shape[1]):
        assert tab.seconds[0, b] == (bins == b).sum()
        assert tab.dl_sum[0, b] == pytest.approx(np.arange(n)[bins == b].sum())
    assert tab.seconds[0, 0] == 11  # the stop and the first moving second
    assert tab.rtt_n.sum() == 0


def test_look_ahead_is_the_stretch_the_train_covers_next():
    # an outage starting at second 30 (km 3.025), 0.3 km long, in each of 4 passes
    hist = PositionHistory(bin_m=50)
    for d in range(4):
        hist.add("a", [_pass(events=[(30, 0.3, 3.0, 2)], t0=1000.0 * d)])
    # 5 s at 0.1 km/s from second 25 reaches exactly the start: seen, 5 s ahead
    f = hist.forecast("a", 2.525, KMH, 5.0)
    assert f is not None and f.passes == 4
    assert f.dark_in_s == pytest.approx(5.0)
    assert f.kind == OUTAGE
    assert f.dark_for_s == pytest.approx(3.0)  # 0.3 km at 0.1 km/s
    prior = min(1.0, 4 / (4 * 5.9) * 0.5)
    assert f.p_dark == pytest.approx((4 + prior) / 5)
    # at half the speed the same stretch takes twice as long, and so does the outage
    slow = hist.forecast("a", 2.525, KMH / 2, 10.0)
    assert slow.dark_in_s == pytest.approx(10.0) and slow.dark_for_s == pytest.approx(6.0)
    # a second earlier it is out of reach; once started it is no longer ahead
    assert hist.forecast("a", 2.425, KMH, 5.0).dark_in_s == math.inf
    assert hist.forecast("a", 3.025, KMH, 5.0).dark_in_s == math.inf
    late = hist.forecast("a", 2.925, KMH, 5.0)
    assert late.dark_in_s == pytest.approx(1.0)
    # throughput over the stretch: the passes' seconds 1..5 ahead (here 10 Mbit/s)
    assert f.throughput_mean == pytest.approx(10e6)
    # nothing known past the end of the passes, or for another carrier or direction
    assert hist.forecast("a", 5.8, KMH, 5.0) is None
    assert hist.forecast("b", 2.5, KMH, 5.0) is None
    assert hist.forecast("a", 2.5, KMH, 5.0, direction=-1) is None
    assert hist.forecast("a", math.nan, KMH, 5.0) is None


def test_failures_keep_their_time_and_the_probability_is_the_share_of_passes():
    hist = PositionHistory(bin_m=50)
    for d in range(10):
        ev = [(20, 0.1, 1.0, 1)] if d < 7 else []
        hist.add("a", [_pass(events=ev, t0=1000.0 * d)])
    f = hist.forecast("a", 1.725, KMH / 2, 8.0)
    assert f.kind == FAILURE and f.dark_for_s == pytest.approx(1.0)  # not scaled by speed
    assert f.dark_in_s == pytest.approx(6.0)
    prior = min(1.0, 7 / (10 * 5.9) * 0.4)
    assert f.p_dark == pytest.approx((7 + prior) / 11)
    assert f.confidence == pytest.approx(10 / 11 * 0.7)


def test_throughput_variance_is_the_spread_across_passes():
    hist = PositionHistory(bin_m=50)
    for d, rate in enumerate((8e6, 10e6, 12e6)):
        hist.add("a", [_pass(dl=rate, t0=1000.0 * d)])
    f = hist.forecast("a", 1.0, KMH, 5.0)
    assert f.throughput_mean == pytest.approx(10e6)
    assert f.throughput_var == pytest.approx(np.var([8e6, 10e6, 12e6], ddof=1))
    assert f.rtt_var == math.inf and f.rtt_mean == 0.0  # never measured: no weight


def test_passes_split_at_reversals_and_long_holes():
    pos = np.concatenate([np.linspace(0, 2, 21), np.linspace(1.9, 0.5, 15)])
    pos = np.concatenate([pos, np.full(40, np.nan), np.linspace(3, 4, 11)])
    n = len(pos)
    z = np.zeros(n)
    ev = [HandoverEvent("a", 100.0 + 25, "c", "c", 2.0, FAILURE)]
    out = split_passes(100.0, pos, z + 100, z + 1e6, z * np.nan, z, ev)
    assert [p.direction for p in out] == [1, -1, 1]
    assert out[1].u[0] == pytest.approx(-2.0) and (np.diff(out[1].u) >= 0).all()
    assert len(out[1].ev_u) == 1 and out[1].ev_u[0] == pytest.approx(-pos[25])
    assert out[2].t0 == 100.0 + 76
    back = decode_passes(encode_passes(out, "gw1"), "a")
    assert [len(p) for p in back] == [len(p) for p in out]
    assert np.array_equal(back[1].ev_u, out[1].ev_u)


def test_reference_track_places_gps_fixes_along_it():
    lat = np.full(101, 51.9)
    lon = -8.5 + np.linspace(0, 0.01, 101)  # about 690 m eastwards
    track = ReferenceTrack(lat, lon)
    got = track.project(np.array([51.9, 51.9, 51.95, np.nan]), np.array([-8.5, -8.495, -8.5, 0]))
    assert got[0] == pytest.approx(0.0)
    assert got[1] == pytest.approx(track.km[-1] / 2, abs=0.01)
    assert math.isnan(got[2]) and math.isnan(got[3])  # 5 km off the track; unknown


def _run(day: int, outage_at: int = 30, n: int = 60) -> list[Sample]:
    """One scripted run: 0.1 km/s, 10 Mbit/s, nothing for 3 s from ``outage_at``."""
    t0 = 1_700_000_000 + 86_400 * day
    out = []
    for s in range(n):
        dl = 0.0 if outage_at <= s < outage_at + 3 else 10e6
        out.append(
            Sample("a", t0 + s, "c1", -90.0, dl_bps=dl, pos_km=0.1 * s + 0.025, speed_kmh=KMH)
        )
    return out


def test_history_persists_in_the_store_and_comes_back():
    store = MemoryStore()
    db = ContextDB(store, ContextDBConfig())
    report = db.ingest(_run(1))
    assert report.counts["passes"] == 1
    f = db.forecast("a", 2.525, KMH, 5.0)
    assert f is not None and f.dark_in_s == pytest.approx(5.0) and f.dark_for_s == 3.0
    again = ContextDB(store, ContextDBConfig())
    assert again.forecast("a", 2.525, KMH, 5.0) == f
    assert again.stats()["positions"]["a"]["passes"] == 1
    assert ("a", "@position") not in again._cells  # not a cell of the RSRP index


def test_evaluation_figures_on_a_tiny_scripted_line():
    train = [_run(d) for d in range(3)]
    test = [_run(10)]
    res = evaluate(train, test, ContextDBConfig(), position=True)
    pos = res.position
    assert pos is not None and not pos.projected and pos.scored > 40
    # every day is the same: the position key predicts what followed exactly
    assert pos.mae_bps["position"] == pytest.approx(0.0, abs=1e-6)
    assert pos.mae_bps["last value"] > 5e5
    # Brier score by hand: the 5 windows before the outage get (3 + q) / 4, others q / 4
    q = min(1.0, 3 / (3 * 5.9) * 0.5)
    n = pos.scored
    want = (5 * (1 - (3 + q) / 4) ** 2 + (n - 5) * (q / 4) ** 2) / n
    assert pos.brier["position"] == pytest.approx(want)
    assert pos.brier["observed rate"] == pytest.approx(5 / n)
    assert pos.brier_skill == pytest.approx(1 - want / pos.brier["cell base rate"])
    assert pos.brier_skill > 0.5
    # the one dark spell longer than 2 s, asked 5 s ahead: forecast to the second
    assert (pos.long_gaps, pos.long_gaps_forecast) == (1, 1)
    assert pos.start_error_s == [pytest.approx(0.0)]
    # moved by 4 s on the test day: still forecast, but 4 s off -> not within 2 s
    moved = evaluate(train, [_run(11, outage_at=34)], ContextDBConfig(), position=True)
    assert moved.position.long_gaps == 1 and moved.position.long_gaps_forecast == 0
