"""The HTTP listener of ``[metrics] listen``: /metrics, /status.json and the status page.

One ``http.server`` in one daemon thread, answering one request at a time (a slow or
hostile client costs at most ``REQUEST_TIMEOUT`` of this thread, never the data path and
never a thread per connection). It reads only :attr:`Publisher.snapshot` (see
:mod:`middlebox.observe.metrics` for why no lock is needed). The socket is bound in the
constructor, in the caller's thread and network namespace, so an address in use is a
start-up error with one clear line.

Routes: ``/metrics`` (Prometheus text format, from the client library's own encoder),
``/status.json`` (the snapshot), ``/`` (the page) and ``/static/<file>`` (its script and
style, shipped in this package; nothing is loaded from elsewhere).
"""

from __future__ import annotations

import json
import logging
import math
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from middlebox.config import MetricsConfig
from middlebox.errors import UserError
from middlebox.observe.metrics import Publisher, SnapshotCollector

log = logging.getLogger("mpproxy.metrics")

REQUEST_TIMEOUT = 5.0
STATIC = {  # file -> content type: the only files served
    "index.html": "text/html; charset=utf-8",
    "page.js": "text/javascript; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
}
# The page runs only its own script and style, and talks only to this listener.
CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'"


class MetricsError(UserError):
    """The metrics listener could not be started."""


def finite(value: object) -> object:
    """``value`` with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _static(name: str) -> bytes:
    return resources.files("middlebox.observe").joinpath("static", name).read_bytes()


class _Server(HTTPServer):
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], family: int, publisher: Publisher) -> None:
        self.address_family = family
        self.publisher = publisher
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(lambda: publisher.snapshot))
        self.pages = {name: _static(name) for name in STATIC}
        self.requests = 0
        self.errors = 0
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer's own looks the address up in DNS (getfqdn); a gateway may have none
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT
    server_version = "mpproxy"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        srv = self.server
        srv.requests += 1
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(srv.registry))
            elif path == "/status.json":
                doc = finite(srv.publisher.snapshot.document())
                body = json.dumps(doc, default=str, allow_nan=False, separators=(",", ":"))
                self._send(200, "application/json", body.encode())
            elif path in ("/", "/index.html"):
                self._send(200, STATIC["index.html"], srv.pages["index.html"])
            elif path.startswith("/static/") and path[8:] in STATIC:
                self._send(200, STATIC[path[8:]], srv.pages[path[8:]])
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        except Exception:  # a bad snapshot must not end the listener
            srv.errors += 1
            log.exception("metrics request %s failed", path[:64])
            try:
                self._send(500, "text/plain; charset=utf-8", b"internal error\n")
            except OSError:
                pass

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("metrics %s", format % args)


class MetricsServer:
    """Serves ``publisher``'s snapshots on ``listen`` (HOST:PORT) from a daemon thread."""

    def __init__(self, listen: str, publisher: Publisher) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self.httpd = _Server((host, int(port)), family, publisher)
        except OSError as e:
            raise MetricsError(f"metrics.listen {listen}: {e.strerror or e}") from None
        self.address = self.httpd.server_address
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, args=(0.5,), name="mpproxy-metrics", daemon=True
        )
        self.thread.start()
        log.info("metrics and status page on http://%s/", listen)

    @property
    def counters(self) -> dict[str, int]:
        return {"requests": self.httpd.requests, "errors": self.httpd.errors}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=2.0)


class Observer:
    """What a process holds: the publisher its loop ticks and the listener serving it.

    ``status`` builds the process's status dict; ``track`` (gateway with a context
    database) is :meth:`contextdb.db.ContextDB.track`."""

    def __init__(
        self,
        cfg: MetricsConfig,
        status: Callable[[], dict],
        track: Callable[[float], dict] | None = None,
    ) -> None:
        self.publisher = Publisher(
            status, cfg.interval, cfg.history, track=track, track_seconds=cfg.track_seconds
        )
        self.server = MetricsServer(cfg.listen, self.publisher)

    def tick(self, now: float) -> None:
        self.publisher.tick(now)

    def status(self) -> dict:
        """For the status dict: requests served, requests that failed, and the longest
        time a publication took the loop (ms)."""
        return {**self.server.counters, "publish_ms_max": round(self.publisher.publish_ms_max, 2)}

    def close(self) -> None:
        self.server.close()
