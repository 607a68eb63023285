"""Early stopping only as far as the finished trials show it is safe.

``EvidenceStopAssessor`` learns from the trials that completed how a value at step ``s`` turns into a final
value, and stops a running trial only when that evidence says it will not end among the best.
"""
from __future__ import annotations

import math

import numpy as np

from tuners.assessor import Assessor, AssessResult, register_assessor, verdict

__all__ = ["EvidenceStopAssessor"]


@register_assessor("evidencestop", aliases=("evidence", "EvidenceStop", "evidence_stop"))
class EvidenceStopAssessor(Assessor):
    """Stop a trial at step ``s`` only when the completed trials show it will not end among the best.

    Every completed (SUCCEEDED) trial is one example of how a curve goes on from step ``s``: its best value up
    to ``s`` and its final (last) value.  A running trial at step ``s``, with best value ``v`` so far, is
    stopped only when both hold:

    * **its neighbours' gains do not carry it to the top**: take the ``neighbours`` completed trials whose
      values at ``s`` were closest to ``v`` (ties included); had the trial gained from ``s`` to the end as
      much as any one of them did, it would still end below the ``top_fraction`` best results of all ended
      trials (trials stopped earlier count as below them);
    * **it is behind every top finisher**: each of those best completed trials (at least two) was doing
      better than ``v`` at step ``s``.

    Where curves cross (a small learning rate, strong regularisation, a warm-up: the slow starter ends best)
    the slow starters that completed show large gains and were behind at step ``s``, so a trial like them is
    kept; where early values predict the finals, a trial that is clearly behind is stopped soon.  Nothing is
    stopped before ``min_completed`` trials completed (and have values after step ``s``); and since the top
    fraction is counted over every ended trial while only completed trials can be in it, stopping gets more
    lenient whenever fewer than ``top_fraction`` of the ended trials completed: evidence keeps coming in.

    The answers depend only on the completed trials (as a set), how many trials ended, and the trial's own
    values, so an assessor rebuilt from a replayed history (hpo's resume) answers exactly as before.

    Args:
        optimize_mode: ``"maximize"`` or ``"minimize"`` the intermediate metric.
        top_fraction: a trial is kept while it may still end among this fraction of the best results.
        neighbours: completed trials whose gains a running trial is given; more is more lenient.
        min_completed: completed trials needed before anything is stopped.
        min_step: no trial is stopped before it reported this many values.
    """

    def __init__(self, optimize_mode: str = "maximize", top_fraction: float = 0.2, neighbours: int = 3,
                 min_completed: int = 4, min_step: int = 1) -> None:
        super().__init__(optimize_mode)
        for name, value, low in (("neighbours", neighbours, 1), ("min_completed", min_completed, 2),
                                 ("min_step", min_step, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < low:
                raise ValueError(f"{name}: got {value!r}, expected an integer >= {low}")
        if isinstance(top_fraction, bool) or not isinstance(top_fraction, (int, float)) or not 0 < top_fraction < 1:
            raise ValueError(f"top_fraction: got {top_fraction!r}, expected a number between 0 and 1")
        self.top_fraction, self.neighbours = float(top_fraction), int(neighbours)
        self.min_completed, self.min_step = int(min_completed), int(min_step)
        self._running: dict[str, list[float]] = {}        # trial -> its values so far
        self._completed: dict[str, np.ndarray] = {}       # trial -> its values, higher is better
        self._ended = 0                                   # trials that ended after at least one value
        self._at_step: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}

    def _score(self, values: list[float]) -> np.ndarray:
        a = np.asarray(values, dtype=float)
        return a if self.maximize else -a

    def assess_trial(self, trial_id: str, trial_history: list[float]) -> AssessResult:
        self._running[trial_id] = [float(v) for v in trial_history]
        step = len(trial_history)
        evidence = self._evidence(step) if step >= self.min_step else None
        if evidence is None:
            return verdict(True)
        at_step, finals = evidence
        mine = float(np.max(self._score(trial_history)))
        if not math.isfinite(mine):
            return verdict(True)
        ranked = np.sort(finals)[::-1]
        k = min(len(finals), max(1, math.ceil(self.top_fraction * self._ended)))
        target = ranked[k - 1]
        distance = np.abs(at_step - mine)
        near = distance <= np.partition(distance, self.neighbours - 1)[self.neighbours - 1]
        if np.any(mine + (finals - at_step)[near] >= target):
            return verdict(True)
        top = finals >= ranked[max(k, 2) - 1]
        return verdict(bool(mine >= at_step[top].min()))

    def _evidence(self, step: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The completed trials' best values up to ``step`` and their finals; None while too few completed
        trials have values after ``step``."""
        if step not in self._at_step:
            curves = [c for c in self._completed.values() if len(c) > step]
            if len(curves) < max(self.min_completed, self.neighbours, 2):
                self._at_step[step] = None
            else:
                self._at_step[step] = (np.array([c[:step].max() for c in curves]), np.array([c[-1] for c in curves]))
        return self._at_step[step]

    def trial_end(self, trial_id: str, success: bool) -> None:
        history = self._running.pop(trial_id, None)
        if history is None:
            return
        self._ended += 1
        curve = self._score(history)
        if success and len(curve) and np.all(np.isfinite(curve)):
            self._completed[trial_id] = curve
            self._at_step.clear()
