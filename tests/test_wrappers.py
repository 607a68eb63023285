"""HyperoptTuner (tpe / rand / anneal) and OptunaTuner (tpe / cmaes / qmc / random / gp) wrappers.

Exact translation of the search space, seeding, optimize_mode, pending asks, import_data,
failed trials, exhaustion of finite spaces, class_args and names.
"""
from __future__ import annotations

import importlib.util
import math
import statistics
from typing import Any, Callable

import pytest

from hpo.search_space import parse_search_space
from test_tuner_contract import _drive
from test_tuner_contract import _objective as _score  # the contract suite's deterministic score
from tuners.base import NoMoreTrials, Tuner
from tuners.hyperopt_tuner import AnnealTuner, HyperoptTuner
from tuners.optuna_tuner import OptunaTuner
from tuners.registry import create_tuner, tuner_class

HAS_TORCH = importlib.util.find_spec("torch") is not None

# Every NNI type, integer and float quantisation, matrix forms, non-primitive and look-alike
# options (1, 1.0, True), and a two-level nested choice with constants.
SPACE = {
    "lr": {"_type": "loguniform", "_value": [1e-5, 1e-1]},
    "dropout": {"_type": "uniform", "_value": [0.0, 0.5]},
    "units": {"_type": "quniform", "_value": [16, 256, 16]},  # ints, step grid valid
    "odd": {"_type": "quniform", "_value": [1, 10, 4]},  # ints 1, 4, 8 (not a step grid from low)
    "frac": {"_type": "quniform", "_value": [0.0, 1.0, 0.25]},  # floats
    "decay": {"_type": "qloguniform", "_value": [1, 1000, 1]},  # ints
    "qlog": {"_type": "qloguniform", "_value": [0.5, 50, 0.5]},  # floats
    "layers": {"_type": "randint", "_value": [3, 5]},  # 3 or 4, never 5
    "noise": {"_type": "normal", "_value": [0, 1]},
    "qnoise": {"_type": "qnormal", "_value": [0, 2, 0.5]},
    "scale": {"_type": "lognormal", "_value": [0, 1]},
    "qscale": {"_type": "qlognormal", "_value": [2, 0.5, 1]},
    "act": {"_type": "choice", "_value": ["relu", "tanh", 3, 0.5]},
    "odd_options": {"_type": "choice", "_value": [1, 1.0, True, None, [1, 2], {"k": 1}]},
    "grid_lr": {"logspace": "0.01:0.1:5"},
    "steps": {"_type": "range", "_value": [0, 10, 3]},
    "optimizer": {"_type": "choice", "_value": [
        {"_name": "sgd", "momentum": {"_type": "uniform", "_value": [0, 0.99]},
         "nesterov": {"_type": "choice", "_value": [True, False]}},
        {"_name": "adam", "beta1": {"_type": "loguniform", "_value": [0.5, 0.999]}, "amsgrad": False,
         "schedule": {"_type": "choice", "_value": [
             {"_name": "cosine", "warmup": {"_type": "randint", "_value": [0, 3]}},
             {"_name": "constant"}]}},
        {"_name": "none"},
    ]},
}
INT_PARAMS = ("units", "odd", "decay", "layers", "qscale", "steps")
FLOAT_PARAMS = ("lr", "dropout", "frac", "qlog", "noise", "qnoise", "scale", "grid_lr")
SMALL = {"a": {"_type": "choice", "_value": ["x", "y", "z"]}, "b": {"_type": "randint", "_value": [0, 2]}}
ONE_D = {"x": {"_type": "uniform", "_value": [0.0, 1.0]}}

# name -> factory(optimize_mode=..., seed=...)
ALGORITHMS: dict[str, Callable[..., Tuner]] = {
    "hyperopt-tpe": lambda **kw: HyperoptTuner("tpe", **kw),
    "hyperopt-rand": lambda **kw: HyperoptTuner("rand", **kw),
    "hyperopt-anneal": lambda **kw: HyperoptTuner("anneal", **kw),
    "optuna-tpe": lambda **kw: OptunaTuner("tpe", **kw),
    "optuna-cmaes": lambda **kw: OptunaTuner("cmaes", **kw),
    "optuna-qmc": lambda **kw: OptunaTuner("qmc", **kw),
    "optuna-random": lambda **kw: OptunaTuner("random", **kw),
}
if HAS_TORCH:  # optuna's GPSampler needs PyTorch
    ALGORITHMS["optuna-gp"] = lambda **kw: OptunaTuner("gp", **kw)
MODEL_BASED = ["hyperopt-tpe", "hyperopt-anneal", "optuna-tpe", "optuna-cmaes"]


def _make(name: str, raw: dict, **kwargs: Any) -> Tuner:
    tuner = ALGORITHMS[name](**kwargs)
    tuner.update_search_space(raw)
    return tuner


@pytest.fixture(params=list(ALGORITHMS))
def algo(request) -> str:
    return request.param


# -- translation ------------------------------------------------------------------------------------------------
def test_every_suggestion_lies_in_the_space_with_exact_types(algo):
    space = parse_search_space(SPACE)
    points = _drive(_make(algo, SPACE, seed=7), 40)
    assert len(points) == 40
    for p in points:
        assert space.contains(p), p
        for name in INT_PARAMS:
            assert type(p[name]) is int, (name, p[name])
        for name in FLOAT_PARAMS:
            assert type(p[name]) is float, (name, p[name])
        assert p["layers"] in (3, 4)
        assert p["odd"] in (1, 4, 8)
        assert p["steps"] in (0, 3, 6, 9)
        opt = p["optimizer"]
        if opt["_name"] == "sgd":
            assert set(opt) == {"_name", "momentum", "nesterov"} and type(opt["nesterov"]) is bool
        elif opt["_name"] == "adam":
            assert set(opt) == {"_name", "beta1", "amsgrad", "schedule"} and opt["amsgrad"] is False
            assert opt["schedule"]["_name"] in ("cosine", "constant")
            if opt["schedule"]["_name"] == "cosine":
                assert opt["schedule"] == {"_name": "cosine", "warmup": opt["schedule"]["warmup"]}
                assert opt["schedule"]["warmup"] in (0, 1, 2)
            else:
                assert opt["schedule"] == {"_name": "constant"}
        else:
            assert opt == {"_name": "none"}


@pytest.mark.parametrize("name", ["hyperopt-rand", "optuna-random"])
def test_random_algorithms_cover_every_option_and_the_randint_range_exactly(name):
    points = _drive(_make(name, SPACE, seed=1), 120)
    assert {p["layers"] for p in points} == {3, 4}
    assert {p["steps"] for p in points} == {0, 3, 6, 9}
    odd = [p["odd_options"] for p in points]  # 1, 1.0 and True stay distinct, lists and dicts come back as given
    for option in (1, 1.0, True, None, [1, 2], {"k": 1}):
        assert any(type(o) is type(option) and o == option for o in odd), option
    assert {p["optimizer"]["_name"] for p in points} == {"sgd", "adam", "none"}
    schedules = {p["optimizer"]["schedule"]["_name"] for p in points if p["optimizer"]["_name"] == "adam"}
    assert schedules == {"cosine", "constant"}


def test_hyperopt_labels_and_nested_choice_translate_to_hp_choice_of_dicts():
    tuner = _make("hyperopt-tpe", SPACE, seed=0)
    labels = set(tuner._domain.params)
    assert {"lr", "layers", "optimizer", "optimizer[sgd].momentum", "optimizer[adam].beta1",
            "optimizer[adam].schedule", "optimizer[adam].schedule[cosine].warmup"} <= labels
    assert tuner._domain.params["layers"].name == "randint"
    assert tuner._domain.params["units"].name == "quniform"
    assert tuner._domain.params["decay"].name == "qloguniform"


def test_optuna_distributions_and_conditional_parameter_names():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    tuner = _make("optuna-random", SPACE, seed=0)
    _drive(tuner, 60)
    dists: dict[str, Any] = {}
    for trial in tuner.study.trials:
        dists.update(trial.distributions)
    assert dists["layers"] == IntDistribution(3, 4)
    assert dists["lr"] == FloatDistribution(1e-5, 1e-1, log=True)
    assert dists["units"] == IntDistribution(16, 256, step=16)  # suggest_int(step=q): grid exactly ours
    assert dists["frac"] == FloatDistribution(0.0, 1.0, step=0.25)
    assert dists["odd"] == FloatDistribution(1, 10)  # 1, 4, 8 is not low + k*q: rounded by us
    assert dists["decay"] == IntDistribution(1, 1000, log=True)
    assert dists["qlog"] == FloatDistribution(0.5, 50, log=True)
    assert dists["noise"] == FloatDistribution(1e-6, 1 - 1e-6)  # the quantile space
    assert dists["act"] == CategoricalDistribution(["relu", "tanh", 3, 0.5])  # primitives as themselves
    assert dists["odd_options"] == CategoricalDistribution(list(range(6)))  # index-encoded
    assert dists["optimizer"] == CategoricalDistribution([0, 1, 2])
    assert {"optimizer[sgd].momentum", "optimizer[adam].beta1", "optimizer[adam].schedule",
            "optimizer[adam].schedule[cosine].warmup"} <= set(dists)
    for trial in tuner.study.trials:  # conditional: only the chosen option's parameters
        if trial.params["optimizer"] == 2:
            assert not any(k.startswith("optimizer[") for k in trial.params)


def test_optuna_normal_types_follow_the_prior_through_the_quantile_space():
    tuner = _make("optuna-random", {"n": {"_type": "normal", "_value": [3, 2]},
                                    "ln": {"_type": "lognormal", "_value": [0, 0.5]}}, seed=4)
    points = _drive(tuner, 400)
    ns = [p["n"] for p in points]
    logs = [math.log(p["ln"]) for p in points]
    assert abs(statistics.mean(ns) - 3) < 0.3 and abs(statistics.stdev(ns) - 2) < 0.3
    assert abs(statistics.mean(logs)) < 0.08 and abs(statistics.stdev(logs) - 0.5) < 0.08


# -- seeds, modes --------------------------------------------------------------------------------------------------
def test_same_seed_reproduces_and_another_seed_differs(algo):
    first = _drive(_make(algo, SPACE, seed=11), 25)
    assert first == _drive(_make(algo, SPACE, seed=11), 25)
    assert first != _drive(_make(algo, SPACE, seed=12), 25)


@pytest.mark.parametrize("name", MODEL_BASED)
def test_optimize_mode_sets_the_direction(name):
    def f(p: dict) -> float:
        return -(p["x"] - 0.7) ** 2  # max at 0.7 (f = 0), min at 0 (f = -0.49)

    tail = {}
    for mode in ("maximize", "minimize"):
        points = _drive(_make(name, ONE_D, optimize_mode=mode, seed=5), 40, f)
        tail[mode] = statistics.mean(f(p) for p in points[-15:])
    # uniform random search averages -0.123 on either side
    assert tail["maximize"] > -0.09, tail
    assert tail["minimize"] < -0.15 and tail["minimize"] < tail["maximize"] - 0.1, tail


# -- pending, failures, import ------------------------------------------------------------------------------------
def test_pending_asks_before_tells_and_failures_are_cleaned_up(algo):
    space = parse_search_space(SPACE)
    tuner = _make(algo, SPACE, seed=3)
    first = [tuner.generate_parameters(pid) for pid in range(1, 7)]  # six concurrent trials
    assert all(space.contains(p) for p in first)
    for pid in (4, 1, 6):  # results arrive out of order
        tuner.receive_trial_result(pid, first[pid - 1], _score(first[pid - 1]))
        tuner.trial_end(pid, True)
    tuner.trial_end(2, False)  # failed without reporting
    tuner.trial_end(3, True)  # "succeeded" without a final result
    tuner.receive_trial_result(5, first[4], float("nan"))  # no usable result
    tuner.trial_end(5, False)
    tuner.trial_end(4, False)  # a late failure after a result changes nothing
    assert tuner._pending == {}
    more = _drive(tuner, 10)
    assert len(more) == 10 and all(space.contains(p) for p in more)
    if isinstance(tuner, OptunaTuner):
        from optuna.trial import TrialState
        states = [t.state for t in tuner.study.trials[:6]]
        assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE,
                          TrialState.FAIL, TrialState.COMPLETE]
        assert tuner.study.trials[0].value == _score(first[0])
    else:
        import hyperopt
        docs = tuner._trials._dynamic_trials[:6]
        assert [d["state"] for d in docs] == [hyperopt.JOB_STATE_DONE, hyperopt.JOB_STATE_ERROR,
                                              hyperopt.JOB_STATE_ERROR, hyperopt.JOB_STATE_DONE,
                                              hyperopt.JOB_STATE_ERROR, hyperopt.JOB_STATE_DONE]
        assert docs[0]["result"]["loss"] == -_score(first[0])  # maximise: loss = -value


def test_many_pending_then_interleaved(algo):
    """The engine's pattern: keep N trials running, tell one, ask one."""
    space = parse_search_space(SPACE)
    tuner = _make(algo, SPACE, seed=9)
    running = {pid: tuner.generate_parameters(pid) for pid in range(1, 5)}
    for pid in range(5, 30):
        done = min(running)
        tuner.receive_trial_result(done, running[done], _score(running.pop(done)))
        tuner.trial_end(done, True)
        running[pid] = tuner.generate_parameters(pid)
        assert space.contains(running[pid])
    assert set(tuner._pending) == set(running)


def test_import_data_adds_finished_trials_and_skips_none(algo):
    history = _drive(_make("optuna-random", SPACE, seed=1), 12)
    records = [{"parameter": p, "value": _score(p)} for p in history]
    records[2]["value"] = None
    records.append({"parameter": {"not": "in the space"}, "value": 1.0})  # from another space: ignored
    tuner = _make(algo, SPACE, seed=2, optimize_mode="minimize")
    tuner.import_data(records)
    if isinstance(tuner, OptunaTuner):
        trials = tuner.study.trials
        assert len(trials) == 11 and all(t.state.name == "COMPLETE" for t in trials)
        assert [t.value for t in trials] == [r["value"] for r in records[:12] if r["value"] is not None]
    else:
        docs = tuner._trials.trials
        assert len(docs) == 11
        assert [d["result"]["loss"] for d in docs] == [r["value"] for r in records[:12] if r["value"] is not None]
    space = parse_search_space(SPACE)
    assert all(space.contains(p) for p in _drive(tuner, 5))


@pytest.mark.parametrize("name", ["hyperopt-tpe", "optuna-tpe"])
def test_imported_results_steer_the_model(name):
    def f(p: dict) -> float:
        return -abs(p["x"] - 0.8)

    records = [{"parameter": {"x": i / 40}, "value": f({"x": i / 40})} for i in range(41)]
    tuner = _make(name, ONE_D, seed=3)
    tuner.import_data(records)
    points = _drive(tuner, 10, f)
    assert statistics.mean(abs(p["x"] - 0.8) for p in points) < 0.2  # uniform random search: 0.34


def test_a_new_search_space_keeps_what_still_fits(algo):
    tuner = _make(algo, ONE_D, seed=0)
    _drive(tuner, 5)
    wider = {**ONE_D, "y": {"_type": "choice", "_value": [1, 2]}}
    tuner.update_search_space(wider)
    space = parse_search_space(wider)
    assert all(space.contains(p) for p in _drive(tuner, 5))


def test_finite_spaces_are_exhausted_without_repeats(algo):
    tuner = _make(algo, SMALL, seed=0)
    seen = [tuple(sorted(p.items())) for p in _drive(tuner, 20)]
    assert len(seen) == len(set(seen)) == 6
    with pytest.raises(NoMoreTrials):
        tuner.generate_parameters(99)


def test_finite_space_counts_imported_points_as_tried(algo):
    tuner = _make(algo, SMALL, seed=0)
    tuner.import_data([{"parameter": {"a": "x", "b": 0}, "value": 1.0},
                       {"parameter": {"a": "y", "b": 1}, "value": None}])
    rest = {tuple(sorted(p.items())) for p in _drive(tuner, 20)}
    assert len(rest) == 4 and (("a", "x"), ("b", 0)) not in rest and (("a", "y"), ("b", 1)) not in rest


# -- construction, class_args, names ------------------------------------------------------------------------------
def test_class_args_round_trip(algo):
    original = _make(algo, SPACE, optimize_mode="minimize", seed=5)
    args = original.class_args()
    assert args["optimize_mode"] == "minimize" and args["seed"] == 5
    clone = type(original)(**args)
    clone.update_search_space(SPACE)
    assert _drive(original, 12) == _drive(clone, 12)


def test_optuna_sampler_kwargs_and_instances():
    import optuna
    tuner = OptunaTuner("tpe", seed=1, n_startup_trials=3)
    assert tuner.sampler._n_startup_trials == 3
    assert tuner.class_args() == {"sampler": "tpe", "optimize_mode": "maximize", "seed": 1, "n_startup_trials": 3}
    instance = OptunaTuner(optuna.samplers.RandomSampler(seed=4), optimize_mode="minimize")
    assert instance.class_args()["sampler"] == "random"
    instance.update_search_space(ONE_D)
    assert instance.study.direction == optuna.study.StudyDirection.MINIMIZE
    by_path = OptunaTuner("optuna.samplers.RandomSampler", seed=4)
    assert isinstance(by_path.sampler, optuna.samplers.RandomSampler)
    assert OptunaTuner(**by_path.class_args()).class_args() == by_path.class_args()


@pytest.mark.parametrize("make, match", [
    (lambda: OptunaTuner("bayes"), "sampler"),
    (lambda: OptunaTuner("tpe", no_such_option=1), "sampler arguments"),
    (lambda: OptunaTuner(__import__("optuna").samplers.TPESampler(), n_startup_trials=2), "sampler_kwargs"),
    (lambda: HyperoptTuner("bayes"), "algorithm_name"),
    (lambda: HyperoptTuner("tpe", optimize_mode="best"), "optimize_mode"),
    (lambda: OptunaTuner("tpe", optimize_mode="best"), "optimize_mode"),
])
def test_bad_arguments_are_rejected_clearly(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.skipif(HAS_TORCH, reason="PyTorch is installed")
def test_gp_sampler_without_torch_says_what_is_missing():
    with pytest.raises(ImportError, match="PyTorch"):
        OptunaTuner("gp")


@pytest.mark.parametrize("name, cls, algorithm", [
    ("Anneal", AnnealTuner, "anneal"), ("anneal", AnnealTuner, "anneal"),
    ("Hyperopt", HyperoptTuner, "tpe"), ("hyperopt_tuner", HyperoptTuner, "tpe"),
    ("Optuna", OptunaTuner, "tpe"), ("optuna-tuner", OptunaTuner, "tpe"),
])
def test_found_by_nni_names(name, cls, algorithm):
    assert tuner_class(name) is cls
    tuner = create_tuner(name, {"optimize_mode": "minimize", "seed": 3})
    assert type(tuner) is cls and tuner.optimize_mode == "minimize"
    assert getattr(tuner, "algorithm_name", getattr(tuner, "sampler_name", None)) == algorithm


def test_create_tuner_with_algorithm_and_sampler_args():
    assert create_tuner("hyperopt", {"algorithm_name": "rand"}).algorithm_name == "rand"
    assert create_tuner("Hyperopt", {"algorithm_name": "random_search"}).algorithm_name == "rand"
    assert create_tuner("Optuna", {"sampler": "cmaes", "seed": 2}).sampler_name == "cmaes"
    anneal = create_tuner("Anneal", {"seed": 1})
    assert anneal.algorithm_name == "anneal" and anneal.class_args() == {"optimize_mode": "maximize", "seed": 1}


# -- through the engine --------------------------------------------------------------------------------------------
ENGINE_TRIAL = """
import sys, hpo
p = hpo.get_next_parameter()
if p["opt"]["_name"] == "bad":
    sys.exit(3)  # fails without reporting: the tuner must not keep it pending
hpo.report_final_result(p["x"] + p["k"])
"""
ENGINE_SPACE = {"x": {"_type": "uniform", "_value": [0, 1]}, "k": {"_type": "randint", "_value": [0, 3]},
                "opt": {"_type": "choice", "_value": [{"_name": "good"}, {"_name": "bad"}]}}


@pytest.mark.parametrize("name, args", [("Optuna", {"sampler": "tpe", "seed": 1}), ("Anneal", {"seed": 1})])
def test_concurrent_experiment_by_name(make_experiment, name, args):
    import threading
    exp = make_experiment(ENGINE_TRIAL, tuner=name, search_space=ENGINE_SPACE, trial_concurrency=3,
                          max_trial_number=9, max_failed_trials=100)  # half the space fails, maybe the first 5
    exp.config.tuner.class_args = args
    done = threading.Event()
    thread = threading.Thread(target=lambda: (exp.run(port=0), done.set()), daemon=True)
    thread.start()
    if not done.wait(60):
        exp.stop()
        pytest.fail(f"the experiment did not finish (status {exp.get_status()})")
    trials = exp.list_trial_jobs()
    assert exp.get_status() == "DONE" and len(trials) == 9
    space = parse_search_space(ENGINE_SPACE)
    assert all(space.contains(t["parameters"]) for t in trials)
    for t in trials:
        assert t["status"] == ("FAILED" if t["parameters"]["opt"]["_name"] == "bad" else "SUCCEEDED")
