"""The workload programs of the emulation runner, run inside the testbed's namespaces.

``python -m bench.emulate.apps server`` (server namespace) listens on every port the
replay's workloads use (MPTCP listeners, which also accept plain TCP). A client sends one
request line ``<bytes> <bytes per second> <chunk seconds>``: 0 bytes is endless; a rate
of 0 sends everything at once, a rate > 0 produces the stream live, ``rate x chunk``
bytes every ``chunk`` seconds from the request on (a constant-bitrate source).

``python -m bench.emulate.apps client`` (client namespace) runs the **replay's own
workload objects** (``bench.sim.workloads``: bulk, web, cbr, file; same parameters, same
per-client random draws, so the same pages and sizes as the simulator for a seed) against
real sockets: :class:`RealTimeEngine` stands in for the simulator's event loop and
:class:`SocketTransport` for its transport. Whatever the workloads record lands in the
same ``bench.sim.metrics.Recorder``, written as JSON to ``--out`` at the end.

What differs from the simulator, by necessity: time is the wall clock (the run takes as
long as it says); a request is a TCP connection (handshake included, through the proxy the
gateway answers the SYN itself); production of a live stream is clocked at the server,
from the request's arrival; after a reset a resumable transfer reconnects after
``RETRY_S`` (the client cannot see the proxy's paths); bytes a reset connection had sent
but not delivered are unknown here (``resent_after_resume`` stays 0).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import selectors
import socket
import sys
import threading
import time
from array import array
from typing import Any

from bench.sim.metrics import Recorder, Stall
from bench.sim.workloads import Runtime, parse

IPPROTO_MPTCP = 262
PORTS = (21, 443, 1935, 5001)
"""Destination ports the replay's workloads open (file, web, cbr, bulk)."""
RETRY_S = 1.0
CHUNK = 1 << 16


# -- server ----------------------------------------------------------------------------------


def _serve_one(conn: socket.socket, cc: str) -> None:
    with conn:
        line = b""
        while not line.endswith(b"\n") and len(line) < 200:
            d = conn.recv(200 - len(line))
            if not d:
                return
            line += d
        try:
            n_s, bps_s, chunk_s = line.decode().split()
            nbytes, bps, chunk = int(n_s), float(bps_s), float(chunk_s)
        except ValueError:
            return
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
        except OSError:
            pass  # the kernel default then; the proxy rows do not depend on it
        total = nbytes if nbytes > 0 else math.inf
        zeros = memoryview(bytes(CHUNK))
        sent = 0
        t0 = time.monotonic()
        try:
            while sent < total:
                if bps > 0:
                    k = int((time.monotonic() - t0) / chunk)
                    due = min(int(k * chunk * bps), total)
                    if due <= sent:
                        time.sleep(max(0.0, t0 + (k + 1) * chunk - time.monotonic()))
                        continue
                    n = min(CHUNK, due - sent)
                else:
                    n = int(min(CHUNK, total - sent))
                conn.sendall(zeros[:n])
                sent += n
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(5.0)
            while conn.recv(4096):
                pass
        except OSError:
            return


def serve(cc: str) -> None:
    """Listen on :data:`PORTS` until killed; one thread per connection."""
    listeners = []
    for port in PORTS:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(512)
        listeners.append(s)

    def accept_loop(s: socket.socket) -> None:
        while True:
            c, _ = s.accept()
            threading.Thread(target=_serve_one, args=(c, cc), daemon=True).start()

    for s in listeners[1:]:
        threading.Thread(target=accept_loop, args=(s,), daemon=True).start()
    print("ready", flush=True)
    accept_loop(listeners[0])


# -- client: the replay's workloads on real sockets --------------------------------------------


class RealTimeEngine:
    """The simulator's ``Engine.at`` on the wall clock: callbacks run at ``t`` seconds
    after the run's start (``time.monotonic()`` value ``t0``)."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.now = 0.0
        self.events = 0
        self._heap: list[tuple[float, int, Any, Any]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return time.monotonic() - self.t0

    def at(self, t: float, callback: Any, arg: Any = None) -> None:
        heapq.heappush(self._heap, (max(t, self.now), next(self._order), callback, arg))

    def run_due(self) -> float | None:
        """Run every callback that is due; return the time of the next one."""
        heap = self._heap
        while heap and heap[0][0] <= self.clock():
            t, _, cb, arg = heapq.heappop(heap)
            self.now = self.clock()
            cb(self.now, arg)
            self.events += 1
        return heap[0][0] if heap else None


class EmuConn:
    """What the workloads read of a connection (the attributes of ``transport.Conn``)."""

    def __init__(self, cid: int, app: Any, total: float, base: int, now: float) -> None:
        self.id = cid
        self.app = app
        self.total = base + total
        self.base = base
        self.rcv_nxt = base
        self.snd_nxt = base  # not known at the client: resent_after_resume stays 0
        self.started = now
        self.tag: object = None
        self.sock: socket.socket | None = None
        self.request = b""
        self.connected = False


class SocketTransport:
    """The transport interface the workloads call (``open``, ``produce``, ``any_up``,
    ``on_path_up``) over real TCP (or MPTCP) sockets to the server program."""

    def __init__(
        self, engine: RealTimeEngine, rec: Recorder, server: str, bind: str, mptcp: bool
    ) -> None:
        self.engine = engine
        self.rec = rec
        self.server = server
        self.bind = bind
        self.proto = IPPROTO_MPTCP if mptcp else socket.IPPROTO_TCP
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, EmuConn] = {}
        self._ids = itertools.count(1)
        self._down_until = -1.0
        self.buf = bytearray(1 << 18)

    def open(
        self,
        now: float,
        app: Any,
        total: float,
        *,
        client: str = "",
        dst_port: int = 443,
        base: int = 0,
        produced: float | None = None,
    ) -> EmuConn:
        if dst_port not in PORTS:
            raise ValueError(f"the emulation server does not listen on port {dst_port}")
        conn = EmuConn(next(self._ids), app, total, base, now)
        live = produced is not None
        bps = getattr(app, "bps", 0.0) if live else 0.0
        chunk = getattr(app, "chunk", 0.0) if live else 0.0
        nbytes = 0 if math.isinf(total) else int(total)
        conn.request = f"{nbytes} {bps:.3f} {chunk:g}\n".encode()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, self.proto)
        s.setblocking(False)
        try:
            s.bind((self.bind, 0))
            s.connect_ex((self.server, dst_port))
        except OSError:
            s.close()
            self.engine.at(now, lambda t, c: self._fail(c, t), conn)
            return conn
        conn.sock = s
        self.conns[conn.id] = conn
        self.sel.register(s, selectors.EVENT_WRITE, conn)
        return conn

    def produce(self, conn: EmuConn, upto: float, now: float) -> None:
        """Live streams are produced by the server at the stream's rate (see module doc)."""

    def any_up(self) -> bool:
        return self.engine.clock() >= self._down_until

    def on_path_up(self, callback: Any) -> None:
        self.engine.at(self._down_until, lambda t, _: callback(t))

    # -- socket events -----------------------------------------------------------------

    def handle(self, conn: EmuConn, mask: int) -> None:
        s = conn.sock
        if s is None:
            return
        now = self.engine.clock()
        if not conn.connected:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                return self._fail(conn, now)
            conn.connected = True
            try:
                s.send(conn.request)  # a short line always fits an empty send buffer
            except OSError:
                return self._fail(conn, now)
            self.sel.modify(s, selectors.EVENT_READ, conn)
            return
        try:
            n = s.recv_into(self.buf)
        except BlockingIOError:
            return
        except OSError:
            return self._fail(conn, now)
        if n == 0:
            return self._fail(conn, now)
        conn.rcv_nxt += n
        self.rec.delivered(now, n)
        conn.app.delivered(conn, now)
        if conn.rcv_nxt >= conn.total:
            self._close(conn)
            conn.app.completed(conn, now)

    def _close(self, conn: EmuConn) -> None:
        if conn.sock is not None:
            self.sel.unregister(conn.sock)
            conn.sock.close()
            conn.sock = None
        self.conns.pop(conn.id, None)

    def _fail(self, conn: EmuConn, now: float) -> None:
        self._close(conn)
        self.rec.resets += 1
        self._down_until = now + RETRY_S
        conn.app.reset(conn, now)

    def close_all(self) -> None:
        for conn in list(self.conns.values()):
            self._close(conn)


def recorder_json(rec: Recorder) -> dict:
    """A Recorder as plain JSON values (inverse: :func:`recorder_from_json`)."""
    out = dict(rec.__dict__)
    out["ooo_delays"] = list(rec.ooo_delays)
    out["stalls"] = [[s.stream, s.start, s.end] for s in rec.stalls]
    return out


def recorder_from_json(d: dict) -> Recorder:
    rec = Recorder(d["duration"], d["n_paths"], d["step"])
    for k, v in d.items():
        setattr(rec, k, v)
    rec.ooo_delays = array("d", d["ooo_delays"])
    rec.stalls = [Stall(int(a), b, c) for a, b, c in d["stalls"]]
    rec.flows = [tuple(f) for f in d["flows"]]
    return rec


def run_client(
    workload: str,
    duration: float,
    seed: int,
    server: str,
    bind: str,
    mptcp: bool,
    start_at: float,
    n_paths: int,
) -> Recorder:
    """Run the workload spec from ``start_at`` (CLOCK_MONOTONIC) for ``duration`` s."""
    time.sleep(max(0.0, start_at - time.monotonic()))
    engine = RealTimeEngine(start_at)
    rec = Recorder(duration, n_paths)
    tr = SocketTransport(engine, rec, server, bind, mptcp)
    rt = Runtime(engine, tr, rec, duration, seed)  # type: ignore[arg-type]
    workloads = parse(workload)
    for i, w in enumerate(workloads):
        w.begin(rt, i)
    while True:
        nxt = engine.run_due()
        now = engine.clock()
        if now >= duration:
            break
        wait = min(duration, nxt if nxt is not None else duration) - now
        for key, mask in tr.sel.select(max(0.0, min(wait, 0.5))):
            tr.handle(key.data, mask)
    engine.now = duration
    for w in workloads:
        w.end(duration)
    tr.close_all()
    rec.events = engine.events
    rec.wall = engine.clock()
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.emulate.apps")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("server")
    sv.add_argument("--cc", default="bbr")
    cl = sub.add_parser("client")
    cl.add_argument("--workload", required=True)
    cl.add_argument("--duration", type=float, required=True)
    cl.add_argument("--seed", type=int, default=1)
    cl.add_argument("--server", required=True)
    cl.add_argument("--bind", required=True)
    cl.add_argument("--mptcp", action="store_true")
    cl.add_argument("--start-at", type=float, default=0.0, help="CLOCK_MONOTONIC start")
    cl.add_argument("--paths", type=int, default=1)
    cl.add_argument("--out", required=True, help="JSON file for the recorder")
    a = ap.parse_args(argv)
    if a.cmd == "server":
        serve(a.cc)
        return 0
    rec = run_client(a.workload, a.duration, a.seed, a.server, a.bind, a.mptcp, a.start_at, a.paths)
    with open(a.out, "w") as f:
        json.dump(recorder_json(rec), f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
