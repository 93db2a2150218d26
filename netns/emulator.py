"""The link emulator's I/O shell: AF_PACKET in, :class:`~netns.linkcore.Link` cores, AF_PACKET out.

Runs as one process inside the testbed's emulator namespace (``python -m netns.emulator``)
and serves every carrier in both directions from one select loop: each carrier is a bump
in the wire between two address-less veth ends, ``g<k>`` (gateway side) and ``n<k>``
(node side). Frames are forwarded unchanged, ARP included.

Offloads stay on: the sockets use ``PACKET_VNET_HDR``, so a TSO/GSO super-frame of up to
64 KiB arrives as one read with its segmentation metadata and is written out the same
way, letting the receiving kernel cut it. The core is charged the bytes and segment
count the frame will have on the wire (Mahimahi's 1500-byte opportunities count IP
bytes). TCP sizes its TSO bursts to about 1 ms of its pacing rate, so at cellular rates
super-frames are small; see docs/testbed.md for what was measured.

The parent sends the configuration as a pickle on stdin (traces already parsed and
validated there, so errors surface in the parent), reads ``ready <T0>`` on stdout (T0:
trace time 0 on CLOCK_MONOTONIC, the same clock in every namespace), and may ask for
counters with SIGUSR1 (one JSON line on stdout). SIGTERM ends the loop.
"""

from __future__ import annotations

import ctypes
import json
import pickle
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass

from netns.linkcore import Link, LinkParams
from netns.traces import DeliveryTrace

SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
ETH_P_ALL = 0x0003
VNET_HDR_LEN = 10
ETH_HLEN = 14
READ_BATCH = 64
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33


@dataclass(frozen=True)
class Direction:
    """One emulated direction of one carrier, as sent to the emulator process."""

    trace: DeliveryTrace
    params: LinkParams


@dataclass(frozen=True)
class CarrierLink:
    name: str
    gw_if: str
    node_if: str
    up: Direction  # gateway -> node
    down: Direction  # node -> gateway


def wire_size(frame: bytes) -> tuple[int, int]:
    """(IP bytes on the wire, segments) of a frame read with its virtio-net header."""
    length = len(frame) - VNET_HDR_LEN - ETH_HLEN
    if frame[1] == 0:  # gso_type NONE: one ordinary frame
        return max(length, 1), 1
    gso_size = frame[4] | frame[5] << 8
    ip = VNET_HDR_LEN + ETH_HLEN
    ihl = (frame[ip] & 0x0F) * 4
    thl = (frame[ip + ihl + 12] >> 4) * 4 if frame[ip + 9] == 6 else 8
    hdr = ihl + thl
    payload = length - hdr
    if gso_size <= 0 or payload <= 0:
        return max(length, 1), 1
    segs = -(-payload // gso_size)
    return payload + segs * hdr, segs


def _packet_socket(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    for opt in (SO_RCVBUFFORCE, SO_SNDBUFFORCE):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
        except PermissionError:
            pass
    s.bind((ifname, ETH_P_ALL))
    s.setblocking(False)
    return s


class Emulator:
    """All carriers of one testbed, both directions, in one select loop (at most 16 sockets)."""

    def __init__(self, carriers: list[CarrierLink], start: float | None = None) -> None:
        start = time.monotonic() if start is None else start
        self.start = start
        self.carriers = carriers
        self._by_fd: dict[int, tuple[socket.socket, Link, socket.socket]] = {}
        self._cores: list[tuple[str, Link, socket.socket]] = []
        self.send_errors = 0
        self.recv_errors = 0
        self._fds: list[int] = []
        for c in carriers:
            g, n = _packet_socket(c.gw_if), _packet_socket(c.node_if)
            up = Link(c.up.trace, c.up.params, start)
            down = Link(c.down.trace, c.down.params, start)
            self._by_fd[g.fileno()] = (g, up, n)
            self._by_fd[n.fileno()] = (n, down, g)
            self._cores += [(f"{c.name}/up", up, n), (f"{c.name}/down", down, g)]
            self._fds += [g.fileno(), n.fileno()]
        self.running = True

    def stats(self) -> dict[str, dict[str, int]]:
        out = {name: link.stats.as_dict() for name, link, _ in self._cores}
        out["_emulator"] = {"send_errors": self.send_errors, "recv_errors": self.recv_errors}
        return out

    def run(self) -> None:
        clock = time.monotonic
        by_fd = self._by_fd
        cores = self._cores
        fds = self._fds
        while self.running:
            now = clock()
            deadline = now + 0.2
            for _, link, out in cores:
                for frame in link.poll(now):
                    try:
                        out.send(frame)
                    except OSError:
                        self.send_errors += 1
                d = link.next_deadline()
                if d is not None and d < deadline:
                    deadline = d
            timeout = deadline - clock()
            # select() takes microseconds; epoll's millisecond timeout made every
            # release up to 1 ms late
            readable = select.select(fds, (), (), timeout if timeout > 0 else 0)[0]
            for fd in readable:
                sock, link, _out = by_fd[fd]
                for _ in range(READ_BATCH):
                    try:
                        frame = sock.recv(70000)
                    except BlockingIOError:
                        break
                    except OSError:  # e.g. the interface went down: keep serving the others
                        self.recv_errors += 1
                        break
                    size, segs = wire_size(frame)
                    link.receive(frame, size, clock(), segs)


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main() -> int:
    cfg = pickle.load(sys.stdin.buffer)
    if cfg.get("die_with_parent"):
        _die_with_parent()
    emu = Emulator(cfg["carriers"])

    def dump(*_: object) -> None:
        try:
            sys.stdout.write(json.dumps(emu.stats()) + "\n")
            sys.stdout.flush()
        except (OSError, ValueError):  # nobody listens any more (detached testbed)
            pass

    def stop(*_: object) -> None:
        emu.running = False

    signal.signal(signal.SIGUSR1, dump)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stdout.write(f"ready {emu.start!r}\n")
    sys.stdout.flush()
    emu.run()
    dump()
    return 0


if __name__ == "__main__":
    sys.exit(main())
