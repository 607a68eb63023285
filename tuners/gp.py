"""Gaussian-process Bayesian optimisation (numpy/scipy only): ``tuner: {name: gp}``, Polyaxon's ``bayes`` matrix.

The algorithm lives in :mod:`tuners._gp_core` as pure functions of (space, history, rng); this module is the
thin :class:`Tuner` around it that keeps the history.

Determinism and resume
    Suggestion number ``k`` (counting every suggestion made and every result received for a point this tuner did
    not suggest, imported ones included) draws from its own generator ``default_rng([seed, k])``; the first
    ``cold_start_num`` suggestions are the points of a Latin-hypercube design drawn once from the seed; a
    hyperparameter fit on the first ``m`` finished trials draws from ``default_rng([seed, m, 2])``.  So a seeded
    run is reproducible, and a tuner that is given ``import_data`` of a sequential run's results suggests what
    the original would have suggested next.

Parallel use
    Running suggestions join the model as kriging believers (see :mod:`tuners._gp_core`).  In an all-discrete
    space no point is suggested twice; once every point has been, :class:`NoMoreTrials` is raised.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np

from hpo.search_space import SearchSpace, parse_search_space
from tuners._gp_core import (KERNELS, UTILITIES, Features, GpFit, GpHistory, GpSettings, fit_gp, fit_rows,
                             one_blas_thread, propose, refit_point)
from tuners._args import check_int
from tuners._tpe_core import loss_of, unseen_point
from tuners._tpe_space import CompiledSpace, compile_space
from tuners.base import NoMoreTrials, Tuner
from tuners.registry import register_tuner

__all__ = ["GpTuner"]

_ENUMERATE_LIMIT = 200_000
_RANKED = 64


@register_tuner("gp", aliases=("GP", "GPTuner", "gaussian_process"))
class GpTuner(Tuner):
    """Gaussian-process tuner with NNI's ``GPTuner`` arguments (and Polyaxon's ``bayes`` settings).

    Args:
        optimize_mode: ``"maximize"`` or ``"minimize"``.
        seed: seed of the random streams (``None``: a random one, drawn once).
        utility: acquisition function: ``"ei"`` (expected improvement), ``"ucb"`` (upper confidence bound on the
            metric) or ``"poi"`` (probability of improvement).
        kappa: ``ucb``'s weight of the standard deviation.
        xi: ``ei``/``poi``'s margin over the best value (in standard deviations of the results).
        nu: smoothness of the Matern kernel: 0.5, 1.5 or 2.5.
        alpha: smallest noise variance (of the standardised results); the noise is fitted above it.
        cold_start_num: suggestions from a Latin-hypercube design before the model is used.
        selection_num_warm_up: random candidates scored per suggestion (NNI's default is 100,000; here 1,000,
            plus a quarter as many perturbations of the best trials).
        selection_num_starting_points: best candidates polished with L-BFGS-B (NNI: 250; here 5).
        kernel: ``"matern"`` or ``"rbf"``.
        length_scale: initial length scale of every parameter, as a fraction of its (transformed) range.
        num_restarts_optimizer: random restarts of the hyperparameter fit (besides the default start).
        output_warping: model the log of the results' distance to the best one when their tail is long.
    """

    def __init__(self, optimize_mode: str = "maximize", seed: int | None = None, utility: str = "ei",
                 kappa: float = 2.0, xi: float = 0.0, nu: float = 2.5, alpha: float = 1e-6, cold_start_num: int = 6,
                 selection_num_warm_up: int = 1000, selection_num_starting_points: int = 5, kernel: str = "matern",
                 length_scale: float = 0.5, num_restarts_optimizer: int = 2, output_warping: bool = True) -> None:
        super().__init__(optimize_mode, seed)
        utility = str(utility).lower()
        kernel = str(kernel).lower()
        if utility not in UTILITIES:
            raise ValueError(f"utility: got {utility!r}, expected one of {', '.join(map(repr, UTILITIES))}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel: got {kernel!r}, expected one of {', '.join(map(repr, KERNELS))}")
        for name, value in (("kappa", kappa), ("xi", xi), ("nu", nu), ("alpha", alpha), ("length_scale", length_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}: got {value!r}, expected a number")
        if kernel == "matern" and float(nu) not in (0.5, 1.5, 2.5):
            raise ValueError(f"nu: got {nu!r}, expected 0.5, 1.5 or 2.5 (or kernel 'rbf' for an infinitely smooth one)")
        if kappa < 0 or alpha <= 0 or length_scale <= 0:
            raise ValueError(f"kappa must be >= 0, alpha and length_scale > 0 (got kappa={kappa!r}, alpha={alpha!r}, "
                             f"length_scale={length_scale!r})")
        for name, value, least in (("cold_start_num", cold_start_num, 0), ("selection_num_warm_up", selection_num_warm_up, 1),
                                   ("selection_num_starting_points", selection_num_starting_points, 0),
                                   ("num_restarts_optimizer", num_restarts_optimizer, 0)):
            check_int(name, value, least)
        self.settings = GpSettings(
            utility=utility, kappa=float(kappa), xi=float(xi), kernel=kernel, nu=float(nu),
            length_scale=float(length_scale), alpha=float(alpha), cold_start_num=cold_start_num,
            n_warmup=selection_num_warm_up, n_starting_points=selection_num_starting_points,
            n_restarts=num_restarts_optimizer, output_warping=bool(output_warping))
        self._entropy = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2**63))
        self._cs: CompiledSpace | None = None
        self._feats: Features | None = None
        self._records: list[tuple[Mapping[str, Any], float]] = []
        self._rows: list[tuple[np.ndarray, np.ndarray]] = []
        self._loss: list[float] = []
        self._pending: dict[int, tuple[np.ndarray, np.ndarray, dict[str, Any]]] = {}
        self._seen: set[bytes] = set()
        self._count = 0
        self._design: tuple[np.ndarray, np.ndarray] | None = None
        self._fit: tuple[int, GpFit] | None = None

    def class_args(self) -> dict[str, Any]:
        s = self.settings
        return {"optimize_mode": self.optimize_mode, "seed": self.seed, "utility": s.utility, "kappa": s.kappa,
                "xi": s.xi, "nu": s.nu, "alpha": s.alpha, "cold_start_num": s.cold_start_num,
                "selection_num_warm_up": s.n_warmup, "selection_num_starting_points": s.n_starting_points,
                "kernel": s.kernel, "length_scale": s.length_scale, "num_restarts_optimizer": s.n_restarts,
                "output_warping": s.output_warping}

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
        self._feats = Features(cs)
        self._pending.clear()
        self._seen = set()
        self._fit = None
        self._design = None
        records, self._records, self._rows, self._loss = self._records, [], [], []
        for params, loss in records:  # results of the old space that still fit the new one
            self._add(params, loss)

    def _encode(self, params: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
        assert self._cs is not None
        try:
            x, a, _ = self._cs.encode(params)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        return x, a

    def _add(self, params: Mapping[str, Any], loss: float, row: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        assert self._cs is not None
        row = row if row is not None else self._encode(params)
        if row is None:
            return
        self._rows.append(row)
        self._loss.append(loss)
        self._records.append((params, loss))
        if self._cs.all_discrete:
            self._seen.add(self._cs.key(*row))

    def _design_row(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Point ``k`` of the Latin-hypercube design of the cold start."""
        from tuners._tpe_core import rows_from_unit

        cs = self._cs
        assert cs is not None
        if self._design is None:
            n = self.settings.cold_start_num
            rng = np.random.default_rng([self._entropy, 1_000_003, 1])
            u = (np.argsort(rng.random((n, cs.n_leaves)), axis=0) + rng.random((n, cs.n_leaves))) / max(n, 1)
            self._design = rows_from_unit(cs, u)
        return self._design[0][k], self._design[1][k]

    def _history(self) -> GpHistory:
        cs = self._cs
        assert cs is not None
        n = len(self._rows)
        X = np.array([r[0] for r in self._rows]).reshape(n, cs.n_leaves)
        A = np.array([r[1] for r in self._rows], dtype=bool).reshape(n, cs.n_leaves)
        loss = np.array(self._loss, dtype=float)
        finite = np.isfinite(loss)
        if finite.any() and not finite.all():  # failed / NaN results count as the worst seen
            loss = np.where(finite, loss, np.max(loss[finite]))
        pend = list(self._pending.values())
        PX = np.array([p[0] for p in pend]).reshape(len(pend), cs.n_leaves)
        PA = np.array([p[1] for p in pend], dtype=bool).reshape(len(pend), cs.n_leaves)
        return GpHistory(X, A, loss, PX, PA)

    def _fitted(self, h: GpHistory) -> GpFit:
        """The hyperparameters for ``h``: fitted on the first ``refit_point(n)`` finished trials (cached)."""
        assert self._feats is not None
        m = refit_point(len(h.loss))
        if self._fit is not None and self._fit[0] == m:
            return self._fit[1]
        rng = np.random.default_rng([self._entropy, m, 2])
        rows = fit_rows(m, rng)
        feats = self._feats
        fit = fit_gp(feats(h.X[rows], h.A[rows]), h.loss[rows], rng, self.settings, feats.n_params, feats.col_param)
        self._fit = (m, fit)
        return fit

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        with one_blas_thread():
            return self._generate(parameter_id)

    def _generate(self, parameter_id: int) -> dict[str, Any]:
        cs = self._cs
        if cs is None:
            raise RuntimeError("update_search_space must be called before generate_parameters")
        if cs.all_discrete and cs.grid_size is not None and len(self._seen) >= cs.grid_size:
            raise NoMoreTrials("every point of the (discrete) search space has been suggested")
        rng = np.random.default_rng([self._entropy, self._count])
        h = self._history()
        candidates: list[tuple[np.ndarray, np.ndarray]] = []
        if self._count < self.settings.cold_start_num:
            candidates.append(self._design_row(self._count))
        elif len(h.loss) < 2 or not np.isfinite(h.loss).any():
            from tuners._tpe_core import prior_rows
            x, a = prior_rows(cs, rng, 1)
            candidates.append((x[0], a[0]))
        else:
            prop = propose(cs, self._feats, h, self._fitted(h), rng, self.settings,  # type: ignore[arg-type]
                           n_ranked=_RANKED if cs.all_discrete else 0)
            candidates.append((prop.x, prop.a))
            candidates += prop.ranked
        params = None
        for x, _ in candidates:
            params = cs.decode(x)
            if not cs.all_discrete or cs.key(*self._encode(params)) not in self._seen:  # type: ignore[misc]
                break
            params = None
        if params is None:
            params = unseen_point(cs, self._seen, rng, 2000, _ENUMERATE_LIMIT)
        row = self._encode(params)
        assert row is not None
        self._pending[parameter_id] = (row[0], row[1], params)
        if cs.all_discrete:
            self._seen.add(cs.key(*row))
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
        row = (pending[0], pending[1]) if pending is not None and pending[2] == parameters else None
        self._add(parameters, loss, row)

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        self._pending.pop(parameter_id, None)

    def import_data(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Replay earlier trials in order; a record without a value (a failed trial) takes its place in the
        random streams and, in a discrete space, is not suggested again."""
        for i, record in enumerate(records):
            value = record.get("value")
            if value is None:
                self._count += 1
                if self._cs is not None and self._cs.all_discrete:
                    row = self._encode(record["parameter"])
                    if row is not None:
                        self._seen.add(self._cs.key(*row))
                continue
            self.receive_trial_result(-1 - i, record["parameter"], float(value), imported=True)
