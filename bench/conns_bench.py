"""Many concurrent proxied connections on the testbed: what they cost the gateway and node.

Figures, not pass/fail (issue 13: "10 000 concurrent proxied connections with the
gateway's and node's RSS"). On the emulated testbed (real gateway and node processes)
a holder program in the client namespace opens N connections through the gateway to a
holder in the server namespace, spread over several client addresses (each below the
gateway's per-passenger limits), with a bounded number of handshakes in flight per
address. Each connection sends a 64-byte request that the server echoes, then stays
open. With all of them held, the bench reads the VmRSS of the gateway and node
processes (``/proc/<pid>/status``) and their status, and prints RSS before and after,
bytes per connection, the connections each side holds, and which limits it raised.

    /work/.../emu .venv/bin/python -m bench.conns_bench [--connections 10000] [--addresses 5]

Needs root; run it through the machine's measurement lock.
"""

from __future__ import annotations

import argparse
import errno
import json
import resource
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

REQUEST = 64
PER_ADDRESS_PENDING = 32  # below tcp.max_half_open_per_source (64): no SYN cookies needed


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (0 when it cannot be read)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- programs run inside the testbed's namespaces ----------------------------------------


def _recv(s: socket.socket) -> bytes | None:
    """What a readable socket gives: bytes, b"" at its end or an error, None for nothing."""
    try:
        return s.recv(4096)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def serve(port: int) -> None:
    """Accept everything on ``port``, echo what arrives, hold connections until killed."""
    lst = socket.create_server(("0.0.0.0", port), backlog=4096, reuse_port=True)
    lst.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lst, selectors.EVENT_READ, None)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                for _ in range(256):
                    try:
                        c, _ = lst.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as e:
                        if e.errno in (errno.EMFILE, errno.ENFILE):
                            time.sleep(0.01)
                        break
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ, "c")
                continue
            c = key.fileobj
            d = _recv(c)
            if d:
                try:
                    c.send(d)  # the echo (64 bytes: it fits)
                except OSError:
                    pass
            elif d is not None:  # the client's end
                sel.unregister(c)
                c.close()


def hold(binds: list[str], server: str, port: int, count: int, timeout: float) -> None:
    """Open ``count`` connections from the ``binds`` addresses in turn, each sending
    ``REQUEST`` bytes and waiting for their echo; print figures, hold them until stdin
    closes, then close them."""
    sel = selectors.DefaultSelector()
    pending = {b: 0 for b in binds}
    left = count
    done = failed = 0
    held: list[socket.socket] = []
    t0 = time.monotonic()
    deadline = t0 + timeout
    k = 0
    times: list[float] = []
    payload = b"x" * REQUEST
    while (done + failed < count) and time.monotonic() < deadline:
        while left and any(v < PER_ADDRESS_PENDING for v in pending.values()):
            b = binds[k % len(binds)]
            k += 1
            if pending[b] >= PER_ADDRESS_PENDING:
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.bind((b, 0))
            s.connect_ex((server, port))
            sel.register(s, selectors.EVENT_WRITE, [b, time.monotonic(), 0])
            pending[b] += 1
            left -= 1
        for key, mask in sel.select(0.2):
            s, st = key.fileobj, key.data
            if mask & selectors.EVENT_WRITE:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    sel.unregister(s)
                    s.close()
                    pending[st[0]] -= 1
                    failed += 1
                    continue
                s.send(payload)
                sel.modify(s, selectors.EVENT_READ, st)
                continue
            d = _recv(s)
            if d is None:
                continue
            if not d:
                sel.unregister(s)
                s.close()
                pending[st[0]] -= 1
                failed += 1
                continue
            st[2] += len(d)
            if st[2] >= REQUEST:
                sel.unregister(s)
                pending[st[0]] -= 1
                done += 1
                times.append(time.monotonic() - st[1])
                held.append(s)
    seconds = time.monotonic() - t0
    times.sort()
    pct = (lambda q: round(times[min(len(times) - 1, int(q * len(times)))], 4)) if times else None
    print(json.dumps({"held": len(held), "failed": failed, "not_finished": count - done - failed,
                      "open_seconds": round(seconds, 2),
                      "connect_echo_s": None if pct is None else
                      {"p50": pct(0.5), "p99": pct(0.99), "max": round(times[-1], 4)}}),
          flush=True)  # fmt: skip
    sys.stdin.readline()
    for s in held:
        s.close()


# -- on the testbed -----------------------------------------------------------------------


def bench(args: argparse.Namespace) -> dict:
    from bench.proxy_bench import ROOT, ProxyBed
    from netns.topology import SERVER_ADDRS, CarrierSpec, TestbedSpec, client_addr

    n, addrs = args.connections, args.addresses
    per_addr = -(-n // addrs)
    raised: dict = {}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = n + 1024
    if soft < need:  # the node holds one server socket per connection, the holders one each
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
        raised["RLIMIT_NOFILE"] = [soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]]
    gateway: dict = {}
    tcp: dict = {}
    node: dict = {}
    if per_addr > 2048:  # tcp.max_connections_per_source
        tcp["max_connections_per_source"] = per_addr + 64
    if per_addr > 4096:  # gateway.flow_table_per_source
        gateway["flow_table_per_source"] = per_addr + 64
    if n > 16384:  # node.session_connections
        node["session_connections"] = n + 64
    if n > 60000:  # tcp.max_connections, gateway.flow_table_size
        tcp["max_connections"] = n + 1024
        gateway["flow_table_size"] = n + 1024
    raised.update({f"gateway.{k}": v for k, v in gateway.items()})
    raised.update({f"tcp.{k}": v for k, v in tcp.items()})
    raised.update({f"node.{k}": v for k, v in node.items()})
    spec = TestbedSpec(carriers=(CarrierSpec("100mbit", delay_ms=5),) * 2, clients=addrs)
    out: dict = {"connections": n, "addresses": addrs, "raised": raised}
    bed_gw = {**gateway}
    with ProxyBed(spec, Path(args.workdir), gateway=bed_gw, node=node) as bed:
        if tcp:  # [tcp] is its own section: appended to the gateway's file, then restarted
            bed.stop_gateway()
            with open(bed.gw_cfg, "a") as f:
                f.write("[tcp]\n" + "".join(f"{k} = {v}\n" for k, v in tcp.items()))
            bed.start_gateway()
            bed.wait_paths(len(spec.carriers))
        assert bed.gw is not None and bed.node is not None
        me = [sys.executable, "-m", "bench.conns_bench"]
        srv = bed.tb.popen("server", [*me, "serve", "--port", str(args.port)],
                           stdout=subprocess.PIPE, cwd=str(ROOT))  # fmt: skip
        try:
            if srv.stdout is None or not srv.stdout.readline().startswith(b"ready"):
                raise RuntimeError("the server holder did not start")
            time.sleep(1.0)
            before = {"gateway_kib": rss_kib(bed.gw.pid), "node_kib": rss_kib(bed.node.pid)}
            binds = [client_addr(i) for i in range(addrs)]
            argv = [*me, "hold", "--server", SERVER_ADDRS[0], "--port", str(args.port),
                    "--count", str(n), "--timeout", str(args.timeout),
                    "--bind", *binds]  # fmt: skip
            cl = bed.tb.popen("client", argv, stdout=subprocess.PIPE, stdin=subprocess.PIPE,
                              cwd=str(ROOT))  # fmt: skip
            try:
                assert cl.stdout is not None and cl.stdin is not None
                line = cl.stdout.readline()
                if not line:
                    raise RuntimeError("the client holder ended early")
                out["client"] = json.loads(line)
                time.sleep(2.0)  # settle: the last windows and timers
                after = {"gateway_kib": rss_kib(bed.gw.pid), "node_kib": rss_kib(bed.node.pid)}
                gst, nst = bed.status(), bed.status("node")
                held = out["client"]["held"] or 1
                out["rss_kib"] = {"before": before, "held": after}
                out["bytes_per_connection"] = {
                    side: round((after[f"{side}_kib"] - before[f"{side}_kib"]) * 1024 / held)
                    for side in ("gateway", "node")
                }
                out["gateway_status"] = {
                    "endpoint_connections": gst["endpoint"].get("connections"),
                    "mux_connections": len(gst["sessions"][0]["connections"]),
                    "flows_tracked": gst["flows"]["tracked"],
                    "refused": {k: gst["endpoint"].get(k, 0)
                                for k in ("refused_source", "refused_full", "syn_cookies_sent")},
                    "memory": gst["sessions"][0].get("memory"),
                }  # fmt: skip
                sess = nst["sessions"][0] if nst["sessions"] else {}
                out["node_status"] = {
                    "mux_connections": len(sess.get("connections", {})),
                    "relays": sess.get("relays"),
                    "memory": nst.get("memory"),
                }
                cl.stdin.close()
                cl.wait(60)
            finally:
                if cl.poll() is None:
                    cl.kill()
                    cl.wait(5)
        finally:
            srv.kill()
            srv.wait(5)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what")
    s = sub.add_parser("serve", help="(inside the server namespace) accept, echo, hold")
    s.add_argument("--port", type=int, default=7000)
    h = sub.add_parser("hold", help="(inside the client namespace) open and hold connections")
    h.add_argument("--bind", nargs="+", required=True)
    h.add_argument("--server", required=True)
    h.add_argument("--port", type=int, default=7000)
    h.add_argument("--count", type=int, default=10000)
    h.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--addresses", type=int, default=5, help="client addresses to spread over")
    p.add_argument("--port", type=int, default=7000)
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to open them all")
    p.add_argument("--workdir", default="/tmp/mpproxy-conns-bench")
    args = p.parse_args(argv)
    if args.what == "serve":
        serve(args.port)
        return 0
    if args.what == "hold":
        hold(args.bind, args.server, args.port, args.count, args.timeout)
        return 0
    print(json.dumps(bench(args), indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
