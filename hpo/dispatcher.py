"""The engine: one asyncio loop per experiment that asks the tuner, runs trials and records everything.

Contract:

* every state change is committed to the store before it is acted on (a trial row exists before
  its process starts; a result is stored before the tuner hears of it);
* the parameters stored for a trial are the ones its process received, and results are matched to
  trials by the channel they arrive on, never by order;
* tuner calls run one at a time, in order, on a worker thread, so a slow tuner never stalls the
  loop (the dashboard stays responsive);
* the engine ends on ``max_trial_number``, ``max_experiment_duration``, or a tuner with nothing left;
  a tuner exception ends it as ERROR with the message;
* a store that cannot be written (disk full) ends it as ERROR too: trials are stopped, the message
  says which file, and nothing half-written is left (it can be resumed once there is space);
* the running time is persisted every ``HEARTBEAT_SECONDS``, so a crash does not reset the
  ``max_experiment_duration`` budget;
* a trial whose final result is stored is finished, whatever happens to its process afterwards.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import functools
import json
import logging
import numbers
import secrets
import shlex
import string
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Coroutine

from hpo.storage import ACTIVE_STATES, EXPERIMENT_END_STATES, FINISHED_STATES, ExperimentStore, StoreError
from hpo.templates import render_command
from hpo.trial import scalar
from hpo.checkpoint_storage import CheckpointStorage, CheckpointStorageError, remove_matching
from hpo.trial_checkpoint import partial_name
from training_services.base import TrainingService, TrialSpec, tail_lines
from training_services.gang import GangProcess, gang_processes
from hpo.early_stopping import threshold_reached
from tuners.assessor import Assessor, is_bad
from tuners.base import NoMoreTrials, Tuner, TryLater

__all__ = ["Engine", "new_id"]

log = logging.getLogger("hpo.engine")
_ID_ALPHABET = string.ascii_letters + string.digits
INLINE_CALL_LIMIT = 0.002  # s: a loop-safe tuner's calls run on the loop while its last 8 took less
FUNCTION_FILE = "trial_function.pkl"
HEARTBEAT_SECONDS = 1.0
# a trial that could not start for one of these is the engine's problem, not the trial's: it is re-queued
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN})
_MAX_RESOURCE_FAILURES = 20  # in a row, before the experiment ends as ERROR
FAIL_FAST_TRIALS = 5  # when the first this many trials all fail, the experiment ends (ERROR): a broken command
_STDERR_TAIL_LINES = 5


def new_id(n: int = 8, alphabet: str = string.ascii_lowercase + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _loop_safe(owner: Any) -> bool:
    """A built-in tuner or assessor whose methods may run on the engine's loop (see ``Tuner.loop_safe``); never a
    subclass defined elsewhere (it may block)."""
    return bool(getattr(owner, "loop_safe", False)) and type(owner).__module__.startswith("tuners.")


@dataclass
class _Active:
    seq: int
    trial_id: str
    parameters: dict[str, Any]
    steps: int = 0
    final_seen: bool = False
    final_value: float | None = None
    final_note: str | None = None  # why a reported final result is not used for tuning
    history: list[float] = field(default_factory=list)  # scalar intermediate values, for assessors


class Engine:
    """Runs one experiment on the current event loop (see :meth:`run`).

    Args:
        experiment_id: the experiment's id.
        directory: the experiment folder (store, trial folders, logs).
        config: a validated ``ExperimentConfig``.
        tuner: the tuner instance.
        service: the training service.
        store: the experiment's store, opened for writing.
    """

    def __init__(self, experiment_id: str, directory: Path, config: Any, tuner: Tuner, service: TrainingService,
                 store: ExperimentStore, assessor: Assessor | None = None) -> None:
        self.experiment_id = experiment_id
        self.assessor = assessor
        self._goal_reached: str | None = None
        self.directory = Path(directory)
        self.config = config
        self.tuner = tuner
        self.service = service
        self.store = store
        self.status = "INITIALIZED"
        self.message: str | None = None
        self.active: dict[str, _Active] = {}
        self._launching: set[str] = set()  # trials whose launch task runs (each is active too, until it ends)
        self._rerun: list[tuple[int, dict[str, Any]]] = []
        self._custom: list[dict[str, Any]] = []
        self._exhausted = False
        self._wait_for_result = False
        self._stopping = False
        self.paused = False  # pause(): no new trials are launched; running ones continue
        self._deadline_hit = False
        self._error: str | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tuner_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hpo-tuner")
        self._pool_queued = 0  # tuner and assessor calls given to the tuner's thread and not done yet
        self._call_times: collections.deque[float] = collections.deque(maxlen=8)  # the last calls' durations (s)
        self._listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self._started_monotonic = 0.0
        self._prior_seconds = 0.0
        self._resource_failures = 0
        self._store_failed = False
        self._unrecorded: list[tuple[Any, ...]] = []  # trial ends the store could not take, retried at the end
        self._storage = CheckpointStorage.for_config(config.checkpoint_storage, self.directory)
        self._writes_checkpoints: dict[str, bool] = {}  # trial id -> a re-run (it may have a restored copy)
        self._storage_tasks: dict[asyncio.Task[None], int | None] = {}  # uploads (by trial seq) and deletions
        self.first_trial_started = asyncio.Event()
        self.running = asyncio.Event()  # set once trials may start (the service is up)
        self.start_error: str | None = None  # why the experiment could not start, if it could not

    # -- public, called on the loop ------------------------------------------------------------------
    def subscribe(self, callback: Callable[[str, dict[str, Any]], None]) -> Callable[[], None]:
        """Call ``callback(kind, data)`` on every change; returns an unsubscribe function."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    def request_stop(self) -> None:
        """Begin a graceful stop: running trials are cancelled (and re-run on resume)."""
        if not self._stopping and self.status not in EXPERIMENT_END_STATES:
            self._stopping = True
            self._poke()
            self._set_status("STOPPING")

    def update_config(self, **changes: Any) -> None:
        """Apply validated config changes (concurrency, max trials, duration, search space); they are
        recorded first, and nothing changes if they cannot be (StoreError)."""
        before = {key: getattr(self.config, key) for key in changes}
        for key, value in changes.items():
            setattr(self.config, key, value)
        try:
            self.store.set_config(self.config.to_dict())
        except StoreError:
            for key, value in before.items():
                setattr(self.config, key, value)
            raise
        if "search_space" in changes:
            self._tuner_submit(self.tuner.update_search_space, self.config.search_space)
            self._exhausted = False
        if "max_trial_number" in changes or "max_experiment_duration" in changes:
            if self.status == "NO_MORE_TRIAL" and not self._exhausted:
                self._set_status("RUNNING")
        self._publish("config", changes if "search_space" not in changes else {"search_space": True})
        self._poke()

    def submit_custom(self, parameters: dict[str, Any]) -> None:
        """Queue a trial with the given parameters (ahead of the tuner's suggestions)."""
        self._custom.append(parameters)
        self._poke()

    def rerun_trials(self, trial_ids: list[str] | None = None) -> list[str]:
        """Queue ended trials to run again with the same parameters (ahead of the tuner's suggestions).

        ``None`` re-runs every FAILED trial; given ids may also name cancelled trials.  A trial that
        was already re-run (or is queued) is skipped.  The new trial records ``rerun_of`` and replaces
        the old one in the count against ``max_trial_number``.  Returns the ids queued."""
        allowed = ("FAILED",) if trial_ids is None else ("FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED")
        records = self.store.trials(status="FAILED") if trial_ids is None else \
            [r for r in (self.store.trial(t) for t in dict.fromkeys(trial_ids)) if r is not None]
        queued_seqs = {seq for seq, _ in self._rerun}
        queued: list[str] = []
        for rec in records:
            if rec["status"] in allowed and rec["interrupted"] == 0 and rec["seq"] not in queued_seqs:
                self._rerun.append((rec["seq"], rec["parameters"]))
                queued_seqs.add(rec["seq"])
                queued.append(rec["id"])
        if queued:
            log.info("re-running %d trial(s): %s", len(queued), ", ".join(queued))
            if self.status == "NO_MORE_TRIAL":
                self._set_status("RUNNING")
            self._poke()
        return queued

    def pause(self) -> None:
        """Launch no new trials until :meth:`activate`; running trials continue and the status stays as it is."""
        if not self.paused:
            self.paused = True
            log.info("experiment paused: no new trials are launched")
            self._publish("config", {"paused": True})

    def activate(self) -> None:
        """Undo :meth:`pause`: trials are launched again."""
        if self.paused:
            self.paused = False
            log.info("experiment activated: trials are launched again")
            self._publish("config", {"paused": False})
            self._poke()

    async def kill_trial(self, trial_id: str) -> bool:
        if trial_id not in self.active:
            return False
        await self.service.kill(trial_id, "USER_CANCELED", "killed by user")
        return True

    # -- main ----------------------------------------------------------------------------------------
    async def run(self, resume: bool = False) -> str:
        """Run until the experiment ends; returns the final status.

        If it cannot start (the service is unusable, the tuner rejects the space), ``start_error``
        says why; a resumed experiment then keeps the status it had (a DONE one stays DONE)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        previous: dict[str, Any] | None = None
        heartbeat: asyncio.Task[None] | None = None
        try:
            self._started_monotonic = time.monotonic()
            if resume:
                previous = self.store.experiment()
                self._prior_seconds = self.store.elapsed_seconds()
            self.store.set_config(self.config.to_dict())
            await self._tuner_call(self.tuner.update_search_space, self.config.search_space)
            await self.service.start(self)
            check, check_gang = (getattr(self.service, name, None) for name in ("check_gpu_request", "check_gang"))
            if self._gang and check_gang is not None:  # can the gang ever be placed at once?
                check_gang(self._gang)
            elif check is not None:
                check(self.config.trial_gpu_total)
            if resume:
                await self._prepare_resume()
                # replay every trial that ran (value None: ended without a usable result)
                records = self.store.tuner_history()
                if records:
                    await self._tuner_call(self.tuner.import_data, records)
                del records  # not held while the experiment runs (100,000 trials: tens of MB)
                if self.assessor is not None:
                    await self._tuner_call(self._replay_assessor)
            self._set_status("RUNNING")
            self.running.set()
            heartbeat = self._loop.create_task(self._heartbeat())
            await self._main()
        except Exception as exc:  # tuner / service / store failure: never hang in RUNNING
            if self._error is None:
                self._error = _describe(exc)
            if isinstance(exc, (StoreError, ValueError)):
                log.error("engine failed: %s", self._error)
            else:
                log.exception("engine failed")
        if heartbeat is not None:
            heartbeat.cancel()
        if self._error is not None:
            await self._stop_service("experiment failed")
            if self._store_failed:  # the trials are stopped: nothing else writes now
                self.store.release_reserve()
                self._store_failed = False
                for write in self._unrecorded:
                    self._guarded(*write)
            if not self.running.is_set():
                self.start_error = self._error
            if previous is not None and not self.running.is_set():  # a resume that could not start
                self._set_status(previous["status"], previous["message"], restore=True)
            else:
                self._set_status("ERROR", self._error)
        else:
            await self._stop_service("experiment ended")  # releases connections, GPUs
            if not self._stopping:  # the last results and trial ends reach the tuner (a user's may save its state)
                drain = asyncio.get_running_loop().run_in_executor(None, self._tuner_pool.shutdown, True)
                try:
                    await asyncio.wait_for(asyncio.shield(drain), 30)
                except asyncio.TimeoutError:
                    log.warning("the tuner did not take the last trials' ends within 30 s; not waiting for it")
        self._tuner_pool.shutdown(wait=False, cancel_futures=True)
        return self.status

    async def _stop_service(self, reason: str) -> None:
        """Stop every trial, then wait for the checkpoint uploads and deletions they left in flight."""
        try:
            await self.service.stop("SYS_CANCELED", reason)
        except Exception as exc:  # the experiment ends anyway; what could not be stopped is in the log
            log.error("training service failed to stop: %s", _describe(exc))
        await self._drain_storage()

    async def _heartbeat(self) -> None:
        """Persist the running time every HEARTBEAT_SECONDS (a crash costs at most that much budget)."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            self._guarded(self.store.record_elapsed, self._elapsed())

    def _elapsed(self) -> float:
        return self._prior_seconds + (time.monotonic() - self._started_monotonic)

    async def _main(self) -> None:
        assert self._wake is not None
        while True:
            # cleared before the checks, not after: a poke while they run (a stop requested while the tuner
            # was asked for parameters) keeps the event set, and the wait below returns at once
            self._wake.clear()
            if self._error is not None:
                return
            if self._stopping:
                await self._stop_service("experiment stopped")
                self._set_status("STOPPED")
                return
            if self._goal_reached is not None:
                await self._stop_service(self._goal_reached)
                self._finish(self._goal_reached)
                return
            remaining = self._time_left()
            if remaining is not None and remaining <= 0:
                self._deadline_hit = True
                await self._stop_service("max_experiment_duration reached")
                self._finish("max_experiment_duration reached")
                return
            await self._fill_slots()
            if self._error is not None or self._stopping:  # changed while the tuner was asked: see above
                continue
            if not self.active and not self._launching and not self._can_submit():
                await self._drain_storage()
                self._finish(None)
                return
            if not self._can_submit() and self.status == "RUNNING":
                self._set_status("NO_MORE_TRIAL")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                pass

    def _finish(self, reason: str | None) -> None:
        """End as DONE; an experiment whose trials all failed ends as ERROR instead (never a green DONE)."""
        counts = self.store.status_counts()
        failed = counts["FAILED"]
        finished = sum(counts[s] for s in ("SUCCEEDED", "FAILED", "EARLY_STOPPED"))
        if finished and failed == finished:
            self._set_status("ERROR", f"all {failed} trials failed; {self._first_failure()}")
            return
        message = reason
        if self._exhausted and reason is None:
            message = "the tuner has nothing left to suggest"
        no_result = self.store.count_without_result()
        if no_result:
            note = f"{no_result} trial{'s' * (no_result != 1)} succeeded without a final result"
            message = f"{message}; {note}" if message else note
        self._set_status("DONE", message)

    def _time_left(self) -> float | None:
        limit = self.config.max_experiment_duration_seconds
        if limit is None:
            return None
        return limit - self._elapsed()

    def _can_submit(self) -> bool:
        if self._stopping or self._deadline_hit or self._goal_reached is not None:
            return False
        if self._rerun or self._custom:
            return True
        if self._exhausted:
            return False
        limit = self.config.max_trial_number
        return limit is None or self.store.counted_trials() < limit

    def _slots_taken(self) -> int:
        """Trials that hold a slot: the active ones, and those that ended while their launch still runs (their
        process may yet start).  A launching trial is active as well: counted once."""
        return len(self.active) + sum(1 for trial_id in self._launching if trial_id not in self.active)

    async def _fill_slots(self) -> None:
        while (not self.paused and self._slots_taken() < self.config.trial_concurrency and self._can_submit()
               and self._error is None):
            rerun_of, continues = None, None
            seq = self.store.next_seq()
            if self._rerun:
                rerun_of, params = self._rerun.pop(0)
            elif self._custom:
                params = self._custom.pop(0)
            else:
                if self._wait_for_result:
                    return
                try:
                    params = await self._tuner_call(self.tuner.generate_parameters, seq)
                except NoMoreTrials:
                    self._exhausted = True
                    return
                except TryLater:
                    self._wait_for_result = True
                    return
                except Exception as exc:
                    self._error = f"tuner failed in generate_parameters: {_describe(exc)}"
                    return
                if self._stopping or self._deadline_hit or self._error is not None:  # changed while we waited
                    return
                continues = await self._continues_from(seq)
                if continues is _NO_PARENT or self._stopping or self._deadline_hit or self._error is not None:
                    return
            self._create_and_launch(seq, params, rerun_of, continues)

    async def _continues_from(self, seq: int) -> Any:
        """The trial the tuner says trial ``seq`` continues (``Tuner.continues_from``), None, or ``_NO_PARENT``
        after recording the tuner's error (an answer that is no earlier trial's parameter_id)."""
        ask = getattr(self.tuner, "continues_from", None)
        if ask is None or getattr(type(self.tuner), "continues_from", None) is Tuner.continues_from:
            return None  # the default (no continuation): no call, no hop to the tuner's thread
        try:
            parent = await self._tuner_call(ask, seq)
        except Exception as exc:
            self._error = f"tuner failed in continues_from: {_describe(exc)}"
            return _NO_PARENT
        if parent is None:
            return None
        if isinstance(parent, bool) or not isinstance(parent, numbers.Integral) or not 0 < int(parent) < seq \
                or self.store.trial(int(parent)) is None:
            self._error = (f"tuner failed in continues_from: trial #{seq} cannot continue {parent!r} "
                           "(expected None or the parameter_id of an earlier trial)")
            return _NO_PARENT
        return int(parent)

    def _create_and_launch(self, seq: int, params: dict[str, Any], rerun_of: int | None,
                           continues: int | None = None) -> None:
        """Record trial ``seq`` (the tuner's parameter_id) as WAITING, with the trial it re-runs or continues,
        then hand it to the service."""
        trial_id = new_id(5, _ID_ALPHABET)
        while self.store.trial(trial_id) is not None:
            trial_id = new_id(5, _ID_ALPHABET)
        self.store.add_trial(seq, trial_id, params, rerun_of, continues)  # recorded before it runs
        note = f" (re-run of #{rerun_of})" if rerun_of else f" (continues #{continues})" if continues else ""
        log.info("trial %s (#%d) created%s: %s", trial_id, seq, note, json.dumps(params, default=str))
        self.active[trial_id] = _Active(seq, trial_id, params)
        self._publish("trial", {"id": trial_id, "seq": seq, "status": "WAITING"})
        try:
            command = self._command_for(params)
        except KeyError as exc:
            self._launching.add(trial_id)
            self.ended(trial_id, "FAILED", None, str(exc.args[0]))
            self._launching.discard(trial_id)
            return
        spec = TrialSpec(self.experiment_id, trial_id, seq, params, command, Path(self.config.trial_code_directory),
                         self.directory / "trials" / trial_id, self.config.trial_gpu_number,
                         self.config.max_trial_duration_seconds, dict(self.config.trial_env or {}),
                         attempt=self._attempts(seq) if rerun_of is not None else 0,
                         distribution=self.config.distribution,
                         warm_start=list(self.config.trial_preload) if self.config.warm_start else None)
        if self.config.trial_roles:
            spec.processes = [replace(p, command=None if p.command is None else render_command(p.command, params))
                              for p in self._gang]
        folder = self.service.checkpoint_dir(spec, self._checkpoint_folder)
        if folder is not None:
            spec.env["HPO_CHECKPOINT_DIR"] = folder
            self._writes_checkpoints[trial_id] = rerun_of is not None or continues is not None
        restore_from = rerun_of if rerun_of is not None else continues
        self._launching.add(trial_id)
        task = asyncio.get_running_loop().create_task(self._launch(spec, restore_from if folder is not None else None))
        task.add_done_callback(_log_task_error)

    def _command_for(self, params: dict[str, Any]) -> str:
        if self.config.trial_function is not None:
            return f"{shlex.quote(sys.executable)} -m hpo.function_trial {shlex.quote(str(self.directory / FUNCTION_FILE))}"
        if self.config.trial_command is None:  # a distributed trial whose roles each have their command
            return self._gang[0].command or ""
        return render_command(self.config.trial_command, params)

    @functools.cached_property
    def _gang(self) -> list[GangProcess]:
        """The processes of each trial, commands not yet rendered (empty: one process per trial)."""
        roles = self.config.trial_roles
        if not roles:
            return []
        return gang_processes(roles, self.config.trial_command, self.config.trial_gpu_number, self.config.distribution)

    async def _launch(self, spec: TrialSpec, restore_from: int | None = None) -> None:
        try:
            if restore_from is not None:
                spec.restore_checkpoint = await self._restore_point(restore_from, spec.trial_id)
            await self.service.launch(spec)
            self._resource_failures = 0
        except Exception as exc:
            if spec.trial_id not in self.active:
                pass
            elif isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS:
                await self._requeue_after_resource_error(spec, exc)
            else:
                self.ended(spec.trial_id, "FAILED", None, f"could not start: {_describe(exc)}")
        finally:
            self._launching.discard(spec.trial_id)
            self._poke()

    async def _requeue_after_resource_error(self, spec: TrialSpec, exc: OSError) -> None:
        """The engine ran out of something (file descriptors, memory): not the trial's fault.  The trial
        is recorded as interrupted and queued again with the same parameters after a pause; too many
        such failures in a row end the experiment."""
        self._resource_failures += 1
        reason = f"could not start: the engine ran out of resources ({_describe(exc)}); re-queued"
        trial = self.active.get(spec.trial_id)
        self.ended(spec.trial_id, "SYS_CANCELED", None, reason, interrupted=True)
        if self._resource_failures >= _MAX_RESOURCE_FAILURES:
            self._fail(f"{_MAX_RESOURCE_FAILURES} trials in a row could not start: {_describe(exc)}")
            return
        if trial is not None:
            self._rerun.append((trial.seq, trial.parameters))
        await asyncio.sleep(min(5.0, 0.2 * 2 ** min(self._resource_failures, 5)))

    # -- TrialEvents (called by the training service on the loop) ---------------------------------------
    def started(self, trial_id: str, pid: int | None, pgid: int | None, host: str | None,
                gpus: list[int] | None, processes: list[dict[str, Any]] | None = None) -> None:
        trial = self.active.get(trial_id)
        if trial is None:
            return
        if not self._guarded(self.store.trial_started, trial.seq, pid, pgid, host, gpus, processes):
            return
        log.info("trial %s (#%d) running: pid %s on %s%s", trial_id, trial.seq, pid, host,
                 f", GPUs {gpus}" if gpus else "")
        self.first_trial_started.set()
        self._publish("trial", {"id": trial_id, "seq": trial.seq, "status": "RUNNING"})

    def waiting(self, trial_id: str, reason: str | None) -> None:
        trial = self.active.get(trial_id)
        if trial is None:
            return
        self._guarded(self.store.trial_waiting, trial.seq, reason)
        self._publish("trial", {"id": trial_id, "seq": trial.seq, "status": "WAITING", "message": reason})

    def metric(self, trial_id: str, kind: str, value: Any) -> None:
        trial = self.active.get(trial_id)
        if trial is None:
            return
        if kind == "checkpoint":
            self._checkpoint(trial, value)
            return
        number = scalar(value)
        if kind == "final":
            if trial.final_seen:
                log.warning("trial %s reported a final result twice; keeping the first", trial_id)
                return
            if not self._guarded(self.store.add_metric, trial.seq, "final", 0, number, value):
                return
            trial.final_seen, trial.final_value = True, number
            if number is None:
                raw = value["default"] if isinstance(value, dict) else value
                trial.final_note = f"the final result {raw!r} is not a finite number: recorded, not used for tuning"
            if number is not None:
                reported = value if getattr(self.tuner, "receives_reported_value", False) else number
                self._tuner_submit(self.tuner.receive_trial_result, trial.seq, trial.parameters, reported)
        else:
            if not self._guarded(self.store.add_metric, trial.seq, "intermediate", trial.steps + 1, number, value):
                return
            trial.steps += 1
            if number is not None:
                trial.history.append(number)
                if self.assessor is not None:
                    self._assess(trial)
        self._publish("metric", {"id": trial_id, "seq": trial.seq, "kind": kind, "value": number,
                                 "step": trial.steps if kind != "final" else None})
        if self._goal_reached is None and self.config.early_stopping:
            reason = threshold_reached(self.config.early_stopping, value)
            if reason is not None:
                self._goal_reached = f"{reason} in trial {trial_id} (#{trial.seq})"
                self._guarded(self.store.add_event, "goal_reached", trial.seq, {"reason": self._goal_reached})
                self._poke()

    def process_metric(self, trial_id: str, process: str, kind: str, value: Any) -> None:
        trial = self.active.get(trial_id)
        if trial is None or kind not in ("intermediate", "final"):
            return
        number = scalar(value)
        if self._guarded(self.store.add_process_metric, trial.seq, process, kind, number, value):
            self._publish("metric", {"id": trial_id, "seq": trial.seq, "kind": kind, "value": number,
                                     "process": process})

    # -- checkpoints ------------------------------------------------------------------------------------------------
    @property
    def _checkpoint_folder(self) -> Path:
        """Where trials write checkpoints (the storage's staging folder)."""
        return self._storage.staging_folder()

    def _checkpoint(self, trial: _Active, report: dict[str, Any]) -> None:
        """Save a checkpoint the trial reported, with the trial's metric at its step (the save runs in a worker
        thread; its row is recorded when it ends, even if the trial ended first)."""
        meta = report["metadata"]
        steps = meta.get("steps_completed")
        steps = steps if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0 else trial.steps
        value = trial.history[steps - 1] if 1 <= steps <= len(trial.history) else \
            (trial.history[-1] if trial.history else None)
        earlier = [t for t, s in self._storage_tasks.items() if s == trial.seq]
        self._storage_task(self._save_checkpoint(trial, report, steps, value, earlier), trial.seq)

    async def _save_checkpoint(self, trial: _Active, report: dict[str, Any], steps: int, value: float | None,
                               earlier: list[asyncio.Task[None]]) -> None:
        """Store the checkpoint (after the trial's ``earlier`` ones: rows stay in report order), then record it
        (COMPLETED, or ERROR with the reason) and apply the save_* policy."""
        assert self._loop is not None
        meta, uid = report["metadata"], report["uuid"]
        if earlier:
            await asyncio.wait(earlier)
        location, state, message = self._storage.location(uid), "ERROR", report.get("error")
        if message is None:  # else the trial or the service could not bring its files into the storage
            try:
                location = await self._loop.run_in_executor(None, self._storage.save, uid, self._checkpoint_folder / uid)
                state = "COMPLETED"
            except Exception as exc:
                message = _describe(exc)
        if not self._guarded(self.store.add_checkpoint, uid, trial.seq, steps, value,
                             {"default": value} if value is not None else None, meta, report["resources"],
                             location, state, message):
            return
        log.info("trial %s (#%d) checkpoint %s at step %d: %s", trial.trial_id, trial.seq, report["uuid"], steps,
                 state if message is None else f"{state}: {message}")
        self._publish("checkpoint", {"id": trial.trial_id, "seq": trial.seq, "uuid": report["uuid"], "state": state})
        if state == "COMPLETED":
            self._collect_checkpoint_garbage()
            await self._loop.run_in_executor(None, self._storage.recorded, uid)

    def _collect_checkpoint_garbage(self) -> None:
        """Delete the checkpoints the save_* policy no longer keeps (recorded DELETED first, then removed in a
        worker thread); a checkpoint registered as a model version is always kept."""
        from hpo.checkpoint_gc import CheckpointInfo, checkpoints_to_delete
        from hpo.model_registry import ModelRegistry

        policy = self.config.checkpoint_storage
        rows = self.store.checkpoints(state="COMPLETED")
        infos = [CheckpointInfo(r["uuid"], r["trial_seq"], r["steps_completed"], i, r["value"])
                 for i, r in enumerate(rows)]
        try:
            with ModelRegistry() as registry:
                protected = registry.registered_checkpoints()
        except Exception as exc:  # an unreadable registry: delete nothing rather than a registered model
            log.warning("checkpoint GC skipped: cannot read the model registry: %s", exc)
            return
        doomed = checkpoints_to_delete(
            infos, save_experiment_best=policy.save_experiment_best, save_trial_best=policy.save_trial_best,
            save_trial_latest=policy.save_trial_latest, smaller_is_better=not getattr(self.tuner, "maximize", True),
            protected=protected)
        if not doomed or not self._guarded(self.store.set_checkpoint_state, sorted(doomed), "DELETED",
                                           "removed by the checkpoint storage's save_* policy"):
            return
        locations = [r["location"] for r in rows if r["uuid"] in doomed]
        self._storage_task(self._delete_checkpoints(locations), None)

    async def _delete_checkpoints(self, locations: list[str]) -> None:
        assert self._loop is not None
        for location in locations:
            try:
                await self._loop.run_in_executor(None, self._storage.delete, location)
            except Exception as exc:  # recorded DELETED already; resume tries again
                log.warning("checkpoint GC: %s", _describe(exc))

    def _storage_task(self, coro: Coroutine[Any, Any, None], seq: int | None) -> None:
        """Run a checkpoint upload (of trial ``seq``) or deletion (``seq`` None); the engine ends after them."""
        async def tracked() -> None:
            try:
                await coro
            finally:
                self._storage_tasks.pop(task, None)
        task = self._loop.create_task(tracked())  # type: ignore[union-attr]
        task.add_done_callback(_log_task_error)
        self._storage_tasks[task] = seq

    async def _drain_storage(self, seq: int | None = None) -> None:
        """Wait for the checkpoint uploads and deletions in flight (only trial ``seq``'s uploads, when given)."""
        while pending := [t for t, s in self._storage_tasks.items() if seq is None or s == seq]:
            await asyncio.wait(pending)

    async def _restore_point(self, rerun_of: int, trial_id: str) -> Path | None:
        """The latest whole checkpoint of the trial a re-run or a continuation starts from (when it has none, of the
        trial that one re-ran or continued, and so on), as a local folder: a remote storage's is downloaded into the
        staging folder (removed when the trial ends)."""
        assert self._loop is not None
        seq: int | None = rerun_of
        while seq is not None:
            await self._drain_storage(seq)  # its last checkpoint may still be uploading
            done = self.store.checkpoints(seq, state="COMPLETED")
            if done:
                latest = max(done, key=lambda c: (c["steps_completed"], c["report_time"]))
                dest = self._checkpoint_folder / partial_name(self.experiment_id, trial_id, "restore")
                return await self._loop.run_in_executor(None, self._storage.local_folder, latest["location"], dest)
            rec = self.store.trial(seq)
            seq = None if rec is None else rec["rerun_of"] if rec["rerun_of"] is not None else rec["continues"]
        return None

    def _assess(self, trial: _Active) -> None:
        """Ask the assessor about ``trial``; a Bad verdict stops it as EARLY_STOPPED."""
        assert self.assessor is not None and self._loop is not None
        fut = self._tuner_call(self.assessor.assess_trial, trial.trial_id, list(trial.history))

        def decide(f: asyncio.Future[Any]) -> None:
            if f.cancelled() or trial.trial_id not in self.active:
                return
            if f.exception() is not None:
                if self._error is None:
                    self._error = f"assessor failed in assess_trial: {_describe(f.exception())}"
                    self._poke()
                return
            try:
                bad = is_bad(f.result())
            except TypeError as exc:
                if self._error is None:
                    self._error = f"assessor failed in assess_trial: {exc}"
                    self._poke()
                return
            if bad:
                reason = f"stopped early by {type(self.assessor).__name__} at step {len(trial.history)}"
                task = self._loop.create_task(self.service.kill(trial.trial_id, "EARLY_STOPPED", reason))  # type: ignore[union-attr]
                task.add_done_callback(_log_task_error)

        fut.add_done_callback(decide)

    def ended(self, trial_id: str, status: str, exit_code: int | None, message: str | None,
              interrupted: bool | None = None) -> None:
        trial = self.active.pop(trial_id, None)
        if trial is None:
            return
        if interrupted is None:
            interrupted = status == "SYS_CANCELED" and (self._stopping or self._deadline_hit or self._error is not None)
        if trial.final_seen and status == "SYS_CANCELED":
            # its result is stored: the trial is finished (not re-run on resume, counted once)
            status, interrupted = "SUCCEEDED", False
            message = f"ended after its final result ({message})" if message else None
        elif status == "SUCCEEDED" and message is None and trial.final_value is None:
            message = trial.final_note or NO_RESULT
        if status == "EARLY_STOPPED" and not trial.final_seen and trial.history:
            # the tuner learns from where the trial was stopped (and so does a resumed tuner)
            last = trial.history[-1]
            if self._guarded(self.store.add_metric, trial.seq, "final", 0, last, {"default": last, "early_stopped": True}):
                self._tuner_submit(self.tuner.receive_trial_result, trial.seq, trial.parameters, last)
        if not self._guarded(self.store.trial_ended, trial.seq, status, exit_code, message, interrupted):
            self._unrecorded.append((self.store.trial_ended, trial.seq, status, exit_code, message, interrupted))
        if self.assessor is not None:
            self._tuner_call(self.assessor.trial_end, trial_id, status == "SUCCEEDED")
        rerun = self._writes_checkpoints.pop(trial_id, None)
        if self._loop is not None and (rerun or (rerun is not None and status != "SUCCEEDED")):
            # a checkpoint it was writing when it ended, the copy of a checkpoint it restored from
            self._loop.run_in_executor(None, remove_matching, self._checkpoint_folder,
                                       partial_name(self.experiment_id, trial_id, "*"))
        log.info("trial %s (#%d) %s%s", trial_id, trial.seq, status, f": {message}" if message else "")
        self._tuner_submit(self.tuner.trial_end, trial.seq, status == "SUCCEEDED")
        self._wait_for_result = False
        self._publish("trial", {"id": trial_id, "seq": trial.seq, "status": status})
        if status == "FAILED" and self._error is None and not self._retry_if_allowed(trial):
            self._check_failures()
        self._poke()

    def _attempts(self, seq: int) -> int:
        """How many earlier trials trial ``seq`` re-runs (0 for a first run)."""
        attempts = 0
        while (rec := self.store.trial(seq)) is not None and rec["rerun_of"] is not None:
            attempts, seq = attempts + 1, rec["rerun_of"]
        return attempts

    def _retry_if_allowed(self, trial: _Active) -> bool:
        """``max_trial_retries``: a trial whose own run failed runs again with the same parameters (the new
        trial records ``rerun_of``; the failed attempt is then replaced, not counted)."""
        allowed = self.config.max_trial_retries
        if allowed <= 0:
            return False
        attempts = self._attempts(trial.seq)
        if attempts < allowed:
            log.info("trial %s (#%d) failed; retrying it (retry %d of %d)", trial.trial_id, trial.seq,
                     attempts + 1, allowed)
            self._rerun.append((trial.seq, trial.parameters))
            return True
        return False

    def _check_failures(self) -> None:
        """End the experiment (ERROR) when trials fail too often: ``max_failed_trials`` failures, a
        Polyaxon ``failure_early_stopping`` percent, or, by default, the first FAIL_FAST_TRIALS all
        failing (a typo in the command must not burn the whole budget)."""
        counts = self.store.status_counts()
        failed, finished = counts["FAILED"], counts["FAILED"] + counts["SUCCEEDED"] + counts["EARLY_STOPPED"]
        limit, percent = self.config.max_failed_trials, _failure_percent(self.config.early_stopping)
        if limit is not None:
            reason = f"{failed} trials failed (max_failed_trials = {limit})" if failed >= limit else None
        elif percent is not None:
            total = self.config.max_trial_number or max(finished, FAIL_FAST_TRIALS)
            reason = (f"{failed} of {finished} trials failed, over the failure_early_stopping limit of {percent:g}% "
                      f"of {total}") if failed * 100 >= percent * total else None
        else:
            reason = f"the first {failed} trials all failed" if failed == finished >= FAIL_FAST_TRIALS else None
        if reason is not None:
            self._fail(f"{reason}; {self._first_failure()}")

    def _first_failure(self) -> str:
        """Which trial failed first, and the end of its stderr (where the cause usually is)."""
        first = self.store.trials(status="FAILED", limit=1)[0]
        tail = tail_lines(self.directory / "trials" / first["id"] / "stderr.log", _STDERR_TAIL_LINES, 300)
        where = f"the first failure, trial {first['id']} (#{first['seq']})"
        if tail:
            return f"{where}, ended with:\n" + "\n".join(f"    {line}" for line in tail)
        return f"{where}: {first['message'] or 'no message'}"

    # -- helpers ------------------------------------------------------------------------------------------
    async def _prepare_resume(self) -> None:
        """Trials the dead engine left WAITING/RUNNING: those the service takes over (their platform kept them
        running) stay active here; the others are ended as interrupted, cleaned up and queued to run again."""
        leftovers = self.store.trials(status=ACTIVE_STATES)
        reported = {rec["seq"]: self.store.metrics(rec["seq"], "intermediate") for rec in leftovers}
        for rec in leftovers:
            rec["steps"] = len(reported[rec["seq"]])
            rec["trial_dir"] = self.directory / "trials" / rec["id"]
        adopted = await self.service.adopt(self.experiment_id, leftovers)
        for rec in leftovers:
            if rec["id"] in adopted:
                self._adopt(rec, [m["value"] for m in reported[rec["seq"]] if m["value"] is not None])
        self.service.leftover_cleanup(self.store.end_leftovers("interrupted: the engine stopped", keep=adopted))
        # checkpoints half-written when the engine died, and ones recorded DELETED but not yet removed
        rows = self.store.checkpoints()
        deleted = [c["location"] for c in rows if c["state"] == "DELETED"]
        await self._loop.run_in_executor(None, _remove_leftover_checkpoints, self._storage,  # type: ignore[union-attr]
                                         partial_name(self.experiment_id, "*", "*"), deleted, {c["uuid"] for c in rows})
        goal = self.store.events_of_kind("goal_reached")
        if goal:  # an early-stopping goal was reached before the crash: the experiment is over
            self._goal_reached = goal[0]["data"].get("reason") or "early-stopping goal reached"
        for rec in self.store.trials(status="SYS_CANCELED"):
            if rec["interrupted"] == 1:
                self._rerun.append((rec["seq"], rec["parameters"]))
        self.store.add_event("resume", None, {"rerun": [s for s, _ in self._rerun]})

    def _adopt(self, rec: dict[str, Any], history: list[float]) -> None:
        """Make a trial that kept running across an engine restart active again, with what the store has
        (``history``: its stored intermediate values)."""
        trial = _Active(rec["seq"], rec["id"], rec["parameters"], steps=rec["steps"], history=history)
        if rec["final"] is not None:
            trial.final_seen, trial.final_value = True, rec["final_value"]
        self.active[rec["id"]] = trial
        log.info("trial %s (#%d) adopted: it kept %s while the engine was down", rec["id"], rec["seq"],
                 "running" if rec["status"] == "RUNNING" else "waiting")

    def _replay_assessor(self) -> None:
        """Resume: show the assessor every finished trial's curve again, as it saw them the first time."""
        assert self.assessor is not None
        for rec in self.store.trials(status=FINISHED_STATES):
            if rec["interrupted"]:
                continue
            history = [m["value"] for m in self.store.metrics(rec["seq"], "intermediate") if m["value"] is not None]
            for k in range(1, len(history) + 1):
                self.assessor.assess_trial(rec["id"], history[:k])
            self.assessor.trial_end(rec["id"], rec["status"] == "SUCCEEDED")

    def _set_status(self, status: str, message: str | None = None, restore: bool = False) -> None:
        """Record and publish the experiment's status.  It changes in memory even when the store cannot
        be written, so the engine always reaches its end; ``restore`` puts back a previous status as is."""
        if restore:
            self._guarded(self.store.restore_status, status, message)
        elif status == "RUNNING" or status in EXPERIMENT_END_STATES:
            self._guarded(self.store.set_status, status, message, self._elapsed())
        else:
            self._guarded(self.store.set_status, status, message)
        log.info("experiment %s %s%s", self.experiment_id, status, f": {message}" if message else "")
        self.status = status
        if message is not None:
            self.message = message
        self._publish("status", {"status": status, "message": message})

    def _guarded(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """Run a store write; if the store fails, end the experiment as ERROR (once) and return False.

        Called from service callbacks and status changes, which must never raise."""
        try:
            write(*args, **kwargs)
            return True
        except StoreError as exc:
            if not self._store_failed:
                self._store_failed = True
                log.error("store write failed: %s", exc)
            self._fail(str(exc))
            return False

    def _fail(self, message: str) -> None:
        """End the experiment as ERROR with ``message`` (the first failure wins)."""
        if self._error is None:
            self._error = message
        self._poke()

    def _publish(self, kind: str, data: dict[str, Any]) -> None:
        for callback in list(self._listeners):
            try:
                callback(kind, data)
            except Exception:  # a broken listener must not break the engine
                log.exception("listener failed")

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _tuner_call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Call a tuner or assessor method, in order with every other such call: on the tuner's thread, or right here
        on the loop (no thread hop) when its class is a loop-safe built-in, nothing is queued on that thread, and
        its last calls were quick."""
        assert self._loop is not None
        owner = getattr(fn, "__self__", None)
        if self._pool_queued == 0 and _loop_safe(owner) and len(self._call_times) == self._call_times.maxlen \
                and max(self._call_times) < INLINE_CALL_LIMIT:
            fut = self._loop.create_future()
            start = time.perf_counter()
            try:
                fut.set_result(fn(*args))
            except Exception as exc:
                fut.set_exception(exc)
            self._call_times.append(time.perf_counter() - start)
            return fut

        def timed() -> Any:
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self._call_times.append(time.perf_counter() - start)

        self._pool_queued += 1
        fut = self._loop.run_in_executor(self._tuner_pool, timed)
        fut.add_done_callback(self._pool_call_done)
        return fut

    def _pool_call_done(self, _fut: asyncio.Future[Any]) -> None:
        self._pool_queued -= 1

    def _tuner_submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Fire-and-forget tuner call; an exception ends the experiment as ERROR."""
        fut = self._tuner_call(fn, *args)

        def check(f: asyncio.Future[Any]) -> None:
            if not f.cancelled() and f.exception() is not None and self._error is None:
                self._error = f"tuner failed in {fn.__name__}: {_describe(f.exception())}"
                self._poke()

        fut.add_done_callback(check)


NO_RESULT = "finished without reporting a final result"
_NO_PARENT = object()  # _continues_from: the tuner's answer was an error (recorded)


def _remove_leftover_checkpoints(storage: CheckpointStorage, pattern: str, deleted: list[str],
                                 recorded: set[str]) -> None:
    """Resume: what a dead engine left unsaved or unrecorded (checkpoints not among the ``recorded`` uuids), and
    the files of checkpoints recorded DELETED (best effort)."""
    for remove, args in [(storage.remove_leftovers, (pattern, recorded)), *((storage.delete, (loc,)) for loc in deleted)]:
        try:
            remove(*args)
        except CheckpointStorageError as exc:
            log.warning("resume: %s", exc)


def _failure_percent(rules: list[dict[str, Any]] | None) -> float | None:
    """The percent of Polyaxon's ``{kind: failure_early_stopping, percent: N}`` rule, if there is one."""
    for rule in rules or ():
        if rule.get("kind") == "failure_early_stopping":
            return float(rule["percent"])
    return None


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, (StoreError, ValueError, CheckpointStorageError)) and str(exc):  # messages written for the user
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task failed: %s", _describe(task.exception()))
