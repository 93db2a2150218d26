"""Certificates for the carrier paths: one CA, one node certificate, one per gateway.

Every path is TLS 1.3 with mutual authentication (see :mod:`middlebox.paths.tls`), so both ends
need a certificate signed by a CA they share. This module makes them with the
``cryptography`` package rather than by driving the ``openssl`` command: the extensions
that matter here (the gateway id as a URI subjectAltName, key usages, CA constraints) are
typed calls instead of a generated ``openssl.cnf``, errors are exceptions instead of
stderr to parse, and nothing depends on which OpenSSL command-line version a gateway's
image ships.

A gateway certificate names its gateway id twice: as the subject common name (for people)
and as the subjectAltName URI ``urn:mpproxy:gateway:<id>`` (for the node, which matches it
against the id the gateway sends in HELLO). Gateway certificates carry the clientAuth
extended key usage and node certificates serverAuth, so OpenSSL refuses either one in the
other's role. Keys are ECDSA P-256 (small, fast handshakes), stored unencrypted with mode
0600 because the processes start unattended.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from middlebox.errors import UserError
from middlebox.session.wire import name_error

GATEWAY_URI_PREFIX = "urn:mpproxy:gateway:"
CA_CERT, CA_KEY = "ca.pem", "ca.key"
NODE_CERT, NODE_KEY = "node.pem", "node.key"


class PKIError(UserError):
    """A certificate could not be created or read."""


@dataclass(frozen=True)
class Issued:
    """Where a certificate and its key were written."""

    cert: Path
    key: Path


def gateway_files(gateway_id: str) -> tuple[str, str]:
    return f"gateway-{gateway_id}.pem", f"gateway-{gateway_id}.key"


def gateway_uri(gateway_id: str) -> str:
    return GATEWAY_URI_PREFIX + gateway_id


def create_ca(
    directory: str | Path, name: str = "mpproxy CA", days: int = 3650, force: bool = False
) -> Issued:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    out = _targets(directory, CA_CERT, CA_KEY, force)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        _builder(subject, subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    cert = builder.sign(key, hashes.SHA256())
    return _write(out, cert, key)


def create_node(
    directory: str | Path, hosts: list[str], days: int = 825, force: bool = False
) -> Issued:
    """The node's server certificate; ``hosts`` are the names or addresses gateways dial."""
    if not hosts:
        raise PKIError(
            "a node certificate needs at least one --host (the name or address gateways connect to)"
        )
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            if not _dns_name(h):
                raise PKIError(
                    f"--host: not a host name or address: {h!r} (a name is ASCII letters, "
                    "digits, '-' and '.'; write an internationalised name in its xn-- form)"
                ) from None
            names.append(x509.DNSName(h))
    out = _targets(directory, NODE_CERT, NODE_KEY, force)
    return _issue(
        directory, out, f"mpproxy node {hosts[0]}", names, ExtendedKeyUsageOID.SERVER_AUTH, days
    )


def create_gateway(
    directory: str | Path, gateway_id: str, days: int = 825, force: bool = False
) -> Issued:
    """A gateway's client certificate carrying its id (subject CN and URI SAN); the id
    must be one HELLO accepts (:func:`middlebox.session.wire.name_error`)."""
    if err := name_error(gateway_id):
        raise PKIError(f"--id: {err}")
    out = _targets(directory, *gateway_files(gateway_id), force)
    names = [x509.UniformResourceIdentifier(gateway_uri(gateway_id))]
    return _issue(directory, out, gateway_id, names, ExtendedKeyUsageOID.CLIENT_AUTH, days)


def describe(path: str | Path) -> dict[str, str]:
    """Subject, issuer, validity, names and gateway id of a PEM certificate, for people."""
    cert = _load_cert(Path(path))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in san]
    except x509.ExtensionNotFound:
        names = []
    gw = [n[len(GATEWAY_URI_PREFIX) :] for n in names if n.startswith(GATEWAY_URI_PREFIX)]
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "names": ", ".join(names) or "-",
        "gateway_id": gw[0] if gw else "-",
    }


# -- internals ---------------------------------------------------------------------------


def _dns_name(h: str) -> bool:
    """A host name as a certificate carries it: ASCII labels of letters, digits and '-'
    (a leading '*.' for a wildcard), at most 253 characters."""
    labels = h.removeprefix("*.").split(".")
    return (
        h.isascii()
        and 0 < len(h) <= 253
        and all(0 < len(x) <= 63 and x.replace("-", "").isalnum() for x in labels)
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key, days: int
) -> x509.CertificateBuilder:
    if days < 1:
        raise PKIError(f"--days: must be at least 1 (got {days})")
    now = datetime.datetime.now(datetime.UTC)
    try:
        not_after = now + datetime.timedelta(days=days)
    except OverflowError:  # past the year 9999: no certificate can say it
        raise PKIError(f"--days: too large (got {days})") from None
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _issue(
    directory: str | Path,
    out: Issued,
    common_name: str,
    names: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
) -> Issued:
    ca_cert, ca_key = _load_ca(Path(directory))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _builder(subject, ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    return _write(out, builder.sign(ca_key, hashes.SHA256()), key)


def _targets(directory: str | Path, cert_name: str, key_name: str, force: bool) -> Issued:
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise PKIError(f"{d}: not a directory")
    out = Issued(d / cert_name, d / key_name)
    if not force:
        existing = [str(p) for p in (out.cert, out.key) if p.exists()]
        if existing:
            raise PKIError(f"{', '.join(existing)}: already exists (use --force to replace)")
    return out


def _write(out: Issued, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        out.key.parent.mkdir(parents=True, exist_ok=True)
        _write_file(out.key, key_pem, 0o600)
        _write_file(out.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as e:
        raise PKIError(f"{e.filename or out.key.parent}: cannot write: {e.strerror}") from None
    return out


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write through a fresh file created with ``mode``, so a key is never readable by
    others, not even for a moment, and replace the old file atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits; never added any
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not cert_path.exists() or not key_path.exists():
        raise PKIError(
            f"{directory}: no CA here ({CA_CERT} and {CA_KEY}); "
            f"run 'mpproxy pki ca --dir {directory}' first"
        )
    cert = _load_cert(cert_path)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise PKIError(f"{key_path}: not an unencrypted PEM private key ({e})") from None
    except OSError as e:
        raise PKIError(f"{key_path}: cannot read: {e.strerror}") from None
    if key.public_key() != cert.public_key():
        raise PKIError(f"{key_path}: does not belong to {cert_path}")
    return cert, key  # type: ignore[return-value]


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise PKIError(f"{path}: no such file") from None
    except OSError as e:
        raise PKIError(f"{path}: cannot read: {e.strerror}") from None
    except ValueError:
        raise PKIError(f"{path}: not a PEM certificate") from None
