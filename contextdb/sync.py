"""Share history between a gateway's own store and the fleet store of its line.

A gateway keeps its history in its local file (queries and live ingest never depend on
the network) and, whenever it has connectivity, calls :func:`sync`: it pushes the chunks
it measured itself (those whose origin is its own name) to the fleet store and pulls
every chunk other gateways pushed. Cursors per cell, kept in the local store and
committed with the pulled chunks, make each run fetch only what is new. Chunks are
immutable and lists append-only, so gateways never coordinate beyond that.

A crash between the fleet's commit and the local one makes the next run push the same
chunks again (at least once); nothing is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from contextdb.codec import chunk_origin
from contextdb.errors import ContextDBError
from contextdb.store import SEP, Store

STATE = "sync"


@dataclass
class SyncReport:
    pushed: int = 0
    pulled: int = 0
    cells: int = 0


def sync(local: Store, fleet: Store, origin: str) -> SyncReport:
    if not origin:
        raise ContextDBError("sync needs this gateway's name (origin) to tell its own history")
    meta = local.get_meta()
    if meta is None:
        raise ContextDBError("local store has no metadata: open it with ContextDB first")
    fleet_meta = fleet.get_meta()
    if fleet_meta is None:
        fleet.set_meta(meta)
    elif fleet_meta != meta:
        raise ContextDBError(
            f"fleet store was built with other parameters ({fleet_meta}) than the local one"
        )
    state = local.get_state(STATE) or {"pushed": {}, "pulled": {}}
    report = SyncReport()
    for carrier, cell in local.cells():
        key = f"{carrier}{SEP}{cell}"
        start = state["pushed"].get(key, 0)
        chunks = local.chunks(carrier, cell, start)
        for raw in chunks:
            if chunk_origin(raw) == origin:
                fleet.append(carrier, cell, raw)
                report.pushed += 1
        state["pushed"][key] = start + len(chunks)
    fleet.commit()
    # fetch everything first: the local write lock is then held only for local writes
    pulled = []
    for carrier, cell in fleet.cells():
        key = f"{carrier}{SEP}{cell}"
        start = state["pulled"].get(key, 0)
        chunks = fleet.chunks(carrier, cell, start)
        pulled += [(carrier, cell, raw) for raw in chunks if chunk_origin(raw) != origin]
        state["pulled"][key] = start + len(chunks)
    for carrier, cell, raw in pulled:
        local.append(carrier, cell, raw)
    report.pulled = len(pulled)
    report.cells = len(state["pulled"])
    local.set_state(STATE, state)
    local.commit()
    return report
