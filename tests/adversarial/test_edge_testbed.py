"""The gateway's edge under attack on the emulated testbed (gateway, node, real kernels).

One passenger (client address 0) downloads through the proxy; another (address 1)
floods the gateway from a raw socket with SYNs, then with bare ACKs of no connection; a
third (address 2) opens new connections meanwhile. The download keeps at least 90 % of
its goodput without the attack and every new connection completes within 1 s. Rates
are those the issue measured as harmful (1 000 SYN/s, 2 200 ACK/s), doubled for SYNs,
and stray ACKs as fast as the sender can (72 000/s on a quiet machine: without the
kernel's stray rate the victim kept 43-46 %); ``python -m bench.edge_bench synflood``
runs longer, and SYNs as fast as the sender can too.
"""

from __future__ import annotations

import pytest

from bench.edge_bench import attacked_download, drop_replies_to_attacker, flood_attack
from bench.proxy_bench import ProxyBed
from netns import baselines
from netns.topology import CarrierSpec, TestbedSpec

pytestmark = [pytest.mark.netns, pytest.mark.slow]

SECONDS = 5.0
# far below the default (1000/s): the transfers beside the floods (about 800 ACKs a
# second each way) would crawl if the kernel held their packets as strays, so every test
# here also shows that packets of flows the gateway answered are never limited
STRAY = 20


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    spec = TestbedSpec(carriers=(CarrierSpec("10mbit", delay_ms=10),) * 2, clients=3)
    gateway = {"stray_per_source": STRAY}
    with ProxyBed(spec, tmp_path_factory.mktemp("edge"), gateway=gateway) as b:
        srv = baselines.start_server(b.tb)
        try:
            drop_replies_to_attacker(b)
            attacked_download(b, None, 0, 2.0, 1)  # the paths warm up
            yield b
        finally:
            srv.terminate()


@pytest.fixture(scope="module")
def quiet(bed):
    r = attacked_download(bed, None, 0, SECONDS)
    assert all(0 < t < 1.0 for t in r["connect_s"]), r
    # 2 carriers of 10 Mbit/s (18.6 measured); held as strays it would be below 1
    assert r["goodput_mbit"] > 14, r
    return r


def unharmed(r: dict, quiet: dict, rate: float, share: float = 0.9) -> dict:
    """The flood ran at its rate, the download kept ``share`` (90 %) of its goodput
    without it, and each new connection of the third passenger completed within 1 s."""
    assert r["flood"]["rate"] > 0.8 * rate, r
    assert r["goodput_mbit"] >= share * quiet["goodput_mbit"], (r, quiet)
    assert all(0 < t < 1.0 for t in r["connect_s"]), r
    return r["gateway"]


@pytest.mark.timeout(120)
def test_syn_flood_beside_a_download_and_a_new_passenger(bed, quiet):
    r = attacked_download(bed, "syn", 2000, SECONDS)
    gw = unharmed(r, quiet, 2000)
    # the kernel drops what is beyond the passenger's SYN rate; what passes fills the
    # passenger's half-open slots and is then answered with cookies
    assert gw["syn_rate_dropped"] > 0 and gw["syn_cookies_sent"] > 0 and gw["half_open"] <= 64, r
    assert gw["mux_connections"] <= 1 + len(r["connect_s"])  # no OPEN for a bare SYN


@pytest.mark.timeout(120)
def test_ack_flood_beside_a_download_and_a_new_passenger(bed, quiet):
    r = attacked_download(bed, "ack", 2200, SECONDS)
    gw = unharmed(r, quiet, 2200)
    # the kernel passes gateway.stray_per_source a second of them to the capture, which
    # keeps no entry for them, and drops the rest
    seen = gw.get("untracked_packets", 0) + gw.get("stray_dropped", 0)
    assert seen >= r["flood"]["sent"] * 0.9 and gw.get("stray_dropped", 0) > 0, r
    before, after = gw["flows_tracked"]
    assert after <= before + len(r["connect_s"]) + 1, r  # the ACKs made no entry


@pytest.mark.timeout(120)
def test_full_rate_stray_ack_flood_is_dropped_in_the_kernel(bed, quiet):
    r = attacked_download(bed, "ack", 0, SECONDS)  # as fast as the sender can
    # the target is 90 % (101 % measured beside other work); the margin is for a loaded
    # machine, where the flooder and the gateway share two cores with everything else
    gw = unharmed(r, quiet, 5000, share=0.8)
    sent = r["flood"]["sent"]
    # beyond gateway.stray_per_source the kernel drops the flood. Not all that was sent
    # arrives (a veth drops what its ring cannot take at full rate: 5 % seen), so 90 %
    # of it. The capture reads the rate and its burst, and one packet of each tuple the
    # SYN flood test had answered with a SYN-ACK (the flooder's ports repeat; before a
    # SYN-ACK admitted only one, 11 733 of 187 840 were read): at most a tenth
    assert gw["stray_dropped"] >= 0.9 * sent, r
    assert gw.get("untracked_packets", 0) <= 0.1 * sent, r


@pytest.mark.timeout(120)
def test_stray_flood_on_tuples_a_syn_ack_answered_is_held(bed, quiet):
    """A passenger SYNs 400 tuples (below its SYN rate: each gets a SYN-ACK, most of
    them cookies), then floods bare ACKs on exactly those tuples as fast as it can. A
    SYN-ACK admits one packet of its tuple (the handshake's ACK) and no more, so the
    flood is held by the stray rate like any other; when a SYN-ACK made its tuple known
    for gateway.flow_timeout_half_open, the whole flood reached the capture."""
    r = attacked_download(
        bed, None, 0, SECONDS, attack=flood_attack("synack", 0, SECONDS + 1.5, 400)
    )
    gw = unharmed(r, quiet, 5000, share=0.8)  # the margin of the full-rate test above
    sent = r["flood"]["sent"]
    # what the capture read: a packet per SYN-ACK, the stray rate and its burst
    assert gw["stray_dropped"] >= 0.9 * sent, r
    assert gw.get("untracked_packets", 0) <= 400 + STRAY * (SECONDS + 3) + 0.05 * sent, r
