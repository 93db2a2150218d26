import pytest

from middlebox.config import NodeConfig
from middlebox.node.destpolicy import DestinationPolicy, category

# (address, category) for every refused range, both families, at both ends of each range
SPECIAL = [
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("255.255.255.255", "broadcast"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.255", "multicast"),
    ("ff02::1", "multicast"),
    ("ff0e::1234", "multicast"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("169.254.169.254", "link-local"),  # cloud metadata endpoint
    ("169.254.0.1", "link-local"),
    ("fe80::1", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.0.1", "private"),
    ("192.168.255.255", "private"),
    ("fc00::1", "private"),
    ("fdff:ffff::1", "private"),
    ("100.64.0.1", "shared"),
    ("100.127.255.254", "shared"),
    ("0.1.2.3", "this-network"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.254", "reserved"),
    ("192.0.0.8", "reserved"),
    ("198.18.0.1", "reserved"),
    ("198.19.255.254", "reserved"),
    ("100::1", "reserved"),
    ("2001::1", "reserved"),  # Teredo
    ("fec0::1", "reserved"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.200", "documentation"),
    ("203.0.113.254", "documentation"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    # IPv6 forms that carry an IPv4 address are judged by it
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.1.2.3", "private"),
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
    ("2002:c0a8:0101::1", "private"),  # 6to4 of 192.168.1.1
]
GLOBAL = [
    "1.1.1.1",
    "8.8.8.8",
    "9.255.255.255",
    "11.0.0.1",
    "172.15.255.255",
    "172.32.0.0",
    "192.167.255.255",
    "192.169.0.0",
    "100.63.255.255",
    "100.128.0.0",
    "223.255.255.255",
    "2606:4700::1111",
    "2a00:1450::1",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
]


@pytest.mark.parametrize("addr, cat", SPECIAL)
def test_special_ranges_are_refused_by_default(addr, cat):
    assert category(addr) == cat
    reason = DestinationPolicy().refusal(addr)
    assert reason is not None and cat in reason


@pytest.mark.parametrize("addr", GLOBAL)
def test_global_unicast_is_allowed(addr):
    assert category(addr) is None
    assert DestinationPolicy().allows(addr)


@pytest.mark.parametrize("addr, cat", SPECIAL)
def test_allow_private_opens_all_but_never_categories(addr, cat):
    allowed = DestinationPolicy(allow_private=True).allows(addr)
    assert allowed == (cat not in ("unspecified", "broadcast", "multicast"))


def test_allowed_destinations_open_exactly_their_prefixes():
    p = DestinationPolicy.make(
        allowed=["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "10.20.0.0/16", "::1/128"]
    )
    for ok in ("192.0.2.10", "198.51.100.1", "203.0.113.9", "10.20.3.4", "::1"):
        assert p.allows(ok), ok
    for refused in ("10.21.0.1", "127.0.0.1", "192.168.0.1", "2001:db8::1", "169.254.169.254"):
        assert not p.allows(refused), refused
    # an allow entry never opens the categories no TCP can reach
    assert not DestinationPolicy.make(allowed=["0.0.0.0/0"]).allows("224.0.0.1")
    assert not DestinationPolicy.make(allowed=["0.0.0.0/0"]).allows("0.0.0.0")


def test_from_config_and_bad_input():
    node = NodeConfig(allowed_destinations=["203.0.113.0/24"])
    p = DestinationPolicy.from_config(node)
    assert p.allows("203.0.113.5") and not p.allows("198.51.100.5")
    assert DestinationPolicy.from_config(NodeConfig(allow_private_destinations=True)).allows(
        "10.0.0.1"
    )
    assert "not an IP address" in DestinationPolicy().refusal("example.com")
    assert "node.allowed_destinations" in DestinationPolicy().refusal("10.0.0.1")
