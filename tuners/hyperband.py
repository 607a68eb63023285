"""Hyperband (Li et al., 2018): brackets of successive halving over random configurations.

Each trial gets its resource (epochs, steps, ...) as the parameter ``resource_name`` (NNI's ``TRIAL_BUDGET`` by
default): bracket ``s`` (``s_max`` down to 0, ``s_max = floor(log_eta(R))``) starts ``n = ceil((s_max + 1) /
(s + 1) * eta**s)`` configurations at ``R * eta**-s``; once every trial of a rung has ended, the best
``floor(n_i / eta)`` run again at ``eta`` times the resource, until ``R``.  A bracket waiting for its rung lets
the next one start, so concurrent trials are never idle while a bracket remains.  Trials that end without a
result rank last.  Results imported on resume are not replayed: a resumed search starts its brackets afresh.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from tuners.base import NoMoreTrials, Tuner, TryLater
from tuners.random_tuner import random_point
from tuners.registry import register_tuner

__all__ = ["HyperbandTuner", "bracket_plan"]


def bracket_plan(R: float, eta: float) -> list[list[tuple[int, float]]]:
    """Per bracket (most aggressive first), per rung: (configurations, resource)."""
    s_max = int(math.floor(math.log(R) / math.log(eta) + 1e-9))
    plan = []
    for s in range(s_max, -1, -1):
        n = int(math.ceil((s_max + 1) / (s + 1) * eta ** s))
        r = R * eta ** -s
        plan.append([(max(1, int(math.floor(n * eta ** -i))), r * eta ** i) for i in range(s + 1)])
    return plan


@dataclass
class _Bracket:
    rungs: list[tuple[int, float]]
    rung: int = 0
    configs: list[dict[str, Any]] = field(default_factory=list)  # of the current rung, in issue order
    issued: int = 0
    results: dict[int, float] = field(default_factory=dict)  # index in configs -> score (higher is better)
    ended: set[int] = field(default_factory=set)

    @property
    def finished(self) -> bool:
        return self.rung >= len(self.rungs)


@register_tuner("hyperband", aliases=("Hyperband", "hyperbandtuner", "hb"))
class HyperbandTuner(Tuner):
    """Args (NNI's names): ``R`` the largest resource a trial gets, ``eta`` the halving rate (> 1),
    ``resource_name`` the parameter carrying it, ``resource_type`` ``'int'`` (rounded, at least 1) or ``'float'``."""

    loop_safe = True

    def __init__(self, optimize_mode: str = "maximize", seed: int | None = None, R: float = 60, eta: float = 3,
                 resource_name: str = "TRIAL_BUDGET", resource_type: str = "int") -> None:
        super().__init__(optimize_mode, seed)
        if not eta > 1:
            raise ValueError(f"eta: got {eta!r}, expected a number > 1")
        if not R >= 1:
            raise ValueError(f"R: got {R!r}, expected a number >= 1 (the largest resource a trial gets)")
        if resource_type not in ("int", "float"):
            raise ValueError(f"resource_type: got {resource_type!r}, expected 'int' or 'float'")
        self.R, self.eta, self.resource_name, self.resource_type = R, eta, resource_name, resource_type
        self._rng = np.random.default_rng(seed)
        self._plan = bracket_plan(R, eta)
        self._brackets: list[_Bracket] = []
        self._where: dict[int, tuple[_Bracket, int, int]] = {}  # parameter id -> (bracket, rung, index)

    def class_args(self) -> dict[str, Any]:
        return {**super().class_args(), "R": self.R, "eta": self.eta, "resource_name": self.resource_name,
                "resource_type": self.resource_type}

    def total_trials(self) -> int:
        """How many trials every bracket makes in all."""
        return sum(n for rungs in self._plan for n, _ in rungs)

    def _resource(self, r: float) -> int | float:
        return max(1, int(round(r))) if self.resource_type == "int" else float(r)

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        assert self.space is not None, "update_search_space must be called first"
        bracket = next((b for b in self._brackets if not b.finished and b.issued < len(b.configs)), None)
        if bracket is None and len(self._brackets) < len(self._plan):
            bracket = _Bracket(self._plan[len(self._brackets)])
            n = bracket.rungs[0][0]
            bracket.configs = [random_point(self.space, self._rng) for _ in range(n)]
            self._brackets.append(bracket)
        if bracket is None:
            if all(b.finished for b in self._brackets):
                raise NoMoreTrials
            raise TryLater
        index = bracket.issued
        bracket.issued += 1
        self._where[parameter_id] = (bracket, bracket.rung, index)
        resource = self._resource(bracket.rungs[bracket.rung][1])
        return {**bracket.configs[index], self.resource_name: resource}

    def receive_trial_result(self, parameter_id: int, parameters: Mapping[str, Any], value: float,
                             **kwargs: Any) -> None:
        where = self._where.get(parameter_id)
        if where is not None and where[0].rung == where[1]:
            where[0].results[where[2]] = value if self.maximize else -value

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        where = self._where.pop(parameter_id, None)
        if where is None or where[0].rung != where[1]:
            return
        bracket, rung, index = where
        bracket.ended.add(index)
        if len(bracket.ended) < len(bracket.configs) or bracket.issued < len(bracket.configs):
            return
        bracket.rung += 1
        if bracket.finished:
            return
        keep = bracket.rungs[bracket.rung][0]
        ranked = sorted(range(len(bracket.configs)), key=lambda i: bracket.results.get(i, -math.inf), reverse=True)
        bracket.configs = [bracket.configs[i] for i in ranked[:keep]]
        bracket.issued, bracket.results, bracket.ended = 0, {}, set()
