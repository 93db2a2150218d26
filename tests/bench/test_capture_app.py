"""The capture app's relay and command line (``bench/capture_app.py``).

The relay runs unmodified kernel-TCP servers (iperf3, a slow reader) behind the endpoint
in a namespace pair (``ns_pair``, see ``tests/conftest.py``): the endpoint's window
follows the destination, and a refused destination refuses the client. Setup errors of
``python -m bench.capture_app`` are one line, not a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.capture_app import main
from bench.tcp_bench import SERVER, NsPair


def connect(p: NsPair, timeout: float = 10.0):
    return p.connect((SERVER, 80), timeout)


def _in_ns(ns: str, *cmd: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)


@pytest.mark.netns
def test_iperf3_through_the_relay_both_directions(ns_pair: NsPair) -> None:
    if not shutil.which("iperf3"):
        pytest.skip("iperf3 not installed")
    srv = _in_ns(
        ns_pair.ens,
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
        ns_pair.start("--app", "relay", "--relay-to", "127.0.0.1:5201")
        for reverse in ([], ["-R"]):
            r = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns_pair.cns,
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
        st = ns_pair.stats()
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


@pytest.mark.netns
def test_slow_destination_slows_the_client_not_memory(ns_pair: NsPair, tmp_path: Path) -> None:
    ready = tmp_path / "reader-ready"
    reader = _in_ns(ns_pair.ens, sys.executable, "-c", SLOW_READER, str(ready))
    try:
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        limit = 256 << 10
        ns_pair.start("--app", "relay", "--relay-to", "127.0.0.1:6000", "--relay-limit", str(limit))
        s = connect(ns_pair, 60)
        data = os.urandom(15_000_000)
        t0 = time.monotonic()
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = s.recv(200)
        elapsed = time.monotonic() - t0
        assert reply == f"{len(data)} {hashlib.sha256(data).hexdigest()}\n".encode()
        assert elapsed > 1.5  # paced by the reader (15 MB at <= 6.5 MB/s), not by the LAN
        st = ns_pair.stats()
        # the endpoint never held more than the room it granted, plus one GRO frame
        assert 0 < st["relay_max_pending"] <= limit + 65536
    finally:
        reader.kill()
        reader.wait(10)


@pytest.mark.netns
def test_refused_destination_refuses_the_client(ns_pair: NsPair) -> None:
    ns_pair.start("--app", "relay", "--relay-to", "127.0.0.1:9")  # nothing listens there
    with pytest.raises(ConnectionRefusedError):
        connect(ns_pair)


def test_setup_errors_are_one_line_and_exit_2(capsys) -> None:
    assert main(["--netns", f"mpt-missing-{os.getpid()}", "--interface", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mpproxy capture: error: no network namespace") and "Traceback" not in err
    assert main(["--interface", "mptnosuchif0", "--no-drop-rule"]) == 2
    err = capsys.readouterr().err
    assert "mptnosuchif0" in err or "CAP_NET_RAW" in err
    assert main(["--interface", "x", "--app", "relay", "--relay-to", "nohost"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
