"""Local training service: each trial runs under its own supervisor process (``_trial_supervisor.py``).

Per trial, in ``trial_dir``: ``parameters.json``, ``stdout.log`` (read through the engine, so
printed ``HPO_FINAL_RESULT=`` lines count as reports and the dashboard can follow it live) and
``stderr.log``.  Reports arrive on an inherited pipe (``HPO_REPORT_FD``); the trial never needs
the engine's port.

The supervisor (a subreaper: no descendant of the trial can leave it) gives the whole tree SIGTERM
and ``kill_grace`` seconds, then SIGKILL, when it is killed, when the trial exits (leftovers get at
most 1 s) and when the engine dies (the lifeline pipe it watches closes).  The engine SIGKILLs a
supervisor that outlives the grace by ``BACKSTOP`` s, and after a kill, stop or timeout kills what still
carries the trial's environment marker (``HPO_TRIAL_ID``, ``HPO_SEQUENCE_ID``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil

import hpo
from hpo.trial import STDOUT_FINAL, STDOUT_INTERMEDIATE, parse_channel_report, parse_stdout_report
from training_services.base import TrainingService, TrialEvents, TrialSpec, failure_message
from training_services.gpu import GpuAllocator, detect_gpus, query_gpus

__all__ = ["LocalTrainingService"]

log = logging.getLogger("hpo.local")
_HPO_ROOT = str(Path(hpo.__file__).resolve().parent.parent)
_INTERPRETER_DIR = os.path.dirname(sys.executable)
_SUPERVISOR = str(Path(__file__).resolve().parent / "_trial_supervisor.py")
BACKSTOP = 3.0      # seconds past kill_grace before the engine SIGKILLs a supervisor that is still there
MAX_LINE = 1 << 20  # longest report line (channel or printed) the engine reads; other output is only logged


class _LineReader(asyncio.Protocol):
    """Splits a pipe into lines in linear time, holding at most ``limit`` + 1 bytes of the current line.

    ``on_data(chunk)`` sees every byte.  ``on_line(line)`` gets each line starting with ``prefix`` (the
    last one may lack its newline); a line longer than ``limit`` is dropped and ``on_long_line(first bytes)``
    called instead.  An exception from a callback is logged and never stops the reader.
    """

    def __init__(self, on_line: Callable[[bytes], None], on_long_line: Callable[[bytes], None],
                 on_data: Callable[[bytes], None] | None = None, prefix: bytes = b"", limit: int = MAX_LINE) -> None:
        self.on_line, self.on_long_line, self.on_data = on_line, on_long_line, on_data
        self.prefix, self.limit = prefix, limit
        self.line = bytearray()
        self.head: bytes | None = None  # first bytes of a line over the limit
        self.skip = False                # the current line is not wanted (other prefix, or too long)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self.on_data is not None:
            self._call(self.on_data, data)
        first = data.find(b"\n")
        if first < 0:
            self._take(memoryview(data))
            return
        self._take(memoryview(data)[:first])
        self._end_line()
        last, start = data.rfind(b"\n"), first + 1
        while start <= last:  # the complete lines after the first; unwanted ones are skipped by find()
            if not data.startswith(self.prefix, start):
                start = data.find(b"\n" + self.prefix, start, last) + 1
                if start == 0:
                    break
            end = data.find(b"\n", start)
            if end - start > self.limit:
                self._call(self.on_long_line, data[start:start + 100])
            else:
                self._call(self.on_line, data[start:end])
            start = end + 1
        self._take(memoryview(data)[last + 1:])

    def _take(self, piece: memoryview) -> None:
        if self.skip or not piece:
            return
        self.line += piece[:self.limit + 1 - len(self.line)]
        if self.line[:len(self.prefix)] != self.prefix[:len(self.line)]:
            self.skip = True
        elif len(self.line) > self.limit:
            self.skip, self.head = True, bytes(self.line[:100])
        if self.skip:
            self.line = bytearray()

    def _end_line(self) -> None:
        if self.head is not None:
            self._call(self.on_long_line, self.head)
        elif not self.skip:
            self._call(self.on_line, bytes(self.line))
        self.line, self.head, self.skip = bytearray(), None, False

    @staticmethod
    def _call(callback: Callable[[bytes], None], data: bytes) -> None:
        try:
            callback(data)
        except Exception:  # raising out of the protocol would close the pipe and lose the rest of the output
            log.exception("handling a trial's output failed")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.line or self.head is not None:
            self._end_line()
        if not self.closed.done():
            self.closed.set_result(None)


@dataclass
class _Run:
    spec: TrialSpec
    proc: asyncio.subprocess.Process  # the trial's supervisor (its pid is also its process group)
    gpus: list[int]
    lifeline: int                     # write end of the pipe the supervisor watches; closed once it exited
    stdout_file: Any
    readers: list[_LineReader] = field(default_factory=list)
    kill_status: str | None = None
    kill_reason: str | None = None
    report_error: str | None = None
    log_error: str | None = None      # why stdout.log stopped being written
    done: asyncio.Event = field(default_factory=asyncio.Event)


class LocalTrainingService(TrainingService):
    """Runs trials as local subprocesses.

    Args:
        use_active_gpu: allow GPUs that other programs are using.
        max_trial_number_per_gpu: trials sharing one GPU.
        gpu_indices: restrict to these GPU indices.
        kill_grace: seconds a killed trial (all its processes) gets between SIGTERM and SIGKILL.
    """

    platform = "local"

    def __init__(self, use_active_gpu: bool = False, max_trial_number_per_gpu: int = 1,
                 gpu_indices: list[int] | None = None, kill_grace: float = 5.0, **_ignored: Any) -> None:
        self.use_active_gpu = use_active_gpu
        self.max_trial_number_per_gpu = max_trial_number_per_gpu
        self.gpu_indices = gpu_indices
        self.kill_grace = kill_grace
        self.allocator = GpuAllocator([])
        self._events: TrialEvents | None = None
        self._runs: dict[str, _Run] = {}
        self._gpu_freed: asyncio.Condition | None = None

    async def start(self, events: TrialEvents) -> None:
        self._events = events
        self._gpu_freed = asyncio.Condition()
        self.allocator = GpuAllocator(self._usable_gpus(await detect_gpus()), self.max_trial_number_per_gpu,
                                      self.use_active_gpu)

    def precheck(self, gpu_number: int) -> None:
        """Before anything is created: raise ValueError if the GPU settings can never be met here."""
        if gpu_number > 0 or self.gpu_indices is not None:
            self.allocator = GpuAllocator(self._usable_gpus(query_gpus()), self.max_trial_number_per_gpu,
                                          self.use_active_gpu)
            self.check_gpu_request(gpu_number)

    def _usable_gpus(self, gpus: list[Any]) -> list[Any]:
        if self.gpu_indices is not None:
            known = {g.index for g in gpus}
            missing = [i for i in self.gpu_indices if i not in known]
            if missing:
                raise ValueError(f"training_service.gpu_indices: GPU(s) {missing} not found; "
                                 f"detected {sorted(known) or 'no GPUs'}")
            gpus = [g for g in gpus if g.index in self.gpu_indices]
        return gpus

    def check_gpu_request(self, gpu_number: int) -> None:
        """Raise ValueError if trials asking ``gpu_number`` GPUs could never run here."""
        if gpu_number <= 0:
            return
        usable = len(self.allocator.gpus)
        if usable < gpu_number:
            raise ValueError(f"trial_gpu_number={gpu_number} but only {usable} GPU(s) are available "
                             f"(detected with nvidia-smi{', filtered by gpu_indices' if self.gpu_indices else ''})")

    async def _acquire_gpus(self, n: int) -> list[int]:
        assert self._gpu_freed is not None
        if n <= 0:
            return []
        async with self._gpu_freed:
            while True:
                gpus = self.allocator.acquire(n)
                if gpus is not None:
                    return gpus
                try:
                    await asyncio.wait_for(self._gpu_freed.wait(), timeout=10)
                except asyncio.TimeoutError:  # other programs may have freed a GPU
                    self.allocator.refresh(await detect_gpus(frozenset(self._own_pids())))

    def _own_pids(self) -> set[int]:
        """Every process of every running trial (supervisors and what runs below them)."""
        pids = set()
        for run in self._runs.values():
            pids.add(run.proc.pid)
            try:
                pids.update(p.pid for p in psutil.Process(run.proc.pid).children(recursive=True))
            except psutil.Error:
                pass
        return pids

    async def launch(self, spec: TrialSpec) -> None:
        assert self._events is not None, "start() must be called first"
        gpus = await self._acquire_gpus(spec.gpu_number)
        fds: list[int] = []
        try:  # everything the trial needs is acquired before it starts: a failure (EMFILE) leaves nothing behind
            spec.trial_dir.mkdir(parents=True, exist_ok=True)
            params_file = spec.trial_dir / "parameters.json"
            params_file.write_text(json.dumps(spec.parameters))
            for _ in range(3):
                fds.extend(os.pipe())
        except BaseException:
            for fd in fds:
                os.close(fd)
            self.allocator.release(gpus)
            raise
        # not inheritable: the supervisor gets only the read end of the lifeline (pass_fds)
        report_r, report_w, out_r, out_w, life_r, life_w = fds
        env = dict(os.environ)
        env.update(spec.env)
        env.update({
            "HPO_EXPERIMENT_ID": spec.experiment_id, "HPO_TRIAL_ID": spec.trial_id,
            "HPO_SEQUENCE_ID": str(spec.sequence_id), "HPO_TRIAL_DIR": str(spec.trial_dir),
            "HPO_PARAMETERS_FILE": str(params_file), "HPO_REPORT_FD": str(report_w),
            "PYTHONPATH": os.pathsep.join(p for p in (env.get("PYTHONPATH"), _HPO_ROOT) if p),
            "PYTHONUNBUFFERED": env.get("PYTHONUNBUFFERED", "1"),
            # `python3 train.py` finds the interpreter hpo runs in (its venv) before the system's
            "PATH": os.pathsep.join(p for p in (_INTERPRETER_DIR, env.get("PATH", os.defpath)) if p),
        })
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        if spec.restore_checkpoint is not None:  # on this machine: the trial reads it where it is
            env["HPO_RESTORE_CHECKPOINT"] = str(spec.restore_checkpoint)
        stdout_file = None
        try:
            stdout_file = open(spec.trial_dir / "stdout.log", "wb", buffering=0)
            with open(spec.trial_dir / "stderr.log", "wb") as stderr_file:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-I", "-S", _SUPERVISOR, repr(float(self.kill_grace)), str(life_r), spec.command,
                    cwd=spec.code_dir, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out_w, stderr=stderr_file,
                    pass_fds=(report_w, life_r), start_new_session=True)
        except BaseException:
            for fd in (report_r, out_r, life_w):
                os.close(fd)
            if stdout_file is not None:
                stdout_file.close()
            self.allocator.release(gpus)
            raise
        finally:
            for fd in (report_w, out_w, life_r):
                os.close(fd)
        run = _Run(spec, proc, gpus, life_w, stdout_file)
        self._runs[spec.trial_id] = run
        self._events.started(spec.trial_id, proc.pid, proc.pid, "localhost", gpus)
        loop = asyncio.get_running_loop()
        readers = [_LineReader(lambda line: self._on_report(run, line), lambda head: self._on_long_line(run, head)),
                   _LineReader(lambda line: self._on_stdout_line(run, line),
                               lambda head: self._on_long_line(run, head, printed=True),
                               lambda data: self._log_stdout(run, data), prefix=b"HPO_")]
        await loop.connect_read_pipe(lambda: readers[0], os.fdopen(report_r, "rb", buffering=0))
        await loop.connect_read_pipe(lambda: readers[1], os.fdopen(out_r, "rb", buffering=0))
        run.readers = readers
        loop.create_task(self._follow(run))

    def _on_report(self, run: _Run, line: bytes) -> None:
        try:
            kind, value = parse_channel_report(line)
        except ValueError as exc:
            self._report_error(run, str(exc))
            return
        self._metric(run, kind, value)

    def _on_stdout_line(self, run: _Run, line: bytes) -> None:
        try:
            parsed = parse_stdout_report(line)
        except ValueError as exc:
            self._report_error(run, str(exc))
            return
        if parsed is not None:
            self._metric(run, *parsed)

    def _on_long_line(self, run: _Run, head: bytes, printed: bool = False) -> None:
        if printed and not head.startswith((STDOUT_FINAL.encode(), STDOUT_INTERMEDIATE.encode())):
            return
        start = head[:40].decode("utf-8", "replace")
        self._report_error(run, f"bad report from trial: a line longer than {MAX_LINE} bytes ({start!r}...)")

    def _metric(self, run: _Run, kind: str, value: Any) -> None:
        self._events.metric(run.spec.trial_id, kind, value)  # type: ignore[union-attr]

    @staticmethod
    def _report_error(run: _Run, message: str) -> None:
        """The first bad report fails the trial with its message."""
        if run.report_error is None:
            log.warning("trial %s: %s", run.spec.trial_id, message)
            run.report_error = message

    @staticmethod
    def _log_stdout(run: _Run, data: bytes) -> None:
        """Append to stdout.log; on an error (disk full) stop writing it and remember why."""
        if run.log_error is not None:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[run.stdout_file.write(view):]
        except OSError as exc:
            run.log_error = f"stdout.log is incomplete: {exc.strerror or exc}"
            log.warning("trial %s: %s", run.spec.trial_id, run.log_error)

    async def _follow(self, run: _Run) -> None:
        spec = run.spec
        try:
            try:
                await asyncio.wait_for(run.proc.wait(), timeout=spec.max_duration)
            except asyncio.TimeoutError:
                run.kill_status = run.kill_status or "FAILED"
                run.kill_reason = run.kill_reason or f"exceeded max_trial_duration ({spec.max_duration:g} s)"
                await self._terminate(run)
            # the supervisor ended every process below it; after a kill, stop or timeout, a last resort for any
            # that escaped it (a trial that exits by itself leaves nothing: the subreaper ends its leftovers)
            if run.kill_status is not None:
                try:
                    await asyncio.to_thread(_kill_by_environment, {(spec.trial_id, str(spec.sequence_id))})
                except OSError as exc:  # e.g. no descriptor left to read /proc: the trial still ends
                    log.warning("trial %s: could not sweep for leftover processes: %s", spec.trial_id, exc)
            await asyncio.wait([r.closed for r in run.readers], timeout=2.0)
        finally:
            os.close(run.lifeline)
            run.stdout_file.close()
            self._runs.pop(spec.trial_id, None)
            if run.gpus:
                self.allocator.release(run.gpus)
                assert self._gpu_freed is not None
                async with self._gpu_freed:
                    self._gpu_freed.notify_all()
        code = run.proc.returncode
        if run.kill_status is not None:
            status, message = run.kill_status, run.kill_reason
        elif code == 0 and run.report_error is None:
            status, message = "SUCCEEDED", None
        else:
            status = "FAILED"
            message = run.report_error or failure_message(spec.trial_dir / "stderr.log", code)
        self._events.ended(spec.trial_id, status, code, message or run.log_error)  # type: ignore[union-attr]
        run.done.set()

    async def _terminate(self, run: _Run) -> None:
        """SIGTERM the supervisor (it gives the trial ``kill_grace``); SIGKILL it and its tree ``BACKSTOP`` s later."""
        if run.proc.returncode is not None:
            return
        _signal_group(run.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(run.proc.wait(), self.kill_grace + BACKSTOP)
        except asyncio.TimeoutError:
            log.warning("trial %s: its supervisor did not exit; killing its processes", run.spec.trial_id)
            _kill_tree(run.proc.pid)
            await run.proc.wait()

    async def kill(self, trial_id: str, status: str = "USER_CANCELED", reason: str | None = None) -> None:
        run = self._runs.get(trial_id)
        if run is None:
            return
        if run.kill_status is None:
            run.kill_status, run.kill_reason = status, reason
        await self._terminate(run)
        await run.done.wait()

    async def stop(self, status: str = "SYS_CANCELED", reason: str | None = None) -> None:
        runs = list(self._runs.values())
        await asyncio.gather(*(self.kill(r.spec.trial_id, status, reason) for r in runs))

    def checkpoint_dir(self, spec: TrialSpec, storage: Path) -> str | None:
        return str(storage)  # trials run here: they write checkpoints straight into the storage

    def leftover_cleanup(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            pgid, started = rec.get("pgid"), rec.get("started_at")
            if not pgid:
                continue
            try:
                if started and psutil.Process(pgid).create_time() > started + 5:  # pid reused by an unrelated process
                    continue
            except psutil.Error:
                continue
            _kill_tree(pgid)
        # A trial the dead engine had started but not yet recorded (no pgid), and processes that left the
        # supervisor's tree, are found by the environment every trial process inherits.
        _kill_by_environment({(str(rec["id"]), str(rec["seq"])) for rec in records if rec.get("id")})


def _kill_by_environment(trials: set[tuple[str, str]]) -> None:
    """SIGKILL every process whose (HPO_TRIAL_ID, HPO_SEQUENCE_ID) is one of ``trials``."""
    markers = [(f"\0HPO_TRIAL_ID={t}\0".encode(), f"\0HPO_SEQUENCE_ID={s}\0".encode()) for t, s in trials]
    me = os.getpid()
    for _ in range(3):  # again, in case a process forked while we looked
        killed = 0
        for pid, env in _environments():
            if pid != me and any(t in env and s in env for t, s in markers):
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except (ProcessLookupError, PermissionError):
                    pass
        if not killed:
            return


def _environments() -> Iterator[tuple[int, bytes]]:
    """``(pid, environment)`` of every process we may read, the environment as ``\\0KEY=value\\0...``.

    Read from /proc where there is one (several times faster than psutil's parsed dicts)."""
    try:
        names = os.listdir("/proc")
    except FileNotFoundError:
        for proc in psutil.process_iter():
            try:
                yield proc.pid, b"\0" + b"".join(f"{k}={v}\0".encode() for k, v in proc.environ().items())
            except psutil.Error:
                continue
        return
    for name in names:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as fh:
                    yield int(name), b"\0" + fh.read()
            except OSError:
                continue


def _kill_tree(pid: int) -> None:
    """SIGKILL process ``pid`` (a trial's supervisor), its process group and every descendant.

    The descendants are frozen (SIGSTOP) until a look finds no new one, so none can fork past the kill, and killed
    before the supervisor: while it lives, a subreaper, every orphan of the tree is still its child."""
    try:
        root = psutil.Process(pid)
    except psutil.Error:
        root = None
    frozen: dict[int, psutil.Process] = {}
    for _ in range(100):
        try:
            tree = root.children(recursive=True) if root is not None else []
        except psutil.Error:
            tree = []
        new = [p for p in tree if p.pid not in frozen]
        if not new:
            break
        for proc in new:
            frozen[proc.pid] = proc
            try:
                proc.suspend()
            except psutil.Error:
                pass
    for proc in frozen.values():
        try:
            proc.kill()
        except psutil.Error:
            pass
    _signal_group(pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
