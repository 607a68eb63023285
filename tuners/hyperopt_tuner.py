"""HyperoptTuner: hyperopt's TPE, random search and annealing behind the Tuner contract.

The search space is translated exactly, one hyperopt expression per dimension:

==============================  ==========================================================
ours                            hyperopt
==============================  ==========================================================
choice / matrix forms           ``hp.choice(label, options)`` (plain options by index;
                                a nested option is a dict of its sub-space's expressions)
randint [low, high)             ``hp.randint(label, low, high)`` (high excluded)
uniform / loguniform            ``hp.uniform`` / ``hp.loguniform(label, log low, log high)``
quniform / qloguniform          ``hp.quniform`` / ``hp.qloguniform``, then clipped to
                                ``[low, high]`` (and int when low, high and q are ints)
normal / lognormal / q-forms    ``hp.normal`` / ``hp.lognormal`` / ``hp.qnormal`` /
                                ``hp.qlognormal`` with the same ``mu, sigma, q``
==============================  ==========================================================

Labels are the parameter names; a parameter of a nested option is labelled
``"<choice label>[<option _name>].<name>"``.  Suggestions are read back from hyperopt's
``vals`` and shaped exactly as :class:`RandomTuner` shapes them (a nested choice gives
``{"_name": ..., **constants, **sub-parameters}``).

Bookkeeping: every suggestion is a hyperopt trial document in state NEW until its result
arrives (hyperopt's algorithms treat such pending trials as they do for asynchronous workers),
so several suggestions may be pending at once.  A result marks the document DONE with
``loss = -value`` when maximising (``value`` when minimising); a trial that ends without a usable
result is marked ERROR, which hyperopt ignores.  :meth:`import_data` inserts finished documents.
On a finite (fully discrete) space no point is suggested twice, and :class:`NoMoreTrials` is
raised once every point was suggested.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from hpo.search_space import Categorical, Dimension, IntRange, NestedOption, Numeric, SearchSpace, nested_value
from tuners.base import NoMoreTrials, Tuner
from tuners.grid import UnseenPoints
from tuners.registry import register_tuner

__all__ = ["HyperoptTuner", "AnnealTuner", "ALGORITHMS"]

ALGORITHMS = ("tpe", "rand", "anneal")
_ALGORITHM_ALIASES = {"tpe": "tpe", "rand": "rand", "random": "rand", "randomsearch": "rand", "anneal": "anneal"}
_MODEL_ATTEMPTS = 5  # suggestions tried before a repeat on a finite space is replaced by an unseen point


def _import_hyperopt() -> Any:
    try:
        import hyperopt
    except ImportError as exc:  # pragma: no cover - hyperopt is a declared dependency
        raise ImportError(f"HyperoptTuner needs the 'hyperopt' package (pip install hyperopt): {exc}") from None
    return hyperopt


def _label(prefix: str, name: str) -> str:
    return prefix + name


def _sub_prefix(label: str, option: NestedOption) -> str:
    return f"{label}[{option.name}]."


def _same(a: Any, b: Any) -> bool:
    """Option equality as :meth:`SearchSpace.contains` decides it (1, 1.0 and True differ)."""
    return type(a) is type(b) and a == b


def _hp_space(hp: Any, space: SearchSpace, prefix: str = "") -> dict[str, Any]:
    return {dim.name: _hp_dim(hp, dim, _label(prefix, dim.name)) for dim in space}


def _hp_dim(hp: Any, dim: Dimension, label: str) -> Any:
    if isinstance(dim, Categorical):
        options = [_hp_space(hp, o.space, _sub_prefix(label, o)) if isinstance(o, NestedOption) and len(o.space)
                   else i for i, o in enumerate(dim.options)]
        return hp.choice(label, options)
    if isinstance(dim, IntRange):
        return hp.randint(label, dim.low, dim.high)
    if isinstance(dim, Numeric):
        if dim.distribution == "uniform":
            low, high = (math.log(dim.low), math.log(dim.high)) if dim.log else (dim.low, dim.high)
            kind = ("q" if dim.q is not None else "") + ("log" if dim.log else "") + "uniform"
            args = (low, high)
        else:
            kind = ("q" if dim.q is not None else "") + ("log" if dim.log else "") + "normal"
            args = (dim.mu, dim.sigma)
        if dim.q is not None:
            args = (*args, dim.q)
        return getattr(hp, kind)(label, *args)
    raise TypeError(f"unknown dimension type {type(dim).__name__}")


def _decode(space: SearchSpace, vals: Mapping[str, list], prefix: str = "") -> dict[str, Any]:
    """Our point from hyperopt's ``vals`` (label -> [value], empty when inactive)."""
    return {dim.name: _decode_dim(dim, vals, _label(prefix, dim.name)) for dim in space}


def _decode_dim(dim: Dimension, vals: Mapping[str, list], label: str) -> Any:
    raw = vals[label][0]
    if isinstance(dim, Categorical):
        option = dim.options[int(raw)]
        if isinstance(option, NestedOption):
            return nested_value(option, _decode(option.space, vals, _sub_prefix(label, option)))
        return option
    if isinstance(dim, IntRange):
        return int(raw)
    if isinstance(dim, Numeric):
        x = float(raw)
        if dim.distribution == "uniform":
            x = min(max(x, dim.low), dim.high)  # exp(log(low)) may land a hair outside
        return dim.quantise(x)
    raise TypeError(f"unknown dimension type {type(dim).__name__}")


def _encode(space: SearchSpace, point: Mapping[str, Any], out: dict[str, Any], prefix: str = "") -> None:
    """Fill ``out`` (label -> hyperopt value) for the active labels of ``point``; KeyError/ValueError if
    the point does not fit."""
    for dim in space:
        label = _label(prefix, dim.name)
        value = point[dim.name]
        if isinstance(dim, Categorical):
            for i, option in enumerate(dim.options):
                if isinstance(option, NestedOption):
                    if isinstance(value, Mapping) and value.get("_name") == option.name:
                        out[label] = i
                        consts = dict(option.constants)
                        sub = {k: v for k, v in value.items() if k != "_name" and k not in consts}
                        _encode(option.space, sub, out, _sub_prefix(label, option))
                        break
                elif _same(option, value):
                    out[label] = i
                    break
            else:
                raise ValueError(f"{label}: {value!r} is not an option")
        elif isinstance(dim, IntRange):
            out[label] = int(value)
        else:
            out[label] = float(value)


@register_tuner("hyperopt", aliases=("Hyperopt", "HyperoptTuner"))
class HyperoptTuner(Tuner):
    """The ``hyperopt`` package's algorithms: ``'tpe'``, ``'rand'`` (random search) or ``'anneal'``.

    Args:
        algorithm_name: ``'tpe'`` (default), ``'rand'`` (also ``'random_search'``) or ``'anneal'``.
        optimize_mode: ``"maximize"`` or ``"minimize"``.
        seed: seeds every suggestion; the same seed and results give the same suggestions.
    """

    def __init__(self, algorithm_name: str = "tpe", optimize_mode: str = "maximize", seed: int | None = None) -> None:
        super().__init__(optimize_mode, seed)
        key = "".join(ch for ch in str(algorithm_name).lower() if ch.isalnum())
        if not isinstance(algorithm_name, str) or key not in _ALGORITHM_ALIASES:
            raise ValueError(f"algorithm_name: got {algorithm_name!r}, expected 'tpe', 'rand' or 'anneal'")
        self.algorithm_name = _ALGORITHM_ALIASES[key]
        self._hyperopt = _import_hyperopt()
        self._algo = self._algorithm()
        self._rng = np.random.default_rng(seed)
        self._domain: Any = None
        self._trials: Any = None
        self._pending: dict[int, dict] = {}  # parameter_id -> the trial document awaiting its result
        self._history: list[tuple[dict[str, Any], float | None]] = []  # what ran: replayed on a space change
        self._unseen: UnseenPoints | None = None

    def class_args(self) -> dict[str, Any]:
        return {"algorithm_name": self.algorithm_name, **super().class_args()}

    def _algorithm(self) -> Callable[..., Any]:
        if self.algorithm_name == "tpe":
            from hyperopt import tpe
            return functools.partial(tpe.suggest, verbose=False)
        if self.algorithm_name == "anneal":
            from hyperopt import anneal
            return anneal.suggest
        from hyperopt import rand
        return rand.suggest

    # -- space --------------------------------------------------------------------------------
    def update_search_space(self, search_space: Mapping[str, Any] | SearchSpace) -> None:
        old = self.space
        super().update_search_space(search_space)
        assert self.space is not None
        if old is not None and old.dimensions == self.space.dimensions and self._trials is not None:
            return  # the same space again (for example on resume): keep the history
        hyperopt = self._hyperopt
        # hyperopt cannot build a domain of no parameters: the empty space has no model (its one point is {})
        self._domain = hyperopt.base.Domain(lambda params: 0.0, _hp_space(hyperopt.hp, self.space)) \
            if len(self.space) else None
        self._trials = hyperopt.Trials()
        self._pending.clear()
        self._unseen = UnseenPoints(self.space) if self.space.is_discrete else None
        # what ran before (under an old space) and still fits
        self._insert((point, value) for point, value in self._history if self.space.contains(point))

    # -- trial documents ------------------------------------------------------------------------
    def _loss(self, value: float) -> float:
        return -value if self.maximize else value

    def _insert_docs(self, docs: list[dict]) -> dict:
        self._trials.insert_trial_docs(docs)  # stores copies: find the stored one by its tid
        tid = docs[0]["tid"]
        stored = next(d for d in reversed(self._trials._dynamic_trials) if d["tid"] == tid)
        self._trials.refresh()
        return stored

    def _doc_for(self, point: Mapping[str, Any]) -> list[dict]:
        """A new trial document holding ``point`` (ValueError/KeyError if it does not fit the space)."""
        assert self.space is not None
        vals: dict[str, Any] = {}
        _encode(self.space, point, vals)
        tid = self._trials.new_trial_ids(1)[0]
        misc = {"tid": tid, "cmd": self._domain.cmd, "workdir": self._domain.workdir,
                "idxs": {label: ([tid] if label in vals else []) for label in self._domain.params},
                "vals": {label: ([vals[label]] if label in vals else []) for label in self._domain.params}}
        return self._trials.new_trial_docs([tid], [None], [self._domain.new_result()], [misc])

    def _insert(self, items: Iterable[tuple[Mapping[str, Any], float | None]]) -> None:
        """Add finished trials (value None: it ran without a usable result), in one batch."""
        hyperopt = self._hyperopt
        batch: list[dict] = []
        for point, value in items:
            if self._unseen is not None:
                self._unseen.add(point)
            if value is None or self._domain is None:
                continue
            try:
                docs = self._doc_for(point)
            except (KeyError, ValueError, TypeError):
                continue  # not a point of this space (the space changed since): nothing to learn from
            docs[0]["state"] = hyperopt.JOB_STATE_DONE
            docs[0]["result"] = {"status": hyperopt.STATUS_OK, "loss": self._loss(value)}
            batch.extend(docs)
        if batch:
            self._trials.insert_trial_docs(batch)
            self._trials.refresh()

    # -- the contract ---------------------------------------------------------------------------
    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        if self.space is None or self._trials is None:
            raise RuntimeError("update_search_space must be called first")
        unseen = self._unseen
        if unseen is not None and unseen.exhausted:
            raise NoMoreTrials("every point of the (finite) search space has been suggested")
        docs: list[dict] | None = None
        point: dict[str, Any] | None = None
        if self._domain is None:  # the empty space: its one point, once
            assert unseen is not None
            unseen.add({})
            return {}
        for _ in range(_MODEL_ATTEMPTS if unseen is not None else 1):
            ids = self._trials.new_trial_ids(1)
            docs = self._algo(ids, self._domain, self._trials, int(self._rng.integers(2 ** 31 - 1)))
            point = _decode(self.space, docs[0]["misc"]["vals"])
            if unseen is None or point not in unseen:
                break
        else:  # the model keeps proposing points already tried: take an unseen one at random
            assert unseen is not None
            pick = unseen.pick(self._rng)
            if pick is not None:
                point, docs = pick, self._doc_for(pick)
        assert docs is not None and point is not None
        self._pending[parameter_id] = self._insert_docs(docs)
        if unseen is not None:
            unseen.add(point)
        return point

    def receive_trial_result(self, parameter_id: int, parameters: Mapping[str, Any], value: float,
                             **kwargs: Any) -> None:
        doc = None if kwargs.get("imported") else self._pending.pop(parameter_id, None)
        usable = value is not None and math.isfinite(float(value))
        self._history.append((dict(parameters), float(value) if usable else None))
        if doc is None:  # a result for a point we did not suggest (imported): add it as finished
            if self._trials is not None:
                self._insert([(parameters, float(value) if usable else None)])
            return
        if usable:
            doc["state"] = self._hyperopt.JOB_STATE_DONE
            doc["result"] = {"status": self._hyperopt.STATUS_OK, "loss": self._loss(float(value))}
        else:  # nan / inf: no usable result
            self._fail(doc)
        self._trials.refresh()

    def _fail(self, doc: dict) -> None:
        doc["state"] = self._hyperopt.JOB_STATE_ERROR
        doc["result"] = {"status": self._hyperopt.STATUS_FAIL}

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        """A trial that ends without having reported (whatever ``success`` says) is marked failed."""
        doc = self._pending.pop(parameter_id, None)
        if doc is not None:
            self._fail(doc)
            self._trials.refresh()

    def import_data(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Add earlier trials as finished; a record whose value is None only counts as tried."""
        items = []
        for record in records:
            value = record.get("value")
            usable = value is not None and math.isfinite(float(value))
            items.append((dict(record["parameter"]), float(value) if usable else None))
        self._history.extend(items)
        if self._trials is not None:
            self._insert(items)


@register_tuner("anneal", aliases=("Anneal", "AnnealTuner"))
class AnnealTuner(HyperoptTuner):
    """NNI's ``Anneal`` tuner: :class:`HyperoptTuner` with ``algorithm_name='anneal'``."""

    def __init__(self, optimize_mode: str = "maximize", seed: int | None = None) -> None:
        super().__init__("anneal", optimize_mode, seed)

    def class_args(self) -> dict[str, Any]:
        return {"optimize_mode": self.optimize_mode, "seed": self.seed}
