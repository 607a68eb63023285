"""Search spaces: NNI's ``_type``/``_value`` format and Polyaxon's matrix forms, parsed once.

:func:`parse_search_space` turns the user's JSON-like mapping into a :class:`SearchSpace`, a
tree of typed, immutable :class:`Dimension` objects that every tuner works from.  Invalid
spaces are rejected here, before anything runs, with a :class:`SearchSpaceError` that names
the parameter, the bad value and what was expected.

Supported forms (``name: spec``):

* Polyaxon's ``pchoice`` (``[[option, probability], ...]``): a choice whose options are drawn with
  those probabilities by random search.
* NNI: ``choice`` (options may be nested sub-spaces: dicts with a ``_name`` key), ``randint``
  ``[low, high)``, ``uniform``, ``quniform``, ``loguniform``, ``qloguniform``, ``normal``,
  ``qnormal``, ``lognormal``, ``qlognormal``.
* Polyaxon matrix (discrete): ``values``, ``range`` (start:stop:step, stop excluded),
  ``linspace`` (start:stop:num), ``logspace`` (start:stop:num, base-10 exponents like
  ``numpy.logspace``), ``geomspace`` (start:stop:num), written either as
  ``{"_type": "linspace", "_value": [0, 1, 5]}`` or as ``{"linspace": "0:1:5"}``.

Quantised types return ``round(x / q) * q`` clipped to ``[low, high]``; when ``low``,
``high`` and ``q`` are all integers the value is returned as an ``int``.

Limits, so that any space is checked in bounded time and memory: every number is finite and so is
every value a tuner can compute from it (``high - low``, ``x / q``, ``exp(x)`` of the log types within
``mu +- 10 sigma``); ``randint`` bounds lie within +-2**53 (exact as floats); nested choices are at most
:data:`MAX_NESTING` deep and a space has at most :data:`MAX_PARAMETERS` parameters in all; a matrix form,
and the grid of one dimension, has at most :data:`MAX_GRID_VALUES` values (a grid of many dimensions
is never materialised, so its size is not limited).
"""
from __future__ import annotations

import math
import reprlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SearchSpaceError", "GridTooLargeError", "SearchSpace", "Dimension", "Categorical", "NestedOption",
    "IntRange", "Numeric", "parse_search_space", "is_finite_number", "MAX_GRID_VALUES", "MAX_NESTING",
    "MAX_PARAMETERS",
]

NNI_TYPES = ("choice", "randint", "uniform", "quniform", "loguniform", "qloguniform",
             "normal", "qnormal", "lognormal", "qlognormal")
MATRIX_TYPES = ("values", "range", "linspace", "logspace", "geomspace")
MAX_GRID_VALUES = 1_000_000  # values of one dimension's grid, and of a matrix form
MAX_NESTING = 32  # levels of nested choices
MAX_PARAMETERS = 100_000  # parameters in all, nested ones included
MAX_INT = 2 ** 53  # randint bounds: integers that floats represent exactly
_SIGMAS = 10  # a normal value lies within mu +- 10 sigma (a chance of 1e-23 to fall outside)
_MAX_LOG = math.log(sys.float_info.max)  # exp(x) of a larger x overflows
_repr = reprlib.Repr()  # bounded reprs of user values, whatever their size or depth
_repr.maxlevel, _repr.maxstring, _repr.maxother = 3, 60, 60
_show = _repr.repr


class SearchSpaceError(ValueError):
    """The search space is malformed; the message names the parameter and the problem."""


class GridTooLargeError(SearchSpaceError):
    """A dimension has more than :data:`MAX_GRID_VALUES` grid values: too many to enumerate."""


@dataclass(frozen=True)
class NestedOption:
    """One option of a nested ``choice``: a named sub-space plus constant keys."""

    name: str
    space: "SearchSpace"
    constants: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Dimension:
    """Base class of one named parameter."""

    name: str

    @property
    def is_discrete(self) -> bool:
        return False

    def grid_values(self) -> list[Any]:
        """Every value of a discrete dimension, in order; raises for continuous ones."""
        raise SearchSpaceError(
            f"parameter {self.name!r} is continuous ({self.describe()}) and cannot be enumerated by a grid: "
            "use 'choice', 'randint', 'quniform'/'qloguniform', or a matrix form such as "
            "{'_type': 'linspace', '_value': [low, high, num]}")

    def describe(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class Categorical(Dimension):
    """``choice`` and Polyaxon's matrix forms: a finite ordered list of options."""

    options: tuple[Any, ...] = ()
    kind: str = "choice"
    weights: tuple[float, ...] | None = None  # pchoice: each option's probability (summing to 1)

    @property
    def is_discrete(self) -> bool:
        return True

    @property
    def is_nested(self) -> bool:
        return any(isinstance(o, NestedOption) for o in self.options)

    def grid_values(self) -> list[Any]:
        return list(self.options)

    def describe(self) -> str:
        return f"{self.kind} of {len(self.options)}"


@dataclass(frozen=True)
class IntRange(Dimension):
    """``randint``: integers in ``[low, high)``."""

    low: int = 0
    high: int = 1

    @property
    def is_discrete(self) -> bool:
        return True

    def grid_values(self) -> list[int]:
        _check_grid_count(self, self.high - self.low)
        return list(range(self.low, self.high))

    def describe(self) -> str:
        return f"randint [{self.low}, {self.high})"


@dataclass(frozen=True)
class Numeric(Dimension):
    """The eight real-valued NNI types.

    ``distribution`` is ``"uniform"`` (bounded by ``low``/``high``) or ``"normal"`` (``mu``,
    ``sigma``).  ``log`` means the distribution applies to ``log(x)``: for uniform, ``low`` and
    ``high`` are still given in the user's units.  ``q`` quantises the result.
    """

    distribution: str = "uniform"
    low: float = 0.0
    high: float = 1.0
    mu: float = 0.0
    sigma: float = 1.0
    log: bool = False
    q: float | None = None
    integer: bool = False  # quantised with integral low/high/q: values are ints

    @property
    def nni_type(self) -> str:
        base = ("log" if self.log else "") + self.distribution
        return ("q" + base) if self.q is not None else base

    @property
    def is_discrete(self) -> bool:
        return self.q is not None and self.distribution == "uniform"

    def quantise(self, x: float) -> float | int:
        """Round ``x`` to this dimension's grid (identity when ``q`` is None)."""
        if self.q is None:
            return float(x)
        v = round(x / self.q) * self.q
        if self.distribution == "uniform":
            v = min(max(v, self.low), self.high)
        v = round(v, 12)
        return int(round(v)) if self.integer else float(v)

    def grid_values(self) -> list[Any]:
        if not self.is_discrete:
            return super().grid_values()
        assert self.q is not None
        first = math.ceil(self.low / self.q - 1e-9)
        last = math.floor(self.high / self.q + 1e-9)
        _check_grid_count(self, last - first + 1)
        values = [self.quantise(k * self.q) for k in range(first, last + 1)]
        if not values or values[0] > self.low + 1e-12:
            values.insert(0, self.quantise(self.low))
        if values[-1] < self.high - 1e-12:
            values.append(self.quantise(self.high))
        out: list[Any] = []
        for v in values:
            if not out or v != out[-1]:
                out.append(v)
        return out

    def describe(self) -> str:
        if self.distribution == "uniform":
            args = [self.low, self.high]
        else:
            args = [self.mu, self.sigma]
        if self.q is not None:
            args.append(self.q)
        return f"{self.nni_type} {args}"


@dataclass(frozen=True)
class SearchSpace:
    """An ordered tuple of dimensions; the parsed form every tuner receives."""

    dimensions: tuple[Dimension, ...]
    raw: Mapping[str, Any] | None = None

    def __iter__(self) -> Iterator[Dimension]:
        return iter(self.dimensions)

    def __len__(self) -> int:
        return len(self.dimensions)

    def __getitem__(self, name: str) -> Dimension:
        for dim in self.dimensions:
            if dim.name == name:
                return dim
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    @property
    def is_discrete(self) -> bool:
        """True when every dimension (nested ones included) can be enumerated."""
        return all(_dim_discrete(d) for d in self.dimensions)

    def grid_size(self) -> int:
        """Number of points of the full grid; raises SearchSpaceError on continuous dims."""
        total = 1
        for dim in self.dimensions:
            total *= _dim_grid_size(dim)
        return total

    def iter_grid(self) -> Iterator[dict[str, Any]]:
        """Every point of the grid in lexicographic order (first dimension slowest); lazy, like an odometer."""
        names = self.names
        iters = [_dim_grid_iter(d) for d in self.dimensions]
        current = [next(it) for it in iters]
        while True:
            yield dict(zip(names, current))
            i = len(iters) - 1
            while i >= 0:  # advance the last dimension; one that runs out restarts and carries to the previous
                value = next(iters[i], _END)
                if value is not _END:
                    current[i] = value
                    break
                iters[i] = _dim_grid_iter(self.dimensions[i])
                current[i] = next(iters[i])
                i -= 1
            if i < 0:
                return

    def contains(self, params: Mapping[str, Any]) -> bool:
        """Whether ``params`` is a point of this space (used to validate suggestions)."""
        if set(params) != set(self.names):
            return False
        return all(_dim_contains(d, params[d.name]) for d in self.dimensions)


def _check_grid_count(dim: Dimension, count: int) -> None:
    if count > MAX_GRID_VALUES:
        raise GridTooLargeError(f"parameter {dim.name!r} has {count} grid values ({dim.describe()}); "
                                f"at most {MAX_GRID_VALUES} can be enumerated")


def _dim_discrete(dim: Dimension) -> bool:
    if isinstance(dim, Categorical):
        return all(o.space.is_discrete for o in dim.options if isinstance(o, NestedOption))
    return dim.is_discrete


def _dim_grid_size(dim: Dimension) -> int:
    if isinstance(dim, Categorical):
        return sum(o.space.grid_size() if isinstance(o, NestedOption) else 1 for o in dim.options)
    return len(dim.grid_values())


_END = object()


def _dim_grid_iter(dim: Dimension) -> Iterator[Any]:
    for value in dim.grid_values():
        if isinstance(value, NestedOption):
            for sub in value.space.iter_grid():
                yield nested_value(value, sub)
        else:
            yield value


def nested_value(option: NestedOption, sub_params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameter value NNI gives for a nested option: ``{"_name": ..., **params}``."""
    out: dict[str, Any] = {"_name": option.name}
    out.update(option.constants)
    out.update(sub_params)
    return out


def _dim_contains(dim: Dimension, value: Any) -> bool:
    if isinstance(dim, Categorical):
        for opt in dim.options:
            if isinstance(opt, NestedOption):
                if isinstance(value, Mapping) and value.get("_name") == opt.name:
                    sub = {k: v for k, v in value.items() if k != "_name" and k not in dict(opt.constants)}
                    return opt.space.contains(sub)
            elif opt == value and type(opt) is type(value):
                return True
        return False
    if isinstance(dim, IntRange):
        return isinstance(value, int) and not isinstance(value, bool) and dim.low <= value < dim.high
    if isinstance(dim, Numeric):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        # qlognormal may round exp(x) down to 0 (as NNI's does); every other log type is > 0
        if dim.log and (value < 0 or (value == 0 and not (dim.q is not None and dim.distribution == "normal"))):
            return False
        if dim.distribution == "uniform" and not (dim.low - 1e-9 <= value <= dim.high + 1e-9):
            return False
        if dim.q is not None:
            return abs(dim.quantise(value) - value) <= 1e-9 * max(1.0, abs(value))
        return True
    return False


# ----------------------------------------------------------------------------------------------
# parsing

def is_finite_number(v: Any) -> bool:
    """Whether ``v`` is an int or float (not a bool) that is a finite float (huge ints are not)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond the float range
        return False


def parse_search_space(raw: Any, *, where: str = "search_space") -> SearchSpace:
    """Parse and validate a search space; raises :class:`SearchSpaceError` on any problem.

    ``{}`` is the empty space: its one point is ``{}`` (a run of the trial command with no parameters;
    the config asks for ``max_trial_number`` with it, see ``ExperimentConfig.validate_for_start``)."""
    if isinstance(raw, SearchSpace):
        return raw
    if not isinstance(raw, Mapping):
        raise SearchSpaceError(f"{where}: expected a mapping of parameter name to spec, got {type(raw).__name__}")
    for name in raw:
        if not isinstance(name, str) or not name:
            raise SearchSpaceError(f"{where}: parameter names must be non-empty strings, got {_show(name)}")
    return SearchSpace(_Parser(where).dimensions(raw, where, 0), raw=dict(raw))


class _Parser:
    """One parse; counts the parameters (nested ones included) against MAX_PARAMETERS."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.count = 0

    def dimensions(self, specs: Mapping[Any, Any], where: str, depth: int) -> tuple[Dimension, ...]:
        """The dimensions of ``specs``; ``depth`` counts the nested choices around them."""
        self.count += len(specs)
        if self.count > MAX_PARAMETERS:
            raise SearchSpaceError(f"{self.where}: has more than {MAX_PARAMETERS} parameters (nested ones included)")
        return tuple(self.dimension(name, spec, f"{where}.{name}", depth) for name, spec in specs.items())

    def dimension(self, name: str, spec: Any, where: str, depth: int) -> Dimension:
        if not isinstance(spec, Mapping):
            raise SearchSpaceError(f"{where}: expected {{'_type': ..., '_value': ...}}, got {_show(spec)}")
        if "_type" not in spec:
            shorthand = [k for k in spec if k in MATRIX_TYPES]
            if len(spec) == 1 and shorthand:
                kind = shorthand[0]
                return _parse_matrix(name, kind, spec[kind], where)
            raise SearchSpaceError(
                f"{where}: missing '_type'; expected one of {', '.join(NNI_TYPES + ('pchoice',) + MATRIX_TYPES)} "
                f"or a Polyaxon shorthand like {{'linspace': '0:1:5'}}, got keys {_show(sorted(map(str, spec)))}")
        kind = spec["_type"]
        if "_value" not in spec:
            raise SearchSpaceError(f"{where}: missing '_value' for _type {_show(kind)}")
        extra = set(spec) - {"_type", "_value"}
        if extra:
            raise SearchSpaceError(f"{where}: unexpected keys {_show(sorted(map(str, extra)))}; "
                                   "only '_type' and '_value' are allowed")
        value = spec["_value"]
        if kind == "choice":
            return self.choice(name, value, where, depth)
        if kind == "pchoice":
            return _parse_pchoice(name, value, where)
        if kind in MATRIX_TYPES:
            return _parse_matrix(name, kind, value, where)
        if kind in NNI_TYPES:
            return _parse_numeric(name, kind, value, where)
        raise SearchSpaceError(f"{where}: unknown _type {_show(kind)}; "
                               f"expected one of {', '.join(NNI_TYPES + MATRIX_TYPES)}")

    def choice(self, name: str, value: Any, where: str, depth: int) -> Categorical:
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise SearchSpaceError(f"{where}: choice takes a list of options, got {_show(value)}")
        if len(value) == 0:
            raise SearchSpaceError(f"{where}: choice has no options; expected a non-empty list")
        options: list[Any] = []
        seen_names: set[str] = set()
        for i, opt in enumerate(value):
            if isinstance(opt, Mapping) and "_name" in opt:
                opt_name = opt["_name"]
                if not isinstance(opt_name, str):
                    raise SearchSpaceError(f"{where}[{i}]: '_name' must be a string, got {_show(opt_name)}")
                if opt_name in seen_names:
                    raise SearchSpaceError(f"{where}[{i}]: duplicate nested option name {_show(opt_name)}")
                seen_names.add(opt_name)
                sub = {k: v for k, v in opt.items() if k != "_name" and isinstance(v, Mapping) and ("_type" in v or
                       (len(v) == 1 and next(iter(v)) in MATRIX_TYPES))}
                if sub and depth >= MAX_NESTING:
                    raise SearchSpaceError(f"{where}[{opt_name}]: nested choices go more than {MAX_NESTING} "
                                           "levels deep")
                consts = tuple((k, v) for k, v in opt.items() if k != "_name" and k not in sub)
                space = SearchSpace(self.dimensions(sub, f"{where}[{opt_name}]", depth + 1))
                options.append(NestedOption(opt_name, space, consts))
            else:
                options.append(opt)
        return Categorical(name, tuple(options), "choice")


def _parse_pchoice(name: str, value: Any, where: str) -> Categorical:
    """Polyaxon's ``pchoice``: ``[[option, probability], ...]``, probabilities in [0, 1] summing to at most 1
    (a total below 1 is scaled up to 1)."""
    shape = "[[option, probability], ...] with probabilities in [0, 1] summing to at most 1"
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise SearchSpaceError(f"{where}: pchoice takes {shape}, got {_show(value)}")
    for item in value:
        if not isinstance(item, Sequence) or isinstance(item, str) or len(item) != 2 or \
                not is_finite_number(item[1]) or not 0 <= item[1] <= 1:
            raise SearchSpaceError(f"{where}: pchoice takes {shape}, got {_show(item)}")
    total = math.fsum(p for _, p in value)
    if total > 1 + 1e-9 or total <= 0:
        raise SearchSpaceError(f"{where}: pchoice probabilities sum to {total:g}; expected a total in (0, 1]")
    return Categorical(name, tuple(o for o, _ in value), "pchoice", tuple(p / total for _, p in value))


def _parse_numeric(name: str, kind: str, value: Any, where: str) -> Dimension:
    """randint and the eight real-valued types, with the overflow checks of the module doc."""
    if kind == "randint":
        low, high = _numbers(value, 2, where, kind, "[low, high]")
        if low != int(low) or high != int(high):
            raise SearchSpaceError(f"{where}: randint bounds must be integers, got {_show(value)}")
        if low >= high:
            raise SearchSpaceError(f"{where}: randint needs low < high (high is excluded), got {_show(value)}")
        if not -MAX_INT <= low < high <= MAX_INT:
            raise SearchSpaceError(f"{where}: randint bounds must lie within -2**53 and 2**53, got {_show(value)}")
        return IntRange(name, int(low), int(high))
    quant = kind.startswith("q")
    log = "log" in kind
    if kind.endswith("uniform"):
        nums = _numbers(value, 3 if quant else 2, where, kind, "[low, high, q]" if quant else "[low, high]")
        low, high = float(nums[0]), float(nums[1])
        if low >= high:
            raise SearchSpaceError(f"{where}: {kind} needs low < high, got {_show(value)}")
        if log and low <= 0:
            raise SearchSpaceError(f"{where}: {kind} needs low > 0 (it is sampled in log space), got {_show(value)}")
        if not math.isfinite(high - low):
            raise SearchSpaceError(f"{where}: {kind} needs high - low to be a finite float, got {_show(value)}")
        q = _quantum(nums, where, kind, value, max(abs(low), abs(high), high - low)) if quant else None
        integer = q is not None and all(float(v).is_integer() for v in nums)
        return Numeric(name, "uniform", low=low, high=high, log=log, q=q, integer=integer)
    nums = _numbers(value, 3 if quant else 2, where, kind, "[mu, sigma, q]" if quant else "[mu, sigma]")
    mu, sigma = float(nums[0]), float(nums[1])
    if sigma <= 0:
        raise SearchSpaceError(f"{where}: {kind} needs sigma > 0, got {_show(value)}")
    reach = abs(mu) + _SIGMAS * sigma  # the largest value (or log value) a tuner computes
    if log and mu + _SIGMAS * sigma > _MAX_LOG:
        raise SearchSpaceError(f"{where}: {kind} needs exp(mu + {_SIGMAS} sigma) to be a finite float "
                               f"(mu + {_SIGMAS} sigma <= {_MAX_LOG:.2f}), got {_show(value)}")
    if not math.isfinite(reach):
        raise SearchSpaceError(f"{where}: {kind} needs mu +- {_SIGMAS} sigma to be finite floats, got {_show(value)}")
    q = _quantum(nums, where, kind, value, math.exp(mu + _SIGMAS * sigma) if log else reach) if quant else None
    integer = q is not None and float(q).is_integer()
    return Numeric(name, "normal", mu=mu, sigma=sigma, log=log, q=q, integer=integer)


def _quantum(nums: list[float], where: str, kind: str, value: Any, largest: float) -> float:
    """The q of a quantised type: > 0, and not so small that ``largest / q`` overflows."""
    q = nums[2]
    if q <= 0:
        raise SearchSpaceError(f"{where}: {kind} needs q > 0, got q={_show(q)}")
    if not math.isfinite(largest / q):
        raise SearchSpaceError(f"{where}: {kind} has q={_show(q)}, too small for its range: values / q overflow, "
                               f"got {_show(value)}")
    return q


def _numbers(value: Any, arity: int, where: str, kind: str, shape: str) -> list[float]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != arity:
        raise SearchSpaceError(f"{where}: {kind} takes {shape} ({arity} numbers), got {_show(value)}")
    if not all(map(is_finite_number, value)):
        raise SearchSpaceError(f"{where}: {kind} takes {shape} as finite numbers, got {_show(value)}")
    return list(value)


def _parse_matrix(name: str, kind: str, value: Any, where: str) -> Categorical:
    import numpy as np  # matrix forms are rare; keep numpy off the import path otherwise

    if kind == "values":
        if not isinstance(value, Sequence) or isinstance(value, str) or not value:
            raise SearchSpaceError(f"{where}: values takes a non-empty list, got {_show(value)}")
        return Categorical(name, tuple(value), kind)
    args = _matrix_args(value, where, kind)
    too_many = f"{where}: {kind} {_show(value)} gives more than {MAX_GRID_VALUES} values"
    if kind == "range":
        start, stop, step = args
        count = (stop - start) / step if step else 0.0  # inf when the span overflows
        if not count > 0:
            raise SearchSpaceError(f"{where}: range start:stop:step gives no values, got {_show(value)}")
        if count > MAX_GRID_VALUES:
            raise SearchSpaceError(too_many)
        with np.errstate(all="ignore"):
            points = np.arange(start, stop, step)
    else:
        start, stop, num = args
        if num != int(num) or num < 1:
            raise SearchSpaceError(f"{where}: {kind} num must be a positive integer, got {_show(num)}")
        if num > MAX_GRID_VALUES:
            raise SearchSpaceError(too_many)
        if kind == "geomspace" and (start == 0 or stop == 0 or (start < 0) != (stop < 0)):
            raise SearchSpaceError(f"{where}: geomspace needs non-zero start and stop of the same sign, "
                                   f"got {_show(value)}")
        fn = {"linspace": np.linspace, "logspace": np.logspace, "geomspace": np.geomspace}[kind]
        with np.errstate(all="ignore"):
            points = fn(start, stop, int(num))
    if not np.isfinite(points).all():
        raise SearchSpaceError(f"{where}: {kind} {_show(value)} gives values beyond the float range")
    all_int = kind == "range" and all(float(a).is_integer() for a in args)
    vals = tuple(int(p) if all_int else float(p) for p in points)
    return Categorical(name, vals, kind)


def _matrix_args(value: Any, where: str, kind: str) -> list[float]:
    if isinstance(value, str):
        parts = value.split(":")
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            raise SearchSpaceError(f"{where}: {kind} expects 'start:stop:{'step' if kind == 'range' else 'num'}', "
                                   f"got {_show(value)}") from None
    elif isinstance(value, Mapping):
        keys = ["start", "stop", "step" if kind == "range" else "num"]
        try:
            nums = [value[k] for k in keys]
        except KeyError:
            raise SearchSpaceError(f"{where}: {kind} mapping needs keys {keys}, "
                                   f"got {_show(sorted(map(str, value)))}") from None
    else:
        nums = value
    return _numbers(nums, 3, where, kind, "start:stop:step" if kind == "range" else "start:stop:num")
