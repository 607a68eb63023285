"""Asynchronous successive halving (ASHA) as an early-stopping rule over intermediate results."""
from __future__ import annotations

import math

from tuners.assessor import Assessor, AssessResult, register_assessor, verdict

__all__ = ["AshaAssessor"]


@register_assessor("asha", aliases=("ASHA",))
class AshaAssessor(Assessor):
    """Rungs at ``min_steps * reduction_factor**k`` (below ``max_steps``).  A trial reaching a rung
    goes on only if its value there is in the top ``1/reduction_factor`` of every value recorded at
    that rung so far (asynchronous: early trials are judged against fewer peers, never held back).
    """

    loop_safe = True

    def __init__(self, optimize_mode: str = "maximize", reduction_factor: float = 3, min_steps: int = 1,
                 max_steps: int = 100) -> None:
        super().__init__(optimize_mode)
        if not reduction_factor > 1:
            raise ValueError(f"reduction_factor: got {reduction_factor!r}, expected a number > 1")
        if int(min_steps) < 1 or int(max_steps) < int(min_steps):
            raise ValueError(f"min_steps/max_steps: got {min_steps!r}/{max_steps!r}, expected 1 <= min_steps <= max_steps")
        self.reduction_factor = float(reduction_factor)
        self.min_steps, self.max_steps = int(min_steps), int(max_steps)
        self.rungs: list[int] = []
        step = float(self.min_steps)
        while step < self.max_steps:
            self.rungs.append(int(round(step)))
            step *= self.reduction_factor
        self._recorded: dict[int, list[float]] = {r: [] for r in self.rungs}

    def assess_trial(self, trial_id: str, trial_history: list[float]) -> AssessResult:
        step = len(trial_history)
        if step not in self._recorded:
            return verdict(True)
        value = trial_history[-1] if self.maximize else -trial_history[-1]
        peers = self._recorded[step]
        peers.append(value)
        keep = max(1, math.floor(len(peers) / self.reduction_factor))
        if len(peers) < self.reduction_factor:
            return verdict(True)  # too few peers at this rung to judge
        cutoff = sorted(peers, reverse=True)[keep - 1]
        return verdict(value >= cutoff)
