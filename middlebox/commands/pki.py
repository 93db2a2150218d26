"""``mpproxy pki``: create the CA, the node certificate and gateway certificates."""

from __future__ import annotations

import argparse

from middlebox.config import number_arg

MAX_DAYS = 36500  # a validity beyond a century is a typo


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pki",
        help="create the certificates that authenticate carrier paths",
        description="Create a CA, a node certificate and gateway certificates for TLS 1.3 "
        "with mutual authentication. Keys are written with mode 0600; existing files are "
        "never replaced without --force.",
    )
    psub = p.add_subparsers(dest="pki_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser, days: int) -> None:
        q.add_argument("--dir", required=True, help="directory of the CA and certificates")
        q.add_argument(
            "--days",
            type=number_arg(int, 1, MAX_DAYS),
            default=days,
            help=f"validity (default {days}, at most {MAX_DAYS})",
        )
        q.add_argument("--force", action="store_true", help="replace existing files")

    ca = psub.add_parser("ca", help="create the CA (DIR/ca.pem, DIR/ca.key)")
    common(ca, 3650)
    ca.add_argument("--name", default="mpproxy CA", help="CA common name")
    ca.set_defaults(func=_ca)

    node = psub.add_parser("node", help="create the node certificate (DIR/node.pem, .key)")
    common(node, 825)
    node.add_argument(
        "--host",
        action="append",
        required=True,
        help="name or address gateways connect to (repeat for several)",
    )
    node.set_defaults(func=_node)

    gw = psub.add_parser("gateway", help="create a gateway certificate (DIR/gateway-ID.pem, .key)")
    common(gw, 825)
    gw.add_argument("--id", required=True, help="the gateway id (gateway.id in its config)")
    gw.set_defaults(func=_gateway)

    show = psub.add_parser("show", help="print subject, names and gateway id of a certificate")
    show.add_argument("file")
    show.set_defaults(func=_show)


def _report(issued) -> int:
    print(f"wrote {issued.cert}")
    print(f"wrote {issued.key} (mode 0600)")
    return 0


def _ca(args: argparse.Namespace) -> int:
    from middlebox.paths import pki

    return _report(pki.create_ca(args.dir, args.name, args.days, args.force))


def _node(args: argparse.Namespace) -> int:
    from middlebox.paths import pki

    return _report(pki.create_node(args.dir, args.host, args.days, args.force))


def _gateway(args: argparse.Namespace) -> int:
    from middlebox.paths import pki

    return _report(pki.create_gateway(args.dir, args.id, args.days, args.force))


def _show(args: argparse.Namespace) -> int:
    from middlebox.paths import pki

    for k, v in pki.describe(args.file).items():
        print(f"{k}: {v}")
    return 0
