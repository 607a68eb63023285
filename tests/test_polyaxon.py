"""Polyaxon v1 on hpo: real experiments (short trials, real engine and store) from components, operations,
override files, Python modules and RunClient; one-line errors with nothing started."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from hpo.polyaxon import (PolyaxonError, RunClient, V1Component, V1HpChoice, V1HpLinSpace, V1HpPChoice, V1IO, V1Job,
                          V1Operation, V1Param, V1RandomSearch)
from hpo.polyaxon.patch import patch
from hpo.storage import ExperimentStore

ROOT = Path(__file__).resolve().parent.parent

MODEL = """\
import argparse, os, hpo
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float); p.add_argument("--optimizer", default="adam"); p.add_argument("--epochs", type=int)
p.add_argument("--out")
a = p.parse_args()
assert os.path.isdir(a.out), a.out
loss = 1.0
for e in range(a.epochs):
    loss = loss * (1 - a.lr) + (0.05 if a.optimizer == "sgd" else 0.0)
    hpo.log_metrics(step=e, loss=loss, accuracy=1 - loss)
print(f"trained lr={a.lr} opt={a.optimizer} epochs={a.epochs}", flush=True)
hpo.log_outputs(loss=loss, accuracy=1 - loss)
"""
COMPONENT = {
    "version": 1.1, "kind": "component", "name": "typed-experiment",
    "inputs": [{"name": "learning_rate", "type": "float", "value": 0.01, "isOptional": True},
               {"name": "optimizer", "type": "str", "value": "adam", "isOptional": True, "options": ["adam", "sgd"]},
               {"name": "epochs", "type": "int"}],
    "outputs": [{"name": "loss", "type": "float"}, {"name": "accuracy", "type": "float"}],
    "run": {"kind": "job", "container": {
        "image": "python:3.12-slim", "command": ["python3", "model.py"],
        "args": ["--lr={{ learning_rate }}", "{{ params.optimizer.as_arg }}", "--epochs={{ epochs }}",
                 "--out={{ globals.run_outputs_path }}"]}},
}
PARAMS = {"learning_rate": {"kind": "linspace", "value": "0.1:0.5:3"}, "optimizer": {"kind": "choice",
                                                                                    "value": ["adam", "sgd"]}}


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.setenv("HPO_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.py").write_text(MODEL)
    (tmp_path / "component.yml").write_text(yaml.safe_dump(COMPONENT))
    return tmp_path


def hpo_cli(work: Path, *args: str, ok: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HPO_DEBUG"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "hpo", *args], cwd=work, env=env, text=True, capture_output=True,
                          timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert (proc.returncode == 0) == ok, (args, proc.stdout, proc.stderr)
    return proc


def trials_of(work: Path) -> list[dict]:
    (folder,) = [p for p in (work / "home").iterdir() if (p / "experiment.db").exists()]
    return ExperimentStore(folder, readonly=True).trials()


def run_op(op: dict, work: Path) -> list[dict]:
    exp = RunClient().create(content=op, code_directory=work)
    assert exp.wait(interval=0.2).name == "COMPLETED"
    return trials_of(work)


def op_with(matrix: dict, **params) -> dict:
    return {"kind": "operation", "component": COMPONENT, "params": {"epochs": {"value": 2}, **params},
            "matrix": matrix}


# -- every matrix kind, end to end ------------------------------------------------------------------
def test_random_matrix(work):
    trials = run_op(op_with({"kind": "random", "numRuns": 4, "concurrency": 2, "seed": 1, "params": PARAMS}), work)
    assert len(trials) == 4 and all(t["status"] == "SUCCEEDED" for t in trials)
    for t in trials:
        assert round(t["parameters"]["learning_rate"], 9) in (0.1, 0.3, 0.5)
        assert set(t["final"]) >= {"loss", "accuracy"}


def test_grid_matrix_runs_every_point(work):
    trials = run_op(op_with({"kind": "grid", "concurrency": 3, "params": PARAMS}), work)
    points = {(t["parameters"]["learning_rate"], t["parameters"]["optimizer"]) for t in trials}
    assert len(trials) == 6 and len(points) == 6


def test_mapping_matrix_runs_the_listed_sets_in_order(work):
    values = [{"learning_rate": 0.2, "optimizer": "sgd"}, {"learning_rate": 0.4, "optimizer": "adam"}]
    trials = run_op(op_with({"kind": "mapping", "values": values}), work)
    assert [t["parameters"] for t in sorted(trials, key=lambda t: t["seq"])] == values


def test_hyperopt_matrix(work):
    matrix = {"kind": "hyperopt", "algorithm": "rand", "numRuns": 3, "concurrency": 3, "seed": 2,
              "metric": {"name": "loss", "optimization": "minimize"},
              "params": {"learning_rate": {"kind": "uniform", "value": [0.05, 0.5]}}}
    trials = run_op(op_with(matrix), work)
    assert len(trials) == 3 and all(t["final"]["default"] == t["final"]["loss"] for t in trials)


@pytest.mark.parametrize("resume", [None, True])
def test_hyperband_gives_each_run_its_resource_and_promotes_the_best(work, resume):
    matrix = {"kind": "hyperband", "maxIterations": 3, "eta": 3, "concurrency": 3, "seed": 0,
              "resource": {"name": "epochs", "type": "int"}, "metric": {"name": "loss", "optimization": "minimize"},
              "params": {"learning_rate": {"kind": "uniform", "value": [0.05, 0.5]}},
              **({"resume": resume} if resume is not None else {})}
    op = op_with(matrix)
    del op["params"]["epochs"]  # the resource input needs no value: hyperband gives it
    trials = sorted(run_op(op, work), key=lambda t: t["seq"])
    assert [t["parameters"]["epochs"] for t in trials].count(1) == 3 and len(trials) == 6
    first_rung = [t for t in trials if t["parameters"]["epochs"] == 1]
    best = min(first_rung, key=lambda t: t["final"]["loss"])["parameters"]["learning_rate"]
    promoted = [t["parameters"]["learning_rate"] for t in trials if t["parameters"]["epochs"] == 3]
    assert best in promoted
    # matrix.resume: the promoted run continues (from the checkpoint of) the run of its configuration at 1 epoch
    parents = {t["seq"]: t["continues"] for t in trials if t["continues"] is not None}
    best_seq = next(t["seq"] for t in first_rung if t["parameters"]["learning_rate"] == best)
    assert list(parents.values()) == ([best_seq] if resume else [])


def test_bayes_matrix(work):
    matrix = {"kind": "bayes", "numInitialRuns": 2, "maxIterations": 2, "seed": 3,
              "metric": {"name": "accuracy", "optimization": "maximize"},
              "params": {"learning_rate": {"kind": "uniform", "value": [0.05, 0.5]}}}
    trials = run_op(op_with(matrix), work)
    assert len(trials) == 4 and all(t["final"]["default"] == t["final"]["accuracy"] for t in trials)


def test_bayes_matrix_runs_the_gp_tuner_through_hpo_run(work):
    """numInitialRuns random runs, then the Gaussian process's picks (its utility settings mapped), end to end."""
    (work / "bayes.yml").write_text(yaml.safe_dump({"matrix": {
        "kind": "bayes", "numInitialRuns": 3, "maxIterations": 4, "seed": 5, "concurrency": 2,
        "metric": {"name": "loss", "optimization": "minimize"},
        "utilityFunction": {"acquisitionFunction": "ei", "eps": 0.01,
                            "gaussianProcess": {"kernel": "matern", "nu": 2.5, "numRestartsOptimizer": 1}},
        "params": {"learning_rate": {"kind": "loguniform", "value": [0.01, 0.9]},
                   "optimizer": {"kind": "choice", "value": ["adam", "sgd"]}}}}))
    out = hpo_cli(work, "run", "-f", "component.yml", "-f", "bayes.yml", "-P", "epochs=3", "--foreground").stdout
    (folder,) = [p for p in (work / "home").iterdir() if (p / "experiment.db").exists()]
    store = ExperimentStore(folder, readonly=True)
    tuner = store.experiment()["config"]["tuner"]
    assert tuner["name"] == "gp" and tuner["class_args"] == {
        "optimize_mode": "minimize", "seed": 5, "cold_start_num": 3, "utility": "ei", "xi": 0.01, "kernel": "matern",
        "nu": 2.5, "num_restarts_optimizer": 1}
    trials = store.trials()
    assert len(trials) == 7 and all(t["status"] == "SUCCEEDED" for t in trials), out
    assert all(0.01 <= t["parameters"]["learning_rate"] <= 0.9 for t in trials)
    best = min(t["final"]["loss"] for t in trials)
    assert best < 0.5  # the loss falls with the learning rate: the model's picks go up the range


def test_iterative_matrix_runs_a_tuner_by_name(work):
    matrix = {"kind": "iterative", "maxIterations": 2, "tuner": {"hubRef": "random"}, "params": PARAMS}
    assert len(run_op(op_with(matrix), work)) == 2


def test_matrix_with_metric_early_stopping_ends_the_experiment(work):
    matrix = {"kind": "random", "numRuns": 20, "seed": 1, "params": PARAMS,
              "earlyStopping": [{"kind": "metric_early_stopping", "metric": "accuracy", "value": 0.0,
                                 "optimization": "maximize"}]}
    exp = RunClient().create(content=op_with(matrix), code_directory=work)
    assert exp.wait(interval=0.2).name == "COMPLETED"
    (folder,) = [p for p in (work / "home").iterdir() if (p / "experiment.db").exists()]
    message = ExperimentStore(folder, readonly=True).experiment()["message"] or ""
    assert len(trials_of(work)) < 20 and "early stopping: accuracy" in message


# -- the Python form and RunClient --------------------------------------------------------------------
def test_run_client_with_python_models(work):
    component = V1Component(name="typed", inputs=[V1IO(name="learning_rate", type="float", value=0.01, is_optional=True),
                                                  V1IO(name="optimizer", type="str", value="adam", is_optional=True),
                                                  V1IO(name="epochs", type="int")],
                            outputs=[V1IO(name="loss", type="float")],
                            run=V1Job(container=COMPONENT["run"]["container"]))
    op = V1Operation(component=component, params={"epochs": V1Param(value=1)},
                     run_patch={"environment": {"labels": {"team": "vision"}}},
                     matrix=V1RandomSearch(num_runs=2, concurrency=2, params={
                         "learning_rate": V1HpLinSpace(value="0.001:0.1:5"),
                         "optimizer": V1HpPChoice(value=[["adam", 0.5], ["sgd", 0.5]])}))
    exp = RunClient(project="vision").create(content=op, code_directory=work)
    assert exp.project == "vision"
    assert exp.wait(interval=0.2).name == "COMPLETED" and len(exp.list_trials()) == 2
    listed = hpo_cli(work, "list", "--all").stdout
    assert exp.id in listed


# -- the CLI ----------------------------------------------------------------------------------------
def test_cli_run_follows_logs_and_shows_outputs(work):
    out = hpo_cli(work, "run", "-f", "component.yml", "-P", "epochs=3", "-P", "optimizer=sgd", "-l").stdout
    assert "trained lr=0.01 opt=sgd epochs=3" in out
    assert "loss" in out.splitlines()[-2] and "SUCCEEDED" in out.splitlines()[-1]


def test_cli_override_files_patch_in_order(work):
    (work / "matrix.yml").write_text(yaml.safe_dump({"matrix": {"kind": "grid", "params": PARAMS, "numRuns": 2}}))
    (work / "more.yml").write_text(yaml.safe_dump({"matrix": {"numRuns": 3}, "params": {"epochs": {"value": 1}}}))
    out = hpo_cli(work, "run", "-f", "component.yml", "-f", "matrix.yml", "-f", "more.yml", "--foreground").stdout
    trials = trials_of(work)
    assert len(trials) == 3 and "accuracy" in out


def test_cli_python_module_default_and_named_variable(work):
    (work / "typed.py").write_text(
        "from hpo.polyaxon import V1Component\nimport yaml\n"
        f"component = V1Component(**yaml.safe_load({yaml.safe_dump(COMPONENT)!r}))\nmain = component\n")
    hpo_cli(work, "run", "-pm", "typed.py:component", "-P", "epochs=1", "--foreground")
    assert trials_of(work)[0]["status"] == "SUCCEEDED"
    err = hpo_cli(work, "run", "-pm", "typed.py:nothing", "-P", "epochs=1", ok=False).stderr
    assert err.count("\n") == 1 and "has no variable 'nothing'" in err and "component, main" in err


@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize("extra, files, expected", [
    (["-P", "epochs=abc"], {}, "-P epochs=abc: input 'epochs' (int): got 'abc', expected an integer"),
    ([], {}, "input 'epochs' (int) is required"),
    (["-P", "epochs=1", "-P", "optimizer=rmsprop"], {}, "got 'rmsprop', expected one of ['adam', 'sgd']"),
    (["-P", "epochs=1", "-P", "nope=1"], {}, "-P nope=1: not an input of the component"),
    (["-P", "epochs=1"], {"m.yml": {"matrix": {"kind": "random", "numRuns": 2, "params": {
        "optimizer": {"kind": "pchoice", "value": [["adam", 0.7], ["sgd", 0.6]]}}}}}, "sum to 1.3"),
    (["-P", "epochs=1"], {"m.yml": {"matrix": {"kind": "grid", "params": {
        "learning_rate": {"kind": "uniform", "value": [0, 1]}}}}}, "grid search takes no distributions"),
    (["-P", "epochs=1"], {"m.yml": {"matrix": {"kind": "grid", "params": {
        "optimizer": {"kind": "choice", "value": ["adam", "adagrad"]}}}}}, "got 'adagrad', expected one of"),
    (["-P", "epochs=1"], {"m.yml": {"matrix": {
        "kind": "bayes", "numInitialRuns": 2, "maxIterations": 2, "metric": {"name": "loss"},
        "utilityFunction": {"gaussianProcess": {"nu": 2.0}},
        "params": {"learning_rate": {"kind": "uniform", "value": [0, 1]}}}}},
     "m.yml: matrix.utilityFunction.gaussianProcess.nu: got 2.0, expected 0.5, 1.5 or 2.5"),
])
def test_bad_input_is_one_line_and_starts_nothing(work, command, extra, files, expected):
    for name, data in files.items():
        (work / name).write_text(yaml.safe_dump(data))
    args = [a for name in files for a in ("-f", name)]
    err = hpo_cli(work, command, "-f", "component.yml", *args, *extra, ok=False).stderr
    assert err.count("\n") == 1 and expected in err, err
    assert not (work / "home").exists() or not any((work / "home").glob("*/experiment.db"))


def test_hparams_on_the_command_line_make_the_matrix(work):
    args = ["-P", "epochs=1", "-HP", "learning_rate=linspace:0.1:0.5:3", "-HP", "optimizer=choice:[adam, sgd]",
            "--matrix-kind", "grid", "--matrix-concurrency", "3", "--name", "cli-grid"]
    out = hpo_cli(work, "run", "-f", "component.yml", *args, "--foreground", "-o", "runs.json").stdout
    runs = json.loads((work / "runs.json").read_text())["runs"]
    assert len(runs) == 6 and {(r["params"]["optimizer"], round(r["params"]["learning_rate"], 9)) for r in runs} == {
        (o, lr) for o in ("adam", "sgd") for lr in (0.1, 0.3, 0.5)}
    assert all(set(r["outputs"]) == {"loss", "accuracy"} for r in runs) and "accuracy" in out
    (folder,) = [p for p in (work / "home").iterdir() if (p / "experiment.db").exists()]
    config = ExperimentStore(folder, readonly=True).experiment()["config"]
    assert config["experiment_name"] == "cli-grid" and config["trial_concurrency"] == 3


@pytest.mark.parametrize("args, expected", [
    (["-HP", "learning_rate"], "-HP learning_rate: expected NAME=KIND:VALUE"),
    (["-HP", "learning_rate=uniform:[0.1"], "-HP learning_rate=uniform:[0.1: the value '[0.1' is not valid YAML/JSON"),
    (["-HP", "learning_rate=dice:[1, 2]"], "learning_rate"),
    (["--matrix-num-runs", "3"], "--matrix-num-runs: the operation has no matrix; give its params with -HP"),
])
def test_bad_command_line_matrix_is_one_line(work, args, expected):
    err = hpo_cli(work, "run", "-f", "component.yml", "-P", "epochs=1", *args, ok=False).stderr
    assert err.count("\n") == 1 and expected in err, err


def test_bad_hpo_config_is_one_line_naming_its_file(work):
    (work / "cluster.yml").write_text(yaml.safe_dump({"trialConcurrency": 2, "training_service": {"platform": "mars"}}))
    err = hpo_cli(work, "run", "-f", "component.yml", "-P", "epochs=1", "-c", "cluster.yml", ok=False).stderr
    assert err.count("\n") == 1 and err.startswith("hpo: error: cluster.yml: trial_concurrency: set by the polyaxonfile")
    (work / "cluster.yml").write_text(yaml.safe_dump({"training_service": {"platform": "mars"}}))
    err = hpo_cli(work, "run", "-f", "component.yml", "-P", "epochs=1", "-c", "cluster.yml", ok=False).stderr
    assert err.count("\n") == 1 and "cluster.yml: " in err and "training_service" in err, err


ENV_MODEL = """\
import os, hpo
print("TEAM", os.environ.get("TEAM"), "GPUS", os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
hpo.log_outputs(loss=0.5, accuracy=0.5)
"""
ENVIRONMENT = {"labels": {"team": "vision"}, "annotations": {"owner": "ml"}, "nodeSelector": {"pool": "cpu-large"},
               "env": [{"name": "TEAM", "value": "vision"}],
               "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}}}


def test_environment_reaches_the_process_and_the_gpu_request_locally(work):
    from hpo.polyaxon.client import compile_source

    (work / "env_model.py").write_text(ENV_MODEL)
    component = {**COMPONENT, "run": {"kind": "job", "environment": ENVIRONMENT, "container": {
        "image": "python:3.12-slim", "command": ["python3", "env_model.py"]}}}
    (work / "component.yml").write_text(yaml.safe_dump(component))
    out = hpo_cli(work, "run", "-f", "component.yml", "-P", "epochs=1", "-l").stdout
    assert "TEAM vision" in out
    gpu = {"runPatch": {"environment": {"resources": {"limits": {"nvidia.com/gpu": 2}}}}}
    (work / "gpu.yml").write_text(yaml.safe_dump(gpu))
    assert compile_source([work / "component.yml", work / "gpu.yml"], params={"epochs": "1"}).config.trial_gpu_number == 2
    (work / "gpu.yml").write_text(yaml.safe_dump({"runPatch": {"environment": {"resources": {
        "limits": {"nvidia.com/gpu": "two"}}}}}))
    err = hpo_cli(work, "check", "-f", "component.yml", "-f", "gpu.yml", "-P", "epochs=1", ok=False).stderr
    assert "run.environment.resources.limits.nvidia.com/gpu: got 'two', expected a whole number of GPUs" in err


def test_environment_lands_on_the_kubernetes_pod(work):
    """labels, annotations, nodeSelector, env and resources of the run, and its image, on the trial's pod."""
    import threading

    from kube_support import shared_cluster

    cluster, namespace = shared_cluster()
    (work / "env_model.py").write_text(ENV_MODEL)
    component = {**COMPONENT, "run": {"kind": "job", "environment": ENVIRONMENT, "container": {
        "image": "python:3.12-slim", "command": ["python3", "env_model.py"]}}}
    service = {"platform": "kubernetes", "kubeconfig": str(cluster.kubeconfig), "namespace": "ignored",
               "image": "busybox", "kill_grace": 1.0, "python": sys.executable, "node_selector": {"zone": "a"}}
    op = {"kind": "operation", "component": component, "params": {"epochs": {"value": 1}}, "namespace": namespace}
    jobs: dict[str, dict] = {}
    stop = threading.Event()

    def record() -> None:
        while not stop.is_set():
            for job in cluster.objects("jobs", namespace):
                jobs[job["metadata"]["name"]] = job
            stop.wait(0.05)
    recorder = threading.Thread(target=record, daemon=True)
    recorder.start()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exp = RunClient().create(content=op, code_directory=work, config={"training_service": service})
        assert exp.wait(interval=0.2).name == "COMPLETED"
    finally:
        stop.set()
        recorder.join()
    assert not caught  # the image and every environment field are honoured: nothing to warn about
    (trial,) = trials_of(work)
    assert trial["status"] == "SUCCEEDED" and trial["final"]["loss"] == 0.5
    (job,) = jobs.values()
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "vision" and pod["metadata"]["annotations"] == {"owner": "ml"}
    assert pod["spec"]["nodeSelector"] == {"zone": "a", "pool": "cpu-large"}
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "trial"]
    assert container["image"] == "python:3.12-slim"
    assert container["resources"] == {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}}
    assert {"name": "TEAM", "value": "vision"} in container["env"]


def test_unsupported_run_kind_names_the_file(work):
    (work / "svc.yml").write_text(yaml.safe_dump({**COMPONENT, "run": {"kind": "service", "container": {}}}))
    err = hpo_cli(work, "check", "-f", "svc.yml", ok=False).stderr
    assert "svc.yml: run: run.kind 'service' is not supported" in err


def test_check_shows_the_matrix(work):
    (work / "m.yml").write_text(yaml.safe_dump({"matrix": {"kind": "grid", "params": PARAMS}}))
    out = hpo_cli(work, "check", "-f", "component.yml", "-f", "m.yml", "-P", "epochs=1", "-m").stdout
    assert "tuner grid" in out and "6" in out


# -- models and patches -------------------------------------------------------------------------------
def test_io_rules():
    with pytest.raises(PolyaxonError, match="a required input cannot have a default value"):
        V1IO(name="x", type="int", value=1)
    with pytest.raises(PolyaxonError, match="isFlag is only valid for type bool"):
        V1IO(name="x", type="int", is_flag=True, is_optional=True)
    assert V1IO(name="d", type="date", value="2024-01-02", isOptional=True).value == "2024-01-02"
    assert V1HpChoice(value=[1, 2]).is_distribution is False


def test_patch_strategies():
    cur = {"env": {"a": 1, "b": [1, 2]}, "x": 1, "y": None}
    new = {"env": {"b": [2, 3], "c": 4}, "x": None, "y": 5}
    assert patch(cur, new) == {"env": {"a": 1, "b": [1, 2, 3], "c": 4}, "x": 1, "y": 5}
    assert patch(cur, new, "pre_merge") == {"env": {"a": 1, "b": [2, 3, 1], "c": 4}, "x": 1, "y": 5}
    assert patch(cur, new, "replace") == {"env": {"b": [2, 3], "c": 4}, "x": 1, "y": 5}
    assert patch(cur, new, "isnull") == {"env": {"a": 1, "b": [1, 2]}, "x": 1, "y": 5}


def test_context_rendering_of_flags_and_arg_format():
    from hpo.polyaxon.context import render
    ios = {"debug": {"is_flag": True}, "lr": {"arg_format": "-l {{ lr }}"}}
    params = {"debug": True, "lr": 0.1, "quiet": False}
    assert render("{{ params.debug.as_arg }} {{ params.lr.as_arg }} {{ globals.uuid }}", params,
                  {"uuid": "abc"}, ios=ios) == "--debug -l 0.1 abc"
    with pytest.raises(KeyError, match="globals.nope"):
        render("{{ globals.nope }}", params, {})
    assert json.loads(render("{{ x }}", {"x": [1, 2]}, {})) == [1, 2]
