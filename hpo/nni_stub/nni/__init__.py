"""hpo's stand-in for NNI's trial API: ``import nni`` in a trial where NNI is not installed (stdlib only).

hpo puts this folder on a trial's ``PYTHONPATH``.  When a real ``nni`` is importable from anywhere else on
``sys.path``, importing this module loads that one instead (and ``import nni`` gives it), so a real
installation is never shadowed.  Otherwise it offers NNI's trial functions on top of hpo's trial API.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from typing import Any

_HERE = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _real_nni() -> Any:
    """The spec of an ``nni`` found on ``sys.path`` outside this folder, or None."""
    others = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != _HERE]
    return importlib.machinery.PathFinder.find_spec("nni", others)


_spec = _real_nni()
if _spec is not None and _spec.loader is not None:
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["nni"] = _module  # the import system hands back whatever sys.modules holds after this runs
    _spec.loader.exec_module(_module)
else:
    from hpo import trial as _trial

    __version__ = "3.0"
    __all__ = ["get_next_parameter", "get_next_parameters", "get_current_parameter", "report_intermediate_result",
               "report_final_result", "get_experiment_id", "get_trial_id", "get_sequence_id", "NoMoreTrialError"]

    def get_next_parameter() -> dict[str, Any]:
        """The trial's parameters; ``{}`` outside an experiment, as NNI's standalone mode gives."""
        params = _trial.get_next_parameter()
        return {} if params is None else params

    get_next_parameters = get_next_parameter

    def get_current_parameter(tag: str | None = None) -> Any:
        """The parameters got so far, or one of them by name."""
        return _trial.get_current_parameter(tag)

    def report_intermediate_result(metric: Any) -> None:
        """Report a per-epoch metric (a number, or a dict with a numeric ``default``)."""
        _trial.report_intermediate_result(metric)

    def report_final_result(metric: Any) -> None:
        """Report the trial's final metric (a number, or a dict with a numeric ``default``)."""
        _trial.report_final_result(metric)

    get_experiment_id = _trial.get_experiment_id
    get_trial_id = _trial.get_trial_id
    get_sequence_id = _trial.get_sequence_id

    class NoMoreTrialError(Exception):
        """Raised by a tuner that has nothing more to suggest (NNI's name)."""
