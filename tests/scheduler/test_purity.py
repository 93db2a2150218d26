"""The scheduler is pure: no middlebox, no sockets, no clock."""

import re
import subprocess
import sys
from pathlib import Path

SCHEDULER = Path(__file__).resolve().parents[2] / "scheduler"


def test_scheduler_never_imports_middlebox():
    code = (
        "import sys, scheduler.policies, scheduler.generators, scheduler.registry\n"
        "sys.exit(1 if any(m.split('.')[0] == 'middlebox' for m in sys.modules) else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_no_socket_or_clock_in_scheduler_sources():
    banned = re.compile(r"^\s*(import|from)\s+(socket|time|datetime|select|selectors)\b", re.M)
    for path in SCHEDULER.rglob("*.py"):
        assert not banned.search(path.read_text()), path
