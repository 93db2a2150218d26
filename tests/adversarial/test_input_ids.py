"""Gateway ids: one rule, used by HELLO, the configuration and ``mpproxy pki``.

Before: ``mpproxy pki gateway --id`` with a non-ASCII id ended in a traceback from the
certificate library, and the configuration accepted non-ASCII ids (``str.isalnum``)
that HELLO refuses, so such a gateway redialled the node forever.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middlebox.config import ConfigError, GatewayConfig, from_dict
from middlebox.paths import pki
from middlebox.session import wire

ROOT = Path(__file__).resolve().parents[2]


def hello_accepts(gateway_id: str) -> bool:
    try:
        wire.Hello(gateway_id, 1, "c0", "lte")
    except wire.ProtocolError:
        return False
    return True


def config_accepts(gateway_id: str) -> bool:
    try:
        from_dict(GatewayConfig, {"id": gateway_id})
    except ConfigError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=70) | st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True))
def test_the_configuration_accepts_exactly_the_ids_hello_accepts(gateway_id):
    assert config_accepts(gateway_id) == hello_accepts(gateway_id)


@pytest.mark.parametrize("bad", ["trainé", "zug٣", "ｆｕｌｌ", "Ⅻ", "a b", "a/b", "", "x" * 65])
def test_non_ascii_and_other_bad_ids(tmp_path, bad):
    assert not config_accepts(bad) and not hello_accepts(bad)
    pki.create_ca(tmp_path, force=True)
    with pytest.raises(pki.PKIError, match=r"--id: must be 1..64 characters of \[A-Za-z0-9._-\]"):
        pki.create_gateway(tmp_path, bad)


@pytest.mark.parametrize(
    "argv, why",
    [
        (["gateway", "--id", "trainé"], "--id: must be 1..64"),
        (["gateway", "--id", "ok", "--days", "99999999999"], "--days: must be <= 36500"),
        (["gateway", "--id", "ok", "--days", "nan"], "--days: not an integer"),
        (["gateway", "--id", "ok", "--days", "0"], "--days: must be >= 1"),
        (["node", "--host", "nœud.example"], "--host: not a host name"),
        (["node", "--host", "a..b"], "--host: not a host name"),
    ],
)
def test_pki_cli_refuses_in_one_line(tmp_path, argv, why):
    d = tmp_path / "pki"
    pki.create_ca(d)
    cmd = [sys.executable, "-m", "middlebox.cli", "pki", argv[0], "--dir", str(d), *argv[1:]]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and why in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2, r.stderr  # argparse adds its usage line


def test_a_certificate_for_every_id_hello_accepts(tmp_path):
    pki.create_ca(tmp_path)
    for gid in ("a", "A-z_0.9", "x" * 64):
        out = pki.create_gateway(tmp_path, gid)
        assert pki.describe(out.cert)["gateway_id"] == gid
    assert pki.create_node(tmp_path, ["xn--nud-fka.example", "10.0.0.1", "*.example"]).cert
