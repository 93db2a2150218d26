"""The local control socket of gateway and node, and ``mpproxy status`` that reads it.

A process listens on a Unix stream socket (``gateway.control_socket`` /
``node.control_socket``, mode 0600: the state names passengers' addresses). A client
sends one line, ``status`` (or a request the process adds, such as the node's ``drain``
and ``resume``), and gets one JSON document back, then the process closes the
connection. The server side is non-blocking and lives in the process's selector
loop; a client that does not finish its request within a second is dropped, so a stuck
``mpproxy status`` never stalls the data path.

A socket file already at the path is probed before it is replaced: when a process
accepts a connection on it, that process is alive and this one refuses to start (two
gateways on one configuration would fight over the same namespace and rules); when
nobody does (the process died), the file is stale and replaced. Anything else at the
path (a regular file, a directory) is never removed.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
from collections.abc import Callable
from pathlib import Path

from middlebox.errors import UserError

REQUEST_MAX = 256
CLIENT_TIMEOUT = 1.0


class ControlError(UserError):
    """The control socket could not be created or read."""


def _in_use(path: str) -> bool:
    """Whether a live process listens on the Unix socket at ``path`` (connect succeeds).

    A listening socket accepts into its backlog without the process's help, so the probe
    never waits for a busy process; a full backlog (EAGAIN) also means it is alive."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(CLIENT_TIMEOUT)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except (BlockingIOError, TimeoutError):
        return True
    finally:
        probe.close()
    return True


class ControlServer:
    """Answers ``status`` with ``snapshot()`` as JSON, and each further request named in
    ``requests`` with what its function returns."""

    def __init__(
        self,
        path: str,
        snapshot: Callable[[], dict],
        requests: dict[str, Callable[[], dict]] | None = None,
    ) -> None:
        self.path = path
        self.snapshot = snapshot
        self.requests = {"status": snapshot, **(requests or {})}
        self._clients: dict[socket.socket, tuple[bytearray, float]] = {}
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            if Path(path).is_socket():
                if _in_use(path):
                    raise ControlError(
                        f"control socket {path}: another process is running and answers on "
                        "it (stop it first, or give this one another control_socket)"
                    )
                os.unlink(path)  # stale: left by a process that died
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)
            try:
                self.sock.bind(path)
            finally:
                os.umask(old)
            self.sock.listen(16)
        except OSError as e:
            raise ControlError(f"control socket {path}: {e.strerror or e}") from None
        self.sock.setblocking(False)
        self.selector: selectors.BaseSelector | None = None

    def register(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def _accept(self, mask: int, now: float) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        conn.setblocking(False)
        self._clients[conn] = (bytearray(), now)
        assert self.selector is not None
        self.selector.register(conn, selectors.EVENT_READ, lambda m, t, c=conn: self._read(c))

    def _read(self, conn: socket.socket) -> None:
        buf, _ = self._clients[conn]
        try:
            chunk = conn.recv(REQUEST_MAX)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        buf += chunk
        if b"\n" not in buf and chunk and len(buf) < REQUEST_MAX:
            return
        line = bytes(buf).split(b"\n", 1)[0].strip()
        answer = self.requests.get(line.decode("ascii", "replace"))
        if answer is not None:
            try:
                body = json.dumps(answer(), default=str, sort_keys=True)
            except Exception as e:  # never let a request take the process down
                body = json.dumps({"error": f"{line.decode()} failed: {e}"})
        else:
            known = ", ".join(repr(k) for k in self.requests)
            body = json.dumps({"error": f"unknown request {line[:32]!r}; try {known}"})
        self._drop(conn, (body + "\n").encode())

    def _drop(self, conn: socket.socket, answer: bytes = b"") -> None:
        self._clients.pop(conn, None)
        if self.selector is not None:
            try:
                self.selector.unregister(conn)
            except (KeyError, ValueError):
                pass
        if answer:
            try:
                conn.setblocking(True)
                conn.settimeout(CLIENT_TIMEOUT)
                conn.sendall(answer)
            except OSError:
                pass
        conn.close()

    def expire(self, now: float) -> None:
        for conn, (_, since) in list(self._clients.items()):
            if now - since > CLIENT_TIMEOUT:
                self._drop(conn)

    def close(self) -> None:
        for conn in list(self._clients):
            self._drop(conn)
        if self.selector is not None:
            try:
                self.selector.unregister(self.sock)
            except (KeyError, ValueError):
                pass
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def query(path: str, request: str = "status", timeout: float = 5.0) -> dict:
    """Ask a running process over its control socket; ControlError when nobody answers."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(request.encode() + b"\n")
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    except FileNotFoundError:
        raise ControlError(f"{path}: no control socket (is the process running?)") from None
    except ConnectionRefusedError:
        raise ControlError(f"{path}: nobody listening (process gone?)") from None
    except PermissionError:
        raise ControlError(f"{path}: permission denied (run as root?)") from None
    except OSError as e:
        raise ControlError(f"{path}: {e.strerror or e}") from None
    finally:
        s.close()
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError(f"{path}: answer is not JSON") from None


def _context_line(carrier: str, c: dict) -> str:
    """One carrier's context (and, on the gateway, its measured and predicted rate)."""
    if not c:
        return f"{carrier:<12} (none yet)"
    parts = [f"{carrier:<12} cell {c.get('cell_id') or '-'}"]
    if c.get("rsrp") is not None:
        parts.append(f"rsrp {c['rsrp']:.1f} dBm")
    if c.get("position"):
        parts.append("at {:.5f},{:.5f}".format(*c["position"]))
    if "down_mbit" in c:
        sat = " saturated" if c.get("saturated") else ""
        parts.append(f"down {c['down_mbit']:.2f} up {c['up_mbit']:.2f} Mbit/s{sat}")
    p = c.get("prediction")
    if p:
        parts.append(f"predicted {p['throughput_mbit']:.2f} Mbit/s conf {p['confidence']:.2f}")
    if "age_s" in c:
        parts.append(f"age {c['age_s']:.1f} s")
    return ", ".join(parts)


def _modem_lines(m: dict | None) -> list[str]:
    """The ModemManager source's counters and each carrier's modem (one line each)."""
    if not m:
        return []
    counts = " ".join(f"{k}={v}" for k, v in sorted(m.items()) if isinstance(v, int))
    lines = [
        f"modems: {counts}" + (f" last_error={m['last_error']}" if m.get("last_error") else "")
    ]
    for carrier, r in sorted(m.get("modems", {}).items()):
        if not r.get("present"):
            lines.append(f"  modem {carrier:<12} (no modem)")
            continue
        sig = ", ".join(
            f"{tech} " + " ".join(f"{k} {v:g}" for k, v in vals.items())
            for tech, vals in r.get("signal", {}).items()
        )
        parts = [f"#{r.get('modem')} {r.get('model') or '?'}", r.get("state") or "-",
                 ",".join(r.get("tech", [])) or "-", r.get("operator") or "-",
                 f"cell {r.get('cell_id') or '-'}", sig]  # fmt: skip
        lines.append(f"  modem {carrier:<12} " + ", ".join(p for p in parts if p))
    return lines


def _fleet_lines(f: dict | None) -> list[str]:
    """The gateway's nodes: the chosen one, each candidate's state, the moves."""
    if not f:
        return []
    counts = " ".join(f"{k}={v}" for k, v in sorted(f.items()) if isinstance(v, int))
    lines = [f"fleet: chosen {f.get('chosen')}" + (f" next {f['next']}" if f.get("next") else "")
             + f" {counts}"]  # fmt: skip
    for n in f.get("nodes", []):
        rtt = f"{n['rtt_ms']:.1f} ms" if n.get("rtt_ms") is not None else "-"
        lines.append(
            f"  node {n.get('name', ''):<16} {n.get('address', ''):<24} {n.get('state', ''):<8} "
            f"{n.get('role', ''):<8} paths {n.get('paths_up', 0)} "
            f"connections {n.get('connections', 0)} rtt {rtt}"
        )
    return lines


def render(state: dict) -> str:
    """A human-readable page of a status snapshot (gateway or node)."""
    lines = [f"{state.get('role', '?')} {state.get('id', '')}  up {state.get('uptime', 0):.0f} s"]
    for sess in state.get("sessions", []):
        lines.append(
            f"session {sess.get('gateway', '')} {sess.get('session', '')}: "
            f"{len(sess.get('connections', {}))} connections, "
            f"{sess.get('buffered_bytes', 0)} bytes buffered"
        )
        lines.append("  path                      state  rtt_ms  rate_Mbit/s  lost  queued")
        for p in sess.get("paths", []):
            lines.append(
                f"  {p.get('name', ''):<25} {p.get('state', ''):<6} "
                f"{p.get('rtt_ms', 0):>6.1f}  {p.get('rate_mbit', 0):>11.2f}  "
                f"{p.get('lost', 0):>4}  {p.get('queued', 0):>6}"
            )
        for carrier, c in sorted(sess.get("context", {}).items()):
            lines.append("  context " + _context_line(carrier, c))
        counters = sess.get("counters", {})
        if counters:
            lines.append("  counters: " + " ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    lines += _fleet_lines(state.get("fleet"))
    ctx = state.get("context")
    if ctx:
        items = ((k, v) for k, v in ctx.items() if k not in ("carriers", "modem"))
        lines.append("context: " + " ".join(f"{k}={v}" for k, v in sorted(items)))
        lines += _modem_lines(ctx.get("modem"))
    keys = (
        "flows", "udp", "endpoint", "capture", "counters", "admission", "drain", "memory",
        "limits", "metrics",
    )  # fmt: skip
    for key in keys:
        if state.get(key):
            items = state[key].items()
            lines.append(f"{key}: " + " ".join(f"{k}={v}" for k, v in sorted(items)))
    return "\n".join(lines)
