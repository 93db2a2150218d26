"""Internet checksum (RFC 1071) as fast as Python allows.

Measured on this project's machine (``python -m bench.tcp_bench --checksum``): for a
header-sized buffer the big-integer trick wins (``int.from_bytes(...) % 65535``, because
2**16 == 1 mod 65535 the remainder equals the one's-complement sum of the 16-bit words),
about 0.4 us; for a 64 KiB GRO segment numpy's vectorised sum wins by 6x (about 20 us,
27 Gbit/s) while the big integer needs about 120 us. ``array``/``sum`` is slower than both
everywhere. So small buffers use the integer trick and large ones numpy.
"""

from __future__ import annotations

_NUMPY_ABOVE = 2048
_np = None  # imported on first use: keeps ``mpproxy --help`` fast


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """One's-complement sum of ``data`` as 16-bit big-endian words, folded to 16 bits.

    The result is in 0..65535 and is 0 only for all-zero input (or a multiple of 65535
    folded to 0, which the callers treat as equivalent: both represent zero).
    """
    n = len(data)
    if n & 1:
        data = bytes(data) + b"\0"
        n += 1
    if n <= _NUMPY_ABOVE:
        return int.from_bytes(data, "big") % 65535
    global _np
    if _np is None:
        import numpy

        _np = numpy
    return int(_np.frombuffer(data, dtype=">u2").sum(dtype=_np.uint64)) % 65535


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The 16-bit Internet checksum of ``data`` (complement of the one's-complement sum).

    ``initial`` is a partial sum to add (e.g. a pseudo-header sum). A sum equal to
    0xFFFF (negative zero) gives checksum 0, as Linux sends it.
    """
    r = (ones_sum(data) + initial) % 65535
    return 0xFFFF - r if r else 0


def verify(data: bytes | bytearray | memoryview, initial: int = 0) -> bool:
    """True when ``data`` (checksum field included) sums to zero in one's complement."""
    return (ones_sum(data) + initial) % 65535 == 0


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Partial sum of the IPv4 pseudo header used by TCP and UDP checksums."""
    return (int.from_bytes(src + dst, "big") + proto + length) % 65535
