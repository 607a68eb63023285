"""Local training service: each trial is a subprocess in its own session and process group.

Per trial, in ``trial_dir``: ``parameters.json``, ``stdout.log`` (read through the engine, so
printed ``HPO_FINAL_RESULT=`` lines count as reports and the dashboard can follow it live) and
``stderr.log``.  Reports arrive on an inherited pipe (``HPO_REPORT_FD``); the trial never needs
the engine's port.  Killing a trial sends SIGTERM to its whole group (and any descendant that
left it), then SIGKILL after ``kill_grace`` seconds.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil

import hpo
from hpo.trial import parse_channel_report, parse_stdout_report
from training_services.base import TrainingService, TrialEvents, TrialSpec
from training_services.gpu import GpuAllocator, detect_gpus, query_gpus

__all__ = ["LocalTrainingService", "kill_process_tree"]

_HPO_ROOT = str(Path(hpo.__file__).resolve().parent.parent)


class _LineReader(asyncio.Protocol):
    """Reads a pipe, calls ``on_line`` per complete line and ``on_data`` per chunk."""

    def __init__(self, on_line: Callable[[bytes], None], on_data: Callable[[bytes], None] | None = None) -> None:
        self.on_line, self.on_data = on_line, on_data
        self.buffer = b""
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self.on_data is not None:
            self.on_data(data)
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            self.on_line(line)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.buffer:
            self.on_line(self.buffer)
            self.buffer = b""
        if not self.closed.done():
            self.closed.set_result(None)


@dataclass
class _Run:
    spec: TrialSpec
    proc: asyncio.subprocess.Process
    pgid: int
    gpus: list[int]
    readers: list[_LineReader]
    stdout_file: Any
    kill_status: str | None = None
    kill_reason: str | None = None
    report_error: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class LocalTrainingService(TrainingService):
    """Runs trials as local subprocesses.

    Args:
        use_active_gpu: allow GPUs that other programs are using.
        max_trial_number_per_gpu: trials sharing one GPU.
        gpu_indices: restrict to these GPU indices.
        kill_grace: seconds between SIGTERM and SIGKILL.
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
        return {r.proc.pid for r in self._runs.values()}

    async def launch(self, spec: TrialSpec) -> None:
        assert self._events is not None, "start() must be called first"
        gpus = await self._acquire_gpus(spec.gpu_number)
        spec.trial_dir.mkdir(parents=True, exist_ok=True)
        params_file = spec.trial_dir / "parameters.json"
        params_file.write_text(json.dumps(spec.parameters))
        report_r, report_w = os.pipe()
        out_r, out_w = os.pipe()
        env = dict(os.environ)
        env.update(spec.env)
        env.update({
            "HPO_EXPERIMENT_ID": spec.experiment_id, "HPO_TRIAL_ID": spec.trial_id,
            "HPO_SEQUENCE_ID": str(spec.sequence_id), "HPO_TRIAL_DIR": str(spec.trial_dir),
            "HPO_PARAMETERS_FILE": str(params_file), "HPO_REPORT_FD": str(report_w),
            "PYTHONPATH": os.pathsep.join(p for p in (env.get("PYTHONPATH"), _HPO_ROOT) if p),
            "PYTHONUNBUFFERED": env.get("PYTHONUNBUFFERED", "1"),
        })
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        try:
            with open(spec.trial_dir / "stderr.log", "wb") as stderr_file:
                proc = await asyncio.create_subprocess_exec(
                    "/bin/sh", "-c", spec.command, cwd=spec.code_dir, env=env, stdin=asyncio.subprocess.DEVNULL,
                    stdout=out_w, stderr=stderr_file, pass_fds=(report_w,), start_new_session=True)
        except BaseException:
            for fd in (report_r, out_r):
                os.close(fd)
            self.allocator.release(gpus)
            raise
        finally:
            os.close(report_w)
            os.close(out_w)
        stdout_file = open(spec.trial_dir / "stdout.log", "wb", buffering=0)
        run = _Run(spec, proc, proc.pid, gpus, [], stdout_file)
        self._runs[spec.trial_id] = run
        self._events.started(spec.trial_id, proc.pid, proc.pid, "localhost", gpus)
        loop = asyncio.get_running_loop()
        readers = [_LineReader(lambda line: self._on_report(run, line)),
                   _LineReader(lambda line: self._on_stdout_line(run, line), stdout_file.write)]
        await loop.connect_read_pipe(lambda: readers[0], os.fdopen(report_r, "rb", buffering=0))
        await loop.connect_read_pipe(lambda: readers[1], os.fdopen(out_r, "rb", buffering=0))
        run.readers = readers
        loop.create_task(self._follow(run))

    def _on_report(self, run: _Run, line: bytes) -> None:
        try:
            kind, value = parse_channel_report(line)
        except ValueError as exc:
            run.report_error = str(exc)
            return
        self._events.metric(run.spec.trial_id, kind, value)  # type: ignore[union-attr]

    def _on_stdout_line(self, run: _Run, line: bytes) -> None:
        try:
            parsed = parse_stdout_report(line)
        except ValueError as exc:
            run.report_error = str(exc)
            return
        if parsed is not None:
            self._events.metric(run.spec.trial_id, parsed[0], parsed[1])  # type: ignore[union-attr]

    async def _follow(self, run: _Run) -> None:
        spec = run.spec
        try:
            try:
                await asyncio.wait_for(run.proc.wait(), timeout=spec.max_duration)
            except asyncio.TimeoutError:
                run.kill_status = run.kill_status or "FAILED"
                run.kill_reason = run.kill_reason or f"exceeded max_trial_duration ({spec.max_duration:g} s)"
                await self._terminate(run)
            # the main process is gone: end whatever it left in its group, then drain the pipes
            await self._terminate(run, grace=0.5)
            await asyncio.wait([r.closed for r in run.readers], timeout=2.0)
        finally:
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
            message = run.report_error or _failure_message(spec.trial_dir / "stderr.log", code)
        self._events.ended(spec.trial_id, status, code, message)  # type: ignore[union-attr]
        run.done.set()

    async def _terminate(self, run: _Run, grace: float | None = None) -> None:
        """SIGTERM the trial's group and descendants, SIGKILL what is left after ``grace``."""
        grace = self.kill_grace if grace is None else grace
        await kill_process_tree(run.proc.pid, run.pgid, grace, lambda: run.proc.returncode is not None)

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

    def leftover_cleanup(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            pgid, started = rec.get("pgid"), rec.get("started_at")
            if not pgid:
                continue
            try:
                proc = psutil.Process(pgid)
                if started and proc.create_time() > started + 5:  # pid reused by an unrelated process
                    continue
                os.killpg(pgid, signal.SIGKILL)
            except (psutil.Error, ProcessLookupError, PermissionError):
                pass
        # A trial the dead engine had started but not yet recorded (no pgid), and descendants that left
        # its group, are found by the environment every trial process inherits.
        _kill_by_environment({(str(rec["id"]), str(rec["seq"])) for rec in records if rec.get("id")})


def _kill_by_environment(trials: set[tuple[str, str]]) -> None:
    """SIGKILL every process whose (HPO_TRIAL_ID, HPO_SEQUENCE_ID) is one of ``trials``."""
    me = os.getpid()
    for _ in range(3):  # again, in case a process forked while we looked
        killed = 0
        for proc in psutil.process_iter():
            try:
                if proc.pid == me:
                    continue
                env = proc.environ()
                if (env.get("HPO_TRIAL_ID"), env.get("HPO_SEQUENCE_ID")) in trials:
                    proc.kill()
                    killed += 1
            except psutil.Error:
                continue
        if not killed:
            return


async def kill_process_tree(pid: int, pgid: int, grace: float, exited: Callable[[], bool]) -> None:
    """SIGTERM process group ``pgid`` and every descendant of ``pid``; SIGKILL survivors after ``grace``."""
    if exited() and not _group_exists(pgid):  # fast path: a trial that ended cleanly
        return
    try:
        tree = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        tree = []
    _signal_all(pgid, tree, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if exited() and not _group_alive(pgid) and not any(_alive(p) for p in tree):
            return
        await asyncio.sleep(0.02)
    _signal_all(pgid, tree, signal.SIGKILL)
    for _ in range(100):
        if exited() and not _group_alive(pgid):
            return
        await asyncio.sleep(0.02)


def _signal_all(pgid: int, tree: list[psutil.Process], sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for proc in tree:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _group_alive(pgid: int) -> bool:
    if not _group_exists(pgid):
        return False
    # signal 0 also succeeds for zombies waiting to be reaped; look closer
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return False


def _failure_message(stderr_path: Path, code: int | None) -> str:
    """The last non-empty stderr line (usually the exception), else the exit code or signal."""
    try:
        with open(stderr_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 4096))
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    if lines:
        return lines[-1][:500]
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
