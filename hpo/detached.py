"""Engines that outlive their caller: ``hpo create`` / ``hpo resume`` run in a background process.

:func:`spawn` runs ``python -m hpo.cli <argv> --port P --foreground --ready-fd N`` in a new session (its output
in ``$HPO_HOME/logs/``) and waits until that process reports ``ready <id> <port>`` (once trials can run) or
``error <message>`` on an inherited pipe.  Every failure is a one-line :class:`DetachedStartError`.
"""
from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hpo.registry import hpo_home

__all__ = ["spawn", "Detached", "DetachedStartError", "READY_TIMEOUT"]

_ROOT = str(Path(__file__).resolve().parent.parent)
READY_TIMEOUT = 120.0


class DetachedStartError(RuntimeError):
    """The background process could not start the experiment; the message is one line."""


@dataclass(frozen=True)
class Detached:
    """A started background engine."""

    experiment_id: str
    port: int
    pid: int
    log_path: Path


def spawn(kind: str, argv: list[str], port: int) -> Detached:
    """Run ``hpo <argv> --foreground`` (``kind``: create or resume) detached and wait for its ready line.

    ``port`` 0 lets the engine pick a free port.  Raises DetachedStartError with the child's own reason."""
    from hpo.experiment import _bind
    _bind("127.0.0.1", port).close()  # a busy port is reported before anything is written
    logs = hpo_home() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p))
    try:
        with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
            proc = subprocess.Popen([sys.executable, "-m", "hpo.cli", *argv, "--port", str(port),
                                     "--foreground", "--ready-fd", str(write_fd)],
                                    stdin=devnull, stdout=log, stderr=subprocess.STDOUT, pass_fds=(write_fd,),
                                    start_new_session=True, env=env)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    data, deadline = b"", time.monotonic() + READY_TIMEOUT
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while b"\n" not in data and time.monotonic() < deadline:
            if select.select([pipe], [], [], 0.5)[0]:
                chunk = pipe.read(4096)
                if not chunk:
                    break
                data += chunk
    word, _, rest = data.decode("utf-8", "replace").partition("\n")[0].partition(" ")
    if word == "ready":
        experiment_id, ready_port = rest.split()
        return Detached(experiment_id, int(ready_port), proc.pid, log_path)
    if word == "error":
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)  # it exits after reporting: no zombie is left
        raise DetachedStartError(rest)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        raise DetachedStartError(f"the background process did not start within {READY_TIMEOUT:g} s; see {log_path}")
    raise DetachedStartError(f"the background process exited (code {proc.wait()}) before it was ready; "
                             f"see {log_path}")
