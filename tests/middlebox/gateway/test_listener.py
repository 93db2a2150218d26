"""The listener's namespace, veth, routing, rules and nft tables, on real namespaces.

Each test makes a stand-in gateway namespace (unique name, a ``lan0`` with an address)
and runs :class:`Listener` with this thread inside it, as the gateway process runs inside
its own. What setup made is read back with iproute2 and nft; teardown must leave the
gateway namespace as it found it, also after a setup that failed half-way.
"""

from __future__ import annotations

import itertools
import os

import pytest

from middlebox.config import GatewayConfig
from middlebox.errors import UserError
from middlebox.gateway import listener as listener_mod
from middlebox.gateway.listener import Listener, ListenerError, local_prefixes
from netns import plumbing
from netns.errors import PlumbingError

pytestmark = pytest.mark.netns

_counter = itertools.count()


@pytest.fixture
def gwns():
    """A gateway namespace with ``lan0`` (100.64.0.1/24) and forwarding off; removed after."""
    if os.geteuid() != 0:
        pytest.skip("needs root for namespaces")
    sfx = f"{os.getpid() % 10000}-{next(_counter)}"
    gw, ls = f"mptg{sfx}", f"mptl{sfx}"
    plumbing.create(gw)
    try:
        plumbing.veth(gw, "lan0", gw, "lanp")
        plumbing.add_address(gw, "lan0", "100.64.0.1", 24)
        plumbing.sysctl(gw, {"net.ipv4.ip_forward": 0})
        yield gw, ls
    finally:
        plumbing.remove(ls)
        plumbing.remove(gw)


def _config(ls: str) -> GatewayConfig:
    return GatewayConfig(
        lan_interface="lan0",
        listener_namespace=ls,
        bypass=["192.168.0.0/16", "10.0.0.0/8"],
        deny=["10.9.0.0/16"],
    )


def _state(gw: str) -> dict[str, str]:
    """What a listener may change in the gateway namespace, as iproute2 and nft show it."""
    return {
        "rules": plumbing.run(gw, ["ip", "rule"]),
        "routes": plumbing.run(gw, ["ip", "route", "show", "table", "all"]),
        "links": plumbing.run(gw, ["ip", "-o", "link"]).replace("tentative ", ""),
        "nft": plumbing.run(gw, ["nft", "list", "ruleset"]),
        "forward": plumbing.read_sysctl(gw, "net.ipv4.ip_forward"),
    }


def test_setup_makes_the_documented_plumbing_and_teardown_removes_it(gwns):
    gw, ls = gwns
    before = _state(gw)
    lst = Listener(_config(ls))
    with plumbing.entered(gw):
        assert local_prefixes("lan0") == ["100.64.0.0/24"]
        lst.setup()
        try:
            rules = plumbing.run(None, ["ip", "rule"])
            assert "899:\tfrom all to 192.168.0.0/16 iif lan0 lookup main" in rules
            assert "900:\tfrom all iif lan0 ipproto tcp lookup 210" in rules
            assert "10.0.0.0/8" not in rules  # the deny list claims part of it
            table = plumbing.run(None, ["ip", "-d", "route", "show", "table", "210"])
            assert "default via 169.254.210.2 dev mpl-out proto boot" in table
            assert plumbing.addresses(None, "mpl-out") == [("169.254.210.1", 30)]
            assert plumbing.read_sysctl(None, "net.ipv4.conf.mpl-out.rp_filter") == "2"
            assert plumbing.read_sysctl(None, "net.ipv4.ip_forward") == "1"
            nft = plumbing.run(None, ["nft", "list", "table", "inet", "mpproxy_gateway"])
            assert 'iifname "lan0" meta l4proto tcp ip daddr != 192.168.0.0/16 notrack' in nft
            assert 'iifname "mpl-out" ip daddr 100.64.0.0/24 notrack' in nft
            # each passenger's SYNs held to gateway.flow_new_per_source in the kernel
            assert "add @syn_rate { ip saddr limit rate over 500/second burst 500 packets }" in nft
            stray = "add @stray_rate { ip saddr limit rate over 1000/second burst 1000 packets }"
            assert stray in nft  # and its other packets outside known flows
            assert "update @flows" in nft  # flows are learnt from what goes out to the LAN
            assert lst.kernel_counters() == {"syn_rate_dropped": 0, "stray_dropped": 0}
        finally:
            lst.teardown()
        lst.teardown()  # twice: nothing left to do, no error
    # the listener namespace, as it was while it existed, is checked by the capture tests;
    # here: it is gone, and the gateway namespace is as before
    assert not plumbing.exists(ls)
    assert _state(gw) == before


def test_listener_namespace_holds_the_inner_end_and_the_drop_rule(gwns):
    gw, ls = gwns
    lst = Listener(_config(ls))
    with plumbing.entered(gw):
        lst.setup()
    try:
        assert plumbing.addresses(ls, "mpl-in") == [("169.254.210.2", 30)]
        routes = plumbing.run(ls, ["ip", "-d", "route"])
        assert "default via 169.254.210.1 dev mpl-in proto boot" in routes
        nft = plumbing.run(ls, ["nft", "list", "table", "inet", "mpproxy_mpl_in"])
        assert 'iifname "mpl-in" meta l4proto tcp drop' in nft
        for conf in ("all", "default", "mpl-in"):
            assert plumbing.read_sysctl(ls, f"net.ipv4.conf.{conf}.rp_filter") == "0"
    finally:
        with plumbing.entered(gw):
            lst.teardown()
    assert not plumbing.exists(ls)


def test_a_setup_failing_half_way_is_undone_and_reported_in_one_line(gwns, monkeypatch):
    gw, ls = gwns
    before = _state(gw)

    def refuse(name, ruleset):
        raise PlumbingError("nft -f - failed: refused by the test")

    monkeypatch.setattr(listener_mod.plumbing, "nft", refuse)  # after routes and rules
    lst = Listener(_config(ls))
    with plumbing.entered(gw), pytest.raises(ListenerError, match="refused by the test") as e:
        lst.setup()
    assert isinstance(e.value, UserError)
    monkeypatch.undo()
    assert not plumbing.exists(ls)
    assert _state(gw) == before


def test_an_existing_namespace_is_refused_and_left_alone(gwns):
    gw, ls = gwns
    plumbing.create(ls)
    before = _state(gw)
    with plumbing.entered(gw), pytest.raises(ListenerError, match="exists already"):
        Listener(_config(ls)).setup()
    assert plumbing.exists(ls)  # somebody else's: not removed
    assert _state(gw) == before


def test_a_missing_lan_interface_is_refused_before_anything_is_made(gwns):
    gw, ls = gwns
    before = _state(gw)
    cfg = GatewayConfig(lan_interface="nope0", listener_namespace=ls)
    with plumbing.entered(gw), pytest.raises(ListenerError, match="'nope0': no such interface"):
        Listener(cfg).setup()
    assert not plumbing.exists(ls)
    assert _state(gw) == before


def test_udp_is_steered_into_the_listener_and_dropped_there(gwns):
    gw, ls = gwns
    before = plumbing.run(gw, ["ip", "rule"])
    lst = Listener(_config(ls), udp=True)
    with plumbing.entered(gw):
        lst.setup()
    try:
        rules = plumbing.run(gw, ["ip", "rule"])
        assert "900:\tfrom all iif lan0 ipproto tcp lookup 210" in rules
        assert "900:\tfrom all iif lan0 ipproto udp lookup 210" in rules
        nft = plumbing.run(ls, ["nft", "list", "table", "inet", "mpproxy_mpl_in"])
        assert 'iifname "mpl-in" meta l4proto { tcp, udp } drop' in nft
    finally:
        with plumbing.entered(gw):
            lst.teardown()
    assert plumbing.run(gw, ["ip", "rule"]) == before  # (the full state: the test above)
