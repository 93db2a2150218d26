"""Shared test fixtures: paths to the bundled traces and helpers for running the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT.parent / "shared" / "traces"


@pytest.fixture
def traces() -> Path:
    if not TRACES.is_dir():
        pytest.skip(f"bundled traces not found at {TRACES}")
    return TRACES
