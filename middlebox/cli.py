"""The ``mpproxy`` command.

Subcommands live in the package that owns them and register themselves with the product:
each is an entry point of the group ``mpproxy.commands`` (pyproject.toml), a function
``register(subparsers)`` that adds its parsers. The product therefore never imports the
testbed, the benchmarks or the context database's command line. ``mpproxy --help`` lists
the commands in the order of the entry points' names, which begin with a two-digit rank
(``10-config`` ... ``80-capture``: the product's own, the demo, then the other packages';
build tools keep entry points sorted by name, not as written). Only what is built is
listed, so ``--help`` never offers a command that does nothing. Heavy imports happen
inside the handlers to keep ``--help`` fast.

What a command may set on its parser (``set_defaults``):

* ``func(args) -> int``: the handler; its return value is the exit code.
* ``user_errors``: a tuple of the exception types its package raises for bad input
  (packages that do not import the product have their own, e.g. ``ContextDBError``). Those, like the
  product's :class:`~middlebox.errors.UserError`, are printed as one line,
  ``mpproxy: error: <message>``, and exit with the exception's ``exit_code`` (default 2).

What the CLI gives every handler: ``args.load_config(path)``, the product's configuration
loader (:func:`middlebox.config.load`), for commands of lower packages that read their
section of the configuration file without importing the product.

A plugin that cannot be loaded (its module moved or a dependency missing, e.g. an
editable install whose metadata predates a move) is left out with one line on stderr,
so the gateway and the node still start when a benchmark is broken.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import EntryPoint, entry_points

from middlebox import __version__, logs
from middlebox.errors import UserError

GROUP = "mpproxy.commands"

log = logging.getLogger("mpproxy")


def _load_config(path: str):
    """The configuration loader handed to every command (imported when first used)."""
    from middlebox.config import load

    return load(path)


def _register(ep: EntryPoint, sub: argparse._SubParsersAction) -> None:
    """Load one command plugin and let it add its parsers; a broken one is reported in a
    line and left out."""
    try:
        ep.load()(sub)
    except Exception as e:  # any failure of a plugin: the others must still work
        print(
            f"mpproxy: warning: command plugin {ep.name!r} ({ep.value}) not loaded: "
            f"{type(e).__name__}: {e} (reinstall mpproxy if it moved: pip install -e .)",
            file=sys.stderr,
        )


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
    parser.set_defaults(load_config=_load_config, user_errors=())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    plugins = sorted(entry_points(group=GROUP), key=lambda ep: ep.name)
    if not plugins:
        raise UserError(
            f"no commands installed (entry point group {GROUP} is empty): install mpproxy, "
            "e.g. pip install -e ."
        )
    for ep in plugins:
        _register(ep, sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except UserError as e:
        print(f"mpproxy: error: {e}", file=sys.stderr)
        return e.exit_code
    args = parser.parse_args(argv)
    logs.setup(-1 if args.quiet else args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UserError, *args.user_errors) as e:
        print(f"mpproxy: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", UserError.exit_code)
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
