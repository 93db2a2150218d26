"""The listener's routing rules without namespaces: which prefixes bypass the listener."""

import pytest

from middlebox.config import AclRuleConfig, GatewayConfig
from middlebox.gateway.listener import Listener


def test_routing_bypass_only_for_prefixes_no_rule_can_claim():
    gw = GatewayConfig(bypass=["10.0.0.0/8", "192.168.0.0/16"], deny=["10.9.0.0/16"])
    assert Listener(gw).bypass_rules() == ["192.168.0.0/16"]
    anyrule = [AclRuleConfig(action="allow", src=["100.64.0.0/24"])]  # every destination
    assert Listener(GatewayConfig(acl=anyrule)).bypass_rules() == []
    with pytest.raises(Exception, match="/30"):
        Listener(GatewayConfig(listener_subnet="169.254.1.0/31"))
