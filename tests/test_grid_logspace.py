"""GridTuner and LogspaceTuner: matrix forms, search_method, n_experiments, discretisation."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpo.search_space import SearchSpaceError, parse_search_space
from tuners.base import NoMoreTrials, Tuner
from tuners.grid import GridIndex, GridTuner, UnseenPoints
from tuners.logspace import LogspaceTuner, discretise
from tuners.registry import create_tuner, tuner_class

ROOT = Path(__file__).resolve().parent.parent
SEED_LR = [1.0232929922807541, 1.0777052536943219, 1.1350108156723151, 1.1953635256737185, 1.2589254117941673]
NESTED = {
    "a": {"_type": "choice", "_value": [1, 2]},
    "opt": {"_type": "choice", "_value": [
        {"_name": "sgd", "m": {"_type": "choice", "_value": [0.0, 0.9]}, "fixed": 3},
        {"_name": "none"},
        {"_name": "adam", "b": {"_type": "randint", "_value": [0, 2]},
         "sched": {"_type": "choice", "_value": [{"_name": "cos", "w": {"values": [1, 2, 3]}}, "flat"]}}]},
    "lr": {"range": "1:4:1"},
}
FIVE = {"lr": {"logspace": "0.01:0.1:5"}}


def _all(tuner: Tuner, limit: int = 10_000) -> list[dict]:
    out = []
    for pid in range(limit):
        try:
            out.append(tuner.generate_parameters(pid))
        except NoMoreTrials:
            return out
    raise AssertionError("the tuner never raised NoMoreTrials")


def _grid(raw: dict, **kwargs) -> GridTuner:
    tuner = GridTuner(**kwargs)
    tuner.update_search_space(raw)
    return tuner


# -- matrix forms -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [{"logspace": "0.01:0.1:5"}, {"_type": "logspace", "_value": [0.01, 0.1, 5]},
                                  {"logspace": {"start": 0.01, "stop": 0.1, "num": 5}}])
def test_polyaxon_logspace_as_the_seed_shows(spec):
    points = _all(_grid({"lr": spec}))
    assert [p["lr"] for p in points] == SEED_LR == list(np.logspace(0.01, 0.1, 5))


@pytest.mark.parametrize("spec, values", [
    ({"values": [0.1, "x", 3]}, [0.1, "x", 3]),
    ({"range": "0:10:3"}, [0, 3, 6, 9]),  # stop excluded, ints stay ints
    ({"_type": "range", "_value": [1, 2, 0.25]}, [1.0, 1.25, 1.5, 1.75]),
    ({"linspace": "0:1:5"}, [0.0, 0.25, 0.5, 0.75, 1.0]),
    ({"_type": "linspace", "_value": [0, 1, 5]}, [0.0, 0.25, 0.5, 0.75, 1.0]),
    ({"geomspace": "1:100:3"}, [1.0, 10.0, 100.0]),
])
def test_matrix_forms_enumerate_in_order(spec, values):
    got = [p["x"] for p in _all(_grid({"x": spec}))]
    assert got == pytest.approx(values) if all(isinstance(v, float) for v in values) else got == values
    assert [type(v) for v in got] == [type(v) for v in values]


def test_nni_discrete_types_in_the_grid():
    raw = {"c": {"_type": "choice", "_value": ["a", "b"]}, "r": {"_type": "randint", "_value": [2, 5]},
           "q": {"_type": "quniform", "_value": [1, 10, 4]}, "ql": {"_type": "qloguniform", "_value": [1, 100, 50]}}
    points = _all(_grid(raw))
    assert len(points) == 2 * 3 * 3 * 3
    # round(x / q) * q clipped: 10 rounds (half to even) to 8, so 1, 4, 8
    assert {p["r"] for p in points} == {2, 3, 4} and {p["q"] for p in points} == {1, 4, 8}
    assert {p["ql"] for p in points} == {1, 50, 100}


def test_continuous_dimension_error_says_how_to_discretise():
    with pytest.raises(SearchSpaceError) as info:
        _grid({"lr": {"_type": "loguniform", "_value": [1e-4, 1e-1]}})
    message = str(info.value)
    assert "'lr'" in message and "linspace" in message and "quniform" in message and "Logspace" in message


# -- GridIndex ---------------------------------------------------------------------------------------------------
def test_grid_index_matches_iter_grid_including_nested_options():
    space = parse_search_space(NESTED)
    index = GridIndex(space)
    assert index.size == space.grid_size() == 2 * (2 + 1 + 2 * 4) * 3
    assert [index.point_at(i) for i in range(index.size)] == list(space.iter_grid())
    assert _all(_grid(NESTED)) == list(space.iter_grid())
    with pytest.raises(IndexError):
        index.point_at(index.size)


def test_unseen_points_pick_only_unseen():
    space = parse_search_space({"a": {"_type": "choice", "_value": [1, 2, 3]}})
    unseen = UnseenPoints(space)
    unseen.add({"a": 1})
    unseen.add({"a": 7})  # not a point of the space: ignored
    rng = np.random.default_rng(0)
    assert {unseen.pick(rng)["a"] for _ in range(20)} == {2, 3}
    unseen.add({"a": 2})
    unseen.add({"a": 3})
    assert unseen.exhausted and unseen.pick(rng) is None


# -- search_method -----------------------------------------------------------------------------------------------
def test_random_search_method_is_a_seeded_permutation():
    sequential = _all(_grid(NESTED))
    shuffled = _all(_grid(NESTED, search_method="random", seed=4))
    assert shuffled != sequential
    assert sorted(map(repr, shuffled)) == sorted(map(repr, sequential))  # each point exactly once
    assert _all(_grid(NESTED, search_method="random", seed=4)) == shuffled
    assert _all(_grid(NESTED, search_method="Random", seed=5)) != shuffled


def test_random_walk_of_a_huge_grid_is_lazy():
    raw = {f"d{i}": {"_type": "randint", "_value": [0, 100]} for i in range(6)}  # 10^12 points
    tuner = _grid(raw, search_method="random", seed=1, n_experiments=50)
    points = _all(tuner)
    assert len(points) == 50 == len({repr(p) for p in points})
    space = parse_search_space(raw)
    assert all(space.contains(p) for p in points)


# -- n_experiments -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, count", [(None, 5), (4, 4), (1, 1), (5, 5), (100, 5),
                                      (0.4, 2), (0.5, 3), (0.3, 2), (1.0, 5), (0.01, 1)])
def test_n_experiments_count_or_fraction_rounded_up(n, count):
    for method in ("sequential", "random"):
        tuner = _grid(FIVE, n_experiments=n, search_method=method, seed=2)
        points = _all(tuner)
        assert len(points) == count
        with pytest.raises(NoMoreTrials, match="n_experiments" if count < 5 else "every point"):
            tuner.generate_parameters(99)
    if n is not None:
        assert [p["lr"] for p in _all(_grid(FIVE, n_experiments=n))] == SEED_LR[:count]


@pytest.mark.parametrize("n", [0, -3, 1.5, 0.0, -0.5, math.nan, math.inf, True, "4", [2]])
def test_bad_n_experiments_is_rejected(n):
    with pytest.raises(ValueError, match="n_experiments"):
        GridTuner(n_experiments=n)
    with pytest.raises(ValueError, match="n_experiments"):
        LogspaceTuner(n_experiments=n)


@pytest.mark.parametrize("method", ["grid", "bayesian", "", None, 1])
def test_bad_search_method_is_rejected(method):
    with pytest.raises(ValueError, match="search_method"):
        GridTuner(search_method=method)


@pytest.mark.parametrize("n", [0, -1, 2.5, True, "5", None])
def test_bad_logspace_n_is_rejected(n):
    with pytest.raises(ValueError, match="n: "):
        LogspaceTuner(n=n)


def test_imported_points_count_towards_n_experiments_and_are_skipped():
    first = _grid(FIVE, search_method="random", seed=3, n_experiments=4)
    order = _all(_grid(FIVE, search_method="random", seed=3))
    done = [first.generate_parameters(1), first.generate_parameters(2)]
    assert done == order[:2]
    resumed = _grid(FIVE, search_method="random", seed=3, n_experiments=4)
    resumed.import_data([{"parameter": done[0], "value": 1.0}, {"parameter": done[1], "value": None},
                         {"parameter": {"lr": 0.5}, "value": 2.0}])  # not a grid point: does not count
    assert _all(resumed) == order[2:4]


def test_grid_class_args_round_trip():
    tuner = GridTuner(optimize_mode="minimize", seed=7, search_method="random", n_experiments=0.5)
    args = tuner.class_args()
    assert args == {"optimize_mode": "minimize", "seed": 7, "search_method": "random", "n_experiments": 0.5}
    clone = GridTuner(**args)
    for t in (tuner, clone):
        t.update_search_space(NESTED)
    assert _all(tuner) == _all(clone)


# -- LogspaceTuner -----------------------------------------------------------------------------------------------
def _values(raw_dim: dict, n: int) -> list:
    return list(discretise(parse_search_space({"x": raw_dim}), n)["x"].options)


def test_logspace_discretises_each_numeric_type():
    assert _values({"_type": "uniform", "_value": [0, 1]}, 5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert _values({"_type": "loguniform", "_value": [1e-4, 1]}, 5) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1])
    assert _values({"_type": "loguniform", "_value": [1e-4, 1]}, 5)[0] == 1e-4  # ends exact
    assert _values({"_type": "quniform", "_value": [0, 100, 10]}, 5) == [0, 20, 50, 80, 100]  # round half even
    assert _values({"_type": "qloguniform", "_value": [1, 1000, 1]}, 4) == [1, 10, 100, 1000]
    assert _values({"_type": "qloguniform", "_value": [1, 4, 1]}, 10) == [1, 2, 3, 4]  # duplicates merged
    assert _values({"_type": "randint", "_value": [0, 3]}, 5) == [0, 1, 2]  # few: all of them
    assert _values({"_type": "randint", "_value": [0, 101]}, 5) == [0, 25, 50, 75, 100]
    normal = _values({"_type": "normal", "_value": [10, 2]}, 4)  # quantiles 1/8, 3/8, 5/8, 7/8
    assert normal == pytest.approx([10 - 2 * 1.15035, 10 - 2 * 0.318639, 10 + 2 * 0.318639, 10 + 2 * 1.15035],
                                   abs=1e-4)
    assert _values({"_type": "lognormal", "_value": [0, 1]}, 3)[1] == 1.0
    assert _values({"_type": "qnormal", "_value": [0, 1, 1]}, 5) == [-1, 0, 1]
    assert _values({"_type": "choice", "_value": ["a", "b", "c"]}, 2) == ["a", "b", "c"]  # untouched
    assert _values({"_type": "uniform", "_value": [2, 4]}, 1) == [3.0]  # n=1: the middle
    assert _values({"_type": "loguniform", "_value": [1, 100]}, 1) == [10.0]


def test_logspace_tuner_point_count_values_and_nested():
    raw = {"lr": {"_type": "loguniform", "_value": [1e-3, 1e-1]},
           "act": {"_type": "choice", "_value": ["relu", "tanh"]},
           "opt": {"_type": "choice", "_value": [
               {"_name": "sgd", "m": {"_type": "uniform", "_value": [0, 0.9]}}, {"_name": "none"}]}}
    tuner = LogspaceTuner(n=3)
    tuner.update_search_space(raw)
    points = _all(tuner)
    assert len(points) == 3 * 2 * (3 + 1)
    assert sorted({p["lr"] for p in points}) == pytest.approx([1e-3, 1e-2, 1e-1])
    assert {p["opt"]["m"] for p in points if p["opt"]["_name"] == "sgd"} == {0.0, 0.45, 0.9}
    assert points[:4] == [{"lr": 1e-3, "act": "relu", "opt": {"_name": "sgd", "m": m}} for m in (0.0, 0.45, 0.9)] + \
        [{"lr": 1e-3, "act": "relu", "opt": {"_name": "none"}}]
    space = parse_search_space(raw)
    assert all(space.contains(p) for p in points)
    assert tuner.space == space  # the tuner's space is the user's; the grid is its own


def test_logspace_tuner_search_method_and_n_experiments():
    raw = {"x": {"_type": "uniform", "_value": [0, 1]}, "y": {"_type": "loguniform", "_value": [1, 1e4]}}
    full = LogspaceTuner(n=5)
    full.update_search_space(raw)
    sequential = _all(full)
    assert len(sequential) == 25
    tuner = LogspaceTuner(n=5, seed=8, search_method="random", n_experiments=0.2)
    tuner.update_search_space(raw)
    picked = _all(tuner)
    assert len(picked) == 5 and picked != sequential[:5] and all(p in sequential for p in picked)
    assert tuner.class_args() == {"n": 5, "optimize_mode": "maximize", "seed": 8, "search_method": "random",
                                  "n_experiments": 0.2}
    clone = LogspaceTuner(**tuner.class_args())
    clone.update_search_space(raw)
    assert _all(clone) == picked


@pytest.mark.parametrize("name, cls", [("GridSearch", GridTuner), ("grid_search", GridTuner),
                                       ("Logspace", LogspaceTuner), ("logspace", LogspaceTuner)])
def test_found_by_name(name, cls):
    assert tuner_class(name) is cls
    tuner = create_tuner(name, {"search_method": "random", "n_experiments": 2, "seed": 1})
    tuner.update_search_space(FIVE)
    assert len(_all(tuner)) == 2


def test_hpo_check_prints_the_matrix(tmp_path):
    config = tmp_path / "config.yml"
    config.write_text("search_space:\n  lr:\n    logspace: 0.01:0.1:5\ntrial_command: python train.py\n"
                      "trial_concurrency: 2\ntuner:\n  name: GridSearch\n  class_args:\n"
                      "    search_method: random\n    n_experiments: 0.4\ntraining_service:\n  platform: local\n")
    out = subprocess.run([sys.executable, "-m", "hpo", "check", "-f", str(config), "-m"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "5 points" in out.stdout
    for value in SEED_LR:  # printed rounded or in full
        assert f"{value:.6g}" in out.stdout or repr(value) in out.stdout
