"""Shared test fixtures: paths to the bundled traces, a client/listener namespace pair."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT.parent / "shared" / "traces"


@pytest.fixture
def traces() -> Path:
    if not TRACES.is_dir():
        pytest.skip(f"bundled traces not found at {TRACES}")
    return TRACES


@pytest.fixture
def ns_pair(tmp_path: Path):
    """Client and listener namespaces joined by a veth (``bench.tcp_bench.NsPair``), removed
    after the test; the endpoint is started in the listener with ``ns_pair.start(...)``."""
    if os.geteuid() != 0:
        pytest.skip("needs root for namespaces")
    from bench.tcp_bench import NsPair

    with NsPair(tmp_path) as p:
        yield p
