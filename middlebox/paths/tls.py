"""TLS contexts of the carrier paths: TLS 1.3 only, both ends authenticated.

Paths cross the public Internet, so the gateway (TLS client) verifies the node's
certificate and host name, and the node (TLS server) requires a client certificate signed
by the same CA and reads the gateway id from it. The node must then compare that id with
the one the gateway sends in HELLO (:func:`check_gateway_id`): a gateway may only speak
for itself. Certificates come from ``mpproxy pki`` (:mod:`middlebox.paths.pki`).

``tls.plaintext = true`` turns all of this off for benchmarks on a closed testbed; the
context functions then return None and log a loud warning every time they are asked,
and refuse an address (the node's listen address, the gateway's node address) that is
neither loopback nor the testbed's (:func:`middlebox.config.plaintext_error`).
The contexts work with blocking sockets, non-blocking sockets and ``ssl.MemoryBIO``
alike; the shells choose.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from middlebox.config import TLSConfig, plaintext_error
from middlebox.errors import UserError
from middlebox.paths.pki import GATEWAY_URI_PREFIX

log = logging.getLogger("mpproxy.tls")

PLAINTEXT_WARNING = (
    "TLS IS DISABLED (tls.plaintext = true): carrier paths are neither encrypted nor "
    "authenticated; anyone on the path can read and inject traffic. Benchmarks on a "
    "closed testbed only."
)


class TLSSetupError(UserError):
    """The TLS configuration cannot be used (missing or bad files)."""


class PeerAuthError(Exception):
    """An authenticated peer is not who it claims to be (or carries no gateway id)."""


def gateway_context(cfg: TLSConfig, node: str | None = None) -> ssl.SSLContext | None:
    """The gateway's client context; None when plaintext is configured (logged loudly;
    ``node``, the ``gateway.node`` address, must then be loopback or the testbed's).

    Connect with ``wrap_socket(sock, server_hostname=<node host>)``: the node's certificate
    must name that host (``mpproxy pki node --host``)."""
    if _plaintext(cfg, "gateway.node", node):
        return None
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, cfg)
    ctx.check_hostname = True
    return ctx


def node_context(cfg: TLSConfig, listen: str | None = None) -> ssl.SSLContext | None:
    """The node's server context; requires a client certificate from the CA. With
    plaintext: None, and ``listen`` (``node.listen``) must be loopback or the testbed's."""
    if _plaintext(cfg, "node.listen", listen):
        return None
    return _base(ssl.PROTOCOL_TLS_SERVER, cfg)


def peer_gateway_id(conn: ssl.SSLSocket | ssl.SSLObject) -> str:
    """The gateway id in the verified client certificate of ``conn`` (node side).

    Raises :class:`PeerAuthError` when the certificate carries no gateway id (e.g. a
    node certificate presented as a client certificate)."""
    cert = conn.getpeercert()
    if not cert:
        raise PeerAuthError("peer presented no verified certificate")
    ids = [
        value[len(GATEWAY_URI_PREFIX) :]
        for kind, value in cert.get("subjectAltName", ())
        if kind == "URI" and value.startswith(GATEWAY_URI_PREFIX)
    ]
    if len(ids) != 1 or not ids[0]:
        raise PeerAuthError(f"peer certificate names {len(ids)} gateway ids, expected exactly 1")
    return ids[0]


def check_gateway_id(conn: ssl.SSLSocket | ssl.SSLObject, claimed: str) -> str:
    """Compare the id a gateway claims (in HELLO) with its certificate; return it."""
    actual = peer_gateway_id(conn)
    if actual != claimed:
        raise PeerAuthError(f"gateway claims id {claimed!r} but its certificate says {actual!r}")
    return actual


def _plaintext(cfg: TLSConfig, key: str, address: str | None) -> bool:
    if cfg.plaintext:
        if address is not None and (err := plaintext_error(key, address)) is not None:
            raise err
        log.warning(PLAINTEXT_WARNING)
        return True
    return False


def _base(protocol: int, cfg: TLSConfig) -> ssl.SSLContext:
    for key in ("ca", "cert", "key"):
        value = getattr(cfg, key)
        if not value:
            raise TLSSetupError(
                f"tls.{key}: required unless tls.plaintext = true "
                "(create the files with 'mpproxy pki')"
            )
        if not Path(value).is_file():
            raise TLSSetupError(f"tls.{key}: {value}: no such file")
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=cfg.ca)
    except (ssl.SSLError, OSError) as e:
        raise TLSSetupError(f"tls.ca: {cfg.ca}: not a usable CA certificate ({e})") from None
    try:
        ctx.load_cert_chain(cfg.cert, cfg.key)
    except (ssl.SSLError, OSError) as e:
        raise TLSSetupError(
            f"tls.cert/tls.key: {cfg.cert}, {cfg.key}: not a certificate and its key ({e})"
        ) from None
    return ctx
