"""Minimum-variance unbiased fusion of independent estimates of one quantity (seed 001).

Each source i gives a value v_i with variance s_i^2. The unbiased linear combination with
the least variance weights each by the inverse of its variance:

    E = sum(v_i / s_i^2) / sum(1 / s_i^2),    Var(E) = 1 / sum(1 / s_i^2)

Degenerate cases, defined so a caller never has to special-case them:

* no source: ``None`` (the caller decides what "unknown" means);
* a single source: that source, unchanged;
* some variances are zero: those sources are exact; the result is their plain mean with
  variance 0, and every uncertain source is ignored;
* a variance is infinite: that source carries no weight;
* every variance is infinite: the plain mean of the values, variance infinite (no source
  knows better than another).

Negative or NaN variances and NaN values are programming errors and raise ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

INF = math.inf


class Estimate(NamedTuple):
    value: float
    variance: float


def fuse(estimates: Iterable[Estimate | tuple[float, float]]) -> Estimate | None:
    """The MVUE combination of ``estimates``; see the module docstring for edge cases."""
    exact: list[float] = []
    infinite: list[float] = []
    wsum = 0.0
    vsum = 0.0
    n = 0
    for value, var in estimates:
        n += 1
        if value != value or var != var or var < 0:
            raise ValueError(f"invalid estimate ({value!r}, variance {var!r})")
        if var == 0.0:
            exact.append(value)
        elif var == INF:
            infinite.append(value)
        else:
            w = 1.0 / var
            if w == INF:  # a variance so small its inverse overflows: exact
                exact.append(value)
                continue
            wsum += w
            vsum += w * value
    if n == 0:
        return None
    if exact:
        return Estimate(math.fsum(exact) / len(exact), 0.0)
    if wsum > 0.0:
        return Estimate(vsum / wsum, 1.0 / wsum)
    return Estimate(math.fsum(infinite) / len(infinite), INF)


def weights(variances: Iterable[float]) -> list[float]:
    """The normalised MVUE weights for sources with these variances (same edge cases)."""
    vs = list(variances)
    if not vs:
        return []
    zero = [v == 0.0 for v in vs]
    if any(zero):
        k = sum(zero)
        return [1.0 / k if z else 0.0 for z in zero]
    inv = [0.0 if v == INF else 1.0 / v for v in vs]
    total = sum(inv)
    if total == 0.0:
        return [1.0 / len(vs)] * len(vs)
    return [w / total for w in inv]


def fuse2(v1: float, var1: float, v2: float | None, var2: float) -> tuple[float, float]:
    """Fast path of :func:`fuse` for one short-term and one optional long-term source.

    ``v2 is None`` means the second source is absent. Same results as ``fuse`` (a
    property test checks it); written out because the scheduler calls it per message.
    """
    if v2 is None:
        return v1, var1
    if var1 == 0.0:
        if var2 == 0.0:
            return (v1 + v2) * 0.5, 0.0
        return v1, 0.0
    if var2 == 0.0:
        return v2, 0.0
    if var1 == INF:
        if var2 == INF:
            return (v1 + v2) * 0.5, INF
        return v2, var2
    if var2 == INF:
        return v1, var1
    w1 = 1.0 / var1
    w2 = 1.0 / var2
    s = w1 + w2
    if w1 == INF or w2 == INF or s == INF:
        return tuple(fuse([Estimate(v1, var1), Estimate(v2, var2)]))  # type: ignore[arg-type]
    return (w1 * v1 + w2 * v2) / s, 1.0 / s
