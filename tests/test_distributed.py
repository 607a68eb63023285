"""Distributed trials (``trial_roles``): one trial, a gang of real processes, on the local service.

The program is ``examples/distributed/ps_job.py``: workers and a parameter server that talk over TCP using
only the environment hpo gives them.  Failing, killed, timed-out and crashed gangs leave no process behind.
"""
from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from conftest import PY, ROOT, kill_all, wait_until
from hpo.config import ConfigError, ExperimentConfig
from hpo.storage import ExperimentStore
from test_engine import processes_of

from training_services.gang import Placement, gang_environment, gang_processes, mpi_hostfile

PS_JOB = ROOT / "examples" / "distributed" / "ps_job.py"
SPACE = {"lr": {"_type": "choice", "_value": [0.2, 0.5]}}


def _roles(**roles: dict) -> dict:
    return ExperimentConfig(trial_command="python t.py", trial_roles=roles).trial_roles


# -- the environment each process gets ---------------------------------------------------------------------------
def test_tensorflow_and_gradient_environment_describe_the_whole_cluster():
    procs = gang_processes(_roles(ps={"count": 1, "command": "ps"}, worker={"count": 2}), "train", 0, "tensorflow")
    assert [(p.name, p.rank, p.command) for p in procs] == [("worker-0", 0, "train"), ("worker-1", 1, "train"),
                                                           ("ps-0", 2, "ps")]  # the chief's role first
    places = [Placement("10.0.0.1", 5000), Placement("10.0.0.2", 5001), Placement("10.0.0.3", 6000)]
    env = gang_environment(procs, places, "tensorflow", 1)
    cluster = {"worker": ["10.0.0.1:5000", "10.0.0.2:5001"], "ps": ["10.0.0.3:6000"]}
    assert json.loads(env["TF_CONFIG"]) == {"cluster": cluster, "task": {"type": "worker", "index": 1}}
    assert json.loads(base64.urlsafe_b64decode(env["PS_CONFIG"])) == {
        "cluster": cluster, "task": {"type": "worker", "index": 1}, "environment": "cloud"}
    assert (env["TYPE"], env["INDEX"], env["WORKER_HOSTS"], env["PS_HOSTS"]) == (
        "worker", "1", "10.0.0.1:5000,10.0.0.2:5001", "10.0.0.3:6000")
    assert "MASTER_ADDR" not in env


def test_pytorch_environment_ranks_processes_per_host():
    procs = gang_processes(_roles(worker={"count": 4}), "train", 1, "pytorch")
    places = [Placement("a", 29500), Placement("a", 29501), Placement("b", 29502), Placement("b", 29503)]
    envs = [gang_environment(procs, places, "pytorch", i) for i in range(4)]
    assert [(e["RANK"], e["LOCAL_RANK"], e["LOCAL_WORLD_SIZE"]) for e in envs] == [
        ("0", "0", "2"), ("1", "1", "2"), ("2", "0", "2"), ("3", "1", "2")]
    assert {(e["MASTER_ADDR"], e["MASTER_PORT"], e["WORLD_SIZE"]) for e in envs} == {("a", "29500", "4")}
    assert all(p.gpu_number == 1 for p in procs)


def test_mpi_runs_the_command_on_rank_0_only_with_a_hostfile():
    procs = gang_processes(_roles(master={"count": 1, "command": "mpirun train"}, worker={"count": 3}), "train", 0,
                           "mpi")
    assert [(p.name, p.command) for p in procs] == [("master-0", "mpirun train"), ("worker-0", None),
                                                   ("worker-1", None), ("worker-2", None)]
    places = [Placement("h1", 1), Placement("h1", 2), Placement("h2", 3), Placement("h2", 4)]
    assert mpi_hostfile(places) == "h1 slots=2\nh2 slots=2\n"
    env = gang_environment(procs, places, "mpi", 0, "/trial/hostfile")
    assert env["OMPI_MCA_orte_default_hostfile"] == env["HPO_MPI_HOSTFILE"] == "/trial/hostfile"


# -- a real parameter-server job ---------------------------------------------------------------------------------
def _gang_experiment(make_experiment, tmp_path: Path, **config):
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    shutil.copy(PS_JOB, code / "ps_job.py")
    config.setdefault("trial_roles", {"worker": {"count": 2}, "ps": {"count": 1}})
    return make_experiment(command=f"{PY} ps_job.py", search_space=SPACE, trial_env={"STEPS": 8}, **config)


def test_a_parameter_server_job_trains_across_its_processes(make_experiment, tmp_path):
    exp = _gang_experiment(make_experiment, tmp_path, max_trial_number=2, trial_concurrency=1)
    exp.run(port=0)
    assert exp.get_status() == "DONE"
    with ExperimentStore(exp.directory, readonly=True) as store:
        trials = store.trials()
        assert [t["status"] for t in trials] == ["SUCCEEDED", "SUCCEEDED"]
        for t in trials:
            assert [p["name"] for p in t["processes"]] == ["worker-0", "worker-1", "ps-0"]
            assert len({p["port"] for p in t["processes"]}) == 3
            # the chief's 8 steps are the trial's; worker-1's are kept apart, not tuned on
            assert len(store.metrics(t["seq"], "intermediate")) == 8
            others = store.process_metrics(t["seq"])
            assert {(m["process"], m["kind"]) for m in others} == {("worker-1", "intermediate"), ("worker-1", "final")}
            assert others[0]["value"] == pytest.approx(t["final_value"])  # synchronous SGD: both see one state
            folder = exp.directory / "trials" / t["id"]
            merged = (folder / "stdout.log").read_text()
            assert "[ps-0] parameter server on port" in merged and "[worker-1] worker 1 done" in merged
            assert (folder / "processes" / "worker-1" / "stdout.log").read_text().startswith("worker 1 done")
    assert exp.export_data()[0]["value"] == pytest.approx(trials[0]["final_value"])
    assert not processes_of(exp.id), "the parameter server outlived its trial"


FAILING_WORKER = """
import os, sys, time
if os.environ["HPO_PROCESS"] == "worker-1":
    time.sleep(0.3)
    sys.exit("worker 1 lost its data")
time.sleep(600)
"""


def test_a_failing_process_fails_the_trial_and_stops_its_gang(make_experiment, tmp_path):
    exp = make_experiment(FAILING_WORKER, max_trial_number=1,
                          trial_roles={"worker": {"count": 2}, "ps": {"count": 1}})
    exp.config.training_service.kill_grace = 1.0
    started = time.monotonic()
    exp.run(port=0)
    assert time.monotonic() - started < 30
    trial = exp.list_trial_jobs()[0]
    assert trial["status"] == "FAILED"
    assert trial["message"] == "worker-1: worker 1 lost its data"
    assert not processes_of(exp.id)


STAYING = """
import os, time
open(os.environ["HPO_PROCESS"] + ".up", "w").close()
time.sleep(600)
"""


@pytest.mark.parametrize("how", ["kill", "timeout"])
def test_kill_and_timeout_end_every_process_of_the_gang(make_experiment, how):
    exp = make_experiment(STAYING, max_trial_number=1, trial_roles={"worker": {"count": 3}},
                          max_trial_duration="3s" if how == "timeout" else None)
    exp.config.training_service.kill_grace = 1.0
    exp.start(port=0)
    try:
        code = Path(exp.config.trial_code_directory)
        wait_until(lambda: len(list(code.glob("*.up"))) == 3, 30, what="three processes up")
        assert len(processes_of(exp.id)) >= 6  # three supervisors, three trials
        if how == "kill":
            exp.kill_trial_job(exp.list_trial_jobs()[0]["id"])
        wait_until(lambda: exp.list_trial_jobs()[0]["status"] != "RUNNING", 30, what="the trial's end")
        wait_until(lambda: not processes_of(exp.id), 10, what="no process left")
        trial = exp.list_trial_jobs()[0]
        assert trial["status"] == ("USER_CANCELED" if how == "kill" else "FAILED")
    finally:
        exp.stop()


def test_no_gang_process_outlives_a_crashed_engine(spawn, tmp_path):
    from hpo import Experiment

    # the processes ignore SIGTERM and their supervisors' grace is long: only the resume can end them in time
    stubborn = tmp_path / "code" / "stubborn"  # while it exists, trial processes ignore SIGTERM
    stubborn.parent.mkdir(exist_ok=True)
    stubborn.touch()
    s = spawn("import os, signal\nif os.path.exists('stubborn'):\n    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              + STAYING, max_trial_number=1,
              trial_roles={"worker": {"count": 2}, "ps": {"count": 1}},
              training_service={"platform": "local", "kill_grace": 120})
    with s.store() as store:
        wait_until(lambda: store.trials(status="RUNNING"), 30, what="the gang running")
    wait_until(lambda: len(processes_of(s.id)) >= 6, 30, what="all processes up")
    s.crash()
    survivors = processes_of(s.id)
    assert len(survivors) >= 6
    stubborn.unlink()  # the re-run the resume starts can be stopped quickly
    resumed = Experiment.resume(s.id, port=0, wait_completion=False)
    try:
        wait_until(lambda: not [p for p in survivors if p.is_running() and p.status() != "zombie"], 20,
                   what="the crashed gang's processes gone")
    finally:
        resumed.stop()
        kill_all(processes_of(s.id))


@pytest.mark.parametrize("roles, platform, message", [
    ({"worker": {"count": 0}}, "local", "config.trial_roles.worker.count: got 0, expected an integer from 1 to 1024"),
    ({"worker": {"port": 7000}, "ps": {"port": 7000}}, "local",
     "config.trial_roles.ps.port: 7000 is also role 'worker''s port"),
    ({"worker": {"count": 2, "port": 7000}}, "local", "config.trial_roles.worker.port: 2 processes on this machine"),
    ({"Worker": {}}, "local", "config.trial_roles: role name 'Worker': expected lowercase"),
])
def test_bad_roles_are_one_line_errors(tmp_path, roles, platform, message):
    config = ExperimentConfig(trial_command="python t.py", search_space=SPACE, trial_code_directory=tmp_path,
                              tuner="random", training_service=platform)
    with pytest.raises(ConfigError) as err:
        config.trial_roles = roles
        config.validate_for_start()
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_a_gang_needing_more_gpus_than_this_machine_has_is_refused_before_it_starts(make_experiment, tmp_path):
    exp = _gang_experiment(make_experiment, tmp_path, max_trial_number=1,
                           trial_roles={"worker": {"count": 2, "gpu_number": 64}})
    with pytest.raises(ConfigError, match=r"config.training_service: trial_gpu_number=128 but only \d+ GPU"):
        exp.run(port=0)


# -- the dashboard ----------------------------------------------------------------------------------------------
def test_the_dashboard_shows_each_process_and_its_log(make_experiment, tmp_path, browser):
    from browser_support import get_json, open_page, request, serve_app

    exp = _gang_experiment(make_experiment, tmp_path, max_trial_number=1)
    exp.run(port=0)
    trial = exp.list_trial_jobs()[0]
    with serve_app(Path(exp.directory)) as base:
        api = f"{base}/api/v1/trials/{trial['id']}"
        detail = get_json(api)
        assert [p["name"] for p in detail["processes"]] == ["worker-0", "worker-1", "ps-0"]
        assert {m["process"] for m in detail["process_metrics"]} == {"worker-1"}
        ps_log = get_json(f"{api}/logs?process=ps-0")["lines"]
        assert ps_log[0].startswith("parameter server on port") and not any("[" in line for line in ps_log)
        merged = get_json(f"{api}/logs")["lines"]
        assert {line.split("]")[0] + "]" for line in merged} == {"[worker-0]", "[worker-1]", "[ps-0]"}
        for bad in ("../../x", "worker-9", "ps-0/../../token"):  # only the trial's own processes are served
            status, _, body = request(f"{api}/logs?process={urllib.parse.quote(bad)}")
            assert status == 400, (bad, status, body)
        page = open_page(browser)
        page.goto(f"{base}/#/trial/{trial['id']}")
        table = page.locator("[data-testid=processes]")
        table.locator("tbody tr").nth(2).wait_for()
        rows = table.locator("tbody tr").all_inner_texts()
        assert rows[0].startswith("worker-0 (chief") and rows[2].startswith("ps-0")
        page.locator("[data-testid=log] .line").first.wait_for()
        page.select_option("[data-testid=log-process]", "worker-1")
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=log] .line')]"
                               ".some((l) => l.textContent.startsWith('worker 1 done'))")
        assert not page.errors, page.errors
        page.context.close()


def test_a_pytorch_ddp_example_trains_on_two_ranks(make_experiment, tmp_path):
    """examples/distributed/ddp_train.py with the real torch (gloo on CPU), when torch is installed: in this
    interpreter, or in the one TEST_TORCH_PYTHON names (torch is a large install kept out of the test venv)."""
    python = os.environ.get("TEST_TORCH_PYTHON") or sys.executable
    found = subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0
    if not found:
        pytest.skip("the DDP example needs torch: pip install torch, or set TEST_TORCH_PYTHON")
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    shutil.copy(ROOT / "examples" / "distributed" / "ddp_train.py", code)
    exp = make_experiment(command=f"{shlex.quote(python)} ddp_train.py", search_space={"lr": {"_type": "choice", "_value": [0.05]}},
                          trial_roles={"worker": {"count": 2}}, distribution="pytorch", max_trial_number=1,
                          trial_env={"EPOCHS": 3, "OMP_NUM_THREADS": 1})
    exp.run(port=0)
    trial = exp.list_trial_jobs()[0]
    assert trial["status"] == "SUCCEEDED", trial["message"]
    merged = (exp.directory / "trials" / trial["id"] / "stdout.log").read_text()
    for rank in (0, 1):
        assert f"[worker-{rank}] rank {rank}/2: loss" in merged and "weights identical on every rank: True" in merged
    with ExperimentStore(exp.directory, readonly=True) as store:
        assert len(store.metrics(trial["seq"], "intermediate")) == 3
        assert {m["process"] for m in store.process_metrics(trial["seq"])} == {"worker-1"}
    assert trial["final"] < 1.0


MPI_MASTER = """
import os
print("hostfile", os.environ["HPO_MPI_HOSTFILE"], repr(open(os.environ["OMPI_MCA_orte_default_hostfile"]).read()))
print("gpus", repr(os.environ["CUDA_VISIBLE_DEVICES"]), os.environ["HPO_RANK"], os.environ["HPO_WORLD_SIZE"])
import hpo
hpo.report_final_result(1.0)
"""


def test_mpi_runs_rank_0_with_a_hostfile_and_holds_the_other_ranks(make_experiment, tmp_path):
    """mpirun is not installed here: rank 0's command (what would call it) sees the hostfile; the other ranks run
    nothing but count (3 ranks, 3 slots on this machine)."""
    exp = make_experiment(MPI_MASTER, max_trial_number=1, distribution="mpi",
                          trial_roles={"master": {"count": 1}, "worker": {"count": 2}})
    exp.run(port=0)
    trial = exp.list_trial_jobs()[0]
    assert trial["status"] == "SUCCEEDED", trial["message"]
    folder = exp.directory / "trials" / trial["id"]
    out = (folder / "stdout.log").read_text()
    assert f"[master-0] hostfile {folder / 'hostfile'} '127.0.0.1 slots=3\\n'" in out, out
    assert "[master-0] gpus '' 0 3" in out
    assert sorted(p.name for p in (folder / "processes").iterdir()) == ["master-0"]  # holders start nothing
