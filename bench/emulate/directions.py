"""Both directions of a proxy row, from the gateway's and the node's ``mpproxy status``.

Each path in either process's status has a ``transport`` dict (the session mux's
per-path counters: payload bytes and messages sent, stall resends, resent copies,
needless copies received, DATA_ACKed messages and how many came after their stall
deadline, send-to-DATA_ACK histograms in seconds and per deadline) and a ``kernel``
dict (the path socket's TCP_INFO: bytes sent and retransmitted, RTOs, and the
microseconds its sender was busy: data queued or in flight, of which limited by the
peer's window or by the send buffer; a path whose busy time falls short of the run's
length under a bulk load sat idle, waiting for the mux). The downlink
(server to client) is sent by the node and received by the gateway; the uplink the
other way round. So per direction:

* sent, resends, ACK delays and the kernel's retransmissions come from the sender's
  paths;
* needless copies (a copy that arrived with nothing new in it) from the receiver's.

Redundant payload is what the sender's mux put on paths beyond the first copy of each
byte: sent minus unique bytes. The unique bytes are at least what the receiving
applications got in that direction and at least what the sender's connections sent once
(the mux's per-connection ``bytes_sent``); the larger of the two is taken. The second
counts the bytes still on their way when the run ends (a bulk download has a few hundred
kilobytes in flight, which the applications' count would call redundant); the first
counts connections too short to be seen by a sample. A direction that carries no
application payload of the workload (the requests of a download) has no redundant share.

Paths come and go: a path that reconnects is a new path with new counters on the node
(and a new socket, with new kernel counters, on both sides), so :class:`PathCounters`
keeps the latest values of every path, socket and connection it was ever shown, and a
run's figures are the difference between two snapshots (the workload's start and end).
A path that vanished between two samples loses what it did since the last one (the
runner samples every second). Pure functions over status dicts: tested without
namespaces.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

SENT = ("sent_bytes", "sent_messages", "stall_resends", "resent_messages", "resent_bytes")
SENT += ("acked", "acked_late")
RECEIVED = {"duplicates_received": "needless_copies", "duplicate_bytes_received": "needless_bytes"}
HISTOGRAMS = ("ack_delay_s", "ack_delay_per_deadline")
KERNEL = {"bytes_sent": "kernel_bytes_sent", "bytes_retrans": "kernel_bytes_retrans"}
KERNEL |= {"total_rto": "kernel_rtos", "busy_us": "kernel_busy_us"}
KERNEL |= {"rwnd_limited_us": "kernel_rwnd_limited_us"}
KERNEL |= {"sndbuf_limited_us": "kernel_sndbuf_limited_us"}
SENDER = {"down": "node", "up": "gateway"}
RECEIVER = {"down": "gateway", "up": "node"}


@dataclass
class PathCounters:
    """The latest ``transport`` and ``kernel`` dicts of every path either process showed.

    ``carriers``: the scenario's carrier names by index; the testbed names the gateway's
    carriers ``carrier<k>`` (``bench.proxy_bench.ProxyBed``), and the node names a path
    ``<carrier>/<index>`` after the gateway's HELLO.
    """

    carriers: Sequence[str]
    transport: dict[tuple, tuple[str, dict]] = field(default_factory=dict)
    kernel: dict[tuple, tuple[str, dict]] = field(default_factory=dict)
    conns: dict[tuple, int] = field(default_factory=dict)  # first-copy bytes sent

    def carrier(self, path: Mapping) -> str:
        name = str(path.get("carrier") or str(path.get("name", "")).split("/")[0])
        if name.startswith("carrier") and name[len("carrier") :].isdigit():
            k = int(name[len("carrier") :])
            if k < len(self.carriers):
                return self.carriers[k]
        return name

    def feed(self, role: str, status: Mapping) -> None:
        """Take one status of ``role`` ("gateway" or "node")."""
        for sess in status.get("sessions", []):
            for p in sess.get("paths", []):
                key = (role, sess.get("session"), p["id"])
                carrier = self.carrier(p)
                if p.get("transport"):
                    self.transport[key] = (carrier, p["transport"])
                if p.get("kernel"):
                    # a gateway path keeps its id across reconnects, its socket does not
                    self.kernel[(*key, p.get("ups", 0))] = (carrier, p["kernel"])
            for cid, c in sess.get("connections", {}).items():
                self.conns[(role, sess.get("session"), cid)] = c.get("bytes_sent", 0)

    def snapshot(self) -> PathCounters:
        return PathCounters(
            self.carriers,
            copy.deepcopy(self.transport),
            copy.deepcopy(self.kernel),
            dict(self.conns),
        )

    def first_copies(self, role: str, base: PathCounters) -> int:
        """Bytes ``role``'s connections sent once since ``base`` (connections seen)."""
        return sum(n - base.conns.get(key, 0) for key, n in self.conns.items() if key[0] == role)


def _minus(end: Mapping, base: Mapping | None) -> dict:
    """``end - base`` for numbers and histograms (dicts of numbers)."""
    out: dict = {}
    for k, v in end.items():
        b = base.get(k) if base else None
        if isinstance(v, Mapping):
            out[k] = _minus(v, b if isinstance(b, Mapping) else None)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = v - (b if isinstance(b, int | float) else 0)
    return out


def _empty() -> dict:
    d: dict = {k: 0 for k in SENT}
    d |= {k: 0 for k in RECEIVED.values()}
    d |= {k: 0 for k in KERNEL.values()}
    d |= {h: {} for h in HISTOGRAMS}
    return d


def _add_hist(into: dict, hist: Mapping) -> None:
    for bucket, n in hist.items():
        into[bucket] = into.get(bucket, 0) + n


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _derive(d: dict, useful: int | None, unique: int | None = None) -> dict:
    sent = d["sent_bytes"]
    d["useful_bytes"] = useful
    d["unique_bytes"] = unique
    d["redundant_fraction"] = max(0, sent - unique) / sent if unique is not None and sent else None
    d["resent_fraction"] = _ratio(d["resent_bytes"], sent)
    d["needless_fraction"] = _ratio(d["needless_bytes"], sent)
    d["late_fraction"] = _ratio(d["acked_late"], d["acked"])
    d["kernel_retrans_fraction"] = _ratio(d["kernel_bytes_retrans"], d["kernel_bytes_sent"])
    return d


def directions(
    base: PathCounters, end: PathCounters, useful: Mapping[str, int | None]
) -> dict[str, dict]:
    """Per direction ("down", "up"): totals and per-carrier figures over the run between
    the snapshots ``base`` and ``end``. ``useful[d]``: payload bytes the receiving
    applications got in direction ``d`` (None when the workload carries no application
    payload that way: then its redundant share is None, not 100 %; see the module text
    for the unique bytes)."""
    out: dict[str, dict] = {}
    for d in ("down", "up"):
        per: dict[str, dict] = {}
        for key, (carrier, tr) in end.transport.items():
            prev = base.transport.get(key)
            delta = _minus(tr, prev[1] if prev else None)
            p = per.setdefault(carrier, _empty())
            if key[0] == SENDER[d]:
                for f in SENT:
                    p[f] += delta.get(f, 0)
                for h in HISTOGRAMS:
                    _add_hist(p[h], delta.get(h, {}))
            elif key[0] == RECEIVER[d]:
                for f, name in RECEIVED.items():
                    p[name] += delta.get(f, 0)
        for key, (carrier, kn) in end.kernel.items():
            if key[0] != SENDER[d]:
                continue
            prev = base.kernel.get(key)
            delta = _minus(kn, prev[1] if prev else None)
            p = per.setdefault(carrier, _empty())
            for f, name in KERNEL.items():
                p[name] += delta.get(f, 0)
        total = _empty()
        for p in per.values():
            for k, v in p.items():
                if k in HISTOGRAMS:
                    _add_hist(total[k], v)
                else:
                    total[k] += v
        got = useful.get(d)
        unique = None if got is None else max(got, end.first_copies(SENDER[d], base))
        out[d] = _derive(total, got, unique)
        out[d]["paths"] = {c: _derive(p, None) for c, p in sorted(per.items())}
    return out
