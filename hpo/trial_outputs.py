"""Polyaxon's tracking calls in a trial (stdlib only): ``log_outputs`` (the final result) and ``log_metrics``.

The tuned key is ``HPO_POLYAXON_METRIC`` (the matrix's metric, set by ``hpo run``), else the first numeric
output logged.  Declared outputs (``HPO_POLYAXON_OUTPUTS``: ``{name: type}``) are checked when logged.
Outputs accumulate: the final result is reported once the tuned key is known (else when the process exits).
"""
from __future__ import annotations

import atexit
import json
import os
from typing import Any

from hpo.trial import report_final_result, report_intermediate_result

__all__ = ["log_outputs", "log_metrics"]

_outputs: dict[str, Any] = {}
_reported = False
_NUMERIC = ("int", "float", "metric")


def _check(name: str, value: Any) -> None:
    kind = json.loads(os.environ.get("HPO_POLYAXON_OUTPUTS") or "{}").get(name)
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str),
          "dict": lambda v: isinstance(v, dict), "list": lambda v: isinstance(v, list)}
    ok["metric"] = ok["float"]
    if kind in ok and value is not None and not ok[kind](value):
        raise ValueError(f"log_outputs: output {name!r} is declared {kind}, got {value!r}")


def _tuned(values: dict[str, Any]) -> str | None:
    metric = os.environ.get("HPO_POLYAXON_METRIC")
    if metric:
        return metric if metric in values else None
    return next((k for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)), None)


def _report() -> None:
    global _reported
    if _reported or not _outputs:
        return
    key = _tuned(_outputs)
    if key is None:  # nothing numeric: recorded as the result's keys, with no number to tune on
        key = "_none"
    _reported = True
    report_final_result({**_outputs, "default": _outputs.get(key, float("nan"))})


def log_outputs(**outputs: Any) -> None:
    """Log the run's outputs (``loss=0.3, accuracy=0.91``): together they are the trial's final result."""
    if _reported:
        raise RuntimeError("log_outputs: the outputs were already reported as the final result")
    for name, value in outputs.items():
        if hasattr(value, "item"):
            value = value.item()
        _check(name, value)
        _outputs[name] = value
    if os.environ.get("HPO_POLYAXON_METRIC") in _outputs:
        _report()


def log_metrics(step: int | None = None, **metrics: Any) -> None:
    """Log intermediate metrics (``step=3, accuracy=0.88``); the tuned key is the one early stopping sees."""
    values = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
    key = _tuned(values)
    if key is None:
        raise ValueError(f"log_metrics: no numeric metric among {sorted(values)}"
                         + (f" (the tuned one is {os.environ['HPO_POLYAXON_METRIC']!r})"
                            if os.environ.get("HPO_POLYAXON_METRIC") else ""))
    report_intermediate_result({**values, "default": values[key], **({"step": step} if step is not None else {})})


atexit.register(_report)
