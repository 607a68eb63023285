"""Median stopping (NNI's Medianstop semantics)."""
from __future__ import annotations

import statistics

from tuners.assessor import Assessor, AssessResult, register_assessor, verdict

__all__ = ["MedianstopAssessor"]


@register_assessor("medianstop", aliases=("Medianstop",))
class MedianstopAssessor(Assessor):
    """Stop a trial whose best intermediate value so far is worse than the median, at the same step,
    of the running averages of completed trials.  Nothing is stopped before ``start_step`` steps.
    """

    loop_safe = True

    def __init__(self, optimize_mode: str = "maximize", start_step: int = 0) -> None:
        super().__init__(optimize_mode)
        if int(start_step) < 0:
            raise ValueError(f"start_step: got {start_step!r}, expected an integer >= 0")
        self.start_step = int(start_step)
        self._running: dict[str, list[float]] = {}       # trial -> running averages
        self._completed: list[list[float]] = []          # running averages of completed trials

    def assess_trial(self, trial_id: str, trial_history: list[float]) -> AssessResult:
        step = len(trial_history)
        self._running[trial_id] = _running_average(trial_history)
        if step < max(self.start_step, 1):
            return verdict(True)
        at_step = [avg[step - 1] for avg in self._completed if len(avg) >= step]
        if not at_step:
            return verdict(True)
        median = statistics.median(at_step)
        best = max(trial_history) if self.maximize else min(trial_history)
        worse = best < median if self.maximize else best > median
        return verdict(not worse)

    def trial_end(self, trial_id: str, success: bool) -> None:
        history = self._running.pop(trial_id, None)
        if success and history:
            self._completed.append(history)


def _running_average(values: list[float]) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values, 1):
        total += v
        out.append(total / i)
    return out
