"""The training-service contract: how the engine runs trials somewhere.

A service is started with a :class:`TrialEvents` sink and then asked to :meth:`launch` trials.
It reports, for each trial and in this order: ``started`` once the process runs, any number of
``metric`` calls, then exactly one ``ended``.  Metrics travel over the channel the service
already has with the trial (a pipe, an SSH channel, a log stream): a trial never connects to
the engine.
"""
from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

from training_services.gang import GangProcess

__all__ = ["TrialSpec", "TrialEvents", "TrainingService", "register_training_service", "create_training_service",
           "tail_lines", "failure_message"]


@dataclass
class TrialSpec:
    """Everything a service needs to run one trial."""

    experiment_id: str
    trial_id: str
    sequence_id: int
    parameters: dict[str, Any]
    command: str                  # shell command, run in ``code_dir``
    code_dir: Path
    trial_dir: Path               # the trial's folder under the experiment folder (logs, parameters)
    gpu_number: int = 0
    max_duration: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    attempt: int = 0              # how many earlier trials this one re-runs (``max_trial_retries``)
    processes: list[GangProcess] = field(default_factory=list)  # a distributed trial's gang (chief first); empty:
    distribution: str = "tensorflow"                              # one process running ``command``
    restore_checkpoint: Path | None = None  # a local folder: the checkpoint a re-run continues from
    warm_start: list[str] | None = None     # warm starts (local): modules the zygote preloads; None: cold starts


class TrialEvents(Protocol):
    """The engine's side: called from the engine's event loop, in order per trial."""

    def started(self, trial_id: str, pid: int | None, pgid: int | None, host: str | None,
                gpus: list[int] | None, processes: list[dict[str, Any]] | None = None) -> None:
        """The trial runs (a gang: every process runs; ``pid``/``host`` are the chief's and ``processes`` has
        ``name``, ``host``, ``port``, ``pid``, ``gpus`` of each)."""

    def metric(self, trial_id: str, kind: str, value: Any) -> None:
        """A report of the trial (of its chief, for a gang)."""

    def process_metric(self, trial_id: str, process: str, kind: str, value: Any) -> None:
        """A result reported by a gang's process other than the chief: stored and shown, not tuned on."""

    def ended(self, trial_id: str, status: str, exit_code: int | None, message: str | None) -> None: ...

    def waiting(self, trial_id: str, reason: str | None) -> None:
        """Optional, before ``started``: why the trial is not running yet (None: no reason any more)."""


class TrainingService(ABC):
    """Base class of every training service (registered by ``platform`` name)."""

    platform: ClassVar[str]

    @abstractmethod
    async def start(self, events: TrialEvents) -> None:
        """Prepare (connect, detect GPUs); raise ValueError with a clear message if unusable."""

    @abstractmethod
    async def launch(self, spec: TrialSpec) -> None:
        """Start a trial; may wait for resources (the trial stays WAITING meanwhile).

        Returns once the trial runs (``started`` was called) or has ended early.
        """

    @abstractmethod
    async def kill(self, trial_id: str, status: str = "USER_CANCELED", reason: str | None = None) -> None:
        """End a trial's whole process tree; it is reported ``ended`` with ``status``."""

    @abstractmethod
    async def stop(self, status: str = "SYS_CANCELED", reason: str | None = None) -> None:
        """Kill every trial and release resources; no trial process is alive afterwards."""

    def checkpoint_dir(self, spec: TrialSpec, storage: Path) -> str | None:
        """Where the trial writes its checkpoints (``HPO_CHECKPOINT_DIR``), or None when this service cannot
        collect them yet.  ``storage`` is the experiment's checkpoint folder on the engine's machine; a service
        whose trials see this machine's files returns it (checkpoints are then complete where they belong).

        A service that collects checkpoints moves them both ways: each one the trial reports is reported on
        (``metric(id, "checkpoint", report)``) once its files are whole in ``storage``, or with ``"error"`` in the
        report saying why they could not be brought there; and when ``spec.restore_checkpoint`` is set, the
        launch makes a copy of that folder readable to the trial and points ``HPO_RESTORE_CHECKPOINT`` at it."""
        return None

    async def adopt(self, experiment_id: str, records: list[dict[str, Any]]) -> set[str]:
        """On resume, after :meth:`start`: take over trials a dead engine left WAITING/RUNNING, where the
        platform keeps them running without the engine; returns the ids taken over (and removes what the
        platform still runs for this experiment that is not among ``records``).

        ``records`` are the store's rows of those trials plus ``steps``, the number of intermediate
        results already stored, and ``trial_dir``, the trial's folder.  An adopted trial then reports as if launched here: ``started`` (if it was
        WAITING), only the results not stored yet, and ``ended``.  The engine ends the others as
        interrupted and calls :meth:`leftover_cleanup` with them.  By default nothing is adopted."""
        return set()

    def leftover_cleanup(self, records: list[dict[str, Any]]) -> None:
        """After a crash: end processes of trials that a dead engine left running (best effort)."""


_SERVICES: dict[str, str] = {
    "local": "training_services.local:LocalTrainingService",
    "remote": "training_services.remote:RemoteTrainingService",
    "kubernetes": "training_services.kubernetes:KubernetesTrainingService",
}


def register_training_service(platform: str, target: str | type) -> None:
    """Make a service available by ``platform`` name (``'module:Class'`` or the class)."""
    _SERVICES[platform] = target  # type: ignore[assignment]


def create_training_service(platform: str, **kwargs: Any) -> TrainingService:
    """Instantiate the service registered as ``platform``."""
    import importlib
    target = _SERVICES.get(platform)
    if target is None:
        raise ValueError(f"training service {platform!r} is not supported; expected one of {', '.join(_SERVICES)}")
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
    factory: Callable[..., TrainingService] = target  # type: ignore[assignment]
    return factory(**kwargs)


def tail_lines(path: Path, n: int, width: int | None = None) -> list[str]:
    """The last ``n`` non-empty lines of a text file such as a trial's stderr.log (read from its last 8 KiB,
    right-stripped, cut to ``width`` characters), or [] if it cannot be read."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 8192))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line.rstrip()[:width] for line in text.splitlines() if line.strip()][-n:]


def failure_message(stderr_path: Path, code: int | None) -> str:
    """Why a trial failed: the last non-empty line of its stderr (usually the exception), else its exit code or
    the signal that killed it."""
    lines = tail_lines(stderr_path, 1)
    if lines:
        return lines[0].strip()[:500]
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
