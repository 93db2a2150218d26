"""``mpproxy gateway --check`` / ``mpproxy node --check`` (middlebox/check.py): a fake host
with everything in place, then missing each prerequisite in turn (one problem line each,
saying what to fix); the command line; and on a namespace of its own the live host's
facts, carrier source routing missing and then added."""

from __future__ import annotations

import dataclasses
import datetime
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from middlebox import check
from middlebox.check import Host, Link, Problem
from middlebox.cli import main
from middlebox.config import (
    DEFAULT_NODE,
    CarrierConfig,
    Config,
    ContextConfig,
    FleetNodeConfig,
    GatewayConfig,
    NodeConfig,
    TLSConfig,
)
from middlebox.paths import pki

NODE_IP = "203.0.113.10"
DAY = datetime.timedelta(days=1)


class FakeHost(Host):
    """A host whose facts are plain attributes, all in place unless a test removes one."""

    def __init__(self) -> None:
        self.caps = {"net_admin", "net_raw", "sys_admin"}
        self.programs = {"ip", "nft", "mmcli"}
        self.links = {
            "lan0": Link(True, ("192.168.7.1",)),
            "wwan0": Link(True, ("10.20.0.5",)),
            "wwan1": Link(True, ("10.30.0.7",)),
        }
        self.routes = {"10.20.0.5": "wwan0", "10.30.0.7": "wwan1"}
        self.names = {"node.example.net": [NODE_IP]}
        self.namespaces: set[str] = set()
        self.tables: dict[int, int] = {}
        self.avail, self.allowed = {"reno", "cubic", "bbr"}, {"reno", "cubic", "bbr"}
        self.modules = {"veth": True}
        self.nft = None
        self.packet = None
        self.unreadable: set[str] = set()
        self.unwritable: set[str] = set()
        self.bound: dict[int, str] = {}
        self.clock = datetime.datetime.now(datetime.UTC)  # after the certificates were made

    def capabilities(self):
        return set(self.caps)

    def which(self, program):
        return f"/usr/bin/{program}" if program in self.programs else None

    def link(self, name):
        return self.links.get(name)

    def route_out(self, src, dst):
        return self.routes.get(src, "!Network is unreachable")

    def table_routes(self, table):
        return self.tables.get(table, 0)

    def resolve(self, host):
        return self.names.get(host, [])

    def netns_exists(self, name):
        return name in self.namespaces

    def congestion(self):
        return set(self.avail), set(self.allowed)

    def module(self, name):
        return self.modules.get(name, False)

    def nft_error(self):
        return self.nft

    def packet_error(self):
        return self.packet

    def read_error(self, path):
        return "Permission denied" if path in self.unreadable else None

    def dir_error(self, path):
        return f"{path} is not writable" if path in self.unwritable else None

    def bind_error(self, host, port):
        return self.bound.get(port)

    def now(self):
        return self.clock


def gateway_cfg(certs, **change) -> Config:
    certs = certs[0]  # tests/middlebox/conftest.py: (CA directory, a rogue CA's)
    cert, key = pki.gateway_files("train-1")
    cfg = Config(
        gateway=GatewayConfig(
            id="train-1",
            node="node.example.net:4433",
            lan_interface="lan0",
            carriers=[
                CarrierConfig(name="a", interface="wwan0", address="10.20.0.5"),
                CarrierConfig(name="b", type="5g", interface="wwan1"),
            ],
        ),
        tls=TLSConfig(ca=str(certs / "ca.pem"), cert=str(certs / cert), key=str(certs / key)),
    )
    for section, values in change.items():
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section),
                                                                       **values)})  # fmt: skip
    return cfg


def node_cfg(certs, **node) -> Config:
    certs = certs[0]
    return Config(
        node=NodeConfig(id="node-1", listen="0.0.0.0:4433", **node),
        tls=TLSConfig(
            ca=str(certs / "ca.pem"), cert=str(certs / "node.pem"), key=str(certs / "node.key")
        ),
    )


def lines(problems: list[Problem]) -> list[str]:
    return [p.line() for p in problems]


def test_a_ready_host_has_nothing_to_fix(certs):
    assert check.check_gateway(gateway_cfg(certs), FakeHost()) == []
    assert check.check_node(node_cfg(certs), FakeHost()) == []
    text, status = check.report([], "gateway")
    assert (text, status) == ("ok: this host is ready for the gateway", 0)


def _drop(attr, key):
    def change(h):
        v = getattr(h, attr)
        v.pop(key) if isinstance(v, dict) else v.discard(key)

    return change


def _set(attr, value):
    return lambda h: setattr(h, attr, value)


def _later(h, days):
    h.clock += days * DAY


def _link(name, **kw):
    return lambda h: h.links.__setitem__(name, dataclasses.replace(h.links[name], **kw))


# what is missing -> (how the host or the configuration changes, the line's text)
GATEWAY_CASES = {
    "ip": (_drop("programs", "ip"), "problem: program ip: not installed: apt-get install iproute2"),
    "nft": (_drop("programs", "nft"), "program nft: not installed: apt-get install nftables"),
    "cap_net_admin": (_drop("caps", "net_admin"), "capability CAP_NET_ADMIN (for links, "),
    "cap_net_raw": (_drop("caps", "net_raw"), "CAP_NET_RAW (for the AF_PACKET capture): missing"),
    "cap_sys_admin": (_drop("caps", "sys_admin"), "CAP_SYS_ADMIN (for creating and entering"),
    "nftables": (_set("nft", "Operation not supported"), "nftables: nft list tables fails"),
    "veth": (_set("modules", {"veth": False}), "kernel module veth: not available: modprobe veth"),
    "af_packet": (_set("packet", "Address family not supported"), "AF_PACKET sockets: cannot"),
    "bbr": (_set("avail", {"reno", "cubic"}), "congestion_control 'bbr': not in this kernel: "
                                              "modprobe tcp_bbr"),
    "lan": (_drop("links", "lan0"), "gateway.lan_interface 'lan0': no such interface"),
    "lan up": (_link("lan0", up=False), "gateway.lan_interface 'lan0': down: ip link set lan0 up"),
    "namespace": (lambda h: h.namespaces.add("mpp-listen"), "ip netns del mpp-listen"),
    "table": (lambda h: h.tables.__setitem__(210, 3), "holds 3 route(s) already"),
    "modem": (_drop("links", "wwan1"), "carrier 'b' interface 'wwan1': no such interface"),
    "modem up": (_link("wwan1", up=False), "carrier 'b' interface 'wwan1': down: ip link set"),
    "modem address": (_link("wwan1", addresses=()), "'wwan1': has no IPv4 address: connect"),
    "configured address": (_link("wwan0", addresses=("10.20.0.9",)),
                           "carrier 'a' address 10.20.0.5: not on wwan0 (it has 10.20.0.9)"),
    "source routing": (lambda h: h.routes.__setitem__("10.30.0.7", "wwan0"),
                       "problem: carrier 'b' source routing: traffic from 10.30.0.7 to the node "
                       "203.0.113.10 leaves by wwan0, not by wwan1: ip rule add from 10.30.0.7 "
                       "lookup 102 && ip route add default dev wwan1 table 102"),
    "no route": (_drop("routes", "10.20.0.5"),
                 "traffic from 10.20.0.5 to the node 203.0.113.10 cannot reach it (Network is "
                 "unreachable), not by wwan0: ip rule add from 10.20.0.5 lookup 101"),
    "dns": (_set("names", {}), "gateway.node 'node.example.net': does not resolve"),
    "expired": (lambda h: _later(h, 4000), "expired on"),
    "not yet valid": (lambda h: _later(h, -2), "check the host's clock"),
    "control socket": (lambda h: h.unwritable.add("/run/mpproxy"),
                       "gateway.control_socket /run/mpproxy/gateway.sock: cannot be created"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(GATEWAY_CASES))
def test_gateway_host_missing_each_prerequisite(case, certs):
    change, text = GATEWAY_CASES[case]
    host = FakeHost()
    change(host)
    found = lines(check.check_gateway(gateway_cfg(certs), host))
    assert [ln for ln in found if text in ln], found
    assert check.report(check.check_gateway(gateway_cfg(certs), host), "gateway")[1] == 1


def test_gateway_configuration_and_files(certs, tmp_path):
    host = FakeHost()
    cert, key = pki.gateway_files("train-2")
    d, rogue = certs
    wrong_id = gateway_cfg(certs, tls={"cert": str(d / cert), "key": str(d / key)})
    assert any("is for gateway train-2, not gateway.id 'train-1': mpproxy pki gateway --id "
               "train-1" in ln for ln in lines(check.check_gateway(wrong_id, host)))  # fmt: skip
    cert, key = pki.gateway_files("train-1")
    foreign = gateway_cfg(certs, tls={"cert": str(rogue / cert), "key": str(rogue / key)})
    assert any("not signed by tls.ca" in ln for ln in lines(check.check_gateway(foreign, host)))
    missing = gateway_cfg(certs, tls={"key": str(tmp_path / "none.key")})
    assert any(ln.startswith("problem: certificates: tls.key:") and "mpproxy pki" in ln
               for ln in lines(check.check_gateway(missing, host)))  # fmt: skip
    none = gateway_cfg(certs, gateway={"carriers": []})
    assert "problem: gateway.carriers: none: add one" in lines(check.check_gateway(none, host))[0]
    mm = gateway_cfg(certs, context={"source": "modemmanager", "modems": ["0", "1", "2"]})
    host.programs.discard("mmcli")
    found = lines(check.check_gateway(mm, host))
    assert any("context.modems: 3 entries for 2 carrier(s)" in ln for ln in found)
    assert any("context.modem_program 'mmcli': not found: apt-get install modemmanager" in ln
               for ln in found)  # fmt: skip
    cmd = gateway_cfg(certs, context={"source": "command", "command": ["modem-helper"]})
    assert any(
        "context.command 'modem-helper'" in ln for ln in lines(check.check_gateway(cmd, host))
    )
    db = dataclasses.replace(gateway_cfg(certs), context=ContextConfig(use_contextdb=True))
    host.unwritable.add(str(Path(db.contextdb.path).parent))
    assert any(
        ln.startswith("problem: contextdb.path") for ln in lines(check.check_gateway(db, host))
    )


def test_gateway_with_several_nodes_checks_each_of_them(certs):
    """A move to another node of the fleet must not find a carrier that cannot reach it,
    nor a name that does not resolve: every [[gateway.nodes]] entry is checked."""

    class TwoNodes(FakeHost):
        def route_out(self, src, dst):  # carrier b reaches the second node by the LAN only
            if src == "10.30.0.7" and dst == "203.0.113.20":
                return "lan0"
            return super().route_out(src, dst)

    host = TwoNodes()
    host.names["node-b.example.net"] = ["203.0.113.20"]
    fleet = [
        FleetNodeConfig("a", "node.example.net:4433"),
        FleetNodeConfig("b", "node-b.example.net:4433"),
        FleetNodeConfig("c", "node-c.example.net:4433"),
    ]
    cfg = gateway_cfg(certs, gateway={"nodes": fleet, "node": DEFAULT_NODE})
    found = lines(check.check_gateway(cfg, host))
    assert any("gateway.nodes 'c' (node-c.example.net): does not resolve" in ln for ln in found)
    routing = [ln for ln in found if "source routing" in ln]
    assert len(routing) == 1 and "to the node 203.0.113.20 leaves by lan0" in routing[0], found
    assert not any("node.example.net" in ln for ln in found), found


def test_warnings_do_not_fail_the_check(certs):
    host = FakeHost()
    cfg = gateway_cfg(certs, tls={"plaintext": True}, gateway={"node": "127.0.0.1:4433"})
    problems = check.check_gateway(cfg, host)
    assert [p.warning for p in problems] == [True], lines(problems)
    text, status = check.report(problems, "gateway")
    assert status == 0 and text.startswith("warning: tls.plaintext") and "ok:" in text
    soon = FakeHost()
    _later(soon, 825 - 5)
    found = check.check_gateway(gateway_cfg(certs), soon)
    assert found and all(p.warning for p in found) and "renew it" in found[0].fix


NODE_CASES = {
    "port in use": (lambda h: h.bound.__setitem__(4433, "Address already in use"),
                    "node.listen 0.0.0.0:4433: cannot be bound (Address already in use): stop"),
    "bbr missing": (_set("avail", {"reno", "cubic"}), "modprobe tcp_bbr"),
    "bbr not allowed": (_set("allowed", {"reno", "cubic"}),
                        "sysctl -w net.ipv4.tcp_allowed_congestion_control='bbr cubic reno'"),
    "expired": (lambda h: _later(h, 4000), "expired on"),
    "control socket": (lambda h: h.unwritable.add("/run/mpproxy"), "node.control_socket"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(NODE_CASES))
def test_node_host_missing_each_prerequisite(case, certs):
    change, text = NODE_CASES[case]
    host = FakeHost()
    host.caps = set()  # the node runs without capabilities
    change(host)
    found = lines(check.check_node(node_cfg(certs), host))
    assert [ln for ln in found if text in ln], found


def test_node_files_and_privileged_ports(certs, tmp_path):
    host = FakeHost()
    host.caps = set()
    host.bound[443] = "Permission denied"
    low = dataclasses.replace(node_cfg(certs), node=NodeConfig(listen="0.0.0.0:443"))
    assert any("CAP_NET_BIND_SERVICE" in ln for ln in lines(check.check_node(low, host)))
    revoked = str(tmp_path / "revoked")
    host.unreadable.add(revoked)
    cfg = node_cfg(certs, revoked_gateways=revoked)
    assert any(f"node.revoked_gateways {revoked}: cannot be read" in ln
               for ln in lines(check.check_node(cfg, host)))  # fmt: skip
    host.caps = {"net_admin"}
    host.allowed = {"reno"}
    assert not any("allowed" in ln for ln in lines(check.check_node(node_cfg(certs), host)))


# -- the command line and the live host -------------------------------------------------------


def test_check_command_on_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "gw.toml"
    bad.write_text("[gateway]\nflow_table_size = 0\n")
    assert main(["gateway", "--check", "--config", str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("problem: configuration: ") and "gateway.flow_table_size" in out[0]
    assert out[-1] == "1 problem(s): the gateway will not run correctly on this host"


def test_node_check_command_on_this_host(certs, tmp_path, capsys):
    """The live host's facts: a free loopback port, the certificates; every line printed
    is a problem, a warning or the last verdict, and the status says which."""
    toml = tmp_path / "node.toml"
    d = certs[0]
    toml.write_text(
        f'[node]\nlisten = "127.0.0.1:0"\ncontrol_socket = "{tmp_path}/node.sock"\n'
        f'[tls]\nca = "{d}/ca.pem"\ncert = "{d}/node.pem"\nkey = "{d}/node.key"\n'
    )
    rc = main(["node", "--check", "--config", str(toml)])
    out = capsys.readouterr().out.splitlines()
    assert all(ln.startswith(("problem: ", "warning: ")) for ln in out[:-1])
    assert (rc == 0) == out[-1].startswith("ok: ") and (rc == 0) == (
        not any(ln.startswith("problem: ") for ln in out)
    )


@pytest.mark.netns
def test_gateway_check_in_a_namespace(certs, tmp_path):
    """A namespace with a LAN and two modem interfaces: the check finds carrier b's
    missing source routing (its address would leave by carrier a's default route),
    then, with the rule and table it names added, passes."""
    if os.geteuid() != 0:
        pytest.skip("needs root for namespaces")
    from netns import plumbing

    ns = f"mpc-{uuid.uuid4().hex[:8]}"
    plumbing.create(ns)
    try:

        def ip(*args):
            subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)

        for name, addr in (("lan0", "192.168.7.1/24"), ("wwan0", "10.20.0.5/24"),
                           ("wwan1", "10.30.0.7/24")):  # fmt: skip
            ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")
            ip("addr", "add", addr, "dev", name)
            ip("link", "set", name, "up")
            ip("link", "set", f"{name}p", "up")
        ip("route", "add", "default", "via", "10.20.0.1", "dev", "wwan0")
        toml = tmp_path / "gw.toml"
        d = certs[0]
        cert, key = pki.gateway_files("train-1")
        toml.write_text(
            f'[gateway]\nid = "train-1"\nnode = "{NODE_IP}:4433"\nlan_interface = "lan0"\n'
            f'listener_namespace = "{ns}-l"\ncontrol_socket = "{tmp_path}/gw.sock"\n'
            '[[gateway.carriers]]\nname = "a"\ninterface = "wwan0"\naddress = "10.20.0.5"\n'
            '[[gateway.carriers]]\nname = "b"\ninterface = "wwan1"\n'
            f'[tls]\nca = "{d}/ca.pem"\ncert = "{d}/{cert}"\nkey = "{d}/{key}"\n'
        )
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "middlebox.cli", "gateway",
               "--check", "--config", str(toml)]  # fmt: skip
        first = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert first.returncode == 1, first.stdout + first.stderr
        problems = [ln for ln in first.stdout.splitlines() if ln.startswith("problem: ")]
        assert problems == [
            "problem: carrier 'b' source routing: traffic from 10.30.0.7 to the node "
            f"{NODE_IP} leaves by wwan0, not by wwan1: ip rule add from 10.30.0.7 lookup 102 "
            "&& ip route add default dev wwan1 table 102"
        ], first.stdout
        ip("rule", "add", "from", "10.30.0.7", "lookup", "102")
        ip("route", "add", "default", "dev", "wwan1", "table", "102")
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert second.returncode == 0, second.stdout + second.stderr
        assert second.stdout.splitlines()[-1] == "ok: this host is ready for the gateway"
        ip("link", "set", "wwan1", "down")
        third = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert "problem: carrier 'b' interface 'wwan1': down" in third.stdout
    finally:
        plumbing.remove(ns)
