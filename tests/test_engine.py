"""Real experiments: real trial processes, real SQLite stores, no mocks.

Trials run with the absolute interpreter (``PY``); each test has its own ``HPO_HOME`` and port 0.
"""
from __future__ import annotations

import itertools
import os
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import PY, wait_until, write_script
from hpo import Experiment
from hpo.config import ConfigError
from hpo.experiment import ExperimentError
from hpo.registry import ExperimentNotFound, hpo_home
from hpo.storage import ExperimentStore
from training_services.gpu import GpuAllocator, GpuInfo
from tuners import GridTuner, RandomTuner

XY = {"x": {"_type": "uniform", "_value": [0, 1]}, "y": {"_type": "choice", "_value": [1, 2, 3]}}

SEED_TRIAL = """
import hpo
p = hpo.get_next_parameter()
for i in range(3):
    hpo.report_intermediate_result(p["x"] * i)
hpo.report_final_result(p["x"] * 1000 + p["y"])
"""


# -- helpers ------------------------------------------------------------------------------------------------
def by_seq(exp: Experiment) -> dict[int, dict[str, Any]]:
    return {t["seq"]: t for t in exp.list_trial_jobs()}


def running(exp: Experiment) -> list[dict[str, Any]]:
    return exp.list_trial_jobs(status="RUNNING")


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def processes_of(experiment_id: str) -> list[psutil.Process]:
    """Every live (non-zombie) process whose environment says it belongs to this experiment."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("HPO_EXPERIMENT_ID") == experiment_id and alive(proc):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def run_guarded(exp: Experiment, limit: float) -> tuple[Any, float]:
    """``exp.run(port=0)`` on a thread: fail (instead of hanging the suite) if it takes over ``limit`` s."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = exp.run(port=0)
        except BaseException as exc:  # surfaced below
            result["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    elapsed = time.monotonic() - started
    if thread.is_alive():
        exp.stop()
        pytest.fail(f"run() did not return within {limit} s (status {exp.get_status()})")
    if "error" in result:
        raise result["error"]
    return result["value"], elapsed


# -- the basics ---------------------------------------------------------------------------------------------
def test_seed_example_random_tuner(make_experiment):
    exp = make_experiment(SEED_TRIAL, tuner=RandomTuner(optimize_mode="maximize", seed=1), search_space=XY,
                          trial_concurrency=2, max_trial_number=5)
    assert exp.run(port=0) is True
    assert exp.get_status() == "DONE"
    trials = exp.list_trial_jobs()
    assert [t["seq"] for t in trials] == [1, 2, 3, 4, 5]
    assert [t["status"] for t in trials] == ["SUCCEEDED"] * 5
    assert len({t["id"] for t in trials}) == 5
    for t in trials:
        x, y = t["parameters"]["x"], t["parameters"]["y"]
        job = exp.get_trial_job(t["id"])
        assert job["intermediate"] == pytest.approx([0, x, 2 * x])
        assert job["final"] == pytest.approx(x * 1000 + y)
        assert job["final_value"] == pytest.approx(x * 1000 + y)
        assert job["exit_code"] == 0
    best = exp.best_trial()
    assert best["final_value"] == max(t["final_value"] for t in trials)
    assert exp.get_job_statistics()["SUCCEEDED"] == 5
    assert len(exp.export_data()) == 5
    with pytest.raises(ExperimentError, match="no trial 'nope'"):
        exp.get_trial_job("nope")


@pytest.mark.parametrize("style", ["Experiment('random', 'local')", "config.tuner.name = 'Random'"])
def test_tuner_by_name(make_experiment, style):
    if style.startswith("Experiment"):
        exp = make_experiment(SEED_TRIAL, tuner="random", search_space=XY, max_trial_number=3,
                              trial_concurrency=2)
        assert exp.config.tuner.name == "random"
        maximize = True
    else:
        exp = make_experiment(SEED_TRIAL, tuner=None, search_space=XY, max_trial_number=3, trial_concurrency=2)
        exp.config.tuner.name = "Random"
        exp.config.tuner.class_args = {"optimize_mode": "minimize", "seed": 4}
        maximize = False
    assert exp.run(port=0) is True
    trials = exp.list_trial_jobs()
    assert [t["status"] for t in trials] == ["SUCCEEDED"] * 3
    assert len({t["parameters"]["x"] for t in trials}) == 3
    values = [t["final_value"] for t in trials]
    assert exp.best_trial()["final_value"] == (max(values) if maximize else min(values))


def test_experiment_without_a_tuner_is_a_clear_error(make_experiment):
    exp = make_experiment(SEED_TRIAL, tuner=None)
    with pytest.raises(ConfigError, match="tuner: neither name nor class_name is set"):
        exp.run(port=0)


def test_results_are_paired_with_their_parameters(make_experiment):
    """microsoft/nni#5726: each result must belong to the parameters its trial received."""
    trial = """
        import hpo
        p = hpo.get_next_parameter()
        hpo.report_final_result({"default": p["x"] * 1000 + p["y"], "echo": p,
                                 "trial": hpo.get_trial_id(), "seq": hpo.get_sequence_id()})
    """
    exp = make_experiment(trial, search_space=XY, trial_concurrency=2, max_trial_number=200)
    exp.config.tuner.class_args = {"seed": 11}
    assert exp.run(port=0) is True
    data = exp.export_data()
    assert len(data) == 200
    mismatches = [d for d in data if abs(d["parameter"]["x"] * 1000 + d["parameter"]["y"] - d["default"]) > 1e-9]
    assert mismatches == []
    assert all(d["value"]["echo"] == d["parameter"] for d in data)
    assert all(d["value"]["trial"] == d["trial_id"] and d["value"]["seq"] == d["sequence_id"] for d in data)
    assert sorted(d["sequence_id"] for d in data) == list(range(1, 201))
    assert exp.get_job_statistics()["SUCCEEDED"] == 200


def test_report_is_visible_in_the_store_within_100ms(make_experiment):
    trial = """
        import time, hpo
        hpo.get_next_parameter()
        for i in range(5):
            hpo.report_intermediate_result(time.time())  # the value is the moment it was sent
            time.sleep(0.3)
        time.sleep(2)
        hpo.report_final_result(1)
    """
    exp = make_experiment(trial, max_trial_number=1)
    exp.start(port=0)
    (t,) = wait_until(lambda: exp.list_trial_jobs(), 10, 0.005, "the trial row")
    seen: dict[int, float] = {}
    deadline = time.monotonic() + 15
    while len(seen) < 5 and time.monotonic() < deadline:
        values = exp.get_trial_job(t["id"])["intermediate"]
        now = time.time()
        for i, sent in enumerate(values):
            seen.setdefault(i, now - sent)
        time.sleep(0.002)
    exp.stop()
    assert len(seen) == 5, f"only {len(seen)} of 5 intermediate results reached the store"
    latencies = sorted(seen.values())
    assert statistics.median(latencies) < 0.1, latencies
    assert latencies[-1] < 0.5, latencies


def test_command_templating(make_experiment):
    make_experiment.script("""
        import argparse, json
        ap = argparse.ArgumentParser()
        ap.add_argument("--lr", type=float, required=True)
        ap.add_argument("--opt", required=True)
        ap.add_argument("--layers", type=int, required=True)
        a = ap.parse_args()
        print("training...")
        print("HPO_FINAL_RESULT=" + json.dumps({"default": a.lr * 100 + a.layers, "opt": a.opt}))
    """, "templ.py")
    space = {"learning_rate": {"_type": "loguniform", "_value": [1e-4, 1e-1]},
             "optimizer": {"_type": "choice", "_value": ["adam w", "sgd; echo pwned", "it's $HOME"]},
             "layers": {"_type": "randint", "_value": [1, 5]}}
    command = f"{PY} templ.py --lr={{{{ learning_rate }}}} --opt {{{{optimizer}}}} --layers={{{{ layers }}}}"
    assert command.endswith("--lr={{ learning_rate }} --opt {{optimizer}} --layers={{ layers }}")
    exp = make_experiment(command=command, search_space=space, trial_concurrency=2, max_trial_number=8)
    exp.config.tuner.class_args = {"seed": 2}
    assert exp.run(port=0) is True
    trials = exp.list_trial_jobs()
    assert [t["status"] for t in trials] == ["SUCCEEDED"] * 8
    for t in trials:
        p = t["parameters"]
        assert t["final"]["default"] == pytest.approx(p["learning_rate"] * 100 + p["layers"])
        assert t["final"]["opt"] == p["optimizer"]  # quoted: no word splitting, no shell expansion
    stdout = (exp.directory / "trials" / trials[0]["id"] / "stdout.log").read_text()
    assert stdout.startswith("training...\nHPO_FINAL_RESULT=")


def test_command_template_with_unknown_parameter_is_refused_before_start(make_experiment):
    exp = make_experiment("print('never runs')", command=f"{PY} trial.py --lr={{{{ lr }}}}", max_trial_number=2)
    with pytest.raises(ConfigError, match=r"^config.trial_command: trial_command uses \{\{ lr \}\} but the search "
                                          r"space has no parameter 'lr'$"):
        exp.run(port=0)
    assert exp.id is None  # nothing was created


# -- function trials ------------------------------------------------------------------------------------------
def local_objective(params: dict[str, Any]) -> float:
    import hpo

    Path(os.environ["HPO_TRIAL_DIR"], "pid").write_text(str(os.getpid()))
    hpo.report_intermediate_result(params["x"] / 2)
    return params["x"] + 1


def test_function_trial_from_a_helper_module(make_experiment):
    import fn_helpers

    exp = make_experiment(trial_function=fn_helpers.objective, trial_concurrency=2, max_trial_number=3)
    assert exp.run(port=0) is True
    trials = exp.list_trial_jobs()
    assert [t["status"] for t in trials] == ["SUCCEEDED"] * 3, [t["message"] for t in trials]
    for t in trials:
        assert t["final"]["default"] == pytest.approx(t["parameters"]["x"] * 2)
        assert t["final"]["pid"] != os.getpid()  # ran in a child process


def test_function_trial_defined_in_the_test_module(make_experiment):
    exp = make_experiment(trial_function=local_objective, max_trial_number=2)
    assert exp.run(port=0) is True
    trials = exp.list_trial_jobs()
    assert [t["status"] for t in trials] == ["SUCCEEDED"] * 2, [t["message"] for t in trials]
    for t in trials:
        assert t["final"] == pytest.approx(t["parameters"]["x"] + 1)
        assert exp.get_trial_job(t["id"])["intermediate"] == pytest.approx([t["parameters"]["x"] / 2])
        pid = int((exp.directory / "trials" / t["id"] / "pid").read_text())
        assert pid != os.getpid()


# -- failures ----------------------------------------------------------------------------------------------------
def test_failed_trials_get_a_useful_message(make_experiment):
    trial = """
        import os, signal, sys, hpo
        seq = hpo.get_sequence_id()
        if seq == 1:
            print("Traceback (most recent call last):", file=sys.stderr)
            print("RuntimeError: disk on fire", file=sys.stderr)
            sys.exit(1)
        if seq == 2:
            hpo.report_final_result("abc")
        if seq == 3:
            print("HPO_FINAL_RESULT=abc", flush=True)
        if seq == 4:
            os.kill(os.getpid(), signal.SIGKILL)
        if seq == 5:
            hpo.report_final_result(0.5)
    """
    exp = make_experiment(trial, trial_concurrency=2, max_trial_number=5)
    assert exp.run(port=0) is True
    t = by_seq(exp)
    assert [t[s]["status"] for s in range(1, 6)] == ["FAILED"] * 4 + ["SUCCEEDED"]
    assert t[1]["message"] == "RuntimeError: disk on fire" and t[1]["exit_code"] == 1
    assert "ValueError: report_final_result: expected a number" in t[2]["message"]
    assert "HPO_FINAL_RESULT: expected a number" in t[3]["message"] and t[3]["final"] is None
    assert t[4]["message"] in ("Killed", "killed by signal SIGKILL")  # /bin/sh may report it
    assert t[5]["final"] == 0.5
    assert exp.get_experiment_profile()["message"] is None  # not all failed
    assert exp.get_job_statistics()["FAILED"] == 4


def test_all_trials_failing_ends_as_error_with_the_cause(make_experiment, capfd):
    exp = make_experiment("import sys; print('loading data'); sys.exit('config file missing')",
                          trial_concurrency=2, max_trial_number=3)
    assert exp.run(port=0) is False
    assert exp.get_status() == "ERROR"
    message = exp.get_experiment_profile()["message"]
    first = exp.list_trial_jobs()[0]
    assert message.startswith(f"all 3 trials failed; the first failure, trial {first['id']} (#1), ended with:")
    assert message.endswith("\n    config file missing")
    assert [t["message"] for t in exp.list_trial_jobs()] == ["config file missing"] * 3


def test_a_broken_command_stops_the_experiment_early(make_experiment):
    exp = make_experiment(None, command=f"{PY} trian.py", trial_concurrency=2, max_trial_number=300)
    ok, _ = run_guarded(exp, 60)
    assert ok is False and exp.get_status() == "ERROR"
    message = exp.get_experiment_profile()["message"]
    assert message.startswith("the first 5 trials all failed; the first failure, trial ")
    assert "can't open file" in message and "trian.py" in message
    assert len(exp.list_trial_jobs()) <= 5 + 2  # not 300: at most the ones already running when it stopped


@pytest.mark.parametrize("rule", [{"max_failed_trials": 3},
                                  {"early_stopping": [{"kind": "failure_early_stopping", "percent": 30}]}])
def test_failure_limits(make_experiment, rule):
    trial = "import hpo, sys; p = hpo.get_next_parameter(); sys.exit(1) if hpo.get_sequence_id() % 2 else " \
            "hpo.report_final_result(1)"
    exp = make_experiment(trial, trial_concurrency=1, max_trial_number=10, **rule)
    ok, _ = run_guarded(exp, 60)
    assert ok is False and exp.get_status() == "ERROR"
    counts = exp.get_job_statistics()
    assert counts["FAILED"] == 3 and counts["SUCCEEDED"] == 2  # stopped at the third failure (3 >= 30% of 10)


def test_a_trial_without_a_final_result_is_marked(make_experiment):
    trial = "import hpo, math; s = hpo.get_sequence_id(); hpo.report_final_result(float('nan')) if s == 2 else " \
            "hpo.report_final_result(1) if s == 3 else None"
    exp = make_experiment(trial, trial_concurrency=1, max_trial_number=3)
    assert exp.run(port=0) is True
    t = by_seq(exp)
    assert [t[s]["status"] for s in (1, 2, 3)] == ["SUCCEEDED"] * 3
    assert t[1]["message"] == "finished without reporting a final result"
    assert t[2]["message"] == "the final result nan is not a finite number: recorded, not used for tuning"
    assert t[3]["message"] is None
    assert exp.get_experiment_profile()["message"] == "2 trials succeeded without a final result"


def test_max_trial_duration(make_experiment):
    exp = make_experiment("import time; time.sleep(30)", max_trial_number=1, max_trial_duration="1s")
    assert exp.run(port=0) is False  # its only trial failed
    (t,) = exp.list_trial_jobs()
    assert t["status"] == "FAILED"
    assert "max_trial_duration" in t["message"]
    assert t["ended_at"] - t["started_at"] < 4


def test_max_experiment_duration(make_experiment):
    exp = make_experiment("import time; time.sleep(30)", trial_concurrency=2, max_trial_number=10,
                          max_experiment_duration="2s")
    ok, elapsed = run_guarded(exp, 30)
    assert ok is True
    assert 1.8 <= elapsed < 6
    assert exp.get_status() == "DONE"
    assert "max_experiment_duration" in exp.get_experiment_profile()["message"]
    trials = exp.list_trial_jobs()
    assert [t["status"] for t in trials] == ["SYS_CANCELED", "SYS_CANCELED"]
    assert processes_of(exp.id) == []


# -- killing --------------------------------------------------------------------------------------------------------
SPAWNING_TRIAL = """
import os, subprocess, sys, time, hpo
hpo.get_next_parameter()
if os.environ["HPO_SEQUENCE_ID"] in {slow}:
    subprocess.Popen(["sleep", "300"])
    subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300"])
    subprocess.Popen(["sleep", "301"], start_new_session=True)  # left the trial's process group
    open(os.path.join(os.environ["HPO_TRIAL_DIR"], "ready"), "w").close()
    time.sleep(300)
time.sleep(1)
hpo.report_final_result(1)
"""


def _trial_tree(exp: Experiment, trial: dict[str, Any]) -> list[psutil.Process]:
    """The trial's process and all its descendants, once its 4 `sleep`s are up."""
    ready = exp.directory / "trials" / trial["id"] / "ready"
    wait_until(ready.exists, 10, what=f"trial {trial['seq']} to spawn its children")

    def full() -> list[psutil.Process] | None:
        procs = tree(exp.get_trial_job(trial["id"])["pid"])
        sleeps = [p for p in procs if alive(p) and p.name() == "sleep"]
        return procs if len(sleeps) >= 4 else None

    return wait_until(full, 10, what="the trial's sleep processes")


def test_stop_kills_whole_process_trees(make_experiment):
    exp = make_experiment(SPAWNING_TRIAL.format(slow="{'1', '2'}"), trial_concurrency=2, max_trial_number=2)
    exp.start(port=0)
    trials = wait_until(lambda: len(running(exp)) == 2 and running(exp), 10, what="2 running trials")
    procs = [p for t in trials for p in _trial_tree(exp, t)]
    assert len(procs) >= 10
    assert sorted({p.pid for p in processes_of(exp.id)}) == sorted({p.pid for p in procs})
    started = time.monotonic()
    exp.stop()
    assert time.monotonic() - started < 8
    survivors = [p for p in procs if alive(p)]
    assert survivors == []
    assert processes_of(exp.id) == []
    assert exp.get_status() == "STOPPED"
    assert [t["status"] for t in exp.list_trial_jobs()] == ["SYS_CANCELED"] * 2


def test_kill_trial_job(make_experiment):
    exp = make_experiment(SPAWNING_TRIAL.format(slow="{'1'}"), trial_concurrency=2, max_trial_number=4)
    exp.start(port=0)
    first = wait_until(lambda: by_seq(exp).get(1, {}).get("status") == "RUNNING" and by_seq(exp)[1], 10,
                       what="trial 1 running")
    procs = _trial_tree(exp, first)
    killed_at = time.time()
    exp.kill_trial_job(first["id"])
    job = exp.get_trial_job(first["id"])
    assert job["status"] == "USER_CANCELED"
    assert job["message"] == "killed by user"
    assert [p for p in procs if alive(p)] == []
    assert exp.wait(30)
    assert exp.get_status() == "DONE"
    t = by_seq(exp)
    assert sorted(t) == [1, 2, 3, 4]
    assert [t[s]["status"] for s in (2, 3, 4)] == ["SUCCEEDED"] * 3
    assert max(t[s]["created_at"] for s in (2, 3, 4)) > killed_at  # the experiment kept going
    with pytest.raises(ExperimentError):
        exp.kill_trial_job(first["id"])


def test_kill_a_trial_that_is_not_running(make_experiment):
    exp = make_experiment("import time; time.sleep(2)", max_trial_number=1)
    exp.start(port=0)
    with pytest.raises(ExperimentError, match="trial 'nosuch' is not running"):
        exp.kill_trial_job("nosuch")


# -- changing a running experiment -------------------------------------------------------------------------------
def test_update_trial_concurrency_at_runtime(make_experiment):
    exp = make_experiment("import time; time.sleep(6)", trial_concurrency=1, max_trial_number=6)
    exp.start(port=0)
    wait_until(lambda: len(running(exp)) == 1, 10, what="the first trial")
    time.sleep(0.3)
    assert len(exp.list_trial_jobs()) == 1  # concurrency 1 holds
    with pytest.raises(ConfigError, match="trial_concurrency"):
        exp.update_trial_concurrency(0)
    exp.update_trial_concurrency(3)
    wait_until(lambda: len(running(exp)) == 3, 4, what="3 trials running at once")
    assert exp.config.trial_concurrency == 3
    assert exp.get_experiment_profile()["config"]["trial_concurrency"] == 3
    time.sleep(0.3)
    assert len(running(exp)) == 3  # and no more
    exp.stop()


def test_update_max_trial_number_and_statistics(make_experiment):
    trial = """
        import sys, time, hpo
        seq = hpo.get_sequence_id()
        time.sleep(0.8)
        if seq % 2 == 0:
            sys.exit("even trials fail")
        hpo.report_final_result(seq)
    """
    exp = make_experiment(trial, trial_concurrency=2, max_trial_number=2)
    exp.start(port=0)
    wait_until(lambda: exp.get_status() == "NO_MORE_TRIAL", 10, what="NO_MORE_TRIAL")
    stats = exp.get_job_statistics()
    assert stats["RUNNING"] + stats["WAITING"] == 2 and sum(stats.values()) == 2
    exp.update_max_trial_number(5)
    assert exp.wait(30)
    assert exp.get_status() == "DONE"
    stats = exp.get_job_statistics()
    assert stats == {"WAITING": 0, "RUNNING": 0, "SUCCEEDED": 3, "FAILED": 2, "USER_CANCELED": 0,
                     "SYS_CANCELED": 0, "EARLY_STOPPED": 0}
    assert exp.get_experiment_profile()["config"]["max_trial_number"] == 5
    with pytest.raises(ExperimentError, match="ended"):
        exp.update_max_trial_number(10)


class ExplodingTuner(RandomTuner):
    def __init__(self, where: str = "generate", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.where = where

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        if self.where == "generate" and parameter_id >= 3:
            raise RuntimeError(f"tuner exploded at trial {parameter_id}")
        return super().generate_parameters(parameter_id, **kwargs)

    def receive_trial_result(self, parameter_id: int, parameters: Any, value: float, **kwargs: Any) -> None:
        if self.where == "receive":
            time.sleep(0.5)  # slow: the trial ends and the engine asks for the next one meanwhile
            raise RuntimeError("tuner exploded on a result")


@pytest.mark.parametrize("where", ["generate", "receive"])
def test_tuner_exception_ends_the_experiment_as_error(make_experiment, where):
    exp = make_experiment("import time, hpo; time.sleep(0.2); hpo.report_final_result(1)",
                          tuner=ExplodingTuner(where, seed=0), trial_concurrency=1, max_trial_number=20)
    ok, elapsed = run_guarded(exp, 30)
    assert ok is False
    assert exp.get_status() == "ERROR"
    message = exp.get_experiment_profile()["message"]
    assert "RuntimeError: tuner exploded" in message
    if where == "generate":
        assert [t["status"] for t in exp.list_trial_jobs()] == ["SUCCEEDED"] * 2
    else:
        assert "receive_trial_result" in message
        trials = exp.list_trial_jobs()
        assert len(trials) == 1  # no trial starts once the tuner has failed
        assert trials[0]["status"] == "SUCCEEDED" and trials[0]["final"] == 1
    assert processes_of(exp.id) == []


def test_grid_exhaustion(make_experiment):
    space = {"a": {"_type": "choice", "_value": ["p", "q"]}, "b": {"_type": "randint", "_value": [0, 3]}}
    exp = make_experiment("import hpo; p = hpo.get_next_parameter(); hpo.report_final_result(p['b'])",
                          tuner=GridTuner(), search_space=space, trial_concurrency=2, max_trial_number=100)
    ok, _ = run_guarded(exp, 60)
    assert ok is True
    assert exp.get_status() == "DONE"
    trials = exp.list_trial_jobs()
    assert len(trials) == 6
    got = sorted((t["parameters"]["a"], t["parameters"]["b"]) for t in trials)
    assert got == sorted(itertools.product("pq", range(3)))
    assert all(t["status"] == "SUCCEEDED" for t in trials)
    assert "nothing left" in exp.get_experiment_profile()["message"]


# -- experiments in another process --------------------------------------------------------------------------------
CRASH_TRIAL = """
import os, subprocess, time, hpo
p = hpo.get_next_parameter()
subprocess.Popen(["sleep", "60"])  # left behind in the trial's process group
if int(os.environ["HPO_SEQUENCE_ID"]) > 5:  # trials 6 and 7 are running when the engine is killed
    while not os.path.exists("go"):
        time.sleep(0.02)
time.sleep(0.05)
hpo.report_final_result(p["x"] * 1000 + p["y"])
"""


def test_crash_and_resume(launcher):
    proc, exp_id, directory = launcher(CRASH_TRIAL, trial_concurrency=2, max_trial_number=20)
    store = ExperimentStore(directory, readonly=True)
    try:
        wait_until(lambda: store.status_counts()["SUCCEEDED"] == 5 and store.status_counts()["RUNNING"] == 2, 60,
                   0.01, what="5 successful trials and 2 running")
        before = {t["seq"]: t for t in store.trials(status="SUCCEEDED")}
        live_trials = [p for t in store.trials(status="RUNNING") for p in tree(t["pid"])]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        frozen = {t["seq"]: t for t in store.trials()}
    finally:
        store.close()
    interrupted = {s: t for s, t in frozen.items() if t["status"] in ("WAITING", "RUNNING")}
    assert sorted(interrupted) == [6, 7]
    (launcher.tmp_path / "code" / "go").touch()

    exp = Experiment.resume(exp_id, port=0, wait_completion=True)

    assert exp.get_status() == "DONE"
    after = by_seq(exp)
    for seq, t in before.items():  # 0 finished trials lost
        assert after[seq]["status"] == "SUCCEEDED"
        assert (after[seq]["id"], after[seq]["parameters"], after[seq]["final"]) == (t["id"], t["parameters"],
                                                                                   t["final"])
    assert sorted(after) == list(range(1, len(after) + 1))  # unique, contiguous sequence ids
    assert len({t["id"] for t in after.values()}) == len(after)
    for seq in interrupted:
        old = after[seq]
        assert old["status"] == "SYS_CANCELED" and "interrupted" in old["message"]
        (rerun,) = [t for t in after.values() if t["rerun_of"] == seq]
        assert rerun["parameters"] == old["parameters"]
        assert rerun["status"] == "SUCCEEDED"
    counted = [t for t in after.values() if not t["interrupted"]]
    assert len(counted) == 20
    assert all(t["status"] == "SUCCEEDED" for t in counted)
    for t in counted:
        assert t["final"] == pytest.approx(t["parameters"]["x"] * 1000 + t["parameters"]["y"])
    assert [p for p in live_trials if alive(p)] == []
    left = [(p.pid, p.cmdline(), p.environ().get("HPO_TRIAL_ID")) for p in processes_of(exp_id)]
    assert left == []  # e.g. a trial that had started but was not yet recorded when the engine died


def test_connect_to_a_running_experiment_then_a_finished_one(launcher):
    proc, exp_id, directory = launcher("import time; time.sleep(30)", trial_concurrency=2, max_trial_number=4)
    exp = Experiment.connect(exp_id)
    assert exp.id == exp_id and exp.directory == directory
    wait_until(lambda: len(exp.list_trial_jobs(status="RUNNING")) == 2, 15, what="2 running trials")
    assert exp.get_status() == "RUNNING"
    assert exp.config.trial_concurrency == 2
    exp.update_trial_concurrency(3)
    wait_until(lambda: len(exp.list_trial_jobs(status="RUNNING")) == 3, 10, what="the 3rd trial")
    victim = exp.list_trial_jobs(status="RUNNING")[0]
    exp.kill_trial_job(victim["id"])
    assert exp.get_trial_job(victim["id"])["status"] == "USER_CANCELED"
    exp.stop()
    assert exp.wait(15)
    assert exp.get_status() == "STOPPED"
    assert proc.wait(15) == 0
    assert proc.stdout.read().split() == ["ENDED", "STOPPED"]
    assert processes_of(exp_id) == []

    finished = Experiment.connect(exp_id)
    assert finished.get_status() == "STOPPED"
    statuses = sorted(t["status"] for t in finished.list_trial_jobs())
    # the kill frees a slot: a 4th trial may start before the stop lands
    assert statuses in (["SYS_CANCELED"] * 2 + ["USER_CANCELED"], ["SYS_CANCELED"] * 3 + ["USER_CANCELED"])
    with pytest.raises(ExperimentError, match="not running"):
        finished.update_trial_concurrency(1)
    with pytest.raises(ExperimentError, match="not running"):
        finished.kill_trial_job(victim["id"])
    with pytest.raises(ExperimentNotFound, match="no experiment with id 'nosuch'"):
        Experiment.connect("nosuch")


# -- GPUs ------------------------------------------------------------------------------------------------------------
def test_gpu_allocator_least_loaded_per_gpu_and_active_gpus():
    gpus = [GpuInfo(0, "GPU-a", False), GpuInfo(1, "GPU-b", False), GpuInfo(2, "GPU-c", True)]
    alloc = GpuAllocator(gpus, per_gpu=2, use_active_gpu=False)
    assert alloc.acquire(0) == []
    assert [alloc.acquire(1) for _ in range(4)] == [[0], [1], [0], [1]]  # least loaded first
    assert alloc.acquire(1) is None  # GPU 2 is busy with another program
    alloc.release([1])
    assert alloc.acquire(2) is None
    assert alloc.acquire(1) == [1]

    shared = GpuAllocator(gpus, per_gpu=1, use_active_gpu=True)
    assert shared.acquire(3) == [0, 1, 2]
    assert shared.acquire(1) is None
    shared.release([0, 2])
    assert shared.acquire(2) == [0, 2]

    alloc = GpuAllocator(gpus[:2], per_gpu=1)
    assert alloc.acquire(1) == [0]
    assert alloc.acquire(2) is None  # not enough free: nothing taken
    assert alloc.acquire(1) == [1]
    alloc.release([0])
    assert alloc.acquire(1) == [0]


@pytest.fixture
def fake_gpus(tmp_path, monkeypatch):
    # No GPU exists on the test machines, so a fake `nvidia-smi` reporting two idle GPUs stands in
    # for the real one; everything else (engine, service, trial processes) is real.
    bin_dir = tmp_path / "fakebin"
    script = write_script(bin_dir, "nvidia-smi", """
        #!/bin/sh
        case "$1" in
          --query-gpu=*) printf '0, GPU-fake-0\\n1, GPU-fake-1\\n' ;;
          --query-compute-apps=*) ;;
          *) exit 1 ;;
        esac
    """)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


GPU_TRIAL = """
import os, time, hpo
start = time.time()
time.sleep(0.5)
hpo.report_final_result({"default": 1, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                         "start": start, "end": time.time()})
"""


def _peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals that hold at one instant (an end at t comes before a start at t)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def _max_running(exp: Experiment) -> int:
    peak = 0
    while not exp.wait(0.01):
        peak = max(peak, len(running(exp)))
    return peak


@pytest.mark.parametrize("per_gpu, concurrency, trials, peak", [(1, 3, 6, 2), (2, 4, 6, 4)])
def test_gpu_assignment(make_experiment, fake_gpus, per_gpu, concurrency, trials, peak):
    exp = make_experiment(GPU_TRIAL, trial_gpu_number=1, trial_concurrency=concurrency, max_trial_number=trials)
    exp.config.training_service.max_trial_number_per_gpu = per_gpu
    exp.start(port=0)
    assert _max_running(exp) == peak
    exp.stop()
    done = exp.list_trial_jobs()
    assert [t["status"] for t in done] == ["SUCCEEDED"] * trials
    for t in done:
        assert t["final"]["cuda"] in ("0", "1")  # one GPU each
        assert t["gpus"] == [int(t["final"]["cuda"])]
    for gpu in ("0", "1"):  # never more than per_gpu trials at once on one GPU
        on_gpu = [t["final"] for t in done if t["final"]["cuda"] == gpu]
        assert _peak_overlap([(t["start"], t["end"]) for t in on_gpu]) <= per_gpu
    assert _peak_overlap([(t["final"]["start"], t["final"]["end"]) for t in done]) <= peak
    assert {t["final"]["cuda"] for t in done} == {"0", "1"}


def test_trials_without_gpus_see_no_gpu(make_experiment, fake_gpus):
    exp = make_experiment(GPU_TRIAL, trial_gpu_number=0, max_trial_number=1)
    assert exp.run(port=0) is True
    (t,) = exp.list_trial_jobs()
    assert t["final"]["cuda"] == ""


def test_asking_for_more_gpus_than_exist_is_a_clear_error(make_experiment, fake_gpus):
    exp = make_experiment(GPU_TRIAL, trial_gpu_number=3, max_trial_number=2)
    with pytest.raises(ConfigError, match=r"trial_gpu_number=3 but only 2 GPU\(s\) are available"):
        exp.start(port=0)
    assert exp.id is None and not list(hpo_home().glob("*/experiment.db"))  # nothing was created
    exp.config.training_service.gpu_indices = [0, 5]
    exp.config.trial_gpu_number = 1
    with pytest.raises(ConfigError, match=r"gpu_indices: GPU\(s\) \[5\] not found; detected \[0, 1\]"):
        exp.start(port=0)
