"""The link emulator's own ceiling on this machine (``.venv/bin/python -m bench.emulator_bench``).

Prints, measured in one run (needs root; numbers are noisy: 2 cores shared with
whatever else runs):

1. reference: iperf3 TCP over a plain veth pair (node -> server, no emulator), the
   machine's own speed for comparison;
2. ceiling per direction through one emulated carrier with an unlimited trace and no
   delay: TCP (GSO super-frames) and UDP 1400-byte and 100-byte datagrams (one frame per
   packet), in Mbit/s and packets/s, with the emulator's CPU share;
3. CPU share of the emulator at 3 x 20 Mbit/s (three carriers, three TCP downloads);
4. faithfulness sweep: one carrier at fixed rates, TCP goodput / (rate x 1448/1500);
   the largest rate reproduced within 10 % is what docs/testbed.md quotes.

3 and 4 run twice: with offloads on (GSO frames through the emulator, the default) and
off (one frame per packet).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from netns.topology import SERVER_ADDRS, CarrierSpec, Testbed, TestbedSpec, client_addr

TCP_SHARE = 1448 / 1500
CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def iperf_servers(tb: Testbed, ports: list[int]) -> None:
    for port in ports:
        tb.popen(
            "server",
            ["iperf3", "-s", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    time.sleep(0.5)


def iperf(
    tb: Testbed, role: str, args: list[str], seconds: float, port: int = 5301
) -> dict[str, Any]:
    argv = ["iperf3", "-c", SERVER_ADDRS[0], "-p", str(port), "-t", str(seconds), "-J", *args]
    proc = tb.run(role, argv, capture_output=True, text=True, timeout=seconds + 30)
    data = json.loads(proc.stdout)
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    return data


def received_bps(data: dict[str, Any], udp: bool) -> tuple[float, int]:
    end = data["end"]
    if udp:
        s = end["sum"]
        return s["bits_per_second"] * (1 - s.get("lost_percent", 0) / 100), s["packets"] - s[
            "lost_packets"
        ]
    return end["sum_received"]["bits_per_second"], 0


def measure(
    tb: Testbed, args: list[str], seconds: float, direction: str, udp: bool
) -> dict[str, float]:
    """One iperf3 run through carrier 0; emulator counters and CPU over the run."""
    key = f"carrier0/{direction}"
    pid = tb.emulator.pid if tb.emulator else 0
    before = tb.emulator_stats()[key]
    c0, t0 = cpu_seconds(pid), time.monotonic()
    data = iperf(tb, "client", ["-B", client_addr(0), *args], seconds)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    after = tb.emulator_stats()[key]
    d = {k: after[k] - before[k] for k in after}
    wall = t1 - t0
    bps, _ = received_bps(data, udp)
    return {
        "goodput_mbit": bps / 1e6,
        "emu_pps": d["delivered"] / wall,
        "emu_frames_ps": d["delivered_frames"] / wall,
        "emu_mbit": d["delivered_bytes"] * 8 / wall / 1e6,
        "drops": d["dropped_queue"],
        "cpu": (c1 - c0) / wall,
    }


def bench_ceiling(seconds: float) -> None:
    spec = TestbedSpec(carriers=(CarrierSpec("20000mbit", delay_ms=0, queue_packets=1000),))
    with Testbed(spec) as tb:
        iperf_servers(tb, [5301])
        ref = iperf(tb, "node", [], seconds)
        print(
            f"reference  TCP over a plain veth pair (no emulator): "
            f"{received_bps(ref, False)[0] / 1e6:8.0f} Mbit/s"
        )
        cases = [
            ("TCP download (GSO frames)", ["-R"], "down", False),
            ("TCP upload   (GSO frames)", [], "up", False),
            ("UDP 1400 B down", ["-R", "-u", "-b", "0", "-l", "1400"], "down", True),
            ("UDP 1400 B up  ", ["-u", "-b", "0", "-l", "1400"], "up", True),
            ("UDP 100 B down ", ["-R", "-u", "-b", "0", "-l", "100"], "down", True),
        ]
        for name, args, direction, udp in cases:
            m = measure(tb, args, seconds, direction, udp)
            print(
                f"emulator   {name}: goodput {m['goodput_mbit']:7.0f} Mbit/s; emulator "
                f"forwarded {m['emu_mbit']:7.0f} Mbit/s, {m['emu_pps']:8.0f} pkt/s in "
                f"{m['emu_frames_ps']:7.0f} frames/s, CPU {100 * m['cpu']:4.0f}% of a core"
            )


def bench_three_by_20(seconds: float, offloads: bool) -> None:
    spec = TestbedSpec(
        carriers=tuple(CarrierSpec("20mbit", delay_ms=20) for _ in range(3)), offloads=offloads
    )
    with Testbed(spec) as tb:
        ports = [5301, 5302, 5303]
        iperf_servers(tb, ports)
        pid = tb.emulator.pid if tb.emulator else 0
        c0, t0 = cpu_seconds(pid), time.monotonic()
        procs = [
            subprocess.Popen(
                tb.argv(
                    "client",
                    ["iperf3", "-c", SERVER_ADDRS[0], "-p", str(p), "-B", client_addr(k)]
                    + ["-t", str(seconds), "-R", "-J"],
                ),
                stdout=subprocess.PIPE,
                text=True,
            )
            for k, p in enumerate(ports)
        ]
        outs = [p.communicate(timeout=seconds + 30)[0] for p in procs]
        c1, t1 = cpu_seconds(pid), time.monotonic()
        rates = [received_bps(json.loads(o), False)[0] / 1e6 for o in outs]
        st = tb.emulator_stats()
        segs = sum(st[f"carrier{k}/down"]["delivered"] for k in range(3))
        frames = sum(st[f"carrier{k}/down"]["delivered_frames"] for k in range(3))
        print(
            f"3 x 20 Mbit/s, offloads {'on ' if offloads else 'off'} (TCP cubic, 20 ms): goodput "
            f"{', '.join(f'{r:.1f}' for r in rates)} Mbit/s "
            f"(ideal {20 * TCP_SHARE:.1f} each); emulator CPU {100 * (c1 - c0) / (t1 - t0):.0f}% "
            f"of one core; {segs / max(frames, 1):.2f} packets per frame downlink"
        )


def bench_sweep(rates: list[float], seconds: float, offloads: bool) -> None:
    best = 0.0
    all_ok = True
    for rate in sorted(rates):
        bdp_packets = int(rate * 1e6 * 0.040 / 8 / 1500)
        queue = max(256, int(1.5 * bdp_packets))
        spec = TestbedSpec(
            carriers=(CarrierSpec(f"{rate:g}mbit", delay_ms=20, queue_packets=queue),),
            offloads=offloads,
        )
        with Testbed(spec) as tb:
            iperf_servers(tb, [5301])
            pid = tb.emulator.pid if tb.emulator else 0
            c0, t0 = cpu_seconds(pid), time.monotonic()
            # -O 2: leave slow start out; it is TCP's ramp, not the emulator's rate
            data = iperf(tb, "client", ["-B", client_addr(0), "-R", "-O", "2"], seconds)
            cpu = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
        got = received_bps(data, False)[0] / 1e6
        ratio = got / (rate * TCP_SHARE)
        ok = abs(ratio - 1) <= 0.10
        all_ok = all_ok and ok
        best = rate if all_ok else best
        print(
            f"offloads {'on ' if offloads else 'off'}, fixed {rate:6g} Mbit/s, 20 ms, "
            f"queue {queue:5d}: TCP goodput {got:7.1f} Mbit/s "
            f"= {100 * ratio:5.1f}% of ideal {'ok' if ok else 'NOT faithful'}; "
            f"emulator CPU {100 * cpu:.0f}%"
        )
    print(
        f"offloads {'on' if offloads else 'off'}: largest rate up to which every tested rate "
        f"was within 10% in this run: {best:g} Mbit/s per carrier"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.emulator_bench", description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rates", default="20,100,200,400,800")
    ap.add_argument("--only", choices=("ceiling", "cpu", "sweep"))
    a = ap.parse_args(argv)
    print(f"emulator benchmark, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if a.only in (None, "ceiling"):
        bench_ceiling(a.seconds)
    for offloads in (True, False):
        if a.only in (None, "cpu"):
            bench_three_by_20(max(a.seconds, 10.0), offloads)
        if a.only in (None, "sweep"):
            bench_sweep([float(r) for r in a.rates.split(",")], a.seconds, offloads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
