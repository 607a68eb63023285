"""Remote training service: trials on machines reachable over SSH, driven from the engine's event loop.

A remote machine needs Python 3 and an SSH server, nothing else: no package is installed there and
the trial never connects back to the engine.  Per machine, one SSH connection (asyncssh) carries
everything:

* at start, a small pure-Python agent (``_remote_agent.py``) and the trial API (``hpo/trial.py``,
  stdlib only) are uploaded over SFTP to ``<remote_directory>/.agent-<hash>/``;
* the trial code directory is packed once per experiment (tar.gz, minus ``DEFAULT_IGNORE`` and the
  globs in its ``.hpoignore`` / ``.nniignore``; a warning past ``CODE_SIZE_WARNING``), uploaded over
  SFTP to each machine the first time a trial runs there and unpacked into
  ``<remote_directory>/<experiment_id>/code-<version>``.  Each launch checks the files' names, sizes
  and mtimes: if they changed, the new version is packed and shipped for the trials launched from
  then on (as with the local service, a trial runs the code as it was when it was launched);
* each trial gets ``<remote_directory>/<experiment_id>/trials/<trial_id>/`` and runs detached from
  the SSH session (its own session and process group), so a dropped connection does not end it.
  Parameters go out in the launch command; reports, stdout and stderr come back through the
  agent's stdout on the same connection (copied to the local trial folder as they arrive).

Faults: a machine that cannot be reached or authenticated at :meth:`RemoteTrainingService.start` is
an error naming it and the cause.  A connection that drops later is re-established with backoff;
each of its trials is then followed again from the byte offsets already received.  A machine still
unreachable ``reconnect_timeout`` seconds after the drop (not earlier) is taken out of rotation with
a warning.

Restarts: a trial lost to the platform (its machine unreachable, taken out, or its processes gone
without an exit status) is not the trial's failure: it is restarted, at most ``max_trial_restarts``
times (the experiment config's; default 3), as a new copy in its own remote folder
``<trial_id>.<n>``, with a note in its ``stderr.log``; a trial lost once more fails ("lost N times").
``restart_after`` seconds (default 5) after a machine dropped, each of its trials is restarted on
another machine as soon as one has room; with no other usable machine it waits for its own.  The
copy on the unreachable machine is *replaced*: only the trial's current copy reports, and a copy
reports intermediate result n only if no earlier copy did (a restart redoes steps already
reported).  When the machine comes back, a replaced copy is killed there, unless it finished
meanwhile with exit status 0 and the trial has no final result yet: its result came first, so it
becomes the current copy again (its remaining reports and its end are the trial's) and the restarted
copy is killed.  ``max_trial_retries`` (the engine's) re-runs trials that failed on their own.
Host keys are checked against ``known_hosts_file`` (default ``~/.ssh/known_hosts``); with
``accept_new_host_keys`` a machine never seen before is trusted and recorded there (like OpenSSH's
``StrictHostKeyChecking=accept-new``); a key that differs from a recorded one is always refused.
Passwords and passphrases are kept in memory only: the config stores them as null, so a resumed
experiment needs them set again (or key files without passphrase, or an ssh-agent).

Trial processes get ``HPO_TRIAL_DIR`` (the remote trial folder), ``HPO_PARAMETERS_FILE`` and
``HPO_REPORT_FILE`` there, ``CUDA_VISIBLE_DEVICES``, and ``python_path`` first on ``PATH``
(``python_path`` may be an interpreter or a folder holding ``python3``).  What a trial writes in its
remote folder stays on the machine, as do the folders (for inspection).

Warm starts (``trial_warm_start: true``, ``trial_preload``): each machine's agent starts one zygote, which preloads
the modules once, and forks every ``python script.py args`` / ``python -m module args`` trial from it, with the
local service's semantics (see ``training_services/warm_start.py``).  A machine whose ``python3`` is older than
3.9, or another interpreter than the one the command names, starts its trials cold, with one warning.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from hpo.trial import parse_channel_report, parse_stdout_report
from training_services.base import TrainingService, TrialEvents, TrialSpec, failure_message
from training_services.code_package import CodePacker, trial_api_files
from training_services.nni_env import nni_environment
from training_services.gang import GangProcess
from training_services.gpu import GpuAllocator, GpuInfo
from training_services.remote_gang import RemoteGangs, _Gang, member_folder
from training_services.warm_start import warm_argv

__all__ = ["RemoteTrainingService", "RemoteMachine"]

log = logging.getLogger("hpo.remote")

AGENT_FILE = Path(__file__).with_name("_remote_agent.py")
ZYGOTE_FILE = Path(__file__).with_name("_zygote.py")  # warm starts: uploaded beside the agent
SUPERVISOR_FILE = Path(__file__).with_name("_trial_supervisor.py")
RESTORE_FOLDER = "restore"  # in a copy's remote folder: the checkpoint it restores, while it runs
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 10.0


def _reveal(value: Any) -> Any:
    """The clear text of a pydantic SecretStr (or the value itself)."""
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


@dataclass
class RemoteMachine:
    """One ``machine_list`` entry (NNI's field names); secrets are left out of ``repr``."""

    host: str
    user: str | None = None
    port: int = 22
    password: str | None = field(default=None, repr=False)
    ssh_key_file: str | None = None
    ssh_passphrase: str | None = field(default=None, repr=False)
    python_path: str | None = None
    gpu_indices: list[int] | None = None
    use_active_gpu: bool = False
    max_trial_number_per_gpu: int = 1
    max_trials: int | None = None

    @classmethod
    def from_any(cls, entry: Any) -> "RemoteMachine":
        if isinstance(entry, RemoteMachine):
            return entry
        data = dict(entry) if isinstance(entry, Mapping) else entry.model_dump()
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"machine_list: unknown key(s) {unknown}; expected some of {sorted(known)}")
        data = {k: _reveal(v) for k, v in data.items()}
        if data.get("ssh_key_file") is not None:
            data["ssh_key_file"] = str(Path(str(data["ssh_key_file"])).expanduser())
        if not data.get("host"):
            raise ValueError("machine_list: every machine needs a 'host'")
        return cls(**data)

    @property
    def label(self) -> str:
        """How trials name their host: ``host`` or ``host:port``."""
        return self.host if self.port == 22 else f"{self.host}:{self.port}"

    @property
    def address(self) -> str:
        """How errors name the machine: ``user@host:port``."""
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"


# -- per-trial state -----------------------------------------------------------------------------------------
@dataclass
class _Trial:
    """One trial as the engine sees it: its local log files, and the copy whose reports count."""

    spec: TrialSpec
    stdout_file: Any
    stderr_file: Any
    started: asyncio.Future[None]
    current: "_Run | None" = None
    restart: asyncio.Task[None] | None = None  # waiting for a machine with room to restart on
    restarts: int = 0
    steps: int = 0                              # intermediate results reported to the engine
    final_sent: bool = False
    launch_error: str | None = None
    kill_status: str | None = None
    kill_reason: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    last_pull: asyncio.Task[None] | None = None  # the latest checkpoint copy (reported after the one before it,
                                                 # so it ends last: while it runs, copies are in flight)
    end: tuple[str, int | None, str | None] | None = None   # reported once the copies are done
    gang: _Gang | None = None                   # for a process of a distributed trial (a member, see remote_gang):
    process: GangProcess | None = None          # which one; it reports to its gang, not to the engine
    extra_env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] | None = None         # written into its remote folder before it starts
    merge_partial: list[bytes] = field(default_factory=lambda: [b"", b""])
    end_status: tuple[str, int | None, str | None] | None = None
    started_run: "_Run | None" = None           # a member's copy that started (it may have ended since)


@dataclass
class _Run:
    """One copy of a trial on one machine; ``key`` names it to the agent and is its remote folder's name
    (the trial id, then ``<trial id>.<n>`` for restart n)."""

    trial: _Trial
    host: "_Host"
    gpus: list[int]
    key: str
    remote_dir: str
    code_remote: str = ""
    off: list[int] = field(default_factory=lambda: [0, 0, 0])
    partial: list[bytes] = field(default_factory=lambda: [b"", b""])
    pid: int | None = None
    started_sent: bool = False
    report_error: str | None = None
    steps: int = 0                              # intermediate results this copy reported
    held: list[dict[str, Any]] | None = None   # a replaced copy's events while its follow reply is decided on


class _HostError(Exception):
    """A problem with one machine; the text names it."""


# -- one machine -----------------------------------------------------------------------------------------------
class _Host:
    def __init__(self, service: "RemoteTrainingService", machine: RemoteMachine, index: int) -> None:
        self.svc, self.m, self.index = service, machine, index
        self.state = "down"                   # up | reconnecting | out | closed
        self.conn: Any = None
        self.agent: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.reconnect_task: asyncio.Task[None] | None = None
        self.strand_timer: asyncio.TimerHandle | None = None
        self.generation = 0
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_req = 0
        self.runs: dict[str, _Run] = {}       # by key: every copy here whose end was not seen yet
        self.assigned = 0
        self.allocator = GpuAllocator([], machine.max_trial_number_per_gpu, machine.use_active_gpu)
        self.code: dict[tuple[str, str], asyncio.Future[str]] = {}
        self.root = ""
        self.agent_dir = ""
        self.out_reason: str | None = None
        self.failures = 0
        self.client_key: Any = None
        self.host_key_problem: str | None = None

    @property
    def label(self) -> str:
        return self.m.label

    # connection ------------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect, install the agent if needed and start it; raises _HostError naming the machine."""
        import asyncssh

        svc, m = self.svc, self.m
        try:
            if m.ssh_key_file and self.client_key is None:
                self.client_key = _load_key(m.ssh_key_file, m.ssh_passphrase)
            self.host_key_problem = None
            host = self

            class Client(asyncssh.SSHClient):
                def validate_host_public_key(self, hostname: str, addr: str, port: int, key: Any) -> bool:
                    return svc._check_new_host_key(host, hostname, addr, port, key)

            conn = await asyncio.wait_for(asyncssh.connect(
                m.host, m.port, username=m.user, password=m.password,
                client_keys=[self.client_key] if self.client_key is not None else (),
                agent_path=None if self.client_key is not None else (),
                known_hosts=svc._known_hosts(), client_factory=Client, connect_timeout=svc.connect_timeout,
                keepalive_interval=svc.keepalive_interval, keepalive_count_max=3,
                preferred_auth="publickey,password" if m.password else "publickey",
                ), svc.connect_timeout + 5)
        except Exception as exc:  # noqa: BLE001 - described for the user
            raise _HostError(f"remote machine {m.address}: {self._describe(exc)}") from None
        try:
            await self._start_agent(conn)
        except Exception as exc:  # noqa: BLE001
            conn.abort()
            text = str(exc) if isinstance(exc, _HostError) else _describe(exc)
            raise _HostError(f"remote machine {m.address}: {text}") from None
        self.conn = conn
        self.state = "up"

    def _describe(self, exc: BaseException) -> str:
        import asyncssh

        if isinstance(exc, _HostError):
            return str(exc)
        if self.host_key_problem is not None:
            return self.host_key_problem
        if isinstance(exc, asyncssh.PermissionDenied):
            if self.m.ssh_key_file or self.m.password:
                how = "ssh_key_file" if self.m.ssh_key_file else "password"
                return (f"authentication failed for user {self.m.user!r}: the server refused the {how}; "
                        "check user, ssh_key_file, ssh_passphrase and password")
            return (f"authentication failed for user {self.m.user!r} with the default keys and ssh-agent: no "
                    "password or ssh_key_file is set (passwords are never stored: set it again after a resume)")
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            return f"host key not verifiable ({exc.reason})"
        if isinstance(exc, asyncssh.DisconnectError):
            return f"disconnected by the server: {exc.reason}"
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused (is an SSH server listening on that port?)"
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            return f"no answer within {self.svc.connect_timeout:g} s (host down or port filtered?)"
        if isinstance(exc, OSError) and exc.__class__.__name__ == "gaierror":
            return f"cannot resolve host name {self.m.host!r} ({exc.strerror})"
        if isinstance(exc, OSError):
            return f"cannot connect: {exc.strerror or exc}"
        return _describe(exc)

    async def _start_agent(self, conn: Any) -> None:
        svc = self.svc
        async with conn.start_sftp_client() as sftp:
            home = await sftp.realpath(".")
            root = svc.remote_directory
            if root == "~" or root.startswith("~/"):
                root = home + root[1:]
            elif not root.startswith("/"):
                root = f"{home}/{root}"
            self.root = root.rstrip("/")
            self.agent_dir = f"{self.root}/.agent-{svc._agent_digest}"
            if not await sftp.exists(f"{self.agent_dir}/agent.py"):
                tmp = f"{self.agent_dir}.tmp{secrets.token_hex(4)}"
                for folder in sorted({rel.rpartition("/")[0] for rel in svc._agent_files if "/" in rel}):
                    await sftp.makedirs(f"{tmp}/{folder}", exist_ok=True)
                for rel, data in svc._agent_files.items():
                    async with sftp.open(f"{tmp}/{rel}", "wb") as fh:
                        await fh.write(data)
                try:
                    await sftp.rename(tmp, self.agent_dir)
                except Exception:  # noqa: BLE001 - another engine installed the same agent meanwhile
                    await _sftp_rmtree(sftp, tmp)
        python = self.m.python_path
        if python:
            prelude = (f'P={shlex.quote(python)}; if [ -d "$P" ]; then PATH="$P:$PATH"; P="$P/python3"; '
                       f'else PATH="$(dirname "$P"):$PATH"; fi; export PATH; ')
        else:
            prelude = 'P=$(command -v python3 || command -v python || echo python3); '
        command = f'{prelude}exec "$P" -S {shlex.quote(self.agent_dir + "/agent.py")} serve'
        agent = await conn.create_process(command, encoding=None)
        self.generation += 1
        self.agent = agent
        self.replies = {}
        self.reader = asyncio.get_running_loop().create_task(self._read(agent, self.generation))
        try:
            hello = await asyncio.wait_for(self.request({"op": "hello"}), 60)
        except (ConnectionError, asyncio.TimeoutError):
            err = b""
            try:
                err = await asyncio.wait_for(agent.stderr.read(4000), 2)
            except Exception:  # noqa: BLE001
                pass
            text = err.decode("utf-8", "replace").strip().splitlines()
            raise _HostError(f"cannot start the remote agent with {python or 'python3'}: "
                             f"{text[-1] if text else 'it exited at once'}") from None
        version = tuple(int(p) for p in hello.get("python", "0.0").split(".")[:2] if p.isdigit())
        if version < (3, 6):
            raise _HostError(f"{python or 'python3'} there is Python {hello.get('python')}; expected 3.6 or newer")
        gpus = await self.request({"op": "gpus"})
        self._set_gpus(gpus.get("gpus") or [], first=not self.allocator.gpus)

    def _set_gpus(self, rows: list[dict[str, Any]], first: bool) -> None:
        gpus = [GpuInfo(int(r["index"]), str(r["uuid"]), bool(r["busy"])) for r in rows]
        wanted = self.m.gpu_indices
        if wanted is not None:
            known = {g.index for g in gpus}
            missing = [i for i in wanted if i not in known]
            if missing and first:
                raise _HostError(f"gpu_indices: GPU(s) {missing} not found; detected {sorted(known) or 'no GPUs'}")
            gpus = [g for g in gpus if g.index in wanted]
        if first:
            self.allocator = GpuAllocator(gpus, self.m.max_trial_number_per_gpu, self.m.use_active_gpu)
        else:
            self.allocator.refresh(gpus)

    async def refresh_gpus(self) -> None:
        if self.state == "up" and self.allocator.gpus:
            try:
                self._set_gpus((await self.request({"op": "gpus"})).get("gpus") or [], first=False)
            except ConnectionError:
                pass

    async def close(self) -> None:
        self.state = "closed"
        if self.reconnect_task is not None:
            self.reconnect_task.cancel()
        agent, conn = self.agent, self.conn
        self.agent = self.conn = None
        if agent is not None:
            try:
                agent.stdin.write_eof()
                await asyncio.wait_for(agent.wait(), 5)
            except Exception:  # noqa: BLE001 - best effort: the connection closes anyway
                pass
        if conn is not None:
            conn.close()
            try:
                await asyncio.wait_for(conn.wait_closed(), 5)
            except Exception:  # noqa: BLE001
                pass
        if self.reader is not None:
            self.reader.cancel()

    # talking to the agent ---------------------------------------------------------------------------------
    def send(self, msg: dict[str, Any]) -> None:
        """Write one command to the agent; ConnectionError when the connection is (being) lost."""
        if self.agent is None:
            raise ConnectionError(f"not connected to {self.label}")
        try:
            self.agent.stdin.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        except Exception as exc:  # noqa: BLE001 - BrokenPipeError, asyncssh errors: the reader sees the drop
            raise ConnectionError(f"connection to {self.label} lost: {_describe(exc)}") from None

    async def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.next_req += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[self.next_req] = fut
        self.send({**msg, "req": self.next_req})
        reply = await fut
        if "error" in reply and msg["op"] != "unpack":
            raise _HostError(f"remote agent on {self.label}: {reply['error']}")
        return reply

    async def _read(self, agent: Any, generation: int) -> None:
        reason = "the connection closed"
        try:
            while True:
                line = await agent.stdout.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    log.warning("%s: unreadable line from the remote agent: %r", self.label, line[:200])
                    continue
                try:
                    self._dispatch(msg)
                except Exception:  # noqa: BLE001 - one bad event must not stop following the others
                    log.exception("%s: handling %s failed", self.label, msg.get("ev"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            reason = _describe(exc)
        if generation == self.generation:
            self._connection_lost(reason)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        ev = msg.get("ev")
        if ev == "reply":
            fut = self.replies.pop(msg.get("req"), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            return
        if ev == "warn":  # the agent says each once
            log.warning("%s: %s", self.label, msg.get("msg"))
            return
        run = self.runs.get(msg.get("id", ""))
        if run is None:
            return
        if run is not run.trial.current:  # a copy replaced by another: only its end matters
            if run.held is not None:
                run.held.append(msg)
            elif ev == "exit":
                self.svc._detach(run)
            return
        if ev == "data":
            self.svc._on_data(run, int(msg["s"]), int(msg["off"]), msg["d"].encode("latin-1"))
        elif ev == "started":
            self.svc._on_started(run, msg.get("pid"))
        elif ev == "exit":
            self.svc._on_exit(run, msg)

    def _connection_lost(self, reason: str) -> None:
        for fut in self.replies.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"connection to {self.label} lost: {reason}"))
        self.replies = {}
        self.agent = None
        if self.conn is not None:
            self.conn.abort()
            self.conn = None
        if self.state != "up" or (self.svc._closing and not self.runs):
            return
        self.state = "reconnecting"
        log.warning("remote machine %s: connection lost (%s); reconnecting", self.m.address, reason)
        self.svc._notify()
        loop = asyncio.get_running_loop()
        self.strand_timer = loop.call_later(self.svc.restart_after, self.svc._strand, self)
        self.reconnect_task = loop.create_task(self._reconnect(reason))

    async def _reconnect(self, reason: str) -> None:
        """Reconnect with backoff; take the machine out once ``reconnect_timeout`` s have passed, not before."""
        delay, deadline = BACKOFF_FIRST, time.monotonic() + self.svc.reconnect_timeout
        attempts = 0
        while True:
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            attempts += 1
            try:
                await self.connect()
                break
            except _HostError as exc:
                reason = str(exc).split(": ", 1)[-1]
            except Exception as exc:  # noqa: BLE001
                reason = _describe(exc)
            if self.state == "closed":
                return
            if time.monotonic() >= deadline:
                self.take_out(f"unreachable for {self.svc.reconnect_timeout:g} s after {attempts} attempts; "
                              f"last error: {reason}")
                return
            delay = min(delay * 2, BACKOFF_MAX)
        if self.strand_timer is not None:
            self.strand_timer.cancel()
            self.strand_timer = None
        for run in self.runs.values():  # back in time: no need to restart its trials elsewhere
            if run is run.trial.current:
                self.svc._cancel_restart(run.trial)
        log.warning("remote machine %s: reconnected after %d attempt(s); reconciling %d trial(s)",
                    self.m.address, attempts, len(self.runs))
        self.svc._notify()
        for run in list(self.runs.values()):
            await self.follow(run)

    async def follow(self, run: _Run) -> None:
        """After a reconnect: pick a copy up again from the offsets received so far."""
        if run is not run.trial.current:
            run.held = []  # its events may arrive before this coroutine sees the reply
        try:
            reply = await self.request({"op": "follow", "id": run.key, "dir": run.remote_dir, "off": run.off})
        except (ConnectionError, _HostError):
            run.held = None
            return  # lost again: the next reconnect reconciles it
        if self.runs.get(run.key) is not run:
            return  # ended meanwhile
        state = reply.get("state")
        if run is not run.trial.current:
            self.svc._on_replaced_back(run, state, reply.get("code"))
            held, run.held = run.held or [], None
            for msg in held:  # to the trial if that copy was kept, else only its end
                self._dispatch(msg)
            return
        if state == "absent":  # the launch never reached the machine
            if run.started_sent:
                self.svc._on_lost(run, "its trial folder has no process record")
            else:
                self.svc._send_launch(run)
            return
        if state == "lost":
            self.svc._on_lost(run, f"its processes on {self.label} ended while the connection was down, "
                                   "without an exit status")
            return
        if not run.started_sent and reply.get("pid"):
            self.svc._on_started(run, reply["pid"])
        if run.trial.kill_status is not None:
            self.svc._send_kill(run)

    def take_out(self, reason: str) -> None:
        """Stop using this machine: its trials are lost (restarted elsewhere if restarts remain)."""
        self.state = "out"
        self.out_reason = reason
        message = f"remote machine {self.m.address} taken out of rotation: {reason}"
        log.warning(message)
        print(f"WARNING: hpo: {message}", file=sys.stderr)
        for run in list(self.runs.values()):
            self.svc._on_lost(run, f"machine {self.label} unreachable ({reason})")
        self.svc._notify()

    # code -------------------------------------------------------------------------------------------------
    async def ensure_code(self, code_dir: Path, experiment_id: str) -> str:
        """The remote folder holding the trial code as it is now (uploaded once per version)."""
        version, tarball = await self.svc._packer.version(code_dir)
        key = (version, experiment_id)
        fut = self.code.get(key)
        if fut is None:
            fut = self.code[key] = asyncio.ensure_future(self._upload_code(tarball, version, experiment_id))
        try:
            return await asyncio.shield(fut)
        except BaseException:
            if fut.done() and self.code.get(key) is fut:
                del self.code[key]
            raise

    async def _upload_code(self, tarball: Path, version: str, experiment_id: str) -> str:
        exp_dir = f"{self.root}/{experiment_id}"
        dest = f"{exp_dir}/code-{version}"
        remote_tar = f"{dest}.{secrets.token_hex(4)}.tar.gz"  # machines may share the folder (one home on NFS)
        if self.conn is None:
            raise ConnectionError(f"not connected to {self.label}")
        async with self.conn.start_sftp_client() as sftp:
            await sftp.makedirs(f"{exp_dir}/trials", exist_ok=True)
            await sftp.put(str(tarball), remote_tar)
            try:
                reply = await self.request({"op": "unpack", "tar": remote_tar, "dest": dest})
            finally:
                with contextlib.suppress(Exception):  # best effort: a lost connection leaves it behind
                    await sftp.remove(remote_tar)
        if not reply.get("ok"):
            raise _HostError(f"cannot unpack the trial code on {self.label}: {reply.get('error')}")
        return dest

    async def upload_folder(self, local: Path, dest: str) -> None:
        """Copy the folder ``local`` to ``dest`` here (under a partial name, renamed when whole).  ConnectionError
        when the connection drops, _HostError (one line) when the machine refuses it (a full disk)."""
        import asyncssh

        if self.conn is None:
            raise ConnectionError(f"not connected to {self.label}")
        partial = f"{dest}.partial"
        try:
            async with self.conn.start_sftp_client() as sftp:
                await sftp.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
                for stale in (partial, dest):  # a copy started before a dropped connection
                    await _sftp_rmtree(sftp, stale)
                try:
                    await sftp.put(str(local), partial, recurse=True)
                    await sftp.rename(partial, dest)
                except BaseException:
                    await _sftp_rmtree(sftp, partial)
                    raise
        except asyncssh.DisconnectError as exc:
            raise ConnectionError(f"{self.label}: {exc}") from None
        except (asyncssh.Error, OSError) as exc:
            raise _HostError(f"cannot copy the checkpoint to restore to {self.label}: {_describe(exc)}") from None


# -- the service ------------------------------------------------------------------------------------------------
class RemoteTrainingService(RemoteGangs, TrainingService):
    """Runs trials on remote machines over SSH.

    Args:
        machine_list: machines (mappings with NNI's keys: host, port, user, password | ssh_key_file,
            ssh_passphrase, python_path, gpu_indices, use_active_gpu, max_trial_number_per_gpu,
            and max_trials: at most this many trials at once there).
        known_hosts_file: OpenSSH known_hosts used to verify host keys (default ``~/.ssh/known_hosts``).
        accept_new_host_keys: trust (and record in ``known_hosts_file``) a machine seen for the first
            time; a key that differs from a recorded one is refused regardless.
        remote_directory: where experiments live on each machine (``~`` is that user's home).
        reconnect_timeout: seconds to keep reconnecting a dropped machine before taking it out of rotation.
        restart_after: seconds after a machine dropped before its trials are restarted on other machines
            (``max_trial_restarts`` of the experiment's config, default 3, bounds the restarts of a trial).
        kill_grace: seconds between SIGTERM and SIGKILL.
        connect_timeout: seconds for one connection attempt.
    """

    platform = "remote"

    def __init__(self, machine_list: list[Any] | None = None, known_hosts_file: str | Path | None = None,
                 accept_new_host_keys: bool = False, remote_directory: str = "~/hpo-remote",
                 reconnect_timeout: float | str | None = 120.0, restart_after: float | str | None = 5.0,
                 kill_grace: float = 5.0, connect_timeout: float = 15.0, keepalive_interval: float = 5.0,
                 **_ignored: Any) -> None:
        from hpo.config import parse_duration

        machines = [RemoteMachine.from_any(m) for m in machine_list or []]
        if not machines:
            raise ValueError("training_service.machine_list is empty; expected at least one machine like "
                             "{'host': 'gpu1', 'user': 'me', 'ssh_key_file': '~/.ssh/id_ed25519'}")
        self.machines = machines
        self.known_hosts_file = Path(known_hosts_file or "~/.ssh/known_hosts").expanduser()
        self.accept_new_host_keys = bool(accept_new_host_keys)
        self.remote_directory = str(remote_directory or "~/hpo-remote")
        self.reconnect_timeout = parse_duration(reconnect_timeout) or 120.0
        self.restart_after = parse_duration(restart_after) or 0.0
        self.kill_grace = kill_grace
        self.connect_timeout = connect_timeout
        self.keepalive_interval = keepalive_interval
        self.hosts = [_Host(self, m, i) for i, m in enumerate(machines)]
        self._events: TrialEvents | None = None
        self._trials: dict[str, _Trial] = {}
        self._gangs: dict[str, _Gang] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: dict[str, tuple[str, str | None] | None] = {}
        self._change: asyncio.Event | None = None
        self._closing = False
        self._packer = CodePacker("every remote machine")
        self._storage: Path | None = None  # where checkpoints are copied back (checkpoint_dir tells)
        self._leftovers: list[dict[str, Any]] = []
        self._guard: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._agent_files = {"agent.py": AGENT_FILE.read_bytes(), "zygote.py": ZYGOTE_FILE.read_bytes(),
                             "_trial_supervisor.py": SUPERVISOR_FILE.read_bytes(),
                             **{f"lib/{name}": data for name, data in trial_api_files().items()}}
        digest = hashlib.sha256()
        for name in sorted(self._agent_files):
            digest.update(name.encode() + b"\0" + self._agent_files[name])
        self._agent_digest = digest.hexdigest()[:12]

    def __repr__(self) -> str:
        return f"RemoteTrainingService({[m.address for m in self.machines]})"

    # lifecycle ------------------------------------------------------------------------------------------------
    async def start(self, events: TrialEvents) -> None:
        self._events = events
        self._change = asyncio.Event()
        self._stopped = asyncio.Event()
        results = await asyncio.gather(*(h.connect() for h in self.hosts), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await asyncio.gather(*(h.close() for h in self.hosts))
            for err in errors:
                if not isinstance(err, _HostError):
                    raise err
            raise ValueError("; ".join(map(str, errors)))
        await self._cleanup_leftovers()
        self._guard = asyncio.get_running_loop().create_task(self._close_at_loop_end())

    async def _close_at_loop_end(self) -> None:
        """The engine does not call stop() after a normal end: close the connections (and with them the
        idle remote agents) when the event loop shuts down and cancels this task."""
        try:
            await self._stopped.wait()
        except asyncio.CancelledError:
            try:
                await asyncio.wait_for(asyncio.gather(*(h.close() for h in self.hosts)), 6)
            except BaseException:  # noqa: BLE001 - best effort while the loop ends
                pass
            raise

    def check_gpu_request(self, gpu_number: int) -> None:
        """Raise ValueError if no machine could ever run a trial asking ``gpu_number`` GPUs."""
        if gpu_number <= 0:
            return
        counts = {h.label: len(h.allocator.gpus) for h in self.hosts}
        if max(counts.values()) < gpu_number:
            found = ", ".join(f"{k}: {v}" for k, v in counts.items())
            raise ValueError(f"trial_gpu_number={gpu_number} but no remote machine has that many usable GPUs "
                             f"(detected with nvidia-smi over SSH: {found})")

    async def stop(self, status: str = "SYS_CANCELED", reason: str | None = None) -> None:
        self._closing = True
        for trial_id in list(self._waiting):
            self._waiting[trial_id] = (status, reason)
        self._notify()
        kills = [asyncio.ensure_future(self.kill(trial_id, status, reason))
                 for trial_id in [*self._trials, *self._gangs]]
        kills.append(asyncio.ensure_future(self._replaced_copies_ended()))
        limit = self.kill_grace + 10 + (self.reconnect_timeout if any(h.state == "reconnecting"
                                                                      for h in self.hosts) else 0)
        await asyncio.wait(kills, timeout=limit)
        for pending in kills:
            pending.cancel()
        self._abandon_gangs(status, reason)
        for trial in list(self._trials.values()):  # a machine we could not reach again: give up on it
            assert trial.current is not None  # kill() ends a trial without a copy at once
            where = trial.current.host.label
            log.warning("trial %s on %s: could not confirm its end (machine unreachable)", trial.spec.trial_id, where)
            self._finish(trial, trial.kill_status or status, None,
                         f"{trial.kill_reason or reason or 'stopped'} (machine {where} unreachable: "
                         "its processes may still run)")
        for host in self.hosts:
            for run in host.runs.values():
                log.warning("trial %s: its copy %s on %s could not be ended (machine unreachable)",
                            run.trial.spec.trial_id, run.key, host.label)
        await asyncio.gather(*(h.close() for h in self.hosts))
        self._stopped.set()
        self._packer.close()

    async def _replaced_copies_ended(self) -> None:
        """Until the replaced copies on reachable machines (being killed) have ended."""
        while any(run is not run.trial.current for h in self.hosts if h.state == "up" for run in h.runs.values()):
            assert self._change is not None
            await self._change.wait()

    def leftover_cleanup(self, records: list[dict[str, Any]]) -> None:
        """Remembered here, done in :meth:`start` once connected: a dead engine's trials are killed on
        their machine if a process of that group still carries the trial's id."""
        self._leftovers = [r for r in self._gang_leftovers(records) if r.get("pgid") and r.get("host")]

    async def _cleanup_leftovers(self) -> None:
        by_label = {h.label: h for h in self.hosts}
        for rec in self._leftovers:
            host = by_label.get(rec["host"])
            if host is not None and host.state == "up":
                try:
                    await host.request({"op": "cleanup", "id": rec["id"], "pgid": rec["pgid"]})
                except (ConnectionError, _HostError) as exc:
                    log.warning("leftover trial %s on %s: %s", rec["id"], host.label, exc)
        self._leftovers = []

    # launching ------------------------------------------------------------------------------------------------
    async def launch(self, spec: TrialSpec) -> None:
        assert self._events is not None, "start() must be called first"
        if spec.processes:
            await self._launch_gang(spec)
            return
        trial: _Trial | None = None
        for attempt in range(5):
            picked = await self._acquire(spec)
            if picked is None:
                if trial is not None:
                    self._release(trial)
                return
            host, gpus = picked
            if trial is None:
                spec.trial_dir.mkdir(parents=True, exist_ok=True)
                (spec.trial_dir / "parameters.json").write_text(json.dumps(spec.parameters))
                trial = _Trial(spec, open(spec.trial_dir / "stdout.log", "ab", buffering=0),
                               open(spec.trial_dir / "stderr.log", "ab", buffering=0),
                               asyncio.get_running_loop().create_future())
                self._trials[spec.trial_id] = trial
            run = self._new_run(trial, host, gpus)
            try:
                await self._prepare(run)
            except ConnectionError:  # the machine dropped meanwhile: pick one again
                self._detach(run)
                trial.current = None
                continue
            except BaseException as exc:
                self._release(trial)
                if isinstance(exc, _HostError):
                    host.failures += 1
                    if host.failures >= 3 and host.state == "up":
                        host.take_out(f"{host.failures} trials in a row could not start there; last: {exc}")
                    raise RuntimeError(str(exc)) from None
                raise
            host.failures = 0
            self._send_launch(run)
            break
        else:
            assert trial is not None
            self._release(trial)
            raise RuntimeError("the remote machines kept dropping the connection")
        await trial.started
        if trial.launch_error is not None:
            raise RuntimeError(trial.launch_error)

    async def _acquire(self, spec: TrialSpec, restarting: _Trial | None = None) -> tuple[_Host, list[int]] | None:
        """A machine (and GPUs) for the trial: the least-loaded one with room; waits while none has.

        None if the trial was killed meanwhile (reported ended) or the service stops.  ``restarting``: a
        restart of that trial, which never goes to the machine of its current copy, and is None (nothing
        reported) once no other machine is usable: the trial then waits for its own."""
        assert self._change is not None
        trial_id = spec.trial_id
        if restarting is None:
            self._waiting[trial_id] = None
        try:
            while True:
                change = self._change
                if restarting is not None:
                    if self._closing:
                        return None
                else:
                    killed = self._waiting.get(trial_id)
                    if killed is not None or self._closing:
                        status, reason = killed or ("SYS_CANCELED", "experiment stopped")
                        self._events.ended(trial_id, status, None, reason)  # type: ignore[union-attr]
                        return None
                stranded = restarting.current if restarting is not None else None
                avoid = stranded.host if stranded is not None else None
                usable = [h for h in self.hosts if h.state in ("up", "reconnecting") and h is not avoid]
                if not usable:
                    if avoid is not None:
                        return None
                    why = "; ".join(f"{h.m.address}: {h.out_reason or h.state}" for h in self.hosts)
                    raise RuntimeError(f"no remote machine is usable ({why})")
                for host in sorted(usable, key=lambda h: (h.assigned, h.index)):
                    if host.state != "up" or (host.m.max_trials is not None and host.assigned >= host.m.max_trials):
                        continue
                    gpus = host.allocator.acquire(spec.gpu_number)
                    if gpus is not None:
                        host.assigned += 1
                        return host, gpus
                try:
                    await asyncio.wait_for(change.wait(), timeout=10)
                except asyncio.TimeoutError:  # other programs may have freed a GPU
                    if spec.gpu_number > 0:
                        await asyncio.gather(*(h.refresh_gpus() for h in self.hosts))
        finally:
            if restarting is None:
                self._waiting.pop(trial_id, None)

    def _new_run(self, trial: _Trial, host: _Host, gpus: list[int], key: str | None = None) -> _Run:
        """A new copy of ``trial`` on ``host`` (slot already taken), from now on the one whose reports count."""
        spec = trial.spec
        if key is None:
            key = spec.trial_id if trial.restarts == 0 else f"{spec.trial_id}.{trial.restarts}"
        run = _Run(trial, host, gpus, key, f"{host.root}/{spec.experiment_id}/trials/{key}")
        host.runs[key] = run
        trial.current = run
        return run

    async def _prepare(self, run: _Run) -> None:
        """Bring what the copy needs onto its machine: the trial code, and the checkpoint it restores (if any)."""
        spec, host = run.trial.spec, run.host
        run.code_remote = await host.ensure_code(spec.code_dir, spec.experiment_id)
        if spec.restore_checkpoint is not None:
            await host.upload_folder(spec.restore_checkpoint, f"{run.remote_dir}/{RESTORE_FOLDER}")

    def _send_launch(self, run: _Run) -> None:
        spec, host = run.trial.spec, run.host
        env = dict(spec.env)
        env.update({
            "HPO_EXPERIMENT_ID": spec.experiment_id, "HPO_TRIAL_ID": spec.trial_id,
            "HPO_SEQUENCE_ID": str(spec.sequence_id), "HPO_TRIAL_DIR": run.remote_dir,
            "HPO_PARAMETERS_FILE": f"{run.remote_dir}/parameters.json",
            "PYTHONUNBUFFERED": spec.env.get("PYTHONUNBUFFERED", "1"),
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, run.gpus)),
        })
        env.update(nni_environment("remote", spec.experiment_id, spec.trial_id, spec.sequence_id, run.remote_dir))
        env.update(run.trial.extra_env)
        if "HPO_CHECKPOINT_DIR" in spec.env:
            env["HPO_CHECKPOINT_DIR"] = f"{run.remote_dir}/checkpoints"
        process = run.trial.process
        if spec.restore_checkpoint is not None and (process is None or process.chief):
            # uploaded by _prepare (a gang's: to its chief); the agent removes it when the trial ends
            env["HPO_RESTORE_CHECKPOINT"] = f"{run.remote_dir}/{RESTORE_FOLDER}"
        if host.state != "up":
            return  # reconciled after the reconnect: the new agent does not know it, so it is launched then
        command = process.command if process is not None else spec.command
        launch = {"op": "launch", "id": run.key, "dir": run.remote_dir, "cwd": run.code_remote,
                  "files": run.trial.files, "cmd": command, "env": env, "params": json.dumps(spec.parameters),
                  "lib": f"{host.agent_dir}/lib", "max_duration": spec.max_duration, "grace": self.kill_grace,
                  "remove_after": env.get("HPO_RESTORE_CHECKPOINT")}
        parsed = warm_argv(command) if spec.warm_start is not None and command else None
        if parsed is not None:  # forked from the agent's zygote (which falls back to a cold start, saying why)
            interpreter, argv, flag_env = parsed
            launch["warm"] = {"preload": spec.warm_start, "interpreter": interpreter, "argv": argv,
                              "flag_env": flag_env}
        with contextlib.suppress(ConnectionError):  # likewise
            host.send(launch)
        if run.trial.kill_status is not None:
            self._send_kill(run)

    # events from the agents (the current copy's) ----------------------------------------------------------------
    def _on_started(self, run: _Run, pid: int | None) -> None:
        trial = run.trial
        run.pid = pid
        run.started_sent = True
        if trial.gang is not None:
            trial.started_run = run
            if not trial.started.done():
                trial.started.set_result(None)
            self._gang_started(trial.gang)
            return
        self._events.started(trial.spec.trial_id, pid, pid, run.host.label, run.gpus)  # type: ignore[union-attr]
        if not trial.started.done():
            trial.started.set_result(None)

    def _on_data(self, run: _Run, stream: int, offset: int, data: bytes) -> None:
        have = run.off[stream]
        if offset < have:  # already received before a reconnect
            data = data[have - offset:]
        elif offset > have:
            log.warning("trial %s: %d bytes of %s missing", run.key, offset - have,
                        ("reports", "stdout", "stderr")[stream])
        if not data:
            return
        run.off[stream] = max(have, offset) + len(data)
        if stream:
            (run.trial.stdout_file if stream == 1 else run.trial.stderr_file).write(data)
            if run.trial.gang is not None:
                self._member_output(run.trial, stream, data)
            if stream == 2:
                return
        lines = (run.partial[stream] + data).split(b"\n")
        run.partial[stream] = lines.pop()
        for line in lines:
            self._on_line(run, stream, line)

    def _on_line(self, run: _Run, stream: int, line: bytes) -> None:
        if stream == 0:
            if not line.strip():
                return
            try:
                kind, value = parse_channel_report(line)
            except ValueError as exc:
                run.report_error = str(exc)
                return
        else:
            try:
                parsed = parse_stdout_report(line)
            except ValueError as exc:
                run.report_error = str(exc)
                return
            if parsed is None:
                return
            kind, value = parsed
        trial = run.trial
        if kind == "intermediate":
            run.steps += 1
            if run.steps <= trial.steps:  # a restarted copy redoing a step that an earlier copy reported
                return
            trial.steps = run.steps
        elif kind == "final":
            trial.final_sent = True
        elif kind == "checkpoint":
            self._spawn_pull(run, value)
            return
        if trial.gang is not None:
            self._member_metric(trial, kind, value)
            return
        self._events.metric(trial.spec.trial_id, kind, value)  # type: ignore[union-attr]

    def _on_exit(self, run: _Run, msg: dict[str, Any]) -> None:
        trial = run.trial
        for stream in (0, 1):
            if run.partial[stream]:
                line, run.partial[stream] = run.partial[stream], b""
                self._on_line(run, stream, line)
        code = msg.get("code")
        if msg.get("lost"):
            self._on_lost(run, f"its processes on {run.host.label} ended without an exit status")
        elif trial.kill_status is not None:
            self._finish(trial, trial.kill_status, code, trial.kill_reason)
        elif msg.get("error"):
            if not run.started_sent and not trial.started.done() and trial.gang is None:
                trial.launch_error = f"on {run.host.label}: {msg['error']}"
                self._release(trial)
            else:
                self._finish(trial, "FAILED", code, f"on {run.host.label}: {msg['error']}")
        elif msg.get("timeout"):
            self._finish(trial, "FAILED", code, f"exceeded max_trial_duration ({trial.spec.max_duration:g} s)")
        elif msg.get("unknown"):
            self._finish(trial, "FAILED", None, f"exit status unknown: its monitor on {run.host.label} ended "
                                                "while the connection was down")
        elif code == 0 and run.report_error is None:
            self._finish(trial, "SUCCEEDED", 0, None)
        else:
            self._finish(trial, "FAILED", code,
                         run.report_error or failure_message(member_folder(trial) / "stderr.log", code))

    # restarts (trials lost to the platform) ---------------------------------------------------------------------
    def _on_lost(self, run: _Run, reason: str) -> None:
        """A copy's processes vanished, or its machine was taken out: if it was the trial's current copy,
        restart the trial while ``max_trial_restarts`` allows, else fail it with ``reason``."""
        trial = run.trial
        self._detach(run)
        if run is not trial.current:
            return
        trial.current = None
        limit = self._max_restarts()
        if trial.gang is not None:  # a gang is not restarted one process at a time
            self._finish(trial, trial.kill_status or "FAILED", None, trial.kill_reason or f"lost: {reason}")
        elif trial.kill_status is not None or self._closing:
            self._finish(trial, trial.kill_status or "SYS_CANCELED", None, trial.kill_reason or reason)
        elif trial.restart is not None:
            pass  # already waiting for a machine to restart on
        elif trial.restarts < limit:
            self._restart(trial, f"lost ({reason})")
        elif trial.restarts:
            self._finish(trial, "FAILED", None,
                         f"lost {trial.restarts + 1} times (max_trial_restarts {limit}): {reason}")
        else:
            self._finish(trial, "FAILED", None, f"lost: {reason}")

    def _strand(self, host: _Host) -> None:
        """``restart_after`` s after ``host`` dropped: restart its trials on other machines (restarts allowing);
        their copies there stay until it returns."""
        host.strand_timer = None
        if host.state != "reconnecting" or self._closing:
            return
        limit = self._max_restarts()
        for run in list(host.runs.values()):
            trial = run.trial
            if run is not trial.current or trial.kill_status is not None or trial.restart is not None \
                    or trial.gang is not None:  # a gang's process waits for its machine (or its loss)
                continue
            if trial.restarts >= limit:
                log.warning("trial %s: machine %s unreachable; no restart left (max_trial_restarts %d): waiting "
                            "for the machine", trial.spec.trial_id, host.label, limit)
                continue
            self._restart(trial, f"machine {host.label} unreachable for {self.restart_after:g} s")

    def _restart(self, trial: _Trial, reason: str) -> None:
        """Start another copy of ``trial`` once a machine has room (the trial fails if that goes wrong)."""
        task = asyncio.get_running_loop().create_task(self._restart_when_room(trial, reason))
        trial.restart = task
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self._finish(trial, "FAILED", None, f"{reason}; restart failed: {_describe(t.exception())}")

        task.add_done_callback(done)

    async def _restart_when_room(self, trial: _Trial, reason: str) -> None:
        try:
            picked = await self._acquire(trial.spec, restarting=trial)
        finally:
            if trial.restart is asyncio.current_task():
                trial.restart = None  # from here on, not cancelled
        if picked is None:
            return  # stopping, or no other machine: the trial waits for its own
        host, gpus = picked
        trial.restarts += 1
        note = f"{reason}; restarting it on {host.label} (restart {trial.restarts} of {self._max_restarts()})"
        log.warning("trial %s: %s", trial.spec.trial_id, note)
        trial.stderr_file.write(f"\n[hpo] {note}\n".encode())
        run = self._new_run(trial, host, gpus)  # a copy on an unreachable machine is now replaced
        try:
            await self._prepare(run)
        except Exception as exc:  # noqa: BLE001 - that machine failed too: lost again
            self._on_lost(run, f"could not start on {host.label}: {_describe(exc)}")
            return
        if run is not trial.current:  # ended, or its first copy was kept, meanwhile
            self._detach(run)
            return
        self._send_launch(run)

    def _on_replaced_back(self, run: _Run, state: str | None, code: int | None) -> None:
        """The machine of a replaced copy is back: keep that copy if it finished (exit status 0) while the
        trial, still running, has no final result yet (it came first); else end it."""
        trial = run.trial
        if state == "exited" and code == 0 and not trial.done.is_set() and not trial.final_sent \
                and trial.kill_status is None:
            replaced = trial.current
            trial.current = run
            self._cancel_restart(trial)
            note = f"its copy on {run.host.label} finished while the machine was unreachable: its result is kept"
            if replaced is not None:
                note += f"; the restarted copy on {replaced.host.label} is ended"
            log.warning("trial %s: %s", trial.spec.trial_id, note)
            trial.stderr_file.write(f"\n[hpo] {note}\n".encode())
            if replaced is not None and replaced.host.state == "up":
                self._send_kill(replaced)  # its end detaches it; one on an unreachable machine waits for it
        elif state == "running":
            self._send_kill(run)  # its end detaches it
        elif state != "exited":
            self._detach(run)  # nothing of it runs there

    def _cancel_restart(self, trial: _Trial) -> None:
        if trial.restart is not None:
            trial.restart.cancel()
            trial.restart = None

    def _max_restarts(self) -> int:
        from hpo.config import ExperimentConfig

        config = getattr(self._events, "config", None)
        return int(getattr(config, "max_trial_restarts", ExperimentConfig.model_fields["max_trial_restarts"].default))

    # killing ------------------------------------------------------------------------------------------------------
    async def kill(self, trial_id: str, status: str = "USER_CANCELED", reason: str | None = None) -> None:
        if trial_id in self._gangs:
            await self._kill_gang(self._gangs[trial_id], status, reason)
            return
        if trial_id in self._waiting:
            self._waiting[trial_id] = (status, reason)
            self._notify()
            while trial_id in self._waiting:
                await asyncio.sleep(0.01)
            return
        trial = self._trials.get(trial_id)
        if trial is None:
            return
        if trial.kill_status is None:
            trial.kill_status, trial.kill_reason = status, reason
        self._cancel_restart(trial)
        run = trial.current
        if run is None:  # lost, and waiting for a machine to restart on
            self._finish(trial, trial.kill_status or status, None, trial.kill_reason)
        elif run.host.state == "up" and run.host.runs.get(run.key) is run:
            self._send_kill(run)
        await trial.done.wait()

    def _send_kill(self, run: _Run) -> None:
        with contextlib.suppress(ConnectionError):  # sent again once reconnected
            run.host.send({"op": "kill", "id": run.key, "grace": self.kill_grace})

    # bookkeeping --------------------------------------------------------------------------------------------------
    def _detach(self, run: _Run) -> None:
        """The copy no longer holds a slot on its machine."""
        host = run.host
        if host.runs.get(run.key) is run:
            del host.runs[run.key]
            host.assigned -= 1
            host.allocator.release(run.gpus)
        self._notify()

    def _release(self, trial: _Trial) -> None:
        if trial.current is not None:
            self._detach(trial.current)
            trial.current = None
        self._cancel_restart(trial)
        if self._trials.get(trial.spec.trial_id) is trial:
            del self._trials[trial.spec.trial_id]
        trial.stdout_file.close()
        trial.stderr_file.close()
        if not trial.started.done():
            trial.started.set_result(None)
        trial.done.set()

    def _finish(self, trial: _Trial, status: str, code: int | None, message: str | None) -> None:
        if trial.done.is_set():
            return
        self._release(trial)
        if trial.last_pull is not None and not trial.last_pull.done():  # its checkpoints are reported first
            trial.end = (status, code, message)
            return
        self._ended(trial, status, code, message)

    def _ended(self, trial: _Trial, status: str, code: int | None, message: str | None) -> None:
        if trial.gang is not None:
            self._member_ended(trial, status, code, message)
        else:
            self._events.ended(trial.spec.trial_id, status, code, message)  # type: ignore[union-attr]

    # checkpoints ----------------------------------------------------------------------------------------------------
    def checkpoint_dir(self, spec: TrialSpec, storage: Path) -> str | None:
        self._storage = storage
        return ""  # each copy writes into its own remote folder (set at launch), pulled back over SFTP

    def _spawn_pull(self, run: _Run, report: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._pull_checkpoint(run, report, run.trial.last_pull))
        run.trial.last_pull = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pull_checkpoint(self, run: _Run, report: dict[str, Any], before: asyncio.Task[None] | None) -> None:
        """Copy a checkpoint the trial wrote on its machine into the storage (under a partial name, then renamed),
        remove the remote copy, then report it.  The trial's copies run one after the other (``before`` first): the
        engine sees only checkpoints that are whole here, in the order the trial saved them, and one that does
        not fit leaves no partial copy taking the room of the next."""
        from hpo.trial_checkpoint import partial_name
        trial, uid = run.trial, report["uuid"]
        try:
            if before is not None:
                await asyncio.wait([before])
            storage = self._storage
            if "error" in report:
                pass  # the trial could not write it: nothing to copy
            elif storage is None or run.host.conn is None:
                report = {**report, "error": f"not copied from {run.host.label}: the connection was lost"}
            else:
                remote = f"{run.remote_dir}/checkpoints/{uid}"
                partial = Path(storage) / partial_name(trial.spec.experiment_id, trial.spec.trial_id, uid)
                try:
                    await asyncio.to_thread(Path(storage).mkdir, parents=True, exist_ok=True)
                    async with run.host.conn.start_sftp_client() as sftp:
                        await sftp.get(remote, str(partial), recurse=True)
                        os.rename(partial, Path(storage) / uid)
                        await _sftp_rmtree(sftp, remote)
                except Exception as exc:  # noqa: BLE001 - reported as a checkpoint that could not be saved
                    report = {**report, "error": f"could not copy it from {run.host.label}: {_reason(exc)}"}
                    log.warning("trial %s: checkpoint %s %s", trial.spec.trial_id, uid, report["error"])
                    await asyncio.to_thread(shutil.rmtree, partial, True)
            self._events.metric(trial.spec.trial_id, "checkpoint", report)  # type: ignore[union-attr]
        finally:
            if trial.last_pull is asyncio.current_task() and trial.end is not None:
                end, trial.end = trial.end, None
                self._ended(trial, *end)

    def _notify(self) -> None:
        if self._change is not None:
            self._change.set()
            self._change = asyncio.Event()

    # host keys ----------------------------------------------------------------------------------------------------
    def _known_hosts(self) -> Any:
        import asyncssh

        if self.known_hosts_file.exists():
            return asyncssh.read_known_hosts(str(self.known_hosts_file))
        return asyncssh.import_known_hosts("")

    def _check_new_host_key(self, host: _Host, hostname: str, addr: str, port: int, key: Any) -> bool:
        """Called for a key not in known_hosts: accept it only for a never-seen host, when allowed."""
        known = self._known_hosts().match(hostname, addr, port)
        name = hostname if port == 22 else f"[{hostname}]:{port}"
        if known[0]:
            host.host_key_problem = (
                f"host key mismatch: {name} presented a different key than the one recorded in "
                f"{self.known_hosts_file} (if the machine was reinstalled, remove the old entry with "
                f"`ssh-keygen -R '{name}' -f {self.known_hosts_file}`)")
            return False
        if not self.accept_new_host_keys:
            host.host_key_problem = (
                f"unknown host key: {name} is not in {self.known_hosts_file}; add it (e.g. `ssh-keyscan -p {port} "
                f"{hostname} >> {self.known_hosts_file}` after checking the fingerprint) or set "
                "training_service.accept_new_host_keys = true")
            return False
        kind, blob = key.export_public_key("openssh").decode().split()[:2]
        line = f"{name} {kind} {blob}\n"
        self.known_hosts_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.known_hosts_file, "a", encoding="utf-8") as fh:
            fh.write(line)
        log.warning("remote machine %s: new host key accepted and added to %s", host.m.address, self.known_hosts_file)
        return True


def _load_key(path: str, passphrase: str | None) -> Any:
    import asyncssh

    if not os.path.exists(path):
        raise _HostError(f"ssh_key_file {path!r} does not exist")
    try:
        return asyncssh.read_private_key(path, passphrase)
    except asyncssh.KeyEncryptionError as exc:
        if "ncorrect passphrase" in str(exc):
            raise _HostError(f"cannot load ssh_key_file {path!r}: wrong ssh_passphrase") from None
        raise _HostError(f"cannot load ssh_key_file {path!r}: {exc}") from None  # e.g. bcrypt missing
    except asyncssh.KeyImportError as exc:
        text = str(exc)
        if "assphrase" in text:
            raise _HostError(f"cannot load ssh_key_file {path!r}: it is encrypted; set ssh_passphrase") from None
        raise _HostError(f"cannot load ssh_key_file {path!r}: {text}") from None
    except OSError as exc:
        raise _HostError(f"cannot read ssh_key_file {path!r}: {exc.strerror}") from None


async def _sftp_rmtree(sftp: Any, path: str) -> None:
    try:
        await sftp.rmtree(path)
    except Exception:  # noqa: BLE001 - best effort
        pass


def _reason(exc: BaseException) -> str:
    """An OS or SFTP error in one line, without the exception's class when it names the cause itself."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    return " ".join(_describe(exc).split())


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc) or getattr(exc, "reason", "") or ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
