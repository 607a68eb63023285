"""``V1Component`` and its run: a ``V1Job`` with one container (the only run kind hpo runs)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, field_validator, model_validator

from hpo.polyaxon.base import V1Entity, V1Model
from hpo.polyaxon.errors import PolyaxonError
from hpo.polyaxon.io import V1IO

__all__ = ["V1Container", "V1EnvVar", "V1Environment", "V1Init", "V1Termination", "V1Job", "V1Component",
           "UNSUPPORTED_RUN_KINDS"]

UNSUPPORTED_RUN_KINDS = ("service", "dag", "tfjob", "pytorchjob", "mpijob", "mxjob", "xgbjob", "paddlejob",
                         "raycluster", "daskcluster", "sparkjob", "notifier", "tuner", "watchdog", "cleaner", "builder")


class V1EnvVar(V1Model):
    name: str
    value: Any = None
    value_from: dict[str, Any] | None = None


class V1Container(V1Model):
    """A Kubernetes container: ``command``, ``args``, ``env`` and ``workingDir`` are run here; ``image`` and the
    other Kubernetes fields are kept (and named in a warning where they cannot be honoured)."""

    model_config = ConfigDict(extra="allow")
    name: str | None = None
    image: str | None = None
    command: list[str] | None = None
    args: list[Any] | None = None
    env: list[V1EnvVar] | None = None
    working_dir: str | None = None
    resources: dict[str, Any] | None = None

    @field_validator("command", "args", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class V1Environment(V1Model):
    """Pod-level settings: ``env`` reaches the run's process; the rest matters on Kubernetes only."""

    model_config = ConfigDict(extra="allow")
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    node_selector: dict[str, str] | None = None
    affinity: dict[str, Any] | None = None
    tolerations: list[dict[str, Any]] | None = None
    service_account_name: str | None = None
    image_pull_secrets: list[str] | None = None
    env: list[V1EnvVar] | None = None
    resources: dict[str, Any] | None = None
    restart_policy: str | None = None


class V1Init(V1Model):
    model_config = ConfigDict(extra="allow")
    git: dict[str, Any] | None = None
    artifacts: dict[str, Any] | None = None
    dockerfile: dict[str, Any] | None = None
    file: dict[str, Any] | None = None
    connection: str | None = None
    path: str | None = None
    container: dict[str, Any] | None = None


class V1Termination(V1Model):
    max_retries: int | None = None
    ttl: int | None = None
    timeout: int | None = None
    culling: dict[str, Any] | None = None


class V1Job(V1Model):
    kind: Literal["job"] = "job"
    environment: V1Environment | None = None
    connections: list[str] | None = None
    volumes: list[dict[str, Any]] | None = None
    init: list[V1Init] | None = None
    sidecars: list[dict[str, Any]] | None = None
    container: V1Container


class V1Component(V1Entity):
    """A typed component.  ``run`` must be a job (``kind: job``); other run kinds are refused by name."""

    kind: Literal["component"] = "component"
    termination: V1Termination | None = None
    plugins: dict[str, Any] | None = None
    build: dict[str, Any] | None = None
    hooks: list[dict[str, Any]] | None = None
    is_approved: bool | None = None
    cost: float | None = None
    mount: dict[str, Any] | None = None
    inputs: list[V1IO] | None = None
    outputs: list[V1IO] | None = None
    run: V1Job
    template: dict[str, Any] | None = None

    @field_validator("run", mode="before")
    @classmethod
    def _run_kind(cls, v: Any) -> Any:
        kind = v.get("kind") if isinstance(v, dict) else getattr(v, "kind", None)
        if kind not in (None, "job"):
            hint = " (hpo runs jobs only)" if kind in UNSUPPORTED_RUN_KINDS else ""
            raise PolyaxonError(f"run.kind {kind!r} is not supported{hint}; expected 'job'")
        return v

    @model_validator(mode="after")
    def _unique_io(self) -> V1Component:
        seen: set[str] = set()
        for io in [*(self.inputs or []), *(self.outputs or [])]:
            if io.name in seen:
                raise PolyaxonError(f"io {io.name!r} is declared twice; expected unique input and output names")
            seen.add(io.name)
        return self

    def input(self, name: str) -> V1IO | None:
        return next((io for io in self.inputs or [] if io.name == name), None)

    def output(self, name: str) -> V1IO | None:
        return next((io for io in self.outputs or [] if io.name == name), None)
