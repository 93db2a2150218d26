"""Helpers shared by the context package's tests: TCP_INFO stand-ins, a gateway
configuration with the two rail carriers, a scripted database, a loop driver."""

from __future__ import annotations

from types import SimpleNamespace

from middlebox.config import CarrierConfig, Config, ContextConfig, GatewayConfig

CARRIERS = ["rail0", "rail1"]


def info(rx=0, acked=0, segs=0, retrans=0, busy=0, srtt=0.05, app_limited=False, notsent=0):
    return SimpleNamespace(
        bytes_received=rx,
        bytes_acked=acked,
        segs_out=segs,
        total_retrans=retrans,
        busy_time_us=busy,
        srtt_us=int(srtt * 1e6),
        app_limited=app_limited,
        notsent_bytes=notsent,
    )


def gw_config(**context) -> Config:
    return Config(
        gateway=GatewayConfig(carriers=[CarrierConfig(name=c) for c in CARRIERS]),
        context=ContextConfig(**context),
    )


class StubDB:
    """Stands in for ContextDB: scripted predictions, remembers what it was asked."""

    def __init__(self, preds):
        self.preds = preds
        self.calls = []

    def predict(self, carrier, cell, window, now, recent_dl_bps=None):
        self.calls.append((carrier, cell, tuple(window), recent_dl_bps))
        return self.preds.get(carrier)


def run_command(cfg: Config, readings: int, timeout: float = 10.0):
    """A context loop whose source is ``cfg``'s helper program, run on the real clock
    until it has taken ``readings`` readings (or ``timeout``); returns the closed loop
    and its status at the end."""
    import selectors
    import time

    from middlebox.context.loop import ContextLoop

    loop = ContextLoop(cfg, clock=time.monotonic)
    sel = selectors.DefaultSelector()
    loop.attach(SimpleNamespace(on_info=None, paths={}), sel)
    try:
        end = time.monotonic() + timeout
        while loop.counters["readings"] < readings and time.monotonic() < end:
            for key, mask in sel.select(0.1):
                key.data(mask, time.monotonic())
            loop.tick(time.monotonic())
        status = loop.status(time.monotonic())
    finally:
        loop.close()
        sel.close()
    return loop, status


def drive(loop, seconds, start=100.0, rx_per_s=1_000_000):
    """Tick the loop for ``seconds`` s with both carriers receiving ``rx_per_s``."""
    keys = {c: object() for c in CARRIERS}
    for step in range(int(seconds * 5) + 1):
        now = start + step * 0.2
        for pid, c in enumerate(CARRIERS, 1):
            n = int(rx_per_s * step * 0.2)
            loop.on_info(pid, c, keys[c], info(rx=n, acked=n // 10, busy=int(step * 0.2e6)), now)
        loop.tick(now)
    return start + seconds
