"""Nothing lost, nothing left behind: a failing disk, crashes, double resumes, damaged stores.

Real engines (in this process, or in a child process that is SIGKILLed), real trial processes,
real SQLite files: the disk really fills (SQLite's page limit, or a small tmpfs when this runs
as root).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import ROOT, Spawned, experiment_script, kill_all, wait_until, write_script
from hpo import Experiment
from hpo.experiment import ExperimentError
from hpo.storage import ExperimentStore, StoreLocked, engine_running
from test_engine import alive, processes_of, run_guarded


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "hpo", *args], text=True, capture_output=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def gate(directory: Path, stubborn: bool = False) -> str:
    """Trial code that blocks trials numbered above 3 until ``directory/go`` exists (``stubborn``: ignoring
    SIGTERM meanwhile, so that they outlive their supervisor's grace)."""
    return f"""
import os, signal, time, hpo
p = hpo.get_next_parameter()
if int(os.environ["HPO_SEQUENCE_ID"]) > 3:
    if {stubborn!r}:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(os.path.join({str(directory)!r}, "blocked-" + os.environ["HPO_SEQUENCE_ID"]), "w").close()
    while not os.path.exists({str(directory / "go")!r}):
        time.sleep(0.02)
hpo.report_final_result(p["x"])
"""


# -- 1. a disk that fills up --------------------------------------------------------------------------------------
CHATTY = """
import os, hpo
hpo.get_next_parameter()
for i in range(100000):
    if os.path.exists("calm"):  # in the trial's working directory, the code folder
        break
    hpo.report_intermediate_result({"default": i, "padding": "x" * 2000})
hpo.report_final_result(1)
"""


def test_a_full_store_ends_the_experiment_as_error_and_can_be_resumed(make_experiment, capfd):
    exp = make_experiment(CHATTY, trial_concurrency=2, max_trial_number=6)
    exp.config.training_service.kill_grace = 2.0
    exp.start(port=0)
    store = exp._store()
    wait_until(lambda: len(store.metrics(1, "intermediate")) > 20, 30, what="reports in the store")
    # SQLite refuses to grow the file past this many pages: "database or disk is full", for real
    exp._runner.call(lambda e: e.store._conn.execute(  # type: ignore[union-attr]
        f"PRAGMA max_page_count = {e.store._conn.execute('PRAGMA page_count').fetchone()[0] + 2}"))
    assert exp.wait(30), "a full store must end the experiment, not wedge it"
    exp.stop()  # returns
    info = exp.get_experiment_profile()
    assert info["status"] == "ERROR"
    assert info["message"] == f"disk full writing {exp.directory / 'experiment.db'}"
    assert processes_of(exp.id) == []
    err = capfd.readouterr().err
    assert "Traceback" not in err
    log = (exp.directory / "engine.log").read_text()
    assert "Traceback" not in log and log.count("store write failed") == 1

    (exp.config.trial_code_directory / "calm").touch()
    resumed = Experiment.resume(exp.id, port=0, wait_completion=False)  # space is back (a new connection)
    try:
        exp_id = exp.id
        resumed.update_max_trial_number(2 + len([t for t in resumed.list_trial_jobs() if not t["interrupted"]]))
        assert resumed.wait(60)
    finally:
        resumed.stop()
    assert resumed.get_status() == "DONE", resumed.get_experiment_profile()["message"]
    assert Experiment.connect(exp_id).get_status() == "DONE"


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 3 MiB tmpfs (root only): ``small_disk.grow()`` makes room again."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")

    class Disk:
        path = mount

        @staticmethod
        def grow() -> None:
            subprocess.run(["mount", "-o", "remount,size=256m", str(mount)], check=True)
    yield Disk
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_ends_the_experiment_as_error_and_resume_works_once_there_is_space(
        make_experiment, small_disk, monkeypatch, capfd):
    monkeypatch.setenv("HPO_HOME", str(small_disk.path))
    chatty = """
import os, hpo
hpo.get_next_parameter()
for i in range(100000):
    if os.path.exists("calm"):
        break
    print("output " * 100)
    hpo.report_intermediate_result({"default": i, "padding": "x" * 1000})
hpo.report_final_result(1)
"""
    exp = make_experiment(chatty, trial_concurrency=2, max_trial_number=4)
    exp.config.training_service.kill_grace = 2.0
    ok, _ = run_guarded(exp, 60)
    assert ok is False
    info = exp.get_experiment_profile()
    assert info["status"] == "ERROR" and info["message"].startswith("disk full writing "), info["message"]
    assert processes_of(exp.id) == []
    assert "Traceback" not in capfd.readouterr().err

    small_disk.grow()
    for trial_dir in (exp.directory / "trials").iterdir():  # the user makes room: the chatty logs go
        for log in trial_dir.glob("*.log"):
            log.unlink()
    (exp.config.trial_code_directory / "calm").touch()
    resumed = Experiment.resume(exp.id, port=0, wait_completion=False)
    try:
        assert resumed.wait(60)
    finally:
        resumed.stop()
    assert resumed.get_status() == "DONE", resumed.get_experiment_profile()["message"]
    assert resumed.get_experiment_profile()["resumed_at"] > info["ended_at"]


# -- 4. the time budget survives a crash ----------------------------------------------------------------------------
def test_a_crash_does_not_reset_the_time_budget(spawn):
    s = spawn("import time; time.sleep(300)", trial_concurrency=1, max_experiment_duration="8s")
    with s.store() as store:
        wait_until(lambda: store.elapsed_seconds() >= 5, 30, what="5 s of running time")
    s.crash()
    started = time.monotonic()
    resumed = Experiment.resume(s.id, port=0, wait_completion=True)
    took = time.monotonic() - started
    assert resumed.get_status() == "DONE"
    assert "max_experiment_duration" in resumed.get_experiment_profile()["message"]
    assert took < 6.5, f"the resumed experiment ran {took:.1f} s of an 8 s budget that was 5+ s used"
    assert 7.5 <= resumed.get_experiment_profile()["run_seconds"] < 12


# -- 5. a trial with a stored final result is finished ----------------------------------------------------------
REPORT_THEN_LINGER = """
import os, time, hpo
p = hpo.get_next_parameter()
hpo.report_final_result(p["x"])
if int(os.environ["HPO_SEQUENCE_ID"]) > 2:
    time.sleep(300)   # still cleaning up when the engine goes
"""


def test_a_trial_that_reported_before_a_crash_is_kept_once(spawn):
    s = spawn(REPORT_THEN_LINGER, trial_concurrency=2, max_trial_number=6)
    with s.store() as store:
        wait_until(lambda: [t for t in store.trials(status="RUNNING") if t["final"] is not None][1:], 30,
                   what="two trials that reported and linger")
        lingering = {t["seq"] for t in store.trials(status="RUNNING")}
    s.crash()
    resumed = Experiment.resume(s.id, port=0, wait_completion=False)
    try:
        wait_until(lambda: resumed.get_status() in ("DONE", "STOPPED", "ERROR") or
                   len(resumed.list_trial_jobs(status="RUNNING")) == 2, 30, what="the resumed trials")
        resumed.stop()
    finally:
        resumed.stop()
    trials = {t["seq"]: t for t in resumed.list_trial_jobs()}
    for seq in lingering:
        assert trials[seq]["status"] == "SUCCEEDED" and trials[seq]["interrupted"] == 0
        assert not [t for t in trials.values() if t["rerun_of"] == seq], "a finished trial was re-run"
    exported = resumed.export_data()
    assert len({e["trial_id"] for e in exported}) == len(exported)
    assert len({json.dumps(e["parameter"], sort_keys=True) for e in exported}) == len(exported)


def test_stopping_a_trial_that_already_reported_keeps_its_result(make_experiment):
    exp = make_experiment(REPORT_THEN_LINGER, trial_concurrency=2, max_trial_number=4)
    exp.config.training_service.kill_grace = 1.0
    exp.start(port=0)
    wait_until(lambda: [t for t in exp.list_trial_jobs(status="RUNNING") if t["final"] is not None
                        and t["seq"] > 2][1:], 30, what="two lingering trials")  # #1 and #2 may not have exited yet
    exp.stop()
    trials = exp.list_trial_jobs()
    assert [t["status"] for t in trials] == ["SUCCEEDED"] * 4
    assert all(t["interrupted"] == 0 for t in trials)
    assert len(exp.export_data()) == 4
    best = exp.best_trial()
    assert best is not None and best["final_value"] == max(t["final_value"] for t in trials)


# -- 6. one writer, ever ------------------------------------------------------------------------------------------
def test_the_store_has_one_writer(tmp_path):
    first = ExperimentStore(tmp_path / "exp")
    try:
        assert engine_running(tmp_path / "exp")
        with pytest.raises(StoreLocked, match="in use by another running engine"):
            ExperimentStore(tmp_path / "exp")
    finally:
        first.close()
    assert not engine_running(tmp_path / "exp")
    ExperimentStore(tmp_path / "exp").close()


def test_two_simultaneous_resumes_one_runs_the_other_is_refused(spawn, tmp_path):
    s = spawn(gate(tmp_path), trial_concurrency=2, max_trial_number=8)
    with s.store() as store:
        wait_until(lambda: store.status_counts()["RUNNING"] == 2 and store.status_counts()["SUCCEEDED"] == 3, 30,
                   what="two blocked trials")
    s.crash()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-m", "hpo", "resume", s.id, "--port", "0", "--foreground"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        with s.store() as store:
            wait_until(lambda: any(p.poll() is not None for p in procs), 60, what="one resume to give up")
            (tmp_path / "go").touch()
        outs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    refused = outs[[p.returncode for p in procs].index(1)][1]
    assert refused.strip().splitlines()[-1].startswith(f"hpo: error: experiment {s.id} is still running"), refused
    assert "Traceback" not in refused
    with s.store() as store:
        trials = store.trials()
        assert store.experiment()["status"] == "DONE"
        assert store.experiment()["message"] is None
    assert [t["seq"] for t in trials] == list(range(1, len(trials) + 1))
    reruns = [t["rerun_of"] for t in trials if t["rerun_of"]]
    assert sorted(reruns) == sorted(set(reruns)) and len(reruns) == 2, "each interrupted trial re-run once"
    assert not [t for t in trials if t["status"] in ("WAITING", "RUNNING")]


# -- 7. a crashed engine's leftovers ------------------------------------------------------------------------------
def test_resume_right_after_a_crash_does_not_see_a_dead_engine_as_running(spawn, tmp_path):
    s = spawn(gate(tmp_path), trial_concurrency=2, max_trial_number=6)
    with s.store() as store:
        wait_until(lambda: store.status_counts()["RUNNING"] == 2, 30, what="two blocked trials")
    os.kill(s.proc.pid, signal.SIGKILL)  # not reaped: it stays a zombie, as under a parent that does not wait
    wait_until(lambda: not alive(psutil.Process(s.proc.pid)), 10, what="the engine to die")
    assert psutil.Process(s.proc.pid).status() == psutil.STATUS_ZOMBIE
    (tmp_path / "go").touch()
    resumed = Experiment.resume(s.id, port=0, wait_completion=True)
    assert resumed.get_status() == "DONE"


def test_hpo_stop_ends_what_a_crashed_engine_left(spawn, tmp_path):
    s = spawn(gate(tmp_path, stubborn=True), trial_concurrency=2, max_trial_number=6,
              training_service={"platform": "local", "kill_grace": 60})
    with s.store() as store:
        wait_until(lambda: len(list(tmp_path.glob("blocked-*"))) == 2, 30, what="two blocked trials")
        blocked = [t for t in store.trials(status="RUNNING")]
    s.crash()
    assert len(processes_of(s.id)) >= 2, "the stubborn trials outlive their engine for the 60 s grace"
    finished = cli("kill", s.id, "1")
    assert finished.returncode == 1
    assert finished.stderr.strip() == f"hpo: error: trial {store_trial_id(s, 1)} of experiment {s.id} is not running"
    killed = cli("kill", s.id, str(blocked[0]["seq"]))
    assert killed.returncode == 0 and "killed (its engine had died)" in killed.stdout
    stopped = cli("stop", s.id)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"experiment {s.id} STOPPED (its engine had died; 1 leftover trial ended)"
    assert processes_of(s.id) == []
    with s.store() as store:
        assert store.experiment()["status"] == "STOPPED"
        states = {t["seq"]: (t["status"], t["interrupted"]) for t in store.trials()}
    assert states[blocked[0]["seq"]] == ("USER_CANCELED", 0)
    assert states[blocked[1]["seq"]] == ("SYS_CANCELED", 1)
    assert cli("stop", s.id).stdout.strip() == f"experiment {s.id} is already STOPPED"
    (tmp_path / "go").touch()
    resumed = Experiment.resume(s.id, port=0, wait_completion=True)  # the interrupted trial runs again
    assert [t["rerun_of"] for t in resumed.list_trial_jobs() if t["rerun_of"]] == [blocked[1]["seq"]]


def store_trial_id(s: Spawned, seq: int) -> str:
    with s.store() as store:
        rec = store.trial(seq)
    assert rec is not None
    return rec["id"]


def test_connected_handle_stops_a_crashed_experiment(spawn, tmp_path):
    s = spawn(gate(tmp_path), trial_concurrency=2, max_trial_number=6,
              training_service={"platform": "local", "kill_grace": 60})
    with s.store() as store:
        wait_until(lambda: store.status_counts()["RUNNING"] == 2, 30, what="two blocked trials")
    s.crash()
    exp = Experiment.connect(s.id)
    exp.stop()
    assert exp.get_status() == "STOPPED"
    assert processes_of(s.id) == []


# -- 9. the engine's own resource exhaustion is not the trial's failure ---------------------------------------------
def test_trials_that_cannot_start_for_lack_of_file_descriptors_are_re_queued(tmp_path):
    code = tmp_path / "code"
    write_script(code, "trial.py", "import hpo; hpo.report_final_result(hpo.get_next_parameter()['x'])")
    script = experiment_script(tmp_path / "exhaust.py", code, {"trial_concurrency": 2, "max_trial_number": 12}, """
        import os, time
        exp.start(port=0)
        held = []
        until = time.monotonic() + 1.5
        while time.monotonic() < until:     # for 1.5 s, take every descriptor left, and each one a finished
            try:                            # trial gives back: trials launched meanwhile cannot get their pipes
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                time.sleep(0.001)
        for fd in held:
            os.close(fd)
        exp.wait(60)
        trials = exp.list_trial_jobs()
        exp.stop()
        print("RESULT", exp.get_status(), sorted(t["status"] for t in trials if not t["interrupted"]),
              sum(1 for t in trials if t["interrupted"]))
    """)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: __import__("resource").setrlimit(
                              __import__("resource").RLIMIT_NOFILE, (256, 256)))
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, proc.stderr[-3000:]
    status, rest = line[0].split(" ", 2)[1], line[0].split(" ", 2)[2]
    assert status == "DONE", proc.stderr[-3000:]
    statuses = rest.rsplit(" ", 1)[0]
    assert "FAILED" not in statuses and statuses.count("SUCCEEDED") == 12, line[0]
    assert int(rest.rsplit(" ", 1)[1]) >= 1, "the test should have starved some trial launches"


# -- 11. a damaged store is one line ------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_a_damaged_store_is_one_line_everywhere(make_experiment, damage):
    exp = make_experiment("import hpo; hpo.report_final_result(1)", max_trial_number=3)
    assert exp.run(port=0) is True
    db = exp.directory / "experiment.db"
    for extra in ("-wal", "-shm"):
        Path(str(db) + extra).unlink(missing_ok=True)
    if damage == "garbage":
        db.write_bytes(b"this is not a database\n" * 500)
    elif damage == "truncated":
        with open(db, "r+b") as fh:
            fh.truncate(db.stat().st_size // 3)
    else:
        db.unlink()
    for args in (["trials", exp.id], ["export", exp.id], ["resume", exp.id, "--foreground", "--port", "0"],
                 ["view", exp.id, "--port", "0"], ["logs", exp.id], ["stop", exp.id]):
        proc = cli(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, (args, proc.stderr)
        assert lines[0].startswith("hpo: error: ") and str(db) in lines[0], (args, lines)
    with pytest.raises((ExperimentError, OSError, RuntimeError), match=str(db).replace(".", r"\.")):
        Experiment.connect(exp.id)


# -- 17. a reached goal survives a crash ----------------------------------------------------------------------------
GOAL_TRIAL = """
import os, signal, time, hpo
hpo.get_next_parameter()
if int(os.environ["HPO_SEQUENCE_ID"]) == 1:
    signal.signal(signal.SIGTERM, lambda *a: None)   # slow to stop: the engine is still stopping it...
    while True:
        time.sleep(1)
time.sleep(0.5)
hpo.report_final_result(0.99)
"""


def test_a_reached_goal_is_remembered_across_a_crash(spawn):
    s = spawn(GOAL_TRIAL, trial_concurrency=2, max_trial_number=20,
              early_stopping=[{"metric": "default", "value": 0.9, "optimization": "maximize"}],
              training_service={"platform": "local", "kill_grace": 60})
    with s.store() as store:
        wait_until(lambda: store.events_of_kind("goal_reached"), 30, what="the goal")
        assert store.experiment()["status"] == "RUNNING"
    s.crash()  # ...when the engine dies
    kill_all(processes_of(s.id))
    resumed = Experiment.resume(s.id, port=0, wait_completion=True)
    info = resumed.get_experiment_profile()
    assert info["status"] == "DONE" and "trial" in (info["message"] or ""), info
    assert not [t for t in resumed.list_trial_jobs() if t["rerun_of"]], "nothing runs after the goal"


# -- 16. a resume that cannot start leaves the experiment as it was --------------------------------------------------
def test_a_resume_that_cannot_start_keeps_the_status(make_experiment, tmp_path):
    exp = make_experiment("import hpo; hpo.report_final_result(1)", max_trial_number=2)
    assert exp.run(port=0) is True
    store_dir = exp.directory
    with socket.socket() as sock:  # a port where no SSH server listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    key = tmp_path / "id_ed25519"
    key.write_text("not used: the connection is refused first")
    with ExperimentStore(store_dir) as store:  # as if its machine had gone away since
        config = store.experiment()["config"]
        config["training_service"] = {"platform": "remote", "remote_directory": str(tmp_path / "remote"),
                                      "machine_list": [{"host": "127.0.0.1", "port": port, "user": "nobody",
                                                        "ssh_key_file": str(key)}]}
        store.set_config(config)
    with pytest.raises(ExperimentError, match=rf"^experiment {exp.id} could not resume: .*127\.0\.0\.1.* "
                                              r"\(it stays DONE\)$"):
        Experiment.resume(exp.id, port=0)
    with ExperimentStore(store_dir, readonly=True) as store:
        info = store.experiment()
    assert (info["status"], info["message"]) == ("DONE", None)
    assert not engine_running(store_dir)


# -- a stop is never lost ------------------------------------------------------------------------------------------
class _BlockingTuner:
    """A random tuner whose second suggestion waits until the test lets it go."""

    def __new__(cls, entered: threading.Event, release: threading.Event) -> Any:
        from tuners import RandomTuner

        class Blocking(RandomTuner):
            def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
                if parameter_id >= 2:
                    entered.set()
                    release.wait(30)
                return super().generate_parameters(parameter_id, **kwargs)
        return Blocking(seed=0)


def test_a_stop_requested_while_the_tuner_thinks_is_not_lost(make_experiment):
    entered, release = threading.Event(), threading.Event()
    exp = make_experiment("import hpo; hpo.report_final_result(1)", tuner=_BlockingTuner(entered, release),
                          max_trial_number=5)
    exp.start(port=0)
    assert entered.wait(30), "the engine asks for a second trial"
    stopped = threading.Event()
    threading.Thread(target=lambda: (exp.stop(), stopped.set()), daemon=True).start()
    wait_until(lambda: exp.get_status() == "STOPPING", 10, what="the stop request")
    release.set()  # the tuner answers after the stop was requested
    assert stopped.wait(15), "the engine missed the stop it was asked for while waiting on the tuner"
    assert exp.get_status() == "STOPPED"
