"""The local service's process lifecycle and its handling of trial output (real processes, no mocks).

No trial process survives a kill, a stop, a timeout, the trial's own exit or the engine's death, however
it was spawned; a killed trial gets its whole ``kill_grace``; huge output and broken reports never stall
or break the engine.  Trial processes are found by a unique ``sleep`` argument (``1000.<digits>``).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import hpo
from conftest import PY, marked, wait_until, write_script, zygotes
from test_engine import processes_of, running
from test_training_service_contract import Recorder, _local, _run_trial, _spec
from training_services.base import create_training_service
from tuners import GridTuner

SLEEP = shutil.which("sleep")

# Run as ``trial.py MARK MODE``: 20 processes carrying MARK in their argv, of every kind, then "ready"; the
# two ``grace_spawner.py`` spawn 2 more each when they get SIGTERM.  MODE "exit": the trial then exits by
# itself; "stay": it sleeps, and on SIGTERM spawns one more daemon and carries on (until SIGKILL); "die":
# it sleeps, and dies of SIGTERM.
SPAWNING_TRIAL = f"""
import os, signal, subprocess, sys, time
import psutil

MARK, MODE = sys.argv[1], sys.argv[2]
SLEEP = [{SLEEP!r}, MARK]


def daemon(env=None, ignore_term=False):
    \"\"\"setsid + double fork: the grandchild (a sleep) is orphaned at once.\"\"\"
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            if ignore_term:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.execve(SLEEP[0], SLEEP, os.environ if env is None else env)
        os._exit(0)
    os.waitpid(pid, 0)


def ignore_term():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


for _ in range(2):
    subprocess.Popen(SLEEP)                                                      # a child
    subprocess.Popen(["/bin/sh", "-c", f"{{SLEEP[0]}} {{MARK}} & {{SLEEP[0]}} {{MARK}}"])  # sh + 2 grandchildren
    subprocess.Popen(SLEEP, start_new_session=True)                              # left the process group
    subprocess.Popen(SLEEP, env={{}})                                            # cleared its environment
    subprocess.Popen(SLEEP, preexec_fn=ignore_term)                              # ignores SIGTERM
    daemon()                                                                     # double-forked daemons
    daemon(env={{}})
    daemon(env={{}}, ignore_term=True)
    subprocess.Popen([sys.executable, "grace_spawner.py", MARK], env={{}})       # spawns during the grace


def marked():
    n = 0
    for proc in psutil.process_iter():
        try:
            n += MARK in proc.cmdline()
        except psutil.Error:
            pass
    return n


while marked() < 20:
    time.sleep(0.02)
open(os.path.join(os.environ["HPO_TRIAL_DIR"], "ready"), "w").close()
if MODE == "exit":
    sys.exit(0)
if MODE == "stay":
    signal.signal(signal.SIGTERM, lambda *_: daemon(env={{}}))
while True:
    time.sleep(1)
"""

GRACE_SPAWNER = f"""
import os, signal, subprocess, sys, time

SLEEP = [{SLEEP!r}, sys.argv[1]]


def on_term(*_):
    subprocess.Popen(SLEEP)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execve(SLEEP[0], SLEEP, {{}})
        os._exit(0)


signal.signal(signal.SIGTERM, on_term)
while True:
    time.sleep(1)
"""


def spawning_code(code: Path, name: str = "trial.py") -> None:
    write_script(code, name, SPAWNING_TRIAL)
    write_script(code, "grace_spawner.py", GRACE_SPAWNER)


class ExitCodes(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.codes: dict[str, int | None] = {}

    def ended(self, trial_id, status, exit_code, message) -> None:
        self.codes[trial_id] = exit_code
        super().ended(trial_id, status, exit_code, message)


# -- no survivors ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how, status", [("kill", "USER_CANCELED"), ("stop", "SYS_CANCELED"),
                                         ("timeout", "FAILED"), ("exit", "SUCCEEDED")])
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_no_process_of_the_trial_survives(tmp_path, mark, how, status, warm):
    """Kill, stop, max_duration or the trial's own exit: none of its 20+ processes of every kind is left, whether
    the trial started cold or was forked from the experiment's zygote (which stop() ends too)."""
    spawning_code(tmp_path / "code")
    ready = tmp_path / "trials" / "t" / "ready"

    async def main() -> Recorder:
        rec, svc = Recorder(), create_training_service("local", kill_grace=1.0)
        await svc.start(rec)
        spec = _spec(tmp_path, "t", "", max_duration=10.0 if how == "timeout" else None)
        spec.command = f"{PY} trial.py {mark} {'exit' if how == 'exit' else 'stay'}"
        spec.warm_start = ["psutil"] if warm else None
        await svc.launch(spec)
        deadline = time.monotonic() + 60
        while not ready.exists() and "t" not in rec.ended_status:
            assert time.monotonic() < deadline, "the trial did not spawn its processes"
            await asyncio.sleep(0.02)
        assert bool(zygotes(tmp_path / "code")) is warm
        if how == "kill":
            await svc.kill("t")
        elif how == "stop":
            await svc.stop()
        await rec.wait_ended("t", timeout=60)
        await svc.stop()
        return rec

    rec = asyncio.run(main())
    assert ready.exists(), "the trial ended before its processes were all up"
    assert rec.ended_status["t"] == status
    assert [p.cmdline() for p in marked(mark)] == []
    assert zygotes(tmp_path / "code") == []


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_a_supervisor_that_does_not_exit_is_killed_with_the_whole_tree(tmp_path, mark, warm):
    """The engine's backstop: a stopped supervisor (it cannot act on SIGTERM) and its tree are SIGKILLed."""
    spawning_code(tmp_path / "code")
    ready = tmp_path / "trials" / "t" / "ready"

    async def main() -> Recorder:
        rec, svc = Recorder(), create_training_service("local", kill_grace=1.0)
        await svc.start(rec)
        spec = _spec(tmp_path, "t", "")
        spec.command = f"{PY} trial.py {mark} die"
        spec.warm_start = ["psutil"] if warm else None
        await svc.launch(spec)
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline and "t" not in rec.ended_status, "the trial did not spawn its processes"
            await asyncio.sleep(0.02)
        os.kill(rec.pids["t"], signal.SIGSTOP)
        await asyncio.wait_for(svc.kill("t"), 60)
        return rec

    rec = asyncio.run(main())
    assert rec.ended_status["t"] == "USER_CANCELED"
    assert [p.cmdline() for p in marked(mark)] == []


def test_trials_end_themselves_when_the_engine_is_killed(launcher, mark, tmp_path):
    """kill -9 of the engine: its trials' processes, of every kind, are gone within kill_grace + a few seconds."""
    spawning_code(tmp_path / "code", "spawn.py")
    trial = (f"import runpy, sys\nsys.argv = ['spawn.py', {mark!r}, 'stay']\n"
             "runpy.run_path('spawn.py', run_name='__main__')\n")
    proc, exp_id, directory = launcher(trial, trial_concurrency=1, max_trial_number=1)
    wait_until(lambda: list(directory.glob("trials/*/ready")), 60, what="the trial to spawn its processes")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    wait_until(lambda: not marked(mark) and not processes_of(exp_id), 5 + 15, 0.1,
               what="the trial's processes to end after the engine's death")


# -- the kill grace -------------------------------------------------------------------------------------------------
CHECKPOINT_TRIAL = """
import os, signal, sys, time, hpo
hpo.get_next_parameter()


def save(*_):
    time.sleep(2)
    open(os.path.join(os.environ["HPO_TRIAL_DIR"], "checkpoint"), "w").close()
    sys.exit(0)


signal.signal(signal.SIGTERM, save)
open(os.path.join(os.environ["HPO_TRIAL_DIR"], "ready"), "w").close()
time.sleep(300)
"""


def test_a_killed_trial_gets_the_whole_grace_to_save_a_checkpoint(make_experiment):
    """kill_trial_job and stop(): the trial process itself (not only its shell) gets SIGTERM, then kill_grace (5 s)."""
    exp = make_experiment(CHECKPOINT_TRIAL, trial_concurrency=2, max_trial_number=2)
    exp.start(port=0)
    trials = wait_until(lambda: len(running(exp)) == 2 and running(exp), 30, what="2 running trials")
    first, second = (exp.directory / "trials" / t["id"] for t in trials)
    wait_until(lambda: (first / "ready").exists() and (second / "ready").exists(), 30, what="the trials' handlers")
    exp.kill_trial_job(trials[0]["id"])
    assert (first / "checkpoint").exists()
    exp.stop()
    assert (second / "checkpoint").exists()
    assert [t["status"] for t in exp.list_trial_jobs()] == ["USER_CANCELED", "SYS_CANCELED"]


# -- output and reports ---------------------------------------------------------------------------------------------
HUGE_OUTPUT = """
import sys
out = sys.stdout.buffer
out.write(b"a" * 20_000_000 + b"\\n")
out.write(b"HPO_FINAL_RESULT=0.5\\n")
out.write(b"b" * 100_000_000)
"""


def test_huge_output_lines_are_logged_and_never_stall_the_engine(tmp_path):
    """A 20 MB line, a report, a 100 MB line without newline: fast, bounded engine memory, every byte logged."""
    me = psutil.Process()
    baseline, peak, done = me.memory_info().rss, [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            done.wait(0.005)

    async def main() -> tuple[Recorder, float]:
        rec, svc = Recorder(), create_training_service("local", kill_grace=1.0)
        await svc.start(rec)
        lag, last = 0.0, time.monotonic()

        async def tick() -> None:
            nonlocal lag, last
            while True:
                await asyncio.sleep(0.01)
                lag, last = max(lag, time.monotonic() - last), time.monotonic()

        ticker = asyncio.create_task(tick())
        await svc.launch(_spec(tmp_path, "big", HUGE_OUTPUT))
        await rec.wait_ended("big", timeout=60)
        ticker.cancel()
        return rec, lag

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        rec, lag = asyncio.run(main())
    finally:
        done.set()
        sampler.join()
    assert rec.ended_status["big"] == "SUCCEEDED", rec.messages["big"]
    assert [d for k, d in rec.of("big") if k == "metric"] == [("final", 0.5)]
    assert (tmp_path / "trials" / "big" / "stdout.log").stat().st_size == 20_000_001 + 21 + 100_000_000
    assert peak[0] - baseline < 64 * 2**20
    assert lag < 2.0  # the event loop was never blocked for long (a generous bound for a loaded machine)


BAD_VALUES = {  # JSON text of a final result, and what the trial's message says about it
    "huge_int": ("1" + "0" * 400, "FAILED", "too large to be a float"),
    "many_digits": ("1" * 5000, "FAILED", "4300 digits"),
    "overflow": ("1e999", "SUCCEEDED", "inf is not a finite number"),
    "nan": ("NaN", "SUCCEEDED", "nan is not a finite number"),
    "deep": ("[" * 100_000 + "]" * 100_000, "FAILED", "nested too deeply"),
    "deep_in_dict": ('{"default": 1, "x": ' + "[" * 500 + "]" * 500 + "}", "FAILED", "nested more than 32 levels"),
}
BAD_REPORT_TRIAL = f"""
import os, hpo
p = hpo.get_next_parameter()
bad = {({case: text for case, (text, _, _) in BAD_VALUES.items()})!r}[p["case"]]
if p["channel"] == "fd":
    line = lambda kind, value: '{{"type": "%s", "value": %s}}\\n' % (kind, value)
    data, fd = line("intermediate", 1) + line("final", bad) + line("intermediate", 2), int(os.environ["HPO_REPORT_FD"])
else:
    data, fd = "HPO_INTERMEDIATE_RESULT=1\\nHPO_FINAL_RESULT=%s\\nHPO_INTERMEDIATE_RESULT=2\\n" % bad, 1
data = data.encode()
while data:  # all three lines in one write (as far as the pipe takes them)
    data = data[os.write(fd, data):]
"""


def test_bad_reports_fail_the_trial_or_say_why_and_lose_nothing(make_experiment):
    """Values that break json or float(), sent between two good reports, over the pipe and printed."""
    space = {"case": {"_type": "choice", "_value": list(BAD_VALUES)},
             "channel": {"_type": "choice", "_value": ["fd", "stdout"]}}
    exp = make_experiment(BAD_REPORT_TRIAL, tuner=GridTuner(), search_space=space, trial_concurrency=2,
                          max_trial_number=2 * len(BAD_VALUES))
    assert exp.run(port=0) is True
    trials = exp.list_trial_jobs()
    assert len(trials) == 2 * len(BAD_VALUES)
    for t in trials:
        _, status, needle = BAD_VALUES[t["parameters"]["case"]]
        where = f"{t['parameters']}: {t['status']} {t['message']!r}"
        assert (t["status"], needle in (t["message"] or "")) == (status, True), where
        assert exp.get_trial_job(t["id"])["intermediate"] == [1, 2], where
    log = (exp.directory / "engine.log").read_text()
    assert "Traceback" not in log and "ERROR" not in log


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("value, error", [(10**400, "too large to be a float"),
                                          ({"default": 1, "x": _nested(32)}, "nested more than 32 levels")],
                         ids=["huge_int", "deep_in_dict"])
def test_report_final_result_refuses_what_the_engine_could_not_read(value, error):
    with pytest.raises(ValueError, match=error):
        hpo.report_final_result(value)


def test_a_deeply_nested_result_is_a_clear_error_in_the_trial():
    with pytest.raises(ValueError, match=r"expected a number or a dict .* \(list\)"):
        hpo.report_final_result(_nested(100_000))


def test_an_over_long_report_line_fails_the_trial_and_later_reports_count(tmp_path):
    script = ("import os\nfd = int(os.environ['HPO_REPORT_FD'])\n"
              "data = b'{\"type\": \"intermediate\", \"value\": ' + b'1' * 2_000_000 + b'}\\n'\n"
              "data += b'{\"type\": \"final\", \"value\": 3}\\n'\n"
              "while data:\n    data = data[os.write(fd, data):]\n")
    rec = _run_trial(tmp_path, _local, "long", script)
    assert [d for k, d in rec.of("long") if k == "metric"] == [("final", 3)]
    assert rec.ended_status["long"] == "FAILED"
    assert "longer than" in rec.messages["long"]


def test_a_full_disk_stops_the_stdout_log_not_the_reports(tmp_path, caplog):
    """stdout.log on a full device (/dev/full): the reports still count, the message says why the log is short."""
    trial_dir = tmp_path / "trials" / "full"
    trial_dir.mkdir(parents=True)
    (trial_dir / "stdout.log").symlink_to("/dev/full")
    script = "import hpo\nprint('some output')\nhpo.report_intermediate_result(1)\nprint('HPO_FINAL_RESULT=2')\n"
    rec = _run_trial(tmp_path, _local, "full", script)
    assert sorted(d for k, d in rec.of("full") if k == "metric") == [("final", 2), ("intermediate", 1)]  # two pipes
    assert rec.ended_status["full"] == "SUCCEEDED"
    assert rec.messages["full"] == "stdout.log is incomplete: No space left on device"
    assert not [r for r in caplog.records if r.exc_info]


# -- the supervisor is transparent ----------------------------------------------------------------------------------
@pytest.mark.parametrize("command, code", [("exit 3", 3), ("kill -KILL $$", -9), ("true", 0)])
def test_the_exit_status_is_the_commands(tmp_path, command, code):
    async def main() -> ExitCodes:
        rec, svc = ExitCodes(), create_training_service("local", kill_grace=1.0)
        await svc.start(rec)
        spec = _spec(tmp_path, "c", "")
        spec.command = command
        await svc.launch(spec)
        await rec.wait_ended("c")
        return rec

    assert asyncio.run(main()).codes["c"] == code
