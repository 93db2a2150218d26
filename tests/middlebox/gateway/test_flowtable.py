import ipaddress

import pytest

from middlebox.config import AclRuleConfig, GatewayConfig
from middlebox.gateway.flowtable import (
    ACK,
    FIN,
    RST,
    SYN,
    Action,
    FlowTable,
    Rule,
    Rules,
    State,
    Timeouts,
)

CLIENT = "10.1.0.5"
SERVER = "198.51.100.7"


def key(dst=SERVER, dport=443, src=CLIENT, sport=40000):
    return (src, sport, dst, dport)


def table(**kw):
    rules = kw.pop("rules", Rules.make(bypass=["10.0.0.0/8"], deny=["203.0.113.0/24"]))
    return FlowTable(rules, Timeouts(half_open=30, established=7440, closing=240, closed=10), **kw)


def test_default_rules_proxy_deny_bypass():
    t = table()
    assert t.classify(key(), SYN, 0.0) is Action.PROXY
    assert t.classify(key(dst="203.0.113.9"), SYN, 0.0) is Action.DENY
    assert t.classify(key(dst="10.9.9.9"), SYN, 0.0) is Action.BYPASS
    c = t.counters()
    assert c.flows[Action.PROXY] == c.flows[Action.DENY] == c.flows[Action.BYPASS] == 1
    assert c.flows[Action.DROP] == 0
    assert len(t) == 2  # the denied flow is answered and kept nowhere


def test_packed_address_keys_work_like_text():
    t = table()
    k = (
        ipaddress.ip_address(CLIENT).packed,
        1234,
        ipaddress.ip_address("203.0.113.1").packed,
        80,
    )
    assert t.classify(k, SYN, 0.0) is Action.DENY
    k6 = (ipaddress.ip_address("2001:db8::1").packed, 1, ipaddress.ip_address("::1").packed, 80)
    assert t.classify(k6, SYN, 0.0) is Action.PROXY


def test_fast_path_reuses_cached_action_without_reevaluating_rules():
    calls = []

    class CountingRules(Rules):
        def decide(self, src, dst, dport):
            calls.append(dst)
            return super().decide(src, dst, dport)

    t = table(rules=CountingRules.make())
    for i in range(50):
        assert t.classify(key(), SYN if i == 0 else ACK, float(i)) is Action.PROXY
    assert len(calls) == 1
    assert t.get(key()).packets == 50
    assert t.counters().packets[Action.PROXY] == 50
    assert t.lookup(key()) is Action.PROXY and t.lookup(key(dport=1)) is None


def test_acl_first_match_wins_before_lists():
    acl = [
        Rule.make("allow", dst=["10.5.0.0/16"]),  # proxy one prefix inside the bypassed 10/8
        Rule.make("drop", src=["10.1.0.0/24"], dst_ports=["25", "465-587"]),
        Rule.make("deny", dst=["198.51.100.0/24"], dst_ports=["8000-8999"]),
    ]
    t = table(rules=Rules.make(acl, bypass=["10.0.0.0/8"]))
    assert t.classify(key(dst="10.5.1.1"), SYN, 0) is Action.PROXY
    assert t.classify(key(dst="10.6.1.1"), SYN, 0) is Action.BYPASS
    assert t.classify(key(dport=25), SYN, 0) is Action.DROP
    assert t.classify(key(dport=500), SYN, 0) is Action.DROP
    assert t.classify(key(dport=588), SYN, 0) is Action.PROXY
    assert t.classify(key(src="10.2.0.1", dport=25), SYN, 0) is Action.PROXY
    assert t.classify(key(dport=8080), SYN, 0) is Action.DENY
    assert t.classify(key(dst="198.51.101.1", dport=8080), SYN, 0) is Action.PROXY


def test_ipv4_rule_does_not_match_ipv6_with_same_integer():
    # ::a01:1 has the same integer value as 10.1.0.1
    t = table(rules=Rules.make(deny=["10.0.0.0/8"]))
    assert t.classify(key(dst="::a01:1"), SYN, 0) is Action.PROXY
    assert t.classify(key(dst="10.1.0.1"), SYN, 0) is Action.DENY


def test_from_config_with_local_prefixes():
    gw = GatewayConfig(
        acl=[AclRuleConfig(action="deny", dst_ports=["23"])],
        deny=["192.0.2.0/24"],
        bypass=[],
        flow_timeout_half_open=5.0,
        flow_table_size=100,
    )
    t = FlowTable.from_config(gw, local_prefixes=["100.64.0.0/10"])
    assert t.max_flows == 100 and t.timeouts.half_open == 5.0
    assert t.classify(key(dport=23), SYN, 0) is Action.DENY
    assert t.classify(key(dst="192.0.2.1"), SYN, 0) is Action.DENY
    assert t.classify(key(dst="100.64.1.1"), SYN, 0) is Action.BYPASS
    assert t.classify(key(), SYN, 0) is Action.PROXY


def test_state_machine_handshake_fin_both_ways():
    t = table()
    k = key()
    t.classify(k, SYN, 0)
    assert t.get(k).state is State.SYN_SEEN
    t.classify(k, SYN, 0.5)  # retransmitted SYN stays half open
    assert t.get(k).state is State.SYN_SEEN
    t.classify(k, ACK, 1)
    assert t.get(k).state is State.ESTABLISHED
    t.classify(k, ACK | FIN, 2)
    assert t.get(k).state is State.FIN_WAIT
    t.observe_reply(k, ACK | FIN, 3)
    assert t.get(k).state is State.CLOSED


def test_rst_closes_and_new_syn_reclassifies():
    t = table()
    k = key()
    t.classify(k, SYN, 0)
    t.classify(k, ACK, 0)
    t.classify(k, RST, 1)
    assert t.get(k).state is State.CLOSED
    t.rules = Rules.make(deny=[SERVER + "/32"])  # rules changed meanwhile
    assert t.classify(k, SYN, 2) is Action.DENY
    assert t.get(k) is None  # a refused flow keeps no entry: its answer needs none
    assert t.counters().flows[Action.PROXY] == 1 and t.counters().flows[Action.DENY] == 1
    t.rules = Rules.make()
    assert t.classify(k, SYN, 3) is Action.PROXY and t.get(k).state is State.SYN_SEEN


def test_packets_of_no_flow_that_are_not_a_syn_make_no_entry():
    t = table()
    for flags in (ACK, RST, FIN | ACK, RST | ACK, SYN | ACK):
        assert t.classify(key(), flags, 0) is None
    assert len(t) == 0 and t.counters().untracked == 5 and t.next_timer() is None
    assert t.decide(key()) is Action.PROXY and t.decide(key(dst="10.1.1.1")) is Action.BYPASS
    assert len(t) == 0
    # the caller records a flow it learns exists (a SYN-cookie handshake)
    assert t.track(key(), Action.PROXY, State.ESTABLISHED, 1.0)
    assert t.classify(key(), ACK, 2.0) is Action.PROXY and t.get(key()).packets == 1
    assert t.counters().flows[Action.PROXY] == 0  # no SYN was classified


def test_a_flood_of_bare_acks_from_one_source_leaves_room_for_others():
    t = table(max_flows=1024)
    for i in range(65_536):
        assert t.classify(key(sport=i % 60000, dport=1 + i // 60000), ACK, i / 2200) is None
    assert len(t) == 0 and t.counters().untracked == 65_536
    assert t.classify(key(src="10.1.0.6"), SYN, 30.0) is Action.PROXY


def test_per_source_quota_of_entries_and_of_new_entries_per_second():
    t = table(max_flows=1000, max_per_source=100, new_per_source=40)
    now = 0.0
    made = 0
    for i in range(400):  # 400 SYNs from one source over 4 s
        now = i / 100
        made += t.classify(key(sport=i), SYN, now) is Action.PROXY
    c = t.counters()
    assert made == 100 == len(t) and c.source_rate > 0 and c.source_full > 0
    assert c.source_rate + c.source_full == 300
    assert t.classify(key(src="10.1.0.9"), SYN, now) is Action.PROXY  # another passenger
    t2 = table(new_per_source=40)
    ok = [t2.classify(key(sport=i), SYN, 0.5) is Action.PROXY for i in range(50)]
    assert ok == [True] * 40 + [False] * 10
    assert t2.classify(key(sport=99), SYN, 1.0) is Action.PROXY  # the next second


def test_per_state_timeouts():
    t = table()
    half, est, fin = key(sport=1), key(sport=2), key(sport=3)
    t.classify(half, SYN, 0)
    t.classify(est, SYN, 0)
    t.classify(est, ACK, 0)
    t.classify(fin, SYN, 0)
    t.classify(fin, ACK, 0)
    t.classify(fin, FIN | ACK, 0)
    assert t.expire(29.9) == []
    assert [f.key for f in t.expire(30.0)] == [half]
    assert t.expire(239) == []
    assert [f.key for f in t.expire(240)] == [fin]
    assert len(t) == 1
    assert t.expire(7439) == []
    assert [f.key for f in t.expire(7440)] == [est]
    assert t.counters().expired == 3
    assert t.next_timer() is None


def test_activity_postpones_expiry_and_next_timer_is_never_late():
    t = table()
    k = key()
    t.classify(k, SYN, 0)
    t.classify(k, ACK, 0)  # established at 0, but the first heap entry says 30
    for now in (100.0, 5000.0):
        t.classify(k, ACK, now)
        while (when := t.next_timer()) is not None and when <= now:
            assert t.expire(when) == []
    assert t.next_timer() <= 5000 + 7440
    assert t.expire(5000 + 7439.9) == []
    assert len(t.expire(5000 + 7440)) == 1


def test_closing_shortens_pending_timer():
    t = table()
    k = key()
    t.classify(k, SYN, 0)
    t.classify(k, ACK, 0)
    t.classify(k, RST, 100)
    assert t.next_timer() <= 110
    assert len(t.expire(110)) == 1


def test_full_table_drops_the_oldest_half_open_flow_first():
    t = table(max_flows=64)
    for i in range(64):
        t.classify(key(sport=i), SYN, i / 100)
    assert t.classify(key(sport=999), SYN, 1) is Action.PROXY
    assert t.get(key(sport=0)) is None and len(t) == 64  # the oldest half-open one went
    assert t.counters().evicted == 1 and t.counters().overflow == 0
    t.classify(key(sport=1), ACK, 1.0)  # established: not dropped for a newcomer
    t.classify(key(sport=5), RST, 1.0)  # closed: dropped before the older half-open ones
    t.classify(key(sport=1000), SYN, 1.1)
    assert t.get(key(sport=5)) is None and t.get(key(sport=2)) is not None
    t.classify(key(sport=1001), SYN, 1.2)
    assert t.get(key(sport=1)) is not None and t.get(key(sport=2)) is None


def test_full_table_of_established_flows_drops_new_flows_and_counts_them():
    t = table(max_flows=64)
    for i in range(64):
        t.classify(key(sport=i), SYN, 0)
        t.classify(key(sport=i), ACK, 0)
    assert t.classify(key(sport=999), SYN, 1) is Action.DROP
    assert t.get(key(sport=999)) is None
    assert t.counters().overflow == 1
    # once flows time out, room is made on the slow path itself
    assert t.classify(key(sport=999), SYN, 7441) is Action.PROXY
    assert len(t) == 1 and t.sources() == 1


def test_remove_keeps_packet_counters():
    t = table()
    for i in range(3):
        t.classify(key(), ACK if i else SYN, i)
    t.remove(key())
    assert t.counters().packets[Action.PROXY] == 3
    assert len(t) == 0


@pytest.mark.parametrize("bad", [["70000"], ["80-20"], ["x"]])
def test_config_rejects_bad_ports(bad):
    from middlebox.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="dst_ports"):
        from_dict(GatewayConfig, {"acl": [{"action": "deny", "dst_ports": bad}]}, "gateway")
