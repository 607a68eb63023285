"""``hpo.client``: a Determined-style Python SDK over hpo's experiments, checkpoints and model registry.

::

    from hpo import client
    exp = client.create_experiment(config="exp.yml", model_dir=".")
    exp.wait()                                   # ExperimentState.COMPLETED
    best = exp.top_checkpoint()                  # by the experiment's metric and mode
    best.download("out/")
    client.create_model("digits").register_version(best.uuid)

Reads go to each experiment's store (read-only), so every handle works on an experiment running in
this process, in another one, or finished long ago; actions (kill, pause, activate) go to the running
engine's JSON API (``hpo.api_client.ApiClient``).  Ids are hpo's: experiment and trial ids are strings;
a trial may be named ``"EXPID/TRIALID"`` where a bare id is ambiguous across experiments.

State maps (hpo -> Determined):

* experiment: CREATED (recorded, never started) -> PAUSED; INITIALIZED -> QUEUED; RUNNING, NO_MORE_TRIAL -> ACTIVE (PAUSED while paused);
  STOPPING -> STOPPING_CANCELED; DONE -> COMPLETED; STOPPED -> CANCELED; ERROR -> ERROR; an experiment
  whose engine died before it ended -> ERROR.
* trial: WAITING, RUNNING -> ACTIVE; SUCCEEDED, EARLY_STOPPED -> COMPLETED; FAILED -> ERROR;
  USER_CANCELED, SYS_CANCELED -> CANCELED.
* checkpoint: COMPLETED, ERROR, DELETED as stored.

The searcher metric of a checkpoint is the trial's ``default`` intermediate result at the checkpoint's
step (what the tuner and checkpoint GC rank by); with ``searcher.metric`` set by :func:`create_experiment`
and reported by the trial (a dict result holding that key), it is that key's value instead.

User mistakes raise one-line errors: ``ExperimentNotFound``, :class:`TrialNotFound`,
:class:`CheckpointNotFound`, :class:`CheckpointFilesMissing` (LookupError), :class:`CheckpointStateError`,
:class:`ExperimentNotActive` and ``hpo.config.ConfigError`` (ValueError), and the model registry's
``ModelNotFound`` / ``ModelExists`` / ``VersionNotFound``.
"""
from __future__ import annotations

import datetime as _dt
import enum
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from hpo.model_registry import ModelExists, ModelNotFound, ModelRegistry, VersionNotFound
from hpo.registry import ExperimentNotFound, all_experiments, lookup
from hpo.storage import ACTIVE_STATES, CREATED, EXPERIMENT_END_STATES, ExperimentStore, StoreError, engine_running, \
    maximizes

if TYPE_CHECKING:
    from hpo.checkpoint_storage import CheckpointStorage

__all__ = ["create_experiment", "get_experiment", "list_experiments", "get_trial", "get_checkpoint", "stream_trials_metrics",
           "create_model", "get_model", "get_models", "Experiment", "Trial", "Checkpoint",
           "CheckpointTrainingMetadata", "TrialMetrics", "Model", "ModelVersion", "ExperimentState", "TrialState",
           "CheckpointState", "CheckpointSortBy", "OrderBy", "ModelSortBy", "TrialNotFound", "CheckpointNotFound",
           "CheckpointFilesMissing", "CheckpointStateError", "ExperimentNotActive", "ExperimentNotFound",
           "ModelNotFound", "ModelExists", "VersionNotFound"]

SDK_FILE = "determined.json"  # what create_experiment keeps of the Determined keys (searcher.metric)


# -- enums and errors ---------------------------------------------------------------------------------------
class ExperimentState(enum.Enum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    STOPPING_COMPLETED = "STOPPING_COMPLETED"
    STOPPING_CANCELED = "STOPPING_CANCELED"
    STOPPING_ERROR = "STOPPING_ERROR"
    STOPPING_KILLED = "STOPPING_KILLED"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"
    ERROR = "ERROR"
    DELETED = "DELETED"
    DELETING = "DELETING"
    DELETE_FAILED = "DELETE_FAILED"
    QUEUED = "QUEUED"
    PULLING = "PULLING"
    STARTING = "STARTING"
    RUNNING = "RUNNING"


TERMINAL_STATES = frozenset({ExperimentState.COMPLETED, ExperimentState.CANCELED, ExperimentState.DELETED,
                             ExperimentState.ERROR})


class TrialState(enum.Enum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    STOPPING_CANCELED = "STOPPING_CANCELED"
    STOPPING_KILLED = "STOPPING_KILLED"
    STOPPING_COMPLETED = "STOPPING_COMPLETED"
    STOPPING_ERROR = "STOPPING_ERROR"
    CANCELED = "CANCELED"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"
    QUEUED = "QUEUED"
    PULLING = "PULLING"
    STARTING = "STARTING"
    RUNNING = "RUNNING"


class CheckpointState(enum.Enum):
    ACTIVE = "ACTIVE"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"
    DELETED = "DELETED"
    PARTIALLY_DELETED = "PARTIALLY_DELETED"


class CheckpointSortBy(enum.Enum):
    UUID = "UUID"
    TRIAL_ID = "TRIAL_ID"
    BATCH_NUMBER = "BATCH_NUMBER"  # steps_completed
    END_TIME = "END_TIME"  # report_time
    STATE = "STATE"
    SEARCHER_METRIC = "SEARCHER_METRIC"


class OrderBy(enum.Enum):
    ASCENDING = "ASC"
    ASC = "ASC"
    DESCENDING = "DESC"
    DESC = "DESC"


class ModelSortBy(enum.Enum):
    NAME = "name"
    DESCRIPTION = "description"
    CREATION_TIME = "creation_time"
    LAST_UPDATED_TIME = "last_updated_time"
    NUM_VERSIONS = "num_versions"


class TrialNotFound(LookupError):
    """No registered experiment has that trial (or a bare trial id names trials of several experiments)."""


class CheckpointNotFound(LookupError):
    """No registered experiment has a checkpoint with that uuid (or none matches the criteria)."""


class CheckpointFilesMissing(LookupError):
    """A checkpoint recorded COMPLETED whose files are gone from its storage (deleted outside hpo)."""


class CheckpointStateError(ValueError):
    """The checkpoint is not COMPLETED (it could not be saved, or was deleted by the GC policy)."""


class ExperimentNotActive(ValueError):
    """An action (kill, pause, activate) on an experiment whose engine is not running."""


_EXPERIMENT_STATES = {CREATED: ExperimentState.PAUSED, "INITIALIZED": ExperimentState.QUEUED, "RUNNING": ExperimentState.ACTIVE,
                      "NO_MORE_TRIAL": ExperimentState.ACTIVE, "STOPPING": ExperimentState.STOPPING_CANCELED,
                      "DONE": ExperimentState.COMPLETED, "STOPPED": ExperimentState.CANCELED,
                      "ERROR": ExperimentState.ERROR}
_TRIAL_STATES = {"WAITING": TrialState.ACTIVE, "RUNNING": TrialState.ACTIVE, "SUCCEEDED": TrialState.COMPLETED,
                 "EARLY_STOPPED": TrialState.COMPLETED, "FAILED": TrialState.ERROR,
                 "USER_CANCELED": TrialState.CANCELED, "SYS_CANCELED": TrialState.CANCELED}


# -- stores ---------------------------------------------------------------------------------------------------
class _Source:
    """One experiment's folder and read-only store, and what every handle on it needs."""

    def __init__(self, experiment_id: str) -> None:
        self.experiment_id = experiment_id
        self.directory = lookup(experiment_id)
        try:
            self.store = ExperimentStore(self.directory, readonly=True)
        except FileNotFoundError:
            raise ExperimentNotFound(f"experiment {experiment_id}: its folder {self.directory} is gone") from None

    def info(self) -> dict[str, Any]:
        return self.store.experiment()

    def live(self, info: dict[str, Any] | None = None) -> bool:
        """Whether the experiment's engine runs (it has not ended and holds its writer lock)."""
        info = info or self.info()
        return info["status"] not in EXPERIMENT_END_STATES and engine_running(self.directory, info.get("pid"))

    def maximize(self) -> bool:
        return maximizes(self.info()["config"])

    def checkpoint_storage(self) -> CheckpointStorage:
        """The experiment's checkpoint storage (as its config describes it)."""
        from hpo.checkpoint_storage import CheckpointStorage
        from hpo.config import CheckpointStorageConfig

        config = CheckpointStorageConfig.model_validate(self.info()["config"].get("checkpoint_storage") or {})
        return CheckpointStorage.for_config(config, self.directory)

    def searcher_metric(self) -> str | None:
        try:
            return json.loads((self.directory / SDK_FILE).read_text()).get("searcher_metric")
        except (OSError, ValueError):
            return None

    def client(self, action: str) -> Any:
        """An ApiClient on the running engine; ExperimentNotActive if it is not running."""
        from hpo.api_client import ApiClient

        info = self.info()
        if not self.live(info) or not info.get("port"):
            state = _experiment_state(self, info).value
            raise ExperimentNotActive(f"experiment {self.experiment_id} is not running ({state}); cannot {action} it")
        return ApiClient.for_experiment(self.directory, info)


_sources: dict[tuple[str, str], _Source] = {}


def _source(experiment_id: str) -> _Source:
    key = (str(lookup(experiment_id)), experiment_id)
    if key not in _sources:
        _sources[key] = _Source(experiment_id)
    return _sources[key]


def _all_sources() -> Iterator[_Source]:
    for entry in all_experiments():
        try:
            yield _source(str(entry["id"]))
        except LookupError:  # a registered experiment whose folder was removed
            continue


def _experiment_state(src: _Source, info: dict[str, Any]) -> ExperimentState:
    state = _EXPERIMENT_STATES.get(info["status"], ExperimentState.ERROR)
    if state in TERMINAL_STATES or info["status"] == CREATED:
        return state
    if not src.live(info):
        return ExperimentState.ERROR  # its engine died before the experiment ended
    if state is ExperimentState.ACTIVE and info.get("port"):
        from hpo.api_client import ApiError
        try:
            if src.client("read").get("/experiment").get("paused"):
                return ExperimentState.PAUSED
        except (ApiError, ExperimentNotActive):
            pass
    return state


# -- experiments ----------------------------------------------------------------------------------------------
class Experiment:
    """A handle on a registered experiment (Determined's ``Experiment``); attributes are read live."""

    def __init__(self, experiment_id: str, _handle: Any = None) -> None:
        self._src = _source(experiment_id)
        self._handle = _handle  # the hpo.Experiment running in this process, when create_experiment started it

    def __repr__(self) -> str:
        return f"<Experiment {self.id} {self.state.value}>"

    @property
    def id(self) -> str:
        return self._src.experiment_id

    @property
    def config(self) -> dict[str, Any]:
        """The experiment's stored config (hpo's keys, snake_case)."""
        return self._src.info()["config"]

    @property
    def name(self) -> str | None:
        return self._src.info()["name"]

    @property
    def project(self) -> str | None:
        """The experiment's project (config key ``project``), or None."""
        return self._src.info()["config"].get("project")

    @property
    def state(self) -> ExperimentState:
        return _experiment_state(self._src, self._src.info())

    @property
    def smaller_is_better(self) -> bool:
        """The experiment's mode: True when its tuner minimises (``optimize_mode: minimize``)."""
        return not self._src.maximize()

    def wait(self, interval: float = 5.0) -> ExperimentState:
        """Block until the experiment ends; returns COMPLETED, CANCELED or ERROR.  Raises ExperimentNotActive
        if it is (or becomes) PAUSED, as Determined does: activate it first."""
        while True:
            state = self.state
            if state in TERMINAL_STATES:
                if self._handle is not None:  # free this process's engine thread and dashboard port
                    self._handle.stop(quiet=True)
                    self._handle = None
                return state
            if state is ExperimentState.PAUSED:
                raise ExperimentNotActive(f"experiment {self.id} is paused; activate() it before waiting")
            time.sleep(interval)

    def kill(self) -> None:
        """Stop the experiment: running trials are cancelled, it ends CANCELED (and can be resumed)."""
        self._src.client("kill").post("/experiment/stop")

    def pause(self) -> None:
        """Launch no new trials; running trials continue.  :meth:`activate` undoes it."""
        self._src.client("pause").pause()

    def activate(self) -> None:
        """Launch trials again after :meth:`pause`."""
        self._src.client("activate").activate()

    def list_trials(self) -> list[Trial]:
        """Every trial, by sequence number."""
        return [Trial(self._src, rec["id"]) for rec in self._src.store.trials()]

    def list_checkpoints(self, sort_by: str | CheckpointSortBy | None = None, order_by: OrderBy | None = None,
                         max_results: int | None = None) -> list[Checkpoint]:
        """COMPLETED checkpoints sorted by ``sort_by`` (a CheckpointSortBy, or a metric key then metadata key:
        missing values last) in ``order_by``; both or neither.  Neither: best searcher metric first."""
        return _list(self._src, None, sort_by, order_by, max_results, completed_only=True)

    def top_checkpoint(self, sort_by: str | None = None, smaller_is_better: bool | None = None) -> Checkpoint:
        """The best COMPLETED checkpoint (by the searcher metric, or metric/metadata key ``sort_by``; in the
        experiment's mode unless ``smaller_is_better`` is given); CheckpointNotFound when there is none."""
        found = self.top_n_checkpoints(1, sort_by, smaller_is_better)
        if not found:
            raise CheckpointNotFound(f"experiment {self.id} has no completed checkpoint"
                                     f"{f' with a value for {sort_by!r}' if sort_by else ' with a searcher metric'}")
        return found[0]

    def top_n_checkpoints(self, limit: int, sort_by: str | None = None,
                          smaller_is_better: bool | None = None) -> list[Checkpoint]:
        """The best COMPLETED checkpoint of each of the ``limit`` best trials, best first (checkpoints without
        a value for the criterion are left out)."""
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"limit: expected an integer >= 1, got {limit!r}")
        smaller = self.smaller_is_better if smaller_is_better is None else smaller_is_better
        order = OrderBy.ASC if smaller else OrderBy.DESC
        ranked = _list(self._src, None, sort_by or CheckpointSortBy.SEARCHER_METRIC, order, None, completed_only=True)
        key = _sort_key(sort_by or CheckpointSortBy.SEARCHER_METRIC)
        best: dict[str, Checkpoint] = {}
        for ckpt in ranked:
            if key(ckpt) is not None:
                best.setdefault(ckpt.training.trial_id, ckpt)
        return list(best.values())[:limit]


def create_experiment(config: str | os.PathLike[str] | Mapping[str, Any], model_dir: str | os.PathLike[str] | None = None
                      ) -> Experiment:
    """Start an experiment from a YAML/JSON file or a dict (detached: its engine runs on a background thread of
    this process, its dashboard on a free port) and return its handle.

    NNI-style keys, plus the Determined keys that mean the same: ``searcher.metric`` (see the module doc),
    ``searcher.smaller_is_better`` (-> the tuner's ``optimize_mode``; Determined's default, true, applies when
    ``searcher`` is given and the tuner names no mode), ``max_trials`` (-> ``max_trial_number``) and
    ``max_concurrent_trials`` (-> ``trial_concurrency``), at the top level or under ``searcher``.  Another
    Determined key is a one-line ConfigError naming it.  ``model_dir`` is the trial code directory."""
    from hpo.config import ConfigError, ExperimentConfig, _normalise, _read_yaml
    from hpo.experiment import Experiment as _Experiment

    if isinstance(config, Mapping):
        where, raw = Path.cwd() / "<config>", dict(config)
    else:
        where = Path(config)
        raw = _read_yaml(where)
    data = _normalise(raw, where)
    searcher_metric = _translate_determined(data)
    if model_dir is not None:
        if data.get("trial_code_directory") is not None:
            raise ConfigError("config: give model_dir or trial_code_directory, not both")
        data["trial_code_directory"] = str(Path(model_dir).expanduser().resolve())
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    handle = _Experiment(config=cfg)
    handle.start(port=0)
    if searcher_metric is not None:
        (handle.directory / SDK_FILE).write_text(json.dumps({"searcher_metric": searcher_metric}))
    return Experiment(handle.id, _handle=handle)


_DETERMINED_ONLY = {"entrypoint": "use trial_command", "hyperparameters": "use search_space",
                    "name": "use experiment_name", "max_restarts": "use max_trial_retries",
                    "resources": "use trial_gpu_number / training_service", "environment": None, "bind_mounts": None,
                    "checkpoint_policy": "use checkpoint_storage.save_*", "data": None, "debug": "use log_level",
                    "description": None, "labels": None, "min_checkpoint_period": None,
                    "min_validation_period": None, "perform_initial_validation": None, "profiling": None,
                    "workspace": None, "records_per_epoch": None, "reproducibility": None,
                    "scheduling_unit": None, "optimizations": None, "notes": None, "log_policies": None,
                    "integrations": None, "preemption_timeout": None}
_SEARCHER_KEYS = ("metric", "smaller_is_better", "max_trials", "max_concurrent_trials")


def _translate_determined(data: dict[str, Any]) -> str | None:
    """Rewrite the Determined keys of ``data`` (snake_case, in place) into hpo's; returns searcher.metric."""
    from hpo.config import ConfigError

    for key, hint in _DETERMINED_ONLY.items():
        if key in data:
            raise ConfigError(f"config.{key}: a Determined key hpo does not support{f' ({hint})' if hint else ''}")
    searcher_given = "searcher" in data
    searcher = data.pop("searcher", None)
    if searcher is not None and not isinstance(searcher, Mapping):
        raise ConfigError(f"config.searcher: expected a mapping, got {type(searcher).__name__}")
    searcher = dict(searcher or {})
    for key in searcher:
        if key not in _SEARCHER_KEYS:
            hint = " (choose the algorithm with tuner: {name: ...})" if key == "name" else ""
            raise ConfigError(f"config.searcher.{key}: a Determined key hpo does not support{hint}; "
                              f"supported: {', '.join(_SEARCHER_KEYS)}")
    for det, ours in (("max_trials", "max_trial_number"), ("max_concurrent_trials", "trial_concurrency")):
        given = [v for v in (data.pop(det, None), searcher.pop(det, None)) if v is not None]
        if len(given) == 2 and given[0] != given[1]:
            raise ConfigError(f"config: {det} is given twice (top level and searcher) with different values")
        if given:
            if data.get(ours) is not None:
                raise ConfigError(f"config: give {det} or {ours}, not both")
            data[ours] = given[0]
    metric = searcher.get("metric")
    if metric is not None and (not isinstance(metric, str) or not metric):
        raise ConfigError(f"config.searcher.metric: expected a metric name, got {metric!r}")
    if searcher_given:
        smaller = searcher.get("smaller_is_better")
        if smaller is not None and not isinstance(smaller, bool):
            raise ConfigError(f"config.searcher.smaller_is_better: expected true or false, got {smaller!r}")
        tuner = data.get("tuner") or {}
        if not isinstance(tuner, dict):
            return metric  # ExperimentConfig reports the bad tuner
        args = dict(tuner.get("class_args") or {})
        named = args.get("optimize_mode")
        if smaller is not None:
            mode = "minimize" if smaller else "maximize"
            if named is not None and str(named).lower() != mode:
                raise ConfigError(f"config: searcher.smaller_is_better: {str(smaller).lower()} contradicts "
                                  f"tuner.class_args.optimize_mode: {named}")
            args["optimize_mode"] = mode
        elif named is None:
            args["optimize_mode"] = "minimize"  # Determined's default: smaller_is_better true
        data["tuner"] = {**tuner, "class_args": args}
    return metric


def get_experiment(experiment_id: str) -> Experiment:
    """A handle on any registered experiment (running here, in another process, or finished)."""
    return Experiment(str(experiment_id))


def list_experiments(name: str | None = None, project_id: str | None = None,
                     states: list[ExperimentState] | None = None) -> list[Experiment]:
    """The registered experiments (oldest first), only those named ``name``, of project ``project_id`` (hpo's
    projects are names: config key ``project``) and in one of ``states``, when given."""
    found = []
    for entry in all_experiments():
        try:
            src = _source(str(entry["id"]))
            info = src.info()
        except (LookupError, StoreError):  # a removed or damaged experiment is left out of a listing
            continue
        if (name is None or info["name"] == name) and (project_id is None or
                                                       info["config"].get("project") == project_id):
            if states is None or _experiment_state(src, info) in states:
                found.append(Experiment(src.experiment_id))
    return found


# -- trials ---------------------------------------------------------------------------------------------------
@dataclass
class TrialMetrics:
    """One report of a trial: an intermediate result is group ``validation`` at its step (1, 2, ...)."""

    trial_id: str
    trial_run_id: int
    steps_completed: int
    end_time: _dt.datetime
    metrics: dict[str, Any]
    group: str
    batch_metrics: list[Any] | None = None


class Trial:
    """A handle on one trial (Determined's ``Trial``); attributes are read live."""

    def __init__(self, src: _Source, trial_id: str) -> None:
        self._src, self.id = src, trial_id

    def __repr__(self) -> str:
        return f"<Trial {self.experiment_id}/{self.id} {self.state.value}>"

    def _rec(self) -> dict[str, Any]:
        rec = self._src.store.trial(self.id)
        assert rec is not None
        return rec

    @property
    def experiment_id(self) -> str:
        return self._src.experiment_id

    @property
    def hparams(self) -> dict[str, Any]:
        return self._rec()["parameters"]

    @property
    def state(self) -> TrialState:
        return _TRIAL_STATES[self._rec()["status"]]

    @property
    def summary_metrics(self) -> dict[str, Any]:
        """``{"final": the final result or None, "status": hpo's status}``."""
        rec = self._rec()
        return {"final": rec["final"], "status": rec["status"]}

    def get_experiment(self) -> Experiment:
        return Experiment(self.experiment_id)

    def kill(self) -> None:
        """End the running trial (USER_CANCELED)."""
        self._src.client("kill a trial of").post(f"/trials/{self.id}/kill")

    def list_checkpoints(self, sort_by: str | CheckpointSortBy | None = None, order_by: OrderBy | None = None,
                         max_results: int | None = None) -> list[Checkpoint]:
        """This trial's checkpoints in every state, sorted as :meth:`Experiment.list_checkpoints` sorts."""
        return _list(self._src, self._rec()["seq"], sort_by, order_by, max_results, completed_only=False)

    def select_checkpoint(self, latest: bool = False, best: bool = False, uuid: str | None = None,
                          sort_by: str | None = None, smaller_is_better: bool | None = None) -> Checkpoint | None:
        """Exactly one of ``latest`` (the COMPLETED one of the highest step), ``best`` (the best COMPLETED one by
        the searcher metric, or ``sort_by`` with ``smaller_is_better``) or ``uuid``; None when there is none."""
        if sum((bool(latest), bool(best), uuid is not None)) != 1:
            raise ValueError("select_checkpoint: give exactly one of latest=True, best=True or uuid=...")
        if (sort_by is None) != (smaller_is_better is None) or (sort_by is not None and not best):
            raise ValueError("select_checkpoint: sort_by and smaller_is_better go together, and only with best=True")
        seq = self._rec()["seq"]
        if uuid is not None:
            found = [c for c in _list(self._src, seq, None, None, None, completed_only=False) if c.uuid == uuid]
            if not found:
                raise CheckpointNotFound(f"trial {self.id} has no checkpoint {uuid!r}")
            return found[0]
        if latest:
            found = _list(self._src, seq, CheckpointSortBy.BATCH_NUMBER, OrderBy.DESC, 1, completed_only=True)
            return found[0] if found else None
        criterion = sort_by or CheckpointSortBy.SEARCHER_METRIC
        smaller = (not self._src.maximize()) if smaller_is_better is None else smaller_is_better
        ranked = _list(self._src, seq, criterion, OrderBy.ASC if smaller else OrderBy.DESC, None, completed_only=True)
        ranked = [c for c in ranked if _sort_key(criterion)(c) is not None]
        return ranked[0] if ranked else None

    def iter_logs(self, follow: bool = False) -> Iterator[str]:
        """The lines of the trial's stdout.log (without newlines); ``follow``: keep yielding appended lines until
        the trial ends."""
        path = self._src.directory / "trials" / self.id / "stdout.log"

        def ended() -> bool:
            return self._rec()["status"] not in ACTIVE_STATES or not self._src.live()
        while follow and not path.exists():
            if ended():
                return
            time.sleep(0.2)
        if not path.exists():
            return
        buffer = b""
        with open(path, "rb") as fh:
            while True:
                finished = not follow or ended()  # checked before reading: the last lines are read after it
                while chunk := fh.read(1 << 20):
                    *lines, buffer = (buffer + chunk).split(b"\n")
                    for raw in lines:
                        yield raw.decode("utf-8", "replace").rstrip("\r")
                if finished:
                    if buffer:
                        yield buffer.decode("utf-8", "replace").rstrip("\r")
                    return
                time.sleep(0.2)

    def iter_metrics(self, group: str = "validation") -> Iterator[TrialMetrics]:
        """This trial's reports, live until it ends (see :func:`stream_trials_metrics`)."""
        return _stream([self], group)


def get_trial(trial_id: str) -> Trial:
    """The trial ``trial_id`` (or ``"EXPID/TRIALID"``) of any registered experiment; TrialNotFound if none or
    if a bare id names trials of several experiments."""
    trial_id = str(trial_id)
    if "/" in trial_id:
        experiment_id, _, bare = trial_id.partition("/")
        src = _source(experiment_id)
        if src.store.trial(bare) is None:
            raise TrialNotFound(f"experiment {experiment_id} has no trial {bare!r}")
        return Trial(src, bare)
    found = [src for src in _all_sources() if src.store.trial(trial_id) is not None]
    if not found:
        raise TrialNotFound(f"no registered experiment has trial {trial_id!r}")
    if len(found) > 1:
        raise TrialNotFound(f"trial id {trial_id!r} is in experiments {', '.join(s.experiment_id for s in found)}; "
                            f"name it as EXPID/{trial_id}")
    return Trial(found[0], trial_id)


def stream_trials_metrics(trial_ids: list[str], group: str = "validation") -> Iterator[TrialMetrics]:
    """Every report of the given trials (ids or ``"EXPID/TRIALID"``) in order per trial, live while they run;
    ends once all of them have ended.  ``group``: ``"validation"`` (hpo's intermediate results)."""
    return _stream([get_trial(t) for t in trial_ids], group)


def _stream(trials: list[Trial], group: str) -> Iterator[TrialMetrics]:
    if group != "validation":
        raise ValueError(f"group: hpo trials report only 'validation' metrics (intermediate results), got {group!r}")
    seen = dict.fromkeys(range(len(trials)), 0)
    pending = set(seen)
    while pending:
        for i in sorted(pending):
            trial = trials[i]
            rec = trial._rec()
            done = rec["status"] not in ACTIVE_STATES or not trial._src.live()  # before reading: nothing is missed
            rows = trial._src.store.metrics(rec["seq"], "intermediate")
            for row in rows[seen[i]:]:
                yield TrialMetrics(trial.id, 0, row["step"], _datetime(row["ts"]), _as_metrics(row["data"]), group)
            seen[i] = len(rows)
            if done:
                pending.discard(i)
        if pending:
            time.sleep(0.2)


# -- checkpoints ----------------------------------------------------------------------------------------------
@dataclass
class CheckpointTrainingMetadata:
    experiment_config: dict[str, Any]
    experiment_id: str
    trial_id: str
    hparams: dict[str, Any]
    validation_metrics: dict[str, Any]  # {"avgMetrics": the trial's metrics at the checkpoint's step}


class Checkpoint:
    """A checkpoint (Determined's ``Checkpoint``): ``uuid``, ``report_time`` (ISO 8601, UTC), ``resources``
    (path -> bytes), ``metadata``, ``state``, ``training``; hpo adds ``steps_completed``, ``searcher_metric``
    and ``location`` (its folder, or its ``s3://`` URL)."""

    def __init__(self, row: dict[str, Any], training: CheckpointTrainingMetadata, searcher_metric: float | None,
                 src: _Source) -> None:
        self.uuid: str = row["uuid"]
        self.report_time: str = _datetime(row["report_time"]).isoformat()
        self.resources: dict[str, int] = row["resources"] or {}
        self.metadata: dict[str, Any] = row["metadata"] or {}
        self.state = CheckpointState(row["state"])
        self.steps_completed: int = row["steps_completed"]
        self.location: Path | str = row["location"] if row["location"].startswith("s3://") else Path(row["location"])
        self.training = training
        self.searcher_metric = searcher_metric
        self._report_ts: float = row["report_time"]
        self._src = src

    def __repr__(self) -> str:
        return f"<Checkpoint {self.uuid} {self.state.value} trial {self.training.trial_id} step {self.steps_completed}>"

    def download(self, path: str | os.PathLike[str] | None = None) -> str:
        """Copy the checkpoint's folder to ``path`` (default ``checkpoints/<uuid>``) and return it; a target that
        already holds ``metadata.json`` is left as it is.  CheckpointStateError unless COMPLETED;
        CheckpointFilesMissing when its files were deleted outside hpo."""
        target = Path(path) if path is not None else Path("checkpoints") / self.uuid
        if self.state is not CheckpointState.COMPLETED:
            raise CheckpointStateError(f"checkpoint {self.uuid} is {self.state.value}; only a COMPLETED checkpoint "
                                       f"can be downloaded")
        if (target / "metadata.json").exists():
            return str(target)
        storage = self._src.checkpoint_storage()
        if isinstance(self.location, Path):
            missing = [name for name in self.resources if not (self.location / name).is_file()]
            what = "its folder is gone" if not self.location.is_dir() else None if not missing else \
                f"{missing[0]!r}{f' and {len(missing) - 1} more' if len(missing) > 1 else ''} missing"
        else:
            what = None if storage.exists(self.location) else "its metadata.json is gone"
        if what is not None:
            raise CheckpointFilesMissing(f"checkpoint {self.uuid}: {what} in {self.location} (deleted outside hpo?)")
        target.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.uuid}.", dir=target))
        try:
            storage.download(str(self.location), staging)
            if not (staging / "metadata.json").exists():
                (staging / "metadata.json").write_text(json.dumps(self.metadata))
            row = self._src.store.checkpoint(self.uuid)
            if row is None or row["state"] != "COMPLETED":  # the GC policy removed it while we copied
                raise CheckpointStateError(f"checkpoint {self.uuid} was deleted while it was being downloaded")
            names = sorted(os.listdir(staging), key=lambda n: n == "metadata.json")  # metadata.json last
            for name in names:
                os.replace(staging / name, target / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return str(target)


def get_checkpoint(uuid: str) -> Checkpoint:
    """The checkpoint ``uuid`` of any registered experiment; CheckpointNotFound if none has it."""
    for src in _all_sources():
        row = src.store.checkpoint(uuid)
        if row is not None:
            return _checkpoints(src, [row])[0]
    raise CheckpointNotFound(f"no registered experiment has a checkpoint {uuid!r} (see `hpo checkpoints ID`)")


def _checkpoints(src: _Source, rows: list[dict[str, Any]]) -> list[Checkpoint]:
    """Checkpoint objects for store rows, with each one's metrics at its step."""
    config = src.info()["config"]
    metric = src.searcher_metric()
    per_trial: dict[int, tuple[dict[str, Any], dict[int, dict[str, Any]]]] = {}
    out = []
    for row in rows:
        seq = row["trial_seq"]
        if seq not in per_trial:
            rec = src.store.trial(seq)
            steps = {m["step"]: _as_metrics(m["data"]) for m in src.store.metrics(seq, "intermediate")}
            per_trial[seq] = (rec or {}, steps)
        rec, steps = per_trial[seq]
        metrics = steps.get(row["steps_completed"], {})
        value = metrics.get(metric) if metric is not None and isinstance(metrics.get(metric), (int, float)) \
            else row["value"]
        training = CheckpointTrainingMetadata(config, src.experiment_id, row["trial_id"], rec.get("parameters") or {},
                                              {"avgMetrics": metrics})
        out.append(Checkpoint(row, training, value, src))
    return out


def _sort_key(sort_by: str | CheckpointSortBy) -> Any:
    if isinstance(sort_by, CheckpointSortBy):
        return {CheckpointSortBy.UUID: lambda c: c.uuid, CheckpointSortBy.TRIAL_ID: lambda c: c.training.trial_id,
                CheckpointSortBy.BATCH_NUMBER: lambda c: c.steps_completed,
                CheckpointSortBy.END_TIME: lambda c: c._report_ts, CheckpointSortBy.STATE: lambda c: c.state.value,
                CheckpointSortBy.SEARCHER_METRIC: lambda c: c.searcher_metric}[sort_by]
    if not isinstance(sort_by, str) or not sort_by:
        raise ValueError(f"sort_by: expected a CheckpointSortBy or a metric/metadata key, got {sort_by!r}")

    def key(c: Checkpoint) -> Any:
        metrics = c.training.validation_metrics["avgMetrics"]
        return metrics[sort_by] if sort_by in metrics else c.metadata.get(sort_by)
    return key


def _list(src: _Source, seq: int | None, sort_by: str | CheckpointSortBy | None, order_by: OrderBy | None,
          max_results: int | None, completed_only: bool) -> list[Checkpoint]:
    if (sort_by is None) != (order_by is None):
        raise ValueError("list_checkpoints: give sort_by and order_by together, or neither")
    if order_by is not None and not isinstance(order_by, OrderBy):
        raise ValueError(f"order_by: expected an OrderBy, got {order_by!r}")
    if max_results is not None and (not isinstance(max_results, int) or max_results < 0):
        raise ValueError(f"max_results: expected an integer >= 0, got {max_results!r}")
    if sort_by is None:
        sort_by = CheckpointSortBy.SEARCHER_METRIC
        order_by = OrderBy.DESC if src.maximize() else OrderBy.ASC
    key = _sort_key(sort_by)
    ckpts = _checkpoints(src, src.store.checkpoints(seq, state="COMPLETED" if completed_only else None))
    present = [c for c in ckpts if key(c) is not None]
    try:
        present.sort(key=key, reverse=order_by.value == "DESC")  # stable: ties stay in report order
    except TypeError:
        raise ValueError(f"sort_by {sort_by!r}: its values are of mixed types and cannot be ordered") from None
    ranked = present + [c for c in ckpts if key(c) is None]  # missing values last
    return ranked if max_results is None else ranked[:max_results]


def _as_metrics(data: Any) -> dict[str, Any]:
    return dict(data) if isinstance(data, dict) else {"default": data}


def _datetime(ts: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc)


# -- model registry -------------------------------------------------------------------------------------------
class ModelVersion:
    """A version of a model, pointing at a checkpoint (Determined's ``ModelVersion``)."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.model_name: str = record["model_name"]
        self.model_version: int = record["version"]
        self.checkpoint_uuid: str = record["checkpoint_uuid"]
        self.name: str | None = record["name"]
        self.comment: str | None = record["comment"]
        self.notes: str | None = record["notes"]
        self.metadata: dict[str, Any] = record["metadata"]
        self.creation_time: float = record["creation_time"]

    def __repr__(self) -> str:
        return f"<ModelVersion {self.model_name} v{self.model_version} -> {self.checkpoint_uuid}>"

    @property
    def checkpoint(self) -> Checkpoint:
        return get_checkpoint(self.checkpoint_uuid)

    def set_name(self, name: str) -> None:
        with ModelRegistry() as reg:
            self.name = reg.set_version_name(self.model_name, self.model_version, name)["name"]

    def set_notes(self, notes: str) -> None:
        with ModelRegistry() as reg:
            self.notes = reg.set_version_notes(self.model_name, self.model_version, notes)["notes"]

    def delete(self) -> None:
        """Delete this version; its checkpoint is no longer protected from GC by it."""
        with ModelRegistry() as reg:
            reg.delete_version(self.model_name, self.model_version)


class Model:
    """A named model of the registry (Determined's ``Model``); attributes are read live."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<Model {self.name}>"

    def _record(self) -> dict[str, Any]:
        with ModelRegistry() as reg:
            return reg.get_model(self.name)

    @property
    def description(self) -> str:
        return self._record()["description"]

    @property
    def metadata(self) -> dict[str, Any]:
        return self._record()["metadata"]

    @property
    def labels(self) -> list[str]:
        return self._record()["labels"]

    @property
    def creation_time(self) -> float:
        return self._record()["creation_time"]

    @property
    def last_updated_time(self) -> float:
        return self._record()["last_updated_time"]

    @property
    def archived(self) -> bool:
        return self._record()["archived"]

    def register_version(self, checkpoint_uuid: str) -> ModelVersion:
        """Add the next version (1, 2, ...) pointing at a COMPLETED checkpoint; from then on the checkpoint is
        never removed by checkpoint GC.  CheckpointNotFound / CheckpointStateError otherwise."""
        ckpt = get_checkpoint(checkpoint_uuid)
        if ckpt.state is not CheckpointState.COMPLETED:
            raise CheckpointStateError(f"checkpoint {checkpoint_uuid} is {ckpt.state.value}; only a COMPLETED "
                                       f"checkpoint can be registered")
        with ModelRegistry() as reg:
            return ModelVersion(reg.register_version(self.name, checkpoint_uuid,
                                                     experiment_id=ckpt.training.experiment_id,
                                                     trial_id=ckpt.training.trial_id))

    def get_version(self, version: int = -1) -> ModelVersion | None:
        """Version ``version`` (-1: the latest); None when the model has no versions."""
        with ModelRegistry() as reg:
            record = reg.get_version(self.name, version)
        return ModelVersion(record) if record is not None else None

    def list_versions(self, order_by: OrderBy = OrderBy.DESC) -> list[ModelVersion]:
        with ModelRegistry() as reg:
            return [ModelVersion(r) for r in reg.list_versions(self.name, order_by.value.lower())]

    def set_description(self, description: str) -> None:
        with ModelRegistry() as reg:
            reg.set_description(self.name, description)

    def add_metadata(self, metadata: dict[str, Any]) -> None:
        with ModelRegistry() as reg:
            reg.add_metadata(self.name, metadata)

    def remove_metadata(self, keys: list[str]) -> None:
        with ModelRegistry() as reg:
            reg.remove_metadata(self.name, keys)

    def set_labels(self, labels: list[str]) -> None:
        with ModelRegistry() as reg:
            reg.set_labels(self.name, labels)

    def archive(self) -> None:
        with ModelRegistry() as reg:
            reg.archive(self.name)

    def unarchive(self) -> None:
        with ModelRegistry() as reg:
            reg.unarchive(self.name)

    def delete(self) -> None:
        with ModelRegistry() as reg:
            reg.delete_model(self.name)


def create_model(name: str, description: str = "", metadata: dict[str, Any] | None = None) -> Model:
    """Register a new model; ModelExists if the name is taken."""
    with ModelRegistry() as reg:
        reg.create_model(name, description, metadata)
    return Model(name)


def get_model(identifier: str) -> Model:
    """The model named ``identifier``; ModelNotFound if there is none."""
    with ModelRegistry() as reg:
        reg.get_model(identifier)
    return Model(identifier)


def get_models(sort_by: ModelSortBy = ModelSortBy.NAME, order_by: OrderBy = OrderBy.ASCENDING, name: str = "",
               description: str = "") -> list[Model]:
    """Every model, sorted; ``name`` / ``description`` keep those containing it (case-insensitive)."""
    with ModelRegistry() as reg:
        records = reg.list_models(sort_by.value, order_by.value.lower(), name=name or None)
    return [Model(r["name"]) for r in records if description.lower() in r["description"].lower()]
