"""The Kubernetes training service end to end: real engine, real kubernetes_asyncio client over HTTP.

Against the fake cluster of ``tests/fake_k8s`` (an API server with real semantics and a kubelet that runs pods as
local processes; no Kubernetes API server can run on these machines).  Tests marked ``real_k8s`` run the same
scenarios against a real cluster when ``HPO_TEST_KUBECONFIG`` names a kubeconfig (its context's namespace is
used; the image must have Python 3), and are skipped otherwise.  Failure injection that only a fake can do
(compaction, dropped streams, an API server restart, counting processes) is fake-only.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import PY, ROOT, wait_until, resume_to_end
from kube_support import shared_cluster, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")
REAL_KUBECONFIG = os.environ.get("HPO_TEST_KUBECONFIG")  # read now: the hpo_home fixture clears HPO_* variables

STEPS_SCRIPT = """
import hpo, time, os
p = hpo.get_next_parameter()
for i in range(1, {steps} + 1):
    print("step", i, flush=True)
    hpo.report_intermediate_result(p["x"] + i)
    time.sleep({pause})
hpo.report_final_result(p["x"] + 100)
"""


class Target:
    """Where the trials run: the fake cluster (a fresh namespace per test) or a real one."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        if kind == "fake":
            self.fake, self.namespace = shared_cluster()
            self.kubeconfig = Path(self.fake.kubeconfig)
            self.python, self.image = PY, "python:3.12-slim"
        else:
            if not REAL_KUBECONFIG:
                pytest.skip("set HPO_TEST_KUBECONFIG to run the real_k8s tests against a cluster")
            self.fake, self.kubeconfig = None, Path(REAL_KUBECONFIG)
            self.namespace = os.environ.get("HPO_TEST_NAMESPACE", "default")
            self.python, self.image = "python3", os.environ.get("HPO_TEST_IMAGE", "python:3.12-slim")

    def service(self, **extra: Any) -> dict[str, Any]:
        return {"platform": "kubernetes", "kubeconfig": str(self.kubeconfig), "namespace": self.namespace,
                "image": self.image, "kill_grace": 1.0, **extra}

    def fake_only(self) -> Any:
        if self.fake is None:
            pytest.skip("needs the fake cluster's failure injection")
        return self.fake

    def objects(self, kind: str, selector: str | None = None) -> list[dict[str, Any]]:
        if self.fake is not None:
            return self.fake.objects(kind, self.namespace, label_selector=selector)
        path = {"jobs": f"/apis/batch/v1/namespaces/{self.namespace}/jobs"}.get(
            kind, f"/api/v1/namespaces/{self.namespace}/{kind}")
        return self._api("GET", path, {"labelSelector": selector} if selector else None)["items"]

    def evict(self, pod: str) -> None:
        if self.fake is not None:
            self.fake.evict(pod, self.namespace)
        else:
            self._api("POST", f"/api/v1/namespaces/{self.namespace}/pods/{pod}/eviction",
                      body={"apiVersion": "policy/v1", "kind": "Eviction",
                            "metadata": {"name": pod, "namespace": self.namespace}})

    def _api(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None) -> Any:
        from training_services.kube_client import load_client

        async def call() -> Any:
            client = await load_client(self.kubeconfig)
            try:
                return await client.request(method, path, query, body)
            finally:
                await client.close()
        return asyncio.run(call())

    def jobs_created(self) -> int:
        """Jobs created in the fake cluster so far (by anyone)."""
        return self.fake_only().requests[("create", "jobs")]


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.real_k8s)])
def target(request) -> Target:
    return Target(request.param)


def _experiment(make_experiment: Any, target: Target, script: str, **config: Any) -> Any:
    config.setdefault("training_service", target.service())
    return make_experiment(script, command=f"{target.python} trial.py", **config)


def _steps(exp: Any, trial: dict[str, Any]) -> list[float]:
    return exp.get_trial_job(trial["id"])["intermediate"]


class ManifestRecorder:
    """Collects every Job and ConfigMap of the namespace while an experiment runs (to validate them)."""

    def __init__(self, target: Target) -> None:
        self.target, self.seen = target, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for kind in ("jobs", "configmaps"):
                for obj in self.target.objects(kind):
                    self.seen[(kind, obj["metadata"]["name"])] = obj
            self._stop.wait(0.1)

    def stop(self) -> dict[tuple[str, str], dict[str, Any]]:
        self._stop.set()
        self._thread.join()
        return self.seen


# -- whole experiments ------------------------------------------------------------------------------------------
def test_twenty_trials_at_concurrency_four(make_experiment, target):
    import kubernetes_validate

    exp = _experiment(make_experiment, target, STEPS_SCRIPT.format(steps=3, pause=0.05),
                      trial_concurrency=4, max_trial_number=20)
    recorder = ManifestRecorder(target)
    created_before = target.jobs_created() if target.fake is not None else 0
    exp.run(port=0)
    created = recorder.stop()
    trials = exp.list_trial_jobs()
    assert exp.get_status() == "DONE"
    assert [t["status"] for t in trials] == ["SUCCEEDED"] * 20
    for t in trials:
        x = t["parameters"]["x"]
        assert _steps(exp, t) == pytest.approx([x + 1, x + 2, x + 3])
        assert t["final_value"] == pytest.approx(x + 100)
        log = (exp.directory / "trials" / t["id"] / "stdout.log").read_text()
        assert [line for line in log.splitlines() if line.startswith("step")] == ["step 1", "step 2", "step 3"]
        assert json.loads((exp.directory / "trials" / t["id"] / "parameters.json").read_text()) == t["parameters"]
    # never more than four at once
    spans = sorted((t["started_at"], t["ended_at"]) for t in trials)
    assert max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans) <= 4
    # every object the service created is valid for a pinned Kubernetes version, strictly
    jobs = [o for (kind, _), o in created.items() if kind == "jobs"]
    assert len(jobs) >= 5 and any(kind == "configmaps" for kind, _ in created)
    for obj in created.values():
        kubernetes_validate.validate(obj, "1.30", strict=True)
    for job in jobs:
        spec = job["spec"]
        assert spec["backoffLimit"] == 0 and spec["template"]["spec"]["restartPolicy"] == "Never"
        assert spec["podFailurePolicy"]["rules"][0]["action"] == "Ignore"
        assert job["metadata"]["labels"]["hpo.io/experiment"] == exp.id
    # stop() removed everything: Jobs, their pods (deleted in the background, not orphaned), ConfigMaps
    selector = f"hpo.io/experiment={exp.id}"
    assert target.objects("jobs", selector) == [] and target.objects("pods", selector) == []
    assert target.objects("configmaps", selector) == []
    if target.fake is not None:
        assert target.jobs_created() - created_before == 20  # one Job per trial


def test_finished_trials_jobs_are_deleted_while_the_experiment_runs(make_experiment, target):
    body = ("import hpo, time\np = hpo.get_next_parameter()\nif hpo.get_sequence_id() == 4:\n    time.sleep(60)\n"
            "hpo.report_final_result(p['x'])\n")
    exp = _experiment(make_experiment, target, body, trial_concurrency=1, max_trial_number=4)
    exp.start(port=0)
    last = wait_until(lambda: [t for t in exp.list_trial_jobs(status="RUNNING") if t["seq"] == 4], 60,
                      what="the fourth trial")[0]
    wait_until(lambda: [j["metadata"]["labels"]["hpo.io/trial"] for j in
                        target.objects("jobs", f"hpo.io/experiment={exp.id}")] == [last["id"]], 10,
               what="the finished trials' Jobs deleted")
    wait_until(lambda: not [p for p in target.objects("pods", f"hpo.io/experiment={exp.id}")
                            if p["metadata"]["labels"]["hpo.io/trial"] != last["id"]], 10,
               what="their pods removed (deleted in the background)")
    exp.stop()


def test_kill_one_trial_and_its_pod(make_experiment, target):
    exp = _experiment(make_experiment, target, STEPS_SCRIPT.format(steps=200, pause=0.1),
                      trial_concurrency=2, max_trial_number=2)
    exp.start(port=0)
    trials = wait_until(lambda: [t for t in exp.list_trial_jobs() if t["status"] == "RUNNING"]
                        if len([t for t in exp.list_trial_jobs() if t["status"] == "RUNNING"]) == 2 else None, 60,
                        what="two running trials")
    victim, other = trials
    wait_until(lambda: _steps(exp, victim), 30, what="a report")
    exp.kill_trial_job(victim["id"])
    wait_until(lambda: exp.get_trial_job(victim["id"])["status"] == "USER_CANCELED", 30, what="the kill")
    assert not target.objects("pods", f"hpo.io/trial={victim['id']}")
    assert exp.get_trial_job(other["id"])["status"] == "RUNNING"
    exp.stop()
    assert not target.objects("pods", f"hpo.io/experiment={exp.id}")


def test_deadline_exceeded_fails_the_trial(make_experiment, target):
    exp = _experiment(make_experiment, target, "import time\ntime.sleep(120)\n",
                      max_trial_number=1, max_trial_duration="2s")
    t0 = time.monotonic()
    exp.run(port=0)
    trial = exp.list_trial_jobs()[0]
    assert trial["status"] == "FAILED"
    assert trial["message"] == "exceeded max_trial_duration (2 s)"
    assert time.monotonic() - t0 < 30


def test_a_trial_that_fails_says_why(make_experiment, target):
    script = "import sys\nprint('loading data')\nraise SystemExit('bad learning rate: -1')\n"
    exp = _experiment(make_experiment, target, script, max_trial_number=1)
    exp.run(port=0)
    trial = exp.list_trial_jobs()[0]
    assert (trial["status"], trial["exit_code"], trial["message"]) == ("FAILED", 1, "bad learning rate: -1")
    assert "loading data" in (exp.directory / "trials" / trial["id"] / "stdout.log").read_text()


def test_succeeded_without_a_final_result_is_explicit(make_experiment, target):
    exp = _experiment(make_experiment, target, "print('trained, but forgot to report')\n", max_trial_number=1)
    exp.run(port=0)
    trial = exp.list_trial_jobs()[0]
    assert trial["status"] == "SUCCEEDED" and trial["final"] is None
    assert trial["message"] == "finished without reporting a final result"


def test_a_trial_over_its_memory_limit_is_oomkilled(make_experiment, target):
    script = "import time\nprint('allocating', flush=True)\nblock = bytearray(400 * 2**20)\ntime.sleep(30)\n"
    exp = _experiment(make_experiment, target, script, max_trial_number=1,
                      training_service=target.service(resources={"memory": "100Mi"}))
    exp.run(port=0)
    trial = exp.list_trial_jobs()[0]
    assert (trial["status"], trial["exit_code"]) == ("FAILED", 137)
    assert trial["message"] == "OOMKilled: the trial went over its memory limit (100Mi)"


def test_unschedulable_trial_waits_with_the_reason_then_fails(make_experiment, target):
    exp = _experiment(make_experiment, target, "print('never runs')\n", max_trial_number=1,
                      training_service=target.service(resources={"cpu": "1000"}, pending_timeout="4s"))
    exp.start(port=0)
    waiting = wait_until(lambda: (exp.list_trial_jobs() or [{}])[0].get("message"), 20, what="a waiting reason")
    assert exp.list_trial_jobs()[0]["status"] == "WAITING"
    assert waiting.startswith("Unschedulable: ") and "Insufficient cpu" in waiting
    shown = subprocess.run([sys.executable, "-m", "hpo", "trials", exp.id], capture_output=True, text=True,
                           cwd=ROOT, timeout=60, env={**os.environ, "HPO_HOME": os.environ["HPO_HOME"]})
    assert "WAITING" in shown.stdout and "Unschedulable" in shown.stdout, shown.stdout + shown.stderr
    wait_until(lambda: exp.list_trial_jobs()[0]["status"] == "FAILED", 30, what="the pending timeout")
    message = exp.list_trial_jobs()[0]["message"]
    assert message.startswith("still pending after 4 s: Unschedulable: ")
    exp.stop()
    assert not target.objects("jobs", f"hpo.io/experiment={exp.id}")


def test_an_image_that_cannot_be_pulled(make_experiment, target):
    image = "registry.invalid/hpo/no-such-image:1"
    if target.fake is not None:
        target.fake.fail_image_pulls("registry.invalid/*")
    exp = _experiment(make_experiment, target, "print('never runs')\n", max_trial_number=1,
                      training_service=target.service(image=image, pending_timeout="5s"))
    exp.run(port=0)
    trial = exp.list_trial_jobs()[0]
    assert trial["status"] == "FAILED"
    assert trial["message"].startswith("still pending after 5 s: ")
    assert "ErrImagePull" in trial["message"] or "ImagePullBackOff" in trial["message"]


def test_an_evicted_pod_is_run_again_without_counting_twice(make_experiment, target):
    exp = _experiment(make_experiment, target, STEPS_SCRIPT.format(steps=6, pause=0.4), max_trial_number=1)
    exp.start(port=0)
    trial = wait_until(lambda: [t for t in exp.list_trial_jobs() if len(_steps(exp, t)) >= 2], 60,
                       what="two reports")[0]
    pods = target.objects("pods", f"hpo.io/trial={trial['id']}")
    assert len(pods) == 1
    target.evict(pods[0]["metadata"]["name"])
    assert exp.wait(90)
    trial = exp.get_trial_job(trial["id"])
    x = trial["parameters"]["x"]
    assert trial["status"] == "SUCCEEDED", trial["message"]
    assert trial["intermediate"] == pytest.approx([x + i for i in range(1, 7)])  # the re-run's repeats dropped
    assert trial["final_value"] == pytest.approx(x + 100)
    log = (exp.directory / "trials" / trial["id"] / "stdout.log").read_text()
    assert "was disrupted" in log and "runs again in pod" in log
    exp.stop()


# -- the engine crashes -----------------------------------------------------------------------------------------
def _launch_k8s(launcher: Any, target: Target, body: str, **config: Any) -> tuple[Any, str, Path]:
    config.setdefault("training_service", target.service())
    return launcher(body, trial_command=f"{target.python} trial.py", **config)


def test_engine_kill9_then_resume_adopts_running_jobs(launcher, target):
    from hpo.storage import ExperimentStore

    created_before = target.jobs_created() if target.fake is not None else 0
    proc, exp_id, directory = _launch_k8s(launcher, target, STEPS_SCRIPT.format(steps=8, pause=0.5),
                                          trial_concurrency=2, max_trial_number=2)

    def progress() -> dict[str, int]:
        with ExperimentStore(directory, readonly=True) as store:
            return {t["id"]: len(store.metrics(t["seq"], "intermediate")) for t in store.trials(status="RUNNING")}
    wait_until(lambda: len(progress()) == 2 and all(n >= 1 for n in progress().values()), 60, what="two trials reporting")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2.0)  # the pods keep running and reporting into their logs while no engine listens
    resumed = resume_to_end(exp_id, 90)
    trials = resumed.list_trial_jobs()
    assert [t["status"] for t in trials] == ["SUCCEEDED", "SUCCEEDED"]  # adopted, not re-run
    for t in trials:
        x = t["parameters"]["x"]
        assert _steps(resumed, t) == pytest.approx([x + i for i in range(1, 9)])  # nothing lost, nothing twice
        log = (directory / "trials" / t["id"] / "stdout.log").read_text()
        assert [line for line in log.splitlines() if line.startswith("step")] == [f"step {i}" for i in range(1, 9)]
    if target.fake is not None:
        assert target.jobs_created() - created_before == 2  # no trial started twice


def test_resume_fails_vanished_jobs_and_deletes_unknown_ones(launcher, target):
    from hpo import Experiment
    from hpo.storage import ExperimentStore

    target.fake_only()
    proc, exp_id, directory = _launch_k8s(launcher, target, STEPS_SCRIPT.format(steps=30, pause=0.2),
                                          trial_concurrency=2, max_trial_number=2, max_trial_retries=1)

    def running() -> list[dict[str, Any]]:
        with ExperimentStore(directory, readonly=True) as store:
            return store.trials(status="RUNNING")
    wait_until(lambda: len(running()) == 2, 60, what="two running trials")
    keep, lose = running()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lost_job = [j for j in target.objects("jobs", f"hpo.io/trial={lose['id']}")][0]["metadata"]["name"]
    target._api("DELETE", f"/apis/batch/v1/namespaces/{target.namespace}/jobs/{lost_job}",
                body={"propagationPolicy": "Background"})
    stray = {"apiVersion": "batch/v1", "kind": "Job",
             "metadata": {"name": "hpo-stray", "labels": {"hpo.io/experiment": exp_id, "hpo.io/trial": "ZZZZZ"}},
             "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [
                 {"name": "trial", "image": "x", "command": ["sleep", "300"]}]}}}}
    target._api("POST", f"/apis/batch/v1/namespaces/{target.namespace}/jobs", body=stray)
    resumed = Experiment.resume(exp_id, port=0, wait_completion=False)
    try:
        wait_until(lambda: resumed.get_trial_job(lose["id"])["status"] == "FAILED", 30, what="the vanished trial")
        assert "vanished while the engine was down" in resumed.get_trial_job(lose["id"])["message"]
        rerun = wait_until(lambda: [t for t in resumed.list_trial_jobs() if t["rerun_of"] == lose["seq"]], 30,
                           what="the re-run (max_trial_retries)")[0]
        assert rerun["parameters"] == lose["parameters"]
        wait_until(lambda: not target.objects("jobs", "hpo.io/trial=ZZZZZ"), 30, what="the stray Job deleted")
        assert resumed.get_trial_job(keep["id"])["status"] in ("RUNNING", "SUCCEEDED")
    finally:
        resumed.stop()
    assert not target.objects("pods", f"hpo.io/experiment={exp_id}")


# -- the API server misbehaves (fake only) ---------------------------------------------------------------------
def test_expired_watches_dropped_streams_and_an_api_restart_lose_nothing(make_experiment, target):
    fake = target.fake_only()
    exp = _experiment(make_experiment, target, STEPS_SCRIPT.format(steps=10, pause=0.3),
                      trial_concurrency=3, max_trial_number=3)
    exp.start(port=0)
    wait_until(lambda: len([t for t in exp.list_trial_jobs() if _steps(exp, t)]) == 3, 60, what="three reporting")
    fake.compact()
    fake.drop_streams()
    time.sleep(0.7)
    fake.restart_api(downtime=1.0, wait=True)
    time.sleep(0.5)
    fake.watch_410_mode = "http"  # this time the expiry is the HTTP status of the watch request, not an event
    fake.compact()
    fake.drop_streams()
    assert exp.wait(90)
    for t in exp.list_trial_jobs():
        x = t["parameters"]["x"]
        assert t["status"] == "SUCCEEDED", t["message"]
        assert _steps(exp, t) == pytest.approx([x + i for i in range(1, 11)])
        log = (exp.directory / "trials" / t["id"] / "stdout.log").read_text()
        assert [line for line in log.splitlines() if line.startswith("step")] == [f"step {i}" for i in range(1, 11)]
    service = exp._runner.engine.service
    # the first list, then one per expiry (in the stream, then as the HTTP status); the Jobs watch, idle since its
    # last event, may still be current after a compaction (as with a real API server)
    assert service._pods.relists >= 3 and service._jobs.relists >= 2
    exp.stop()
    fake.watch_410_mode = "stream"


def test_stop_leaves_no_job_pod_or_process(make_experiment, target):
    fake = target.fake_only()
    body = "import subprocess, time\nsubprocess.Popen(['sleep', '300'])\ntime.sleep(300)\n"
    exp = _experiment(make_experiment, target, body, trial_concurrency=3, max_trial_number=3)
    exp.start(port=0)
    wait_until(lambda: len(exp.list_trial_jobs(status="RUNNING")) == 3, 60, what="three running trials")
    pids = fake.all_pod_processes()
    assert len(pids) >= 3
    procs = [psutil.Process(p) for p in pids]
    exp.stop()
    assert [t["status"] for t in exp.list_trial_jobs()] == ["SYS_CANCELED"] * 3
    selector = f"hpo.io/experiment={exp.id}"
    assert target.objects("jobs", selector) == [] and target.objects("pods", selector) == []
    assert not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


# -- configuration and auth ----------------------------------------------------------------------------------------
def test_code_delivery_by_pvc(make_experiment, target, tmp_path):
    fake = target.fake_only()
    shared = tmp_path / "shared-volume"
    shared.mkdir()
    fake.add_pvc("shared", shared, target.namespace)
    exp = _experiment(make_experiment, target, STEPS_SCRIPT.format(steps=1, pause=0), max_trial_number=1,
                      training_service=target.service(code_delivery="pvc", pvc={
                          "claim_name": "shared", "mount_path": "/mnt/shared", "local_path": str(shared)}))
    exp.run(port=0)
    trial = exp.list_trial_jobs()[0]
    assert trial["status"] == "SUCCEEDED", trial["message"]
    assert list(shared.glob(f"{exp.id}/code-*/code/trial.py")) and list(shared.glob(f"{exp.id}/code-*/lib/hpo/trial.py"))
    assert (shared / exp.id / "trials" / trial["id"]).is_dir()  # HPO_TRIAL_DIR lives on the claim


def test_code_delivery_by_image(make_experiment, target):
    """The code is in the image (here: the fake has no images, so a hostPath volume added by a pod template patch
    stands for it at /app); only the trial API travels, in a small ConfigMap."""
    target.fake_only()
    exp = _experiment(make_experiment, target, STEPS_SCRIPT.format(steps=2, pause=0), max_trial_number=1)
    patch = {"spec": {"volumes": [{"name": "app", "hostPath": {"path": str(exp.config.trial_code_directory)}}],
                      "containers": [{"name": "trial", "volumeMounts": [{"name": "app", "mountPath": "/app"}]}]}}
    exp.config.training_service = target.service(code_delivery="image", working_dir="/app", pod_template_patch=patch)
    recorder = ManifestRecorder(target)
    exp.run(port=0)
    created = recorder.stop()
    trial = exp.list_trial_jobs()[0]
    assert trial["status"] == "SUCCEEDED", trial["message"]
    assert len(_steps(exp, trial)) == 2
    configmaps = [o for (kind, _), o in created.items() if kind == "configmaps"]
    assert len(configmaps) == 1
    import base64
    import io
    import tarfile
    archive = tarfile.open(fileobj=io.BytesIO(base64.b64decode(configmaps[0]["binaryData"]["code.tar.gz"])))
    names = archive.getnames()
    assert "lib/hpo/trial.py" in names and not [n for n in names if not n.startswith("lib")], names  # no code


def test_client_certificate_auth_and_a_wrong_token(make_experiment, tmp_path):
    from tests.fake_k8s import FakeCluster

    with FakeCluster(root=tmp_path / "tls-cluster", tls=True, token="right") as cluster:
        cert_config = cluster.write_kubeconfig(tmp_path / "cert.yaml", auth="cert")
        exp = make_experiment(STEPS_SCRIPT.format(steps=1, pause=0), max_trial_number=1, training_service={
            "platform": "kubernetes", "kubeconfig": str(cert_config), "context": "fake", "kill_grace": 1.0})
        exp.run(port=0)
        assert [t["status"] for t in exp.list_trial_jobs()] == ["SUCCEEDED"]
        token_config = cluster.write_kubeconfig(tmp_path / "token.yaml", auth="token")
        text = token_config.read_text().replace("right", "wrong")
        token_config.write_text(text)
        bad = make_experiment(STEPS_SCRIPT.format(steps=1, pause=0), max_trial_number=1, training_service={
            "platform": "kubernetes", "kubeconfig": str(token_config)})
        from hpo.experiment import ExperimentError
        with pytest.raises(ExperimentError, match="401"):
            bad.start(port=0)


def _write_config(tmp_path: Path, service: dict[str, Any]) -> Path:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "trial.py").write_text("import hpo\nhpo.report_final_result(1)\n")
    config = {"searchSpace": {"lr": {"_type": "loguniform", "_value": [1e-4, 1e-1]}}, "tuner": {"name": "TPE"},
              "trialCommand": "python3 trial.py --lr {{ lr }}", "trialCodeDirectory": str(code),
              "maxTrialDuration": "1h", "trainingService": service}
    path = tmp_path / "exp.yml"
    path.write_text(json.dumps(config))
    return path


def test_check_prints_the_job_it_would_create(tmp_path):
    import kubernetes_validate
    import yaml

    path = _write_config(tmp_path, {"platform": "k8s", "namespace": "hpo", "resources": {"cpu": 2, "memory": "4Gi", "gpu": 1},
                                    "nodeSelector": {"pool": "gpu"}, "serviceAccountName": "trainer",
                                    "podTemplatePatch": {"spec": {"priorityClassName": "high"}}})
    out = subprocess.run([sys.executable, "-m", "hpo", "check", "-f", str(path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout.split("nothing is sent):", 1)[1]))
    configmap, job = docs
    assert job["kind"] == "Job" and job["spec"]["activeDeadlineSeconds"] == 3600
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu"} and pod["priorityClassName"] == "high"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--lr" in pod["containers"][0]["command"][-1]
    kubernetes_validate.validate(job, "1.30", strict=True)


def test_without_the_extra_check_says_which_one_in_one_line(tmp_path):
    path = _write_config(tmp_path, {"platform": "kubernetes"})
    code = ("import sys; sys.modules['kubernetes_asyncio'] = None; from hpo.cli import main; "
            f"sys.exit(main(['check', '-f', {str(path)!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        "hpo: error: config.training_service: the kubernetes training service needs the kubernetes extra: "
        "pip install 'hpo[kubernetes]' (it installs kubernetes_asyncio)"]


@pytest.mark.parametrize("delivery", ["configmap", "image", "pvc"])
def test_every_manifest_validates_strictly(delivery):
    import kubernetes_validate
    from training_services.kube_manifests import code_configmap, job_manifest

    pvc = {"claim_name": "shared", "mount_path": "/mnt/shared"} if delivery != "configmap" else None
    job = job_manifest(
        experiment_id="abcd1234", trial_id="XyZ12", seq=17, attempt=2, namespace="hpo", command="python3 t.py",
        parameters={"lr": 0.1, "layers": [1, 2]}, image="python:3.12-slim", code_delivery=delivery,
        code_ref="abcd1234/code-1" if delivery == "pvc" else "hpo-abcd1234-code-1",
        resources={"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}}, gpu_number=2,
        node_selector={"pool": "a"}, tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        service_account_name="trainer", pod_template_patch={"metadata": {"annotations": {"a": "b"}},
                                                            "spec": {"containers": [{"name": "trial", "env": [
                                                                {"name": "EXTRA", "value": "1"}]}]}},
        pvc=pvc, working_dir="/app", max_duration=90.5, kill_grace=7, image_pull_policy="IfNotPresent")
    kubernetes_validate.validate(job, "1.30", strict=True)
    kubernetes_validate.validate(code_configmap("abcd1234", "0" * 16, "hpo", b"x" * 1000), "1.30", strict=True)
    assert job["metadata"]["name"] == "hpo-abcd1234-17-xyz12"
    assert job["metadata"]["labels"]["hpo.io/attempt"] == "2"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "EXTRA", "value": "1"} in container["env"] and len(job["spec"]["template"]["spec"]["containers"]) == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert job["spec"]["activeDeadlineSeconds"] == 91


def test_the_example_config_checks():
    out = subprocess.run([sys.executable, "-m", "hpo", "check", "-f", "examples/kubernetes/config.yml"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "kind: Job" in out.stdout and "namespace: hpo" in out.stdout


def test_a_reconnected_log_drops_the_lines_of_the_same_second_it_already_has(tmp_path):
    """The API server's sinceTime filters by whole second: lines of that second come again and are dropped, even
    several with one timestamp, and the position survives a restart (a new TrialLog on the same folder)."""
    from training_services.kube_logs import TrialLog, timestamp_key

    assert timestamp_key(b"2026-11-30T19:53:32.1Z") == ("2026-11-30T19:53:32", 100_000_000)  # trailing zeros trimmed
    assert timestamp_key(b"2026-11-30T19:53:32Z") == ("2026-11-30T19:53:32", 0)
    assert timestamp_key(b"not-a-time") is None
    first = [b"2026-11-30T19:53:31.500000000Z a", b"2026-11-30T19:53:32.100000000Z b",
             b"2026-11-30T19:53:32.100000000Z c"]
    again = first[1:] + [b"2026-11-30T19:53:32.100000000Z d", b"2026-11-30T19:53:32.9Z e", b"2026-11-30T19:53:33Z f"]
    copy = TrialLog(tmp_path, "t1")
    pod = copy.pod("p1")
    skip = 0
    for line in first:
        _, skip = copy.accept(pod, line, skip)
    copy.save(force=True)  # as while a stream is followed (a trial that ended needs no position)
    copy.close()
    assert TrialLog(tmp_path, "t1").pod("p1").since() == (None, 0)  # a trial launched now: its pods are new
    resumed = TrialLog(tmp_path, "t1", resumed=True)
    pod = resumed.pod("p1")
    since, skip = pod.since()
    assert (since, skip) == ("2026-11-30T19:53:32Z", 2)
    kept = []
    for line in again:
        text, skip = resumed.accept(pod, line, skip)
        kept.append(text)
    resumed.save(force=True)
    resumed.close()
    assert kept == [None, None, b"d", b"e", b"f"]
    assert (tmp_path / "stdout.log").read_text().split() == ["a", "b", "c", "d", "e", "f"]


def test_log_positions_are_saved_a_second_into_the_log(tmp_path, monkeypatch):
    """Not a second after the launch: a log read whole within its first second costs no write."""
    from training_services import kube_logs

    monkeypatch.setattr(kube_logs, "SAVE_EVERY", 0.2)
    copy = kube_logs.TrialLog(tmp_path, "t1")
    pod = copy.pod("p1")
    time.sleep(0.3)  # the pod took a while to start
    copy.accept(pod, b"2026-11-30T19:53:31.5Z first", 0)
    copy.save()
    assert not (tmp_path / kube_logs.POSITION_FILE).exists()
    time.sleep(0.3)
    copy.accept(pod, b"2026-11-30T19:53:31.8Z second", 0)
    copy.save()
    copy.close()
    assert (tmp_path / kube_logs.POSITION_FILE).read_text().count("\n") == 1


def test_the_dashboard_shows_why_a_trial_waits(make_experiment, browser, tmp_path):
    from browser_support import open_page

    target = Target("fake")
    exp = _experiment(make_experiment, target, "print('never runs')\n", max_trial_number=1,
                      training_service=target.service(resources={"nvidia.com/gpu": 4}, pending_timeout="1m"))
    exp.start(port=0)
    page = open_page(browser, 1280, 800)
    try:
        wait_until(lambda: (exp.list_trial_jobs() or [{}])[0].get("message"), 20, what="a waiting reason")
        page.goto(f"http://localhost:{exp.port}/#/trials")
        cell = page.locator(".vt-row[data-id] span", has_text="Insufficient nvidia.com/gpu")
        cell.first.wait_for(timeout=10_000)
        assert page.locator(".vt-th[data-col=message]").count() == 1
        assert not page.errors, page.errors
    finally:
        page.context.close()
        exp.stop()


def test_checkpoints_travel_through_the_claim(make_experiment, target, tmp_path):
    """With a PVC the pod writes checkpoints on the claim; the engine (which has it mounted too) moves each into
    the checkpoint storage before it is recorded, and the policy keeps the best and the latest."""
    fake = target.fake_only()
    shared = tmp_path / "claim"
    shared.mkdir()
    fake.add_pvc("ckpt", shared, target.namespace)
    body = """
import hpo
for step in (1, 2, 3):
    hpo.report_intermediate_result(50 if step == 2 else step)
    with hpo.checkpoint_path({"steps_completed": step}) as path:
        (path / "w.bin").write_bytes(bytes([step]) * 1000)
hpo.report_final_result(1)
"""
    exp = _experiment(make_experiment, target, body, max_trial_number=1, training_service=target.service(
        pvc={"claim_name": "ckpt", "mount_path": "/mnt/ckpt", "local_path": str(shared)}))
    exp.run(port=0)
    rows = exp._store().checkpoints()
    assert exp.list_trial_jobs()[0]["status"] == "SUCCEEDED"
    assert [(r["steps_completed"], r["state"]) for r in rows] == [(1, "DELETED"), (2, "COMPLETED"), (3, "COMPLETED")]
    for r in rows[1:]:
        assert (Path(r["location"]) / "w.bin").read_bytes() == bytes([r["steps_completed"]]) * 1000
        assert Path(r["location"]).parent == exp.directory / "checkpoints"
    assert not [p for p in (shared / exp.id / "checkpoints").iterdir()]  # moved, nothing left on the claim


def test_without_a_claim_a_pod_is_told_checkpoints_are_not_collected(make_experiment, target):
    exp = _experiment(make_experiment, target, "import hpo\nwith hpo.checkpoint_path():\n    pass\n", max_trial_number=1)
    exp.run(port=0)
    trial = exp.list_trial_jobs()[0]
    assert trial["status"] == "FAILED" and "does not collect checkpoints yet" in trial["message"]


def test_in_cluster_service_account_config(make_experiment, tmp_path, monkeypatch):
    """No kubeconfig anywhere: the service account's token and CA (files the library reads; here in a temp folder
    instead of /var/run/secrets/kubernetes.io/serviceaccount) and KUBERNETES_SERVICE_HOST/PORT are used."""
    from kubernetes_asyncio.config import incluster_config

    from tests.fake_k8s import FakeCluster

    with FakeCluster(root=tmp_path / "incluster", tls=True, token="sa-token") as cluster:
        account = tmp_path / "serviceaccount"
        account.mkdir()
        (account / "token").write_text("sa-token")
        (account / "ca.crt").write_bytes(cluster.ca_pem)
        monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(account / "token"))
        monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(account / "ca.crt"))
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", cluster.url.rsplit(":", 1)[1])
        monkeypatch.delenv("KUBECONFIG", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path / "home-without-kubeconfig"))
        exp = make_experiment(STEPS_SCRIPT.format(steps=1, pause=0), max_trial_number=1,
                              training_service={"platform": "kubernetes", "kill_grace": 1.0})
        exp.run(port=0)
        assert [t["status"] for t in exp.list_trial_jobs()] == ["SUCCEEDED"]
        (account / "token").write_text("a-stale-token")
        bad = make_experiment(STEPS_SCRIPT.format(steps=1, pause=0), max_trial_number=1,
                              training_service={"platform": "kubernetes"})
        from hpo.experiment import ExperimentError
        with pytest.raises(ExperimentError, match=r"\(the in-cluster service account\): 401 Unauthorized"):
            bad.start(port=0)


def test_a_retry_restores_its_checkpoint_through_the_claim(make_experiment, target, tmp_path):
    fake = target.fake_only()
    shared = tmp_path / "claim"
    shared.mkdir()
    fake.add_pvc("ckpt", shared, target.namespace)
    body = """
import hpo, json, sys
prev = hpo.restore_checkpoint()
start = json.loads((prev / "state.json").read_text())["epoch"] if prev is not None else 0
if prev is not None:
    print("restored at epoch", start, "from", prev, flush=True)
for epoch in range(start + 1, 4):
    hpo.report_intermediate_result(epoch)
    with hpo.checkpoint_path({"steps_completed": epoch}) as path:
        (path / "state.json").write_text(json.dumps({"epoch": epoch}))
    if epoch == 2 and prev is None:
        sys.exit("crash after epoch 2")
hpo.report_final_result(1)
"""
    exp = _experiment(make_experiment, target, body, max_trial_number=1, max_trial_retries=1,
                      training_service=target.service(pvc={"claim_name": "ckpt", "mount_path": "/mnt/ckpt",
                                                           "local_path": str(shared)}))
    exp.run(port=0)
    first, retry = exp.list_trial_jobs()
    assert (first["status"], retry["status"]) == ("FAILED", "SUCCEEDED")
    out = (exp.directory / "trials" / retry["id"] / "stdout.log").read_text()
    assert "restored at epoch 2 from " in out  # the pod's mount of the claim (the fake kubelet maps it to a folder)
    assert f"/mnt/ckpt/{exp.id}/checkpoints/.{exp.id}-{retry['id']}-restore.partial\n" in out
    assert [(r["trial_id"], r["steps_completed"]) for r in exp._store().checkpoints()] == \
        [(first["id"], 1), (first["id"], 2), (retry["id"], 3)]
    assert not [p for p in (shared / exp.id / "checkpoints").iterdir()]  # the restored copy went with the trial



# -- distributed trials (trial_roles): one Indexed Job and a headless Service per trial ------------------------------
def _gang(make_experiment: Any, target: Target, script: str | None, **config: Any) -> Any:
    import shutil
    config.setdefault("training_service", target.service())
    if script is None:  # the parameter-server example
        make_experiment.code.mkdir(exist_ok=True)
        shutil.copy(ROOT / "examples" / "distributed" / "ps_job.py", make_experiment.code / "ps_job.py")
        return make_experiment(command=f"{target.python} ps_job.py", **config)
    return make_experiment(script, command=f"{target.python} trial.py", **config)


def test_a_parameter_server_job_runs_as_an_indexed_job(make_experiment, target):
    seen = ManifestRecorder(target)
    exp = _gang(make_experiment, target, None, max_trial_number=2, trial_concurrency=1,
                search_space={"lr": {"_type": "choice", "_value": [0.2, 0.5]}}, trial_env={"STEPS": 5},
                trial_roles={"worker": {"count": 2}, "ps": {"count": 1}})
    exp.run(port=0)
    manifests = seen.stop()
    from hpo.storage import ExperimentStore
    with ExperimentStore(exp.directory, readonly=True) as store:
        trials = store.trials()
        for t in trials:
            assert t["status"] == "SUCCEEDED", t["message"]  # the ps is ended once both workers are done
            assert [p["name"] for p in t["processes"]] == ["worker-0", "worker-1", "ps-0"]
            assert len(store.metrics(t["seq"], "intermediate")) == 5
            assert {m["process"] for m in store.process_metrics(t["seq"])} == {"worker-1"}
            merged = (exp.directory / "trials" / t["id"] / "stdout.log").read_text()
            assert "[ps-0] parameter server on port" in merged and "[worker-1] worker 1 done" in merged, merged
            own = (exp.directory / "trials" / t["id"] / "processes" / "worker-1" / "stdout.log").read_text()
            assert "worker 1 done" in own and "[" not in own, own
    jobs = [m for (kind, _), m in manifests.items() if kind == "jobs"]
    assert {(j["spec"]["completionMode"], j["spec"]["completions"], j["spec"]["template"]["spec"]["subdomain"])
            for j in jobs} == {("Indexed", 3, j["metadata"]["name"]) for j in jobs}
    exp.stop()
    assert not target.objects("pods", f"hpo.io/experiment={exp.id}")
    assert not target.objects("services", f"hpo.io/experiment={exp.id}")  # each trial's Service goes with it


GANG_WORKER_FAILS = """
import os, sys, time
if os.environ["JOB_COMPLETION_INDEX"] == "1":
    time.sleep(0.5)
    sys.exit("worker 1 lost its shard")
time.sleep(120)
"""


def test_a_failing_pod_fails_the_distributed_trial_and_ends_its_gang(make_experiment, target):
    exp = _gang(make_experiment, target, GANG_WORKER_FAILS, max_trial_number=1,
                trial_roles={"worker": {"count": 2}, "ps": {"count": 1}})
    t0 = time.monotonic()
    exp.run(port=0)
    trial = exp.list_trial_jobs()[0]
    assert (trial["status"], trial["message"]) == ("FAILED", "worker-1: worker 1 lost its shard")
    assert time.monotonic() - t0 < 60
    assert not target.objects("pods", f"hpo.io/trial={trial['id']}")


def test_a_distributed_trial_is_not_adopted_but_re_run_whole_after_a_crash(launcher, target):
    from hpo.storage import ExperimentStore

    proc, exp_id, directory = _launch_k8s(launcher, target, STEPS_SCRIPT.format(steps=6, pause=0.3),
                                          trial_concurrency=1, max_trial_number=1,
                                          trial_roles={"worker": {"count": 2}})

    def running() -> list[Any]:
        with ExperimentStore(directory, readonly=True) as store:
            return store.trials(status="RUNNING")
    first = wait_until(running, 60, what="the gang running")[0]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = resume_to_end(exp_id, 90)
    trials = resumed.list_trial_jobs()
    assert [t["status"] for t in trials] == ["SYS_CANCELED", "SUCCEEDED"]
    assert trials[1]["rerun_of"] == first["seq"]
    assert not target.objects("pods", f"hpo.io/experiment={exp_id}")
    assert not target.objects("services", f"hpo.io/experiment={exp_id}")
