"""The ModemManager context source (middlebox/context/modem.py) against recorded ``mmcli
-J`` outputs of several modem models (mmcli/<model>/): the sans-I/O core fed the files
directly, then the shell running a stand-in ``mmcli`` on the PATH (mmcli/mmcli) inside
the gateway's context loop: modems that report nothing, vanish and come back under a new
index, hang, and answer garbage."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from middlebox import control
from middlebox.config import CarrierConfig, Config, ContextConfig, GatewayConfig
from middlebox.context.loop import ContextLoop
from middlebox.context.modem import (
    MAX_OUTPUT,
    BadOutput,
    ModemPoller,
    decode,
    parse_location,
    parse_modem,
    parse_signal,
)
from middlebox.errors import UserError

FIXTURES = Path(__file__).parent / "mmcli"
MODELS = ["quectel-rm500q", "quectel-em12", "sierra-em7455", "fibocom-l850", "huawei-me909s",
          "simcom-searching"]  # fmt: skip
INTERFACES = ["wwan0", "wwan1", "wwan2", "wwan3", "usb0", "wwan4"]  # each model's net port


def compose(d: Path, models: list[str], indices: list[int] | None = None) -> Path:
    """A stand-in's directory holding ``models`` as modems ``indices`` (default 0..)."""
    d.mkdir(parents=True, exist_ok=True)
    indices = indices if indices is not None else list(range(len(models)))
    for model, i in zip(models, indices, strict=True):
        for f in (FIXTURES / model).glob("m0*.json"):
            shutil.copy(f, d / f.name.replace("m0", f"m{i}", 1))
    listing(d, indices)
    return d


def listing(d: Path, indices: list[int]) -> None:
    paths = [f"/org/freedesktop/ModemManager1/Modem/{i}" for i in indices]
    (d / "list.json").write_text(json.dumps({"modem-list": paths}))


def run_round(poller: ModemPoller, d: Path, now: float) -> list:
    """One round of the core with each run answered from ``d`` (missing file: failed)."""
    out: list = []
    job = poller.next_job(now)
    assert job is not None
    while job is not None:
        name = {"list": "list", "info": f"m{job.index}", "signal": f"m{job.index}-signal",
                "location": f"m{job.index}-location", "setup": ""}[job.kind]  # fmt: skip
        if job.kind == "setup":
            after = d / f"m{job.index}-signal-after-setup.json"
            if after.exists():
                after.replace(d / f"m{job.index}-signal.json")
        f = d / f"{name}.json"
        out += poller.finished(job, f.read_bytes() if f.exists() else None, now)
        job = poller.next_job(now)
    return out


# -- the recorded modems, one by one -------------------------------------------------------

EXPECTED = {
    # model: (cell id, RSRP of that cell, position, technologies, operator)
    "quectel-rm500q": ("27448079", -97.0, (51.339716, 12.374582), ("lte", "5gnr"), "vodafone.de"),
    "quectel-em12": ("209590786", -105.0, None, ("lte",), "T-Mobile"),  # after signal setup
    "sierra-em7455": ("15050507", -91.0, (40.712776, -74.005974), ("lte",), "AT&T"),
    "fibocom-l850": ("169552957", None, None, ("lte",), "vodafone UK"),  # no --signal-get
    "huawei-me909s": ("10701601", None, None, ("hsdpa", "hsupa"), "Telekom.de"),  # 3G: RSCP
}


@pytest.mark.parametrize("model", MODELS)
def test_each_recorded_modem(model, tmp_path):
    d = compose(tmp_path / model, [model])
    p = ModemPoller([("a", "", INTERFACES[MODELS.index(model)])], interval=1.0)
    first = run_round(p, d, 0.0)
    second = run_round(p, d, 1.0)
    st = p.status()
    assert st["bad_output"] == 0 and st["modems_lost"] == 0
    if model == "simcom-searching":  # a modem that reports nothing: no reading at all
        assert first == second == [] and st["empty_reports"] == 2
        assert st["modems"]["a"]["state"] == "searching" and st["modems"]["a"]["present"]
        return
    cell, rsrp, pos, tech, operator = EXPECTED[model]
    (r,) = second
    assert (r.carrier, r.cell_id, r.rsrp) == ("a", cell, rsrp)
    assert (r.lat, r.lon) == (pos if pos else (None, None))
    row = st["modems"]["a"]
    assert tuple(row["tech"]) == tech and row["operator"] == operator
    if model == "quectel-em12":  # extended signal off: switched on once, values next round
        assert first[0].rsrp is None and st["signal_setups"] == 1
    else:
        assert [r.t for r in first + second] == [0.0, 1.0] and st["signal_setups"] == 0
        assert first[0].rsrp == second[0].rsrp
    if model == "quectel-rm500q":
        assert row["signal"]["5g"] == {"rsrp": -88.0, "rsrq": -11.0, "snr": 14.5}
        assert row["signal"]["lte"]["snr"] == 9.4 and row["tac"] == 0xB12C
        assert row["lac"] is None  # FFFE: reserved, no LAC on LTE
        assert (row["mcc"], row["mnc"], row["quality"]) == ("262", "02", 74)
    if model == "huawei-me909s":
        assert row["signal"] == {"umts": {"rscp": -87.0, "ecio": -6.5, "rssi": -71.0}}
        assert (row["lac"], row["tac"]) == (0x1F4A, None)
    if model == "fibocom-l850":
        assert st["failures"] == 2 and "signal-get" in st["last_error"]


def test_vehicle_position_from_the_first_modem_with_a_fix(tmp_path):
    d = compose(tmp_path / "m", ["quectel-em12", "sierra-em7455", "quectel-rm500q"])
    p = ModemPoller([("a", "", "wwan1"), ("b", "", "wwan2"), ("c", "", "wwan0")])
    readings = run_round(p, d, 0.0)
    assert [(r.carrier, r.lat, r.lon) for r in readings] == [
        (c, 40.712776, -74.005974) for c in "abc"
    ]


def test_modems_chosen_by_index_equipment_id_and_port(tmp_path):
    d = compose(tmp_path / "m", ["sierra-em7455", "huawei-me909s", "quectel-rm500q"], [3, 5, 9])
    p = ModemPoller([("idx", "5", ""), ("imei", "866758040123456", ""), ("port", "cdc-wdm2", ""),
                     ("none", "", "wwan7")])  # fmt: skip
    run_round(p, d, 0.0)
    mods = p.status()["modems"]
    assert (mods["idx"]["modem"], mods["imei"]["modem"], mods["port"]["modem"]) == ("5", "9", "3")
    assert mods["none"] == {"present": False}


def test_a_modem_vanishes_and_comes_back_under_a_new_index(tmp_path):
    d = compose(tmp_path / "m", ["quectel-rm500q", "quectel-em12"])
    p = ModemPoller([("a", "", "wwan0"), ("b", "", "wwan1")])
    run_round(p, d, 0.0)
    assert len(run_round(p, d, 1.0)) == 2
    listing(d, [0])  # the EM12 resets: gone from ModemManager's list
    assert [r.carrier for r in run_round(p, d, 2.0)] == ["a"]
    st = p.status()
    assert st["modems_lost"] == 1 and st["modems"]["b"] == {"present": False}
    compose(d, ["quectel-em12"], [4])  # ... and comes back as Modem/4, signal off again
    listing(d, [0, 4])
    first = run_round(p, d, 3.0)
    assert [(r.carrier, r.rsrp) for r in first] == [("a", -97.0), ("b", None)]
    assert [(r.carrier, r.rsrp) for r in run_round(p, d, 4.0)] == [("a", -97.0), ("b", -105.0)]
    st = p.status()
    assert st["modems_found"] == 1 and st["modems"]["b"]["modem"] == "4"
    assert st["signal_setups"] == 2  # once per appearance


def test_modemmanager_not_running(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    p = ModemPoller([("a", "", "wwan0")])
    assert run_round(p, d, 0.0) == [] and run_round(p, d, 1.0) == []
    assert p.status()["failures"] == 2 and p.status()["rounds"] == 2


def test_rounds_follow_the_interval(tmp_path):
    d = compose(tmp_path / "m", ["sierra-em7455"])
    p = ModemPoller([("a", "", "wwan2")], interval=5.0)
    run_round(p, d, 10.0)
    assert p.next_job(14.9) is None and p.next_job(15.0).kind == "list"


# -- hostile and odd output ------------------------------------------------------------------


def _sig(**lte) -> bytes:
    return json.dumps({"modem": {"signal": {"lte": lte, "refresh": {"rate": "1"}}}}).encode()


def _loc(**gps) -> bytes:
    return json.dumps({"modem": {"location": {"3gpp": {"cid": "0A"}, "gps": gps}}}).encode()


HOSTILE = {
    "not JSON": ("signal", b"error: couldn't get signal: timeout\n"),
    "binary": ("signal", bytes(range(256))),
    "nested": ("signal", b"[" * 100000 + b"]" * 100000),
    "a list": ("info", b"[1, 2, 3]"),
    "NaN": ("signal", b'{"modem": {"signal": {"lte": {"rsrp": NaN}}}}'),
    "rsrp +40 dBm": ("signal", _sig(rsrp="40.00")),
    "rsrp as a word": ("signal", _sig(rsrp="strong")),
    "rsrp as a JSON number": ("signal", _sig(rsrp=-95)),
    "rsrp of 400 digits": ("signal", _sig(rsrp="9" * 400)),
    "latitude 300": ("location", _loc(latitude="300.0", longitude="1.0")),
    "cid not hex": ("location", b'{"modem": {"location": {"3gpp": {"cid": "xyz"}}}}'),
    "ports not a list": ("info", b'{"modem": {"generic": {"ports": {"wwan0": 1}}}}'),
    "operator of 10 kB": (
        "info",
        json.dumps({"modem": {"3gpp": {"operator-name": "x" * 10000}}}).encode(),
    ),  # fmt: skip
    "control characters": ("info", b'{"modem": {"generic": {"model": "EM\\u001b[2J12"}}}'),
    "signal not an object": ("signal", b'{"modem": {"signal": "-95"}}'),
    "bad modem path": ("list", b'{"modem-list": ["/org/freedesktop/ModemManager1/Modem/../x"]}'),
    "too long": ("signal", b" " * (MAX_OUTPUT + 1)),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_output_is_counted_and_dropped(case, tmp_path):
    kind, data = HOSTILE[case]
    d = compose(tmp_path / "m", ["quectel-rm500q"])
    good = (d / {"list": "list.json", "info": "m0.json", "signal": "m0-signal.json",
                 "location": "m0-location.json"}[kind]).read_bytes()  # fmt: skip
    (d / {"list": "list.json", "info": "m0.json", "signal": "m0-signal.json",
          "location": "m0-location.json"}[kind]).write_bytes(data)  # fmt: skip
    p = ModemPoller([("a", "", "wwan0")])
    bad = run_round(p, d, 0.0)
    st = p.status()
    assert st["bad_output"] == 1 and st["last_error"], st
    # what the bad run would have said is dropped, the rest of the round stands
    if kind == "signal":
        assert [r.rsrp for r in bad] == [None] and bad[0].cell_id == "27448079"
    elif kind == "location":
        assert [(r.cell_id, r.lat) for r in bad] == [("", None)] and bad[0].rsrp == -97.0
    else:
        assert bad == []
    (d / {"list": "list.json", "info": "m0.json", "signal": "m0-signal.json",
          "location": "m0-location.json"}[kind]).write_bytes(good)  # fmt: skip
    (r,) = run_round(p, d, 1.0)  # the next round is whole again
    assert (r.cell_id, r.rsrp) == ("27448079", -97.0)


def test_parsers_refuse_shapes_outside_the_documentation():
    with pytest.raises(BadOutput):
        parse_modem({}, "0")
    with pytest.raises(BadOutput):
        parse_signal({"modem": {"signal": {"5g": {"rsrq": "-99.0"}}}})
    with pytest.raises(BadOutput):
        parse_location({"modem": {"location": {"3gpp": {"mcc": "26a"}}}})
    with pytest.raises(BadOutput):
        decode(b'"just text"')
    assert parse_location({"modem": {"location": {"3gpp": {"cid": "00000000"}}}}).cell_id == ""
    assert parse_signal({"modem": {}}).values == {}


# -- the shell: a stand-in mmcli on the PATH, in the gateway's context loop -----------------


@pytest.fixture
def standin(tmp_path, monkeypatch):
    """The stand-in ``mmcli`` first on the PATH, answering from a fresh directory."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(FIXTURES / "mmcli", bin_dir / "mmcli")
    os.chmod(bin_dir / "mmcli", 0o755)
    d = tmp_path / "modems"
    d.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MMCLI_DIR", str(d))
    return d


def modem_config(interfaces: list[str], **context) -> Config:
    carriers = [CarrierConfig(name=f"c{k}", interface=i) for k, i in enumerate(interfaces)]
    return Config(
        gateway=GatewayConfig(carriers=carriers),
        context=ContextConfig(source="modemmanager", **context),
    )


def run_loop(cfg: Config, until, timeout: float = 20.0, between=None):
    """The context loop with its source in a selector, on the real clock, until
    ``until(loop)`` holds; ``between(loop)`` runs after every wake."""
    loop = ContextLoop(cfg, clock=time.monotonic)
    sel = selectors.DefaultSelector()
    loop.attach(SimpleNamespace(on_info=None, paths={}), sel)
    try:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not until(loop):
            for key, mask in sel.select(0.05):
                key.data(mask, time.monotonic())
            loop.tick(time.monotonic())
            if between is not None:
                between(loop)
        return loop, loop.status(time.monotonic())
    finally:
        loop.close()
        sel.close()


def test_every_recorded_modem_through_the_standin(standin):
    compose(standin, MODELS)
    cfg = modem_config(INTERFACES, modems=["", "861536030123457"])  # the EM12 by its IMEI

    def ready(loop):
        return loop.source.core.counters["rounds"] >= 3

    loop, st = run_loop(cfg, ready)
    m = st["modem"]
    assert m["rounds"] >= 3 and m["bad_output"] == 0 and m["timeouts"] == 0
    assert m["failures"] == m["rounds"]  # the Fibocom's --signal-get, every round
    ctx = st["carriers"]
    assert (ctx["c0"]["cell_id"], ctx["c0"]["rsrp"]) == ("27448079", -97.0)
    assert ctx["c1"]["rsrp"] == -105.0  # the EM12's signal was switched on
    assert ctx["c2"]["position"] == [51.339716, 12.374582]  # the first modem's GPS fix
    assert ctx["c4"]["cell_id"] == "10701601" and ctx["c4"]["rsrp"] is None
    assert "cell_id" not in ctx["c5"]  # reports nothing: no context at all
    assert m["modems"]["c3"]["model"] == "Fibocom L850-GL"
    page = control.render({"role": "gateway", "context": st})
    assert (
        "  modem c0           #0 Quectel RM500Q-GL, connected, lte,5gnr, vodafone.de, "
        "cell 27448079, lte rsrp -97 rsrq -12 snr 9.4 rssi -67, 5g rsrp -88 rsrq -11 snr 14.5"
        in page
    )
    assert "modems: bad_output=0" in page
    calls = (standin / "calls.log").read_text().splitlines()
    assert calls.count("-m 1 --signal-setup=1") == 1


def test_standin_modem_hangs_vanishes_and_comes_back(standin):
    compose(standin, ["quectel-rm500q", "sierra-em7455"])
    (standin / "m1-location.hang").touch()
    cfg = modem_config(["wwan0", "wwan2"], modem_timeout=0.5)
    steps = {"hung": False, "gone": False, "back": False}

    def script(loop):
        c = loop.source.core.counters
        if not steps["hung"] and c["timeouts"] >= 1:
            steps["hung"] = True
            (standin / "m1-location.hang").unlink()
        elif steps["hung"] and not steps["gone"] and c["readings"] >= 4:
            steps["gone"] = True
            listing(standin, [0])
        elif steps["gone"] and not steps["back"] and c["modems_lost"] == 1:
            steps["back"] = True
            compose(standin, ["sierra-em7455"], [6])
            listing(standin, [0, 6])

    loop, st = run_loop(cfg, lambda lp: lp.source.core.counters["modems_found"] >= 1,
                        timeout=30.0, between=script)  # fmt: skip
    m = st["modem"]
    assert m["timeouts"] >= 1 and m["modems_lost"] == 1 and m["modems_found"] == 1
    assert m["modems"]["c1"]["modem"] == "6" and m["modems"]["c1"]["present"]
    assert st["carriers"]["c0"]["rsrp"] == -97.0
    assert loop.source.proc is None and loop.source.reap == []  # nothing left running


def test_standin_garbage_never_stops_the_loop(standin):
    compose(standin, ["quectel-rm500q"])
    (standin / "m0-signal.json").write_bytes(b"\x00\xff" * 1000)
    (standin / "m0.json").write_bytes(b'{"modem": {"generic": {"ports": ["wwan0 (net)"]}')
    cfg = modem_config(["wwan0"])
    loop, st = run_loop(cfg, lambda lp: lp.source.core.counters["rounds"] >= 2)
    assert st["modem"]["bad_output"] >= 2 and st["modem"]["readings"] == 0


def test_configuration_errors(standin, monkeypatch):
    with pytest.raises(UserError, match="context.modems: 2 entries for 1 carrier"):
        ContextLoop(modem_config(["wwan0"], modems=["0", "1"]))
    with pytest.raises(UserError, match=r"context.modems\[0\]: carrier 'c0' has no interface"):
        ContextLoop(modem_config([""]))
    with pytest.raises(UserError, match="not found on PATH"):
        ContextLoop(modem_config(["wwan0"], modem_program="no-such-mmcli"))
    ContextLoop(modem_config([""], modems=["0"])).close()  # by index: no interface needed
