"""Gaussian-process Bayesian optimisation as pure functions of (compiled space, history, rng, settings).

Coordinates
    Points are the rows of :mod:`tuners._tpe_space` (one internal coordinate per leaf: ``u`` in [0, 1] for
    numeric leaves, uniform under the prior, so log-scale types are modelled on a log scale and normal types
    through their CDF; the option index for categorical ones).  The GP sees *features*: one column per numeric
    leaf (``u``; 0.5 where the leaf is inactive in a nested space) and one-hot columns per categorical leaf
    (scaled by ``1/sqrt(2)``, so two different options are at distance 1; all zero where inactive).  Each leaf has
    its own length scale (ARD); integer and quantised leaves are rounded by decoding (candidates are snapped to
    their grid before they are scored).

Model
    Losses (lower is better) are standardised; with a long upper tail (heavy right skew: Rosenbrock-like
    losses) they are first passed through ``log(y - min + c)`` (``output_warping``).  The kernel is Matern
    (``nu`` 0.5, 1.5 or 2.5) or RBF, with a signal variance and a noise variance (at least ``alpha``).  Its
    hyperparameters maximise the log marginal likelihood plus a weak log-normal prior on the length scales
    (L-BFGS-B with analytic gradients, from the default point and ``n_restarts`` random ones).  Past 20
    finished trials the hyperparameters are refitted on a schedule (every ``n // 10`` trials), and on at most
    :data:`MAX_FIT_POINTS` of them, so an ask stays cheap; the posterior always uses every finished trial.
    Each fit is a function of the history it was made on, so a replayed history gives the same fit.

Acquisition
    Expected improvement (``ei``, with ``xi``), probability of improvement (``poi``, with ``xi``) or the
    lower confidence bound (``ucb``, with ``kappa``), all on the standardised loss.  It is maximised by scoring
    ``n_warmup`` random candidates plus perturbations of the best trials, then polishing the best
    ``n_starting_points`` with L-BFGS-B over their numeric coordinates.  Past :data:`FULL_EFFORT` finished trials
    the candidates and starting points shrink in proportion (a candidate costs O(n^2)), so an ask stays well under
    50 ms at 200 trials.

Pending trials
    Suggestions still running are *kriging believers*: they join the GP with their posterior mean as value
    (the hyperparameters stay those fitted on finished trials), which removes the variance around them, so
    concurrent asks spread out instead of all landing on the acquisition's maximum.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuners._tpe_space import CompiledSpace

__all__ = ["one_blas_thread", "GpSettings", "GpHistory", "GpFit", "Features", "fit_gp", "propose", "refit_point",
           "MAX_FIT_POINTS", "KERNELS", "UTILITIES"]

KERNELS = ("matern", "rbf")
UTILITIES = ("ei", "ucb", "poi")
MAX_FIT_POINTS = 100          # hyperparameters are fitted on at most this many finished trials
FULL_EFFORT = 60              # past this many finished trials, fewer candidates and polishing starts
MIN_SEPARATION = 0.02         # no suggestion closer than this (in length scales) to a finished or pending point
_JITTER = 1e-8
_LS_BOUNDS = (0.01, 20.0)     # length scales, in units of the unit cube
_SF_BOUNDS = (0.05, 20.0)     # signal variance (standardised losses)
_NOISE_MAX = 0.5              # noise variance (standardised losses)
_WARP_C = 1.0
_LS_PRIOR = (math.log(0.5), 1.5)  # log-normal prior on length scales: (mean of log, sd of log)


_CONTROLLER: Any = None


def one_blas_thread() -> Any:
    """A context in which BLAS runs on one thread: the GP's matrices are small, so threads cost far more than they
    give (and spin when the machine is busy: ten times slower on two loaded cores).  A no-op without threadpoolctl."""
    global _CONTROLLER
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a dependency; only a broken installation lacks it
        return contextlib.nullcontext()
    if _CONTROLLER is None:
        import importlib
        for module in ("scipy.linalg", "scipy.optimize"):  # the controller sees the libraries loaded when it is made
            importlib.import_module(module)
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


@dataclass(frozen=True)
class GpSettings:
    utility: str = "ei"
    kappa: float = 2.0
    xi: float = 0.0
    kernel: str = "matern"
    nu: float = 2.5
    length_scale: float = 0.5
    alpha: float = 1e-6
    cold_start_num: int = 6
    n_warmup: int = 1000
    n_starting_points: int = 5
    n_restarts: int = 2
    output_warping: bool = True


@dataclass
class GpHistory:
    """Finished rows (values ``X``, active mask ``A``, loss ``loss``; lower is better) and pending rows."""

    X: np.ndarray
    A: np.ndarray
    loss: np.ndarray
    PX: np.ndarray
    PA: np.ndarray


# ------------------------------------------------------------------------------------------------
# features

class Features:
    """Rows of a compiled space as GP features, and which leaf (length scale) each column belongs to."""

    def __init__(self, cs: CompiledSpace) -> None:
        self.cs = cs
        cols: list[int] = []
        self.num_leaves = [leaf.index for leaf in cs.leaves if not leaf.categorical]
        self.cat_leaves = [leaf.index for leaf in cs.leaves if leaf.categorical]
        self.num_cols = np.arange(len(self.num_leaves), dtype=np.intp)
        cols += self.num_leaves
        self.cat_offset: dict[int, int] = {}
        for li in self.cat_leaves:
            self.cat_offset[li] = len(cols)
            cols += [li] * cs.leaves[li].n_options
        self.n_cols = len(cols)
        leaves = sorted(set(cols))
        self.param_of_leaf = {li: p for p, li in enumerate(leaves)}
        self.n_params = len(leaves)
        self.col_param = np.array([self.param_of_leaf[li] for li in cols], dtype=np.intp)
        self.num_leaf_arr = np.array(self.num_leaves, dtype=np.intp)

    def __call__(self, X: np.ndarray, A: np.ndarray) -> np.ndarray:
        n = X.shape[0]
        F = np.zeros((n, self.n_cols))
        if self.num_leaves:
            F[:, self.num_cols] = np.where(A[:, self.num_leaf_arr], X[:, self.num_leaf_arr], 0.5)
        for li in self.cat_leaves:
            rows = np.flatnonzero(A[:, li])
            F[rows, self.cat_offset[li] + X[rows, li].astype(np.intp)] = math.sqrt(0.5)
        return F


# ------------------------------------------------------------------------------------------------
# kernel

def _kernel_and_slope(r2: np.ndarray, s: GpSettings) -> tuple[np.ndarray, np.ndarray]:
    """Unit-variance kernel k(r2) and its derivative dk/d(r2), element-wise."""
    if s.kernel == "rbf":
        k = np.exp(-0.5 * r2)
        return k, -0.5 * k
    if s.nu == 2.5:
        a = np.sqrt(5.0 * r2)
        e = np.exp(-a)
        return (1.0 + a + a * a / 3.0) * e, -(5.0 / 6.0) * (1.0 + a) * e
    if s.nu == 1.5:
        a = np.sqrt(3.0 * r2)
        e = np.exp(-a)
        return (1.0 + a) * e, -1.5 * e
    r = np.sqrt(r2)  # nu == 0.5
    e = np.exp(-r)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(r > 1e-12, -0.5 * e / np.maximum(r, 1e-12), 0.0)
    return e, slope


def _sqdist_per_param(F: np.ndarray, col_param: np.ndarray, n_params: int) -> np.ndarray:
    """(P, n, n): per length-scale group, the squared feature distances between every pair of rows."""
    n = F.shape[0]
    D = np.zeros((n_params, n, n))
    for c in range(F.shape[1]):
        diff = F[:, c][:, None] - F[:, c][None, :]
        D[col_param[c]] += diff * diff
    return D


@dataclass
class GpFit:
    """Fitted hyperparameters (natural scale) and the transform of the losses."""

    length_scales: np.ndarray
    signal: float
    noise: float
    warped: bool                  # losses passed through log(y - min + c) (see _skewed)
    log_likelihood: float = 0.0

    def transform(self, loss: np.ndarray) -> np.ndarray:
        """The losses as the GP models them (before standardising)."""
        if not self.warped or len(loss) == 0:
            return loss
        lo, med, hi = float(np.min(loss)), float(np.median(loss)), float(np.max(loss))
        c = max(_WARP_C * (med - lo), 1e-9 * (hi - lo), 1e-12 * max(abs(lo), 1.0))
        return np.log(loss - lo + c)


def _skewed(loss: np.ndarray, s: GpSettings) -> bool:
    """Whether the losses have a long upper tail (the max much farther above the median than the min below)."""
    if not s.output_warping or len(loss) < 4:
        return False
    lo, med, hi = float(np.min(loss)), float(np.median(loss)), float(np.max(loss))
    return math.isfinite(hi - lo) and hi - lo > 0 and (hi - med) > 4.0 * (med - lo)


def _standardise(y: np.ndarray) -> tuple[np.ndarray, float, float]:
    mean = float(np.mean(y))
    std = float(np.std(y))
    if not std > 1e-12 or not math.isfinite(std):
        std = 1.0
    return (y - mean) / std, mean, std


def _neg_log_posterior(theta: np.ndarray, D: np.ndarray, y: np.ndarray, s: GpSettings) -> tuple[float, np.ndarray]:
    """Negative (log marginal likelihood + log prior on length scales) and its gradient in log space."""
    from scipy.linalg import cho_solve, lapack

    P = D.shape[0]
    n = len(y)
    ls = np.exp(theta[:P])
    sf = math.exp(theta[P])
    sn = math.exp(theta[P + 1])
    r2 = np.tensordot(1.0 / (ls * ls), D, axes=1)
    k, slope = _kernel_and_slope(r2, s)
    K = sf * k
    K[np.diag_indices(n)] += sn + _JITTER
    L, info = lapack.dpotrf(K, lower=1, clean=1, overwrite_a=0)
    if info != 0:
        return 1e25, np.zeros_like(theta)
    alpha = cho_solve((L, True), y)
    Kinv, info = lapack.dpotri(L, lower=1)
    if info != 0:
        return 1e25, np.zeros_like(theta)
    Kinv = np.tril(Kinv) + np.tril(Kinv, -1).T
    nll = 0.5 * float(y @ alpha) + float(np.sum(np.log(np.diag(L)))) + 0.5 * n * math.log(2 * math.pi)
    W = np.outer(alpha, alpha) - Kinv        # d(log lik)/dK = W / 2
    grad = np.empty_like(theta)
    M = W * (sf * slope)
    grad[:P] = -(-np.tensordot(D, M, axes=([1, 2], [0, 1])) / (ls * ls))   # -(1/2) tr(W dK) per log ls
    grad[P] = -0.5 * float(np.sum(W * (sf * k)))
    grad[P + 1] = -0.5 * sn * float(np.trace(W))
    mu, sd = _LS_PRIOR
    z = (theta[:P] - mu) / sd
    nll += 0.5 * float(z @ z)
    grad[:P] += z / sd
    return nll, grad


def fit_gp(F: np.ndarray, loss: np.ndarray, rng: np.random.Generator, s: GpSettings, n_params: int,
           col_param: np.ndarray) -> GpFit:
    """Hyperparameters maximising the marginal likelihood (with a weak prior on length scales)."""
    from scipy.optimize import minimize

    fit = GpFit(np.full(n_params, s.length_scale), 1.0, max(s.alpha, 1e-6), _skewed(loss, s))
    y, _, _ = _standardise(fit.transform(loss))
    if len(y) < 2 or n_params == 0:
        return fit
    D = _sqdist_per_param(F, col_param, n_params)
    lo_noise = math.log(max(s.alpha, 1e-8))
    bounds = ([tuple(math.log(b) for b in _LS_BOUNDS)] * n_params
              + [tuple(math.log(b) for b in _SF_BOUNDS), (lo_noise, max(lo_noise, math.log(_NOISE_MAX)))])
    ls0 = min(max(s.length_scale, _LS_BOUNDS[0]), _LS_BOUNDS[1])
    starts = [np.array([math.log(ls0)] * n_params + [0.0, max(lo_noise, math.log(1e-4))])]
    for _ in range(s.n_restarts if len(y) <= 50 else min(s.n_restarts, 1)):
        starts.append(np.array([rng.uniform(lo, hi) for lo, hi in bounds]))
    best: tuple[float, np.ndarray] | None = None
    for x0 in starts:
        try:
            res = minimize(_neg_log_posterior, x0, args=(D, y, s), jac=True, method="L-BFGS-B", bounds=bounds,
                           options={"maxiter": 50})
        except (ValueError, FloatingPointError, np.linalg.LinAlgError):
            continue
        if np.all(np.isfinite(res.x)) and math.isfinite(res.fun) and (best is None or res.fun < best[0]):
            best = (float(res.fun), res.x)
    if best is None:
        return fit
    theta = best[1]
    return GpFit(np.exp(theta[:n_params]), float(math.exp(theta[n_params])), float(math.exp(theta[n_params + 1])),
                 fit.warped, -best[0])


def refit_point(n: int) -> int:
    """How many of the first ``n`` finished trials the hyperparameters in use were fitted on."""
    if n <= 20:
        return n
    step = max(1, n // 10)
    return n - n % step


def fit_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    """Which of ``n`` finished trials a hyperparameter fit uses: all, or a seeded subset of MAX_FIT_POINTS."""
    if n <= MAX_FIT_POINTS:
        return np.arange(n)
    return np.sort(rng.choice(n, MAX_FIT_POINTS, replace=False))


# ------------------------------------------------------------------------------------------------
# posterior and acquisition

class _Posterior:
    """The GP conditioned on finished rows (and pending rows with their believed mean)."""

    def __init__(self, F: np.ndarray, y: np.ndarray, fit: GpFit, s: GpSettings, col_param: np.ndarray,
                 PF: np.ndarray | None) -> None:
        from scipy.linalg import cho_factor, cho_solve

        self.s, self.fit = s, fit
        self.inv_ls = 1.0 / fit.length_scales[col_param] if len(col_param) else np.zeros(0)
        self.Z = F * self.inv_ls
        self.y_best = float(np.min(y))
        K = self._k(self.Z, self.Z)
        K[np.diag_indices_from(K)] += fit.noise + _JITTER
        c = cho_factor(K, lower=True)
        self.alpha = cho_solve(c, y)
        if PF is not None and len(PF):
            PZ = PF * self.inv_ls
            believed = self._k(PZ, self.Z) @ self.alpha       # posterior mean at the pending points
            self.Z = np.vstack([self.Z, PZ])
            yy = np.concatenate([y, believed])
            K = self._k(self.Z, self.Z)
            K[np.diag_indices_from(K)] += fit.noise + _JITTER
            c = cho_factor(K, lower=True)
            self.alpha = cho_solve(c, yy)
        self.Kinv = cho_solve(c, np.eye(len(self.Z)))
        self.z2 = np.sum(self.Z * self.Z, axis=1)

    def _r2(self, A: np.ndarray, B: np.ndarray, b2: np.ndarray | None = None) -> np.ndarray:
        a2 = np.sum(A * A, axis=1)
        b2 = np.sum(B * B, axis=1) if b2 is None else b2
        return np.maximum(a2[:, None] + b2[None, :] - 2.0 * (A @ B.T), 0.0)

    def _k(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        return self.fit.signal * _kernel_and_slope(self._r2(A, B), self.s)[0]

    def too_close(self, F: np.ndarray) -> np.ndarray:
        """Which feature rows lie within MIN_SEPARATION length scales of a finished or pending point."""
        return np.min(self._r2(F * self.inv_ls, self.Z, self.z2), axis=1) < MIN_SEPARATION ** 2

    def predict(self, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation (standardised, warped loss) at feature rows ``F``."""
        Zs = F * self.inv_ls
        Ks = self.fit.signal * _kernel_and_slope(self._r2(Zs, self.Z, self.z2), self.s)[0]
        mean = Ks @ self.alpha
        var = self.fit.signal - np.einsum("ij,ij->i", Ks @ self.Kinv, Ks)
        return mean, np.sqrt(np.maximum(var, 1e-18))

    def predict_grad(self, f: np.ndarray, cols: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
        """Mean, sd, and their gradients with respect to the feature columns ``cols`` of one row ``f``."""
        z = f * self.inv_ls
        diff = z[None, :] - self.Z                          # (n, C)
        r2 = np.sum(diff * diff, axis=1)
        k, slope = _kernel_and_slope(r2, self.s)
        k = self.fit.signal * k
        slope = self.fit.signal * slope
        # d k_i / d f_c = slope_i * 2 * diff_ic * inv_ls_c
        J = (2.0 * slope)[:, None] * diff[:, cols] * self.inv_ls[cols][None, :]   # (n, |cols|)
        mean = float(k @ self.alpha)
        v = self.Kinv @ k
        var = max(self.fit.signal - float(k @ v), 1e-18)
        sd = math.sqrt(var)
        dmean = J.T @ self.alpha
        dvar = -2.0 * (J.T @ v)
        return mean, sd, dmean, dvar / (2.0 * sd)


def _acquisition(mean: np.ndarray, sd: np.ndarray, y_best: float, s: GpSettings) -> np.ndarray:
    """Acquisition value to maximise (losses are minimised)."""
    from scipy.special import ndtr

    if s.utility == "ucb":
        return -mean + s.kappa * sd
    z = (y_best - mean - s.xi) / sd
    if s.utility == "poi":
        return ndtr(z)
    return sd * (z * ndtr(z) + np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi))


def _acquisition_grad(mean: float, sd: float, dmean: np.ndarray, dsd: np.ndarray, y_best: float,
                      s: GpSettings) -> tuple[float, np.ndarray]:
    from scipy.special import ndtr

    if s.utility == "ucb":
        return -mean + s.kappa * sd, -dmean + s.kappa * dsd
    z = (y_best - mean - s.xi) / sd
    pdf = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cdf = float(ndtr(z))
    if s.utility == "poi":
        return cdf, pdf * (-dmean / sd - z * dsd / sd)
    return sd * (z * cdf + pdf), -cdf * dmean + pdf * dsd


# ------------------------------------------------------------------------------------------------
# proposals

@dataclass
class Proposal:
    x: np.ndarray
    a: np.ndarray
    score: float
    ranked: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)   # further candidates, best first


def _snap(cs: CompiledSpace, X: np.ndarray) -> np.ndarray:
    """Discrete numeric leaves moved onto their grid (in place, and returned)."""
    for leaf in cs.leaves:
        if not leaf.categorical and leaf.discrete:
            X[:, leaf.index] = leaf.snap(np.clip(X[:, leaf.index], 0.0, 1.0))[0]
    return X


def _local_candidates(cs: CompiledSpace, h: GpHistory, fit: GpFit, rng: np.random.Generator,
                      n: int, n_best: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Perturbations of the best finished rows: numeric coordinates moved by a normal of a fraction of their
    length scale (and of the box), now and then a categorical option swapped."""
    from tuners._tpe_core import active_mask

    order = np.argsort(h.loss, kind="stable")[:n_best]
    base = h.X[order[rng.integers(len(order), size=n)]].copy()
    for leaf in cs.leaves:
        col = base[:, leaf.index]
        if leaf.categorical:
            swap = rng.random(n) < 0.15
            col[swap] = rng.integers(leaf.n_options, size=int(swap.sum()))
        else:
            scale = np.where(rng.random(n) < 0.5, 0.02, 0.1)
            col += rng.standard_normal(n) * scale
            np.clip(col, 0.0, 1.0, out=col)
    _snap(cs, base)
    return base, active_mask(cs, base)


def propose(cs: CompiledSpace, feats: Features, h: GpHistory, fit: GpFit, rng: np.random.Generator,
            s: GpSettings, n_ranked: int = 0) -> Proposal:
    """The row maximising the acquisition (and the ``n_ranked`` next-best candidates, for duplicate checks)."""
    from scipy.optimize import minimize

    from tuners._tpe_core import active_mask, prior_rows

    y, _, _ = _standardise(fit.transform(h.loss))
    F = feats(h.X, h.A)
    PF = feats(h.PX, h.PA) if len(h.PX) else None
    post = _Posterior(F, y, fit, s, feats.col_param, PF)
    effort = min(1.0, FULL_EFFORT / max(len(h.loss) + len(h.PX), 1))
    n_random = max(int(s.n_warmup * effort), min(s.n_warmup, 100))
    RX, RA = prior_rows(cs, rng, n_random)
    LX, LA = _local_candidates(cs, h, fit, rng, max(n_random // 4, 16))
    CX, CA = np.vstack([RX, LX]), np.vstack([RA, LA])
    CF = feats(CX, CA)
    mean, sd = post.predict(CF)
    acq = _acquisition(mean, sd, post.y_best, s)
    # a point (almost) on top of one already evaluated teaches the model next to nothing: never suggested (else
    # an overconfident model can keep suggesting its incumbent, a hair away each time)
    acq[post.too_close(CF)] = -np.inf
    order = np.argsort(-acq, kind="stable")
    best_x, best_a, best_v = CX[order[0]].copy(), CA[order[0]].copy(), float(acq[order[0]])
    # polish the best few (distinct) candidates over their active numeric coordinates
    n_starts = max(round(s.n_starting_points * effort), min(s.n_starting_points, 1))
    starts: list[int] = []
    seen: set[bytes] = set()
    for i in order[:50 * n_starts] if n_starts else ():
        key = CX[i].tobytes()
        if key in seen or not np.isfinite(acq[i]):
            continue
        seen.add(key)
        starts.append(int(i))
        if len(starts) >= n_starts:
            break
    num_col_of_leaf = {li: c for c, li in enumerate(feats.num_leaves)}
    polished: list[tuple[float, np.ndarray, np.ndarray]] = []
    for i in starts:
        x0, a0 = CX[i].copy(), CA[i]
        leaves = [li for li in feats.num_leaves if a0[li]]
        if not leaves:
            continue
        cols = np.array([num_col_of_leaf[li] for li in leaves], dtype=np.intp)
        f0 = feats(x0[None, :], a0[None, :])[0]

        def negacq(u: np.ndarray, f0: np.ndarray = f0, cols: np.ndarray = cols) -> tuple[float, np.ndarray]:
            f = f0.copy()
            f[cols] = u
            m, sdv, dm, dsd = post.predict_grad(f, cols)
            v, g = _acquisition_grad(m, sdv, dm, dsd, post.y_best, s)
            return -v, -g

        try:
            res = minimize(negacq, f0[cols], jac=True, method="L-BFGS-B", bounds=[(0.0, 1.0)] * len(cols),
                           options={"maxiter": 20})
        except (ValueError, FloatingPointError, np.linalg.LinAlgError):
            continue
        x1 = x0.copy()
        x1[np.array(leaves, dtype=np.intp)] = np.clip(res.x, 0.0, 1.0)
        _snap(cs, x1[None, :])
        polished.append((0.0, x1, a0))
    if polished:
        PXs = np.array([p[1] for p in polished])
        PAs = np.array([p[2] for p in polished])
        QF = feats(PXs, PAs)
        pm, psd = post.predict(QF)
        pv = _acquisition(pm, psd, post.y_best, s)
        pv[post.too_close(QF)] = -np.inf
        j = int(np.argmax(pv))
        if pv[j] > best_v:
            best_x, best_a, best_v = PXs[j].copy(), PAs[j].copy(), float(pv[j])
    ranked = [(CX[i], CA[i]) for i in order[1:1 + n_ranked]] if n_ranked else []
    return Proposal(best_x, active_mask(cs, best_x[None, :])[0] if len(best_x) else best_a, best_v, ranked)
