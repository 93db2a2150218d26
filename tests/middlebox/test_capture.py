"""Interop: unmodified Linux TCP clients against the endpoint behind the raw-socket shell.

Each test builds its own namespace pair (client <-> listener over a veth), runs
``python -m middlebox.capture`` in the listener namespace with the test application
behind it, and talks to a documentation-range "server" address that exists nowhere:
only the captured endpoint can answer.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from middlebox.capture import in_netns, pattern

ROOT = Path(__file__).resolve().parents[2]
SERVER = "198.51.100.10"
_counter = itertools.count()

pytestmark = pytest.mark.netns


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


class Pair:
    """Two namespaces joined by a veth; the listener side runs the capture shell."""

    def __init__(self, tmp: Path) -> None:
        sfx = f"{os.getpid() % 10000}{next(_counter)}"
        self.cns, self.ens = f"mptc{sfx}", f"mpte{sfx}"
        self.cif, self.eif = f"tc{sfx}", f"te{sfx}"
        self.tmp = tmp
        self.proc: subprocess.Popen | None = None
        self.stats_path = tmp / "stats.json"
        _ip("netns", "add", self.cns)
        _ip("netns", "add", self.ens)
        _ip("link", "add", self.cif, "type", "veth", "peer", "name", self.eif)
        _ip("link", "set", self.cif, "netns", self.cns)
        _ip("link", "set", self.eif, "netns", self.ens)
        _ip("-n", self.cns, "addr", "add", "10.213.0.2/24", "dev", self.cif)
        _ip("-n", self.ens, "addr", "add", "10.213.0.1/24", "dev", self.eif)
        for ns, dev in ((self.cns, self.cif), (self.ens, self.eif)):
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.cns, "route", "add", "default", "via", "10.213.0.1")

    def start(self, *extra: str) -> None:
        ready = self.tmp / "ready"
        cmd = ["ip", "netns", "exec", self.ens, sys.executable, "-m", "middlebox.capture"]
        cmd += ["--interface", self.eif, "--stats", str(self.stats_path), "--ready", str(ready)]
        self.log = open(self.tmp / "capture.log", "w")
        self.proc = subprocess.Popen(
            [*cmd, *extra], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert self.proc.poll() is None, (self.tmp / "capture.log").read_text()
            assert time.monotonic() < deadline, "capture shell did not start"
            time.sleep(0.05)

    def stats(self) -> dict:
        time.sleep(0.7)  # the shell rewrites its counters every half second
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
        self.stop()
        for ns in (self.cns, self.ens):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


@pytest.fixture
def pair(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("needs root for namespaces")
    p = Pair(tmp_path)
    try:
        yield p
    finally:
        p.close()


def connect(p: Pair, timeout: float = 10.0) -> socket.socket:
    with in_netns(p.cns):
        return socket.create_connection((SERVER, 80), timeout=timeout)


def get(s: socket.socket, n: int, shut_early: bool = False) -> tuple[int, str]:
    s.sendall(b"GET %d\n" % n)
    if shut_early:
        s.shutdown(socket.SHUT_WR)
    h = hashlib.sha256()
    got = 0
    while chunk := s.recv(1 << 20):
        h.update(chunk)
        got += len(chunk)
    return got, h.hexdigest()


def put(s: socket.socket, data: bytes) -> bytes:
    s.sendall(b"PUT\n")
    view = memoryview(data)
    for i in range(0, len(data), 1 << 20):
        s.sendall(view[i : i + (1 << 20)])
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while chunk := s.recv(200):
        reply += chunk
    return reply


def test_echo_and_clean_close(pair: Pair) -> None:
    pair.start()
    s = connect(pair)
    s.sendall(b"ECHO\nhello through the captured endpoint")
    assert s.recv(100) == b"hello through the captured endpoint"
    s.shutdown(socket.SHUT_WR)
    assert s.recv(100) == b""
    s.close()
    st = pair.stats()
    assert st["completed"] == 0 or st["connections_left"] <= 1
    assert st["table"]["opened"] == 1 and st["resets"] == 0


@pytest.mark.parametrize("vnet", [True, False], ids=["vnet-gso", "auxdata"])
def test_transfer_both_ways_byte_exact(pair: Pair, vnet: bool) -> None:
    pair.start(*([] if vnet else ["--no-vnet"]))
    n = 8_000_000
    got, digest = get(connect(pair), n)
    assert (got, digest) == (n, hashlib.sha256(pattern(n)).hexdigest())
    data = os.urandom(n)
    assert put(connect(pair), data) == f"{n} {hashlib.sha256(data).hexdigest()}\n".encode()
    st = pair.stop()
    assert st and st["checksum_skipped"] > 0  # offload information was used
    assert not st["dropped"]


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["download", "upload"])
def test_100_megabytes_byte_exact(pair: Pair, direction: str) -> None:
    pair.start()
    n = 100_000_000
    if direction == "download":
        got, digest = get(connect(pair, 60), n)
        assert (got, digest) == (n, hashlib.sha256(pattern(n)).hexdigest())
    else:
        data = pattern(n, seed=11)
        reply = put(connect(pair, 60), data)
        assert reply == f"{n} {hashlib.sha256(data).hexdigest()}\n".encode()


@pytest.mark.slow
@pytest.mark.parametrize("loss", [0.01, 0.05])
def test_loss_and_reordering_byte_exact(pair: Pair, loss: float) -> None:
    # Frames are dropped and reordered inside the shell, both directions, seeded.
    # The client's veth segments at 1500 bytes so that a loss is one packet, not 64 KiB.
    _ip("-n", pair.cns, "link", "set", pair.cif, "gso_max_size", "1500")
    pair.start("--loss", str(loss), "--reorder", "0.01")
    n = 20_000_000
    got, digest = get(connect(pair, 60), n)
    assert (got, digest) == (n, hashlib.sha256(pattern(n)).hexdigest())
    data = os.urandom(n)
    reply = put(connect(pair, 60), data)
    assert reply == f"{n} {hashlib.sha256(data).hexdigest()}\n".encode()
    st = pair.stop()
    assert st and st["frames_in"] > 0


def test_client_sends_fin_early_and_keeps_reading(pair: Pair) -> None:
    pair.start()
    n = 5_000_000
    got, digest = get(connect(pair), n, shut_early=True)
    assert (got, digest) == (n, hashlib.sha256(pattern(n)).hexdigest())


def test_500_concurrent_connections(pair: Pair) -> None:
    pair.start()
    socks = []
    with in_netns(pair.cns):
        for _ in range(500):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((SERVER, 80))
            socks.append(s)
    sel = selectors.DefaultSelector()
    want = {}
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_WRITE, i)
        want[i] = b"conn %d " % i * 50
    got = {i: b"" for i in want}
    done = set()
    deadline = time.monotonic() + 60
    while len(done) < len(socks) and time.monotonic() < deadline:
        for key, mask in sel.select(1.0):
            i, s = key.data, key.fileobj
            if mask & selectors.EVENT_WRITE:
                assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                s.sendall(b"ECHO\n" + want[i])
                s.shutdown(socket.SHUT_WR)
                sel.modify(s, selectors.EVENT_READ, i)
            else:
                chunk = s.recv(65536)
                if chunk:
                    got[i] += chunk
                else:
                    sel.unregister(s)
                    s.close()
                    done.add(i)
    sel.close()
    assert len(done) == 500
    assert got == want
    st = pair.stats()
    assert st["table"]["opened"] == 500 and st["resets"] == 0


def test_client_vanishing_mid_transfer_is_cleaned_up(pair: Pair) -> None:
    pair.start("--max-retransmits", "4", "--rto-max", "1")
    s = connect(pair)
    s.sendall(b"GET 50000000\n")
    assert len(s.recv(100000)) > 0
    # the client disappears without a word: its link goes down, no FIN, no RST
    _ip("-n", pair.cns, "link", "set", pair.cif, "down")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        st = pair.stats()
        if st["connections_left"] == 0:
            break
    assert st["connections_left"] == 0 and st["resets"] == 1
    s.close()


def test_curl_download(pair: Pair, tmp_path: Path) -> None:
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    pair.start()
    out = tmp_path / "body"
    n = 3_000_000
    r = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            pair.cns,
            "curl",
            "-sS",
            "--max-time",
            "30",
            "-o",
            str(out),
            f"http://{SERVER}/bytes/{n}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == pattern(n)


def test_kernel_in_listener_namespace_never_answers(pair: Pair) -> None:
    # Without the shell, the nft rule is absent and the listener kernel would reset;
    # with the shell, its drop rule keeps the kernel silent while the endpoint answers.
    pair.start()
    r = subprocess.run(
        ["ip", "netns", "exec", pair.ens, "nft", "list", "ruleset"], capture_output=True, text=True
    )
    assert "meta l4proto tcp drop" in r.stdout
    s = connect(pair)
    s.sendall(b"ECHO\nx")
    assert s.recv(10) == b"x"
    s.close()
