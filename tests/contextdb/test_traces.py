import math

import pytest

from contextdb.errors import ContextDBError
from contextdb.traces import expand_paths, read_5g_csv

HEADER = (
    "Timestamp,Longitude,Latitude,Speed,Operatorname,CellID,NetworkMode,RSRP,RSRQ,SNR,CQI,"
    "RSSI,DL_bitrate,UL_bitrate,State,PINGAVG,PINGMIN,PINGMAX,PINGSTDEV,PINGLOSS,CELLHEX,"
    "NODEHEX,LACHEX,RAWCELLID,NRxRSRP,NRxRSRQ"
)
ROW = (
    "2019.12.14_10.16.{s:02d},-8.38,51.93,30,B,{cell},5G,{rsrp},-15,6.0,12,-90,{dl},1,"
    "{state},{ping},-,-,-,{loss},C,A,9,1,-100.0,-15.0"
)


def write(tmp_path, rows, header=HEADER, name="run.csv"):
    p = tmp_path / name
    p.write_text("\n".join([header, *rows]) + "\n")
    return p


def row(s=0, cell="12", rsrp="-99", dl="7000", state="D", ping="-", loss="-"):
    return ROW.format(s=s, cell=cell, rsrp=rsrp, dl=dl, state=state, ping=ping, loss=loss)


def test_values_units_and_missing_values_are_counted(tmp_path):
    p = write(
        tmp_path,
        [
            row(0, ping="82.0", loss="5.0"),
            row(1, cell="-", rsrp="-"),
            row(2, state="I"),
            row(3, rsrp="2147483647"),
        ],
    )
    run = read_5g_csv(p)
    assert run.rows == 4 and run.name == "run"
    s0, s1, s2, s3 = run.samples
    assert (s0.carrier, s0.cell, s0.rsrp, s0.dl_bps) == ("B", "12", -99.0, 7e6)
    assert s0.rtt == pytest.approx(0.082) and s0.loss == pytest.approx(0.05)
    assert s0.lat == 51.93 and s0.lon == -8.38
    assert s1.cell is None and math.isnan(s1.rsrp)
    assert math.isnan(s2.dl_bps)  # idle: no meaningful throughput
    assert math.isnan(s3.rsrp)  # the logger's "not reported"
    assert s1.t - s0.t == 1.0
    assert run.missing["CellID"] == 1
    assert run.missing["RSRP"] == 2
    assert run.missing["DL_bitrate (idle)"] == 1
    assert run.missing["PINGAVG"] == 3
    assert read_5g_csv(p, carrier="vodafone").samples[0].carrier == "vodafone"


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        ([row(0), row(1, rsrp="strong")], HEADER, r"run.csv:3: column RSRP: not a number"),
        ([row(0), "1,2,3"], HEADER, r"run.csv:3: expected 26 fields, found 3"),
        ([row(0).replace("2019.12.14_10", "yesterday")], HEADER, r"run.csv:2: column Timestamp"),
        ([row(0)], HEADER.replace("RSRP,", "RSRX,"), r"run.csv:1: .*missing column\(s\) RSRP"),
        ([], HEADER, r"run.csv: no data rows"),
    ],
)
def test_malformed_files_are_rejected_with_file_and_line(tmp_path, rows, header, message):
    p = write(tmp_path, rows, header)
    with pytest.raises(ContextDBError, match=message):
        read_5g_csv(p)


def test_binary_and_missing_files(tmp_path):
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ContextDBError, match="bin.csv"):
        read_5g_csv(p)
    with pytest.raises(ContextDBError, match="cannot read"):
        read_5g_csv(tmp_path / "absent.csv")
    with pytest.raises(ContextDBError, match="no such file"):
        expand_paths([str(tmp_path / "absent.csv")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ContextDBError, match="no \\*.csv files"):
        expand_paths([str(tmp_path / "empty")])


def test_bundled_runs_read_cleanly(traces):
    files = expand_paths([str(traces / "5g-driving")])
    assert len(files) >= 2
    run = read_5g_csv(files[0])
    assert run.rows == len(run.samples) > 100
    assert all(s.cell is None or s.cell.isdigit() for s in run.samples)
    assert sum(math.isfinite(s.rsrp) for s in run.samples) > 0.9 * run.rows
