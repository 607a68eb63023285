"""Warm starts: trials forked from a per-experiment zygote behave like fresh interpreters (real processes).

What a fresh ``python script.py args`` gives a trial, a forked one gets too: argv, environment, cwd, sys.path[0],
stdin, stdout/stderr buffering, exit codes and signals, its own random state; a crash stays in its child; the
modules are imported once; and no process outlives a kill, a stop or the engine.
"""
from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from conftest import PY, ZYGOTE, marked, wait_until, write_script, zygotes
from test_engine import processes_of
from test_local_lifecycle import ExitCodes, spawning_code
from test_training_service_contract import Recorder, _spec
from training_services.base import create_training_service
from training_services.warm_start import can_start_warm, warm_argv

def run_warm(tmp: Path, scripts: dict[str, str], commands: dict[str, str] | None = None, preload: list[str] = (),
             env: dict[str, str] | None = None, concurrently: bool = False) -> ExitCodes:
    """Run trials (id -> script) one after another (or all at once) with warm starts; what they reported."""
    async def main() -> ExitCodes:
        rec, svc = ExitCodes(), create_training_service("local", kill_grace=1.0)
        await svc.start(rec)
        for seq, (trial_id, script) in enumerate(scripts.items(), 1):
            spec = _spec(tmp, trial_id, script, seq=seq, env=dict(env or {}))
            spec.warm_start = list(preload)
            if commands and trial_id in commands:
                spec.command = commands[trial_id]
            await svc.launch(spec)
            if not concurrently:
                await rec.wait_ended(trial_id)
        await rec.wait_ended(*scripts)
        await svc.stop()
        return rec

    return asyncio.run(main())


def finals(rec: Recorder, trial_id: str) -> list:
    return [value for kind, (what, value) in ((k, d) for k, d in rec.of(trial_id) if k == "metric")
            if what == "final"]


# -- what a warm trial sees ----------------------------------------------------------------------------------------
IDENTITY = """
import json, os, random, sys
import hpo
stdin = sys.stdin.read()
parent = int(open(f"/proc/{os.getppid()}/stat").read().rsplit(")", 1)[1].split()[1])
hpo.report_final_result({"default": 1, "argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "stdin": stdin,
                         "env": os.environ.get("MY_VAR"), "trial": os.environ["HPO_TRIAL_ID"],
                         "unbuffered": os.environ.get("PYTHONUNBUFFERED"), "name": __name__,
                         "slot": "HPO_ZYGOTE_ENV_SLOT" in os.environ, "random": random.random(),
                         "zygote": " ".join(open(f"/proc/{parent}/cmdline").read().split(chr(0))),
                         "group": os.getpgid(0) == os.getpid(), "sigint": str(__import__("signal").getsignal(2))})
"""


def test_a_warm_trial_sees_what_a_fresh_interpreter_would(tmp_path):
    sub = tmp_path / "code" / "sub"
    write_script(sub, "inner.py", IDENTITY)
    rec = run_warm(tmp_path, {"a": IDENTITY, "b": IDENTITY, "c": ""},
                   commands={"b": f"{PY} -u sub/inner.py --lr 0.1 'two words'", "c": f"{PY} -m json.tool --help"},
                   env={"MY_VAR": "from trial_env"})
    a, b = finals(rec, "a")[0], finals(rec, "b")[0]
    code = str(tmp_path / "code")
    assert a["argv"] == ["a.py"] and b["argv"] == ["sub/inner.py", "--lr", "0.1", "two words"]
    assert a["cwd"] == b["cwd"] == code
    assert a["path0"] == code and b["path0"] == str(sub)
    assert a["stdin"] == b["stdin"] == ""
    assert a["env"] == "from trial_env" and (a["trial"], b["trial"]) == ("a", "b")
    assert b["unbuffered"] == "1" and a["name"] == b["name"] == "__main__"
    assert not a["slot"] and a["group"] and a["sigint"].startswith("<built-in function default_int_handler")
    assert a["random"] != b["random"]
    assert ZYGOTE in a["zygote"] and ZYGOTE in b["zygote"], "the trial's supervisor is the zygote's child"
    assert rec.ended_status == {"a": "SUCCEEDED", "b": "SUCCEEDED", "c": "SUCCEEDED"}
    assert "usage" in (tmp_path / "trials" / "c" / "stdout.log").read_text()  # python -m module args


@pytest.mark.parametrize("script, code, message", [
    ("import sys\nsys.exit(3)\n", 3, "exit code 3"),
    ("raise SystemExit('bad learning rate: -1')\n", 1, "bad learning rate: -1"),
    ("raise ValueError('boom')\n", 1, "ValueError: boom"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n", -15, "killed by signal SIGTERM"),
    ("raise KeyboardInterrupt\n", -2, "KeyboardInterrupt"),
    ("import ctypes\nctypes.string_at(0)\n", -11, "Segmentation fault"),
    ("import os\nos._exit(7)\n", 7, "exit code 7"),
])
def test_exit_codes_signals_and_messages_are_a_fresh_interpreters(tmp_path, script, code, message):
    rec = run_warm(tmp_path, {"t": script})
    assert rec.codes["t"] == code
    assert rec.ended_status["t"] == "FAILED"
    assert message in rec.messages["t"] or (code == -11 and rec.messages["t"] == "killed by signal SIGSEGV")


def test_a_traceback_shows_the_trials_frames_not_the_zygotes(tmp_path):
    rec = run_warm(tmp_path, {"t": "def train():\n    raise RuntimeError('diverged')\n\ntrain()\n"})
    stderr = (tmp_path / "trials" / "t" / "stderr.log").read_text()
    assert stderr.startswith("Traceback (most recent call last):\n  File ") and "t.py\", line 4" in stderr
    assert ZYGOTE not in stderr and "runpy" not in stderr
    assert rec.messages["t"] == "RuntimeError: diverged"


def test_threads_join_and_atexit_runs_before_the_trial_exits(tmp_path):
    script = ("import atexit, threading, time, hpo\n"
              "atexit.register(lambda: print('atexit ran', flush=True))\n"
              "threading.Thread(target=lambda: (time.sleep(0.3), hpo.report_final_result(5))).start()\n")
    rec = run_warm(tmp_path, {"t": script})
    assert finals(rec, "t") == [5] and rec.ended_status["t"] == "SUCCEEDED"
    assert "atexit ran" in (tmp_path / "trials" / "t" / "stdout.log").read_text()


def test_a_crash_stays_in_its_child_and_the_next_trials_use_the_same_zygote(tmp_path):
    crash = "import ctypes\nctypes.string_at(0)\n"
    ok = "import hpo, os\nhpo.report_final_result(os.getpid())\n"
    rec = run_warm(tmp_path, {"c1": crash, "ok1": ok, "c2": "import os\nos.abort()\n", "ok2": ok})
    assert rec.codes["c1"] == -11 and rec.codes["c2"] == -6
    assert rec.ended_status["ok1"] == rec.ended_status["ok2"] == "SUCCEEDED"
    log = (tmp_path / "zygote.log")
    assert not log.exists() or "Traceback" not in log.read_text()


def test_preloaded_modules_are_imported_once_and_fresh_state_each_trial(tmp_path):
    code = tmp_path / "code"
    write_script(code, "heavy.py", """
        import os
        with open(os.path.join(os.path.dirname(__file__), "imports.log"), "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        STATE = []
    """)
    trial = ("import heavy, hpo, numpy\nheavy.STATE.append(1)\n"
             "hpo.report_final_result({'default': len(heavy.STATE), 'np': float(numpy.random.random())})\n")
    rec = run_warm(tmp_path, {f"t{i}": trial for i in range(4)}, preload=["heavy", "numpy"])
    assert len((code / "imports.log").read_text().split()) == 1, "imported once, in the zygote"
    results = [finals(rec, f"t{i}")[0] for i in range(4)]
    assert [r["default"] for r in results] == [1, 1, 1, 1], "module state is the zygote's, not the previous trial's"
    assert len({r["np"] for r in results}) == 4, "numpy's global random state is reseeded per trial"


def test_a_module_that_fails_to_preload_fails_in_the_trial_like_a_cold_start(tmp_path, caplog):
    write_script(tmp_path / "code", "broken.py", "raise ImportError('needs a GPU driver')\n")
    rec = run_warm(tmp_path, {"t": "import broken\n"}, preload=["broken"])
    assert rec.ended_status["t"] == "FAILED" and rec.messages["t"] == "ImportError: needs a GPU driver"
    assert "could not preload broken: ImportError: needs a GPU driver" in caplog.text


def test_concurrent_warm_trials_each_report_their_own_parameters(tmp_path):
    trial = "import hpo, time\np = hpo.get_next_parameter()\ntime.sleep(0.2)\nhpo.report_final_result(p['x'])\n"

    async def main() -> Recorder:
        rec, svc = Recorder(), create_training_service("local", kill_grace=1.0)
        await svc.start(rec)
        for i in range(12):
            spec = _spec(tmp_path, f"t{i}", trial, seq=i + 1, parameters={"x": i})
            spec.warm_start = []
            await svc.launch(spec)
        await rec.wait_ended(*[f"t{i}" for i in range(12)], timeout=60)
        await svc.stop()
        return rec

    rec = asyncio.run(main())
    assert {i: finals(rec, f"t{i}") for i in range(12)} == {i: [i] for i in range(12)}


# -- no process outlives its trial (see also test_local_lifecycle.py, warm and cold) -----------------------------
def test_a_warm_trials_processes_carry_its_markers(tmp_path, make_experiment):
    """What finds a trial's processes by environment (the engine's sweep after a kill or crash) finds warm ones."""
    exp = make_experiment("import time, hpo\nhpo.get_next_parameter()\ntime.sleep(60)\n",
                          trial_concurrency=1, max_trial_number=1, trial_warm_start=True)
    exp.start(port=0)
    # the supervisor and the trial, both forked from the zygote (its command line), carry the trial's markers
    wait_until(lambda: len([p for p in processes_of(exp.id) if ZYGOTE in " ".join(p.cmdline())]) == 2, 30,
               what="the trial's two forked processes to carry its markers")
    exp.stop()
    wait_until(lambda: not processes_of(exp.id) and not zygotes(exp.config.trial_code_directory), 10,
               what="every process to end")


def test_warm_trials_end_themselves_and_the_zygote_exits_when_the_engine_is_killed(launcher, mark, tmp_path):
    spawning_code(tmp_path / "code", "spawn.py")
    trial = (f"import runpy, sys\nsys.argv = ['spawn.py', {mark!r}, 'stay']\n"
             "runpy.run_path('spawn.py', run_name='__main__')\n")
    proc, exp_id, directory = launcher(trial, trial_concurrency=1, max_trial_number=1, trial_warm_start=True,
                                       trial_preload=["psutil"])
    wait_until(lambda: list(directory.glob("trials/*/ready")), 60, what="the trial to spawn its processes")
    assert zygotes(tmp_path / "code")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    wait_until(lambda: not marked(mark) and not processes_of(exp_id) and not zygotes(tmp_path / "code"), 20, 0.1,
               what="the trial's processes and the zygote to end after the engine's death")


def test_a_dead_zygote_is_replaced_and_trials_keep_running(tmp_path):
    trial = "import hpo, os\nhpo.report_final_result(os.getpid())\n"

    async def main() -> Recorder:
        rec, svc = Recorder(), create_training_service("local", kill_grace=1.0)
        await svc.start(rec)
        for i in range(4):
            if i == 2:
                for z in zygotes(tmp_path / "code"):
                    z.kill()
                    z.wait(5)
            spec = _spec(tmp_path, f"t{i}", trial, seq=i + 1)
            spec.warm_start = []
            await svc.launch(spec)
            await rec.wait_ended(f"t{i}")
        await svc.stop()
        return rec

    rec = asyncio.run(main())
    assert set(rec.ended_status.values()) == {"SUCCEEDED"}


# -- function trials and config ------------------------------------------------------------------------------------
def test_function_trials_start_warm_by_default_and_import_their_modules_once(tmp_path, make_experiment,
                                                                             monkeypatch):
    code = tmp_path / "code"
    write_script(code, "heavy.py", """
        import os
        with open(os.path.join(os.path.dirname(__file__), "imports.log"), "a") as fh:
            fh.write(f"{os.getpid()}\\n")

        def double(x):
            return {"default": 2 * x, "pid": os.getpid()}
    """)
    write_script(code, "warm_fn.py", "import heavy\n\n\ndef objective(params):\n    return heavy.double(params['x'])\n")
    monkeypatch.syspath_prepend(str(code))
    from warm_fn import objective
    exp = make_experiment(None, command=None, trial_concurrency=2, max_trial_number=6)
    exp.config.trial_function = objective
    assert exp.config.warm_start
    assert exp.run(port=0)
    data = exp.export_data()
    assert len(data) == 6 and all(d["default"] == d["parameter"]["x"] * 2 for d in data)
    assert len({d["value"]["pid"] for d in data}) == 6, "each trial ran in its own process"
    others = [line for line in (code / "imports.log").read_text().split() if line != str(os.getpid())]
    assert len(others) == 1, "the function's modules were imported once, by the zygote"


def test_warm_start_config_errors_name_the_field(make_experiment):
    from hpo.config import ConfigError
    cases = [
        (dict(trial_warm_start=True, command="python trial.py | tee out.log"), "trial_command: 'python trial.py | tee"),
        (dict(trial_warm_start=True, command="bash run.sh"), "cannot start warm"),
        (dict(trial_preload=["torch"], command="python trial.py"), "trial_preload: modules are preloaded only"),
        (dict(trial_warm_start=True, command="python trial.py",
              training_service={"platform": "kubernetes"}), "trial_warm_start: the kubernetes training service"),
    ]
    for config, message in cases:
        exp = make_experiment(None, **config)
        with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
            exp.config.validate_for_start()
    with pytest.raises(ConfigError, match="trial_preload"):
        make_experiment(None, command="python t.py", trial_preload=["not a module"])


@pytest.mark.parametrize("command, warm", [
    ("python train.py --lr 0.1", True), ("python3 -u train.py", True), ("python3.11 -m pkg.train --x 1", True),
    ("/opt/venv/bin/python train.py 'a b'", True), ("python train.py {{ lr }}", True),
    ("python train.py > out.log", False), ("python train.py && echo done", False), ("LR=1 python train.py", False),
    ("python -c 'print(1)'", False), ("bash train.sh", False), ("python train.py $HOME", False),
    ("python train.py *.csv", False), ("python", False), ("python -m", False),
])
def test_which_commands_can_start_warm(command, warm):
    assert can_start_warm(command) is warm


def test_a_warm_commands_argv_is_what_the_shell_would_pass():
    assert warm_argv("python3 -u train.py --name 'a b' \"c\"") == ("python3", ["train.py", "--name", "a b", "c"],
                                                                   {"PYTHONUNBUFFERED": "1"})
    assert warm_argv("python -m pkg.train --x=1") == ("python", ["-m", "pkg.train", "--x=1"], {})


def test_the_whole_first_round_is_launched_while_the_zygote_starts(make_experiment):
    """Trials being launched count once against the concurrency limit: while the zygote imports a slow module,
    every slot's trial is already recorded and waits for it (not half of them)."""
    make_experiment.script("import time\ntime.sleep(1.5)\n", "slow_import.py")
    exp = make_experiment("import hpo\nhpo.report_final_result(hpo.get_next_parameter()['x'])\n",
                          trial_concurrency=4, max_trial_number=4, trial_warm_start=True,
                          trial_preload=["slow_import"])
    assert exp.run(port=0) is True
    trials = exp.list_trial_jobs()
    assert len(trials) == 4 and all(t["status"] == "SUCCEEDED" for t in trials)
    first_start = min(t["started_at"] for t in trials)
    assert max(t["created_at"] for t in trials) < first_start - 1.0, \
        [(t["seq"], t["created_at"] - first_start) for t in trials]
