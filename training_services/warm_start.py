"""Warm trial starts: which commands can be forked from a zygote, and the engine's handle on one (``_zygote.py``).

A zygote is a Python process per experiment that imported the trial's modules once (``trial_preload``, and a
``trial_function``'s module) and forks a supervisor and a trial per launch: the trial costs a fork instead of
an interpreter start and its imports.  The engine speaks to it over a ``SOCK_SEQPACKET`` socket pair.
"""
from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shlex
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from hpo.templates import with_placeholders_as

__all__ = ["warm_argv", "can_start_warm", "WarmStartError", "Zygote", "WarmProcess"]

_ZYGOTE = str(Path(__file__).resolve().parent / "_zygote.py")
_INTERPRETER = re.compile(r"python(\d+(\.\d+)?)?")
_SHELL_SPECIAL = set("$`*?[]{}~;&|<>()\\\n")
_FLAGS = {"-u": {"PYTHONUNBUFFERED": "1"}, "-B": {"PYTHONDONTWRITEBYTECODE": "1"}}
MAX_PACKET = 1 << 20
ENV_SLOT = "HPO_ZYGOTE_ENV_SLOT"  # room in the zygote's environment block for each trial's markers (_zygote.py)


class WarmStartError(Exception):
    """The zygote could not be started or could not fork a trial (the trial then starts cold)."""


@functools.lru_cache(maxsize=256)
def _parse(command: str) -> tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]] | None:
    parsed = _warm_argv(command)
    return None if parsed is None else (parsed[0], tuple(parsed[1]), tuple(parsed[2].items()))


def warm_argv(command: str) -> tuple[str, list[str], dict[str, str]] | None:
    """``(interpreter, argv, env)`` of a command a zygote can run: ``python [-u] [-B] script.py args`` or
    ``python [-u] [-B] -m module args`` with no shell syntax (quoting aside); argv is what follows the
    interpreter, env what its flags mean.  None for any other command."""
    parsed = _parse(command)  # the same command for every trial of a function, or of a script without templates
    return None if parsed is None else (parsed[0], list(parsed[1]), dict(parsed[2]))


def _warm_argv(command: str) -> tuple[str, list[str], dict[str, str]] | None:
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    unquoted = re.sub(r"'[^']*'|\"[^\"$`\\]*\"", "", command)
    if not words or _SHELL_SPECIAL & set(unquoted) or not _INTERPRETER.fullmatch(os.path.basename(words[0])):
        return None
    env: dict[str, str] = {}
    rest = words[1:]
    while rest and rest[0] in _FLAGS:
        env.update(_FLAGS[rest.pop(0)])
    if not rest or (rest[0].startswith("-") and rest[0] != "-m") or rest[0] == "-m" and len(rest) < 2:
        return None
    return words[0], rest, env


def can_start_warm(template: str) -> bool:
    """Whether a trial command template (``{{ name }}`` placeholders: quoted words once rendered) starts warm."""
    return warm_argv(with_placeholders_as(template, "x")) is not None


class WarmProcess:
    """A trial's supervisor forked by the zygote: ``pid`` (also its process group), ``returncode`` once it
    ended (negative: the signal that ended it), like :class:`asyncio.subprocess.Process` for what the local
    service uses.  The supervisor writes the trial's exit code on a status pipe before it exits; a pipe closed
    with nothing on it means the supervisor was killed (``-SIGKILL``).  It has ended once the pipe is closed and
    (where the system has pidfds) the process is gone: the pipe closes while it is still exiting."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._data = bytearray()
        self._pending = 1  # the status pipe's end, then the process's
        try:
            self._pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # no pidfds (or it is gone already): the pipe's end is the end
            self._pidfd = -1
        else:
            self._pending += 1
            asyncio.get_running_loop().add_reader(self._pidfd, self._exited)

    def _exited(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._one_done()

    def _one_done(self) -> None:
        self._pending -= 1
        if self._pending == 0 and not self._done.done():
            self._done.set_result(None)

    async def wait(self) -> int:
        await asyncio.shield(self._done)
        assert self.returncode is not None
        return self.returncode

    async def follow(self, status_fd: int) -> None:
        loop = asyncio.get_running_loop()
        process = self

        class Status(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                process._data += data

            def connection_lost(self, exc: Exception | None) -> None:
                try:
                    process.returncode = int(process._data.decode())
                except ValueError:
                    process.returncode = -signal.SIGKILL
                process._one_done()

        await loop.connect_read_pipe(Status, os.fdopen(status_fd, "rb", buffering=0))


class Zygote:
    """The engine's handle on one zygote process: :meth:`start` it, :meth:`spawn` trials, :meth:`close` it."""

    def __init__(self, proc: asyncio.subprocess.Process, sock: socket.socket, base_env: dict[str, str],
                 warnings: list[str]) -> None:
        self.proc, self.sock, self.base_env, self.warnings = proc, sock, base_env, warnings
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self.closed = False
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_reply)

    @classmethod
    async def start(cls, preload: list[str], function_file: str | None, cwd: Path, env: dict[str, str],
                    log_path: Path) -> "Zygote":
        """Start a zygote in ``cwd`` with ``env`` (the trials' common environment); it imports ``preload`` (and
        loads ``function_file``) before this returns.  Raises WarmStartError when it cannot serve trials."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with open(log_path, "ab") as log:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, _ZYGOTE, str(theirs.fileno()), cwd=cwd, env={**env, ENV_SLOT: "x" * 512}, pass_fds=(theirs.fileno(),),
                    stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        try:
            await loop.sock_sendall(ours, json.dumps({"preload": preload, "function_file": function_file}).encode())
            hello = await loop.sock_recv(ours, MAX_PACKET)
            answer = json.loads(hello) if hello else {"ready": False, "error": f"it exited; see {log_path}"}
            if not answer.get("ready"):
                raise WarmStartError(answer.get("error") or "it refused")
        except BaseException:
            ours.close()
            await _end(proc)
            raise
        return cls(proc, ours, env, list(answer.get("warnings") or []))

    async def spawn(self, argv: list[str], env: dict[str, str], cwd: Path, grace: float,
                    fds: tuple[int, int, int, int]) -> WarmProcess:
        """Fork a trial running ``argv`` (what follows ``python``) with ``env`` in ``cwd``; ``fds`` are its stdout,
        stderr, report pipe and lifeline (the caller keeps and closes them).  Raises WarmStartError."""
        if self.closed:
            raise WarmStartError("the zygote has exited")
        status_r, status_w = os.pipe()
        self._next_id += 1
        request_id = self._next_id
        try:
            request = json.dumps({
                "id": request_id, "argv": argv, "cwd": str(cwd), "grace": grace,
                "env_set": {k: v for k, v in env.items() if self.base_env.get(k) != v},
                "env_unset": [k for k in self.base_env if k not in env]}).encode()
            if len(request) > MAX_PACKET:
                raise WarmStartError(f"the trial's environment is too large to send ({len(request)} bytes)")
            reply = asyncio.get_running_loop().create_future()
            self._pending[request_id] = reply
            try:
                await self._send(request, [*fds, status_w])
            finally:
                os.close(status_w)
                status_w = -1
            answer = await reply
        except BaseException:
            self._pending.pop(request_id, None)
            os.close(status_r)
            if status_w >= 0:
                os.close(status_w)
            raise
        if "pid" not in answer:
            os.close(status_r)
            raise WarmStartError(answer.get("error") or "no answer")
        process = WarmProcess(answer["pid"])
        await process.follow(status_r)
        return process

    async def _send(self, data: bytes, fds: list[int]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                socket.send_fds(self.sock, [data], fds)
                return
            except BlockingIOError:
                writable = loop.create_future()
                loop.add_writer(self.sock.fileno(), writable.set_result, None)
                try:
                    await writable
                finally:
                    loop.remove_writer(self.sock.fileno())
            except OSError as exc:
                self._lost(f"the zygote is gone ({exc.strerror or exc})")
                raise WarmStartError(f"the zygote is gone ({exc.strerror or exc})") from None

    def _on_reply(self) -> None:
        try:
            data = self.sock.recv(MAX_PACKET)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            data, why = b"", exc.strerror
        else:
            why = "it exited"
        if not data:
            self._lost(f"the zygote has exited ({why}); see zygote.log in the experiment's folder")
            return
        answer = json.loads(data)
        reply = self._pending.pop(answer.get("id"), None)
        if reply is not None and not reply.done():
            reply.set_result(answer)

    def _lost(self, why: str) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        for reply in self._pending.values():
            if not reply.done():
                reply.set_result({"error": why})
        self._pending.clear()

    async def close(self) -> None:
        """End the zygote (the trials it forked are not affected: their supervisors answer to their lifelines)."""
        self._lost("the zygote was closed")
        self.sock.close()
        await _end(self.proc)


async def _end(proc: asyncio.subprocess.Process) -> None:
    """Wait up to 2 s for the zygote to see its socket close and exit, then kill it."""
    try:
        await asyncio.wait_for(proc.wait(), 2.0)
    except asyncio.TimeoutError:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        await proc.wait()
