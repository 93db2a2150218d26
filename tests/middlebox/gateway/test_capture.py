"""Interop: unmodified Linux TCP clients against the endpoint behind the raw-socket shell.

Each test builds its own namespace pair (client <-> listener over a veth), runs
``python -m bench.capture_app`` in the listener namespace with the test application
behind it, and talks to a documentation-range "server" address that exists nowhere:
only the captured endpoint can answer. (The relay application's tests are in
``tests/bench/test_capture_app.py``.)
"""

from __future__ import annotations

import hashlib
import os
import selectors
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from bench.capture_app import pattern
from bench.tcp_bench import SERVER, NsPair
from netns import plumbing

pytestmark = pytest.mark.netns


def connect(p: NsPair, timeout: float = 10.0) -> socket.socket:
    return p.connect((SERVER, 80), timeout)


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


def test_echo_and_clean_close(ns_pair: NsPair) -> None:
    ns_pair.start()
    s = connect(ns_pair)
    s.sendall(b"ECHO\nhello through the captured endpoint")
    assert s.recv(100) == b"hello through the captured endpoint"
    s.shutdown(socket.SHUT_WR)
    assert s.recv(100) == b""
    s.close()
    st = ns_pair.stats()
    assert st["completed"] == 0 or st["connections_left"] <= 1
    assert st["table"]["opened"] == 1 and st["resets"] == 0


@pytest.mark.parametrize("offload", ["aux", "csum", "gso"])
def test_transfer_both_ways_byte_exact(ns_pair: NsPair, offload: str) -> None:
    ns_pair.start("--offload", offload)
    n = 8_000_000
    got, digest = get(connect(ns_pair), n)
    assert (got, digest) == (n, hashlib.sha256(pattern(n)).hexdigest())
    data = os.urandom(n)
    assert put(connect(ns_pair), data) == f"{n} {hashlib.sha256(data).hexdigest()}\n".encode()
    st = ns_pair.stop()
    assert st and not st["dropped"]
    # the client's TSO segments arrive with the checksum pending: only the kernel's word
    # (vnet header or PACKET_AUXDATA) lets them in
    assert st["checksum_skipped"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["download", "upload"])
def test_100_megabytes_byte_exact(ns_pair: NsPair, direction: str) -> None:
    ns_pair.start()
    n = 100_000_000
    if direction == "download":
        got, digest = get(connect(ns_pair, 60), n)
        assert (got, digest) == (n, hashlib.sha256(pattern(n)).hexdigest())
    else:
        data = pattern(n, seed=11)
        reply = put(connect(ns_pair, 60), data)
        assert reply == f"{n} {hashlib.sha256(data).hexdigest()}\n".encode()


@pytest.mark.slow
@pytest.mark.parametrize("loss", [0.01, 0.05])
def test_loss_and_reordering_byte_exact(ns_pair: NsPair, loss: float) -> None:
    # Frames are dropped and reordered inside the shell, both directions, seeded.
    # The client's veth segments at 1500 bytes so that a loss is one packet, not 64 KiB.
    plumbing.set_link(ns_pair.cns, ns_pair.cif, gso_max_size=1500)
    ns_pair.start("--loss", str(loss), "--reorder", "0.01")
    n = 100_000_000
    got, digest = get(connect(ns_pair, 60), n)
    assert (got, digest) == (n, hashlib.sha256(pattern(n)).hexdigest())
    data = pattern(n, seed=3)
    reply = put(connect(ns_pair, 60), data)
    assert reply == f"{n} {hashlib.sha256(data).hexdigest()}\n".encode()
    st = ns_pair.stop()
    assert st and st["table"]["retransmits"] > 0  # the endpoint did repair losses


def test_client_sends_fin_early_and_keeps_reading(ns_pair: NsPair) -> None:
    ns_pair.start()
    n = 5_000_000
    got, digest = get(connect(ns_pair), n, shut_early=True)
    assert (got, digest) == (n, hashlib.sha256(pattern(n)).hexdigest())


def test_500_concurrent_connections(ns_pair: NsPair) -> None:
    ns_pair.start()
    socks = []
    with plumbing.entered(ns_pair.cns):
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
    st = ns_pair.stats()
    assert st["table"]["opened"] == 500 and st["resets"] == 0


def test_client_vanishing_mid_transfer_is_cleaned_up(ns_pair: NsPair) -> None:
    ns_pair.start("--max-retransmits", "4", "--rto-max", "1")
    s = connect(ns_pair)
    s.sendall(b"GET 50000000\n")
    assert len(s.recv(100000)) > 0
    # the client disappears without a word: its link goes down, no FIN, no RST
    plumbing.set_link(ns_pair.cns, ns_pair.cif, state="down")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        st = ns_pair.stats()
        if st["connections_left"] == 0:
            break
    assert st["connections_left"] == 0 and st["resets"] == 1
    s.close()


def test_curl_download(ns_pair: NsPair, tmp_path: Path) -> None:
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    ns_pair.start()
    out = tmp_path / "body"
    n = 3_000_000
    r = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns_pair.cns,
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


def test_kernel_in_listener_namespace_never_answers(ns_pair: NsPair) -> None:
    # Without the shell, the nft rule is absent and the listener kernel would reset;
    # with the shell, its drop rule keeps the kernel silent while the endpoint answers.
    ns_pair.start()
    assert "meta l4proto tcp drop" in plumbing.run(ns_pair.ens, ["nft", "list", "ruleset"])
    s = connect(ns_pair)
    s.sendall(b"ECHO\nx")
    assert s.recv(10) == b"x"
    s.close()
