"""Which gateways the node admits: a revocation list and an allow-list of gateway ids.

A gateway proves its id with its certificate (``mpproxy pki gateway``), which stays valid
for its whole lifetime (825 days by default). When a vehicle is stolen, scrapped or its
key leaks, the operator revokes the id instead of waiting: ``node.revoked_gateways``
names a file of revoked ids; ``node.allowed_gateways`` (optional) a file of the only ids
admitted. Both are plain text, one id per line, ``#`` starting a comment; each id must
be one HELLO accepts (:func:`middlebox.session.wire.name_error`), so a typo is an error,
not a silently ineffective line.

The node checks both at every HELLO (:meth:`Admission.refusal`, called by
:class:`~middlebox.node.sessions.Gateways`), and looks at the files' modification time,
size and inode every ``node.gateway_lists_interval`` seconds: a changed file is read
again without a restart, and the sessions of gateways no longer admitted end at once
(:meth:`Admission.enforce`: their connections are reset on both sides, their paths
closed). A file that cannot be read or parsed at start is a configuration error; on a
reload the previous lists stay in force and the error is counted and logged (a
half-written file never opens the node to a revoked gateway, nor locks out the fleet).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from middlebox.config import NodeConfig
from middlebox.errors import UserError
from middlebox.logs import kv
from middlebox.session.wire import RstReason, name_error

log = logging.getLogger("mpproxy.node")

MAX_LIST_BYTES = 16 << 20  # a fleet of a million gateways fits


class AdmissionError(UserError):
    """A gateway list cannot be read at start."""


def parse_ids(text: str, where: str) -> frozenset[str]:
    """The ids of a list file; :class:`AdmissionError` naming the line when one is bad."""
    ids = set()
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if err := name_error(line):
            raise AdmissionError(f"{where}:{n}: gateway id {err}")
        ids.add(line)
    return frozenset(ids)


@dataclass
class _ListFile:
    key: str  # the configuration key naming it, for messages
    path: str
    ids: frozenset[str] = frozenset()
    stamp: tuple[int, int, int] | None = None  # (mtime_ns, size, inode) when read

    def read(self) -> None:
        """Read the file (errors as :class:`AdmissionError`)."""
        where = f"{self.key} {self.path}"
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read(MAX_LIST_BYTES + 1)
        except OSError as e:
            raise AdmissionError(f"{where}: cannot read: {e.strerror or e}") from None
        if len(data) > MAX_LIST_BYTES:
            raise AdmissionError(f"{where}: larger than {MAX_LIST_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise AdmissionError(f"{where}: not UTF-8 text") from None
        self.ids = parse_ids(text, where)
        self.stamp = (st.st_mtime_ns, st.st_size, st.st_ino)

    def changed(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return True  # gone or unreadable: the reload reports it
        return (st.st_mtime_ns, st.st_size, st.st_ino) != self.stamp


class Admission:
    """The node's gateway lists (see the module text); ``now`` is the node's clock."""

    def __init__(self, revoked: str = "", allowed: str = "", interval: float = 1.0,
                 now: float = 0.0) -> None:  # fmt: skip
        self.revoked = _ListFile("node.revoked_gateways", revoked) if revoked else None
        self.allowed = _ListFile("node.allowed_gateways", allowed) if allowed else None
        self.interval = interval
        self.next_check = now + interval
        for f in self._files():
            f.read()
        self.counters = {"gateways_refused": 0, "sessions_revoked": 0, "list_reloads": 0,
                         "list_reload_errors": 0}  # fmt: skip
        self.last_error = ""

    @classmethod
    def from_config(cls, node: NodeConfig, now: float) -> Admission:
        return cls(node.revoked_gateways, node.allowed_gateways, node.gateway_lists_interval, now)

    def _files(self) -> list[_ListFile]:
        return [f for f in (self.revoked, self.allowed) if f is not None]

    def reason(self, gateway_id: str) -> str | None:
        """Why ``gateway_id`` is not admitted, or None (not counted: see :meth:`refusal`)."""
        if self.revoked is not None and gateway_id in self.revoked.ids:
            return f"gateway {gateway_id!r} is revoked ({self.revoked.key})"
        if self.allowed is not None and gateway_id not in self.allowed.ids:
            return f"gateway {gateway_id!r} is not in {self.allowed.key}"
        return None

    def refusal(self, gateway_id: str) -> str | None:
        """At HELLO: why this gateway's path is refused, or None; refusals are counted."""
        why = self.reason(gateway_id)
        if why is not None:
            self.counters["gateways_refused"] += 1
        return why

    def reload(self, now: float) -> bool:
        """Read the files that changed; True when any list was replaced."""
        self.next_check = now + self.interval
        changed = False
        for f in self._files():
            if not f.changed():
                continue
            old = f.ids, f.stamp
            try:
                f.read()
            except AdmissionError as e:
                f.ids, f.stamp = old
                self.counters["list_reload_errors"] += 1
                if str(e) != self.last_error:  # once per distinct problem, not every second
                    log.warning("gateway list not reloaded, the previous one stays: %s", e)
                self.last_error = str(e)
                continue
            self.counters["list_reloads"] += 1
            self.last_error = ""
            changed = True
            log.info("gateway list reloaded %s", kv(file=f.path, ids=len(f.ids)))
        return changed

    def enforce(self, now: float, gateways) -> None:
        """When due, reload the lists; end the sessions of gateways no longer admitted.

        ``gateways`` is the node's :class:`~middlebox.node.sessions.Gateways` (its
        ``sessions`` by gateway id and ``end_session``)."""
        if now < self.next_check or not self.reload(now):
            return
        for sess in list(gateways.sessions.values()):
            why = self.reason(sess.gateway_id)
            if why is not None:
                log.warning("session ended %s", kv(gateway=sess.gateway_id, why=why))
                self.counters["sessions_revoked"] += 1
                gateways.end_session(sess, RstReason.SHUTDOWN, now)

    def status(self) -> dict:
        out: dict = dict(self.counters)
        for f in self._files():
            out[f.key.split(".", 1)[1]] = {"file": f.path, "ids": len(f.ids)}
        if self.last_error:
            out["last_error"] = self.last_error
        return out
