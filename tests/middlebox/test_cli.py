"""The ``mpproxy`` command assembles its subcommands from the ``mpproxy.commands`` entry
points: in their order, with each package's own user errors printed as one line, and a
broken plugin left out with one line instead of a traceback."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

from middlebox import cli

COMMANDS = [
    "config",
    "pki",
    "gateway",
    "node",
    "status",
    "demo",
    "contextdb",
    "testbed",
    "bench",
    "capture",
]


class PackageError(Exception):
    """Stands for a lower package's error type, unrelated to ``UserError``."""


@dataclass
class Plugin:
    """Looks like an ``importlib.metadata.EntryPoint`` to the CLI."""

    name: str
    value: str
    register: object

    def load(self):
        if isinstance(self.register, Exception):
            raise self.register
        return self.register


def _fails(args: argparse.Namespace | str) -> int:
    raise PackageError(f"bad {getattr(args, 'what', args)}")


def _register_fails(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fails")
    p.add_argument("what")
    p.set_defaults(func=_fails, user_errors=(PackageError,))


def _with(monkeypatch, *extra: Plugin) -> None:
    installed = list(cli.entry_points(group=cli.GROUP))
    monkeypatch.setattr(cli, "entry_points", lambda group: [*installed, *extra])


def _listed(help_text: str) -> list[str]:
    return re.findall(r"^    (\S+)", help_text, re.M)


def test_help_lists_every_command_in_order(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    captured = capsys.readouterr()
    assert _listed(captured.out) == COMMANDS and captured.err == ""


def test_console_script_help_is_the_same():
    r = subprocess.run(
        [sys.executable, "-m", "middlebox.cli", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and _listed(r.stdout) == COMMANDS and r.stderr == ""


def test_a_package_error_is_one_line(monkeypatch, capsys):
    _with(monkeypatch, Plugin("90-fails", "tests:register", _register_fails))
    assert cli.main(["fails", "input"]) == 2
    err = capsys.readouterr().err
    assert err == "mpproxy: error: bad input\n"


def test_another_commands_error_type_is_not_caught(monkeypatch):
    """user_errors belong to the command that declares them, not to every command."""
    _with(monkeypatch, Plugin("90-fails", "tests:register", _register_fails))
    monkeypatch.setattr(cli, "_load_config", _fails)  # contextdb --config raises PackageError
    with pytest.raises(PackageError):
        cli.main(["contextdb", "stats", "--config", "x.toml"])


def test_a_broken_plugin_is_one_line_and_the_rest_work(monkeypatch, capsys, tmp_path):
    _with(
        monkeypatch,
        Plugin("85-gone", "nowhere.moved:register", ModuleNotFoundError("No module 'nowhere'")),
        Plugin("86-bad", "bench.bad:register", lambda sub: sub.add_parser("config")),
    )
    p = tmp_path / "mpproxy.toml"
    p.write_text("[[gateway.carriers]]\nname = 'a'\n")
    assert cli.main(["config", "check", str(p)]) == 0
    captured = capsys.readouterr()
    warnings = captured.err.splitlines()
    assert len(warnings) == 2 and "Traceback" not in captured.err
    assert warnings[0].startswith("mpproxy: warning: command plugin '85-gone'")
    assert "nowhere.moved:register" in warnings[0] and "No module" in warnings[0]
    assert warnings[1].startswith("mpproxy: warning: command plugin '86-bad'")
    assert "ok (1 carrier(s))" in captured.out


def test_no_plugins_installed_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "entry_points", lambda group: [])
    assert cli.main(["--help"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("mpproxy: error: no commands installed")
