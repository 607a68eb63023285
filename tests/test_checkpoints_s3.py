"""S3 checkpoint storage against a real S3 API server (moto's server mode on loopback): uploads with the right
keys and sizes, GC through the bucket, SDK/CLI downloads, retries restored from S3, an engine killed mid-upload,
upload failures, config errors, and credentials that never reach hpo's files."""
from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import ROOT, wait_until, resume_to_end

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

KEY_ID, SECRET = "AKIAHPOTESTKEY0000001", "hpo-test-secret-must-never-be-stored-7f3b9c"

# Three epochs, a checkpoint after each (its weights just over boto3's 8 MB multipart threshold); epoch 2 has the
# best value.  crash=True exits after epoch 2 unless restored.
EPOCHS = """
import hashlib, hpo, json, sys
p = hpo.get_next_parameter()
prev = hpo.restore_checkpoint()
start = json.loads((prev / "state.json").read_text())["epoch"] if prev is not None else 0
if prev is not None:
    print("restored at epoch", start, flush=True)
for epoch in range(start + 1, 4):
    hpo.report_intermediate_result(100 + p["x"] if epoch == 2 else p["x"] * epoch)
    with hpo.checkpoint_path({"steps_completed": epoch}) as path:
        (path / "state.json").write_text(json.dumps({"epoch": epoch}))
        (path / "sub").mkdir()
        (path / "sub" / "weights.bin").write_bytes(hashlib.sha256(f"{p['x']}-{epoch}".encode()).digest() * (2**18 + 1))
    if epoch == 2 and prev is None and p.get("crash"):
        sys.exit("crash after epoch 2")
hpo.report_final_result(p["x"])
"""


def _weights(x: float, epoch: int) -> bytes:
    return hashlib.sha256(f"{x}-{epoch}".encode()).digest() * (2**18 + 1)


@pytest.fixture(scope="module")
def s3_endpoint():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SimpleNamespace:
    """A fresh bucket, credentials in the environment only (no ~/.aws)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket = f"hpo-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    storage = {"type": "s3", "bucket": bucket, "prefix": "runs/ckpt", "endpoint_url": s3_endpoint}
    return SimpleNamespace(client=client, bucket=bucket, endpoint=s3_endpoint, storage=storage)


def _objects(s3: SimpleNamespace, prefix: str = "") -> dict[str, int]:
    pages = s3.client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def _staging(exp_directory: Path) -> list[str]:
    folder = exp_directory / "checkpoint-staging"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_checkpoints_are_uploaded_collected_and_downloaded(make_experiment, s3, tmp_path):
    from hpo import client

    exp = make_experiment(EPOCHS, max_trial_number=2, trial_concurrency=2, checkpoint_storage=s3.storage)
    exp.run(port=0)
    trials = {t["id"]: t for t in exp.list_trial_jobs()}
    assert [t["status"] for t in trials.values()] == ["SUCCEEDED", "SUCCEEDED"]
    rows = exp._store().checkpoints()
    objects = _objects(s3)
    assert len(rows) == 6
    for r in rows:
        key = f"runs/ckpt/{r['uuid']}"
        assert r["location"] == f"s3://{s3.bucket}/{key}"
        assert r["resources"] == {"metadata.json": r["resources"]["metadata.json"], "state.json": 12,
                                  "sub/weights.bin": 32 * (2**18 + 1)}
    for tid in trials:  # defaults (save_trial_best 1, save_trial_latest 1): the best (epoch 2) and the latest
        assert [(r["steps_completed"], r["state"]) for r in rows if r["trial_id"] == tid] == \
            [(1, "DELETED"), (2, "COMPLETED"), (3, "COMPLETED")]
    expected = {f"runs/ckpt/{r['uuid']}/{name}": size for r in rows if r["state"] == "COMPLETED"
                for name, size in r["resources"].items()}
    assert objects == expected  # the GC'd checkpoints' objects are gone, nothing else is there
    assert _staging(exp.directory) == []

    best = client.get_checkpoint(next(r["uuid"] for r in rows if r["steps_completed"] == 2))
    assert best.location == next(r["location"] for r in rows if r["uuid"] == best.uuid)
    out = Path(best.download(tmp_path / "out"))
    x = trials[best.training.trial_id]["parameters"]["x"]
    assert (out / "sub" / "weights.bin").read_bytes() == _weights(x, 2)
    assert json.loads((out / "state.json").read_text()) == {"epoch": 2}
    assert json.loads((out / "metadata.json").read_text()) == {"steps_completed": 2}
    latest = next(r for r in rows if r["steps_completed"] == 3)
    cli = subprocess.run([sys.executable, "-m", "hpo", "checkpoint", "download", latest["uuid"], str(tmp_path / "cli")],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cli.returncode == 0, cli.stderr
    x = trials[latest["trial_id"]]["parameters"]["x"]
    assert (tmp_path / "cli" / "sub" / "weights.bin").read_bytes() == _weights(x, 3)
    gone = client.get_checkpoint(next(r["uuid"] for r in rows if r["state"] == "DELETED"))
    with pytest.raises(client.CheckpointStateError):
        gone.download(tmp_path / "gone")

    for path in [p for p in exp.directory.rglob("*") if p.is_file()]:  # the store, engine.log, the config
        data = path.read_bytes()
        assert SECRET.encode() not in data and KEY_ID.encode() not in data, path
    assert SECRET not in json.dumps(exp.config.to_dict()) and KEY_ID not in json.dumps(exp.config.to_dict())


def test_a_retry_restores_the_failed_trials_latest_checkpoint_from_s3(make_experiment, s3):
    exp = make_experiment(EPOCHS, search_space={"x": {"_type": "choice", "_value": [0.5]},
                                                "crash": {"_type": "choice", "_value": [True]}},
                          max_trial_number=1, max_trial_retries=1, checkpoint_storage=s3.storage)
    exp.run(port=0)
    first, retry = exp.list_trial_jobs()
    assert (first["status"], retry["status"], retry["rerun_of"]) == ("FAILED", "SUCCEEDED", first["seq"])
    assert "restored at epoch 2" in (exp.directory / "trials" / retry["id"] / "stdout.log").read_text()
    rows = exp._store().checkpoints()
    assert [(r["trial_id"], r["steps_completed"]) for r in rows] == [(first["id"], 1), (first["id"], 2), (retry["id"], 3)]
    assert all(r["location"].startswith(f"s3://{s3.bucket}/runs/ckpt/") for r in rows)
    assert _staging(exp.directory) == []  # the restored copy went with the trial


def test_engine_killed_mid_upload_then_resumed_leaves_nothing_that_looks_whole(launcher, s3):

    body = """
import hpo
with hpo.checkpoint_path({"steps_completed": 1}) as path:
    with open(path / "big.bin", "wb") as fh:
        fh.truncate(768 * 2**20)
hpo.report_final_result(1)
"""
    proc, exp_id, directory = launcher(body, max_trial_number=1, checkpoint_storage=s3.storage)
    wait_until(lambda: s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads"), 60, interval=0.005,
               what="the checkpoint's multipart upload to start")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [n for n in _staging(directory) if not n.startswith(".")]  # killed before the upload finished
    resumed = resume_to_end(exp_id, 60)
    rows = resumed._store().checkpoints()
    objects = _objects(s3)
    assert not [r for r in rows if r["state"] == "COMPLETED"]
    assert objects == {} and not s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads")
    assert _staging(directory) == []


def test_an_upload_failure_records_an_error_row(make_experiment, s3):
    body = """
import hpo
hpo.report_intermediate_result(1)
with hpo.checkpoint_path({"steps_completed": 1}) as path:
    (path / "w").write_text("1")
hpo.report_final_result(1)
"""
    exp = make_experiment(body, max_trial_number=1, checkpoint_storage={**s3.storage, "bucket": "no-such-bucket-hpo"})
    exp.run(port=0)
    (row,) = exp._store().checkpoints()
    assert row["state"] == "ERROR" and row["location"].startswith("s3://no-such-bucket-hpo/runs/ckpt/")
    assert row["message"].startswith("upload to s3://no-such-bucket-hpo/") and "NoSuchBucket" in row["message"]
    assert "\n" not in row["message"] and _staging(exp.directory) == []


@pytest.mark.parametrize("storage, error", [
    ({"type": "s3"}, "checkpoint_storage.bucket: not set; type 's3' needs a bucket"),
    ({"type": "shared_fs", "bucket": "b"}, "checkpoint_storage.bucket: is for type 's3'"),
    ({"type": "s3", "bucket": "b", "host_path": "/tmp"}, "host_path and storage_path are for type 'shared_fs'"),
])
def test_config_errors(make_experiment, storage: dict[str, Any], error: str):
    from hpo.config import ConfigError

    exp = make_experiment("pass", max_trial_number=1, checkpoint_storage=storage)
    with pytest.raises(ConfigError, match=error):
        exp.config.validate_for_start()


def test_without_boto3_hpo_check_names_the_extra(tmp_path, monkeypatch, capsys):
    from hpo.cli import main

    (tmp_path / "trial.py").write_text("pass\n")
    (tmp_path / "config.yml").write_text(
        "searchSpace: {x: {_type: uniform, _value: [0, 1]}}\ntrialCommand: python3 trial.py\n"
        "trialCodeDirectory: .\ntuner: {name: random}\ntrainingService: {platform: local}\n"
        "checkpointStorage: {type: s3, bucket: b}\n")
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 raises ImportError
    assert main(["check", "-f", str(tmp_path / "config.yml")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "needs boto3" in err and "pip install 'hpo[s3]'" in err


def test_ssh_trials_checkpoints_go_to_s3_and_a_retry_restores_from_there(make_experiment, s3, tmp_path):
    """Written on the SSH host, pulled back, uploaded by the engine (the host needs no boto3), recorded COMPLETED
    once whole in the bucket; the retry gets the failed trial's latest one, downloaded from S3 and copied over."""
    from sshd import SharedServer, unavailable

    if unavailable():
        pytest.skip(unavailable())
    ssh = SharedServer.get()
    remote = tmp_path / "remote"
    exp = make_experiment(EPOCHS, search_space={"x": {"_type": "choice", "_value": [0.5]},
                                                "crash": {"_type": "choice", "_value": [True]}},
                          max_trial_number=1, max_trial_retries=1, checkpoint_storage=s3.storage, training_service={
        "platform": "remote", "machine_list": [ssh.server.machine(ssh.key, python_path="/usr/bin/python3")],
        "known_hosts_file": str(ssh.known_hosts), "remote_directory": str(remote)})
    exp.run(port=0)
    first, retry = exp.list_trial_jobs()
    assert (first["status"], retry["status"], retry["rerun_of"]) == ("FAILED", "SUCCEEDED", first["seq"])
    assert "restored at epoch 2" in (exp.directory / "trials" / retry["id"] / "stdout.log").read_text()
    rows = exp._store().checkpoints()
    assert [(r["trial_id"], r["steps_completed"], r["state"]) for r in rows] == \
        [(first["id"], 1, "DELETED"), (first["id"], 2, "COMPLETED"), (retry["id"], 3, "COMPLETED")]
    expected = {f"runs/ckpt/{r['uuid']}/{name}": size for r in rows if r["state"] == "COMPLETED"
                for name, size in r["resources"].items()}
    assert _objects(s3) == expected
    body = s3.client.get_object(Bucket=s3.bucket, Key=f"runs/ckpt/{rows[2]['uuid']}/sub/weights.bin")["Body"].read()
    assert body == _weights(0.5, 3)
    assert _staging(exp.directory) == []  # uploaded copies and the restored one are gone here
    assert not list(remote.rglob("checkpoints/*-*")) and not list(remote.rglob("restore*"))  # and on the host


def test_uploads_a_dead_engine_never_recorded_are_swept_on_resume(s3, tmp_path):
    """Between the end of an upload and its row: the staged copy is still there, so resume deletes the objects
    of any uuid the store does not know (and only drops the local copy of one it does)."""
    from hpo.checkpoint_storage import S3Storage
    from hpo.dispatcher import _remove_leftover_checkpoints

    staging = tmp_path / "checkpoint-staging"
    storage = S3Storage(s3.bucket, "runs/ckpt", s3.endpoint, None, staging)
    uids = [str(uuid.uuid4()) for _ in range(2)]
    for uid in uids:
        (staging / uid).mkdir(parents=True)
        (staging / uid / "w.bin").write_bytes(b"w" * 100)
        (staging / uid / "metadata.json").write_text("{}")
        storage.save(uid, staging / uid)
    assert sorted(_objects(s3)) == sorted(f"runs/ckpt/{u}/{n}" for u in uids for n in ("metadata.json", "w.bin"))
    _remove_leftover_checkpoints(storage, ".e1-*-*.partial", [], {uids[0]})
    assert sorted(_objects(s3)) == [f"runs/ckpt/{uids[0]}/metadata.json", f"runs/ckpt/{uids[0]}/w.bin"]
    assert _staging(tmp_path) == []


def test_a_staged_checkpoint_with_a_link_out_is_never_uploaded(make_experiment, s3, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("engine-side secret")
    body = f"""
import hpo, json, os, uuid
fake = str(uuid.uuid4())  # around the API: a staged folder linking out, reported by hand
folder = os.path.join(os.environ["HPO_CHECKPOINT_DIR"], fake)
os.makedirs(folder)
open(os.path.join(folder, "metadata.json"), "w").write("{{}}")
os.symlink({str(secret)!r}, os.path.join(folder, "leak"))
print("HPO_CHECKPOINT=" + json.dumps({{"uuid": fake, "metadata": {{}}, "resources": {{}}}}), flush=True)
hpo.report_final_result(1)
"""
    exp = make_experiment(body, max_trial_number=1, checkpoint_storage=s3.storage)
    exp.run(port=0)
    (row,) = exp._store().checkpoints()
    assert row["state"] == "ERROR" and row["message"].startswith("refused: checkpoint: leak is a symbolic link to")
    assert _objects(s3) == {} and _staging(exp.directory) == []
