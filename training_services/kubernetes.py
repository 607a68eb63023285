"""Kubernetes training service: each trial is a ``batch/v1`` Job; the engine never needs to be reachable.

* **Jobs** (see :mod:`training_services.kube_manifests`): one per trial, ``backoffLimit: 0`` (re-runs are the
  engine's ``max_trial_retries``), a ``podFailurePolicy`` that ignores ``DisruptionTarget`` (an evicted or
  preempted pod is run again, not counted as the trial's failure), ``activeDeadlineSeconds`` =
  ``max_trial_duration`` and a ``ttlSecondsAfterFinished`` that outlives an engine restart.  Jobs are always
  deleted with ``propagationPolicy: Background`` (through the API a Job's pods are orphaned by default); the Jobs
  of trials that ended are deleted together, one request a second at most.
* **Metrics travel in the pod's log**: the trial API prints ``HPO_*_RESULT=`` lines; the service follows
  each pod's log with timestamps, copies it to the trial's ``stdout.log`` as it streams (so ``hpo logs`` and the
  dashboard keep it after the Job is gone), and after a dropped stream or an engine restart resumes from the
  last timestamp it saved (``sinceTime`` filters by whole second: lines already seen are dropped).  A pod
  reports intermediate result n only if no earlier pod of the trial did, and results already stored are never
  reported again, so a re-run pod or a resumed engine neither loses nor double-counts.
* **Watching, not polling**: Jobs and Pods of the experiment are listed and watched by label
  (:class:`~training_services.kube_client.Reflector`; a 410 Expired means a re-list and a reconciliation).
  A Pending pod's reason (Unschedulable, ErrImagePull, ImagePullBackOff, CreateContainerConfigError ...) is
  the trial's message while it waits; a trial still not running after ``pending_timeout`` fails with it.
  Running -> RUNNING; Job Complete -> SUCCEEDED (no final result: the engine says so); Failed ->
  FAILED with why (exceeded max_trial_duration, OOMKilled, the last lines of the log).
* **Crash and resume**: :meth:`KubernetesTrainingService.adopt` lists the experiment's Jobs, takes over every
  Job whose trial is still active in the store, deletes the Jobs the store does not know, and fails trials
  recorded RUNNING whose Job vanished (the engine may re-run them per ``max_trial_retries``); a trial that was
  only WAITING and has no Job is re-run by the engine.  ``stop()`` deletes every Job of the experiment and
  returns when their pods are gone (or after ``kill_grace`` + 60 s, saying which pods are left).
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo.trial import parse_stdout_report
from training_services.base import TrainingService, TrialEvents, TrialSpec
from training_services.code_package import CodePacker, pack_code, trial_api_files, unpack_once
from training_services.kube_client import KubeClient, KubeError, MISSING_EXTRA, Reflector, load_client
from training_services.kube_logs import PodLog, TrialLog
from training_services.gang import Placement, finishers, free_ports, gang_environment, merged_line
from training_services.kube_manifests import (EXPERIMENT_LABEL, INDEX_LABEL, TRIAL_CONTAINER, TRIAL_LABEL, exec_command,
                                              code_configmap, configmap_name, gang_host, gang_job, headless_service,
                                              job_manifest, job_name, resources_of)

__all__ = ["KubernetesTrainingService"]

log = logging.getLogger("hpo.kubernetes")

_RETRY_STATUSES = (0, 429, 500, 502, 503, 504)
DELETE_BATCH_SECONDS = 1.0    # finished trials' Jobs are deleted together, at most this long after they end
DELETE_BATCH_SIZE = 40        # trial ids in one label selector
_PROBLEM_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                    "CreateContainerError", "RunContainerError", "ErrImageNeverPull")


@dataclass
class _Trial:
    spec: TrialSpec
    job: str
    created: float
    started_sent: bool = False
    reported: int = 0                  # intermediate results reported (or stored before a resume)
    final_sent: bool = False
    report_error: str | None = None
    waiting_reason: str | None = None
    disrupted: set[str] = field(default_factory=set)   # pods evicted or preempted (noted in the log once)
    terminated: dict[str, Any] | None = None   # the trial container's last terminated state
    init_failure: str | None = None
    kill_status: str | None = None
    kill_reason: str | None = None
    finishing: bool = False
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    log: TrialLog | None = None       # stdout.log and the positions in the pods' logs
    last_collect: asyncio.Task[None] | None = None   # the latest checkpoint move (reported after the one before
                                                     # it, so it ends last)
    # a distributed trial (spec.processes): one pod per process, by index; results per index
    placements: list[Placement] = field(default_factory=list)
    gang_running: set[int] = field(default_factory=set)
    gang_reported: dict[int, int] = field(default_factory=dict)
    gang_final: set[int] = field(default_factory=set)
    gang_done: set[str] = field(default_factory=set)           # finishers (process names) that exited 0
    failed_process: tuple[str, dict[str, Any]] | None = None   # the first process that failed, its terminated state


class KubernetesTrainingService(TrainingService):
    """Runs each trial as a Kubernetes Job (config keys: see ``KubernetesConfig`` in :mod:`hpo.config`)."""

    platform = "kubernetes"

    def __init__(self, namespace: str | None = None, image: str = "python:3.12-slim",
                 resources: dict[str, Any] | None = None, node_selector: dict[str, str] | None = None,
                 tolerations: list[dict[str, Any]] | None = None, service_account_name: str | None = None,
                 pod_template_patch: dict[str, Any] | None = None, code_delivery: str = "configmap",
                 working_dir: str | None = None, pvc: Any = None, kubeconfig: str | Path | None = None,
                 context: str | None = None, pending_timeout: float | str | None = "10m", kill_grace: float = 5.0,
                 job_ttl: float | str | None = "1d", image_pull_policy: str | None = None, python: str = "python3",
                 **_ignored: Any) -> None:
        from hpo.config import parse_duration

        if code_delivery not in ("configmap", "image", "pvc"):
            raise ValueError(f"code_delivery: got {code_delivery!r}, expected 'configmap', 'image' or 'pvc'")
        pvc = pvc.model_dump() if hasattr(pvc, "model_dump") else (dict(pvc) if pvc else None)
        if code_delivery == "pvc" and not pvc:
            raise ValueError("code_delivery is 'pvc' but no pvc is set; expected pvc: {claim_name: ..., mount_path: ...}")
        self.namespace = namespace
        self.image, self.resources, self.node_selector = image, resources, node_selector
        self.tolerations, self.service_account_name = tolerations, service_account_name
        self.pod_template_patch, self.code_delivery, self.working_dir = pod_template_patch, code_delivery, working_dir
        self.pvc = pvc
        self.kubeconfig, self.context = kubeconfig, context
        self.pending_timeout = parse_duration(pending_timeout) or 600.0
        self.kill_grace = float(kill_grace)
        self.job_ttl = int(parse_duration(job_ttl) or 86400)
        self.image_pull_policy, self.python = image_pull_policy, python
        self.client: KubeClient | None = None
        self._events: TrialEvents | None = None
        self._experiment: str | None = None
        self._jobs: Reflector | None = None
        self._pods: Reflector | None = None
        self._trials: dict[str, _Trial] = {}
        self._by_job: dict[str, _Trial] = {}
        self._code_refs: dict[str, asyncio.Future[str]] = {}
        self._packer = CodePacker("a ConfigMap", prefix="code/", extra={f"lib/{k}": v for k, v in trial_api_files().items()})
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pod_change = asyncio.Event()   # replaced by a fresh one after every pod event
        self._guard: asyncio.Task[None] | None = None
        self._finished_jobs: dict[str, str] = {}   # trial id -> Job, deleted with the next batch
        self._deleter: asyncio.Task[None] | None = None
        self._closing = False
        self._api_error: str | None = None
        self._paths: dict[str, str] = {}  # the namespace's collections, once start() knows it
        self._storage: Path | None = None  # where checkpoints moved from the claim go (checkpoint_dir tells)
        self._services: set[str] = set()  # distributed trials' headless Services not deleted yet

    def __repr__(self) -> str:
        return f"KubernetesTrainingService(namespace={self.namespace!r}, image={self.image!r})"

    # -- checks and lifecycle ----------------------------------------------------------------------------------
    def precheck(self, gpu_number: int) -> None:
        """What can be checked without the cluster: the extra is installed, the pvc folder exists."""
        from hpo.config import installed
        if not installed("kubernetes_asyncio"):
            raise ValueError(MISSING_EXTRA)
        if self.code_delivery == "pvc":
            local = Path(self.pvc.get("local_path") or self.pvc["mount_path"]).expanduser()
            if not local.is_dir():
                raise ValueError(f"pvc.local_path: {local} is not a folder here; the claim {self.pvc['claim_name']!r} "
                                 "must be mounted on this machine too (code_delivery 'pvc')")

    async def start(self, events: TrialEvents) -> None:
        self.precheck(0)
        self._events = events
        client = self.client = await load_client(self.kubeconfig, self.context)
        self.namespace = self.namespace or client.namespace
        ns = self.namespace
        self._paths = {"jobs": f"/apis/batch/v1/namespaces/{ns}/jobs", "pods": f"/api/v1/namespaces/{ns}/pods",
                       "configmaps": f"/api/v1/namespaces/{ns}/configmaps",
                       "services": f"/api/v1/namespaces/{ns}/services"}
        try:
            await self._call("GET", self._paths["jobs"], {"limit": "1"}, verb="list", retry_for=5)
        except KubeError as exc:
            await client.close()
            self.client = None
            if exc.status == 0:
                raise ValueError(f"{exc.message} ({client.where})") from None
            raise ValueError(f"cannot list Jobs in namespace {ns!r} at {client.server} ({client.where}): {exc}") from None
        self._guard = asyncio.get_running_loop().create_task(self._pending_guard())

    async def _watch(self, experiment_id: str) -> None:
        """Start listing and watching the experiment's Jobs and Pods (once); returns when both are listed."""
        assert self.client is not None
        if self._experiment is None:
            self._experiment = experiment_id
            selector = f"{EXPERIMENT_LABEL}={experiment_id}"
            self._jobs = Reflector(self.client, self._paths["jobs"], selector, self._on_job, self._on_api_error)
            self._pods = Reflector(self.client, self._paths["pods"], selector, self._on_pod, self._on_api_error)
            self._jobs.start()
            self._pods.start()
        assert self._jobs is not None and self._pods is not None
        if not (self._jobs.synced.is_set() and self._pods.synced.is_set()):
            await asyncio.wait_for(asyncio.gather(self._jobs.synced.wait(), self._pods.synced.wait()), 120)

    def _on_api_error(self, message: str) -> None:
        if message != self._api_error:
            log.warning("Kubernetes API: %s (retrying)", message)
        self._api_error = message

    async def _call(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
                    verb: str | None = None, retry_for: float = 60.0) -> None:
        """A request whose answer is not needed (the watches tell), retried while the API server is unreachable or
        overloaded (at most ``retry_for`` s)."""
        assert self.client is not None
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + retry_for, 0.2
        while True:
            try:
                await self.client.request(method, path, query, body, verb=verb, decode=False)
                return
            except KubeError as exc:
                if exc.status not in _RETRY_STATUSES or loop.time() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    # -- launching ---------------------------------------------------------------------------------------------
    async def launch(self, spec: TrialSpec) -> None:
        assert self.client is not None and self._events is not None, "start() first"
        if self._closing:
            raise RuntimeError("the service is stopping")
        await self._watch(spec.experiment_id)
        code_ref = await self._code_ref(spec)
        env = spec.env
        if spec.restore_checkpoint is not None and self.pvc is not None:
            local, in_pod = self._on_claim(spec.experiment_id, _restore_name(spec))
            await asyncio.to_thread(_copy_whole, spec.restore_checkpoint, local.with_name(local.name + ".copy"), local)
            env = {**spec.env, "HPO_RESTORE_CHECKPOINT": in_pod}
        gpu_number = spec.processes[0].gpu_number if spec.processes else spec.gpu_number
        manifest = job_manifest(
            experiment_id=spec.experiment_id, trial_id=spec.trial_id, seq=spec.sequence_id, attempt=spec.attempt,
            namespace=self.namespace, command=spec.command, parameters=spec.parameters, image=self.image,
            code_delivery=self.code_delivery, code_ref=code_ref, resources=self.resources, gpu_number=gpu_number,
            node_selector=self.node_selector, tolerations=self.tolerations,
            service_account_name=self.service_account_name, pod_template_patch=self.pod_template_patch, pvc=self.pvc,
            working_dir=self.working_dir, max_duration=spec.max_duration, kill_grace=self.kill_grace,
            ttl_seconds=self.job_ttl, image_pull_policy=self.image_pull_policy, python=self.python, env=env)
        placements: list[Placement] = []
        if spec.processes:
            manifest, placements = self._gang_manifest(spec, manifest)
        trial = self._register(spec, manifest["metadata"]["name"])
        trial.placements = placements
        try:
            if spec.processes:  # its pods' DNS names exist once the Service does
                self._services.add(trial.job)
                await self._call("POST", self._paths["services"], body=headless_service(manifest), verb="create")
            await self._call("POST", self._paths["jobs"], body=manifest, verb="create")
        except KubeError as exc:
            existing = self._jobs.cache.get(trial.job) if self._jobs else None
            if exc.status == 409 and existing and existing["metadata"]["labels"].get(TRIAL_LABEL) == spec.trial_id:
                return  # an earlier attempt of this request went through before the connection dropped
            self._unregister(trial)
            raise ValueError(f"could not create Job {trial.job} in namespace {self.namespace}: {exc}") from None
        # the watch reports the rest: Pending reasons, RUNNING, the log, the end

    def _gang_manifest(self, spec: TrialSpec, job: dict[str, Any]) -> tuple[dict[str, Any], list[Placement]]:
        """A distributed trial's Indexed Job: each pod reaches the others at ``<job>-<index>.<job>`` (the headless
        Service) and a port of its own (distinct within the gang, so pods may share a network, as on the fake)."""
        processes = spec.processes
        ports = iter(free_ports(sum(p.port is None for p in processes)))
        placements = [Placement(gang_host(spec.experiment_id, spec.sequence_id, spec.trial_id, i),
                                p.port if p.port is not None else next(ports)) for i, p in enumerate(processes)]
        per_index = [{"env": gang_environment(processes, placements, spec.distribution, i),
                      "command": exec_command(p.command) if p.command is not None else None}
                     for i, p in enumerate(processes)]
        return gang_job(job, per_index, self.python), placements

    def _register(self, spec: TrialSpec, job: str) -> _Trial:
        os.makedirs(spec.trial_dir, exist_ok=True)
        trial = _Trial(spec, job, time.monotonic())
        trial.log = TrialLog(spec.trial_dir, spec.trial_id, resumed=not spec.command)
        if spec.command:  # a new trial (not one adopted after a restart)
            with open(os.path.join(spec.trial_dir, "parameters.json"), "w", encoding="utf-8") as fh:
                fh.write(json.dumps(spec.parameters))
        self._trials[spec.trial_id] = trial
        self._by_job[job] = trial
        return trial

    def _unregister(self, trial: _Trial) -> None:
        self._trials.pop(trial.spec.trial_id, None)
        self._by_job.pop(trial.job, None)
        if trial.log is not None:
            trial.log.close()

    async def _code_ref(self, spec: TrialSpec) -> str:
        """The ConfigMap holding this trial's code version, or its folder on the claim (made once per version,
        however many trials are launched at once)."""
        if self.code_delivery == "image":  # only the trial API travels
            version, tarball = "image", None
        else:
            version, tarball = await self._packer.version(spec.code_dir)
        ref = self._code_refs.get(version)
        if ref is None:
            ref = self._code_refs[version] = asyncio.ensure_future(
                self._make_code_ref(spec.experiment_id, version, tarball))
        try:
            return await asyncio.shield(ref)
        except Exception:
            if self._code_refs.get(version) is ref:
                del self._code_refs[version]  # the next launch tries again
            raise

    async def _make_code_ref(self, experiment_id: str, version: str, tarball: Path | None) -> str:
        if tarball is None:
            buf = io.BytesIO()
            pack_code(None, buf, extra={f"lib/{k}": v for k, v in trial_api_files().items()})
            data = buf.getvalue()
            version = "api" + hashlib.sha256(data).hexdigest()[:9]
        elif self.code_delivery == "pvc":
            rel = f"{experiment_id}/code-{version}"
            local = Path(self.pvc.get("local_path") or self.pvc["mount_path"]).expanduser() / rel
            await asyncio.to_thread(unpack_once, tarball, local)
            return rel
        else:
            data = tarball.read_bytes()
        await self._create_configmap(experiment_id, version, data)
        return configmap_name(experiment_id, version)

    async def _create_configmap(self, experiment_id: str, version: str, tarball: bytes) -> None:
        body = code_configmap(experiment_id, version, self.namespace, tarball)
        try:
            await self._call("POST", self._paths["configmaps"], body=body, verb="create")
        except KubeError as exc:
            if exc.status != 409:  # 409: the same version, created before (a resume, a dropped answer)
                raise ValueError(f"could not create ConfigMap {body['metadata']['name']}: {exc}") from None

    # -- watch events ------------------------------------------------------------------------------------------
    def _on_job(self, kind: str, job: dict[str, Any]) -> None:
        trial = self._by_job.get(job["metadata"]["name"])
        if trial is None or trial.finishing:
            return
        if kind == "DELETED":
            if trial.kill_status is None:
                trial.kill_status, trial.kill_reason = "FAILED", f"its Job {trial.job} was deleted outside hpo"
            self._finish_soon(trial, None)
            return
        for cond in (job.get("status") or {}).get("conditions") or []:
            if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
                self._finish_soon(trial, cond)
                return

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        trial = self._trials.get((pod["metadata"].get("labels") or {}).get(TRIAL_LABEL, ""))
        if trial is not None:
            self._track_pod(trial, kind, pod)
        self._pod_change.set()
        self._pod_change = asyncio.Event()

    def _track_pod(self, trial: _Trial, kind: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        state = _container_state(status.get("containerStatuses"), TRIAL_CONTAINER)
        for init in status.get("initContainerStatuses") or []:
            term = (init.get("state") or {}).get("terminated")
            if term and term.get("exitCode", 0) != 0:
                trial.init_failure = (f"init container {init.get('name')} failed (exit code {term.get('exitCode')}): "
                                      f"{_last_line(term.get('message')) or term.get('reason') or ''}").rstrip(": ")
        index = _index(pod) if trial.spec.processes else None
        if "terminated" in state:
            trial.terminated = state["terminated"]
            if index is not None:
                self._gang_exit(trial, index, pod, state["terminated"])
        assert trial.log is not None
        if ("running" in state or "terminated" in state) and name not in trial.log.pods and not trial.finishing:
            if index is not None:
                self._gang_running(trial, index, name)
            elif not trial.started_sent:
                trial.started_sent = True
                trial.waiting_reason = None
                self._events.started(trial.spec.trial_id, None, None, name, None)  # type: ignore[union-attr]
            if trial.log.pods and index is None:
                trial.log.note(f"hpo: the trial runs again in pod {name} (the Job replaced its pod)")
            podlog = trial.log.pod(name)
            podlog.index = index
            if index is not None:
                process = trial.spec.processes[index].name
                podlog.prefix = merged_line(process, b"")
                folder = trial.spec.trial_dir / "processes" / process
                folder.mkdir(parents=True, exist_ok=True)
                podlog.copy = open(folder / "stdout.log", "ab")
            podlog.task = self._spawn(self._follow(trial, podlog))
        elif status.get("phase") == "Pending" and not trial.started_sent:
            reason = _pending_reason(pod)
            if reason != trial.waiting_reason:
                trial.waiting_reason = reason
                waiting = getattr(self._events, "waiting", None)
                if waiting is not None:
                    waiting(trial.spec.trial_id, reason)
        if status.get("phase") == "Failed" and any(c.get("type") == "DisruptionTarget" and c.get("status") == "True"
                                                   for c in status.get("conditions") or []):
            if name not in trial.disrupted:
                trial.disrupted.add(name)
                trial.log.note(f"hpo: pod {name} was disrupted ({status.get('reason') or 'evicted'}); "
                                  "the Job runs the trial again")

    def _gang_running(self, trial: _Trial, index: int, pod: str) -> None:
        """A distributed trial's pod runs: once every index has one, the trial runs."""
        trial.gang_running.add(index)
        if trial.started_sent or len(trial.gang_running) < len(trial.spec.processes):
            return
        trial.started_sent = True
        trial.waiting_reason = None
        processes = [{"name": p.name, "host": pl.host, "port": pl.port, "pid": None, "gpus": []}
                     for p, pl in zip(trial.spec.processes, trial.placements)]
        self._events.started(trial.spec.trial_id, None, None, pod, None,  # type: ignore[union-attr]
                             processes=processes)

    def _gang_exit(self, trial: _Trial, index: int, pod: dict[str, Any], term: dict[str, Any]) -> None:
        """A distributed trial's process ended: the first failure names the trial's (the Job fails with it); once
        the chief's role is done, the trial succeeded and the rest (parameter servers) is ended with the Job."""
        process = trial.spec.processes[index].name
        disrupted = any(c.get("type") == "DisruptionTarget" and c.get("status") == "True"
                        for c in (pod.get("status") or {}).get("conditions") or [])
        done = finishers(trial.spec.processes)
        if term.get("exitCode") != 0:  # after the chief's role is done, the rest is ended: no failure
            if not disrupted and trial.failed_process is None and trial.kill_status is None and trial.gang_done < done:
                trial.failed_process = (process, term)
            return
        if process in done:
            trial.gang_done.add(process)
        if trial.gang_done >= done and not trial.finishing and trial.failed_process is None:
            trial.finishing = True
            self._spawn(self._gang_succeeded(trial))

    async def _gang_succeeded(self, trial: _Trial) -> None:
        await self._delete_job(trial.job, self.kill_grace)  # processes still running (a parameter server) end
        await self._finish(trial, {"type": "Complete", "reason": "ChiefRoleCompleted"})

    # -- logs and metrics --------------------------------------------------------------------------------------
    async def _follow(self, trial: _Trial, podlog: PodLog) -> None:
        """Copy a pod's log and pass on its reports until its container has ended; reconnects when dropped."""
        assert self.client is not None
        path = f"{self._paths['pods']}/{podlog.pod}/log"
        delay = 0.2
        try:
            while True:
                query = {"container": TRIAL_CONTAINER, "follow": "true", "timestamps": "true"}
                since, skip = podlog.since()
                if since is not None:
                    query["sinceTime"] = since
                try:
                    async for line in self.client.lines(path, query, "get"):
                        skip = self._on_log_line(trial, podlog, line, skip)
                    dropped = False
                except KubeError as exc:
                    if exc.status == 404:
                        return  # the pod is gone, and its log with it
                    dropped = True
                if not dropped and await self._container_ended(trial, podlog.pod):
                    podlog.complete = True
                    return
                if dropped:
                    await asyncio.sleep(delay)
                    delay = min(5.0, delay * 2)
                    if self._pod_gone(podlog.pod):
                        return
        finally:
            if trial.log is not None and not podlog.complete:  # a whole log needs no position: it is not read again
                trial.log.save(force=True)
            podlog.done.set()

    def _on_log_line(self, trial: _Trial, podlog: PodLog, line: bytes, skip: int) -> int:
        assert trial.log is not None
        text, skip = trial.log.accept(podlog, line, skip)
        if text is None:
            return skip
        try:
            parsed = parse_stdout_report(text)
        except ValueError as exc:
            trial.report_error = trial.report_error or str(exc)
            parsed = None
        index = podlog.index
        if parsed is not None and index:  # a distributed trial's other process: stored apart, not tuned on
            kind, value = parsed
            podlog.seen += kind == "intermediate"
            name = trial.spec.processes[index].name
            if kind == "intermediate" and podlog.seen > trial.gang_reported.get(index, 0):
                trial.gang_reported[index] = podlog.seen
                self._events.process_metric(trial.spec.trial_id, name, kind, value)  # type: ignore[union-attr]
            elif kind == "final" and index not in trial.gang_final:
                trial.gang_final.add(index)
                self._events.process_metric(trial.spec.trial_id, name, kind, value)  # type: ignore[union-attr]
            elif kind == "checkpoint":
                trial.last_collect = self._spawn(self._collect_checkpoint(trial, value, trial.last_collect))
        elif parsed is not None:
            kind, value = parsed
            if kind == "intermediate":
                podlog.seen += 1
                if podlog.seen > trial.reported:  # a replaced pod's repeats, or results stored before a restart
                    trial.reported = podlog.seen
                    self._events.metric(trial.spec.trial_id, kind, value)  # type: ignore[union-attr]
            elif kind == "checkpoint":
                trial.last_collect = self._spawn(self._collect_checkpoint(trial, value, trial.last_collect))
            elif not trial.final_sent:
                trial.final_sent = True
                self._events.metric(trial.spec.trial_id, kind, value)  # type: ignore[union-attr]
        trial.log.save()
        return skip

    async def _container_ended(self, trial: _Trial, pod: str, timeout: float = 5.0) -> bool:
        """After a log stream ended by itself: wait (a little) for the pod to say its container ended."""
        def ended() -> bool:
            obj = self._pods.cache.get(pod) if self._pods else None
            if obj is None:
                return True
            state = _container_state((obj.get("status") or {}).get("containerStatuses"), TRIAL_CONTAINER)
            return "terminated" in state or (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        return await self._wait_pods(ended, timeout)

    def _pod_gone(self, pod: str) -> bool:
        return self._pods is not None and pod not in self._pods.cache

    async def _wait_pods(self, predicate: Any, timeout: float) -> bool:
        """Wait until ``predicate()`` holds, re-checked on every pod event; False after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._pod_change.wait(), left)
            except asyncio.TimeoutError:
                return predicate()
        return True

    # -- the end of a trial ------------------------------------------------------------------------------------
    def _finish_soon(self, trial: _Trial, condition: dict[str, Any] | None) -> None:
        if not trial.finishing:
            trial.finishing = True
            self._spawn(self._finish(trial, condition))

    async def _finish(self, trial: _Trial, condition: dict[str, Any] | None) -> None:
        """Wait for the logs (and, after a kill, for the pods to be gone), then report the end and delete the Job."""
        followers = [p.done.wait() for p in trial.log.pods.values()] if trial.log is not None else []
        if followers:
            await asyncio.wait([asyncio.ensure_future(f) for f in followers], timeout=30)
        if trial.last_collect is not None:  # its checkpoints are reported before its end
            await asyncio.wait([trial.last_collect])
        if trial.kill_status is not None:
            await self._wait_pods(lambda: not self._pods_of(trial), self.kill_grace + 30)
        status, code, message = self._outcome(trial, condition)
        if status == "FAILED" and trial.terminated and trial.terminated.get("message"):
            try:
                (trial.spec.trial_dir / "stderr.log").write_text(trial.terminated["message"])
            except OSError:
                pass
        self._unregister(trial)
        if trial.job in self._services and not self._closing:
            self._spawn(self._delete_service(trial.job))
        if trial.spec.restore_checkpoint is not None and self.pvc is not None:  # its copy on the claim
            await asyncio.to_thread(shutil.rmtree, self._on_claim(trial.spec.experiment_id, _restore_name(trial.spec))[0],
                                    True)
        trial.ended.set()
        if not self._closing:
            self._events.ended(trial.spec.trial_id, status, code, message)  # type: ignore[union-attr]
            if condition is not None or trial.kill_status is not None:
                self._delete_later(trial)
        else:
            self._events.ended(trial.spec.trial_id, status, code, message)  # type: ignore[union-attr]

    def _outcome(self, trial: _Trial, condition: dict[str, Any] | None) -> tuple[str, int | None, str | None]:
        if trial.failed_process is not None and trial.kill_status is None:  # a distributed trial's process
            process, term = trial.failed_process
            trial.terminated = term
            status, code, message = self._failure(trial, term, condition or {})
            return status, code, f"{process}: {message}"
        term = trial.terminated or {}
        code = term.get("exitCode")
        if trial.kill_status is not None:
            return trial.kill_status, code, trial.kill_reason
        assert condition is not None
        if condition.get("type") == "Complete":
            if trial.report_error is not None:
                return "FAILED", code, trial.report_error
            return "SUCCEEDED", 0 if code is None or trial.spec.processes else code, None
        return self._failure(trial, term, condition)

    def _failure(self, trial: _Trial, term: dict[str, Any],
                 condition: dict[str, Any]) -> tuple[str, int | None, str | None]:
        """Why a trial (or a distributed trial's process, ended with ``term``) failed."""
        code = term.get("exitCode")
        reason = condition.get("reason") or ""
        if reason == "DeadlineExceeded":
            return "FAILED", code, f"exceeded max_trial_duration ({trial.spec.max_duration or 0:g} s)"
        if trial.init_failure:
            return "FAILED", code, trial.init_failure
        if term.get("reason") == "OOMKilled":
            limit = (resources_of(self.resources, trial.spec.gpu_number).get("limits") or {}).get("memory")
            return "FAILED", code, f"OOMKilled: the trial went over its memory limit{f' ({limit})' if limit else ''}"
        if trial.report_error is not None:
            return "FAILED", code, trial.report_error
        last = _last_line(term.get("message"))
        if last:
            return "FAILED", code, last[:500]
        if code is not None:
            return "FAILED", code, f"exit code {code}"
        return "FAILED", code, f"Job failed: {reason or 'no reason given'} {condition.get('message') or ''}".strip()

    def _pods_of(self, trial: _Trial) -> list[str]:
        if self._pods is None:
            return []
        return [name for name, pod in self._pods.cache.items()
                if (pod["metadata"].get("labels") or {}).get(TRIAL_LABEL) == trial.spec.trial_id]

    def _delete_later(self, trial: _Trial) -> None:
        """Delete a finished trial's Job with the next batch (one request for all the Jobs that ended within
        DELETE_BATCH_SECONDS; their logs are copied, their ends recorded)."""
        self._finished_jobs[trial.spec.trial_id] = trial.job
        if self._deleter is None or self._deleter.done():
            self._deleter = self._spawn(self._delete_finished())

    async def _delete_finished(self) -> None:
        await asyncio.sleep(DELETE_BATCH_SECONDS)
        while self._finished_jobs:
            batch = dict(list(self._finished_jobs.items())[:DELETE_BATCH_SIZE])
            for trial_id in batch:
                del self._finished_jobs[trial_id]
            selector = f"{EXPERIMENT_LABEL}={self._experiment},{TRIAL_LABEL} in ({','.join(sorted(batch))})"
            try:
                await self._call("DELETE", self._paths["jobs"], {"labelSelector": selector}, _background(),
                                 verb="deletecollection")
            except KubeError as exc:
                log.warning("could not delete the Jobs of finished trials %s: %s", ", ".join(sorted(batch)), exc)

    async def _delete_service(self, name: str) -> None:
        """A distributed trial's headless Service (named as its Job)."""
        try:
            await self._call("DELETE", f"{self._paths['services']}/{name}", verb="delete")
        except KubeError as exc:
            if exc.status != 404:
                log.warning("could not delete Service %s: %s", name, exc)
                return
        self._services.discard(name)

    async def _delete_job(self, name: str, grace: float | None = None) -> None:
        try:
            await self._call("DELETE", f"{self._paths['jobs']}/{name}", body=_background(grace), verb="delete")
        except KubeError as exc:
            if exc.status != 404:
                log.warning("could not delete Job %s: %s", name, exc)

    # -- kill, stop, pending timeout ---------------------------------------------------------------------------
    async def kill(self, trial_id: str, status: str = "USER_CANCELED", reason: str | None = None) -> None:
        trial = self._trials.get(trial_id)
        if trial is None or trial.finishing:
            if trial is not None:
                await trial.ended.wait()
            return
        trial.kill_status, trial.kill_reason = status, reason
        await self._delete_job(trial.job, self.kill_grace)
        self._finish_soon(trial, None)
        await trial.ended.wait()

    async def _pending_guard(self) -> None:
        """Fail trials that are still not running after ``pending_timeout``."""
        while True:
            await asyncio.sleep(min(1.0, self.pending_timeout / 4))
            now = time.monotonic()
            for trial in list(self._trials.values()):
                if not trial.started_sent and not trial.finishing and now - trial.created > self.pending_timeout:
                    why = trial.waiting_reason or "no pod of its Job was scheduled"
                    self._spawn(self.kill(trial.spec.trial_id, "FAILED",
                                          f"still pending after {self.pending_timeout:g} s: {why}"))

    async def stop(self, status: str = "SYS_CANCELED", reason: str | None = None) -> None:
        if self._closing:
            return
        self._closing = True
        if self._guard is not None:
            self._guard.cancel()
        if self.client is not None and self._experiment is not None:
            for trial in self._trials.values():
                if trial.kill_status is None:
                    trial.kill_status, trial.kill_reason = status, reason
            selector = f"{EXPERIMENT_LABEL}={self._experiment}"
            try:
                await self._call("DELETE", self._paths["jobs"], {"labelSelector": selector},
                                 _background(self.kill_grace), verb="deletecollection", retry_for=30)
            except KubeError as exc:
                log.error("could not delete the experiment's Jobs: %s", exc)
            for trial in list(self._trials.values()):
                self._finish_soon(trial, None)
            if not await self._wait_pods(lambda: not (self._pods and self._pods.cache), self.kill_grace + 60):
                left = sorted(self._pods.cache) if self._pods else []
                log.warning("stopped, but %d pod(s) still terminating: %s", len(left), ", ".join(left[:10]))
            await asyncio.gather(*(t.ended.wait() for t in list(self._trials.values())))
            await asyncio.gather(*(self._delete_service(name) for name in list(self._services)))
            try:
                await self._call("DELETE", self._paths["configmaps"], {"labelSelector": selector},
                                 {"kind": "DeleteOptions", "apiVersion": "v1"}, verb="deletecollection", retry_for=10)
            except KubeError as exc:
                log.warning("could not delete the experiment's ConfigMaps: %s", exc)
        for reflector in (self._jobs, self._pods):
            if reflector is not None:
                await reflector.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.client is not None:
            await self.client.close()
        self._packer.close()

    # -- checkpoints -------------------------------------------------------------------------------------------
    def checkpoint_dir(self, spec: TrialSpec, storage: Path) -> str | None:
        """With a PVC, trials write checkpoints on the claim (``<mount_path>/<experiment>/checkpoints``) and the
        engine, which has it mounted at ``local_path``, moves each one into the storage before reporting it."""
        if self.pvc is None:
            return None
        self._storage = storage
        return f"{self.pvc['mount_path'].rstrip('/')}/{spec.experiment_id}/checkpoints"

    def _on_claim(self, experiment_id: str, name: str) -> tuple[Path, str]:
        """Checkpoint folder ``name`` on the claim: its path here and in the pods."""
        assert self.pvc is not None
        rel = f"{experiment_id}/checkpoints/{name}"
        return (Path(self.pvc.get("local_path") or self.pvc["mount_path"]).expanduser() / rel,
                f"{self.pvc['mount_path'].rstrip('/')}/{rel}")

    async def _collect_checkpoint(self, trial: _Trial, report: dict[str, Any],
                                  before: asyncio.Task[None] | None) -> None:
        from hpo.trial_checkpoint import partial_name
        uid, storage = report["uuid"], self._storage
        if storage is not None and self.pvc is not None and "error" not in report:
            source = self._on_claim(trial.spec.experiment_id, uid)[0]
            partial = Path(storage) / partial_name(trial.spec.experiment_id, trial.spec.trial_id, uid)
            try:
                await asyncio.to_thread(_move_whole, source, partial, Path(storage) / uid)
            except OSError as exc:
                report = {**report, "error": f"could not move it from the claim: {exc.strerror or exc}"}
                log.warning("trial %s: checkpoint %s %s", trial.spec.trial_id, uid, report["error"])
        if before is not None:
            await asyncio.wait([before])  # reported in the order the trial saved them
        self._events.metric(trial.spec.trial_id, "checkpoint", report)  # type: ignore[union-attr]

    # -- review ------------------------------------------------------------------------------------------------
    def preview(self, *, experiment_id: str, command: str, parameters: dict[str, Any], code_dir: Path,
                gpu_number: int = 0, max_duration: float | None = None) -> list[dict[str, Any]]:
        """The objects the first trial would create, for ``hpo check`` (the code archive shown by its size).
        Raises ValueError when the code is too large for a ConfigMap."""
        namespace = self.namespace or "<the context's namespace>"
        objects: list[dict[str, Any]] = []
        code_ref = f"{experiment_id}/code-<version>"
        if self.code_delivery != "pvc":
            buf = io.BytesIO()
            files, size = pack_code(code_dir if self.code_delivery == "configmap" else None, buf, "code/",
                                    {f"lib/{k}": v for k, v in trial_api_files().items()})
            configmap = code_configmap(experiment_id, "version", namespace, buf.getvalue())
            configmap["binaryData"]["code.tar.gz"] = (f"<{len(buf.getvalue()) / 1024:.1f} KiB: tar.gz of {files} files "
                                                      f"({size / 1024:.1f} KiB) and the trial API>")
            code_ref = configmap["metadata"]["name"]
            objects.append(configmap)
        objects.append(job_manifest(
            experiment_id=experiment_id, trial_id="TRIAL", seq=1, attempt=0, namespace=namespace, command=command,
            parameters=parameters, image=self.image, code_delivery=self.code_delivery, code_ref=code_ref,
            resources=self.resources, gpu_number=gpu_number, node_selector=self.node_selector,
            tolerations=self.tolerations, service_account_name=self.service_account_name,
            pod_template_patch=self.pod_template_patch, pvc=self.pvc, working_dir=self.working_dir,
            max_duration=max_duration, kill_grace=self.kill_grace, ttl_seconds=self.job_ttl,
            image_pull_policy=self.image_pull_policy, python=self.python))
        return objects

    # -- resume ------------------------------------------------------------------------------------------------
    async def adopt(self, experiment_id: str, records: list[dict[str, Any]]) -> set[str]:
        await self._watch(experiment_id)
        assert self._jobs is not None and self._pods is not None
        known = {rec["id"]: rec for rec in records}
        jobs = {(job["metadata"].get("labels") or {}).get(TRIAL_LABEL): name for name, job in self._jobs.cache.items()}
        adopted: set[str] = set()
        replay: list[tuple[dict[str, Any], str | None]] = []
        for trial_id, name in jobs.items():
            rec = known.get(trial_id or "")
            if rec is None or name != job_name(experiment_id, rec["seq"], rec["id"]):
                log.info("deleting Job %s: its trial is not running in the store", name)
                await self._delete_job(name)
        for rec in records:
            name = job_name(experiment_id, rec["seq"], rec["id"])
            if name in self._jobs.cache and self._jobs.cache[name]["spec"].get("completionMode") == "Indexed":
                await self._delete_job(name)  # a distributed trial: not taken over; it is re-run whole
            elif name in self._jobs.cache:
                adopted.add(rec["id"])
                replay.append((rec, name))
            elif rec["status"] == "RUNNING":
                adopted.add(rec["id"])  # ended as FAILED below: the engine decides whether it runs again
                replay.append((rec, None))
        try:  # distributed trials' Services: none is taken over
            assert self.client is not None
            found = await self.client.request("GET", self._paths["services"],
                                              {"labelSelector": f"{EXPERIMENT_LABEL}={experiment_id}"}, verb="list")
            await asyncio.gather(*(self._delete_service(svc["metadata"]["name"]) for svc in found.get("items") or []))
        except KubeError as exc:
            log.warning("could not list the experiment's Services: %s", exc)
        if replay:  # after the engine has made them active again (it does so as soon as this returns)
            asyncio.get_running_loop().call_soon(self._replay, experiment_id, replay)
        return adopted

    def _replay(self, experiment_id: str, replay: list[tuple[dict[str, Any], str | None]]) -> None:
        assert self._jobs is not None and self._pods is not None
        for rec, name in replay:
            spec = TrialSpec(experiment_id, rec["id"], rec["seq"], rec["parameters"], "", Path("."), Path(rec["trial_dir"]))
            trial = self._register(spec, name or job_name(experiment_id, rec["seq"], rec["id"]))
            trial.started_sent = rec["status"] == "RUNNING"
            trial.reported, trial.final_sent = int(rec.get("steps") or 0), rec.get("final") is not None
            trial.log.note("hpo: the engine restarted; following this trial's log again")  # type: ignore[union-attr]
            if name is None:
                trial.kill_status = "FAILED"
                trial.kill_reason = f"its Job {trial.job} vanished while the engine was down"
                self._finish_soon(trial, None)
                continue
            for pod in list(self._pods.cache.values()):
                if (pod["metadata"].get("labels") or {}).get(TRIAL_LABEL) == rec["id"]:
                    self._track_pod(trial, "ADDED", pod)
            self._on_job("ADDED", self._jobs.cache[name])

    # -- helpers -----------------------------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("kubernetes service task failed", exc_info=task.exception())


def _background(grace: float | None = None) -> dict[str, Any]:
    """DeleteOptions for Jobs: their pods go too (through the API a Job's pods are orphaned by default)."""
    body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
    if grace is not None:
        body["gracePeriodSeconds"] = max(0, round(grace))
    return body


def _index(pod: dict[str, Any]) -> int | None:
    """An Indexed Job's pod's completion index (which process of a distributed trial it runs)."""
    meta = pod["metadata"]
    value = (meta.get("labels") or {}).get(INDEX_LABEL) or (meta.get("annotations") or {}).get(INDEX_LABEL)
    return int(value) if value is not None and str(value).isdigit() else None


def _container_state(statuses: list[dict[str, Any]] | None, name: str) -> dict[str, Any]:
    for status in statuses or []:
        if status.get("name") == name:
            return status.get("state") or {}
    return {}


def _pending_reason(pod: dict[str, Any]) -> str | None:
    """Why a Pending pod does not run: its scheduling condition or a container's waiting reason."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"{cond.get('reason') or 'Unschedulable'}: {cond.get('message') or ''}".rstrip(": ")
    for group in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(group) or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _PROBLEM_REASONS:
                return f"{waiting['reason']}: {waiting.get('message') or ''}".rstrip(": ")
    return None


def _last_line(text: str | None) -> str | None:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else None


def _restore_name(spec: TrialSpec) -> str:
    from hpo.trial_checkpoint import partial_name
    return partial_name(spec.experiment_id, spec.trial_id, "restore")


def _copy_whole(source: Path, partial: Path, target: Path) -> None:
    """Copy a checkpoint folder to ``target``: under the name ``partial``, renamed when whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(source, partial, symlinks=True)
        os.rename(partial, target)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _move_whole(source: Path, partial: Path, target: Path) -> None:
    """Move a checkpoint folder into the storage: a rename on the same file system, else a copy (see
    :func:`_copy_whole`), then the source is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)
        return
    except OSError:
        pass
    _copy_whole(source, partial, target)
    shutil.rmtree(source, ignore_errors=True)
