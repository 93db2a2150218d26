"""``mpproxy gateway``, ``mpproxy node`` and ``mpproxy status``: the two processes.

``mpproxy node drain`` / ``mpproxy node resume`` ask a running node, over its control
socket, to start or end draining (docs/deployment.md, "Draining a node").

Both processes read one TOML file (``--config``), log one line per event in the common
format (``middlebox.logs``), answer ``mpproxy status`` over their control socket, and
stop cleanly on SIGTERM/SIGINT: every connection is reset on both sides, paths are
closed with CLOSE, and the gateway removes its rules, routes, nft table and listener
namespace.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal

log = logging.getLogger("mpproxy")

DRAIN_ACTIONS = ("drain", "resume")  # requests of the node's control socket

CHECK_HELP = (
    "check this host instead of running: print one line per problem with what to fix; "
    "exit status 0 when there is none (docs/deployment.md)"
)


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "gateway",
        help="run the vehicle gateway (capture LAN TCP, carry it over the carriers)",
        description="Run the gateway: listener namespace, capture, user-space TCP, carrier "
        "paths to the node. Needs root. Stops cleanly on SIGTERM.",
    )
    g.add_argument("--config", required=True, help="TOML configuration file")
    g.add_argument("--check", action="store_true", help=CHECK_HELP)
    g.set_defaults(func=_gateway)
    n = sub.add_parser(
        "node",
        help="run the cloud node (accept gateways' paths, connect to the servers)",
        description="Run the node: accept authenticated carrier paths, relay connections to "
        "their original destinations. Stops cleanly on SIGTERM. 'mpproxy node drain' asks "
        "the running node to send its gateways to their next node ('resume' undoes it).",
    )
    n.add_argument(
        "action",
        nargs="?",
        choices=DRAIN_ACTIONS,
        help="drain: tell the running node's gateways to move their new connections to "
        "their next node (existing ones finish); resume: accept new ones again",
    )
    n.add_argument("--config", help="TOML configuration file (required to run the node)")
    n.add_argument("--socket", help="with drain/resume: the node's control socket")
    n.add_argument("--check", action="store_true", help=CHECK_HELP)
    n.add_argument("--json", action="store_true", help="with drain/resume: print the raw JSON")
    n.set_defaults(func=_node)
    s = sub.add_parser(
        "status",
        help="show a running gateway's or node's paths, connections and counters",
    )
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", help="control socket path")
    where.add_argument("--config", help="configuration file of the process")
    s.add_argument(
        "--role",
        choices=("gateway", "node"),
        default="gateway",
        help="with --config: whose control socket to read (default gateway)",
    )
    s.add_argument("--json", action="store_true", help="print the raw JSON")
    s.set_defaults(func=_status)


def _load(path: str):
    from middlebox import config, logs

    cfg = config.load(path)
    if logging.getLogger().level == logging.INFO:  # no -v / -q on the command line
        logs.setup(level=cfg.logging.level)
    return cfg


def _stopper() -> list[int]:
    flag: list[int] = []

    def stop(signum, _frame) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        flag.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    return flag


def _gateway(args: argparse.Namespace) -> int:
    if args.check:
        return _check("gateway", args.config)
    from middlebox.gateway.process import Gateway

    return _serve(Gateway, args)


def _node(args: argparse.Namespace) -> int:
    from middlebox.errors import UserError

    if args.action is not None:
        return _drain(args)
    if args.socket is not None:
        raise UserError("--socket: only with 'mpproxy node drain' or 'mpproxy node resume'")
    if args.config is None:
        raise UserError("mpproxy node: --config FILE is required to run the node")
    if args.check:
        return _check("node", args.config)
    from middlebox.node.process import Node

    return _serve(Node, args)


def _check(role: str, path: str) -> int:
    """``--check``: the host's problems, one line each (a bad file is one of them)."""
    from middlebox import check, config

    try:
        cfg = config.load(path)
    except config.ConfigError as e:
        print(check.Problem("configuration", f"{e} (mpproxy config check FILE)").line())
        print(f"1 problem(s): the {role} will not run correctly on this host")
        return 1
    run = check.check_gateway if role == "gateway" else check.check_node
    text, status = check.report(run(cfg, check.Host()), role)
    print(text)
    return status


def _serve(process: type, args: argparse.Namespace) -> int:
    """Run a gateway or node until a signal, then let it undo everything it made."""
    cfg = _load(args.config)
    flag = _stopper()
    proc = process(cfg)
    try:
        proc.run(stop=lambda: bool(flag))
    finally:
        proc.close()
    return 0


def _drain(args: argparse.Namespace) -> int:
    """Ask a running node to drain or resume; print what remains on it."""
    from middlebox import config, control
    from middlebox.errors import UserError

    if (args.socket is None) == (args.config is None):
        raise UserError(f"mpproxy node {args.action}: give --socket PATH or --config FILE")
    if args.check:
        raise UserError(f"mpproxy node {args.action}: --check runs on its own")
    path = args.socket or config.load(args.config).node.control_socket
    state = control.query(path, args.action)
    if "error" in state:
        raise control.ControlError(f"{path}: {state['error']}")
    if args.json:
        print(json.dumps(state, indent=1, sort_keys=True))
    else:
        what = "draining" if state.get("draining") else "not draining"
        left = state.get("remaining") or {}
        print(
            f"node {what}: {left.get('sessions', 0)} gateway session(s), "
            f"{left.get('connections', 0)} connection(s) remain"
        )
    return 0


def _status(args: argparse.Namespace) -> int:
    from middlebox import config, control

    path = args.socket
    if path is None:
        cfg = config.load(args.config)
        path = cfg.gateway.control_socket if args.role == "gateway" else cfg.node.control_socket
    state = control.query(path)
    print(json.dumps(state, indent=1, sort_keys=True) if args.json else control.render(state))
    return 0
