"""Observability of gateway and node: Prometheus metrics and the live status page.

:mod:`middlebox.observe.metrics` turns the status snapshot the data-path loop publishes
into Prometheus series; :mod:`middlebox.observe.web` serves them, the snapshot as JSON
and the page (``static/``) from one HTTP listener in a thread (``[metrics] listen``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from middlebox.config import MetricsConfig
    from middlebox.observe.web import Observer


def start(
    cfg: MetricsConfig,
    status: Callable[[], dict],
    track: Callable[[float], dict] | None = None,
) -> Observer | None:
    """The process's observer (:class:`~middlebox.observe.web.Observer`), or None when
    ``[metrics] listen`` is empty (the default). The listener's modules (the Prometheus
    client, ``http.server``) are imported only then: a process without metrics does not
    pay their start-up time."""
    if not cfg.listen:
        return None
    from middlebox.observe.web import Observer

    return Observer(cfg, status, track)
