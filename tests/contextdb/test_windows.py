import math
from dataclasses import replace

import numpy as np
import pytest

from contextdb.config import ContextDBConfig
from contextdb.records import FAILURE, OUTAGE, SUCCESS, classify
from contextdb.windows import cut_windows, detect_events, process, to_grid

from .helpers import T0, series


def cut(samples, cfg):
    grid = to_grid(samples, cfg.fill_gap_s)
    events = detect_events(grid, cfg)
    return grid, events, cut_windows(grid, events, cfg)


@pytest.mark.parametrize(
    ("w", "overlap", "step"), [(5, 0.8, 1), (5, 0.0, 5), (10, 0.5, 5), (4, 0.5, 2)]
)
def test_windows_overlap_by_the_configured_fraction(w, overlap, step):
    cfg = ContextDBConfig(window_s=w, overlap=overlap, lookahead_s=3)
    assert cfg.step_s() == step
    n = 40
    rsrp = [-100.0 + i for i in range(n)]  # RSRP encodes the second
    _, _, wins = cut(series(rsrp), cfg)
    ends = (wins.t - T0).astype(int)
    assert list(np.diff(ends)) == [step] * (len(ends) - 1)
    assert ends[0] == w - 1 and ends[-1] <= n - 1 - 3 and ends[-1] + step > n - 1 - 3
    for e, row in zip(ends, wins.rsrp, strict=True):
        assert list(row) == rsrp[e - w + 1 : e + 1]
    # consecutive windows share w - step seconds
    if w > step:
        assert list(wins.rsrp[1][: w - step]) == list(wins.rsrp[0][step:])


def test_lookahead_is_after_the_window_not_during_it():
    cfg = ContextDBConfig(window_s=5, overlap=0.8, lookahead_s=5)
    n = 30
    dl = [float(1000 * i) for i in range(n)]  # throughput encodes the second
    _, _, wins = cut(series([-90.0] * n, dl), cfg)
    for t, thr, last in zip(wins.t, wins.thr, wins.last, strict=True):
        e = int(t - T0)
        assert thr == pytest.approx(np.mean(dl[e + 1 : e + 6]))
        assert last == dl[e]


def test_rtt_and_loss_average_only_seconds_that_measured_them():
    cfg = ContextDBConfig(window_s=3, overlap=2 / 3, lookahead_s=4)
    n = 20
    rtt = [math.nan] * n
    rtt[10] = 0.05
    rtt[12] = 0.07
    _, _, wins = cut(series([-90.0] * n, rtt=rtt), cfg)
    by_end = {int(t - T0): r for t, r in zip(wins.t, wins.rtt, strict=True)}
    assert by_end[9] == pytest.approx(0.06)  # look-ahead 10..13 holds both pings
    assert by_end[11] == pytest.approx(0.07)
    assert math.isnan(by_end[3])


def test_classify_thresholds():
    assert classify(0.0, 0.1, 5.0) == SUCCESS
    assert classify(0.099, 0.1, 5.0) == SUCCESS
    assert classify(0.1, 0.1, 5.0) == FAILURE
    assert classify(5.0, 0.1, 5.0) == FAILURE
    assert classify(5.1, 0.1, 5.0) == OUTAGE


def test_seamless_cell_change_is_a_successful_handover():
    cfg = ContextDBConfig()
    cells = ["c1"] * 10 + ["c2"] * 10
    _, events, _ = cut(series([-90.0] * 20, cells=cells), cfg)
    assert [(e.kind, e.gap, e.cell, e.cell_to, e.t - T0) for e in events] == [
        (SUCCESS, 0.0, "c1", "c2", 10.0)
    ]


def test_seconds_without_delivery_are_a_failed_handover():
    cfg = ContextDBConfig()
    dl = [1e6] * 10 + [0.0, 0.0] + [1e6] * 10
    cells = ["c1"] * 11 + ["c2"] * 11
    _, events, wins = cut(series([-90.0] * 22, dl, cells), cfg)
    assert [(e.kind, e.gap, e.cell, e.cell_to, e.t - T0) for e in events] == [
        (FAILURE, 2.0, "c1", "c2", 10.0)
    ]
    # windows whose look-ahead (e+1..e+5) contains second 10 carry the gap
    labelled = {int(t - T0) for t, g in zip(wins.t, wins.gap, strict=True) if g > 0}
    assert labelled == {5, 6, 7, 8, 9}


def test_long_hole_in_the_log_is_an_outage():
    cfg = ContextDBConfig(fill_gap_s=2)
    n = 30
    _, events, _ = cut(series([-90.0] * n, skip=set(range(10, 18))), cfg)
    assert [(e.kind, e.gap) for e in events] == [(OUTAGE, 8.0)]


def test_short_hole_is_bridged_not_a_disconnection():
    cfg = ContextDBConfig(fill_gap_s=2)
    rsrp = [-90.0 - i for i in range(20)]
    grid, events, wins = cut(series(rsrp, skip={7, 8}), cfg)
    assert events == []
    assert grid.rsrp[7] == pytest.approx(-97.0) and grid.rsrp[8] == pytest.approx(-98.0)
    assert 8 in set((wins.t - T0).astype(int))


def test_duplicate_second_after_a_skipped_one_is_retimed():
    samples = series([-90.0, -91.0, -92.0, -93.0])
    s2 = samples[2]
    # the logger wrote second 2 as second 3 and then second 3 again
    jittered = [samples[0], samples[1], replace(s2, t=s2.t + 1)]
    jittered.append(samples[3])
    grid = to_grid(jittered, fill_gap_s=0)
    assert list(grid.rsrp) == [-90.0, -91.0, -92.0, -93.0]
    assert grid.present.all()


def test_process_keeps_carriers_apart():
    cfg = ContextDBConfig()
    a = series([-90.0] * 20, carrier="A")
    b = series([-110.0] * 20, carrier="B", cells="c9")
    out = process(a + b, cfg)
    assert set(out) == {"A", "B"}
    assert set(out["A"].windows.cell) == {"c1"} and set(out["B"].windows.cell) == {"c9"}
    assert (out["B"].windows.rsrp == -110.0).all()
