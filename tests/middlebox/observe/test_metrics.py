"""The metrics collector and the listener without namespaces: series names, labels and
types from a scripted status dict, outages and goodput from successive snapshots, and
the HTTP routes on loopback."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from middlebox import config, observe
from middlebox.observe import metrics, web


def path(name, state="up", bytes_in=0, bytes_out=0, rtt_ms=20.0, dup=0, resent=0):
    return {
        "id": 1, "name": name, "carrier": name.split("/")[0], "state": state,
        "rtt_ms": rtt_ms, "probe_rtt_ms": None, "rate_mbit": 8.0, "lost": 3, "cwnd": 10,
        "queued": 100, "bytes_in": bytes_in, "bytes_out": bytes_out, "sent_bytes": bytes_out,
        "transport": {"sent_bytes": bytes_out, "sent_messages": 5, "stall_resends": 1,
                      "resent_messages": 2, "resent_bytes": resent, "duplicates_received": 1,
                      "duplicate_bytes_received": dup, "acked": 4, "acked_late": 0},
        "kernel": {"bytes_retrans": 1448, "total_rto": 0, "min_rtt_ms": 10.0},
        "ups": 1, "failures": 0,
    }  # fmt: skip


def gateway_status(paths, clients=None):
    return {
        "role": "gateway", "id": "train-1", "uptime": 12.5,
        "sessions": [{
            "gateway": "train-1", "session": "abc", "paths": paths,
            "connections": {"1": {"state": "open"}, "2": {"state": "open"}},
            "counters": {"messages_sent": 7, "open_over_limit": 2, "path_failures": 1},
            "buffered_bytes": 4096, "memory": {"held": 100, "limit": 1000},
            "context": {"carrier0": {"cell_id": "310-1", "rsrp": -95.5,
                                     "position": [52.1, 13.2], "down_mbit": 8.0,
                                     "up_mbit": 1.0, "age_s": 0.4,
                                     "prediction": {"throughput_mbit": 16.0,
                                                    "confidence": 0.5}}},
        }],
        "flows": {"tracked": 3, "sources": 2, "overflow": 1, "flows_proxy": 3},
        "endpoint": {"connections": 2, "half_open": 0, "refused_full": 4, "retransmits": 9},
        "capture": {"frames_in": 10, "frames_out": 11, "send_errors": 0},
        "counters": {"opened": 2},
        "context": {"seconds": 5, "flush_ms_max": 0.5, "carriers": {}},
        "limits": {"memory_budget": 1 << 20},
        "scheduler": {"policy": "context", "decisions": 10, "duplicated": 3, "failed": False},
        "clients": clients or {"10.1.0.2": 2},
    }  # fmt: skip


def parse(snapshot):
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry(auto_describe=False)
    reg.register(metrics.SnapshotCollector(lambda: snapshot))
    text = generate_latest(reg).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}, text


def samples(fams, name, suffix=""):
    return {
        tuple(sorted(s.labels.items())): s.value
        for s in fams[name].samples
        if s.name == name + suffix
    }


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_series_names_labels_and_types_follow_the_conventions():
    state = {"st": gateway_status([path("carrier0/0", bytes_in=1000, bytes_out=500)])}
    wall = Clock()
    pub = metrics.Publisher(lambda: state["st"], interval=1.0, wall=wall)
    pub.tick(0.0)
    state["st"] = gateway_status([path("carrier0/0", bytes_in=3000, bytes_out=1500, dup=500)])
    wall.t += 1
    pub.tick(1.0)
    fams, text = parse(pub.snapshot)
    types = {n: f.type for n, f in fams.items()}
    for name, f in fams.items():
        assert name.startswith("mpproxy"), name
        if f.type == "counter":  # the parser strips _total; the text has it
            assert f"{name}_total" in text
    assert types["mpproxy_path_received_bytes"] == "counter"
    assert types["mpproxy_path_rtt_seconds"] == "gauge"
    assert types["mpproxy_path_outage_duration_seconds"] == "histogram"
    assert types["mpproxy_carrier_cell_info"] == "gauge"  # an info metric in text format
    lab = (("carrier", "carrier0"), ("gateway", "train-1"), ("path", "carrier0/0"))
    assert samples(fams, "mpproxy_path_received_bytes", "_total") == {lab: 3000.0}
    assert samples(fams, "mpproxy_path_rtt_seconds") == {lab: pytest.approx(0.02)}
    assert samples(fams, "mpproxy_path_delivery_rate_bytes_per_second") == {lab: 1e6}
    assert samples(fams, "mpproxy_path_kernel_retransmitted_segments", "_total") == {lab: 3}
    assert samples(fams, "mpproxy_path_stall_resends", "_total") == {lab: 1}
    goodput = samples(fams, "mpproxy_path_goodput_bytes_per_second")
    assert goodput[(*lab[:1], ("direction", "in"), *lab[1:])] == 1500.0  # 2000 less 500 copies
    assert goodput[(*lab[:1], ("direction", "out"), *lab[1:])] == 1000.0
    cell = samples(fams, "mpproxy_carrier_cell_info")
    assert cell == {(("carrier", "carrier0"), ("cell", "310-1"), ("gateway", "train-1")): 1.0}
    assert list(samples(fams, "mpproxy_carrier_rsrp_dbm").values()) == [-95.5]
    assert list(samples(fams, "mpproxy_carrier_predicted_bytes_per_second").values()) == [2e6]
    assert samples(fams, "mpproxy_scheduler_decisions", "_total") == {
        (("gateway", "train-1"), ("policy", "context")): 10.0
    }
    assert list(samples(fams, "mpproxy_scheduler_duplicated_decisions", "_total").values()) == [3]
    assert samples(fams, "mpproxy_client_connections") == {(("client", "10.1.0.2"),): 2.0}
    assert samples(fams, "mpproxy_connections") == {
        (("gateway", "train-1"), ("state", "open")): 2.0
    }
    limits = samples(fams, "mpproxy_limit_hits", "_total")
    assert limits[(("area", "session"), ("gateway", "train-1"), ("limit", "open_over_limit"))] == 2
    assert limits[(("area", "flows"), ("gateway", "train-1"), ("limit", "overflow"))] == 1
    assert limits[(("area", "endpoint"), ("gateway", "train-1"), ("limit", "refused_full"))] == 4
    errors = samples(fams, "mpproxy_errors", "_total")
    assert errors[(("area", "session"), ("error", "path_failures"), ("gateway", "train-1"))] == 1
    events = samples(fams, "mpproxy_events", "_total")
    assert events[(("area", "endpoint"), ("event", "retransmits"), ("gateway", "train-1"))] == 9
    # sizes are gauges, never counters; floats of the status (flush times) are not counters
    assert not any(dict(k).get("event") in ("tracked", "flush_ms_max") for k in events)
    assert samples(fams, "mpproxy_table_entries")[(("table", "flows_tracked"),)] == 3


def test_outages_are_timed_and_land_in_the_histogram():
    states = iter(["up", "down", "down", "down", "up", "up"])
    pub = metrics.Publisher(lambda: gateway_status([path("carrier0/0", state=next(states))]))
    for now in range(4):
        pub.publish(float(now))
    fams, _ = parse(pub.snapshot)
    lab = (("carrier", "carrier0"), ("gateway", "train-1"), ("path", "carrier0/0"))
    assert samples(fams, "mpproxy_path_up") == {lab: 0.0}
    assert samples(fams, "mpproxy_path_outage_current_seconds") == {lab: 2.0}
    pub.publish(4.0)  # up again after 3 s
    fams, _ = parse(pub.snapshot)
    assert samples(fams, "mpproxy_path_outage_duration_seconds", "_count") == {lab: 1.0}
    assert samples(fams, "mpproxy_path_outage_duration_seconds", "_sum") == {lab: 3.0}
    buckets = {
        dict(k)["le"]: v
        for k, v in samples(fams, "mpproxy_path_outage_duration_seconds", "_bucket").items()
    }
    assert buckets["2.0"] == 0 and buckets["5.0"] == 1 and buckets["+Inf"] == 1
    assert samples(fams, "mpproxy_path_outage_current_seconds") == {lab: 0.0}
    doc = pub.snapshot.document()
    rows = doc["history"]["train-1|carrier0/0"]
    assert [r[4] for r in rows] == [1, 0, 0, 0, 1]
    assert doc["outages"]["train-1|carrier0/0"]["count"] == 1


def test_node_series_carry_the_gateway_of_each_session():
    st = {
        "role": "node", "id": "node-1", "uptime": 3.0,
        "sessions": [{"gateway": "train-7", "paths": [
            {k: v for k, v in path("carrier1/0").items() if k not in ("carrier", "cwnd")}],
            "connections": {"1": {"state": "open"}}, "counters": {"reorder_overflow": 1},
            "buffered_bytes": 0, "memory": {"held": 0, "limit": 10},
            "scheduler": {"policy": "context", "decisions": 4, "duplicated": 1},
            "context": {}}],
        "counters": {"handshakes_rejected": 5, "opened": 1},
        "admission": {"gateways_refused": 0, "revoked": {"file": "x", "ids": 0}},
        "memory": {"held": 1, "limit": 2}, "handshaking": 0,
    }  # fmt: skip
    pub = metrics.Publisher(lambda: st)
    pub.publish(0.0)
    fams, _ = parse(pub.snapshot)
    lab = (("carrier", "carrier1"), ("gateway", "train-7"), ("path", "carrier1/0"))
    assert lab in samples(fams, "mpproxy_path_rtt_seconds")
    assert samples(fams, "mpproxy_client_connections") == {(("client", "train-7"),): 1.0}
    limits = samples(fams, "mpproxy_limit_hits", "_total")
    assert limits[(("area", "process"), ("gateway", ""), ("limit", "handshakes_rejected"))] == 5
    assert limits[(("area", "session"), ("gateway", "train-7"), ("limit", "reorder_overflow"))]
    held = samples(fams, "mpproxy_memory_held_bytes")
    assert held[(("budget", "process"), ("gateway", ""))] == 1.0
    assert "mpproxy_path_cwnd_segments" not in {
        s.name for f in fams.values() for s in f.samples
    }  # the node has no cwnd in its path dict: no sample rather than a made-up zero


def test_two_paths_of_one_name_get_distinct_label_sets():
    old, new = path("carrier0/0", state="down"), path("carrier0/0")
    new["id"] = 9
    pub = metrics.Publisher(lambda: gateway_status([old, new]))
    pub.publish(0.0)
    fams, _ = parse(pub.snapshot)  # the parser accepts it: no duplicate series
    got = {dict(k)["path"] for k in samples(fams, "mpproxy_path_up")}
    assert got == {"carrier0/0", "carrier0/0#9"}
    doc = pub.snapshot.document()
    assert [label for _, label, _ in doc["paths"]] == ["carrier0/0", "carrier0/0#9"]
    assert set(doc["history"]) == {"train-1|carrier0/0", "train-1|carrier0/0#9"}


def test_nothing_before_the_first_publication():
    fams, text = parse(metrics.EMPTY)
    assert fams == {} and text == ""


@pytest.fixture
def server():
    st = gateway_status([path("carrier0/0", rtt_ms=math.nan)])
    pub = metrics.Publisher(
        lambda: st, track=lambda since: {"carrier0": [(5.0, 52.0, 13.0, math.nan)]}
    )
    pub.publish(0.0)
    srv = web.MetricsServer("127.0.0.1:0", pub)
    try:
        yield f"http://127.0.0.1:{srv.address[1]}"
    finally:
        srv.close()


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.headers, r.read()


def test_listener_serves_metrics_json_page_and_assets(server):
    code, headers, body = get(server + "/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert "mpproxy_path_up" in names
    code, headers, body = get(server + "/status.json")
    doc = json.loads(body)  # strict JSON: a NaN became null
    assert doc["status"]["sessions"][0]["paths"][0]["rtt_ms"] is None
    assert doc["track"] == {"carrier0": [[5.0, 52.0, 13.0, None]]}
    assert doc["clients"] == [["10.1.0.2", 2]]
    assert ["train-1", "session", "limit", "open_over_limit", 2] in doc["alerts"]
    code, headers, page = get(server + "/")
    assert (
        b'src="/static/page.js"' in page
        and "default-src 'self'" in headers["Content-Security-Policy"]
    )
    assert b"http" not in page.replace(b"http-equiv", b"")  # nothing from elsewhere
    for asset in ("page.js", "page.css"):
        code, _, body = get(server + "/static/" + asset)
        assert (
            code == 200 and body and b"://" not in body.replace(b"http://www.w3.org/2000/svg", b"")
        )
    with pytest.raises(urllib.error.HTTPError) as e:
        get(server + "/static/../web.py")
    assert e.value.code == 404


def test_address_in_use_is_one_clear_error(server):
    port = server.rsplit(":", 1)[1]
    with pytest.raises(web.MetricsError, match=f"metrics.listen 127.0.0.1:{port}: "):
        web.MetricsServer(f"127.0.0.1:{port}", metrics.Publisher(dict))


def test_metrics_are_off_by_default_and_loopback_unless_allowed():
    assert config.Config().metrics.listen == ""
    assert observe.start(config.Config().metrics, dict) is None
    for ok in ("127.0.0.1:9464", "localhost:9464", "[::1]:9464"):
        assert config.from_dict(config.Config, {"metrics": {"listen": ok}}).metrics.listen == ok
    for bad in ("0.0.0.0:9464", "192.0.2.1:9464", "metrics.example:9464"):
        with pytest.raises(config.ConfigError, match="metrics.listen: .* not a loopback"):
            config.from_dict(config.Config, {"metrics": {"listen": bad}})
    cfg = config.from_dict(
        config.Config, {"metrics": {"listen": "0.0.0.0:9464", "allow_remote": True}}
    )
    assert cfg.metrics.allow_remote
    with pytest.raises(config.ConfigError, match="metrics.listen: must be HOST:PORT"):
        config.from_dict(config.Config, {"metrics": {"listen": "9464"}})


def test_every_series_is_documented():
    from pathlib import Path

    doc = (Path(__file__).parents[3] / "docs" / "metrics.md").read_text()
    st = gateway_status([path("carrier0/0")])
    st["sessions"][0]["scheduler"] = st["scheduler"]
    pub = metrics.Publisher(lambda: st)
    pub.publish(0.0)
    names = set()
    for fam in metrics.families(pub.snapshot):
        suffix = {"counter": "_total", "info": "_info"}.get(fam.type, "")
        names.add(fam.name + suffix)
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"add to docs/metrics.md: {missing}"


def test_fleet_and_drain_series():
    from pathlib import Path

    st = gateway_status([path("carrier0/0")])
    st["fleet"] = {
        "chosen": "node-b", "next": None, "moves": 1, "moves_lost": 1, "moves_drain": 0,
        "node_lost_time": 3.0, "sessions": [],
        "nodes": [
            {"name": "node-b", "state": "up", "role": "chosen", "connections": 2},
            {"name": "node-a", "state": "lost", "role": "standby", "connections": 0},
        ],
    }  # fmt: skip
    st["drain"] = {"draining": True, "remaining": {"sessions": 1, "connections": 4,
                   "server_connections": 3}, "drains": 1}  # fmt: skip
    pub = metrics.Publisher(lambda: st)
    pub.publish(0.0)
    fams, _ = parse(pub.snapshot)
    state = samples(fams, "mpproxy_fleet_node_state")
    assert state[(("node", "node-a"), ("state", "lost"))] == 1.0
    assert state[(("node", "node-a"), ("state", "up"))] == 0.0
    assert samples(fams, "mpproxy_fleet_node_chosen") == {
        (("node", "node-b"),): 1.0,
        (("node", "node-a"),): 0.0,
    }
    events = samples(fams, "mpproxy_events", "_total")
    assert events[(("area", "fleet"), ("event", "moves_lost"), ("gateway", "train-1"))] == 1
    assert samples(fams, "mpproxy_node_draining") == {(): 1.0}
    left = samples(fams, "mpproxy_node_drain_remaining")
    assert left[(("what", "connections"),)] == 4.0
    doc = (Path(__file__).parents[3] / "docs" / "metrics.md").read_text()
    for name in ("mpproxy_fleet_node_state", "mpproxy_fleet_node_chosen",
                 "mpproxy_fleet_node_connections", "mpproxy_node_draining",
                 "mpproxy_node_drain_remaining"):  # fmt: skip
        assert f"`{name}`" in doc, name
