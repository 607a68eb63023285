"""Gradient's experiments client (``hpo.gradient``) against real engines: detached engine processes, real trial
processes and gangs, real SQLite stores, the real ``hpo`` CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

from hpo import client as sdk
from hpo.gradient import (ExperimentsClient, GradientSdkError, InvalidParametersError, LogRow, MpiMultiNodeExperiment,
                          MultiNodeExperiment, SingleNodeExperiment, UnhonouredFieldWarning, constants)
from hpo.gradient.translate import translate
from hpo.registry import all_experiments
from hpo.storage import EXPERIMENT_END_STATES, ExperimentStore, engine_running
from browser_support import open_page, serve_app
from conftest import PY, ROOT, wait_until

State = constants.ExperimentState
PS_JOB = ROOT / "examples" / "distributed" / "ps_job.py"
TERMINAL = (State.STOPPED, State.FAILED, State.CANCELLED, State.ERROR)


@pytest.fixture
def gradient(tmp_path: Path):
    """A client (machine_type and the like warn: they are not honoured locally); every engine it left running is
    stopped at the end, so no test leaves a detached process behind."""
    c = ExperimentsClient(api_key="ignored")
    yield c
    for entry in all_experiments():
        directory = Path(str(entry["directory"]))
        try:
            with ExperimentStore(directory, readonly=True) as store:
                info = store.experiment()
        except Exception:  # noqa: BLE001 - deleted by the test
            continue
        if info["status"] not in EXPERIMENT_END_STATES and engine_running(directory, info.get("pid")):
            c.stop(str(entry["id"]))


@pytest.fixture
def code(tmp_path: Path) -> Path:
    folder = tmp_path / "code"
    folder.mkdir()
    return folder


def script(folder: Path, body: str, name: str = "train.py") -> str:
    (folder / name).write_text(textwrap.dedent(body))
    return f"{PY} {name}"


def single(c: ExperimentsClient, code: Path, command: str, run: bool = True, **extra) -> str:
    """A single-node experiment of ``command`` in ``code`` (the fields every caller gives, warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnhonouredFieldWarning)
        create = c.run_single_node if run else c.create_single_node
        return create(project_id=extra.pop("project_id", "vision"), machine_type="C4", command=command,
                      working_directory=str(code), **extra)


def wait_state(c: ExperimentsClient, eid: str, states: tuple[int, ...], timeout: float = 60.0) -> int:
    return wait_until(lambda: c.get(eid).state if c.get(eid).state in states else None, timeout, 0.1,
                      f"experiment {eid} to reach {states}")


def hpo_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpo.cli", *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


# -- single node ---------------------------------------------------------------------------------------------------
def test_a_single_node_run_ends_stopped_with_its_logs_env_and_fields(gradient, code, tmp_path):
    command = script(code, """
        import os, sys
        print("epochs", os.environ["EPOCHS"], "model", os.environ["PS_MODEL_PATH"])
        print("second line")
        print("a traceback, say", file=sys.stderr)
    """)
    with pytest.warns(UnhonouredFieldWarning) as caught:
        eid = gradient.run_single_node(project_id="vision", machine_type="K80", command=command, name="mnist",
                                       working_directory=str(code), experiment_env={"EPOCHS": 3},
                                       model_type="Custom", model_path="models/sdk", container="tf:1.13",
                                       registry_username="me", registry_password="hunter2", tags=["a"])
    (warning,) = [w for w in caught if w.category is UnhonouredFieldWarning]
    text = str(warning.message)
    assert "\n" not in text and warning.filename == __file__  # points at the caller's line
    assert text.endswith("model_type, container, machine_type, registry_username, registry_password")
    assert wait_state(gradient, eid, TERMINAL) == State.STOPPED
    rows = gradient.logs(eid)
    assert rows == [LogRow(1, f"epochs 3 model {code / 'models' / 'sdk'}", None), LogRow(2, "second line", None),
                    LogRow(3, "a traceback, say", None)]  # stdout, then (once the run ended) stderr
    assert rows[0].line == 1 and rows[0].message.startswith("epochs") and rows[0].timestamp is None
    got = gradient.get(eid)
    assert isinstance(got, SingleNodeExperiment) and got.id == eid and got.experiment_type_id == 1
    assert (got.name, got.project_id, got.command, got.machine_type, got.container) == \
        ("mnist", "vision", command, "K80", "tf:1.13")
    assert got.registry_username == "me" and got.registry_password == "**********"  # no password is stored
    assert got.experiment_env == {"EPOCHS": 3} and got.tags == ["a"] and got.model_path == "models/sdk"
    assert got.dt_created <= got.dt_started <= got.dt_stopped
    assert State.get_state_str(got.state) == "stopped" and State.get_state_str(99) == "undefined"
    directory = sdk.get_experiment(eid)._src.directory
    assert "hunter2" not in "".join(p.read_text(errors="replace") for p in directory.rglob("*") if p.is_file())
    config = sdk.get_experiment(eid).config
    assert config["search_space"] == {} and config["max_trial_number"] == 1 and config["project"] == "vision"
    assert config["checkpoint_storage"]["host_path"] == str(code / "models" / "sdk")
    assert sdk.get_experiment(eid).project == "vision"


def test_yield_logs_follows_to_the_end_numbering_each_line_once(gradient, code):
    command = script(code, """
        import time
        for i in range(1, 13):
            print(f"step {i}", flush=True)
            time.sleep(0.1)
        print("no newline at the end", end="")
    """)
    eid = single(gradient, code, command)
    rows: list[LogRow] = []
    follower = threading.Thread(target=lambda: rows.extend(gradient.yield_logs(eid)), daemon=True)
    follower.start()
    follower.join(60)
    assert not follower.is_alive(), "yield_logs did not end by itself"
    assert [r.line for r in rows] == list(range(1, 14))  # 1-based, no line twice, none missing
    assert [r.message for r in rows] == [f"step {i}" for i in range(1, 13)] + ["no newline at the end"]
    assert gradient.get(eid).state == State.STOPPED
    assert [r.line for r in gradient.yield_logs(eid, line=12)] == [12, 13]  # an ended run: what it has, then the end
    assert gradient.logs(eid, line=0, limit=2) == rows[:2] and gradient.logs(eid, line=13) == rows[12:]
    assert gradient.logs(eid, line=14) == []


# -- multi node ----------------------------------------------------------------------------------------------------
def test_a_grpc_multi_node_run_trains_a_parameter_server_job(gradient, code):
    shutil.copy(PS_JOB, code / "ps_job.py")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnhonouredFieldWarning)
        eid = gradient.run_multi_node(
            project_id="vision", name="ps", experiment_type_id="GRPC", worker_container="tf", worker_machine_type="K80",
            worker_command=f"{PY} ps_job.py", worker_count=2, parameter_server_container="tf",
            parameter_server_machine_type="K80", parameter_server_command=f"{PY} ps_job.py", parameter_server_count=1,
            experiment_env={"STEPS": 4}, working_directory=str(code))
    assert wait_state(gradient, eid, TERMINAL) == State.STOPPED
    messages = [r.message for r in gradient.logs(eid)]
    assert any(m.startswith("[ps-0] parameter server on port") for m in messages)
    assert "[worker-0] worker 0 done" in " ".join(messages) and "[worker-1] worker 1 done" in " ".join(messages)
    got = gradient.get(eid)
    assert isinstance(got, MultiNodeExperiment) and got.experiment_type_id == 2
    assert (got.worker_count, got.parameter_server_count) == (2, 1)
    metrics = gradient.get_metrics(eid)
    assert set(metrics["default"]) == {"worker-0", "worker-1"}  # the chief's reports and the other worker's
    assert len(metrics["default"]["worker-1"]) == 5  # 4 steps and the final result
    assert all(isinstance(p["value"], str) and isinstance(p["time_stamp"], int) for p in metrics["default"]["worker-0"])
    assert gradient.list_metrics(eid) == metrics


def test_mpi_runs_the_masters_command_with_a_hostfile(gradient, code):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnhonouredFieldWarning)
        eid = gradient.run_mpi_multi_node(
            project_id="hpc", worker_container="mpi", worker_machine_type="C4", worker_command="sleep 600",
            worker_count=2, master_command="echo hostfile=$OMPI_MCA_orte_default_hostfile; cat $HPO_MPI_HOSTFILE",
            working_directory=str(code))
    assert wait_state(gradient, eid, TERMINAL) == State.STOPPED  # the workers' command never runs: mpirun starts them
    messages = [r.message for r in gradient.logs(eid)]
    assert messages[0].startswith("[master-0] hostfile=/") and messages[0].endswith("/hostfile")
    assert messages[1:] == ["[master-0] 127.0.0.1 slots=3"]
    got = gradient.get(eid)
    assert isinstance(got, MpiMultiNodeExperiment) and (got.master_count, got.worker_count) == (None, 2)
    # create_multi_node with experiment_type_id MPI: the parameter server is the master
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnhonouredFieldWarning)
        other = gradient.create_multi_node(
            project_id="hpc", worker_container="mpi", worker_machine_type="C4", worker_command="true", worker_count=1,
            parameter_server_container="mpi", parameter_server_machine_type="C4", parameter_server_command="mpirun x",
            parameter_server_count=1, experiment_type_id=3, working_directory=str(code))
    got = gradient.get(other)
    assert isinstance(got, MpiMultiNodeExperiment) and (got.master_command, got.master_count) == ("mpirun x", 1)
    roles = sdk.get_experiment(other).config["trial_roles"]
    assert sdk.get_experiment(other).config["distribution"] == "mpi" and list(roles) == ["master", "worker"]


# -- lifecycle across processes ------------------------------------------------------------------------------------
def _python(code_text: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code_text)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_create_in_one_process_start_in_another(gradient, code):
    command = script(code, "print('ran')\n")
    eid = _python(f"""
        import warnings
        from hpo.gradient import ExperimentsClient
        warnings.simplefilter("ignore")
        print(ExperimentsClient().create_single_node(project_id="p1", machine_type="C4", command={command!r},
                                                     working_directory={str(code)!r}))
    """)
    assert gradient.get(eid).state == State.CREATED
    assert gradient.logs(eid) == [] and list(gradient.yield_logs(eid)) == []  # no run: nothing to follow
    (row,) = [line.split() for line in hpo_cli("list").stdout.splitlines()[1:]]  # not running, but listed
    assert row[:4] == [eid, "-", "p1", "CREATED"]
    assert sdk.get_experiment(eid).state is sdk.ExperimentState.PAUSED
    _python(f"from hpo.gradient import ExperimentsClient; ExperimentsClient().start({eid!r})")  # that process exits
    assert wait_state(gradient, eid, TERMINAL) == State.STOPPED
    assert [r.message for r in gradient.logs(eid)] == ["ran"]
    gradient.start(eid)  # an ended experiment runs again: a second run, its log lines after the first's
    assert wait_state(gradient, eid, TERMINAL) == State.STOPPED
    assert [(r.line, r.message) for r in gradient.logs(eid)] == [(1, "ran"), (2, "ran")]


def test_stop_cancels_a_run_start_continues_it_and_delete_removes_it(gradient, code):
    command = script(code, """
        import time
        print("started", flush=True)
        time.sleep(600)
    """)
    eid = single(gradient, code, command)
    wait_state(gradient, eid, (State.RUNNING,))
    wait_until(lambda: gradient.logs(eid), 30, 0.1, "the first line")
    with pytest.raises(GradientSdkError, match=f"^experiment {eid} is already running$"):
        gradient.start(eid)
    began = time.monotonic()
    gradient.stop(eid)
    assert time.monotonic() - began < 30 and gradient.get(eid).state == State.CANCELLED
    pid = sdk.get_experiment(eid).list_trials()[0]._rec()["pid"]
    assert not os.path.exists(f"/proc/{pid}"), "the run outlived stop()"
    gradient.stop(eid)  # an ended experiment: nothing to do
    gradient.start(eid)  # the interrupted run runs again
    wait_state(gradient, eid, (State.RUNNING,))
    directory = sdk.get_experiment(eid)._src.directory
    gradient.delete(eid)  # stops it first
    assert not directory.exists() and not any(e["id"] == eid for e in all_experiments())
    with pytest.raises(GradientSdkError, match=f"^no experiment with id '{eid}'$"):
        gradient.get(eid)
    created = single(gradient, code, command, run=False)
    gradient.stop(created)  # a created experiment is cancelled without running
    assert gradient.get(created).state == State.CANCELLED and gradient.logs(created) == []


# -- projects ------------------------------------------------------------------------------------------------------
def test_list_filters_by_project_and_tags_and_pages(gradient, code):
    ids = [single(gradient, code, "true", run=False, project_id=p, tags=t)
           for p, t in (("a", ["x"]), ("b", None), ("a", ["y"]))]
    assert [e.id for e in gradient.list()] == ids
    assert [e.id for e in gradient.list(project_id="a")] == [ids[0], ids[2]]
    assert [e.id for e in gradient.list(project_id=["a", "b"], tags=["y"])] == [ids[2]]
    page, meta = gradient.list(offset=1, limit=1, get_meta=True)
    assert [e.id for e in page] == [ids[1]] and meta == {"totalItems": 3}
    assert all(e.state == State.CREATED for e in gradient.list())
    listed = hpo_cli("list", "--all", "--project", "a").stdout.splitlines()
    assert listed[0].split()[:4] == ["ID", "NAME", "PROJECT", "STATUS"]
    assert [line.split()[0] for line in listed[1:]] == [ids[0], ids[2]]
    assert "no experiment in project 'zzz'" in hpo_cli("list", "--all", "--project", "zzz").stdout
    assert [e.id for e in sdk.list_experiments(project_id="b")] == [ids[1]]
    assert hpo_cli("stop", ids[1]).stdout == f"experiment {ids[1]} STOPPED (it had not been started)\n"
    assert gradient.get(ids[1]).state == State.CANCELLED


def test_the_dashboards_experiments_page_shows_and_filters_projects(gradient, code, browser):
    ids = [single(gradient, code, "true", run=False, project_id=p) for p in ("alpha", "beta", "alpha")]
    with serve_app(sdk.get_experiment(ids[0])._src.directory) as base:
        with urllib.request.urlopen(f"{base}/api/v1/experiments?project=alpha") as resp:
            rows = json.loads(resp.read())
        assert sorted(r["id"] for r in rows) == sorted([ids[0], ids[2]])
        assert {r["project"] for r in rows} == {"alpha"} and {r["status"] for r in rows} == {"CREATED"}
        page = open_page(browser, 1280, 800)
        try:
            page.goto(f"{base}/#/experiments?project=beta")
            table = page.locator("[data-testid=experiments-table]")
            table.locator(f"tr[data-id='{ids[1]}']").wait_for()
            assert table.locator("tbody tr[data-id]").count() == 1
            assert table.locator("[data-testid=project]").all_inner_texts() == ["beta"]
            page.select_option("[data-testid=project-filter]", "alpha")
            table.locator(f"tr[data-id='{ids[2]}']").wait_for()
            assert table.locator("[data-testid=project]").all_inner_texts() == ["alpha", "alpha"]
            assert page.evaluate("location.hash") == "#/experiments?project=alpha"
            page.select_option("[data-testid=project-filter]", "")
            table.locator(f"tr[data-id='{ids[1]}']").wait_for()
            assert table.locator("tbody tr[data-id]").count() == 3
            assert not page.errors, page.errors
        finally:
            page.context.close()


# -- bad input -----------------------------------------------------------------------------------------------------
BAD = [
    ("create_multi_node", dict(worker_count=0), "worker_count: got 0, expected an integer from 1 to 1024"),
    ("create_multi_node", dict(parameter_server_count=-1), "parameter_server_count: got -1, expected an integer >= 0"),
    ("create_multi_node", dict(experiment_type_id="FOO"), "Invalid experiment type: experiment_type_id 'FOO'"),
    ("create_multi_node", dict(experiment_type_id=4), "Invalid experiment type: experiment_type_id 4"),
    ("create_single_node", dict(model_path="/tmp/m"), "model_path: is set without model_type"),
    ("create_single_node", dict(command=""), "command: got '', expected a shell command"),
    ("create_single_node", dict(experiment_env={"E": [1]}), "experiment_env.E: got [1], expected a string or a number"),
    ("create_single_node", dict(working_directory="/no/such/dir"), "working_directory: '/no/such/dir' does not exist"),
    ("create_mpi_multi_node", dict(master_command=None), "master_command: got None, expected a shell command"),
    ("create_single_node", dict(tags="x"), "tags: got 'x', expected a list of strings"),
    ("create_multi_node", dict(parameter_server_command=None), "parameter_server_command: got None, expected a shell"),
]


@pytest.mark.parametrize("method, change, message", BAD, ids=[b[1].__repr__() for b in BAD])
def test_bad_parameters_are_one_line_errors_and_create_nothing(gradient, code, method, change, message):
    base = {"create_single_node": dict(project_id="p", machine_type="C4", command="true"),
            "create_multi_node": dict(project_id="p", worker_container="c", worker_machine_type="C4",
                                      worker_command="true", worker_count=1, parameter_server_container="c",
                                      parameter_server_machine_type="C4", parameter_server_command="true",
                                      parameter_server_count=1),
            "create_mpi_multi_node": dict(project_id="p", worker_container="c", worker_machine_type="C4",
                                          worker_command="true", worker_count=1, master_command="mpirun true")}[method]
    args = {"working_directory": str(code), **base, **change}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnhonouredFieldWarning)
        with pytest.raises(GradientSdkError) as info:
            getattr(gradient, method)(**args)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert isinstance(info.value, ValueError) and all_experiments() == []
    if "model_path" in change:
        assert isinstance(info.value, InvalidParametersError)


@pytest.mark.parametrize("call", ["get", "start", "stop", "delete", "logs", "yield_logs", "get_metrics"])
def test_an_unknown_id_is_a_one_line_error(gradient, call):
    with pytest.raises(GradientSdkError, match=r"^no experiment with id 'nosuch1'$"):
        getattr(gradient, call)("nosuch1")


def test_bad_log_arguments_and_a_script_that_fails_print_one_line(gradient, code):
    eid = single(gradient, code, "true", run=False)
    with pytest.raises(GradientSdkError, match=r"^line: got -1, expected an integer >= 0$"):
        gradient.logs(eid, line=-1)
    with pytest.raises(GradientSdkError, match=r"^limit: got 0, expected an integer >= 1$"):
        gradient.yield_logs(eid, limit=0)
    with pytest.raises(GradientSdkError, match=r"^experiment_id: got '\.\./x'"):
        gradient.get("../x")
    proc = subprocess.run([sys.executable, "-c", "from hpo.gradient import ExperimentsClient\n"
                           "ExperimentsClient().get('nosuch1')"], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 1 and proc.stderr == "hpo: error: no experiment with id 'nosuch1'\n"


# -- platforms -----------------------------------------------------------------------------------------------------
def test_on_kubernetes_a_container_is_the_image_and_not_a_warning(code):
    params = dict(project_id="p", machine_type="C4", command="python train.py", container="tf:2", cluster_id="c1",
                  working_directory=str(code))
    with pytest.warns(UnhonouredFieldWarning, match=r"platform 'kubernetes'.*: cluster_id, machine_type$"):
        config, record = translate(1, params, {"platform": "kubernetes", "namespace": "ml"})
    assert config.training_service.image == "tf:2" and config.training_service.namespace == "ml"
    assert record["container"] == "tf:2" and record["experiment_type_id"] == 1
    with pytest.warns(UnhonouredFieldWarning, match=r"platform 'local'.*: cluster_id, container, machine_type$"):
        translate(1, params, None)
    assert json.dumps(record)  # what is kept beside the store is plain JSON


def test_a_grpc_multi_node_run_on_kubernetes_runs_as_one_indexed_job():
    """The same client against the fake cluster: the gang is one Indexed Job and its Service, the log merged."""
    from kube_support import shared_cluster
    fake, namespace = shared_cluster()
    code = Path(fake.root) / f"code-{namespace}"
    code.mkdir()
    shutil.copy(PS_JOB, code / "ps_job.py")
    client = ExperimentsClient(training_service={"platform": "kubernetes", "kubeconfig": str(fake.kubeconfig),
                                                 "namespace": namespace, "python": sys.executable, "kill_grace": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnhonouredFieldWarning)
        eid = client.run_multi_node(
            project_id="vision", experiment_type_id="GRPC", worker_container=sys.executable, worker_machine_type="K80",
            worker_command=f"{sys.executable} ps_job.py", worker_count=2, parameter_server_container=sys.executable,
            parameter_server_machine_type="K80", parameter_server_command=f"{sys.executable} ps_job.py",
            parameter_server_count=1, experiment_env={"STEPS": 3}, working_directory=str(code))
    try:
        assert wait_state(client, eid, TERMINAL, 120) == State.STOPPED
    finally:
        if client.get(eid).state not in TERMINAL:
            client.stop(eid)
    messages = " ".join(r.message for r in client.logs(eid))
    assert "[ps-0] parameter server on port" in messages and "[worker-1] worker 1 done" in messages
    # the Job goes with Background propagation: the cluster's garbage collector then deletes its pods
    wait_until(lambda: not fake.objects("pods", namespace) and not fake.objects("services", namespace), 30, 0.1,
               "the gang's pods and Service deleted")
