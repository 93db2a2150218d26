"""The endpoint's connections joined to the mux's: the gateway's half of a proxied flow.

:class:`Bridge` turns endpoint events into mux calls and mux events into endpoint calls,
one :class:`Link` per connection:

* the endpoint answers the client's SYN itself (with a SYN cookie beyond its half-open
  limits); OPEN (with the client's TCP options) goes to the node when the client's
  handshake completes (:class:`~middlebox.tcp.events.ConnectionEstablished`), so a SYN
  flood never reaches the node; OPEN_FAIL resets the client (a refused destination
  reaches the client as a RST after its connect succeeded, one LAN round trip later
  than when OPEN left at the SYN);
* bytes each way with both buffers bounded: the client's window is the mux's send room,
  and bytes toward the client are taken from the mux only while the endpoint's queue is
  below its limit (``down_limit``);
* FIN each way on its own (half-close), the server's only after its last byte; RST both
  ways.

With several nodes (:class:`~middlebox.gateway.fleet.Fleet`) a connection stays on the
mux it opened on (``Link.mux``); new ones open on the uplink's ``mux`` of the moment.
"""

from __future__ import annotations

import ipaddress
import logging

from middlebox.gateway.flowtable import FlowTable, State
from middlebox.gateway.uplink import Uplink
from middlebox.logs import kv
from middlebox.session import wire
from middlebox.session.mux import (
    Closed,
    Opened,
    OpenFailed,
    PeerFinished,
    Readable,
    Reset,
    Writable,
)
from middlebox.tcp import events as ev
from middlebox.tcp.connection import ConnectionError_

log = logging.getLogger("mpproxy.gateway")


class Link:
    """One proxied connection: the endpoint's and the mux's view joined."""

    __slots__ = (
        "cid", "conn", "key", "mux", "pending", "client_fin", "shut", "down_fin", "fin_sent"
    )  # fmt: skip

    def __init__(self, cid: int, conn, key, mux) -> None:
        self.cid = cid
        self.mux = mux  # the session (node) it opened on
        self.conn = conn
        self.key = key
        self.pending = bytearray()  # from the client, not yet accepted by the mux
        self.client_fin = False
        self.shut = False
        self.down_fin = False  # the server's direction ended (node's FIN arrived)
        self.fin_sent = False


class Bridge:
    """Endpoint events to the mux and mux events to the endpoint (see module text)."""

    def __init__(self, uplink: Uplink, flows: FlowTable, down_limit: int, policy=None) -> None:
        self.uplink = uplink  # an Uplink, or the Fleet of them (muxes())
        self.flows = flows
        self.down_limit = down_limit
        self.policy = policy
        self.links: dict[int, Link] = {}
        self.by_conn: dict[object, Link] = {}
        self.blocked: set[int] = set()  # connections waiting for the client to drain
        self.narrow: set[int] = set()  # connections whose client window is below half
        self.counters = {"opened": 0, "open_failed": 0, "client_resets": 0, "node_resets": 0}

    # -- endpoint events --------------------------------------------------------------------

    def on_event(self, e: object, now: float) -> None:
        t = type(e)
        if t is ev.ConnectionEstablished:
            self._established(e, now)  # type: ignore[arg-type]
            return
        link = self.by_conn.get(e.conn)  # type: ignore[attr-defined]
        if link is None:
            return
        if t is ev.DataReceived:
            link.pending += e.data  # type: ignore[attr-defined]
            self._up(link)
        elif t is ev.PeerClosed:
            link.client_fin = True
            self._up(link)
        elif t is ev.Reset:
            self.counters["client_resets"] += 1
            reason = wire.RstReason.CLIENT_RESET if e.reason == "peer" else wire.RstReason.TIMEOUT  # type: ignore[attr-defined]
            link.mux.abort(link.cid, reason, now)
        elif t is ev.ConnectionGone:
            self._forget(link, now)
            if link.mux.pending(link.cid):
                link.mux.abort(link.cid, wire.RstReason.CLIENT_RESET, now)

    def _established(self, e: ev.ConnectionEstablished, now: float) -> None:
        src, sport, dst, dport = e.key
        o = e.options
        mux = self.uplink.mux
        try:
            cid = mux.open(
                ipaddress.ip_address(src),
                sport,
                ipaddress.ip_address(dst),
                dport,
                mss=o.mss,
                wscale=o.wscale,
                sack_permitted=bool(o.sack_permitted),
                timestamps=o.tsval is not None,
            )
        except (ValueError, wire.ProtocolError) as err:
            log.warning("cannot open %s", kv(key=e.key, why=err))
            e.conn.abort()
            return
        link = Link(cid, e.conn, e.key, mux)
        self.links[cid] = link
        self.by_conn[e.conn] = link
        self.counters["opened"] += 1
        if self.policy is not None:
            self.policy.opened(cid, str(ipaddress.ip_address(src)), dport, now)

    def _up(self, link: Link) -> None:
        mux, cid = link.mux, link.cid
        if not mux.pending(cid):
            return
        if link.pending:
            n = mux.send(cid, link.pending)
            del link.pending[:n]
        if link.client_fin and not link.pending and not link.shut:
            link.shut = True
            mux.shutdown(cid)
        if not link.shut:
            room = max(0, mux.send_room(cid) - len(link.pending))
            link.conn.set_buffer_room(room)
            if room < mux.params.buffer_bytes // 2:
                self.narrow.add(cid)  # reopen the client's window as the node acknowledges
            else:
                self.narrow.discard(cid)

    def _down(self, link: Link) -> None:
        mux, cid, conn = link.mux, link.cid, link.conn
        room = self.down_limit - conn.send_queued
        if room > 0 and mux.pending(cid):
            data = mux.read(cid, room)
            if data:
                try:
                    conn.send(bytes(data))
                except ConnectionError_:
                    return  # the client is gone; its Reset/Gone events follow
        if mux.unread(cid):
            self.blocked.add(cid)
        else:
            self.blocked.discard(cid)
            if link.down_fin and not link.fin_sent:
                link.fin_sent = True
                conn.close()

    def _forget(self, link: Link, now: float) -> None:
        self.flows.set_state(link.key, State.CLOSED, now)  # short timeout from now on
        self.links.pop(link.cid, None)
        self.by_conn.pop(link.conn, None)
        self.blocked.discard(link.cid)
        self.narrow.discard(link.cid)
        if self.policy is not None:
            self.policy.closed(link.cid)

    # -- mux events -------------------------------------------------------------------------

    def _muxes(self) -> list:
        muxes = getattr(self.uplink, "muxes", None)
        return muxes() if muxes is not None else [self.uplink.mux]

    def reset_all(self, mux, reason: wire.RstReason, now: float) -> None:
        """Reset every connection of ``mux`` both ways (its node is lost): the clients get
        RST at once instead of waiting on a node that no longer answers."""
        for link in [x for x in self.links.values() if x.mux is mux]:
            self.counters["node_lost_resets"] = self.counters.get("node_lost_resets", 0) + 1
            self._forget(link, now)
            link.conn.abort()
        for cid in mux.conn_ids():
            mux.abort(cid, reason, now)

    def holds(self, mux) -> bool:
        """Whether any connection of ``mux`` still has its client side here."""
        return any(link.mux is mux for link in self.links.values())

    def mux_events(self, now: float) -> None:
        for mux in self._muxes():
            self._events_of(mux, now)
        self._reopen()

    def _events_of(self, mux, now: float) -> None:
        while (e := mux.next_event()) is not None:
            link = self.links.get(e.conn_id)
            if link is None or link.mux is not mux:
                continue
            t = type(e)
            if t is Readable:
                self._down(link)
            elif t is Writable:
                self._up(link)
            elif t is PeerFinished:
                link.down_fin = True
                self._down(link)
            elif t is OpenFailed:
                self.counters["open_failed"] += 1
                log.info("open failed %s", kv(conn=link.cid, reason=e.reason.name))  # type: ignore[attr-defined]
                self._forget(link, now)
                link.conn.abort()
            elif t is Reset:
                self.counters["node_resets"] += 1
                self._forget(link, now)
                link.conn.abort()
            elif t in (Opened, Closed):
                pass

    def _reopen(self) -> None:
        for cid in list(self.narrow):
            link = self.links.get(cid)
            if link is None or link.shut:
                self.narrow.discard(cid)
            else:
                self._up(link)
        for cid in list(self.blocked):
            link = self.links.get(cid)
            if link is None:
                self.blocked.discard(cid)
            elif link.conn.send_queued < self.down_limit // 2:
                self._down(link)

    def buffered(self) -> int:
        """Bytes the gateway holds for its connections (mux buffers and pending input)."""
        held = sum(mux.stats()["buffered_bytes"] for mux in self._muxes())
        return held + sum(len(x.pending) for x in self.links.values())
