"""Median stopping with NNI 3.0's Medianstop semantics, decision for decision.

``tests/test_medianstop_nni.py`` runs NNI's own ``MedianstopAssessor`` (NNI 3.0, in its own venv) over
generated histories and checks that this class gives the same answer to every call.
"""
from __future__ import annotations

from tuners.assessor import Assessor, AssessResult, register_assessor, verdict

__all__ = ["MedianstopAssessor"]


@register_assessor("medianstop", aliases=("Medianstop",))
class MedianstopAssessor(Assessor):
    """Stop a trial at step S when its best intermediate value so far is strictly worse than the median,
    at step S, of the running averages of the completed (SUCCEEDED) trials' intermediate values.

    As NNI 3.0 does it:

    * with an even number of completed trials the median is the more lenient of the two middle values
      (the lower one when maximizing, the higher one when minimizing), so two completed trials stop only
      a trial worse than both;
    * a trial is not judged (and its values are not recorded) before it has reported ``start_step``
      values; a trial that ends before that never counts as completed;
    * a completed trial counts with the values it had when it was last judged; a trial id that completes
      again replaces its earlier curve.
    """

    loop_safe = True

    def __init__(self, optimize_mode: str = "maximize", start_step: int = 0) -> None:
        super().__init__(optimize_mode)
        if isinstance(start_step, bool) or int(start_step) != start_step or int(start_step) < 0:
            raise ValueError(f"start_step: got {start_step!r}, expected an integer >= 0")
        self.start_step = int(start_step)
        self._running: dict[str, list[float]] = {}           # trial -> values recorded so far
        self._completed: dict[str, list[float]] = {}         # trial -> running averages, in completion order

    def assess_trial(self, trial_id: str, trial_history: list[float]) -> AssessResult:
        step = len(trial_history)
        if step < self.start_step:
            return verdict(True)
        history = [float(v) for v in trial_history]
        recorded = self._running.setdefault(trial_id, [])
        recorded.extend(history[len(recorded):])
        best = max(history) if self.maximize else min(history)
        at_step = [avg[step - 1] for avg in self._completed.values() if len(avg) >= step]
        if not at_step:
            return verdict(True)
        at_step.sort()
        if self.maximize:
            median = at_step[(len(at_step) - 1) // 2]
            return verdict(not best < median)
        median = at_step[len(at_step) // 2]
        return verdict(not best > median)

    def trial_end(self, trial_id: str, success: bool) -> None:
        history = self._running.pop(trial_id, None)
        if history is not None and success:
            self._completed[trial_id] = _running_average(history)


def _running_average(values: list[float]) -> list[float]:
    out, total = [], 0
    for i, v in enumerate(values, 1):
        total += v
        out.append(total / i)
    return out
