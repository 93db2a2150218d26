"""Hostile or mistaken configuration: every refusal is one line naming the file and the key.

NaN passes every range check (``nan < 1.0`` and ``nan > 600.0`` are both false), so
before the loader refused it ``paths.user_timeout = nan`` was "ok" and then stopped the
gateway at its first dial.
"""

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from middlebox import config
from middlebox.config import Config, ConfigError

ROOT = Path(__file__).resolve().parents[2]


def numeric_options(cls=Config, prefix=""):
    """(dotted key, section path, type) of every int and float option, carriers included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from numeric_options(tp, key + ".")
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            yield from numeric_options(typing.get_args(tp)[0], key + "[0].")
        elif tp in (int, float):
            yield key, tp


OPTIONS = list(numeric_options())


def toml_for(key: str, value: str) -> str:
    """A file setting ``key`` (``gateway.carriers[0].paths`` style) to the TOML ``value``."""
    if "[0]." in key:
        table, name = key.split("[0].")
        return f"[[{table}]]\nname = 'a'\n{name} = {value}\n"
    table, name = key.rsplit(".", 1)
    return f"[{table}]\n{name} = {value}\n"


def refused(tmp_path: Path, text: str) -> str:
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and "\n" not in msg, msg
    return msg


def test_the_options_are_found():
    keys = {k for k, _ in OPTIONS}
    assert {"paths.user_timeout", "gateway.carriers[0].paths", "contextdb.k"} <= keys
    assert len(keys) > 60


@pytest.mark.parametrize("key, tp", OPTIONS, ids=[k for k, _ in OPTIONS])
def test_every_numeric_option_refuses_nan_infinities_and_huge(tmp_path, key, tp):
    bad = ["nan", "inf", "-inf", "+nan", "1e999", str(1 << 64), str(-(1 << 70))]
    if tp is int:
        bad = [str(1 << 64), str(-(1 << 70)), "9" * 30]
    for value in bad:
        msg = refused(tmp_path, toml_for(key, value))
        assert f"{key}: must be" in msg, (value, msg)
        assert "finite" in msg or "64 bits" in msg or ">=" in msg or "<=" in msg, msg


@pytest.mark.parametrize("key, tp", OPTIONS, ids=[k for k, _ in OPTIONS])
def test_every_numeric_option_has_a_documented_range(key, tp):
    """An operator limit has a default, a minimum and a maximum (docs/configuration.md)."""
    section: typing.Any = Config
    for part in key.replace("[0]", "").split("."):
        hints = typing.get_type_hints(section)
        fld = next(f for f in dataclasses.fields(section) if f.name == part)
        section = hints[part]
        if typing.get_origin(section) is list:
            section = typing.get_args(section)[0]
    assert fld.metadata.get("min") is not None and fld.metadata.get("max") is not None, key


def test_user_timeout_nan_names_the_option(tmp_path):
    msg = refused(tmp_path, "[paths]\nuser_timeout = nan\n")
    assert "paths.user_timeout: must be a finite number (got nan)" in msg


@pytest.mark.parametrize(
    "text, why",
    [
        ("[gateway]\nid = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ("[gateway]\nbuffer_bytes = " + "9" * 5000 + "\n", "not usable TOML"),
        ("[gateway]\nid = " + "[" * 400 + "]" * 400 + "\n", "gateway.id: must be a string"),
        ("[gateway]\nid = '" + "x" * 100_000 + "'\n", "gateway.id: must be 1..64"),
        ("[node]\nlisten = '1.2.3.4:²'\n", "node.listen: must be HOST:PORT"),
        ("[node]\nlisten = '1.2.3.4:٤٤٣'\n", "node.listen: must be HOST:PORT"),
        ("[[gateway.acl]]\ndst_ports = ['²']\n", "gateway.acl[0].dst_ports: must be a list"),
    ],
)
def test_bombs_and_unicode_digits_are_one_line(tmp_path, text, why):
    msg = refused(tmp_path, text)
    assert why in msg and len(msg) < 400, msg


def test_ids_are_what_hello_accepts(tmp_path):
    for bad in ("trainé", "zug-٣", "a b", "", "x" * 65, "ｆｕｌｌ"):
        text = f"[gateway]\nid = '{bad}'\n"
        assert "gateway.id: must be 1..64 characters of [A-Za-z0-9._-]" in refused(tmp_path, text)
    assert "node.id" in refused(tmp_path, "[node]\nid = 'nœud'\n")
    assert "carriers[0].name" in refused(tmp_path, "[[gateway.carriers]]\nname = 'vodafoné'\n")


def test_config_check_cli_refuses_nan_in_one_line(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[paths]\nuser_timeout = nan\n")
    r = subprocess.run(
        [sys.executable, "-m", "middlebox.cli", "config", "check", str(p)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "paths.user_timeout" in r.stderr


# -- tls.plaintext ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, address, ok",
    [
        ("node.listen", "127.0.0.1:4433", True),
        ("node.listen", "[::1]:4433", True),
        ("node.listen", "100.65.0.2:4433", True),  # the testbed's node
        ("gateway.node", "100.65.0.2:4433", True),
        ("node.listen", "0.0.0.0:4433", False),  # every interface, public ones too
        ("node.listen", "[::]:4433", False),
        ("node.listen", "203.0.113.10:4433", False),
        ("gateway.node", "node.example.net:4433", False),
        ("gateway.node", "10.0.0.1:4433", False),
    ],
)
def test_plaintext_only_on_loopback_or_the_testbed(key, address, ok):
    err = config.plaintext_error(key, address)
    assert (err is None) == ok
    if not ok:
        assert isinstance(err, ConfigError) and key in str(err) and "\n" not in str(err)


def test_plaintext_refused_by_the_contexts():
    from middlebox.config import TLSConfig
    from middlebox.paths import tls

    plain = TLSConfig(plaintext=True)
    with pytest.raises(ConfigError, match="node.listen is '0.0.0.0:4433'"):
        tls.node_context(plain, "0.0.0.0:4433")
    with pytest.raises(ConfigError, match="gateway.node"):
        tls.gateway_context(plain, "198.51.100.7:4433")
    assert tls.node_context(plain, "127.0.0.1:4433") is None
    assert tls.gateway_context(plain, "100.65.0.2:4433") is None


def test_the_testbed_plan_lies_inside_the_plaintext_networks():
    from netns import topology

    nets = config.PLAINTEXT_NETWORKS
    import ipaddress

    for a in (topology.node_carrier_addr(0), topology.node_carrier_addr(7), topology.LAN_GATEWAY,
              topology.NODE_SERVER_SIDE):  # fmt: skip
        assert any(ipaddress.ip_address(a) in n for n in nets), a


def test_node_refuses_plaintext_on_a_public_address(tmp_path):
    from middlebox.config import NodeConfig, TLSConfig
    from middlebox.node.process import Node

    cfg = Config(
        node=NodeConfig(listen="0.0.0.0:0", control_socket=str(tmp_path / "n.sock")),
        tls=TLSConfig(plaintext=True),
    )
    with pytest.raises(ConfigError, match="tls.plaintext: only for loopback or the testbed"):
        Node(cfg, control=False)
