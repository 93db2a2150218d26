"""A delivery trace from a command-line spec: every source the testbed can replay.

``<N>mbit`` (fixed rate), a Mahimahi file, ``<file>.csv[:ul=<Mbit/s>]`` (5G drive log;
its uplink is the one the testbed assumes, :data:`netns.traces.FIVEG_UPLINK_MBIT`) or
``rail:<seed>:<carrier>`` (synthetic high-speed rail route, new per seed) or
``line:<seed>:day:<n>:<carrier>`` (day n on rail line seed: the same line every day).
It sits above both the trace readers (:mod:`netns.traces`) and the rail generator
(:mod:`netns.rail`), which builds its traces from the readers' records, so neither of
the two needs the other's module.
"""

from __future__ import annotations

import re

from netns import rail
from netns.errors import TraceError
from netns.traces import (
    FIVEG_UPLINK_MBIT,
    DeliveryTrace,
    fixed_rate,
    read_5g_csv,
    read_mahimahi,
)


def load(spec: str, direction: str = "down") -> DeliveryTrace:
    """The trace ``spec`` names; ``direction`` picks DL or UL of a 5G log or a rail carrier."""
    text = spec.strip()
    low = text.lower()
    if low.endswith("mbit") and _is_number(low[:-4]):
        return fixed_rate(float(low[:-4]) * 1e6)
    if low.startswith(("rail:", "line:")):
        head, _, index = text.rpartition(":")
        try:
            if not index.isdigit():
                raise ValueError
            route = rail.route_from_spec(head)
        except ValueError:
            raise TraceError(
                text,
                None,
                "rail trace spec is rail:<seed>:<carrier index> or "
                f"{rail.LINE_SPEC}:<carrier index>",
            ) from None
        carrier = int(index)
        if carrier >= len(route.carriers):
            raise TraceError(text, None, f"route has {len(route.carriers)} carriers")
        return route.delivery(carrier, direction)
    csv_spec = _CSV_SPEC.fullmatch(text)
    if csv_spec is not None:
        path, ul = csv_spec.group(1), csv_spec.group(2)
        if ul is not None and not _is_number(ul):
            raise TraceError(text, None, f"ul= takes a rate in Mbit/s > 0 (got {ul!r})")
        up = float(ul) if ul is not None else FIVEG_UPLINK_MBIT
        return read_5g_csv(path).delivery(direction, uplink_mbit=up)
    return read_mahimahi(text)


_CSV_SPEC = re.compile(r"(.+\.csv)(?::ul=([^:]*))?", re.IGNORECASE)


def _is_number(s: str) -> bool:
    try:
        return float(s) > 0
    except ValueError:
        return False
