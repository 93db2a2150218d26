"""SYN cookies: a stateless answer to a SYN, checked when the client's ACK comes back.

When the half-open queue is over its limit, the endpoint answers a SYN with a SYN-ACK
whose sequence number carries everything it needs to make the connection later, and
keeps nothing (Linux's ``net.ipv4.tcp_syncookies``). The client's third ACK then names
``cookie + 1``; only a value the endpoint made for that 4-tuple and that client ISN, in
the last two time slots, makes a connection.

Layout of the 32-bit cookie (the endpoint's ISN)::

    | slot (5 bits) | MSS index (2 bits) | keyed hash (25 bits) |

``slot`` counts :data:`SLOT` seconds (a cookie is good for one to two slots); the MSS
index names the largest value of :data:`MSS_TABLE` at most the client's MSS (Linux's
table); the hash (BLAKE2s keyed with the endpoint's secret) covers the tuple, the
client's ISN, the slot and the MSS index, so a blind attacker must guess 25 bits.

What survives a cookie, as in Linux: the MSS, rounded down to the table. Window scaling
and SACK survive only when the client uses timestamps: they ride in the low six bits of
the SYN-ACK's timestamp value, which the client echoes (:func:`encode_ts`,
:func:`decode_ts`). Without timestamps the SYN-ACK offers neither, so the connection
runs without window scaling (at most 64 KiB in flight each way) and without SACK.
Whatever else a stateful SYN-ACK would have carried is lost too: the SYN's window (the
third ACK's is used) and the handshake's RTT sample (the first one comes with data).
"""

from __future__ import annotations

import hashlib
import struct

from middlebox.tcp.constants import MAX_WSCALE, SEQ_MASK
from middlebox.tcp.events import Key

MSS_TABLE = (536, 1300, 1440, 1460)  # Linux's msstab for IPv4
SLOT = 64.0  # seconds per time slot
_SLOT_BITS = 5
_HASH_BITS = 25
_HASH_MASK = (1 << _HASH_BITS) - 1
_TS_BITS = 6  # low bits of the timestamp value carrying the options
_TS_MASK = (1 << _TS_BITS) - 1
_WSCALE_NONE = 0xF
_TS_SACK = 0x10
_PACK = struct.Struct("!HHIBB")


def _slot(now: float) -> int:
    return int(now // SLOT) & ((1 << _SLOT_BITS) - 1)


def _hash(secret: bytes, key: Key, isn: int, slot: int, mss_index: int) -> int:
    src, sport, dst, dport = key
    msg = src + dst + _PACK.pack(sport, dport, isn, slot, mss_index)
    digest = hashlib.blake2s(msg, key=secret, digest_size=4, person=b"syncook").digest()
    return int.from_bytes(digest, "big") & _HASH_MASK


def make(secret: bytes, key: Key, isn: int, mss: int | None, now: float) -> int:
    """The cookie (the endpoint's ISN) answering the client's SYN with sequence ``isn``."""
    client_mss = mss or MSS_TABLE[0]
    index = max(i for i, m in enumerate(MSS_TABLE) if m <= client_mss or i == 0)
    slot = _slot(now)
    return (slot << 27) | (index << _HASH_BITS) | _hash(secret, key, isn, slot, index)


def check(secret: bytes, key: Key, isn: int, cookie: int, now: float) -> int | None:
    """The MSS a valid ``cookie`` encodes for the client whose SYN had ``isn``, or None."""
    slot = cookie >> 27
    if (_slot(now) - slot) & ((1 << _SLOT_BITS) - 1) > 1:
        return None  # older than two slots
    index = (cookie >> _HASH_BITS) & 3
    if cookie & _HASH_MASK != _hash(secret, key, isn, slot, index):
        return None
    return MSS_TABLE[index]


def encode_ts(tsval: int, wscale: int | None, sack: bool) -> int:
    """A timestamp value at most ``tsval`` whose low bits carry the client's window scale
    (none: 15) and whether SACK was agreed, so later values never go back."""
    opts = (_WSCALE_NONE if wscale is None else min(wscale, MAX_WSCALE)) | (_TS_SACK if sack else 0)
    t = (tsval & ~_TS_MASK) | opts
    if opts > tsval & _TS_MASK:
        t -= _TS_MASK + 1
    return t & SEQ_MASK


def decode_ts(tsecr: int) -> tuple[int | None, bool]:
    """The client's window scale (or None) and SACK agreement from the echoed value."""
    ws = tsecr & _WSCALE_NONE
    return (None if ws == _WSCALE_NONE else ws), bool(tsecr & _TS_SACK)
