"""``mpproxy bench replay``: reports written, user errors as one line and exit 2."""

from __future__ import annotations

import json

import pytest

from middlebox import cli


def replay(tmp_path, *extra: str) -> int:
    return cli.main(
        [
            "bench",
            "replay",
            "--trace",
            "fast=12mbit",
            "--trace",
            "slow=6mbit",
            "--duration",
            "8",
            "--out",
            str(tmp_path / "rep"),
            "--no-progress",
            *extra,
        ]
    )


def test_replay_writes_table_json_and_report(tmp_path, capsys):
    assert (
        replay(
            tmp_path,
            "--workload",
            "bulk",
            "--policies",
            "minrtt,redundant,single:slow",
            "--no-plots",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| minrtt |" in out and "| single:slow |" in out and "speed-up" in out
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert set(data["results"]) == {"minrtt", "redundant", "single:slow"}
    minrtt = data["results"]["minrtt"]
    assert 0 < minrtt["goodput_mbps"] <= minrtt["oracle_mbps"]
    assert data["results"]["single:slow"]["goodput_mbps"] < minrtt["goodput_mbps"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "plots skipped (--no-plots)" in md
    assert "mpproxy bench replay --trace fast=12mbit --trace slow=6mbit --workload bulk" in md


def test_replay_draws_plots(tmp_path):
    pytest.importorskip("matplotlib")
    assert (
        replay(
            tmp_path,
            "--workload",
            "web:clients=2+cbr:rate=1",
            "--policies",
            "context,single:fast",
            "--outage",
            "fast:2-4",
        )
        == 0
    )
    for name in ("goodput.png", "fct.png", "stalls.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 1000
    assert (
        "![Goodput over time per path](goodput.png)" in (tmp_path / "rep" / "report.md").read_text()
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workload", "ftp"], "unknown workload"),
        (["--policies", "fastest"], "unknown policy"),
        (["--policies", "single:nope"], "no carrier"),
        (["--outage", "nope:1-2"], "no carrier"),
        (["--outage", "fast:3-1"], "START < END"),
        (["--duration", "0"], "--duration"),
        (["--contextdb", "/nonexistent.db"], "needs --rail"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, args, message):
    assert replay(tmp_path, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mpproxy: error: ") and message in err[0]


def test_missing_trace_file_and_no_carriers(tmp_path, capsys):
    code = cli.main(["bench", "replay", "--trace", str(tmp_path / "none.down"), "--no-progress"])
    assert code == 2
    assert "no such trace file" in capsys.readouterr().err
    assert cli.main(["bench", "replay"]) == 2
    assert "exactly one of --lte" in capsys.readouterr().err


def test_help_offers_replay_and_emulate(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "replay" in out and "emulate" in out and "not built yet" not in out


@pytest.mark.slow
def test_speed_benchmark_prints_speed_up(capsys):
    from bench.sim import scenarios, speed

    try:
        scenarios.lte()
    except scenarios.ScenarioError as e:
        pytest.skip(str(e))
    assert speed.main(["--duration", "120"]) == 0
    out = capsys.readouterr().out
    print(out)
    assert out.count("speed-up") == 1 and "x real time" in out  # ours by default


def test_quick_comparison_for_the_demo(tmp_path):
    from bench.sim import quick_comparison

    path = quick_comparison(tmp_path / "quick")
    text = path.read_text()
    assert path.name == "report.md" and "| context |" in text and "| redundant |" in text
    assert (tmp_path / "quick" / "report.json").is_file()


def test_config_file_knobs_and_bad_config(tmp_path, capsys):
    good = tmp_path / "ok.toml"
    good.write_text("[paths]\nstall_min = 0.2\n\n[wire]\nmessage_size = 8192\n")
    assert replay(tmp_path, "--config", str(good), "--policies", "minrtt", "--no-plots") == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[paths]\nstall_min = -1\n")
    capsys.readouterr()
    assert replay(tmp_path, "--config", str(bad), "--policies", "minrtt") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stall_min" in err[0]


def test_engine_runs_ties_in_scheduling_order():
    from bench.sim.engine import Engine

    eng = Engine()
    seen = []
    for tag in "abc":
        eng.at(1.0, lambda t, x: seen.append((t, x)), tag)
    eng.at(0.5, lambda t, x: eng.at(1.0, lambda t2, y: seen.append((t2, y)), "d"), None)
    eng.at(2.5, lambda t, x: seen.append((t, x)), "late")
    eng.run(2.0)
    assert seen == [(1.0, "a"), (1.0, "b"), (1.0, "c"), (1.0, "d")]
    assert eng.now == 2.0


def test_replay_takes_a_day_on_a_rail_line(tmp_path, capsys):
    out = tmp_path / "rep"
    args = ["bench", "replay", "--rail", "line:3:day:2", "--duration", "6", "--out", str(out)]
    assert cli.main([*args, "--workload", "bulk", "--policies", "minrtt", "--no-progress"]) == 0
    data = json.loads((out / "report.json").read_text())
    assert data["results"]["minrtt"]["goodput_mbps"] > 0
    assert "line:3:day:2" in (out / "report.md").read_text()
    capsys.readouterr()
    assert cli.main(["bench", "replay", "--rail", "line:3:day:0", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line:<seed>:day:<n>" in err[0]
