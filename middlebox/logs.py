"""One log format for every mpproxy process.

Lines are ``time level logger: message key=value ...`` so that grep and a log shipper
both cope; ``kv`` renders structured fields in that order.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s"
DATEFMT = "%Y-%m-%dT%H:%M:%S"


def setup(verbosity: int = 0, level: str | None = None) -> None:
    """Configure the root logger. ``verbosity``: -1 quiet, 0 default, 1+ debug."""
    if level is not None and verbosity == 0:
        lvl = getattr(logging, level.upper())
    elif verbosity < 0:
        lvl = logging.WARNING
    elif verbosity > 0:
        lvl = logging.DEBUG
    else:
        lvl = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)


def kv(**fields: object) -> str:
    """Structured fields for a log message: ``kv(path='a', rtt_ms=12.5)``."""
    return " ".join(f"{k}={v}" for k, v in fields.items())
