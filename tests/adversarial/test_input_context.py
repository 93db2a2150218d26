"""Hostile lines from the context helper: counted and dropped, the gateway goes on.

Before: one line with JSON nested a thousand deep (RecursionError) or an RSRP of 400
digits (OverflowError when made a float) raised past the parser's ValueError guard and
ended the gateway; NaN and Infinity were taken as "unknown". (A real helper printing such
lines: tests/middlebox/context/test_loop.py.)
"""

from __future__ import annotations

import json
import math
import time

import pytest

from contextdb.records import Sample
from middlebox.context.carriers import JsonLinesParser, Reading

GOOD = b'{"carrier": "a", "cell_id": "7", "rsrp": -90.0, "lat": 1.0, "lon": 2.0}\n'

HOSTILE = [
    b'{"carrier": "a", "rsrp": ' + b"[" * 1000 + b"]" * 1000 + b"}",  # RecursionError
    b"[" * 2000 + b"]" * 2000,  # the whole line nested
    b'{"carrier": "a", "rsrp": -' + b"9" * 400 + b"}",  # OverflowError as a float
    b'{"carrier": "a", "rsrp": ' + b"9" * 400 + b"}",
    b'{"carrier": "a", "rsrp": NaN}',
    b'{"carrier": "a", "rsrp": Infinity}',
    b'{"carrier": "a", "rsrp": -Infinity}',
    b'{"carrier": "a", "rsrp": -1e400}',  # a float infinity
    b'{"carrier": "a", "rsrp": 5.0}',  # outside -200..0 dBm
    b'{"carrier": "a", "rsrp": -1e308}',
    b'{"carrier": "a", "lat": 91.0, "lon": 0.0}',
    b'{"carrier": "a", "lat": 1.0, "lon": -180.5}',
    b'{"carrier": "a", "lat": 1e999, "lon": 0}',
    b'{"carrier": "a", "rsrp": true}',
    b'{"carrier": "a", "rsrp": "-90"}',
    b'{"carrier": "a", "rsrp": {"x": 1}}',
    b'{"carrier": "a", "cell_id": 1e400}',
    b'{"carrier": "a", "cell_id": ' + b"9" * 400 + b"}",  # too long as text
    b'{"carrier": "a", "cell_id": {"a": [1, 2]}}',
    b'{"carrier": 5}',
    b'{"carrier": ["a"]}',
    b'"a"',
    b"null",
    b"1e999999",
    b'{"carrier": "a", "rsrp": -90.0',  # truncated
    b"\xff\xfe{}",  # not UTF-8
    b'{"carrier": "\\ud800"}',  # a lone surrogate
]


@pytest.mark.parametrize("line", HOSTILE, ids=range(len(HOSTILE)))
def test_a_hostile_line_is_counted_and_dropped(line):
    p = JsonLinesParser(["a"])
    out = p.feed(line + b"\n" + GOOD, 3.0)
    assert out == [Reading("a", 3.0, "7", -90.0, 1.0, 2.0)]  # the next line still counts
    assert p.errors == 1 and p.last_error


def test_the_limits_of_the_ranges_are_accepted():
    p = JsonLinesParser(["a"])
    lines = [
        {"carrier": "a", "rsrp": -200, "lat": -90, "lon": -180},
        {"carrier": "a", "rsrp": 0, "lat": 90, "lon": 180},
        {"carrier": "a", "rsrp": None, "lat": None, "lon": None, "cell_id": None},
    ]
    out = p.feed(b"".join(json.dumps(x).encode() + b"\n" for x in lines), 1.0)
    assert [r.rsrp for r in out] == [-200.0, 0.0, None] and p.errors == 0
    assert all(isinstance(r.rsrp, float) for r in out[:2])


def test_a_flood_of_hostile_lines_costs_little():
    """4 000 nested lines (8 MB) in one second of the loop at most."""
    p = JsonLinesParser(["a"])
    line = b'{"carrier": "a", "rsrp": ' + b"[" * 1500 + b"]" * 1500 + b"}\n"
    t0 = time.perf_counter()
    for _ in range(40):
        assert p.feed(line * 100, 0.0) == []
    assert p.errors == 4000
    assert time.perf_counter() - t0 < 5.0


def test_live_ingest_refuses_unusable_times_and_values():
    from contextdb.db import ContextDB
    from contextdb.live import LiveIngest
    from contextdb.store import MemoryStore

    live = LiveIngest(ContextDB(MemoryStore()))
    for t in (math.nan, math.inf, -math.inf, 1e300, 10**400):
        live.feed(Sample("a", t, "1", rsrp=-90.0))
    assert live.counters["samples_refused"] == 5
    live.feed(Sample("a", 1.7e9, "1", rsrp=-1e300, dl_bps=math.inf, rtt=10**400, loss=math.nan))
    assert live.counters["values_dropped"] == 1
    kept = live._carriers["a"].samples[0]
    assert math.isnan(kept.rsrp) and math.isnan(kept.dl_bps) and math.isnan(kept.rtt)
    assert live.flush(math.inf) == 0  # nothing usable, and nothing raised
