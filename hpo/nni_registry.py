"""hpo's running experiments in NNI's experiment registry, so that NNI's own ``nnictl`` finds them.

NNI 3.0's tools (``nnictl``, its Python ``Experiment``, its manager) keep one registry per account:
``~/nni-experiments/.experiment`` (``~`` is ``$HOME``; NNI has no variable or setting that moves it:
``experimentWorkingDirectory`` only moves an experiment's own folder, which the entry's ``logDir`` names).  It is
a JSON object, experiment id -> ``{id, port, startTime, endTime, status, platform, experimentName, tag, pid,
webuiUrl, logDir, prefixUrl}``, and every writer follows NNI's lock protocol (``nnictl/common_utils.py``'s
``SimplePreemptiveLock``, ``experiments_manager/utils.js``'s ``withLock``): a writer may go ahead only while no
``.experiment.lock.*`` file is younger than 2 s; it then creates ``.experiment.lock.<its pid>`` exclusively,
reads, changes and writes the file, and removes its lock file.  :func:`nni_lock` does exactly that (plus a
re-check after creating its lock file, so that of two writers that raced only one goes on, and a bounded wait).

What hpo writes, and when:

* a running hpo experiment whose dashboard serves NNI's REST routes (loopback, the default) gets an entry while
  it runs; its ``pid`` is a small *NNI-manager stand-in* process (:func:`stand_in_main`), never the engine's
  process, which may be the user's own Python.  nnictl's ``stop`` sends that pid SIGTERM and waits for it to end:
  the stand-in asks the engine for a clean stop and ends once the experiment has stopped (trials stopped, state
  recorded), so ``run()`` returns and the user's script goes on.  The stand-in owns the entry: it writes it with
  its own pid, keeps its ``status`` current, and removes it when the experiment ends, also when the engine's
  process dies (its stdin closes).  If the stand-in itself is killed (SIGKILL), the engine stops the experiment,
  as NNI's does when its manager dies, and removes the entry.  Entries are removed, not kept as STOPPED: NNI's
  ``resume``/``view``/``clean`` of an entry need NNI's own database, and ``hpo list --all`` is the history;
* nothing else in the file is changed: other entries stay as they are (only entries marked ``"hpo": true`` whose
  stand-in is gone are pruned), and a registry that is not a JSON object is left untouched (the experiment runs,
  unlisted, with a warning).  The file is replaced atomically (write, fsync, rename), never truncated in place.

Default: on when ``~/nni-experiments`` exists or ``nnictl`` is on ``PATH`` (someone uses NNI here); ``HPO_NNI_REGISTRY=0``
turns it off, ``=1`` on (creating ``~/nni-experiments``).  Stdlib only: the stand-in imports nothing else.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

__all__ = ["REGISTRY_ENV", "LOCK_STALE", "RegistryError", "registry_file", "enabled", "nni_lock", "read_registry",
           "add_entry", "update_entry", "remove_entry", "stand_in_main"]

REGISTRY_ENV = "HPO_NNI_REGISTRY"
LOCK_STALE = 2.0          # seconds: a lock file older than this is ignored (NNI: stale=2, lockStale 2000 ms)
LOCK_TIMEOUT = 10.0       # NNI's Python waits for ever; hpo gives up (and says so) after this long
_POLL = 0.05              # NNI's retry interval (filelock's poll, withLock's 50 ms)
_MARK = "hpo"             # entries hpo wrote carry "hpo": true
log = logging.getLogger("hpo.nni")
_in_process = threading.Lock()  # the lock file is named by the pid: one holder per process at a time


class RegistryError(Exception):
    """The registry could not be read or locked; it was left as it was.  The message is one line."""


def registry_file() -> Path:
    """``~/nni-experiments/.experiment``, as NNI's tools compute it (``os.path.expanduser('~')``)."""
    return Path(os.path.expanduser("~")) / "nni-experiments" / ".experiment"


def enabled() -> bool:
    """Whether hpo registers its running experiments for nnictl (see the module's docstring)."""
    value = os.environ.get(REGISTRY_ENV, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    return registry_file().parent.is_dir() or shutil.which("nnictl") is not None


def _fresh_locks(path: Path, now: float) -> list[str]:
    prefix = path.name + ".lock."
    fresh = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(path.parent):
            if name.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    if now - os.stat(path.parent / name).st_mtime < LOCK_STALE:
                        fresh.append(name)
    return fresh


@contextlib.contextmanager
def nni_lock(path: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold NNI's lock on ``path`` (see the module's docstring); RegistryError after ``timeout`` s."""
    own = path.parent / f"{path.name}.lock.{os.getpid()}"
    deadline = time.monotonic() + timeout
    with _in_process:
        while True:
            if not _fresh_locks(path, time.time()):
                with contextlib.suppress(FileNotFoundError):
                    if own.exists() and time.time() - own.stat().st_mtime >= LOCK_STALE:
                        own.unlink()  # left by an earlier process with this pid: NNI would wait on it for ever
                try:
                    fd = os.open(own, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_TRUNC, 0o644)
                except FileExistsError:
                    fd = None
                if fd is not None:
                    # NNI's writers check, then create: two that raced both hold a file now.  Back off if so.
                    if _fresh_locks(path, time.time()) == [own.name]:
                        break
                    os.close(fd)
                    with contextlib.suppress(FileNotFoundError):
                        own.unlink()
            if time.monotonic() > deadline:
                raise RegistryError(f"{path} stayed locked for {timeout:g} s "
                                    f"(lock files: {', '.join(_fresh_locks(path, time.time())) or 'none'})")
            time.sleep(_POLL * random.uniform(0.5, 1.5))  # two backing-off writers fall out of step
        try:
            yield
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                own.unlink()


def read_registry(path: Path) -> dict[str, Any]:
    """The registry's entries ({} when there is no file, or an empty one, as NNI reads it); RegistryError when
    it holds something else, which hpo then never overwrites."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"cannot read {path}: {exc}") from None
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RegistryError(f"{path} is not JSON ({exc}); left as it is") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{path} is not a JSON object; left as it is")
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    target = Path(os.path.realpath(path))  # a linked registry stays linked
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f"{target.name}.hpo-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=4)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def add_entry(path: Path, entry: dict[str, Any]) -> None:
    """Write hpo's ``entry`` (NNI's fields; marked as hpo's) under its id; hpo entries whose process is gone are
    pruned.  RegistryError (the file unchanged) if the registry is unreadable or the id is another's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with nni_lock(path):
        data = read_registry(path)
        current = data.get(entry["id"])
        if current is not None and not (isinstance(current, dict) and current.get(_MARK) is True):
            raise RegistryError(f"{path} already has an experiment {entry['id']!r} that is not hpo's; left as it is")
        for key in [k for k, v in data.items() if isinstance(v, dict) and v.get(_MARK) is True
                    and not _alive(v.get("pid"))]:
            del data[key]
        data[entry["id"]] = {**entry, _MARK: True}
        _write(path, data)


def update_entry(path: Path, experiment_id: str, pid: int, **fields: Any) -> bool:
    """Set fields of hpo's entry for ``experiment_id`` if it is still the one process ``pid`` wrote."""
    with nni_lock(path):
        data = read_registry(path)
        entry = data.get(experiment_id)
        if not (isinstance(entry, dict) and entry.get(_MARK) is True and entry.get("pid") == pid):
            return False
        if all(entry.get(k) == v for k, v in fields.items()):
            return True
        entry.update(fields)
        _write(path, data)
        return True


def remove_entry(path: Path, experiment_id: str, pid: int) -> bool:
    """Remove hpo's entry for ``experiment_id`` if process ``pid`` wrote it (nothing else is touched)."""
    if not path.exists():
        return False
    with nni_lock(path):
        data = read_registry(path)
        entry = data.get(experiment_id)
        if not (isinstance(entry, dict) and entry.get(_MARK) is True and entry.get("pid") == pid):
            return False
        del data[experiment_id]
        _write(path, data)
        return True


# -- the NNI-manager stand-in ---------------------------------------------------------------------------------
def stand_in_main(argv: list[str] | None = None) -> None:
    """The process whose pid NNI's tools see as the experiment's (run by :class:`webui.nni_api.StandIn`).

    ``argv``: ``[registry_file, entry_json]`` to own a registry entry, or nothing.  It lives until its stdin
    ends (the experiment ended, or the engine's process died); lines on stdin ``status S`` update the entry.  On
    SIGTERM (``nnictl stop``, NNI's ``kill_command``) it writes ``stop`` on stdout and keeps living until the
    engine has stopped the experiment and closes its stdin.  It writes ``ready`` (or ``error <why>``) once the
    entry is written, and removes the entry before it exits."""
    args = sys.argv[1:] if argv is None else argv
    out = sys.stdout.fileno()

    def say(line: str) -> None:
        with contextlib.suppress(OSError):
            os.write(out, (line.replace("\n", " ") + "\n").encode("utf-8", "replace"))

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # not a terminal's Ctrl-C: only an explicit stop
    signal.signal(signal.SIGTERM, lambda _s, _f: say("stop"))
    path = Path(args[0]) if len(args) >= 2 else None
    experiment_id, registered = "", False
    if path is not None:
        entry = json.loads(args[1])
        experiment_id = entry["id"]
        try:
            add_entry(path, {**entry, "pid": os.getpid()})
            registered = True
        except (RegistryError, OSError) as exc:
            say(f"error {exc}")
    if registered or path is None:
        say("ready")
    for line in sys.stdin:
        word, _, rest = line.strip().partition(" ")
        if word == "status" and registered and rest:
            with contextlib.suppress(RegistryError, OSError):
                update_entry(path, experiment_id, os.getpid(), status=rest)  # type: ignore[arg-type]
    if registered:
        with contextlib.suppress(RegistryError, OSError):
            remove_entry(path, experiment_id, os.getpid())  # type: ignore[arg-type]
