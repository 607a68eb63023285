"""Random search: independent samples from each dimension's prior."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from hpo.search_space import Categorical, Dimension, IntRange, NestedOption, Numeric, SearchSpace, nested_value
from tuners.base import Tuner
from tuners.registry import register_tuner

__all__ = ["RandomTuner", "random_point"]


def random_point(space: SearchSpace, rng: np.random.Generator) -> dict[str, Any]:
    """One point drawn from the prior of every dimension (nested choices included)."""
    return {dim.name: _sample(dim, rng) for dim in space}


def _sample(dim: Dimension, rng: np.random.Generator) -> Any:
    if isinstance(dim, Categorical):
        index = rng.choice(len(dim.options), p=dim.weights) if dim.weights else rng.integers(len(dim.options))
        option = dim.options[int(index)]
        if isinstance(option, NestedOption):
            return nested_value(option, random_point(option.space, rng))
        return option
    if isinstance(dim, IntRange):
        return int(rng.integers(dim.low, dim.high))
    if isinstance(dim, Numeric):
        if dim.distribution == "uniform":
            if dim.log:
                x = math.exp(rng.uniform(math.log(dim.low), math.log(dim.high)))
            else:
                x = rng.uniform(dim.low, dim.high)
            x = min(max(x, dim.low), dim.high)
        else:
            x = rng.normal(dim.mu, dim.sigma)
            if dim.log:
                x = math.exp(x)
        return dim.quantise(float(x))
    raise TypeError(f"unknown dimension type {type(dim).__name__}")


@register_tuner("random", aliases=("Random", "RandomSearch", "rand"))
class RandomTuner(Tuner):
    """Samples every trial independently; reproducible for a given ``seed``."""

    loop_safe = True

    def __init__(self, optimize_mode: str = "maximize", seed: int | None = None) -> None:
        super().__init__(optimize_mode, seed)
        self._rng = np.random.default_rng(seed)

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        assert self.space is not None, "update_search_space must be called first"
        return random_point(self.space, self._rng)
