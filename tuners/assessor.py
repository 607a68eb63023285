"""The assessor contract (NNI-compatible): early stopping from intermediate results.

The engine calls :meth:`Assessor.assess_trial` after each intermediate result of a running trial,
with every scalar intermediate value so far; returning :attr:`AssessResult.Bad` stops the trial
(it ends EARLY_STOPPED, its process group is killed, and its last intermediate value is given to
the tuner as its result).  :meth:`Assessor.trial_end` is called once per trial when it ends.
Calls come one at a time, in order.
"""
from __future__ import annotations

import difflib
import importlib
import sys
from abc import ABC, abstractmethod
from enum import Enum
from typing import Any

from tuners.base import OPTIMIZE_MODES

__all__ = ["Assessor", "AssessResult", "register_assessor", "create_assessor", "verdict", "is_bad"]


class AssessResult(Enum):
    Good = True
    Bad = False


def verdict(good: bool) -> Any:
    """``AssessResult.Good`` or ``.Bad``: NNI's enum where NNI is loaded (its dispatcher and harnesses accept
    only theirs), else hpo's; both mean the same to the engine."""
    nni_assessor = sys.modules.get("nni.assessor")
    enum = getattr(nni_assessor, "AssessResult", None) or AssessResult
    return enum.Good if good else enum.Bad


def is_bad(result: Any) -> bool:
    """Whether an assessor's answer stops the trial: hpo's or NNI's ``AssessResult``, or a bool as NNI allows
    (True: keep going).  Raises TypeError for anything else, as NNI does."""
    if isinstance(result, bool):
        return not result
    if isinstance(result, Enum) and type(result).__name__ == "AssessResult" and isinstance(result.value, bool):
        return not result.value
    raise TypeError(f"assess_trial must return AssessResult.Good or AssessResult.Bad (or a bool), got {result!r}")


class Assessor(ABC):
    """Base class of every assessor.

    Args:
        optimize_mode: ``"maximize"`` or ``"minimize"`` the intermediate metric.
    """

    loop_safe = False  # as Tuner.loop_safe

    def __init__(self, optimize_mode: str = "maximize") -> None:
        mode = str(optimize_mode).lower()
        if mode not in OPTIMIZE_MODES:
            raise ValueError(f"optimize_mode: got {optimize_mode!r}, expected 'maximize' or 'minimize'")
        self.optimize_mode = mode

    @property
    def maximize(self) -> bool:
        return self.optimize_mode == "maximize"

    @abstractmethod
    def assess_trial(self, trial_id: str, trial_history: list[float]) -> AssessResult:
        """Good to let the trial go on, Bad to stop it now."""

    def trial_end(self, trial_id: str, success: bool) -> None:
        """The trial ended (``success``: it SUCCEEDED)."""


_ASSESSORS: dict[str, Any] = {}
_BUILTIN = {
    "medianstop": ("tuners.medianstop", ("medianstop", "median", "medianstopping")),
    "asha": ("tuners.asha", ("asha", "successivehalving")),
    "evidencestop": ("tuners.evidence", ("evidencestop", "evidence")),
}


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def register_assessor(name: str, aliases: tuple[str, ...] = ()) -> Any:
    """Class decorator: make an Assessor subclass available by ``name`` and ``aliases``."""

    def deco(cls: Any) -> Any:
        for n in (name, *aliases):
            _ASSESSORS[_norm(n)] = cls
        return cls

    return deco


def create_assessor(name: str | None = None, class_args: dict[str, Any] | None = None, *,
                    class_name: str | None = None, code_directory: Any = None) -> Assessor:
    """Instantiate an assessor by registered ``name`` or by ``class_name`` (+ ``code_directory``)."""
    from tuners.registry import load_class

    if class_name:
        cls = load_class(class_name, code_directory)
    else:
        key = _norm(name or "")
        for module, aliases in _BUILTIN.values():
            if key in aliases:
                importlib.import_module(module)
        if key not in _ASSESSORS:
            close = difflib.get_close_matches((name or "").lower(), list(_BUILTIN), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown assessor {name!r}{hint} (known: {', '.join(_BUILTIN)})")
        cls = _ASSESSORS[key]
    try:
        return cls(**(class_args or {}))
    except TypeError as exc:
        raise ValueError(f"assessor {name or class_name!r}: bad class_args {class_args!r} ({exc})") from None
