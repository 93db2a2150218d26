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
    assert header == tr.FIVEG_COLUMNS
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
