"""Polyaxon's hyper-parameter kinds (``V1Hp*``) and their translation into an hpo search-space spec."""
from __future__ import annotations

import datetime
import math
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, field_validator

from hpo.polyaxon.base import V1Model
from hpo.polyaxon.errors import PolyaxonError, show

__all__ = ["V1HpChoice", "V1HpPChoice", "V1HpRange", "V1HpDateRange", "V1HpDateTimeRange", "V1HpLinSpace",
           "V1HpLogSpace", "V1HpGeomSpace", "V1HpUniform", "V1HpQUniform", "V1HpLogUniform", "V1HpQLogUniform",
           "V1HpNormal", "V1HpQNormal", "V1HpLogNormal", "V1HpQLogNormal", "V1HpParam", "HP_CLASSES"]


def _numbers(value: Any, keys: tuple[str, ...], kind: str, optional: int = 0) -> list[float]:
    """``value`` as a list (``[a, b, c]``, ``{key: ...}`` or ``'a:b:c'``) of len(keys) numbers (the last
    ``optional`` of them may be left out)."""
    if isinstance(value, str):
        try:
            value = [float(p) for p in value.split(":")]
        except ValueError:
            value = None
    elif isinstance(value, dict):
        value = [value[k] for k in keys if k in value] if set(value) <= set(keys) else None
    shape = ":".join(keys)
    if not isinstance(value, (list, tuple)) or not len(keys) - optional <= len(value) <= len(keys) or \
            any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in value):
        raise PolyaxonError(f"{kind} takes {shape} (a list, a mapping or a string), got {show(value)}")
    return list(value)


class _Hp(V1Model):
    """One hyper-parameter: ``kind`` and ``value``; ``spec()`` is its hpo search-space form."""

    is_distribution: ClassVar[bool] = False  # random draws: refused by grid search

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError


class V1HpChoice(_Hp):
    kind: Literal["choice"] = "choice"
    value: list[Any]

    def spec(self) -> dict[str, Any]:
        return {"_type": "choice", "_value": list(self.value)}


class V1HpPChoice(_Hp):
    """``[[value, probability], ...]``: each probability in [0, 1], their total at most 1."""

    kind: Literal["pchoice"] = "pchoice"
    value: list[Any]
    is_distribution: ClassVar[bool] = True

    @field_validator("value")
    @classmethod
    def _probabilities(cls, value: list[Any]) -> list[Any]:
        for item in value:
            if not isinstance(item, (list, tuple)) or len(item) != 2 or isinstance(item[1], bool) or \
                    not isinstance(item[1], (int, float)) or not 0 <= item[1] <= 1:
                raise PolyaxonError(f"pchoice takes [[value, probability], ...] with probabilities in [0, 1], "
                                    f"got {show(item)}")
        total = sum(p for _, p in value)
        if total > 1 + 1e-9:
            raise PolyaxonError(f"pchoice probabilities sum to {total:g}; expected a total of at most 1")
        return [list(item) for item in value]

    def spec(self) -> dict[str, Any]:
        return {"_type": "pchoice", "_value": self.value}


class V1HpRange(_Hp):
    kind: Literal["range"] = "range"
    value: Any

    def spec(self) -> dict[str, Any]:
        return {"_type": "range", "_value": _numbers(self.value, ("start", "stop", "step"), "range")}


class V1HpLinSpace(_Hp):
    kind: Literal["linspace"] = "linspace"
    value: Any

    def spec(self) -> dict[str, Any]:
        return {"_type": "linspace", "_value": _numbers(self.value, ("start", "stop", "num"), "linspace")}


class V1HpGeomSpace(_Hp):
    kind: Literal["geomspace"] = "geomspace"
    value: Any

    def spec(self) -> dict[str, Any]:
        return {"_type": "geomspace", "_value": _numbers(self.value, ("start", "stop", "num"), "geomspace")}


class V1HpLogSpace(_Hp):
    """``start:stop:num[:base]`` (exponents; base 10 by default)."""

    kind: Literal["logspace"] = "logspace"
    value: Any

    def spec(self) -> dict[str, Any]:
        nums = _numbers(self.value, ("start", "stop", "num", "base"), "logspace", optional=1)
        if len(nums) == 3 or nums[3] == 10:
            return {"_type": "logspace", "_value": nums[:3]}
        import numpy as np
        if nums[2] != int(nums[2]) or nums[2] < 1:
            raise PolyaxonError(f"logspace num must be a positive integer, got {show(nums[2])}")
        return {"_type": "values", "_value": [float(v) for v in np.logspace(nums[0], nums[1], int(nums[2]),
                                                                             base=nums[3])]}


def _date_steps(start: Any, stop: Any, step: datetime.timedelta, parse: Any, kind: str) -> list[str]:
    try:
        first, last = parse(str(start)), parse(str(stop))
    except ValueError as e:
        raise PolyaxonError(f"{kind}: {e}") from None
    if step <= datetime.timedelta(0) or last < first:
        raise PolyaxonError(f"{kind} needs start <= stop and a positive step, got {show([start, stop])}")
    out = []
    while first <= last and len(out) <= 1_000_000:
        out.append(first.isoformat())
        first += step
    return out


class V1HpDateRange(_Hp):
    """``[start_date, stop_date, step_days]`` (stop included); the input must be of type ``date``."""

    kind: Literal["daterange"] = "daterange"
    value: Any

    def spec(self) -> dict[str, Any]:
        start, stop, step = _parts(self.value, "daterange", "start_date:stop_date:step_days")
        return {"_type": "values", "_value": _date_steps(start, stop, datetime.timedelta(days=float(step)),
                                                         datetime.date.fromisoformat, "daterange")}


class V1HpDateTimeRange(_Hp):
    """``[start, stop, step_seconds]`` (stop included); the input must be of type ``datetime``."""

    kind: Literal["datetimerange"] = "datetimerange"
    value: Any

    def spec(self) -> dict[str, Any]:
        start, stop, step = _parts(self.value, "datetimerange", "start:stop:step_seconds")
        return {"_type": "values", "_value": _date_steps(start, stop, datetime.timedelta(seconds=float(step)),
                                                         datetime.datetime.fromisoformat, "datetimerange")}


def _parts(value: Any, kind: str, shape: str) -> list[Any]:
    if isinstance(value, dict):
        value = [value.get("start"), value.get("stop"), value.get("step")]
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise PolyaxonError(f"{kind} takes [{shape.replace(':', ', ')}], got {show(value)}")
    try:
        float(value[2])
    except (TypeError, ValueError):
        raise PolyaxonError(f"{kind}: step must be a number, got {show(value[2])}") from None
    return list(value)


def _dist(kind: str, keys: tuple[str, ...]) -> type[_Hp]:
    """A distribution class: ``value`` is ``[a, b(, q)]`` (a trailing ``size`` is refused: one value per run)."""

    def spec(self: _Hp) -> dict[str, Any]:
        return {"_type": kind, "_value": _numbers(self.value, keys, kind)}  # type: ignore[attr-defined]
    ns = {"__annotations__": {"kind": Literal[kind], "value": Any, "is_distribution": ClassVar[bool]}, "kind": kind, "spec": spec,
          "is_distribution": True, "__doc__": f"``{kind}``: ``[{', '.join(keys)}]``.",
          "__module__": __name__}
    return type(f"V1Hp{kind}", (_Hp,), ns)


V1HpUniform = _dist("uniform", ("low", "high"))
V1HpQUniform = _dist("quniform", ("low", "high", "q"))
V1HpLogUniform = _dist("loguniform", ("low", "high"))
V1HpQLogUniform = _dist("qloguniform", ("low", "high", "q"))
V1HpNormal = _dist("normal", ("loc", "scale"))
V1HpQNormal = _dist("qnormal", ("loc", "scale", "q"))
V1HpLogNormal = _dist("lognormal", ("loc", "scale"))
V1HpQLogNormal = _dist("qlognormal", ("loc", "scale", "q"))
for _cls, _name in ((V1HpUniform, "V1HpUniform"), (V1HpQUniform, "V1HpQUniform"), (V1HpLogUniform, "V1HpLogUniform"),
                    (V1HpQLogUniform, "V1HpQLogUniform"), (V1HpNormal, "V1HpNormal"), (V1HpQNormal, "V1HpQNormal"),
                    (V1HpLogNormal, "V1HpLogNormal"), (V1HpQLogNormal, "V1HpQLogNormal")):
    _cls.__name__ = _cls.__qualname__ = _name

HP_CLASSES: dict[str, type[_Hp]] = {
    c.model_fields["kind"].default: c for c in (
        V1HpChoice, V1HpPChoice, V1HpRange, V1HpDateRange, V1HpDateTimeRange, V1HpLinSpace, V1HpLogSpace,
        V1HpGeomSpace, V1HpUniform, V1HpQUniform, V1HpLogUniform, V1HpQLogUniform, V1HpNormal, V1HpQNormal,
        V1HpLogNormal, V1HpQLogNormal)}

V1HpParam = Annotated[Union[tuple(HP_CLASSES.values())], Field(discriminator="kind")]  # type: ignore[valid-type]
