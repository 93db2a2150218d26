"""Fixtures of the adversarial tests: the node's loopback harness of
tests/middlebox/conftest.py (a node thread, a gateway made of the real Uplink, an echo
server, certificates), loaded from that file so that there is one copy of it."""

import importlib.util
from pathlib import Path

_path = Path(__file__).resolve().parents[1] / "middlebox" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_node_loopback_harness", _path)
_harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_harness)

certs = _harness.certs
echo = _harness.echo
pair = _harness.pair
loopback = _harness.loopback
