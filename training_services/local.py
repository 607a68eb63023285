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
import functools
import json
import logging
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil

import hpo
from hpo.trial import STDOUT_FINAL, STDOUT_INTERMEDIATE, parse_channel_report, parse_stdout_report
from training_services.base import TrainingService, TrialEvents, TrialSpec, failure_message
from training_services.gang import (GangProcess, Placement, finishers, free_ports, gang_environment, merged_lines,
                                    mpi_hostfile)
from training_services.gpu import GpuAllocator, detect_gpus, query_gpus
from training_services.nni_env import NNI_STUB_DIR, nni_environment
from training_services.warm_start import WarmProcess, WarmStartError, Zygote, warm_argv

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
    """One process of a trial (the only one, or a member of its gang)."""

    spec: TrialSpec
    proc: asyncio.subprocess.Process | WarmProcess  # the process's supervisor (its pid is also its process group)
    gpus: list[int]
    lifeline: int                     # write end of the pipe the supervisor watches; closed once it exited
    files: list[Any]                  # stdout.log (and for a gang member its own stderr.log and merged writers)
    process: GangProcess | None = None
    merged: list[Any] | None = None   # a gang's merged stdout.log and stderr.log
    readers: list[_LineReader] = field(default_factory=list)
    report_error: str | None = None
    log_error: str | None = None      # why a log stopped being written
    partial: list[bytes] = field(default_factory=lambda: [b"", b""])  # a line not yet ended, per stream


@dataclass
class _Trial:
    spec: TrialSpec
    runs: list[_Run] = field(default_factory=list)
    gpus: list[int] = field(default_factory=list)
    merged: list[Any] = field(default_factory=list)
    kill_status: str | None = None
    kill_reason: str | None = None
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
        self._trials: dict[str, _Trial] = {}
        self._gpu_freed: asyncio.Condition | None = None
        self._zygote: Zygote | None = None
        self._zygote_lock: asyncio.Lock | None = None
        self._zygote_starts = 0
        self._cold_reasons: set[str] = set()  # why some trials start cold though warm starts are on (logged once)

    async def start(self, events: TrialEvents) -> None:
        self._events = events
        self._gpu_freed = asyncio.Condition()
        self._zygote_lock = asyncio.Lock()
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
        for run in (run for trial in self._trials.values() for run in trial.runs):
            pids.add(run.proc.pid)
            try:
                pids.update(p.pid for p in psutil.Process(run.proc.pid).children(recursive=True))
            except psutil.Error:
                pass
        return pids

    async def launch(self, spec: TrialSpec) -> None:
        assert self._events is not None, "start() must be called first"
        # a gang's GPUs are taken at once: no partial gang holds a GPU while the rest waits
        gpus = await self._acquire_gpus(sum(p.gpu_number for p in spec.processes) if spec.processes
                                        else spec.gpu_number)
        trial = _Trial(spec, gpus=gpus)
        try:  # everything the trial needs is acquired before it starts: a failure (EMFILE) leaves nothing behind
            spec.trial_dir.mkdir(parents=True, exist_ok=True)
            params_file = spec.trial_dir / "parameters.json"
            params_file.write_text(json.dumps(spec.parameters))
            env = self._environment(spec, params_file)
            if spec.processes:
                placements = await self._launch_gang(trial, env)
            else:
                trial.runs.append(await self._spawn(spec, None, env, gpus, spec.command, spec.trial_dir))
        except BaseException:
            await self._discard(trial)
            raise
        self._trials[spec.trial_id] = trial
        chief = trial.runs[0]
        gang: dict[str, Any] = {}  # passed only for a gang: events sinks written before gangs need not take it
        if spec.processes:
            pids = {run.process.name: run.proc.pid for run in trial.runs if run.process is not None}
            gang["processes"] = [{"name": p.name, "host": pl.host, "port": pl.port, "pid": pids.get(p.name),
                                  "gpus": run_gpus} for p, pl, run_gpus in zip(spec.processes, placements,
                                                                               _split(gpus, spec.processes))]
        self._events.started(spec.trial_id, chief.proc.pid, chief.proc.pid, "localhost", gpus, **gang)
        loop = asyncio.get_running_loop()
        loop.create_task(self._follow(trial))

    @staticmethod
    def _environment(spec: TrialSpec, params_file: Path) -> dict[str, str]:
        env = _environ()
        env.update(spec.env)
        env.update({
            "HPO_EXPERIMENT_ID": spec.experiment_id, "HPO_TRIAL_ID": spec.trial_id,
            "HPO_SEQUENCE_ID": str(spec.sequence_id), "HPO_TRIAL_DIR": str(spec.trial_dir),
            "HPO_PARAMETERS_FILE": str(params_file),
            # hpo's trial API, then its `import nni` stand-in (which defers to a real nni wherever one is)
            "PYTHONPATH": os.pathsep.join(p for p in (env.get("PYTHONPATH"), _HPO_ROOT, NNI_STUB_DIR) if p),
            "PYTHONUNBUFFERED": env.get("PYTHONUNBUFFERED", "1"),
            # `python3 train.py` finds the interpreter hpo runs in (its venv) before the system's
            "PATH": os.pathsep.join(p for p in (_INTERPRETER_DIR, env.get("PATH", os.defpath)) if p),
        })
        env.update(nni_environment("local", spec.experiment_id, spec.trial_id, spec.sequence_id, str(spec.trial_dir)))
        if spec.restore_checkpoint is not None:  # on this machine: the trial reads it where it is
            env["HPO_RESTORE_CHECKPOINT"] = str(spec.restore_checkpoint)
        return env

    async def _launch_gang(self, trial: _Trial, env: dict[str, str]) -> list[Placement]:
        """Start every process of a distributed trial on this machine; its output is kept per process under
        ``processes/<role>-<index>/`` and merged, each line prefixed ``[role-index]``, in the trial's logs."""
        spec, processes = trial.spec, trial.spec.processes
        ports = iter(free_ports(sum(p.port is None for p in processes)))
        placements = [Placement("127.0.0.1", next(ports) if p.port is None else p.port) for p in processes]
        hostfile = None
        if spec.distribution == "mpi":
            hostfile = spec.trial_dir / "hostfile"
            hostfile.write_text(mpi_hostfile(placements))
        trial.merged = [open(spec.trial_dir / name, "wb", buffering=0) for name in ("stdout.log", "stderr.log")]
        spawns = []
        for i, (process, gpus) in enumerate(zip(processes, _split(trial.gpus, processes))):
            if process.command is None:  # an MPI holder: rank 0's mpirun starts it, with rank 0's GPUs
                continue
            if spec.distribution == "mpi":
                gpus = trial.gpus
            penv = {**env, **gang_environment(processes, placements, spec.distribution, i,
                                              None if hostfile is None else str(hostfile))}
            spawns.append(self._spawn(spec, process, penv, gpus, process.command,
                                      spec.trial_dir / "processes" / process.name, trial.merged))
        started = await asyncio.gather(*spawns, return_exceptions=True)  # all at once: the gang starts together
        trial.runs.extend(run for run in started if isinstance(run, _Run))  # (in rank order: the chief first)
        failure = next((exc for exc in started if isinstance(exc, BaseException)), None)
        if failure is not None:
            raise failure
        return placements

    async def _spawn(self, spec: TrialSpec, process: GangProcess | None, env: dict[str, str], gpus: list[int],
                     command: str, folder: Path, merged: list[Any] | None = None) -> _Run:
        """Start one process under its supervisor, its output followed; on failure nothing is left open."""
        fds: list[int] = []
        files: list[Any] = []
        stderr_file = None
        try:
            for _ in range(3 if merged is None else 4):
                fds.extend(os.pipe())
            folder.mkdir(parents=True, exist_ok=True)
            files.append(open(folder / "stdout.log", "wb", buffering=0))
            if merged is None:
                stderr_file = open(folder / "stderr.log", "wb")
            else:
                files.append(open(folder / "stderr.log", "wb", buffering=0))
        except BaseException:
            for fd in fds:
                os.close(fd)
            for fh in files:
                fh.close()
            raise
        # not inheritable: the supervisor gets only the read end of the lifeline (pass_fds)
        report_r, report_w, out_r, out_w, life_r, life_w, *err = fds
        env = {**env, "HPO_REPORT_FD": str(report_w), "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))}
        try:
            proc = await self._start(spec, env, command, out_w,
                                     stderr_file.fileno() if stderr_file is not None else err[1], report_w, life_r)
        except BaseException:
            for fd in (report_r, out_r, life_w, *err[:1]):
                os.close(fd)
            for fh in files:
                fh.close()
            raise
        finally:
            for fd in (report_w, out_w, life_r, *err[1:]):
                os.close(fd)
            if stderr_file is not None:
                stderr_file.close()
        run = _Run(spec, proc, gpus, life_w, files, process, merged)
        loop = asyncio.get_running_loop()
        readers = [_LineReader(lambda line: self._on_report(run, line), lambda head: self._on_long_line(run, head)),
                   _LineReader(lambda line: self._on_stdout_line(run, line),
                               lambda head: self._on_long_line(run, head, printed=True),
                               lambda data: self._log(run, 0, data), prefix=b"HPO_")]
        pipes = [report_r, out_r]
        if err:
            readers.append(_LineReader(_ignore, _ignore, lambda data: self._log(run, 1, data), prefix=b"\0\0"))
            pipes.append(err[0])
        for reader, fd in zip(readers, pipes):
            await loop.connect_read_pipe(lambda reader=reader: reader, os.fdopen(fd, "rb", buffering=0))
        run.readers = readers
        return run

    async def _start(self, spec: TrialSpec, env: dict[str, str], command: str, stdout: int, stderr: int,
                     report: int, lifeline: int) -> asyncio.subprocess.Process | WarmProcess:
        """Start ``command``'s supervisor: forked by the zygote when the trial starts warm, else a fresh one."""
        warm = await self._warm(spec, env, command)
        if warm is not None:
            zygote, argv, warm_env = warm
            try:
                return await zygote.spawn(argv, warm_env, spec.code_dir, self.kill_grace,
                                          (stdout, stderr, report, lifeline))
            except WarmStartError as exc:
                self._start_cold(f"the zygote could not fork the trial ({exc})")
        return await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", _SUPERVISOR, repr(float(self.kill_grace)), str(lifeline), command,
            cwd=spec.code_dir, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            pass_fds=(report, lifeline), start_new_session=True)

    async def _warm(self, spec: TrialSpec, env: dict[str, str],
                    command: str) -> tuple[Zygote, list[str], dict[str, str]] | None:
        """The zygote, argv and environment to fork ``command`` with, or None when it starts cold."""
        if spec.warm_start is None:
            return None
        parsed = warm_argv(command)
        if parsed is None:
            self._start_cold(f"{command!r} is not 'python script.py args' or 'python -m module args'")
            return None
        interpreter, argv, flag_env = parsed
        if not _same_interpreter(interpreter, env.get("PATH")):
            self._start_cold(f"{interpreter!r} is not the interpreter hpo runs in ({sys.executable})")
            return None
        assert self._zygote_lock is not None
        async with self._zygote_lock:
            if self._zygote is None or self._zygote.closed:
                if self._zygote_starts >= 3:
                    return None  # it died (or could not start) three times: the reasons are in the log already
                self._zygote_starts += 1
                function_file = argv[2] if argv[:2] == ["-m", "hpo.function_trial"] and len(argv) == 3 else None
                base = {k: v for k, v in env.items() if not k.startswith(("HPO_", "NNI_"))
                        and k != "CUDA_VISIBLE_DEVICES"}
                log_path = spec.trial_dir.parent.parent / "zygote.log"
                try:
                    self._zygote = await Zygote.start(spec.warm_start, function_file, spec.code_dir, base, log_path)
                except (WarmStartError, OSError) as exc:
                    self._start_cold(f"the warm-start zygote did not start: {exc}")
                    return None
                for warning in self._zygote.warnings:
                    log.warning("warm starts: %s", warning)
            return self._zygote, argv, {**env, **flag_env}

    def _start_cold(self, reason: str) -> None:
        if reason not in self._cold_reasons:
            self._cold_reasons.add(reason)
            log.warning("trials start cold: %s", reason)

    async def _discard(self, trial: _Trial) -> None:
        """Undo a launch that failed part way: end the processes already started, close and release the rest."""
        for run in trial.runs:
            _kill_tree(run.proc.pid)
            await run.proc.wait()
            os.close(run.lifeline)
            for fh in run.files:
                fh.close()
        for fh in trial.merged:
            fh.close()
        self.allocator.release(trial.gpus)

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
        assert self._events is not None
        if run.process is None or run.process.chief or kind == "checkpoint":
            self._events.metric(run.spec.trial_id, kind, value)
        else:
            self._events.process_metric(run.spec.trial_id, run.process.name, kind, value)

    @staticmethod
    def _report_error(run: _Run, message: str) -> None:
        """The first bad report fails the trial with its message."""
        if run.report_error is None:
            log.warning("trial %s: %s", run.spec.trial_id, message)
            run.report_error = message

    @staticmethod
    def _log(run: _Run, stream: int, data: bytes) -> None:
        """Append a process's output to its log (and, for a gang, its complete lines to the trial's merged log);
        on an error (disk full) stop writing and remember why."""
        if run.log_error is not None:
            return
        try:
            _write_all(run.files[stream], data)
            if run.merged is not None and run.process is not None:
                lines, run.partial[stream] = merged_lines(run.process.name, run.partial[stream], data)
                _write_all(run.merged[stream], lines)
        except OSError as exc:
            run.log_error = f"{'stdout' if stream == 0 else 'stderr'}.log is incomplete: {exc.strerror or exc}"
            log.warning("trial %s: %s", run.spec.trial_id, run.log_error)

    async def _follow(self, trial: _Trial) -> None:
        """Wait for the trial's end: its processes that finish it (every process of a one-process trial; a gang's
        chief role) exited, any process failed, a kill, or the timeout.  Then end every process left."""
        spec = trial.spec
        loop = asyncio.get_running_loop()
        waits = {loop.create_task(run.proc.wait()): run for run in trial.runs}
        ending = finishers(spec.processes) if spec.processes else set()
        to_finish = {id(run) for run in trial.runs if run.process is None or run.process.name in ending}
        failed: _Run | None = None
        deadline = None if spec.max_duration is None else loop.time() + spec.max_duration
        try:
            pending = set(waits)
            while pending and to_finish and failed is None:
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    trial.kill_status = trial.kill_status or "FAILED"
                    trial.kill_reason = trial.kill_reason or f"exceeded max_trial_duration ({spec.max_duration:g} s)"
                    break
                for task in done:
                    run = waits[task]
                    to_finish.discard(id(run))
                    if failed is None and run.proc.returncode != 0:
                        failed = run
            await asyncio.gather(*(self._terminate(run) for run in trial.runs))
            # the supervisors ended every process below them; after a kill, stop or timeout, a last resort for any
            # that escaped (a trial that exits by itself leaves nothing: the subreapers end its leftovers)
            if trial.kill_status is not None:
                try:
                    await asyncio.to_thread(_kill_by_environment, {(spec.trial_id, str(spec.sequence_id))})
                except OSError as exc:  # e.g. no descriptor left to read /proc: the trial still ends
                    log.warning("trial %s: could not sweep for leftover processes: %s", spec.trial_id, exc)
            await asyncio.wait([r.closed for run in trial.runs for r in run.readers], timeout=2.0)
        finally:
            for run in trial.runs:
                os.close(run.lifeline)
                for stream, fh in enumerate(run.files):
                    if run.merged is not None and run.process is not None and run.partial[stream] \
                            and run.log_error is None:
                        try:
                            _write_all(run.merged[stream], merged_lines(run.process.name, run.partial[stream],
                                                                        b"\n")[0])
                        except OSError:
                            pass
                    fh.close()
            for fh in trial.merged:
                fh.close()
            self._trials.pop(spec.trial_id, None)
            if trial.gpus:
                self.allocator.release(trial.gpus)
                assert self._gpu_freed is not None
                async with self._gpu_freed:
                    self._gpu_freed.notify_all()
        if failed is None and trial.kill_status is None:  # a bad report fails the trial even when it exits 0
            failed = next((run for run in trial.runs if run.report_error is not None), None)
        code = trial.runs[0].proc.returncode
        if trial.kill_status is not None:
            status, message = trial.kill_status, trial.kill_reason
        elif failed is None:
            status, message = "SUCCEEDED", None
        else:
            status, code = "FAILED", failed.proc.returncode
            folder = spec.trial_dir if failed.process is None else spec.trial_dir / "processes" / failed.process.name
            message = failed.report_error or failure_message(folder / "stderr.log", code)
            if failed.process is not None:
                message = f"{failed.process.name}: {message}"
        log_error = next((run.log_error for run in trial.runs if run.log_error is not None), None)
        self._events.ended(spec.trial_id, status, code, message or log_error)  # type: ignore[union-attr]
        trial.done.set()

    async def _terminate(self, run: _Run) -> None:
        """SIGTERM the supervisor (it gives the process ``kill_grace``); SIGKILL it and its tree ``BACKSTOP`` s later."""
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
        trial = self._trials.get(trial_id)
        if trial is None:
            return
        if trial.kill_status is None:
            trial.kill_status, trial.kill_reason = status, reason
        await asyncio.gather(*(self._terminate(run) for run in trial.runs))
        await trial.done.wait()

    async def stop(self, status: str = "SYS_CANCELED", reason: str | None = None) -> None:
        trials = list(self._trials.values())
        await asyncio.gather(*(self.kill(t.spec.trial_id, status, reason) for t in trials))
        if self._zygote is not None:
            await self._zygote.close()

    def checkpoint_dir(self, spec: TrialSpec, storage: Path) -> str | None:
        return str(storage)  # trials run here: they write checkpoints straight into the storage

    def leftover_cleanup(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            started = rec.get("started_at")
            groups = {rec.get("pgid")} | {p.get("pid") for p in rec.get("processes") or []}  # a gang's supervisors
            for pgid in filter(None, groups):
                try:
                    if started and psutil.Process(pgid).create_time() > started + 5:  # pid reused by another process
                        continue
                except psutil.Error:
                    continue
                _kill_tree(pgid)
        # A trial the dead engine had started but not yet recorded (no pgid), and processes that left the
        # supervisor's tree, are found by the environment every trial process inherits.
        _kill_by_environment({(str(rec["id"]), str(rec["seq"])) for rec in records if rec.get("id")})


_environ_cache: tuple[dict[bytes, bytes], dict[str, str]] | None = None


def _environ() -> dict[str, str]:
    """A copy of ``os.environ``, decoded once per change of it (decoding it for every trial cost more than the rest
    of a warm launch)."""
    global _environ_cache
    raw = getattr(os.environ, "_data", None)  # CPython's encoded copy
    if not isinstance(raw, dict):
        return dict(os.environ)
    if _environ_cache is None or _environ_cache[0] != raw:
        _environ_cache = (dict(raw), dict(os.environ))
    return dict(_environ_cache[1])


@functools.lru_cache(maxsize=16)
def _same_interpreter(name: str, path: str | None) -> bool:
    """Whether ``name`` (``python3``, a path) run with ``path`` as PATH is the interpreter hpo runs in."""
    found = shutil.which(name, path=path)
    return found is not None and os.path.realpath(found) == os.path.realpath(sys.executable)


def _split(gpus: list[int], processes: list[GangProcess]) -> list[list[int]]:
    """A gang's GPUs, dealt out in rank order: each process its ``gpu_number``."""
    out, start = [], 0
    for p in processes:
        out.append(gpus[start:start + p.gpu_number])
        start += p.gpu_number
    return out


def _write_all(fh: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[fh.write(view):]


def _ignore(_data: bytes) -> None:
    pass


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
