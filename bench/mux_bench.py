"""CPU cost of the connection-over-paths core (middlebox/session/mux.py), without sockets.

A gateway ``Mux`` and a node ``Mux`` in one process, joined by in-memory paths that
deliver at once: the gateway queues a bulk upload, every round it cuts messages, they
are encoded with the wire codec, decoded, fed to the node, the node reads the bytes and
returns its DATA_ACKs. The figure is the goodput one core can push through both ends
of the core plus the codec; the baseline, measured in the same run, is the codec alone
(encode + decode of the same payload in messages of the same size). The machine is
shared by several people: take the numbers as rough.

    .venv/bin/python -m bench.mux_bench [--mbytes N] [--paths N] [--message-size B]
"""

from __future__ import annotations

import argparse
import time

from middlebox.session import wire
from middlebox.session.mux import Mux, MuxParams, PeerFinished


def run_mux(total: int, paths: int, params: MuxParams) -> tuple[float, int]:
    gw, node = Mux("gateway", params), Mux("node", params)
    for pid in range(1, paths + 1):
        gw.path_up(pid, 0.0, srtt=0.02 + 0.01 * pid, room=1 << 30)
        node.path_up(pid, 0.0, srtt=0.02 + 0.01 * pid, room=1 << 30)
    decoders = {(side, pid): wire.Decoder(1 << 20) for side in "gn" for pid in gw.paths}
    data = bytes(range(256)) * (total // 256 + 1)
    data = data[:total]
    cid = gw.open("10.1.0.5", 40000, "198.51.100.7", 443)
    off, received, messages, now = 0, 0, 0, 0.0
    t0 = time.perf_counter()
    while True:
        now += 0.001
        if off < total:
            off += gw.send(cid, memoryview(data)[off : off + (1 << 20)])
            if off == total:
                gw.shutdown(cid)
        for src, dst, side in ((gw, node, "g"), (node, gw, "n")):
            for pid, msg in src.messages_to_send(now):
                messages += 1
                dec = decoders[(side, pid)]
                dec.feed(wire.encode(msg))
                for m in dec:
                    dst.receive(pid, m, now)
            while (ev := dst.next_event()) is not None:
                if type(ev).__name__ == "OpenRequested":
                    dst.accept(ev.conn_id)
                elif isinstance(ev, PeerFinished) and dst is node:
                    received += len(node.read(cid))
                    elapsed = time.perf_counter() - t0
                    assert received == total, (received, total)
                    return total / elapsed, messages
            if dst is node and node.pending(cid):
                received += len(node.read(cid))


def run_codec(total: int, size: int) -> float:
    payload = bytes(size)
    dec = wire.Decoder(1 << 20)
    t0 = time.perf_counter()
    for seq in range(0, total, size):
        dec.feed(wire.encode(wire.Data(1, seq, payload)))
        for _ in dec:
            pass
    return total / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mbytes", type=int, default=64, help="bytes to upload, MiB (64)")
    p.add_argument("--paths", type=int, default=3, help="paths (3)")
    p.add_argument("--message-size", type=int, default=16 << 10, help="first DATA size (16384)")
    p.add_argument("--buffer", type=int, default=4 << 20, help="buffer_bytes (4 MiB)")
    args = p.parse_args(argv)
    total = args.mbytes << 20
    params = MuxParams(buffer_bytes=args.buffer, message_size=args.message_size)
    rate, messages = run_mux(total, args.paths, params)
    avg = total / max(messages, 1)
    codec = run_codec(total, min(params.max_data, max(int(avg), 1)))
    print(f"upload={args.mbytes} MiB paths={args.paths} buffer={args.buffer}", end=" ")
    print(f"first_size={args.message_size}")
    print(f"codec alone (baseline)  {codec * 8 / 1e9:7.2f} Gbit/s")
    print(f"mux both ends + codec   {rate * 8 / 1e9:7.2f} Gbit/s ({rate / codec:.0%} of baseline)")
    print(f"messages (all kinds)    {messages} ({avg / 1024:.1f} KiB of payload per message)")
    print(f"messages per second     {messages * rate / total / 1e3:7.1f} k/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
