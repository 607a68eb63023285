"""``V1Operation`` and ``V1Param``: a component bound to parameter values, a run patch and a matrix."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator

from hpo.polyaxon.base import V1Entity, V1Model
from hpo.polyaxon.component import V1Component
from hpo.polyaxon.matrix import V1Matrix

__all__ = ["V1Param", "V1Operation", "PATCH_STRATEGIES"]

PATCH_STRATEGIES = ("replace", "isnull", "post_merge", "pre_merge")
_PARAM_KEYS = {"value", "ref", "context_only", "contextOnly", "connection", "to_init", "toInit", "to_env", "toEnv"}


class V1Param(V1Model):
    """A parameter's ``value``; ``context_only``: only put in the context, not checked against the inputs;
    ``to_env``: also exported as this environment variable."""

    value: Any = None
    ref: str | None = None
    context_only: bool | None = None
    connection: str | None = None
    to_init: bool | None = None
    to_env: str | None = None


class V1Operation(V1Entity):
    """An operation: ``component`` (or ``path_ref`` to a component file), ``params``, ``run_patch``,
    ``matrix``.  ``hub_ref``, ``dag_ref`` and ``url_ref`` are refused (nothing to fetch them from)."""

    kind: Literal["operation"] = "operation"
    patch_strategy: Literal["replace", "isnull", "post_merge", "pre_merge"] | None = None
    is_preset: bool | None = None
    is_approved: bool | None = None
    termination: dict[str, Any] | None = None
    plugins: dict[str, Any] | None = None
    params: dict[str, V1Param] | None = None
    schedule: dict[str, Any] | None = None
    events: list[dict[str, Any]] | None = None
    build: dict[str, Any] | None = None
    hooks: list[dict[str, Any]] | None = None
    matrix: V1Matrix | None = None  # type: ignore[valid-type]
    joins: list[dict[str, Any]] | None = None
    dependencies: list[str] | None = None
    trigger: str | None = None
    conditions: str | None = None
    skip_on_upstream_skip: bool | None = None
    run_patch: dict[str, Any] | None = None
    path_ref: str | None = None
    hub_ref: str | None = None
    dag_ref: str | None = None
    url_ref: str | None = None
    component: V1Component | None = None
    template: dict[str, Any] | None = None

    @field_validator("params", mode="before")
    @classmethod
    def _short_form(cls, v: Any) -> Any:
        """A bare value, or a dict with none of V1Param's keys, is ``{value: it}`` (Polyaxon's short form)."""
        if not isinstance(v, dict):
            return v
        return {k: p if isinstance(p, V1Param) or (isinstance(p, dict) and p and set(p) <= _PARAM_KEYS)
                else {"value": p} for k, p in v.items()}

    @field_validator("run_patch", mode="before")
    @classmethod
    def _patch_dict(cls, v: Any) -> Any:
        return v.to_dict() if isinstance(v, V1Model) else v
