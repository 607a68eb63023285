"""Grid search over every discrete dimension (choice, randint, quantised types, matrix forms).

Polyaxon's settings are supported as constructor arguments:

* ``search_method``: ``'sequential'`` walks the grid in order (first dimension slowest, as
  ``hpo check -m`` prints it); ``'random'`` walks a random permutation of it, fixed by ``seed``.
* ``n_experiments``: stop after this many points: an ``int`` >= 1 is a count, a ``float`` in
  ``(0, 1]`` a fraction of the grid (rounded up: 0.4 of 5 points is 2, 0.5 of 5 is 3).

When the grid (or the ``n_experiments`` budget) is used up, :meth:`generate_parameters`
raises :class:`NoMoreTrials` and the experiment ends once the running trials finish.

The grid is never materialised: :class:`GridIndex` maps a point's index to the point, so a
huge grid costs nothing until it is walked (only each dimension's values are listed, and a
dimension with more than :data:`~hpo.search_space.MAX_GRID_VALUES` of them is refused).  The
same helpers (:class:`GridIndex`, :class:`UnseenPoints`, :func:`point_key`) let model-based
tuners notice that a finite space is exhausted instead of repeating points.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from hpo.search_space import (Categorical, Dimension, GridTooLargeError, NestedOption, SearchSpace,
                              SearchSpaceError, nested_value)
from tuners.base import NoMoreTrials, Tuner
from tuners.registry import register_tuner

__all__ = ["GridTuner", "GridIndex", "UnseenPoints", "point_key", "SEARCH_METHODS"]

SEARCH_METHODS = ("sequential", "random")
_PERMUTATION_LIMIT = 1 << 20  # up to this many points a random walk is a full permutation


def point_key(point: Mapping[str, Any]) -> str:
    """A canonical string of a point, to recognise it again (types kept: 1 and 1.0 differ)."""
    return json.dumps(point, sort_keys=True, default=str)


class _DimGrid:
    """The grid values of one dimension; nested options expand to their sub-grids."""

    def __init__(self, dim: Dimension) -> None:
        self.name = dim.name
        # entries: (value, None) for a plain value, (option, GridIndex) for a nested option
        self.entries: list[tuple[Any, GridIndex | None]] = []
        self.offsets: list[int] = []  # index of each entry's first point
        total = 0
        values = dim.options if isinstance(dim, Categorical) else dim.grid_values()
        for value in values:
            sub = GridIndex(value.space) if isinstance(value, NestedOption) else None
            self.entries.append((value, sub))
            self.offsets.append(total)
            total += sub.size if sub is not None else 1
        self.size = total
        self._flat = all(sub is None for _, sub in self.entries)

    def value_at(self, i: int) -> Any:
        if self._flat:
            return self.entries[i][0]
        lo, hi = 0, len(self.offsets) - 1
        while lo < hi:  # last entry whose offset <= i
            mid = (lo + hi + 1) // 2
            if self.offsets[mid] <= i:
                lo = mid
            else:
                hi = mid - 1
        value, sub = self.entries[lo]
        if sub is None:
            return value
        return nested_value(value, sub.point_at(i - self.offsets[lo]))


class GridIndex:
    """Random access to the grid of a discrete space, in :meth:`SearchSpace.iter_grid` order.

    Raises :class:`SearchSpaceError` (naming the parameter) when a dimension is continuous.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self._dims = [_DimGrid(d) for d in space]
        self.size = math.prod(d.size for d in self._dims)

    def __len__(self) -> int:
        return self.size

    def point_at(self, index: int) -> dict[str, Any]:
        """The ``index``-th point (0-based; first dimension slowest, last fastest)."""
        if not 0 <= index < self.size:
            raise IndexError(f"grid index {index} out of range [0, {self.size})")
        values = []
        for dim in reversed(self._dims):
            index, r = divmod(index, dim.size)
            values.append((dim.name, dim.value_at(r)))
        return dict(reversed(values))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self.point_at(i) for i in range(self.size))


def _index_order(size: int, method: str, rng: np.random.Generator) -> Iterator[int]:
    """Grid indices in the order ``method`` walks them (a random walk never repeats an index)."""
    if method == "sequential":
        yield from range(size)
    elif size <= _PERMUTATION_LIMIT:
        yield from (int(i) for i in rng.permutation(size))
    else:  # too big to permute: draw without replacement (the drawn count is what grows)
        drawn: set[int] = set()
        while len(drawn) < size:
            i = int(rng.integers(size))
            if i not in drawn:
                drawn.add(i)
                yield i


class UnseenPoints:
    """Points of a finite space that a tuner has not yet suggested (or had imported).

    Model-based tuners use it to avoid repeats and to signal exhaustion: ``exhausted`` once
    every grid point was seen; :meth:`pick` returns an unseen point (or None).  A space with a
    dimension too large to enumerate is never exhausted, and :meth:`pick` finds nothing there.
    """

    _ENUMERATE_LIMIT = 1 << 16

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        try:
            self.grid: GridIndex | None = GridIndex(space)
        except GridTooLargeError:
            self.grid = None
        self.seen: set[str] = set()

    def add(self, point: Mapping[str, Any]) -> None:
        if self.space.contains(point):
            self.seen.add(point_key(point))

    def __contains__(self, point: Mapping[str, Any]) -> bool:
        return point_key(point) in self.seen

    @property
    def exhausted(self) -> bool:
        return self.grid is not None and len(self.seen) >= self.grid.size

    def pick(self, rng: np.random.Generator) -> dict[str, Any] | None:
        """A uniformly drawn unseen grid point, or None when none is left (or none was found)."""
        if self.grid is None or self.exhausted:
            return None
        if self.grid.size <= self._ENUMERATE_LIMIT:
            left = [i for i in range(self.grid.size) if point_key(self.grid.point_at(i)) not in self.seen]
            return self.grid.point_at(left[int(rng.integers(len(left)))]) if left else None
        for _ in range(1000):
            point = self.grid.point_at(int(rng.integers(self.grid.size)))
            if point_key(point) not in self.seen:
                return point
        return None


def _check_search_method(search_method: Any) -> str:
    method = str(search_method).lower() if isinstance(search_method, str) else search_method
    if method not in SEARCH_METHODS:
        raise ValueError(f"search_method: got {search_method!r}, expected 'sequential' or 'random'")
    return method


def _check_n_experiments(n: Any) -> int | float | None:
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        raise ValueError(f"n_experiments: got {n!r}, expected a count (an integer >= 1) "
                         "or a fraction of the grid (a float in (0, 1])")
    if isinstance(n, int):
        if n < 1:
            raise ValueError(f"n_experiments: got {n!r}, a count must be >= 1")
        return n
    if not (math.isfinite(n) and 0 < n <= 1):
        raise ValueError(f"n_experiments: got {n!r}, a fraction must be a float in (0, 1] "
                         "(write a count as an integer, e.g. 4)")
    return float(n)


@register_tuner("grid", aliases=("GridSearch", "Grid", "GridTuner"))
class GridTuner(Tuner):
    """Enumerates the grid once (see the module doc for ``search_method`` and ``n_experiments``).

    A continuous dimension is rejected by :meth:`update_search_space` with a message that says
    how to discretise it.  Points already seen through :meth:`import_data` (with or without a
    result) are skipped, and count towards ``n_experiments``.

    Args:
        optimize_mode: ``"maximize"`` or ``"minimize"`` (the grid does not use results).
        seed: fixes the permutation of ``search_method='random'``.
        search_method: ``'sequential'`` (default) or ``'random'``.
        n_experiments: None (the whole grid), a count, or a fraction of the grid.
    """

    loop_safe = True

    def __init__(self, optimize_mode: str = "maximize", seed: int | None = None,
                 search_method: str = "sequential", n_experiments: int | float | None = None) -> None:
        super().__init__(optimize_mode, seed)
        self.search_method = _check_search_method(search_method)
        self.n_experiments = _check_n_experiments(n_experiments)
        self.grid: GridIndex | None = None
        self._order: Iterator[int] = iter(())
        self._done: set[str] = set()  # every point that ran or was suggested
        self._in_grid: set[str] = set()  # those that are points of the current grid
        self._target = 0

    def class_args(self) -> dict[str, Any]:
        return {**super().class_args(), "search_method": self.search_method, "n_experiments": self.n_experiments}

    # -- the grid ------------------------------------------------------------------------------
    def grid_space(self, space: SearchSpace) -> SearchSpace:
        """The discrete space to enumerate (subclasses discretise continuous dimensions here)."""
        try:
            space.grid_size()  # raises for continuous dimensions, naming the parameter
        except SearchSpaceError as exc:
            raise SearchSpaceError(f"{exc}; or use the 'Logspace' tuner, which discretises every numeric "
                                   "dimension into n points") from None
        return space

    @property
    def target(self) -> int:
        """How many points this tuner suggests in all (the grid, or the n_experiments budget)."""
        return self._target

    def update_search_space(self, search_space: Mapping[str, Any] | SearchSpace) -> None:
        super().update_search_space(search_space)
        assert self.space is not None
        self.grid = GridIndex(self.grid_space(self.space))
        size = self.grid.size
        n = self.n_experiments
        if n is None:
            self._target = size
        elif isinstance(n, int):
            self._target = min(n, size)
        else:  # a fraction, rounded up (and guarded against 0.4 * 5 == 2.0000000000000004)
            self._target = min(size, max(1, math.ceil(round(n * size, 9))))
        self._order = _index_order(size, self.search_method, np.random.default_rng(self.seed))
        self._in_grid = {k for k in self._done if self._is_grid_key(k)}

    def _is_grid_key(self, key: str) -> bool:
        assert self.grid is not None
        return self.grid.space.contains(json.loads(key))

    def _mark(self, point: Mapping[str, Any]) -> None:
        key = point_key(point)
        if key in self._done:
            return
        self._done.add(key)
        if self.grid is not None and self.grid.space.contains(point):
            self._in_grid.add(key)

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        if self.grid is None:
            raise RuntimeError("update_search_space must be called first")
        if len(self._in_grid) >= self._target:
            raise NoMoreTrials(self._exhausted_message())
        for index in self._order:
            point = self.grid.point_at(index)
            if point_key(point) not in self._done:
                self._mark(point)
                return point
        raise NoMoreTrials(self._exhausted_message())

    def _exhausted_message(self) -> str:
        assert self.grid is not None
        if self._target < self.grid.size:
            return f"n_experiments={self.n_experiments!r}: {self._target} of the {self.grid.size} grid points suggested"
        return "every point of the grid has been suggested"

    def import_data(self, records: Iterable[Mapping[str, Any]]) -> None:
        for record in records:  # every point that ran counts as done, with or without a result
            self._mark(record["parameter"])

    def receive_trial_result(self, parameter_id: int, parameters: Mapping[str, Any], value: float,
                             **kwargs: Any) -> None:
        self._mark(parameters)
