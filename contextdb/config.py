"""Parameters of the context database an operator may change.

A frozen dataclass in the style of ``middlebox.config`` (each field documents itself in
its metadata), defined here because contextdb must not import middlebox. The gateway's
TOML file carries it as the ``[contextdb]`` section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def _opt(default, doc: str, *, min: float | None = None, max: float | None = None, check=None):
    return field(default=default, metadata={"doc": doc, "min": min, "max": max, "check": check})


def _check_fleet_url(value: str) -> str | None:
    if value == "" or value.startswith("redis://"):
        return None
    return "must be empty or redis://[[USER]:PASSWORD@]HOST:PORT[/DB]"


def _check_line(value: str) -> str | None:
    if not value or len(value) > 64 or not all(c.isalnum() or c in "-_." for c in value):
        return f"must be 1..64 characters of letters, digits, '-', '_' or '.' (got {value!r})"
    return None


@dataclass(frozen=True)
class ContextDBConfig:
    path: str = _opt(
        "contextdb.sqlite", "File of the embedded store (sqlitedict, one file per database)."
    )
    window_s: int = _opt(
        5, "Length W of an RSRP window in seconds (one sample per second).", min=2, max=60
    )
    overlap: float = _opt(
        0.8,
        "Fraction by which consecutive windows overlap; the step is "
        "max(1, round(W * (1 - overlap))) seconds.",
        min=0.0,
        max=0.95,
    )
    lookahead_s: int = _opt(
        5,
        "Seconds after a window over which throughput, RTT, loss and disconnections are "
        "measured and predicted.",
        min=1,
        max=60,
    )
    k: int = _opt(64, "Nearest stored windows K used for a prediction.", min=1, max=1024)
    throughput_match_db: float = _opt(
        100.0,
        "When the caller passes the carrier's throughput of the last second, stored windows "
        "are matched on it too: a factor e (2.7) between two throughputs weighs as much as "
        "this many dB of RSRP difference in one second. 0: match on RSRP only.",
        min=0.0,
        max=10000.0,
    )
    min_neighbors: int = _opt(
        3, "Fewest stored windows a cell needs before it predicts anything.", min=1, max=1024
    )
    match_threshold_db: float = _opt(
        3.0,
        "A neighbour counts towards the confidence N/K when its RMS RSRP difference per "
        "second is at most this many dB.",
        min=0.1,
        max=60.0,
    )
    fill_gap_s: int = _opt(
        2,
        "Missing seconds up to this length are bridged (RSRP interpolated, cell carried); "
        "longer holes count as a disconnection.",
        min=0,
        max=30,
    )
    success_max_s: float = _opt(
        0.1, "A disconnection shorter than this is a successful handover.", min=0.0, max=5.0
    )
    failure_max_s: float = _opt(
        5.0,
        "A disconnection up to this long is a handover failure; longer ones are outages.",
        min=0.1,
        max=60.0,
    )
    position_bin_m: float = _opt(
        50.0,
        "Length of a position bin along the line, metres: the history of each carrier is "
        "kept per bin (what it carried there, where it went dark) for position forecasts.",
        min=5.0,
        max=5000.0,
    )
    fleet_url: str = _opt(
        "",
        "Shared fleet store, redis://HOST:PORT[/DB]; empty: the embedded store only.",
        check=_check_fleet_url,
    )
    line: str = _opt(
        "default",
        "Name of the line (route) whose history this gateway shares with the fleet.",
        check=_check_line,
    )
    fleet_timeout: float = _opt(
        5.0,
        "Seconds a fleet store connect, read or write may take; then the connection is "
        "dropped and dialled again with back-off. In the gateway and node this I/O runs in "
        "a background thread, never in the data path.",
        min=0.1,
        max=120.0,
    )
    fleet_retry_max: float = _opt(
        60.0,
        "Longest delay between attempts to reach the fleet store (from 1 s, doubling).",
        min=1.0,
        max=3600.0,
    )
    fleet_refresh: float = _opt(
        30.0,
        "Seconds between fetches of what other gateways added to the fleet store.",
        min=1.0,
        max=86400.0,
    )
    fleet_max_reply: int = _opt(
        16 << 20,
        "Largest fleet store reply, in bytes (one chunk, or a page of chunks fetched in "
        "smaller pages when larger): the connection stops reading there, so a reply "
        "holds at most this much memory; a larger chunk is refused (counted).",
        min=1 << 16,
        max=512 << 20,
    )
    fleet_max_queued: int = _opt(
        64 << 20,
        "Bytes of learnt history kept for the fleet store while it is unreachable; beyond "
        "it the oldest is dropped (counted in status as fleet dropped_chunks).",
        min=1 << 20,
        max=4 << 30,
    )

    def step_s(self) -> int:
        """Seconds between the starts of consecutive windows."""
        return max(1, round(self.window_s * (1.0 - self.overlap)))

    def distance_threshold(self) -> float:
        """Euclidean distance equal to ``match_threshold_db`` RMS over a window."""
        return self.match_threshold_db * math.sqrt(self.window_s)
