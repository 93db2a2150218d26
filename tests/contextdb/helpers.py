"""Builders of synthetic per-second series for the contextdb tests."""

from __future__ import annotations

import math

from contextdb.records import Sample

T0 = 1_600_000_000.0  # divisible by 5: window ends fall on every step from the start


def series(
    rsrp: list[float],
    dl: list[float] | None = None,
    cells: list[str | None] | str = "c1",
    carrier: str = "A",
    t0: float = T0,
    rtt: list[float] | None = None,
    skip: set[int] = frozenset(),
) -> list[Sample]:
    """One sample per second; indices in ``skip`` are left out of the log."""
    n = len(rsrp)
    dl = dl if dl is not None else [1e6] * n
    cells = [cells] * n if isinstance(cells, str) else cells
    rtt = rtt if rtt is not None else [math.nan] * n
    return [
        Sample(carrier, t0 + i, cells[i], rsrp[i], 52.0, -8.0, dl[i], rtt[i], 0.0)
        for i in range(n)
        if i not in skip
    ]
