"""The synthetic high-speed rail route: deterministic, seed 001's taxonomy, usable context."""

from __future__ import annotations

import numpy as np
import pytest

from netns import rail
from netns import traces as tr


def test_same_seed_same_route_other_seed_other_route():
    a = rail.generate(rail.RailParams(seed=5, duration_s=120))
    b = rail.generate(rail.RailParams(seed=5, duration_s=120))
    c = rail.generate(rail.RailParams(seed=6, duration_s=120))
    assert a.records() == b.records()
    assert np.array_equal(a.delivery(0).counts, b.delivery(0).counts)
    assert a.records() != c.records()


def test_gap_durations_follow_the_taxonomy():
    rng = np.random.default_rng(0)
    n = 20_000
    success = np.array([rail.gap_duration(rng, "success") for _ in range(n)])
    failure = np.array([rail.gap_duration(rng, "failure") for _ in range(n)])
    outage = np.array([rail.gap_duration(rng, "outage") for _ in range(n)])
    assert success.max() < 0.1
    assert np.median(failure) == pytest.approx(1.0, rel=0.05)
    assert np.quantile(failure, 0.95) == pytest.approx(5.0, rel=0.1)
    assert np.median(outage) == pytest.approx(3.0, rel=0.05)
    assert np.quantile(outage, 0.90) == pytest.approx(10.0, rel=0.1)


def test_handovers_every_few_seconds_at_high_speed():
    route = rail.generate(rail.RailParams(seed=2, duration_s=600, speed_kmh=320))
    for c in route.carriers:
        changes = [h for h in c.handovers if h.from_cell != h.to_cell]
        interval = 600 / len(changes)
        assert 3 <= interval <= 20
        kinds = {h.kind for h in c.handovers}
        assert "success" in kinds
        cells = {s.cell_id for s in c.seconds}
        assert len(cells) > 20
    # carriers have their own cells
    cells0 = {s.cell_id for s in route.carriers[0].seconds}
    cells1 = {s.cell_id for s in route.carriers[1].seconds}
    assert not cells0 & cells1


def test_no_delivery_during_gaps_and_throughput_follows_rsrp():
    route = rail.generate(rail.RailParams(seed=9, duration_s=300))
    c = route.carriers[0]
    trace = route.delivery(0, "down")
    long_gaps = [(a, b) for a, b in c.gaps if b - a > 0.5]
    assert long_gaps
    for a, b in long_gaps:
        assert trace.opportunities(int(a * 1000) + 1, int(b * 1000) - 1) == 0
    full = [s for s in c.seconds if s.connected == 1.0]
    rsrp = np.array([s.rsrp for s in full])
    dl = np.array([s.dl_kbps for s in full])
    assert np.corrcoef(rsrp, dl)[0, 1] > 0.5
    up = route.delivery(0, "up")
    assert up.mean_rate_bps() == pytest.approx(0.25 * trace.mean_rate_bps(), rel=0.05)


def test_csv_export_reads_back_as_a_5g_drive(tmp_path):
    route = rail.generate(rail.RailParams(seed=3, duration_s=90, carriers=2))
    path = tmp_path / "rail1.csv"
    rail.write_csv(route, 1, path)
    header = path.read_text().splitlines()[0].split(",")
    assert header == [*tr.FIVEG_COLUMNS, rail.POSITION_COLUMN]
    back = tr.read_5g_csv(path)
    secs = route.carriers[1].seconds
    assert len(back.seconds) == len(secs)
    for got, want in zip(back.seconds, secs, strict=True):
        assert got.cell_id == str(want.cell_id)
        assert got.rsrp == want.rsrp
        assert got.dl_kbps == want.dl_kbps
        assert got.longitude == pytest.approx(want.longitude)
    positions = [s.position_km for s in secs]
    assert positions == sorted(positions) and positions[-1] == pytest.approx(
        89 * 320 / 3600, abs=1e-3
    )


@pytest.mark.parametrize(
    "kw", [{"carriers": 0}, {"carriers": 9}, {"duration_s": 0}, {"p_failure": 0.8, "p_outage": 0.3}]
)
def test_bad_rail_parameters(kw):
    with pytest.raises(ValueError):
        rail.RailParams(**kw)


def test_cli_writes_one_csv_per_carrier(tmp_path, capsys):
    from middlebox.cli import main

    assert main(["testbed", "rail", "--seed", "4", "--duration", "60", "--out", str(tmp_path)]) == 0
    files = sorted(p.name for p in tmp_path.glob("*.csv"))
    assert files == ["rail0.csv", "rail1.csv", "rail2.csv"]
    back = tr.read_5g_csv(tmp_path / "rail2.csv")
    want = rail.generate(rail.RailParams(seed=4, duration_s=60)).carriers[2].seconds
    assert [s.cell_id for s in back.seconds] == [str(s.cell_id) for s in want]
    assert "rail0.csv: 60 s" in capsys.readouterr().out
    assert main(["testbed", "rail", "--carriers", "0", "--out", str(tmp_path)]) == 2
    assert "carriers must be in 1..8" in capsys.readouterr().err


# -- lines and days ---------------------------------------------------------------------


def _day(seed: int, day: int) -> rail.RailRoute:
    return rail.line_day(rail.make_line(rail.LineParams(seed=seed, length_km=30.0)), day)


def test_a_line_is_the_same_every_day_and_a_day_is_deterministic():
    a, b = _day(7, 2), _day(7, 2)
    assert a.records() == b.records()
    assert [c.handovers for c in a.carriers] == [c.handovers for c in b.carriers]
    other_day = _day(7, 3)
    assert other_day.records() != a.records()
    line_a = rail.make_line(rail.LineParams(seed=7, length_km=30.0))
    line_b = rail.make_line(rail.LineParams(seed=7, length_km=30.0))
    assert line_a.tunnels == line_b.tunnels and line_a.sites == line_b.sites
    line_c = rail.make_line(rail.LineParams(seed=8, length_km=30.0))
    assert line_c.sites != line_a.sites
    # the same cells along the track on different days (a site may be down on one)
    cells = [{s.cell_id for s in d.carriers[0].seconds} for d in (a, other_day)]
    assert len(cells[0] & cells[1]) >= 0.9 * min(map(len, cells))


def test_position_and_speed_per_second_follow_the_timetable():
    day = _day(5, 1)
    line = day.line
    assert line is not None and day.name == "line:5:day:1"
    secs = day.carriers[0].seconds
    pos = np.array([s.position_km for s in secs])
    speed = np.array([s.speed_kmh for s in secs])
    assert pos[0] == 0.0 and pos[-1] == pytest.approx(line.params.length_km)
    assert (np.diff(pos) >= 0).all()
    assert speed.max() <= line.params.cruise_kmh * 1.05 + 1e-9
    assert speed.max() >= 0.85 * line.params.cruise_kmh
    # the train stops at every station: some seconds at speed 0 at each one
    for km in line.stations[1:-1]:
        assert ((speed == 0) & (np.abs(pos - km) < 1e-6)).sum() >= line.params.dwell_s[0] - 1
    # every carrier reports the same position each second (one vehicle)
    for c in day.carriers[1:]:
        assert [s.position_km for s in c.seconds] == list(pos)


def test_a_days_tunnels_and_holes_are_where_the_line_says():
    found = 0
    for seed in (3, 4, 5):
        for d in (1, 2):
            day = _day(seed, d)
            line = day.line
            assert line is not None
            for k, c in enumerate(day.carriers):
                pos = np.array([s.position_km for s in c.seconds])
                conn = np.array([s.connected for s in c.seconds])
                outages = [h for h in c.handovers if h.kind == "outage"]
                for a, b in line.dark(k):
                    inside = (pos > a) & (pos < b)
                    if inside.sum() < 3:
                        continue
                    found += 1
                    # nothing delivered strictly inside (the first second may be partial)
                    idx = np.flatnonzero(inside)
                    assert (conn[idx[1:]] == 0).all()
                    # an outage starts within a second's travel of the entrance
                    assert any(abs(h.position_km - a) <= 0.1 + 1e-9 for h in outages), (a, b)
    assert found >= 5


def test_handover_points_are_fixed_kilometres_and_bad_points_fail_often():
    line = rail.make_line(rail.LineParams(seed=11, length_km=40.0))
    days = [rail.line_day(line, d) for d in range(1, 6)]
    at: dict[tuple[int, int], list[float]] = {}
    for day in days:
        for h in day.carriers[0].handovers:
            if h.kind != "outage" and h.from_cell != h.to_cell:
                at.setdefault((h.from_cell, h.to_cell), []).append(h.position_km)
    seen_every_day = [v for v in at.values() if len(v) == len(days)]
    assert len(seen_every_day) > 20
    spread = [max(v) - min(v) for v in seen_every_day]
    assert np.median(spread) < 0.1  # km: within about a second of travel


@pytest.mark.parametrize(
    ("spec", "want"),
    [("7", ("rail", 7, 0)), ("rail:7", ("rail", 7, 0)), ("line:7:day:3", ("line", 7, 3))],
)
def test_route_specs(spec, want):
    assert rail.parse_spec(spec) == want


@pytest.mark.parametrize("spec", ["line:7", "line:7:day:0", "line:x:day:1", "rail:", "line:7:d:1"])
def test_bad_route_specs(spec):
    with pytest.raises(ValueError, match="line:<seed>:day:<n>"):
        rail.parse_spec(spec)


def test_line_days_as_trace_specs():
    from netns import tracespec
    from netns.errors import TraceError

    route = rail.route_from_spec("line:4:day:2")
    trace = tracespec.load("line:4:day:2:1")
    assert np.array_equal(trace.counts, route.delivery(1).counts)
    assert trace.name == "line:4:day:2:1:down"
    with pytest.raises(TraceError, match="line:<seed>:day:<n>:<carrier index>"):
        tracespec.load("line:4:day:0:1")
    with pytest.raises(TraceError, match="3 carriers"):
        tracespec.load("line:4:day:1:5")


def test_cli_writes_days_of_a_line(tmp_path, capsys):
    from middlebox.cli import main

    assert main(["testbed", "rail", "--line", "4", "--days", "1-2", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day01", "day02"]
    back = tr.read_5g_csv(tmp_path / "day02" / "rail1.csv")
    want = rail.route_from_spec("line:4:day:2").carriers[1].seconds
    assert [s.cell_id for s in back.seconds] == [str(s.cell_id) for s in want]
    assert main(["testbed", "rail", "--line", "4", "--days", "3-1", "--out", str(tmp_path)]) == 2
    assert "--days" in capsys.readouterr().err
