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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    h = sub.add_parser("holes", help="per-segment cost with many holes")
    h.add_argument("--probes", type=int, default=2000)
    args = p.parse_args(argv)
    if args.what == "holes":
        return holes_main(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
