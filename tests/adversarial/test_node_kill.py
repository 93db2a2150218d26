"""Integrity when the node dies: SIGKILL mid-upload on the emulated testbed, and the
server sees a reset, never a clean end of a truncated upload (the node's server sockets
carry SO_LINGER 0 until the gateway's direction has ended cleanly). The testbed, the
processes and the listener namespace are removed whatever happens (``ProxyBed``)."""

from __future__ import annotations

import select
import subprocess
import sys
import time

import pytest

from bench.proxy_bench import ProxyBed, start_ready
from netns.topology import SERVER_ADDRS, CarrierSpec, TestbedSpec

pytestmark = [pytest.mark.netns, pytest.mark.slow]

SERVER = SERVER_ADDRS[0]

# Counts what it receives; says "started" after the first MiB, then how the stream ended.
RECORDER = r"""
import socket, sys
s = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
c, _ = s.accept()
n, told = 0, False
try:
    while d := c.recv(1 << 16):
        n += len(d)
        if not told and n >= 1 << 20:
            print("started", flush=True); told = True
    print("eof", n, flush=True)
except ConnectionResetError:
    print("reset", n, flush=True)
"""

UPLOAD = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
block = b"x" * 65536
try:
    while True:
        c.sendall(block)
except OSError as e:
    print("client", type(e).__name__, flush=True)
"""


def line(p: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    assert ready, "no answer in time"
    return p.stdout.readline().decode().strip()


def test_sigkill_of_the_node_mid_upload_resets_the_server(tmp_path):
    spec = TestbedSpec(carriers=(CarrierSpec("20mbit", delay_ms=10),) * 2, clients=1)
    with ProxyBed(spec, tmp_path) as bed:
        rec = start_ready(bed, "server", RECORDER, ["0.0.0.0", "5020"])
        client = bed.tb.popen("client", [sys.executable, "-c", UPLOAD, SERVER, "5020"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        try:
            assert line(rec, 30) == "started"
            assert bed.node is not None
            bed.node.kill()  # SIGKILL: no shutdown code runs
            bed.node.wait(10)
            t = time.monotonic()
            end = line(rec, 15)
            print(f"server: {end!r} {time.monotonic() - t:.3f} s after the kill")
            assert end.startswith("reset"), end
        finally:
            client.kill()
            client.wait(10)
            rec.kill()
            rec.wait(10)
