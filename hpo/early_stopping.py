"""Polyaxon-style metric thresholds: end the experiment once any trial reaches a goal.

(Polyaxon's other rule, ``{"kind": "failure_early_stopping", "percent": N}``, is the engine's
failure check, not a threshold.)

A rule is ``{"metric": name, "value": number, "optimization": "maximize" | "minimize"}``.  It is
checked against every intermediate and final result: a dict result is looked up by ``metric``
(``"default"`` names the tuned number); a plain-number result is the value of every metric.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

__all__ = ["threshold_reached"]


def threshold_reached(rules: Iterable[Mapping[str, Any]] | None, result: Any) -> str | None:
    """The reason text if ``result`` meets one of ``rules``, else None."""
    for rule in rules or ():
        if rule.get("kind") == "failure_early_stopping":  # about failed trials, not results
            continue
        metric = rule["metric"]
        if isinstance(result, Mapping):
            value = result.get(metric)
        else:
            value = result
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        goal = float(rule["value"])
        maximize = str(rule.get("optimization", "maximize")).lower() == "maximize"
        if (value >= goal) if maximize else (value <= goal):
            return f"early stopping: {metric} reached {value:g} ({'>=' if maximize else '<='} {goal:g})"
    return None
