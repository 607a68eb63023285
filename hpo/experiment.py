"""``Experiment``: the user-facing facade (NNI's Python API).

An experiment runs its engine on a background thread of the caller's process; ``run()`` blocks
until it ends, ``start()`` returns at once (notebooks).  Reads (``list_trial_jobs``,
``export_data``, ...) go to the experiment's SQLite file through a read-only connection;
actions go to the engine: directly when it runs in this process, through its JSON API when
the experiment was opened with :meth:`Experiment.connect`.
"""
from __future__ import annotations

import asyncio
import atexit
import importlib
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
import types
import weakref
from pathlib import Path
from typing import Any, Callable

from hpo.config import ConfigError, ExperimentConfig
from hpo.dispatcher import FUNCTION_FILE, Engine, new_id
from hpo.templates import render_command
from hpo.registry import hpo_home, lookup, register
from hpo.storage import CREATED, EXPERIMENT_END_STATES, ExperimentStore, ExportedData, StoreError, StoreLocked, \
    engine_running, maximizes
from training_services.base import create_training_service
from tuners.base import Tuner

__all__ = ["Experiment", "ExperimentError"]

log = logging.getLogger("hpo")
TOKEN_FILE = ".token"


class ExperimentError(RuntimeError):
    """A user-level problem starting or controlling an experiment (one-line message)."""


class Experiment:
    """An HPO experiment.

    ``Experiment(tuner, 'local')`` with a tuner instance or a tuner name; ``Experiment('local')``
    leaves the tuner to ``experiment.config.tuner.name``.  Configure through ``experiment.config``.
    """

    def __init__(self, tuner: Tuner | str | None = None, training_service: str | None = None,
                 config: ExperimentConfig | None = None) -> None:
        self._stored_config: dict[str, Any] | None = None  # a handle on another engine's experiment follows it
        if isinstance(tuner, str) and training_service is None and tuner.lower() in ("local", "remote"):
            tuner, training_service = None, tuner
        self.config = config if config is not None else ExperimentConfig()
        self._tuner: Tuner | None = None
        if isinstance(tuner, Tuner):
            self._tuner = tuner
            cls = type(tuner)  # recorded so that resume() can recreate it
            self.config.tuner = {"class_name": f"{cls.__module__}.{cls.__qualname__}", "class_args": tuner.class_args()}
        elif isinstance(tuner, str):
            self.config.tuner.name = tuner
        elif tuner is not None:
            raise TypeError(f"tuner: expected a Tuner instance or a tuner name, got {type(tuner).__name__}")
        if training_service is not None:
            self.config.training_service = training_service
        self.id: str | None = None
        self.directory: Path | None = None
        self.port: int | None = None
        self._runner: _Runner | None = None
        self._client: Any = None
        self._reader: ExperimentStore | None = None

    def __repr__(self) -> str:
        if self.id is None:
            t = self.config.tuner
            return f"<Experiment (not started) tuner={t.name or t.class_name}, {self.config.training_service.platform}>"
        from hpo.progress import snapshot
        try:
            info = self._store().experiment()
            text = snapshot(self._store(), _maximize(self)).text(self.config.max_trial_number)
        except Exception as exc:  # noqa: BLE001 - a repr must not raise
            return f"<Experiment {self.id}: unreadable ({exc})>"
        where = f" at http://localhost:{self.port}" if self._runner is not None and self.port else ""
        return f"<Experiment {self.id} {info['status']}: {text}{where}>"

    @property
    def config(self) -> ExperimentConfig:
        """The experiment's config; on a handle from :meth:`connect`, the stored one, as last updated."""
        if self._stored_config is not None and self._reader is not None:
            stored = self._reader.experiment()["config"]
            if stored != self._stored_config:
                self._config, self._stored_config = ExperimentConfig.from_dict(stored), stored
        return self._config

    @config.setter
    def config(self, value: ExperimentConfig) -> None:
        self._config = value

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self, port: int = 8080, debug: bool = False, host: str = "127.0.0.1") -> None:
        """Start the experiment in the background and serve its dashboard on ``host:port``."""
        tuner, assessor, service = self._check_new()
        sock = _bind(host, port)
        try:
            experiment_id, directory, store = self._record("INITIALIZED")
        except BaseException:
            sock.close()
            raise
        self._launch(experiment_id, directory, tuner, service, store, sock, host, resume=False, debug=debug,
                     assessor=assessor)

    def create(self) -> str:
        """Record the experiment without starting it and return its id: status CREATED, no engine (a script
        may exit).  Every check :meth:`start` makes is made first.  ``Experiment.resume(id)`` (``hpo resume ID``)
        starts it, from any process."""
        self._check_new()
        experiment_id, directory, store = self._record(CREATED)
        store.close()
        self.id, self.directory = experiment_id, directory
        self._reader = ExperimentStore(directory, readonly=True)
        return experiment_id

    def _check_new(self) -> tuple[Tuner, Any, Any]:
        """Validate a new experiment (config, command template, tuner, assessor, training service)."""
        if self._runner is not None:
            raise ExperimentError(f"experiment {self.id} is already started")
        if self.id is not None:
            raise ExperimentError(f"this Experiment object already ran experiment {self.id}; create a new "
                                  f"Experiment for another run, or continue (or start) this one with "
                                  f"Experiment.resume({self.id!r})")
        self.config.validate_for_start()
        check_command_template(self.config)
        return self._make_tuner(), self._make_assessor(), _make_service(self.config)

    def _record(self, status: str) -> tuple[str, Path, ExperimentStore]:
        """Create the experiment's folder and store (with ``status``) and register it; nothing is left on failure
        but what a resume can read.  Returns its id, folder and the open (writer) store."""
        experiment_id = new_id()
        root = Path(self.config.experiment_working_directory or hpo_home()).expanduser()
        directory = root / experiment_id
        store = ExperimentStore(directory)
        try:
            store.create_experiment(experiment_id, self.config.experiment_name, self.config.to_dict(), status)
            if self.config.trial_function is not None:
                _save_function(self.config.trial_function, directory / FUNCTION_FILE)
            register(experiment_id, self.config.experiment_name, directory)
        except BaseException:
            store.close()
            raise
        return experiment_id, directory, store

    def _launch(self, experiment_id: str, directory: Path, tuner: Tuner, service: Any, store: ExperimentStore,
                sock: socket.socket, host: str, resume: bool, debug: bool = False, assessor: Any = None,
                first_start: bool = False) -> None:
        self.id, self.directory = experiment_id, directory
        self.port = sock.getsockname()[1]
        try:
            _setup_logging(directory, self.config.log_level, debug)
            token = _write_token(directory)
        except OSError as exc:
            sock.close()
            store.close()
            raise ExperimentError(f"cannot write to the experiment folder {directory}: {exc.strerror or exc}") from None
        engine = Engine(experiment_id, directory, self.config, tuner, service, store, assessor)
        self._reader = ExperimentStore(directory, readonly=True)
        runner = _Runner(engine, sock, host, token, resume)
        try:
            runner.start()
        except ExperimentError:
            what = "resume" if resume else "start"
            status = self.get_status()
            raise ExperimentError(f"experiment {experiment_id} could not {what}: {engine.start_error}"
                                  f"{f' (it stays {status})' if resume else ''}") from None
        self._runner = runner
        print(f"hpo: experiment {experiment_id} {'resumed' if resume and not first_start else 'started'}; "
              f"dashboard at {_dashboard_url(host, self.port, token)}", file=sys.stderr)

    def run(self, port: int = 8080, wait_completion: bool = True, debug: bool = False,
            host: str = "127.0.0.1") -> bool | None:
        """Start, wait until the experiment ends (with a progress bar), stop; True unless ERROR.

        Ctrl-C stops the experiment gracefully (trials cancelled, resumable).
        """
        self.start(port, debug, host)
        if not wait_completion:
            return None
        return self._wait_and_stop()

    def _wait_and_stop(self) -> bool:
        from hpo.progress import Progress

        assert self._runner is not None and self._reader is not None
        progress = Progress(self._reader, lambda: self.config.max_trial_number, _maximize(self), str(self.id))
        previous = _sigterm_as_interrupt()
        try:
            while not self._runner.engine_done.wait(0.25):
                progress.update()
        except KeyboardInterrupt:
            print("\nhpo: stopping...", file=sys.stderr)
        finally:
            status = self.stop(quiet=True)
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            progress.close(status, self._reader.experiment()["message"])
        return status != "ERROR"

    def stop(self, quiet: bool = False) -> str | None:
        """Stop the experiment: running trials are ended, the dashboard closes.  Returns the status it
        ended with (the engine's word, even where the store could not record it: a full disk)."""
        if self._runner is not None:
            self._runner.stop()
            engine, self._runner = self._runner.engine, None
            status = engine.status if engine is not None else self.get_status()
            if not quiet:
                print(f"hpo: experiment {self.id} {status}", file=sys.stderr)
            return status
        elif self._client is not None:
            self._client.post("/experiment/stop")
        elif self._abandoned():  # created and never started, or its engine died: end what it left behind
            from hpo.abandoned import end_abandoned
            created = self.get_status() == CREATED
            status, ended = end_abandoned(self.directory)  # type: ignore[arg-type]
            why = "it had not been started" if created else f"its engine had died; {ended} leftover trial(s) ended"
            print(f"hpo: experiment {self.id} {status} ({why})", file=sys.stderr)
            return status
        return None

    def _abandoned(self) -> bool:
        """Whether this is a handle on an experiment whose engine died before it ended."""
        if self._reader is None or self.directory is None:
            return False
        info = self._reader.experiment()
        return info["status"] not in EXPERIMENT_END_STATES and not engine_running(self.directory, info.get("pid"))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the experiment ends (or ``timeout`` s); True if it ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._runner is not None:
            return self._runner.engine_done.wait(timeout)
        while self.get_status() not in EXPERIMENT_END_STATES:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    # -- reads -----------------------------------------------------------------------------------------
    def _store(self) -> ExperimentStore:
        if self._reader is None:
            raise ExperimentError("the experiment has not been started")
        return self._reader

    def get_status(self) -> str:
        """INITIALIZED, RUNNING, NO_MORE_TRIAL, DONE, STOPPING, STOPPED or ERROR."""
        if self._reader is None:
            return "INITIALIZED"
        return self._store().experiment()["status"]

    def get_experiment_profile(self) -> dict[str, Any]:
        return self._store().experiment()

    def list_trial_jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every trial (dicts with id, sequence id, parameters, status, final result, ...)."""
        return list(self._store().trials(status=status))

    def get_trial_job(self, trial_id: str) -> dict[str, Any]:
        rec = self._store().trial(trial_id)
        if rec is None:
            raise ExperimentError(f"experiment {self.id} has no trial {trial_id!r}")
        rec["intermediate"] = [m["value"] for m in self._store().metrics(rec["seq"], "intermediate")]
        return rec

    def get_job_statistics(self) -> dict[str, int]:
        """Number of trials in each state."""
        return self._store().status_counts()

    def export_data(self) -> ExportedData:
        """Trials with a final result: ``{trial_id, sequence_id, parameter, value, default, status}``, by sequence
        number.  A read-only list that reads the store a page at a time as it is used (iterating over 100,000
        trials holds one page; ``len()`` is one count): :class:`hpo.storage.ExportedData`; ``list(...)`` for a
        plain list."""
        self._store()  # started (or connected) at all
        return ExportedData(self.directory)

    def best_trial(self) -> dict[str, Any] | None:
        """The trial with the best final value (per the tuner's optimize_mode), or None."""
        return self._store().best_trial(_maximize(self))

    # -- actions ---------------------------------------------------------------------------------------
    def update_trial_concurrency(self, value: int) -> None:
        self._update(trial_concurrency=value)

    def update_max_trial_number(self, value: int) -> None:
        self._update(max_trial_number=value)

    def update_max_experiment_duration(self, value: str | int | float) -> None:
        self._update(max_experiment_duration=value)

    def update_search_space(self, value: dict[str, Any]) -> None:
        self._update(search_space=value)

    def _update(self, **changes: Any) -> None:
        self.config.check_update(**changes)
        if self._runner is not None:  # the engine shares self.config: it applies the change
            self._runner.call(lambda e: e.update_config(**changes))
        elif self._client is not None:
            self._client.patch("/experiment", changes)
        else:
            raise ExperimentError("the experiment is not running")

    def kill_trial_job(self, trial_id: str) -> None:
        """End a running trial (USER_CANCELED) and its whole process tree."""
        if self._runner is not None:
            ok = self._runner.call_async(lambda e: e.kill_trial(trial_id))
        elif self._client is not None:
            self._client.post(f"/trials/{trial_id}/kill")
            ok = True
        elif self._abandoned():
            from hpo.abandoned import end_abandoned
            ok = end_abandoned(self.directory, trial_id)[1] > 0  # type: ignore[arg-type]
        else:
            raise ExperimentError("the experiment is not running")
        if not ok:
            raise ExperimentError(f"trial {trial_id!r} is not running")

    # -- other experiments -----------------------------------------------------------------------------
    @classmethod
    def connect(cls, experiment_id: str) -> "Experiment":
        """A handle on an existing experiment: controllable if its engine runs, else read-only."""
        from hpo.api_client import ApiClient

        directory = lookup(experiment_id)
        exp = cls._open(experiment_id, directory)
        info = exp._store().experiment()
        running = info["status"] not in EXPERIMENT_END_STATES and engine_running(directory, info.get("pid"))
        if running and info.get("port"):
            exp._client = ApiClient(info.get("host") or "127.0.0.1", info["port"], _read_token(directory))
        return exp

    @classmethod
    def _open(cls, experiment_id: str, directory: Path) -> "Experiment":
        reader = ExperimentStore(directory, readonly=True)
        stored = reader.experiment()["config"]
        exp = cls(config=ExperimentConfig.from_dict(stored))
        exp.id, exp.directory, exp._reader = experiment_id, directory, reader
        exp._stored_config = stored
        return exp

    @classmethod
    def resume(cls, experiment_id: str, port: int = 8080, wait_completion: bool = True, debug: bool = False,
               host: str = "127.0.0.1", *, max_trial_number: int | None = None,
               max_experiment_duration: str | int | float | None = None,
               trial_concurrency: int | None = None) -> "Experiment":
        """Start a created experiment (:meth:`create`), or continue a stopped, crashed or finished one: finished
        trials are kept and replayed into
        the tuner, interrupted ones re-run, sequence numbers continue.  ``max_trial_number``,
        ``max_experiment_duration`` and ``trial_concurrency`` change its limits first, which is how a
        finished search is extended (``Experiment.resume(id, max_trial_number=600)``)."""
        directory = lookup(experiment_id)
        with ExperimentStore(directory, readonly=True) as probe:
            info = probe.experiment()
        if engine_running(directory, info.get("pid")):
            raise _still_running(experiment_id, info)
        exp = cls(config=ExperimentConfig.from_dict(info["config"]))
        changes = {k: v for k, v in (("max_trial_number", max_trial_number), ("trial_concurrency", trial_concurrency),
                                     ("max_experiment_duration", max_experiment_duration)) if v is not None}
        for key, value in changes.items():
            setattr(exp.config, key, value)  # validated: a ConfigError changes nothing
        if (directory / FUNCTION_FILE).exists() and not exp.config.trial_command:
            exp.config.trial_function = _load_function(directory / FUNCTION_FILE)
        exp.config.validate_for_start()
        tuner = exp._make_tuner()
        assessor = exp._make_assessor()
        service = _make_service(exp.config)
        sock = _bind(host, port)
        try:
            store = ExperimentStore(directory)  # the writer lock: a second resume stops here
        except StoreLocked:
            sock.close()
            raise _still_running(experiment_id, info) from None
        except BaseException:
            sock.close()
            raise
        exp._launch(experiment_id, directory, tuner, service, store, sock, host, resume=True, debug=debug,
                    assessor=assessor, first_start=info["status"] == CREATED)
        if wait_completion:
            exp._wait_and_stop()
        return exp

    @classmethod
    def view(cls, experiment_id: str, port: int = 8080, non_blocking: bool = False,
             host: str = "127.0.0.1") -> "Experiment":
        """Serve a stored experiment's dashboard read-only (blocks until Ctrl-C unless non_blocking)."""
        directory = lookup(experiment_id)
        exp = cls._open(experiment_id, directory)
        sock = _bind(host, port)
        exp.port = sock.getsockname()[1]
        token = _read_token(directory) or _write_token(directory)
        exp._runner = _Runner(None, sock, host, token, False, directory=directory)
        exp._runner.start()
        print(f"hpo: viewing experiment {experiment_id} (read-only) at {_dashboard_url(host, exp.port, token)}",
              file=sys.stderr)
        if not non_blocking:
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
            exp.stop()
        return exp

    # -- helpers ---------------------------------------------------------------------------------------
    def _make_tuner(self) -> Tuner:
        from tuners.registry import create_tuner

        if self._tuner is not None:
            return self._tuner
        t = self.config.tuner
        try:
            return create_tuner(t.name, dict(t.class_args), class_name=t.class_name, code_directory=t.code_directory)
        except ValueError as exc:
            raise ConfigError(f"config.tuner: {exc}") from None

    def _make_assessor(self) -> Any:
        a = self.config.assessor
        if a is None or (a.name is None and a.class_name is None):
            return None
        from tuners.assessor import create_assessor
        try:
            return create_assessor(a.name, dict(a.class_args), class_name=a.class_name, code_directory=a.code_directory)
        except ValueError as exc:
            raise ConfigError(f"config.assessor: {exc}") from None

    def __enter__(self) -> "Experiment":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _still_running(experiment_id: str, info: dict[str, Any]) -> "ExperimentError":
    pid = f" (pid {info['pid']})" if info.get("pid") else ""
    return ExperimentError(f"experiment {experiment_id} is still running{pid}; "
                           f"stop it first with `hpo stop {experiment_id}`")


class _Runner:
    """The engine thread: an asyncio loop running the engine and the API server."""

    def __init__(self, engine: Engine | None, sock: socket.socket, host: str, token: str, resume: bool,
                 directory: Path | None = None) -> None:
        self.engine, self.sock, self.host, self.token, self.resume = engine, sock, host, token, resume
        self.directory = directory if engine is None else engine.directory
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()
        self.engine_done = threading.Event()
        self.error: BaseException | None = None
        self._shutdown: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._thread_main, name="hpo-engine", daemon=True)

    def start(self) -> None:
        _live_runners.add(self)
        self.thread.start()
        self.ready.wait()
        if self.error is not None:
            self.thread.join()
            raise self.error

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced to start()
            self.error = exc
            self.ready.set()
            self.engine_done.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._shutdown = asyncio.Event()
        try:
            await self._serve()
        finally:
            if self.engine is not None:
                self.engine.store.close()  # releases the writer lock

    async def _serve(self) -> None:
        assert self.loop is not None and self._shutdown is not None
        task = None
        if self.engine is not None:
            engine = self.engine
            engine.store.set_runtime(os.getpid(), self.host, self.sock.getsockname()[1])
            task = self.loop.create_task(engine.run(self.resume))
            task.add_done_callback(lambda _t: self.engine_done.set())
            # start() returns once trials can run (or the experiment could not start: it raises)
            running = self.loop.create_task(engine.running.wait())
            await asyncio.wait({task, running}, return_when=asyncio.FIRST_COMPLETED)
            running.cancel()
            if task.done() and engine.start_error is not None:
                self.sock.close()
                raise ExperimentError(engine.start_error)
            # let the first trial start before importing the web stack (0.15-0.5 s of imports), and import it in a
            # thread: on the loop it would hold up the launch of the first round's other trials that long
            first = self.loop.create_task(engine.first_trial_started.wait())
            await asyncio.wait({task, first}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            first.cancel()
            await asyncio.to_thread(importlib.import_module, "webui.server")
        else:
            self.engine_done.set()
        from webui.server import ApiServer, create_app
        assert self.directory is not None
        server = ApiServer(create_app(self.directory, self.token, self.engine,
                                      public=not _is_loopback(self.host)), self.sock)
        try:
            await server.start()
        except BaseException:
            if self.engine is not None:
                self.engine.request_stop()
                if task is not None:
                    await task
            raise
        finally:
            self.ready.set()
        try:
            if task is not None:
                await task
            await self._shutdown.wait()
        finally:
            await server.close()

    def call(self, fn: Callable[[Engine], Any]) -> Any:
        async def wrapper() -> Any:
            return fn(self.engine)  # type: ignore[arg-type]
        return self._submit(wrapper())

    def call_async(self, fn: Callable[[Engine], Any]) -> Any:
        async def wrapper() -> Any:
            return await fn(self.engine)  # type: ignore[arg-type]
        return self._submit(wrapper())

    def _submit(self, coro: Any) -> Any:
        assert self.loop is not None
        if self.engine_done.is_set() and self.engine is not None:
            coro.close()
            raise ExperimentError("the experiment has already ended")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop is None or not self.thread.is_alive():
            return
        if self.engine is not None:
            self.loop.call_soon_threadsafe(self.engine.request_stop)
            self.engine_done.wait()
        assert self._shutdown is not None
        self.loop.call_soon_threadsafe(self._shutdown.set)
        self.thread.join()
        _live_runners.discard(self)


_live_runners: "weakref.WeakSet[_Runner]" = weakref.WeakSet()


@atexit.register
def _stop_live_runners() -> None:
    """An interpreter exiting with experiments still started stops them: no trial is orphaned."""
    for runner in list(_live_runners):
        try:
            runner.stop()
        except Exception:
            pass


def _sigterm_as_interrupt() -> Any:
    """In the main thread, make SIGTERM stop a blocking run() gracefully, like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second SIGTERM must not cut the stop short
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ExperimentError, StoreError)


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    """A user mistake that reaches the top of a script prints one line, not a traceback."""
    from hpo.api_client import ApiError
    from hpo.registry import ExperimentNotFound
    from hpo.search_space import SearchSpaceError

    gradient = sys.modules.get("hpo.gradient.errors")  # the Gradient client's, once it is in use
    extra = (gradient.GradientSdkError,) if gradient is not None else ()
    if issubclass(exc_type, USER_ERRORS + (ApiError, ExperimentNotFound, SearchSpaceError) + extra):
        print(f"hpo: error: {exc}", file=sys.stderr)
        return
    _previous_excepthook(exc_type, exc, tb)


_previous_excepthook = sys.excepthook
sys.excepthook = _excepthook


# -- module helpers -------------------------------------------------------------------------------------
def _make_service(config: ExperimentConfig) -> Any:
    """The configured training service, checked (GPUs, ...) before anything of the experiment is created."""
    ts = config.training_service
    kwargs = ts.model_dump(exclude={"platform"})
    service = create_training_service(ts.platform, **kwargs)
    precheck = getattr(service, "precheck", None)
    if precheck is not None:
        try:
            precheck(config.trial_gpu_total)
        except ValueError as exc:
            raise ConfigError(f"config.training_service: {exc}") from None
    return service


def check_command_template(config: ExperimentConfig) -> None:
    """ConfigError if the trial command's ``{{ name }}`` placeholders name a parameter the space lacks."""
    if config.search_space is None:
        return
    commands = {"trial_command": config.trial_command}
    commands.update({f"trial_roles.{name}.command": role.command for name, role in (config.trial_roles or {}).items()})
    for where, command in commands.items():
        try:
            if command is not None:
                render_command(command, dict.fromkeys(config.search_space, ""))
        except KeyError as exc:
            raise ConfigError(f"config.{where}: {exc.args[0]}") from None


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno in (98, 48):  # EADDRINUSE (Linux, macOS)
            raise ExperimentError(f"port {port} on {host} is already in use; pick another one, "
                                  f"e.g. experiment.run(port={port + 1}) or `--port {port + 1}`") from None
        raise ExperimentError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def _dashboard_url(host: str, port: int, token: str) -> str:
    """The dashboard's URL; on a non-loopback address it carries the token (as Jupyter's does)."""
    if _is_loopback(host):
        return f"http://{_url_host(host)}:{port}"
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/?token={token}"


def _url_host(host: str) -> str:
    return "localhost" if _is_loopback(host) else host


def _write_token(directory: Path) -> str:
    token = secrets.token_urlsafe(24)
    path = directory / TOKEN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    return token


def _read_token(directory: Path) -> str | None:
    try:
        return (directory / TOKEN_FILE).read_text().strip()
    except OSError:
        return None


def _save_function(fn: Callable[..., Any], path: Path) -> None:
    import cloudpickle

    if not callable(fn):
        raise ConfigError(f"config.trial_function: expected a function, got {type(fn).__name__}")
    # A function from an imported module is pickled by reference by default, and the trial process
    # (another cwd, another sys.path) often cannot import that module: pickle it by value instead.
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    data = None
    if isinstance(fn, types.FunctionType) and module is not None and module.__name__ != "__main__":
        try:
            cloudpickle.register_pickle_by_value(module)
            try:
                data = cloudpickle.dumps(fn)
            finally:
                cloudpickle.unregister_pickle_by_value(module)
        except Exception:
            data = None
    with open(path, "wb") as fh:
        fh.write(data if data is not None else cloudpickle.dumps(fn))


def _load_function(path: Path) -> Callable[..., Any]:
    import cloudpickle

    with open(path, "rb") as fh:
        return cloudpickle.load(fh)


def _maximize(exp: Experiment) -> bool:
    if exp._tuner is not None:
        return exp._tuner.maximize
    return maximizes(exp.config.to_dict())


class _EngineLogHandler(logging.FileHandler):
    """engine.log; a failing write (disk full) is reported once on stderr, not as a traceback per line."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            error = sys.exc_info()[1]
            print(f"hpo: cannot write {self.baseFilename} ({error}); engine log lines are lost until there is space",
                  file=sys.stderr)


def _setup_logging(directory: Path, level: str, debug: bool) -> None:
    logger = logging.getLogger("hpo")
    for handler in list(logger.handlers):
        if getattr(handler, "_hpo_experiment", False):
            logger.removeHandler(handler)
            handler.close()
    handler = _EngineLogHandler(directory / "engine.log")
    handler._hpo_experiment = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    levels = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
              "error": logging.ERROR, "fatal": logging.CRITICAL}
    logger.setLevel(logging.DEBUG if debug else levels.get(level, logging.INFO))
    logger.propagate = False
