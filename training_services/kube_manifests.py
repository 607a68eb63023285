"""The Kubernetes objects the Kubernetes training service creates, as plain dicts (pure functions).

One ``batch/v1`` Job per trial, named ``hpo-<experiment>-<seq>-<trial id, lowercased>`` and labelled with
:data:`EXPERIMENT_LABEL`, :data:`TRIAL_LABEL`, :data:`ATTEMPT_LABEL` and ``app.kubernetes.io/managed-by: hpo``.
The pod runs ``sh -c <trial command>`` in the configured image (any image with Python 3 and ``sh``);
its code and the stdlib-only trial API arrive one of three ways (``code_delivery``):

* ``configmap``: one ConfigMap per experiment and code version holds a tar.gz (``code/`` + ``lib/hpo/``),
  unpacked into an ``emptyDir`` at ``/hpo/work`` by an init container running the same image;
* ``image``: the code is in the image (``working_dir``, else the image's own); a small ConfigMap brings the
  trial API the same way;
* ``pvc``: the engine unpacks the same tar.gz onto a PersistentVolumeClaim it also has mounted
  (``pvc.local_path``), under ``<experiment>/code-<version>/``; pods mount the claim at ``pvc.mount_path``.

Parameters reach the trial in ``HPO_PARAMETERS`` (JSON); reports are the ``HPO_*_RESULT=`` lines the trial
API prints, read back from the pod's log.
"""
from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any

from training_services.nni_env import nni_environment

__all__ = ["EXPERIMENT_LABEL", "TRIAL_LABEL", "ATTEMPT_LABEL", "MANAGED_BY", "job_name", "job_manifest",
           "gang_job", "headless_service", "gang_host", "exec_command", "INDEX_LABEL",
           "code_configmap", "configmap_name", "merge_patch", "resources_of", "CONFIGMAP_LIMIT", "WORK", "TRIAL_CONTAINER"]

EXPERIMENT_LABEL = "hpo.io/experiment"
TRIAL_LABEL = "hpo.io/trial"
ATTEMPT_LABEL = "hpo.io/attempt"
SEQUENCE_ANNOTATION = "hpo.io/sequence"
MANAGED_BY = {"app.kubernetes.io/managed-by": "hpo"}
CONFIGMAP_LIMIT = 900 * 1024         # packed bytes; the API server refuses ConfigMaps over 1 MiB
WORK = "/hpo/work"                   # emptyDir: unpacked code and lib, the trial folder
ARCHIVE = "/hpo/archive"             # the ConfigMap volume
TRIAL_CONTAINER = "trial"
_UNPACK = ("import sys, tarfile; t = tarfile.open(sys.argv[1]); "
           "t.extractall(sys.argv[2], filter='data') if hasattr(tarfile, 'data_filter') else t.extractall(sys.argv[2])")
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
# A distributed trial's pod: its process (by JOB_COMPLETION_INDEX) in HPO_GANG, its environment added, then its
# command exec'd (a holder, an MPI rank that rank 0's mpirun starts, waits for the end of the trial instead).
_GANG_BOOT = ("import json, os, signal, sys; g = json.loads(os.environ.pop('HPO_GANG')); "
              "p = g[int(os.environ['JOB_COMPLETION_INDEX'])]; os.environ.update(p['env']); "
              "os.makedirs(os.environ['HPO_TRIAL_DIR'], exist_ok=True); "
              "c = p['command']; os.execvp('sh', ['sh', '-c', c]) if c else [signal.pause() for _ in iter(int, 1)]")
_SHELL_SYNTAX = re.compile(r"[;&|<>()`$\n]|\b(if|for|while|case)\b")


def job_name(experiment_id: str, seq: int, trial_id: str) -> str:
    """The trial's Job name: deterministic, a valid DNS-1123 label (seq keeps lowercased ids unique)."""
    return f"hpo-{experiment_id}-{seq}-{trial_id.lower()}"


def configmap_name(experiment_id: str, version: str) -> str:
    return f"hpo-{experiment_id}-code-{version[:12]}"


def code_configmap(experiment_id: str, version: str, namespace: str, tarball: bytes) -> dict[str, Any]:
    """The ConfigMap holding a code version's tar.gz; ValueError if it is over :data:`CONFIGMAP_LIMIT`."""
    if len(tarball) > CONFIGMAP_LIMIT:
        raise ValueError(f"the trial code packs to {len(tarball) / 1024:.0f} KiB, over the {CONFIGMAP_LIMIT // 1024} KiB "
                         "a ConfigMap can carry; leave data and checkpoints out with a .hpoignore file, or set "
                         "training_service.code_delivery to 'pvc' or 'image'")
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": configmap_name(experiment_id, version), "namespace": namespace,
                         "labels": {EXPERIMENT_LABEL: experiment_id, **MANAGED_BY}},
            "binaryData": {"code.tar.gz": base64.b64encode(tarball).decode()}}


def resources_of(resources: dict[str, Any] | None, gpu_number: int) -> dict[str, Any]:
    """Container resources from the config's shorthand ``{cpu, memory, gpu}`` (gpu -> nvidia.com/gpu;
    requests = limits for memory and GPUs, a request only for CPU), or ``{requests, limits}`` as given."""
    resources = dict(resources or {})
    if "requests" in resources or "limits" in resources:
        out = {k: {n: str(v) for n, v in (resources.get(k) or {}).items()} for k in ("requests", "limits")
               if resources.get(k)}
    else:
        gpu = resources.pop("gpu", None)
        if gpu is not None:
            resources["nvidia.com/gpu"] = gpu
        requests = {k: str(v) for k, v in resources.items()}
        limits = {k: v for k, v in requests.items() if k != "cpu"}
        out = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    if gpu_number and not any("nvidia.com/gpu" in out.get(k, {}) for k in ("requests", "limits")):
        out.setdefault("limits", {})["nvidia.com/gpu"] = str(gpu_number)
        out.setdefault("requests", {})["nvidia.com/gpu"] = str(gpu_number)
    return out


def merge_patch(base: Any, patch: Any) -> Any:
    """``patch`` merged into ``base`` (a copy): dicts merge key by key, lists append, except that a list item
    naming (``name``) an item already there is merged into it (so a patch can add env to the trial container)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge_patch(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list):
        out_list = list(base)
        for item in patch:
            named = isinstance(item, dict) and "name" in item
            match = next((i for i, old in enumerate(out_list) if named and isinstance(old, dict)
                          and old.get("name") == item["name"]), None)
            if match is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[match] = merge_patch(out_list[match], item)
        return out_list
    return copy.deepcopy(patch)


def exec_command(command: str) -> str:
    """A simple command is exec'd, so the trial process itself gets SIGTERM when the pod stops (a shell as
    PID 1 of a container ignores it); anything with shell syntax runs as written."""
    return command if _SHELL_SYNTAX.search(command) else f"exec {command}"


def gang_host(experiment_id: str, seq: int, trial_id: str, index: int) -> str:
    """The DNS name of a distributed trial's pod ``index``: ``<job>-<index>.<service>`` (the Service is named as
    the Job), resolvable in the trial's namespace once both exist."""
    name = job_name(experiment_id, seq, trial_id)
    return f"{name}-{index}.{name}"


def headless_service(job: dict[str, Any]) -> dict[str, Any]:
    """The headless Service that gives a distributed trial's pods their DNS names (named as its Job)."""
    meta = job["metadata"]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": dict(meta["labels"])},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": {TRIAL_LABEL: meta["labels"][TRIAL_LABEL],
                                  EXPERIMENT_LABEL: meta["labels"][EXPERIMENT_LABEL]}}}


def gang_job(job: dict[str, Any], processes: list[dict[str, Any]], python: str = "python3") -> dict[str, Any]:
    """``job`` (from :func:`job_manifest`) made an Indexed Job running one pod per process, the chief at index 0.

    ``processes``: per index, ``{"env": {...}, "command": str | None}``.  Each pod's hostname is ``<job>-<index>``
    under the headless Service of the same name (:func:`headless_service`); a failing pod fails the Job
    (``backoffLimit`` 0); the engine ends it once the chief's role is done."""
    job = copy.deepcopy(job)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    spec.update({"completionMode": "Indexed", "completions": len(processes), "parallelism": len(processes)})
    pod["subdomain"] = job["metadata"]["name"]
    container = next(c for c in pod["containers"] if c["name"] == TRIAL_CONTAINER)
    container["command"] = [python, "-c", _GANG_BOOT]
    container["env"] = container["env"] + [{"name": "HPO_GANG", "value": json.dumps(processes, separators=(",", ":"))}]
    return job


def job_manifest(*, experiment_id: str, trial_id: str, seq: int, attempt: int, namespace: str, command: str,
                 parameters: dict[str, Any], image: str, code_delivery: str, code_ref: str | None,
                 resources: dict[str, Any] | None = None, gpu_number: int = 0, node_selector: dict[str, str] | None = None,
                 tolerations: list[dict[str, Any]] | None = None, service_account_name: str | None = None,
                 pod_template_patch: dict[str, Any] | None = None, pvc: dict[str, Any] | None = None,
                 working_dir: str | None = None, max_duration: float | None = None, kill_grace: float = 5.0,
                 ttl_seconds: int = 86400, image_pull_policy: str | None = None, python: str = "python3",
                 env: dict[str, str] | None = None) -> dict[str, Any]:
    """The Job of one trial.  ``code_ref`` is the ConfigMap name (configmap, image) or the code folder on the
    claim relative to its root (pvc)."""
    labels = {EXPERIMENT_LABEL: experiment_id, TRIAL_LABEL: trial_id, ATTEMPT_LABEL: str(attempt), **MANAGED_BY}
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    init: list[dict[str, Any]] = []
    trial_dir = f"{WORK}/trial"
    if pvc is not None:
        mount = pvc["mount_path"].rstrip("/")
        volumes.append({"name": "hpo-pvc", "persistentVolumeClaim": {"claimName": pvc["claim_name"]}})
        mounts.append({"name": "hpo-pvc", "mountPath": mount})
        trial_dir = f"{mount}/{experiment_id}/trials/{trial_id}"
    if code_delivery == "pvc":
        assert pvc is not None and code_ref is not None
        root = f"{pvc['mount_path'].rstrip('/')}/{code_ref}"
        workdir, lib = f"{root}/code", f"{root}/lib"
        volumes.append({"name": "hpo-work", "emptyDir": {}})
        mounts.append({"name": "hpo-work", "mountPath": WORK})
    else:
        assert code_ref is not None
        workdir = f"{WORK}/code" if code_delivery == "configmap" else working_dir
        lib = f"{WORK}/lib"
        volumes += [{"name": "hpo-code", "configMap": {"name": code_ref}}, {"name": "hpo-work", "emptyDir": {}}]
        mounts.append({"name": "hpo-work", "mountPath": WORK})
        init.append({"name": "hpo-unpack", "image": image, "command": [python, "-c", _UNPACK],
                     "args": [f"{ARCHIVE}/code.tar.gz", WORK],
                     "volumeMounts": [{"name": "hpo-code", "mountPath": ARCHIVE, "readOnly": True},
                                      {"name": "hpo-work", "mountPath": WORK}]})
    variables = {"HPO_EXPERIMENT_ID": experiment_id, "HPO_TRIAL_ID": trial_id, "HPO_SEQUENCE_ID": str(seq),
                 "HPO_PARAMETERS": json.dumps(parameters, separators=(",", ":")), "HPO_TRIAL_DIR": trial_dir,
                 "HPO_PLATFORM": "kubernetes", "PYTHONPATH": lib, "PYTHONUNBUFFERED": "1",
                 **nni_environment("kubernetes", experiment_id, trial_id, seq, trial_dir), **(env or {})}
    res = resources_of(resources, gpu_number)
    if not any("nvidia.com/gpu" in group for group in res.values()):
        variables.setdefault("CUDA_VISIBLE_DEVICES", "")  # no GPU asked for: none used, even on a GPU node
    container: dict[str, Any] = {
        "name": TRIAL_CONTAINER, "image": image,
        "command": ["sh", "-c", f'mkdir -p "$HPO_TRIAL_DIR" && {exec_command(command)}'],
        "env": [{"name": k, "value": v} for k, v in variables.items()],
        "volumeMounts": mounts, "terminationMessagePolicy": "FallbackToLogsOnError"}
    if workdir:
        container["workingDir"] = workdir
    if image_pull_policy:
        container["imagePullPolicy"] = image_pull_policy
        for c in init:
            c["imagePullPolicy"] = image_pull_policy
    if res:
        container["resources"] = res
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "terminationGracePeriodSeconds": max(0, round(kill_grace)),
                                "containers": [container], "volumes": volumes}
    if init:
        pod_spec["initContainers"] = init
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod_spec["tolerations"] = copy.deepcopy(tolerations)
    if service_account_name:
        pod_spec["serviceAccountName"] = service_account_name
    template: dict[str, Any] = {"metadata": {"labels": dict(labels)}, "spec": pod_spec}
    if pod_template_patch:
        template = merge_patch(template, pod_template_patch)
        template["metadata"]["labels"].update(labels)  # a patch cannot take the trial's labels away
        template["spec"]["restartPolicy"] = "Never"
    spec: dict[str, Any] = {
        "backoffLimit": 0, "ttlSecondsAfterFinished": int(ttl_seconds), "template": template,
        "podFailurePolicy": {"rules": [{"action": "Ignore",
                                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}}
    if max_duration:
        spec["activeDeadlineSeconds"] = max(1, int(-(-max_duration // 1)))
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": job_name(experiment_id, seq, trial_id), "namespace": namespace, "labels": labels,
                         "annotations": {SEQUENCE_ANNOTATION: str(seq)}},
            "spec": spec}
