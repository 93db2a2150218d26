"""A 5G drive log's uplink: what the testbed assumes, and that a download is not starved.

The logs record traffic, not capacity: on a downloading row ``UL_bitrate`` is the
download's own ACKs. Played as the uplink it starved every download over such a log
(a single TCP download got 9.5 Mbit/s where the log showed 50-200 Mbit/s).
"""

from __future__ import annotations

import datetime as dt
import itertools
import os

import numpy as np
import pytest

from netns import traces as tr
from netns import tracespec
from netns.errors import TraceError

FIVEG = "5g-driving/B_2020.01.16_09.56.56.csv"
# seconds 1286-1296 of that log: 16 Mbit/s, then ten seconds at 34-43 Mbit/s, no outage
STRETCH = (1286, 1297)
TCP_PAYLOAD_SHARE = 1448 / 1500
_n = itertools.count()


def stretch_csv(src, dst, first: int, end: int) -> None:
    """The rows of seconds [first, end) of a drive log, as a log of its own."""
    lines = src.read_text().splitlines()
    t0 = dt.datetime.strptime(lines[1].split(",")[0], "%Y.%m.%d_%H.%M.%S")
    keep = [lines[0]]
    for line in lines[1:]:
        t = dt.datetime.strptime(line.split(",")[0], "%Y.%m.%d_%H.%M.%S")
        if first <= (t - t0).total_seconds() < end:
            keep.append(line)
    dst.write_text("\n".join(keep) + "\n")


def test_uplink_is_the_assumed_capacity_while_the_downlink_delivers(traces, tmp_path):
    path = traces / FIVEG
    log = tr.read_5g_csv(path)
    down = log.delivery("down")
    up = log.delivery("up")
    per_s_up = up.counts.reshape(-1, 1000).sum(axis=1) * tr.OPPORTUNITY_BYTES * 8
    # the ACK traffic of the log (~130 kbit/s) is not what is played
    ul_logged = [s.ul_kbps for s in log.seconds if s.ul_kbps is not None]
    assert np.mean(ul_logged) < 1000
    # every second the downlink delivers (missing values held) offers the assumed uplink,
    # the others nothing
    held, last = [], 0.0
    for sec in log.seconds:
        last = sec.dl_kbps if sec.dl_kbps is not None else last
        held.append(last)
    on = np.array(held) > 0
    assert on.sum() > 0.8 * len(on) and (~on).sum() > 0
    assert np.allclose(per_s_up[on], tr.FIVEG_UPLINK_MBIT * 1e6, rtol=0.01)
    assert (per_s_up[~on] == 0).all()
    # a spec may say what the uplink is
    slow = tracespec.load(f"{path}:ul=5", "up")
    assert slow.mean_rate_bps() == pytest.approx(up.mean_rate_bps() / 4, rel=0.01)
    assert tracespec.load(f"{path}:ul=5", "down").counts.sum() == down.counts.sum()
    with pytest.raises(TraceError, match="ul= takes a rate"):
        tracespec.load(f"{path}:ul=fast", "up")


@pytest.mark.netns
@pytest.mark.slow
def test_single_tcp_download_over_a_drive_log_is_not_ack_starved(traces, tmp_path):
    """Over ten seconds without an outage a plain TCP download gets at least 80 % of what
    the log's downlink offered in those seconds."""
    from netns import baselines
    from netns.topology import CarrierSpec, Testbed, TestbedSpec

    log = tmp_path / "stretch.csv"
    stretch_csv(traces / FIVEG, log, *STRETCH)
    spec = TestbedSpec(carriers=(CarrierSpec(str(log), delay_ms=20, queue_packets=256),))
    tid = f"u{os.getpid() % 10000}{next(_n)}"
    with Testbed(spec, tid=tid, state_dir=tmp_path / "state") as tb:
        baselines.start_server(tb)
        r = baselines.download(tb, 0, seconds=8, cc="bbr")
        offered = tb.capacity_bps([0], r.start, r.seconds)
    share = r.goodput_mbit * 1e6 / (offered * TCP_PAYLOAD_SHARE)
    print(f"download {r.goodput_mbit:.1f} Mbit/s of {offered / 1e6:.1f} offered: {share:.0%}")
    assert share >= 0.80
