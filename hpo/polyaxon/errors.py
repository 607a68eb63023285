"""The one error of the Polyaxon layer: a user mistake, told in one line (``where: what, expected what``)."""
from __future__ import annotations

import reprlib

__all__ = ["PolyaxonError", "show"]

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother = 3, 60, 60


class PolyaxonError(ValueError):
    """A Polyaxon file, operation or parameter is invalid; the message is one line naming where."""

    def __init__(self, message: str, *, path: str = "", problem: str | None = None) -> None:
        super().__init__(" ".join(str(message).split()))
        self.path, self.problem = path, problem  # set when converted from a model's error (see base.py)


def show(value: object) -> str:
    """A bounded repr of a user value."""
    return _repr.repr(value)
