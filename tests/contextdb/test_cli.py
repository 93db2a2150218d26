import json

import pytest

from middlebox.cli import main

from .test_traces import row, write


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def csv_dir(tmp_path):
    d = tmp_path / "runs"
    d.mkdir()
    rows = [
        row(s % 60, cell="12", rsrp=str(-90 - s % 7), dl=str(10000 + 100 * s)) for s in range(60)
    ]
    rows = [r.replace("10.16.", f"10.{16 + i // 60}.") for i, r in enumerate(rows)]
    write(d, rows, name="B_2019.12.14_10.16.00.csv")
    return d


def test_import_query_stats(capsys, tmp_path, csv_dir):
    db = str(tmp_path / "ctx.sqlite")
    code, out, _ = run(capsys, "contextdb", "import", "--db", db, str(csv_dir))
    assert code == 0 and "60 rows" in out and "imported 1 file(s)" in out
    code, out, _ = run(capsys, "contextdb", "stats", "--db", db)
    assert code == 0 and "carrier B: 1 cells" in out
    code, out, _ = run(capsys, "contextdb", "stats", "--db", db, "--json")
    assert json.loads(out)["carriers"]["B"]["12"]["windows"] > 40
    query = ["contextdb", "query", "--db", db, "--carrier", "B", "--rsrp=-90,-91,-92,-93,-94"]
    code, out, _ = run(capsys, *query, "--cell", "12", "--json")
    p = json.loads(out)
    assert code == 0 and p["cell"] == "12" and 10e6 < p["throughput_mean"] < 20e6
    code, out, _ = run(capsys, *query, "--cell", "12")
    assert code == 0 and "confidence" in out and "Mbit/s" in out
    code, out, _ = run(capsys, *query, "--cell", "12", "--recent-mbit", "15", "--json")
    with_recent = json.loads(out)
    assert code == 0 and with_recent["nearest_distance"] > p["nearest_distance"]
    code, out, _ = run(capsys, *query, "--cell", "77")
    assert code == 0 and out.startswith("no prediction")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["query", "--carrier", "B", "--cell", "1", "--rsrp=-90,x"], "--rsrp"),
        (["query", "--carrier", "B", "--cell", "1", "--rsrp=-90,-91"], "at least 5 values"),
        (
            [
                "query",
                "--carrier",
                "B",
                "--cell",
                "1",
                "--rsrp=-90,-91,-92,-93,-94",
                "--recent-mbit=-1",
            ],
            "--recent-mbit",
        ),
        (["stats"], "no such context database"),
        (["import", "nowhere.csv"], "no such file"),
    ],
)
def test_user_errors_are_one_line(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    if argv[0] == "query":
        run(capsys, "contextdb", "import", str(_one_file(tmp_path)))
    code, out, err = run(capsys, "contextdb", *argv)
    assert code == 2
    assert err.startswith("mpproxy: error:") and message in err and "Traceback" not in err


def _one_file(tmp_path):
    return write(tmp_path, [row(s) for s in range(20)], name="one.csv")


def test_malformed_import_names_file_and_line(capsys, tmp_path):
    bad = write(tmp_path, [row(0), row(1, dl="lots")], name="bad.csv")
    code, _, err = run(capsys, "contextdb", "import", "--db", str(tmp_path / "x.sqlite"), str(bad))
    assert code == 2 and "bad.csv:3: column DL_bitrate" in err


def test_evaluate_reports_all_baselines(capsys, traces):
    d = traces / "5g-driving"
    train = sorted(str(p) for p in d.glob("B_2019.12.16_1*.csv"))
    test = sorted(str(p) for p in d.glob("B_2020.01.16_12*.csv"))
    if not train or not test:
        pytest.skip("expected bundled runs not found")
    code, out, _ = run(
        capsys, "contextdb", "evaluate", "--train", *train, "--test", *test, "--json"
    )
    res = json.loads(out)
    assert code == 0 and res["scored"] > 100
    assert set(res["mae_bps"]) == {"contextdb", "rsrp only", "last value", "cell mean", "fused"}
    assert all(v > 0 for v in res["mae_bps"].values())


def test_evaluate_leave_one_out_and_argument_errors(capsys, tmp_path):
    a = write(tmp_path, [row(s, rsrp=str(-90 - s % 5)) for s in range(50)], name="a.csv")
    b = write(tmp_path, [row(s, rsrp=str(-91 - s % 5)) for s in range(50)], name="b.csv")
    code, out, _ = run(capsys, "contextdb", "evaluate", "--leave-one-out", str(a), str(b))
    assert code == 0 and "all (window-weighted)" in out
    assert out.count("\na ") + out.count("\nb ") == 2
    code, _, err = run(capsys, "contextdb", "evaluate", "--train", str(a))
    assert code == 2 and "--train and --test are required" in err
    code, _, err = run(capsys, "contextdb", "evaluate", "--leave-one-out", str(a))
    assert code == 2 and "at least two runs" in err


def _line_days(tmp_path, days):
    """Days on a short rail line as the testbed writes them (CSV + exactly timed events)."""
    from netns import rail

    line = rail.make_line(rail.LineParams(seed=3, length_km=12.0))
    out = []
    for d in days:
        where = tmp_path / f"day{d:02d}"
        where.mkdir()
        route = rail.line_day(line, d)
        for k, c in enumerate(route.carriers):
            rail.write_csv(route, k, where / f"{c.name}.csv")
            rail.write_events(route, k, where / f"{c.name}.events")
        out.append(str(where))
    return out


def test_evaluate_on_a_line_with_position_as_a_key(capsys, tmp_path):
    days = _line_days(tmp_path, range(1, 6))
    args = ["contextdb", "evaluate", "--position", "--train", *days[:4], "--test", days[4]]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "position as a key (odometer)" in out
    assert "skill score vs the cell base rate" in out and "dark spells > 2 s" in out
    code, out, _ = run(capsys, *args, "--json")
    pos = json.loads(out)["position"]
    assert pos["scored"] > 500 and not pos["projected"]
    assert pos["mae_bps"]["position"] < pos["mae_bps"]["last value"]
    assert pos["brier"]["position"] < pos["brier"]["cell base rate"]
    # a broken events file is the user's: one line
    (tmp_path / "day05" / "rail0.events").write_text("Seconds,Gap,FromCell,ToCell\nx,1,2,3\n")
    code, _, err = run(capsys, *args)
    assert code == 2 and "rail0.events:2: column Seconds: not a number" in err
