"""The flow table (seed 002) in front of the user-space TCP endpoint.

:class:`Classifier` is what the capture shell sees as its table: one dict lookup per
segment (:meth:`~middlebox.gateway.flowtable.FlowTable.classify`); the first segment of a
flow takes the slow path through the rules. ``PROXY`` segments go to the
:class:`~middlebox.tcp.endpoint.EndpointTable`, ``BYPASS`` segments are written back
unchanged toward the gateway's namespace (which routes them normally: they entered the
listener by the LAN rule, they leave it from ``mpl-in``), ``DENY`` is answered with RST
(the endpoint's, within its RST rate) and ``DROP`` with nothing. Timers of the endpoint,
the flow table and the rest of the gateway (``extra_timer``) reach the shell's loop
through :meth:`Classifier.next_timer`.

The flow table makes entries only for SYNs. A packet of no flow gets the rules' action
without one; a proxied one goes to the endpoint, which answers it as a host would, and
is recorded only if the endpoint knows its connection (a handshake completed with a SYN
cookie). A SYN the endpoint keeps no state for (answered with a cookie, refused or
dropped by its limits) leaves no entry either, so a SYN flood costs the table nothing
beyond the per-source quotas.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from middlebox.gateway.capture import CaptureShell
from middlebox.gateway.flowtable import Action, FlowTable, State
from middlebox.tcp.connection import SYN_RECEIVED
from middlebox.tcp.constants import ACK, SYN
from middlebox.tcp.endpoint import EndpointTable
from middlebox.tcp.packet import Segment

BYPASS_MSS = 1448  # bypassed GRO aggregates are cut back to segments of this payload


class Classifier:
    """The flow table in front of the endpoint table; the shell sees it as its table."""

    def __init__(self, table: EndpointTable, flows: FlowTable) -> None:
        self.table = table
        self.flows = flows
        self.shell: CaptureShell | None = None
        self.extra_timer: Callable[[], float | None] = lambda: None
        self.bypassed = 0
        self.denied = 0

    def receive_segment(self, seg: Segment, now: float) -> None:
        key = seg.key
        action = self.flows.classify(key, seg.flags, now)
        if action is None:
            self._untracked(seg, now)
        elif action is Action.PROXY:
            table = self.table
            table.receive_segment(seg, now)
            if seg.flags & (SYN | ACK) == SYN and key not in table.connections:
                self.flows.remove(key)  # no state at the endpoint: none here either
        elif action is Action.BYPASS:
            self._bypass(seg)
        elif action is Action.DENY:
            self.denied += 1
            self.table.refuse(seg, now)

    def _untracked(self, seg: Segment, now: float) -> None:
        """A packet of no flow that is not a SYN: acted on without an entry."""
        key = seg.key
        action = self.flows.decide(key)
        if action is Action.PROXY:
            table = self.table
            table.receive_segment(seg, now)
            conn = table.connections.get(key)
            if conn is not None and conn.state != SYN_RECEIVED:
                self.flows.track(key, action, State.ESTABLISHED, now)
        elif action is Action.BYPASS:
            self._bypass(seg)  # e.g. a bypassed flow older than the gateway's restart
        elif action is Action.DENY:
            self.denied += 1
            self.table.refuse(seg, now)

    def _bypass(self, seg: Segment) -> None:
        """Write the segment back out unchanged; the gateway namespace routes it."""
        shell = self.shell
        if shell is None:
            return
        macs = shell.l2.get(seg.src)  # to the gateway side of the veth, from ours
        if macs is None:
            return
        if len(seg.payload) > BYPASS_MSS and shell.vnet:
            seg = dataclasses.replace(seg, payload=bytes(seg.payload), gso_size=BYPASS_MSS)
        try:
            shell.sock.send(shell.build_frame(seg, macs))
            self.bypassed += 1
        except OSError:
            shell.stats.send_errors += 1

    def next_timer(self) -> float | None:
        timers = (self.table.next_timer(), self.flows.next_timer(), self.extra_timer())
        return min((t for t in timers if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        t = self.table.next_timer()
        if t is not None and t <= now:
            self.table.handle_timer(now)
        t = self.flows.next_timer()
        if t is not None and t <= now:
            self.flows.expire(now)

    def next_event(self) -> object | None:
        return self.table.next_event()

    def segments_to_send(self, now: float) -> list[Segment]:
        return self.table.segments_to_send(now)
