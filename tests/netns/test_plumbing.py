"""The namespace plumbing on real namespaces: each step, its errors, entering in-thread.

Every test makes its own namespaces with unique names (``names``) and removes them
afterwards, also when it fails.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import threading
import time

import pytest

from netns import plumbing
from netns.errors import NetnsError, PlumbingError, TestbedError

pytestmark = pytest.mark.netns

_counter = itertools.count()


@pytest.fixture
def names():
    """``names()`` gives a fresh namespace name; all of them are removed after the test."""
    made: list[str] = []

    def fresh() -> str:
        made.append(f"mptp{os.getpid() % 10000}-{next(_counter)}")
        return made[-1]

    try:
        yield fresh
    finally:
        for name in made:
            plumbing.remove(name)


def _here() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def _inode(name: str) -> str:
    return f"net:[{os.stat(os.path.join(plumbing.NETNS_DIR, name)).st_ino}]"


def test_errors_have_their_own_family():
    assert issubclass(PlumbingError, NetnsError) and issubclass(TestbedError, NetnsError)
    assert not issubclass(PlumbingError, TestbedError)


def test_create_and_remove(names):
    a = names()
    plumbing.create(a)
    assert plumbing.exists(a)
    assert "<LOOPBACK,UP,LOWER_UP>" in plumbing.run(a, ["ip", "link", "show", "lo"])
    with pytest.raises(PlumbingError, match="already exists"):
        plumbing.create(a)
    plumbing.remove(a)
    assert not plumbing.exists(a)
    plumbing.remove(a)  # gone already: fine


def test_entered_switches_this_thread_only_and_never_creates(names):
    a, missing = names(), names()
    plumbing.create(a)
    before = _here()
    go, seen = threading.Event(), []
    other = threading.Thread(target=lambda: (go.wait(10), seen.append(_here())))
    other.start()
    with plumbing.entered(a):
        assert _here() == _inode(a)
        go.set()
        other.join()
        assert seen == [before]  # a thread that was running stays where it is
    assert _here() == before
    with pytest.raises(PlumbingError, match="no network namespace"):
        with plumbing.entered(missing):
            pass
    assert not plumbing.exists(missing)
    with plumbing.entered(None):
        assert _here() == before


def test_entered_from_a_worker_thread_comes_back_to_that_thread(names):
    a, b = names(), names()
    plumbing.create(a)
    plumbing.create(b)
    seen = []

    def work() -> None:
        with plumbing.entered(a):
            with plumbing.entered(b):
                seen.append(_here())
            seen.append(_here())
        seen.append(_here())

    before = _here()
    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [_inode(b), _inode(a), before]


def test_links_addresses_routes_and_rules(names):
    a, b = names(), names()
    plumbing.create(a)
    plumbing.create(b)
    plumbing.veth(a, "pa0", b, "pb0")
    assert plumbing.has_link(a, "pa0") and plumbing.has_link(b, "pb0")
    assert not plumbing.has_link(a, "pb0")
    plumbing.add_address(a, "pa0", "10.250.0.1", 30)
    plumbing.add_address(b, "pb0", "10.250.0.2", 30)
    assert plumbing.addresses(a, "pa0") == [("10.250.0.1", 30)]
    assert ("127.0.0.1", 8) in plumbing.addresses(a)

    plumbing.add_route(a, "10.250.0.2", "pa0", dst="192.0.2.0/24")
    plumbing.add_route(a, "10.250.0.2", "pa0", table=300, replace=True)
    plumbing.add_route(a, "10.250.0.2", "pa0", table=300, replace=True)  # replace: no error
    routes = plumbing.run(a, ["ip", "-d", "route", "show", "table", "all"])
    assert "192.0.2.0/24 via 10.250.0.2 dev pa0 table main proto boot" in routes  # as `ip`
    assert "default via 10.250.0.2 dev pa0 table 300 proto boot" in routes
    with pytest.raises(PlumbingError, match="ip route add 192.0.2.0/24 .*: File exists"):
        plumbing.add_route(a, "10.250.0.2", "pa0", dst="192.0.2.0/24")

    tcp = plumbing.Rule(900, 300, iif="pa0", ipproto=socket.IPPROTO_TCP)
    main = plumbing.Rule(899, plumbing.MAIN_TABLE, iif="pa0", to="198.51.100.0/24")
    assert str(main) == "iif pa0 to 198.51.100.0/24 lookup main priority 899"
    plumbing.add_rule(a, main)
    plumbing.add_rule(a, tcp)
    rules = plumbing.run(a, ["ip", "rule"])
    assert "899:\tfrom all to 198.51.100.0/24 iif pa0 lookup main" in rules
    assert "900:\tfrom all iif pa0 ipproto tcp lookup 300" in rules
    plumbing.delete_rule(a, tcp)
    plumbing.delete_rule(a, main)
    assert "pa0" not in plumbing.run(a, ["ip", "rule"])
    with pytest.raises(PlumbingError, match=f"ip rule del {tcp}"):
        plumbing.delete_rule(a, tcp)

    plumbing.flush_table(a, 300)
    assert plumbing.run(a, ["ip", "route", "show", "table", "300"]) == ""
    assert "192.0.2.0/24" in plumbing.run(a, ["ip", "route"])  # other tables untouched

    plumbing.set_link(a, "pa0", gso_max_size=1500)
    assert "gso_max_size 1500" in plumbing.run(a, ["ip", "-d", "link", "show", "pa0"])
    plumbing.delete_link(a, "pa0")
    assert not plumbing.has_link(b, "pb0")  # the peer goes with it


def test_a_veth_from_this_threads_namespace(names):
    a, b = names(), names()
    plumbing.create(a)
    plumbing.create(b)
    with plumbing.entered(a):
        plumbing.veth(None, "out0", b, "in0", up=False)
        assert plumbing.has_link(None, "out0")
    assert plumbing.has_link(a, "out0") and plumbing.has_link(b, "in0")
    assert "state DOWN" in plumbing.run(b, ["ip", "link", "show", "in0"])


def test_failures_name_the_step(names):
    a = names()
    plumbing.create(a)
    with pytest.raises(PlumbingError, match="no interface nope0"):
        plumbing.add_address(a, "nope0", "10.250.1.1", 24)
    plumbing.veth(a, "dup0", a, "dup1")
    with pytest.raises(PlumbingError, match=r"ip link add dup0 type veth .*File exists"):
        plumbing.veth(a, "dup0", a, "dup2")
    with pytest.raises(PlumbingError, match="no network namespace"):
        plumbing.add_address(names(), "lo", "10.250.1.1", 24)


def test_sysctls_are_per_namespace(names):
    a = names()
    plumbing.create(a)
    here = plumbing.read_sysctl(None, "net.ipv4.ip_forward")
    plumbing.sysctl(a, {"net.ipv4.ip_forward": 1 - int(here)})
    assert plumbing.read_sysctl(a, "net.ipv4.ip_forward") == str(1 - int(here))
    assert plumbing.read_sysctl(None, "net.ipv4.ip_forward") == here
    with pytest.raises(PlumbingError, match="sysctl net.ipv4.conf.nope0.rp_filter"):
        plumbing.sysctl(a, {"net.ipv4.conf.nope0.rp_filter": 0})


def test_nft_rulesets_load_and_tables_delete(names):
    a = names()
    plumbing.create(a)
    plumbing.nft(a, "table inet mpt_t {\n chain c { type filter hook input priority 0; }\n}\n")
    assert "table inet mpt_t" in plumbing.run(a, ["nft", "list", "tables"])
    assert "mpt_t" not in plumbing.run(None, ["nft", "list", "tables"])
    plumbing.nft_delete_table(a, "inet", "mpt_t")
    plumbing.nft_delete_table(a, "inet", "mpt_t")  # absent: fine
    assert "mpt_t" not in plumbing.run(a, ["nft", "list", "tables"])
    with pytest.raises(PlumbingError, match="nft -f - failed"):
        plumbing.nft(a, "this is not a ruleset\n")


def test_commands_and_their_failures(names):
    a = names()
    plumbing.create(a)
    assert plumbing.run(a, ["echo", "hi"]) == "hi\n"
    with pytest.raises(PlumbingError, match=f"in {a}: false failed"):
        plumbing.run(a, ["false"])
    assert plumbing.run(a, ["false"], check=False) == ""
    with pytest.raises(PlumbingError, match="mpt-no-such-program failed"):
        plumbing.run(None, ["mpt-no-such-program"])


def test_remove_kills_what_runs_inside_unless_told_not_to(names):
    a, b = names(), names()
    plumbing.create(a)
    plumbing.create(b)
    procs = [
        subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "60"], stdout=subprocess.DEVNULL)
        for ns in (a, b)
    ]
    try:
        for ns in (a, b):
            for _ in range(100):
                if plumbing.pids(ns):
                    break
                time.sleep(0.02)
        plumbing.remove(a)
        assert procs[0].wait(5) is not None
        plumbing.remove(b, kill=False)
        assert not plumbing.exists(b) and procs[1].poll() is None  # still running, nameless
    finally:
        for p in procs:
            p.kill()
            p.wait(5)
