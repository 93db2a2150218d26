"""TCP options: parse the ones the endpoint understands, build the ones it sends.

Unknown options are skipped by their length, as RFC 9293 3.2 requires; a malformed
length makes the whole segment invalid (the caller drops and counts it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from middlebox.tcp.constants import (
    MAX_SACK_BLOCKS,
    OPT_EOL,
    OPT_MSS,
    OPT_NOP,
    OPT_SACK,
    OPT_SACK_PERM,
    OPT_TIMESTAMP,
    OPT_WSCALE,
)

_H = struct.Struct("!H")
_II = struct.Struct("!II")
_TS_BLOCK = struct.Struct("!BBBBII")  # NOP NOP kind len tsval tsecr


class OptionError(ValueError):
    """The option area of a segment is malformed."""


@dataclass(slots=True)
class Options:
    """Options seen on one segment; ``None``/empty when absent."""

    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    tsval: int | None = None
    tsecr: int | None = None
    sack: tuple[tuple[int, int], ...] = ()


EMPTY = Options()


def parse(data: bytes | memoryview) -> Options:
    """Parse an option area; raise :class:`OptionError` on bad lengths."""
    opts = Options()
    i = 0
    n = len(data)
    while i < n:
        kind = data[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            raise OptionError("option without length")
        length = data[i + 1]
        if length < 2 or i + length > n:
            raise OptionError(f"bad option length {length} for kind {kind}")
        if kind == OPT_TIMESTAMP:
            if length != 10:
                raise OptionError("bad timestamp length")
            opts.tsval, opts.tsecr = _II.unpack_from(data, i + 2)
        elif kind == OPT_SACK:
            if (length - 2) % 8 or length == 2:
                raise OptionError("bad SACK length")
            opts.sack = tuple(_II.unpack_from(data, j) for j in range(i + 2, i + length, 8))[
                :MAX_SACK_BLOCKS
            ]
        elif kind == OPT_MSS:
            if length != 4:
                raise OptionError("bad MSS length")
            opts.mss = _H.unpack_from(data, i + 2)[0]
        elif kind == OPT_WSCALE:
            if length != 3:
                raise OptionError("bad window scale length")
            opts.wscale = data[i + 2]
        elif kind == OPT_SACK_PERM:
            if length != 2:
                raise OptionError("bad SACK-permitted length")
            opts.sack_permitted = True
        i += length
    return opts


def build_syn_ack(
    mss: int, wscale: int | None, sack_permitted: bool, ts: tuple[int, int] | None
) -> bytes:
    """Options of a SYN-ACK, laid out as Linux does (word aligned with NOPs)."""
    out = bytearray(struct.pack("!BBH", OPT_MSS, 4, mss))
    if ts is not None:
        if sack_permitted:
            out += struct.pack("!BBBBII", OPT_SACK_PERM, 2, OPT_TIMESTAMP, 10, ts[0], ts[1])
        else:
            out += _TS_BLOCK.pack(OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10, ts[0], ts[1])
    elif sack_permitted:
        out += bytes((OPT_NOP, OPT_NOP, OPT_SACK_PERM, 2))
    if wscale is not None:
        out += bytes((OPT_NOP, OPT_WSCALE, 3, wscale))
    return bytes(out)


def build(ts: tuple[int, int] | None, sack: list[tuple[int, int]] | tuple = ()) -> bytes:
    """Options of a data/ACK segment: timestamps and up to 3 (4 without TS) SACK blocks."""
    if ts is None and not sack:
        return b""
    out = b"" if ts is None else _TS_BLOCK.pack(OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10, *ts)
    if sack:
        sack = sack[: 3 if ts is not None else MAX_SACK_BLOCKS]
        out += bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(sack)))
        out += b"".join(_II.pack(left, right) for left, right in sack)
    return out
