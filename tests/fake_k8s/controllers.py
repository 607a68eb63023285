"""Scheduler, Job controller, garbage collector and TTL controller (one reconcile pass each).

Contracts:
* Scheduler: one node with ``rt.capacity``; a pod's request per resource is the max of its
  containers' requests and limits (init containers: max with the sum). Unfit pods stay Pending with
  ``PodScheduled=False/Unschedulable`` and ``0/1 nodes are available: 1 Insufficient cpu.``.
* Job controller: batch/v1 semantics for parallelism, completions, Indexed mode, backoffLimit,
  activeDeadlineSeconds, podFailurePolicy (FailJob/Ignore/Count), terminal conditions
  Complete/Failed. Pod outcomes are counted once, also for pods deleted before they were seen
  terminal (via the store listener, like the job-tracking finalizer).
* GC deletes pods whose owning Job is gone; Foreground-deleted Jobs go after their pods;
  ``ttlSecondsAfterFinished`` deletes finished Jobs with Background propagation.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from . import events
from .deletion import delete
from .runtime import Runtime, parse_quantity
from .store import ApiError, now_rfc3339, random_suffix

TERMINAL = ("Succeeded", "Failed")
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
RESOURCE_NAMES = ("cpu", "memory", "nvidia.com/gpu")


def _ts_seconds(text: str | None) -> float | None:
    if not text:
        return None
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=dt.timezone.utc).timestamp()


def pod_requests(spec: dict[str, Any]) -> dict[str, float]:
    """Effective requests of a pod spec (cores, bytes, devices)."""
    def one(c: dict[str, Any]) -> dict[str, float]:
        res = c.get("resources") or {}
        out = {}
        for r in RESOURCE_NAMES:
            vals = [parse_quantity(v) for part in ("requests", "limits")
                    if (v := (res.get(part) or {}).get(r)) is not None]
            out[r] = max(vals) if vals else 0.0
        return out
    total = {r: 0.0 for r in RESOURCE_NAMES}
    for c in spec.get("containers") or []:
        for r, v in one(c).items():
            total[r] += v
    for c in spec.get("initContainers") or []:
        for r, v in one(c).items():
            total[r] = max(total[r], v)
    return total


def owner_uid(pod: dict[str, Any]) -> str | None:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "Job":
            return ref.get("uid")
    return None


def job_finished(job: dict[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


class Scheduler:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self.reported: dict[str, str] = {}    # pod uid -> last unschedulable message

    def sync(self) -> None:
        store = self.rt.store
        pods = store.snapshot("pods", None)
        used = {r: 0.0 for r in RESOURCE_NAMES}
        pending = []
        for p in pods:
            phase = (p.get("status") or {}).get("phase")
            if phase in TERMINAL:
                continue
            if p["spec"].get("nodeName"):
                for r, v in pod_requests(p["spec"]).items():
                    used[r] += v
            elif "deletionTimestamp" not in p["metadata"]:
                pending.append(p)
        pending.sort(key=lambda p: int(p["metadata"]["resourceVersion"]))
        for pod in pending:
            meta = pod["metadata"]
            message = None
            for vol in pod["spec"].get("volumes") or []:
                claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
                if claim is not None and (meta["namespace"], claim) not in self.rt.pvcs:
                    message = f'0/1 nodes are available: persistentvolumeclaim "{claim}" not found.'
            req = pod_requests(pod["spec"])
            short = [r for r in RESOURCE_NAMES if used[r] + req[r] > self.rt.capacity.get(r, 0)
                     + 1e-9]
            if message is None and short:
                message = "0/1 nodes are available: " + ", ".join(
                    f"1 Insufficient {r}" for r in short) + "."
            if message is not None:
                if self.reported.get(meta["uid"]) != message:
                    self.reported[meta["uid"]] = message
                    self._unschedulable(pod, message)
                continue
            for r, v in req.items():
                used[r] += v
            self._bind(pod)

    def _unschedulable(self, pod: dict[str, Any], message: str) -> None:
        def apply(p: dict[str, Any]) -> None:
            st = p.setdefault("status", {})
            st["phase"] = "Pending"
            st["conditions"] = [{"type": "PodScheduled", "status": "False", "lastProbeTime": None,
                                 "lastTransitionTime": now_rfc3339(), "reason": "Unschedulable",
                                 "message": message}]
        meta = pod["metadata"]
        updated = self.rt.store.mutate("pods", meta["namespace"], meta["name"], apply)
        if updated:
            events.record(self.rt.store, updated, "FailedScheduling", message, "Warning",
                          "default-scheduler")

    def _bind(self, pod: dict[str, Any]) -> None:
        def apply(p: dict[str, Any]) -> None:
            p["spec"]["nodeName"] = self.rt.node_name
            st = p.setdefault("status", {})
            st.update({"phase": "Pending", "hostIP": "127.0.0.1", "podIP": "127.0.0.1"})
            st["conditions"] = [{"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                                 "lastTransitionTime": now_rfc3339()}]
        meta = pod["metadata"]
        self.reported.pop(meta["uid"], None)
        updated = self.rt.store.mutate("pods", meta["namespace"], meta["name"], apply)
        if updated:
            events.record(self.rt.store, updated, "Scheduled", f"Successfully assigned "
                          f"{meta['namespace']}/{meta['name']} to {self.rt.node_name}", "Normal",
                          "default-scheduler")


@dataclass
class JobTrack:
    """What the controller remembers about one Job (survives apiserver restarts)."""
    start: float = field(default_factory=time.time)
    counted: dict[str, str] = field(default_factory=dict)     # pod uid -> succeeded|failed|ignored
    succeeded_indexes: set[int] = field(default_factory=set)
    gone: dict[str, dict[str, Any]] = field(default_factory=dict)  # deleted pods' final objects


def _index_of(pod: dict[str, Any]) -> int | None:
    value = (pod["metadata"].get("annotations") or {}).get(INDEX_KEY)
    return int(value) if value is not None and str(value).isdigit() else None


def match_failure_policy(job: dict[str, Any], pod: dict[str, Any]) -> tuple[str, str] | None:
    """The first podFailurePolicy rule matching a failed pod: (action, message) or None."""
    rules = ((job.get("spec") or {}).get("podFailurePolicy") or {}).get("rules") or []
    meta, status = pod["metadata"], pod.get("status") or {}
    statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    for i, rule in enumerate(rules):
        action = rule.get("action")
        codes = rule.get("onExitCodes")
        if codes:
            for cs in statuses:
                term = (cs.get("state") or {}).get("terminated")
                if not term or term.get("exitCode", 0) == 0:
                    continue
                if codes.get("containerName") and codes["containerName"] != cs.get("name"):
                    continue
                code = term["exitCode"]
                hit = code in codes.get("values", []) if codes.get("operator") == "In" \
                    else code not in codes.get("values", [])
                if hit:
                    return action, (f"Container {cs.get('name')} for pod {meta['namespace']}/"
                                    f"{meta['name']} failed with exit code {code} matching "
                                    f"{action} rule at index {i}")
        for pc in rule.get("onPodConditions") or []:
            for cond in status.get("conditions") or []:
                if cond.get("type") == pc.get("type") and \
                        cond.get("status") == pc.get("status", "True"):
                    return action, (f"Pod {meta['namespace']}/{meta['name']} has condition "
                                    f"{pc.get('type')} matching {action} rule at index {i}")
    return None


class JobController:
    def __init__(self, rt: Runtime, kubelet_active: Any):
        self.rt = rt
        self.tracks: dict[str, JobTrack] = {}
        self.kubelet_active = kubelet_active     # () -> set of pod uids the kubelet is running
        rt.store.listeners.append(self._on_event)

    def _on_event(self, type_: str, resource: str, obj: dict, old: dict | None) -> None:
        if type_ == "DELETED" and resource == "pods":
            uid = owner_uid(obj)
            if uid is not None:
                self.tracks.setdefault(uid, JobTrack()).gone[obj["metadata"]["uid"]] = obj
        self.rt.kick()

    # -- helpers -------------------------------------------------------------------------------
    def _delete_pod(self, pod: dict[str, Any], grace: int | None = None) -> None:
        meta = pod["metadata"]
        try:
            delete(self.rt, "pods", meta["namespace"], meta["name"], grace=grace,
                   active_pod_uids=self.kubelet_active())
        except ApiError:
            pass

    def sync(self) -> None:
        store = self.rt.store
        jobs = store.snapshot("jobs", None)
        pods = store.snapshot("pods", None)
        by_owner: dict[str, list[dict]] = {}
        for p in pods:
            uid = owner_uid(p)
            if uid:
                by_owner.setdefault(uid, []).append(p)
        job_uids = {j["metadata"]["uid"] for j in jobs}
        # garbage collector: dependents of vanished Jobs
        for uid, owned in by_owner.items():
            if uid not in job_uids:
                for p in owned:
                    if "deletionTimestamp" not in p["metadata"]:
                        self._delete_pod(p)
        for uid in [u for u in self.tracks if u not in job_uids]:
            del self.tracks[uid]
        for job in jobs:
            try:
                self._sync_job(job, by_owner.get(job["metadata"]["uid"], []))
            except ApiError:
                pass

    def _sync_job(self, job: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        meta, spec = job["metadata"], job.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        if "deletionTimestamp" in meta:
            if "foregroundDeletion" in (meta.get("finalizers") or []):
                for p in pods:
                    if "deletionTimestamp" not in p["metadata"]:
                        self._delete_pod(p)
                if not pods:
                    self.rt.store.mutate("jobs", ns, name, lambda j: j["metadata"].__setitem__(
                        "finalizers", [f for f in j["metadata"].get("finalizers") or []
                                       if f != "foregroundDeletion"]))
                    current = self.rt.store.find("jobs", ns, name)
                    if current is not None and not current["metadata"].get("finalizers"):
                        self.rt.store.remove("jobs", ns, name)
            return
        if job_finished(job):
            self._ttl(job)
            return
        track = self.tracks.setdefault(meta["uid"], JobTrack())
        status = dict(job.get("status") or {})
        if not status.get("startTime"):
            track.start = time.time()
            status["startTime"] = now_rfc3339()
        indexed = spec.get("completionMode") == "Indexed"
        completions = spec.get("completions", 1) if spec.get("completions") is not None else 1
        parallelism = spec.get("parallelism", 1) if spec.get("parallelism") is not None else 1
        backoff = spec.get("backoffLimit", 6) if spec.get("backoffLimit") is not None else 6
        failure: tuple[str, str] | None = None
        candidates = pods + [p for u, p in track.gone.items()
                             if u not in {x["metadata"]["uid"] for x in pods}]
        for p in candidates:
            puid = p["metadata"]["uid"]
            if puid in track.counted:
                continue
            phase = (p.get("status") or {}).get("phase")
            deleted = puid in track.gone
            if phase == "Succeeded":
                track.counted[puid] = "succeeded"
                idx = _index_of(p)
                if idx is not None:
                    track.succeeded_indexes.add(idx)
            elif phase == "Failed" or deleted:
                matched = match_failure_policy(job, p)
                action = matched[0] if matched else "Count"
                if action == "Ignore":
                    track.counted[puid] = "ignored"
                else:
                    track.counted[puid] = "failed"
                    if action == "FailJob" and failure is None:
                        failure = ("PodFailurePolicy", matched[1])
        track.gone.clear()
        active = [p for p in pods if (p.get("status") or {}).get("phase") not in TERMINAL
                  and "deletionTimestamp" not in p["metadata"]]
        failed = sum(1 for v in track.counted.values() if v == "failed")
        succeeded = sum(1 for v in track.counted.values() if v == "succeeded")
        ads = spec.get("activeDeadlineSeconds")
        if failure is None and failed > backoff:
            failure = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        if failure is None and ads is not None and time.time() - track.start >= ads:
            failure = ("DeadlineExceeded", "Job was active longer than specified deadline")
        done = (len(track.succeeded_indexes & set(range(completions))) >= completions) \
            if indexed else succeeded >= completions
        ts = now_rfc3339()
        if failure is not None:
            for p in active:
                self._delete_pod(p)
            active = []
            status["conditions"] = (status.get("conditions") or []) + [
                {"type": "FailureTarget", "status": "True", "reason": failure[0],
                 "message": failure[1], "lastProbeTime": ts, "lastTransitionTime": ts},
                {"type": "Failed", "status": "True", "reason": failure[0], "message": failure[1],
                 "lastProbeTime": ts, "lastTransitionTime": ts}]
            events.record(self.rt.store, job, failure[0], failure[1], "Warning", "job-controller")
        elif done:
            for p in active:
                self._delete_pod(p)
            active = []
            status["conditions"] = (status.get("conditions") or []) + [
                {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                 "message": "Reached expected number of succeeded pods",
                 "lastProbeTime": ts, "lastTransitionTime": ts},
                {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                 "message": "Reached expected number of succeeded pods",
                 "lastProbeTime": ts, "lastTransitionTime": ts}]
            status["completionTime"] = ts
            events.record(self.rt.store, job, "Completed", "Job completed", "Normal",
                          "job-controller")
        else:
            active += self._create_pods(job, active, indexed, completions, parallelism,
                                        succeeded, track)
        status.update({"active": len(active), "succeeded": succeeded, "failed": failed,
                       "ready": sum(1 for p in active if _ready(p)),
                       "terminating": sum(1 for p in pods if "deletionTimestamp" in p["metadata"]
                                          and (p.get("status") or {}).get("phase")
                                          not in TERMINAL),
                       "uncountedTerminatedPods": {}})
        if indexed:
            status["completedIndexes"] = ",".join(str(i) for i in sorted(track.succeeded_indexes))
        if status != (job.get("status") or {}):
            self.rt.store.mutate("jobs", ns, name, lambda j: j.__setitem__("status", status))

    def _create_pods(self, job: dict[str, Any], active: list[dict[str, Any]], indexed: bool,
                     completions: int, parallelism: int, succeeded: int,
                     track: JobTrack) -> list[dict[str, Any]]:
        if indexed:
            busy = {_index_of(p) for p in active}
            wanted = [i for i in range(completions)
                      if i not in track.succeeded_indexes and i not in busy]
            wanted = wanted[:max(0, parallelism - len(active))]
        else:
            n = min(parallelism, completions - succeeded) - len(active)
            wanted = [None] * max(0, n)
        return [self._create_pod(job, index) for index in wanted]

    def _create_pod(self, job: dict[str, Any], index: int | None) -> dict[str, Any]:
        meta = job["metadata"]
        template = job["spec"]["template"]
        tmeta = template.get("metadata") or {}
        labels = dict(tmeta.get("labels") or {})
        labels.update({"job-name": meta["name"], "batch.kubernetes.io/job-name": meta["name"],
                       "controller-uid": meta["uid"],
                       "batch.kubernetes.io/controller-uid": meta["uid"]})
        annotations = dict(tmeta.get("annotations") or {})
        spec = dict(template.get("spec") or {})
        name = f"{meta['name']}-{random_suffix()}"
        if index is not None:
            labels[INDEX_KEY] = str(index)
            annotations[INDEX_KEY] = str(index)
            spec["hostname"] = f"{meta['name']}-{index}"
            name = f"{meta['name']}-{index}-{random_suffix()}"
            env_item = {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                "fieldPath": f"metadata.annotations['{INDEX_KEY}']"}}}
            for kind in ("initContainers", "containers"):
                if spec.get(kind):
                    spec[kind] = [dict(c, env=[env_item] + list(c.get("env") or []))
                                  for c in spec[kind]]
        spec.setdefault("terminationGracePeriodSeconds", 30)
        pod = {"metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                            "annotations": annotations,
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                                 "name": meta["name"], "uid": meta["uid"],
                                                 "controller": True, "blockOwnerDeletion": True}]},
               "spec": spec, "status": {"phase": "Pending"}}
        created = self.rt.store.create("pods", pod)
        events.record(self.rt.store, job, "SuccessfulCreate", f"Created pod: {name}", "Normal",
                      "job-controller")
        return created

    def _ttl(self, job: dict[str, Any]) -> None:
        ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        if ttl is None:
            return
        status = job.get("status") or {}
        finished = status.get("completionTime") or next(
            (c.get("lastTransitionTime") for c in status.get("conditions") or []
             if c.get("type") in ("Complete", "Failed")), None)
        at = _ts_seconds(finished)
        if at is not None and time.time() >= at + ttl:
            meta = job["metadata"]
            try:
                delete(self.rt, "jobs", meta["namespace"], meta["name"], "Background")
            except ApiError:
                pass


def _ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])
