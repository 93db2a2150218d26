"""Every tunable of the scheduler in one frozen dataclass.

The scheduler must not import ``middlebox``, so this module defines its own dataclass
with the same field metadata convention (``doc``, ``min``, ``max``, ``choices``) that
``middlebox/config.py`` reads; ``Config.scheduler`` there is one line pointing here, and
the strict TOML loader validates the ``[scheduler]`` section from this metadata.

Units: seconds and bytes throughout (rates in bytes per second, losses as fractions).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

POLICY_NAMES = ("context", "minrtt", "roundrobin", "redundant", "ecf", "blest")


def _opt(
    default: Any,
    doc: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    meta = {"doc": doc, "min": min, "max": max, "choices": choices}
    if isinstance(default, list):
        proto = list(default)
        return dataclasses.field(default_factory=lambda: list(proto), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class SchedulerConfig:
    """Scheduler tunables; see docs/scheduler.md for the formulas they enter."""

    policy: str = _opt(
        "context",
        "Scheduling policy: 'context' is ours (fusion + opportunistic reinjection); "
        "the others are the baselines.",
        choices=POLICY_NAMES,
    )
    # -- quality and utility (policy 'context') -------------------------------------------
    a: float = _opt(
        1e-5,
        "a in path quality f = 1/RTT + a*BW, per byte (1e-5: 1 MB/s counts like 10/s, "
        "i.e. like an RTT of 100 ms).",
        min=0.0,
        max=1.0,
    )
    a_interactive: float = _opt(
        0.0,
        "a used for the first bytes of short interactive flows (0: rank paths by delay only).",
        min=0.0,
        max=1.0,
    )
    a_bulk: float = _opt(
        0.0,
        "a used for bulk messages (past bulk_bytes; 0: rank paths by delay only, which "
        "keeps a bulk flow's bytes arriving in order while every window is kept full).",
        min=0.0,
        max=1.0,
    )
    b: float = _opt(
        1e4,
        "b: cost of an extra copy per second of path time it occupies "
        "((message + queued bytes) / BW), in utility units.",
        min=0.0,
        max=1e12,
    )
    f_data: float = _opt(
        0.0, "F for ordinary data messages (0: exactly one path).", min=0.0, max=1e12
    )
    f_bulk: float = _opt(
        0.0, "F for messages of long bulk flows (past bulk_bytes).", min=0.0, max=1e12
    )
    f_stream: float = _opt(
        0.0,
        "F for messages of streams (long-lived, application-limited connections: "
        "stream_age, stream_window).",
        min=0.0,
        max=1e12,
    )
    a_stream: float = _opt(
        0.0,
        "a used for stream messages (0: rank paths by delay; for a stream that fell "
        "behind, by when the message would arrive, RTT + bytes ahead / BW).",
        min=0.0,
        max=1.0,
    )
    f_interactive: float = _opt(
        1e3,
        "F for the first bytes (interactive_bytes) of flows to interactive ports (1e4 "
        "copied a tenth of the node's web responses once the node knew their port).",
        min=0.0,
        max=1e12,
    )
    f_reinjection: float = _opt(1e5, "F for reinjected messages.", min=0.0, max=1e12)
    f_control: float = _opt(
        1e5, "F for connection control messages (OPEN, FIN, RST).", min=0.0, max=1e12
    )
    f_high: float = _opt(
        1e5, "F for messages of connections in a high priority class.", min=0.0, max=1e12
    )
    high_priority: int = _opt(
        1, "Priority classes >= this value are 'high' (0 is ordinary).", min=1, max=255
    )
    loss_floor: float = _opt(
        0.01,
        "Smallest loss used for utilities and delivery probabilities: a copy on a cellular "
        "path never arrives with certainty.",
        min=0.0,
        max=0.5,
    )
    queue_delay: bool = _opt(
        True,
        "Discount f by RTT / (RTT + (queued + size) / BW): a path with bytes waiting is "
        "worth less, so load spreads once the best path's queue builds up. Not applied "
        "to bulk messages.",
    )
    # -- connection classes -----------------------------------------------------------------
    interactive_ports: list[int] = _opt(
        [80, 443, 8080, 8443],
        "Destination ports whose flows are treated as interactive (web).",
    )
    interactive_bytes: int = _opt(
        128 << 10,
        "Bytes at the start of an interactive flow that are favoured (f_interactive).",
        min=0,
        max=1 << 30,
    )
    bulk_bytes: int = _opt(
        1 << 20,
        "A flow that has carried this many bytes is bulk (f_bulk, per-client fairness).",
        min=1,
        max=1 << 40,
    )
    stream_age: float = _opt(
        10.0,
        "A connection this old (s) whose sender was application-limited within "
        "stream_window is a stream (live video, audio): f_stream, a_stream, no bulk "
        "fairness.",
        min=0.0,
        max=3600.0,
    )
    stream_window: float = _opt(
        30.0,
        "How recently (s) a stream's sender must have run out of bytes to send (long, so "
        "a stream that falls behind when capacity is short keeps its class).",
        min=0.0,
        max=3600.0,
    )
    stream_behind: int = _opt(
        256 << 10,
        "A stream with more than this many bytes waiting to be sent has fallen behind: "
        "its messages go where they arrive first (drain-time discount); below it, by "
        "delay alone, as bulk.",
        min=0,
        max=1 << 40,
    )
    light_load_bytes: int = _opt(
        64 << 10,
        "While the best path has at most this many queued bytes the load is light: bulk "
        "flows of all clients share it without fairness steering.",
        min=0,
        max=1 << 30,
    )
    fair_window: float = _opt(
        5.0,
        "Time constant (s) of the per-client byte accounting used for bulk fairness.",
        min=0.01,
        max=3600.0,
    )
    fair_quantum: int = _opt(
        64 << 10,
        "A bulk client may lead the least-served active client on a path by this many "
        "bytes before it is steered to the next path.",
        min=0,
        max=1 << 30,
    )
    # -- long-term context and fusion ---------------------------------------------------------
    disconnect_threshold: float = _opt(
        0.5,
        "A path whose predicted probability of disconnecting within the long-term source's "
        "look-ahead (contextdb's setting) reaches this value is avoided while another path "
        "is usable.",
        min=0.0,
        max=1.0,
    )
    longterm_refresh: float = _opt(
        0.25,
        "Seconds between two queries of the long-term source for the same carrier.",
        min=0.0,
        max=60.0,
    )
    longterm_variance: str = _opt(
        "scaled",
        "Variance given to a long-term prediction in the fusion: 'scaled' = the "
        "prediction's own variance / confidence; 'inverse_confidence' = 1 / confidence "
        "(seed 001 literally; unit-free, so it over-weights whichever quantity has small "
        "numbers).",
        choices=("scaled", "inverse_confidence"),
    )
    # -- short-term estimators ------------------------------------------------------------------
    ewma_window: float = _opt(
        1.0,
        "Time constant (s) of the EWMAs of RTT, delivery rate and loss (gain 1 - exp(-dt/T)).",
        min=0.001,
        max=600.0,
    )
    loss_decay: float = _opt(
        5.0,
        "Time constant (s) with which a path's loss estimate decays towards 0 while no loss "
        "sample arrives (an idle path: nothing is sent that could measure it).",
        min=0.01,
        max=3600.0,
    )
    ls_samples: int = _opt(
        6, "Samples in the least-squares extrapolation of delay and loss.", min=2, max=64
    )
    ls_degree: int = _opt(
        2, "Degree of the least-squares polynomial (seed 003: 2, 3 or 4).", min=0, max=4
    )
    ls_horizon: float = _opt(
        0.1,
        "How far ahead (s) delay and loss are extrapolated; 0: one RTO ahead (seed 003).",
        min=0.0,
        max=10.0,
    )
    ls_clamp: float = _opt(
        2.0,
        "Extrapolations are kept within [min/ls_clamp, max*ls_clamp] of the samples used.",
        min=1.0,
        max=100.0,
    )
    # -- four network states (seed 003) ---------------------------------------------------------
    congested_rtt_ratio: float = _opt(
        2.0,
        "Congested when the extrapolated RTT reaches this multiple of the path's minimum RTT.",
        min=1.0,
        max=100.0,
    )
    congested_loss: float = _opt(
        0.05, "Congested when the extrapolated loss reaches this.", min=0.0, max=1.0
    )
    interfered_loss: float = _opt(
        0.01,
        "Interfered (not congested) when the extrapolated loss reaches this.",
        min=0.0,
        max=1.0,
    )
    interfered_jitter: float = _opt(
        0.25,
        "Interfered when the delay's standard deviation reaches this fraction of its mean.",
        min=0.0,
        max=100.0,
    )
    stable_jitter: float = _opt(
        0.05,
        "Stable when the delay's standard deviation stays under this fraction of its mean "
        "and loss under stable_loss.",
        min=0.0,
        max=100.0,
    )
    stable_loss: float = _opt(0.001, "Loss under which a path may be stable.", min=0.0, max=1.0)
    rto_min: float = _opt(0.2, "Smallest retransmission timeout exposed (s).", min=0.001, max=60.0)
    rto_max: float = _opt(60.0, "Largest retransmission timeout exposed (s).", min=0.01, max=600.0)
    rto_step: float = _opt(
        0.010,
        "RTO adjustment (s): normal subtracts it, interfered adds it (seed 003: 10 ms).",
        min=0.0,
        max=10.0,
    )
    rto_congested_factor: float = _opt(
        2.0, "RTO factor in the congested state (seed 003: doubled).", min=1.0, max=100.0
    )
    # -- baselines ------------------------------------------------------------------------
    mss: int = _opt(
        1448, "Segment size (bytes) assumed when a path does not report one.", min=64, max=65535
    )
    ecf_beta: float = _opt(0.25, "ECF hysteresis beta (Lim et al. 2017).", min=0.0, max=10.0)
    blest_lambda: float = _opt(
        1.0, "BLEST scaling factor lambda (Ferlin et al. 2016).", min=0.0, max=100.0
    )
