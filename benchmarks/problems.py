"""Benchmark problems for the tuner benchmark: every objective is a *loss* to minimise.

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

Parameters arrive in hpo's format (nested choice: ``{"_name": ..., **sub_params}``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np

__all__ = ["Problem", "PROBLEMS", "get_problem"]


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
    else:  # pragma: no cover
        raise KeyError(name)
    cv = (StratifiedKFold if strat else KFold)(3, shuffle=True, random_state=0)
    return [(X[a], y[a], X[b], y[b]) for a, b in cv.split(X, y)]


def _cv_error(model: Any, data: str) -> float:
    import warnings
    errs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for Xa, ya, Xb, yb in _folds(data):
            model.fit(Xa, ya)
            errs.append(float(np.mean(model.predict(Xb) != yb)))
    return float(np.mean(errs))


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
    return _cv_error(DecisionTreeClassifier(
        max_depth=p["max_depth"], min_samples_split=p["min_samples_split"],
        min_samples_leaf=p["min_samples_leaf"], max_features=p["max_features"],
        criterion=p["criterion"], random_state=0), "digits600")


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
    return _cv_error(model, "digits600")


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


def get_problem(name: str) -> Problem:
    for p in PROBLEMS:
        if p.name == name:
            return p
    raise KeyError(f"unknown problem {name!r} (known: {', '.join(p.name for p in PROBLEMS)})")
