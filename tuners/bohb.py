"""BOHB (Falkner et al., 2018): Hyperband whose first-rung configurations come from a model of the results so far,
with NNI's ``BOHB`` class args.

It is :class:`~tuners.hyperband.HyperbandTuner` with ``sampler='tpe'``:

* brackets of successive halving between ``min_budget`` and ``max_budget`` (ratio ``eta``), the resource in the
  parameter ``TRIAL_BUDGET``; the brackets repeat (``rounds``, by default as many as the experiment's trial limit
  allows, like NNI's);
* the model: results are kept per budget level; a configuration is drawn from a TPE fitted on the results of the
  *largest* budget that has at least ``max(d + 1, min_points_in_model)`` of them (``d`` the number of parameters),
  or at random while no budget has that many, and with probability ``random_fraction`` in any case;
* the TPE's good set is the best ``top_n_percent`` of that budget's results, ``num_samples`` candidates are
  ranked by the ratio of the good to the bad density, ``bandwidth_factor`` and ``min_bandwidth`` widen the
  kernels (hpo's TPE, not hpbandster's KDE: the factor widens both densities, and the kernel widths come from the
  distance to neighbouring observations, so the defaults differ from NNI's; see the README);
* a promoted configuration continues from its checkpoint at the budget before (``resume``, as Hyperband).

Deterministic with a seed; a resumed search replays its history into the same brackets (see Hyperband).
"""
from __future__ import annotations

from typing import Any

from tuners._args import check_int, check_number
from tuners.hyperband import HyperbandTuner
from tuners.registry import register_tuner

__all__ = ["BohbTuner"]


@register_tuner("bohb", aliases=("BOHB", "bohbtuner"))
class BohbTuner(HyperbandTuner):
    """Args (NNI's names): ``optimize_mode``, ``min_budget`` and ``max_budget`` (the smallest and largest
    ``TRIAL_BUDGET``), ``eta``, ``min_points_in_model`` (None: the number of parameters + 1),
    ``top_n_percent`` (the good share of results, 1-99), ``num_samples`` (candidates per draw),
    ``random_fraction``, ``bandwidth_factor``, ``min_bandwidth`` (a fraction of each parameter's range); and hpo's
    ``seed``, ``resource_name``, ``resource_type``, ``rounds`` (None: the brackets repeat until the experiment's
    trial limit), ``resume`` (continue promoted configurations from their checkpoints), ``model_rule`` (``'tpe'``:
    TPE's split of a budget's results; ``'hpbandster'``: hpbandster's, see :meth:`_model_points`; measured worse)."""

    def __init__(self, optimize_mode: str = "maximize", seed: int | None = None, min_budget: float = 1,
                 max_budget: float = 3, eta: float = 3, min_points_in_model: int | None = None,
                 top_n_percent: float = 15, num_samples: int = 64, random_fraction: float = 1 / 3,
                 bandwidth_factor: float = 1.0, min_bandwidth: float = 0.01, resource_name: str = "TRIAL_BUDGET",
                 resource_type: str = "int", rounds: int | None = None, resume: bool = True,
                 model_rule: str = "tpe") -> None:
        if model_rule not in ("tpe", "hpbandster"):
            raise ValueError(f"model_rule: got {model_rule!r}, expected 'tpe' or 'hpbandster'")
        self.model_rule = model_rule
        check_int("min_points_in_model", min_points_in_model, optional=True)
        top = check_number("top_n_percent", top_n_percent, 1, 99)
        check_int("num_samples", num_samples)
        widen = check_number("bandwidth_factor", bandwidth_factor, 0, low_open=True)
        narrowest = check_number("min_bandwidth", min_bandwidth, 0, low_open=True)
        check_number("min_budget", min_budget, 0, low_open=True)
        check_number("max_budget", max_budget, min_budget)
        super().__init__(optimize_mode, seed, R=max_budget, eta=eta, resource_name=resource_name,
                         resource_type=resource_type, sampler="tpe", min_points=min_points_in_model,
                         random_fraction=random_fraction, rounds=1000 if rounds is None else rounds, resume=resume,
                         min_resource=min_budget)
        self.rounds_arg = rounds
        self.min_budget, self.max_budget = min_budget, max_budget
        self.min_points_in_model, self.top_n_percent, self.num_samples = min_points_in_model, top, num_samples
        self.bandwidth_factor, self.min_bandwidth = widen, narrowest
        self._model_args = {"gamma": top / 100, "max_good": 10**6, "n_ei_candidates": num_samples,
                            "bandwidth_factor": widen, "min_bandwidth": narrowest}
        self._model_settings = {}

    def _least(self) -> int:
        assert self.space is not None
        return max(len(self.space.names) + 1, self.min_points_in_model or 0)

    def _model_points(self) -> int:
        """``'tpe'``: ``max(d + 1, min_points_in_model)`` results.  ``'hpbandster'``: as many as leave more than
        ``d`` results besides the good ones, which are at least that many too (the good set: the best
        ``max(min_points, top_n_percent% of them)``)."""
        least = self._least()
        if self.model_rule == "tpe":
            return least
        d = len(self.space.names)  # type: ignore[union-attr]
        n = least
        while n - max(least, int(self.top_n_percent * n) // 100) <= d:
            n += 1
        return n

    def _draw(self) -> dict[str, Any]:
        if self.model_rule == "hpbandster":
            self._model_settings = {"min_good": self._least()}
        return super()._draw()

    def class_args(self) -> dict[str, Any]:
        return {"optimize_mode": self.optimize_mode, "seed": self.seed, "min_budget": self.min_budget,
                "max_budget": self.max_budget, "eta": self.eta, "min_points_in_model": self.min_points_in_model,
                "top_n_percent": self.top_n_percent, "num_samples": self.num_samples,
                "random_fraction": self.random_fraction, "bandwidth_factor": self.bandwidth_factor,
                "min_bandwidth": self.min_bandwidth, "resource_name": self.resource_name,
                "resource_type": self.resource_type, "rounds": self.rounds_arg, "resume": self.resume,
                "model_rule": self.model_rule}
