"""Observability of gateway and node: Prometheus metrics and the live status page.

:mod:`middlebox.observe.metrics` turns the status snapshot the data-path loop publishes
into Prometheus series; :mod:`middlebox.observe.web` serves them, the snapshot as JSON
and the page (``static/``) from one HTTP listener in a thread (``[metrics] listen``).
"""
