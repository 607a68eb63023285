"""TPE as pure functions of (compiled space, history, pending points, rng, settings).

The history is a set of rows in internal coordinates (see :mod:`tuners._tpe_space`): ``X``
(values), ``A`` (active mask), ``W`` (bin widths of quantised values) and ``loss`` (lower is
better).  A suggestion is made group by group, from the top of the space down the nested
choices that were picked:

1. the finished trials are split by loss: the best ``min(ceil(gamma * n), max_good)`` are *good*,
   the rest (plus, with the constant liar, the pending points) are *bad*;
2. for a group, two Parzen estimators are fitted on the rows where the group is active:
   ``l`` on the good rows and ``g`` on the bad rows; both are mixtures with one component per row
   plus a prior component (a wide normal centred in the box for numeric leaves, uniform for
   categorical ones).  Numeric kernels are truncated normals on ``[0, 1]``; a kernel's width is
   the larger distance to its neighbours in that leaf, clipped below at
   ``max(min_bandwidth, 1 / (k + 2) ** magic_clip_exponent)`` and at half the grid step of
   quantised leaves.  Categorical kernels put ``1 - beta`` on the observed option and spread
   ``beta`` uniformly.  Good rows weigh their improvement over the best bad row ("ei"); bad
   rows older than the newest 25 weigh less, and only the newest ``max_bad`` are kept;
3. ``n_candidates`` points are drawn from ``l`` and ranked by ``log l - log g``; multivariate mode
   draws and scores whole rows of the group jointly (product kernels), univariate mode treats
   every leaf on its own;
4. the chosen options' sub-groups are suggested the same way, on the rows where they are active,
   split into good and bad among themselves (``local_split``): once an option is chosen, what
   matters is how its own settings compare, even while none of its trials is globally good.

Densities of many components are evaluated as one matrix product per estimator (the quadratic
form of a diagonal Gaussian expands into ``c^2 @ (1/s^2)^T - 2 c @ (mu/s^2)^T + const``; the
categorical part is a one-hot product), which keeps a suggestion ``O(n)`` with small constants.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from tuners._tpe_space import CompiledSpace, Group, ndtr, ndtri
from tuners.base import NoMoreTrials

__all__ = ["TpeSettings", "History", "proposals", "prior_rows", "split_good", "active_mask", "rows_from_unit",
           "unseen_point", "loss_of"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_PRIOR_SIGMA = 1.0


@dataclass(frozen=True)
class TpeSettings:
    """Every control parameter; the defaults are those the tuner benchmark chose (see TpeTuner)."""

    multivariate: bool = True
    n_startup_trials: int = 10
    gamma: float = 0.1                 # fraction of finished trials that are "good" ...
    max_good: int = 25                 # ... capped at this many ...
    min_good: int = 0                  # ... and at least this many (of the finished trials; BOHB's rule)
    prior_weight: float = 1.0          # weight of the prior component (one observation has weight 1)
    n_candidates: int = 24             # candidates drawn from l per suggestion
    bandwidth: str = "gap"             # "gap" (distance to neighbours, as hyperopt/Optuna) or "scott"
    bandwidth_factor: float = 1.0      # multiplies every numeric bandwidth
    min_bandwidth: float = 0.01        # smallest numeric bandwidth, as a fraction of the range ...
    magic_clip_exponent: float = 1.5   # ... and at least 1 / (n_components + 2) ** exponent
    discrete_floor: float = 0.5        # quantised leaves: bandwidth >= this many grid steps
    good_weights: str = "ei"           # "ei" (weight = improvement over the best bad trial) or "uniform"
    decay_bad: bool = True             # older bad trials weigh less (all but the newest 25)
    max_bad: int = 500                 # g keeps the newest this-many bad trials (bounds the cost per suggestion)
    constant_liar: bool = True         # pending points join g
    local_split: bool = True           # nested sub-spaces split their own trials into good / bad
    liar_categorical: float = 0.5      # pending rows' categorical kernels: this much mixed toward uniform
    # batch-aware variants, measured at concurrency 8 and off by default (none beat the plain liar;
    # benchmarks/tpe_concurrency.py); each acts only while points are pending
    liar_weight: float = 1.0           # weight of a pending row in g (a finished bad row weighs <= 1)
    pending_penalty: float = 0.0       # local penalisation radius around pending points, in l's bandwidths (0: off)
    pending_candidates: int = 0        # candidates drawn while points are pending (0: n_candidates)
    startup_finished: int = 0          # start-up counts pending suggestions once this many have finished (0: off)


@dataclass
class History:
    """Rows of finished trials (``n`` of them) and of pending suggestions."""

    X: np.ndarray
    A: np.ndarray
    W: np.ndarray
    loss: np.ndarray
    PX: np.ndarray
    PA: np.ndarray
    PW: np.ndarray


# ------------------------------------------------------------------------------------------------
# split and weights

def split_good(loss: np.ndarray, s: TpeSettings) -> np.ndarray:
    """Boolean mask of the good rows: the ``min(ceil(gamma n), max_good)`` (at least ``min_good``, at most ``n``)
    lowest losses (stable)."""
    n = len(loss)
    n_good = min(max(min(int(math.ceil(s.gamma * n)), s.max_good), s.min_good), n) if n else 0
    good = np.zeros(n, dtype=bool)
    if n_good:  # the n_good smallest losses, ties to the earlier trial: O(n), same as a stable sort
        kth = np.partition(loss, n_good - 1)[n_good - 1]
        good = loss < kth
        ties = np.flatnonzero(loss == kth)
        good[ties[: n_good - int(good.sum())]] = True
    return good


def _row_weights(loss: np.ndarray, good: np.ndarray, n_pending: int, s: TpeSettings) -> tuple[np.ndarray, np.ndarray]:
    """Weights of every row (history then pending) in l and in g (0 where the row is not used)."""
    n = len(loss)
    wl = np.zeros(n + n_pending)
    wg = np.zeros(n + n_pending)
    gi = np.flatnonzero(good)
    bad = ~good
    if s.good_weights == "ei" and bad.any():
        threshold = float(np.min(loss[bad]))
        imp = threshold - loss[gi]
        if np.all(np.isfinite(imp)) and imp.size:
            imp = np.maximum(imp, 1e-12)
            wl[gi] = imp / imp.mean()
        else:
            wl[gi] = 1.0
    else:
        wl[gi] = 1.0
    bi = np.flatnonzero(bad)
    if n_pending:
        bi = np.concatenate([bi, np.arange(n, n + n_pending)])
    nb = len(bi)
    if s.decay_bad and nb > 25:
        w = np.concatenate([np.linspace(1.0 / nb, 1.0, nb - 25), np.ones(25)])
    else:
        w = np.ones(nb)
    if n_pending and s.liar_weight != 1.0:
        w[nb - n_pending:] *= s.liar_weight
    if nb > s.max_bad:
        bi, w = bi[nb - s.max_bad:], w[nb - s.max_bad:]
    wg[bi] = w
    return wl, wg


# ------------------------------------------------------------------------------------------------
# Parzen estimator of one group (or one leaf)

class _Estimator:
    """Mixture of product kernels over a group's numeric and categorical leaves, plus a prior.

    Component ``i < k`` sits on observation ``i``; component ``k`` is the prior (a normal of width 1
    centred in the box, uniform over options).  For speed, the log density of every component at a
    batch of candidates is one matrix product: with features ``[x^2, x, 1, onehot(c)]`` and, per
    component, coefficients ``[-1/(2 s^2), mu/s^2, const, log(p_on/p_off)]``.
    """

    __slots__ = ("w", "logw", "mu", "sigma", "logz", "obs", "beta", "n_opts", "offsets", "coef")

    def __init__(self, mu: np.ndarray, widths: np.ndarray, obs: np.ndarray, weights: np.ndarray,
                 n_opts: np.ndarray, s: TpeSettings, n_dims_total: int,
                 soften: np.ndarray | None = None, soften_by: np.ndarray | None = None) -> None:
        k = len(weights)
        dn, dc = mu.shape[1], obs.shape[1]
        w = np.empty(k + 1)
        w[:k] = weights
        w[k] = s.prior_weight
        w /= w.sum()
        self.w = w
        self.logw = np.log(w)  # every weight is > 0
        m1 = np.empty((k + 1, dn))
        m1[:k] = mu
        m1[k] = 0.5
        sig = np.empty((k + 1, dn))
        if k and dn:
            np.maximum(_bandwidths(mu, s, n_dims_total), s.discrete_floor * widths, out=sig[:k])
        sig[k] = _PRIOR_SIGMA
        self.mu, self.sigma = m1, sig
        self.logz = np.log(ndtr((1.0 - m1) / sig) - ndtr(-m1 / sig))    # truncation to [0, 1]
        inv = 1.0 / (sig * sig)
        b = m1 * inv
        const = self.logw - np.sum(np.log(sig) + self.logz + 0.5 * m1 * b, axis=1) - dn * _LOG_SQRT_2PI
        # categorical kernels: 1 - beta on the observed option, beta spread uniformly (prior: uniform)
        self.n_opts = n_opts
        self.obs = obs
        self.offsets = np.concatenate([[0], np.cumsum(n_opts)[:-1]]).astype(np.intp)
        n_cols = int(n_opts.sum())
        q = np.zeros((k + 1, n_cols))
        if dc:
            a = s.prior_weight / (k + 1)
            beta = n_opts * a / (1.0 + n_opts * a)
            self.beta = beta
            const[:k] += np.sum(np.log(beta / n_opts))
            const[k] -= np.sum(np.log(n_opts))
            if k:
                delta = np.log1p((1.0 - beta) * n_opts / beta)
                q[np.repeat(np.arange(k), dc), (obs + self.offsets).ravel()] = np.tile(delta, k)
                if soften is not None and soften_by is not None:
                    # components ``soften`` (pending rows): categorical kernel (1 - t) * kernel + t * uniform
                    on = 1.0 - beta + beta / n_opts
                    off = beta / n_opts
                    on_t = (1.0 - soften_by) * on + soften_by / n_opts
                    off_t = (1.0 - soften_by) * off + soften_by / n_opts
                    qk = q[:k]
                    qk[soften] *= (np.log(on_t / off_t) / delta)[np.repeat(np.arange(dc), n_opts)][None, :]
                    const[:k][soften] += np.sum(np.log(off_t / off))
        else:
            self.beta = np.ones(0)
        self.coef = np.concatenate([-0.5 * inv, b, const[:, None], q], axis=1)

    # -- sampling -------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, n: int, joint: bool) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws: one component per draw (``joint``) or per draw and leaf (univariate)."""
        dn, dc = self.mu.shape[1], self.obs.shape[1]
        k = len(self.w) - 1
        cum = np.cumsum(self.w)
        cum[-1] = 1.0
        if joint:
            comp = np.searchsorted(cum, rng.random(n), side="right")
            comp_n = np.repeat(comp[:, None], dn, 1)
            comp_c = np.repeat(comp[:, None], dc, 1)
        else:
            comp_n = np.searchsorted(cum, rng.random((n, dn)), side="right")
            comp_c = np.searchsorted(cum, rng.random((n, dc)), side="right")
        cols = np.arange(dn)
        mu = self.mu[comp_n, cols]
        sg = self.sigma[comp_n, cols]
        lo = ndtr(-mu / sg)
        hi = ndtr((1.0 - mu) / sg)
        p = lo + rng.random((n, dn)) * (hi - lo)
        x = np.clip(mu + sg * ndtri(np.clip(p, 1e-300, 1.0 - 1e-16)), 0.0, 1.0)
        keep = (rng.random((n, dc)) >= self.beta) & (comp_c < k)
        uni = np.minimum(np.floor(rng.random((n, dc)) * self.n_opts).astype(np.intp), self.n_opts - 1)
        if dc and k:
            c = np.where(keep, self.obs[np.minimum(comp_c, k - 1), np.arange(dc)], uni)
        else:
            c = uni
        return x, c

    # -- densities --------------------------------------------------------------------------------
    def log_pdf_joint(self, x: np.ndarray, c: np.ndarray) -> np.ndarray:
        """log density of each candidate row under the product-kernel mixture, (n,)."""
        n = x.shape[0]
        feats = np.zeros((n, self.coef.shape[1]))
        dn = x.shape[1]
        feats[:, :dn] = x * x
        feats[:, dn:2 * dn] = x
        feats[:, 2 * dn] = 1.0
        if c.shape[1]:
            feats[np.repeat(np.arange(n), c.shape[1]), (2 * dn + 1 + c + self.offsets).ravel()] = 1.0
        return _logsumexp(feats @ self.coef.T)

    def log_pdf_marginal(self, x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log marginal density of each candidate value in each leaf, (n, dn) and (n, dc)."""
        n = x.shape[0]
        k = len(self.w) - 1
        out_n = np.empty((n, x.shape[1]))
        for d in range(x.shape[1]):
            z = (x[:, d:d + 1] - self.mu[None, :, d]) / self.sigma[None, :, d]
            lk = -0.5 * z * z + (self.logw - np.log(self.sigma[:, d]) - self.logz[:, d] - _LOG_SQRT_2PI)[None, :]
            out_n[:, d] = _logsumexp(lk)
        out_c = np.empty((n, c.shape[1]))
        for d in range(c.shape[1]):
            beta, m = self.beta[d], self.n_opts[d]
            off = np.full(k + 1, np.log(beta / m))
            off[k] = -np.log(m)
            on = off.copy()
            on[:k] = np.log(1.0 - beta + beta / m)
            match = np.zeros((n, k + 1), dtype=bool)
            match[:, :k] = c[:, d:d + 1] == self.obs[None, :, d]
            lk = np.where(match, on[None, :], off[None, :]) + self.logw[None, :]
            out_c[:, d] = _logsumexp(lk)
        return out_n, out_c


def _bandwidths(mu: np.ndarray, s: TpeSettings, n_dims_total: int) -> np.ndarray:
    """Per-component, per-leaf bandwidths of k >= 1 observations in [0, 1] (k, dn)."""
    k, dn = mu.shape
    if s.bandwidth == "scott":
        if k > 1:
            sd = np.std(mu, axis=0, ddof=1)
            q75, q25 = np.percentile(mu, [75, 25], axis=0)
            spread = np.minimum(sd, (q75 - q25) / 1.34)
            spread = np.where(spread > 0, spread, sd)
        else:
            spread = np.full(dn, 0.5)
        sig = np.broadcast_to(1.059 * spread * k ** (-1.0 / (n_dims_total + 4)), (k, dn)).copy()
    else:  # "gap": the larger distance to a neighbour (the box ends count as neighbours)
        mt = np.ascontiguousarray(mu.T)                       # (dn, k): sort along rows
        order = np.argsort(mt, axis=1)
        srt = np.take_along_axis(mt, order, axis=1)
        gaps = np.empty((dn, k + 1))
        gaps[:, 0] = srt[:, 0]
        gaps[:, 1:k] = srt[:, 1:] - srt[:, :-1]
        gaps[:, k] = 1.0 - srt[:, -1]
        sg = np.maximum(gaps[:, :-1], gaps[:, 1:])
        if k >= 2:  # the outermost points use their inner gap, not the distance to the box end
            sg[:, 0] = gaps[:, 1]
            sg[:, -1] = gaps[:, -2]
        sig_t = np.empty_like(sg)
        sig_t[np.arange(dn)[:, None], order] = sg
        sig = sig_t.T.copy()
    sig *= s.bandwidth_factor
    lo = max(s.min_bandwidth, 1.0 / (k + 2) ** s.magic_clip_exponent)
    return np.clip(sig, lo, 1.0)


def _logsumexp(a: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp; overwrites ``a``.  Every row has a finite entry (the prior)."""
    m = np.max(a, axis=1)
    a -= m[:, None]
    np.exp(a, out=a)
    return m + np.log(np.sum(a, axis=1))


# ------------------------------------------------------------------------------------------------
# proposals

def prior_rows(cs: CompiledSpace, rng: np.random.Generator, n: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points drawn from the prior (what random search does), as (X, A)."""
    u = rng.random((n, cs.n_leaves))
    return _rows_from_unit(cs, u)


def unseen_point(cs: CompiledSpace, seen: set, rng: np.random.Generator, tries: int,
                 enumerate_limit: int) -> dict:
    """A point of the space whose key (``cs.key``) is not in ``seen``: drawn among all that are left when the grid
    has at most ``enumerate_limit`` points, else the first of ``tries`` prior draws (then of the grid) found.
    NoMoreTrials when every point is in ``seen``."""
    def unseen(params: dict) -> bool:
        return cs.key(*cs.encode(params)[:2]) not in seen

    if cs.grid_size is not None and cs.grid_size <= enumerate_limit:
        left = [p for p in cs.space.iter_grid() if unseen(p)]
        if left:
            return left[int(rng.integers(len(left)))]
    else:
        for _ in range(tries):
            params = cs.decode(prior_rows(cs, rng, 1)[0][0])
            if unseen(params):
                return params
        for params in cs.space.iter_grid():
            if unseen(params):
                return params
    raise NoMoreTrials("every point of the (discrete) search space has been suggested")


def loss_of(value: float, maximize: bool) -> float:
    """A reported value as a loss (lower is better); NaN is the worst."""
    v = float(value)
    if math.isnan(v):
        return math.inf
    return -v if maximize else v


def _rows_from_unit(cs: CompiledSpace, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map points of the unit cube (one coordinate per leaf) to rows: snap grids, pick options."""
    x = u.copy()
    for leaf in cs.leaves:
        col = u[:, leaf.index]
        if leaf.categorical:
            x[:, leaf.index] = np.minimum(np.floor(col * leaf.n_options), leaf.n_options - 1)
        elif leaf.discrete:
            x[:, leaf.index] = leaf.snap(col)[0]
    return x, _active(cs, x)


def rows_from_unit(cs: CompiledSpace, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points of the unit cube (one coordinate per leaf) as rows (X, A): grids snapped, options picked."""
    return _rows_from_unit(cs, u)


def active_mask(cs: CompiledSpace, x: np.ndarray) -> np.ndarray:
    """Which leaves of each row are active: the top level's, and those of the nested options the row chose."""
    return _active(cs, x)


def _active(cs: CompiledSpace, x: np.ndarray) -> np.ndarray:
    a = np.zeros(x.shape, dtype=bool)

    def walk(group: Group, rows: np.ndarray) -> None:
        if not rows.any():
            return
        for li in group.leaves:
            a[rows, li] = True
        for (li, opt), child in group.children.items():
            walk(child, rows & (x[:, li] == opt))

    walk(cs.root, np.ones(x.shape[0], dtype=bool))
    return a


class _Lazy:
    """A generator whose items are kept, so several consumers can iterate it from the start."""

    def __init__(self, gen: Iterator) -> None:
        self._gen, self._items = gen, []

    def __iter__(self) -> Iterator:
        i = 0
        while True:
            if i < len(self._items):
                yield self._items[i]
            else:
                try:
                    item = next(self._gen)
                except StopIteration:
                    return
                self._items.append(item)
                yield item
            i += 1


class _Proposer:
    def __init__(self, cs: CompiledSpace, h: History, rng: np.random.Generator, s: TpeSettings) -> None:
        self.cs, self.rng, self.s = cs, rng, s
        n_pending = len(h.PX) if s.constant_liar else 0
        good = split_good(h.loss, s)
        self.wl, self.wg = _row_weights(h.loss, good, n_pending, s)
        self.loss, self.n_pending = h.loss, n_pending
        self.n_finished = len(h.loss)
        if n_pending:
            self.X = np.vstack([h.X, h.PX])
            self.A = np.vstack([h.A, h.PA])
            self.W = np.vstack([h.W, h.PW])
        else:
            self.X, self.A, self.W = h.X, h.A, h.W
        self.PX, self.PA = h.PX, h.PA
        self._children: dict[tuple[int, int], _Lazy] = {}

    def group(self, group: Group) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Partial rows (values, active) for ``group`` and its sub-groups, best first."""
        L = self.cs.n_leaves
        if not group.leaves:
            yield np.zeros(L), np.zeros(L, dtype=bool)
            return
        act = self.A[:, group.leaves[0]]
        wl, wg = self.wl, self.wg
        if group.condition is not None and self.s.local_split:
            # conditioned on this branch being chosen, what matters is how its own trials compare
            n = self.n_finished
            rows = np.flatnonzero(act[:n])
            sub = self.loss[rows]
            lw, gw = _row_weights(sub, split_good(sub, self.s), 0, self.s)
            wl, wg = np.zeros(len(act)), self.wg.copy()
            wl[rows], wg[rows] = lw, gw
            wg[:n][~act[:n]] = 0.0
        li_idx = np.flatnonzero(act & (wl > 0))
        gi_idx = np.flatnonzero(act & (wg > 0))
        lest = self._estimator(group, li_idx, wl)
        gest = self._estimator(group, gi_idx, wg)
        n = self.s.n_candidates
        if len(self.PX) and self.s.pending_candidates:
            n = self.s.pending_candidates
        joint = self.s.multivariate
        cx, cc = lest.sample(self.rng, n, joint)
        for j, li in enumerate(group.num):
            leaf = self.cs.leaves[li]
            if leaf.discrete:
                cx[:, j] = leaf.snap(cx[:, j])[0]
        if joint:
            score = lest.log_pdf_joint(cx, cc) - gest.log_pdf_joint(cx, cc)
            if self.s.pending_penalty > 0 and len(self.PX) and len(group.num):
                score += self._pending_penalty(group, lest, cx, cc)
            order = np.argsort(-score, kind="stable")
            rows = [(cx[i], cc[i]) for i in order]
        else:
            ln, lc = lest.log_pdf_marginal(cx, cc)
            gn, gc = gest.log_pdf_marginal(cx, cc)
            sn, sc = ln - gn, lc - gc
            best_n = cx[np.argmax(sn, axis=0), np.arange(cx.shape[1])] if cx.shape[1] else cx[0]
            best_c = cc[np.argmax(sc, axis=0), np.arange(cc.shape[1])] if cc.shape[1] else cc[0]
            order = np.argsort(-(sn.sum(axis=1) + sc.sum(axis=1)), kind="stable")
            rows = [(best_n, best_c)] + [(cx[i], cc[i]) for i in order]
        for vx, vc in rows:  # (a list of a few dozen small views; most suggestions use the first)
            x = np.zeros(L)
            a = np.zeros(L, dtype=bool)
            x[group.num] = vx
            x[group.cat] = vc
            a[group.leaves] = True
            subs = [self._child(key) for key in ((int(li), int(x[li])) for li in group.cat)
                    if key in group.children]
            if not subs:
                yield x, a
                continue
            yield from _combine(x, a, subs)

    def _pending_penalty(self, group: Group, lest: _Estimator, cx: np.ndarray, cc: np.ndarray) -> np.ndarray:
        """Local penalisation: ``sum_p log(1 - exp(-d_p^2 / 2))`` per candidate, ``d_p`` its distance to
        pending point ``p`` (same categorical values) in units of ``pending_penalty`` times l's own
        median kernel width per leaf: a candidate on a pending point scores -inf, one a few widths
        away is barely touched, and the radius shrinks as l concentrates on an optimum."""
        pend = self.PA[:, group.leaves[0]]
        if not pend.any():
            return np.zeros(len(cx))
        P = self.PX[pend]
        k = len(lest.w) - 1
        sig = np.median(lest.sigma[:k], axis=0) if k else lest.sigma[k]
        h = self.s.pending_penalty * sig
        z = (cx[:, None, :] - P[None, :, group.num]) / h
        d2 = np.einsum("npd,npd->np", z, z)
        if len(group.cat):
            same = np.all(cc[:, None, :] == P[None, :, group.cat].astype(np.intp), axis=2)
            d2 = np.where(same, d2, np.inf)
        return np.log(np.maximum(-np.expm1(-0.5 * d2), 1e-300)).sum(axis=1)

    def _child(self, key: tuple[int, int]) -> _Lazy:
        lazy = self._children.get(key)
        if lazy is None:
            child = None
            for g in self.cs.groups:
                if g.condition == key:
                    child = g
                    break
            assert child is not None
            lazy = self._children[key] = _Lazy(self.group(child))
        return lazy

    def _estimator(self, group: Group, idx: np.ndarray, weights: np.ndarray) -> _Estimator:
        rows = self.X[idx]
        mu = rows[:, group.num]
        widths = self.W[idx][:, group.num]
        obs = rows[:, group.cat].astype(np.intp)
        n_opts = group.n_opts
        n_dims = len(group.leaves) if self.s.multivariate else 1
        soften = soften_by = None
        if self.n_pending and self.s.liar_categorical > 0 and len(group.cat):
            pend = idx >= self.n_finished
            # a pending point's plain choices say little about where to look next (with one kernel
            # per option, eight pending copies of the best option would push the next suggestions to
            # the others); the choices that select a nested sub-space keep the full liar
            selectors = {li for li, _ in group.children}
            by = np.array([0.0 if li in selectors else self.s.liar_categorical for li in group.cat])
            if pend.any() and by.any():
                soften, soften_by = pend, by
        return _Estimator(mu, widths, obs, weights[idx], n_opts, self.s, n_dims, soften, soften_by)


def _combine(x: np.ndarray, a: np.ndarray, subs: list[_Lazy], limit: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Merge a group's row with its sub-groups' proposals: best-first, then a few alternatives
    (lazily: a sub-group's later proposals are only computed if an earlier one was refused)."""
    count = 0
    for combo in _lazy_product(subs):
        xx, aa = x.copy(), a.copy()
        for sx, sa in combo:
            xx[sa] = sx[sa]
            aa |= sa
        yield xx, aa
        count += 1
        if count >= limit:
            return


def _lazy_product(subs: list[_Lazy]) -> Iterator[tuple]:
    """itertools.product without reading its inputs up front (the last input varies fastest)."""
    if not subs:
        yield ()
        return
    for item in subs[0]:
        for tail in _lazy_product(subs[1:]):
            yield (item,) + tail


def proposals(cs: CompiledSpace, h: History, rng: np.random.Generator, s: TpeSettings) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Points to suggest, best first, as (values, active) rows; prior samples once the model's run out.

    While fewer than ``n_startup_trials`` trials have finished, every point comes from the prior.
    (With ``startup_finished``, pending suggestions count toward the start-up once that many have
    finished.)
    """
    n = len(h.loss)
    if n >= max(s.n_startup_trials, 1) or (0 < s.startup_finished <= n and n + len(h.PX) >= s.n_startup_trials):
        yield from _Proposer(cs, h, rng, s).group(cs.root)
    while True:
        x, a = prior_rows(cs, rng, 1)
        yield x[0], a[0]
