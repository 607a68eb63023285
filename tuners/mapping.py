"""Polyaxon's ``mapping`` matrix: an explicit list of parameter sets, run in order."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from tuners.base import NoMoreTrials, Tuner
from tuners.registry import register_tuner

__all__ = ["MappingTuner"]


@register_tuner("mapping", aliases=("Mapping", "mappingtuner"))
class MappingTuner(Tuner):
    """Suggests ``values[0]``, ``values[1]``, ... then NoMoreTrials; sets already run (imported) are skipped."""

    loop_safe = True

    def __init__(self, values: list[dict[str, Any]], optimize_mode: str = "maximize", seed: int | None = None) -> None:
        super().__init__(optimize_mode, seed)
        if not isinstance(values, list) or not values or not all(isinstance(v, dict) for v in values):
            raise ValueError(f"values: got {values!r}, expected a non-empty list of parameter mappings")
        self.values = [dict(v) for v in values]
        self._next = 0
        self._done: list[dict[str, Any]] = []

    def class_args(self) -> dict[str, Any]:
        return {**super().class_args(), "values": self.values}

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        while self._next < len(self.values):
            params = self.values[self._next]
            self._next += 1
            if params in self._done:
                self._done.remove(params)
                continue
            return dict(params)
        raise NoMoreTrials

    def import_data(self, records: Iterable[Mapping[str, Any]]) -> None:
        self._done.extend(dict(r["parameter"]) for r in records)
