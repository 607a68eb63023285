"""Gradient's model objects: ``LogRow`` and the experiment models ``get`` and ``list`` return, with the fields of
Gradient's SDK.  Paperspace-only fields are kept as given (passwords as ``'**********'``: hpo stores none)."""
from __future__ import annotations

import datetime as dt
from collections import namedtuple
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["LogRow", "BaseExperiment", "SingleNodeExperiment", "MultiNodeExperiment", "MpiMultiNodeExperiment",
           "MODELS", "model_fields"]

LogRow = namedtuple("LogRow", "line message timestamp")
LogRow.__doc__ = """One log line: ``line`` (1-based, per experiment), ``message``, ``timestamp`` (None: hpo keeps
no per-line times)."""


@dataclass
class BaseExperiment:
    """What every experiment has."""

    name: str | None = None
    ports: Any = None
    workspace_url: str | None = None
    workspace_ref: str | None = None
    workspace_username: str | None = None
    workspace_password: str | None = None
    datasets: Any = None
    working_directory: str | None = None
    artifact_directory: str | None = None
    cluster_id: str | None = None
    experiment_env: dict[str, Any] | None = None
    project_id: str | None = None
    model_type: str | None = None
    model_path: str | None = None
    is_preemptible: bool = False
    id: str | None = None
    state: int | None = None
    tags: list[str] | None = None
    dt_created: dt.datetime | None = None
    dt_modified: dt.datetime | None = None
    dt_started: dt.datetime | None = None
    dt_stopped: dt.datetime | None = None
    dt_deleted: dt.datetime | None = None


@dataclass
class SingleNodeExperiment(BaseExperiment):
    """One process running ``command``."""

    container: str | None = None
    machine_type: str | None = None
    command: str | None = None
    container_user: str | None = None
    registry_username: str | None = None
    registry_password: str | None = None
    registry_url: str | None = None
    experiment_type_id: int = 1


@dataclass
class MultiNodeExperiment(BaseExperiment):
    """Workers and parameter servers (GRPC: TensorFlow's ``TF_CONFIG`` and Gradient's ``PS_CONFIG``)."""

    experiment_type_id: int = 2
    worker_container: str | None = None
    worker_machine_type: str | None = None
    worker_command: str | None = None
    worker_count: int | None = None
    parameter_server_container: str | None = None
    parameter_server_machine_type: str | None = None
    parameter_server_command: str | None = None
    parameter_server_count: int | None = None
    worker_container_user: str | None = None
    worker_registry_username: str | None = None
    worker_registry_password: str | None = None
    worker_registry_url: str | None = None
    parameter_server_container_user: str | None = None
    parameter_server_registry_username: str | None = None
    parameter_server_registry_password: str | None = None
    parameter_server_registry_url: str | None = None


@dataclass
class MpiMultiNodeExperiment(BaseExperiment):
    """An MPI job: the master runs ``master_command`` (``mpirun`` over the hostfile), the workers are its hosts."""

    experiment_type_id: int = 3
    worker_container: str | None = None
    worker_machine_type: str | None = None
    worker_command: str | None = None
    worker_count: int | None = None
    master_container: str | None = None
    master_machine_type: str | None = None
    master_command: str | None = None
    master_count: int | None = None
    worker_container_user: str | None = None
    worker_registry_username: str | None = None
    worker_registry_password: str | None = None
    worker_registry_url: str | None = None
    master_container_user: str | None = None
    master_registry_username: str | None = None
    master_registry_password: str | None = None
    master_registry_url: str | None = None


MODELS: dict[int, type[BaseExperiment]] = {1: SingleNodeExperiment, 2: MultiNodeExperiment, 3: MpiMultiNodeExperiment}


def model_fields(model: type[BaseExperiment]) -> list[str]:
    """The fields a caller gives for ``model`` (not the ones hpo fills in: id, state, dt_*)."""
    return [f.name for f in fields(model) if f.name not in ("id", "state") and not f.name.startswith("dt_")]
