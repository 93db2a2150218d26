"""The replay simulator runs the product's Mux and scheduler adapter, and its path model.

The main test records every call the simulated gateway and node make on their muxes and
scheduler adapters during a scripted scenario (two fixed carriers, one bulk transfer, one
carrier cut long enough for its path to fail and come back), then feeds the same inputs
to two fresh ``Mux`` objects with fresh adapters in a small loop: the messages each
hands out, every event and answer, the counters and what the scheduler policy is asked
must be the same. Whatever the simulator reports about the transport is then the
product's own doing.
"""

from __future__ import annotations

import math

import pytest

from bench.sim.links import Carrier, Link, SteppedTrace
from bench.sim.runner import Scenario, run, setup
from bench.sim.tcp import Socket
from bench.sim.transport import TransportParams
from middlebox.session.mux import Budget, Mux
from middlebox.session.policy import SchedulerPolicy

QUERIES = ("next_event", "next_timer", "pending", "unread", "send_room", "send", "open", "read")


def fixed(name: str, mbit: float, delay: float = 0.025, **kw) -> Carrier:
    return Carrier(name, SteppedTrace.of([mbit * 1e6], 1.0, name), delay=delay, **kw)


class Recorded:
    """Stands in for a mux or an adapter: every call goes on the tape with its result."""

    def __init__(self, tape: list, side: str, target: str, inner: object) -> None:
        self._tape, self._side, self._target, self._inner = tape, side, target, inner

    def __getattr__(self, name: str):
        value = getattr(self._inner, name)
        if not callable(value):
            return value

        def call(*args, **kw):
            result = value(*args, **kw)
            self._tape.append((self._side, self._target, name, args, kw, result))
            return result

        return call


class Asked:
    """Wraps a scheduler policy: what it was asked, in order, and what it answered."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.questions: list[tuple] = []

    def decide(self, m, paths, now):
        ids = self.inner.decide(m, paths, now)
        cands = tuple(p.path_id for p in paths)
        q = (m.kind, m.conn_id, m.size, m.offset, m.backlog, m.window, m.avoid, cands, ids)
        self.questions.append(q)
        return ids


def scripted() -> Scenario:
    carriers = [fixed("a", 10.0, 0.02), fixed("b", 5.0, 0.03, outages=((3.0, 9.0),))]
    params = TransportParams().with_paths(user_timeout=4.0)
    return Scenario(carriers, workload="bulk:size=12", duration=20.0, params=params)


def test_simulator_runs_the_products_mux_and_adapter():
    scn = scripted()
    tape: list = []
    asked: dict[str, Asked] = {}
    sim_muxes: dict[str, Mux] = {}

    def wrap(side, mux, adapter):
        asked[side] = adapter.policy = Asked(adapter.policy)
        sim_muxes[side] = mux
        return Recorded(tape, side, "mux", mux), Recorded(tape, side, "adapter", adapter)

    r = run(scn, "context", wrap=wrap)
    s = r.summary
    assert s["flows_completed"] == 1 and s["delivered_bytes"] == 12_000_000
    assert s["path_downs"] >= 1 and s["stall_reinjections"] > 0

    # the same inputs, to fresh muxes and adapters, in a small loop
    cfg = scn.params.config
    muxes, adapters, fresh = {}, {}, {}
    budgets = {  # as the processes make them (the gateway's: the whole process's)
        "gateway": Budget(cfg.gateway.memory_budget),
        "node": Budget(cfg.node.session_memory, Budget(cfg.node.memory_budget)),
    }
    for side, mp in (("gateway", cfg.mux_params("gateway")), ("node", cfg.mux_params("node"))):
        adapters[side] = SchedulerPolicy(cfg.scheduler, name="context")
        fresh[side] = adapters[side].policy = Asked(adapters[side].policy)
        muxes[side] = Mux(side, mp, adapters[side], budgets[side])
    origin: dict[int, tuple[str, int]] = {}  # a message the simulator passed -> who made it
    recorded_out: dict[str, list] = {"gateway": [], "node": []}
    replayed_out: dict[str, list] = {"gateway": [], "node": []}
    delivered = 0
    for side, target, name, args, kw, result in tape:
        obj = muxes[side] if target == "mux" else adapters[side]
        if name == "receive":
            pid, msg, now = args
            src, k = origin[id(msg)]
            args = (pid, replayed_out[src][k][1], now)
        got = getattr(obj, name)(*args, **kw)
        if name == "messages_to_send":
            for item in result:
                origin[id(item[1])] = (side, len(recorded_out[side]))
                recorded_out[side].append(item)
            replayed_out[side].extend(got)
            assert got == result
        elif name in QUERIES:
            assert got == result, (side, name, args)
        if side == "gateway" and name == "read":
            delivered += len(got)
    assert delivered == s["delivered_bytes"]
    for side in ("gateway", "node"):
        sim, direct = asked[side].questions, fresh[side].questions
        assert sim == direct and sim  # kind, size, offset, backlog, window, avoid, answer
        assert muxes[side].counters == sim_muxes[side].counters
    total = sum(muxes[side].counters["retransmits"] for side in muxes)
    stalls = sum(muxes[side].counters["stall_retransmits"] for side in muxes)
    assert s["reinjections"] == total > 0 and s["stall_reinjections"] == stalls > 0
    # the node's adapter is asked about the download's data and its resends
    kinds = {q[0] for q in asked["node"].questions}
    assert {"data", "reinjection"} <= kinds


# -- the path model ------------------------------------------------------------------------


def test_a_download_needs_its_uplink_for_the_acks():
    """The downlink's ACKs and the proxy's DATA_ACKs share the carrier's uplink: a
    download over a 10 Mbit/s carrier whose uplink carries 100 kbit/s is starved of them
    (the testbed shows the same with a 5G drive log's ACK-sized uplink)."""
    thin = SteppedTrace.of([0.1e6], 1.0, "thin")
    for row in ("minrtt", "single:a"):
        fast = run(Scenario([fixed("a", 10.0)], workload="bulk", duration=20.0, warmup=5.0), row)
        starved = Scenario([fixed("a", 10.0, up=thin)], workload="bulk", duration=20.0, warmup=5.0)
        slow = run(starved, row)
        assert fast.summary["goodput_mbps"] > 8.5
        assert slow.summary["goodput_mbps"] < 0.6 * fast.summary["goodput_mbps"]


def test_plain_tcp_keeps_a_window_unsent_so_bursty_acks_do_not_starve_it():
    """A plain TCP sender writes into an autotuned send buffer (about two congestion
    windows): over a link that delivers in 50 ms bursts, the ACKs come in bunches that
    free more than a few units at once, and a sender that kept only those few ahead ran
    dry, its rate samples counted as application-limited and BBR settled at 16 of the
    link's 19.3 Mbit/s of TCP payload."""
    bursty = SteppedTrace.of([40e6, 0.0] * 200, 0.05, "a")
    uplink = SteppedTrace.of([40e6], 1.0, "up")
    scn = Scenario([Carrier("a", bursty, delay=0.03, up=uplink)], "bulk", 20.0, warmup=5.0)
    assert run(scn, "single:a").summary["goodput_mbps"] > 18.5


def _socket(fwd: Carrier, rev: Carrier, **kw):
    from bench.sim.engine import Engine

    engine = Engine()
    arrived: list[tuple[float, object]] = []

    def deliver(now: float, unit: object) -> bool:
        arrived.append((now, unit))
        return True

    sock = Socket(engine, Link(fwd, 30.0), Link(rev, 30.0, direction="up"), deliver, **kw)
    sock.connect(0.0, 2 * fwd.delay)
    return engine, sock, arrived


def test_in_order_delivery_a_lost_packet_holds_back_what_follows():
    lossy = fixed("a", 10.0, 0.02, loss=0.5)
    engine, sock, arrived = _socket(lossy, fixed("a", 10.0, 0.02))
    for k in range(40):
        sock.write(k, 1448, 0.0)
    engine.run(5.0)
    times = [t for t, _ in arrived]
    assert [u for _, u in arrived] == list(range(40))  # in order, each once
    assert times == sorted(times)
    assert sock.total_retrans > 0
    # a packet resent after a loss costs about one round trip, and what was sent after
    # it waits for it: the last unit is late by at least that
    assert times[-1] >= 0.02 + 40 * 1500 * 8 / 10e6 + sock.srtt * 0.5


def test_retransmission_timeout_backs_off_while_the_path_is_silent():
    out = ((1.0, 25.0),)
    dark = fixed("a", 10.0, 0.02, queue_bytes=1500, outages=out)
    engine, sock, arrived = _socket(dark, fixed("a", 10.0, 0.02, outages=out))
    fires: list[float] = []  # when each retransmission timeout expired (to the ms)

    def watch(now: float, seen: int) -> None:
        if sock.rto_count != seen:
            fires.append(now)
        engine.at(now + 0.001, watch, sock.rto_count)

    engine.at(0.0, watch, 0)

    def writer(now: float) -> None:
        while sock.notsent < 4 * 14480:
            sock.write(None, 14480, now)

    sock.on_acked = writer
    writer(0.0)
    engine.run(25.0)
    gaps = [b - a for a, b in zip(fires, fires[1:], strict=False)]
    assert len(fires) >= 5 and fires[0] < 2.0
    for a, b in zip(gaps, gaps[1:], strict=False):
        assert b == pytest.approx(2 * a, abs=0.003)  # each expiry doubles the timeout


def test_user_timeout_fails_the_connection():
    out = ((1.0, 20.0),)
    errors: list[float] = []
    engine, sock, _ = _socket(
        fixed("a", 10.0, 0.02, outages=out),
        fixed("a", 10.0, 0.02, outages=out),
        user_timeout=4.0,
        on_error=errors.append,
    )
    sock.write(None, 14480, 0.0)
    engine.run(1.5)
    sent = engine.now
    sock.write(None, 14480, sent)  # into the outage: no ACK comes back
    engine.run(20.0)
    assert errors == [pytest.approx(sent + 4.0, abs=1e-6)] and not sock.alive


def test_room_is_the_allowance_minus_what_the_socket_has_not_sent():
    """As ``PathConn.room()``: the unsent allowance (``paths.notsent_time`` of the
    socket's pacing rate, 16 KiB .. ``notsent_lowat``, re-sized at each TCP_INFO reading
    by the product's own rule) minus the socket's not-sent bytes; the mux is told those
    as the path's ``queued``."""
    from middlebox.paths.conn import MIN_ROOM, allowance_for

    scn = Scenario([fixed("a", 10.0)], workload="bulk", duration=5.0)
    s = setup(scn, "minrtt")
    s.engine.run(3.0)
    (end,) = s.transport.node.paths.values()
    paths = scn.params.config.paths
    assert end.sock.notsent > 0  # a download keeps the socket's backlog full
    info = end.tcp_info()
    rate = info.pacing_rate
    # 10 Mbit/s: 0.04 s of it is about 50 KB, well under notsent_lowat
    assert MIN_ROOM < end.allowance < paths.notsent_lowat
    assert end.allowance == pytest.approx(paths.notsent_time * rate, rel=0.34)  # a quarter of it
    assert allowance_for(info, paths.notsent_lowat, paths.notsent_time, end.allowance) is None
    assert end.room() == max(0, end.allowance - end.sock.notsent)
    assert end.queued() == end.sock.notsent
    assert info.notsent_bytes == end.sock.notsent and info.snd_mss == 1448
    assert math.isclose(info.srtt, end.sock.srtt, abs_tol=1e-6)
    told: list[dict] = []
    mux = s.transport.node.mux
    update = mux.update_path
    mux.update_path = lambda pid, **kw: (told.append(kw), update(pid, **kw))
    expect = (end.room(), end.queued())
    s.transport.node.iteration(s.engine.now)
    assert (told[0]["room"], told[0]["queued"]) == expect  # pump_mux tells the mux


def test_an_upload_goes_through_the_gateways_mux_to_the_node():
    from bench.sim.transport import App

    done: list[float] = []

    class Upload(App):
        def completed(self, conn, now):
            done.append(now)

    up = SteppedTrace.of([5e6], 1.0, "up")
    # (a tiny download keeps the scenario a workload; the upload is opened by hand)
    scn = Scenario([fixed("a", 20.0, up=up)], workload="bulk:size=0.001", duration=10.0)
    s = setup(scn, "minrtt")
    conn = s.transport.open(0.0, Upload(), 2_000_000, client="up", dst_port=5001, upload=True)
    s.engine.run(10.0)
    assert done and conn.rcv_nxt == 2_000_000
    # 2 MB over a 5 Mbit/s uplink: at least 3.2 s, and the uplink is what limits it
    assert 3.2 < done[0] < 6.0
    assert s.rec.wire_sent > 2_000_000  # the gateway's bytes count once a client uploads


def test_the_node_closes_a_path_that_stayed_silent():
    """As the node's poll does: a path that brought nothing for ``paths.user_timeout`` is
    removed from the node's mux at its TCP_INFO cadence, not only when the gateway's FIN
    gets through. Here the download is over before carrier ``b`` goes out at 3 s, so the
    node has nothing unacknowledged there (its socket's user timeout cannot fire) and
    the gateway's FIN waits in the outage until 9 s."""
    carriers = [fixed("a", 10.0), fixed("b", 5.0, outages=((3.0, 9.0),))]
    params = TransportParams().with_paths(user_timeout=4.0)
    scn = Scenario(carriers, workload="bulk:size=1", duration=12.0, params=params)
    tape: list = []

    def wrap(side, mux, adapter):
        return Recorded(tape, side, "mux", mux), adapter

    assert run(scn, "minrtt", wrap=wrap).summary["flows_completed"] == 1
    removed = [
        args[1] for side, _, name, args, _, _ in tape if (side, name) == ("node", "remove_path")
    ]
    # the last PROBE got through by about 2.1 s: silent from 6.1 s, removed at a reading
    assert removed and 6.0 <= removed[0] < 9.0, removed


def test_the_simulated_node_tells_its_adapter_each_opens_client_and_port():
    """As the live relay does (``SchedulerPolicy.described``): without it the node's
    policy classed no web response as interactive (docs/scheduler.md, "Web tails on the
    node")."""
    tape: list = []

    def wrap(side, mux, adapter):
        return mux, Recorded(tape, side, "adapter", adapter)

    scn = Scenario([fixed("a", 20.0)], workload="web:clients=2,stagger=0.5", duration=4.0)
    r = run(scn, "context", wrap=wrap)
    told = [args for side, _, name, args, _, _ in tape if side == "node" and name == "described"]
    assert r.summary["flows_completed"] >= 2 and len(told) >= r.summary["flows_completed"]
    assert {port for _, _, port, _ in told} == {443}
