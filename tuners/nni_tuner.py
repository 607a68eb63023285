"""A tuner written for NNI (a subclass of ``nni.tuner.Tuner``) behind hpo's tuner contract.

``tuner.class_name`` may name such a class (NNI must be installed where the engine runs): it gets NNI's
calls as NNI's dispatcher makes them: ``generate_parameters(id)``, ``receive_trial_result(id, parameters,
value, customized=False)`` with the result as the trial reported it (a number, or a dict with ``default``),
``trial_end(id, success)``, ``update_search_space(space)`` and ``import_data`` of records with a value.  Its
``nni.NoMoreTrialError`` ends the search like hpo's :class:`~tuners.base.NoMoreTrials`.  Assessors written for
NNI need no wrapper: the engine reads NNI's ``AssessResult`` and bools (:func:`tuners.assessor.is_bad`).
"""
from __future__ import annotations

import enum
from typing import Any, Iterable, Mapping

from tuners.base import OPTIMIZE_MODES, NoMoreTrials, Tuner

__all__ = ["NniTuner", "is_nni_class"]


def is_nni_class(cls: type) -> bool:
    """Whether ``cls`` derives from one of NNI's classes (its module is ``nni`` or under it)."""
    return any(c.__module__ == "nni" or c.__module__.startswith("nni.") for c in cls.__mro__)


def _mode(inner: Any, class_args: Mapping[str, Any]) -> str:
    mode = class_args.get("optimize_mode", getattr(inner, "optimize_mode", "maximize"))
    mode = str(mode.value if isinstance(mode, enum.Enum) else mode).lower()
    return mode if mode in OPTIMIZE_MODES else "maximize"


class NniTuner(Tuner):
    """Runs ``inner``, an instance of an NNI tuner class made with ``class_args``."""

    receives_reported_value = True

    def __init__(self, inner: Any, class_args: Mapping[str, Any]) -> None:
        super().__init__(_mode(inner, class_args))
        self.inner = inner
        self._class_args = dict(class_args)

    def class_args(self) -> dict[str, Any]:
        return dict(self._class_args)

    def update_search_space(self, search_space: Any) -> None:
        """Hand the space to the NNI tuner as NNI's JSON form (hpo does not re-read it)."""
        self.inner.update_search_space(dict(search_space))

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        """The NNI tuner's suggestion; its ``NoMoreTrialError`` becomes :class:`NoMoreTrials`."""
        try:
            return self.inner.generate_parameters(parameter_id, **kwargs)
        except Exception as exc:
            if type(exc).__name__ == "NoMoreTrialError" and is_nni_class(type(exc)):
                raise NoMoreTrials(str(exc)) from None
            raise

    def receive_trial_result(self, parameter_id: int, parameters: Mapping[str, Any], value: Any,
                             **kwargs: Any) -> None:
        """The trial's result as reported (a number, or a dict with ``default``)."""
        self.inner.receive_trial_result(parameter_id, dict(parameters), value, customized=False)

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        self.inner.trial_end(parameter_id, success)

    def import_data(self, records: Iterable[Mapping[str, Any]]) -> None:
        """NNI's ``import_data``: records ``{"parameter", "value"}``, those without a value left out."""
        data = [{"parameter": dict(r["parameter"]), "value": r["value"]} for r in records if r.get("value") is not None]
        if data:
            self.inner.import_data(data)
