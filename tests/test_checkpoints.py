"""Checkpoints from real trial processes: saved whole or not at all, kept by the save_* policy, restored by retries."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, wait_until, resume_to_end

# Four epochs, a checkpoint after each; epoch 2 has the best value.  x > 0.5 crashes after epoch 3 unless restored.
EPOCHS = """
import hpo, json, os, sys
p = hpo.get_next_parameter()
prev = hpo.restore_checkpoint()
start = json.loads((prev / "state.json").read_text())["epoch"] if prev is not None else 0
if prev is not None:
    print("restored at epoch", start, flush=True)
for epoch in range(start + 1, 5):
    hpo.report_intermediate_result(100 + p["x"] if epoch == 2 else p["x"] * epoch)
    with hpo.checkpoint_path({"steps_completed": epoch}) as path:
        (path / "state.json").write_text(json.dumps({"epoch": epoch}))
        (path / "weights.bin").write_bytes(os.urandom(2048))
    if epoch == 3 and prev is None and p.get("crash"):
        sys.exit("crash after epoch 3")
hpo.report_final_result(p["x"])
"""


def _checkpoints(exp):
    return exp._store().checkpoints()


def test_checkpoints_are_kept_by_the_policy_and_listed(make_experiment):
    exp = make_experiment(EPOCHS, max_trial_number=3, trial_concurrency=2)
    exp.run(port=0)
    rows = _checkpoints(exp)
    assert len(rows) == 12 and {r["state"] for r in rows} == {"COMPLETED", "DELETED"}
    for trial in exp.list_trial_jobs():
        mine = [r for r in rows if r["trial_id"] == trial["id"]]
        assert [r["steps_completed"] for r in mine] == [1, 2, 3, 4]
        assert mine[1]["value"] == pytest.approx(100 + trial["parameters"]["x"])
        # defaults save_trial_best 1 + save_trial_latest 1: the best (epoch 2) and the latest (epoch 4)
        assert [r["state"] for r in mine] == ["DELETED", "COMPLETED", "DELETED", "COMPLETED"]
    for r in rows:
        folder = Path(r["location"])
        assert folder.parent == exp.directory / "checkpoints"
        if r["state"] == "COMPLETED":
            assert json.loads((folder / "metadata.json").read_text()) == {"steps_completed": r["steps_completed"]}
            assert r["resources"] == {"metadata.json": (folder / "metadata.json").stat().st_size,
                                      "state.json": 12, "weights.bin": 2048}
        else:
            wait_until(lambda: not folder.exists(), 5, what="a deleted checkpoint's files to go")
    assert not list((exp.directory / "checkpoints").glob(".*"))  # no partial folder left
    out = subprocess.run([sys.executable, "-m", "hpo", "checkpoints", exp.id, "--best", "2"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and len(lines) == 3 and lines[0].split()[:5] == ["UUID", "TRIAL", "SEQ", "STEP", "VALUE"]
    best = max((t for t in exp.list_trial_jobs()), key=lambda t: t["parameters"]["x"])
    assert lines[1].split()[1] == best["id"] and lines[1].split()[3] == "2"


def test_a_policy_keeping_the_experiments_best(make_experiment):
    exp = make_experiment(EPOCHS, max_trial_number=2, checkpoint_storage={
        "save_experiment_best": 1, "save_trial_best": 0, "save_trial_latest": 0})
    exp.run(port=0)
    kept = [r for r in _checkpoints(exp) if r["state"] == "COMPLETED"]
    best = max(exp.list_trial_jobs(), key=lambda t: t["parameters"]["x"])
    assert [(r["trial_id"], r["steps_completed"]) for r in kept] == [(best["id"], 2)]


def test_a_retry_continues_from_the_failed_trials_latest_checkpoint(make_experiment, tmp_path):
    storage = tmp_path / "shared-storage"
    exp = make_experiment(EPOCHS, search_space={"x": {"_type": "choice", "_value": [0.5]},
                                                "crash": {"_type": "choice", "_value": [True]}},
                          max_trial_number=1, max_trial_retries=1,
                          checkpoint_storage={"host_path": str(storage), "storage_path": "ckpt"})
    exp.run(port=0)
    first, retry = exp.list_trial_jobs()
    assert (first["status"], retry["status"], retry["rerun_of"]) == ("FAILED", "SUCCEEDED", first["seq"])
    assert "restored at epoch 3" in (exp.directory / "trials" / retry["id"] / "stdout.log").read_text()
    steps = [(r["trial_id"], r["steps_completed"]) for r in _checkpoints(exp)]
    assert steps == [(first["id"], 1), (first["id"], 2), (first["id"], 3), (retry["id"], 4)]
    assert all(Path(r["location"]).parent == storage / "ckpt" for r in _checkpoints(exp))


def test_a_trial_killed_while_writing_leaves_no_checkpoint(make_experiment):
    body = """
import hpo, time
with hpo.checkpoint_path({"steps_completed": 1}) as path:
    (path / "half.bin").write_bytes(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(60)
"""
    exp = make_experiment(body, max_trial_number=1)
    exp.start(port=0)
    trial = wait_until(lambda: [t for t in exp.list_trial_jobs(status="RUNNING")
                                if "writing" in (exp.directory / "trials" / t["id"] / "stdout.log").read_text()],
                       20, what="a trial writing its checkpoint")[0]
    assert list((exp.directory / "checkpoints").glob(".*.partial"))
    exp.kill_trial_job(trial["id"])
    exp.wait(30)
    exp.stop()
    assert _checkpoints(exp) == []
    wait_until(lambda: not list((exp.directory / "checkpoints").iterdir()), 5, what="the partial folder removed")


def test_reports_that_could_escape_the_storage_are_refused(make_experiment):
    escape = 'print("HPO_CHECKPOINT=" + \'{"uuid": "../../../etc", "metadata": {}, "resources": {}}\', flush=True)\n'
    exp = make_experiment(escape, max_trial_number=1)
    exp.run(port=0)
    trial = exp.list_trial_jobs()[0]
    assert trial["status"] == "FAILED" and "is not a uuid" in trial["message"]
    missing = ('print("HPO_CHECKPOINT=" + \'{"uuid": "0b6f8d4e-3c1a-4f7e-9a55-2d7c1e0f4b21", "metadata": {}, '
               '"resources": {}}\', flush=True)\nimport hpo\nhpo.report_final_result(1)\n')
    exp2 = make_experiment(missing, max_trial_number=1)
    exp2.run(port=0)
    (row,) = _checkpoints(exp2)
    assert row["state"] == "ERROR" and "not in the checkpoint storage" in row["message"]


def test_bad_metadata_is_a_clear_error_in_the_trial(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import hpo

    with pytest.raises(ValueError, match="must be JSON"):
        with hpo.checkpoint_path({"model": object()}):
            pass
    with pytest.raises(ValueError, match="steps_completed must be an integer >= 0"):
        with hpo.checkpoint_path({"steps_completed": -1}):
            pass
    with pytest.raises(ValueError, match="is not a folder"):
        hpo.report_checkpoint(tmp_path / "nothing-here")
    # standalone (outside an experiment): ./checkpoints/<uuid>, nothing half-written left by an error
    with pytest.raises(RuntimeError):
        with hpo.checkpoint_path() as path:
            (path / "a").write_text("1")
            raise RuntimeError("training failed")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "w.bin").write_bytes(b"12345")
    uid = hpo.report_checkpoint(tmp_path / "mine", {"steps_completed": 3})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [uid]
    assert (tmp_path / "checkpoints" / uid / "w.bin").read_bytes() == b"12345"
    assert hpo.restore_checkpoint() is None


def test_a_trial_whose_service_does_not_collect_checkpoints_is_told(tmp_path):
    env = {**os.environ, "HPO_TRIAL_ID": "t1", "HPO_EXPERIMENT_ID": "e1", "PYTHONPATH": str(ROOT)}
    env.pop("HPO_CHECKPOINT_DIR", None)
    out = subprocess.run([sys.executable, "-c", "import hpo\nwith hpo.checkpoint_path(): pass"], env=env,
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 1 and "does not collect checkpoints yet" in out.stderr


def test_a_registered_checkpoint_is_never_collected(make_experiment, tmp_path):
    from hpo.model_registry import ModelRegistry

    body = """
import hpo, os, time
gate = os.path.join(os.path.dirname(os.path.abspath(__file__)), "go")
for step in (1, 2):
    hpo.report_intermediate_result(step)
    with hpo.checkpoint_path({"steps_completed": step}) as path:
        (path / "w").write_text(str(step))
    while step == 1 and not os.path.exists(gate):
        time.sleep(0.05)
hpo.report_final_result(2)
"""
    exp = make_experiment(body, max_trial_number=1, checkpoint_storage={"save_trial_best": 0, "save_trial_latest": 1})
    exp.start(port=0)
    first = wait_until(lambda: _checkpoints(exp), 20, what="the first checkpoint")[0]
    with ModelRegistry() as registry:
        registry.create_model("kept")
        registry.register_version("kept", first["uuid"], experiment_id=exp.id, trial_id=first["trial_id"])
    (Path(exp.config.trial_code_directory) / "go").write_text("")
    assert exp.wait(30)
    exp.stop()
    states = [(r["steps_completed"], r["state"]) for r in _checkpoints(exp)]
    assert states == [(1, "COMPLETED"), (2, "COMPLETED")]  # without the registration, step 1 would be deleted
    assert (Path(first["location"]) / "w").read_text() == "1"


def test_engine_killed_mid_checkpoint_then_resumed_leaves_nothing_half_written(launcher):
    import signal

    from hpo.storage import ExperimentStore

    body = """
import hpo, os, time
gate = os.path.join(os.path.dirname(os.path.abspath(__file__)), "go")
hpo.report_intermediate_result(1)
with hpo.checkpoint_path({"steps_completed": 1}) as path:
    (path / "w").write_text("1")
with hpo.checkpoint_path({"steps_completed": 2}) as path:
    (path / "w").write_text("2")
    print("writing", flush=True)
    while not os.path.exists(gate):
        time.sleep(0.05)
hpo.report_final_result(1)
"""
    proc, exp_id, directory = launcher(body, max_trial_number=1)

    def writing() -> list[Any]:  # in the second checkpoint, once the engine has recorded the first
        with ExperimentStore(directory, readonly=True) as store:
            return [t for t in store.trials(status="RUNNING") if store.checkpoints(t["seq"])
                    and "writing" in (directory / "trials" / t["id"] / "stdout.log").read_text()]
    first = wait_until(writing, 30, what="a trial in the middle of a checkpoint")[0]
    assert list((directory / "checkpoints").glob(f".{exp_id}-{first['id']}-*.partial"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (Path(launcher.tmp_path) / "code" / "go").write_text("")
    resumed = resume_to_end(exp_id, 60)
    assert not list((directory / "checkpoints").glob(".*"))  # the half-written one is gone
    rows = resumed._store().checkpoints()
    kept = [r for r in rows if r["state"] == "COMPLETED"]
    assert {r["trial_id"] for r in rows} >= {first["id"]} and all(Path(r["location"]).is_dir() for r in kept)
    assert not [r for r in rows if r["state"] == "DELETED" and Path(r["location"]).exists()]


def test_a_full_disk_costs_the_checkpoint_not_the_trial(make_experiment, small_disk):
    body = """
import hpo, os
for step, size in ((1, 3 * 2**20), (2, 1000)):  # the first does not fit on the 1 MiB disk, the second does
    hpo.report_intermediate_result(step)
    with hpo.checkpoint_path({"steps_completed": step}) as path:
        (path / "weights.bin").write_bytes(os.urandom(size))
import tempfile
big = tempfile.mkdtemp()
with open(os.path.join(big, "weights.bin"), "wb") as fh:
    fh.write(os.urandom(3 * 2**20))
hpo.report_checkpoint(big, {"steps_completed": 3})
hpo.report_final_result(1)
"""
    exp = make_experiment(body, max_trial_number=2, checkpoint_storage={"host_path": str(small_disk),
                                                                      "save_trial_latest": 3})
    exp.run(port=0)
    assert exp.get_status() == "DONE"
    trials = exp.list_trial_jobs()
    assert [t["status"] for t in trials] == ["SUCCEEDED", "SUCCEEDED"]
    rows = _checkpoints(exp)
    for trial in trials:
        mine = [(r["steps_completed"], r["state"]) for r in rows if r["trial_id"] == trial["id"]]
        assert mine == [(1, "ERROR"), (2, "COMPLETED"), (3, "ERROR")]
        stderr = (exp.directory / "trials" / trial["id"] / "stderr.log").read_text()
        assert stderr.count("not saved: No space left on device") == 2 and "Traceback" not in stderr
    for r in rows:
        if r["state"] == "ERROR":
            assert r["message"] == f"not saved: No space left on device (in {small_disk})" and r["resources"] == {}
            assert not Path(r["location"]).exists()
    assert sorted(p.name for p in small_disk.iterdir()) == sorted(r["uuid"] for r in rows if r["state"] == "COMPLETED")


def test_links_leading_out_of_a_checkpoint_are_refused(make_experiment, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the checkpoint")
    body = f"""
import hpo, os
import tempfile
os.chdir(tempfile.mkdtemp())
os.makedirs("mine/sub")
open("mine/sub/w.bin", "w").write("w")
os.symlink("sub/w.bin", "mine/inside")          # inside the folder: kept as a link
uid = hpo.report_checkpoint("mine", {{"steps_completed": 1}})
os.symlink({str(secret)!r}, "mine/leak")
for attempt in ("report", "path"):
    try:
        if attempt == "report":
            hpo.report_checkpoint("mine")
        else:
            with hpo.checkpoint_path() as path:
                os.symlink("../../", path / "up")
    except ValueError as exc:
        print("refused:", exc, flush=True)
# a trial that goes around the API: its own folder in the storage, with a link out, reported by hand
import json, uuid
fake = str(uuid.uuid4())
folder = os.path.join(os.environ["HPO_CHECKPOINT_DIR"], fake)
os.makedirs(folder)
open(os.path.join(folder, "metadata.json"), "w").write("{{}}")
os.symlink({str(secret)!r}, os.path.join(folder, "leak"))
print("HPO_CHECKPOINT=" + json.dumps({{"uuid": fake, "metadata": {{}}, "resources": {{}}}}), flush=True)
hpo.report_final_result(1)
"""
    exp = make_experiment(body, max_trial_number=1)
    exp.run(port=0)
    trial = exp.list_trial_jobs()[0]
    assert trial["status"] == "SUCCEEDED", trial["message"]
    out = (exp.directory / "trials" / trial["id"] / "stdout.log").read_text().splitlines()
    refused = [line for line in out if line.startswith("refused:")]
    assert refused == [f"refused: checkpoint: leak is a symbolic link to {secret}, outside the checkpoint",
                       "refused: checkpoint: up is a symbolic link to ../../, outside the checkpoint"]
    good, bypass = _checkpoints(exp)
    assert good["state"] == "COMPLETED" and good["resources"]["inside"] == len("sub/w.bin")
    assert os.readlink(Path(good["location"]) / "inside") == "sub/w.bin"
    assert bypass["state"] == "ERROR" and bypass["message"].startswith("refused: checkpoint: leak is a symbolic link")
    assert not Path(bypass["location"]).exists()  # removed, never read
    left = sorted(p.name for p in (exp.directory / "checkpoints").iterdir())
    assert left == [good["uuid"]]  # no partial folder of the refused ones


def test_checkpoints_a_dead_engine_never_recorded_are_swept_on_resume(tmp_path):
    """Saved by a trial (or uploaded) but never recorded: removed from the experiment's own folder on resume; in
    a host_path other experiments share, only this experiment's partial folders are touched."""
    import uuid

    from hpo.checkpoint_storage import SharedFsStorage
    from hpo.dispatcher import _remove_leftover_checkpoints

    def populate(folder: Path) -> dict[str, Path]:
        names = {"recorded": str(uuid.uuid4()), "orphan": str(uuid.uuid4()), "partial": ".e1-t1-x.partial",
                 "other-experiment": ".e2-t1-x.partial", "not-a-checkpoint": "notes"}
        for name in names.values():
            (folder / name).mkdir(parents=True)
            (folder / name / "metadata.json").write_text("{}")
        return {k: folder / v for k, v in names.items()}

    own = populate(tmp_path / "own")
    _remove_leftover_checkpoints(SharedFsStorage(tmp_path / "own", own=True), ".e1-*-*.partial", [],
                                 {own["recorded"].name})
    assert {k for k, p in own.items() if p.exists()} == {"recorded", "other-experiment", "not-a-checkpoint"}
    shared = populate(tmp_path / "shared")
    _remove_leftover_checkpoints(SharedFsStorage(tmp_path / "shared", own=False), ".e1-*-*.partial", [],
                                 {shared["recorded"].name})
    assert {k for k, p in shared.items() if p.exists()} == {"recorded", "orphan", "other-experiment",
                                                          "not-a-checkpoint"}
