"""Fixtures of the context package's tests: a short rail route and its per-carrier logs."""

from __future__ import annotations

import pytest

from netns import rail


@pytest.fixture(scope="module")
def route():
    return rail.generate(rail.RailParams(seed=7, carriers=2, duration_s=120))


@pytest.fixture(scope="module")
def csvs(route, tmp_path_factory):
    d = tmp_path_factory.mktemp("rail")
    files = []
    for k in range(2):
        p = d / f"rail{k}.csv"
        rail.write_csv(route, k, p)
        files.append(str(p))
    return files
