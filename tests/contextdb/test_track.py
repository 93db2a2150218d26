"""The vehicle's recent track from the context database: the windows this process
added, with their positions and what the carrier delivered after each."""

import math

from contextdb.db import ContextDB
from contextdb.records import Sample
from contextdb.store import MemoryStore


def drive(carrier, t0, n, lat0=52.0):
    return [
        Sample(carrier, t0 + i, "cell-1", rsrp=-90.0 - i % 5, lat=lat0 + i * 1e-4,
               lon=13.0 + i * 1e-4, dl_bps=1e6 * (1 + i % 3))
        for i in range(n)
    ]  # fmt: skip


def test_track_holds_positions_and_throughput_of_added_windows_in_time_order():
    db = ContextDB(MemoryStore())
    db.ingest(drive("a", 1000.0, 60) + drive("b", 1000.0, 60, lat0=52.5))
    track = db.track(0.0)
    assert set(track) == {"a", "b"}
    rows = track["a"]
    assert rows and [r[0] for r in rows] == sorted(r[0] for r in rows)
    t, lat, lon, thr = rows[-1]
    assert 52.0 <= lat <= 52.01 and 13.0 <= lon <= 13.01
    assert math.isnan(thr) or thr > 0
    assert track["b"][0][1] >= 52.5
    later = db.track(rows[-1][0])
    assert later["a"] == [rows[-1]]  # since: windows ending at or after it


def test_windows_without_position_and_other_writers_are_not_the_track():
    store = MemoryStore()
    other = ContextDB(store, origin="other-train")
    other.ingest(drive("a", 1000.0, 60))
    mine = ContextDB(store, origin="me")  # loads the other's windows: not our track
    assert mine.track(0.0) == {}
    nowhere = [Sample("a", 5000.0 + i, "cell-2", rsrp=-95.0, dl_bps=1e6) for i in range(60)]
    mine.ingest(nowhere)
    assert mine.track(0.0) == {}
