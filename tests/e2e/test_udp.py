"""UDP over the carrier paths on the emulated testbed, with unmodified servers.

The gateway captures the client's UDP in its listener, carries it as DATAGRAM messages
and the node relays it from its own address; answers reach the client from the original
destination's address and port. A real DNS server (dnsmasq, Debian's ``dnsmasq-base``,
installed by scripts/sysdeps.sh) answers in the server namespace; the other servers are
small Python programs using plain sockets.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from bench.proxy_bench import SINK, ProxyBed, start_ready
from netns.topology import SERVER_ADDRS, CarrierSpec, TestbedSpec

pytestmark = [pytest.mark.netns, pytest.mark.slow]

SERVER, SERVER_B, _ = SERVER_ADDRS
NODE_SIDE = "100.66.0.1"  # the node's address toward the servers
DNSMASQ = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin")

# answers every datagram to its sender; prints the peers it saw at SIGTERM
UDP_ECHO = r"""
import signal, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
peers = set()
def bye(*_):
    print(" ".join(sorted(peers)), flush=True); sys.exit(0)
signal.signal(signal.SIGTERM, bye)
print("ready", flush=True)
while True:
    d, a = s.recvfrom(65535)
    peers.add(a[0])
    s.sendto(d, a)
"""

# sends N numbered datagrams at a rate, counts answers: lost, duplicated, wrong source
UDP_CLIENT = r"""
import json, os, select, socket, struct, sys, time
host, port, n, pps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
size = int(sys.argv[5]) if len(sys.argv) > 5 else 100
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
got, sent_at, rtts = {}, {}, []
dups = wrong = 0
def drain(until):
    global dups, wrong
    while True:
        r, _, _ = select.select([s], [], [], max(0.0, until - time.monotonic()))
        if not r:
            return
        d, a = s.recvfrom(65535)
        if a != (host, port):
            wrong += 1; continue
        i = struct.unpack("!I", d[:4])[0]
        if i in got:
            dups += 1; continue
        got[i] = True
        rtts.append(time.monotonic() - sent_at[i])
t0 = time.monotonic()
for i in range(n):
    sent_at[i] = time.monotonic()
    s.sendto(struct.pack("!I", i) + os.urandom(size - 4), (host, port))
    drain(t0 + (i + 1) / pps)
drain(time.monotonic() + 3.0)
rtts.sort()
p = lambda q: rtts[min(len(rtts) - 1, int(q * len(rtts)))] if rtts else None
print(json.dumps({"sent": n, "got": len(got), "dups": dups, "wrong_source": wrong,
                  "p50": p(0.5), "p99": p(0.99), "missing": sorted(set(range(n)) - set(got))[:20]}))
"""

# a DNS A query by hand (stdlib only): the answers' addresses, one line per query
DNS_QUERIES = r"""
import random, socket, struct, sys, time
server, name, count, gap = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
def query(qid):
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return q + struct.pack("!HH", 1, 1)
answered = 0
for _ in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2.0)
    qid = random.getrandbits(16)
    s.sendto(query(qid), (server, 53))
    try:
        d, a = s.recvfrom(4096)
    except socket.timeout:
        print("timeout"); continue
    assert a == (server, 53) and struct.unpack("!H", d[:2])[0] == qid, (a, d[:2])
    print(socket.inet_ntoa(d[-4:]))
    s.close()
    time.sleep(gap)
"""

# hostile UDP: fragments (the gateway's kernel reassembles and fragments them again on
# the way into the listener), and from a raw socket bad checksums, lengths, ports, size
MALFORMED = r"""
import os, socket, struct, sys
dst, src = sys.argv[1], sys.argv[2]
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
big = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
big.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT: fragment
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16; return ~s & 0xFFFF
def packet(payload, ulen=None, good=True, sport=40000, dport=7):
    ulen = 8 + len(payload) if ulen is None else ulen
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst)
    pseudo += struct.pack("!BBH", 0, 17, 8 + len(payload))
    udp = struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    c = csum(pseudo + udp) or 0xFFFF
    if not good: c ^= 0x5A5A
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + udp
for i in range(int(sys.argv[3])):
    big.sendto(b"y" * 2000, (dst, 7))                                # sent as 2 fragments
    raw.sendto(packet(b"x" * 100, good=False), (dst, 0))             # bad checksum
    raw.sendto(packet(b"x" * 100, ulen=60), (dst, 0))                # UDP length too short
    raw.sendto(packet(b"x" * 1000), (dst, 0))                        # above udp.max_datagram
    raw.sendto(packet(b"x" * 10, sport=0), (dst, 0))                 # port 0
print("sent")
"""

QUIC_SERVER = r"""
import asyncio, datetime, hashlib, random, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from aioquic.asyncio import serve
from aioquic.quic.configuration import QuicConfiguration
host, port, size, workdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
data = random.Random(14).randbytes(size)
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "quic.test")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
cfg = QuicConfiguration(is_client=False, alpn_protocols=["mpp-test"], idle_timeout=60.0)
cfg.certificate, cfg.private_key = cert, key
async def answer(reader, writer):
    await reader.read()
    writer.write(data)
    writer.write_eof()
def handle(reader, writer):
    asyncio.ensure_future(answer(reader, writer))
async def main():
    await serve(host, port, configuration=cfg, stream_handler=handle)
    print("ready", hashlib.sha256(data).hexdigest(), flush=True)
    await asyncio.Future()
asyncio.run(main())
"""

QUIC_CLIENT = r"""
import asyncio, hashlib, ssl, sys, time
from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration
host, port = sys.argv[1], int(sys.argv[2])
cfg = QuicConfiguration(is_client=True, alpn_protocols=["mpp-test"], idle_timeout=60.0,
                        verify_mode=ssl.CERT_NONE)
async def main():
    t0 = time.monotonic()
    async with connect(host, port, configuration=cfg) as c:
        reader, writer = await c.create_stream()
        writer.write(b"GET")
        writer.write_eof()
        h, n = hashlib.sha256(), 0
        while d := await reader.read(1 << 16):
            h.update(d)
            n += len(d)
            if n >= (1 << 20) and n - len(d) < (1 << 20):
                print("started", flush=True)
    print(n, h.hexdigest(), round(time.monotonic() - t0, 2), flush=True)
asyncio.run(main())
"""


UPLOAD_CHECK = r"""
import hashlib, os, socket, sys
data = os.urandom(int(sys.argv[3]))
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
c.sendall(data); c.shutdown(socket.SHUT_WR)
n, digest = c.recv(300).decode().split()[:2]
assert int(n) == len(data) and digest == hashlib.sha256(data).hexdigest(), (n, len(data))
print("ok")
"""


def py(bed, role, program, *args, timeout=120):
    r = bed.run(role, [sys.executable, "-c", program, *map(str, args)], timeout=timeout)
    assert r.returncode == 0, r.stderr.decode()[-3000:] + bed.log("gateway")[-2000:]
    return r.stdout.decode()


def echo_run(bed, n, pps, port=7, size=100):
    return json.loads(py(bed, "client", UDP_CLIENT, SERVER, port, n, pps, size))


def stop(p):
    p.terminate()
    try:
        out, _ = p.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    return out.decode() if out else ""


def wait_flows_gone(bed, timeout=20.0):
    end = time.monotonic() + timeout
    while bed.status()["udp"]["flows"] and time.monotonic() < end:
        time.sleep(0.5)


UDP_LIMITS = {"idle_timeout": 6.0, "short_timeout": 6.0, "max_datagram": 512,
              "max_flows_per_source": 64}  # fmt: skip


@pytest.fixture(scope="module")
def ubed(tmp_path_factory):
    carriers = (CarrierSpec("20mbit", delay_ms=10),) * 2
    spec = TestbedSpec(carriers=carriers, clients=1)
    paths = {"user_timeout": 2.0, "lost_timeout": 10.0}
    with ProxyBed(spec, tmp_path_factory.mktemp("udp"), paths=paths,
                  sections={"udp": UDP_LIMITS}) as b:  # fmt: skip
        procs = [
            start_ready(b, "server", UDP_ECHO, [SERVER, "7"]),
            start_ready(b, "server", SINK, ["0.0.0.0", "5002"]),
        ]
        b.echo = procs[0]
        try:
            yield b
        finally:
            for p in procs[1:]:
                p.terminate()


def test_udp_echo_is_carried_and_answered_from_the_destination(ubed):
    r = echo_run(ubed, 100, 100)
    assert r["got"] == 100 and r["dups"] == 0 and r["wrong_source"] == 0, r
    st = ubed.status()
    udp = st["udp"]
    assert udp["packets_up"] >= 100 and udp["packets_down"] >= 100, udp
    # a small flow is duplicated: the node saw both copies and kept one
    node = ubed.status("node")
    assert node["sessions"][0]["udp"]["duplicates"] >= 50, node["sessions"][0]["udp"]
    assert node["udp"]["udp_mappings"] >= 1


def test_udp_state_expires_and_node_mapping_is_removed(ubed):
    r = echo_run(ubed, 10, 50)
    assert r["got"] == 10, r
    node = ubed.status("node")
    assert node["sessions"][0]["udp"]["flows"] >= 1
    time.sleep(UDP_LIMITS["idle_timeout"] + 2.5)
    gw = ubed.status()["udp"]
    node = ubed.status("node")
    assert gw["flows"] == 0 and gw["expired"] >= 1, gw
    assert node["sessions"][0]["udp"]["flows"] == 0, node["sessions"][0]["udp"]
    assert node["udp"]["udp_mappings_expired"] >= 1, node["udp"]


def test_malformed_udp_and_flows_beyond_caps_are_dropped_beside_tcp(ubed):
    upload = ubed.tb.popen("client", [sys.executable, "-c", UPLOAD_CHECK, SERVER, "5002",
                                      str(8 << 20)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)  # fmt: skip
    client = "100.64.0.10"
    py(ubed, "client", MALFORMED, SERVER, client, 50)
    # 100 flows from one source: beyond udp.max_flows_per_source (64) they are dropped
    many = r"""
import socket, sys
for i in range(100):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"hi", (sys.argv[1], 7))
print("ok")
"""
    py(ubed, "client", many, SERVER)
    out, err = upload.communicate(timeout=120)
    assert upload.returncode == 0 and b"ok" in out, err.decode()[-2000:]
    udp = ubed.status()["udp"]
    dropped = udp["dropped"]
    assert dropped.get("fragment", 0) >= 100, udp
    assert dropped.get("bad_checksum", 0) >= 50, udp
    assert dropped.get("bad_length", 0) >= 50, udp
    assert dropped.get("oversized", 0) >= 50, udp
    assert dropped.get("bad_port", 0) >= 50, udp
    assert udp["refused_source"] >= 30, udp
    wait_flows_gone(ubed)
    r = echo_run(ubed, 20, 50)  # the gateway still carries UDP
    assert r["got"] == 20, r


@pytest.mark.skipif(DNSMASQ is None, reason="dnsmasq not installed (scripts/sysdeps.sh)")
def test_dns_answered_by_a_real_server_with_one_carrier_dark(ubed):
    conf = ubed.dir / "dnsmasq.conf"
    conf.write_text(f"address=/www.example.test/192.0.2.77\nlisten-address={SERVER_B}\n")
    dns = ubed.server([DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts",
                       "--bind-interfaces", "--pid-file=", "--user=root", "-C", str(conf)],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_flows_gone(ubed)  # each query is a flow of its own: room under the source's cap
    try:
        ubed.run("gateway", ["ip", "link", "set", "car0", "down"])
        # 6 s of queries: before and after the gateway finds the carrier's path dead
        out = py(ubed, "client", DNS_QUERIES, SERVER_B, "www.example.test", 30, 0.2)
        assert out.split() == ["192.0.2.77"] * 30, out
        assert ubed.status()["sessions"][0]["paths"][0]["state"] == "down"
    finally:
        ubed.run("gateway", ["ip", "link", "set", "car0", "up"])
        dns.terminate()
    ubed.wait_paths(2, timeout=30)


def test_duplicated_flow_over_a_lossy_carrier_loses_under_one_percent(tmp_path):
    """One carrier drops 30 % of its packets at random (both directions); a 50 pps
    interactive flow duplicated over both carriers loses at most 1 % and the application
    sees no duplicate."""
    carriers = (CarrierSpec("20mbit", delay_ms=10, loss=0.3), CarrierSpec("20mbit", delay_ms=10))
    spec = TestbedSpec(carriers=carriers, clients=1)
    with ProxyBed(spec, tmp_path, start=False, paths={"user_timeout": 6.0}) as b:
        b.start_node()
        b.start_gateway()
        b.wait_paths(2, timeout=40, enough_at=time.monotonic() + 15)
        echo = start_ready(b, "server", UDP_ECHO, [SERVER, "7"])
        r = echo_run(b, 500, 50)
        peers = stop(echo).split()
        assert r["got"] >= 495 and r["dups"] == 0 and r["wrong_source"] == 0, r
        assert peers == [NODE_SIDE], peers  # the server saw the node, not the client
        sched = b.status()["scheduler"]["datagrams"]
        assert sched["copies"] >= 400, sched


QUIC_SIZE = 20 << 20


def test_quic_download_survives_a_carrier_cut(tmp_path):
    """aioquic's client and server (a test dependency), 20 MiB over one QUIC stream to
    UDP 443: the flow is single (one path at a time); its carrier is cut for 3 s
    mid-transfer, the flow moves to the other carrier, and the connection survives
    (the server sees the node's address throughout) with every byte."""
    pytest.importorskip("aioquic")
    carriers = (CarrierSpec("20mbit", delay_ms=10),) * 2
    spec = TestbedSpec(carriers=carriers, clients=1)
    paths = {"user_timeout": 2.0, "lost_timeout": 20.0}
    with ProxyBed(spec, tmp_path, paths=paths) as b:
        argv = [sys.executable, "-c", QUIC_SERVER, SERVER, "443", str(QUIC_SIZE), str(tmp_path)]
        server = b.server(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = server.stdout.readline().decode().split()
        assert line[:1] == ["ready"], server.stderr.read().decode()[-2000:]
        want = line[1]
        client = b.tb.popen("client", [sys.executable, "-c", QUIC_CLIENT, SERVER, "443"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        try:
            assert client.stdout.readline().startswith(b"started"), client.stderr.read()[-2000:]
            before = {p["interface"]: p["bytes_in"] for p in b.status()["sessions"][0]["paths"]}
            time.sleep(1.0)
            after = {p["interface"]: p["bytes_in"] for p in b.status()["sessions"][0]["paths"]}
            busy = max(after, key=lambda k: after[k] - before[k])  # the flow's carrier
            b.run("gateway", ["ip", "link", "set", busy, "down"])
            time.sleep(3.0)
            b.run("gateway", ["ip", "link", "set", busy, "up"])
            out, err = client.communicate(timeout=240)
        finally:
            client.kill()
            stop(server)
        assert client.returncode == 0, err.decode()[-3000:]
        n, digest, _secs = out.decode().split()
        assert int(n) == QUIC_SIZE and digest == want
        node = b.status("node")["sessions"][0]
        assert node["datagrams"]["moves"] >= 1, node["datagrams"]
        assert node["udp"]["flows"] == 1  # one mapping: the server saw one address and port
