"""What a new user meets in the first hour: extending a finished search, handles that say what they are,
the CLI's small conveniences.  Real experiments, real CLI processes."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, wait_until
from hpo import Experiment
from hpo.experiment import ExperimentError

TRIAL = """
import hpo
p = hpo.get_next_parameter()
hpo.report_final_result(p["x"])
"""


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "hpo", *args], text=True, capture_output=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_a_finished_experiment_is_extended_by_resume(make_experiment):
    exp = make_experiment(TRIAL, tuner="tpe", max_trial_number=4)
    assert exp.run(port=0) is True
    first = {t["id"]: t["parameters"] for t in exp.list_trial_jobs()}

    more = Experiment.resume(exp.id, port=0, max_trial_number=7)
    assert more.get_status() == "DONE"
    trials = more.list_trial_jobs()
    assert [t["seq"] for t in trials] == list(range(1, 8))
    assert {t["id"]: t["parameters"] for t in trials[:4]} == first  # kept, and replayed to the tuner
    assert all(t["status"] == "SUCCEEDED" for t in trials)
    assert more.config.max_trial_number == 7

    with pytest.raises(ValueError, match="max_trial_number"):
        Experiment.resume(exp.id, port=0, max_trial_number=0)
    assert Experiment.connect(exp.id).config.max_trial_number == 7  # the refused change changed nothing


def test_cli_resume_extends_and_update_of_an_ended_experiment_says_how(make_experiment):
    exp = make_experiment(TRIAL, max_trial_number=2)
    assert exp.run(port=0) is True
    refused = cli("update", exp.id, "--max-trials", "5")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (f"hpo: error: experiment {exp.id} has ended (DONE); to continue it with new "
                                      f"limits: `hpo resume {exp.id} --max-trials 5`")
    done = cli("resume", exp.id, "--max-trials", "5", "--foreground", "--port", "0")
    assert done.returncode == 0, done.stderr
    assert len(Experiment.connect(exp.id).list_trial_jobs()) == 5
    bad = cli("resume", exp.id, "--max-trials", "-1")
    assert bad.returncode == 1 and bad.stderr.startswith("hpo: error: ") and "max_trial_number" in bad.stderr


def test_start_twice_on_one_object_is_refused(make_experiment):
    exp = make_experiment(TRIAL, max_trial_number=1)
    assert exp.run(port=0) is True
    with pytest.raises(ExperimentError, match=rf"already ran experiment {exp.id}; .*Experiment.resume"):
        exp.start(port=0)


def test_repr_says_what_the_experiment_is(make_experiment):
    exp = make_experiment(TRIAL, tuner="tpe", max_trial_number=3)
    assert repr(exp) == "<Experiment (not started) tuner=tpe, local>"
    assert exp.run(port=0) is True
    best = exp.best_trial()
    assert repr(exp) == (f"<Experiment {exp.id} DONE: 3/3, 3 succeeded, 0 failed, 0 running, "
                         f"best {best['final_value']:.6g} (trial {best['id']} (#{best['seq']}))>")


def test_a_connected_handle_follows_updates_made_elsewhere(make_experiment):
    exp = make_experiment("import time; time.sleep(30)", trial_concurrency=1, max_trial_number=10)
    exp.start(port=0)
    try:
        other = Experiment.connect(exp.id)
        assert other.config.trial_concurrency == 1
        exp.update_trial_concurrency(3)
        assert other.config.trial_concurrency == 3
        other.update_max_trial_number(4)
        assert exp.config.max_trial_number == 4 and Experiment.connect(exp.id).config.max_trial_number == 4
    finally:
        exp.stop()


def test_assessors_import_like_tuners():
    from tuners import AshaAssessor, EvidenceStopAssessor, MedianstopAssessor
    assert MedianstopAssessor(optimize_mode="maximize") and AshaAssessor() and EvidenceStopAssessor()


def test_hpo_stop_without_an_id_stops_the_only_running_experiment(make_experiment):
    exp = make_experiment("import time; time.sleep(30)", max_trial_number=3)
    exp.start(port=0)
    try:
        wait_until(lambda: exp.list_trial_jobs(status="RUNNING"), 20, what="a running trial")
        done = cli("stop")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"experiment {exp.id} STOPPED"
    finally:
        exp.stop()


def test_hpo_stop_without_an_id_names_the_candidates_when_several_run(make_experiment):
    a = make_experiment("import time; time.sleep(30)", max_trial_number=3)
    b = make_experiment("import time; time.sleep(30)", max_trial_number=3)
    a.start(port=0)
    b.start(port=0)
    try:
        refused = cli("stop")
        assert refused.returncode == 1
        assert refused.stderr.startswith("hpo: error: 2 experiments are running (") and a.id in refused.stderr
        assert a.get_status() == b.get_status() == "RUNNING"
    finally:
        a.stop()
        b.stop()


def test_hpo_view_moves_to_a_free_port_and_says_which(make_experiment, tmp_path):
    exp = make_experiment(TRIAL, max_trial_number=1)
    assert exp.run(port=0) is True
    import hpo.cli
    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", hpo.cli._VIEW_PORT))
        except OSError:
            pass  # someone else holds it already: just as good
        taken.listen()
        proc = subprocess.Popen([sys.executable, "-m", "hpo", "view", exp.id], text=True, stderr=subprocess.PIPE,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)))
        try:
            lines = [proc.stderr.readline() for _ in range(2)]  # type: ignore[union-attr]
        finally:
            proc.terminate()
            proc.wait(10)
    assert lines[0].startswith(f"hpo: port {hpo.cli._VIEW_PORT} is in use; serving on port "), lines
    assert "read-only" in lines[1]


def test_version():
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("hpo ")


def test_max_trial_retries_reruns_a_failing_trial(make_experiment, tmp_path):
    flaky = f"""
import os, sys, hpo
p = hpo.get_next_parameter()
marker = os.path.join({str(tmp_path)!r}, "tried-" + str(p["x"]))
if not os.path.exists(marker):   # every trial fails its first attempt
    open(marker, "w").close()
    sys.exit("flaky: first attempt")
hpo.report_final_result(p["x"])
"""
    exp = make_experiment(flaky, max_trial_number=3, max_trial_retries=1)
    assert exp.run(port=0) is True
    trials = exp.list_trial_jobs()
    attempts = [t for t in trials if t["rerun_of"] is None]
    retries = [t for t in trials if t["rerun_of"] is not None]
    assert [t["status"] for t in attempts] == ["FAILED"] * 3 and all(t["interrupted"] == 2 for t in attempts)
    assert sorted(t["rerun_of"] for t in retries) == [t["seq"] for t in attempts]
    assert [t["status"] for t in retries] == ["SUCCEEDED"] * 3
    assert exp.get_job_statistics()["FAILED"] == 0 and len(exp.export_data()) == 3


def test_trials_find_the_interpreter_hpo_runs_in_first_on_their_path(make_experiment):
    exp = make_experiment("import sys, hpo; hpo.report_final_result(1); print('RUNS', sys.executable)",
                          command="python3 trial.py", max_trial_number=1)
    assert exp.run(port=0) is True
    out = (exp.directory / "trials" / exp.list_trial_jobs()[0]["id"] / "stdout.log").read_text()
    used = out.split("RUNS ", 1)[1].strip()
    assert os.path.dirname(used) == os.path.dirname(sys.executable), (used, sys.executable)


def test_hpo_list_shows_the_best_value_and_keeps_the_first_start_time(make_experiment):
    exp = make_experiment(TRIAL, max_trial_number=2)
    assert exp.run(port=0) is True
    first = cli("list", "--all").stdout
    time.sleep(1.1)  # a resume a second later must not move STARTED
    Experiment.resume(exp.id, port=0, max_trial_number=3)
    header, row = cli("list", "--all").stdout.strip().splitlines()
    assert header.split() == ["ID", "NAME", "PROJECT", "STATUS", "TRIALS", "BEST", "STARTED", "PORT"]
    best = exp.best_trial()
    assert row.split()[:6] == [exp.id, "-", "-", "DONE", "3/3", f"{best['final_value']:.6g}"]
    assert row.split()[6:8] == first.strip().splitlines()[1].split()[6:8]  # date and time of the first start
    durations = [line.split()[5] for line in cli("trials", exp.id).stdout.strip().splitlines()[1:]]
    assert all(d.endswith("s") and "." in d for d in durations), durations  # sub-second trials: 0.08s, not 0s
