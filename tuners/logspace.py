"""Logspace: a grid over any space, with every numeric dimension discretised into ``n`` points.

How each dimension becomes a list of grid values:

* ``uniform`` / ``quniform``: ``n`` points evenly spaced from ``low`` to ``high``
  (``numpy.linspace``), both ends included;
* ``loguniform`` / ``qloguniform``: ``n`` points evenly spaced on a log scale
  (``numpy.geomspace(low, high, n)``), both ends included;
* ``normal`` / ``lognormal`` (and their ``q`` forms): the ``n`` quantiles ``(i + 0.5) / n`` of
  the distribution (``mu + sigma * Phi^-1(p)``, exponentiated for the log forms);
* quantised types round each point with the dimension's ``q`` (and give ints where the
  dimension does); points that round to the same value appear once;
* ``randint``: every integer when there are at most ``n`` of them, else ``n`` evenly spaced
  integers from ``low`` to ``high - 1``;
* ``choice`` and Polyaxon's matrix forms: every option, nested sub-spaces discretised the same way.

With ``n == 1`` the single point is the middle of the range (the geometric middle on a log
scale, the median of a normal).  The grid is then walked like :class:`GridTuner` does,
with the same ``search_method`` and ``n_experiments`` settings.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np

from hpo.search_space import Categorical, Dimension, IntRange, NestedOption, Numeric, SearchSpace
from tuners.grid import GridTuner
from tuners.registry import register_tuner

__all__ = ["LogspaceTuner", "discretise"]


def discretise(space: SearchSpace, n: int) -> SearchSpace:
    """``space`` with every numeric dimension replaced by a choice of at most ``n`` points."""
    return SearchSpace(tuple(_discretise_dim(d, n) for d in space))


def _discretise_dim(dim: Dimension, n: int) -> Dimension:
    if isinstance(dim, Categorical):
        if not dim.is_nested:
            return dim
        options = tuple(NestedOption(o.name, discretise(o.space, n), o.constants) if isinstance(o, NestedOption)
                        else o for o in dim.options)
        return Categorical(dim.name, options, dim.kind)
    if isinstance(dim, IntRange):
        count = dim.high - dim.low
        if count <= n:
            return Categorical(dim.name, tuple(range(dim.low, dim.high)), "values")
        if n == 1:
            values: list[Any] = [(dim.low + dim.high - 1) // 2]
        else:
            values = [int(round(v)) for v in np.linspace(dim.low, dim.high - 1, n)]
        return Categorical(dim.name, tuple(_unique(values)), "linspace")
    if isinstance(dim, Numeric):
        return Categorical(dim.name, tuple(_unique(dim.quantise(float(v)) for v in _numeric_points(dim, n))),
                           "logspace" if dim.log else "linspace")
    raise TypeError(f"unknown dimension type {type(dim).__name__}")


def _numeric_points(dim: Numeric, n: int) -> list[float]:
    if dim.distribution == "uniform":
        if n == 1:
            return [math.sqrt(dim.low * dim.high) if dim.log else (dim.low + dim.high) / 2]
        points = np.geomspace(dim.low, dim.high, n) if dim.log else np.linspace(dim.low, dim.high, n)
        return [min(max(float(p), dim.low), dim.high) for p in points]  # ends exact despite rounding
    normal = NormalDist(dim.mu, dim.sigma)
    xs = [normal.inv_cdf((i + 0.5) / n) for i in range(n)]
    return [math.exp(x) for x in xs] if dim.log else xs


def _unique(values: Any) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if not out or v != out[-1]:
            out.append(v)
    return out


@register_tuner("logspace", aliases=("Logspace", "LogspaceTuner"))
class LogspaceTuner(GridTuner):
    """Grid search after discretising every numeric dimension into ``n`` points (see module doc).

    Args:
        n: points per numeric dimension, an integer >= 1 (default 5).
        optimize_mode: ``"maximize"`` or ``"minimize"`` (the grid does not use results).
        seed: fixes the permutation of ``search_method='random'``.
        search_method: ``'sequential'`` (default) or ``'random'``.
        n_experiments: None (the whole grid), a count, or a fraction of the grid.
    """

    def __init__(self, n: int = 5, optimize_mode: str = "maximize", seed: int | None = None,
                 search_method: str = "sequential", n_experiments: int | float | None = None) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: got {n!r}, expected an integer >= 1 (points per numeric dimension)")
        super().__init__(optimize_mode, seed, search_method, n_experiments)
        self.n = n

    def class_args(self) -> dict[str, Any]:
        return {"n": self.n, **super().class_args()}

    def grid_space(self, space: SearchSpace) -> SearchSpace:
        return discretise(space, self.n)
