"""Curve problems from real scikit-learn training runs (``benchmarks/data/learning_curves.npz``, written by
``benchmarks/learning_curves.py``): each task's 250 sampled configurations, their validation metric after each of
30 steps (an epoch, or 3 boosting stages).

A tabular benchmark: the search space is derived from the table (a float column: uniform over its range, on a log
scale when it spans more than 50x; an int column with more than 6 values: randint; other columns: choice), and a
suggested configuration is evaluated as the *nearest* configuration of the table (numeric distances in units of the
range, on the log scale where the space is; a differing choice counts 1).  Loss: the metric (minimize) or its
negative (maximize), minus the lowest loss anywhere in the table, so regret is >= 0.  No noise is added: the curves
are real runs, noisy as they are.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from problems import CurveProblem

__all__ = ["table_problems", "TABLE_FILE"]

TABLE_FILE = Path(__file__).resolve().parent / "data" / "learning_curves.npz"


def _column_space(values: list[Any]) -> dict[str, Any]:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    distinct = sorted({json.dumps(v) for v in values})
    if numbers and all(isinstance(v, float) for v in values):
        low, high = min(values), max(values)
        return {"_type": "loguniform" if low > 0 and high / low > 50 else "uniform", "_value": [low, high]}
    if numbers and len(distinct) > 6:
        return {"_type": "randint", "_value": [min(values), max(values) + 1]}
    options = [json.loads(v) for v in distinct]
    return {"_type": "choice", "_value": sorted(options) if numbers else options}


class _Table:
    """One task: its space, its configurations as coordinates, and its loss curves."""

    def __init__(self, configs: list[dict[str, Any]], curves: np.ndarray, maximize: bool) -> None:
        self.names = sorted({k for c in configs for k in c})
        self.space = {n: _column_space([c[n] for c in configs]) for n in self.names}
        self.configs = configs
        loss = -curves.astype(float) if maximize else curves.astype(float)
        self.loss = loss - float(np.nanmin(loss))
        self.coords = np.array([[self._coord(n, c[n]) for n in self.names] for c in configs])
        self.numeric = np.array([self.space[n]["_type"] != "choice" for n in self.names])

    def _coord(self, name: str, value: Any) -> float:
        dim = self.space[name]
        if dim["_type"] == "choice":
            return float(dim["_value"].index(value))
        low, high = dim["_value"][0], dim["_value"][1] - (1 if dim["_type"] == "randint" else 0)
        if dim["_type"] == "loguniform":
            return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
        return (float(value) - low) / (high - low) if high > low else 0.0

    def nearest(self, params: dict[str, Any]) -> int:
        x = np.array([self._coord(n, params[n]) for n in self.names])
        d = np.where(self.numeric, np.abs(self.coords - x), (self.coords != x).astype(float))
        return int(np.argmin((d * d).sum(axis=1)))

    def fn(self, params: dict[str, Any], epochs: float, noisy: bool = True) -> float:
        steps = self.loss.shape[1]
        step = min(max(int(round(float(epochs))), 1), steps)
        return float(self.loss[self.nearest(params), step - 1])


@lru_cache(maxsize=1)
def table_problems() -> list[CurveProblem]:
    """One curve problem per task of the table (``sk_<task>``), R = the number of steps; [] without the file."""
    if not TABLE_FILE.exists():
        return []
    data = np.load(TABLE_FILE)
    meta = json.loads(str(data["meta"]))
    out = []
    for task, info in meta["tasks"].items():
        table = _Table(info["configs"], data[f"{task}/curves"], info["mode"] == "maximize")
        out.append(CurveProblem(f"sk_{task}", table.space, table.fn, int(meta["steps"]),
                                f"scikit-learn table: {info['about']}, validation {info['metric']} "
                                f"({info['mode']}), nearest of 250 configurations"))
    return out
