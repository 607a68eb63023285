"""hpo.client, the Determined-style SDK, on real experiments with real trial processes (in this process and
in another one), and its CLI commands (hpo checkpoint download, hpo model ...)."""
from __future__ import annotations

import json
import shutil
import textwrap
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import PY, wait_until
from hpo import client
from hpo.cli import main as cli

# Three epochs, a checkpoint after each; epoch 2 has the best accuracy (100 + x).
MAXIMIZE = """
import hpo, os
p = hpo.get_next_parameter()
for epoch in (1, 2, 3):
    acc = 100 + p["x"] if epoch == 2 else p["x"] * epoch
    hpo.report_intermediate_result({"default": acc, "accuracy": acc, "loss": -acc})
    with hpo.checkpoint_path({"steps_completed": epoch, "rank": round(10 * p["x"]) + epoch}) as path:
        (path / "weights.bin").write_bytes(os.urandom(64))
print("trained", p["x"], flush=True)
hpo.report_final_result(p["x"])
"""

# Minimise a loss; epoch 2 is each trial's best, and every trial waits for ``go`` after its first checkpoint.
MINIMIZE = """
import hpo, os, pathlib, time
p = hpo.get_next_parameter()
for epoch in (1, 2, 3):
    hpo.report_intermediate_result({1: 1 + p["x"], 2: p["x"], 3: 0.5 + p["x"]}[epoch])
    with hpo.checkpoint_path({"steps_completed": epoch}) as path:
        (path / "weights.bin").write_bytes(b"w" * epoch)
    while epoch == 1 and not pathlib.Path("go").exists():
        time.sleep(0.05)
hpo.report_final_result(p["x"])
"""

# Two results, then wait for gate<seq>, then a last line: a trial the test controls.
GATED = """
import hpo, pathlib, time
p = hpo.get_next_parameter()
seq = hpo.get_sequence_id()
hpo.report_intermediate_result(p["x"])
print("first", flush=True)
while not pathlib.Path(f"gate{seq}").exists():
    time.sleep(0.05)
hpo.report_intermediate_result(p["x"] + 1)
print("released", seq, flush=True)
hpo.report_final_result(p["x"] + 1)
"""


@pytest.fixture(autouse=True)
def _stop_engines():
    yield
    from hpo.experiment import _live_runners
    for runner in list(_live_runners):
        runner.stop()


def _code(tmp_path: Path, body: str) -> Path:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "trial.py").write_text(textwrap.dedent(body).lstrip())
    return code


def test_determined_yaml_best_checkpoints_download_trials_and_cli(tmp_path, capsys):
    code = _code(tmp_path, MAXIMIZE)
    (tmp_path / "exp.yml").write_text(textwrap.dedent(f"""
        searchSpace: {{x: {{_type: uniform, _value: [0, 1]}}}}
        trialCommand: {PY} trial.py
        tuner: {{name: random, classArgs: {{seed: 7}}}}
        searcher: {{metric: accuracy, smaller_is_better: false}}
        max_trials: 3
        max_concurrent_trials: 3
    """))
    exp = client.create_experiment(config=tmp_path / "exp.yml", model_dir=code)
    assert exp.wait(interval=0.1) is client.ExperimentState.COMPLETED
    assert exp.state is client.ExperimentState.COMPLETED
    assert exp.config["max_trial_number"] == 3 and exp.config["trial_concurrency"] == 3
    assert exp.config["tuner"]["class_args"] == {"seed": 7, "optimize_mode": "maximize"}
    assert not exp.smaller_is_better

    trials = exp.list_trials()
    xs = {t.id: t.hparams["x"] for t in trials}
    assert len(trials) == 3 and {t.state for t in trials} == {client.TrialState.COMPLETED}
    best_trial = max(xs, key=xs.get)
    # the truly best: epoch 2 of the trial with the largest x (100 + x), still on disk
    top = exp.top_checkpoint()
    assert (top.training.trial_id, top.steps_completed) == (best_trial, 2)
    assert top.searcher_metric == pytest.approx(100 + xs[best_trial]) and top.location.is_dir()
    assert top.training.validation_metrics["avgMetrics"]["accuracy"] == pytest.approx(100 + xs[best_trial])
    assert top.training.hparams == {"x": xs[best_trial]} and top.training.experiment_id == exp.id
    assert top.state is client.CheckpointState.COMPLETED and top.metadata["steps_completed"] == 2
    assert set(top.resources) == {"metadata.json", "weights.bin"}
    # by another metric key, the other way round: the worst accuracy is the best loss
    assert exp.top_checkpoint(sort_by="loss", smaller_is_better=True).uuid == top.uuid
    worst = exp.top_checkpoint(sort_by="accuracy", smaller_is_better=True)
    assert worst.training.trial_id == min(xs, key=xs.get) and worst.state is client.CheckpointState.COMPLETED

    top3 = exp.top_n_checkpoints(5)
    assert [c.training.trial_id for c in top3] == sorted(xs, key=xs.get, reverse=True)
    assert [c.steps_completed for c in top3] == [2, 2, 2]

    kept = exp.list_checkpoints()  # COMPLETED only (epochs 2 and 3 of each trial), best first
    assert len(kept) == 6 and kept[0].uuid == top.uuid
    values = [c.searcher_metric for c in kept]
    assert values == sorted(values, reverse=True)
    by_rank = exp.list_checkpoints(sort_by="rank", order_by=client.OrderBy.ASC, max_results=4)  # a metadata key
    assert [c.metadata["rank"] for c in by_rank] == sorted(c.metadata["rank"] for c in kept)[:4]
    by_metric = exp.list_checkpoints(sort_by=client.CheckpointSortBy.SEARCHER_METRIC, order_by=client.OrderBy.ASC)
    assert [c.uuid for c in by_metric] == [c.uuid for c in reversed(kept)]
    by_step = exp.list_checkpoints(sort_by=client.CheckpointSortBy.BATCH_NUMBER, order_by=client.OrderBy.DESC)
    assert [c.steps_completed for c in by_step] == [3, 3, 3, 2, 2, 2]
    with pytest.raises(ValueError, match="together"):
        exp.list_checkpoints(sort_by="rank")

    # download: copied, a second call skips, a deleted one is refused, files gone outside hpo: one clear error
    out = tmp_path / "out"
    assert client.get_checkpoint(top.uuid).download(str(out)) == str(out)
    assert (out / "weights.bin").read_bytes() == (top.location / "weights.bin").read_bytes()
    (out / "weights.bin").write_bytes(b"mine")
    top.download(str(out))
    assert (out / "weights.bin").read_bytes() == b"mine"  # skipped: the target already had metadata.json
    assert not list(out.glob(".*"))
    trial = client.get_trial(best_trial)
    gone = [c for c in trial.list_checkpoints() if c.state is client.CheckpointState.DELETED]
    assert [c.steps_completed for c in gone] == [1]
    with pytest.raises(client.CheckpointStateError, match="DELETED"):
        gone[0].download(str(tmp_path / "deleted"))
    latest = trial.select_checkpoint(latest=True)
    assert latest.steps_completed == 3
    (latest.location / "weights.bin").unlink()
    with pytest.raises(client.CheckpointFilesMissing, match="weights.bin"):
        latest.download(str(tmp_path / "broken"))
    with pytest.raises(client.CheckpointNotFound):
        client.get_checkpoint("no-such-uuid")

    # trials
    assert trial.select_checkpoint(best=True).uuid == top.uuid
    assert trial.select_checkpoint(uuid=gone[0].uuid).state is client.CheckpointState.DELETED
    assert trial.select_checkpoint(best=True, sort_by="rank", smaller_is_better=True).steps_completed == 2
    with pytest.raises(ValueError, match="exactly one"):
        trial.select_checkpoint(latest=True, best=True)
    assert list(trial.iter_logs()) == [f"trained {xs[best_trial]}"]
    assert client.get_trial(f"{exp.id}/{best_trial}").hparams == {"x": xs[best_trial]}
    with pytest.raises(client.TrialNotFound):
        client.get_trial("nosuchtrial")
    metrics = list(client.stream_trials_metrics([best_trial]))
    assert [(m.steps_completed, m.group, m.trial_id) for m in metrics] == [(1, "validation", best_trial),
                                                                           (2, "validation", best_trial),
                                                                           (3, "validation", best_trial)]
    assert metrics[1].metrics["accuracy"] == pytest.approx(100 + xs[best_trial])
    with pytest.raises(client.ExperimentNotActive, match="not running"):
        exp.pause()

    # the CLI: download, and the model registry
    assert cli(["checkpoint", "download", top.uuid, str(tmp_path / "cli-out")]) == 0
    assert (tmp_path / "cli-out" / "metadata.json").exists()
    assert cli(["checkpoint", "download", top.uuid, str(tmp_path / "cli-out")]) == 0
    assert "already there" in capsys.readouterr().out
    assert cli(["model", "create", "digits", "--description", "best digits"]) == 0
    assert cli(["model", "register", "digits", top.uuid]) == 0
    assert f"version 1: checkpoint {top.uuid}" in capsys.readouterr().out
    assert cli(["model", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["digits", "1"]
    assert cli(["model", "show", "digits"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert "best digits" in shown[0] and shown[2].split()[:4] == ["1", top.uuid, exp.id, best_trial]
    assert cli(["model", "register", "digits", gone[0].uuid]) == 1
    assert cli(["model", "show", "nope"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "DELETED" in err[0] and "no model named 'nope'" in err[1]


def test_minimize_dict_config_top_checkpoint_exists_and_registered_checkpoint_survives_gc(tmp_path):
    code = _code(tmp_path, MINIMIZE)
    config = {"search_space": {"x": {"_type": "uniform", "_value": [0, 1]}}, "trial_command": f"{PY} trial.py",
              "tuner": "random", "searcher": {"metric": "default", "smaller_is_better": True, "max_trials": 2,
                                              "max_concurrent_trials": 2},
              "checkpoint_storage": {"save_trial_best": 0, "save_trial_latest": 1}}
    exp = client.create_experiment(config, model_dir=code)
    assert exp.smaller_is_better and exp.state is client.ExperimentState.ACTIVE
    # both trials hold their first checkpoint: register one of them, then let the trials go on
    first = wait_until(lambda: len(exp.list_checkpoints()) == 2 and exp.list_checkpoints(), 30, what="2 checkpoints")
    model = client.create_model("loss-model", description="d", metadata={"k": 1})
    version = model.register_version(first[-1].uuid)
    assert version.model_version == 1 and version.checkpoint.uuid == first[-1].uuid
    (code / "go").touch()
    assert exp.wait(interval=0.1) is client.ExperimentState.COMPLETED

    every = [c for t in exp.list_trials() for c in t.list_checkpoints()]
    registered = next(c for c in every if c.uuid == first[-1].uuid)
    assert registered.state is client.CheckpointState.COMPLETED and registered.location.is_dir()  # survived GC
    deleted = [c for c in every if c.state is client.CheckpointState.DELETED]
    assert sorted(c.steps_completed for c in deleted) == [1, 2, 2]
    # the best value ever reported (an epoch 2, deleted by the policy) is not offered; the best kept one is
    top = exp.top_checkpoint()
    kept = [c for c in every if c.state is client.CheckpointState.COMPLETED]
    assert top.searcher_metric == min(c.searcher_metric for c in kept) and top.steps_completed == 3
    assert min(c.searcher_metric for c in deleted) < top.searcher_metric and top.location.is_dir()
    assert [c.steps_completed for c in exp.top_n_checkpoints(2)] == [3, 3]

    got = client.get_model("loss-model")
    assert got.description == "d" and got.metadata == {"k": 1}
    assert [v.model_version for v in got.list_versions()] == [1]
    assert got.register_version(top.uuid).model_version == 2
    assert got.get_version().checkpoint_uuid == top.uuid and got.get_version(1).checkpoint_uuid == registered.uuid
    assert [m.name for m in client.get_models(name="loss")] == ["loss-model"]
    with pytest.raises(client.ModelExists):
        client.create_model("loss-model")


def test_determined_only_keys_are_one_line_errors(tmp_path):
    base = {"search_space": {"x": {"_type": "uniform", "_value": [0, 1]}}, "trial_command": "true",
            "tuner": "random"}
    for extra, words in (({"entrypoint": "python train.py"}, "config.entrypoint: a Determined key"),
                         ({"searcher": {"name": "adaptive_asha"}}, "config.searcher.name"),
                         ({"searcher": {"smaller_is_better": True}, "tuner": {"name": "random", "class_args": {
                             "optimize_mode": "maximize"}}}, "contradicts"),
                         ({"max_trials": 2, "max_trial_number": 3}, "not both")):
        with pytest.raises(ValueError, match=words) as info:
            client.create_experiment({**base, **extra}, model_dir=tmp_path)
        assert "\n" not in str(info.value)
    with pytest.raises(client.ExperimentNotFound):
        client.get_experiment("nosuchexp")


def test_pause_activate_kill_and_live_streams_across_processes(launcher, tmp_path):
    proc, exp_id, _ = launcher(GATED, trial_concurrency=1, max_trial_number=3)
    code = tmp_path / "code"
    exp = client.get_experiment(exp_id)
    first = wait_until(lambda: exp.list_trials(), 30, what="the first trial")[0]
    stream = client.stream_trials_metrics([first.id])
    m = next(stream)  # live: the trial still waits at its gate
    assert (m.trial_id, m.trial_run_id, m.steps_completed, m.group) == (first.id, 0, 1, "validation")
    assert m.end_time.tzinfo is not None and first.state is client.TrialState.ACTIVE

    port = exp._src.info()["port"]
    for action in ("pause", "activate"):  # the token rule of every action
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/experiment/{action}",
                                                          data=b"", method="POST"), timeout=10)
        assert refused.value.code == 401
    exp.pause()
    assert exp.state is client.ExperimentState.PAUSED
    assert json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/experiment", timeout=10))["paused"]
    with pytest.raises(client.ExperimentNotActive, match="paused"):
        exp.wait(interval=0.05)
    (code / "gate1").touch()
    assert [m.steps_completed for m in stream] == [2]  # then the stream ends with the trial
    assert first.state is client.TrialState.COMPLETED
    threading.Event().wait(1.0)
    assert len(exp.list_trials()) == 1  # paused: nothing new launched

    exp.activate()
    second = wait_until(lambda: len(exp.list_trials()) == 2 and exp.list_trials()[1], 30, what="a second trial")
    assert exp.state is client.ExperimentState.ACTIVE
    threading.Timer(0.5, (code / "gate2").touch).start()
    assert list(second.iter_logs(follow=True)) == ["first", "released 2"]

    third = wait_until(lambda: len(exp.list_trials()) == 3 and exp.list_trials()[2], 30, what="a third trial")
    wait_until(lambda: third.state is client.TrialState.ACTIVE and list(third.iter_logs()), 30, what="third running")
    exp.kill()
    assert exp.wait(interval=0.1) is client.ExperimentState.CANCELED
    assert proc.wait(timeout=30) == 0
    # the launching process is gone: a fresh handle reads the finished experiment
    done = client.get_experiment(exp_id)
    assert done.state is client.ExperimentState.CANCELED
    assert [t.state for t in done.list_trials()] == [client.TrialState.COMPLETED, client.TrialState.COMPLETED,
                                                     client.TrialState.CANCELED]
    with pytest.raises(client.ExperimentNotActive, match="CANCELED"):
        done.activate()
    with pytest.raises(client.CheckpointNotFound):
        done.top_checkpoint()
    assert json.loads(json.dumps(done.config))["max_trial_number"] == 3
    shutil.rmtree(code)
