"""Benchmark problems for the tuner benchmark: every objective is a *loss* to minimise.

``PROBLEMS``, the main suite (TpeTuner's defaults were chosen on it):

* standard synthetic functions of 2 to 10 dimensions with known minima (Branin, Hartmann-6,
  Rosenbrock-4, Ackley-5, Levy-10);
* ``mixed``: a synthetic "training run" over a mixed categorical / integer / log / quantised space
  with interactions, built so that its minimum (0) is attained on the grid;
* ``nested``: a conditional space (a choice of three sub-spaces) with a decoy branch;
* scikit-learn tuning tasks on data sets that ship with scikit-learn, 3-fold cross-validation on
  fixed folds (deterministic), each evaluation a few tens of milliseconds: kernel ridge
  regression on diabetes, a decision tree on 600 of the digits, and a nested model selection
  (SVM / k-NN / LDA / tree, each with its own sub-space) on the same digits.  Their minima are
  unknown: the benchmark uses the best value any optimizer found.  (Tasks whose random search
  already reaches the best accuracy plateau in most runs, such as an SVM on breast_cancer, are
  left out: their normalised regret is 0/0.)

``HOLDOUT_PROBLEMS`` is a second suite of ten problems that TpeTuner's defaults were *not* chosen
on (``benchmarks/tuners.py --suite holdout``), to check that they generalise:

* multimodal / deceptive synthetic functions with known minima: Styblinski-Tang 8-D, Rastrigin 4-D,
  six-hump camel 2-D, Michalewicz 5-D (m = 10: narrow valleys) and Schwefel 3-D (the best basin far
  from the second best);
* ``noisy_hartmann3``: Hartmann-3 plus half-normal noise (sigma 0.25) that is seeded by a hash of the
  parameters, so a run is reproducible and the known minimum stays a lower bound;
* ``sparse20``: a shifted sphere on 3 of 20 dimensions, the other 17 irrelevant;
* ``quantised``: a synthetic boosting-like loss over 7 integer / quantised dimensions (randint,
  quniform, qloguniform) with a ridge (only ``n_estimators * learning_rate`` matters much) and
  interactions; its minimum (0) is on the grid;
* scikit-learn tasks on data sets that ship with scikit-learn, scored by a *log-loss* so that no
  accuracy plateau is reached (minima unknown): gradient boosting on breast_cancer (number of
  trees, log-scale learning rate, depth, subsampling, features, leaf size), validated on one fixed
  2/3 : 1/3 split because a boosting stage costs about a millisecond; and an SGD logistic
  regression on wine (log-scale alpha and eta0, learning-rate schedule, penalty, iterations,
  averaging), 3-fold cross-validation on fixed folds.

``CURVE_PROBLEMS`` are *synthetic learning curves* for multi-fidelity tuners (``benchmarks/tuners.py --curves``):
a loss per configuration and number of epochs, made up (no model is trained), decreasing with the epochs towards
the configuration's final loss at ``R`` epochs, at a speed that depends on the configuration, so that curves cross
(a fast learner is not always the best in the end):

* ``lc_mixed``: the ``mixed`` training loss above as the final loss; high learning rates and small batches learn
  fast, deep nets slowly;
* ``lc_hartmann6``: Hartmann-6 as the final loss; the speed depends on ``x0`` and ``x5``, both of which also move
  the final loss;
* ``lc_sparse8``: 8-D, 3 dimensions matter for the final loss and 2 others for the speed.

Each reported loss carries half-normal noise (sigma 0.01 to 0.03) seeded by the configuration and the epoch
count, so runs are reproducible; the tuners see the noisy loss, the benchmark scores the noise-free one
(``fn(params, epochs, noisy=False)``).

Parameters arrive in hpo's format (nested choice: ``{"_name": ..., **sub_params}``).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np

__all__ = ["Problem", "PROBLEMS", "HOLDOUT_PROBLEMS", "get_problem", "CurveProblem", "CURVE_PROBLEMS",
           "get_curve_problem"]


@dataclass(frozen=True)
class Problem:
    name: str
    space: dict[str, Any]
    fn: Callable[[dict[str, Any]], float]
    optimum: float | None       # known minimum, or None (estimated from all runs)
    kind: str                   # "synthetic", "mixed" or "sklearn"
    description: str


def _uniform_box(names: list[str], low: float, high: float) -> dict[str, Any]:
    return {n: {"_type": "uniform", "_value": [low, high]} for n in names}


def _vec(p: dict[str, Any], d: int) -> np.ndarray:
    return np.array([p[f"x{i}"] for i in range(d)], dtype=float)


# -- synthetic functions ------------------------------------------------------------------------------

def branin(p: dict[str, Any]) -> float:
    x1, x2 = p["x0"], p["x1"]
    a, b, c, r, s, t = 1.0, 5.1 / (4 * math.pi ** 2), 5 / math.pi, 6.0, 10.0, 1 / (8 * math.pi)
    return a * (x2 - b * x1 ** 2 + c * x1 - r) ** 2 + s * (1 - t) * math.cos(x1) + s


_H6_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
                  [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]])
_H6_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                         [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])
_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def hartmann6(p: dict[str, Any]) -> float:
    x = _vec(p, 6)
    return float(-np.sum(_H6_ALPHA * np.exp(-np.sum(_H6_A * (x - _H6_P) ** 2, axis=1))))


def rosenbrock4(p: dict[str, Any]) -> float:
    x = _vec(p, 4)
    return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))


def ackley5(p: dict[str, Any]) -> float:
    x = _vec(p, 5)
    d = len(x)
    return float(-20 * math.exp(-0.2 * math.sqrt(np.sum(x ** 2) / d))
                 - math.exp(np.sum(np.cos(2 * math.pi * x)) / d) + 20 + math.e)


def levy10(p: dict[str, Any]) -> float:
    x = _vec(p, 10)
    w = 1 + (x - 1) / 4
    return float(math.sin(math.pi * w[0]) ** 2
                 + np.sum((w[:-1] - 1) ** 2 * (1 + 10 * np.sin(math.pi * w[:-1] + 1) ** 2))
                 + (w[-1] - 1) ** 2 * (1 + math.sin(2 * math.pi * w[-1]) ** 2))


# -- mixed categorical / integer / log space -------------------------------------------------------

MIXED_SPACE = {
    "optimizer": {"_type": "choice", "_value": ["sgd", "adam", "rmsprop", "adagrad"]},
    "lr": {"_type": "loguniform", "_value": [1e-5, 1.0]},
    "batch_size": {"_type": "qloguniform", "_value": [16, 1024, 16]},
    "layers": {"_type": "randint", "_value": [1, 9]},
    "units": {"_type": "qloguniform", "_value": [8, 512, 8]},
    "dropout": {"_type": "quniform", "_value": [0.0, 0.7, 0.05]},
    "activation": {"_type": "choice", "_value": ["relu", "tanh", "elu", "sigmoid"]},
    "weight_decay": {"_type": "loguniform", "_value": [1e-7, 1e-1]},
}
_OPT = {"sgd": (-1.5, 0.35), "adam": (-3.0, 0.0), "rmsprop": (-3.5, 0.15), "adagrad": (-2.0, 0.5)}
_ACT = {"relu": 0.05, "tanh": 0.25, "elu": 0.0, "sigmoid": 0.6}


def mixed(p: dict[str, Any]) -> float:
    """A synthetic training loss; minimum 0 at adam, lr 1e-3, batch 64, 4 layers of 128 elu units,
    dropout 0.2 (more units want more dropout), weight decay 1e-4 (less for deeper nets)."""
    lr_opt, base = _OPT[p["optimizer"]]
    lb = math.log2(p["batch_size"]) - 6.0
    lr_term = (math.log10(p["lr"]) - (lr_opt + 0.25 * lb)) ** 2      # larger batches want larger lr
    depth = p["layers"] - 4
    width = math.log2(p["units"]) - 7.0
    drop_opt = 0.2 + 0.1 * width
    wd_term = (math.log10(p["weight_decay"]) - (-4.0 - 0.25 * depth)) ** 2
    return (base + 0.5 * lr_term + 0.08 * lb ** 2 + 0.05 * depth ** 2 + 0.1 * width ** 2
            + 4.0 * (p["dropout"] - drop_opt) ** 2 + _ACT[p["activation"]] + 0.05 * wd_term
            + 0.1 * abs(depth) * abs(width))


# -- conditional (nested) space ----------------------------------------------------------------------

NESTED_SPACE = {
    "shared": {"_type": "uniform", "_value": [0.0, 1.0]},
    "branch": {"_type": "choice", "_value": [
        {"_name": "smooth", "x": {"_type": "uniform", "_value": [-5.0, 5.0]},
         "y": {"_type": "uniform", "_value": [-5.0, 5.0]}},
        {"_name": "narrow", "lr": {"_type": "loguniform", "_value": [1e-5, 1.0]},
         "k": {"_type": "randint", "_value": [1, 33]},
         "frac": {"_type": "quniform", "_value": [0.0, 1.0, 0.05]}},
        {"_name": "flat", "t": {"_type": "choice", "_value": ["p", "q", "r"]},
         "s": {"_type": "uniform", "_value": [0.0, 1.0]}},
    ]},
}


def nested(p: dict[str, Any]) -> float:
    """A conditional space: a wide decoy basin ("smooth", minimum 0.4), the global minimum 0 in a
    narrower branch ("narrow"), and a flat branch ("flat", >= 1); ``shared`` matters everywhere."""
    b = p["branch"]
    shared = 2.0 * (p["shared"] - 0.3) ** 2
    if b["_name"] == "smooth":
        return 0.4 + 0.02 * ((b["x"] - 1.0) ** 2 + (b["y"] + 2.0) ** 2) + shared
    if b["_name"] == "narrow":
        return (0.25 * (math.log10(b["lr"]) + 2.5) ** 2 + 0.01 * (b["k"] - 13) ** 2
                + 2.0 * (b["frac"] - 0.7) ** 2 + shared * (1.0 + (b["k"] - 13) ** 2 / 20.0))
    return 1.0 + {"p": 0.0, "q": 0.2, "r": 0.4}[b["t"]] + 0.5 * (b["s"] - 0.5) ** 2 + shared


# -- scikit-learn tasks ---------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _folds(name: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    from sklearn import datasets
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    if name == "breast_cancer":
        d = datasets.load_breast_cancer()
        X, y, strat = StandardScaler().fit_transform(d.data), d.target, True
    elif name == "digits600":
        d = datasets.load_digits()
        idx = np.random.RandomState(0).permutation(len(d.target))[:600]
        X, y, strat = d.data[idx] / 16.0, d.target[idx], True
    elif name == "diabetes":
        d = datasets.load_diabetes()
        X, y, strat = StandardScaler().fit_transform(d.data), d.target, False
    elif name == "wine":
        d = datasets.load_wine()
        X, y, strat = StandardScaler().fit_transform(d.data), d.target, True
    else:  # pragma: no cover
        raise KeyError(name)
    cv = (StratifiedKFold if strat else KFold)(3, shuffle=True, random_state=0)
    return [(X[a], y[a], X[b], y[b]) for a, b in cv.split(X, y)]


def _cross_validate(model: Any, data: str, score: Callable[[Any, np.ndarray, np.ndarray], float],
                    n_folds: int = 3) -> float:
    """Mean of ``score(fitted model, X, y)`` over the first ``n_folds`` of the 3 fixed folds."""
    import warnings
    scores = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for Xa, ya, Xb, yb in _folds(data)[:n_folds]:
            model.fit(Xa, ya)
            scores.append(score(model, Xb, yb))
    return float(np.mean(scores))


def _error_rate(model: Any, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.predict(X) != y))


def _log_loss(model: Any, X: np.ndarray, y: np.ndarray) -> float:
    """Log-loss, probabilities clipped at 1e-15 (a diverged model's NaN probabilities count as clipped)."""
    proba = model.predict_proba(X)[np.arange(len(y)), np.searchsorted(model.classes_, y)]
    proba = np.nan_to_num(proba, nan=0.0)
    return float(-np.mean(np.log(np.clip(proba, 1e-15, 1.0))))


def krr_diabetes(p: dict[str, Any]) -> float:
    """3-fold CV RMSE of kernel ridge regression (target in original units)."""
    from sklearn.kernel_ridge import KernelRidge
    errs = []
    for Xa, ya, Xb, yb in _folds("diabetes"):
        m = KernelRidge(alpha=p["alpha"], gamma=p["gamma"], kernel=p["kernel"]).fit(Xa, ya)
        errs.append(float(np.mean((m.predict(Xb) - yb) ** 2)))
    return math.sqrt(float(np.mean(errs)))


def tree_digits(p: dict[str, Any]) -> float:
    from sklearn.tree import DecisionTreeClassifier
    return _cross_validate(DecisionTreeClassifier(
        max_depth=p["max_depth"], min_samples_split=p["min_samples_split"],
        min_samples_leaf=p["min_samples_leaf"], max_features=p["max_features"],
        criterion=p["criterion"], random_state=0), "digits600", _error_rate)


def cash_digits(p: dict[str, Any]) -> float:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    m = p["model"]
    if m["_name"] == "svm":
        model: Any = SVC(C=m["C"], gamma=m["gamma"])
    elif m["_name"] == "knn":
        model = KNeighborsClassifier(n_neighbors=m["n_neighbors"], weights=m["weights"], p=m["p"])
    elif m["_name"] == "lda":
        model = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=m["shrinkage"])
    else:
        model = DecisionTreeClassifier(max_depth=m["max_depth"], min_samples_leaf=m["min_samples_leaf"],
                                       criterion=m["criterion"], random_state=0)
    return _cross_validate(model, "digits600", _error_rate)


PROBLEMS: list[Problem] = [
    Problem("branin", _uniform_box(["x0"], -5, 10) | _uniform_box(["x1"], 0, 15), branin, 0.397887357729739,
            "synthetic", "Branin, 2-D"),
    Problem("hartmann6", _uniform_box([f"x{i}" for i in range(6)], 0, 1), hartmann6, -3.322368011391339,
            "synthetic", "Hartmann, 6-D"),
    Problem("rosenbrock4", _uniform_box([f"x{i}" for i in range(4)], -5, 10), rosenbrock4, 0.0,
            "synthetic", "Rosenbrock, 4-D on [-5, 10]"),
    Problem("ackley5", _uniform_box([f"x{i}" for i in range(5)], -32.768, 32.768), ackley5, 0.0,
            "synthetic", "Ackley, 5-D"),
    Problem("levy10", _uniform_box([f"x{i}" for i in range(10)], -10, 10), levy10, 0.0,
            "synthetic", "Levy, 10-D"),
    Problem("mixed", MIXED_SPACE, mixed, 0.0, "mixed",
            "8-D synthetic training loss: 2 choices, randint, 2 qloguniform, quniform, 2 loguniform"),
    Problem("nested", NESTED_SPACE, nested, 0.0, "mixed",
            "conditional space: 3 branches (uniform / loguniform+randint+quniform / choice+uniform) + shared"),
    Problem("krr_diabetes", {"alpha": {"_type": "loguniform", "_value": [1e-5, 1e1]},
                             "gamma": {"_type": "loguniform", "_value": [1e-5, 1.0]},
                             "kernel": {"_type": "choice", "_value": ["rbf", "laplacian"]}},
            krr_diabetes, None, "sklearn", "kernel ridge on diabetes: CV RMSE"),
    Problem("tree_digits", {"max_depth": {"_type": "randint", "_value": [1, 25]},
                            "min_samples_split": {"_type": "randint", "_value": [2, 40]},
                            "min_samples_leaf": {"_type": "randint", "_value": [1, 20]},
                            "max_features": {"_type": "uniform", "_value": [0.05, 1.0]},
                            "criterion": {"_type": "choice", "_value": ["gini", "entropy"]}},
            tree_digits, None, "sklearn", "DecisionTree on 600 digits: CV error"),
    Problem("cash_digits", {"model": {"_type": "choice", "_value": [
        {"_name": "svm", "C": {"_type": "loguniform", "_value": [1e-2, 1e4]},
         "gamma": {"_type": "loguniform", "_value": [1e-4, 1.0]}},
        {"_name": "knn", "n_neighbors": {"_type": "randint", "_value": [1, 50]},
         "weights": {"_type": "choice", "_value": ["uniform", "distance"]},
         "p": {"_type": "choice", "_value": [1, 2]}},
        {"_name": "lda", "shrinkage": {"_type": "uniform", "_value": [0.0, 1.0]}},
        {"_name": "tree", "max_depth": {"_type": "randint", "_value": [1, 20]},
         "min_samples_leaf": {"_type": "randint", "_value": [1, 20]},
         "criterion": {"_type": "choice", "_value": ["gini", "entropy"]}},
    ]}}, cash_digits, None, "sklearn", "nested model choice (SVM / k-NN / LDA / tree) on 600 digits: CV error"),
]


# -- holdout suite: problems TpeTuner's defaults were not chosen on ---------------------------------------

def styblinski_tang8(p: dict[str, Any]) -> float:
    x = _vec(p, 8)
    return float(0.5 * np.sum(x ** 4 - 16 * x ** 2 + 5 * x))


def rastrigin4(p: dict[str, Any]) -> float:
    x = _vec(p, 4)
    return float(10 * len(x) + np.sum(x ** 2 - 10 * np.cos(2 * math.pi * x)))


def six_hump_camel(p: dict[str, Any]) -> float:
    x, y = p["x0"], p["x1"]
    return (4 - 2.1 * x ** 2 + x ** 4 / 3) * x ** 2 + x * y + (-4 + 4 * y ** 2) * y ** 2


def michalewicz5(p: dict[str, Any]) -> float:
    x = _vec(p, 5)
    i = np.arange(1, len(x) + 1)
    return float(-np.sum(np.sin(x) * np.sin(i * x ** 2 / math.pi) ** 20))


def schwefel3(p: dict[str, Any]) -> float:
    x = _vec(p, 3)
    return float(418.9828872724338 * len(x) - np.sum(x * np.sin(np.sqrt(np.abs(x)))))


_H3_A = np.array([[3.0, 10, 30], [0.1, 10, 35], [3.0, 10, 30], [0.1, 10, 35]])
_H3_P = 1e-4 * np.array([[3689, 1170, 2673], [4699, 4387, 7470], [1091, 8732, 5547], [381, 5743, 8828]])


def _param_noise(p: dict[str, Any]) -> float:
    """A standard normal draw seeded by the parameters: the same point always gets the same noise."""
    key = repr(sorted((k, float(v)) for k, v in p.items())).encode()  # float(): numpy scalars too
    seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    return float(np.random.default_rng(seed).standard_normal())


def noisy_hartmann3(p: dict[str, Any]) -> float:
    """Hartmann-3 plus half-normal noise (sigma 0.25, mean 0.2): the minimum stays -3.8628 and is a
    lower bound; only a point near the minimum that also draws little noise gets there."""
    x = _vec(p, 3)
    f = float(-np.sum(_H6_ALPHA * np.exp(-np.sum(_H3_A * (x - _H3_P) ** 2, axis=1))))
    return f + 0.25 * abs(_param_noise(p))


_SPARSE_DIMS = {3: 1.2, 11: -2.3, 17: 0.4}   # the 3 relevant dimensions of 20 and their optima


def sparse20(p: dict[str, Any]) -> float:
    return float(sum((p[f"x{i}"] - c) ** 2 for i, c in _SPARSE_DIMS.items()))


QUANTISED_SPACE = {
    "n_estimators": {"_type": "qloguniform", "_value": [10, 2000, 10]},
    "learning_rate": {"_type": "qloguniform", "_value": [0.001, 1.0, 0.001]},
    "max_depth": {"_type": "randint", "_value": [1, 16]},
    "min_child": {"_type": "randint", "_value": [1, 100]},
    "subsample": {"_type": "quniform", "_value": [0.2, 1.0, 0.1]},
    "colsample": {"_type": "quniform", "_value": [0.1, 1.0, 0.1]},
    "bins": {"_type": "qloguniform", "_value": [8, 512, 8]},
}


def quantised(p: dict[str, Any]) -> float:
    """A synthetic boosting loss on a grid: minimum 0 at 600 trees, learning rate 0.05, depth 6,
    min_child 20, subsample 0.8, colsample 0.5, 64 bins.  Mostly the product trees x rate matters (a
    ridge: 30), the rate itself only weakly; deeper trees want a smaller subsample and a larger
    min_child; depth costs linearly (a kink), fewer than 32 bins a step."""
    n, lr, depth = p["n_estimators"], p["learning_rate"], p["max_depth"]
    ridge = (math.log10(n * lr / 30.0)) ** 2
    rate = 0.1 * math.log10(lr / 0.05) ** 2
    mc = 0.05 * math.log2(p["min_child"] / (20.0 * 2 ** ((depth - 6) / 3))) ** 2
    sub = 3.0 * (p["subsample"] - (0.8 - 0.05 * (depth - 6))) ** 2
    col = 1.5 * (p["colsample"] - 0.5) ** 2
    bins = 0.05 * math.log2(p["bins"] / 64) ** 2 + (0.2 if p["bins"] < 32 else 0.0)
    return max(ridge + rate + 0.1 * abs(depth - 6) + mc + sub + col + bins, 0.0)


def gb_breast_cancer(p: dict[str, Any]) -> float:
    """Validation log-loss of gradient boosting on one fixed split (2/3 : 1/3; a boosting stage costs
    about a millisecond, so 3 folds would take too long)."""
    from sklearn.ensemble import GradientBoostingClassifier
    return _cross_validate(GradientBoostingClassifier(
        n_estimators=p["n_estimators"], learning_rate=p["learning_rate"], max_depth=p["max_depth"],
        subsample=p["subsample"], max_features=p["max_features"], min_samples_leaf=p["min_samples_leaf"],
        random_state=0), "breast_cancer", _log_loss, n_folds=1)


def sgd_wine(p: dict[str, Any]) -> float:
    from sklearn.linear_model import SGDClassifier
    return _cross_validate(SGDClassifier(
        loss="log_loss", penalty=p["penalty"], alpha=p["alpha"], l1_ratio=p["l1_ratio"],
        learning_rate=p["learning_rate"], eta0=p["eta0"], max_iter=p["max_iter"], tol=None,
        average=p["average"], random_state=0), "wine", _log_loss)


HOLDOUT_PROBLEMS: list[Problem] = [
    Problem("styblinski_tang8", _uniform_box([f"x{i}" for i in range(8)], -5, 5), styblinski_tang8,
            -313.3293256301713, "synthetic", "Styblinski-Tang, 8-D (2^8 local minima)"),
    Problem("rastrigin4", _uniform_box([f"x{i}" for i in range(4)], -5.12, 5.12), rastrigin4, 0.0,
            "synthetic", "Rastrigin, 4-D (regular grid of local minima)"),
    Problem("six_hump_camel", _uniform_box(["x0"], -3, 3) | _uniform_box(["x1"], -2, 2), six_hump_camel,
            -1.0316284534898772, "synthetic", "six-hump camel, 2-D (two global minima, four local)"),
    Problem("michalewicz5", _uniform_box([f"x{i}" for i in range(5)], 0, math.pi), michalewicz5,
            -4.687658179088133, "synthetic", "Michalewicz, 5-D, m = 10 (flat with narrow valleys)"),
    Problem("schwefel3", _uniform_box([f"x{i}" for i in range(3)], -500, 500), schwefel3, 0.0,
            "synthetic", "Schwefel, 3-D (deceptive: the best basin near the edge, far from the second best)"),
    Problem("noisy_hartmann3", _uniform_box([f"x{i}" for i in range(3)], 0, 1), noisy_hartmann3,
            -3.862779787332663, "synthetic",
            "Hartmann, 3-D, plus half-normal noise (sigma 0.25) seeded by the parameters"),
    Problem("sparse20", _uniform_box([f"x{i}" for i in range(20)], -5, 5), sparse20, 0.0,
            "synthetic", "20-D, shifted sphere on 3 dimensions, 17 irrelevant"),
    Problem("quantised", QUANTISED_SPACE, quantised, 0.0, "mixed",
            "7-D synthetic boosting loss: 3 qloguniform, 2 randint, 2 quniform; ridge n x lr"),
    Problem("gb_breast_cancer", {"n_estimators": {"_type": "randint", "_value": [5, 31]},
                                 "learning_rate": {"_type": "loguniform", "_value": [1e-3, 1.0]},
                                 "max_depth": {"_type": "randint", "_value": [1, 5]},
                                 "subsample": {"_type": "uniform", "_value": [0.3, 1.0]},
                                 "max_features": {"_type": "uniform", "_value": [0.05, 1.0]},
                                 "min_samples_leaf": {"_type": "randint", "_value": [1, 41]}},
            gb_breast_cancer, None, "sklearn", "GradientBoosting on breast_cancer: validation log-loss (one split)"),
    Problem("sgd_wine", {"alpha": {"_type": "loguniform", "_value": [1e-7, 1.0]},
                         "eta0": {"_type": "loguniform", "_value": [1e-5, 1.0]},
                         "learning_rate": {"_type": "choice", "_value": ["optimal", "constant", "invscaling",
                                                                         "adaptive"]},
                         "penalty": {"_type": "choice", "_value": ["l2", "l1", "elasticnet"]},
                         "l1_ratio": {"_type": "uniform", "_value": [0.0, 1.0]},
                         "max_iter": {"_type": "randint", "_value": [1, 51]},
                         "average": {"_type": "choice", "_value": [False, True]}},
            sgd_wine, None, "sklearn", "SGD logistic regression on wine: CV log-loss"),
]


def get_problem(name: str) -> Problem:
    for p in PROBLEMS + HOLDOUT_PROBLEMS:
        if p.name == name:
            return p
    raise KeyError(f"unknown problem {name!r} (known: {', '.join(p.name for p in PROBLEMS + HOLDOUT_PROBLEMS)})")


# -- synthetic learning curves (multi-fidelity) -----------------------------------------------------------

@dataclass(frozen=True)
class CurveProblem:
    name: str
    space: dict[str, Any]
    fn: Callable[..., float]    # (configuration, epochs, noisy=True) -> loss; noise-free minimum 0 at R epochs
    R: int                                           # the most epochs a configuration is trained
    description: str


def _curve(final: float, tau: float, amp: float, epochs: float, R: float, noise_sigma: float, key: dict[str, Any],
           noisy: bool) -> float:
    """``final + amp * (exp(-e / tau) - exp(-R / tau))`` (``final`` at ``R`` epochs), plus seeded half-normal noise."""
    e = min(max(float(epochs), 0.0), float(R))
    loss = final + amp * (math.exp(-e / tau) - math.exp(-R / tau))
    return loss + noise_sigma * abs(_param_noise({**key, "__epochs": e})) if noisy else loss


def _numeric(p: dict[str, Any]) -> dict[str, Any]:
    """The configuration with every value a number (choices by a stable hash), for :func:`_param_noise`."""
    return {k: (float(v) if isinstance(v, (int, float)) else
                int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=4).digest(), "little"))
            for k, v in p.items()}


def lc_mixed(p: dict[str, Any], epochs: float, noisy: bool = True) -> float:
    lr, batch, layers = p["lr"], p["batch_size"], p["layers"]
    tau = min(max(6.0 * (1e-3 / lr) ** 0.35 * (batch / 64.0) ** 0.3 * (1.0 + 0.15 * layers), 0.5), 300.0)
    return _curve(mixed(p), tau, 2.0 + 0.1 * layers, epochs, 81, 0.03, _numeric(p), noisy)


def lc_hartmann6(p: dict[str, Any], epochs: float, noisy: bool = True) -> float:
    tau = 1.0 + 40.0 * p["x0"] ** 2 + 20.0 * (1.0 - p["x5"])
    return _curve(hartmann6(p) + 3.322368011391339, tau, 1.5, epochs, 81, 0.03, _numeric(p), noisy)


def lc_sparse8(p: dict[str, Any], epochs: float, noisy: bool = True) -> float:
    final = (p["x1"] - 0.3) ** 2 + 2.0 * (p["x4"] - 0.7) ** 2 + 0.5 * (p["x6"] - 0.45) ** 2
    tau = 2.0 + 30.0 * p["x2"] * (1.0 + p["x7"])
    return _curve(final, tau, 1.0, epochs, 81, 0.01, _numeric(p), noisy)


CURVE_PROBLEMS: list[CurveProblem] = [
    CurveProblem("lc_mixed", {k: v for k, v in MIXED_SPACE.items()}, lc_mixed, 81,
                 "synthetic curves: final loss = mixed (8-D); fast learners: high lr, small batches, shallow nets"),
    CurveProblem("lc_hartmann6", _uniform_box([f"x{i}" for i in range(6)], 0, 1), lc_hartmann6, 81,
                 "synthetic curves: final loss = Hartmann-6 regret; the speed depends on x0 and x5"),
    CurveProblem("lc_sparse8", _uniform_box([f"x{i}" for i in range(8)], 0, 1), lc_sparse8, 81,
                 "synthetic curves: 8-D, final loss on 3 dimensions, speed on 2 others"),
]


def get_curve_problem(name: str) -> CurveProblem:
    for p in CURVE_PROBLEMS:
        if p.name == name:
            return p
    raise KeyError(f"unknown curve problem {name!r} (known: {', '.join(p.name for p in CURVE_PROBLEMS)})")
