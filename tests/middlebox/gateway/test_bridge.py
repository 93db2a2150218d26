"""The bridge without namespaces, driven with a fake endpoint connection and a real mux:
OPEN at the client's completed handshake, the client's window from the mux's room,
OPEN_FAIL -> client RST, the downlink bounded by the client's queue, FIN after the last
byte."""

import ipaddress

from middlebox.config import GatewayConfig
from middlebox.gateway.bridge import Bridge
from middlebox.gateway.flowtable import FlowTable
from middlebox.session import wire
from middlebox.session.mux import Mux, MuxParams
from middlebox.tcp import events as ev
from middlebox.tcp.options import Options

CLIENT = ipaddress.ip_address("100.64.0.10").packed
SERVER = ipaddress.ip_address("198.51.100.10").packed


class FakeConn:
    def __init__(self):
        self.accepted = self.aborted = self.closed = False
        self.room = None
        self.sent = bytearray()
        self.send_queued = 0

    def accept(self):
        self.accepted = True

    def abort(self, reason="aborted"):
        self.aborted = True

    def close(self):
        self.closed = True

    def set_buffer_room(self, n):
        self.room = n

    def send(self, data):
        self.sent += data
        self.send_queued += len(data)


class FakeUplink:
    def __init__(self, params):
        self.mux = Mux("gateway", params)


def bridge(buffer=64 << 10):
    params = MuxParams(buffer_bytes=buffer)
    up = FakeUplink(params)
    up.mux.path_up(1, 0.0)
    flows = FlowTable.from_config(GatewayConfig())
    return Bridge(up, flows, buffer // 2), up.mux


def test_bridge_opens_at_the_handshake_window_follows_mux_room_and_open_fail_resets():
    b, mux = bridge()
    conn = FakeConn()
    key = (CLIENT, 40000, SERVER, 80)
    b.on_event(ev.ConnectionEstablished(conn, key, Options(mss=1460)), 0.0)
    (link,) = b.links.values()
    b.on_event(ev.DataReceived(conn, b"x" * (100 << 10)), 0.0)  # more than fits
    assert len(link.pending) == (100 << 10) - (64 << 10) and conn.room == 0
    assert link.cid in b.narrow
    out = mux.messages_to_send(0.0)
    assert isinstance(out[0][1], wire.Open)
    mux.receive(1, wire.OpenFail(link.cid, wire.OpenFailReason.REFUSED), 0.1)
    b.mux_events(0.1)
    assert conn.aborted and not b.links and b.counters["open_failed"] == 1


def test_bridge_downlink_bounded_by_the_client_queue_and_fin_after_the_last_byte():
    b, mux = bridge()
    conn = FakeConn()
    b.on_event(ev.ConnectionEstablished(conn, (CLIENT, 40001, SERVER, 80), Options()), 0.0)
    (link,) = b.links.values()
    cid = link.cid
    mux.messages_to_send(0.0)
    mux.receive(1, wire.OpenOk(cid), 0.0)
    mux.receive(1, wire.Data(cid, 0, b"y" * 40000), 0.0)
    mux.receive(1, wire.Fin(cid, 40000), 0.0)
    conn.send_queued = 30000  # the client is slow: only 2768 bytes fit below the limit
    b.mux_events(0.0)
    assert len(conn.sent) == (32 << 10) - 30000 and not conn.closed and cid in b.blocked
    for _ in range(2):  # the client acknowledges everything it got, twice
        conn.send_queued = 0
        b.mux_events(0.1)
        assert conn.send_queued <= 32 << 10
    assert bytes(conn.sent) == b"y" * 40000 and conn.closed and cid not in b.blocked
