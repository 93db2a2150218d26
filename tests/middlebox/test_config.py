import subprocess
import sys
from pathlib import Path

import pytest

from middlebox import config
from middlebox.cli import main
from middlebox.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "mpproxy.toml"
    p.write_text(text)
    return p


def test_full_file_loads(tmp_path):
    p = write(
        tmp_path,
        """
[gateway]
id = "train-7"
node = "203.0.113.10:4433"
deny = ["198.51.100.0/24"]
[[gateway.carriers]]
name = "a"
interface = "wwan0"
[[gateway.carriers]]
name = "b"
type = "5g"
interface = "wwan1"
congestion_control = "cubic"
paths = 2
[node]
connect_timeout = 3
""",
    )
    cfg = config.load(p)
    assert cfg.gateway.id == "train-7"
    assert [c.name for c in cfg.gateway.carriers] == ["a", "b"]
    assert cfg.gateway.carriers[1].paths == 2
    assert cfg.gateway.carriers[0].congestion_control == "bbr"
    assert cfg.node.connect_timeout == 3.0 and isinstance(cfg.node.connect_timeout, float)


@pytest.mark.parametrize(
    "text, key",
    [
        ("[gateway]\nnode_adress = 'x:1'\n", "gateway.node_adress: unknown key"),
        ("[gatway]\n", "gatway: unknown key"),
        ("[node]\nconnect_timeout = 'soon'\n", "node.connect_timeout: must be a number"),
        ("[node]\nconnect_timeout = -1\n", "node.connect_timeout: must be >= 0.1"),
        ("[gateway]\nbuffer_bytes = true\n", "gateway.buffer_bytes: must be an integer"),
        ("[gateway]\nnode = 'nohost'\n", "gateway.node: must be HOST:PORT"),
        ("[gateway]\nbypass = ['10.0.0.0/33']\n", "gateway.bypass: must be a list of IP prefixes"),
        (
            "[[gateway.carriers]]\nname = 'a'\npaths = 0\n",
            "gateway.carriers[0].paths: must be >= 1",
        ),
        ("[[gateway.carriers]]\ntype = 'lte'\n", "gateway.carriers[0].name: required"),
        (
            "[[gateway.carriers]]\nname = 'a'\ntype = 'wimax'\n",
            "gateway.carriers[0].type: must be one of",
        ),
        (
            "[[gateway.carriers]]\nname='a'\n[[gateway.carriers]]\nname='a'\n",
            "gateway.carriers: carrier names must be unique",
        ),
        ("[wire]\nmessage_size = 300000\n", "wire.message_size: must leave room"),
        ("[logging]\nlevel = 3\n", "logging.level: must be a string"),
        ("gateway = 5\n", "gateway: must be a table"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, text, key):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: "), msg
    assert key in msg, msg
    assert "\n" not in msg


def test_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[gateway\n"))
    with pytest.raises(ConfigError, match="no such configuration file"):
        config.load(tmp_path / "absent.toml")


def test_defaults_file_round_trips(tmp_path):
    p = write(tmp_path, config.render_defaults())
    assert config.load(p) == config.Config()


def test_docs_are_generated_from_code():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == config.render_docs(), "run: mpproxy config docs > docs/configuration.md"


def test_cli_check_error_is_one_line_nonzero(tmp_path, capsys):
    p = write(tmp_path, "[node]\nlisten = 'x'\n")
    assert main(["config", "check", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mpproxy: error: ") and "node.listen" in err[0]


def test_cli_check_ok(tmp_path, capsys):
    p = write(tmp_path, "[[gateway.carriers]]\nname = 'a'\n")
    assert main(["config", "check", str(p)]) == 0
    assert "ok (1 carrier(s))" in capsys.readouterr().out


def test_console_script_exit_code_no_traceback(tmp_path):
    p = write(tmp_path, "[node]\nbogus = 1\n")
    r = subprocess.run(
        [sys.executable, "-m", "middlebox.cli", "config", "check", str(p)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "node.bogus: unknown key" in r.stderr


def test_help_lists_only_built_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "config" in out and "demo" in out


def test_message_size_must_fit_a_data_message(tmp_path):
    from middlebox.session.wire import DATA_FIXED

    ok = write(tmp_path, f"[wire]\nmax_payload = 65536\nmessage_size = {65536 - DATA_FIXED}\n")
    assert config.load(ok).wire.message_size == 65536 - DATA_FIXED
    bad = write(tmp_path, f"[wire]\nmax_payload = 65536\nmessage_size = {65537 - DATA_FIXED}\n")
    with pytest.raises(ConfigError, match="must leave room for the DATA header"):
        config.load(bad)


def test_mux_params_from_config():
    from middlebox.config import Config, GatewayConfig, NodeConfig, PathConfig
    from middlebox.session import wire

    cfg = Config(
        gateway=GatewayConfig(buffer_bytes=1 << 20),
        node=NodeConfig(buffer_bytes=2 << 20),
        paths=PathConfig(stall_min=0.25, lost_timeout=12.0),
    )
    gw = cfg.mux_params("gateway", peer_max_payload=4096)
    assert gw.buffer_bytes == 1 << 20 and gw.max_data == 4096 - wire.DATA_FIXED
    assert gw.message_size == gw.max_data  # never above what the peer accepts
    assert (gw.stall_min, gw.paths_lost_timeout) == (0.25, 12.0)
    assert cfg.mux_params("node").buffer_bytes == 2 << 20


def test_tcp_params_from_config():
    """The [tcp] section maps field by field onto the endpoint's parameters, whose defaults
    are the section's."""
    import dataclasses

    from middlebox.tcp.params import TcpParams

    names = [f.name for f in dataclasses.fields(config.TcpConfig)]
    assert names == [f.name for f in dataclasses.fields(TcpParams)]
    assert config.TcpConfig().params() == TcpParams()
    tcp = config.TcpConfig(mtu=9000, sack=False, time_wait=1.5, max_connections=7)
    assert tcp.params() == TcpParams(mtu=9000, sack=False, time_wait=1.5, max_connections=7)
