"""The datagram class rule and placement (scheduler/datagrams.py)."""

from __future__ import annotations

from scheduler.context import DATAGRAM, MessageInfo, PathContext
from scheduler.datagrams import (
    DUPLICATE,
    SINGLE,
    DatagramClasses,
    DatagramPlacer,
    FlowClassifier,
    flow_class,
)


def test_class_by_port_then_rate() -> None:
    c = DatagramClasses()
    assert flow_class(c, 443, 0) == SINGLE  # QUIC, however slow
    assert flow_class(c, 53, 1e9) == DUPLICATE  # DNS, however fast
    assert flow_class(c, 3479, 0) == DUPLICATE  # a range
    assert flow_class(c, 9000, 1000) == DUPLICATE  # small: a game, a call
    assert flow_class(c, 9000, c.duplicate_rate + 1) == SINGLE  # bulk
    f = FlowClassifier(DatagramClasses(single_ports=("9000-9001",), duplicate_rate=0))
    assert f(9001, 0) == SINGLE and f(53, 0) == DUPLICATE and f(7, 1) == SINGLE


def _paths() -> list[PathContext]:
    return [
        PathContext(1, carrier="a", srtt=0.05),
        PathContext(2, carrier="a", srtt=0.04),
        PathContext(3, carrier="b", srtt=0.08),
    ]


def _info(flow: int, cls: str) -> MessageInfo:
    return MessageInfo(flow, 100, DATAGRAM, flow_class=cls)


def test_duplicates_go_to_distinct_carriers_first() -> None:
    p = DatagramPlacer()
    assert p.place(_info(1, DUPLICATE), _paths(), 0.0) == (2, 3)
    assert DatagramPlacer(DatagramClasses(copies=3)).place(_info(1, DUPLICATE), _paths(), 0) == (
        2,
        3,
        1,
    )
    assert DatagramPlacer(DatagramClasses(copies=0)).place(_info(1, DUPLICATE), _paths()[:2], 0)
    assert p.place(_info(1, DUPLICATE), [], 0.0) == ()


def test_single_flow_stays_on_its_path_until_it_degrades_or_goes() -> None:
    p = DatagramPlacer()
    paths = _paths()
    assert p.place(_info(9, SINGLE), paths, 0.0) == (2,)
    paths[0].srtt = 0.03  # another path becomes a little better: no move (no reordering)
    assert p.place(_info(9, SINGLE), paths, 1.0) == (2,) and p.moves == 0
    paths[1].srtt = 0.5  # its path degrades: the flow moves once, to the best
    assert p.place(_info(9, SINGLE), paths, 2.0) == (1,) and p.moves == 1
    paths[1].srtt = 0.04
    assert p.place(_info(9, SINGLE), paths, 3.0) == (1,)
    assert p.place(_info(9, SINGLE), [paths[1], paths[2]], 4.0) == (2,)  # path 1 gone
    paths[1].loss_rate = 0.5  # lossy: moves as well
    assert p.place(_info(9, SINGLE), [paths[1], paths[2]], 5.0) == (3,) and p.moves == 3
    p.forget(9)
    assert p.status()["pinned_flows"] == 0
