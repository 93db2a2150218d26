"""The control socket: a second process never takes over a live one's socket.

Before: a second gateway or node on the same configuration silently unlinked the first
one's control socket (``mpproxy status`` then reached the newcomer, and the first could
not be asked any more).
"""

from __future__ import annotations

import selectors
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from middlebox import control
from middlebox.control import ControlError, ControlServer

ROOT = Path(__file__).resolve().parents[2]


def test_a_live_socket_is_not_taken_over(tmp_path):
    path = str(tmp_path / "gw.sock")
    first = ControlServer(path, lambda: {"role": "first"})
    sel = selectors.DefaultSelector()
    first.register(sel)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            for key, mask in sel.select(0.05):
                key.data(mask, time.monotonic())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with pytest.raises(ControlError, match="another process is running and answers on it"):
            ControlServer(path, lambda: {"role": "second"})
        assert control.query(path, timeout=5) == {"role": "first"}  # still the first's
    finally:
        stop.set()
        t.join(5)
        first.close()
        sel.close()


def test_a_stale_socket_is_replaced(tmp_path):
    path = tmp_path / "gw.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))  # bound, never listening: as left by a killed process
    dead.close()
    assert path.is_socket()
    s = ControlServer(str(path), lambda: {"role": "new"})
    s.close()


def test_a_socket_of_another_process_in_another_program(tmp_path):
    """The refusal seen from the command line: one line, no traceback."""
    path = str(tmp_path / "n.sock")
    first = ControlServer(path, lambda: {})
    prog = f"from middlebox.control import ControlServer\nControlServer({path!r}, dict)\n"
    try:
        r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True,
                           cwd=ROOT, timeout=30)  # fmt: skip
        assert r.returncode != 0 and "another process is running" in r.stderr
    finally:
        first.close()


def test_other_files_are_never_removed(tmp_path):
    p = tmp_path / "not-a-socket"
    p.write_text("keep me")
    with pytest.raises(ControlError, match="control socket"):
        ControlServer(str(p), dict)
    assert p.read_text() == "keep me"


def test_unusable_directory_is_a_control_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ControlError):
        ControlServer(str(tmp_path / "file" / "x.sock"), dict)


def test_query_a_stale_socket():
    with pytest.raises(ControlError, match="no control socket"):
        control.query("/nonexistent/dir/x.sock", timeout=0.5)
