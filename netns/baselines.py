"""Baselines the proxy is compared against, on the same testbed: single-path TCP and kernel MPTCP.

Two small programs run inside the testbed's namespaces (``python -m netns.baselines``):

* ``serve`` (server namespace): a plain TCP listener on ``--port`` and an MPTCP
  (``IPPROTO_MPTCP``) listener on ``--port + 1``. A client sends one request line
  ``<bytes> <seconds> <congestion control>``; the server sets ``TCP_CONGESTION`` and
  sends zeros until either limit is reached, then closes. Downloads are what a passenger
  mostly does, and the server is the sender, so the server's congestion control is what
  is being compared.
* ``fetch`` (client namespace): connects from a chosen client address (the gateway's
  source rules map it to one carrier) or over MPTCP (subflows from every client address
  the ``ip mptcp endpoint`` list names), reads to EOF, prints one JSON result line.

:func:`download` wraps ``fetch`` for a :class:`~netns.topology.Testbed`.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

IPPROTO_MPTCP = 262
SOL_MPTCP = 284
MPTCP_INFO = 1
DEFAULT_PORT = 5201
CHUNK = 256 * 1024


@dataclass(frozen=True)
class Result:
    """One download: how much arrived, how long it took, over how many subflows."""

    label: str
    bytes: int
    seconds: float
    subflows: int | None = None
    start: float = 0.0  # CLOCK_MONOTONIC at connect (compare with Testbed.trace_start)

    @property
    def goodput_mbit(self) -> float:
        return self.bytes * 8 / self.seconds / 1e6 if self.seconds > 0 else 0.0


def _serve_one(conn: socket.socket) -> None:
    with conn:
        line = b""
        while not line.endswith(b"\n") and len(line) < 200:
            chunk = conn.recv(200)
            if not chunk:
                return
            line += chunk
        try:
            nbytes_s, seconds_s, cc = line.decode().split()
            nbytes, seconds = int(nbytes_s), float(seconds_s)
        except ValueError:
            return
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
        except OSError as e:
            print(f"baselines: congestion control {cc!r} refused: {e}", file=sys.stderr)
            return
        payload = memoryview(bytes(CHUNK))
        sent = 0
        deadline = time.monotonic() + seconds if seconds > 0 else None
        try:
            while nbytes <= 0 or sent < nbytes:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                n = CHUNK if nbytes <= 0 else min(CHUNK, nbytes - sent)
                sent += conn.send(payload[:n])
        except OSError:
            return


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Listen for TCP on ``port`` and MPTCP on ``port + 1`` until killed."""
    listeners = []
    for proto, p in ((socket.IPPROTO_TCP, port), (IPPROTO_MPTCP, port + 1)):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, p))
        s.listen(64)
        listeners.append(s)

    def accept_loop(s: socket.socket) -> None:
        while True:
            conn, _ = s.accept()
            threading.Thread(target=_serve_one, args=(conn,), daemon=True).start()

    for s in listeners[1:]:
        threading.Thread(target=accept_loop, args=(s,), daemon=True).start()
    print("ready", flush=True)
    accept_loop(listeners[0])


def fetch(
    server: str,
    port: int,
    bind: str | None,
    mptcp: bool,
    nbytes: int,
    seconds: float,
    cc: str,
    timeout: float,
) -> dict[str, Any]:
    """Download from a ``serve`` instance; returns bytes, seconds and MPTCP subflows."""
    proto = IPPROTO_MPTCP if mptcp else socket.IPPROTO_TCP
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
    s.settimeout(timeout)
    if bind:
        s.bind((bind, 0))
    t0 = time.monotonic()
    s.connect((server, port + 1 if mptcp else port))
    s.sendall(f"{nbytes} {seconds} {cc}\n".encode())
    got = 0
    subflows = None
    buf = bytearray(CHUNK)
    next_info = t0 + 1.0
    while True:
        n = s.recv_into(buf)
        if not n:
            break
        got += n
        if mptcp and time.monotonic() >= next_info:
            subflows = max(subflows or 0, _subflows(s))
            next_info += 1.0
    elapsed = time.monotonic() - t0
    s.close()
    return {"bytes": got, "seconds": elapsed, "subflows": subflows, "start": t0}


def _subflows(s: socket.socket) -> int:
    """Active subflows besides the first (``mptcpi_subflows``), from MPTCP_INFO."""
    try:
        info = s.getsockopt(SOL_MPTCP, MPTCP_INFO, 64)
    except OSError:
        return 0
    return info[0] if info else 0


def udp_echo(port: int) -> None:
    """Echo every UDP datagram back to its sender (for delay and outage probes)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)


def probe(
    server: str, port: int, bind: str | None, count: int, interval: float
) -> list[list[float]]:
    """Send ``count`` numbered probes; return [send time, RTT or -1] (CLOCK_MONOTONIC)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if bind:
        s.bind((bind, 0))
    s.setblocking(False)
    sent: dict[int, float] = {}
    rtt: dict[int, float] = {}
    end = time.monotonic() + count * interval + 1.0
    i = 0
    next_send = time.monotonic()
    while time.monotonic() < end:
        now = time.monotonic()
        if i < count and now >= next_send:
            sent[i] = now
            s.sendto(i.to_bytes(4, "big") + bytes(60), (server, port))
            i += 1
            next_send += interval
        wait = max(0.0, min(next_send, end) - time.monotonic())
        if select.select([s], [], [], wait)[0]:
            data = s.recv(2048)
            n = int.from_bytes(data[:4], "big")
            rtt.setdefault(n, time.monotonic() - sent[n])
    return [[sent[n], rtt.get(n, -1.0)] for n in sorted(sent)]


def start_server(tb: Any, port: int = DEFAULT_PORT, kind: str = "serve") -> subprocess.Popen[str]:
    """Start ``serve`` (or ``echo``) in the testbed's server namespace; wait until it listens."""
    p = tb.popen(
        "server",
        [sys.executable, "-m", "netns.baselines", kind, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = p.stdout.readline() if p.stdout else ""
    if line.strip() != "ready":
        err = p.stderr.read() if p.stderr else ""
        raise RuntimeError(f"baseline server did not start: {err.strip()}")
    return p


def download(
    tb: Any,
    carrier: int | None,
    *,
    seconds: float = 0.0,
    nbytes: int = 0,
    cc: str = "cubic",
    server: str | None = None,
    port: int = DEFAULT_PORT,
) -> Result:
    """Download over one carrier (plain TCP) or, with ``carrier=None``, over kernel MPTCP."""
    from netns.topology import SERVER_ADDRS, client_addr

    mptcp = carrier is None
    argv = [
        sys.executable,
        "-m",
        "netns.baselines",
        "fetch",
        "--server",
        server or SERVER_ADDRS[0],
        "--port",
        str(port),
        "--bind",
        client_addr(0 if mptcp else carrier),
        "--bytes",
        str(nbytes),
        "--seconds",
        str(seconds),
        "--cc",
        cc,
    ] + (["--mptcp"] if mptcp else [])
    limit = (seconds or 60.0) + 60.0
    proc = tb.run("client", argv, capture_output=True, text=True, timeout=limit)
    if proc.returncode != 0:
        raise RuntimeError(f"download failed: {proc.stderr.strip()[-500:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    label = f"MPTCP ({cc})" if mptcp else f"carrier {carrier} TCP ({cc})"
    subflows = None if r["subflows"] is None else r["subflows"] + 1
    return Result(label, r["bytes"], r["seconds"], subflows, r["start"])


def probe_rtts(
    tb: Any, carrier: int, count: int = 20, interval: float = 0.05, port: int = DEFAULT_PORT
) -> list[tuple[float, float | None]]:
    """UDP probes from the client address of ``carrier`` to an ``echo`` server.

    Returns (send time on CLOCK_MONOTONIC, RTT seconds or None when unanswered).
    """
    from netns.topology import SERVER_ADDRS, client_addr

    argv = [sys.executable, "-m", "netns.baselines", "probe", "--server", SERVER_ADDRS[0]]
    argv += ["--port", str(port), "--bind", client_addr(carrier)]
    argv += ["--count", str(count), "--interval", str(interval)]
    proc = tb.run("client", argv, capture_output=True, text=True, timeout=count * interval + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"probe failed: {proc.stderr.strip()[-500:]}")
    return [(t, None if r < 0 else r) for t, r in json.loads(proc.stdout)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netns.baselines")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve")
    sv.add_argument("--port", type=int, default=DEFAULT_PORT)
    sv.add_argument("--address", default="0.0.0.0")
    ec = sub.add_parser("echo")
    ec.add_argument("--port", type=int, default=DEFAULT_PORT)
    pr = sub.add_parser("probe")
    pr.add_argument("--server", required=True)
    pr.add_argument("--port", type=int, default=DEFAULT_PORT)
    pr.add_argument("--bind")
    pr.add_argument("--count", type=int, default=20)
    pr.add_argument("--interval", type=float, default=0.05)
    fe = sub.add_parser("fetch")
    fe.add_argument("--server", required=True)
    fe.add_argument("--port", type=int, default=DEFAULT_PORT)
    fe.add_argument("--bind")
    fe.add_argument("--mptcp", action="store_true")
    fe.add_argument("--bytes", type=int, default=0)
    fe.add_argument("--seconds", type=float, default=0.0)
    fe.add_argument("--cc", default="cubic")
    fe.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args(argv)
    if a.cmd == "serve":
        serve(a.port, a.address)
        return 0
    if a.cmd == "echo":
        udp_echo(a.port)
        return 0
    if a.cmd == "probe":
        print(json.dumps(probe(a.server, a.port, a.bind, a.count, a.interval)))
        return 0
    if a.bytes <= 0 and a.seconds <= 0:
        ap.error("give --bytes or --seconds")
    r = fetch(a.server, a.port, a.bind, a.mptcp, a.bytes, a.seconds, a.cc, a.timeout)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
