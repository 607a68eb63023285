"""Early stopping with real trial processes: metric thresholds, median stop, ASHA."""
from __future__ import annotations

import psutil
import pytest

from hpo.early_stopping import threshold_reached
from tuners.asha import AshaAssessor
from tuners.assessor import AssessResult, create_assessor
from tuners.evidence import EvidenceStopAssessor
from tuners.medianstop import MedianstopAssessor

# Each trial reports `steps` intermediate values of x * step, writing its pid first.
CURVE = """
import os, time, hpo
p = hpo.get_next_parameter()
open(os.path.join(os.environ["HPO_TRIAL_DIR"], "pid"), "w").write(str(os.getpid()))
for step in range(1, p["steps"] + 1):
    hpo.report_intermediate_result(p["x"] * step)
    time.sleep(p.get("sleep", 0.05))
hpo.report_final_result(p["x"] * p["steps"])
"""


def curve_grid(make_experiment, xs: list[float], steps: int, sleep: float | None = None,
               max_trials: int | None = None):
    """An experiment running CURVE for each x of ``xs`` in grid order, one trial at a time, each reporting
    ``steps`` intermediate results (``sleep`` s apart when given)."""
    space = {"x": {"_type": "choice", "_value": xs}, "steps": {"_type": "choice", "_value": [steps]}}
    if sleep is not None:
        space["sleep"] = {"_type": "choice", "_value": [sleep]}
    return make_experiment(CURVE, search_space=space, max_trial_number=max_trials or len(xs), trial_concurrency=1,
                           tuner="grid")


def test_threshold_rules():
    rules = [{"metric": "accuracy", "value": 0.9, "optimization": "maximize"},
             {"metric": "loss", "value": 0.1, "optimization": "minimize"}]
    assert threshold_reached(rules, {"default": 0.5, "accuracy": 0.89, "loss": 0.2}) is None
    assert "accuracy reached 0.95" in threshold_reached(rules, {"default": 0.5, "accuracy": 0.95})
    assert "loss reached 0.05" in threshold_reached(rules, {"default": 0.5, "loss": 0.05})
    assert threshold_reached(rules, 0.95) is not None  # a plain number is the value of every metric


def test_medianstop_semantics():
    a = MedianstopAssessor(optimize_mode="maximize", start_step=2)
    for tid, curve in (("a", [1, 2, 3]), ("b", [2, 3, 4]), ("c", [3, 4, 5])):
        for k in range(1, 4):
            assert a.assess_trial(tid, curve[:k]) == AssessResult.Good  # nothing completed yet
        a.trial_end(tid, True)
    # completed running averages at step 2: 1.5, 2.5, 3.5 -> median 2.5
    assert a.assess_trial("d", [0.1]) == AssessResult.Good            # before start_step
    assert a.assess_trial("d", [0.1, 2.0]) == AssessResult.Bad        # best 2.0 < 2.5
    assert a.assess_trial("e", [0.1, 3.0]) == AssessResult.Good       # best 3.0 >= 2.5
    # two completed trials: NNI takes the more lenient middle value, so only a trial worse than both stops
    m = MedianstopAssessor(optimize_mode="minimize")
    m.assess_trial("a", [1.0]); m.trial_end("a", True)
    m.assess_trial("b", [3.0]); m.trial_end("b", True)
    assert m.assess_trial("c", [2.5]) == AssessResult.Good and m.assess_trial("d", [3.5]) == AssessResult.Bad
    x = MedianstopAssessor(optimize_mode="maximize")
    x.assess_trial("a", [1.0]); x.trial_end("a", True)
    x.assess_trial("b", [3.0]); x.trial_end("b", True)
    assert x.assess_trial("c", [2.0]) == AssessResult.Good and x.assess_trial("d", [0.5]) == AssessResult.Bad
    # a trial that ends before start_step was never judged, so it never counts as completed (as in NNI)
    s = MedianstopAssessor(start_step=3)
    s.assess_trial("short", [9.0, 9.0]); s.trial_end("short", True)
    assert s.assess_trial("e", [0.0, 0.0, 0.0]) == AssessResult.Good
    with pytest.raises(ValueError, match="start_step"):
        MedianstopAssessor(start_step=1.5)


def test_asha_rungs_and_promotion():
    a = AshaAssessor(optimize_mode="maximize", reduction_factor=2, min_steps=1, max_steps=8)
    assert a.rungs == [1, 2, 4]
    assert a.assess_trial("t1", [0.5]) == AssessResult.Good   # one peer: too few to judge
    assert a.assess_trial("t2", [0.9]) == AssessResult.Good   # top half of {0.5, 0.9}
    assert a.assess_trial("t3", [0.1]) == AssessResult.Bad    # bottom of {0.5, 0.9, 0.1}
    assert a.assess_trial("t2", [0.9, 0.8, 0.7]) == AssessResult.Good  # step 3 is no rung
    with pytest.raises(ValueError, match="reduction_factor"):
        AshaAssessor(reduction_factor=1)
    with pytest.raises(ValueError, match="unknown assessor 'medianstp'; did you mean 'medianstop'"):
        create_assessor("medianstp")


def test_metric_threshold_ends_the_experiment(make_experiment):
    exp = curve_grid(make_experiment, [0.1, 0.2, 1.0], steps=5, max_trials=50)
    exp.config.early_stopping = [{"metric": "default", "value": 3.0, "optimization": "maximize"}]
    assert exp.run(port=0)
    status = exp.get_experiment_profile()
    assert status["status"] == "DONE"
    assert "early stopping: default reached" in status["message"]
    trials = exp.list_trial_jobs()
    # grid order: x=0.1 and 0.2 never reach 3; x=1.0 reaches 3.0 at step 3 -> nothing after it starts
    assert [t["parameters"]["x"] for t in trials] == [0.1, 0.2, 1.0]


def test_median_stop_kills_bad_trials_and_feeds_the_tuner(make_experiment):
    # grid order, one at a time: three good curves complete, then a bad one is judged against them
    exp = curve_grid(make_experiment, [1.0, 0.99, 0.98, 0.01], steps=6, sleep=0.15)
    exp.config.assessor = {"name": "Medianstop", "class_args": {"optimize_mode": "maximize", "start_step": 2}}
    assert exp.run(port=0)
    trials = {t["seq"]: t for t in exp.list_trial_jobs()}
    assert [trials[s]["status"] for s in (1, 2, 3)] == ["SUCCEEDED"] * 3
    stopped = trials[4]
    assert stopped["status"] == "EARLY_STOPPED", stopped
    assert "stopped early by MedianstopAssessor at step 2" in stopped["message"]
    # its last intermediate value became its result, so the tuner (and a resumed tuner) learns from it
    assert stopped["final"]["early_stopped"] is True and stopped["final_value"] == pytest.approx(0.02)
    pid = int((exp.directory / "trials" / stopped["id"] / "pid").read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_asha_stops_the_worst_trials(make_experiment):
    xs = [0.9, 0.8, 0.1, 0.7, 0.05, 0.6]
    exp = curve_grid(make_experiment, xs, steps=9)
    exp.config.assessor = {"name": "ASHA", "class_args": {"reduction_factor": 3, "min_steps": 1, "max_steps": 9}}
    assert exp.run(port=0)
    by_x = {t["parameters"]["x"]: t["status"] for t in exp.list_trial_jobs()}
    # rungs at steps 1 and 3; the first two trials have too few peers to be judged, every later one
    # is outside the top third at step 1
    assert by_x == {0.9: "SUCCEEDED", 0.8: "SUCCEEDED", 0.1: "EARLY_STOPPED", 0.7: "EARLY_STOPPED",
                    0.05: "EARLY_STOPPED", 0.6: "EARLY_STOPPED"}


def _curve(final: float, shape: float, steps: int = 20) -> list[float]:
    """A learning curve reaching ``final`` at the last step: ``shape`` < 1 rises early, > 1 late."""
    return [final * (k / steps) ** shape for k in range(1, steps + 1)]


def _finish(assessor, curves: dict[str, list[float]]) -> None:
    for tid, curve in curves.items():
        for k in range(1, len(curve) + 1):
            assessor.assess_trial(tid, curve[:k])
        assessor.trial_end(tid, True)


def _first_stop(assessor, tid: str, curve: list[float]) -> int | None:
    """The step at which ``assessor`` stops the trial, None when it lets it finish."""
    for k in range(1, len(curve) + 1):
        if assessor.assess_trial(tid, curve[:k]) == AssessResult.Bad:
            return k
    assessor.trial_end(tid, True)
    return None


def test_evidence_stop_stops_clearly_bad_trials_where_early_values_predict():
    # curves of one shape: the order at step 1 is the order at the end
    done = {f"c{i}": _curve(0.1 + 0.08 * i, 0.5) for i in range(10)}     # finals 0.1 ... 0.82
    a = EvidenceStopAssessor()
    _finish(a, done)
    assert _first_stop(a, "bad", _curve(0.2, 0.5)) == 1                  # among the worst: stopped at once
    assert _first_stop(a, "weak", _curve(0.5, 0.5)) is not None          # mid-table: stopped on the way
    assert _first_stop(a, "good", _curve(0.85, 0.5)) is None             # a new best: never stopped


def test_evidence_stop_does_not_stop_the_slow_starter_that_ends_best():
    # crossing curves (a small learning rate, strong regularisation, a warm-up): the later a trial rises,
    # the better it ends; two rise so late they end badly
    done = {f"c{i}": _curve(0.5 + 0.04 * i, 0.3 + 0.2 * i) for i in range(10)}
    done.update({"too-slow-1": _curve(0.4, 5.0), "too-slow-2": _curve(0.3, 6.0)})
    winner = _curve(0.95, 2.5)                         # behind every good trial for the first half
    assert all(winner[k] < min(c[k] for t, c in done.items() if t.startswith("c")) for k in range(10))
    a = EvidenceStopAssessor()
    _finish(a, done)
    assert _first_stop(a, "winner", winner) is None
    # the median rule (NNI's and hpo's) and ASHA stop it at once
    m = MedianstopAssessor()
    _finish(m, done)
    assert _first_stop(m, "winner", winner) == 1
    h = AshaAssessor(max_steps=20)
    _finish(h, done)
    assert _first_stop(h, "winner", winner) == 1


def test_evidence_stop_waits_for_enough_finished_trials():
    a = EvidenceStopAssessor(min_completed=8)
    _finish(a, {f"c{i}": _curve(0.1 + 0.1 * i, 0.5) for i in range(7)})
    assert _first_stop(a, "bad", _curve(0.15, 0.5)) is None          # 7 finished trials: no stopping yet
    _finish(a, {"c7": _curve(0.9, 0.5)})
    assert _first_stop(a, "bad2", _curve(0.15, 0.5)) == 1            # the 8th (and "bad" itself) allow it
    with pytest.raises(ValueError, match="min_completed"):
        EvidenceStopAssessor(min_completed=1)
    with pytest.raises(ValueError, match="top_fraction"):
        EvidenceStopAssessor(top_fraction=0)


def test_evidence_stop_by_name_in_an_experiment(make_experiment):
    # one at a time: four good curves complete, then a bad one is stopped at its first value
    exp = curve_grid(make_experiment, [1.0, 0.99, 0.98, 0.97, 0.01], steps=5, sleep=0.15)
    exp.config.assessor = {"name": "EvidenceStop", "class_args": {"optimize_mode": "maximize", "min_completed": 4}}
    assert exp.run(port=0)
    trials = {t["seq"]: t for t in exp.list_trial_jobs()}
    assert [trials[s]["status"] for s in (1, 2, 3, 4)] == ["SUCCEEDED"] * 4
    assert trials[5]["status"] == "EARLY_STOPPED"
    assert "stopped early by EvidenceStopAssessor at step 1" in trials[5]["message"]


def _benchmark():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "early_stopping.py"
    spec = importlib.util.spec_from_file_location("early_stopping_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("task", ["gb_clf", "gb_reg"])
def test_evidence_stop_costs_nothing_where_real_curves_cross(task):
    """Real gradient-boosting learning curves (benchmarks/data): a small learning rate starts slowly and ends
    best.  Random search on 4 workers for 40 full trials' epochs: with EvidenceStop the best result comes
    sooner than without early stopping, where ASHA's stopping makes it come later."""
    bench = _benchmark()
    t = bench.load_tasks()[task]
    area = {name: sum(bench.simulate(t["curves"], t["mode"], bench.make_rule(name, t["mode"]), seed, 40 * 30)["auc"]
                      for seed in range(6)) for name in ("none", "evidence", "asha")}
    assert area["evidence"] < area["none"] < area["asha"], area
