"""The Gaussian-process tuner: it finds good regions fast, handles log / integer / choice parameters, spreads
parallel asks, resumes from a replayed history, and refuses bad arguments in one line."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tuners import GpTuner, RandomTuner
from tuners.registry import create_tuner

BRANIN = {"x0": {"_type": "uniform", "_value": [-5, 10]}, "x1": {"_type": "uniform", "_value": [0, 15]}}


def branin(p: dict) -> float:
    x1, x2 = p["x0"], p["x1"]
    return (x2 - 5.1 / (4 * math.pi ** 2) * x1 ** 2 + 5 / math.pi * x1 - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) \
        * math.cos(x1) + 10


def best_of(tuner, space: dict, fn, n: int) -> float:
    tuner.update_search_space(space)
    best = math.inf
    for i in range(n):
        p = tuner.generate_parameters(i)
        v = fn(p)
        tuner.receive_trial_result(i, p, v)
        tuner.trial_end(i, True)
        best = min(best, v)
    return best


def test_gp_finds_branins_minimum_far_better_than_random_search():
    """Branin's minimum is 0.3979; 30 trials of the GP land next to it, random search does not."""
    gp = [best_of(GpTuner(optimize_mode="minimize", seed=s), BRANIN, branin, 30) - 0.397887 for s in range(3)]
    rnd = [best_of(RandomTuner(optimize_mode="minimize", seed=s), BRANIN, branin, 30) - 0.397887 for s in range(3)]
    assert max(gp) < 0.05, gp
    assert np.mean(gp) * 20 < np.mean(rnd), (gp, rnd)


def test_log_integer_and_choice_parameters():
    """A log-scale learning rate, an integer and a choice: suggestions are of the right type and the tuner
    homes in on lr ~ 1e-3, 4 layers and 'adam' (maximising)."""
    space = {"lr": {"_type": "loguniform", "_value": [1e-6, 1.0]}, "layers": {"_type": "randint", "_value": [1, 9]},
             "units": {"_type": "quniform", "_value": [16, 256, 16]},
             "opt": {"_type": "choice", "_value": ["sgd", "adam", "rmsprop"]}}

    def score(p: dict) -> float:
        return -((math.log10(p["lr"]) + 3) ** 2 + 0.3 * (p["layers"] - 4) ** 2 + {"sgd": 1, "adam": 0, "rmsprop": 0.5}[
            p["opt"]] + ((p["units"] - 128) / 64) ** 2)

    tuner = GpTuner(seed=1)
    tuner.update_search_space(space)
    seen = []
    for i in range(30):
        p = tuner.generate_parameters(i)
        assert isinstance(p["layers"], int) and 1 <= p["layers"] <= 8 and p["units"] % 16 == 0
        assert p["opt"] in ("sgd", "adam", "rmsprop") and 1e-6 <= p["lr"] <= 1.0
        tuner.receive_trial_result(i, p, score(p))
        seen.append((score(p), p))
    best = max(seen, key=lambda s: s[0])[1]
    assert best["opt"] == "adam" and abs(math.log10(best["lr"]) + 3) < 0.7 and abs(best["layers"] - 4) <= 1, best


def test_parallel_asks_do_not_collapse_onto_one_point():
    """Eight asks before any of them reports (kriging believers): eight distinct, spread-out points."""
    tuner = GpTuner(optimize_mode="minimize", seed=2)
    tuner.update_search_space(BRANIN)
    for i in range(8):
        p = tuner.generate_parameters(i)
        tuner.receive_trial_result(i, p, branin(p))
    batch = [tuner.generate_parameters(100 + j) for j in range(8)]
    unit = np.array([[(p["x0"] + 5) / 15, p["x1"] / 15] for p in batch])
    gaps = [np.linalg.norm(unit[a] - unit[b]) for a in range(8) for b in range(a)]
    assert min(gaps) > 0.01, gaps


def test_same_history_same_next_suggestion_after_a_resume():
    original = GpTuner(optimize_mode="minimize", seed=4)
    original.update_search_space(BRANIN)
    records = []
    for i in range(14):
        p = original.generate_parameters(i)
        original.receive_trial_result(i, p, branin(p))
        original.trial_end(i, True)
        records.append({"parameter": p, "value": branin(p)})
    resumed = GpTuner(optimize_mode="minimize", seed=4)
    resumed.update_search_space(BRANIN)
    resumed.import_data(records)
    assert resumed.generate_parameters(99) == original.generate_parameters(99)


def test_failed_trials_and_maximize_mode():
    tuner = GpTuner(seed=0)
    tuner.update_search_space(BRANIN)
    for i in range(10):
        p = tuner.generate_parameters(i)
        if i % 3 == 0:
            tuner.trial_end(i, False)  # no result
        else:
            tuner.receive_trial_result(i, p, float("nan") if i == 4 else -branin(p))
            tuner.trial_end(i, True)
    p = tuner.generate_parameters(10)
    assert -5 <= p["x0"] <= 10 and 0 <= p["x1"] <= 15


@pytest.mark.parametrize("args, message", [
    ({"utility": "pi"}, "utility: got 'pi', expected one of 'ei', 'ucb', 'poi'"),
    ({"kernel": "linear"}, "kernel: got 'linear', expected one of 'matern', 'rbf'"),
    ({"nu": 2.0}, "nu: got 2.0, expected 0.5, 1.5 or 2.5"),
    ({"cold_start_num": -1}, "cold_start_num: got -1, expected an integer >= 0"),
    ({"alpha": 0}, "alpha and length_scale > 0"),
])
def test_bad_arguments_are_one_line(args, message):
    with pytest.raises(ValueError) as info:
        create_tuner("gp", args)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_nni_class_args_are_accepted():
    tuner = create_tuner("GPTuner", {"optimize_mode": "minimize", "utility": "ucb", "kappa": 5, "xi": 0, "nu": 1.5,
                                     "alpha": 1e-6, "cold_start_num": 4, "selection_num_warm_up": 200,
                                     "selection_num_starting_points": 2})
    assert best_of(tuner, BRANIN, branin, 12) < 20
