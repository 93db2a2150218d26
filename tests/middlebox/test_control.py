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


def test_drain_and_resume_over_the_control_socket_and_the_command(pair, echo, tmp_path, capsys):
    from middlebox import cli, control
    from middlebox.session import mux as m

    node, gw, _ = pair()
    gw.run_until(lambda: gw.paths_up() == 2)
    sock = str(tmp_path / "node.sock")
    cid = gw.open(echo.port, b"still served", shutdown=False)
    gw.run_until(lambda: bytes(gw.conns[cid]["got"]) == b"still served")
    assert cli.main(["node", "drain", "--socket", sock]) == 0
    assert "node draining: 1 gateway session(s), 1 connection(s) remain" in capsys.readouterr().out
    gw.run_until(lambda: gw.up.counters.get("drains_heard", 0) == 2)  # one per up path
    cid2 = gw.open(echo.port, b"a draining node still serves")  # a gateway that has not moved
    gw.run_until(lambda: any(isinstance(e, m.Closed) for e in gw.conns[cid2]["events"]))
    assert bytes(gw.conns[cid2]["got"]) == b"a draining node still serves"
    st = control.query(sock)
    assert st["drain"]["draining"] and st["drain"]["drain_messages"] == 2
    assert "drain: " in control.render(st)
    assert control.query(sock, "resume")["draining"] is False
    assert control.query(sock, "bogus")["error"].startswith("unknown request b'bogus'; try")
    assert cli.main(["node", "drain"]) != 0
    assert "give --socket PATH or --config FILE" in capsys.readouterr().err
    assert cli.main(["node"]) != 0
    assert "--config FILE is required" in capsys.readouterr().err


def test_a_path_accepted_while_the_node_drains_is_told_at_once(pair, tmp_path):
    import time

    from middlebox import control

    node, gw, gw_cfg = pair()
    gw.run_until(lambda: gw.paths_up() == 2)
    control.query(str(tmp_path / "node.sock"), "drain")
    gw.run_until(lambda: gw.up.counters.get("drains_heard", 0) == 2)
    gw.up.cut(next(iter(gw.up.paths)), time.monotonic())
    gw.run_until(lambda: gw.paths_up() == 2 and gw.up.counters.get("drains_heard", 0) == 3)
