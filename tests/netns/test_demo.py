"""``mpproxy demo`` runs the baselines and the proxy on the bundled traces, every row on the
same trace seconds, and prints the table."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def test_demo_prints_goodput_per_carrier_mptcp_and_proxy_on_the_same_seconds(traces, tmp_path):
    out_dir = tmp_path / "replay"
    proc = subprocess.run(
        [sys.executable, "-m", "middlebox.cli", "demo", "--seconds", "3", "--out", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"(.+?)\s+(\d+\.\d+) Mb\s+(\d+\.\d+) Mb\s+(\d+)%\s+(\S+)$", line)
        if m:
            rows[m.group(1).strip()] = (float(m.group(2)), float(m.group(3)), m.group(5))
    baseline_rows = {
        "TCP over ATT-LTE-driving",
        "TCP over TMobile-LTE-short",
        "TCP over Verizon-LTE-short",
        "kernel MPTCP, all carriers",
    }
    assert baseline_rows <= set(rows)  # the proxy's own rows may follow
    for goodput, offered, _ in (rows[r] for r in baseline_rows):
        assert 0 < goodput <= offered * 1.05  # never more than the traces offered
    mp_goodput, mp_offered, mp_subflows = rows["kernel MPTCP, all carriers"]
    assert mp_subflows == "3"
    # every row runs on a fresh testbed: MPTCP is offered what the three singles were
    singles = sum(offered for label, (_, offered, _) in rows.items() if label.startswith("TCP"))
    assert mp_offered == pytest.approx(singles, rel=0.15)
    assert "removed" in proc.stdout
    # the proxy's own rows, then the replay comparison of every policy
    proxy_goodput, proxy_offered, _ = rows["mpproxy, all carriers"]
    assert 0 < proxy_goodput <= proxy_offered * 1.05
    # the same trace seconds as MPTCP: offered the very same capacity, not a share of
    # another stretch
    assert proxy_offered == pytest.approx(mp_offered, rel=0.01)
    up_goodput, up_offered, _ = rows["mpproxy upload, all carriers"]
    assert 0 < up_goodput <= up_offered * 1.05
    assert "every row ran on trace seconds 3-6" in proc.stdout.lower().replace("\n", " ")
    assert f"replay report: {out_dir / 'report.md'}" in proc.stdout
    assert (out_dir / "report.md").is_file()
    for policy in ("context", "minrtt", "roundrobin", "redundant", "ecf", "blest"):
        assert re.search(rf"^\| {policy} \| \d", proc.stdout, re.M), policy
