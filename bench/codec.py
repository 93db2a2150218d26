"""Codec benchmark: payload MB/s and messages/s for DATA messages, encode + decode.

Run: ``.venv/bin/python -m bench.codec [--size 16384] [--count 20000] [--chunk 65536]``.

What is timed is the codec's own work: building headers (``encode_header``, the payload
goes to ``sendmsg`` untouched) and decoding a received stream (``Decoder.feed`` plus
iteration). Streams are built before the clock starts. Two ways of receiving are timed:
the stream cut into fixed reads (``--chunk``, like ``recv(65536)``: a message cut
across two reads is assembled once into its own buffer) and one message per feed (every
payload stays a view into the read). Two baselines run in the same process so the
figures can be judged on a noisy shared machine: a copying encoder (``encode`` joins
header and payload) and a plain ``bytes(payload)`` copy of the same volume (memcpy
speed). The figures are printed, not judged: there is no pass/fail.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from middlebox.session.wire import Data, Decoder, encode, encode_header


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(size: int, count: int, chunk: int, repeat: int) -> list[tuple[str, float, int]]:
    """Return (label, seconds, messages) for each measured case."""
    payload = os.urandom(size)
    msgs = [Data(7, i * size, payload) for i in range(count)]
    max_payload = max(size + 64, 1024)
    wire_msgs = [encode(m) for m in msgs]
    stream = b"".join(wire_msgs)
    chunks = [stream[i : i + chunk] for i in range(0, len(stream), chunk)]

    def enc_headers() -> None:
        for m in msgs:
            encode_header(m)

    def enc_copy() -> None:
        for m in msgs:
            encode(m)

    def dec(pieces: list[bytes]) -> Callable[[], None]:
        def go() -> None:
            d = Decoder(max_payload)
            n = 0
            for piece in pieces:
                d.feed(piece)
                for _ in d:
                    n += 1
            assert n == count, (n, count)

        return go

    def memcpy() -> None:
        for _ in range(count):
            bytes(bytearray(payload))

    t_enc = _best(enc_headers, repeat)
    t_chunk = _best(dec(chunks), repeat)
    t_one = _best(dec(wire_msgs), repeat)
    return [
        ("encode_header (payload not copied)", t_enc, count),
        (f"decode, {chunk // 1024} KiB reads", t_chunk, count),
        ("decode, one message per feed", t_one, count),
        (f"encode+decode, {chunk // 1024} KiB reads", t_enc + t_chunk, count),
        ("encode+decode, one message per feed", t_enc + t_one, count),
        ("baseline: encode() joining header+payload", _best(enc_copy, repeat), count),
        ("baseline: two copies of each payload", _best(memcpy, repeat), count),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.codec", description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=16384, help="DATA payload bytes (16384)")
    ap.add_argument("--count", type=int, default=20000, help="messages per case (20000)")
    ap.add_argument("--chunk", type=int, default=65536, help="bytes per read (65536)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs (3)")
    args = ap.parse_args(argv)
    if args.size < 1 or args.count < 1 or args.chunk < 1 or args.repeat < 1:
        ap.error("--size, --count, --chunk and --repeat must be positive")
    rows = run(args.size, args.count, args.chunk, args.repeat)
    print(
        f"DATA messages of {args.size} payload bytes, {args.count} per case, best of "
        f"{args.repeat} (a shared 2-core machine: expect noise of tens of percent)"
    )
    print(f"{'case':<44} {'payload MB/s':>13} {'messages/s':>12}")
    for label, seconds, n in rows:
        mbs = n * args.size / seconds / 1e6
        print(f"{label:<44} {mbs:>13,.0f} {n / seconds:>12,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
