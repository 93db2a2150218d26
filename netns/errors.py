"""Errors a user of the testbed can cause.

They subclass nothing from ``middlebox`` (the testbed must stay usable on its own);
``netns.cli`` declares :class:`TestbedError` as its commands' user error, so ``mpproxy``
prints one line, not a traceback.
"""

from __future__ import annotations

from pathlib import Path


class TestbedError(Exception):
    """Impossible testbed parameters, missing permissions, a failed setup step."""

    __test__ = False  # not a pytest test class despite the name


class TraceError(TestbedError):
    """A trace file is missing or malformed; the message names the file and the line."""

    def __init__(self, path: str | Path, line: int | None, what: str) -> None:
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {what}")
