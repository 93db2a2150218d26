"""The scheduler adapter's newest inputs, driven from a scripted mux: the stream inputs
(``app_limited_at``, ``backlog``), PROBE round trips through ``PathEstimator.probe``, and
connection control through the policy's control class."""

import dataclasses

import pytest

from middlebox.paths.sockets import TcpInfo
from middlebox.session import wire
from middlebox.session.mux import Mux, MuxParams, PathState
from middlebox.session.policy import SchedulerPolicy
from scheduler.config import SchedulerConfig
from scheduler.context import ACK as ACK_KIND
from scheduler.context import CONTROL, DATA, REINJECTION, MessageInfo
from scheduler.registry import CONNECTION, PATH

MSG = 8 << 10


class Spy:
    """Wraps the adapter's policy and records the scheduler messages it is asked about
    (copies: the adapter's connection context changes afterwards)."""

    def __init__(self, inner):
        self.inner = inner
        self.seen = []

    def decide(self, msg, paths, now):
        conn = dataclasses.replace(msg.conn) if msg.conn is not None else None
        self.seen.append((dataclasses.replace(msg, conn=conn), now))
        return self.inner.decide(msg, paths, now)


def gateway(pol, window=1 << 20):
    """A gateway mux with one open connection (OPEN_OK received) and two paths."""
    mux = Mux("gateway", MuxParams(buffer_bytes=1 << 20, message_size=MSG), pol)
    mux.path_up(1, 0.0, srtt=0.02, room=window)
    mux.path_up(2, 0.0, srtt=0.05, room=window)
    cid = mux.open("10.1.0.5", 40000, "198.51.100.7", 443)
    mux.messages_to_send(0.0)
    mux.receive(1, wire.OpenOk(cid), 0.01)
    return mux, cid


def data_seen(spy):
    return [(m, t) for m, t in spy.seen if m.kind == DATA]


def test_backlog_is_what_waits_behind_and_the_last_message_marks_app_limited():
    pol = SchedulerPolicy(SchedulerConfig(policy="context"))
    pol.policy = spy = Spy(pol.policy)
    mux, cid = gateway(pol)
    pol.opened(cid, "10.1.0.5", 443, 0.0)
    total = 5 * MSG + 100
    assert mux.send(cid, bytes(total)) == total
    mux.messages_to_send(1.0)
    seen = data_seen(spy)
    assert len(seen) >= 2
    for m, _ in seen:  # each message is told how much of the connection waits behind it
        assert m.backlog == total - m.offset - m.size
        assert m.conn is not None and m.conn.client == "10.1.0.5"
    # every message but the last leaves bytes behind: the application was not dry then
    assert all(m.conn.app_limited_at is None for m, _ in seen[:-1])
    assert seen[-1][0].backlog == 0 and pol.registry.get(CONNECTION, cid).app_limited_at == 1.0
    # more from the application later: it ran dry again once that was handed over
    mux.send(cid, bytes(2 * MSG))  # within the peer's initial window
    mux.messages_to_send(2.5)
    assert pol.registry.get(CONNECTION, cid).app_limited_at == 2.5


def test_a_download_never_dry_is_no_stream_and_a_dry_one_becomes_one():
    cfg = SchedulerConfig(policy="context")
    pol = SchedulerPolicy(cfg)
    pol.policy = spy = Spy(pol.policy)
    # paths with little room: the mux keeps most of each write unsent (a download)
    mux, cid = gateway(pol, window=3 * MSG)
    pol.opened(cid, "10.1.0.5", 443, 0.0)
    t = cfg.stream_age + 1.0
    for k in range(3):
        mux.send(cid, bytes(64 * MSG))
        mux.update_path(1, room=3 * MSG)
        mux.update_path(2, room=3 * MSG)
        mux.messages_to_send(t + k)
    seen = data_seen(spy)
    assert seen and all(m.backlog > 0 for m, _ in seen)
    assert pol.registry.get(CONNECTION, cid).app_limited_at is None
    assert pol.policy.inner.classify(*seen[-1])[0] != "stream"
    # the same connection, its application now slower than the paths: a stream
    mux.update_path(1, room=1 << 30)
    mux.update_path(2, room=1 << 30)
    for _ in range(100):  # the peer acknowledges and opens its window: the queue drains
        conn = mux.conns[cid]
        if not conn.unsent:
            break
        mux.receive(1, wire.DataAck(cid, conn.snd_nxt, 1 << 22, ()), t + 5)
        mux.messages_to_send(t + 5)
    assert not mux.conns[cid].unsent
    mux.send(cid, bytes(MSG))
    mux.messages_to_send(t + 6)
    last, now = data_seen(spy)[-1]
    assert last.backlog == 0 and last.conn.app_limited_at == t + 6
    assert pol.policy.inner.classify(last, now)[0] == "stream"


def test_a_download_whose_send_buffer_is_all_in_flight_is_not_application_limited():
    """The last message of a full send buffer has no backlog, but the application has
    more: it is held by the buffer (on fast paths the whole buffer goes out before the
    acknowledgements free it). Taking that for a dry spell made bulk downloads streams."""
    cfg = SchedulerConfig(policy="context")
    pol = SchedulerPolicy(cfg)
    pol.policy = spy = Spy(pol.policy)
    mux, cid = gateway(pol, window=1 << 30)
    pol.opened(cid, "10.1.0.5", 443, 0.0)
    mux.receive(1, wire.DataAck(cid, 0, 1 << 24, ()), 0.02)  # the peer's window: 16 MiB
    t = cfg.stream_age + 1.0
    for k in range(3):
        taken = mux.send(cid, bytes(8 << 20))  # the application has more than fits
        assert 0 < taken < 8 << 20
        mux.messages_to_send(t + k)
        conn = mux.conns[cid]
        assert conn.unsent == 0  # all of it on the paths: the buffer is in flight
        last = data_seen(spy)[-1][0]
        assert last.backlog == 0 and last.buffer_full
        assert pol.registry.get(CONNECTION, cid).app_limited_at is None
        assert pol.policy.inner.classify(last, t + k)[0] != "stream"
        mux.receive(1, wire.DataAck(cid, conn.snd_nxt, 1 << 24, ()), t + k + 0.5)


def test_connections_the_shell_did_not_announce_get_a_context_and_are_forgotten():
    pol = SchedulerPolicy(SchedulerConfig(policy="context"))
    ps = [PathState(1, True, 0.02, 0.01, 1 << 20)]
    pol(MessageInfo(9, 1000, DATA, offset=0, backlog=0), ps, 3.0)
    implicit = pol.registry.get(CONNECTION, 9)
    assert implicit.opened == 3.0 and implicit.app_limited_at == 3.0
    pol.opened(10, "10.1.0.6", 80, 3.0)
    pol.sample(1, "a", None, 3.0 + 60.0)
    assert pol.registry.get(CONNECTION, 9) is implicit  # still within FORGET_AFTER
    pol.sample(1, "a", None, 3.0 + 200.0)
    assert pol.registry.get(CONNECTION, 9) is None  # forgotten
    assert pol.registry.get(CONNECTION, 10) is not None  # announced ones wait for closed()


def tcp_info(**fields):
    base = TcpInfo.parse(bytes(300))
    defaults = {"srtt_us": 30000, "rttvar_us": 5000, "snd_mss": 1448, "snd_cwnd": 20}
    return TcpInfo(**{**base.__dict__, **defaults, **fields})


def test_a_probe_reaches_the_estimator_once_and_idle_only_without_data():
    pol = SchedulerPolicy(SchedulerConfig(policy="context"))
    pol.sample(1, "a", tcp_info(), 0.0)
    est = pol.paths.estimators[1]
    calls = []
    real = est.probe

    def probe(rtt, now, idle=True):
        calls.append((rtt, now, idle))
        return real(rtt, now, idle=idle)

    est.probe = probe
    ctx = pol.sample(1, "a", tcp_info(), 0.2, probe_rtt=0.08)
    assert calls == [(0.08, 0.2, True)] and ctx.probe_rtt == 0.08
    # an idle path's kernel RTT (30 ms) is stale: the probe's 80 ms is the delay sample
    assert ctx.srtt > 0.03
    pol.sample(1, "a", tcp_info(), 0.4, probe_rtt=0.08)  # the same probe again
    assert len(calls) == 1
    pol.sample(1, "a", tcp_info(unacked=12, notsent_bytes=4000), 0.6, probe_rtt=0.09)
    assert calls[-1] == (0.09, 0.6, False) and pol.probes == 2


def test_idle_probes_let_a_lossy_path_recover_faster_than_silence():
    def lossy(pol):
        pol.sample(1, "a", tcp_info(total_retrans=0, segs_out=100), 0.0)
        return pol.sample(1, "a", tcp_info(total_retrans=50, segs_out=200), 0.2).loss_rate

    quiet = SchedulerPolicy(SchedulerConfig(policy="context"))
    probed = SchedulerPolicy(SchedulerConfig(policy="context"))
    assert lossy(quiet) == lossy(probed) > 0.1
    same = {"total_retrans": 50, "segs_out": 200}  # nothing sent since: no kernel sample
    for k in range(1, 6):
        t = 0.2 + k
        q = quiet.sample(1, "a", tcp_info(**same), t, probe_rtt=None)
        p = probed.sample(1, "a", tcp_info(**same), t, probe_rtt=0.05 + k / 1000)
    assert p.loss_rate < q.loss_rate


def test_control_messages_go_to_the_policy_on_any_up_path():
    pol = SchedulerPolicy(SchedulerConfig(policy="context"))
    pol.policy = spy = Spy(pol.policy)
    full, down = PathState(1, True, 0.02, 0.01, 0), PathState(2, False, 0.01, 0.01, 1 << 20)
    slow = PathState(3, True, 0.08, 0.01, 1 << 20)
    ids = pol(MessageInfo(5, 32, CONTROL), [full, down, slow], 1.0)
    assert spy.seen[-1][0].kind == CONTROL
    assert ids and set(ids) <= {1, 3}  # room does not matter, a down path never
    assert pol(MessageInfo(5, 32, CONTROL), [full, down], 1.0) == (1,)

    class Nothing:
        def decide(self, *a):
            return ()

    pol.policy = Nothing()
    assert pol(MessageInfo(5, 32, CONTROL), [full, down, slow], 1.0) == (1,)


def test_open_is_pinned_to_the_policys_first_choice():
    pol = SchedulerPolicy(SchedulerConfig(policy="context"))
    pol.policy = spy = Spy(pol.policy)
    mux = Mux("gateway", MuxParams(), pol)
    mux.path_up(1, 0.0, srtt=0.02)
    mux.path_up(2, 0.0, srtt=0.05)
    cid = mux.open("10.1.0.5", 40000, "198.51.100.7", 443)
    out = mux.messages_to_send(0.0)
    opens = [pid for pid, msg in out if type(msg) is wire.Open]
    assert len(opens) == 1 and [m.kind for m, _ in spy.seen] == [CONTROL]
    assert mux.conns[cid].pinned == opens[0]


def paths(*specs):
    return [PathState(i, up, srtt, 0.01, room) for i, up, srtt, room in specs]


@pytest.mark.parametrize("name", ["minrtt", "context", "roundrobin"])
def test_scheduler_policy_only_names_up_paths_with_room(name):
    pol = SchedulerPolicy(SchedulerConfig(policy=name))
    ps = paths((1, True, 0.02, 0), (2, False, 0.01, 1 << 20), (3, True, 0.05, 1 << 20))
    for seq in range(0, 10 << 14, 1 << 14):
        assert pol(MessageInfo(7, 16384, DATA, offset=seq), ps, 1.0) == (3,)
    # a reinjection avoids the paths that carried it; none left: wait
    assert pol(MessageInfo(7, 16384, REINJECTION, avoid=(3,)), ps, 1.0) == ()
    # ACKs go back where the data came from, even on a full path
    assert pol(MessageInfo(7, 32, ACK_KIND, prefer=1), ps, 1.0) == (1,)


def test_scheduler_policy_falls_back_to_builtin_when_the_policy_raises():
    pol = SchedulerPolicy(SchedulerConfig(policy="minrtt"))

    class Broken:
        def decide(self, *a):
            raise RuntimeError("bug")

    pol.policy = Broken()
    ps = paths((1, True, 0.05, 1 << 20), (2, True, 0.01, 1 << 20))
    assert pol(MessageInfo(1, 100, DATA), ps, 0.0) == (2,) and pol.failed


def test_scheduler_policy_estimators_take_tcp_info_samples():
    from middlebox.paths.sockets import TcpInfo

    pol = SchedulerPolicy(SchedulerConfig(policy="context"))
    raw = bytearray(300)
    info = TcpInfo.parse(bytes(raw))
    info = TcpInfo(**{**info.__dict__, "srtt_us": 30000, "rttvar_us": 5000, "snd_mss": 1448,
                      "snd_cwnd": 20, "delivery_rate": 2_000_000})  # fmt: skip
    ctx = pol.sample(4, "carrier-a", info, 1.0, probe_rtt=0.03)
    assert ctx.path_id == 4 and abs(ctx.srtt - 0.03) < 1e-9 and ctx.delivery_rate == 2_000_000
    pol.path_down(4, 2.0)
    assert pol.registry.get(PATH, 4).up is False


def test_decisions_that_put_a_message_on_several_paths_are_counted():
    pol = SchedulerPolicy(SchedulerConfig(policy="redundant"))
    ps = paths((1, True, 0.05, 1 << 20), (2, True, 0.01, 1 << 20))
    assert len(pol(MessageInfo(1, 100, DATA), ps, 0.0)) == 2
    single = SchedulerPolicy(SchedulerConfig(policy="minrtt"))
    assert single(MessageInfo(1, 100, DATA), ps, 0.0) == (2,)
    assert (pol.decisions, pol.duplicated) == (1, 1)
    assert (single.decisions, single.duplicated) == (1, 0)


def test_a_node_connection_described_by_its_open_goes_by_delay_not_bandwidth():
    """The cause of the LTE web tails (docs/scheduler.md, "Web tails on the node"): the
    node's policy never knew a connection's port, so a web response's first bytes were
    ``data`` (a = 1e-5 per byte), which ranks the high-rate carrier first even with a
    queue ahead; the replay's slow pages were full of small objects sent that way that
    arrived 1-2.5 s later. Described by its OPEN (port 443) the response is
    ``interactive`` and goes where it arrives first. Figures of one such decision."""
    cfg = SchedulerConfig(policy="context")

    def decide(describe):
        pol = SchedulerPolicy(cfg)
        fast = tcp_info(srtt_us=122_000, rttvar_us=10_000, delivery_rate=2_500_000, snd_cwnd=400)
        slow = tcp_info(srtt_us=64_000, rttvar_us=5_000, delivery_rate=400_000, snd_cwnd=100)
        pol.sample(1, "tmobile", fast, 0.0)
        pol.sample(2, "verizon", slow, 0.0)
        ps = [
            PathState(1, True, 0.122, 0.010, 212_578, queued=91_301),
            PathState(2, True, 0.064, 0.005, 72_202, queued=4_469),
        ]
        if describe:
            pol.described(7, "10.1.0.5", 443, 0.0)
        ids = pol(MessageInfo(7, 2571, DATA, offset=0, backlog=0), ps, 0.1)
        return ids, pol.policy.classify(
            MessageInfo(7, 2571, DATA, conn=pol.registry.get(CONNECTION, 7))
        )[0]

    assert decide(False) == ((1,), "data")
    assert decide(True) == ((2,), "interactive")
