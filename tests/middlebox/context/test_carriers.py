"""Carrier context parts (middlebox/context/carriers.py): the replay and JSON-lines
sources, the tracker adapter, the per-second meter."""

from __future__ import annotations

import pytest

from middlebox.context.carriers import (
    JsonLinesParser,
    PerfMeter,
    Reading,
    ReplaySource,
    load_replay,
    track,
)
from middlebox.errors import UserError
from scheduler.generators import CarrierTracker

from .helpers import CARRIERS, info

# -- replay source ------------------------------------------------------------------------


def test_replay_follows_the_trace_clock(route, csvs):
    rows = load_replay(csvs, CARRIERS)
    src = ReplaySource(rows, start=1000.0)
    assert src.poll(999.5) == []  # before trace time 0
    first = src.poll(1000.2)
    assert [r.carrier for r in first] == CARRIERS
    assert src.poll(1000.9) == []  # once per second
    for k in (1, 37, 119):
        got = {r.carrier: r for r in src.poll(1000.0 + k + 0.3)}
        for carrier in route.carriers:
            want = carrier.seconds[k]
            r = got[carrier.name]
            assert r.cell_id == str(want.cell_id)
            assert r.rsrp == pytest.approx(want.rsrp)
            assert r.lat == pytest.approx(want.latitude)
            assert r.t == 1000.0 + k + 0.3
    # looping: second 120 plays record 0 again; without loop the carriers fall silent
    again = {r.carrier: r for r in src.poll(1120.5)}
    assert again["rail0"].cell_id == str(route.carriers[0].seconds[0].cell_id)
    once = ReplaySource(rows, start=1000.0, loop=False)
    assert once.poll(1120.5) == []
    slow = ReplaySource(rows, start=1000.0, time_scale=2.0)  # like TestbedSpec.time_scale
    assert slow.poll(1000.1)[0].cell_id == str(route.carriers[0].seconds[0].cell_id)
    assert slow.poll(1001.9) == []  # record 0 lasts two seconds
    assert slow.poll(1075.0)[0].cell_id == str(route.carriers[0].seconds[37].cell_id)


def test_replay_errors_are_user_errors(csvs, tmp_path):
    with pytest.raises(UserError, match="1 file"):
        load_replay(csvs[:1], CARRIERS)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not a 5G driving log"):
        load_replay([str(bad), csvs[1]], CARRIERS)
    with pytest.raises(UserError, match="no-such"):
        load_replay([str(tmp_path / "no-such.csv"), csvs[1]], CARRIERS)


# -- JSON lines ---------------------------------------------------------------------------


def test_json_lines_any_chunking_and_bad_lines_counted():
    p = JsonLinesParser(["a", "b"])
    text = (
        b'{"carrier": "a", "cell_id": "0x1f", "rsrp": -90.5, "lat": 1.5, "lon": 2.5}\n'
        b"not json\n"
        b'{"carrier": "zz"}\n'
        b'{"carrier": "b", "rsrp": "loud"}\n'
        b'{"carrier": "b", "cell_id": "a\\u0001b"}\n'
        b'{"carrier": "b", "cell_id": [1]}\n'
        b'{"carrier": "b", "cell_id": 77}\n'
    )
    out = []
    for i in range(0, len(text), 7):
        out += p.feed(text[i : i + 7], 5.0)
    assert out == [
        Reading("a", 5.0, "0x1f", -90.5, 1.5, 2.5),
        Reading("b", 5.0, "77", None, None, None),
    ]
    assert p.errors == 5
    p.feed(b"x" * 5000, 6.0)  # an endless line is dropped, not buffered forever
    assert p.errors == 6 and "longer" in p.last_error


# -- tracker ------------------------------------------------------------------------------


def test_tracker_window_holds_rsrp_and_records_cell_changes():
    tr = CarrierTracker(window=3)
    for t, cell, rsrp in [(1, "10", -80.0), (2, "10", -81.0), (3, "10", None), (4, "11", -90.0)]:
        ctx = track(tr, Reading("a", float(t), cell, rsrp, 50.0, 8.0))
    assert ctx.rsrp_window == (-81.0, -81.0, -90.0)
    assert ctx.cell_id == "11" and ctx.rsrp == -90.0
    assert ctx.handover_events == ((4.0, "10->11"),)
    assert ctx.position == (50.0, 8.0)
    ctx = track(tr, Reading("a", 5.0, "11", -91.0))  # no position: keep the last one
    assert ctx.position == (50.0, 8.0)


# -- meter --------------------------------------------------------------------------------


def test_meter_rates_loss_and_saturation():
    m = PerfMeter()
    k0, k1 = object(), object()
    m.add(1, "a", k0, info(), 0.0)
    m.add(2, "a", k1, info(), 0.0)
    for i in range(1, 6):  # five readings in one second
        t = i * 0.2
        # path 1: receives 250 kB every interval, sends with a backlog the whole time
        m.add(1, "a", k0, info(rx=250_000 * i, acked=50_000 * i, segs=100 * i, retrans=2 * i,
                               busy=int(t * 1e6)), t)  # fmt: skip
        # path 2: received once, sender idle
        m.add(2, "a", k1, info(rx=10_000 if i >= 3 else 0, app_limited=True, srtt=0.15), t)
    (s,) = m.close(1.0)
    assert s.carrier == "a" and s.paths == 2
    assert s.down_bps == pytest.approx((1_250_000 + 10_000) * 8)
    assert s.up_bps == pytest.approx(250_000 * 8)
    assert s.loss == pytest.approx(10 / 500)
    assert s.rtt == pytest.approx(0.1)
    assert s.saturated_up and s.saturated_down
    # next second: path 1 quiet (no bytes, no busy time): nothing saturated
    for i in range(6, 11):
        m.add(1, "a", k0, info(rx=1_250_000, acked=250_000, segs=500, retrans=10,
                               busy=1_000_000, app_limited=True), i * 0.2)  # fmt: skip
    (s,) = m.close(2.0)
    assert s.down_bps == 0 and not s.saturated_up and not s.saturated_down
    # a new connection on path 1 starts from its own counters, not a negative delta
    k2 = object()
    m.add(1, "a", k2, info(rx=5), 2.2)
    m.add(1, "a", k2, info(rx=1005), 2.4)
    (s,) = m.close(3.0)
    assert s.down_bps == pytest.approx(1000 * 8)
