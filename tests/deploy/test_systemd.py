"""The systemd units (deploy/systemd/): systemd accepts them and rates their sandbox
(``systemd-analyze verify`` and ``security --offline``, skipped where systemd-analyze is
missing), and on the testbed the real gateway and node run, and carry a download, with
no more capabilities than their units grant (``setpriv``, as the units would start them)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
UNITS = ROOT / "deploy" / "systemd"
MPPROXY = ROOT / ".venv" / "bin" / "mpproxy"
# the most exposure each unit may score in systemd-analyze security (0 best, 10 worst)
EXPOSURE = {"mpproxy-gateway.service": 5.0, "mpproxy-node.service": 2.5}


def unit_value(unit: str, key: str) -> str:
    """The value of ``key`` in a unit file (the last assignment wins, as in systemd)."""
    found = [ln.split("=", 1)[1].strip() for ln in (UNITS / unit).read_text().splitlines()
             if ln.startswith(f"{key}=")]  # fmt: skip
    assert found, f"{unit}: no {key}="
    return found[-1]


def unit_caps(unit: str) -> list[str]:
    """The capabilities a unit's CapabilityBoundingSet grants, as setpriv names them."""
    return [
        c.removeprefix("CAP_").lower() for c in unit_value(unit, "CapabilityBoundingSet").split()
    ]


@pytest.fixture
def units(tmp_path):
    """The units with ExecStart pointing at this checkout's mpproxy (verify wants the
    program to exist)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    out = []
    for u in sorted(UNITS.glob("*.service")):
        text = u.read_text().replace("/usr/local/bin/mpproxy", str(MPPROXY))
        (tmp_path / u.name).write_text(text)
        out.append(tmp_path / u.name)
    assert [u.name for u in out] == sorted(EXPOSURE)
    return out


def test_systemd_accepts_the_units(units):
    for u in units:
        r = subprocess.run(["systemd-analyze", "verify", str(u)], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
        # an unknown or misspelt key is only a warning to systemd: refuse it here
        assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stderr


def test_units_sandbox_exposure(units):
    for u in units:
        r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(u)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        if "--offline" in r.stderr and r.returncode != 0:
            pytest.skip("this systemd-analyze cannot rate a unit file offline")
        last = [ln for ln in r.stdout.splitlines() if "Overall exposure level" in ln][-1]
        score = float(last.split(":")[1].split()[0])
        assert score <= EXPOSURE[u.name], last


def test_units_grant_what_each_process_needs():
    from middlebox.check import GATEWAY_NEEDS

    assert sorted(unit_caps("mpproxy-gateway.service")) == sorted(GATEWAY_NEEDS)
    assert unit_caps("mpproxy-node.service") == ["net_bind_service"]
    assert unit_value("mpproxy-node.service", "AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    assert unit_value("mpproxy-node.service", "User") == "mpproxy"
    for u in EXPOSURE:
        assert unit_value(u, "NoNewPrivileges") == "yes"
        assert unit_value(u, "ProtectSystem") == "strict"
        assert unit_value(u, "PrivateTmp") == "yes"


def limited(caps: list[str]) -> list[str]:
    """Start a program as its unit would: no new privileges, only ``caps`` left."""
    bounding = ",".join(["-all", *(f"+{c}" for c in caps)])
    return ["setpriv", "--no-new-privs", "--inh-caps=-all", f"--bounding-set={bounding}",
            sys.executable, "-m", "middlebox.cli"]  # fmt: skip


@pytest.mark.netns
@pytest.mark.slow
def test_gateway_and_node_run_with_only_their_units_capabilities(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root for namespaces")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv not installed (apt-get install util-linux)")
    from bench.proxy_bench import ProxyBed
    from netns.topology import SERVER_ADDRS, CarrierSpec, TestbedSpec

    spec = TestbedSpec(carriers=(CarrierSpec("20mbit", delay_ms=5),) * 2, clients=1)
    with ProxyBed(spec, tmp_path, start=False) as b:
        gw_caps = unit_caps("mpproxy-gateway.service")
        node = limited([])  # port 4433: the node's one capability is not needed
        check = b.run("gateway", [*limited(gw_caps), "gateway", "--check", "--config",
                                  str(b.gw_cfg)])  # fmt: skip
        text = check.stdout.decode()
        assert "capability" not in text, text
        fewer = b.run("gateway", [*limited(gw_caps[1:]), "gateway", "--check", "--config",
                                  str(b.gw_cfg)])  # fmt: skip
        assert f"problem: capability CAP_{gw_caps[0].upper()}" in fewer.stdout.decode()
        logs = {n: open(tmp_path / f"{n}.log", "ab") for n in ("node", "gateway")}
        try:
            b.node = b.tb.popen("node", [*node, "node", "--config", str(b.node_cfg)],
                                stdout=logs["node"], stderr=logs["node"], cwd=ROOT)  # fmt: skip
            b.gw = b.tb.popen("gateway", [*limited(gw_caps), "gateway", "--config",
                                          str(b.gw_cfg)],
                              stdout=logs["gateway"], stderr=logs["gateway"], cwd=ROOT)  # fmt: skip
            b.wait_paths(2)
            www = tmp_path / "www"
            www.mkdir()
            blob = os.urandom(2 << 20)
            (www / "blob").write_bytes(blob)
            b.server([sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "8080",
                      "--directory", str(www)], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)  # fmt: skip
            got = tmp_path / "got"
            for _ in range(20):  # until the server listens (the proxy resets the client before)
                time.sleep(0.5)
                r = b.run("client", ["curl", "-sS", "-o", str(got),
                                     f"http://{SERVER_ADDRS[0]}:8080/blob"])  # fmt: skip
                if r.returncode == 0:
                    break
            assert r.returncode == 0, r.stderr.decode() + b.log("gateway")[-2000:]
            assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(blob).digest()
            # the gateway really ran with those capabilities only
            status = Path(f"/proc/{b.gw.pid}/status").read_text()
            eff = next(ln for ln in status.splitlines() if ln.startswith("CapBnd:"))
            assert int(eff.split()[1], 16) == sum(1 << n for n in _numbers(gw_caps)), status
        finally:
            b.stop_gateway()
            b.stop_node()
            for f in logs.values():
                f.close()
        assert "stopped" in b.log("gateway")  # and it cleaned up within the same limits


def _numbers(caps: list[str]) -> list[int]:
    from middlebox.check import CAPABILITIES

    return [CAPABILITIES[c] for c in caps]
