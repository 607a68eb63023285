"""Hyperband (Li et al., 2018): brackets of successive halving; configurations drawn at random (``sampler='random'``)
or, as in BOHB (Falkner et al., 2018), from a TPE model of the results so far (``sampler='tpe'``).

Each trial gets its resource (epochs, steps, ...) as the parameter ``resource_name`` (NNI's ``TRIAL_BUDGET`` by
default): bracket ``s`` (``s_max`` down to 0, ``s_max = floor(log_eta(R / min_resource))``) starts
``n = ceil((s_max + 1) / (s + 1) * eta**s)`` configurations at ``R * eta**-s``; once every trial of a rung has
ended, the best ``floor(n_i / eta)`` run again at ``eta`` times the resource, until ``R``.  A bracket waiting for
its rung lets the next one start, so concurrent trials are never idle while a bracket remains.  Trials that end
without a result rank last.

Continuation (``resume=True``, the default)
    A configuration promoted to the next rung continues the trial that ran it at the rung before
    (:meth:`Tuner.continues_from`): the engine points the new trial's ``hpo.restore_checkpoint()`` at that
    trial's latest checkpoint.  The new trial's ``resource_name`` is still its total (say 9 epochs); a trial that
    restores a checkpoint of 3 epochs trains the other 6.  A trial that writes no checkpoints, or a parent that left
    none, starts fresh as before.  ``resume=False``: every promoted configuration is trained from scratch.

Model-based sampling (``sampler='tpe'``)
    A first-rung configuration is drawn when its trial is asked for: at random with probability
    ``random_fraction`` or while no resource has ``min_points`` results yet; otherwise from hpo's TPE fitted on the
    results at the largest resource that has that many (BOHB's rule), so later brackets start from configurations
    like the best seen.

Resume
    ``import_data`` replays the records in order: a record whose configuration and resource are those of an open
    slot (a promoted configuration, or with ``sampler='random'`` one of a bracket's configurations, which are drawn
    from the seeded generator when the bracket starts and so do not depend on when results came) fills it; with
    ``sampler='tpe'`` a first-rung record takes the next free first-rung slot of the bracket that starts at its
    resource.  Later brackets are started as the original tuner did, rungs whose trials have all ended promote
    their best, and the tuner continues where the original stopped.  A trial the engine runs again after a stop
    (interrupted) is not among the records; its result, when it comes under a new id, fills its slot all the same.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from tuners._args import check_int
from tuners.base import NoMoreTrials, Tuner, TryLater
from tuners.random_tuner import random_point
from tuners.registry import register_tuner

__all__ = ["HyperbandTuner", "bracket_plan"]


def bracket_plan(R: float, eta: float, r_min: float = 1) -> list[list[tuple[int, float]]]:
    """Per bracket (most aggressive first), per rung: (configurations, resource); the smallest resource is at least
    ``r_min`` (``s_max = floor(log_eta(R / r_min))``)."""
    s_max = int(math.floor(math.log(R / r_min) / math.log(eta) + 1e-9))
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
    configs: list[dict[str, Any] | None] = field(default_factory=list)  # current rung, issue order (None: not drawn)
    ran: dict[int, int] = field(default_factory=dict)  # index -> parameter_id of the trial that ran it at this rung
    parents: list[int | None] = field(default_factory=list)  # index -> who ran it at the rung before (None: unknown)
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
    ``resource_name`` the parameter carrying it, ``resource_type`` ``'int'`` (rounded, at least 1) or ``'float'``;
    ``sampler`` ``'tpe'`` (model-based, the default) or ``'random'`` (plain Hyperband); for ``'tpe'``,
    ``min_points`` results at a resource before the model is used (default: the number of parameters + 1) and
    ``random_fraction`` of first-rung configurations still drawn at random; ``rounds``: how many times the
    brackets are run (later rounds start from what the model learnt); ``resume``: a promoted configuration continues
    from the checkpoint of its trial at the rung before (see the module's docstring); ``min_resource``: the
    smallest resource (1 by default: brackets start at ``R * eta**-s`` for ``s`` up to ``log_eta(R /
    min_resource)``)."""

    loop_safe = True

    def __init__(self, optimize_mode: str = "maximize", seed: int | None = None, R: float = 60, eta: float = 3,
                 resource_name: str = "TRIAL_BUDGET", resource_type: str = "int", sampler: str = "tpe",
                 min_points: int | None = None, random_fraction: float = 1 / 3, rounds: int = 1,
                 resume: bool = True, min_resource: float = 1) -> None:
        super().__init__(optimize_mode, seed)
        if not isinstance(resume, bool):
            raise ValueError(f"resume: got {resume!r}, expected true or false")
        self.resume = resume
        check_int("rounds", rounds)
        if sampler not in ("tpe", "random"):
            raise ValueError(f"sampler: got {sampler!r}, expected 'tpe' or 'random'")
        check_int("min_points", min_points, optional=True)
        if isinstance(random_fraction, bool) or not isinstance(random_fraction, (int, float)) or \
                not 0 <= random_fraction <= 1:
            raise ValueError(f"random_fraction: got {random_fraction!r}, expected a number in [0, 1]")
        self.sampler, self.min_points, self.random_fraction = sampler, min_points, float(random_fraction)
        self._entropy = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2**63))
        self._draws = 0  # first-rung configurations drawn so far (sampler 'tpe'): each has its own stream
        self._observed: list[tuple[dict[str, Any], float, float]] = []  # (configuration, resource, score) in order
        if not eta > 1:
            raise ValueError(f"eta: got {eta!r}, expected a number > 1")
        if isinstance(min_resource, bool) or not isinstance(min_resource, (int, float)) or not min_resource > 0:
            raise ValueError(f"min_resource: got {min_resource!r}, expected a number > 0")
        if not R >= min_resource:
            raise ValueError(f"R: got {R!r}, expected a number >= {min_resource} (the largest resource a trial gets; "
                             "min_resource is the smallest)")
        if resource_type not in ("int", "float"):
            raise ValueError(f"resource_type: got {resource_type!r}, expected 'int' or 'float'")
        self.R, self.eta, self.resource_name, self.resource_type = R, eta, resource_name, resource_type
        self._rng = np.random.default_rng(seed)
        self.rounds = rounds
        self.min_resource = min_resource
        one_round = bracket_plan(R, eta, min_resource)
        self._per_round = len(one_round)
        self._plan = one_round * rounds
        self._brackets: list[_Bracket] = []
        self._where: dict[int, tuple[_Bracket, int, int]] = {}  # parameter id -> (bracket, rung, index)

    def class_args(self) -> dict[str, Any]:
        return {**super().class_args(), "R": self.R, "eta": self.eta, "resource_name": self.resource_name,
                "resource_type": self.resource_type, "sampler": self.sampler, "min_points": self.min_points,
                "random_fraction": self.random_fraction, "rounds": self.rounds, "resume": self.resume,
                "min_resource": self.min_resource}

    def total_trials(self) -> int:
        """How many trials every bracket makes in all."""
        return sum(n for rungs in self._plan for n, _ in rungs)

    def _resource(self, r: float) -> int | float:
        return max(1, int(round(r))) if self.resource_type == "int" else float(r)

    def _new_bracket(self) -> _Bracket:
        assert self.space is not None, "update_search_space must be called first"
        bracket = _Bracket(self._plan[len(self._brackets)])
        n = bracket.rungs[0][0]
        bracket.configs = [random_point(self.space, self._rng) for _ in range(n)] if self.sampler == "random" \
            else [None] * n
        self._brackets.append(bracket)
        return bracket

    def _draw(self) -> dict[str, Any]:
        """A first-rung configuration (sampler 'tpe'): random, or TPE's suggestion from the results at the largest
        resource with enough of them (:meth:`model_budget`)."""
        from tuners.tpe import TpeTuner

        assert self.space is not None
        rng = np.random.default_rng([self._entropy, self._draws, 5])
        self._draws += 1
        budget = self.model_budget()
        if budget is None or rng.random() < self.random_fraction:
            return random_point(self.space, rng)
        model = TpeTuner(optimize_mode="maximize", seed=int(rng.integers(2**62)), n_startup_trials=self._model_points(),
                         **self._model_args)
        if self._model_settings:
            model.settings = dataclasses.replace(model.settings, **self._model_settings)
        model.update_search_space(self.space)
        model.import_data([{"parameter": c, "value": s} for c, r, s in self._observed
                           if r == budget and math.isfinite(s)])
        try:
            return model.generate_parameters(0)
        except NoMoreTrials:  # a small discrete space that TPE has seen whole: brackets sample with replacement
            return random_point(self.space, rng)

    def model_budget(self) -> float | None:
        """(sampler 'tpe') The resource whose results the next model-based draw is fitted on: the largest with at
        least ``min_points`` results (BOHB's rule: one model per budget level, the highest that has enough); None
        while no resource has that many (draws are random)."""
        counts: dict[float, int] = {}
        for _, resource, score in self._observed:
            if math.isfinite(score):
                counts[resource] = counts.get(resource, 0) + 1
        need = self._model_points()
        return max((r for r, n in counts.items() if n >= need), default=None)

    _model_args: dict[str, Any] = {}  # TpeTuner's arguments for the model (BOHB sets its own) ...
    _model_settings: dict[str, Any] = {}  # ... and TpeSettings fields it has no argument for

    def _model_points(self) -> int:
        """Results a resource needs before the model is fitted on them."""
        assert self.space is not None
        return self.min_points or len(self.space.names) + 1

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
        if bracket.configs[index] is None:
            bracket.configs[index] = self._draw()
        bracket.issued.add(index)
        bracket.ran[index] = parameter_id
        self._where[parameter_id] = (bracket, bracket.rung, index)
        return self._params(bracket, index)

    def continues_from(self, parameter_id: int) -> int | None:
        """(``resume``) The trial that ran this promoted configuration at the rung before, if any."""
        where = self._where.get(parameter_id)
        if not self.resume or where is None or where[1] == 0 or where[1] != where[0].rung:
            return None
        parents = where[0].parents
        return parents[where[2]] if where[2] < len(parents) else None

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
                if i not in bracket.ended and bracket.configs[i] is not None and self._params(bracket, i) == params:
                    return bracket, i
        if self.space is None:
            return None
        if self.sampler == "tpe":
            return self._first_rung_slot(params)
        if len(self._brackets) >= len(self._plan):
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

    def _first_rung_slot(self, params: dict[str, Any]) -> tuple[_Bracket, int] | None:
        """(sampler 'tpe') The next free first-rung slot of the bracket that starts at the resource ``params`` have,
        taking their configuration (brackets before it are started, as the original tuner did)."""
        resource = params.get(self.resource_name)
        for b, rungs in enumerate(self._plan[:len(self._brackets) + self._per_round]):  # started, or the next round's
            if self._resource(rungs[0][1]) != resource:
                continue
            if b < len(self._brackets) and (self._brackets[b].rung != 0 or None not in self._brackets[b].configs):
                continue  # that bracket's first rung is full: a later round's
            while len(self._brackets) <= b:
                self._new_bracket()
            bracket = self._brackets[b]
            free = next(i for i, c in enumerate(bracket.configs) if c is None)
            bracket.configs[free] = {k: v for k, v in params.items() if k != self.resource_name}
            self._draws += 1
            return bracket, free
        return None

    def _observe(self, bracket: _Bracket, index: int, score: float) -> None:
        config = bracket.configs[index]
        if config is not None:
            self._observed.append((config, float(bracket.rungs[bracket.rung][1]), score))

    def receive_trial_result(self, parameter_id: int, parameters: Mapping[str, Any], value: float,
                             **kwargs: Any) -> None:
        where = self._where.get(parameter_id)
        if where is None:  # a trial run again by the engine after a resume: its configuration's slot
            slot = self._slot_of(parameters)
            if slot is None:
                return
            slot[0].issued.add(slot[1])
            slot[0].ran[slot[1]] = parameter_id
            where = self._where[parameter_id] = (slot[0], slot[0].rung, slot[1])
        if where[0].rung == where[1] and where[2] not in where[0].ended:
            where[0].results[where[2]] = value if self.maximize else -value
            self._observe(where[0], where[2], where[0].results[where[2]])

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
        bracket.parents = [bracket.ran.get(i) for i in ranked[:keep]]
        bracket.issued, bracket.results, bracket.ended, bracket.ran = set(), {}, set(), {}

    def import_data(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Replay earlier trials in order (see the module's docstring); a record without a value ended without a
        result (it ranks last); records that are no slot of this tuner's brackets are left out."""
        for record in records:
            slot = self._slot_of(record["parameter"])
            if slot is None:
                continue
            bracket, index = slot
            bracket.issued.add(index)
            pid = record.get("parameter_id")
            if isinstance(pid, int) and not isinstance(pid, bool):
                bracket.ran[index] = pid
            value = record.get("value")
            if value is not None and not math.isnan(float(value)):
                bracket.results[index] = float(value) if self.maximize else -float(value)
                self._observe(bracket, index, bracket.results[index])
            self._end(bracket, index)
