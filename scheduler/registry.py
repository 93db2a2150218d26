"""Context registry: generators publish context by type, consumers read it by type.

Seed 001 describes context generators as small independent services: each produces one
kind of context (path, connection, third-party) and registers it with a context
manager, which hands the instances to the packet scheduler (or to other generators)
without their knowing who produced them. Here that manager is an in-process registry:

* a generator has ``provides`` (the kinds it publishes) and ``attach(registry)``;
  registering it calls ``attach`` so it can publish;
* ``publish(kind, key, context)`` stores the latest context under ``(kind, key)``
  (``None`` removes it) and calls the kind's subscribers;
* ``get(kind, key)``, ``items(kind)`` and ``paths()`` read.

The three generators and the wiring every scheduling module uses (the live gateway,
the live node, the replay simulator) are in :mod:`scheduler.generators`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from scheduler.context import PathContext

PATH = "path"
CONNECTION = "connection"
CARRIER = "carrier"
KINDS = (PATH, CONNECTION, CARRIER)


class ContextGenerator(Protocol):
    provides: tuple[str, ...]

    def attach(self, registry: ContextRegistry) -> None: ...


class ContextRegistry:
    def __init__(self) -> None:
        self._store: dict[str, dict[Any, Any]] = {k: {} for k in KINDS}
        self._subscribers: dict[str, list[Callable[[Any, Any], None]]] = {k: [] for k in KINDS}
        self._producers: dict[str, list[ContextGenerator]] = {k: [] for k in KINDS}
        self._paths: list[PathContext] | None = None

    def register(self, generator: ContextGenerator) -> None:
        for kind in generator.provides:
            self._check(kind)
            self._producers[kind].append(generator)
        generator.attach(self)

    def producers(self, kind: str) -> list[ContextGenerator]:
        self._check(kind)
        return list(self._producers[kind])

    def subscribe(self, kind: str, callback: Callable[[Any, Any], None]) -> None:
        """``callback(key, context)`` on every publish of ``kind`` (context None: removed)."""
        self._check(kind)
        self._subscribers[kind].append(callback)

    def publish(self, kind: str, key: Any, context: Any) -> None:
        store = self._store[kind]
        if context is None:
            store.pop(key, None)
        else:
            store[key] = context
        if kind == PATH:
            self._paths = None
        for cb in self._subscribers[kind]:
            cb(key, context)

    def get(self, kind: str, key: Any) -> Any:
        return self._store[kind].get(key)

    def items(self, kind: str) -> list[tuple[Any, Any]]:
        return list(self._store[kind].items())

    def paths(self) -> list[PathContext]:
        """Current path contexts ordered by path id (cached until the next path publish)."""
        if self._paths is None:
            store = self._store[PATH]
            self._paths = [store[k] for k in sorted(store)]
        return self._paths

    @staticmethod
    def _check(kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown context kind {kind!r} (known: {', '.join(KINDS)})")
