"""Shared parts of the end-to-end tests on rail routes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from netns import rail
from netns.topology import SERVER_ADDRS, CarrierSpec, TestbedSpec

RAIL_SEED = 7
RAIL_CARRIERS = 3


@dataclass
class RailCase:
    """A generated rail route: the route, one context CSV per carrier (its cells, RSRP and
    positions, as ``[context] replay_files``), and a testbed whose links play it."""

    route: rail.RailRoute
    files: list[str]
    spec: TestbedSpec


@pytest.fixture
def rail_case(tmp_path: Path) -> RailCase:
    """Rail route 7 on three carriers (its tunnel, trace seconds 3-14, darkens them all)."""
    route = rail.generate(rail.RailParams(seed=RAIL_SEED, carriers=RAIL_CARRIERS))
    files = []
    for k in range(RAIL_CARRIERS):
        p = tmp_path / f"rail{k}.csv"
        rail.write_csv(route, k, p)
        files.append(str(p))
    carriers = tuple(
        CarrierSpec(f"rail:{RAIL_SEED}:{k}", delay_ms=10) for k in range(RAIL_CARRIERS)
    )
    return RailCase(route, files, TestbedSpec(carriers=carriers, clients=RAIL_CARRIERS))


@pytest.fixture
def download() -> Callable:
    """``download(bed, seconds)`` starts an iperf3 download (``-R``) from the first server
    to the client through the proxy; returns (server, client) processes, the client's
    output on its stdout."""

    def start(bed, seconds: int) -> tuple[subprocess.Popen, subprocess.Popen]:
        srv = bed.server(["iperf3", "-s", "-p", "5201", "-1"], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        cl = bed.tb.popen(
            "client",
            ["iperf3", "-c", SERVER_ADDRS[0], "-p", "5201", "-t", str(seconds), "-R"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        return srv, cl

    return start
