"""Does the throughput prediction beat repeating the last value? On constructed drives
where the truth is known: history that carries information (the throughput reverts to
a level set by the signal) and history that carries none (a random walk)."""

import math

import numpy as np

from contextdb.config import ContextDBConfig
from contextdb.evaluate import evaluate

from .helpers import T0, series

N = 1500  # seconds per drive


def _rsrp(rng: np.random.Generator) -> np.ndarray:
    """A slowly varying signal: -100 dBm +- 15, plus a little measurement noise."""
    t = np.arange(N)
    phase = rng.uniform(0, 2 * math.pi)
    return np.round(-100 + 15 * np.sin(2 * math.pi * t / 300 + phase) + rng.normal(0, 1, N))


def reverting_drive(seed: int) -> list:
    """log throughput = the signal's level + an AR(1) disturbance that decays by half
    every second: the last second says little on its own, the history says where the
    throughput returns to."""
    rng = np.random.default_rng(seed)
    rsrp = _rsrp(rng)
    level = np.log(20e6) + (rsrp + 100) / 10
    z = np.zeros(N)
    for i in range(1, N):
        z[i] = 0.5 * z[i - 1] + rng.normal(0, 0.8)
    return series(list(rsrp), list(np.exp(level + z)), t0=T0 + seed * 10_000)


def random_walk_drive(seed: int) -> list:
    """log throughput is a random walk, unrelated to the signal, from a level of its own
    per drive: the best forecast is the last value, and the history cannot know better."""
    rng = np.random.default_rng(seed)
    rsrp = _rsrp(rng)
    start = np.log(rng.uniform(2e6, 200e6))
    walk = np.clip(start + np.cumsum(rng.normal(0, 0.2, N)), np.log(1e5), np.log(1e9))
    return series(list(rsrp), list(np.exp(walk)), t0=T0 + seed * 10_000)


def _mae(drive, cfg=None):
    res = evaluate([drive(s) for s in (1, 2, 3)], [drive(4)], cfg)
    assert res.scored > 1000
    return {k: v / 1e6 for k, v in res.mae_bps.items()}


def test_beats_the_last_value_when_history_is_informative():
    mae = _mae(reverting_drive)
    assert mae["contextdb"] < 0.8 * mae["last value"]
    assert mae["contextdb"] < mae["rsrp only"]  # the last second still adds something


def test_does_not_lose_badly_when_history_is_not_informative():
    mae = _mae(random_walk_drive)
    assert mae["contextdb"] < 1.15 * mae["last value"]
    # what matching on the signal alone makes of it: far worse
    assert mae["rsrp only"] > 3 * mae["last value"]


def test_without_the_throughput_match_the_query_is_rsrp_only():
    mae = _mae(reverting_drive, ContextDBConfig(throughput_match_db=0.0))
    assert mae["contextdb"] == mae["rsrp only"]
