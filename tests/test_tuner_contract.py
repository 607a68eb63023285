"""Contract tests every registered tuner must pass.

A tuner is listed in ``TUNERS`` with the spaces it supports; every test runs for every tuner.
"""
from __future__ import annotations

import math
from typing import Callable

import pytest

from hpo.search_space import parse_search_space
from tuners.base import NoMoreTrials, Tuner, TryLater
from tuners.registry import TunerNotFound, tuner_class

MIXED = {
    "lr": {"_type": "loguniform", "_value": [1e-5, 1e-1]},
    "dropout": {"_type": "uniform", "_value": [0.0, 0.5]},
    "units": {"_type": "quniform", "_value": [16, 256, 16]},
    "decay": {"_type": "qloguniform", "_value": [1, 1000, 1]},
    "layers": {"_type": "randint", "_value": [1, 5]},
    "noise": {"_type": "normal", "_value": [0, 1]},
    "qnoise": {"_type": "qnormal", "_value": [0, 2, 0.5]},
    "scale": {"_type": "lognormal", "_value": [0, 1]},
    "qscale": {"_type": "qlognormal", "_value": [2, 0.5, 1]},
    "act": {"_type": "choice", "_value": ["relu", "tanh", 3, 0.5]},
    "optimizer": {"_type": "choice", "_value": [
        {"_name": "sgd", "momentum": {"_type": "uniform", "_value": [0, 0.99]}},
        {"_name": "adam", "beta1": {"_type": "loguniform", "_value": [0.5, 0.999]}, "amsgrad": False},
        {"_name": "none"},
    ]},
}
DISCRETE = {
    "units": {"_type": "quniform", "_value": [16, 64, 16]},
    "layers": {"_type": "randint", "_value": [1, 4]},
    "act": {"_type": "choice", "_value": ["relu", "tanh"]},
    "lr": {"_type": "logspace", "_value": [-3, -1, 3]},
    "optimizer": {"_type": "choice", "_value": [
        {"_name": "sgd", "momentum": {"_type": "choice", "_value": [0.0, 0.9]}},
        {"_name": "adam"},
    ]},
}

# tuner name -> spaces it must handle
TUNERS: dict[str, list[dict]] = {"random": [MIXED, DISCRETE], "grid": [DISCRETE], "tpe": [MIXED, DISCRETE],
                                 "logspace": [MIXED, DISCRETE], "hyperopt": [MIXED, DISCRETE],
                                 "anneal": [MIXED, DISCRETE], "optuna": [MIXED, DISCRETE], "gp": [MIXED, DISCRETE],
                                 "hyperband": [MIXED, DISCRETE], "bohb": [MIXED, DISCRETE]}
# tuners whose suggestions carry one more key than the space: the trial's resource (Hyperband's budget)
EXTRA_KEYS = {"hyperband": ("TRIAL_BUDGET",), "bohb": ("TRIAL_BUDGET",)}
# tuners that sample configurations with replacement by design (so a finite space is no reason to stop)
WITH_REPLACEMENT = ("random", "hyperband", "bohb")


def _in_space(tuner_name: str, params: dict) -> dict:
    """The suggestion without the keys the tuner adds on top of the space."""
    return {k: v for k, v in params.items() if k not in EXTRA_KEYS.get(tuner_name, ())}


def _available() -> list[str]:
    names = []
    for name in TUNERS:
        try:
            tuner_class(name)
        except TunerNotFound:
            continue
        names.append(name)
    return names


@pytest.fixture(params=_available())
def tuner_name(request) -> str:
    return request.param


def _objective(params: dict) -> float:
    """A deterministic score of any point (hash-free, so results are reproducible)."""
    total = 0.0
    for key, value in sorted(params.items()):
        if isinstance(value, dict):
            total += _objective({k: v for k, v in value.items() if k != "_name"}) + len(value.get("_name", ""))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            total += math.tanh(float(value)) * (1 + len(key))
        else:
            total += len(str(value))
    return total


def _drive(tuner: Tuner, n: int, objective: Callable[[dict], float] = _objective) -> list[dict]:
    """Ask/tell ``n`` trials sequentially, scoring with ``objective``; stops early on NoMoreTrials."""
    out = []
    for pid in range(1, n + 1):
        try:
            params = tuner.generate_parameters(pid)
        except NoMoreTrials:
            break
        out.append(params)
        tuner.receive_trial_result(pid, params, objective(params))
        tuner.trial_end(pid, True)
    return out


def _make(name: str, space: dict, **kwargs) -> Tuner:
    tuner = tuner_class(name)(**kwargs)
    tuner.update_search_space(space)
    return tuner


def test_suggestions_lie_in_the_space(tuner_name):
    for raw in TUNERS[tuner_name]:
        space = parse_search_space(raw)
        points = _drive(_make(tuner_name, raw, seed=3), 40)
        assert points, "the tuner suggested nothing"
        for point in points:
            assert space.contains(_in_space(tuner_name, point)), f"{tuner_name} suggested {point} outside the space"


def test_same_seed_same_suggestions(tuner_name):
    raw = TUNERS[tuner_name][0]
    assert _drive(_make(tuner_name, raw, seed=11), 25) == _drive(_make(tuner_name, raw, seed=11), 25)


def test_class_args_recreate_the_tuner(tuner_name):
    raw = TUNERS[tuner_name][0]
    original = _make(tuner_name, raw, optimize_mode="minimize", seed=5)
    args = original.class_args()
    assert args["optimize_mode"] == "minimize" and args["seed"] == 5
    clone = tuner_class(tuner_name)(**args)
    clone.update_search_space(raw)
    assert _drive(original, 15) == _drive(clone, 15)


def test_import_data_is_accepted_and_tuning_continues(tuner_name):
    raw = TUNERS[tuner_name][0]
    history = _drive(_make(tuner_name, raw, seed=1), 10)
    tuner = _make(tuner_name, raw, seed=2)
    records = [{"parameter": p, "value": _objective(p)} for p in history]
    records[3]["value"] = None  # a trial that ran but failed: tuners must accept it
    tuner.import_data(records)
    space = parse_search_space(raw)
    more = _drive(tuner, 5)
    assert all(space.contains(_in_space(tuner_name, p)) for p in more)


def test_bad_optimize_mode_is_rejected(tuner_name):
    with pytest.raises(ValueError, match="optimize_mode"):
        tuner_class(tuner_name)(optimize_mode="maximise-ish")


def test_exhaustion_is_signalled_not_repeated(tuner_name):
    """A tuner that stops on a finite space says so with NoMoreTrials, never by looping or TryLater."""
    if tuner_name in WITH_REPLACEMENT:
        pytest.skip(f"{tuner_name} samples with replacement by design")
    raw = {"a": {"_type": "choice", "_value": [1, 2, 3]}, "b": {"_type": "randint", "_value": [0, 2]}}
    tuner = _make(tuner_name, raw, seed=0)
    seen = []
    for pid in range(1, 50):
        try:
            params = tuner.generate_parameters(pid)
        except NoMoreTrials:
            break
        except TryLater:
            pytest.fail("TryLater on a sequential run")
        seen.append(tuple(sorted(params.items())))
        tuner.receive_trial_result(pid, params, float(pid))
    assert len(seen) == len(set(seen)) == 6


def test_grid_does_not_repeat_points_that_ran_without_a_result():
    raw = {"a": {"_type": "choice", "_value": [1, 2, 3]}}
    tuner = _make("grid", raw)
    tuner.import_data([{"parameter": {"a": 1}, "value": None}, {"parameter": {"a": 3}, "value": 0.5}])
    assert tuner.generate_parameters(1) == {"a": 2}
    with pytest.raises(NoMoreTrials):
        tuner.generate_parameters(2)


def test_the_empty_space_gives_its_one_point(tuner_name):
    """``{}`` (a run with no parameters): every tuner suggests ``{}``; then it stops (NoMoreTrials) or, sampling
    with replacement (random), suggests ``{}`` again."""
    tuner = _make(tuner_name, {}, seed=0)
    first = tuner.generate_parameters(1)
    assert _in_space(tuner_name, first) == {}
    tuner.receive_trial_result(1, first, 1.0)
    tuner.trial_end(1, True)
    try:
        again = tuner.generate_parameters(2)
    except NoMoreTrials:
        assert tuner_name not in WITH_REPLACEMENT
    else:
        assert tuner_name in WITH_REPLACEMENT and _in_space(tuner_name, again) == {}
