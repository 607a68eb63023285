"""An operation compiled into an hpo experiment config: params bound and checked against the inputs, the run
patch applied, the matrix mapped onto a tuner (see :data:`TUNER_OF`), the command left to the trial-side
launcher (``hpo.polyaxon.launch``)."""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo.polyaxon.component import V1Component, V1Job
from hpo.polyaxon.context import render
from hpo.polyaxon.errors import PolyaxonError
from hpo.polyaxon.launch import command_line
from hpo.polyaxon.operation import V1Operation
from hpo.polyaxon.patch import patch

__all__ = ["Compiled", "compile_operation", "TUNER_OF"]

# matrix kind -> hpo tuner (and assessor), as the README's table says
TUNER_OF = {"random": "random", "grid": "grid", "mapping": "mapping", "hyperopt": "hyperopt",
            "hyperband": "hyperband", "bayes": "gp", "iterative": "(tuner.hubRef)"}


@dataclass
class Compiled:
    """What ``hpo run`` starts: the experiment config, the outputs to show, the tuned metric, and warnings."""

    config: Any
    outputs: list[str]
    metric: str | None
    warnings: list[str] = field(default_factory=list)


# environment fields that the Kubernetes service puts on the trial's pod
_POD_FIELDS = ("labels", "annotations", "node_selector", "affinity", "tolerations", "service_account_name",
               "image_pull_secrets")
CONFIG_SET_BY_RUN = ("search_space", "search_space_file", "trial_command", "trial_function", "trial_code_directory",
                      "tuner", "max_trial_number", "trial_concurrency", "trial_env")


def _ignored(op: V1Operation, component: V1Component, job: V1Job, kubernetes: bool = False) -> list[str]:
    """Fields accepted but not honoured when running here (on Kubernetes, the image and the pod's fields are)."""
    names = [f"run.container.{k}" for k in ("image",) if getattr(job.container, k) and not kubernetes]
    names += [f"run.container.{k}" for k in (job.container.model_extra or {})]
    names += [f"run.{k}" for k in ("init", "sidecars", "volumes", "connections") if getattr(job, k)]
    env = job.environment
    if env is not None:
        names += [f"run.environment.{k}" for k in (*_POD_FIELDS, "restart_policy")
                  if getattr(env, k) and not (kubernetes and k in _POD_FIELDS)]
        names += [f"run.environment.{k}" for k in (env.model_extra or {})]
    for holder, prefix in ((component, "component"), (op, "operation")):
        names += [f"{prefix}.{k}" for k in ("queue", "namespace", "cache", "plugins", "build", "hooks", "presets")
                  if getattr(holder, k, None) and not (kubernetes and k == "namespace")]
    names += [f"operation.{k}" for k in ("schedule", "events", "joins", "dependencies", "trigger", "conditions")
              if getattr(op, k)]
    return names


def _gpus(job: V1Job, where: str) -> int:
    for resources, at in ((job.container.resources, "run.container.resources"),
                          (job.environment.resources if job.environment else None, "run.environment.resources")):
        for part in ("limits", "requests"):
            group = (resources or {}).get(part) or {}
            if not isinstance(group, dict):
                raise PolyaxonError(f"{where}: {at}.{part}: got {group!r}, expected a mapping of resource names "
                                    "to quantities")
            gpu = group.get("nvidia.com/gpu")
            if gpu is not None:
                try:
                    count = int(str(gpu))
                except ValueError:
                    count = -1
                if count < 0:
                    raise PolyaxonError(f"{where}: {at}.{part}.nvidia.com/gpu: got {gpu!r}, expected a whole number "
                                        "of GPUs")
                return count
    return 0


def _space(op: V1Operation, component: V1Component, where: str) -> dict[str, Any]:
    """The matrix's params as an hpo search space; each value a choice offers is checked against its input."""
    matrix = op.matrix
    if matrix is None:
        return {}
    if matrix.kind == "mapping":
        keys = list(matrix.values[0])
        for i, row in enumerate(matrix.values):
            if list(row) != keys and set(row) != set(keys):
                raise PolyaxonError(f"{where}: matrix.values[{i}]: has keys {sorted(row)}; every set must have "
                                    f"the keys of the first ({sorted(keys)})")
        params = {k: {"_type": "choice", "_value": _distinct([row[k] for row in matrix.values])} for k in keys}
        for i, row in enumerate(matrix.values):
            for k, v in row.items():
                _check_input(component, k, v, f"{where}: matrix.values[{i}].{k}")
        return params
    space = {}
    for name, hp in (matrix.params or {}).items():
        if component.input(name) is None:
            raise PolyaxonError(f"{where}: matrix.params.{name}: not an input of the component "
                                f"(inputs: {', '.join(io.name for io in component.inputs or []) or 'none'})")
        try:
            space[name] = hp.spec()
        except PolyaxonError as e:
            raise PolyaxonError(f"{where}: matrix.params.{name}: {e}") from None
        if hp.kind in ("choice", "pchoice"):
            for v in hp.value:
                _check_input(component, name, v[0] if hp.kind == "pchoice" else v, f"{where}: matrix.params.{name}")
        if hp.kind in ("daterange", "datetimerange") and component.input(name).type != hp.kind[:-5]:
            raise PolyaxonError(f"{where}: matrix.params.{name}: {hp.kind} needs an input of type "
                                f"{hp.kind[:-5]!r}, got {component.input(name).type!r}")
    return space


def _distinct(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _check_input(component: V1Component, name: str, value: Any, where: str, text: bool = False) -> Any:
    io = component.input(name)
    if io is None:
        raise PolyaxonError(f"{where}: not an input of the component "
                            f"(inputs: {', '.join(i.name for i in component.inputs or []) or 'none'})")
    try:
        return io.check(value, text=text)
    except PolyaxonError as e:
        raise PolyaxonError(f"{where}: input {name!r} ({io.type or 'any'}): {e}") from None


def _tuner(op: V1Operation, space: dict[str, Any], maximize: bool) -> tuple[dict[str, Any], int | None]:
    """The tuner config and the trial budget of the matrix."""
    m = op.matrix
    mode = {"optimize_mode": "maximize" if maximize else "minimize"}
    seed = {"seed": m.seed} if getattr(m, "seed", None) is not None else {}
    if m.kind == "random":
        return {"name": "random", "class_args": {**mode, **seed}}, m.num_runs
    if m.kind == "grid":
        return {"name": "grid", "class_args": {**mode, "n_experiments": m.num_runs}}, m.num_runs
    if m.kind == "mapping":
        return {"name": "mapping", "class_args": {**mode, "values": m.values}}, len(m.values)
    if m.kind == "hyperopt":
        return ({"name": "hyperopt", "class_args": {**mode, **seed, "algorithm_name": m.algorithm}},
                m.num_runs or m.max_iterations)
    if m.kind == "hyperband":
        from tuners.hyperband import HyperbandTuner
        # resume: a promoted run goes on from the checkpoint of its run at the rung before (Polyaxon's default: off)
        args = {**mode, **seed, "R": m.max_iterations, "eta": m.eta, "resource_name": m.resource.name,
                "resource_type": m.resource.type, "resume": bool(m.resume)}
        return {"name": "hyperband", "class_args": args}, HyperbandTuner(**args).total_trials()
    if m.kind == "bayes":
        args = {**mode, **seed, **_gp_args(m)}
        return {"name": "gp", "class_args": args}, m.num_initial_runs + m.max_iterations
    # iterative: the user's tuner, by registered name or module.Class
    ref = m.tuner.hub_ref if m.tuner else None
    if not ref:
        raise PolyaxonError("matrix.tuner.hubRef: an iterative matrix needs the tuner to run "
                            "(a registered tuner name or 'module.Class')")
    args = {**mode, **seed, **(m.tuner.params or {})}
    tuner = {"class_name": ref, "class_args": args} if "." in ref else {"name": ref, "class_args": args}
    return tuner, m.max_iterations


# GpTuner argument -> the bayes matrix field it comes from (for messages)
_GP_FIELDS = {"cold_start_num": "numInitialRuns", "utility": "utilityFunction.acquisitionFunction",
              "kappa": "utilityFunction.kappa", "xi": "utilityFunction.eps",
              "selection_num_warm_up": "utilityFunction.numWarmup",
              "selection_num_starting_points": "utilityFunction.numIterations",
              "kernel": "utilityFunction.gaussianProcess.kernel",
              "length_scale": "utilityFunction.gaussianProcess.lengthScale",
              "nu": "utilityFunction.gaussianProcess.nu",
              "num_restarts_optimizer": "utilityFunction.gaussianProcess.numRestartsOptimizer"}


def _gp_args(m: Any) -> dict[str, Any]:
    """The bayes matrix's settings as GpTuner arguments: the fields the file sets (left-out ones keep the tuner's
    defaults); without ``acquisitionFunction``, ``kappa`` alone means ucb (it is ucb's setting) and ``eps`` ei.
    Checked here, so a bad value is one line naming the field before anything starts."""
    from tuners.gp import GpTuner

    args: dict[str, Any] = {"cold_start_num": m.num_initial_runs}
    u = m.utility_function
    if u is not None:
        given = u.model_fields_set
        if "acquisition_function" in given:
            args["utility"] = u.acquisition_function
        elif "kappa" in given and u.kappa is not None:
            args["utility"] = "ucb"
        if u.kappa is not None:
            args["kappa"] = u.kappa
        if u.eps is not None:
            args["xi"] = u.eps
        if u.num_warmup is not None:
            args["selection_num_warm_up"] = u.num_warmup
        if u.num_iterations is not None:
            args["selection_num_starting_points"] = u.num_iterations
        gp = u.gaussian_process
        if gp is not None:
            for name in ("kernel", "length_scale", "nu", "num_restarts_optimizer"):
                if name in gp.model_fields_set:
                    args[name] = getattr(gp, name)
    try:
        GpTuner(**args)
    except ValueError as e:
        name = str(e).split(":", 1)[0]
        field = _GP_FIELDS.get(name)
        raise PolyaxonError(f"matrix.{field}: {str(e).split(':', 1)[1].strip()}" if field else f"matrix: {e}") from None
    return args


def _metric(op: V1Operation, component: V1Component) -> tuple[str | None, bool]:
    """The tuned key and whether it is maximized: the matrix's metric, else its first metric early stopping,
    else the first numeric output (maximized)."""
    m = op.matrix
    if getattr(m, "metric", None) is not None:
        return m.metric.name, m.metric.optimization == "maximize"
    for rule in getattr(m, "early_stopping", None) or []:
        if rule.kind == "metric_early_stopping":
            return rule.metric, rule.optimization == "maximize"
    return None, True


def _early_stopping(op: V1Operation, notes: list[str]) -> tuple[list[dict[str, Any]] | None, dict[str, Any] | None]:
    """hpo's early_stopping rules and assessor from the matrix's early stopping."""
    rules, assessor = [], None
    for i, rule in enumerate(getattr(op.matrix, "early_stopping", None) or []):
        if rule.kind == "failure_early_stopping":
            rules.append({"kind": "failure_early_stopping", "percent": rule.percent})
        elif rule.policy is None:
            rules.append({"metric": rule.metric, "value": rule.value, "optimization": rule.optimization})
        elif rule.policy.kind == "median":
            assessor = {"name": "medianstop", "class_args": {"optimize_mode": rule.optimization,
                                                             "start_step": rule.policy.min_interval or 0}}
        else:
            notes.append(f"matrix.early_stopping[{i}].policy ({rule.policy.kind})")
    return rules or None, assessor


def _pod_settings(job: V1Job, namespace: str | None, service: dict[str, Any]) -> dict[str, Any]:
    """The Kubernetes training service config with the run's pod settings on top: the container's image and
    resources, the environment's labels, annotations, nodeSelector, tolerations, affinity, service account, image
    pull secrets and (literal) env, and the operation's namespace."""
    from training_services.kube_manifests import TRIAL_CONTAINER, merge_patch

    service = dict(service)
    container, env = job.container, job.environment
    if container.image:
        service["image"] = container.image
    resources = container.resources or (env.resources if env else None)
    if resources:
        service["resources"] = resources
    if namespace:
        service["namespace"] = namespace
    pod: dict[str, Any] = {}
    variables = [{"name": e.name, "value": str(e.value)} for e in [*((env.env or []) if env else []),
                                                                    *(container.env or [])]
                 if e.value is not None and "{{" not in str(e.value)]
    if variables:  # the launcher sets them too (and the rendered ones): here they are on the pod for all to see
        pod.setdefault("spec", {})["containers"] = [{"name": TRIAL_CONTAINER, "env": variables}]
    if env is not None:
        if env.node_selector:
            service["node_selector"] = {**(service.get("node_selector") or {}), **env.node_selector}
        if env.tolerations:
            service["tolerations"] = [*(service.get("tolerations") or []), *env.tolerations]
        if env.service_account_name:
            service["service_account_name"] = env.service_account_name
        meta = {k: v for k, v in (("labels", env.labels), ("annotations", env.annotations)) if v}
        if meta:
            pod["metadata"] = meta
        if env.affinity:
            pod.setdefault("spec", {})["affinity"] = env.affinity
        if env.image_pull_secrets:
            pod.setdefault("spec", {})["imagePullSecrets"] = [{"name": s} for s in env.image_pull_secrets]
    if pod:
        service["pod_template_patch"] = merge_patch(service.get("pod_template_patch") or {}, pod)
    return service


def _base_config(config: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """hpo config keys given with the run (``hpo run -c``, ``RunClient.create(config=...)``), snake_case; the keys
    the run sets itself are refused."""
    from hpo.config import _to_snake

    out: dict[str, Any] = {}
    for key, value in (config or {}).items():
        name = _to_snake(key) if isinstance(key, str) else key
        if name in CONFIG_SET_BY_RUN:
            raise PolyaxonError(f"{where}: {key}: set by the polyaxonfile (its matrix, run and params), not by the hpo "
                                "config; leave it out")
        out[name] = value
    if isinstance(out.get("training_service"), str):
        out["training_service"] = {"platform": out["training_service"]}
    return out


def compile_operation(op: V1Operation, *, base: Path, where: str, params: dict[str, str] | None = None,
                      project: str | None = None, config: dict[str, Any] | None = None) -> Compiled:
    """``op`` (with ``-P`` string ``params``) as an hpo experiment, on top of the hpo ``config`` keys given with it
    (e.g. the training service); raises PolyaxonError naming ``where``."""
    from hpo.config import ConfigError, ExperimentConfig

    component = op.component
    if component is None:
        raise PolyaxonError(f"{where}: the operation has no component; expected component or pathRef")
    run = patch(component.run.to_dict(), op.run_patch, op.patch_strategy)
    job = V1Job.read(run, f"{where}: run_patch")
    hpo_config = _base_config(config, "hpo config")
    service = hpo_config.get("training_service")
    platform = service.get("platform") if isinstance(service, dict) else None
    kubernetes = platform in ("kubernetes", "k8s")
    notes = _ignored(op, component, job, kubernetes)
    values: dict[str, Any] = {io.name: io.value for io in component.inputs or []}
    to_env = {io.name: io.to_env for io in component.inputs or [] if io.to_env}
    for name, param in (op.params or {}).items():
        if param.ref is not None:
            raise PolyaxonError(f"{where}: params.{name}.ref: references to other runs are not supported here")
        if param.context_only:
            values[name] = param.value
        else:
            values[name] = _check_input(component, name, param.value, f"{where}: params.{name}")
        if param.to_env:
            to_env[name] = param.to_env
    for name, raw in (params or {}).items():
        values[name] = _check_input(component, name, raw, f"-P {name}={raw}", text=True)
    space = _space(op, component, where)
    tuned = set(space) | ({op.matrix.resource.name} if op.matrix is not None and op.matrix.kind == "hyperband"
                          else set())
    if op.matrix is not None and op.matrix.kind == "hyperband" and component.input(op.matrix.resource.name) is None:
        raise PolyaxonError(f"{where}: matrix.resource.name: {op.matrix.resource.name!r} is not an input of the "
                            "component (it receives each run's resource)")
    for io in component.inputs or []:
        if io.required and values.get(io.name) is None and io.name not in tuned:
            raise PolyaxonError(f"{where}: input {io.name!r} ({io.type or 'any'}) is required; give it with "
                                f"-P {io.name}=VALUE or in params")
    metric, maximize = _metric(op, component)
    container = job.container
    env = {e.name: e.value for e in [*(job.environment.env or [] if job.environment else []), *(container.env or [])]
           if e.value is not None}
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    spec = {"command": container.command or [], "args": container.args or [], "working_dir": container.working_dir,
            "inputs": {io.name: {"is_flag": io.is_flag, "arg_format": io.arg_format} for io in component.inputs or []},
            "params": {k: v for k, v in values.items() if k not in tuned}, "env": env, "to_env": to_env,
            "project": project, "globals": {"name": op.name or component.name or "run", "created_at": now,
                                            "compiled_at": now}}
    sample = {**values, **{k: 1 for k in tuned}}
    try:
        command_line(spec, sample, {k: "" for k in ("uuid", "iteration", "project_name", "project_unique_name",
                                                    "owner_name", "run_info", "context_path", "artifacts_path",
                                                    "store_path", "run_artifacts_path", "run_outputs_path",
                                                    "started_at", "is_independent", "name", "created_at",
                                                    "compiled_at")})
        if container.working_dir:
            render(container.working_dir, sample, {}, where="workingDir")
    except KeyError as e:
        raise PolyaxonError(f"{where}: run.container.{e.args[0]}") from None
    if not container.command and not container.args:
        raise PolyaxonError(f"{where}: run.container: needs a command (and args) to run")
    outputs = {io.name: io.type or "any" for io in component.outputs or []}
    trial_env = {"HPO_POLYAXON_RUN": json.dumps(spec), "HPO_POLYAXON_OUTPUTS": json.dumps(outputs),
                 **({"HPO_POLYAXON_METRIC": metric} if metric else {})}
    data: dict[str, Any] = {
        "experiment_name": op.name or component.name, "search_space": space, "trial_env": trial_env,
        "trial_command": "python3 -m hpo.polyaxon.launch",
        "trial_code_directory": str(base), "trial_concurrency": 1, "trial_gpu_number": _gpus(job, where),
        "project": project}
    if kubernetes:
        data["training_service"] = _pod_settings(job, op.namespace or component.namespace, service)
    if op.matrix is None:
        data["max_trial_number"] = 1
        data["tuner"] = {"name": "random", "class_args": {"optimize_mode": "maximize" if maximize else "minimize"}}
    else:
        try:
            data["tuner"], budget = _tuner(op, space, maximize)
        except PolyaxonError as e:
            raise PolyaxonError(f"{where}: {e}") from None
        data["max_trial_number"] = budget
        data["trial_concurrency"] = op.matrix.concurrency or 1
        data["early_stopping"], data["assessor"] = _early_stopping(op, notes)
    termination = op.termination or (component.termination.to_dict() if component.termination else None) or {}
    if termination.get("maxRetries") or termination.get("max_retries"):
        data["max_trial_retries"] = termination.get("maxRetries") or termination.get("max_retries")
    if termination.get("timeout"):
        data["max_trial_duration"] = termination["timeout"]
    from hpo.config import _merge
    try:
        config = ExperimentConfig.model_validate(_merge(hpo_config, {k: v for k, v in data.items() if v is not None}))
    except ConfigError as e:
        raise PolyaxonError(f"{where}: {e}") from None
    return Compiled(config, list(outputs), metric, [f"not honoured when running here: {', '.join(notes)}"]
                    if notes else [])
