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

``attacks``: on the testbed, the attacks of tests/adversarial/test_edge_attacks.py beside
a download, each paired with the download without it: one-byte segments with holes
through the gateway (a raw-socket client offering SACK), one-byte DATA with gaps and a
path that never reads from an authenticated gateway of its own, and 64 connections of
one passenger pinning buffers (downloads never read, uploads to a destination that
never reads), at the tests' rates and as fast as the attacker can.

    .venv/bin/python -m bench.edge_bench holes [--probes N]
    .venv/bin/python -m bench.edge_bench synflood [--seconds S] [--rate R]
    .venv/bin/python -m bench.edge_bench attacks [--seconds S] [--only NAME ...]
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


def held_holes(holes: int, pattern: str = "random", seed: int = 1):  # noqa: ANN201
    """An endpoint table whose one SACK connection holds ``holes`` one-byte ranges with
    holes between them (made in ascending or random order), and ``probe(k)``: the
    segment of a new range between the k-th and the next, touching no other."""
    params = TcpParams(gso=False, ofo_memory=1 << 30)
    table, seq, ack = _established(params)
    order = list(range(holes))
    if pattern == "random":
        random.Random(seed).shuffle(order)

    def seg(off: int) -> Segment:
        return Segment(CLIENT, SERVER, 40000, 80, (seq + off) & SEQ_MASK, ack, ACK, 8192, b"h")

    for k in order:
        table.receive_segment(seg(4 * k + 2), 0.0)  # ranges at 4k + 2: holes between
        table.segments_to_send(0.0)
    return table, lambda k: seg(4 * k)


def hole_cost(holes: int, probes: int = 2000, pattern: str = "random", seed: int = 1) -> float:
    """Seconds per segment (in, and the ACK with SACK blocks out) while ``holes`` one-byte
    ranges with holes between them are held (:func:`held_holes`); each probe adds one
    more range between two of them."""
    table, probe = held_holes(holes, pattern, seed)
    picks = random.Random(seed).sample(range(1, holes), min(probes, holes - 1))
    batch = [probe(k) for k in picks]
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


def _frames(kind: str, src: bytes, dst: bytes, port: int, ports: int) -> list[bytes]:
    """Bare SYNs (``kind`` "syn") or bare ACKs with random numbers, one per source port
    from 1024 on, ``ports`` of them."""
    from middlebox.tcp.packet import build_ipv4

    flags, opts = (SYN, b"\x02\x04\x05\xb4") if kind == "syn" else (ACK, b"")
    rng = random.Random(1)
    return [
        build_ipv4(Segment(src, dst, 1024 + i, port, rng.getrandbits(32),
                           0 if kind == "syn" else rng.getrandbits(32), flags, 65535,
                           raw_options=opts))
        for i in range(ports)
    ]  # fmt: skip


def flood(kind: str, bind: str, server: str, port: int, rate: float, seconds: float,
          ports: int = 60_000, syn_rate: float = 400.0) -> dict:  # fmt: skip
    """Send bare SYNs (``kind`` "syn", a new source port each) or bare ACKs of no
    connection ("ack") from ``bind`` to ``server:port`` through a raw socket, ``rate``
    per second (0: as fast as this process can), for ``seconds``, cycling over ``ports``
    source ports. "synack": first a SYN on each of the ``ports`` tuples at ``syn_rate``
    (below the gateway's SYN rate, so each is answered with a SYN-ACK), then the ACK
    flood on those same tuples. The client namespace must drop what comes back to
    ``bind`` (or its kernel answers SYN-ACKs with RST)."""
    import socket

    src, dst = socket.inet_aton(bind), socket.inet_aton(server)
    frames = _frames("ack" if kind == "synack" else kind, src, dst, port, ports)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    addr = (server, 0)
    if kind == "synack":
        for f in _frames("syn", src, dst, port, ports):
            s.sendto(f, addr)
            time.sleep(1 / syn_rate)
        time.sleep(0.2)  # the last SYN-ACKs go out
    print("ready", flush=True)
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


def sack_holes(bind: str, server: str, port: int, rate: float, seconds: float,
               iface: str = "cl0") -> dict:  # fmt: skip
    """A client that offers SACK, completes a handshake through the gateway with raw
    sockets and then sends one-byte segments with a hole before each (the first byte of
    the stream never comes, so nothing is delivered), ``rate`` a second (0: as fast as
    it can) for ``seconds``. Replies are read from an AF_PACKET socket on ``iface``
    (the namespace's own stack drops them, see :func:`drop_replies_to_attacker`)."""
    import socket

    from middlebox.tcp.packet import build_ipv4, parse_ipv4

    src, dst = socket.inet_aton(bind), socket.inet_aton(server)
    sport = 20000 + random.Random().randrange(20000)
    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    rx.bind((iface, 0))
    rx.setblocking(False)
    acks = {"acks": 0, "sack_acks": 0, "max_sack_blocks": 0, "rst": 0}

    def replies(wait: float = 0.0) -> list[Segment]:
        out = []
        end = time.monotonic() + wait
        while True:
            try:
                buf = rx.recv(65535)
            except BlockingIOError:
                if time.monotonic() >= end:
                    return out
                time.sleep(0.001)
                continue
            seg = parse_ipv4(buf, verify_tcp_checksum=False)
            if seg is not None and seg.dst == src and seg.dport == sport:
                out.append(seg)

    iss = 7_000_000
    mine = b"\x02\x04\x05\xb4\x04\x02\x01\x03\x03\x07\x01\x01"  # MSS, SACK ok, wscale 7
    synack = None
    for _ in range(5):
        syn = Segment(src, dst, sport, port, iss, 0, SYN, 65535, b"", raw_options=mine)
        tx.sendto(build_ipv4(syn), (server, 0))
        synack = next((g for g in replies(1.0) if g.flags & SYN), None)
        if synack is not None:
            break
    if synack is None:
        raise RuntimeError("no SYN-ACK")
    ack = (synack.seq + 1) & SEQ_MASK

    def seg(off: int, payload: bytes = b"") -> bytes:
        return build_ipv4(Segment(src, dst, sport, port, (iss + 1 + off) & SEQ_MASK, ack, ACK,
                                  65535, payload))  # fmt: skip

    tx.sendto(seg(0), (server, 0))
    print("ready", flush=True)
    sent = 0
    t0 = time.monotonic()
    end = t0 + seconds
    while (now := time.monotonic()) < end:
        if rate and sent >= (now - t0) * rate:
            time.sleep(0.002)
        else:
            for _ in range(32):
                try:
                    tx.sendto(seg(2 * sent + 1, b"h"), (server, 0))
                    sent += 1
                except OSError:
                    break
        for g in replies():
            acks["acks"] += 1
            acks["rst"] += bool(g.flags & 4)
            if g.opts.sack:
                acks["sack_acks"] += 1
                acks["max_sack_blocks"] = max(acks["max_sack_blocks"], len(g.opts.sack))
    elapsed = time.monotonic() - t0
    return {"kind": "sack_holes", "sent": sent, "seconds": round(elapsed, 2),
            "rate": round(sent / elapsed), **acks}  # fmt: skip


def hostile_gateway(mode: str, node: str, tls: dict, gateway_id: str, server: str, port: int,
                    rate: float, seconds: float) -> dict:  # fmt: skip
    """An authenticated gateway (its own certificate, another session than the victims')
    that attacks the node for ``seconds``. ``mode`` "holes": OPEN connections to
    ``server:port`` and send one-byte DATA with a hole before each, ``rate`` a second (0:
    as fast as it can); the node resets a connection at its reorder bound, the attacker
    opens the next. What the node answers is read and thrown away. "unread": PROBEs,
    ``rate`` a second (0: as fast as TLS sends them), and never a read; when the node
    drops the path (its output bound), dial again."""
    import socket
    import ssl

    from middlebox.config import TLSConfig
    from middlebox.paths.tls import gateway_context
    from middlebox.session import wire

    ctx = gateway_context(TLSConfig(**tls))
    assert ctx is not None
    host, nport = node.rsplit(":", 1)
    out = {"kind": mode, "sent": 0, "dials": 0, "dropped_by_node": 0, "conns": 0, "rst": 0}
    session = random.Random().getrandbits(31)

    def dial(rcvbuf: int | None) -> ssl.SSLSocket:
        raw = socket.socket()
        if rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(5)
        raw.connect((host, int(nport)))
        c = ctx.wrap_socket(raw, server_hostname=host)
        c.sendall(wire.encode(wire.Hello(gateway_id, session, "evil", "lte", out["dials"] % 256)))
        dec = wire.Decoder(1 << 20)
        while not (msgs := list(dec)):
            dec.feed(c.recv(65536))
        if type(msgs[0]) is not wire.HelloAck:
            raise RuntimeError(f"no HELLO_ACK: {msgs[0]!r}")
        out["dials"] += 1
        return c

    dec = wire.Decoder(1 << 20)
    c = dial(4096 if mode == "unread" else None)
    print("ready", flush=True)
    t0 = time.monotonic()
    end = t0 + seconds
    cid, off = 0, 0
    probes = wire.encode(wire.Probe(1, 0)) * 4000
    while (now := time.monotonic()) < end:
        if mode == "unread":
            if rate and out["sent"] >= (now - t0) * rate:
                time.sleep(0.002)
                continue
            try:
                c.settimeout(0.05)
                out["sent"] += c.send(probes[: 20 * (256 if rate else 4000)]) // 20
            except (TimeoutError, ssl.SSLWantWriteError):
                pass
            except OSError:
                out["dropped_by_node"] += 1
                c.close()
                c = dial(4096)
            continue
        if rate and out["sent"] >= (now - t0) * rate:
            time.sleep(0.002)
        else:
            if cid == 0 or off > 400_000:
                cid += 1
                off = 0
                out["conns"] += 1
                c.sendall(wire.encode(wire.Open(cid, "100.64.0.99", 1000 + cid % 60000,
                                                server, port)))  # fmt: skip
            batch = b"".join(wire.encode(wire.Data(cid, off + 2 * k + 1, b"x")) for k in range(64))
            off += 128
            c.settimeout(5)
            c.sendall(batch)
            out["sent"] += 64
        c.settimeout(0)
        try:
            while chunk := c.recv(1 << 16):
                dec.feed(chunk)
                for msg in dec:
                    if type(msg) is wire.Rst and msg.conn_id == cid:
                        out["rst"] += 1
                        off = 1 << 30  # the node reset it: the next OPEN
        except (BlockingIOError, ssl.SSLWantReadError, TimeoutError):
            pass
    elapsed = time.monotonic() - t0
    out["seconds"] = round(elapsed, 2)
    out["rate"] = round(out["sent"] / elapsed)
    c.close()
    return out


def sink(address: str, port: int) -> None:
    """A server that accepts connections and never reads them (runs until killed)."""
    import socket

    s = socket.create_server((address, port), backlog=1024)
    held = []
    print("ready", flush=True)
    while True:
        held.append(s.accept()[0])


def hoard(kind: str, bind: str, server: str, port: int, count: int, fill: float,
          seconds: float) -> dict:  # fmt: skip
    """``count`` connections from ``bind`` that pin buffers: "download" asks a
    ``netns.baselines`` server for a large download on each and never reads; "upload"
    writes to a :func:`sink` (a destination that never reads) until nothing more goes.
    Says "ready" after ``fill`` seconds of filling, holds them ``seconds`` more."""
    import socket

    conns = []
    for _ in range(count):
        c = socket.create_connection((server, port), timeout=5, source_address=(bind, 0))
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        if kind == "download":
            c.sendall(b"1000000000 600 cubic\n")
        c.setblocking(False)
        conns.append(c)
    block = b"u" * (1 << 16)
    written = 0

    def push() -> None:
        nonlocal written
        if kind != "upload":
            return
        for c in conns:
            try:
                while True:
                    written += c.send(block)
            except (BlockingIOError, OSError):
                pass

    end = time.monotonic() + fill
    while time.monotonic() < end:
        push()
        time.sleep(0.05)
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        push()
        time.sleep(0.05)
    return {"kind": f"hoard_{kind}", "count": count, "written": written}


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


def flood_attack(kind: str, rate: float, seconds: float, ports: int = 0) -> tuple[str, list[str]]:
    """The namespace and the arguments of :func:`flood` for :func:`attacked_download`;
    ``ports`` 0: 60 000 (400 for "synack", SYNs at 400/s first)."""
    ports = ports or (400 if kind == "synack" else 60_000)
    from netns.topology import SERVER_ADDRS, client_addr

    return "client", ["flood", "--kind", kind, "--bind", client_addr(ATTACKER),
                      "--server", SERVER_ADDRS[0], "--port", "80", "--rate", str(rate),
                      "--seconds", str(seconds), "--ports", str(ports)]  # fmt: skip


def _attack_bed():  # noqa: ANN202
    from netns.topology import CarrierSpec, TestbedSpec

    spec = TestbedSpec(carriers=(CarrierSpec("10mbit", delay_ms=10),) * 2, clients=4)
    # budgets small enough for a test's time to fill them over 2 x 10 Mbit/s (the
    # defaults, 512 MiB at the gateway and 256 MiB per session at the node, would take
    # minutes); per connection a quarter of the default 4 MiB. A path's output bound of
    # 512 KiB (default 4 MiB) so that a peer that never reads is dropped within the run
    kw = {
        "gateway": {"buffer_bytes": 1 << 20, "memory_budget": 16 << 20},
        "node": {"buffer_bytes": 1 << 20, "session_memory": 16 << 20, "memory_budget": 32 << 20},
        "paths": {"max_output": 512 << 10},
    }
    return spec, kw


ATTACK_BED = _attack_bed()
"""(spec, ProxyBed keywords) of the testbed the remaining attacks run on."""

HOARDER = 3  # client address index of the connections that pin buffers (a normal stack)
SINK_PORT = 5030


def sack_attack(rate: float, seconds: float) -> tuple[str, list[str]]:
    """:func:`sack_holes` from the attacker's address to the download server."""
    from netns.topology import SERVER_ADDRS, client_addr

    return "client", ["sack-holes", "--bind", client_addr(ATTACKER), "--server",
                      SERVER_ADDRS[0], "--rate", str(rate), "--seconds", str(seconds)]  # fmt: skip


def gateway_attack(bed, mode: str, rate: float, seconds: float) -> tuple[str, list[str]]:  # noqa: ANN001
    """:func:`hostile_gateway` from the servers' namespace (an authenticated gateway that
    reaches the node over the Internet, not over the victims' carriers), with a
    certificate of its own (made once in the bed's directory)."""
    from middlebox.paths import pki
    from netns.topology import SERVER_ADDRS, node_carrier_addr

    if not (bed.dir / "gateway-train-2.pem").exists():
        pki.create_gateway(bed.dir, "train-2")
    return "server", ["hostile-gateway", "--mode", mode, "--node",
                      f"{node_carrier_addr(0)}:4433", "--tls-dir", str(bed.dir), "--server",
                      SERVER_ADDRS[0], "--rate", str(rate), "--seconds", str(seconds)]  # fmt: skip


def hoard_attack(kind: str, count: int, fill: float, seconds: float) -> tuple[str, list[str]]:
    """:func:`hoard` from its own client address: downloads never read, or uploads to a
    :func:`sink` (start it with :func:`start_sink`)."""
    from netns.topology import SERVER_ADDRS, client_addr

    port = SINK_PORT if kind == "upload" else 5201
    return "client", ["hoard", "--kind", kind, "--bind", client_addr(HOARDER), "--server",
                      SERVER_ADDRS[0], "--port", str(port), "--count", str(count), "--fill",
                      str(fill), "--seconds", str(seconds)]  # fmt: skip


def start_sink(bed):  # noqa: ANN001, ANN201 (a ProxyBed; a Popen)
    import subprocess
    import sys

    argv = [sys.executable, "-m", "bench.edge_bench", "sink", "--port", str(SINK_PORT)]
    p = bed.tb.popen("server", argv, stdout=subprocess.PIPE, cwd=bed_root())
    if p.stdout is None or not p.stdout.readline().startswith(b"ready"):
        raise RuntimeError("the sink did not start")
    return p


def attacked_download(bed, kind: str | None, rate: float, seconds: float, probes: int = 5,  # noqa: ANN001
                      attack: tuple[str, list[str]] | None = None,
                      settle: float = 0.0) -> dict:  # fmt: skip
    """A bulk download of ``seconds`` from the victim's address, with (``kind`` "syn",
    "ack" or "synack") or without a flood from the attacker's address at ``rate``
    packets/s (0: as fast as the sender can), and ``probes`` new connections from a
    third address during it. ``attack``: another attacker instead, (namespace, arguments
    of this module) of a program that prints "ready" once it attacks and a JSON line at
    its end; it must attack for ``seconds`` + 1.5 s (+ ``settle``). ``settle``: wait up
    to that long before the download until what the gateway and the node hold stops
    growing (an attack that pins buffers has filled them). Returns goodput, connect times, the
    attack's figures and the gateway's counters that moved. A ``netns.baselines`` server
    must listen on its default port."""
    import subprocess
    import sys

    from netns import baselines
    from netns.topology import SERVER_ADDRS, client_addr

    server = SERVER_ADDRS[0]
    before = bed.status()
    node_before = bed.status("node")
    me = [sys.executable, "-m", "bench.edge_bench"]
    if kind:
        attack = flood_attack(kind, rate, seconds + 1.5)
    flooder = None
    if attack:
        role, argv = attack
        full = [sys.executable, *argv] if argv[0].endswith(".py") else [*me, *argv]
        flooder = bed.tb.popen(role, full, stdout=subprocess.PIPE, cwd=bed_root())
        if flooder.stdout is None or not flooder.stdout.readline().startswith(b"ready"):
            flooder.kill()
            raise RuntimeError(f"the attacker did not start: {argv}")
        time.sleep(0.5)  # the attack runs before and during the download
        if settle:
            settled(bed, settle)
    argv = [*me, "connects", "--bind", client_addr(THIRD), "--server", server,
            "--count", str(probes), "--interval", str(seconds / (probes + 1))]  # fmt: skip
    prober = bed.tb.popen("client", argv, stdout=subprocess.PIPE, cwd=bed_root())
    try:
        d = baselines.download(bed.tb, VICTIM, seconds=seconds)
        out, _ = prober.communicate(timeout=seconds + 30)
        connect_s = json.loads(out.decode().strip().splitlines()[-1])
        name = (kind or attack[1][0].rsplit("/", 1)[-1]) if attack else "none"
        result: dict = {"attack": name,
                        "goodput_mbit": round(d.goodput_mbit, 2),
                        "connect_s": connect_s}  # fmt: skip
        if flooder is not None:
            out, _ = flooder.communicate(timeout=seconds + 60)
            result["flood"] = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        for p in (flooder, prober):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5)
    after = bed.status()
    node_after = bed.status("node")
    ep0, ep1 = before["endpoint"], after["endpoint"]
    fl0, fl1 = before["flows"], after["flows"]
    mine = after["sessions"][0]
    result["gateway"] = {
        **{k: ep1[k] - ep0[k] for k in ENDPOINT_KEYS if ep1[k] != ep0[k]},
        **{k: fl1.get(k, 0) - fl0.get(k, 0) for k in FLOW_KEYS if fl1.get(k, 0) != fl0.get(k, 0)},
        "half_open": ep1["half_open"],
        "flows_tracked": [fl0["tracked"], fl1["tracked"]],  # before, after
        "mux_connections": len(mine["connections"]),
        "memory": mine.get("memory"),
    }
    c0, c1 = _node_counters(node_before), _node_counters(node_after)
    result["node"] = {
        **{k: c1[k] - c0.get(k, 0) for k in NODE_KEYS if c1.get(k, 0) != c0.get(k, 0)},
        "sessions": len(node_after.get("sessions", [])),
        "memory": node_after.get("memory"),
    }
    return result


def _node_counters(st: dict) -> dict:
    """The node's process counters plus its sessions' (summed) of :data:`NODE_KEYS`."""
    out = {k: st.get("counters", {}).get(k, 0) for k in NODE_KEYS}
    for sess in st.get("sessions", []):
        for k in NODE_KEYS:
            out[k] += sess.get("counters", {}).get(k, 0)
    return out


def held(bed) -> int:  # noqa: ANN001
    """Bytes the gateway's and the node's connection buffers hold together."""
    gw = bed.status()["sessions"][0]["memory"]["held"]
    return gw + bed.status("node")["memory"]["held"]


def settled(bed, limit: float) -> int:  # noqa: ANN001
    """Wait until :func:`held` grew by less than 256 KiB over a second (about a tenth of
    what the testbed's carriers bring in a second), at most ``limit`` s."""
    end = time.monotonic() + limit
    last = held(bed)
    while time.monotonic() < end:
        time.sleep(1.0)
        now = held(bed)
        if now - last < 256 << 10:
            return now
        last = now
    return last


NODE_KEYS = ("paths_unread", "reorder_overflow", "windows_shrunk", "growth_held",
             "open_over_limit", "resets_sent")  # fmt: skip


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


def attacks_main(args: argparse.Namespace) -> int:
    """The attacks of tests/adversarial/test_edge_attacks.py, at the tests' rates and
    higher, each paired with the download without it just before."""
    from pathlib import Path

    from bench.proxy_bench import ProxyBed
    from netns import baselines

    spec, kw = ATTACK_BED
    run = args.seconds + 1.5
    settle = 40.0
    print(f"# {args.seconds:g} s download (client 0) beside each attack, {args.probes} new "
          "connections from client 2 during it; 2 carriers of 10 Mbit/s; budgets "
          f"{json.dumps(kw)}; 2 shared cores: noisy", flush=True)  # fmt: skip
    with ProxyBed(spec, Path(args.workdir), **kw) as bed:
        srv = baselines.start_server(bed.tb)
        snk = start_sink(bed)
        try:
            drop_replies_to_attacker(bed)
            attacked_download(bed, None, 0, 2.0, 1)  # warm the paths up
            rows = [("sack holes", r, sack_attack(r, run), 0.0) for r in (2000, 5000, 0)]
            rows += [("mux holes", r, gateway_attack(bed, "holes", r, run), 0.0)
                     for r in (2000, 5000, 0)]  # fmt: skip
            rows += [("never reads", r, gateway_attack(bed, "unread", r, run), 0.0)
                     for r in (5000, 20_000, 0)]  # fmt: skip
            rows += [(f"pinning ({k})", 32, hoard_attack(k, 32, 2.0, run + settle), settle)
                     for k in ("download", "upload")]  # fmt: skip
            for name, rate, attack, wait in rows:
                if args.only and not any(o in name for o in args.only):
                    continue
                quiet = attacked_download(bed, None, 0, args.seconds, args.probes)
                r = attacked_download(bed, None, 0, args.seconds, args.probes, attack, wait)
                r["attack"], r["rate_asked"] = name, rate
                r["quiet_mbit"], r["quiet_connect_s"] = quiet["goodput_mbit"], quiet["connect_s"]
                r["share_of_quiet"] = round(r["goodput_mbit"] / quiet["goodput_mbit"], 3)
                print(json.dumps(r), flush=True)
        finally:
            snk.kill()
            srv.terminate()
    return 0


def _stray(v: str) -> int | None:
    return None if v == "default" else int(v)


def _target(sp: argparse.ArgumentParser, port: int, bind: bool = True) -> None:
    """The options every traffic-making subcommand shares: where from, where to."""
    if bind:
        sp.add_argument("--bind", required=True)
    sp.add_argument("--server", required=True)
    sp.add_argument("--port", type=int, default=port)


def _pace(sp: argparse.ArgumentParser, rate_help: str = "per second (0: maximum)") -> None:
    sp.add_argument("--rate", type=float, default=0.0, help=rate_help)
    sp.add_argument("--seconds", type=float, default=5.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    h = sub.add_parser("holes", help="per-segment cost with many holes")
    h.add_argument("--probes", type=int, default=2000)
    f = sub.add_parser("flood", help="(inside the client namespace) send a SYN or ACK flood")
    f.add_argument("--kind", choices=("syn", "ack", "synack"), default="syn")
    _target(f, 80)
    _pace(f, "packets per second (0: maximum)")
    f.add_argument("--ports", type=int, default=60_000, help="source ports to cycle over")
    sh = sub.add_parser("sack-holes", help="(inside the client namespace) one-byte holes")
    _target(sh, 5201)
    _pace(sh, "segments per second (0: maximum)")
    hg = sub.add_parser("hostile-gateway", help="(beside the node) an authenticated attacker")
    hg.add_argument("--mode", choices=("holes", "unread"), required=True)
    hg.add_argument("--node", required=True)
    hg.add_argument("--tls-dir", required=True, help="ca.pem, gateway-ID.pem and .key")
    hg.add_argument("--id", default="train-2")
    _target(hg, 5201, bind=False)
    _pace(hg, "messages per second (0: maximum)")
    sk = sub.add_parser("sink", help="(inside the server namespace) a server that never reads")
    sk.add_argument("--address", default="0.0.0.0")
    sk.add_argument("--port", type=int, default=5030)
    ho = sub.add_parser("hoard", help="(inside the client namespace) connections pinning buffers")
    ho.add_argument("--kind", choices=("download", "upload"), required=True)
    _target(ho, 5201)
    ho.add_argument("--count", type=int, default=32)
    ho.add_argument("--fill", type=float, default=5.0)
    ho.add_argument("--seconds", type=float, default=5.0)
    c = sub.add_parser("connects", help="(inside the client namespace) time new connections")
    _target(c, 5201)
    c.add_argument("--count", type=int, default=5)
    c.add_argument("--interval", type=float, default=0.5)
    sf = sub.add_parser("synflood", help="floods beside a download on the testbed (root)")
    sf.add_argument("--seconds", type=float, default=8.0)
    sf.add_argument("--probes", type=int, default=8)
    sf.add_argument("--kinds", default="syn,ack,synack")
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
    at = sub.add_parser("attacks", help="the remaining attacks beside a download (root)")
    at.add_argument("--seconds", type=float, default=5.0)
    at.add_argument("--probes", type=int, default=5)
    at.add_argument("--only", nargs="*", default=[], help="rows whose name contains one")
    at.add_argument("--workdir", default="/tmp/mpproxy-edge-attacks")
    args = p.parse_args(argv)
    if args.what == "attacks":
        return attacks_main(args)
    if args.what == "synflood":
        return synflood_main(args)
    if args.what == "holes":
        return holes_main(args)
    if args.what == "flood":
        r = flood(args.kind, args.bind, args.server, args.port, args.rate, args.seconds,
                  args.ports)  # fmt: skip
    elif args.what == "sack-holes":
        r = sack_holes(args.bind, args.server, args.port, args.rate, args.seconds)
    elif args.what == "hostile-gateway":
        d = args.tls_dir
        tls = {"ca": f"{d}/ca.pem", "cert": f"{d}/gateway-{args.id}.pem",
               "key": f"{d}/gateway-{args.id}.key"}  # fmt: skip
        r = hostile_gateway(args.mode, args.node, tls, args.id, args.server, args.port,
                            args.rate, args.seconds)  # fmt: skip
    elif args.what == "sink":
        sink(args.address, args.port)
        return 0
    elif args.what == "hoard":
        r = hoard(args.kind, args.bind, args.server, args.port, args.count, args.fill,
                  args.seconds)  # fmt: skip
    if args.what in ("flood", "sack-holes", "hostile-gateway", "hoard"):
        print(json.dumps(r), flush=True)
        return 0
    if args.what == "connects":
        r = connects(args.bind, args.server, args.port, args.count, args.interval)
        print(json.dumps(r), flush=True)
        return 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
