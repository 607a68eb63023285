"""BOHB: Hyperband between NNI's min_budget and max_budget whose first-rung configurations come from a TPE fitted on
the results of the largest budget with enough of them; from config by name, seeded, and resumable."""
from __future__ import annotations

import pytest

from hpo import Experiment
from test_hyperband import drive
from tuners.bohb import BohbTuner
from tuners.hyperband import bracket_plan
from tuners.registry import create_tuner

SPACE = {"x": {"_type": "uniform", "_value": [0, 1]}, "k": {"_type": "choice", "_value": ["a", "b", "c"]}}
ARGS = {"optimize_mode": "maximize", "seed": 7, "min_budget": 1, "max_budget": 9, "eta": 3}


def make(**kwargs) -> BohbTuner:
    tuner = BohbTuner(**{**ARGS, **kwargs})
    tuner.update_search_space(SPACE)
    return tuner


def test_brackets_run_from_min_budget_to_max_budget_and_repeat():
    assert bracket_plan(27, 3, 3) == [[(9, 3.0), (3, 9.0), (1, 27.0)], [(5, 9.0), (1, 27.0)], [(3, 27.0)]]
    tuner = make(min_budget=3, max_budget=27, rounds=2)
    budgets = [p["TRIAL_BUDGET"] for _, p, _ in drive(tuner, 100, concurrency=1)]
    one_round = [3] * 9 + [9] * 3 + [27] + [9] * 5 + [27] + [27] * 3
    assert budgets == one_round * 2
    assert len(drive(make(), 200, concurrency=1)) == 200  # rounds: by default the trial limit ends the search


def test_the_model_is_fitted_on_the_largest_budget_with_enough_results():
    tuner = make(min_points_in_model=4)
    assert tuner.model_budget() is None  # no results: random draws
    drive(tuner, 3, concurrency=1)
    assert tuner.model_budget() is None  # 3 results at budget 1, fewer than max(d + 1, 4) = 4
    drive(tuner, 1, concurrency=1, first_id=4)
    assert tuner.model_budget() == 1
    drive(tuner, 5 + 3, concurrency=1, first_id=5)  # the rest of rung 0 and rung 1 (budget 3): 3 results there
    assert tuner.model_budget() == 1
    drive(tuner, 1 + 4, concurrency=1, first_id=13)  # rung 2, then 4 of bracket 1's 5 at budget 3: 7 results at 3
    assert tuner.model_budget() == 3
    assert make().model_budget() is None and make()._model_points() == 3  # default: the number of parameters + 1


def test_hpbandsters_rule_needs_more_than_d_results_besides_its_good_set():
    tuner = make(model_rule="hpbandster")  # d = 2: a good set of at least 3, and more than 2 others
    assert tuner._model_points() == 6
    drive(tuner, 5, concurrency=1)
    assert tuner.model_budget() is None
    drive(tuner, 1, concurrency=1, first_id=6)
    assert tuner.model_budget() == 1
    assert len(drive(tuner, 40, concurrency=1, first_id=7)) == 40  # model draws with the good set of >= 3
    with pytest.raises(ValueError, match="model_rule"):
        BohbTuner(model_rule="kde")


def test_the_good_set_has_at_least_min_good_rows():
    import numpy as np

    from tuners._tpe_core import TpeSettings, split_good

    loss = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert split_good(loss, TpeSettings(gamma=0.15)).tolist() == [i in (1, 3) for i in range(10)]
    assert split_good(loss, TpeSettings(gamma=0.15, min_good=4)).tolist() == [i in (1, 2, 3, 4) for i in range(10)]
    assert split_good(loss[:3], TpeSettings(gamma=0.15, min_good=4)).all()  # never more than there are


def test_model_draws_move_to_where_the_good_results_are():
    """With enough results, model-based draws concentrate near the best x (the score grows with x)."""
    tuner = make(random_fraction=0.0, max_budget=27, rounds=3)
    trials = drive(tuner, 150, concurrency=1)
    first = [p["x"] for _, p, _ in trials if p["TRIAL_BUDGET"] == 1]
    assert sum(first[:10]) / 10 < 0.75 < sum(first[-20:]) / 20


@pytest.mark.parametrize("stop_after", [5, 12, 17, 30])
def test_a_replayed_history_gives_the_same_brackets_and_next_trials(stop_after):
    original = make()
    history = drive(original, stop_after, fail={3})
    resumed = make()
    resumed.import_data([{"parameter": p, "value": v, "parameter_id": i} for i, p, v in history])
    assert resumed.brackets_state() == original.brackets_state()
    first = len(history) + 1
    assert drive(resumed, 25, first_id=first) == drive(original, 25, first_id=first)


def test_by_name_with_nnis_class_args_and_bad_args_get_one_line_errors():
    tuner = create_tuner("BOHB", {"optimize_mode": "minimize", "min_budget": 1, "max_budget": 27, "eta": 3,
                                  "min_points_in_model": 5, "top_n_percent": 20, "num_samples": 32,
                                  "random_fraction": 0.2, "bandwidth_factor": 2, "min_bandwidth": 0.001})
    assert isinstance(tuner, BohbTuner) and tuner.class_args()["top_n_percent"] == 20
    assert BohbTuner(**tuner.class_args()).class_args() == tuner.class_args()
    for bad, message in [({"top_n_percent": 0}, "top_n_percent"), ({"num_samples": 0}, "num_samples"),
                         ({"max_budget": 0.5}, "max_budget"), ({"min_budget": 0}, "min_budget"),
                         ({"min_points_in_model": 0}, "min_points_in_model"), ({"resume": "yes"}, "resume"),
                         ({"bandwidth_factor": -1}, "bandwidth_factor"), ({"eta": 1}, "eta")]:
        with pytest.raises(ValueError, match=message) as info:
            BohbTuner(**bad)
        assert "\n" not in str(info.value)


TRIAL = """
import hpo
p = hpo.get_next_parameter()
hpo.report_final_result(p["x"] * p["TRIAL_BUDGET"] + {"a": 0.0, "b": 0.5, "c": 1.0}[p["k"]])
"""


def test_a_resumed_experiment_from_config_runs_the_trials_an_uninterrupted_one_would(make_experiment):
    args = {**ARGS, "min_points_in_model": 3}
    exp = make_experiment(TRIAL, tuner="bohb", search_space=SPACE, max_trial_number=12)
    exp.config.tuner.class_args = args
    assert exp.run(port=0) is True
    resumed = Experiment.resume(exp.id, port=0, max_trial_number=30)
    assert resumed.get_status() == "DONE"
    trials = [t["parameters"] for t in sorted(resumed.list_trial_jobs(), key=lambda t: t["seq"])]
    uninterrupted = make(min_points_in_model=3)
    assert trials == [p for _, p, _ in drive(uninterrupted, 30, concurrency=1)]
