"""Namespace tests need root; elsewhere they are skipped with the reason, not failed."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root to create network namespaces")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)
