"""NNI's own ``nnictl`` (NNI 3.0, in its venv: tests/nni_support.py) on running hpo experiments.

hpo writes a running experiment into NNI's registry (``~/nni-experiments/.experiment``; ``HOME`` is a tmp folder
here) under NNI's lock protocol, with the pid of a stand-in process whose SIGTERM stops the experiment cleanly
(hpo/nni_registry.py, webui/nni_api.py).  What is asserted is what a user sees: nnictl's output, the engine's
trials, a user's script that goes on after ``nnictl stop``, no process left, the registry as NNI left it.
"""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import wait_until, write_script
from hpo import nni_registry
from hpo.storage import ExperimentStore
from nni_support import nni_python, nni_venv

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# seq 1 and 2 finish at once, later trials run until they are stopped: the counts below are exact
TRIAL = """
    import time
    import nni
    nni.get_next_parameter()
    if nni.get_sequence_id() > 2:
        time.sleep(300)
    nni.report_final_result(nni.get_sequence_id() / 10)
"""
# an experiment NNI itself ran here once: hpo must leave it exactly as it is
NNI_ENTRY = {"id": "nniexp01", "port": 8080, "startTime": 1700000000000, "endTime": 1700000100000,
             "status": "STOPPED", "platform": "local", "experimentName": "mnist", "tag": ["a"], "pid": 4194300,
             "webuiUrl": ["http://localhost:8080"], "logDir": "/somewhere/nni-experiments", "prefixUrl": None}


@pytest.fixture(scope="session")
def nni_env() -> Path:
    venv = nni_venv()
    if isinstance(venv, str):
        pytest.skip(venv)
    return venv


@pytest.fixture
def nni_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of the test's own for NNI's registry (hpo's engines run in processes that inherit it)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def nnictl(venv: Path, home: Path, *args: str, answer: str = "", fails: bool = False) -> str:
    """Run NNI's nnictl (its console script, by the venv's interpreter); its output without colours."""
    done = subprocess.run([nni_python(venv), str(venv / "bin" / "nnictl"), *args], capture_output=True, text=True,
                          timeout=120, env=_nnictl_env(home), input=answer)
    out = ANSI.sub("", done.stdout + done.stderr)
    assert ("Traceback" in out) == fails, out
    return out


def _nnictl_env(home: Path) -> dict[str, str]:
    return dict(os.environ, HOME=str(home), TERM="dumb", PYTHONUNBUFFERED="1")


def registry(home: Path) -> dict[str, Any]:
    path = home / "nni-experiments" / ".experiment"
    return json.loads(path.read_text()) if path.exists() else {}


def counts(directory: Path) -> dict[str, int]:
    with ExperimentStore(directory, readonly=True) as store:
        return {k: v for k, v in store.status_counts().items() if v}


def trials(directory: Path) -> dict[str, str]:
    with ExperimentStore(directory, readonly=True) as store:
        return {t["id"]: t["status"] for t in store.trials()}


def ended(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else ""  # type: ignore[union-attr]


def test_nnictl_drives_a_running_hpo_experiment(nni_env, nni_home, launcher, monkeypatch):
    (nni_home / "nni-experiments").mkdir()  # NNI was used here before: registration is on by default
    (nni_home / "nni-experiments" / ".experiment").write_text(json.dumps({NNI_ENTRY["id"]: NNI_ENTRY}, indent=4))
    monkeypatch.delenv(nni_registry.REGISTRY_ENV)
    proc, exp_id, directory = launcher(TRIAL, trial_concurrency=2, max_trial_number=10, experiment_name="nnictl-demo")
    wait_until(lambda: counts(directory) == {"SUCCEEDED": 2, "RUNNING": 2}, 60, what="2 finished and 2 running trials")
    entry = registry(nni_home)[exp_id]
    port, pid = entry["port"], entry["pid"]
    assert pid != proc.pid and psutil.Process(pid).ppid() == proc.pid  # a stand-in, not the user's process

    export = nni_home / "export.json"
    reads = {"list": ["experiment", "list"], "show": ["experiment", "show", exp_id],
             "status": ["experiment", "status", exp_id], "ls": ["trial", "ls", exp_id],
             "export": ["experiment", "export", exp_id, "--type", "json", "--filename", str(export)]}
    with ThreadPoolExecutor(2) as pool:  # these only read: two at a time (each imports NNI, ~2 s of CPU)
        out = dict(zip(reads, pool.map(lambda args: nnictl(nni_env, nni_home, *args), reads.values())))
    assert re.search(rf"Id: {exp_id}\s+Name: nnictl-demo\s+Status: RUNNING\s+Port: {port}\s+Platform: local", out["list"])
    assert NNI_ENTRY["id"] not in out["list"]  # a stopped experiment: only with --all
    profile = json.loads(out["show"])
    assert profile["id"] == exp_id and profile["params"]["trialConcurrency"] == 2
    assert profile["params"]["experimentName"] == "nnictl-demo"
    assert json.loads(out["status"]) == {"status": "RUNNING", "errors": []}
    listed = {t["trialJobId"]: t["status"] for t in json.loads(out["ls"])}
    assert listed == trials(directory) and sorted(listed.values()) == ["RUNNING"] * 2 + ["SUCCEEDED"] * 2
    done = {tid for tid, status in listed.items() if status == "SUCCEEDED"}
    assert {r["trialJobId"] for r in json.loads(export.read_text())} == done

    assert "Update concurrency success!" in nnictl(nni_env, nni_home, "update", "concurrency", exp_id, "--value", "3")
    wait_until(lambda: counts(directory).get("RUNNING") == 3, 30, what="the engine running 3 trials")
    victim = next(tid for tid, status in trials(directory).items() if status == "RUNNING")
    nnictl(nni_env, nni_home, "trial", "kill", exp_id, "--trial_id", victim)
    wait_until(lambda: trials(directory)[victim] == "USER_CANCELED", 30, what="the killed trial cancelled")
    assert "Update trialnum success!" in nnictl(nni_env, nni_home, "update", "trialnum", exp_id, "--value", "7")
    with ExperimentStore(directory, readonly=True) as store:
        config = store.experiment()["config"]
    assert config["trial_concurrency"] == 3 and config["max_trial_number"] == 7

    # nnictl top loops (clear, print, sleep) until Ctrl-C: one screen, then SIGINT, as a user at a terminal
    top = subprocess.Popen([nni_python(nni_env), str(nni_env / "bin" / "nnictl"), "top", "--time", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_nnictl_env(nni_home))
    running = {tid for tid, status in trials(directory).items() if status == "RUNNING"}
    screen, deadline = "", time.monotonic() + 60
    while not all(re.search(rf"^{tid}\s.*RUNNING", screen, re.M) for tid in running) and time.monotonic() < deadline:
        if select.select([top.stdout], [], [], 1)[0]:
            screen += top.stdout.readline()  # type: ignore[union-attr]
    # Ctrl-C, again until it takes: nnictl top clears the screen with os.system, which ignores SIGINT meanwhile
    for _ in range(30):
        top.send_signal(signal.SIGINT)
        try:
            screen += top.communicate(timeout=2)[0]
            break
        except subprocess.TimeoutExpired:
            continue
    assert top.returncode == 0 and "Exiting..." in screen, screen
    assert re.search(rf"Id: {exp_id}\s+Status: RUNNING\s+Port: {port}", ANSI.sub("", screen)), screen
    assert all(re.search(rf"^{tid}\s.*RUNNING", screen, re.M) for tid in running), screen

    # NNI's commands that need NNI's own database fail on it, before touching anything of hpo's
    refused = nnictl(nni_env, nni_home, "experiment", "delete", exp_id, answer="y\n", fails=True)
    assert "unable to open database file" in refused
    assert (directory / "experiment.db").is_file() and len(list((directory / "trials").iterdir())) == 6

    processes = psutil.Process(proc.pid).children(recursive=True)
    assert len(processes) >= 1 + 3  # the stand-in, and 3 trials (each with its supervisor)
    stopped = nnictl(nni_env, nni_home, "stop", exp_id)
    assert f"Stopping experiment {exp_id}" in stopped and "Stop experiment success." in stopped
    assert not psutil.pid_exists(pid)  # nnictl waited for it: by then the experiment has stopped
    assert ended(proc) == "ENDED STOPPED"  # the user's script went on after its experiment stopped
    assert proc.wait(30) == 0
    assert counts(directory) == {"SUCCEEDED": 2, "USER_CANCELED": 1, "SYS_CANCELED": 3}  # the 3 running: stopped
    assert not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert registry(nni_home) == {NNI_ENTRY["id"]: NNI_ENTRY}  # hpo's entry gone, NNI's untouched
    assert "no experiment running" in nnictl(nni_env, nni_home, "experiment", "list").lower()


def test_the_entry_goes_with_the_experiment_also_on_a_crash(nni_home, launcher, monkeypatch):
    """SIGKILL of the stand-in stops the experiment (as NNI's ends with its manager) and its entry goes; SIGKILL
    of the engine's process: the stand-in removes the entry and ends.  Registration forced on here."""
    monkeypatch.setenv(nni_registry.REGISTRY_ENV, "1")
    first, first_id, first_dir = launcher(TRIAL, trial_concurrency=1, max_trial_number=5)
    second, second_id, _ = launcher(TRIAL, trial_concurrency=1, max_trial_number=5)
    entries = wait_until(lambda: (lambda r: r if {first_id, second_id} <= set(r) else None)(registry(nni_home)), 30,
                         what="both experiments registered")
    assert all(e["hpo"] is True and e["status"] == "RUNNING" for e in entries.values())
    os.kill(entries[first_id]["pid"], signal.SIGKILL)
    assert ended(first) == "ENDED STOPPED"
    assert first.wait(30) == 0
    second.kill()
    second.wait()
    wait_until(lambda: registry(nni_home) == {}, 30, what="both entries removed")
    wait_until(lambda: not psutil.pid_exists(entries[second_id]["pid"]), 30, what="the second stand-in to end")
    with ExperimentStore(first_dir, readonly=True) as store:
        assert store.experiment()["status"] == "STOPPED"


LOCKED_BY_NNI = """
    import json, os, sys, time
    from nni.tools.nnictl.common_utils import get_file_lock
    from nni.tools.nnictl.config_utils import Experiments
    path = os.path.expanduser("~/nni-experiments/.experiment")
    if sys.argv[1] == "hold":          # NNI's lock, held 1.5 s while NNI's Experiments writes an entry
        with get_file_lock(path, stale=2):
            print("locked", flush=True)
            time.sleep(1.5)
            with open(path) as fh:
                data = json.load(fh)
            data["held"] = {"id": "held", "status": "STOPPED"}
            with open(path, "w") as fh:
                json.dump(data, fh)
    else:                              # NNI's own add_experiment, while hpo holds the lock
        print("ready", flush=True)     # imported: hpo takes its lock now (NNI deems a lock over 2 s old stale)
        sys.stdin.readline()
        print("adding", flush=True)
        Experiments().add_experiment("nniadd", 8080, 1, "local", "n", pid=1)
        print("added", flush=True)
"""


def test_registry_follows_nni_lock_protocol_and_never_corrupts(nni_env, nni_home, tmp_path, monkeypatch):
    path = nni_home / "nni-experiments" / ".experiment"
    script = write_script(tmp_path, "nni_lock.py", LOCKED_BY_NNI)
    env = dict(os.environ, HOME=str(nni_home))
    entry = {"id": "hpo1", "port": 1, "startTime": 1, "endTime": "N/A", "status": "RUNNING", "platform": "local",
             "experimentName": None, "tag": [], "pid": os.getpid(), "webuiUrl": [], "logDir": "/x", "prefixUrl": None}
    path.parent.mkdir()
    path.write_text("{}")

    # NNI holds its lock: hpo waits for it, and both writes are kept
    nni = subprocess.Popen([nni_python(nni_env), str(script), "hold"], stdout=subprocess.PIPE, text=True, env=env)
    assert nni.stdout.readline().strip() == "locked"  # type: ignore[union-attr]
    began = time.monotonic()
    nni_registry.add_entry(path, entry)
    assert time.monotonic() - began > 0.5
    assert nni.wait(30) == 0
    assert set(registry(nni_home)) == {"held", "hpo1"}

    # hpo holds the lock: NNI's own Experiments waits for it, and both writes are kept
    nni = subprocess.Popen([nni_python(nni_env), str(script), "add"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True, env=env)
    assert nni.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
    with nni_registry.nni_lock(path):
        nni.stdin.write("go\n")  # type: ignore[union-attr]
        nni.stdin.flush()  # type: ignore[union-attr]
        assert nni.stdout.readline().strip() == "adding"  # type: ignore[union-attr]
        time.sleep(0.5)  # well within the 2 s after which NNI would deem the lock stale
        assert nni.poll() is None
        data = nni_registry.read_registry(path)
        data["during"] = {"id": "during"}
        path.write_text(json.dumps(data))
    assert nni.wait(30) == 0
    assert set(registry(nni_home)) == {"held", "hpo1", "during", "nniadd"}
    assert registry(nni_home)["nniadd"]["pid"] == 1

    # an old lock file (a writer that died) is stale after 2 s, as for NNI; a fresh one is waited for
    stale = path.parent / ".experiment.lock.999999"
    stale.write_text("")
    os.utime(stale, (time.time() - 5, time.time() - 5))
    assert nni_registry.update_entry(path, "hpo1", os.getpid(), status="DONE")
    stale.touch()
    with pytest.raises(nni_registry.RegistryError, match="stayed locked"):
        with nni_registry.nni_lock(path, timeout=0.3):
            pass
    stale.unlink()

    # only hpo's own entry is changed or removed; a stand-in that is gone has its entry pruned
    assert not nni_registry.remove_entry(path, "nniadd", 1) and not nni_registry.remove_entry(path, "hpo1", 1)
    dead = {**entry, "id": "hpo-dead", "pid": 4194301}
    nni_registry.add_entry(path, {**dead})
    assert registry(nni_home)["hpo-dead"]["hpo"] is True
    with pytest.raises(nni_registry.RegistryError, match="not hpo's"):
        nni_registry.add_entry(path, {**entry, "id": "nniadd"})
    nni_registry.add_entry(path, {**entry, "id": "hpo2"})
    assert "hpo-dead" not in registry(nni_home) and {"nniadd", "held", "hpo2"} <= set(registry(nni_home))
    assert nni_registry.remove_entry(path, "hpo1", os.getpid()) and nni_registry.remove_entry(path, "hpo2", os.getpid())
    assert set(registry(nni_home)) == {"held", "during", "nniadd"}

    # a registry that is not NNI's JSON is never overwritten
    for text in ("{not json", "[1, 2]"):
        path.write_text(text)
        with pytest.raises(nni_registry.RegistryError, match="left as it is"):
            nni_registry.add_entry(path, entry)
        assert path.read_text() == text
    assert not list(path.parent.glob(".experiment.lock.*")) and not list(path.parent.glob("*.tmp"))

    # on by default only where NNI is used: ~/nni-experiments exists, or nnictl is on PATH
    monkeypatch.delenv(nni_registry.REGISTRY_ENV)
    assert nni_registry.enabled()
    other = tmp_path / "fresh-home"
    other.mkdir()
    monkeypatch.setenv("HOME", str(other))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert not nni_registry.enabled()
    monkeypatch.setenv("PATH", f"{nni_env / 'bin'}:/usr/bin:/bin")
    assert nni_registry.enabled()
    monkeypatch.setenv(nni_registry.REGISTRY_ENV, "0")
    assert not nni_registry.enabled()
