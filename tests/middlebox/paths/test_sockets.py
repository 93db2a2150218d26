import random
import socket
import threading

import pytest

from middlebox.config import CarrierConfig, PathConfig
from middlebox.paths.sockets import (
    TCP_CONGESTION,
    TCP_NOTSENT_LOWAT,
    TCP_USER_TIMEOUT,
    PathOptions,
    PathSetupError,
    ReconnectPolicy,
    TcpInfo,
    connect_path,
    open_path_socket,
    tcp_info,
)


@pytest.fixture
def sink():
    """A loopback listener that reads and discards everything; yields its port."""
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(10)
    received = []

    def run():
        try:
            conn, _ = lsock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            n = 0
            while chunk := conn.recv(1 << 16):
                n += len(chunk)
            received.append(n)

    t = threading.Thread(target=run)
    t.start()
    try:
        yield lsock.getsockname()[1], received
    finally:
        lsock.close()
        t.join(15)


def test_options_applied_on_bound_loopback_path(sink):
    port, received = sink
    opts = PathOptions(
        interface="lo",
        source="127.0.0.1",
        congestion_control="bbr",
        notsent_lowat=16384,
        keepalive_idle=7,
        keepalive_interval=3,
        keepalive_count=4,
        user_timeout=2.5,
    )
    with connect_path(opts, "127.0.0.1", port, timeout=5) as s:
        assert s.getsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, 16).rstrip(b"\0") == b"bbr"
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT) == 16384
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
        assert s.getsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT) == 2500
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\0") == b"lo"
        assert s.getsockname()[0] == "127.0.0.1"


def test_tcp_info_on_a_real_connection(sink):
    port, received = sink
    with connect_path(PathOptions(congestion_control="cubic"), "127.0.0.1", port, 5) as s:
        before = tcp_info(s)
        assert before.state_name == "ESTABLISHED"
        assert before.size >= 200  # this kernel reports at least up to the rate fields
        assert before.bytes_acked <= 1  # nothing sent yet (the SYN counts as 1 on some kernels)
        payload = b"x" * (4 << 20)
        s.sendall(payload)
        info = None
        for _ in range(200):  # loopback drains fast; bounded wait for the last ACK
            info = tcp_info(s)
            if info.unacked == 0 and info.notsent_bytes == 0:
                break
            threading.Event().wait(0.01)
        assert info.bytes_acked - before.bytes_acked >= len(payload)
        assert info.bytes_sent >= len(payload)
        assert info.data_segs_out > 0 and info.segs_out > before.segs_out
        assert 0 < info.srtt_us < 1_000_000  # loopback: well under a second
        assert 0 < info.min_rtt_us <= info.srtt_us + info.rttvar_us
        assert 0 < info.snd_mss <= 65535 and info.snd_cwnd > 0
        assert info.cwnd_bytes == info.snd_cwnd * info.snd_mss
        assert info.delivery_rate > 0 and info.pacing_rate > 0
        assert info.lost == 0 and info.unacked == 0


def test_tcp_info_parse_short_struct_reads_missing_fields_as_zero():
    full = TcpInfo.parse(bytes(range(256)) * 2)
    short = TcpInfo.parse(bytes(range(104)))  # an old kernel: nothing after total_retrans
    assert short.size == 104
    assert short.total_retrans == full.total_retrans != 0
    assert short.pacing_rate == 0 and short.bytes_acked == 0 and full.bytes_acked != 0


def test_setup_errors_are_clear():
    with pytest.raises(PathSetupError, match="interface 'nosuchif0'.*no such interface"):
        open_path_socket(PathOptions(interface="nosuchif0"))
    with pytest.raises(PathSetupError, match="congestion control 'nosuchcc'"):
        open_path_socket(PathOptions(congestion_control="nosuchcc"))
    with pytest.raises(PathSetupError, match="source address 192.0.2.77"):
        open_path_socket(PathOptions(source="192.0.2.77"))
    with pytest.raises(PathSetupError, match="IPv6"):
        open_path_socket(PathOptions(source="127.0.0.1"), socket.AF_INET6)


def test_options_from_config():
    paths = PathConfig(notsent_lowat=8192, user_timeout=4.0)
    c = CarrierConfig(name="a", interface="wwan0", address="10.0.0.2", congestion_control="cubic")
    o = PathOptions.for_carrier(c, paths)
    assert (o.interface, o.source, o.congestion_control) == ("wwan0", "10.0.0.2", "cubic")
    assert (o.notsent_lowat, o.user_timeout) == (8192, 4.0)
    assert PathOptions.for_node(paths).interface == ""


# -- reconnect policy ----------------------------------------------------------------------


def test_backoff_grows_caps_and_jitters_within_bounds():
    p = ReconnectPolicy(initial=0.5, maximum=8.0, jitter=0.5, stable=10, rng=random.Random(7))
    assert p.due(0.0)  # first dial at once
    now, delays = 0.0, []
    for _ in range(10):
        at = p.failed(now)
        delays.append(at - now)
        assert not p.due(at - 1e-9) and p.due(at)
        now = at
    bases = [min(8.0, 0.5 * 2**i) for i in range(10)]
    for d, base in zip(delays, bases, strict=True):
        assert base * 0.5 <= d <= base
    assert max(delays) <= 8.0 and delays[-1] >= 4.0  # capped, and stays near the cap


def test_backoff_is_deterministic_for_a_seed_and_differs_across_seeds():
    def run(seed):
        p = ReconnectPolicy(rng=random.Random(seed))
        return [p.failed(float(i)) for i in range(6)]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_reset_only_after_stable_connection():
    p = ReconnectPolicy(initial=1.0, maximum=100, jitter=0.0, stable=10, rng=random.Random(0))
    assert [p.failed(0) - 0 for _ in range(3)] == [1.0, 2.0, 4.0]
    p.connected(100)
    assert p.next_attempt is None and not p.due(1000)
    assert p.failed(105) - 105 == 8.0  # broke after 5 s: still climbing (flapping carrier)
    p.connected(120)
    assert p.failed(130) - 130 == 1.0  # up for 10 s: start again from the first delay
    assert p.failed(131) - 131 == 2.0


def test_zero_jitter_and_full_jitter_ranges():
    p = ReconnectPolicy(initial=2.0, maximum=2.0, jitter=1.0, rng=random.Random(3))
    samples = [p.delay(5) for _ in range(1000)]
    assert 0.0 <= min(samples) < 0.2 and 1.8 < max(samples) <= 2.0
    with pytest.raises(ValueError):
        ReconnectPolicy(jitter=1.5)


def test_policy_from_config():
    p = ReconnectPolicy.from_config(PathConfig(reconnect_initial=0.3, reconnect_max=0.1))
    assert p.initial == 0.3 and p.maximum == 0.3  # a cap below the first delay is raised


def test_each_option_is_applied_on_its_own():
    """A congestion control the kernel lacks fails alone: keepalive, user timeout,
    NODELAY and NOTSENT_LOWAT are still set, and the failure is reported by name."""
    from middlebox.paths.sockets import configure

    opts = PathOptions(congestion_control="nosuchcc", notsent_lowat=20000, user_timeout=3.0)
    with socket.socket() as s:
        failed = configure(s, opts)
        assert [name for name, _ in failed] == ["congestion_control"]
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT) == 20000
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == opts.keepalive_idle
        assert s.getsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT) == 3000
