"""The testbed in real namespaces: teardown, real-time rate and delay, outages, baselines."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from netns import baselines, plumbing
from netns.errors import TestbedError, TraceError
from netns.topology import CarrierSpec, Testbed, TestbedSpec

pytestmark = pytest.mark.netns

_n = itertools.count()
TCP_PAYLOAD_SHARE = 1448 / 1500  # TCP payload per 1500-byte IP packet (with timestamps)


def tid() -> str:
    return f"t{os.getpid() % 10000}{next(_n)}"


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip() for line in out.splitlines()}


@pytest.fixture
def state_dir(tmp_path):
    return tmp_path / "state"


def assert_gone(
    tb: Testbed, emulator_pid: int, extra_pids: list[int], links_before: set[str]
) -> None:
    for name in tb.ns.values():
        assert not plumbing.exists(name), name
        assert not os.path.exists(os.path.join(plumbing.NETNS_DIR, name))
    for pid in [emulator_pid, *extra_pids]:
        assert not os.path.exists(f"/proc/{pid}"), f"process {pid} survived"
    assert not tb.state_file.exists()
    assert root_links() == links_before


def test_teardown_leaves_nothing_behind(state_dir):
    links = root_links()
    spec = TestbedSpec(carriers=(CarrierSpec("10mbit"), CarrierSpec("5mbit")))
    with Testbed(spec, tid=tid(), state_dir=state_dir) as tb:
        assert tb.state_file.exists()
        assert all(plumbing.exists(n) for n in tb.ns.values())
        server = baselines.start_server(tb)
        emu = tb.emulator.pid
        assert root_links() == links  # nothing was ever linked to the root namespace
    assert_gone(tb, emu, [server.pid], links)


def test_teardown_when_the_body_raises(state_dir):
    links = root_links()
    spec = TestbedSpec(carriers=(CarrierSpec("10mbit"),))
    with pytest.raises(RuntimeError, match="boom"):
        with Testbed(spec, tid=tid(), state_dir=state_dir) as tb:
            emu = tb.emulator.pid
            sleeper = tb.popen("node", ["sleep", "60"])
            raise RuntimeError("boom")
    assert_gone(tb, emu, [sleeper.pid], links)


def test_teardown_on_sigterm_and_parallel_testbeds(state_dir, tmp_path):
    """A testbed process stopped by SIGTERM or Ctrl-C still removes everything it made."""
    script = tmp_path / "tb.py"
    script.write_text(
        "import signal, sys, time\n"
        # a job started in the background of a shell inherits SIGINT ignored, and Python
        # then installs no KeyboardInterrupt: give the child the Ctrl-C a terminal gives
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from pathlib import Path\n"
        "from netns.topology import Testbed, TestbedSpec, CarrierSpec\n"
        f"spec = TestbedSpec(carriers=(CarrierSpec('10mbit'),))\n"
        f"with Testbed(spec, tid=sys.argv[1], state_dir=Path({str(state_dir)!r})) as tb:\n"
        "    print('up', flush=True)\n"
        "    time.sleep(600)\n"  # until signalled (the other testbed may take a minute to come up)
    )
    ids = [tid(), tid()]
    procs = [
        subprocess.Popen([sys.executable, str(script), i], stdout=subprocess.PIPE, text=True)
        for i in ids
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "up"
        names = [f"mpp{i}-gw" for i in ids]
        assert all(plumbing.exists(n) for n in names)  # two testbeds side by side
        procs[0].send_signal(signal.SIGTERM)
        procs[1].send_signal(signal.SIGINT)  # Ctrl-C
        for p in procs:
            assert p.wait(60) != 0  # teardown of a testbed takes seconds on a loaded machine
        for i in ids:
            assert not any(plumbing.exists(f"mpp{i}-{s}") for s in ("cl", "gw", "em", "nd", "sv"))
            assert not (state_dir / f"testbed-{i}.json").exists()
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for i in ids:
            for s in ("cl", "gw", "em", "nd", "sv"):
                plumbing.remove(f"mpp{i}-{s}")


@pytest.mark.parametrize(
    "spec, what",
    [
        (TestbedSpec(carriers=()), "number of carriers must be 1..8 (got 0)"),
        (TestbedSpec(carriers=(CarrierSpec("1mbit"),) * 9), "number of carriers must be 1..8"),
        (TestbedSpec(carriers=(CarrierSpec("1mbit", delay_ms=-1),)), "delay must be >= 0"),
        (TestbedSpec(carriers=(CarrierSpec("1mbit", loss=2),)), "loss must be in [0, 1)"),
        (TestbedSpec(carriers=(CarrierSpec("1mbit"),), time_scale=0), "scale must be > 0"),
    ],
)
def test_impossible_parameters_are_refused(spec, what):
    with pytest.raises(TestbedError) as e:
        Testbed(spec)
    assert what in str(e.value)


def test_bad_trace_refused_before_anything_is_built(tmp_path, state_dir):
    bad = tmp_path / "bad.down"
    bad.write_text("0\n10\nten\n")
    tb = Testbed(TestbedSpec(carriers=(CarrierSpec(str(bad)),)), tid=tid(), state_dir=state_dir)
    with pytest.raises(TraceError, match=f"{bad}:3: "):
        tb.up()
    assert not any(plumbing.exists(n) for n in tb.ns.values())
    assert not tb.state_file.exists()


def test_real_time_rate_and_queue_through_namespaces(state_dir):
    rate = 12e6
    spec = TestbedSpec(
        carriers=(CarrierSpec(f"{rate / 1e6:g}mbit", delay_ms=10, queue_packets=60),)
    )
    with Testbed(spec, tid=tid(), state_dir=state_dir) as tb:
        baselines.start_server(tb)
        r = baselines.download(tb, 0, seconds=6, cc="cubic")
        # every packet is accounted for once the link is quiet (the last ACKed segments
        # and the FIN may still be queued or on their delay line when the client ends)
        deadline = time.monotonic() + 10.0
        while True:
            stats = tb.emulator_stats()["carrier0/down"]
            settled = stats["received"] == stats["delivered"] + stats["dropped_queue"]
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert r.goodput_mbit * 1e6 == pytest.approx(rate * TCP_PAYLOAD_SHARE, rel=0.10)
    assert stats["max_queue_packets"] <= 60
    assert stats["dropped_queue"] > 0  # cubic fills any queue: the bound held and counted
    assert stats["received"] == stats["delivered"] + stats["dropped_queue"]


@pytest.mark.parametrize("offloads", [True, False])
def test_offloads_on_and_off_both_keep_the_rate(state_dir, offloads):
    rate = 40e6
    spec = TestbedSpec(carriers=(CarrierSpec("40mbit", delay_ms=5),), offloads=offloads)
    with Testbed(spec, tid=tid(), state_dir=state_dir) as tb:
        baselines.start_server(tb)
        r = baselines.download(tb, 0, seconds=4, cc="bbr")
        st = tb.emulator_stats()["carrier0/down"]
    assert r.goodput_mbit * 1e6 == pytest.approx(rate * TCP_PAYLOAD_SHARE, rel=0.10)
    if offloads:
        assert st["delivered"] > 1.3 * st["delivered_frames"]  # GSO frames pass whole
    else:
        assert st["delivered"] == st["delivered_frames"]  # one frame per packet


def test_added_delay_and_outage_in_real_time(state_dir):
    delay = 15.0
    spec = TestbedSpec(
        carriers=(
            CarrierSpec("10mbit", delay_ms=0),  # reference: the probes' own cost
            CarrierSpec("10mbit", delay_ms=delay),
            CarrierSpec("10mbit", delay_ms=delay, outages=((2.0, 3.5),)),
        )
    )
    with Testbed(spec, tid=tid(), state_dir=state_dir) as tb:
        baselines.start_server(tb, kind="echo")
        start = tb.trace_start
        cut = baselines.probe_rtts(tb, 2, count=60, interval=0.1)  # first: outage at 2 s
        ref = baselines.probe_rtts(tb, 0, count=25, interval=0.02)
        steady = baselines.probe_rtts(tb, 1, count=25, interval=0.02)
    ref_ms = np.array([r for _, r in ref if r is not None]) * 1000
    rtts = np.array([r for _, r in steady if r is not None]) * 1000
    assert len(rtts) == len(ref_ms) == 25
    # two emulated directions each add the delay; compare medians against the reference
    # carrier measured in the same run, which cancels the probes' own (CPU-load) cost
    added_one_way = (np.median(rtts) - np.median(ref_ms)) / 2
    assert added_one_way == pytest.approx(delay, abs=2.0)
    assert rtts.min() >= 2 * delay - 0.5
    sent = [(t - start, r) for t, r in cut]
    # nothing passes during the outage: probes sent in it are held (queued), not answered,
    # until it ends; afterwards traffic flows with the normal delay again
    inside = [(t, r) for t, r in sent if 2.0 + 0.05 < t < 3.5 - 0.05]
    assert len(inside) >= 10
    assert all(r is None or t + r >= 3.5 for t, r in inside)
    after = [r for t, r in sent if t > 3.5 + 0.3]
    assert len(after) >= 10 and all(r is not None for r in after)
    assert np.median(after) * 1000 == pytest.approx(np.median(rtts), abs=4.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Verizon-LTE-short.down", "ATT-LTE-driving.down"])
def test_real_time_delivery_follows_a_mahimahi_trace(traces, state_dir, name):
    """A UDP flood above the trace's rate: what the emulator delivers in ~10 s is the trace."""
    spec = TestbedSpec(carriers=(CarrierSpec(str(traces / "mahimahi" / name), delay_ms=5),))
    with Testbed(spec, tid=tid(), state_dir=state_dir) as tb:
        tb.popen("server", ["iperf3", "-s", "-p", "5301"], stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        flood = tb.popen(
            "client",
            ["iperf3", "-c", "198.51.100.10", "-p", "5301", "-B", "100.64.0.10", "-R", "-u"]
            + ["-b", "25M", "-l", "1400", "-t", "14"],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(2.0)  # flood running, queue full
        t0, s0 = time.monotonic(), tb.emulator_stats()["carrier0/down"]
        time.sleep(10.0)
        t1, s1 = time.monotonic(), tb.emulator_stats()["carrier0/down"]
        flood.kill()
        offered = tb.capacity_bps([0], t0, t1 - t0)
    sent_bps = (s1["delivered_bytes"] - s0["delivered_bytes"]) * 8 / (t1 - t0)
    # opportunities carry bytes (a packet may span two, as in Mahimahi): compare IP bytes
    print(f"{name}: delivered {sent_bps / 1e6:.2f} Mbit/s, trace {offered / 1e6:.2f} Mbit/s")
    assert sent_bps == pytest.approx(offered, rel=0.10)
    assert s1["dropped_queue"] > s0["dropped_queue"]  # the flood really exceeded the trace


@pytest.mark.slow
def test_kernel_mptcp_uses_every_carrier(state_dir):
    spec = TestbedSpec(carriers=(CarrierSpec("6mbit"), CarrierSpec("9mbit")))
    with Testbed(spec, tid=tid(), state_dir=state_dir) as tb:
        baselines.start_server(tb)
        single = [baselines.download(tb, k, seconds=5) for k in (0, 1)]
        mp = baselines.download(tb, None, seconds=5)
        stats = tb.emulator_stats()
    assert single[0].goodput_mbit == pytest.approx(6 * TCP_PAYLOAD_SHARE, rel=0.12)
    assert single[1].goodput_mbit == pytest.approx(9 * TCP_PAYLOAD_SHARE, rel=0.12)
    assert mp.subflows == 2
    assert mp.goodput_mbit > 1.2 * max(s.goodput_mbit for s in single)
    assert all(stats[f"carrier{k}/down"]["delivered"] > 0 for k in (0, 1))


def test_cli_up_status_exec_down(state_dir, monkeypatch):
    env = dict(os.environ, MPPROXY_STATE_DIR=str(state_dir))
    mp = [sys.executable, "-m", "middlebox.cli"]
    i = tid()
    try:
        up = subprocess.run(
            [*mp, "testbed", "up", "--carriers", "2", "--trace", "8mbit", "--id", i],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert up.returncode == 0, up.stderr
        assert f"testbed {i} is up" in up.stdout
        st = subprocess.run([*mp, "testbed", "status"], capture_output=True, text=True, env=env)
        assert f"testbed {i}: up, 2 carrier(s)" in st.stdout
        ex = subprocess.run(
            [*mp, "testbed", "exec", i, "client", "--", "ip", "-br", "addr"],
            capture_output=True,
            text=True,
            env=env,
        )
        assert "100.64.0.10/24" in ex.stdout and "100.64.0.11/24" in ex.stdout
        t0 = time.monotonic()
        down = subprocess.run([*mp, "testbed", "down", i], capture_output=True, text=True, env=env)
        assert down.returncode == 0 and time.monotonic() - t0 < 20
        assert not plumbing.exists(f"mpp{i}-em")
        assert not (state_dir / f"testbed-{i}.json").exists()
        again = subprocess.run([*mp, "testbed", "down", i], capture_output=True, text=True, env=env)
        assert again.returncode == 2 and again.stderr.startswith(
            "mpproxy: error: no recorded testbed"
        )
        bad = subprocess.run(
            [*mp, "testbed", "up", "--carriers", "0"], capture_output=True, text=True, env=env
        )
        assert bad.returncode == 2
        assert bad.stderr.strip() == "mpproxy: error: number of carriers must be 1..8 (got 0)"
    finally:
        for s in ("cl", "gw", "em", "nd", "sv"):
            plumbing.remove(f"mpp{i}-{s}")
