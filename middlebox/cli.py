"""The ``mpproxy`` command.

Subcommands live in the package that owns them; each module listed in ``COMMANDS``
has ``register(subparsers)`` which adds its parser and sets ``func(args) -> int``.
Only what is built is listed, so ``mpproxy --help`` never offers a command that
does nothing. Heavy imports happen inside the handlers to keep ``--help`` fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from middlebox import __version__, logs
from middlebox.errors import UserError

COMMANDS = [
    "middlebox.commands.config",
    "middlebox.commands.pki",
    "middlebox.commands.run",
    "bench.demo",
    "contextdb.cli",
    "netns.cli",
    "bench.cli",
    "bench.capture_app",
]

log = logging.getLogger("mpproxy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpproxy",
        description="Transparent multipath proxy: a vehicle gateway carries passengers' TCP "
        "over several cellular carriers to a cloud node.",
    )
    parser.add_argument("--version", action="version", version=f"mpproxy {__version__}")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    group.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(-1 if args.quiet else args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"mpproxy: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("mpproxy: interrupted", file=sys.stderr)
        return 130
    except PermissionError as e:
        print(
            f"mpproxy: error: permission denied: {e.filename or e} (run as root?)", file=sys.stderr
        )
        return 77


if __name__ == "__main__":
    sys.exit(main())
