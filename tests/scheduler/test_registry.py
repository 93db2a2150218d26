"""Generators publish context by type; the policy reads it; config wiring."""

import pytest

from middlebox import config as mconfig
from middlebox.config import ConfigError
from scheduler.config import SchedulerConfig
from scheduler.context import MessageInfo
from scheduler.estimators import PathSample
from scheduler.generators import (
    CarrierTracker,
    ConnectionTracker,
    Generators,
    PathContextGenerator,
)
from scheduler.longterm import CarrierWindowSource, LongTermPrediction, LongTermSource, StubSource
from scheduler.policies import get
from scheduler.registry import CARRIER, CONNECTION, PATH, ContextRegistry


def test_generators_publish_and_the_policy_reads_paths():
    reg = ContextRegistry()
    paths = PathContextGenerator()
    conns = ConnectionTracker()
    reg.register(paths)
    reg.register(conns)
    assert reg.producers(PATH) == [paths] and reg.producers(CONNECTION) == [conns]
    paths.add_path(1, "b", 0.0)
    paths.add_path(0, "a", 0.0)
    for i in range(6):
        paths.sample(0, PathSample(rtt=0.03, delivery_rate=5e6, loss=0.0), 0.1 * i)
        paths.sample(1, PathSample(rtt=0.09, delivery_rate=1e6, loss=0.0), 0.1 * i)
    assert [p.path_id for p in reg.paths()] == [0, 1]
    pol = get("context")
    conn = conns.opened(5, 0.5, client="p", dst_port=22)
    assert reg.get(CONNECTION, 5) is conn
    assert pol.decide(MessageInfo(5, 8192, conn=conn), reg.paths(), 0.6) == (0,)
    paths.sample(0, PathSample(up=False), 0.7)
    assert pol.decide(MessageInfo(5, 8192, conn=conn), reg.paths(), 0.7) == (1,)
    conns.carried_to(5, 1000)
    assert conn.bytes_so_far == 1000 and conn.age(2.0) == 1.5
    assert conn.app_limited_at is None
    conns.app_limited(5, 1.5)
    conns.app_limited(99, 1.5)  # unknown connection: ignored
    assert conn.app_limited_at == 1.5
    conns.closed(5)
    assert reg.get(CONNECTION, 5) is None
    paths.remove_path(1)
    assert [p.path_id for p in reg.paths()] == [0]


def test_unknown_kind_is_refused():
    reg = ContextRegistry()
    with pytest.raises(ValueError, match="unknown context kind"):
        reg.subscribe("weather", lambda k, c: None)


def test_carrier_context_feeds_the_longterm_adapter():
    calls = []

    def predict(carrier, cell, window, now):
        calls.append((carrier, cell, tuple(window), now))
        return LongTermPrediction(throughput_mean=8e6, confidence=0.5)

    src = CarrierWindowSource(predict)
    assert isinstance(src, LongTermSource) and isinstance(StubSource(), LongTermSource)
    # the one wiring: the tracker registered, the source subscribed to carrier contexts
    gens = Generators(carriers=CarrierTracker(window=3), longterm=src)
    reg, carriers = gens.registry, gens.carriers
    assert reg.producers(CARRIER) == [carriers]
    assert reg.producers(PATH) == [gens.paths] and reg.producers(CONNECTION) == [gens.connections]
    assert src.predict("a", 0.0) is None  # nothing observed yet
    for i, rsrp in enumerate([-90, -91, -92, -93]):
        carriers.report("a", float(i), cell_id="c1", rsrp=rsrp, position=(52.0, 13.0))
    ctx = reg.get(CARRIER, "a")
    assert ctx.rsrp_window == (-91, -92, -93) and ctx.handover_events == ()
    assert src.predict("a", 5.0).confidence == 0.5
    assert calls[-1] == ("a", "c1", (-91, -92, -93), 5.0)
    # a new cell is a handover; the window is the carrier's and goes on (contextdb's
    # stored windows span cell changes too)
    carriers.report("a", 6.0, cell_id="c2", rsrp=-80)
    ctx = reg.get(CARRIER, "a")
    assert ctx.rsrp_window == (-92, -93, -80) and ctx.handover_events == ((6.0, "c1->c2"),)
    assert ctx.position == (52.0, 13.0)
    src.predict("a", 7.0)
    assert calls[-1] == ("a", "c2", (-92, -93, -80), 7.0)


def test_scheduler_section_in_main_config(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[scheduler]\npolicy = "ecf"\nf_reinjection = 5e4\nls_degree = 3\n')
    cfg = mconfig.load(f)
    assert isinstance(cfg.scheduler, SchedulerConfig)
    assert (cfg.scheduler.policy, cfg.scheduler.f_reinjection, cfg.scheduler.ls_degree) == (
        "ecf",
        5e4,
        3,
    )
    assert get(config=cfg.scheduler).name == "ecf"
    for text, err in [
        ('[scheduler]\npolicy = "fastest"\n', "scheduler.policy: must be one of"),
        ("[scheduler]\nls_degree = 9\n", "scheduler.ls_degree: must be <= 4"),
        ("[scheduler]\nalpha = 1\n", "scheduler.alpha: unknown key"),
    ]:
        f.write_text(text)
        with pytest.raises(ConfigError, match=err):
            mconfig.load(f)


def test_every_scheduler_field_is_documented():
    import dataclasses

    for f in dataclasses.fields(SchedulerConfig):
        assert f.metadata.get("doc"), f.name


def test_contextdb_prediction_fits_the_longterm_interface():
    """Contract with the context database: its predictions carry our attribute names."""
    import dataclasses

    db = pytest.importorskip("contextdb.db")
    theirs = {f.name for f in dataclasses.fields(db.Prediction)}
    ours = {f.name for f in dataclasses.fields(LongTermPrediction)}
    assert ours <= theirs, ours - theirs


def test_position_forecast_merges_into_the_longterm_answer():
    """With a position, predict() is the MVUE of the cell's and the position's estimates,
    and the disconnection is the position's; dark() hands a policy the forecast itself."""
    import math
    from types import SimpleNamespace

    from scheduler.fusion import fuse2

    def predict(carrier, cell, window, now, recent_dl_bps=None):
        return LongTermPrediction(
            throughput_mean=8e6,
            throughput_var=4e12,
            rtt_var=math.inf,
            loss_var=math.inf,
            confidence=0.5,
            p_disconnect=0.02,
        )

    asked = []

    def forecast(carrier, pos_km, speed_kmh, horizon_s, direction):
        asked.append((carrier, pos_km, speed_kmh, horizon_s, direction))
        return SimpleNamespace(
            horizon_s=horizon_s,
            p_dark=0.9,
            dark_in_s=3.0,
            dark_for_s=4.5,
            kind="outage",
            throughput_mean=2e6,
            throughput_var=1e12,
            rtt_mean=0.05,
            rtt_var=1e-4,
            loss_mean=0.01,
            loss_var=1e-4,
            passes=10,
            confidence=0.8,
        )

    src = CarrierWindowSource(predict, forecast, horizon_s=5.0)
    carriers = CarrierTracker(window=2)
    Generators(carriers=carriers, longterm=src)
    for i in range(3):
        carriers.report("a", float(i), cell_id="c1", rsrp=-90.0)
    assert src.predict("a", 3.0).p_disconnect == 0.02  # no position yet: the cell's answer
    assert src.dark("a", 3.0) is None
    src.observe_position(12.5, 300.0)
    p = src.predict("a", 3.0)
    assert asked[-1] == ("a", 12.5, 300.0, 5.0, 1)
    assert p.throughput_mean == pytest.approx(fuse2(8e6, 4e12, 2e6, 1e12)[0])
    assert p.rtt_mean == 0.05  # the cell knew no RTT: the position's
    assert (p.p_disconnect, p.expected_gap, p.dark_in_s) == (0.9, 4.5, 3.0)
    assert src.dark("a", 3.0, horizon_s=10.0).dark_in_s == 3.0 and asked[-1][3] == 10.0
    # a carrier without a cell context still gets the position's answer
    assert src.predict("b", 3.0).throughput_mean == 2e6


@pytest.mark.parametrize("times", ["in order", "back in time"])
def test_unannounced_connections_are_forgotten_after_their_silence(times):
    """The sweep forgets exactly the unannounced connections silent for longer than
    ``forget_after``, announced ones never, also when a caller's clock goes back."""
    reg = ContextRegistry()
    conns = ConnectionTracker(forget_after=10.0)
    conns.attach(reg)
    conns.opened(1, 0.0, client="10.0.0.2", dst_port=443)
    for cid, t in ((2, 1.0), (3, 2.0), (4, 3.0)):
        conns.seen(cid, t)
    conns.seen(2, 8.0)  # 2 spoke again: now the freshest
    if times == "back in time":
        conns.seen(5, 0.5)  # an older time than the last one seen
    conns.sweep(12.5)
    left = {cid for cid, _ in reg.items(CONNECTION)}
    assert left == {1, 2, 4}
    conns.sweep(18.5)
    assert {cid for cid, _ in reg.items(CONNECTION)} == {1}
