import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from middlebox.cli import main
from middlebox.paths import pki


def test_ca_node_gateway_files_and_modes(tmp_path):
    ca = pki.create_ca(tmp_path)
    node = pki.create_node(tmp_path, ["127.0.0.1", "node.example"])
    gw = pki.create_gateway(tmp_path, "train-7")
    assert gw.cert.name == "gateway-train-7.pem"
    for issued in (ca, node, gw):
        assert stat.S_IMODE(issued.key.stat().st_mode) == 0o600
        assert issued.cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind

    g = x509.load_pem_x509_certificate(gw.cert.read_bytes())
    c = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    assert g.issuer == c.subject
    g.verify_directly_issued_by(c)
    san = g.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:mpproxy:gateway:train-7"
    ]
    eku = g.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    n = x509.load_pem_x509_certificate(node.cert.read_bytes())
    nsan = n.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert nsan.get_values_for_type(x509.DNSName) == ["node.example"]
    assert [str(a) for a in nsan.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert pki.describe(gw.cert)["gateway_id"] == "train-7"


def test_refuses_to_overwrite_without_force(tmp_path):
    pki.create_ca(tmp_path)
    before = (tmp_path / "ca.pem").read_bytes()
    with pytest.raises(pki.PKIError, match="already exists.*--force"):
        pki.create_ca(tmp_path)
    assert (tmp_path / "ca.pem").read_bytes() == before
    pki.create_ca(tmp_path, force=True)
    assert (tmp_path / "ca.pem").read_bytes() != before
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_clear_errors(tmp_path):
    with pytest.raises(pki.PKIError, match="no CA here"):
        pki.create_gateway(tmp_path, "gw")
    pki.create_ca(tmp_path)
    with pytest.raises(pki.PKIError, match="--id"):
        pki.create_gateway(tmp_path, "bad id/with slash")
    with pytest.raises(pki.PKIError, match="--host"):
        pki.create_node(tmp_path, [])
    with pytest.raises(pki.PKIError, match="--days"):
        pki.create_gateway(tmp_path, "gw", days=0)
    (tmp_path / "ca.key").write_text("garbage")
    with pytest.raises(pki.PKIError, match="private key"):
        pki.create_gateway(tmp_path, "gw")
    other = tmp_path / "other"
    pki.create_ca(other)
    (tmp_path / "ca.key").write_bytes((other / "ca.key").read_bytes())
    with pytest.raises(pki.PKIError, match="does not belong"):
        pki.create_gateway(tmp_path, "gw")
    with pytest.raises(pki.PKIError, match="not a PEM certificate"):
        pki.describe(tmp_path / "ca.key")


def test_cli(tmp_path, capsys):
    d = str(tmp_path / "pki")
    assert main(["pki", "ca", "--dir", d]) == 0
    assert main(["pki", "node", "--dir", d, "--host", "10.0.0.1"]) == 0
    assert main(["pki", "gateway", "--dir", d, "--id", "bus-12"]) == 0
    assert "gateway-bus-12.key (mode 0600)" in capsys.readouterr().out
    assert main(["pki", "gateway", "--dir", d, "--id", "bus-12"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mpproxy: error:") and "--force" in err and "Traceback" not in err
    assert main(["pki", "gateway", "--dir", d, "--id", "bus-12", "--force"]) == 0
    assert main(["pki", "show", f"{d}/gateway-bus-12.pem"]) == 0
    assert "gateway_id: bus-12" in capsys.readouterr().out
