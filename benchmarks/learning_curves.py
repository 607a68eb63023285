"""Learning-curve tables from real scikit-learn training runs, the data of ``benchmarks/early_stopping.py``.

Usage (from the repository root; about 30 minutes on one busy core)::

    python benchmarks/learning_curves.py                 # writes benchmarks/data/learning_curves.npz
    python benchmarks/learning_curves.py --tasks sgd_clf --configs 20 --out /tmp/lc.npz   # a quick look

Each task samples ``--configs`` hyperparameter configurations at random (seeded) from its space, trains
each one for ``STEPS`` steps (an epoch, or a block of boosting stages) and records the validation metric
after every step: one row per configuration, one column per step.  The tasks (validation split fixed per
task):

* ``gb_clf``: GradientBoostingClassifier on a synthetic 20-feature binary problem (5% label noise),
  3 stages a step, validation log-loss (minimize).  Curves cross: a small learning rate starts slowly and
  ends best, a large one drops fast and then overfits.
* ``gb_reg``: GradientBoostingRegressor on Friedman #1 with noise, 3 stages a step, validation MSE
  (minimize); shrinkage makes the same crossing.
* ``mlp_warmup``: MLPClassifier (SGD with momentum) on digits, by epoch, a linear learning-rate warm-up
  of 0-15 epochs then constant, step or cosine decay; validation accuracy (maximize).  Long warm-ups and
  high peak rates start late and end best.
* ``sgd_clf``: SGDClassifier on digits by epoch (loss, penalty, alpha, schedule, eta0, averaging);
  validation accuracy (maximize).
* ``mlp_adam``: MLPClassifier (Adam) on breast cancer by epoch; validation log-loss (minimize).  Curves
  mostly keep their order: early values predict the final ranking.
* ``sgd_reg``: SGDRegressor on the diabetes data by epoch (strong and weak
  regularisation, schedules); validation R^2 (maximize, floored at -10 where a run diverges).

Three more were added after EvidenceStopAssessor's defaults were fixed on the six above (a holdout):

* ``gb_cancer``: GradientBoostingClassifier on breast cancer, 3 stages a step, validation log-loss (minimize).
* ``mlp_reg``: MLPRegressor (SGD, the warm-up and decay schedules of ``mlp_warmup``) on Friedman #1 by epoch,
  validation MSE (minimize).
* ``pa_clf``: PassiveAggressiveClassifier on digits by epoch (C, loss, averaging); validation accuracy.

Each task samples its configurations from its own fixed seed, so the file is reproduced row for row (with
the same scikit-learn; it was written with 1.9) and a new task leaves the others alone (``--merge`` adds
tasks to an existing file).

The file holds, per task ``T``: ``T/curves`` (float32, configs x steps), and ``meta`` (JSON: per task the
metric, mode, a description and every configuration's hyperparameters).
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "learning_curves.npz"
STEPS = 30
FLOOR = -10.0  # R^2 of a diverged regression run


def _split(X: np.ndarray, y: np.ndarray, n_train: int, seed: int) -> tuple[np.ndarray, ...]:
    idx = np.random.default_rng(seed).permutation(len(X))
    tr, va = idx[:n_train], idx[n_train:]
    return X[tr], y[tr], X[va], y[va]


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


# ------------------------------------------------------------------------------------------------
# tasks: (sample a configuration, train one and return its curve)

def _gb_clf_data() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import make_classification
    X, y = make_classification(n_samples=2000, n_features=20, n_informative=8, n_redundant=4, flip_y=0.05,
                               class_sep=0.8, random_state=11)
    return _split(X, y, 1000, 11)


def _gb_sample(rng: np.random.Generator, max_leaf: int, min_features: float) -> dict[str, Any]:
    """A gradient-boosting configuration (the two boosting tasks differ in two ranges only)."""
    return {"learning_rate": _loguniform(rng, 0.005, 0.8), "max_depth": int(rng.integers(1, 5)),
            "subsample": float(rng.uniform(0.4, 1.0)), "min_samples_leaf": int(rng.integers(1, max_leaf)),
            "max_features": float(rng.uniform(min_features, 1.0))}


def _gb_log_loss_curve(p: dict[str, Any], seed: int, data: tuple[np.ndarray, ...],
                       clip: float | None = None) -> list[float]:
    """Validation log-loss of a boosted classifier every 3 trees (probabilities clipped to [clip, 1 - clip])."""
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.metrics import log_loss
    Xt, yt, Xv, yv = data
    m = GradientBoostingClassifier(n_estimators=3 * STEPS, random_state=seed, **p).fit(Xt, yt)
    staged = list(m.staged_predict_proba(Xv))
    return [log_loss(yv, staged[3 * k - 1] if clip is None else np.clip(staged[3 * k - 1], clip, 1 - clip),
                     labels=[0, 1]) for k in range(1, STEPS + 1)]


def gb_clf_sample(rng: np.random.Generator) -> dict[str, Any]:
    return _gb_sample(rng, 40, 0.2)


def gb_clf_run(p: dict[str, Any], seed: int, data: tuple[np.ndarray, ...]) -> list[float]:
    return _gb_log_loss_curve(p, seed, data)


def _gb_reg_data() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import make_friedman1
    X, y = make_friedman1(n_samples=1600, n_features=10, noise=1.5, random_state=12)
    return _split(X, y, 800, 12)


def gb_reg_sample(rng: np.random.Generator) -> dict[str, Any]:
    return {"learning_rate": _loguniform(rng, 0.005, 0.8), "max_depth": int(rng.integers(1, 6)),
            "subsample": float(rng.uniform(0.4, 1.0)), "min_samples_leaf": int(rng.integers(1, 40)),
            "loss": str(rng.choice(["squared_error", "absolute_error", "huber"]))}


def gb_reg_run(p: dict[str, Any], seed: int, data: tuple[np.ndarray, ...]) -> list[float]:
    from sklearn.ensemble import GradientBoostingRegressor
    Xt, yt, Xv, yv = data
    m = GradientBoostingRegressor(n_estimators=3 * STEPS, random_state=seed, **p).fit(Xt, yt)
    staged = list(m.staged_predict(Xv))
    return [float(np.mean((staged[3 * k - 1] - yv) ** 2)) for k in range(1, STEPS + 1)]


def _digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    return _split(X / 16.0, y, 1000, 13)


def mlp_warmup_sample(rng: np.random.Generator) -> dict[str, Any]:
    return {"peak_lr": _loguniform(rng, 0.002, 0.8), "warmup": int(rng.integers(0, 16)),
            "decay": str(rng.choice(["constant", "step", "cosine"])), "alpha": _loguniform(rng, 1e-6, 0.1),
            "hidden": int(rng.choice([16, 32, 64])), "batch_size": int(rng.choice([32, 64, 128])),
            "momentum": float(rng.uniform(0.0, 0.95))}


def _schedule(p: dict[str, Any], epoch: int) -> float:
    """Learning rate of ``epoch`` (0-based): linear warm-up to the peak, then the decay."""
    w, peak = p["warmup"], p["peak_lr"]
    if epoch < w:
        return peak * (epoch + 1) / (w + 1)
    frac = (epoch - w) / max(1, STEPS - w)
    if p["decay"] == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * frac))
    if p["decay"] == "step":
        return peak * (0.1 ** int(frac * 3))
    return peak


def mlp_warmup_run(p: dict[str, Any], seed: int, data: tuple[np.ndarray, ...]) -> list[float]:
    from sklearn.neural_network import MLPClassifier
    Xt, yt, Xv, yv = data
    m = MLPClassifier(hidden_layer_sizes=(p["hidden"],), solver="sgd", batch_size=p["batch_size"],
                      alpha=p["alpha"], momentum=p["momentum"], learning_rate_init=_schedule(p, 0),
                      random_state=seed)
    classes = np.unique(yt)
    out = []
    for epoch in range(STEPS):
        if epoch:
            m._optimizer.learning_rate = max(_schedule(p, epoch), 1e-6)
        m.partial_fit(Xt, yt, classes=classes)
        out.append(float(m.score(Xv, yv)))
    return out


def sgd_clf_sample(rng: np.random.Generator) -> dict[str, Any]:
    return {"loss": str(rng.choice(["hinge", "log_loss", "modified_huber", "perceptron"])),
            "penalty": str(rng.choice(["l2", "l1", "elasticnet"])), "alpha": _loguniform(rng, 1e-6, 0.3),
            "learning_rate": str(rng.choice(["constant", "optimal", "invscaling"])),
            "eta0": _loguniform(rng, 1e-4, 1.0), "average": bool(rng.random() < 0.3)}


def sgd_clf_run(p: dict[str, Any], seed: int, data: tuple[np.ndarray, ...]) -> list[float]:
    from sklearn.linear_model import SGDClassifier
    Xt, yt, Xv, yv = data
    m = SGDClassifier(random_state=seed, **p)
    classes = np.unique(yt)
    out = []
    for _ in range(STEPS):
        m.partial_fit(Xt, yt, classes=classes)
        out.append(float(m.score(Xv, yv)))
    return out


def _cancer() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_breast_cancer
    X, y = load_breast_cancer(return_X_y=True)
    Xt, yt, Xv, yv = _split(X, y, 330, 14)
    mu, sd = Xt.mean(0), Xt.std(0) + 1e-9
    return (Xt - mu) / sd, yt, (Xv - mu) / sd, yv


def mlp_adam_sample(rng: np.random.Generator) -> dict[str, Any]:
    return {"learning_rate_init": _loguniform(rng, 1e-5, 0.05), "alpha": _loguniform(rng, 1e-6, 3.0),
            "hidden": int(rng.choice([4, 8, 16, 32, 64])), "batch_size": int(rng.choice([16, 32, 64, 128])),
            "beta_1": float(rng.uniform(0.5, 0.99))}


def mlp_adam_run(p: dict[str, Any], seed: int, data: tuple[np.ndarray, ...]) -> list[float]:
    from sklearn.metrics import log_loss
    from sklearn.neural_network import MLPClassifier
    Xt, yt, Xv, yv = data
    q = dict(p)
    m = MLPClassifier(hidden_layer_sizes=(q.pop("hidden"),), solver="adam", random_state=seed, **q)
    out = []
    for _ in range(STEPS):
        m.partial_fit(Xt, yt, classes=[0, 1])
        out.append(float(log_loss(yv, m.predict_proba(Xv), labels=[0, 1])))
    return out


def _sgd_reg_data() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_diabetes
    X, y = load_diabetes(return_X_y=True)
    Xt, yt, Xv, yv = _split(X, y, 260, 15)
    mu, sd = Xt.mean(0), Xt.std(0) + 1e-9
    ym, ys = yt.mean(), yt.std()
    return (Xt - mu) / sd, (yt - ym) / ys, (Xv - mu) / sd, (yv - ym) / ys


def sgd_reg_sample(rng: np.random.Generator) -> dict[str, Any]:
    return {"loss": str(rng.choice(["squared_error", "huber", "epsilon_insensitive"])),
            "penalty": str(rng.choice(["l2", "l1", "elasticnet"])), "alpha": _loguniform(rng, 1e-6, 1.0),
            "learning_rate": str(rng.choice(["constant", "invscaling", "optimal"])),
            "eta0": _loguniform(rng, 1e-5, 0.1), "power_t": float(rng.uniform(0.1, 0.6)),
            "average": bool(rng.random() < 0.3)}


def sgd_reg_run(p: dict[str, Any], seed: int, data: tuple[np.ndarray, ...]) -> list[float]:
    from sklearn.linear_model import SGDRegressor
    Xt, yt, Xv, yv = data
    m = SGDRegressor(random_state=seed, **p)
    out = []
    for _ in range(STEPS):
        m.partial_fit(Xt, yt)
        r2 = float(m.score(Xv, yv))
        out.append(r2 if math.isfinite(r2) else FLOOR)
    return [max(v, FLOOR) for v in out]


def gb_cancer_sample(rng: np.random.Generator) -> dict[str, Any]:
    return _gb_sample(rng, 30, 0.1)


def gb_cancer_run(p: dict[str, Any], seed: int, data: tuple[np.ndarray, ...]) -> list[float]:
    return _gb_log_loss_curve(p, seed, data, clip=1e-6)


def _friedman() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import make_friedman1
    X, y = make_friedman1(n_samples=1400, n_features=10, noise=1.0, random_state=16)
    Xt, yt, Xv, yv = _split(X, y, 700, 16)
    mu, sd = Xt.mean(0), Xt.std(0) + 1e-9
    return (Xt - mu) / sd, yt, (Xv - mu) / sd, yv


def mlp_reg_run(p: dict[str, Any], seed: int, data: tuple[np.ndarray, ...]) -> list[float]:
    from sklearn.neural_network import MLPRegressor
    Xt, yt, Xv, yv = data
    m = MLPRegressor(hidden_layer_sizes=(p["hidden"],), solver="sgd", batch_size=p["batch_size"],
                     alpha=p["alpha"], momentum=p["momentum"], learning_rate_init=_schedule(p, 0) / 10,
                     random_state=seed)
    out = []
    for epoch in range(STEPS):
        if epoch:
            m._optimizer.learning_rate = max(_schedule(p, epoch) / 10, 1e-7)
        m.partial_fit(Xt, yt)
        mse = float(np.mean((m.predict(Xv) - yv) ** 2))
        out.append(min(mse, 1e3) if math.isfinite(mse) else 1e3)
    return out


def pa_clf_sample(rng: np.random.Generator) -> dict[str, Any]:
    return {"C": _loguniform(rng, 1e-5, 10.0), "loss": str(rng.choice(["hinge", "squared_hinge"])),
            "average": bool(rng.random() < 0.4), "fit_intercept": bool(rng.random() < 0.7)}


def pa_clf_run(p: dict[str, Any], seed: int, data: tuple[np.ndarray, ...]) -> list[float]:
    from sklearn.linear_model import PassiveAggressiveClassifier
    Xt, yt, Xv, yv = data
    m = PassiveAggressiveClassifier(random_state=seed, **p)
    classes = np.unique(yt)
    out = []
    for _ in range(STEPS):
        m.partial_fit(Xt, yt, classes=classes)
        out.append(float(m.score(Xv, yv)))
    return out


TASKS: dict[str, dict[str, Any]] = {
    "gb_clf": {"data": _gb_clf_data, "sample": gb_clf_sample, "run": gb_clf_run, "seed": 1000,
               "metric": "log_loss", "mode": "minimize",
               "about": "GradientBoostingClassifier, 3 stages a step, synthetic binary"},
    "gb_reg": {"data": _gb_reg_data, "sample": gb_reg_sample, "run": gb_reg_run, "seed": 1001,
               "metric": "mse", "mode": "minimize", "about": "GradientBoostingRegressor, 3 stages a step, Friedman #1"},
    "mlp_warmup": {"data": _digits, "sample": mlp_warmup_sample, "run": mlp_warmup_run, "seed": 1003,
                   "metric": "accuracy", "mode": "maximize",
                   "about": "MLPClassifier (SGD, warm-up + decay) by epoch, digits"},
    "sgd_clf": {"data": _digits, "sample": sgd_clf_sample, "run": sgd_clf_run, "seed": 1004,
                "metric": "accuracy", "mode": "maximize", "about": "SGDClassifier by epoch, digits"},
    "mlp_adam": {"data": _cancer, "sample": mlp_adam_sample, "run": mlp_adam_run, "seed": 1002,
                 "metric": "log_loss", "mode": "minimize", "about": "MLPClassifier (Adam) by epoch, breast cancer"},
    "sgd_reg": {"data": _sgd_reg_data, "sample": sgd_reg_sample, "run": sgd_reg_run, "seed": 1005,
                "metric": "r2", "mode": "maximize", "about": "SGDRegressor by epoch, diabetes"},
    # added after EvidenceStopAssessor's defaults were fixed on the six above: a holdout
    "gb_cancer": {"data": _cancer, "sample": gb_cancer_sample, "run": gb_cancer_run, "seed": 1000,
                  "metric": "log_loss", "mode": "minimize",
                  "about": "GradientBoostingClassifier, 3 stages a step, breast cancer"},
    "mlp_reg": {"data": _friedman, "sample": mlp_warmup_sample, "run": mlp_reg_run, "seed": 1004,
                "metric": "mse", "mode": "minimize",
                "about": "MLPRegressor (SGD, warm-up + decay) by epoch, Friedman #1"},
    "pa_clf": {"data": _digits, "sample": pa_clf_sample, "run": pa_clf_run, "seed": 1006,
               "metric": "accuracy", "mode": "maximize", "about": "PassiveAggressiveClassifier by epoch, digits"},
}


def generate(task: str, n: int, progress: Callable[[str], None]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    spec = TASKS[task]
    data = spec["data"]()
    rng = np.random.default_rng(spec["seed"])
    configs = [spec["sample"](rng) for _ in range(n)]
    curves = np.empty((n, STEPS), dtype=np.float32)
    t0 = time.monotonic()
    for i, p in enumerate(configs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            curves[i] = spec["run"](p, i, data)
        if (i + 1) % 25 == 0:
            progress(f"{task}: {i + 1}/{n} ({time.monotonic() - t0:.0f} s)")
    return curves, configs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated (default: all)")
    ap.add_argument("--configs", type=int, default=250, help="configurations per task (default 250)")
    ap.add_argument("--out", default=str(DATA))
    ap.add_argument("--merge", action="store_true", help="keep the other tasks already in --out")
    args = ap.parse_args(argv)
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"steps": STEPS, "tasks": {}}
    if args.merge and Path(args.out).exists():
        with np.load(args.out) as old:
            meta = json.loads(str(old["meta"]))
            arrays = {k: old[k] for k in old.files if k != "meta"}
    for task in args.tasks.split(","):
        curves, configs = generate(task, args.configs, lambda s: print(s, file=sys.stderr, flush=True))
        arrays[f"{task}/curves"] = curves
        spec = TASKS[task]
        meta["tasks"][task] = {"metric": spec["metric"], "mode": spec["mode"], "about": spec["about"],
                               "configs": configs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, meta=np.array(json.dumps(meta)), **arrays)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
