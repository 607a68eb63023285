"""Hyperband: brackets of successive halving, and a resumed search that continues its brackets (the history
replayed gives the same bracket state, and the same trials next)."""
from __future__ import annotations

from collections import deque

import pytest

from hpo import Experiment
from tuners.hyperband import HyperbandTuner, bracket_plan

SPACE = {"x": {"_type": "uniform", "_value": [0, 1]}, "k": {"_type": "choice", "_value": ["a", "b", "c"]}}
ARGS = {"optimize_mode": "maximize", "seed": 7, "R": 9, "eta": 3}


def score(params: dict) -> float:
    return params["x"] * params["TRIAL_BUDGET"] + {"a": 0.0, "b": 0.5, "c": 1.0}[params["k"]]


def make(sampler: str = "tpe") -> HyperbandTuner:
    tuner = HyperbandTuner(**ARGS, sampler=sampler)
    tuner.update_search_space(SPACE)
    return tuner


def drive(tuner: HyperbandTuner, n: int, concurrency: int = 3, first_id: int = 1,
          fail: set[int] = frozenset()) -> list[tuple[int, dict, float | None]]:
    """Ask up to ``concurrency`` at a time, end the oldest first, until ``n`` trials ended (none left running);
    trial ids in ``fail`` end without a result.  Returns (id, params, value) in id order."""
    done: list[tuple[int, dict, float | None]] = []
    running: deque[tuple[int, dict]] = deque()
    next_id = first_id
    while len(done) < n:
        while len(running) < concurrency and len(done) + len(running) < n:
            try:
                params = tuner.generate_parameters(next_id)
            except Exception:  # TryLater / NoMoreTrials: wait for the running ones
                break
            running.append((next_id, params))
            next_id += 1
        if not running:
            break
        pid, params = running.popleft()
        value = None if pid in fail else score(params)
        if value is not None:
            tuner.receive_trial_result(pid, params, value)
        tuner.trial_end(pid, value is not None)
        done.append((pid, params, value))
    return sorted(done, key=lambda d: d[0])


def test_the_plan_is_hyperbands():
    assert bracket_plan(9, 3) == [[(9, 1.0), (3, 3.0), (1, 9.0)], [(5, 3.0), (1, 9.0)], [(3, 9.0)]]
    assert make().total_trials() == 22


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_replayed_history_gives_the_same_brackets_and_the_same_next_trials(sampler):
    for stop_after in (4, 11, 14, 19):  # inside rung 0, across a promotion, inside bracket 1, near the end
        original = make(sampler)
        history = drive(original, stop_after, fail={3})
        resumed = make(sampler)
        resumed.import_data([{"parameter": p, "value": v} for _, p, v in history])
        assert resumed.brackets_state() == original.brackets_state(), stop_after
        first = len(history) + 1
        assert drive(resumed, 22 - stop_after, first_id=first) == drive(original, 22 - stop_after, first_id=first)


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_trial_run_again_after_a_resume_fills_its_slot(sampler):
    """The engine runs a trial that a stop interrupted again, under a new id: its result still counts."""
    original = make(sampler)
    ask = [original.generate_parameters(i) for i in (1, 2, 3)]
    for pid in (1, 2):
        original.receive_trial_result(pid, ask[pid - 1], score(ask[pid - 1]))
        original.trial_end(pid, True)
    resumed = make(sampler)
    resumed.import_data([{"parameter": ask[0], "value": score(ask[0])}, {"parameter": ask[1], "value": score(ask[1])}])
    resumed.receive_trial_result(40, ask[2], score(ask[2]))  # trial 3, run again as #40
    resumed.trial_end(40, True)
    nxt = resumed.generate_parameters(41)
    assert nxt != ask[2] and nxt["TRIAL_BUDGET"] == 1
    assert sorted(resumed.brackets_state()[0][2]) == [0, 1, 2, 3]


TRIAL = """
import hpo
p = hpo.get_next_parameter()
hpo.report_final_result(p["x"] * p["TRIAL_BUDGET"] + {"a": 0.0, "b": 0.5, "c": 1.0}[p["k"]])
"""


def test_a_resumed_experiment_runs_the_trials_an_uninterrupted_one_would(make_experiment):
    exp = make_experiment(TRIAL, tuner=HyperbandTuner(**ARGS, min_points=3), search_space=SPACE, max_trial_number=12)
    assert exp.run(port=0) is True
    resumed = Experiment.resume(exp.id, port=0, max_trial_number=22)
    assert resumed.get_status() == "DONE"
    trials = [t["parameters"] for t in sorted(resumed.list_trial_jobs(), key=lambda t: t["seq"])]
    uninterrupted = HyperbandTuner(**ARGS, min_points=3)  # the model is used from the second bracket on
    uninterrupted.update_search_space(SPACE)
    expected = [p for _, p, _ in drive(uninterrupted, 22, concurrency=1)]
    assert trials == expected
    assert [t["TRIAL_BUDGET"] for t in trials].count(9) == 5  # every bracket reached the full resource
