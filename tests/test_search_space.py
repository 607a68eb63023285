"""Search-space parsing (NNI + Polyaxon forms), grids, and the random / grid tuners and their registry."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpo.search_space import (Categorical, IntRange, NestedOption, Numeric, SearchSpaceError,
                              parse_search_space)
from tuners import GridTuner, NoMoreTrials, RandomTuner, create_tuner, tuner_class
from tuners.registry import TunerNotFound

ALL_NNI = {
    "c": {"_type": "choice", "_value": ["a", 2, 3.5]},
    "ri": {"_type": "randint", "_value": [2, 7]},
    "u": {"_type": "uniform", "_value": [-1, 3]},
    "qu": {"_type": "quniform", "_value": [0, 10, 2]},
    "lu": {"_type": "loguniform", "_value": [1e-4, 1e-1]},
    "qlu": {"_type": "qloguniform", "_value": [1, 100, 5]},
    "n": {"_type": "normal", "_value": [0, 2]},
    "qn": {"_type": "qnormal", "_value": [10, 3, 0.5]},
    "ln": {"_type": "lognormal", "_value": [0, 1]},
    "qln": {"_type": "qlognormal", "_value": [2, 0.5, 1]},
}


# -- parsing ---------------------------------------------------------------------------------------------
def test_all_ten_nni_types_parse_with_their_values():
    space = parse_search_space(ALL_NNI)
    assert space.names == list(ALL_NNI)
    assert isinstance(space["c"], Categorical) and space["c"].options == ("a", 2, 3.5)
    assert isinstance(space["ri"], IntRange) and (space["ri"].low, space["ri"].high) == (2, 7)
    expected = {  # name: (distribution, log, q, low/mu, high/sigma)
        "u": ("uniform", False, None, -1, 3), "qu": ("uniform", False, 2, 0, 10),
        "lu": ("uniform", True, None, 1e-4, 1e-1), "qlu": ("uniform", True, 5, 1, 100),
        "n": ("normal", False, None, 0, 2), "qn": ("normal", False, 0.5, 10, 3),
        "ln": ("normal", True, None, 0, 1), "qln": ("normal", True, 1, 2, 0.5),
    }
    for name, (dist, log, q, a, b) in expected.items():
        dim = space[name]
        assert isinstance(dim, Numeric), name
        assert (dim.distribution, dim.log, dim.q) == (dist, log, q), name
        assert dim.nni_type == ALL_NNI[name]["_type"], name
        got = (dim.low, dim.high) if dist == "uniform" else (dim.mu, dim.sigma)
        assert got == (a, b), name


@pytest.mark.parametrize("spec, needle", [
    ({"_type": "choice", "_value": []}, "no options"),
    ({"_type": "uniform", "_value": [1, 1]}, "low < high"),
    ({"_type": "quniform", "_value": [5, 2, 1]}, "low < high"),
    ({"_type": "randint", "_value": [5, 2]}, "low < high"),
    ({"_type": "loguniform", "_value": [0, 1]}, "low > 0"),
    ({"_type": "qloguniform", "_value": [-1, 1, 0.1]}, "low > 0"),
    ({"_type": "quniform", "_value": [0, 1, 0]}, "q > 0"),
    ({"_type": "qnormal", "_value": [0, 1, -1]}, "q > 0"),
    ({"_type": "qlognormal", "_value": [0, 1, 0]}, "q > 0"),
    ({"_type": "unifrom", "_value": [0, 1]}, "unknown _type 'unifrom'"),
    ({"_type": "uniform", "_value": [0]}, "2 numbers"),
    ({"_type": "randint", "_value": [1, 2, 3]}, "2 numbers"),
    ({"_type": "quniform", "_value": [0, 1]}, "3 numbers"),
    ({"_type": "uniform"}, "missing '_value'"),
    ([0, 1], "expected {'_type'"),
    ("uniform", "expected {'_type'"),
    ({"_type": "normal", "_value": [0, 0]}, "sigma > 0"),
    ({"_type": "uniform", "_value": ["a", 1]}, "finite numbers"),
])
def test_invalid_dimension_rejected_naming_the_parameter(spec, needle):
    with pytest.raises(SearchSpaceError) as info:
        parse_search_space({"ok": {"_type": "choice", "_value": [1]}, "learning_rate": spec})
    message = str(info.value)
    assert message.startswith("search_space.learning_rate:"), message
    assert needle in message
    assert "\n" not in message


@pytest.mark.parametrize("raw", [[{"_type": "choice"}], "x", None, 3])
def test_space_that_is_not_a_mapping_is_rejected(raw):
    with pytest.raises(SearchSpaceError, match=r"^search_space: "):
        parse_search_space(raw)


def test_empty_space_has_one_point_the_empty_one():
    space = parse_search_space({})
    assert len(space) == 0 and space.is_discrete and space.grid_size() == 1
    assert list(space.iter_grid()) == [{}] and space.contains({}) and not space.contains({"x": 1})


def test_nested_choice_error_names_the_nested_parameter():
    raw = {"model": {"_type": "choice", "_value": [
        {"_name": "svm", "C": {"_type": "loguniform", "_value": [0, 1]}}]}}
    with pytest.raises(SearchSpaceError, match=r"search_space\.model\[svm\]\.C: loguniform needs low > 0"):
        parse_search_space(raw)


NESTED = {
    "model": {"_type": "choice", "_value": [
        {"_name": "svm", "C": {"_type": "choice", "_value": [0.1, 1, 10]}, "kernel": "rbf"},
        {"_name": "tree", "depth": {"_type": "randint", "_value": [1, 4]}},
        "linear",
    ]},
    "batch": {"_type": "choice", "_value": [16, 32]},
}


def test_nested_choice_with_name():
    space = parse_search_space(NESTED)
    model = space["model"]
    assert isinstance(model, Categorical) and model.is_nested
    svm, tree, linear = model.options
    assert isinstance(svm, NestedOption) and svm.name == "svm" and dict(svm.constants) == {"kernel": "rbf"}
    assert svm.space.names == ["C"]
    assert isinstance(tree, NestedOption) and tree.space.names == ["depth"]
    assert linear == "linear"
    assert space.contains({"model": {"_name": "svm", "kernel": "rbf", "C": 10}, "batch": 16})
    assert space.contains({"model": {"_name": "tree", "depth": 3}, "batch": 32})
    assert space.contains({"model": "linear", "batch": 32})
    assert not space.contains({"model": {"_name": "tree", "depth": 4}, "batch": 32})  # randint high excluded
    assert not space.contains({"model": {"_name": "mlp"}, "batch": 32})
    # grid: 3 svm + 3 tree + 1 linear = 7 models, x 2 batches
    assert space.grid_size() == 14
    points = list(space.iter_grid())
    assert len(points) == 14
    assert {"model": {"_name": "svm", "kernel": "rbf", "C": 0.1}, "batch": 16} in points
    assert {"model": {"_name": "tree", "depth": 1}, "batch": 32} in points
    assert all(space.contains(p) for p in points)
    # random sampling reaches every option and stays in the space
    tuner = RandomTuner(seed=0)
    tuner.update_search_space(NESTED)
    samples = [tuner.generate_parameters(i) for i in range(200)]
    assert all(space.contains(s) for s in samples)
    names = {s["model"]["_name"] if isinstance(s["model"], dict) else s["model"] for s in samples}
    assert names == {"svm", "tree", "linear"}


# -- Polyaxon matrix forms ----------------------------------------------------------------------------------
LOGSPACE = [1.023292992280754, 1.077705253694322, 1.135010815672315, 1.1953635256737185, 1.2589254117941673]


@pytest.mark.parametrize("spec", [
    {"_type": "logspace", "_value": [0.01, 0.1, 5]},
    {"logspace": "0.01:0.1:5"},
    {"logspace": [0.01, 0.1, 5]},
    {"_type": "logspace", "_value": "0.01:0.1:5"},
])
def test_logspace_gives_numpy_logspace_values(spec):
    dim = parse_search_space({"lr": spec})["lr"]
    assert list(dim.grid_values()) == pytest.approx(LOGSPACE, rel=1e-12)
    assert list(dim.grid_values()) == pytest.approx(list(np.logspace(0.01, 0.1, 5)))
    assert 1.023 < dim.grid_values()[0] < 1.024 and 1.258 < dim.grid_values()[-1] < 1.26


@pytest.mark.parametrize("spec, expected", [
    ({"range": "0:10:3"}, [0, 3, 6, 9]),
    ({"_type": "range", "_value": [1, 2, 0.25]}, [1.0, 1.25, 1.5, 1.75]),
    ({"range": {"start": 0, "stop": 5, "step": 2}}, [0, 2, 4]),
    ({"linspace": "0:1:5"}, [0.0, 0.25, 0.5, 0.75, 1.0]),
    ({"_type": "linspace", "_value": [2, 4, 3]}, [2.0, 3.0, 4.0]),
    ({"geomspace": "1:1000:4"}, [1.0, 10.0, 100.0, 1000.0]),
    ({"_type": "geomspace", "_value": [2, 32, 5]}, [2.0, 4.0, 8.0, 16.0, 32.0]),
    ({"values": [1, "a", 2.5]}, [1, "a", 2.5]),
    ({"_type": "values", "_value": ["relu", "tanh"]}, ["relu", "tanh"]),
])
def test_matrix_forms(spec, expected):
    dim = parse_search_space({"p": spec})["p"]
    got = list(dim.grid_values())
    assert got == pytest.approx(expected) if all(isinstance(v, (int, float)) for v in expected) else got == expected
    if spec.get("range") == "0:10:3":
        assert all(type(v) is int for v in got)  # integer range gives ints


@pytest.mark.parametrize("spec, needle", [
    ({"range": "0:10:0"}, "gives no values"),
    ({"range": "5:0:1"}, "gives no values"),
    ({"linspace": "0:1"}, "start:stop:num"),
    ({"linspace": "0:1:2.5"}, "positive integer"),
    ({"logspace": "a:b:c"}, "start:stop:num"),
    ({"geomspace": "0:10:3"}, "non-zero"),
    ({"values": []}, "non-empty"),
    ({"linspace": "0:1:5", "other": 1}, "missing '_type'"),
])
def test_matrix_forms_invalid(spec, needle):
    with pytest.raises(SearchSpaceError) as info:
        parse_search_space({"depth": spec})
    assert str(info.value).startswith("search_space.depth:")
    assert needle in str(info.value)


# -- grids ----------------------------------------------------------------------------------------------------
def _key(point):
    return json.dumps(point, sort_keys=True)


def test_grid_is_complete_ordered_and_without_duplicates():
    raw = {
        "opt": {"_type": "choice", "_value": ["sgd", "adam"]},
        "layers": {"_type": "randint", "_value": [1, 4]},
        "dropout": {"_type": "quniform", "_value": [0, 0.5, 0.25]},
        "lr": {"logspace": "-3:-1:3"},
        "units": {"_type": "qloguniform", "_value": [8, 32, 8]},
    }
    space = parse_search_space(raw)
    per_dim = {d.name: d.grid_values() for d in space}
    assert per_dim["layers"] == [1, 2, 3]
    assert per_dim["dropout"] == [0, 0.25, 0.5]
    assert per_dim["units"] == [8, 16, 24, 32] and all(type(u) is int for u in per_dim["units"])
    expected = [dict(zip(per_dim, combo)) for combo in itertools.product(*per_dim.values())]
    points = list(space.iter_grid())
    assert space.grid_size() == len(expected) == 2 * 3 * 3 * 3 * 4
    assert points == expected  # complete, first dimension slowest
    assert len({_key(p) for p in points}) == len(points)
    assert all(space.contains(p) for p in points)


def test_quantised_grid_includes_bounds_not_on_the_q_grid():
    dim = parse_search_space({"x": {"_type": "quniform", "_value": [0.1, 1, 0.25]}})["x"]
    values = dim.grid_values()
    assert values[0] == pytest.approx(0.1) and values[-1] == pytest.approx(1.0)
    assert len(set(values)) == len(values)
    assert values == sorted(values)


# -- RandomTuner ----------------------------------------------------------------------------------------------
def _dim_strategy(i):
    name = f"p{i}"
    finite = st.floats(-100, 100, allow_nan=False)
    pos = st.floats(1e-3, 100, allow_nan=False)
    q = st.sampled_from([0.1, 0.5, 1, 2, 5])

    def bounded(lo, hi_delta):
        return st.tuples(lo, hi_delta).map(lambda t: (t[0], t[0] + t[1]))

    return st.one_of(
        st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=3), st.booleans()), min_size=1, max_size=5,
                 unique_by=lambda v: (type(v), v)).map(lambda v: {"_type": "choice", "_value": v}),
        bounded(st.integers(-50, 50), st.integers(1, 20)).map(lambda b: {"_type": "randint", "_value": list(b)}),
        bounded(finite, pos).map(lambda b: {"_type": "uniform", "_value": list(b)}),
        st.tuples(bounded(finite, pos), q).map(lambda t: {"_type": "quniform", "_value": [*t[0], t[1]]}),
        bounded(pos, pos).map(lambda b: {"_type": "loguniform", "_value": list(b)}),
        st.tuples(bounded(pos, pos), q).map(lambda t: {"_type": "qloguniform", "_value": [*t[0], t[1]]}),
        st.tuples(finite, pos).map(lambda t: {"_type": "normal", "_value": list(t)}),
        st.tuples(finite, pos, q).map(lambda t: {"_type": "qnormal", "_value": list(t)}),
        st.tuples(st.floats(-2, 2), st.floats(0.1, 1.5)).map(lambda t: {"_type": "lognormal", "_value": list(t)}),
        st.tuples(st.floats(-2, 2), st.floats(0.1, 1.5), q).map(lambda t: {"_type": "qlognormal", "_value": list(t)}),
    ).map(lambda spec: (name, spec))


spaces = st.integers(1, 4).flatmap(lambda n: st.tuples(*[_dim_strategy(i) for i in range(n)])).map(dict)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=spaces, seed=st.integers(0, 2**32 - 1))
def test_random_tuner_samples_always_lie_in_the_space(raw, seed):
    space = parse_search_space(raw)
    tuner = RandomTuner(seed=seed)
    tuner.update_search_space(raw)
    for i in range(25):
        point = tuner.generate_parameters(i)
        assert space.contains(point), (point, raw)
        json.dumps(point)  # what the engine stores and hands to the trial


def test_qlognormal_zero_is_in_the_space():
    """qlognormal can sample 0 (round(exp(x)/q)*q, as in NNI): such points lie in the space."""
    raw = {"p": {"_type": "qlognormal", "_value": [0.0, 1.0, 0.5]}}
    space = parse_search_space(raw)
    tuner = RandomTuner(seed=0)
    tuner.update_search_space(raw)
    points = [tuner.generate_parameters(i) for i in range(200)]
    assert any(p["p"] == 0 for p in points)  # exp(N(0, 1)) < 0.25 happens ~8% of the time
    assert all(space.contains(p) for p in points), [p for p in points if not space.contains(p)][:3]


def test_random_tuner_is_reproducible_for_a_seed():
    def draw(seed):
        tuner = RandomTuner(seed=seed)
        tuner.update_search_space(ALL_NNI)
        return [tuner.generate_parameters(i) for i in range(20)]

    first = draw(42)
    assert draw(42) == first
    assert draw(43) != first
    assert len({_key(p) for p in first}) == 20  # continuous dims: independent draws
    space = parse_search_space(ALL_NNI)
    for p in first:
        assert space.contains(p), p
        assert isinstance(p["ri"], int) and isinstance(p["qu"], int)  # integral quantised bounds give ints


def test_random_tuner_covers_the_range():
    tuner = RandomTuner(seed=1)
    tuner.update_search_space({"x": {"_type": "uniform", "_value": [0, 1]},
                               "k": {"_type": "randint", "_value": [0, 4]},
                               "lr": {"_type": "loguniform", "_value": [1e-5, 1]}})
    points = [tuner.generate_parameters(i) for i in range(400)]
    xs = [p["x"] for p in points]
    assert min(xs) < 0.05 and max(xs) > 0.95
    assert {p["k"] for p in points} == {0, 1, 2, 3}
    # log-uniform: about as many draws per decade
    below = sum(p["lr"] < 1e-3 for p in points) / len(points)
    assert 0.3 < below < 0.5  # 2 of 5 decades


# -- GridTuner --------------------------------------------------------------------------------------------------
GRID_2x3 = {"a": {"_type": "choice", "_value": [1, 2]}, "b": {"linspace": "0:1:3"}}


def test_grid_tuner_enumerates_everything_once_then_stops():
    tuner = GridTuner()
    tuner.update_search_space(GRID_2x3)
    points = [tuner.generate_parameters(i) for i in range(6)]
    assert points == [{"a": a, "b": b} for a in (1, 2) for b in (0.0, 0.5, 1.0)]
    with pytest.raises(NoMoreTrials):
        tuner.generate_parameters(6)
    with pytest.raises(NoMoreTrials):
        tuner.generate_parameters(7)


def test_grid_tuner_skips_imported_points():
    tuner = GridTuner()
    tuner.update_search_space(GRID_2x3)
    tuner.import_data([{"parameter": {"a": 1, "b": 0.5}, "value": 0.3},
                       {"parameter": {"a": 2, "b": 1.0}, "value": 0.1}])
    rest = []
    while True:
        try:
            rest.append(tuner.generate_parameters(len(rest)))
        except NoMoreTrials:
            break
    assert len(rest) == 4
    assert {"a": 1, "b": 0.5} not in rest and {"a": 2, "b": 1.0} not in rest


@pytest.mark.parametrize("spec", [
    {"_type": "uniform", "_value": [0, 1]},
    {"_type": "loguniform", "_value": [1e-4, 1]},
    {"_type": "normal", "_value": [0, 1]},
    {"_type": "qnormal", "_value": [0, 1, 1]},  # unbounded even when quantised
])
def test_grid_tuner_rejects_continuous_dimensions_saying_how_to_discretise(spec):
    tuner = GridTuner()
    with pytest.raises(SearchSpaceError) as info:
        tuner.update_search_space({"a": {"_type": "choice", "_value": [1]}, "learning_rate": spec})
    message = str(info.value)
    assert "'learning_rate'" in message and "continuous" in message
    assert "choice" in message and "quniform" in message and "linspace" in message


# -- registry -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, cls", [
    ("random", RandomTuner), ("Random", RandomTuner), ("RANDOM", RandomTuner), ("random_search", RandomTuner),
    ("GridSearch", GridTuner), ("grid", GridTuner), ("grid-search", GridTuner), ("Grid", GridTuner),
])
def test_tuner_registry_by_name(name, cls):
    assert tuner_class(name) is cls
    tuner = create_tuner(name, {"optimize_mode": "minimize", "seed": 5})
    assert isinstance(tuner, cls) and tuner.optimize_mode == "minimize" and not tuner.maximize


@pytest.mark.parametrize("name, guess", [("Randon", "random"), ("gird", "grid"), ("GridSerch", "grid")])
def test_unknown_tuner_suggests_the_closest_name(name, guess):
    with pytest.raises(TunerNotFound) as info:
        tuner_class(name)
    message = str(info.value)
    assert f"unknown tuner {name!r}" in message
    assert f"did you mean {guess!r}" in message.lower()


def test_unknown_tuner_without_a_close_match_lists_known_names():
    with pytest.raises(TunerNotFound) as info:
        tuner_class("Zqxwv9000xyz")
    assert "did you mean" not in str(info.value)
    assert "random" in str(info.value) and "grid" in str(info.value)


def test_bad_tuner_arguments_are_a_clear_error():
    with pytest.raises(ValueError, match="optimize_mode"):
        create_tuner("random", {"optimize_mode": "maximise_please"})
    with pytest.raises(ValueError, match="bad class_args"):
        create_tuner("random", {"learning_rate": 3})
