"""Bytes for the stores: one *chunk* is the windows and events of one carrier and cell
added by one ingest.

Chunks are ``.npz`` archives loaded with ``allow_pickle=False``: a fleet store is shared
over the network, and unpickling what another machine wrote would let it run code here.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from contextdb.errors import ContextDBError
from contextdb.records import CLASSES, HandoverEvent
from contextdb.windows import ARRAY_FIELDS, OPTIONAL_FIELDS, Windows


def encode_chunk(windows: Windows, events: list[HandoverEvent], origin: str = "") -> bytes:
    """``windows`` and ``events`` must all belong to one carrier and one cell; ``origin``
    names the gateway that measured them (see :mod:`contextdb.sync`)."""
    arrays = {k: np.ascontiguousarray(getattr(windows, k)) for k in ARRAY_FIELDS}
    arrays["origin"] = np.array([origin], dtype=str)
    arrays["ev_t"] = np.array([e.t for e in events], dtype=np.float64)
    arrays["ev_gap"] = np.array([e.gap for e in events], dtype=np.float64)
    arrays["ev_kind"] = np.array([CLASSES.index(e.kind) for e in events], dtype=np.uint8)
    arrays["ev_to"] = np.array(["" if e.cell_to is None else e.cell_to for e in events], dtype=str)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode_chunk(data: bytes, carrier: str, cell: str) -> tuple[Windows, list[HandoverEvent]]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        n = len(arrays["t"])
        for k in OPTIONAL_FIELDS:
            arrays.setdefault(k, np.full(n, np.nan))
        windows = Windows(cell=[cell] * n, **{k: arrays[k] for k in ARRAY_FIELDS})
        events = [
            HandoverEvent(carrier, float(t), cell, to or None, float(g), CLASSES[int(k)])
            for t, g, k, to in zip(
                arrays["ev_t"], arrays["ev_gap"], arrays["ev_kind"], arrays["ev_to"], strict=True
            )
        ]
    except (ValueError, KeyError, OSError, IndexError, TypeError) as e:
        raise ContextDBError(
            f"unreadable chunk for carrier {carrier!r} cell {cell!r} (corrupt, or another "
            f"format): {e}"
        ) from None
    return windows, events


def chunk_origin(data: bytes) -> str:
    """The gateway that wrote a chunk ("" when unknown); reads only that member."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return str(z["origin"][0]) if "origin" in z.files else ""
    except (ValueError, KeyError, OSError, IndexError) as e:
        raise ContextDBError(f"corrupt chunk: {e}") from None


def encode_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


def decode_json(data: bytes) -> Any:
    return json.loads(data.decode())
