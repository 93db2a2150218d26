"""A fleet of nodes: the choice rule (pure) and, on loopback with two real nodes, the move
when the chosen node is lost and when it drains (harness: ../conftest.py)."""

from __future__ import annotations

import dataclasses
import selectors
import time
import types

import pytest

from middlebox import config, control
from middlebox.config import ConfigError, FleetNodeConfig
from middlebox.gateway.fleet import DRAINING, LOST, UP, Candidate, Fleet, rank, weight
from middlebox.session import mux as m
from middlebox.session import wire

RETRY = 60.0


def cands(gateway_id: str, names=("node-a", "node-b", "node-c")) -> list[Candidate]:
    return [
        Candidate(n, f"127.0.0.1:{4433 + i}", weight(gateway_id, n)) for i, n in enumerate(names)
    ]


def first(gateway_id: str, names=("node-a", "node-b", "node-c"), now=0.0) -> str:
    return rank(cands(gateway_id, names), now, RETRY)[0].name


# -- the rule -------------------------------------------------------------------------------


def test_the_choice_is_stable_and_independent_of_the_listing_order():
    for gid in ("train-1", "train-2", "bus-17"):
        a = first(gid)
        assert first(gid) == a
        assert first(gid, ("node-c", "node-a", "node-b")) == a
    assert weight("train-1", "node-a") == weight("train-1", "node-a")
    assert weight("train-1", "node-a") != weight("train-2", "node-a")


def test_gateways_spread_evenly_and_a_removed_node_moves_only_its_own():
    ids = [f"train-{i}" for i in range(3000)]
    chosen = {gid: first(gid) for gid in ids}
    counts = {n: sum(1 for c in chosen.values() if c == n) for n in ("node-a", "node-b", "node-c")}
    assert all(800 < n < 1200 for n in counts.values()), counts  # 1000 each, give or take
    after = {gid: first(gid, ("node-a", "node-b")) for gid in ids}
    moved = [gid for gid in ids if after[gid] != chosen[gid]]
    assert moved and all(chosen[gid] == "node-c" for gid in moved)  # nobody else moves


def test_lost_and_draining_nodes_are_passed_over_until_the_retry_time():
    gid = "train-1"
    order = [c.name for c in rank(cands(gid), 0.0, RETRY)]
    cs = {c.name: c for c in cands(gid)}
    cs[order[0]].lost_at = 10.0
    cs[order[1]].draining_at = 10.0
    got = rank(list(cs.values()), 20.0, RETRY)
    assert [c.name for c in got] == [order[2], order[1], order[0]]
    assert [c.state(20.0, RETRY) for c in got] == [UP, DRAINING, LOST]
    # a draining node still beats a lost one; every mark ends after the retry time
    assert [c.name for c in rank(list(cs.values()), 10.0 + RETRY, RETRY)] == order


def test_with_every_node_lost_the_longest_lost_is_tried_first():
    cs = cands("train-1")
    for t, c in zip((30.0, 10.0, 20.0), cs, strict=True):
        c.lost_at = t
    assert [c.name for c in rank(cs, 40.0, RETRY)] == [cs[1].name, cs[2].name, cs[0].name]


def test_equal_weights_go_to_the_lower_measured_round_trip():
    a, b = Candidate("node-a", "x:1", 5, rtt=0.050), Candidate("node-b", "x:2", 5, rtt=0.020)
    assert rank([a, b], 0.0, RETRY)[0] is b
    b.rtt = None  # not measured: after any measured one
    assert rank([a, b], 0.0, RETRY)[0] is a


def test_configuration_of_several_nodes(tmp_path):
    p = tmp_path / "gw.toml"
    p.write_text(
        '[gateway]\nid = "train-1"\nnode_lost_time = 3.0\n'
        '[[gateway.nodes]]\nname = "node-a"\naddress = "100.65.0.2:4433"\n'
        '[[gateway.nodes]]\nname = "node-b"\naddress = "100.65.0.2:4434"\n'
    )
    cfg = config.load(p)
    assert [n.name for n in cfg.gateway.fleet()] == ["node-a", "node-b"]
    assert cfg.gateway.node_lost_time == 3.0
    assert config.Config().gateway.fleet() == [FleetNodeConfig("node", "127.0.0.1:4433")]
    p.write_text('[gateway]\nnode = "10.0.0.1:1"\n[[gateway.nodes]]\nname = "a"\naddress = "x:1"\n')
    with pytest.raises(ConfigError, match="either gateway.node"):
        config.load(p)
    table = '[[gateway.nodes]]\nname = "a"\naddress = "{}:1"\n'
    p.write_text(table.format("x") + table.format("y"))
    with pytest.raises(ConfigError, match="unique"):
        config.load(p)


def test_drain_message_round_trips_and_is_strict():
    for state in (True, False):
        (msg,) = wire.decode_all(wire.encode(wire.Drain(state)), 4096)
        assert msg == wire.Drain(state)
    bad = wire.encode(wire.Drain(True))[:-1] + b"\x02"
    with pytest.raises(wire.ProtocolError, match="DRAIN"):
        wire.decode_all(bad, 4096)


# -- on loopback: two nodes, one gateway ----------------------------------------------------


class FleetGateway:
    """The fleet plus a tiny application (per connection, bytes out and bytes back),
    like the harness's Gateway but with new connections on the fleet's current mux."""

    def __init__(self, cfg):
        self.sel = selectors.DefaultSelector()
        self.fleet = Fleet(cfg, self.sel, time.monotonic)
        self.lost_resets = 0
        self.fleet.on_lost = self._lost
        self.fleet.in_use = lambda up: any(
            c["mux"] is up.mux and not (self.done(cid) or self.failed(cid))
            for cid, c in self.conns.items()
        )
        self.conns = {}  # cid -> dict(mux, out, sent, got, events)

    def _lost(self, up, now):
        for cid in up.mux.conn_ids():
            self.lost_resets += 1
            up.mux.abort(cid, wire.RstReason.PATHS_LOST, now)
            self.conns[cid]["events"].append("reset")

    def open(self, port, data=b"", shutdown=True):
        mux = self.fleet.mux
        cid = mux.open("127.0.0.2", 40000 + len(self.conns) % 20000, "127.0.0.1", port)
        self.conns[cid] = {
            "mux": mux, "node": self.fleet.current.node_name, "out": data, "sent": 0,
            "got": bytearray(), "events": [], "shutdown": shutdown,
        }  # fmt: skip
        return cid

    def step(self, wait=0.01):
        for key, mask in self.sel.select(wait):
            key.data(mask, time.monotonic())
        now = time.monotonic()
        self.fleet.poll(now)
        for cid, c in self.conns.items():
            mux = c["mux"]
            if mux.pending(cid):
                if c["sent"] < len(c["out"]):
                    c["sent"] += mux.send(cid, c["out"][c["sent"] :])
                if c["sent"] == len(c["out"]) and c["shutdown"] and not c.get("shut"):
                    mux.shutdown(cid)
                    c["shut"] = True
                c["got"] += mux.read(cid)
        for mux in self.fleet.muxes():
            while (e := mux.next_event()) is not None:
                c = self.conns.get(e.conn_id)
                if c is not None and c["mux"] is mux:
                    c["events"].append(e)
                    if mux.pending(e.conn_id):
                        c["got"] += mux.read(e.conn_id)
        self.fleet.pump(now)

    def run_until(self, cond, timeout=20.0):
        end = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < end, f"timed out: {self.describe()}"
            self.step()

    def describe(self):
        conns = {c: (x["node"], x["sent"], len(x["out"]), bytes(x["got"][:20]), x["events"][-4:])
                 for c, x in self.conns.items()}  # fmt: skip
        ups = [
            (u.node_name, list(u.paths), u.mux.stats()["connections"]) for u in self.fleet.uplinks
        ]
        return f"{conns} {ups}"

    def done(self, cid):
        return any(isinstance(e, m.Closed) for e in self.conns[cid]["events"])

    def failed(self, cid):
        return any(
            e == "reset" or isinstance(e, (m.Reset, m.OpenFailed))
            for e in self.conns[cid]["events"]
        )

    def close(self):
        self.fleet.close(time.monotonic())
        self.sel.close()


@pytest.fixture
def fleet_pair(certs, tmp_path, loopback):
    """Two nodes (node-a, node-b) on loopback and a gateway configured with both, its
    first choice first: returns (nodes by name, gateway, names in the rule's order)."""
    made = []
    node_a, gw_cfg = loopback.configs(certs, tmp_path)
    nodes = {}
    for name in ("node-a", "node-b"):
        port = loopback.free_port()
        cfg = dataclasses.replace(
            node_a,
            node=dataclasses.replace(
                node_a.node, id=name, listen=f"127.0.0.1:{port}",
                control_socket=str(tmp_path / f"{name}.sock"),
            ),
        )  # fmt: skip
        nodes[name] = loopback.NodeThread(cfg)
        made.append(nodes[name])
    fleet = [FleetNodeConfig(n, t.node.cfg.node.listen) for n, t in nodes.items()]
    gw_cfg = dataclasses.replace(
        gw_cfg,
        gateway=dataclasses.replace(gw_cfg.gateway, node=config.DEFAULT_NODE, nodes=fleet,
                                    node_lost_time=1.0, node_retry_time=30.0),
    )  # fmt: skip
    g = FleetGateway(gw_cfg)
    order = [c.name for c in rank(g.fleet.nodes, time.monotonic(), 30.0)]
    try:
        yield nodes, g, order
    finally:
        g.close()
        for x in reversed(made):
            if not x.stop.is_set():
                x.close()


def test_the_gateway_moves_to_the_other_node_when_its_node_is_lost(fleet_pair, echo):
    nodes, g, (best, other) = fleet_pair
    g.run_until(lambda: len(g.fleet.current.paths) == 2)
    assert g.fleet.current.node_name == best
    held = g.open(echo.port, b"x" * 1000, shutdown=False)
    g.run_until(lambda: len(g.conns[held]["got"]) == 1000)
    t0 = time.monotonic()
    nodes[best].close()  # the node goes away (its paths end; dialling it is refused)
    g.run_until(lambda: g.fleet.current.node_name == other, timeout=15)
    g.run_until(lambda: len(g.fleet.current.paths) == 2, timeout=15)
    moved_after = time.monotonic() - t0
    assert moved_after < 10.0
    assert g.failed(held)  # the lost node's connection ended (reset), it did not hang
    cid = g.open(echo.port, b"after the move")
    g.run_until(lambda: g.done(cid))
    assert bytes(g.conns[cid]["got"]) == b"after the move"
    st = g.fleet.status(time.monotonic())
    assert st["chosen"] == other and st["moves_lost"] == 1 and st["nodes_lost"] >= 1
    states = {n["name"]: n["state"] for n in st["nodes"]}
    assert states == {best: LOST, other: UP}
    g.run_until(lambda: not g.fleet.retiring)  # the lost node's uplink is gone


def test_drain_moves_new_connections_while_the_old_ones_finish(fleet_pair, echo):
    nodes, g, (best, other) = fleet_pair
    g.run_until(lambda: len(g.fleet.current.paths) == 2)
    held = g.open(echo.port, b"before", shutdown=False)
    g.run_until(lambda: bytes(g.conns[held]["got"]) == b"before")
    sock = nodes[best].node.cfg.node.control_socket
    answer = control.query(sock, "drain")
    assert answer["draining"] is True and answer["remaining"]["connections"] == 1
    opened = []
    # connections opened all along the move: every one must work
    end = time.monotonic() + 20
    while g.fleet.current.node_name != other or len(opened) < 5:
        assert time.monotonic() < end, "no move"
        opened.append(g.open(echo.port, f"conn {len(opened)}".encode()))
        for _ in range(5):
            g.step()
    for _ in range(3):
        opened.append(g.open(echo.port, f"conn {len(opened)}".encode()))
    g.run_until(lambda: all(g.done(c) or g.failed(c) for c in opened))
    assert not [c for c in opened if g.failed(c)]
    assert all(bytes(g.conns[c]["got"]) == f"conn {i}".encode() for i, c in enumerate(opened))
    assert {g.conns[c]["node"] for c in opened[-3:]} == {other}
    # the connection on the draining node is still served there, then finishes
    assert g.fleet.retiring and g.fleet.retiring[0].node_name == best
    c = g.conns[held]
    c["out"], c["shutdown"] = b"beforeand after", True
    g.run_until(lambda: g.done(held))
    assert bytes(c["got"]) == b"beforeand after"
    g.run_until(lambda: not g.fleet.retiring)
    st = g.fleet.status(time.monotonic())
    assert st["moves_drain"] == 1 and st["moves_lost"] == 0 and st["uplinks_retired"] == 1
    assert {n["name"]: n["state"] for n in st["nodes"]}[best] == DRAINING
    left = control.query(sock, "status")["drain"]
    assert left["draining"] and left["drains"] == 1 and left["drain_messages"] >= 2
    assert control.query(sock, "resume")["draining"] is False


# -- the shell with stand-in uplinks (no sockets) -----------------------------------------


class StubUplink:
    """What the fleet uses of an Uplink: paths, slots, a mux, close; made by ``make``."""

    def __init__(self, cfg, sel, clock, policy=None, node="", node_name="", first_pid=1,
                 first_conn_id=1, budget=None):  # fmt: skip
        if node.startswith("unresolvable"):
            from middlebox.errors import UserError

            raise UserError(f"gateway.nodes {node_name} {node}: cannot resolve")
        self.node_name = node_name
        self.session = first_conn_id
        self.slots = {first_pid: types.SimpleNamespace(probe_rtt=0.02)}
        self.paths: dict = {}
        self.mux = m.Mux("gateway", first_conn_id=first_conn_id)
        self.closed = None

    def poll(self, now):
        pass

    def pump(self, now):
        pass

    def next_timer(self):
        return None

    def close(self, now, reason=None, detail=""):
        self.closed = (now, reason)


def stub_fleet(names, **gw):
    nodes = [FleetNodeConfig(n, f"{n}:4433") for n in names]
    cfg = config.Config(
        gateway=dataclasses.replace(config.GatewayConfig(), id="train-1", nodes=nodes,
                                    node_lost_time=5.0, node_retry_time=30.0, **gw),
    )  # fmt: skip
    clock = types.SimpleNamespace(t=100.0)
    f = Fleet(cfg, None, lambda: clock.t, make=StubUplink)
    return f, clock


def test_a_drained_uplink_closes_only_once_nothing_holds_its_connections():
    f, clock = stub_fleet(["node-a", "node-b"])
    first = f.current
    first.paths[1] = object()
    cid = first.mux.open("10.0.0.2", 40000, "192.0.2.1", 80)
    f.decide(clock.t)
    first.on_drain(True, clock.t)
    f.decide(clock.t)
    assert f.next is not None and f.current is first  # dialling; new ones still here
    f.next.paths[1] = object()
    f.decide(clock.t)
    assert f.current is not first and f.retiring == [first]
    assert f.counters["moves_drain"] == 1
    held = {"yes": True}
    f.in_use = lambda up: held["yes"]
    first.mux.abort(cid, wire.RstReason.CLIENT_RESET, clock.t)  # the mux is done with it
    f.decide(clock.t)
    assert first.closed is None  # the application still holds the connection's last events
    held["yes"] = False
    f.decide(clock.t)
    assert first.closed is not None and first.closed[1] == wire.CloseReason.NORMAL
    assert f.counters["uplinks_retired"] == 1
    assert [n["role"] for n in f.status(clock.t)["nodes"]] == ["chosen", "standby"]


def test_one_node_is_never_left_and_an_unresolvable_node_counts_as_lost():
    f, clock = stub_fleet(["node-a"])
    only = f.current
    clock.t += 60
    f.decide(clock.t)
    assert f.current is only and f.counters["moves"] == 0  # nothing to move to
    # an unresolvable node the rule ranks second (first, it would stop the start)
    bad = next(
        n
        for n in (f"unresolvable-{i}" for i in range(20))
        if weight("train-1", n) < weight("train-1", "node-a")
    )
    f, clock = stub_fleet(["node-a", bad])
    start = f.current
    assert start.node_name == "node-a"
    clock.t += 6  # no path for longer than node_lost_time
    f.decide(clock.t)
    assert f.current is start and f.counters["node_errors"] == 1
    states = {n["name"]: n["state"] for n in f.status(clock.t)["nodes"]}
    assert states == {"node-a": LOST, bad: LOST}
