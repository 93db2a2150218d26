"""Trace readers: real files parse, bad files are refused with file and line."""

from __future__ import annotations

import numpy as np
import pytest

from netns import traces as tr
from netns import tracespec
from netns.errors import TraceError


def test_mahimahi_counts_and_period(tmp_path):
    p = tmp_path / "x.down"
    p.write_text("0\n0\n3\n5\n10\n")
    t = tr.read_mahimahi(p)
    assert t.period_ms == 10
    # the opportunity stamped at the period belongs to ms 0 of the next round
    assert t.counts[0] == 3 and t.counts[3] == 1 and t.counts[5] == 1
    assert t.opportunities(0, 10) == 5
    assert t.opportunities(0, 30) == 15
    assert t.rate_bps(0, 10) == pytest.approx(5 * 1500 * 8 / 0.010)


def test_bundled_mahimahi_rates_are_plausible(traces):
    for name in ("ATT-LTE-driving", "TMobile-LTE-short", "Verizon-LTE-short"):
        down = tr.read_mahimahi(traces / "mahimahi" / f"{name}.down")
        lines = (traces / "mahimahi" / f"{name}.down").read_text().split()
        assert down.counts.sum() == len(lines)
        assert 0.5e6 < down.mean_rate_bps() < 50e6


@pytest.mark.parametrize(
    "text, line, what",
    [
        ("0\n5\nabc\n", 3, "expected a millisecond timestamp"),
        ("0\n5\n3\n", 3, "goes back in time"),
        ("1.5\n", 1, "expected a millisecond timestamp"),
    ],
)
def test_malformed_mahimahi_names_file_and_line(tmp_path, text, line, what):
    p = tmp_path / "bad.up"
    p.write_text(text)
    with pytest.raises(TraceError) as e:
        tr.read_mahimahi(p)
    assert str(e.value).startswith(f"{p}:{line}: ")
    assert what in str(e.value)


def test_missing_and_empty_trace_files(tmp_path):
    with pytest.raises(TraceError, match="no such trace file") as e:
        tr.read_mahimahi(tmp_path / "nope.down")
    assert str(tmp_path / "nope.down") in str(e.value)
    (tmp_path / "empty").write_text("\n\n")
    with pytest.raises(TraceError, match="empty trace"):
        tr.read_mahimahi(tmp_path / "empty")
    (tmp_path / "zero").write_text("0\n0\n")
    with pytest.raises(TraceError, match="last timestamp must be > 0"):
        tr.read_mahimahi(tmp_path / "zero")


def test_fixed_rate_is_exact():
    t = tr.fixed_rate(20e6)
    assert t.rate_bps(0, 12_000) == pytest.approx(20e6)
    assert t.rate_bps(1000, 2000) == pytest.approx(20e6, rel=0.001)


def test_scaling_keeps_rates_when_stretching_time():
    t = tr.from_rates(np.array([10e6, 2e6]), 1000)
    slow = t.scaled(time_scale=2.0)
    assert slow.period_ms == 4000
    assert slow.rate_bps(0, 2000) == pytest.approx(10e6, rel=0.01)
    assert slow.rate_bps(2000, 4000) == pytest.approx(2e6, rel=0.01)
    fast = t.scaled(time_scale=0.5, rate_scale=3.0)
    assert fast.period_ms == 1000
    assert fast.rate_bps(0, 500) == pytest.approx(30e6, rel=0.01)
    assert fast.rate_bps(500, 1000) == pytest.approx(6e6, rel=0.01)


FIVEG_HEADER = ",".join(tr.FIVEG_COLUMNS)


def fiveg_row(ts: str, dl: str, ul: str = "10", state: str = "D", ping: str = "-") -> str:
    row = dict.fromkeys(tr.FIVEG_COLUMNS, "-")
    row.update(Timestamp=ts, DL_bitrate=dl, UL_bitrate=ul, State=state, PINGAVG=ping)
    row.update(CellID="7", RSRP="-90", Longitude="-8.4", Latitude="51.9")
    return ",".join(row[c] for c in tr.FIVEG_COLUMNS)


def test_5g_csv_missing_values_follow_the_policy(tmp_path):
    p = tmp_path / "drive.csv"
    rows = [
        fiveg_row("2020.01.01_10.00.00", "12000", ping="40"),
        fiveg_row("2020.01.01_10.00.01", "-"),  # no value
        fiveg_row("2020.01.01_10.00.02", "6000", state="I"),  # idle: not a capacity
        # 10.00.03 absent
        fiveg_row("2020.01.01_10.00.04", "0"),
        fiveg_row("2020.01.01_10.00.04", "24000", ping="60"),  # same second: later row wins
    ]
    p.write_text("\n".join([FIVEG_HEADER, *rows]) + "\n")
    held = tr.read_5g_csv(p, missing="hold")
    assert [s.t for s in held.seconds] == [0, 1, 2, 3, 4]
    assert held.missing_count("down") == 3
    d = held.delivery("down")
    for sec, mbit in enumerate([12, 12, 12, 12, 24]):
        assert d.rate_bps(sec * 1000, sec * 1000 + 1000) == pytest.approx(mbit * 1e6, rel=0.01)
    zero = tr.read_5g_csv(p, missing="zero").delivery("down")
    assert zero.opportunities(1000, 4000) == 0
    assert held.median_rtt_ms() == 50.0
    assert held.seconds[0].cell_id == "7" and held.seconds[0].rsrp == -90


def test_bundled_5g_drive_parses(traces):
    path = sorted((traces / "5g-driving").glob("*.csv"))[0]
    t = tr.read_5g_csv(path)
    assert len(t.seconds) > 100
    assert t.delivery("down").mean_rate_bps() > 0
    assert t.delivery("up").mean_rate_bps() > 0


@pytest.mark.parametrize(
    "body, line, what",
    [
        ("Timestamp,DL_bitrate\n", 1, "header lacks column(s)"),
        (FIVEG_HEADER + "\n" + fiveg_row("2020.01.01_10.00.00", "fast") + "\n", 2, "DL_bitrate"),
        (FIVEG_HEADER + "\n" + fiveg_row("yesterday", "1") + "\n", 2, "bad Timestamp"),
        (FIVEG_HEADER + "\n1,2,3\n", 2, "expected 26 columns"),
    ],
)
def test_malformed_5g_csv(tmp_path, body, line, what):
    p = tmp_path / "bad.csv"
    p.write_text(body)
    with pytest.raises(TraceError) as e:
        tr.read_5g_csv(p)
    assert str(e.value).startswith(f"{p}:{line}: ")
    assert what in str(e.value)


def test_load_specs(tmp_path):
    assert tracespec.load("12mbit").mean_rate_bps() == pytest.approx(12e6)
    assert tracespec.load("rail:4:1").period_ms == 600_000
    with pytest.raises(TraceError, match="rail:<seed>"):
        tracespec.load("rail:x")
    with pytest.raises(TraceError, match="no such trace file"):
        tracespec.load(str(tmp_path / "x.csv"))
