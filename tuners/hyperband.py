"""Hyperband (Li et al., 2018): brackets of successive halving over random configurations.

Each trial gets its resource (epochs, steps, ...) as the parameter ``resource_name`` (NNI's ``TRIAL_BUDGET`` by
default): bracket ``s`` (``s_max`` down to 0, ``s_max = floor(log_eta(R))``) starts ``n = ceil((s_max + 1) /
(s + 1) * eta**s)`` configurations at ``R * eta**-s``; once every trial of a rung has ended, the best
``floor(n_i / eta)`` run again at ``eta`` times the resource, until ``R``.  A bracket waiting for its rung lets
the next one start, so concurrent trials are never idle while a bracket remains.  Trials that end without a
result rank last.

Resume
    A bracket's configurations are drawn from the seeded generator when the bracket starts, and brackets start in
    order, so they do not depend on when results came.  ``import_data`` replays the records in order: each is put
    in the slot of the bracket and rung whose configuration and resource it has (later brackets are started as
    the original tuner did), rungs whose trials have all ended promote their best, and the tuner then continues
    where the original stopped.  A trial the engine runs again after a stop (interrupted) is not among the records;
    its result, when it comes under a new id, fills its slot all the same.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

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
    issued: set[int] = field(default_factory=set)
    results: dict[int, float] = field(default_factory=dict)  # index in configs -> score (higher is better)
    ended: set[int] = field(default_factory=set)

    @property
    def finished(self) -> bool:
        return self.rung >= len(self.rungs)

    def next_slot(self) -> int | None:
        """The first configuration of the current rung not handed out yet."""
        if self.finished:
            return None
        return next((i for i in range(len(self.configs)) if i not in self.issued), None)

    def state(self) -> tuple[Any, ...]:
        """What the bracket is at: rung, configurations, which were handed out, results, which ended."""
        return (self.rung, self.configs, sorted(self.issued), dict(sorted(self.results.items())), sorted(self.ended))


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

    def _new_bracket(self) -> _Bracket:
        assert self.space is not None, "update_search_space must be called first"
        bracket = _Bracket(self._plan[len(self._brackets)])
        bracket.configs = [random_point(self.space, self._rng) for _ in range(bracket.rungs[0][0])]
        self._brackets.append(bracket)
        return bracket

    def brackets_state(self) -> list[tuple[Any, ...]]:
        """Every started bracket's state (see ``_Bracket.state``): equal for a tuner and its resumed copy."""
        return [b.state() for b in self._brackets]

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        assert self.space is not None, "update_search_space must be called first"
        bracket = next((b for b in self._brackets if b.next_slot() is not None), None)
        if bracket is None and len(self._brackets) < len(self._plan):
            bracket = self._new_bracket()
        if bracket is None:
            if all(b.finished for b in self._brackets):
                raise NoMoreTrials
            raise TryLater
        index = bracket.next_slot()
        assert index is not None
        bracket.issued.add(index)
        self._where[parameter_id] = (bracket, bracket.rung, index)
        return self._params(bracket, index)

    def _params(self, bracket: _Bracket, index: int) -> dict[str, Any]:
        return {**bracket.configs[index], self.resource_name: self._resource(bracket.rungs[bracket.rung][1])}

    def _slot_of(self, parameters: Mapping[str, Any]) -> tuple[_Bracket, int] | None:
        """The open slot (not ended) of a current rung that ``parameters`` are; later brackets are started (as the
        original tuner did) when the parameters are one of theirs."""
        params = dict(parameters)
        for bracket in self._brackets:
            if bracket.finished:
                continue
            for i in range(len(bracket.configs)):
                if i not in bracket.ended and self._params(bracket, i) == params:
                    return bracket, i
        if self.space is None or len(self._brackets) >= len(self._plan):
            return None
        peek = copy.deepcopy(self._rng)  # the brackets still to start, drawn as they will be
        for b in range(len(self._brackets), len(self._plan)):
            rungs = self._plan[b]
            configs = [random_point(self.space, peek) for _ in range(rungs[0][0])]
            resource = self._resource(rungs[0][1])
            if any({**c, self.resource_name: resource} == params for c in configs):
                while len(self._brackets) <= b:
                    self._new_bracket()
                bracket = self._brackets[b]
                return bracket, next(i for i in range(len(bracket.configs)) if self._params(bracket, i) == params)
        return None

    def receive_trial_result(self, parameter_id: int, parameters: Mapping[str, Any], value: float,
                             **kwargs: Any) -> None:
        where = self._where.get(parameter_id)
        if where is None:  # a trial run again by the engine after a resume: its configuration's slot
            slot = self._slot_of(parameters)
            if slot is None:
                return
            slot[0].issued.add(slot[1])
            where = self._where[parameter_id] = (slot[0], slot[0].rung, slot[1])
        if where[0].rung == where[1] and where[2] not in where[0].ended:
            where[0].results[where[2]] = value if self.maximize else -value

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        where = self._where.pop(parameter_id, None)
        if where is None or where[0].rung != where[1]:
            return
        self._end(where[0], where[2])

    def _end(self, bracket: _Bracket, index: int) -> None:
        bracket.ended.add(index)
        if len(bracket.ended) < len(bracket.configs):
            return
        bracket.rung += 1
        if bracket.finished:
            return
        keep = bracket.rungs[bracket.rung][0]
        ranked = sorted(range(len(bracket.configs)), key=lambda i: bracket.results.get(i, -math.inf), reverse=True)
        bracket.configs = [bracket.configs[i] for i in ranked[:keep]]
        bracket.issued, bracket.results, bracket.ended = set(), {}, set()

    def import_data(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Replay earlier trials in order (see the module's docstring); a record without a value ended without a
        result (it ranks last); records that are no slot of this tuner's brackets are left out."""
        for record in records:
            slot = self._slot_of(record["parameter"])
            if slot is None:
                continue
            bracket, index = slot
            bracket.issued.add(index)
            value = record.get("value")
            if value is not None and not math.isnan(float(value)):
                bracket.results[index] = float(value) if self.maximize else -float(value)
            self._end(bracket, index)
