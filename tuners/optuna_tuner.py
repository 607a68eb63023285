"""OptunaTuner: any optuna sampler behind the Tuner contract, through optuna's ask/tell interface.

The search space is translated exactly, one optuna parameter per active dimension:

===============================  =========================================================
ours                             optuna
===============================  =========================================================
choice / matrix forms            ``suggest_categorical(name, options)`` when every option is
                                 a primitive (None, bool, int, float, str) and no two are
                                 equal (``1 == 1.0 == True``); otherwise the options are
                                 index-encoded: ``suggest_categorical(name, [0, 1, ...])``
randint [low, high)              ``suggest_int(name, low, high - 1)``
uniform / loguniform             ``suggest_float(name, low, high, log=...)``
quniform                         ``suggest_float(name, low, high, step=q)`` (or
                                 ``suggest_int(..., step=q)`` for integer bounds) when the
                                 grid ``low, low + q, ..., high`` is exactly ours (low and
                                 high - low are multiples of q); otherwise ``suggest_float``
                                 and our rounding ``round(x / q) * q`` clipped to [low, high]
qloguniform                      ``suggest_int(name, low, high, log=True)`` when q == 1 and
                                 the bounds are integers; otherwise ``suggest_float(...,
                                 log=True)`` and our rounding
normal / lognormal / q-forms     suggested in the *quantile space*: ``p = suggest_float(name,
                                 1e-6, 1 - 1e-6)``, then ``x = mu + sigma * Phi^-1(p)``
                                 (``exp(x)`` for the log forms, then our rounding for the
                                 q-forms); a uniform ``p`` gives the exact prior, cut at
                                 4.75 sigma
===============================  =========================================================

A parameter of a nested choice's option is a conditional parameter named
``"<choice name>[<option _name>].<name>"``, suggested only when that option is chosen.
Suggestions are shaped exactly as :class:`RandomTuner` shapes them (a nested choice gives
``{"_name": ..., **constants, **sub-parameters}``; integer types give ints).

Bookkeeping: each suggestion is an asked optuna trial, pending until its result is told (so
the engine may ask several times before telling).  The study's direction is the tuner's
``optimize_mode``.  A trial that ends without a usable result is told as FAIL, which samplers
ignore.  :meth:`import_data` adds finished trials with ``study.add_trial(create_trial(...))``.
On a finite (fully discrete) space no point is suggested twice (a repeated proposal is told as
FAIL with user attribute ``hpo_repeat`` and, after two, an unseen point is enqueued), and :class:`NoMoreTrials` is raised once
every point was suggested.  Optuna's INFO log lines (one per trial) are turned down to WARNING.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import warnings
from statistics import NormalDist
from typing import Any, Iterable, Mapping

import numpy as np

from hpo.search_space import Categorical, Dimension, IntRange, NestedOption, Numeric, SearchSpace, nested_value
from tuners.base import NoMoreTrials, Tuner
from tuners.grid import UnseenPoints
from tuners.registry import register_tuner

__all__ = ["OptunaTuner", "SAMPLERS", "QUANTILE_EPS"]

SAMPLERS = ("tpe", "cmaes", "qmc", "random", "gp")
_SAMPLER_ALIASES = {"tpe": "tpe", "cmaes": "cmaes", "cma": "cmaes", "qmc": "qmc", "random": "random",
                    "gp": "gp"}
_SAMPLER_CLASSES = {"tpe": "TPESampler", "cmaes": "CmaEsSampler", "qmc": "QMCSampler",
                    "random": "RandomSampler", "gp": "GPSampler"}
QUANTILE_EPS = 1e-6
_STD_NORMAL = NormalDist()
_PRIMITIVES = (type(None), bool, int, float, str)
_MODEL_ATTEMPTS = 2  # asks of the sampler before a repeat on a finite space is replaced by an unseen point


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover - optuna is a declared dependency
        raise ImportError(f"OptunaTuner needs the 'optuna' package (pip install optuna): {exc}") from None
    if optuna.logging.get_verbosity() == optuna.logging.INFO:  # optuna's default: a line per trial
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


class _Quiet:
    """Silence optuna's ExperimentalWarning (QMCSampler, GPSampler, ...) inside the block."""

    def __enter__(self) -> None:
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        from optuna.exceptions import ExperimentalWarning
        warnings.simplefilter("ignore", ExperimentalWarning)

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


# -- translation -----------------------------------------------------------------------------------
def _is_int(x: float) -> bool:
    return abs(x - round(x)) <= 1e-9 * max(1.0, abs(x))


def _index_encoded(dim: Categorical) -> bool:
    options = dim.options
    if not all(type(o) in _PRIMITIVES for o in options):
        return True
    if any(isinstance(o, float) and o != o for o in options):  # nan: never equal to itself
        return True
    return len(set(options)) != len(options)  # 1, 1.0 and True would be confused


def _distribution(dim: Dimension) -> Any:
    """The optuna distribution of a dimension (one source of truth for asking and importing)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    if isinstance(dim, Categorical):
        choices = list(range(len(dim.options))) if _index_encoded(dim) else list(dim.options)
        return CategoricalDistribution(choices)
    if isinstance(dim, IntRange):
        return IntDistribution(dim.low, dim.high - 1)
    assert isinstance(dim, Numeric)
    if dim.distribution == "normal":
        return FloatDistribution(QUANTILE_EPS, 1 - QUANTILE_EPS)
    if dim.q is None:
        return FloatDistribution(dim.low, dim.high, log=dim.log)
    if dim.log:
        if dim.integer and dim.q == 1:
            return IntDistribution(int(dim.low), int(dim.high), log=True)
        return FloatDistribution(dim.low, dim.high, log=True)
    if _is_int(dim.low / dim.q) and _is_int((dim.high - dim.low) / dim.q):
        if dim.integer:
            return IntDistribution(int(dim.low), int(dim.high), step=int(dim.q))
        return FloatDistribution(dim.low, dim.high, step=dim.q)
    return FloatDistribution(dim.low, dim.high)


def _suggest_with(trial: Any, name: str, dist: Any) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def _sub_prefix(name: str, option: NestedOption) -> str:
    return f"{name}[{option.name}]."


def _suggest(trial: Any, space: SearchSpace, prefix: str = "") -> dict[str, Any]:
    return {dim.name: _suggest_dim(trial, dim, prefix + dim.name) for dim in space}


def _suggest_dim(trial: Any, dim: Dimension, name: str) -> Any:
    dist = _distribution(dim)
    raw = _suggest_with(trial, name, dist)
    if isinstance(dim, Categorical):
        option = dim.options[raw] if _index_encoded(dim) else raw
        if isinstance(option, NestedOption):
            return nested_value(option, _suggest(trial, option.space, _sub_prefix(name, option)))
        return option
    if isinstance(dim, IntRange):
        return int(raw)
    assert isinstance(dim, Numeric)
    if dim.distribution == "normal":
        x = dim.mu + dim.sigma * _STD_NORMAL.inv_cdf(float(raw))
        return dim.quantise(math.exp(x) if dim.log else x)
    return dim.quantise(min(max(float(raw), dim.low), dim.high))


def _encode(space: SearchSpace, point: Mapping[str, Any], params: dict[str, Any], dists: dict[str, Any],
            prefix: str = "") -> None:
    """Fill optuna ``params``/``dists`` for ``point``; ValueError/KeyError when it does not fit."""
    for dim in space:
        name = prefix + dim.name
        value = point[dim.name]
        dist = _distribution(dim)
        if isinstance(dim, Categorical):
            for i, option in enumerate(dim.options):
                if isinstance(option, NestedOption):
                    if isinstance(value, Mapping) and value.get("_name") == option.name:
                        consts = dict(option.constants)
                        sub = {k: v for k, v in value.items() if k != "_name" and k not in consts}
                        _encode(option.space, sub, params, dists, _sub_prefix(name, option))
                        break
                elif type(option) is type(value) and option == value:
                    break
            else:
                raise ValueError(f"{name}: {value!r} is not an option")
            raw: Any = i if _index_encoded(dim) else option
        elif isinstance(dim, IntRange):
            raw = int(value)
        else:
            assert isinstance(dim, Numeric)
            if dim.distribution == "normal":
                x = float(value)
                if dim.log:
                    x = math.log(x) if x > 0 else -math.inf
                z = (x - dim.mu) / dim.sigma
                p = _STD_NORMAL.cdf(z) if math.isfinite(z) else (0.0 if z < 0 else 1.0)
                raw = min(max(p, QUANTILE_EPS), 1 - QUANTILE_EPS)
            else:
                raw = min(max(value, dist.low), dist.high)
                if type(dist).__name__ == "IntDistribution":
                    raw = int(round(raw))
        params[name], dists[name] = raw, dist


def _sampler_from_name(optuna: Any, name: str, seed: int | None, kwargs: dict[str, Any]) -> Any:
    if name == "gp" and importlib.util.find_spec("torch") is None:
        raise ImportError("OptunaTuner(sampler='gp'): optuna's GPSampler needs PyTorch, which is not installed "
                          "(pip install torch), or choose sampler 'tpe', 'cmaes', 'qmc' or 'random'")
    cls = getattr(optuna.samplers, _SAMPLER_CLASSES[name], None)
    if cls is None:  # GPSampler arrived in optuna 3.6
        raise ValueError(f"OptunaTuner(sampler={name!r}): optuna {optuna.__version__} has no "
                         f"{_SAMPLER_CLASSES[name]}; upgrade optuna")
    args = dict(kwargs)
    if name in ("cmaes", "qmc", "gp"):  # conditional / categorical parameters fall back by design
        args.setdefault("warn_independent_sampling", False)
    if name == "qmc":
        args.setdefault("warn_asynchronous_seeding", False)
    with _Quiet():
        try:
            return cls(seed=seed, **args)
        except TypeError as exc:
            raise ValueError(f"OptunaTuner(sampler={name!r}): bad sampler arguments {kwargs!r} ({exc})") from None


@register_tuner("optuna", aliases=("Optuna", "OptunaTuner"))
class OptunaTuner(Tuner):
    """An optuna sampler: ``'tpe'``, ``'cmaes'``, ``'qmc'``, ``'random'``, ``'gp'``, or a sampler instance.

    Args:
        sampler: a sampler name (``'gp'`` needs PyTorch), a ``optuna.samplers.BaseSampler``
            instance, or a class path ``'package.module.SamplerClass'`` (created with ``seed`` when
            it accepts one, and ``sampler_kwargs``).
        optimize_mode: ``"maximize"`` or ``"minimize"``: the study's direction.
        seed: the sampler's seed (ignored for an instance, which carries its own).
        **sampler_kwargs: passed to the sampler's constructor, e.g. ``n_startup_trials=5``.

    :meth:`class_args` gives ``sampler`` as its name (or, for an instance, its class path: the
    instance's own settings beyond ``sampler_kwargs`` are not recorded).
    """

    def __init__(self, sampler: Any = "tpe", optimize_mode: str = "maximize", seed: int | None = None,
                 **sampler_kwargs: Any) -> None:
        super().__init__(optimize_mode, seed)
        optuna = self._optuna = _import_optuna()
        self.sampler_kwargs = dict(sampler_kwargs)
        if isinstance(sampler, optuna.samplers.BaseSampler):
            if sampler_kwargs:
                raise ValueError("OptunaTuner: sampler_kwargs apply to a sampler name, not to a sampler instance "
                                 f"(got {sorted(sampler_kwargs)})")
            cls = type(sampler)
            names = {v: k for k, v in _SAMPLER_CLASSES.items()}
            builtin = cls.__module__.startswith("optuna.") and cls.__name__ in names
            self.sampler_name = names[cls.__name__] if builtin else f"{cls.__module__}.{cls.__qualname__}"
            self.sampler = sampler
        elif isinstance(sampler, str) and "." in sampler:
            self.sampler_name = sampler
            self.sampler = self._sampler_from_path(sampler)
        elif isinstance(sampler, str) and "".join(c for c in sampler.lower() if c.isalnum()) in _SAMPLER_ALIASES:
            self.sampler_name = _SAMPLER_ALIASES["".join(c for c in sampler.lower() if c.isalnum())]
            self.sampler = _sampler_from_name(optuna, self.sampler_name, seed, self.sampler_kwargs)
        else:
            raise ValueError(f"sampler: got {sampler!r}, expected one of {', '.join(map(repr, SAMPLERS))}, "
                             "an optuna sampler instance, or a class path 'package.module.SamplerClass'")
        self._rng = np.random.default_rng(seed)  # picks unseen points on an exhausted-looking finite space
        self.study: Any = None
        self._pending: dict[int, Any] = {}  # parameter_id -> (study, optuna Trial) awaiting its result
        self._history: list[tuple[dict[str, Any], float | None]] = []
        self._unseen: UnseenPoints | None = None

    def _sampler_from_path(self, path: str) -> Any:
        module_name, _, attr = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"sampler: cannot load {path!r} ({exc})") from None
        with _Quiet():
            try:
                return cls(seed=self.seed, **self.sampler_kwargs)
            except TypeError:
                try:
                    return cls(**self.sampler_kwargs)
                except TypeError as exc:
                    raise ValueError(f"sampler {path!r}: bad sampler arguments {self.sampler_kwargs!r} ({exc})") from None

    def class_args(self) -> dict[str, Any]:
        return {"sampler": self.sampler_name, **super().class_args(), **self.sampler_kwargs}

    # -- space --------------------------------------------------------------------------------
    def update_search_space(self, search_space: Mapping[str, Any] | SearchSpace) -> None:
        old = self.space
        super().update_search_space(search_space)
        assert self.space is not None
        if old is not None and old.dimensions == self.space.dimensions and self.study is not None:
            return  # the same space again (for example on resume): keep the study
        # a new study: optuna does not allow a parameter's distribution to change within one
        with _Quiet():
            self.study = self._optuna.create_study(sampler=self.sampler, direction=self.optimize_mode)
        self._unseen = UnseenPoints(self.space) if self.space.is_discrete else None
        for point, value in self._history:  # what ran before (under an old space) and still fits
            if self.space.contains(point):
                self._add(point, value)

    def _add(self, point: Mapping[str, Any], value: float | None) -> None:
        """Add a finished trial to the study (value None: it ran without a usable result)."""
        assert self.space is not None
        if self._unseen is not None:
            self._unseen.add(point)
        if value is None:
            return
        params: dict[str, Any] = {}
        dists: dict[str, Any] = {}
        try:
            _encode(self.space, point, params, dists)
        except (KeyError, ValueError, TypeError):
            return  # not a point of this space: nothing to learn from
        with _Quiet():
            self.study.add_trial(self._optuna.trial.create_trial(params=params, distributions=dists, value=value))

    # -- the contract ---------------------------------------------------------------------------
    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        if self.space is None or self.study is None:
            raise RuntimeError("update_search_space must be called first")
        unseen = self._unseen
        if unseen is not None and unseen.exhausted:
            raise NoMoreTrials("every point of the (finite) search space has been suggested")
        fail = self._optuna.trial.TrialState.FAIL
        with _Quiet():
            for attempt in range(_MODEL_ATTEMPTS + 1 if unseen is not None else 1):
                if unseen is not None and attempt == _MODEL_ATTEMPTS:  # the model keeps repeating itself
                    pick = unseen.pick(self._rng)
                    if pick is not None:
                        params: dict[str, Any] = {}
                        _encode(self.space, pick, params, {})
                        self.study.enqueue_trial(params)
                trial = self.study.ask()
                point = _suggest(trial, self.space)
                if unseen is None or point not in unseen or attempt == _MODEL_ATTEMPTS:
                    break
                trial.set_user_attr("hpo_repeat", True)  # a repeat: never run, never learnt from
                self.study.tell(trial, state=fail)
        self._pending[parameter_id] = (self.study, trial)
        if unseen is not None:
            unseen.add(point)
        return point

    def receive_trial_result(self, parameter_id: int, parameters: Mapping[str, Any], value: float,
                             **kwargs: Any) -> None:
        entry = None if kwargs.get("imported") else self._pending.pop(parameter_id, None)
        usable = value is not None and math.isfinite(float(value))
        self._history.append((dict(parameters), float(value) if usable else None))
        if entry is None:  # a result for a point we did not suggest (imported): add it as finished
            if self.study is not None:
                self._add(parameters, float(value) if usable else None)
            return
        study, trial = entry
        with _Quiet():
            if usable:
                study.tell(trial, float(value))
            else:
                study.tell(trial, state=self._optuna.trial.TrialState.FAIL)

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        """A trial that ends without having reported (whatever ``success`` says) is told as FAIL."""
        entry = self._pending.pop(parameter_id, None)
        if entry is not None:
            study, trial = entry
            with _Quiet():
                study.tell(trial, state=self._optuna.trial.TrialState.FAIL)

    def import_data(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Add earlier trials as finished (``study.add_trial``); a None value only counts as tried."""
        for record in records:
            value = record.get("value")
            usable = value is not None and math.isfinite(float(value))
            self._history.append((dict(record["parameter"]), float(value) if usable else None))
            if self.study is not None:
                self._add(record["parameter"], float(value) if usable else None)
