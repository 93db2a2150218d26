"""``mpproxy config``: check a configuration file, print defaults, render the docs."""

from __future__ import annotations

import argparse

from middlebox import config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="check a configuration file or print the defaults")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = csub.add_parser("check", help="validate FILE; prints 'ok' or the first error")
    check.add_argument("file")
    check.set_defaults(func=_check)
    csub.add_parser("defaults", help="print a TOML file with every default").set_defaults(
        func=lambda a: print(config.render_defaults()) or 0
    )
    csub.add_parser("docs", help="print docs/configuration.md").set_defaults(
        func=lambda a: print(config.render_docs(), end="") or 0
    )


def _check(args: argparse.Namespace) -> int:
    cfg = config.load(args.file)
    print(f"{args.file}: ok ({len(cfg.gateway.carriers)} carrier(s))")
    return 0
