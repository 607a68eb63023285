"""Gradient's parameters as an hpo experiment: one run of a command, single- or multi-node, no search.

A Gradient experiment is an hpo experiment with an empty search space and one trial (``max_trial_number: 1``,
tuner ``random``, which suggests ``{}`` again if the run is started again).  Multi-node GRPC becomes
``trial_roles: {worker, ps}`` with ``distribution: tensorflow``; MPI becomes ``{master, worker}`` with
``distribution: mpi`` (only the master's command runs: its ``mpirun`` starts the workers from the hostfile).
``experiment_env`` is ``trial_env``, ``project_id`` is ``project``, ``name`` is ``experiment_name``,
``working_directory`` is ``trial_code_directory``, and ``model_path`` (else ``artifact_directory``) is the
checkpoint storage's ``host_path`` (and ``PS_MODEL_PATH``, as on Gradient).  Paperspace-only fields are recorded as
given, passwords as ``'**********'`` (hpo stores no password); those hpo cannot act on are named in one warning.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

from hpo.config import ConfigError, ExperimentConfig
from hpo.gradient.constants import ExperimentType
from hpo.gradient.errors import GradientSdkError, InvalidParametersError, UnhonouredFieldWarning
from hpo.gradient.models import MODELS, model_fields

__all__ = ["translate", "gradient_names", "HIDDEN"]

HIDDEN = "**********"
_SECRET = re.compile(r"(^|_)password$")
_PAPERSPACE = re.compile(r"(^|_)(machine_type|container|container_user|registry_username|registry_password|"
                         r"registry_url)$|^(ports|workspace_\w+|datasets|cluster_id|is_preemptible|model_type)$")
_COMMAND = {ExperimentType.SINGLE_NODE: "command", ExperimentType.GRPC_MULTI_NODE: "worker_command",
            ExperimentType.MPI_MULTI_NODE: "master_command"}


def translate(kind: int, params: Mapping[str, Any], training_service: Any) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The validated hpo config for Gradient experiment ``params`` of type ``kind``, and the record to keep of
    them (every model field, passwords hidden).  Raises GradientSdkError naming the Gradient parameter; warns
    (UnhonouredFieldWarning) about the fields given that hpo cannot honour on the platform."""
    p = dict(params)
    command = _COMMAND[kind]
    if not isinstance(p.get(command), str) or not p[command].strip():
        raise GradientSdkError(f"{command}: got {p.get(command)!r:.80}, expected a shell command")
    tags = p.get("tags")
    if tags is not None and (not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags)):
        raise GradientSdkError(f"tags: got {tags!r:.80}, expected a list of strings")
    if p.get("model_path") and not p.get("model_type"):
        raise InvalidParametersError("model_path: is set without model_type; expected model_type too "
                                     "('Tensorflow', 'ONNX' or 'Custom')")
    directory = Path(p.get("working_directory") or os.getcwd()).expanduser().absolute()
    env: dict[str, Any] = {}
    storage = p.get("model_path") or p.get("artifact_directory")
    if storage:
        storage = str(directory / Path(storage).expanduser())
        if p.get("model_path"):
            env["PS_MODEL_PATH"] = storage
    experiment_env = p.get("experiment_env")
    if experiment_env is not None and not isinstance(experiment_env, Mapping):
        raise GradientSdkError(f"experiment_env: got {experiment_env!r:.80}, expected a mapping of variable names "
                               "to values")
    env.update(experiment_env or {})
    data: dict[str, Any] = {
        "experiment_name": p.get("name"), "project": p.get("project_id"), "search_space": {}, "max_trial_number": 1,
        "tuner": {"name": "random"}, "trial_command": p[command], "trial_code_directory": directory,
        "trial_env": env or None, "training_service": training_service or "local",
        "checkpoint_storage": {"host_path": storage} if storage else {}, **_roles(kind, p)}
    unhonoured = _unhonoured(kind, p, data)
    try:
        config = ExperimentConfig.model_validate(data).validate_for_start()
    except ConfigError as exc:
        raise GradientSdkError(gradient_names(str(exc), kind, p)) from None
    if unhonoured:
        warnings.warn(f"hpo.gradient: not honoured on platform {config.training_service.platform!r} (stored and shown "
                      f"by get; passwords are not stored): {', '.join(unhonoured)}", UnhonouredFieldWarning,
                      stacklevel=4)
    record = {name: (HIDDEN if _SECRET.search(name) and p.get(name) else p.get(name))
              for name in model_fields(MODELS[kind])}
    record.update(experiment_type_id=kind, is_preemptible=bool(p.get("is_preemptible")))
    return config, record


def _roles(kind: int, p: dict[str, Any]) -> dict[str, Any]:
    """``trial_roles`` and ``distribution`` for a multi-node experiment (none for a single node)."""
    if kind == ExperimentType.SINGLE_NODE:
        return {}
    if kind == ExperimentType.MPI_MULTI_NODE:
        master_count = 1 if p.get("master_count") is None else p["master_count"]
        return {"distribution": "mpi", "trial_roles": {"master": {"count": master_count},
                                                       "worker": {"count": p.get("worker_count")}}}
    ps_count = p.get("parameter_server_count")
    if isinstance(ps_count, bool) or not isinstance(ps_count, int) or ps_count < 0:
        raise GradientSdkError(f"parameter_server_count: got {ps_count!r:.40}, expected an integer >= 0 "
                               "(0: no parameter server)")
    roles: dict[str, Any] = {"worker": {"count": p.get("worker_count")}}
    if ps_count:
        if not isinstance(p.get("parameter_server_command"), str) or not p["parameter_server_command"].strip():
            raise GradientSdkError(f"parameter_server_command: got {p.get('parameter_server_command')!r:.80}, "
                                   "expected a shell command")
        roles["ps"] = {"count": ps_count, "command": p.get("parameter_server_command")}
    return {"distribution": "tensorflow", "trial_roles": roles}


def _unhonoured(kind: int, p: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """The Paperspace-only fields given (not None, not False) that hpo cannot act on; a single container (every
    role's the same) becomes the Kubernetes image instead."""
    given = [n for n in model_fields(MODELS[kind]) if p.get(n) not in (None, False) and _PAPERSPACE.search(n)]
    containers = {p[n] for n in given if n.endswith("container")}
    service = data["training_service"]
    platform = service if isinstance(service, str) else (service or {}).get("platform")
    if platform in ("kubernetes", "k8s") and len(containers) == 1:
        data["training_service"] = {**({} if isinstance(service, str) else service), "platform": platform,
                                    "image": containers.pop()}
        given = [n for n in given if not n.endswith("container")]
    if p.get("model_path") and p.get("artifact_directory") and p["artifact_directory"] != p["model_path"]:
        given.append("artifact_directory")  # checkpoints go to model_path
    return given


def gradient_names(message: str, kind: int, p: Mapping[str, Any]) -> str:
    """A config error's message with hpo's config paths named as the Gradient parameters they came from."""
    names = {"trial_command": _COMMAND[kind], "trial_roles.ps.command": "parameter_server_command",
             "trial_roles.worker.count": "worker_count", "trial_roles.master.count": "master_count",
             "trial_roles.master.command": "master_command", "trial_env": "experiment_env",
             "trial_code_directory": "working_directory", "experiment_name": "name", "project": "project_id",
             "checkpoint_storage.host_path": "model_path" if p.get("model_path") else "artifact_directory"}
    for path in sorted(names, key=len, reverse=True):
        if message.startswith(f"config.{path}"):
            return names[path] + message[len(f"config.{path}"):]
    return message
