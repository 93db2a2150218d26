"""Context registry: generators publish context by type, consumers read it by type.

Seed 001 describes context generators as small independent services: each produces one
kind of context (path, connection, third-party) and the scheduler reads whatever is
registered, without knowing who produced it. Here that is an in-process registry:

* a generator has ``provides`` (the kinds it publishes) and ``attach(registry)``;
  registering it calls ``attach`` so it can publish;
* ``publish(kind, key, context)`` stores the latest context under ``(kind, key)``
  (``None`` removes it) and calls the kind's subscribers;
* ``get(kind, key)``, ``items(kind)`` and ``paths()`` read.

:class:`Scheduler` ties a registry to a policy: ``decide(message, now)`` reads the
current path contexts and asks the policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from scheduler.context import MessageInfo, PathContext
from scheduler.policies.base import Policy

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


class Scheduler:
    """A policy fed from a registry: the object the gateway and the node hold."""

    def __init__(self, policy: Policy, registry: ContextRegistry):
        self.policy = policy
        self.registry = registry

    def decide(self, message: MessageInfo, now: float) -> tuple[int, ...]:
        return self.policy.decide(message, self.registry.paths(), now)

    def decide_many(self, messages: Iterable[MessageInfo], now: float) -> list[tuple[int, ...]]:
        paths = self.registry.paths()
        return [self.policy.decide(m, paths, now) for m in messages]
