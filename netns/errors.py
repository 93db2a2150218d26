"""Errors of the ``netns`` package: the namespace plumbing's and the testbed's.

Two families under one base, because two kinds of caller see them. The plumbing
(:mod:`netns.plumbing`) is used by the product (the gateway's listener and capture shell)
and by the testbed; its failures are :class:`PlumbingError`, which the gateway turns into
its own ``ListenerError``/``CaptureError``. The testbed's own failures (impossible
parameters, a bad trace, an emulator that did not start) are :class:`TestbedError`. A
testbed command catches :class:`NetnsError` to report either as one line.

They subclass nothing from ``middlebox`` (``netns`` sits below it, and the testbed must
stay usable on its own); ``netns.cli`` declares :class:`NetnsError` as its commands' user
error, so ``mpproxy`` prints one line, not a traceback.
"""

from __future__ import annotations

from pathlib import Path


class NetnsError(Exception):
    """Anything the ``netns`` package refuses or fails to do; the message says what."""


class PlumbingError(NetnsError):
    """A namespace, link, address, route, rule, sysctl or nftables step failed.

    The message names the step (and the namespace when it is not this thread's) and the
    kernel's or the command's reason, e.g. missing permissions or an existing name.
    """


class TestbedError(NetnsError):
    """Impossible testbed parameters or a failed testbed step (emulator, state)."""

    __test__ = False  # not a pytest test class despite the name


class TraceError(TestbedError):
    """A trace file is missing or malformed; the message names the file and the line."""

    def __init__(self, path: str | Path, line: int | None, what: str) -> None:
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {what}")
