"""The Gradient client's errors and warnings: user mistakes are one-line ``ValueError`` s (hpo's CLI and its
excepthook print them as ``hpo: error: ...``)."""
from __future__ import annotations

__all__ = ["GradientSdkError", "InvalidParametersError", "UnhonouredFieldWarning"]


class GradientSdkError(ValueError):
    """A bad call: an unknown experiment id, an invalid parameter, an action the experiment's state forbids."""


class InvalidParametersError(GradientSdkError):
    """Parameters that do not go together (``model_path`` without ``model_type``), as Gradient names it."""


class UnhonouredFieldWarning(UserWarning):
    """A Paperspace field given that hpo stores and shows but cannot act on for the chosen platform."""
