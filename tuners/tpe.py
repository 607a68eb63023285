"""Tree-structured Parzen Estimator (TPE): numpy Parzen estimators, univariate or multivariate.

The algorithm lives in :mod:`tuners._tpe_core` as pure functions of (space, history, rng); this
module is the thin :class:`Tuner` around it that keeps the history in preallocated arrays.

Determinism
    Suggestion number ``k`` (counting every suggestion made and every result received for a
    point this tuner did not suggest, imported ones included) draws from its own generator
    ``default_rng([seed, k])``, and everything else is a function of the history in the order
    results arrived.  Hence:

    * a seeded run is reproducible bit for bit;
    * *resume*: a tuner that gets ``import_data`` of the results of a sequential run (each result
      reported before the next suggestion) suggests exactly what the original tuner would have
      suggested next, had it never stopped.

Nested choices
    Every sub-space of a nested option is a conditional sub-tree: it is modelled on the trials
    that chose that option, split into good and bad among themselves (what matters once the
    option is chosen is how its own settings compare).

Parallel use
    Suggestions still running are *pending*; with ``constant_liar`` they join the "bad" density
    ``g`` as if they had come back with the worst value, which pushes the next suggestions away
    from them.  Their plain categorical values count only half (their kernels in ``g`` are mixed
    half-way toward uniform): with one kernel per option, eight pending copies of the best option
    would otherwise push the next suggestions onto the worse ones.  Choices that select a nested
    sub-space keep the full liar.  In an all-discrete space no point is suggested twice (pending,
    finished, failed or imported); once every point has been suggested the tuner raises :class:`NoMoreTrials`.

    Batch-aware alternatives (``TpeSettings``: ``pending_penalty``, local penalisation of candidates
    near pending points in l's kernel widths; ``liar_weight``; ``pending_candidates``;
    ``startup_finished``) are off by default: none beat the liar at concurrency 8 on the benchmark
    suites (README, "TPE with parallel trials").  They act only while points are pending.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from hpo.search_space import SearchSpace, parse_search_space
from tuners._tpe_core import History, TpeSettings, loss_of, proposals, unseen_point
from tuners._tpe_space import CompiledSpace, compile_space
from tuners.base import NoMoreTrials, Tuner
from tuners.registry import register_tuner

__all__ = ["TpeTuner"]

# discrete spaces: model proposals and prior draws tried before enumerating what is left
_MAX_TRIES = 200
_ENUMERATE_LIMIT = 200_000


@register_tuner("tpe", aliases=("TPE", "TpeTuner", "tree_parzen"))
class TpeTuner(Tuner):
    """TPE tuner.

    Defaults were chosen with ``benchmarks/tuners.py`` (10 problems, 10 seeds, budgets 50 and 100):
    multivariate kernels; 10 random start-up trials; the best 10% (at most 25) of finished trials
    form ``l``, weighted by their improvement over the best of the rest (``good_weights="ei"``);
    numeric kernel widths from the distance to neighbouring observations, never below
    ``1 / (k + 2) ** 1.5`` of the range (``k`` observations in the density; Optuna uses exponent 1,
    which kept the "good" density too wide to refine an optimum); 24 candidates; constant liar on.

    Args:
        optimize_mode: ``"maximize"`` or ``"minimize"``.
        seed: seed of the random streams (``None``: a random one, drawn once).
        multivariate: model the leaves of each (sub-)space jointly (product kernels) instead of
            one density per parameter.
        n_startup_trials: random suggestions before the model is used.
        gamma: fraction of finished trials that form the "good" density ``l`` ...
        max_good: ... at most this many.
        prior_weight: weight of the prior component in both densities (an observation weighs 1).
        n_ei_candidates: candidates drawn from ``l`` and ranked by ``l/g`` per suggestion.
        bandwidth: ``"gap"`` (the larger distance to a neighbouring observation) or ``"scott"``.
        bandwidth_factor: multiplies every numeric kernel width.
        min_bandwidth: smallest numeric kernel width, as a fraction of the parameter's range ...
        magic_clip_exponent: ... and at least ``1 / (k + 2) ** magic_clip_exponent`` of it.
        good_weights: ``"ei"`` (good trials weighted by their improvement) or ``"uniform"``.
        constant_liar: treat pending suggestions as bad results while they run.
        max_bad: ``g`` is fitted on at most this many of the newest bad trials (older ones weigh
            little already); this bounds the cost of a suggestion in long experiments.
    """

    loop_safe = True

    def __init__(self, optimize_mode: str = "maximize", seed: int | None = None, *,
                 multivariate: bool = True, n_startup_trials: int = 10, gamma: float = 0.1,
                 max_good: int = 25, prior_weight: float = 1.0, n_ei_candidates: int = 24,
                 bandwidth: str = "gap", bandwidth_factor: float = 1.0, min_bandwidth: float = 0.01,
                 magic_clip_exponent: float = 1.5, good_weights: str = "ei", constant_liar: bool = True,
                 max_bad: int = 500) -> None:
        super().__init__(optimize_mode, seed)
        if bandwidth not in ("gap", "scott"):
            raise ValueError(f"bandwidth: got {bandwidth!r}, expected 'gap' or 'scott'")
        if good_weights not in ("uniform", "ei"):
            raise ValueError(f"good_weights: got {good_weights!r}, expected 'uniform' or 'ei'")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma: got {gamma!r}, expected 0 < gamma <= 1")
        if prior_weight <= 0:
            raise ValueError(f"prior_weight: got {prior_weight!r}, expected > 0")
        if n_ei_candidates < 1 or n_startup_trials < 0 or max_good < 1 or max_bad < 1:
            raise ValueError("n_ei_candidates, max_good and max_bad must be >= 1, n_startup_trials >= 0")
        if bandwidth_factor <= 0 or min_bandwidth <= 0 or magic_clip_exponent < 0:
            raise ValueError("bandwidth_factor and min_bandwidth must be > 0, magic_clip_exponent >= 0")
        self.settings = TpeSettings(
            multivariate=bool(multivariate), n_startup_trials=int(n_startup_trials), gamma=float(gamma),
            max_good=int(max_good), prior_weight=float(prior_weight), n_candidates=int(n_ei_candidates),
            bandwidth=bandwidth, bandwidth_factor=float(bandwidth_factor), min_bandwidth=float(min_bandwidth),
            magic_clip_exponent=float(magic_clip_exponent), good_weights=good_weights,
            constant_liar=bool(constant_liar), max_bad=int(max_bad))
        self._entropy = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2**63))
        self._cs: CompiledSpace | None = None
        self._records: list[tuple[Mapping[str, Any], float]] = []
        self._pending: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]] = {}
        self._seen: set[bytes] = set()
        self._count = 0
        self._n = 0
        self._alloc(0, 64)

    def class_args(self) -> dict[str, Any]:
        s = self.settings
        return {"optimize_mode": self.optimize_mode, "seed": self.seed, "multivariate": s.multivariate,
                "n_startup_trials": s.n_startup_trials, "gamma": s.gamma, "max_good": s.max_good,
                "prior_weight": s.prior_weight, "n_ei_candidates": s.n_candidates, "bandwidth": s.bandwidth,
                "bandwidth_factor": s.bandwidth_factor, "min_bandwidth": s.min_bandwidth,
                "magic_clip_exponent": s.magic_clip_exponent, "good_weights": s.good_weights,
                "constant_liar": s.constant_liar, "max_bad": s.max_bad}

    # -- history storage ------------------------------------------------------------------------------
    def _alloc(self, n_leaves: int, capacity: int) -> None:
        self._X = np.zeros((capacity, n_leaves))
        self._A = np.zeros((capacity, n_leaves), dtype=bool)
        self._W = np.zeros((capacity, n_leaves))
        self._loss = np.zeros(capacity)
        self._n = 0

    def _append(self, x: np.ndarray, a: np.ndarray, w: np.ndarray, loss: float) -> None:
        if self._n == len(self._loss):
            cap = max(64, 2 * len(self._loss))
            for name in ("_X", "_A", "_W", "_loss"):
                old = getattr(self, name)
                new = np.zeros((cap,) + old.shape[1:], dtype=old.dtype)
                new[: self._n] = old[: self._n]
                setattr(self, name, new)
        self._X[self._n], self._A[self._n], self._W[self._n] = x, a, w
        self._loss[self._n] = loss
        self._n += 1

    def _to_loss(self, value: float) -> float:
        return loss_of(value, self.maximize)

    # -- the Tuner contract -------------------------------------------------------------------------
    def update_search_space(self, search_space: Mapping[str, Any] | SearchSpace) -> None:
        space = parse_search_space(search_space)
        if self._cs is not None and self._cs.space.dimensions == space.dimensions:
            self.space = space
            return
        self.space = space
        self._cs = cs = compile_space(space)
        self._alloc(cs.n_leaves, max(64, len(self._records)))
        self._pending.clear()
        self._seen = set()
        records, self._records = self._records, []
        for params, loss in records:  # results of the old space that still fit the new one
            self._add(params, loss)

    def _add(self, params: Mapping[str, Any], loss: float) -> bool:
        assert self._cs is not None
        try:
            x, a, w = self._cs.encode(params)
        except (ValueError, TypeError, KeyError, AttributeError):
            return False
        self._append(x, a, w, loss)
        self._records.append((params, loss))
        if self._cs.all_discrete:
            self._seen.add(self._cs.key(x, a))
        return True

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        cs = self._cs
        if cs is None:
            raise RuntimeError("update_search_space must be called before generate_parameters")
        if cs.all_discrete and cs.grid_size is not None and len(self._seen) >= cs.grid_size:
            raise NoMoreTrials("every point of the (discrete) search space has been suggested")
        rng = np.random.default_rng([self._entropy, self._count])
        n = self._n
        if self._pending:
            px, pa, pw = (np.array(v) for v in list(zip(*self._pending.values()))[:3])
        else:
            px = np.zeros((0, cs.n_leaves))
            pa, pw = px.astype(bool), px
        hist = History(self._X[:n], self._A[:n], self._W[:n], self._loss[:n], px, pa, pw)
        params = None
        for tries, (x, a) in enumerate(proposals(cs, hist, rng, self.settings)):
            params = cs.decode(x)
            if not cs.all_discrete:
                break
            row = cs.encode(params)
            if cs.key(row[0], row[1]) not in self._seen:
                break
            if tries >= _MAX_TRIES:
                params = unseen_point(cs, self._seen, rng, 10 * _MAX_TRIES, _ENUMERATE_LIMIT)
                break
        assert params is not None
        x, a, w = cs.encode(params)
        self._pending[parameter_id] = (x, a, w, params)
        if cs.all_discrete:
            self._seen.add(cs.key(x, a))
        self._count += 1
        return params

    def receive_trial_result(self, parameter_id: int, parameters: Mapping[str, Any], value: float,
                             **kwargs: Any) -> None:
        pending = None if kwargs.get("imported") else self._pending.pop(parameter_id, None)
        if pending is None:
            self._count += 1  # a point this tuner did not suggest takes a place in the random streams
        loss = self._to_loss(value)
        if self._cs is None:
            self._records.append((parameters, loss))
            return
        if pending is not None and pending[3] == parameters:  # encoded when suggested: same row
            x, a, w, _ = pending
            self._append(x, a, w, loss)
            self._records.append((parameters, loss))
            if self._cs.all_discrete:
                self._seen.add(self._cs.key(x, a))
            return
        self._add(parameters, loss)

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        self._pending.pop(parameter_id, None)

    def import_data(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Replay earlier trials in order.  A record whose value is ``None`` (a trial that failed)
        is handled as it was live: the point counts as suggested (never again in a discrete space)
        but has no result to learn from."""
        for i, record in enumerate(records):
            value = record.get("value")
            if value is None:
                self._count += 1
                if self._cs is not None and self._cs.all_discrete:
                    try:
                        x, a, _ = self._cs.encode(record["parameter"])
                    except (ValueError, TypeError, KeyError, AttributeError):
                        continue
                    self._seen.add(self._cs.key(x, a))
                continue
            self.receive_trial_result(-1 - i, record["parameter"], float(value), imported=True)
