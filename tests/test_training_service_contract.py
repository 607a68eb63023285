"""Contract tests every TrainingService implementation must pass (real trial processes).

Add an implementation by extending ``SERVICES`` with a factory that returns
``(service, cleanup)``; each test drives the service directly through a recording
``TrialEvents`` sink, without an engine.
"""
from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest

from training_services.base import TrialSpec, create_training_service

PY = shlex.quote(sys.executable)


def _local(tmp: Path) -> Any:
    return create_training_service("local", kill_grace=1.0)


def _remote(tmp: Path) -> Any:
    """Trials over SSH to a real sshd on loopback (tests/sshd.py), one server for the whole run."""
    from sshd import SharedServer, unavailable

    if unavailable():
        pytest.skip(unavailable())
    shared = SharedServer.get()
    return create_training_service(
        "remote", machine_list=[shared.server.machine(shared.key, python_path=sys.executable)],
        known_hosts_file=str(shared.known_hosts), remote_directory=str(tmp / "remote-host"), kill_grace=1.0)


def _warm_starts(factory: Callable[[Path], Any]) -> Callable[[Path], Any]:
    """``factory``'s service with warm starts on: every trial that can be is forked from a zygote (the local
    service's, or the one of the machine's agent)."""
    def make(tmp: Path) -> Any:
        service = factory(tmp)
        launch = service.launch

        async def warm_launch(spec: TrialSpec) -> None:
            spec.warm_start = ["json"] if spec.warm_start is None else spec.warm_start
            await launch(spec)

        service.launch = warm_launch
        return service
    return make


_local_warm, _remote_warm = _warm_starts(_local), _warm_starts(_remote)


def _kubernetes(tmp: Path) -> Any:
    """Trials as Jobs on the fake cluster of tests/fake_k8s (one for the whole run; a namespace per test)."""
    from kube_support import shared_cluster

    cluster, namespace = shared_cluster()
    return create_training_service("kubernetes", kubeconfig=str(cluster.kubeconfig), namespace=namespace,
                                   kill_grace=1.0, pending_timeout="1m")


SERVICES: dict[str, Callable[[Path], Any]] = {"local": _local, "local-warm": _local_warm, "remote": _remote,
                                              "remote-warm": _remote_warm, "kubernetes": _kubernetes}


def processes(rec: "Recorder", trial_id: str) -> list[psutil.Process]:
    """The trial's running processes: the tree under the reported pid, or (Kubernetes) its pod's processes."""
    pid = rec.pids.get(trial_id)
    if pid is not None:
        try:
            root = psutil.Process(pid)
            return [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
    from kube_support import shared_cluster
    cluster, namespace = shared_cluster(current=True)
    out = {}
    for p in cluster.pod_processes(rec.host_of[trial_id], namespace):
        try:
            root = psutil.Process(p)
            out.update((q.pid, q) for q in [root] + root.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return list(out.values())


class Recorder:
    """A TrialEvents sink that keeps every call in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []
        self.pids: dict[str, int | None] = {}
        self.host_of: dict[str, str | None] = {}
        self.ended_status: dict[str, str] = {}
        self.messages: dict[str, str | None] = {}
        self.processes: dict[str, list[dict[str, Any]]] = {}

    def started(self, trial_id, pid, pgid, host, gpus, processes=None) -> None:
        self.events.append(("started", trial_id, gpus))
        self.pids[trial_id] = pid
        self.host_of[trial_id] = host
        if processes is not None:
            self.processes[trial_id] = processes

    def metric(self, trial_id, kind, value) -> None:
        self.events.append(("metric", trial_id, (kind, value)))

    def process_metric(self, trial_id, process, kind, value) -> None:
        self.events.append(("process_metric", trial_id, (process, kind, value)))

    def ended(self, trial_id, status, exit_code, message) -> None:
        self.events.append(("ended", trial_id, status))
        self.ended_status[trial_id] = status
        self.messages[trial_id] = message

    def of(self, trial_id: str) -> list[tuple[str, Any]]:
        return [(kind, data) for kind, tid, data in self.events if tid == trial_id]

    async def wait_started(self, *trial_ids: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not all(t in self.pids for t in trial_ids):
            assert time.monotonic() < deadline, f"trials {trial_ids} did not start; events: {self.events}"
            await asyncio.sleep(0.02)

    async def wait_ended(self, *trial_ids: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not all(t in self.ended_status for t in trial_ids):
            assert time.monotonic() < deadline, f"trials {trial_ids} did not end; events: {self.events}"
            await asyncio.sleep(0.02)


@pytest.fixture(params=sorted(SERVICES))
def service_factory(request):
    return SERVICES[request.param]


def _spec(tmp: Path, trial_id: str, script: str, **kw: Any) -> TrialSpec:
    code = tmp / "code"
    code.mkdir(exist_ok=True)
    (code / f"{trial_id}.py").write_text(script)
    return TrialSpec("exp1", trial_id, kw.pop("seq", 1), kw.pop("parameters", {"x": 1}),
                     f"{PY} {trial_id}.py", code, tmp / "trials" / trial_id, **kw)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _run_trial(tmp: Path, service_factory: Any, trial_id: str, script: str, **kw: Any) -> Recorder:
    """Start a service, run one trial to its end, stop the service; what it reported."""
    async def main() -> Recorder:
        rec, svc = Recorder(), service_factory(tmp)
        await svc.start(rec)
        await svc.launch(_spec(tmp, trial_id, script, **kw))
        await rec.wait_ended(trial_id)
        await svc.stop()
        return rec

    return _run(main())


def test_reports_arrive_in_order_then_ended(tmp_path, service_factory):
    script = ("import hpo, sys\np = hpo.get_next_parameter()\n"
              "for i in range(3):\n    hpo.report_intermediate_result(p['x'] * i)\n"
              "print('hello from the trial')\nhpo.report_final_result({'default': 7.5, 'other': 1})\n")

    rec = _run_trial(tmp_path, service_factory, "t1", script, parameters={"x": 2})
    kinds = [k for k, _ in rec.of("t1")]
    assert kinds == ["started", "metric", "metric", "metric", "metric", "ended"]
    metrics = [d for k, d in rec.of("t1") if k == "metric"]
    assert metrics == [("intermediate", 0), ("intermediate", 2), ("intermediate", 4),
                       ("final", {"default": 7.5, "other": 1})]
    assert rec.ended_status["t1"] == "SUCCEEDED"
    assert "hello from the trial" in (tmp_path / "trials" / "t1" / "stdout.log").read_text()
    assert json.loads((tmp_path / "trials" / "t1" / "parameters.json").read_text()) == {"x": 2}


def test_trial_identity_in_environment(tmp_path, service_factory):
    script = ("import hpo, os\nhpo.report_final_result({'default': hpo.get_sequence_id(), "
              "'trial': hpo.get_trial_id(), 'exp': hpo.get_experiment_id(), 'cuda': os.environ['CUDA_VISIBLE_DEVICES']})\n")

    rec = _run_trial(tmp_path, service_factory, "envtrial", script, seq=42)
    final = [d for k, d in rec.of("envtrial") if k == "metric"][0][1]
    assert final == {"default": 42, "trial": "envtrial", "exp": "exp1", "cuda": ""}


def test_failure_exit_code_and_message(tmp_path, service_factory):
    script = "import sys\nprint('about to fail', file=sys.stderr)\nraise SystemExit('bad learning rate: -1')\n"

    rec = _run_trial(tmp_path, service_factory, "fails", script)
    assert rec.ended_status["fails"] == "FAILED"
    assert rec.messages["fails"] == "bad learning rate: -1"


def test_printed_result_lines_are_reports(tmp_path, service_factory):
    script = "print('HPO_INTERMEDIATE_RESULT=0.5')\nprint('noise')\nprint('HPO_FINAL_RESULT=0.75')\n"

    rec = _run_trial(tmp_path, service_factory, "printed", script)
    assert [d for k, d in rec.of("printed") if k == "metric"] == [("intermediate", 0.5), ("final", 0.75)]
    assert rec.ended_status["printed"] == "SUCCEEDED"


def test_max_duration_kills_the_trial(tmp_path, service_factory):
    script = "import time\ntime.sleep(60)\n"

    async def main() -> tuple[Recorder, float]:
        rec, svc = Recorder(), service_factory(tmp_path)
        await svc.start(rec)
        t0 = time.monotonic()
        await svc.launch(_spec(tmp_path, "slow", script, max_duration=0.5))
        await rec.wait_ended("slow")
        return rec, time.monotonic() - t0

    rec, took = _run(main())
    assert rec.ended_status["slow"] == "FAILED"
    assert "max_trial_duration" in rec.messages["slow"]
    assert took < 5


def test_kill_ends_the_whole_tree_with_the_given_status(tmp_path, service_factory):
    script = ("import subprocess, time, hpo\n"
              "subprocess.Popen(['sh', '-c', 'sleep 300 & sleep 300'])\n"
              "subprocess.Popen(['sleep', '300'], start_new_session=False)\n"
              "hpo.report_intermediate_result(1)\ntime.sleep(300)\n")

    async def main() -> tuple[Recorder, list[psutil.Process]]:
        rec, svc = Recorder(), service_factory(tmp_path)
        await svc.start(rec)
        await svc.launch(_spec(tmp_path, "tree", script))
        while not any(k == "metric" for k, _ in rec.of("tree")):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        tree = processes(rec, "tree")
        assert len(tree) >= 4
        if service_factory in (_local_warm, _remote_warm):  # forked: the supervisor is a zygote's child
            assert "zygote" in " ".join(tree[0].cmdline()), tree[0].cmdline()
        await svc.kill("tree", "EARLY_STOPPED", "assessor")
        return rec, tree

    rec, tree = _run(main())
    assert rec.ended_status["tree"] == "EARLY_STOPPED"
    assert not [p for p in tree if _alive(p)]


def test_stop_ends_every_trial(tmp_path, service_factory):
    script = "import time, subprocess\nsubprocess.Popen(['sleep', '300'])\ntime.sleep(300)\n"

    async def main() -> tuple[Recorder, list[psutil.Process]]:
        rec, svc = Recorder(), service_factory(tmp_path)
        await svc.start(rec)
        for i in range(3):
            await svc.launch(_spec(tmp_path, f"s{i}", script, seq=i + 1))
        await rec.wait_started("s0", "s1", "s2")
        await asyncio.sleep(0.5)
        procs = [p for i in range(3) for p in processes(rec, f"s{i}")]
        assert len(procs) >= 6
        await svc.stop("SYS_CANCELED", "experiment stopped")
        return rec, procs

    rec, procs = _run(main())
    assert rec.ended_status == {"s0": "SYS_CANCELED", "s1": "SYS_CANCELED", "s2": "SYS_CANCELED"}
    assert not [p for p in procs if _alive(p)]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
