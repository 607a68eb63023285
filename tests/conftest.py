"""Shared fixtures for the engine tests: real trial processes, real SQLite stores, no mocks.

Every test gets its own ``HPO_HOME`` under ``tmp_path`` (nothing lands in ``~/hpo-experiments``, nor in NNI's
registry ``~/nni-experiments``),
and experiments are started on port 0 (a free port chosen by the OS).
"""
from __future__ import annotations

import json
import os
import secrets
import select
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest

from hpo.storage import ExperimentStore

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# `python3` on PATH is a slow pyenv shim (~100 ms a start): trials use this interpreter directly.
PY = shlex.quote(sys.executable)


@pytest.fixture(autouse=True)
def hpo_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hpo-home"
    monkeypatch.setenv("HPO_HOME", str(home))
    for var in [v for v in os.environ if v.startswith("HPO_") and v != "HPO_HOME"]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("HPO_NNI_REGISTRY", "0")  # nothing lands in ~/nni-experiments (tests/test_nnictl.py: a tmp HOME)
    return home


def write_script(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def new_mark() -> str:
    return f"1000.{secrets.randbelow(10**12):012d}"


def marked(mark: str) -> list[psutil.Process]:
    """Live (non-zombie) processes with ``mark`` in their command line."""
    found = []
    for proc in psutil.process_iter():
        try:
            if mark in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


ZYGOTE = "_zygote.py"


def zygotes(code: Path) -> list[psutil.Process]:
    """Live warm-start zygotes serving trials whose code directory is ``code``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if any(part.endswith(ZYGOTE) for part in proc.cmdline()) and proc.cwd() == str(code) \
                    and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def mark():
    mark = new_mark()
    yield mark
    for proc in marked(mark):  # teardown after a failure
        try:
            proc.kill()
        except psutil.Error:
            pass


class ExperimentFactory:
    """``make(script, search_space=..., **config)`` writes ``script`` as ``code/trial.py`` and returns an
    Experiment whose trial command runs it; every experiment made here is stopped at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.code = tmp_path / "code"
        self.code.mkdir(exist_ok=True)
        self.made: list[Any] = []

    def script(self, body: str, name: str = "trial.py") -> Path:
        return write_script(self.code, name, body)

    def __call__(self, script: str | None = None, *, tuner: Any = "random",
                 search_space: dict[str, Any] | None = None, command: str | None = None,
                 **config: Any) -> Any:
        from hpo import Experiment

        exp = Experiment("local") if tuner is None else Experiment(tuner, "local")
        exp.config.search_space = search_space or {"x": {"_type": "uniform", "_value": [0, 1]}}
        exp.config.trial_code_directory = self.code
        if script is not None:
            self.script(script)
            exp.config.trial_command = command or f"{PY} trial.py"
        elif command is not None:
            exp.config.trial_command = command
        for key, value in config.items():
            setattr(exp.config, key, value)
        self.made.append(exp)
        return exp

    def cleanup(self) -> None:
        for exp in self.made:
            try:
                exp.stop()
            except Exception:
                pass


@pytest.fixture
def make_experiment(tmp_path: Path):
    factory = ExperimentFactory(tmp_path)
    yield factory
    factory.cleanup()


def resume_to_end(experiment_id: str, timeout: float) -> Any:
    """Resume experiment ``experiment_id`` (its engine was killed) and wait up to ``timeout`` s for it to end;
    returns the resumed Experiment, stopped."""
    from hpo import Experiment
    resumed = Experiment.resume(experiment_id, port=0, wait_completion=False)
    try:
        assert resumed.wait(timeout)
    finally:
        resumed.stop()
    return resumed


def experiment_script(path: Path, code: Path, config: dict[str, Any], then: str) -> Path:
    """Write ``path``: a Python script that configures ``Experiment("random", "local")`` to run
    ``code/trial.py`` with ``config`` (config attribute -> value; a one-parameter space by default), then runs
    the statements ``then`` (which use ``exp``)."""
    config = {"search_space": {"x": {"_type": "uniform", "_value": [0, 1]}}, "trial_command": f"{PY} trial.py",
              "trial_code_directory": str(code), **config}
    head = f"""
        import json, sys
        sys.path.insert(0, {str(ROOT)!r})
        from hpo import Experiment
        exp = Experiment("random", "local")
        for key, value in json.loads({json.dumps(config)!r}).items():
            setattr(exp.config, key, value)
    """
    return write_script(path.parent, path.name, textwrap.dedent(head) + textwrap.dedent(then))


class Launcher:
    """Runs an experiment in a separate Python process (``start()`` then wait), like a user's script."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[str]] = []
        self.directories: list[Path] = []

    def __call__(self, trial_body: str, **config: Any) -> tuple[subprocess.Popen[str], str, Path]:
        """Start ``trial_body`` as ``code/trial.py`` with ``config`` (by default a seeded random search over
        x and y); returns the process, the experiment id and its folder."""
        code = self.tmp_path / "code"
        write_script(code, "trial.py", trial_body)
        config.setdefault("search_space", {"x": {"_type": "uniform", "_value": [0, 1]},
                                           "y": {"_type": "choice", "_value": [1, 2, 3]}})
        config.setdefault("tuner", {"name": "random", "class_args": {"seed": 3}})
        launch = experiment_script(self.tmp_path / f"launch{len(self.procs)}.py", code, config, """
            exp.start(port=0)
            print("ID", exp.id, exp.directory, flush=True)
            exp.wait()
            print("ENDED", exp.get_status(), flush=True)
            exp.stop()
        """)
        err = launch.with_suffix(".err")
        with open(err, "w") as err_file:
            proc = subprocess.Popen([sys.executable, str(launch)], stdout=subprocess.PIPE, stderr=err_file,
                                    text=True, cwd=self.tmp_path)
        self.procs.append(proc)
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
        if not line.startswith("ID "):
            proc.kill()
            pytest.fail(f"launcher did not start the experiment: {line!r}; stderr: {err.read_text()[-2000:]}")
        _, exp_id, directory = line.split(maxsplit=2)
        self.directories.append(Path(directory.strip()))
        return proc, exp_id, self.directories[-1]

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        kill_trial_groups(self.directories)


def kill_trial_groups(directories: list[Path]) -> None:
    """Best-effort teardown: SIGKILL the process group of every trial recorded in these stores."""
    import signal

    from hpo.storage import ExperimentStore

    for directory in directories:
        try:
            with ExperimentStore(directory, readonly=True) as store:
                trials = [(t["pgid"], t["started_at"]) for t in store.trials() if t["pgid"]]
        except Exception:
            continue
        for pgid, started in trials:
            try:
                if psutil.Process(pgid).create_time() > (started or 0) + 5:
                    continue  # pid reused by something else
                os.killpg(pgid, signal.SIGKILL)
            except (psutil.Error, ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def launcher(tmp_path: Path):
    launch = Launcher(tmp_path)
    yield launch
    launch.cleanup()


@pytest.fixture(scope="module")
def browser():
    """One headless Debian Chromium per test module, driven by Playwright (the browser tests' pages)."""
    from browser_support import CHROMIUM_ARGS, chromium_path

    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the Python package)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


# -- an engine in a child process (so that it can be killed -9) ------------------------------------------------
class Spawned:
    def __init__(self, proc: subprocess.Popen[str], exp_id: str, directory: Path) -> None:
        self.proc, self.id, self.directory = proc, exp_id, directory

    def store(self) -> ExperimentStore:
        return ExperimentStore(self.directory, readonly=True)

    def crash(self) -> None:
        """SIGKILL the engine and wait until it has exited (reaped: no zombie)."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def spawn(launcher):
    """``spawn(trial_body, **config)``: an experiment started by a separate Python process."""
    made: list[Spawned] = []

    def start(trial_body: str, **config: Any) -> Spawned:
        config.setdefault("search_space", {"x": {"_type": "uniform", "_value": [0, 1]}})
        made.append(Spawned(*launcher(trial_body, **config)))
        return made[-1]

    yield start
    for s in made:
        kill_all(_processes_of(s.id))


def kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.Error:  # it ended meanwhile
            pass


def _processes_of(experiment_id: str) -> list[Any]:
    from test_engine import processes_of
    return processes_of(experiment_id)


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB tmpfs mounted on a fresh folder (root only; skipped where mounting is not permitted), for full-disk
    tests; unmounted afterwards."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip() or 'mount failed'}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
