"""The node's destination filter against addresses that hide where they lead.

Before: the node's own addresses were allowed (a gateway could reach whatever the node
runs on its public address), and ``::a.b.c.d``, ``::ffff:0:a.b.c.d`` and
``64:ff9b:1::/48`` counted as global.
"""

from __future__ import annotations

import ipaddress
import os
import uuid

import pytest

from middlebox.config import NodeConfig
from middlebox.node.destpolicy import DestinationPolicy, LocalAddresses, category, embedded_v4


@pytest.mark.parametrize(
    "addr, cat",
    [
        ("::10.1.2.3", "private"),  # IPv4-compatible
        ("::127.0.0.1", "loopback"),
        ("::169.254.169.254", "link-local"),
        ("::ffff:0:10.1.2.3", "private"),  # IPv4-translated (SIIT)
        ("::ffff:0:127.0.0.1", "loopback"),
        ("::ffff:0:169.254.169.254", "link-local"),
        ("::ffff:192.168.1.1", "private"),  # IPv4-mapped
        ("64:ff9b::10.0.0.1", "private"),  # NAT64, well-known prefix
        ("64:ff9b::127.0.0.1", "loopback"),
        ("64:ff9b:1::a00:1", "reserved"),  # local-use NAT64: refused
        ("64:ff9b:1:ffff::1", "reserved"),
        ("::0.0.0.2", "this-network"),
        ("::", "unspecified"),  # not the embedding of 0.0.0.0 ...
        ("::1", "loopback"),  # ... nor of 0.0.0.1
    ],
)
def test_embedded_ipv4_is_judged_by_the_ipv4_address(addr, cat):
    assert category(addr) == cat
    assert not DestinationPolicy().allows(addr)


@pytest.mark.parametrize("addr", ["::8.8.8.8", "::ffff:0:8.8.8.8", "64:ff9b::8.8.8.8"])
def test_embedded_global_ipv4_is_global(addr):
    assert category(addr) is None and DestinationPolicy().allows(addr)


ME4, ME6 = ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("2a00:1450::5")


def own(*addrs):
    return LocalAddresses(read=lambda: {*addrs}, watch=False)


@pytest.mark.parametrize(
    "dst", ["8.8.4.4", "2a00:1450::5", "::ffff:8.8.4.4", "64:ff9b::8.8.4.4", "::8.8.4.4"]
)
def test_the_nodes_own_addresses_are_refused(dst):
    me = [ipaddress.ip_address("8.8.4.4"), ME6]
    p = DestinationPolicy.make(local=own(*me))
    why = p.refusal(dst)
    assert why is not None and "address of the node itself" in why
    # a prefix that covers it does not open it; allow_private_destinations does
    assert not DestinationPolicy.make(allowed=["8.8.0.0/16", "2a00::/16"], local=own(*me)).allows(
        dst
    )
    assert DestinationPolicy.make(allow_private=True, local=own(*me)).allows(dst)
    assert DestinationPolicy.make(local=own()).allows(dst)  # not ours: global


def test_loopback_keeps_its_own_rule():
    lo = ipaddress.ip_address("127.0.0.1")
    p = DestinationPolicy.make(allowed=["127.0.0.0/8"], local=own(lo))
    assert p.allows("127.0.0.1")  # named deliberately by the operator
    assert not DestinationPolicy.make(local=own(lo)).allows("127.0.0.1")


def test_a_failing_read_keeps_the_last_known_addresses():
    calls = []

    def read():
        calls.append(1)
        if len(calls) > 1:
            raise OSError("netlink went away")
        return {ME4}

    la = LocalAddresses(read=read, watch=False)
    la._refresh()
    assert la.addresses == {ME4} and la.counters["own_address_read_errors"] == 1


@pytest.mark.netns
def test_address_changes_are_seen_without_a_restart():
    """In a namespace of its own: an address added to an interface is refused at the next
    check, and allowed again once removed."""
    if os.geteuid() != 0:
        pytest.skip("needs root for namespaces")
    from netns import plumbing

    name = f"mppadm-{uuid.uuid4().hex[:8]}"
    plumbing.create(name)
    try:
        with plumbing.entered(name):
            policy = DestinationPolicy.from_config(NodeConfig())
            assert policy.allows("8.8.4.4")
            plumbing.run(name, ["ip", "addr", "add", "8.8.4.4/32", "dev", "lo"])
            plumbing.run(name, ["ip", "addr", "add", "2a00:1450::5/128", "dev", "lo"])
            assert not policy.allows("8.8.4.4") and not policy.allows("2a00:1450::5")
            assert not policy.allows("::ffff:8.8.4.4")
            plumbing.run(name, ["ip", "addr", "del", "8.8.4.4/32", "dev", "lo"])
            assert policy.allows("8.8.4.4")
            st = policy.status()
            assert "2a00:1450::5" in st["own_addresses"] and st["own_address_reads"] >= 3
            policy.close()
    finally:
        plumbing.remove(name)


def test_embedded_v4_of_plain_addresses():
    assert embedded_v4(ipaddress.ip_address("1.2.3.4")) is None
    assert embedded_v4(ipaddress.ip_address("2a00::1")) is None
    assert str(embedded_v4(ipaddress.ip_address("2002:0808:0808::1"))) == "8.8.8.8"
