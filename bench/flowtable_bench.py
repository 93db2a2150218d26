"""Micro-benchmark of the gateway flow table (middlebox/gateway/flowtable.py).

Prints packets per second through ``FlowTable.classify`` on the fast path (known flows,
plain ACK packets: one dict lookup and two attribute stores), through ``lookup`` (the
bare cached-action read), the slow path (new flows: rule evaluation and recording), and,
as the baseline measured in the same run, a bare ``dict.get`` on the same keys, which is
the floor any Python flow table pays. The machine is shared: take the figures as rough.

    .venv/bin/python -m bench.flowtable_bench [--flows N] [--packets N] [--rules N]
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import time

from middlebox.gateway.flowtable import ACK, SYN, FlowTable, Rule, Rules


def _keys(n: int, rng: random.Random) -> list[tuple[bytes, int, bytes, int]]:
    keys = []
    for i in range(n):
        src = ipaddress.IPv4Address(0x0A010000 + (i % 250) + 1).packed
        dst = ipaddress.IPv4Address(rng.randrange(0x01000000, 0xDF000000)).packed
        keys.append((src, 10000 + i % 50000, dst, rng.choice((80, 443, 8080))))
    return keys


def _rules(n: int) -> Rules:
    acl = [Rule.make("deny", dst=[f"198.18.{i % 256}.0/24"], dst_ports=["25"]) for i in range(n)]
    return Rules.make(acl, deny=["203.0.113.0/24"], bypass=["10.0.0.0/8", "192.168.0.0/16"])


def _rate(count: int, fn) -> float:
    t0 = time.perf_counter()
    fn()
    return count / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flows", type=int, default=10_000, help="distinct flows (default 10000)")
    p.add_argument("--packets", type=int, default=1_000_000, help="fast-path packets (1000000)")
    p.add_argument("--rules", type=int, default=20, help="ACL rules on the slow path (20)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    keys = _keys(args.flows, rng)
    stream = [keys[rng.randrange(len(keys))] for _ in range(args.packets)]

    table = FlowTable(_rules(args.rules), max_flows=args.flows * 2)
    slow = _rate(len(keys), lambda: [table.classify(k, SYN, 0.0) for k in keys])
    for k in keys:
        table.classify(k, ACK, 0.0)  # complete the handshakes: plain established flows

    classify = table.classify
    fast = _rate(len(stream), lambda: [classify(k, ACK, 1.0) for k in stream])
    lookup = table.lookup
    look = _rate(len(stream), lambda: [lookup(k) for k in stream])
    plain = {k: object() for k in keys}
    get = plain.get
    base = _rate(len(stream), lambda: [get(k) for k in stream])

    print(f"flows={args.flows} packets={args.packets} acl_rules={args.rules}")
    print(f"baseline dict.get           {base / 1e6:8.2f} M lookups/s")
    print(
        f"fast path lookup()          {look / 1e6:8.2f} M lookups/s ({look / base:.0%} of baseline)"
    )
    print(
        f"fast path classify()        {fast / 1e6:8.2f} M packets/s ({fast / base:.0%} of baseline)"
    )
    print(f"slow path classify() (new)  {slow / 1e3:8.1f} k flows/s")
    c = table.counters()
    print(f"counters: flows={ {a.value: n for a, n in c.flows.items()} }")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
