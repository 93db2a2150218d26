"""Interop: unmodified Linux TCP clients against the endpoint behind the raw-socket shell.

Each test builds its own namespace pair (client <-> listener over a veth), runs
``python -m middlebox.gateway.capture`` in the listener namespace with the test application
behind it, and talks to a documentation-range "server" address that exists nowhere:
only the captured endpoint can answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.tcp_bench import SERVER, NsPair
from middlebox.gateway.capture import in_netns, pattern

pytestmark = pytest.mark.netns


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


Pair = NsPair


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


@pytest.mark.parametrize("offload", ["aux", "csum", "gso"])
def test_transfer_both_ways_byte_exact(pair: Pair, offload: str) -> None:
    pair.start("--offload", offload)
    n = 8_000_000
    got, digest = get(connect(pair), n)
    assert (got, digest) == (n, hashlib.sha256(pattern(n)).hexdigest())
    data = os.urandom(n)
    assert put(connect(pair), data) == f"{n} {hashlib.sha256(data).hexdigest()}\n".encode()
    st = pair.stop()
    assert st and not st["dropped"]
    # the client's TSO segments arrive with the checksum pending: only the kernel's word
    # (vnet header or PACKET_AUXDATA) lets them in
    assert st["checksum_skipped"] > 0


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
    n = 100_000_000
    got, digest = get(connect(pair, 60), n)
    assert (got, digest) == (n, hashlib.sha256(pattern(n)).hexdigest())
    data = pattern(n, seed=3)
    reply = put(connect(pair, 60), data)
    assert reply == f"{n} {hashlib.sha256(data).hexdigest()}\n".encode()
    st = pair.stop()
    assert st and st["table"]["retransmits"] > 0  # the endpoint did repair losses


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


def _in_ns(ns: str, *cmd: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)


def test_iperf3_through_the_relay_both_directions(pair: Pair) -> None:
    if not shutil.which("iperf3"):
        pytest.skip("iperf3 not installed")
    srv = _in_ns(
        pair.ens,
        "iperf3",
        "-s",
        "-B",
        "127.0.0.1",
        "-p",
        "5201",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        pair.start("--app", "relay", "--relay-to", "127.0.0.1:5201")
        for reverse in ([], ["-R"]):
            r = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    pair.cns,
                    "iperf3",
                    "-c",
                    SERVER,
                    "-t",
                    "2",
                    "-J",
                    *reverse,
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            result = json.loads(r.stdout)
            assert "error" not in result, result["error"]
            end = result["end"]
            assert end["sum_received"]["bytes"] > 10_000_000
            assert end["sum_sent"]["bytes"] >= end["sum_received"]["bytes"]
        st = pair.stats()
        # a control and a data connection per run (iperf3 may end a stream with RST)
        assert st["table"]["opened"] >= 4 and not st["dropped"]
    finally:
        srv.terminate()
        srv.wait(10)


SLOW_READER = """
import socket, sys, time, hashlib
srv = socket.create_server(("127.0.0.1", 6000))
open(sys.argv[1], "w").close()
conn, _ = srv.accept()
h = hashlib.sha256(); n = 0
while True:
    d = conn.recv(65536)
    if not d:
        break
    h.update(d); n += len(d)
    time.sleep(0.01)  # about 6 MB/s at most
conn.sendall(f"{n} {h.hexdigest()}\\n".encode())
conn.close()
"""


def test_slow_destination_slows_the_client_not_memory(pair: Pair, tmp_path: Path) -> None:
    ready = tmp_path / "reader-ready"
    reader = _in_ns(pair.ens, sys.executable, "-c", SLOW_READER, str(ready))
    try:
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        limit = 256 << 10
        pair.start("--app", "relay", "--relay-to", "127.0.0.1:6000", "--relay-limit", str(limit))
        s = connect(pair, 60)
        data = os.urandom(15_000_000)
        t0 = time.monotonic()
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = s.recv(200)
        elapsed = time.monotonic() - t0
        assert reply == f"{len(data)} {hashlib.sha256(data).hexdigest()}\n".encode()
        assert elapsed > 1.5  # paced by the reader (15 MB at <= 6.5 MB/s), not by the LAN
        st = pair.stats()
        # the endpoint never held more than the room it granted, plus one GRO frame
        assert 0 < st["relay_max_pending"] <= limit + 65536
    finally:
        reader.kill()
        reader.wait(10)


def test_refused_destination_refuses_the_client(pair: Pair) -> None:
    pair.start("--app", "relay", "--relay-to", "127.0.0.1:9")  # nothing listens there
    with pytest.raises(ConnectionRefusedError):
        connect(pair)
