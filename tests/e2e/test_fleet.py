"""Two nodes on the testbed: the gateway's move when its node is killed, and a drain.

Both node processes run in the testbed's node namespace on one address, on ports 4433
(node-a) and 4434 (node-b): two processes with their own sessions, state and control
socket, which is what the gateway's choice sees. Every process, testbed and file is
removed even when a test fails (``ProxyBed`` and the ``fleet`` fixture).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from bench.proxy_bench import MPPROXY, ROOT, ProxyBed, start_ready
from middlebox import control
from middlebox.gateway.fleet import Candidate, rank, weight
from netns.topology import SERVER_ADDRS, CarrierSpec, TestbedSpec, node_carrier_addr
from tests.e2e.test_proxy import ECHO

pytestmark = [pytest.mark.netns, pytest.mark.slow]

SERVER = SERVER_ADDRS[0]
ECHO_PORT = "5004"
NODES = {"node-a": 4433, "node-b": 4434}
LOST_TIME = 3.0  # gateway.node_lost_time of these tests

# one connection held open, a ping every 0.2 s until the stop file exists; prints how it ended
HOLD = r"""
import os, socket, sys, time
host, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = socket.create_connection((host, port), timeout=30)
print("ready", flush=True)
n = 0
try:
    while not os.path.exists(stop):
        msg = f"ping {n}".encode()
        c.sendall(msg)
        got = b""
        while len(got) < len(msg):
            d = c.recv(4096)
            if not d:
                raise ConnectionError("end of stream")
            got += d
        assert got == msg, got
        n += 1
        time.sleep(0.2)
    print("ok", n, time.monotonic(), flush=True)
except OSError as e:
    print("error", n, time.monotonic(), type(e).__name__, flush=True)
"""

# new connections one after another (each: connect, send, read the echo, close) until the
# stop file exists or a bound of seconds; prints ok, failed and the first errors as JSON
CHURN = r"""
import json, os, socket, sys, time
host, port, stop, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
end = time.monotonic() + limit
ok, errors = 0, []
print("ready", flush=True)
while not os.path.exists(stop) and time.monotonic() < end:
    msg = f"hello {ok + len(errors)}".encode()
    try:
        c = socket.create_connection((host, port), timeout=15)
        c.settimeout(15)
        c.sendall(msg)
        c.shutdown(socket.SHUT_WR)
        got = b""
        while d := c.recv(4096):
            got += d
        c.close()
        if got == msg:
            ok += 1
        else:
            errors.append(f"got {got[:30]!r}")
    except OSError as e:
        errors.append(repr(e))
    time.sleep(0.05)
print(json.dumps({"ok": ok, "failed": len(errors), "errors": errors[:5]}), flush=True)
"""

ONE = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=15)
c.sendall(b"after the move"); c.shutdown(socket.SHUT_WR)
got = b""
while d := c.recv(4096):
    got += d
assert got == b"after the move", got
print("ok")
"""


class Fleet:
    """A ProxyBed whose gateway lists node-a and node-b; node-b is started here."""

    def __init__(self, bed: ProxyBed) -> None:
        self.bed = bed
        self.procs: dict[str, subprocess.Popen] = {}
        self.helpers: list[subprocess.Popen] = []

    def configure(self) -> None:
        b = self.bed
        base = b.node_cfg.read_text()
        a_listen = f"{node_carrier_addr(0)}:4433"
        for name, port in NODES.items():
            text = base.replace('id = "node-1"', f'id = "{name}"')
            text = text.replace(a_listen, f"{node_carrier_addr(0)}:{port}")
            text = text.replace(str(b.dir / "node.sock"), str(b.dir / f"{name}.sock"))
            (b.dir / f"{name}.toml").write_text(text)
        gw = b.gw_cfg.read_text()
        assert f'node = "{a_listen}"\n' in gw
        gw = gw.replace(f'node = "{a_listen}"\n', f"node_lost_time = {LOST_TIME}\n")
        for name, port in NODES.items():
            gw += f'[[gateway.nodes]]\nname = "{name}"\naddress = "{node_carrier_addr(0)}:{port}"\n'
        b.gw_cfg.write_text(gw)

    def start(self) -> None:
        for name in NODES:
            self.procs[name] = self.bed._popen(
                "node", ["node", "--config", str(self.bed.dir / f"{name}.toml")], name
            )
        self.bed.start_gateway()
        self.bed.wait_paths(len(self.bed.spec.carriers), timeout=30)

    def expected_first(self) -> str:
        cands = [Candidate(n, "", weight("train-1", n)) for n in NODES]
        return rank(cands, 0.0, 60.0)[0].name

    def fleet_status(self) -> dict:
        return self.bed.status()["fleet"]

    def wait(self, cond, timeout: float, what: str):
        """Poll the gateway's status until ``cond(fleet status)`` holds (an event, bounded)."""
        end = time.monotonic() + timeout
        while True:
            try:
                st = self.bed.status()
            except control.ControlError:
                st = None
            if st is not None and cond(st):
                return st
            if self.bed.gw is not None and self.bed.gw.poll() is not None:
                raise AssertionError(f"gateway exited: {self.bed.log('gateway')[-3000:]}")
            if time.monotonic() > end:
                raise AssertionError(f"{what}: not within {timeout} s: {st and st['fleet']}\n"
                                     + self.bed.log("gateway")[-3000:])  # fmt: skip
            time.sleep(0.05)

    def helper(self, program: str, *args: str) -> subprocess.Popen:
        p = start_ready(self.bed, "client", program, [*args])
        self.helpers.append(p)
        return p

    def close(self) -> None:
        for p in [*self.helpers, *self.procs.values()]:
            if p.poll() is None:
                p.kill()
            p.wait(10)


@pytest.fixture
def fleet(tmp_path):
    spec = TestbedSpec(carriers=(CarrierSpec("20mbit", delay_ms=10),) * 2, clients=2)
    with ProxyBed(spec, tmp_path, start=False) as bed:
        f = Fleet(bed)
        try:
            f.configure()
            f.start()
            start_ready(bed, "server", ECHO, ["0.0.0.0", ECHO_PORT])
            yield f
        finally:
            f.close()


def up_on(st: dict, name: str) -> bool:
    paths = st["sessions"][0]["paths"]
    return st["fleet"]["chosen"] == name and any(p["state"] == "up" for p in paths)


def test_a_killed_node_the_gateway_is_on_the_other_within_ten_seconds(fleet):
    first = fleet.expected_first()
    other = next(n for n in NODES if n != first)
    st = fleet.wait(lambda s: up_on(s, first), 20, "on its first choice")
    assert {n["name"]: n["state"] for n in st["fleet"]["nodes"]} == {first: "up", other: "up"}
    stop = fleet.bed.dir / "stop-hold"
    held = fleet.helper(HOLD, SERVER, ECHO_PORT, str(stop))
    time.sleep(1.0)  # a few pings through the first node (the run is under way)
    killed_at = time.monotonic()
    fleet.procs[first].send_signal(signal.SIGKILL)
    fleet.procs[first].wait(10)
    st = fleet.wait(lambda s: up_on(s, other), 10.0, "on the other node")
    moved = time.monotonic() - killed_at
    # the connection on the killed node ended with a reset, not a silent hang
    out, _ = held.communicate(timeout=30)
    kind, pings, ended_at, *why = out.decode().split()
    assert kind == "error" and int(pings) >= 2, out
    assert float(ended_at) - killed_at < LOST_TIME + 5.0, (out, killed_at)
    r = fleet.bed.run("client", [sys.executable, "-c", ONE, SERVER, ECHO_PORT], timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == b"ok", r.stderr.decode()[-2000:]
    f = st["fleet"]
    assert f["moves_lost"] == 1 and f["nodes_lost"] >= 1
    assert {n["name"]: n["state"] for n in f["nodes"]}[first] == "lost"
    print(f"moved {moved:.2f} s after SIGKILL; held connection ended {why} after "
          f"{float(ended_at) - killed_at:.2f} s")  # fmt: skip


def test_drain_moves_the_gateway_and_no_new_connection_fails(fleet):
    first = fleet.expected_first()
    other = next(n for n in NODES if n != first)
    fleet.wait(lambda s: up_on(s, first), 20, "on its first choice")
    stop_hold, stop_churn = fleet.bed.dir / "stop-hold", fleet.bed.dir / "stop-churn"
    held = fleet.helper(HOLD, SERVER, ECHO_PORT, str(stop_hold))
    churn = fleet.helper(CHURN, SERVER, ECHO_PORT, str(stop_churn), "90")
    before = fleet.wait(lambda s: s["counters"]["opened"] >= 10, 30, "connections before")
    sock = str(fleet.bed.dir / f"{first}.sock")
    r = subprocess.run([*MPPROXY, "node", "drain", "--socket", sock, "--json"],
                       capture_output=True, timeout=30, cwd=ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    answer = json.loads(r.stdout)
    assert answer["draining"] and answer["remaining"]["connections"] >= 1  # the held one
    drained_at = time.monotonic()
    st = fleet.wait(lambda s: up_on(s, other), 15, "moved off the draining node")
    moved = time.monotonic() - drained_at
    opened_at_move = st["counters"]["opened"]
    fleet.wait(lambda s: s["counters"]["opened"] >= opened_at_move + 10, 30, "connections after")
    stop_churn.touch()
    out, _ = churn.communicate(timeout=60)
    result = json.loads(out.decode().splitlines()[-1])
    assert result["failed"] == 0, result
    assert result["ok"] >= 20, result
    # the held connection kept working on the draining node and finishes there
    drained = control.query(sock)
    assert drained["drain"]["draining"] and drained["drain"]["remaining"]["connections"] >= 1
    stop_hold.touch()
    out, _ = held.communicate(timeout=30)
    assert out.decode().split()[0] == "ok", out
    st = fleet.wait(lambda s: s["fleet"]["uplinks_retired"] == 1, 20, "draining uplink closed")
    f = st["fleet"]
    assert f["moves_drain"] == 1 and f["moves_lost"] == 0
    assert {n["name"]: n["state"] for n in f["nodes"]}[first] == "draining"
    node_b = control.query(str(fleet.bed.dir / f"{other}.sock"))
    assert node_b["counters"]["opened"] >= 10
    assert drained["counters"]["opened"] >= before["counters"]["opened"]
    print(f"moved {moved:.2f} s after the drain; {result['ok']} new connections, none failed")
