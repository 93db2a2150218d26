"""Policies by name: ``get(name, config, longterm=None) -> Policy``.

``context`` (alias ``ours``) is our policy; ``minrtt``, ``roundrobin``, ``redundant``,
``ecf`` and ``blest`` are the baselines. Each call returns a fresh instance (policies
may hold state, so two runs never share one).
"""

from __future__ import annotations

from collections.abc import Callable

from scheduler.config import POLICY_NAMES, SchedulerConfig
from scheduler.longterm import LongTermSource
from scheduler.policies.base import Policy
from scheduler.policies.baselines import Blest, Ecf, MinRtt, Redundant, RoundRobin
from scheduler.policies.opportunistic import ContextPolicy

__all__ = ["Policy", "UnknownPolicy", "get", "names"]


class UnknownPolicy(ValueError):
    """No policy by that name."""


_FACTORIES: dict[str, Callable[[SchedulerConfig, LongTermSource | None], Policy]] = {
    "context": lambda cfg, lt: ContextPolicy(cfg, lt),
    "minrtt": lambda cfg, lt: MinRtt(cfg),
    "roundrobin": lambda cfg, lt: RoundRobin(cfg),
    "redundant": lambda cfg, lt: Redundant(cfg),
    "ecf": lambda cfg, lt: Ecf(cfg),
    "blest": lambda cfg, lt: Blest(cfg),
}
_ALIASES = {"ours": "context"}
assert tuple(_FACTORIES) == POLICY_NAMES


def names() -> tuple[str, ...]:
    return POLICY_NAMES


def get(
    name: str | None = None,
    config: SchedulerConfig | None = None,
    longterm: LongTermSource | None = None,
) -> Policy:
    """A new policy; ``name`` defaults to ``config.policy``. Only ours uses ``longterm``."""
    cfg = config or SchedulerConfig()
    key = _ALIASES.get(name or cfg.policy, name or cfg.policy)
    factory = _FACTORIES.get(key)
    if factory is None:
        raise UnknownPolicy(
            f"unknown scheduling policy {name!r} (known: {', '.join(POLICY_NAMES)}, ours)"
        )
    return factory(cfg, longterm)
