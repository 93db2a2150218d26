"""Benchmark of the user-space TCP endpoint: ``python -m bench.tcp_bench``.

1. Checksum variants on header-, MSS- and GSO-sized buffers (why checksum.py picks
   what it picks).
2. Single-connection goodput through capture + endpoint, each direction, for each
   offload step (``aux``: PACKET_AUXDATA only; ``csum``: vnet header with checksum
   offload; ``gso``: vnet header with 64 KiB GSO sends), beside the same transfer over
   plain kernel TCP in the same run, with the CPU time of the serving process per MB.

The client is an unmodified Linux TCP socket in its own namespace; the endpoint runs in
a second namespace joined by a veth. Needs root. The machine is shared, so figures are
noisy: run it twice before believing a difference of 10%.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

from bench.capture_app import OFFLOADS
from netns import plumbing
from netns.errors import PlumbingError

ROOT = Path(__file__).resolve().parent.parent
SERVER = "198.51.100.10"
KERNEL_PORT = 5001
_counter = itertools.count()


class NsPair:
    """Client and listener namespaces joined by a veth (10.213.0.2 <-> 10.213.0.1).

    The client's default route points at the listener side, so connections to any
    outside address (the benchmark uses 198.51.100.10) reach the capture shell. With
    ``router=True`` a third namespace forwards between them (client 10.213.0.2, router
    10.213.0.1 / 10.214.0.1, listener 10.214.0.2), where loss can be injected on the
    forwarding path so that it is real loss for both ends and for any server. Built with
    :mod:`netns.plumbing`; :meth:`close` (or leaving a ``with`` block) removes it all.
    """

    def __init__(self, tmp: Path, router: bool = False) -> None:
        sfx = f"{os.getpid() % 10000}{next(_counter)}"
        self.cns, self.ens = f"mptc{sfx}", f"mpte{sfx}"
        self.rns = f"mptr{sfx}" if router else None
        self.cif, self.eif = f"tc{sfx}", f"te{sfx}"
        self.kernel_addr = ("10.214.0.2" if router else "10.213.0.1", KERNEL_PORT)
        self.tmp = Path(tmp)
        self.proc: subprocess.Popen | None = None
        self.stats_path = self.tmp / "stats.json"
        plumbing.create(self.cns)
        try:
            plumbing.create(self.ens)
            if self.rns:
                self._with_router(sfx)
            else:
                self._link(self.cns, self.cif, "10.213.0.2", self.ens, self.eif, "10.213.0.1")
            plumbing.add_route(self.cns, "10.213.0.1", self.cif)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> NsPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _link(ns1: str, if1: str, a1: str, ns2: str, if2: str, a2: str) -> None:
        plumbing.veth(ns1, if1, ns2, if2)
        for ns, dev, addr in ((ns1, if1, a1), (ns2, if2, a2)):
            plumbing.add_address(ns, dev, addr, 24)

    def _with_router(self, sfx: str) -> None:
        r = self.rns
        plumbing.create(r)
        self._link(self.cns, self.cif, "10.213.0.2", r, f"rc{sfx}", "10.213.0.1")
        self._link(r, f"re{sfx}", "10.214.0.1", self.ens, self.eif, "10.214.0.2")
        plumbing.sysctl(r, {"net.ipv4.ip_forward": 1})
        plumbing.add_route(r, "10.214.0.2", f"re{sfx}")
        plumbing.add_route(self.ens, "10.214.0.1", self.eif, dst="10.213.0.0/24")

    def router_loss(self, rate: float) -> None:
        """Drop TCP at random on the router's forwarding path, both directions."""
        assert self.rns, "built without a router"
        plumbing.nft_delete_table(self.rns, "inet", "mpt_loss")
        if rate <= 0:
            return
        rules = (
            "table inet mpt_loss {\n  chain lossy { type filter hook forward priority 0;\n"
            f"    meta l4proto tcp numgen random mod 10000 < {round(rate * 10000)} drop;\n"
            "  }\n}\n"
        )
        plumbing.nft(self.rns, rules)

    def start(self, *extra: str) -> None:
        """Run ``python -m bench.capture_app`` (the test app) in the listener namespace."""
        ready = self.tmp / "ready"
        ready.unlink(missing_ok=True)
        cmd = ["ip", "netns", "exec", self.ens, sys.executable, "-m", "bench.capture_app"]
        cmd += ["--interface", self.eif, "--stats", str(self.stats_path), "--ready", str(ready)]
        self._spawn([*cmd, *extra], ready)

    def start_kernel_server(self) -> None:
        """The baseline: the same test protocol served by kernel TCP in the listener ns."""
        ready = self.tmp / "ready"
        ready.unlink(missing_ok=True)
        cmd = ["ip", "netns", "exec", self.ens, sys.executable, "-m", "bench.tcp_bench"]
        cmd += ["--kernel-server", str(ready)]
        self._spawn(cmd, ready)

    def _spawn(self, cmd: list[str], ready: Path) -> None:
        self.log = open(self.tmp / "server.log", "a")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.tmp / "server.log").read_text()[-2000:])
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        """User + system CPU of the serving process so far."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self) -> dict:
        """Counters from a snapshot written after this call (every half second)."""
        asked = time.time()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if self.stats_path.stat().st_mtime > asked + 0.05:
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        return json.loads(self.stats_path.read_text())

    def stop(self) -> dict | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()
        self.proc = None
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        """Stop the server, then remove the namespaces (and anything left running in them)."""
        self.stop()
        for ns in (self.cns, self.ens, self.rns):
            if ns:
                try:
                    plumbing.remove(ns)
                except PlumbingError as e:  # keep removing the others
                    print(f"tcp_bench: {e}", file=sys.stderr)

    def connect(self, addr: tuple[str, int] = (SERVER, 80), timeout: float = 30.0):
        with plumbing.entered(self.cns):  # the client's socket belongs to its namespace
            return socket.create_connection(addr, timeout=timeout)


def kernel_server(ready: str) -> int:
    """GET n / PUT over kernel TCP, one connection at a time (the baseline)."""
    srv = socket.create_server(("0.0.0.0", KERNEL_PORT))
    Path(ready).touch()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    block = os.urandom(1 << 20)
    while True:
        conn, _ = srv.accept()
        with conn:
            head = b""
            while b"\n" not in head:
                head += conn.recv(100)
            line, _, rest = head.partition(b"\n")
            words = line.split()
            if words[0] == b"GET":
                left = int(words[1])
                mv = memoryview(block)
                while left:
                    k = conn.send(mv[: min(left, len(block))])
                    left -= k
            else:
                n = len(rest)
                while chunk := conn.recv(1 << 20):
                    n += len(chunk)
                conn.sendall(b"%d\n" % n)


def _download(sock: socket.socket, n: int) -> float:
    t0 = time.perf_counter()
    sock.sendall(b"GET %d\n" % n)
    got = 0
    buf = bytearray(1 << 20)
    while (k := sock.recv_into(buf)) > 0:
        got += k
    dt = time.perf_counter() - t0
    sock.close()
    if got < n:
        raise RuntimeError(f"download short: {got} of {n}")
    return dt


def _upload(sock: socket.socket, n: int) -> float:
    block = memoryview(os.urandom(1 << 20))
    t0 = time.perf_counter()
    sock.sendall(b"PUT\n")
    left = n
    while left:
        left -= sock.send(block[: min(left, len(block))])
    sock.shutdown(socket.SHUT_WR)
    reply = b""
    while chunk := sock.recv(200):
        reply += chunk
    dt = time.perf_counter() - t0
    sock.close()
    if not reply.startswith(b"%d" % n):
        raise RuntimeError(f"upload reply {reply!r}")
    return dt


def measure(pair: NsPair, n: int, kernel: bool) -> dict[str, tuple[float, float]]:
    """{direction: (Mbit/s, serving-process CPU seconds per MB)}."""
    addr = pair.kernel_addr if kernel else (SERVER, 80)
    out = {}
    for name, fn in (("download", _download), ("upload", _upload)):
        cpu0 = pair.cpu_seconds()
        dt = fn(pair.connect(addr), n)
        time.sleep(0.05)
        cpu = pair.cpu_seconds() - cpu0
        out[name] = (n * 8 / dt / 1e6, cpu / (n / 1e6))
    return out


def checksum_table() -> list[str]:
    import array

    import numpy as np

    from middlebox.tcp.checksum import checksum

    def int_trick(d: bytes) -> int:
        return int.from_bytes(d, "big") % 65535

    def numpy_sum(d: bytes) -> int:
        return int(np.frombuffer(d, dtype=">u2").sum(dtype=np.uint64)) % 65535

    def array_sum(d: bytes) -> int:
        a = array.array("H", d)
        a.byteswap()
        return sum(a) % 65535

    lines = ["| bytes | int.from_bytes % 65535 | numpy sum | array + sum | chosen (checksum()) |"]
    lines.append("| ---: | ---: | ---: | ---: | ---: |")
    for size in (40, 1460, 65000):
        d = os.urandom(size)
        cells = []
        for fn in (int_trick, numpy_sum, array_sum, checksum):
            k = 2000
            t = timeit.timeit(lambda fn=fn, d=d: fn(d), number=k) / k
            cells.append(f"{t * 1e6:.2f} us")
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="User-space TCP endpoint benchmark")
    p.add_argument("--size", type=int, default=200_000_000, help="bytes per transfer")
    p.add_argument("--offloads", default=",".join(OFFLOADS), help="steps to measure")
    p.add_argument("--checksum-only", action="store_true")
    p.add_argument(
        "--loss",
        default="",
        help="comma-separated loss rates (e.g. 0.01,0.05): also measure kernel TCP and the "
        "endpoint with that random loss on the client's side, both directions",
    )
    p.add_argument("--loss-size", type=int, default=20_000_000, help="bytes per lossy transfer")
    p.add_argument("--kernel-server", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.kernel_server:
        return kernel_server(args.kernel_server)
    print("## Checksum (per call, this machine)\n")
    print("\n".join(checksum_table()))
    if args.checksum_only:
        return 0
    if os.geteuid() != 0:
        print("\n(goodput needs root for namespaces: skipped)")
        return 0
    n = args.size
    print(f"\n## Single connection, {n / 1e6:.0f} MB per transfer, Linux client over veth\n")
    print("| server | download Mbit/s | CPU s/MB | upload Mbit/s | CPU s/MB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        pair = NsPair(Path(tmp))
        try:
            pair.start_kernel_server()
            base = measure(pair, n, kernel=True)
            pair.stop()
            rows = [("kernel TCP (baseline)", base)]
            for off in args.offloads.split(","):
                pair.start("--offload", off)
                rows.append((f"capture + endpoint, offload={off}", measure(pair, n, False)))
                pair.stop()
        finally:
            pair.close()
    for name, r in rows:
        d, u = r["download"], r["upload"]
        print(f"| {name} | {d[0]:.0f} | {d[1]:.4f} | {u[0]:.0f} | {u[1]:.4f} |")
    print("\nRatio to kernel TCP in the same run:")
    for name, r in rows[1:]:
        print(
            f"  {name}: download {r['download'][0] / base['download'][0]:.2f}, "
            f"upload {r['upload'][0] / base['upload'][0]:.2f}"
        )
    print(
        "\nCPU s/MB is the serving process (the capture shell, or the Python kernel-socket "
        "server); the kernel's own softirq work is not in it. 2 shared cores: noisy."
    )
    if args.loss:
        lossy(args.loss_size, [float(x) for x in args.loss.split(",")])
    return 0


def lossy(n: int, rates: list[float]) -> None:
    """Kernel TCP and the endpoint under the same random loss on a router between them.

    Client and listener veths segment at 1500 bytes and the endpoint sends MSS-sized
    segments (``--offload csum``), so one loss is one packet for both servers.
    """
    print(f"\n## With random loss on a router in the path, {n / 1e6:.0f} MB per transfer\n")
    print("| loss | server | download Mbit/s | upload Mbit/s |")
    print("| ---: | --- | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        pair = NsPair(Path(tmp), router=True)
        try:
            plumbing.set_link(pair.cns, pair.cif, gso_max_size=1500)
            plumbing.set_link(pair.ens, pair.eif, gso_max_size=1500)
            for rate in rates:
                pair.router_loss(rate)
                pair.start_kernel_server()
                k = measure(pair, n, kernel=True)
                pair.stop()
                pair.start("--offload", "csum")
                e = measure(pair, n, kernel=False)
                pair.stop()
                for name, r in (("kernel TCP", k), ("endpoint (csum)", e)):
                    print(
                        f"| {rate:.0%} | {name} | {r['download'][0]:.0f} | {r['upload'][0]:.0f} |"
                    )
        finally:
            pair.close()


if __name__ == "__main__":
    sys.exit(main())
