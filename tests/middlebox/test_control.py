"""The control socket: ``mpproxy status`` of a node on loopback (harness: conftest.py)."""


def test_status_over_control_socket(pair, echo, tmp_path):
    from middlebox import control

    node, gw, _ = pair()
    gw.run_until(lambda: gw.paths_up() == 2)
    st = control.query(str(tmp_path / "node.sock"))
    assert st["role"] == "node" and st["sessions"][0]["gateway"] == "train-1"
    assert len(st["sessions"][0]["paths"]) == 2
    assert "train-1" in control.render(st)


def test_render_shows_the_udp_counters() -> None:
    from middlebox import control

    page = control.render({"role": "gateway", "id": "g", "udp": {"flows": 3, "duplicates": 7}})
    assert "udp: duplicates=7 flows=3" in page
