"""Configuration variants of the proxy rows: ``--variant NAME=FILE`` names an mpproxy
TOML file whose settings the gateway and node of a row ``POLICY@NAME`` run with, so
that two configurations are compared in one run, on the same trace seconds (a paired
A/B), instead of in two runs on a machine whose load moves between them.

A variant holds only tuning: the testbed sets the addresses, carriers, certificates and
sockets itself, so the keys naming them are refused (:data:`TESTBED_KEYS`)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from middlebox.config import load
from middlebox.errors import UserError

# keys the testbed harness sets for every proxy row (bench.proxy_bench.ProxyBed)
TESTBED_KEYS = {
    "gateway": {
        "id",
        "node",
        "nodes",
        "carriers",
        "acl",
        "lan_interface",
        "listener_namespace",
        "control_socket",
    },
    "node": {"id", "listen", "control_socket", "allowed_destinations"},
    "tls": None,  # the whole section
}


@dataclass
class Variant:
    """One file's settings, by section, as ProxyBed takes them."""

    name: str
    path: str
    sections: dict[str, dict] = field(default_factory=dict)

    def section(self, name: str) -> dict:
        return dict(self.sections.get(name, {}))

    def others(self) -> dict[str, dict]:
        """The sections other than gateway, node and paths."""
        return {
            k: dict(v) for k, v in self.sections.items() if k not in ("gateway", "node", "paths")
        }


def parse(spec: str) -> Variant:
    """``NAME=FILE`` into a Variant (raises UserError naming the problem)."""
    name, sep, path = spec.partition("=")
    name = name.strip()
    if not sep or not name or not path:
        raise UserError(f"--variant {spec!r}: expected NAME=FILE")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise UserError(f"--variant {spec!r}: NAME may hold letters, digits, '-' and '_'")
    load(path)  # the whole file as the product would read it: unknown keys, ranges
    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    sections: dict[str, dict] = {}
    for sec, table in data.items():
        if not isinstance(table, dict):
            raise UserError(f"{path}: {sec}: a variant holds tables of settings only")
        refused = TESTBED_KEYS.get(sec, set())
        for key, value in table.items():
            if refused is None or key in refused:
                raise UserError(f"{path}: {sec}.{key}: set by the testbed, not by a variant")
            if isinstance(value, dict) or (
                isinstance(value, list) and any(isinstance(v, dict) for v in value)
            ):
                raise UserError(f"{path}: {sec}.{key}: nested tables are not taken by a variant")
        sections[sec] = dict(table)
    return Variant(name, path, sections)


def split_row(row: str) -> tuple[str, str | None]:
    """``POLICY@NAME`` into (policy, variant name); a plain row has no variant."""
    policy, sep, name = row.partition("@")
    return policy, (name if sep else None)
