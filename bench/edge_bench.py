"""What a hostile passenger costs the gateway's edge: figures, not pass/fail.

``holes``: the per-segment cost of the user-space endpoint's receive path (segment in,
ACK with SACK blocks out) while a client holds N one-byte holes in its stream, for N
from 1 000 to 100 000, placed in ascending or random order. The out-of-order queue is
O(log n) per segment (``middlebox/tcp/ofo.py``), so the figures should stay flat.

``synflood``: on the emulated testbed, a SYN flood from one passenger address at the
highest rate the testbed's sender makes (raw socket, spoofed ports), beside a bulk
download of a second passenger and connection attempts of a third: the flood's rate,
what the gateway did (SYN cookies sent and accepted, half-open connections, drops by
quota, RSTs suppressed) and the victims' goodput and connect times, against the same
download without the flood. Needs root; run it through the machine's measurement lock.

    .venv/bin/python -m bench.edge_bench holes [--probes N]
    .venv/bin/python -m bench.edge_bench synflood [--seconds S] [--rate R]
"""

from __future__ import annotations

import argparse
import json
import random
import time

from middlebox.tcp.constants import ACK, SEQ_MASK, SYN
from middlebox.tcp.endpoint import EndpointTable
from middlebox.tcp.options import Options
from middlebox.tcp.packet import Segment
from middlebox.tcp.params import TcpParams

CLIENT = bytes([10, 1, 0, 2])
SERVER = bytes([203, 0, 113, 5])


def _established(params: TcpParams) -> tuple[EndpointTable, int, int]:
    """A table with one SACK connection (client port 40000); returns (table, client's
    next sequence number, the endpoint's next sequence number)."""
    table = EndpointTable(params, auto_accept=True, secret=b"e" * 16)
    iss = 1_000_000
    syn = Segment(CLIENT, SERVER, 40000, 80, iss, 0, SYN, 65535, b"",
                  Options(mss=1460, wscale=7, sack_permitted=True))  # fmt: skip
    table.receive_segment(syn, 0.0)
    (synack,) = table.segments_to_send(0.0)
    ack = (synack.seq + 1) & SEQ_MASK
    table.receive_segment(Segment(CLIENT, SERVER, 40000, 80, iss + 1, ack, ACK, 8192), 0.0)
    table.segments_to_send(0.0)
    while table.next_event() is not None:
        pass
    return table, iss + 1, ack


def hole_cost(holes: int, probes: int = 2000, pattern: str = "random", seed: int = 1) -> float:
    """Seconds per segment (in, and the ACK with SACK blocks out) while ``holes`` one-byte
    ranges with holes between them are held; each probe adds one more range between two
    of them. ``pattern``: ranges made in ascending or random order."""
    params = TcpParams(gso=False, ofo_memory=1 << 30)
    table, seq, ack = _established(params)
    rng = random.Random(seed)
    order = list(range(holes))
    if pattern == "random":
        rng.shuffle(order)

    def seg(off: int) -> Segment:
        return Segment(CLIENT, SERVER, 40000, 80, (seq + off) & SEQ_MASK, ack, ACK, 8192, b"h")

    for k in order:
        table.receive_segment(seg(4 * k + 2), 0.0)  # ranges at 4k + 2: holes between
        table.segments_to_send(0.0)
    picks = rng.sample(range(1, holes), min(probes, holes - 1))
    batch = [seg(4 * k) for k in picks]  # new ranges that touch no other
    t0 = time.perf_counter()
    for s in batch:
        table.receive_segment(s, 0.0)
        table.segments_to_send(0.0)
    return (time.perf_counter() - t0) / len(batch)


def holes_main(args: argparse.Namespace) -> int:
    print("# receive path per segment (segment in, ACK with SACK out) with N one-byte holes held")
    for pattern in ("ascending", "random"):
        base = None
        for n in (1_000, 10_000, 100_000):
            us = min(hole_cost(n, args.probes, pattern, seed) for seed in (1, 2, 3)) * 1e6
            base = base or us
            row = {"pattern": pattern, "holes": n, "us_per_segment": round(us, 2),
                   "ratio_to_1000": round(us / base, 2)}  # fmt: skip
            print(json.dumps(row), flush=True)
    return 0


# -- programs run inside the testbed's client namespace ------------------------------------


def flood(kind: str, bind: str, server: str, port: int, rate: float, seconds: float) -> dict:
    """Send bare SYNs (``kind`` "syn", a new source port each) or bare ACKs of no
    connection ("ack") from ``bind`` to ``server:port`` through a raw socket, ``rate``
    per second (0: as fast as this process can), for ``seconds``. The client namespace
    must drop what comes back to ``bind`` (or its kernel answers SYN-ACKs with RST)."""
    import socket

    from middlebox.tcp.packet import build_ipv4

    src, dst = socket.inet_aton(bind), socket.inet_aton(server)
    flags, opts = (SYN, b"\x02\x04\x05\xb4") if kind == "syn" else (ACK, b"")
    rng = random.Random(1)
    frames = [
        build_ipv4(Segment(src, dst, 1024 + i, port, rng.getrandbits(32),
                           0 if kind == "syn" else rng.getrandbits(32), flags, 65535,
                           raw_options=opts))
        for i in range(60_000)
    ]  # fmt: skip
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    print("ready", flush=True)
    addr = (server, 0)
    sent = errors = 0
    t0 = time.monotonic()
    end = t0 + seconds
    burst = 64
    while (now := time.monotonic()) < end:
        if rate and sent >= (now - t0) * rate:
            time.sleep(min(burst / rate, 0.01))
            continue
        for _ in range(burst):
            try:
                s.sendto(frames[sent % len(frames)], addr)
                sent += 1
            except OSError:
                errors += 1  # the veth's queue is full: that is the rate we can make
    elapsed = time.monotonic() - t0
    return {"kind": kind, "sent": sent, "seconds": round(elapsed, 2),
            "rate": round(sent / elapsed), "send_errors": errors}  # fmt: skip


def connects(bind: str, server: str, port: int, count: int, interval: float) -> list[float]:
    """``count`` new connections from ``bind``, ``interval`` s apart, each asking a
    ``netns.baselines`` server for 1000 bytes; the seconds from connect() to the last
    byte of each, or -1 for a failure (5 s timeout)."""
    import socket

    out = []
    for _ in range(count):
        t0 = time.monotonic()
        try:
            with socket.create_connection((server, port), timeout=5, source_address=(bind, 0)) as c:
                c.sendall(b"1000 0 cubic\n")
                got = 0
                while got < 1000 and (d := c.recv(4096)):
                    got += len(d)
            out.append(round(time.monotonic() - t0, 4) if got == 1000 else -1.0)
        except OSError:
            out.append(-1.0)
        time.sleep(max(0.0, interval - (time.monotonic() - t0)))
    return out


# -- on the testbed -----------------------------------------------------------------------

VICTIM, ATTACKER, THIRD = 0, 1, 2  # client address indices
ENDPOINT_KEYS = ("syn_cookies_sent", "syn_cookies_ok", "syn_dropped", "rst_sent",
                 "rst_suppressed", "refused_source", "refused_full")  # fmt: skip
FLOW_KEYS = ("syn_rate_dropped", "stray_dropped", "source_rate", "source_full", "evicted",
             "overflow", "untracked_packets")  # fmt: skip


def drop_replies_to_attacker(bed) -> None:  # noqa: ANN001 (a bench.proxy_bench.ProxyBed)
    """In the client namespace, drop TCP to the attacker's address: a flooding host does
    not answer SYN-ACKs with RST (its own kernel would, and clean the gateway's state)."""
    from netns.topology import client_addr

    rules = "table ip edgeflood {\n chain in {\n  type filter hook input priority -300;\n"
    rules += f"  ip daddr {client_addr(ATTACKER)} ip protocol tcp drop\n }}\n}}\n"
    r = bed.run("client", ["nft", "-f", "-"], input=rules.encode())
    if r.returncode != 0:
        raise RuntimeError(f"nft in the client namespace: {r.stderr.decode()}")


def attacked_download(bed, kind: str | None, rate: float, seconds: float, probes: int = 5) -> dict:  # noqa: ANN001
    """A bulk download of ``seconds`` from the victim's address, with (``kind`` "syn" or
    "ack") or without a flood from the attacker's address at ``rate`` packets/s (0: as
    fast as the sender can), and ``probes`` new connections from a third address during
    it. Returns goodput, connect times, the flood's figures and the gateway's counters
    that moved. A ``netns.baselines`` server must listen on its default port."""
    import subprocess
    import sys

    from netns import baselines
    from netns.topology import SERVER_ADDRS, client_addr

    server = SERVER_ADDRS[0]
    before = bed.status()
    me = [sys.executable, "-m", "bench.edge_bench"]
    flooder = None
    if kind:
        argv = [*me, "flood", "--kind", kind, "--bind", client_addr(ATTACKER),
                "--server", server, "--port", "80", "--rate", str(rate),
                "--seconds", str(seconds + 1.5)]  # fmt: skip
        flooder = bed.tb.popen("client", argv, stdout=subprocess.PIPE, cwd=bed_root())
        if flooder.stdout is None or not flooder.stdout.readline().startswith(b"ready"):
            raise RuntimeError("the flooder did not start")
        time.sleep(0.5)  # the flood runs before and during the download
    argv = [*me, "connects", "--bind", client_addr(THIRD), "--server", server,
            "--count", str(probes), "--interval", str(seconds / (probes + 1))]  # fmt: skip
    prober = bed.tb.popen("client", argv, stdout=subprocess.PIPE, cwd=bed_root())
    try:
        d = baselines.download(bed.tb, VICTIM, seconds=seconds)
        out, _ = prober.communicate(timeout=seconds + 30)
        connect_s = json.loads(out.decode().strip().splitlines()[-1])
        result: dict = {"attack": kind or "none", "goodput_mbit": round(d.goodput_mbit, 2),
                        "connect_s": connect_s}  # fmt: skip
        if flooder is not None:
            out, _ = flooder.communicate(timeout=seconds + 30)
            result["flood"] = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        for p in (flooder, prober):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5)
    after = bed.status()
    ep0, ep1 = before["endpoint"], after["endpoint"]
    fl0, fl1 = before["flows"], after["flows"]
    result["gateway"] = {
        **{k: ep1[k] - ep0[k] for k in ENDPOINT_KEYS if ep1[k] != ep0[k]},
        **{k: fl1.get(k, 0) - fl0.get(k, 0) for k in FLOW_KEYS if fl1.get(k, 0) != fl0.get(k, 0)},
        "half_open": ep1["half_open"],
        "flows_tracked": [fl0["tracked"], fl1["tracked"]],  # before, after
        "mux_connections": len(after["sessions"][0]["connections"]),
    }
    return result


def bed_root() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parent.parent)


def synflood_main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.proxy_bench import ProxyBed
    from netns import baselines
    from netns.topology import CarrierSpec, TestbedSpec

    spec = TestbedSpec(carriers=(CarrierSpec(f"{args.carrier_rate:g}mbit", delay_ms=10),) * 2,
                       clients=3)  # fmt: skip
    print(f"# {args.seconds:g} s download (client 0) beside a flood from client 1, {args.probes} "
          "new connections from client 2 during it; 2 carriers of "
          f"{args.carrier_rate:g} Mbit/s; 2 shared cores: noisy", flush=True)  # fmt: skip
    for stray in args.stray_per_source:
        gateway = {} if stray is None else {"stray_per_source": stray}
        print(f"# gateway.stray_per_source = {'default' if stray is None else stray}", flush=True)
        with ProxyBed(spec, Path(args.workdir), gateway=gateway) as bed:
            srv = baselines.start_server(bed.tb)
            try:
                drop_replies_to_attacker(bed)
                attacked_download(bed, None, 0, 2.0, 1)  # warm the paths up
                runs = [(None, 0.0)] + [(k, r) for k in args.kinds.split(",") for r in args.rates]
                quiet = None
                for kind, rate in runs:
                    r = attacked_download(bed, kind, rate, args.seconds, args.probes)
                    r["flood_rate_asked"] = rate if kind else None
                    r["stray_per_source"] = stray
                    quiet = quiet or r["goodput_mbit"]
                    r["share_of_quiet"] = round(r["goodput_mbit"] / quiet, 3) if quiet else None
                    print(json.dumps(r), flush=True)
            finally:
                srv.terminate()
    return 0


def _stray(v: str) -> int | None:
    return None if v == "default" else int(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    h = sub.add_parser("holes", help="per-segment cost with many holes")
    h.add_argument("--probes", type=int, default=2000)
    f = sub.add_parser("flood", help="(inside the client namespace) send a SYN or ACK flood")
    f.add_argument("--kind", choices=("syn", "ack"), default="syn")
    f.add_argument("--bind", required=True)
    f.add_argument("--server", required=True)
    f.add_argument("--port", type=int, default=80)
    f.add_argument("--rate", type=float, default=0.0, help="packets per second (0: maximum)")
    f.add_argument("--seconds", type=float, default=5.0)
    c = sub.add_parser("connects", help="(inside the client namespace) time new connections")
    c.add_argument("--bind", required=True)
    c.add_argument("--server", required=True)
    c.add_argument("--port", type=int, default=5201)
    c.add_argument("--count", type=int, default=5)
    c.add_argument("--interval", type=float, default=0.5)
    sf = sub.add_parser("synflood", help="floods beside a download on the testbed (root)")
    sf.add_argument("--seconds", type=float, default=8.0)
    sf.add_argument("--probes", type=int, default=8)
    sf.add_argument("--kinds", default="syn,ack")
    sf.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=[2000.0, 0.0],
        help="packets per second of each flood; 0: as fast as the sender can",
    )
    sf.add_argument(
        "--stray-per-source",
        type=_stray,
        nargs="+",
        default=[None],
        help="gateway.stray_per_source of each run (a new testbed each); 0: no kernel limit "
        "on stray packets (the state before it), 'default': the configuration's default",
    )
    sf.add_argument("--carrier-rate", type=float, default=10.0, help="Mbit/s per carrier")
    sf.add_argument("--workdir", default="/tmp/mpproxy-edge-bench")
    args = p.parse_args(argv)
    if args.what == "synflood":
        return synflood_main(args)
    if args.what == "holes":
        return holes_main(args)
    if args.what == "flood":
        r = flood(args.kind, args.bind, args.server, args.port, args.rate, args.seconds)
        print(json.dumps(r), flush=True)
        return 0
    if args.what == "connects":
        r = connects(args.bind, args.server, args.port, args.count, args.interval)
        print(json.dumps(r), flush=True)
        return 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
