import logging
import socket
import ssl
import threading

import pytest

from middlebox.config import TLSConfig
from middlebox.paths import pki, tls


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA with a node and two gateways, and a second, unrelated CA with its own pair."""
    good = tmp_path_factory.mktemp("pki")
    pki.create_ca(good)
    pki.create_node(good, ["127.0.0.1"])
    pki.create_gateway(good, "train-1")
    rogue = tmp_path_factory.mktemp("rogue")
    pki.create_ca(rogue, name="rogue CA")
    pki.create_node(rogue, ["127.0.0.1"])
    pki.create_gateway(rogue, "train-1")
    return good, rogue


def cfg(ca_dir, cert_dir, name):
    return TLSConfig(
        ca=str(ca_dir / "ca.pem"),
        cert=str(cert_dir / f"{name}.pem"),
        key=str(cert_dir / f"{name}.key"),
    )


def handshake(server_ctx, client_ctx, hostname="127.0.0.1"):
    """One TLS connection over loopback; returns what each side saw."""
    out = {}
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(5)

    def serve():
        try:
            conn, _ = lsock.accept()
        except OSError as e:
            out["server_error"] = e
            return
        conn.settimeout(5)
        try:
            s = server_ctx.wrap_socket(conn, server_side=True)
            out["version"] = s.version()
            try:
                out["gateway_id"] = tls.peer_gateway_id(s)
                tls.check_gateway_id(s, "train-2")
            except tls.PeerAuthError as e:
                out["auth_error"] = e
            s.sendall(b"hello")
            s.close()
        except (ssl.SSLError, OSError) as e:
            out["server_error"] = e
            conn.close()

    t = threading.Thread(target=serve)
    t.start()
    c = socket.create_connection(lsock.getsockname(), timeout=5)
    try:
        cs = client_ctx.wrap_socket(c, server_hostname=hostname)
        out["data"] = cs.recv(5)
        cs.close()
    except (ssl.SSLError, OSError) as e:
        out["client_error"] = e
        c.close()
    t.join(10)
    lsock.close()
    assert not t.is_alive()
    return out


def test_good_pair_connects_tls13_and_reads_gateway_id(certs):
    good, _ = certs
    node = tls.node_context(cfg(good, good, "node"))
    gw = tls.gateway_context(cfg(good, good, "gateway-train-1"))
    out = handshake(node, gw)
    assert out.get("data") == b"hello", out
    assert out["version"] == "TLSv1.3"
    assert out["gateway_id"] == "train-1"
    # the same certificate claiming another id in HELLO is caught
    assert "train-1" in str(out["auth_error"]) and "train-2" in str(out["auth_error"])


def test_gateway_refuses_node_from_unknown_ca(certs):
    good, rogue = certs
    node = tls.node_context(cfg(rogue, rogue, "node"))
    gw = tls.gateway_context(cfg(good, good, "gateway-train-1"))
    out = handshake(node, gw)
    assert "data" not in out
    assert isinstance(out["client_error"], ssl.SSLCertVerificationError)


def test_node_refuses_gateway_from_unknown_ca(certs):
    good, rogue = certs
    node = tls.node_context(cfg(good, good, "node"))
    gw = tls.gateway_context(cfg(good, rogue, "gateway-train-1"))  # trusts the node, wrong cert
    out = handshake(node, gw)
    assert "gateway_id" not in out and "data" not in out
    assert "certificate verify failed" in str(out["server_error"]).lower()


def test_node_refuses_missing_client_certificate(certs):
    good, _ = certs
    node = tls.node_context(cfg(good, good, "node"))
    anon = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anon.load_verify_locations(cafile=str(good / "ca.pem"))
    out = handshake(node, anon)
    assert "gateway_id" not in out and "data" not in out
    assert "certificate" in str(out["server_error"]).lower()


def test_node_certificate_cannot_act_as_gateway(certs):
    good, _ = certs
    node = tls.node_context(cfg(good, good, "node"))
    impostor = tls.gateway_context(cfg(good, good, "node"))  # serverAuth-only certificate
    out = handshake(node, impostor)
    assert "gateway_id" not in out and "data" not in out
    assert "unsuitable certificate purpose" in str(out["server_error"])


def test_gateway_checks_node_host_name(certs):
    good, _ = certs
    node = tls.node_context(cfg(good, good, "node"))
    gw = tls.gateway_context(cfg(good, good, "gateway-train-1"))
    out = handshake(node, gw, hostname="other.example")
    assert isinstance(out.get("client_error"), ssl.SSLCertVerificationError)


def test_tls12_is_refused(certs):
    good, _ = certs
    node = tls.node_context(cfg(good, good, "node"))
    old = tls.gateway_context(cfg(good, good, "gateway-train-1"))
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_2
    out = handshake(node, old)
    assert "data" not in out and "client_error" in out


def test_plaintext_only_when_asked_and_loudly(caplog):
    with caplog.at_level(logging.WARNING, logger="mpproxy.tls"):
        assert tls.gateway_context(TLSConfig(plaintext=True)) is None
        assert tls.node_context(TLSConfig(plaintext=True)) is None
    assert sum("TLS IS DISABLED" in r.getMessage() for r in caplog.records) == 2
    with pytest.raises(tls.TLSSetupError, match=r"tls\.ca: required unless tls\.plaintext"):
        tls.node_context(TLSConfig())


def test_bad_files_give_clear_errors(tmp_path, certs):
    good, _ = certs
    with pytest.raises(tls.TLSSetupError, match="no such file"):
        tls.node_context(TLSConfig(ca=str(tmp_path / "x.pem"), cert="a", key="b"))
    junk = tmp_path / "junk.pem"
    junk.write_text("junk")
    with pytest.raises(tls.TLSSetupError, match="not a usable CA"):
        tls.node_context(
            cfg(good, good, "node").__class__(ca=str(junk), cert=str(junk), key=str(junk))
        )
    mismatched = TLSConfig(
        ca=str(good / "ca.pem"), cert=str(good / "node.pem"), key=str(good / "gateway-train-1.key")
    )
    with pytest.raises(tls.TLSSetupError, match="not a certificate and its key"):
        tls.node_context(mismatched)
