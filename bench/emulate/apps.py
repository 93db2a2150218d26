"""The workload programs of the emulation runner, run inside the testbed's namespaces.

``python -m bench.emulate.apps server`` (server namespace) listens on every port the
replay's workloads use (MPTCP listeners, which also accept plain TCP). A client sends one
request line ``<bytes> <bytes per second> <chunk seconds>``: 0 bytes is endless; a rate
of 0 sends everything at once, a rate > 0 produces the stream live, ``rate x chunk``
bytes every ``chunk`` seconds from the request on (a constant-bitrate source). An upload
sends ``up <bytes>`` (0: endless) and then its bytes; the server reads them and answers
every :data:`REPORT_S` with ``<CLOCK_MONOTONIC seconds> <bytes received so far>``, so the
client records the server application's goodput at the server's own times (the clock is
shared by every namespace); through the proxy the gateway acknowledges the client's
segments itself, so the client's own count would measure the gateway's buffer.

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

For MPTCP rows the client also reads ``MPTCP_INFO`` once a second and reports the most
subflows a connection had (the output file holds ``{"recorder": ..., "subflows": n}``).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import select
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
PORTS = (21, 443, 1935, 5001, 5002)
"""Destination ports the replay's workloads open (file, web, cbr, bulk, upload)."""
RETRY_S = 1.0
CHUNK = 1 << 16
REPORT_S = 0.1
"""Seconds between an upload's progress reports from the server."""
DRAIN_S = 1.5
"""After the run, seconds to wait for the uploads' reports that cover its last moments."""


# -- server ----------------------------------------------------------------------------------


def _serve_one(conn: socket.socket, cc: str) -> None:
    with conn:
        line = b""
        while b"\n" not in line and len(line) < 200:
            d = conn.recv(4096)  # an upload's first bytes may come with its request line
            if not d:
                return
            line += d
        line, _, rest = line.partition(b"\n")
        words = line.decode(errors="replace").split()
        if len(words) == 2 and words[0] == "up":
            return _receive_upload(conn, words[1], len(rest))
        try:
            n_s, bps_s, chunk_s = words
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


def _receive_upload(conn: socket.socket, size: str, got: int) -> None:
    """Read an upload of ``size`` bytes (0: until the client closes; ``got`` of them came
    with the request line), reporting progress."""
    try:
        total = int(size) or math.inf
    except ValueError:
        return
    buf = bytearray(CHUNK)
    next_report = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            if now >= next_report or got >= total:
                conn.sendall(f"{now:.6f} {got}\n".encode())
                next_report = now + REPORT_S
                if got >= total:
                    return
            ready, _, _ = select.select([conn], [], [], max(0.0, next_report - now))
            if ready:
                n = conn.recv_into(buf)
                if n == 0:
                    conn.sendall(f"{time.monotonic():.6f} {got}\n".encode())
                    return
                got += n
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
    """What the workloads read of a connection (the attributes of ``transport.Conn``).

    For an upload ``rcv_nxt`` is what the server reported received and ``snd_nxt`` what
    the client wrote; for a download ``snd_nxt`` is not known at the client
    (``resent_after_resume`` stays 0)."""

    def __init__(
        self, cid: int, app: Any, total: float, base: int, now: float, upload: bool = False
    ) -> None:
        self.id = cid
        self.app = app
        self.total = base + total
        self.base = base
        self.rcv_nxt = base
        self.snd_nxt = base
        self.started = now
        self.tag: object = None
        self.sock: socket.socket | None = None
        self.request = b""
        self.connected = False
        self.upload = upload
        self.reports = b""  # an upload's partial report line
        self.reported_at = now  # engine time of the latest report


class SocketTransport:
    """The transport interface the workloads call (``open``, ``produce``, ``any_up``,
    ``on_path_up``) over real TCP (or MPTCP) sockets to the server program."""

    uploads = True  # carries client-to-server payload (the ``upload`` workload)

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
        self.zeros = memoryview(bytes(CHUNK))
        self.subflows = 0  # most MPTCP subflows a connection had (MPTCP rows)

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
        upload: bool = False,
    ) -> EmuConn:
        if dst_port not in PORTS:
            raise ValueError(f"the emulation server does not listen on port {dst_port}")
        conn = EmuConn(next(self._ids), app, total, base, now, upload)
        live = produced is not None
        bps = getattr(app, "bps", 0.0) if live else 0.0
        chunk = getattr(app, "chunk", 0.0) if live else 0.0
        nbytes = 0 if math.isinf(total) else int(total)
        if upload:
            conn.request = f"up {nbytes}\n".encode()
        else:
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
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.upload else 0)
            self.sel.modify(s, events, conn)
            return
        if conn.upload and mask & selectors.EVENT_WRITE:
            self._write_upload(conn, s, now)
            if conn.sock is None or not mask & selectors.EVENT_READ:
                return
        try:
            n = s.recv_into(self.buf)
        except BlockingIOError:
            return
        except OSError:
            return self._fail(conn, now)
        if n == 0:
            return self._fail(conn, now)
        if conn.upload:
            return self._reports(conn, bytes(self.buf[:n]), now)
        conn.rcv_nxt += n
        self.rec.delivered(now, n)
        conn.app.delivered(conn, now)
        if conn.rcv_nxt >= conn.total:
            self._close(conn)
            conn.app.completed(conn, now)

    def _write_upload(self, conn: EmuConn, s: socket.socket, now: float) -> None:
        left = conn.total - conn.snd_nxt
        try:
            while left > 0:
                n = s.send(self.zeros[: int(min(CHUNK, left))])
                conn.snd_nxt += n
                left -= n
        except BlockingIOError:
            return
        except OSError:
            return self._fail(conn, now)
        self.sel.modify(s, selectors.EVENT_READ, conn)  # all written: wait for reports

    def _reports(self, conn: EmuConn, data: bytes, now: float, until: float = math.inf) -> None:
        """An upload's progress lines: the server's bytes at the server's times (engine
        time), counted up to ``until`` (the end of the run: a report after it is
        pro-rated to it)."""
        conn.reports += data
        *lines, conn.reports = conn.reports.split(b"\n")
        for line in lines:
            try:
                stamp_s, got_s = line.split()
                t, got = float(stamp_s) - self.engine.t0, int(got_s)
            except ValueError:
                continue
            new = got - (conn.rcv_nxt - conn.base)
            if new <= 0:
                conn.reported_at = max(conn.reported_at, t)
                continue
            if t > until:
                span = t - conn.reported_at
                new = int(new * (until - conn.reported_at) / span) if span > 0 else 0
                t = until
            conn.rcv_nxt += new
            conn.reported_at = t
            self.rec.delivered(t, new, up=True)
            conn.app.delivered(conn, t)
            if conn.rcv_nxt >= conn.total:
                self._close(conn)
                conn.app.completed(conn, t)
                return

    def drain_uploads(self, until: float) -> None:
        """Stop uploading and read the reports that cover the run up to ``until`` (engine
        time): each upload waits for its first report stamped at or after it, at most
        :data:`DRAIN_S`."""
        ups = [c for c in self.conns.values() if c.upload and c.connected and c.sock]
        for conn in ups:
            self.sel.modify(conn.sock, selectors.EVENT_READ, conn)
        end = time.monotonic() + DRAIN_S
        while ups and time.monotonic() < end:
            for key, _ in self.sel.select(max(0.0, min(0.1, end - time.monotonic()))):
                conn = key.data
                if not conn.upload or conn.sock is None:
                    continue
                try:
                    n = conn.sock.recv_into(self.buf)
                except BlockingIOError:
                    continue
                except OSError:
                    n = 0
                if n == 0:
                    self._close(conn)
                    continue
                self._reports(conn, bytes(self.buf[:n]), until, until)
            ups = [c for c in ups if c.sock is not None and c.reported_at < until]

    def count_subflows(self) -> None:
        """The most MPTCP subflows any open connection has had (``MPTCP_INFO``)."""
        if self.proto != IPPROTO_MPTCP:
            return
        from netns.baselines import _subflows

        for conn in self.conns.values():
            if conn.sock is not None and conn.connected:
                self.subflows = max(self.subflows, _subflows(conn.sock) + 1)

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
) -> tuple[Recorder, int]:
    """Run the workload spec from ``start_at`` (CLOCK_MONOTONIC) for ``duration`` s; the
    recorder and the most MPTCP subflows a connection had (0 without MPTCP)."""
    time.sleep(max(0.0, start_at - time.monotonic()))
    engine = RealTimeEngine(start_at)
    rec = Recorder(duration, n_paths)
    tr = SocketTransport(engine, rec, server, bind, mptcp)
    rt = Runtime(engine, tr, rec, duration, seed)  # type: ignore[arg-type]
    workloads = parse(workload)
    for i, w in enumerate(workloads):
        w.begin(rt, i)
    next_info = 1.0
    while True:
        nxt = engine.run_due()
        now = engine.clock()
        if now >= duration:
            break
        if now >= next_info:
            tr.count_subflows()
            next_info = now + 1.0
        wait = min(duration, next_info, nxt if nxt is not None else duration) - now
        for key, mask in tr.sel.select(max(0.0, min(wait, 0.5))):
            tr.handle(key.data, mask)
    tr.drain_uploads(duration)
    engine.now = duration
    for w in workloads:
        w.end(duration)
    tr.close_all()
    rec.events = engine.events
    rec.wall = engine.clock()
    return rec, tr.subflows


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
    rec, subflows = run_client(
        a.workload, a.duration, a.seed, a.server, a.bind, a.mptcp, a.start_at, a.paths
    )
    with open(a.out, "w") as f:
        json.dump({"recorder": recorder_json(rec), "subflows": subflows}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
