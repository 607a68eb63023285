"""Grid search over every discrete dimension (choice, randint, quantised types, matrix forms)."""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

from hpo.search_space import SearchSpace
from tuners.base import NoMoreTrials, Tuner
from tuners.registry import register_tuner

__all__ = ["GridTuner"]


@register_tuner("grid", aliases=("GridSearch", "Grid"))
class GridTuner(Tuner):
    """Enumerates the full grid once, first dimension slowest, then raises NoMoreTrials.

    A continuous dimension is rejected by :meth:`update_search_space` with a message that says
    how to discretise it.  Points already seen through :meth:`import_data` are skipped.
    """

    def __init__(self, optimize_mode: str = "maximize", seed: int | None = None) -> None:
        super().__init__(optimize_mode, seed)
        self._points: Iterator[dict[str, Any]] = iter(())
        self._done: set[str] = set()

    def update_search_space(self, search_space: Mapping[str, Any] | SearchSpace) -> None:
        super().update_search_space(search_space)
        assert self.space is not None
        self.space.grid_size()  # raises for continuous dimensions, naming the parameter
        self._points = self.space.iter_grid()

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        for point in self._points:
            if _key(point) not in self._done:
                self._done.add(_key(point))
                return point
        raise NoMoreTrials("every point of the grid has been suggested")

    def import_data(self, records: Iterable[Mapping[str, Any]]) -> None:
        for record in records:  # every point that ran counts as done, with or without a result
            self._done.add(_key(record["parameter"]))

    def receive_trial_result(self, parameter_id: int, parameters: Mapping[str, Any], value: float,
                             **kwargs: Any) -> None:
        self._done.add(_key(parameters))


def _key(point: Mapping[str, Any]) -> str:
    import json
    return json.dumps(point, sort_keys=True, default=str)
