"""Experiment configuration: NNI's ``experiment.config.*`` as validated pydantic models.

* Every problem raises :class:`ConfigError` (a ``ValueError``) with a one-line message naming the
  field path, the bad value and what was expected (``config.trial_concurrency: got -1, expected an
  integer >= 1``): on construction, on assignment (the old value is kept) and on file load (the
  message then starts with the file).  Unknown keys and attributes get a "did you mean".
* Keys load as snake_case or NNI's camelCase.  Single fields are checked at once; cross-field rules
  (and the files and folders named) are checked by :meth:`ExperimentConfig.validate_for_start`.
* Files load in bounded time and memory: only regular files of at most 16 MiB (a FIFO or a device is
  refused unread), YAML nested at most 128 levels, aliases adding at most 100,000 values in all.
"""
from __future__ import annotations

import difflib
import functools
import math
import os
import re
import reprlib
import stat
import tempfile
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Mapping, Sequence, get_args

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError,
                      field_serializer, model_validator)
from pydantic.alias_generators import to_camel

from hpo.registry import hpo_home
from hpo.search_space import SearchSpace, SearchSpaceError, is_finite_number, parse_search_space

__all__ = ["ConfigError", "AlgorithmConfig", "LocalConfig", "RemoteConfig", "RemoteMachineConfig",
           "TrainingServiceConfig", "TrialRoleConfig", "ExperimentConfig", "load_config_files", "parse_duration"]


class ConfigError(ValueError):
    """Invalid configuration.  The message is one line: ``<path>: <problem>``."""

    def __init__(self, message: str, _source: Any = None) -> None:
        super().__init__(re.sub(r"\s*\n\s*", " ", str(message)))
        self._source = _source  # (ValidationError, model class) when converted from pydantic


class _Problem(ValueError):
    """Raised by validators: the text follows the path; ``sub`` extends it (``'.platform'``, ``'[0].value'``)."""

    def __init__(self, text: str, sub: str = "") -> None:
        super().__init__(text)
        self.sub = sub


def _to_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


_repr = reprlib.Repr()  # bounded, whatever the value's size or depth
_repr.maxlevel, _repr.maxstring, _repr.maxother = 3, 80, 80


def _show(value: Any) -> str:
    text = repr(str(value)) if isinstance(value, Path) else _repr.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# NNI v2 config fields hpo does not take, and why (named in the one-line refusal; README's audit table)
_NNI_ONLY = {
    "experiment_type": "hpo runs hyperparameter searches only; remove it",
    "nni_manager_ip": "trials never connect to the engine (reports travel over SSH or pod logs); remove it",
    "use_annotation": "call nni.get_next_parameter() in the trial instead of annotations",
    "debug": "use logLevel: debug",
    "tuner_gpu_indices": "tuners run in the engine's process, on the CPU",
    "advisor": "hpo runs Hyperband and BOHB as tuners: use tuner: {name: hyperband} or {name: bohb}",
    "shared_storage": "use checkpointStorage for outputs; trial code is shipped with each trial",
}


def _unknown_key(key: Any, names: Sequence[str]) -> str:
    if _to_snake(str(key)) in _NNI_ONLY and _to_snake(str(key)) not in names:
        return f"NNI's {key!r} is not supported: {_NNI_ONLY[_to_snake(str(key))]}"
    close = difflib.get_close_matches(_to_snake(str(key)), list(names), n=1, cutoff=0.6)
    if not close:
        return f"unknown key {key!r}; expected one of {', '.join(names)}"
    guess = to_camel(close[0]) if isinstance(key, str) and key != _to_snake(key) else close[0]
    return f"unknown key {key!r}; did you mean {guess!r}?"


def _model_in(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    return next((m for m in map(_model_in, get_args(tp)) if m is not None), None)


def _walk(cls: type[BaseModel], loc: Sequence[Any]) -> tuple[str, Any, type[BaseModel] | None]:
    """Map a pydantic error location to (snake_case path suffix, FieldInfo at its end or None, model at its end)."""
    path, field, model, keyed = "", None, cls, False
    for part in loc:
        fields = model.model_fields if model is not None else {}
        name = part if part in fields else next((n for n, f in fields.items() if f.alias == part), None)
        if keyed and isinstance(part, str):  # a key of a mapping of models (trial_roles)
            path, keyed = f"{path}.{part}", False
        elif name is not None:
            field = fields[name]
            path, model = f"{path}.{name}", _model_in(field.annotation)
            keyed = getattr(field.annotation, "__origin__", None) is dict or "dict[" in str(field.annotation)
        elif part in _PLATFORMS:  # a discriminated-union tag
            model = _PLATFORMS[part]
        elif isinstance(part, int) and model is not None:  # an item of a list of models
            path, field = f"{path}[{part}]", None
        elif part != "[key]":
            path, field, model = path + (f"[{part}]" if isinstance(part, int) else f".{part}"), None, None
    return path, field, model


def _convert(err: ValidationError, cls: type[BaseModel], where: str) -> ConfigError:
    """A one-line ConfigError for the first problem of a pydantic ValidationError."""
    errors = err.errors(include_url=False)
    e, loc, n = errors[0], tuple(errors[0]["loc"]), len(errors) - 1
    more = f" (and {n} more problem{'s' if n > 1 else ''})" if n else ""
    if e["type"] == "extra_forbidden":
        sub, _, model = _walk(cls, loc[:-1])
        names = list(model.model_fields) if model else []
        key = loc[-1]
        if isinstance(key, str) and _to_snake(key) in names:  # both spellings of one key were given
            field = (model.model_fields if model else {})[_to_snake(key)]
            text = f"{field.alias or key!r} and {_to_snake(key)!r} are both given; expected one of them"
            return ConfigError(f"{where}{sub}: {text}{more}", (err, cls))
        return ConfigError(f"{where}{sub}: {_unknown_key(key, names)}{more}", (err, cls))
    sub, field, model = _walk(cls, loc)
    error = (e.get("ctx") or {}).get("error")
    if isinstance(error, ConfigError) and error._source and model is not None:  # from a nested model's __init__
        inner = _convert(*error._source, f"{where}{sub}")
        inner._source = (err, cls)
        return inner
    if isinstance(error, ValueError):
        text, sub = str(error), sub + getattr(error, "sub", "")
    elif field is not None and field.description:
        got = "missing" if e["type"] == "missing" else f"got {_show(e['input'])}"
        text = f"{got}, expected {field.description}"
    else:
        text = f"got {_show(e['input'])}: {e['msg'][:1].lower()}{e['msg'][1:]}"
    return ConfigError(f"{where}{sub}: {text}{more}", (err, cls))


class _Base(BaseModel):
    """camelCase aliases, no extra keys, validated assignment, every error a one-line ConfigError."""

    model_config = ConfigDict(validate_assignment=True, extra="forbid", populate_by_name=True,
                              alias_generator=to_camel, arbitrary_types_allowed=True)
    _default_where: ClassVar[str] = "config"
    _where: str | None = PrivateAttr(default=None)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise _convert(e, type(self), type(self)._default_where) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as e:
            raise _convert(e, cls, cls._default_where) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and name not in type(self).model_fields:
            raise ConfigError(f"{self._location()}: {_unknown_key(name, list(type(self).model_fields))}")
        try:
            super().__setattr__(name, value)
        except ValidationError as e:
            raise _convert(e, type(self), self._location()) from None

    def __eq__(self, other: object) -> bool:  # field values only, not where the model is attached
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def _location(self) -> str:
        return self._where or self._default_where


_DURATION_EXPECT = "a positive duration: seconds as a number, or a string like '30s', '30m', '1.5h' or '1d'"
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration_seconds(value: Any) -> float | None:
    if value is None:
        return None
    seconds = math.nan
    if is_finite_number(value):
        seconds = float(value)
    elif isinstance(value, str) and (m := re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)", value.strip().lower())):
        seconds = float(m[1]) * _UNITS[m[2]]
    if not (math.isfinite(seconds) and seconds > 0):
        raise _Problem(f"got {_show(value)}, expected {_DURATION_EXPECT}")
    return seconds


def parse_duration(value: str | int | float | None) -> float | None:
    """Seconds in an NNI duration (``90``, ``'30s'``, ``'30m'``, ``'1.5h'``, ``'1d'``); None gives None.

    Raises ConfigError for anything else, zero and negative durations included."""
    try:
        return _duration_seconds(value)
    except _Problem as e:
        raise ConfigError(f"duration: {e}") from None


def _gpu_list(v: Any) -> Any:
    items: Any = None
    if isinstance(v, str):
        items = [int(s) if s.strip().isdigit() else s for s in v.split(",")]
    elif isinstance(v, int) and not isinstance(v, bool):
        items = [v]
    elif isinstance(v, (list, tuple)):
        items = list(v)
    if v is not None and (not items or len(set(map(repr, items))) != len(items) or
                          not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items)):
        raise _Problem(f"got {_show(v)}, expected {_GPU_EXPECT}")
    return items


def _search_space(v: Any) -> Any:
    raw = v.raw if isinstance(v, SearchSpace) else v
    try:
        return None if v is None else dict(parse_search_space(raw).raw)  # type: ignore[arg-type]
    except SearchSpaceError as e:
        raise _Problem(str(e)) from None


def _callable(v: Any) -> Any:
    if v is not None and not callable(v):
        raise _Problem(f"got {_show(v)}, expected a callable or null")
    return v


def _platform(v: Any) -> Any:
    v = {"platform": v} if isinstance(v, str) else v
    if isinstance(v, Mapping) and v.get("platform") in _ALIASES:
        v = {**v, "platform": _ALIASES[v["platform"]]}
    if isinstance(v, Mapping):
        if v.get("platform", "local") not in _PLATFORMS:
            names = list(map(repr, _PLATFORMS))
            expected = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
            raise _Problem(f"{_show(v['platform'])} is not supported, expected {expected}", ".platform")
        return {"platform": "local", **v}
    return v


def _stopping_rules(v: Any) -> Any:
    """Polyaxon early stopping: [{metric: str, value: number, optimization: maximize|minimize}, ...] and
    [{kind: failure_early_stopping, percent: number}]."""
    if v is not None and not isinstance(v, (list, tuple)):
        raise _Problem(f"got {_show(v)}, expected a list of rules like "
                       "[{'metric': 'accuracy', 'value': 0.9, 'optimization': 'maximize'}]")
    for i, rule in enumerate(v or []):
        if not isinstance(rule, Mapping):
            raise _Problem(f"got {_show(rule)}, expected a mapping with metric, value and optimization", f"[{i}]")
        if rule.get("kind") == "failure_early_stopping":
            _failure_rule(rule, i)
            continue
        got = {k: f"got {_show(rule[k])}" if k in rule else "missing" for k in ("metric", "value", "optimization")}
        for key in rule:
            if key not in ("metric", "value", "optimization", "kind", "policy"):
                raise _Problem(_unknown_key(key, ["metric", "value", "optimization", "kind", "policy"]), f"[{i}]")
        value = rule.get("value")
        if not isinstance(rule.get("metric"), str) or not rule["metric"]:
            raise _Problem(f"{got['metric']}, expected a metric name (a non-empty string)", f"[{i}].metric")
        if not is_finite_number(value):
            raise _Problem(f"{got['value']}, expected a finite number", f"[{i}].value")
        if rule.get("optimization") not in ("maximize", "minimize"):
            raise _Problem(f"{got['optimization']}, expected 'maximize' or 'minimize'", f"[{i}].optimization")
    return v if v is None else [dict(rule) for rule in v]


def _failure_rule(rule: Mapping[str, Any], i: int) -> None:
    for key in rule:
        if key not in ("kind", "percent"):
            raise _Problem(_unknown_key(key, ["kind", "percent"]), f"[{i}]")
    percent = rule.get("percent")
    if not is_finite_number(percent) or not 0 < percent <= 100:
        shown = f"got {_show(percent)}" if "percent" in rule else "missing"
        raise _Problem(f"{shown}, expected a number in (0, 100]: the percent of failed trials that ends the "
                       "experiment", f"[{i}].percent")


def _check_duration(v: Any) -> Any:
    _duration_seconds(v)
    return v


_GPU_EXPECT = "a list of distinct GPU indices (integers >= 0), a comma-separated string like '0,1', or one integer"
_Duration = Annotated[str | int | float | None, BeforeValidator(_check_duration), Field(description=_DURATION_EXPECT)]
_Algorithm = BeforeValidator(lambda v: {"name": v} if isinstance(v, str) else v)  # 'TPE' -> {'name': 'TPE'}


class AlgorithmConfig(_Base):
    """A tuner or assessor: a built-in ``name`` or a custom ``class_name`` (exactly one, checked at start)."""

    _default_where: ClassVar[str] = "algorithm"
    name: str | None = Field(None, min_length=1, description="a built-in algorithm name such as 'TPE', or null")
    class_args: Annotated[dict[str, Any], BeforeValidator(lambda v: {} if v is None else v)] = Field(
        default_factory=dict, description="a mapping of constructor arguments")
    class_name: str | None = Field(None, min_length=1, description="a class path such as 'my_pkg.MyTuner', or null")
    code_directory: Path | None = Field(None, description="a directory path, or null")


_KILL_GRACE_EXPECT = "seconds a stopped trial gets between SIGTERM and SIGKILL (0 to 3600)"


class CheckpointStorageConfig(_Base):
    """Where trials' checkpoints are kept (Determined's ``checkpoint_storage``) and how many are kept.

    ``shared_fs``: ``<host_path>[/<storage_path>]/<uuid>``; without ``host_path``, the experiment folder's
    ``checkpoints``.  ``s3``: ``s3://<bucket>[/<prefix>]/<uuid>/...`` (``endpoint_url`` for S3-compatible
    servers; credentials from boto3's default chain, never from this config; needs ``pip install 'hpo[s3]'``).
    The three ``save_*`` counts are unioned: the N best over the experiment, the N best of each
    trial and the N latest of each trial are kept (and any checkpoint registered as a model version)."""

    _default_where: ClassVar[str] = "config.checkpoint_storage"
    type: Literal["shared_fs", "s3"] = Field("shared_fs", description="'shared_fs' or 's3'")
    host_path: Path | None = Field(None, description="a folder path, or null for the experiment folder")
    storage_path: str | None = Field(None, min_length=1, description="a sub-folder of host_path, or null")
    bucket: str | None = Field(None, min_length=1, description="an S3 bucket name (type s3), or null")
    prefix: str | None = Field(None, description="a key prefix inside the bucket (type s3), or null")
    endpoint_url: str | None = Field(None, min_length=1, description="an S3 endpoint URL such as "
                                     "'http://minio:9000' (type s3), or null for AWS")
    region: str | None = Field(None, min_length=1, description="an AWS region such as 'us-east-1', or null")
    save_experiment_best: int = Field(0, ge=0, strict=True, description="an integer >= 0")
    save_trial_best: int = Field(1, ge=0, strict=True, description="an integer >= 0")
    save_trial_latest: int = Field(1, ge=0, strict=True, description="an integer >= 0")

    def folder(self, experiment_directory: Path) -> Path:
        """Where checkpoints are written for an experiment in ``experiment_directory``."""
        if self.host_path is None:
            return Path(experiment_directory) / "checkpoints"
        return Path(self.host_path) / (self.storage_path or "")


_ROLE_NAME = r"^[a-z][a-z0-9_]{0,30}$"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DISTRIBUTIONS = ("tensorflow", "pytorch", "mpi")


class TrialRoleConfig(_Base):
    """One role of a distributed trial (``trial_roles``): how many processes run it and what each runs."""

    _default_where: ClassVar[str] = "config.trial_roles"
    count: int = Field(1, ge=1, le=1024, strict=True, description="an integer from 1 to 1024")
    command: str | None = Field(None, min_length=1, description="a non-empty shell command, or null for trial_command")
    gpu_number: int | None = Field(None, ge=0, strict=True, description="an integer >= 0, or null for trial_gpu_number")
    port: int | None = Field(None, ge=1, le=65535, strict=True,
                             description="a port number (1-65535), or null for a free port chosen at launch")


def _roles(v: Any) -> Any:
    if v is None:
        return None
    if not isinstance(v, Mapping) or not v:
        raise _Problem(f"got {_show(v)}, expected a mapping of role names to roles like "
                       "{'worker': {'count': 2}, 'ps': {'count': 1, 'command': 'python ps.py'}}, or null")
    for name, role in v.items():
        if not isinstance(name, str) or not re.fullmatch(_ROLE_NAME, name):
            raise _Problem(f"role name {_show(name)}: expected lowercase letters, digits and '_', starting with a "
                           "letter (like 'worker' or 'ps')")
        if role is not None and not isinstance(role, (Mapping, TrialRoleConfig)):
            raise _Problem(f"got {_show(role)}, expected a mapping like {{'count': 2}}", f".{name}")
    return {name: TrialRoleConfig() if role is None else role for name, role in v.items()}


def _trial_env(v: Any) -> Any:
    if v is None:
        return None
    if not isinstance(v, Mapping):
        raise _Problem(f"got {_show(v)}, expected a mapping of environment variable names to values")
    out = {}
    for key, value in v.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            raise _Problem(f"{_show(key)} is not an environment variable name; expected letters, digits and '_'")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise _Problem(f"got {_show(value)}, expected a string or a number", f".{key}")
        out[key] = str(value)
    return out


class LocalConfig(_Base):
    """The local training service: trials run as subprocesses on this machine."""

    _default_where: ClassVar[str] = "config.training_service"
    platform: Literal["local"] = Field("local", description="'local'")
    use_active_gpu: bool = Field(False, strict=True, description="true or false")
    max_trial_number_per_gpu: int = Field(1, ge=1, strict=True, description="an integer >= 1")
    gpu_indices: Annotated[list[int] | None, BeforeValidator(_gpu_list)] = Field(None, description=_GPU_EXPECT)
    reuse_mode: bool = Field(False, strict=True, description="true or false (accepted and ignored)")
    kill_grace: float = Field(5.0, ge=0, le=3600, description=_KILL_GRACE_EXPECT)


class RemoteMachineConfig(_Base):
    """One machine of the remote training service (NNI's ``machineList`` entry, plus ``max_trials``).

    ``password`` and ``ssh_passphrase`` are secrets: shown as ``'**********'``, and written as null by
    :meth:`ExperimentConfig.to_dict` (so never stored); a resumed experiment needs them supplied again,
    or key files without a passphrase / an ssh-agent."""

    _default_where: ClassVar[str] = "config.training_service.machine_list[]"
    host: str = Field(min_length=1, description="a host name or IP address")
    port: int = Field(22, ge=1, le=65535, strict=True, description="a port number (1-65535)")
    user: str | None = Field(None, min_length=1, description="a user name, or null for the current one")
    password: SecretStr | None = Field(None, description="a password string, or null")
    ssh_key_file: Path | None = Field(None, description="a private key file path, or null")
    ssh_passphrase: SecretStr | None = Field(None, description="the key file's passphrase, or null")
    python_path: str | None = Field(None, min_length=1, description=(
        "the remote Python: an interpreter path or a folder holding python3 (put first on PATH), or null"))
    gpu_indices: Annotated[list[int] | None, BeforeValidator(_gpu_list)] = Field(None, description=_GPU_EXPECT)
    use_active_gpu: bool = Field(False, strict=True, description="true or false")
    max_trial_number_per_gpu: int = Field(1, ge=1, strict=True, description="an integer >= 1")
    max_trials: int | None = Field(None, ge=1, strict=True, description="an integer >= 1, or null for no limit")

    @field_serializer("password", "ssh_passphrase", when_used="json")
    def _hide_secret(self, value: SecretStr | None) -> None:
        return None  # secrets never reach the store, the dashboard or a saved config


class RemoteConfig(_Base):
    """The remote training service: trials on machines reached over SSH (nothing installed there)."""

    _default_where: ClassVar[str] = "config.training_service"
    platform: Literal["remote"] = Field("remote", description="'remote'")
    machine_list: list[RemoteMachineConfig] = Field(
        default_factory=list, description="a list of machines like [{'host': 'gpu1', 'user': 'me', "
                                          "'ssh_key_file': '~/.ssh/id_ed25519'}]")
    reuse_mode: bool = Field(False, strict=True, description="true or false (accepted and ignored)")
    known_hosts_file: Path | None = Field(None, description="a known_hosts file path, or null for ~/.ssh/known_hosts")
    accept_new_host_keys: bool = Field(False, strict=True, description="true or false")
    remote_directory: str = Field("~/hpo-remote", min_length=1, description="a folder path on the machines")
    reconnect_timeout: _Duration = "2m"
    restart_after: _Duration = "5s"  # a dropped machine's trials are restarted elsewhere after this long
    kill_grace: float = Field(5.0, ge=0, le=3600, description=_KILL_GRACE_EXPECT)

    @model_validator(mode="after")
    def _attach(self) -> RemoteConfig:
        for i, machine in enumerate(self.machine_list):
            machine._where = f"{self._location()}.machine_list[{i}]"
        return self


_K8S_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _quantity(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (str, int, float)) or (isinstance(v, str) and not
                                                                        re.fullmatch(r"[0-9.]+[a-zA-Z]*", v)):
        raise _Problem(f"got {_show(v)}, expected a quantity such as 2, '500m' or '4Gi'")
    return v


def _resources(v: Any) -> Any:
    if v is None:
        return v
    if not isinstance(v, Mapping):
        raise _Problem(f"got {_show(v)}, expected a mapping like {{cpu: '2', memory: 4Gi, gpu: 1}}")
    groups = [v[k] for k in ("requests", "limits") if k in v] if ("requests" in v or "limits" in v) else [v]
    for group in groups:
        if not isinstance(group, Mapping):
            raise _Problem(f"got {_show(group)}, expected a mapping of resource names to quantities")
        for name, amount in group.items():
            try:
                _quantity(amount)
            except _Problem as p:
                raise _Problem(str(p), f".{name}") from None
    return dict(v)


class KubernetesPvcConfig(_Base):
    """A PersistentVolumeClaim mounted in every trial pod (and, for ``code_delivery: pvc``, on this machine)."""

    _default_where: ClassVar[str] = "config.training_service.pvc"
    claim_name: str = Field(min_length=1, pattern=_K8S_NAME, description="the claim's name (lowercase, digits, '-')")
    mount_path: str = Field("/mnt/hpo", pattern=r"^/", description="an absolute path inside the pods")
    local_path: Path | None = Field(None, description="where the claim is mounted on this machine (default: mount_path)")


class KubernetesConfig(_Base):
    """The Kubernetes training service: each trial is a batch/v1 Job (``pip install 'hpo[kubernetes]'``)."""

    _default_where: ClassVar[str] = "config.training_service"
    platform: Literal["kubernetes"] = Field("kubernetes", description="'kubernetes' (or 'k8s')")
    namespace: str | None = Field(None, max_length=63, pattern=_K8S_NAME,
                                  description="a namespace name, or null for the kubeconfig context's")
    image: str = Field("python:3.12-slim", min_length=1, description="a container image with Python 3")
    resources: Annotated[dict[str, Any] | None, BeforeValidator(_resources)] = None
    node_selector: dict[str, str] | None = Field(None, description="a mapping of node labels")
    tolerations: list[dict[str, Any]] | None = Field(None, description="a list of Kubernetes tolerations")
    service_account_name: str | None = Field(None, min_length=1, description="a service account name, or null")
    pod_template_patch: dict[str, Any] | None = Field(None, description="a mapping merged into the pod template")
    code_delivery: Literal["configmap", "image", "pvc"] = Field("configmap", description="'configmap', 'image' or 'pvc'")
    working_dir: str | None = Field(None, pattern=r"^/", description="the code's folder in the image (code_delivery "
                                                                    "'image'), or null for the image's working dir")
    pvc: KubernetesPvcConfig | None = None
    kubeconfig: Path | None = Field(None, description="a kubeconfig path, or null for $KUBECONFIG, ~/.kube/config, "
                                                      "else the in-cluster service account")
    context: str | None = Field(None, min_length=1, description="a kubeconfig context name, or null for the current")
    pending_timeout: _Duration = "10m"
    job_ttl: _Duration = "1d"  # finished Jobs outlive an engine restart this long
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="'Always', 'IfNotPresent', 'Never' or null")
    python: str = Field("python3", min_length=1, description="the image's Python interpreter (for unpacking the code)")
    kill_grace: float = Field(5.0, ge=0, le=3600, description=_KILL_GRACE_EXPECT)


# Platform name -> model; TrainingServiceConfig is their union, told apart by ``platform``.
_PLATFORMS: dict[str, type[_Base]] = {"local": LocalConfig, "remote": RemoteConfig, "kubernetes": KubernetesConfig}
_ALIASES = {"k8s": "kubernetes"}
TrainingServiceConfig = Annotated[LocalConfig | RemoteConfig | KubernetesConfig, Field(discriminator="platform")]


class ExperimentConfig(_Base):
    """An experiment, as NNI's ``experiment.config``; every attribute assignment is validated."""

    experiment_name: str | None = Field(None, description="a string or null")
    search_space: Annotated[dict[str, Any] | None, BeforeValidator(_search_space)] = None
    search_space_file: Path | None = Field(None, description="a file path or null")
    trial_command: str | None = Field(None, min_length=1, description="a non-empty shell command, or null")
    trial_function: Annotated[Any, BeforeValidator(_callable)] = Field(None, exclude=True)
    trial_code_directory: Path = Field(Path("."), description="a directory path")
    trial_concurrency: int = Field(1, ge=1, strict=True, description="an integer >= 1")
    trial_gpu_number: int = Field(0, ge=0, strict=True, description="an integer >= 0")
    max_experiment_duration: _Duration = None
    max_trial_number: int | None = Field(None, ge=1, strict=True, description="an integer >= 1, or null")
    max_trial_duration: _Duration = None
    max_trial_retries: int = Field(0, ge=0, strict=True, description="an integer >= 0: re-runs of a trial that failed")
    max_trial_restarts: int = Field(3, ge=0, strict=True, description="an integer >= 0: restarts of a trial whose "
                                                                      "machine was lost (not the trial's own failure)")
    max_failed_trials: int | None = Field(None, ge=1, strict=True, description="an integer >= 1, or null")
    experiment_working_directory: Path | None = Field(None, description="a directory path or null")
    log_level: Annotated[Literal["trace", "debug", "info", "warning", "error", "fatal"],
                         BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v)] = Field(
        "info", description="one of 'trace', 'debug', 'info', 'warning', 'error', 'fatal'")
    tuner: Annotated[AlgorithmConfig, _Algorithm] = Field(
        default_factory=AlgorithmConfig, description="an algorithm mapping like {'name': 'TPE', 'class_args': {}}")
    assessor: Annotated[AlgorithmConfig | None, _Algorithm] = Field(
        None, description="an algorithm mapping like {'name': 'EvidenceStop'}, or null")
    training_service: Annotated[TrainingServiceConfig, BeforeValidator(_platform)] = Field(
        default_factory=LocalConfig, description="'local', 'remote', 'kubernetes' or a mapping like {'platform': 'local'}")
    early_stopping: Annotated[list[dict[str, Any]] | None, BeforeValidator(_stopping_rules)] = None
    checkpoint_storage: CheckpointStorageConfig = Field(
        default_factory=CheckpointStorageConfig, description="a mapping like {'type': 'shared_fs', 'host_path': '/mnt/ckpt'}")
    trial_roles: Annotated[dict[str, TrialRoleConfig] | None, BeforeValidator(_roles)] = None
    distribution: Literal["tensorflow", "pytorch", "mpi"] = Field(
        "tensorflow", description="'tensorflow', 'pytorch' or 'mpi' (the environment a distributed trial's processes get)")
    trial_env: Annotated[dict[str, str] | None, BeforeValidator(_trial_env)] = None
    project: str | None = Field(None, min_length=1, max_length=200, description="a project name, or null")
    trial_warm_start: bool | None = Field(
        None, strict=True, description="true, false, or null (on for a trial_function, off for a trial_command)")
    trial_preload: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")]] = Field(
        default_factory=list, description="a list of module names like ['torch', 'mypkg.data']")

    @model_validator(mode="after")
    def _attach(self) -> ExperimentConfig:
        """Tell nested models where they live, so errors on their own assignments name the full path."""
        for role in ("tuner", "assessor", "training_service", "checkpoint_storage"):
            if getattr(self, role) is not None:
                getattr(self, role)._where = f"{self._location()}.{role}"
        for name, role_config in (self.trial_roles or {}).items():
            role_config._where = f"{self._location()}.trial_roles.{name}"
        return self

    @property
    def max_experiment_duration_seconds(self) -> float | None:
        return _duration_seconds(self.max_experiment_duration)

    @property
    def max_trial_duration_seconds(self) -> float | None:
        return _duration_seconds(self.max_trial_duration)

    def validate_for_start(self) -> ExperimentConfig:
        """Cross-field checks before a start, and that the experiment folders can be created (the working
        directory and HPO_HOME, where the registry is); raises ConfigError, returns self.  Also canonicalises:
        makes paths absolute (against the cwd) and loads ``search_space_file`` into ``search_space``,
        then sets ``search_space_file`` to None (so a later ``search_space`` update is no conflict)."""
        w = self._location()
        # Re-validate every field: dicts and lists may have been edited in place since they were assigned.
        for model in filter(None, (self, self.tuner, self.assessor, self.training_service, self.checkpoint_storage)):
            for name in type(model).model_fields:
                setattr(model, name, getattr(model, name))
        if (self.trial_command is None) == (self.trial_function is None):
            which = "both trial_command and trial_function are" if self.trial_command else \
                "neither trial_command nor trial_function is"
            raise ConfigError(f"{w}: {which} set; expected exactly one")
        self.trial_code_directory = _existing_dir(self.trial_code_directory, f"{w}.trial_code_directory")
        if self.experiment_working_directory is not None:
            self.experiment_working_directory = _absolute(self.experiment_working_directory)
            _writable_dir(self.experiment_working_directory, f"{w}.experiment_working_directory")
        _writable_dir(_absolute(hpo_home()), "the experiments folder (HPO_HOME, default ~/hpo-experiments)")
        if self.search_space_file is not None:
            path = self.search_space_file = _absolute(self.search_space_file)
            try:
                data = _read_yaml(path)  # its messages start with the path
            except ConfigError as e:
                raise ConfigError(f"{w}.search_space_file: {e}") from None
            try:
                parse_search_space(data)
            except SearchSpaceError as e:
                raise ConfigError(f"{w}.search_space_file: {path}: {e}") from None
            if self.search_space is not None and self.search_space != data:
                raise ConfigError(f"{w}: search_space and search_space_file ({str(path)!r}) are both set and "
                                  "differ; expected only one")
            self.search_space, self.search_space_file = data, None  # loaded: later updates are not conflicts
        if self.search_space is None:
            raise ConfigError(f"{w}: neither search_space nor search_space_file is set; expected one")
        if not self.search_space and self.max_trial_number is None:
            raise ConfigError(f"{w}.search_space: is empty and max_trial_number is not set; expected at least one "
                              "parameter, or max_trial_number (an empty space runs the trial command that many "
                              "times with no parameters: 1 for a single run)")
        for role in ("tuner", "assessor"):
            algo: AlgorithmConfig | None = getattr(self, role)
            if algo is not None and algo.name is not None and algo.class_name is not None:
                raise ConfigError(f"{w}.{role}: both name ({algo.name!r}) and class_name ({algo.class_name!r}) "
                                  "are set; expected exactly one")
            if algo is not None and algo.name is None and algo.class_name is None:
                raise ConfigError(f"{w}.{role}: neither name nor class_name is set; expected one, "
                                  f"e.g. {w}.{role}.name = 'TPE'")
            if algo is not None and algo.code_directory is not None:
                algo.code_directory = _existing_dir(algo.code_directory, f"{w}.{role}.code_directory")
        storage = self.checkpoint_storage
        _check_storage_type(storage, f"{w}.checkpoint_storage")
        if storage.host_path is not None:
            storage.host_path = _absolute(storage.host_path)
            _writable_dir(storage.host_path, f"{w}.checkpoint_storage.host_path")
        if storage.storage_path is not None and (Path(storage.storage_path).is_absolute() or
                                                 ".." in Path(storage.storage_path).parts):
            raise ConfigError(f"{w}.checkpoint_storage.storage_path: got {storage.storage_path!r}, expected a "
                              "relative sub-folder of host_path")
        if isinstance(self.training_service, KubernetesConfig):
            ts = self.training_service
            if self.trial_function is not None:
                raise ConfigError(f"{w}.trial_function: the kubernetes training service runs a trial_command; "
                                  "put the function in a script in trial_code_directory")
            if ts.code_delivery == "pvc" and ts.pvc is None:
                raise ConfigError(f"{w}.training_service.pvc: is not set but code_delivery is 'pvc'; expected "
                                  "{'claim_name': 'shared', 'mount_path': '/mnt/shared'}")
            if ts.kubeconfig is not None:
                ts.kubeconfig = _absolute(ts.kubeconfig)
        if isinstance(self.training_service, RemoteConfig):
            if not self.training_service.machine_list:
                raise ConfigError(f"{w}.training_service.machine_list: is empty; expected at least one machine like "
                                  "{'host': 'gpu1', 'user': 'me', 'ssh_key_file': '~/.ssh/id_ed25519'}")
            if self.trial_function is not None:
                raise ConfigError(f"{w}.trial_function: the remote training service runs a trial_command; "
                                  "put the function in a script in trial_code_directory")
        if self.trial_roles:
            self._check_roles(w)
        self._check_warm_start(w)
        gpus = getattr(self.training_service, "gpu_indices", None)
        if gpus is not None and self.trial_gpu_number > len(gpus):
            raise ConfigError(f"{w}.trial_gpu_number: got {self.trial_gpu_number}, expected at most "
                              f"{len(gpus)} (the number of training_service.gpu_indices {gpus})")
        return self

    def _check_roles(self, w: str) -> None:
        roles = self.trial_roles or {}
        if self.trial_function is not None:
            raise ConfigError(f"{w}.trial_roles: a distributed trial runs commands; set trial_command (or each "
                              "role's command) instead of trial_function")
        for name, role in roles.items():
            if role.command is None and self.trial_command is None:
                raise ConfigError(f"{w}.trial_roles.{name}.command: not set and there is no trial_command")
        ports: dict[int, str] = {}
        for name, role in roles.items():
            if role.port is None:
                continue
            if role.port in ports:
                raise ConfigError(f"{w}.trial_roles.{name}.port: {role.port} is also role {ports[role.port]!r}'s "
                                  "port; expected a different port per role (or null for free ports)")
            ports[role.port] = name
            if role.count > 1 and isinstance(self.training_service, (LocalConfig, KubernetesConfig)):
                where = "this machine" if isinstance(self.training_service, LocalConfig) else "one pod network"
                raise ConfigError(f"{w}.trial_roles.{name}.port: {role.count} processes on {where} cannot all "
                                  f"listen on port {role.port}; expected null (a free port for each)")
        if isinstance(self.training_service, KubernetesConfig):  # one Indexed Job: one pod template for all
            gpus = {name: self.trial_gpu_number if r.gpu_number is None else r.gpu_number for name, r in roles.items()}
            if len(set(gpus.values())) > 1:
                raise ConfigError(f"{w}.trial_roles: on kubernetes every process of a trial gets the same resources "
                                  f"(one Indexed Job), but the roles ask different GPU numbers {gpus}")
        if isinstance(self.training_service, RemoteConfig):
            machines = self.training_service.machine_list
            for name, role in roles.items():
                if role.port is not None and role.count > len(machines):
                    raise ConfigError(f"{w}.trial_roles.{name}: {role.count} processes on fixed port {role.port} need "
                                      f"{role.count} machines, but machine_list has {len(machines)}")

    @property
    def warm_start(self) -> bool:
        """Whether trials are forked from a zygote: ``trial_warm_start``, by default on for a trial_function on the
        local service."""
        if self.trial_warm_start is not None:
            return self.trial_warm_start
        return self.trial_function is not None and isinstance(self.training_service, LocalConfig)

    def _check_warm_start(self, w: str) -> None:
        from training_services.warm_start import can_start_warm
        if not self.warm_start:
            if self.trial_preload:
                raise ConfigError(f"{w}.trial_preload: modules are preloaded only for warm starts, which are off; "
                                  "expected trial_warm_start: true (or no trial_preload)")
            return
        if not isinstance(self.training_service, (LocalConfig, RemoteConfig)):
            raise ConfigError(f"{w}.trial_warm_start: the {self.training_service.platform} training service starts "
                              "every trial in a fresh interpreter; warm starts are for the local and remote services "
                              "(expected false or null)")
        commands = {f"{w}.trial_command": self.trial_command} if self.trial_command else {}
        for name, role in (self.trial_roles or {}).items():
            if role.command is not None:
                commands[f"{w}.trial_roles.{name}.command"] = role.command
        for where, command in commands.items():
            if not can_start_warm(command):
                raise ConfigError(f"{where}: {command!r} cannot start warm (trial_warm_start is true); expected "
                                  "'python script.py args' or 'python -m module args' without shell syntax "
                                  "(pipes, redirections, variables, globs, '&&')")

    @property
    def trial_gpu_total(self) -> int:
        """GPUs one trial holds: trial_gpu_number, or for a distributed trial the sum over its processes."""
        if not self.trial_roles:
            return self.trial_gpu_number
        return sum(role.count * (self.trial_gpu_number if role.gpu_number is None else role.gpu_number)
                   for role in self.trial_roles.values())

    def check_update(self, **changes: Any) -> None:
        """Raise ConfigError if applying ``changes`` would be invalid; this config is left unchanged."""
        trial = type(self).from_dict(self.to_dict())
        for key, value in changes.items():
            setattr(trial, key, value)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snake_case dict: paths as str, None fields kept, trial_function left out."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentConfig:
        """The inverse of :meth:`to_dict` (camelCase keys accepted too).  Raises ConfigError."""
        return cls.model_validate(dict(data))


def _absolute(path: str | Path, base: Path | None = None) -> Path:
    path = Path(path).expanduser()
    return Path(os.path.abspath(path if base is None else base / path))


def _existing_dir(path: Path, where: str) -> Path:
    path = _absolute(path)
    if not path.is_dir():
        raise ConfigError(f"{where}: {str(path)!r} {'is not a directory' if path.exists() else 'does not exist'}")
    return path


MAX_FILE_BYTES = 16 << 20  # config and search-space files larger than this are refused unread
MAX_YAML_DEPTH = 128  # nesting levels (a 32-deep nested choice needs about 100)
MAX_ALIAS_NODES = 100_000  # values that YAML aliases may add in all (a "billion laughs" adds billions)


def _check_storage_type(storage: CheckpointStorageConfig, where: str) -> None:
    """ConfigError unless the keys set fit the storage type (and boto3 is there for s3)."""
    s3_keys = [k for k in ("bucket", "prefix", "endpoint_url", "region") if getattr(storage, k) is not None]
    if storage.type == "shared_fs" and s3_keys:
        raise ConfigError(f"{where}.{s3_keys[0]}: is for type 's3', but type is 'shared_fs'")
    if storage.type != "s3":
        return
    if storage.bucket is None:
        raise ConfigError(f"{where}.bucket: not set; type 's3' needs a bucket")
    if storage.host_path is not None or storage.storage_path is not None:
        raise ConfigError(f"{where}: host_path and storage_path are for type 'shared_fs', but type is 's3'")
    if not installed("boto3"):
        raise ConfigError(f"{where}.type: 's3' needs boto3; install the extra: pip install 'hpo[s3]'")


def installed(module: str) -> bool:
    """Whether ``module`` (an optional extra's) can be imported, found without importing it."""
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules as None: it cannot be imported
        return False


def _writable_dir(path: Path, where: str) -> None:
    """Raise ConfigError unless ``path`` is a folder, or can be made one, where this process can create folders.

    Tried by creating (and removing) an empty folder in ``path`` or its closest existing ancestor."""
    try:
        probe = path
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            what = "is not a folder" if probe == path else f"cannot be created: {str(probe)!r} is not a folder"
            raise ConfigError(f"{where}: {str(path)!r} {what}")
        tempfile.TemporaryDirectory(dir=probe, prefix=".hpo-check-").cleanup()
    except OSError as e:
        raise ConfigError(f"{where}: {str(path)!r} is not usable: cannot create folders in it "
                          f"({e.strerror or e})") from None


@functools.lru_cache(maxsize=None)
def _yaml_loader() -> Any:
    """libyaml's SafeLoader (PyYAML's when libyaml is missing), rejecting duplicate keys (PyYAML keeps the last)."""
    import yaml

    class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[str] = set()
            for k, _ in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value != "<<":
                    if k.value in seen:
                        raise yaml.constructor.ConstructorError(None, None, f"duplicate key {k.value!r}", k.start_mark)
                    seen.add(k.value)
            return super().construct_mapping(node, deep=deep)
    return Loader


def _check_yaml_shape(text: str) -> None:
    """Raise yaml.YAMLError (with a mark) if ``text`` nests deeper than MAX_YAML_DEPTH, has a recursive alias,
    or has aliases adding more than MAX_ALIAS_NODES values; one streaming pass over the parser's events."""
    import yaml

    def fail(problem: str, event: Any) -> None:
        raise yaml.MarkedYAMLError(problem=problem, problem_mark=event.start_mark)
    sizes: dict[str, int] = {}  # anchor -> values in its node, aliases expanded
    stack: list[list[Any]] = [[None, 0]]  # open collections: [anchor, values so far]
    added = 0
    for event in yaml.parse(text, Loader=_yaml_loader()):
        if isinstance(event, yaml.CollectionStartEvent):
            stack.append([event.anchor, 1])
            if len(stack) > MAX_YAML_DEPTH:
                fail(f"nested more than {MAX_YAML_DEPTH} levels deep", event)
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            anchor, size = stack.pop()
        elif isinstance(event, yaml.ScalarEvent):
            anchor, size = event.anchor, 1
        elif isinstance(event, yaml.AliasEvent):
            if any(event.anchor == frame[0] for frame in stack):
                fail(f"alias *{event.anchor} refers to a value that contains it", event)
            anchor, size = None, sizes.get(event.anchor, 1)  # an undefined alias is reported by the loader
            added += size
            if added > MAX_ALIAS_NODES:
                fail(f"aliases expand to more than {MAX_ALIAS_NODES} values; write the values out", event)
        else:  # stream and document events
            continue
        if anchor is not None:
            sizes[anchor] = size
        stack[-1][1] += size


def _read_text(path: Path) -> str:
    """The UTF-8 text of regular file ``path`` of at most MAX_FILE_BYTES; never blocks on a FIFO or device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file does not exist") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read file ({e.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) else \
                "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "a socket"
            raise ConfigError(f"{path}: is {kind}; expected a regular file")
        with open(fd, "rb", closefd=False) as fh:
            data = fh.read(min(info.st_size, MAX_FILE_BYTES) + 1)  # + 1: it may have grown since fstat
    finally:
        os.close(fd)
    if max(info.st_size, len(data)) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: is {max(info.st_size, len(data)) / 2 ** 20:.1f} MiB; expected a file of at most "
                          f"{MAX_FILE_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot read file (not UTF-8: {e.reason} at byte {e.start})") from None


def _read_yaml(path: Path) -> Any:
    """The parsed YAML/JSON of ``path``, in bounded time and memory; ConfigError messages start with the file."""
    import yaml

    text = _read_text(path)
    try:
        _check_yaml_shape(text)
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML/JSON{at}: {getattr(e, 'problem', None) or e}") from None
    except ValueError as e:  # a scalar Python cannot convert, such as an int of more than 4300 digits
        raise ConfigError(f"{path}: invalid YAML/JSON: {e}") from None


# user data: their keys are never renamed (Kubernetes fields inside a pod template patch stay camelCase)
_OPAQUE = ("search_space", "class_args", "early_stopping", "pod_template_patch", "node_selector", "tolerations",
           "resources")


def _snake_keys(data: Mapping[Any, Any], path: Path, where: str) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    given: dict[Any, Any] = {}
    known = {n for m in (ExperimentConfig, AlgorithmConfig, CheckpointStorageConfig, *_PLATFORMS.values())
             for n in m.model_fields}
    for key, value in data.items():
        name = _to_snake(key) if isinstance(key, str) and _to_snake(key) in known else key
        if name in out:
            raise ConfigError(f"{path}: {where}: both {given[name]!r} and {key!r} are given; expected one")
        if isinstance(value, Mapping) and name not in _OPAQUE:
            value = _snake_keys(value, path, f"{where}.{name}")
        out[name], given[name] = value, key
    return out


def _normalise(data: Any, path: Path) -> dict[Any, Any]:
    """snake_case keys, string shorthands expanded, relative paths resolved against the file's directory."""
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{path}: top level is {kind}; expected a mapping of config keys")
    out = _snake_keys(data, path, "config")
    if isinstance(out.get("training_service"), str):
        out["training_service"] = {"platform": out["training_service"]}
    service = out.get("training_service")
    if isinstance(service, dict) and isinstance(service.get("kubeconfig"), str) and service["kubeconfig"]:
        service["kubeconfig"] = str(_absolute(service["kubeconfig"], path.absolute().parent))
    targets = [(out, k) for k in ("trial_code_directory", "search_space_file", "experiment_working_directory")]
    if isinstance(out.get("checkpoint_storage"), dict):
        targets.append((out["checkpoint_storage"], "host_path"))
    for role in ("tuner", "assessor"):
        if isinstance(out.get(role), str):
            out[role] = {"name": out[role]}
        if isinstance(out.get(role), dict):
            targets.append((out[role], "code_directory"))
    for d, key in targets:
        if isinstance(d.get(key), str) and d[key]:
            d[key] = str(_absolute(d[key], path.absolute().parent))
    return out


def _merge(base: dict[Any, Any], over: Mapping[Any, Any], key: Any = None) -> dict[Any, Any]:
    """Later wins key by key; nested mappings merge; lists and search-space parameters are replaced whole."""
    out = dict(base)
    for k, v in over.items():
        merge = isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and key != "search_space"
        out[k] = _merge(out[k], v, k) if merge else v
    return out


def load_config_files(paths: Sequence[str | Path] | str | Path) -> ExperimentConfig:
    """Load NNI v2 YAML/JSON config files (.yml/.yaml/.json) and deep-merge them in order (:func:`_merge`).

    Keys may be camelCase or snake_case at every level, except inside ``search_space``, ``class_args``
    and ``early_stopping`` (user data, kept verbatim).  Relative ``trial_code_directory``,
    ``search_space_file``, ``experiment_working_directory`` and ``tuner/assessor.code_directory`` are
    resolved against the directory of the file that sets them.  Raises ConfigError naming the file."""
    files = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not files:
        raise ConfigError("config: no config files given; expected at least one .yml, .yaml or .json path")
    merged: dict[Any, Any] = {}
    for path in files:
        if path.suffix.lower() not in (".yml", ".yaml", ".json"):
            raise ConfigError(f"{path}: unsupported file type {path.suffix!r}; expected .yml, .yaml or .json")
        data = _normalise(_read_yaml(path), path)
        try:
            ExperimentConfig.model_validate(data)  # so that errors name the file that holds them
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        merged = _merge(merged, data)
    try:
        return ExperimentConfig.model_validate(merged)
    except ConfigError as e:
        raise ConfigError(f"{', '.join(map(str, files))}: {e}") from None
