"""``ExperimentsClient``: Gradient's experiments client over hpo's engine, registry and stores.

An experiment outlives the Python process that created it: ``create_*`` records it (status CREATED, no engine),
``start`` / ``run_*`` run its engine detached (``hpo resume ID`` in the background, as ``hpo create`` does), and
any process finds it again by id.  Reads go to the experiment's store (read-only); ``stop`` goes to the engine's
JSON API.  Every bad call raises a one-line :class:`~hpo.gradient.errors.GradientSdkError`.
"""
from __future__ import annotations

import datetime as dt
import functools
import inspect
import math
import os
import re
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from hpo.config import ConfigError
from hpo.experiment import Experiment  # (its import installs the excepthook printing our errors as one line)
from hpo.gradient.constants import MULTI_NODE_EXPERIMENT_TYPES_MAP, ExperimentType
from hpo.gradient.errors import GradientSdkError, UnhonouredFieldWarning
from hpo.gradient.logs import LogReader
from hpo.gradient.models import BaseExperiment, LogRow
from hpo.gradient.record import experiment_model, is_live, read_record, write_record
from hpo.gradient.translate import gradient_names, translate
from hpo.registry import ExperimentNotFound, all_experiments, lookup, unregister
from hpo.storage import EXPERIMENT_END_STATES, ExperimentStore, StoreError, StoreLocked, engine_running

__all__ = ["ExperimentsClient"]

_POLL, _STOP_TIMEOUT = 0.25, 60.0
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ExperimentsClient:
    """Gradient's ``ExperimentsClient``.  ``api_key`` (and Gradient's other arguments) are accepted and ignored:
    experiments run here, through hpo.  ``training_service`` (hpo's config value, default ``'local'``) is where
    their runs go; on ``'kubernetes'`` a container becomes the pods' image."""

    def __init__(self, api_key: str | None = None, ps_client_name: str | None = None, logger: Any = None, *,
                 training_service: str | dict[str, Any] | None = None) -> None:
        self.training_service = training_service or "local"

    # -- create and run ---------------------------------------------------------------------------------------
    def create_single_node(self, project_id: str, machine_type: str, command: str, ports: Any = None,
                           name: str | None = None, workspace_url: str | None = None, workspace_ref: str | None = None,
                           workspace_username: str | None = None, workspace_password: str | None = None,
                           datasets: Any = None, working_directory: str | None = None,
                           artifact_directory: str | None = None, cluster_id: str | None = None,
                           experiment_env: dict[str, Any] | None = None, model_type: str | None = None,
                           model_path: str | None = None, is_preemptible: bool = False, container: str | None = None,
                           container_user: str | None = None, registry_username: str | None = None,
                           registry_password: str | None = None, registry_url: str | None = None,
                           tags: list[str] | None = None) -> str:
        """Create (not start) a single-node experiment running ``command``; returns its id."""
        return self._create("single", _arguments(locals()), start=False)

    def create_multi_node(self, project_id: str, worker_container: str, worker_machine_type: str,
                          worker_command: str, worker_count: int, parameter_server_container: str,
                          parameter_server_machine_type: str, parameter_server_command: str,
                          parameter_server_count: int, name: str | None = None,
                          experiment_type_id: int | str = ExperimentType.GRPC_MULTI_NODE, ports: Any = None,
                          workspace_url: str | None = None, workspace_ref: str | None = None,
                          workspace_username: str | None = None, workspace_password: str | None = None,
                          datasets: Any = None, working_directory: str | None = None,
                          artifact_directory: str | None = None, cluster_id: str | None = None,
                          experiment_env: dict[str, Any] | None = None, model_type: str | None = None,
                          model_path: str | None = None, is_preemptible: bool = False,
                          worker_container_user: str | None = None, worker_registry_username: str | None = None,
                          worker_registry_password: str | None = None, worker_registry_url: str | None = None,
                          parameter_server_container_user: str | None = None,
                          parameter_server_registry_username: str | None = None,
                          parameter_server_registry_password: str | None = None,
                          parameter_server_registry_url: str | None = None, tags: list[str] | None = None) -> str:
        """Create (not start) a multi-node experiment: ``worker_count`` workers and ``parameter_server_count``
        parameter servers (GRPC: TensorFlow's environment).  ``experiment_type_id`` ``'MPI'`` (3) makes the
        parameter server the MPI master instead (see :meth:`create_mpi_multi_node`).  Returns its id."""
        return self._create("multi", _arguments(locals()), start=False)

    def create_mpi_multi_node(self, project_id: str, worker_container: str, worker_machine_type: str,
                              worker_command: str, worker_count: int, name: str | None = None,
                              master_container: str | None = None, master_machine_type: str | None = None,
                              master_command: str | None = None, master_count: int | None = None, ports: Any = None,
                              workspace_url: str | None = None, workspace_ref: str | None = None,
                              workspace_username: str | None = None, workspace_password: str | None = None,
                              datasets: Any = None, working_directory: str | None = None,
                              artifact_directory: str | None = None, cluster_id: str | None = None,
                              experiment_env: dict[str, Any] | None = None, model_type: str | None = None,
                              model_path: str | None = None, is_preemptible: bool = False,
                              worker_container_user: str | None = None, worker_registry_username: str | None = None,
                              worker_registry_password: str | None = None, worker_registry_url: str | None = None,
                              master_container_user: str | None = None, master_registry_username: str | None = None,
                              master_registry_password: str | None = None, master_registry_url: str | None = None,
                              tags: list[str] | None = None) -> str:
        """Create (not start) an MPI experiment: the master (rank 0) runs ``master_command`` (its ``mpirun``
        reads the hostfile in ``$HPO_MPI_HOSTFILE`` / ``OMPI_MCA_orte_default_hostfile``); the ``worker_count``
        workers are its hosts and run nothing themselves.  Returns its id."""
        return self._create("mpi", _arguments(locals()), start=False)

    def _create(self, method: str, params: dict[str, Any], start: bool) -> str:
        kind = _kind(method, params)
        if method == "multi" and kind == ExperimentType.MPI_MULTI_NODE:  # the parameter server is the master
            params = {re.sub(r"^parameter_server_", "master_", k): v for k, v in params.items()}
        config, record = translate(kind, params, self.training_service)
        experiment = Experiment(config=config)
        try:
            experiment_id = experiment.create()
        except ConfigError as exc:
            raise GradientSdkError(gradient_names(str(exc), kind, params)) from None
        try:
            write_record(experiment.directory, record)  # type: ignore[arg-type]
        except OSError as exc:
            _remove(experiment_id, experiment.directory)  # type: ignore[arg-type]
            raise GradientSdkError(f"cannot write to the experiment folder {experiment.directory}: "
                                   f"{exc.strerror or exc}") from None
        if start:
            self.start(experiment_id)
        return experiment_id

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self, experiment_id: str) -> None:
        """Start a created experiment, continue a stopped one (its interrupted run runs again), or run an ended
        one again (a new run; state and logs follow it).  Its engine runs in the background."""
        from hpo.detached import DetachedStartError, spawn
        with self._open(experiment_id) as (directory, _record, store):
            info = store.experiment()
            if is_live(directory, info):
                raise GradientSdkError(f"experiment {experiment_id} is already running")
            argv = ["resume", experiment_id]
            if info["status"] in EXPERIMENT_END_STATES and not any(t["interrupted"] == 1 for t in store.trials()):
                argv += ["--max-trials", str(store.counted_trials() + 1)]  # it ran to its end: one run more
        try:
            spawn("resume", argv, 0)
        except DetachedStartError as exc:
            raise GradientSdkError(f"experiment {experiment_id} could not start: {exc}") from None

    def stop(self, experiment_id: str) -> None:
        """Stop the experiment (CANCELLED, or STOPPED if its run had already succeeded) and return once its engine
        has exited; a created one is stopped without running.  Nothing happens to an experiment that has ended."""
        from hpo.abandoned import end_abandoned
        from hpo.api_client import ApiClient, ApiError
        with self._open(experiment_id) as (directory, _record, store):
            info = store.experiment()
            if info["status"] in EXPERIMENT_END_STATES:
                return
            if not engine_running(directory, info.get("pid")):  # created, or its engine died
                try:
                    end_abandoned(directory)
                    return
                except StoreLocked:  # an engine took it meanwhile: stop that one
                    pass
            info = _wait(store.experiment, lambda i: i.get("port") or i["status"] in EXPERIMENT_END_STATES,
                         f"experiment {experiment_id}'s engine to listen")
            if info["status"] not in EXPERIMENT_END_STATES:
                try:
                    ApiClient.for_experiment(directory, info).post("/experiment/stop")
                except ApiError as exc:
                    raise GradientSdkError(f"experiment {experiment_id}: {exc}") from None
            _wait(store.experiment, lambda i: i["status"] in EXPERIMENT_END_STATES, f"experiment {experiment_id} to stop")
        _exited(experiment_id, directory)

    def delete(self, experiment_id: str) -> None:
        """Stop the experiment if it runs, then remove it: its folder (store, logs, checkpoints kept there) and
        its registry entry.  Checkpoints saved under ``model_path`` are the user's and are kept."""
        self.stop(experiment_id)
        directory = lookup(experiment_id)
        _exited(experiment_id, directory)  # an engine that has just ended may still be closing its files
        _remove(experiment_id, directory)

    # -- reads ----------------------------------------------------------------------------------------------------
    def get(self, experiment_id: str) -> BaseExperiment:
        """The experiment: a SingleNodeExperiment, MultiNodeExperiment or MpiMultiNodeExperiment."""
        with self._open(experiment_id) as (directory, record, store):
            return experiment_model(experiment_id, directory, record, store)

    def list(self, project_id: str | list[str] | None = None, offset: int | None = None, limit: int | None = None,
             get_meta: bool = False, tags: list[str] | None = None) -> Any:
        """The Gradient experiments (oldest first), of project(s) ``project_id`` and with any of ``tags`` if
        given; ``offset`` / ``limit`` page them.  With ``get_meta``: ``(experiments, {"totalItems": n})``, n
        counted before paging."""
        projects = None if project_id is None else {project_id} if isinstance(project_id, str) else set(project_id)
        _check_int("offset", offset, 0, optional=True)
        _check_int("limit", limit, 1, optional=True)
        found = []
        for entry in all_experiments():
            directory, record = Path(str(entry["directory"])), read_record(str(entry["directory"]))
            if record is None or (projects is not None and record.get("project_id") not in projects):
                continue
            if tags and not set(tags) & set(record.get("tags") or ()):
                continue
            try:
                with ExperimentStore(directory, readonly=True) as store:
                    found.append(experiment_model(str(entry["id"]), directory, record, store))
            except (OSError, StoreError, LookupError):  # a folder removed or damaged meanwhile
                continue
        page = found[offset or 0:None if limit is None else (offset or 0) + limit]
        return (page, {"totalItems": len(found)}) if get_meta else page

    def logs(self, experiment_id: str, line: int = 1, limit: int = 10000) -> list[LogRow]:
        """Up to ``limit`` log rows from row ``line`` (1-based; 0 is read as 1, as Gradient's older SDK counted)."""
        _check_int("line", line, 0)
        _check_int("limit", limit, 1)
        with self._open(experiment_id) as (directory, _record, store):
            lines = LogReader(directory, store).read()
        first = max(line, 1)
        return [LogRow(n, message, None) for n, message in enumerate(lines[first - 1:first - 1 + limit], first)]

    def yield_logs(self, experiment_id: str, line: int = 1, limit: int = 10000) -> Iterator[LogRow]:
        """Every log row from row ``line`` on, as it is written, until the experiment ends (then the generator
        ends); each row once.  ``limit`` (Gradient's page size) is checked and otherwise unused.  An experiment
        that is not running (created, or ended) yields what it has and ends."""
        _check_int("line", line, 0)
        _check_int("limit", limit, 1)
        with self._open(experiment_id) as (directory, _record, _store):
            pass  # a bad id fails here, at the call
        return _follow(directory, max(line, 1))

    def get_metrics(self, experiment_id: str, start: dt.datetime | None = None, end: dt.datetime | None = None,
                    interval: str = "30s", built_in_metrics: list[str] | None = None) -> dict[str, Any]:
        """The results the experiment's runs reported, as Gradient's metrics:
        ``{metric: {process: [{"time_stamp": int, "value": str}, ...]}}`` (a number is metric ``default``, a dict
        result gives one metric per numeric key; process: the run's id, or a multi-node run's process name such as
        ``worker-0``).  ``start``/``end`` bound the times; points are not aggregated (``interval`` is unused);
        Paperspace's built-in machine metrics are not collected (a warning names them if asked for)."""
        if built_in_metrics:
            warnings.warn(f"hpo.gradient: built-in metrics are not collected: {', '.join(map(str, built_in_metrics))}",
                          UnhonouredFieldWarning, stacklevel=2)
        bounds = [None if t is None else t.timestamp() for t in (start, end)]
        series: dict[str, dict[str, list[dict[str, Any]]]] = {}
        with self._open(experiment_id) as (_directory, _record, store):
            for trial in store.trials():
                chief = trial["processes"][0]["name"] if trial["processes"] else trial["id"]
                reports = [(chief, m) for m in store.metrics(trial["seq"])]
                reports += [(m["process"], m) for m in store.process_metrics(trial["seq"])]
                for process, m in reports:
                    if (bounds[0] is not None and m["ts"] < bounds[0]) or (bounds[1] is not None and m["ts"] > bounds[1]):
                        continue
                    for metric, value in _numbers(m["data"]):
                        series.setdefault(metric, {}).setdefault(process, []).append(
                            {"time_stamp": int(m["ts"]), "value": str(value)})
        for processes in series.values():
            for points in processes.values():
                points.sort(key=lambda p: p["time_stamp"])
        return series

    def list_metrics(self, experiment_id: str, start: dt.datetime | None = None, end: dt.datetime | None = None,
                     interval: str = "30s") -> dict[str, Any]:
        """The same as :meth:`get_metrics`."""
        return self.get_metrics(experiment_id, start, end, interval)

    # -- helpers --------------------------------------------------------------------------------------------------
    @contextmanager
    def _open(self, experiment_id: str) -> Iterator[tuple[Path, dict[str, Any], ExperimentStore]]:
        """The folder, Gradient record and read-only store of Gradient experiment ``experiment_id``."""
        if not isinstance(experiment_id, str) or not _ID.fullmatch(experiment_id):
            raise GradientSdkError(f"experiment_id: got {experiment_id!r:.80}, expected an experiment id")
        try:
            directory = lookup(experiment_id)
        except ExperimentNotFound:
            raise GradientSdkError(f"no experiment with id {experiment_id!r}") from None
        record = read_record(directory)
        if record is None:
            if not (directory / "experiment.db").exists():
                raise GradientSdkError(f"experiment {experiment_id}: its folder {directory} is gone")
            raise GradientSdkError(f"experiment {experiment_id} is an hpo search, not a Gradient experiment; "
                                   "use hpo.client or the hpo CLI for it")
        try:
            with ExperimentStore(directory, readonly=True) as store:
                yield directory, record, store
        except FileNotFoundError:
            raise GradientSdkError(f"experiment {experiment_id}: its folder {directory} is gone") from None


def _arguments(scope: dict[str, Any]) -> dict[str, Any]:
    """A create method's arguments (its ``locals()``)."""
    return {k: v for k, v in scope.items() if k != "self"}


def _kind(method: str, params: dict[str, Any]) -> int:
    """The ExperimentType of a create call (``experiment_type_id``: 2, 3, 'GRPC' or 'MPI' for a multi-node one)."""
    if method != "multi":
        return ExperimentType.SINGLE_NODE if method == "single" else ExperimentType.MPI_MULTI_NODE
    value = params.get("experiment_type_id")
    if isinstance(value, str):
        if value.upper() not in MULTI_NODE_EXPERIMENT_TYPES_MAP:
            raise GradientSdkError(f"Invalid experiment type: experiment_type_id {value!r:.40}; expected 'GRPC' or "
                                   "'MPI'")
        return MULTI_NODE_EXPERIMENT_TYPES_MAP[value.upper()]
    if isinstance(value, bool) or value not in MULTI_NODE_EXPERIMENT_TYPES_MAP.values():
        raise GradientSdkError(f"Invalid experiment type: experiment_type_id {value!r:.40}; expected 'GRPC' (2) or "
                               "'MPI' (3)")
    return int(value)


def _run_of(create: Callable[..., str], method: str) -> Callable[..., str]:
    """``run_*``: the parameters of ``create``, but the experiment starts at once (Gradient's /experiments/run)."""
    @functools.wraps(create)
    def run(self: ExperimentsClient, *args: Any, **kwargs: Any) -> str:
        bound = inspect.signature(create).bind(self, *args, **kwargs)
        bound.apply_defaults()
        return self._create(method, _arguments(bound.arguments), start=True)
    run.__name__ = run.__qualname__ = create.__name__.replace("create_", "run_")
    run.__doc__ = (create.__doc__ or "").replace("Create (not start)", "Create and start")
    return run


ExperimentsClient.run_single_node = _run_of(ExperimentsClient.create_single_node, "single")  # type: ignore[attr-defined]
ExperimentsClient.run_multi_node = _run_of(ExperimentsClient.create_multi_node, "multi")  # type: ignore[attr-defined]
ExperimentsClient.run_mpi_multi_node = _run_of(ExperimentsClient.create_mpi_multi_node, "mpi")  # type: ignore


def _follow(directory: Path, first: int) -> Iterator[LogRow]:
    with ExperimentStore(directory, readonly=True) as store:
        reader = LogReader(directory, store)
        while True:
            info = store.experiment()
            finished = not is_live(directory, info)  # (created, ended or crashed) before reading: nothing is missed
            start = reader.lines + 1
            for n, message in enumerate(reader.read(), start):
                if n >= first:
                    yield LogRow(n, message, None)
            if finished:
                return
            time.sleep(_POLL)


def _wait(read: Callable[[], Any], done: Callable[[Any], bool], what: str) -> Any:
    """Poll ``read()`` until ``done`` holds for its value (which is returned); GradientSdkError after a minute."""
    deadline = time.monotonic() + _STOP_TIMEOUT
    while not done(value := read()):
        if time.monotonic() > deadline:
            raise GradientSdkError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def _exited(experiment_id: str, directory: Path) -> None:
    """Return once no engine holds the experiment (its writer lock is free)."""
    _wait(lambda: engine_running(directory), lambda running: not running, f"experiment {experiment_id}'s engine to exit")


def _remove(experiment_id: str, directory: Path) -> None:
    """Remove an experiment's folder (renamed first, so a half-removed one is never found) and registry entry."""
    doomed = directory.with_name(f".deleted-{directory.name}")
    try:
        os.replace(directory, doomed)
    except OSError as exc:
        raise GradientSdkError(f"cannot delete experiment {experiment_id}: {exc.strerror or exc}") from None
    unregister(experiment_id)
    shutil.rmtree(doomed, ignore_errors=True)


def _numbers(data: Any) -> Iterator[tuple[str, float]]:
    """The (metric, value) pairs of a reported result: a number is ``default``; a dict gives its numeric keys."""
    items = data.items() if isinstance(data, dict) else [("default", data)]
    for key, value in items:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield str(key), value


def _check_int(name: str, value: Any, least: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise GradientSdkError(f"{name}: got {value!r:.40}, expected an integer >= {least}")
