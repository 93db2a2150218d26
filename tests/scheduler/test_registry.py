"""Generators publish context by type; the scheduler reads it; config wiring."""

import pytest

from middlebox import config as mconfig
from middlebox.config import ConfigError
from scheduler.config import SchedulerConfig
from scheduler.context import MessageInfo
from scheduler.estimators import PathSample
from scheduler.generators import CarrierTracker, ConnectionTracker, PathContextGenerator
from scheduler.longterm import CarrierWindowSource, LongTermPrediction, LongTermSource, StubSource
from scheduler.policies import get
from scheduler.registry import CARRIER, CONNECTION, PATH, ContextRegistry, Scheduler


def test_generators_publish_and_scheduler_reads_paths():
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
    sched = Scheduler(get("context"), reg)
    conn = conns.opened(5, 0.5, client="p", dst_port=22)
    assert reg.get(CONNECTION, 5) is conn
    assert sched.decide(MessageInfo(5, 8192, conn=conn), 0.6) == (0,)
    paths.sample(0, PathSample(up=False), 0.7)
    assert sched.decide(MessageInfo(5, 8192, conn=conn), 0.7) == (1,)
    conns.carried(5, 1000)
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
    reg = ContextRegistry()
    carriers = CarrierTracker(window=3)
    reg.register(carriers)
    calls = []

    def predict(carrier, cell, window, now):
        calls.append((carrier, cell, tuple(window), now))
        return LongTermPrediction(throughput_mean=8e6, confidence=0.5)

    src = CarrierWindowSource(predict)
    assert isinstance(src, LongTermSource) and isinstance(StubSource(), LongTermSource)
    reg.subscribe(CARRIER, lambda key, ctx: src.observe(ctx))
    assert src.predict("a", 0.0) is None  # nothing observed yet
    for i, rsrp in enumerate([-90, -91, -92, -93]):
        carriers.report("a", float(i), cell_id="c1", rsrp=rsrp, position=(52.0, 13.0))
    carriers.handover("a", 4.0, "request")
    ctx = reg.get(CARRIER, "a")
    assert ctx.rsrp_window == (-91, -92, -93) and ctx.handover_events == ((4.0, "request"),)
    assert src.predict("a", 5.0).confidence == 0.5
    assert calls[-1] == ("a", "c1", (-91, -92, -93), 5.0)
    carriers.report("a", 6.0, cell_id="c2", rsrp=-80)  # new cell: new window
    assert reg.get(CARRIER, "a").rsrp_window == (-80,)
    assert reg.get(CARRIER, "a").position == (52.0, 13.0)


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
