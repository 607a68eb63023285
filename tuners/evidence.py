"""Early stopping only as far as the finished trials show it is safe.

``EvidenceStopAssessor`` learns from the trials that completed how far a value at step ``s`` tells where a
trial ends, and stops a running trial only when that evidence says it will not end among the best.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from tuners.assessor import Assessor, AssessResult, register_assessor, verdict

__all__ = ["EvidenceStopAssessor"]


@register_assessor("evidencestop", aliases=("evidence", "EvidenceStop", "evidence_stop"))
class EvidenceStopAssessor(Assessor):
    """Stop a trial at step ``s`` only when the completed trials say it cannot end among the best.

    For each step ``s`` the completed (SUCCEEDED) trials give pairs (value at ``s``, final value): the value
    at ``s`` is the best value up to ``s``, the final value the last one.  A running trial at step ``s`` is
    compared with the ``neighbours`` completed trials whose values at ``s`` were closest to its own; each of
    them shows one way its curve may go on (its gain from step ``s`` to its end).  The trial is stopped only
    when none of those gains would take it to the ``top_fraction`` best final values seen, and the values at
    ``s`` do predict the finals (Spearman's rank correlation over the completed trials at least
    ``min_correlation``).  So where curves cross (a slow starter ends best, as with small learning rates,
    strong regularisation or warm-up schedules) the gains of slow starters are large and the correlation low,
    and it stops little or nothing; where early values predict the finals it stops clearly bad trials soon.

    Nothing is stopped before ``min_completed`` trials completed past the step (with values after it), nor
    before step ``min_step``.  Its answers depend only on the completed trials (as a set) and
    the trial's own values, so an assessor rebuilt from a replayed history answers exactly the same.

    Args:
        optimize_mode: ``"maximize"`` or ``"minimize"`` the intermediate metric.
        min_completed: completed trials needed before anything is stopped.
        neighbours: completed trials (at least) whose gains a running trial is given; more is more lenient.
        top_fraction: a trial is kept while it may still end among this fraction of the best finals.
        min_correlation: steps whose values rank the finals worse than this are never used to stop.
        min_step: no trial is stopped before it reported this many values.
    """

    def __init__(self, optimize_mode: str = "maximize", min_completed: int = 8, neighbours: int = 5,
                 top_fraction: float = 0.1, min_correlation: float = 0.3, min_step: int = 1) -> None:
        super().__init__(optimize_mode)
        for name, value, low in (("min_completed", min_completed, 2), ("neighbours", neighbours, 1),
                                 ("min_step", min_step, 1)):
            if isinstance(value, bool) or int(value) != value or int(value) < low:
                raise ValueError(f"{name}: got {value!r}, expected an integer >= {low}")
        if not 0 < float(top_fraction) <= 1:
            raise ValueError(f"top_fraction: got {top_fraction!r}, expected a number in (0, 1]")
        if not -1 <= float(min_correlation) <= 1:
            raise ValueError(f"min_correlation: got {min_correlation!r}, expected a number in [-1, 1]")
        self.min_completed, self.neighbours, self.min_step = int(min_completed), int(neighbours), int(min_step)
        self.top_fraction, self.min_correlation = float(top_fraction), float(min_correlation)
        self._running: dict[str, list[float]] = {}
        self._completed: dict[str, np.ndarray] = {}       # trial -> its values, higher is better
        self._steps: dict[int, Any] = {}                  # step -> what the completed trials say there

    def _score(self, values: list[float]) -> np.ndarray:
        a = np.asarray(values, dtype=float)
        return a if self.maximize else -a

    def assess_trial(self, trial_id: str, trial_history: list[float]) -> AssessResult:
        self._running[trial_id] = [float(v) for v in trial_history]
        step = len(trial_history)
        if step < self.min_step or len(self._completed) < self.min_completed:
            return verdict(True)
        evidence = self._evidence(step)
        if evidence is None:
            return verdict(True)
        at_step, gains, target = evidence
        mine = float(np.max(self._score(trial_history)))
        if not math.isfinite(mine):
            return verdict(True)
        # the completed trials closest at this step (ties at the edge included: no order dependence)
        distance = np.abs(at_step - mine)
        k = min(len(distance), max(self.neighbours, int(round(math.sqrt(len(distance))))))
        radius = np.partition(distance, k - 1)[k - 1]
        near = distance <= radius
        return verdict(bool(np.any(mine + gains[near] >= target)))

    def _evidence(self, step: int) -> tuple[np.ndarray, np.ndarray, float] | None:
        """The completed trials' best values up to ``step``, their gains from there to their finals and the
        final a trial must be able to reach; None where the completed trials do not allow stopping."""
        if step in self._steps:
            return self._steps[step]
        curves = [c for c in self._completed.values() if len(c) > step]
        result = None
        if len(curves) >= self.min_completed:
            at_step = np.array([np.max(c[:step]) for c in curves])
            finals = np.array([c[-1] for c in curves])
            if np.all(np.isfinite(at_step)) and np.all(np.isfinite(finals)) and \
                    _spearman(at_step, finals) >= self.min_correlation:
                top = max(1, math.ceil(self.top_fraction * len(finals)))
                target = float(np.sort(finals)[-top])
                result = (at_step, finals - at_step, target)
        self._steps[step] = result
        return result

    def trial_end(self, trial_id: str, success: bool) -> None:
        history = self._running.pop(trial_id, None)
        if success and history:
            self._completed[trial_id] = self._score(history)
            self._steps.clear()


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); 0 where either side is constant."""
    rx, ry = _ranks(x), _ranks(y)
    sx, sy = rx.std(), ry.std()
    if sx == 0 or sy == 0:
        return 0.0
    return float(np.mean((rx - rx.mean()) * (ry - ry.mean())) / (sx * sy))


def _ranks(a: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(len(a), dtype=float)
    values = a[order]
    start = 0
    for i in range(1, len(a) + 1):       # average ranks over runs of ties
        if i == len(a) or values[i] != values[start]:
            ranks[order[start:i]] = (start + i - 1) / 2
            start = i
    return ranks
