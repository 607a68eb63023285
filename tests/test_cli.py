"""The ``hpo`` command line, run as real subprocesses against real experiments."""
from __future__ import annotations

import csv
import io
import json
import os
import ast
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent

TRIAL = """\
import os, sys, time
import hpo
p = hpo.get_next_parameter()
for i in range(3):
    print(f"line {i}")
print(f"trial says x={p['x']} y={p['y']}", flush=True)
print("to stderr", file=sys.stderr)
hold = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hold")
deadline = time.time() + 60
while os.path.exists(hold) and time.time() < deadline:
    time.sleep(0.05)
hpo.report_final_result(p["x"] * 10 + len(p["y"]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cli:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.env = {k: v for k, v in os.environ.items() if k != "HPO_DEBUG"}
        self.env.update(HPO_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
        (tmp_path / "trial.py").write_text(TRIAL)

    def __call__(self, *args: str, ok: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "hpo", *args], cwd=self.dir, env=self.env, text=True,
                              capture_output=True, timeout=timeout)
        assert "Traceback" not in proc.stderr, proc.stderr
        if ok:
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc

    def error(self, *args: str) -> str:
        """Run a failing command: exit code 1 or 2, one line ``hpo: error: ...`` on stderr."""
        proc = self(*args, ok=False)
        assert proc.returncode in (1, 2), (args, proc.returncode, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hpo: error: "), proc.stderr
        return lines[0]

    def config(self, name: str = "config.yml", concurrency: int = 3, max_trials: int | None = None,
               space: str | None = None, tuner: str = "grid") -> str:
        space = space or "  x: {_type: choice, _value: [1, 2, 3]}\n  y: {_type: choice, _value: [a, bb]}\n"
        text = (f"experimentName: clitest\ntrialCommand: {sys.executable} trial.py\ntrialCodeDirectory: .\n"
                f"trialConcurrency: {concurrency}\ntuner: {{name: {tuner}}}\nsearchSpace:\n{space}")
        if max_trials:
            text += f"maxTrialNumber: {max_trials}\n"
        (self.dir / name).write_text(text)
        return str(self.dir / name)

    def table(self, *args: str) -> list[dict[str, str]]:
        lines = self(*args).stdout.strip().splitlines()
        header = lines[0].split()
        return [dict(zip(header, line.split(None, len(header) - 1))) for line in lines[1:]]

    def wait_for(self, predicate, timeout: float = 20.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)


@pytest.fixture
def cli(tmp_path: Path):
    c = Cli(tmp_path)
    yield c
    (tmp_path / "hold").unlink(missing_ok=True)
    c("stop", "--all", ok=False)


def test_check_prints_config_and_grid(cli: Cli) -> None:
    out = cli("check", "-f", cli.config(), "-m").stdout
    assert "Config valid" in out and "trial_concurrency: 3" in out
    assert "The matrix-space has 6 points: 6 experiments, with 3 concurrent runs, and a sequential search" in out
    matrix = out.split("The matrix definition is:")[1].splitlines()
    rows = [ast.literal_eval(line) for line in matrix if line.startswith("{")]
    assert [(r["x"], r["y"]) for r in rows] == [(1, "a"), (1, "bb"), (2, "a"), (2, "bb"), (3, "a"), (3, "bb")]
    # a later file wins (search-space parameters are merged by name); a big grid is truncated with a count
    (cli.dir / "over.yml").write_text("trialConcurrency: 5\nsearchSpace:\n"
                                      "  a: {_type: randint, _value: [0, 30]}\n  b: {values: [1, 2, 3]}\n")
    out = cli("check", "-f", cli.config(), "-f", str(cli.dir / "over.yml"), "-m").stdout
    assert "trial_concurrency: 5" in out and "The matrix-space has 540 points" in out
    matrix = out.split("The matrix definition is:")[1].splitlines()
    assert "... and 490 more" in out and sum(line.startswith("{") for line in matrix) == 50
    # a continuous space is described, not enumerated
    out = cli("check", "-f", cli.config(space="  lr: {_type: loguniform, _value: [0.001, 0.1]}\n"
                                             "  y: {_type: choice, _value: [a, b]}\n", tuner="random"), "-m").stdout
    assert "continuous" in out and "lr: loguniform [0.001, 0.1]" in out and "y: choice of 2" in out


def test_check_errors_are_one_line(cli: Cli) -> None:
    (cli.dir / "bad.yml").write_text("trialComand: echo hi\nsearchSpace: {x: {_type: choice, _value: [1]}}\n")
    assert "did you mean 'trialCommand'" in cli.error("check", "-f", str(cli.dir / "bad.yml"))
    assert "does not exist" in cli.error("check", "-f", str(cli.dir / "missing.yml"))
    grid_continuous = cli.config(space="  lr: {_type: uniform, _value: [0, 1]}\n")
    assert "continuous" in cli.error("check", "-f", grid_continuous)
    assert "continuous" in cli.error("create", "--config", grid_continuous)
    assert not (cli.dir / "home" / "logs").exists()  # nothing started, nothing written
    assert "required" in cli.error("check")


def test_foreground_create_then_read_commands(cli: Cli) -> None:
    proc = cli("create", "--config", cli.config(), "--port", str(free_port()), "--foreground")
    experiment_id = re.search(r"experiment (\w+) started", proc.stderr)[1]
    (row,) = cli.table("list", "--all")
    assert row["ID"] == experiment_id and row["STATUS"] == "DONE" and row["TRIALS"] == "6"
    assert "no running experiment" in cli("list").stdout

    trials = cli.table("trials", experiment_id)
    assert [t["SEQ"] for t in trials] == ["1", "2", "3", "4", "5", "6"]
    assert {t["STATUS"] for t in trials} == {"SUCCEEDED"}
    by_params = {t["PARAMETERS"].split()[0]: t["VALUE"] for t in trials}
    assert by_params['{"x":2,"y":"bb"}'] == "22"
    assert len(cli.table("trials", experiment_id, "--status", "failed")) == 0

    rows = list(csv.DictReader(io.StringIO(cli("export", experiment_id).stdout)))
    assert list(rows[0]) == ["trial_id", "sequence_id", "status", "value", "x", "y"]
    assert sorted((r["x"], r["y"], float(r["value"])) for r in rows) == sorted(
        (str(x), y, x * 10.0 + len(y)) for x in (1, 2, 3) for y in ("a", "bb"))
    out = cli.dir / "export.json"
    cli("export", experiment_id, "--format", "json", "--output", str(out))
    data = json.loads(out.read_text())
    assert len(data) == 6 and all(d["value"] == d["parameter"]["x"] * 10 + len(d["parameter"]["y"]) for d in data)
    assert {d["status"] for d in data} == {"SUCCEEDED"}

    third = trials[2]
    text = cli("logs", experiment_id, "3").stdout
    assert f"trial says x={json.loads(third['PARAMETERS'].split()[0])['x']}" in text
    assert cli("logs", experiment_id, third["ID"], "--line", "1", "--limit", "2").stdout == "line 1\nline 2\n"
    assert cli("logs", experiment_id, "3", "--stderr").stdout == "to stderr\n"
    assert "trial says" in cli("logs", experiment_id, "3", "--follow").stdout  # the trial has ended: returns
    cli("logs", experiment_id)  # the engine log exists

    assert "has no trial '99'" in cli.error("logs", experiment_id, "99")
    assert f"has ended (DONE); to continue it with new limits: `hpo resume {experiment_id} --concurrency 2`" in \
        cli.error("update", experiment_id, "--concurrency", "2")
    assert "is not running" in cli.error("kill", experiment_id, "1")
    assert "already DONE" in cli("stop", experiment_id).stdout


def test_unknown_experiment(cli: Cli) -> None:
    for args in (["trials", "nosuch"], ["logs", "nosuch"], ["stop", "nosuch"], ["export", "nosuch"],
                 ["resume", "nosuch"], ["update", "nosuch", "--concurrency", "2"], ["kill", "nosuch", "1"]):
        assert "no experiment with id 'nosuch'" in cli.error(*args)
    assert "invalid choice" in cli.error("frobnicate")


def _trial_processes(code_dir: Path) -> list[psutil.Process]:
    """Live processes running trial.py in ``code_dir``."""
    found = []
    for p in psutil.process_iter(["cmdline", "status", "cwd"]):
        if "trial.py" in " ".join(p.info["cmdline"] or []) and p.info["cwd"] == str(code_dir):
            if p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


def test_detached_update_kill_stop_resume(cli: Cli) -> None:
    (cli.dir / "hold").touch()  # trials wait while this file exists
    port = free_port()
    busy = socket.socket()
    busy.bind(("127.0.0.1", port))
    busy.listen()
    config = cli.config(concurrency=1, max_trials=4)
    assert "already in use" in cli.error("create", "--config", config, "--port", str(port))
    busy.close()

    out = cli("create", "--config", config, "--port", str(free_port())).stdout
    experiment_id = re.search(r"experiment (\w+) started", out)[1]
    engine_pid = int(re.search(r"pid (\d+)", out)[1])
    assert re.search(r"dashboard: http://localhost:\d+", out)
    (row,) = cli.table("list")
    assert row["ID"] == experiment_id and row["STATUS"] in ("INITIALIZED", "RUNNING")
    running = lambda: cli.table("trials", experiment_id, "--status", "running")  # noqa: E731

    cli.wait_for(lambda: len(running()) == 1, what="one running trial")
    assert "got 0" in cli.error("update", experiment_id, "--concurrency", "0")
    cli("update", experiment_id, "--concurrency", "2")
    cli.wait_for(lambda: len(running()) == 2, what="two running trials")

    cli("kill", experiment_id, "1")
    cli.wait_for(lambda: cli.table("trials", experiment_id)[0]["STATUS"] == "USER_CANCELED", what="kill")
    cli.wait_for(lambda: "trial says" in cli("logs", experiment_id, "2", ok=False).stdout, what="trial output")

    assert f"experiment {experiment_id} STOPPED" in cli("stop", experiment_id).stdout
    assert not psutil.pid_exists(engine_pid) or psutil.Process(engine_pid).status() == psutil.STATUS_ZOMBIE
    assert _trial_processes(cli.dir) == []
    statuses = [t["STATUS"] for t in cli.table("trials", experiment_id)]
    assert statuses[0] == "USER_CANCELED" and "RUNNING" not in statuses and "SUCCEEDED" not in statuses
    assert cli.table("list", "--all")[0]["STATUS"] == "STOPPED"

    # resume detached; an unreachable/refusing API makes `stop` fall back to SIGTERM, which stops gracefully
    out = cli("resume", experiment_id, "--port", str(free_port())).stdout
    assert f"experiment {experiment_id} resumed" in out
    cli.wait_for(lambda: len(running()) == 2, what="re-run trials")
    db = sqlite3.connect(cli.dir / "home" / experiment_id / "experiment.db", timeout=10, isolation_level=None)
    db.execute("UPDATE experiment SET port=?", (free_port(),))  # nothing listens there
    db.close()
    proc = cli("stop", experiment_id)
    assert "SIGTERM" in proc.stderr and f"experiment {experiment_id} STOPPED" in proc.stdout
    assert _trial_processes(cli.dir) == []

    (cli.dir / "hold").unlink()
    cli("resume", experiment_id, "--port", str(free_port()), "--foreground")
    assert cli.table("list", "--all")[0]["STATUS"] == "DONE"
    trials = cli.table("trials", experiment_id)
    counts = {s: sum(t["STATUS"] == s for t in trials) for s in ("SUCCEEDED", "USER_CANCELED", "SYS_CANCELED")}
    assert counts["USER_CANCELED"] == 1 and counts["SUCCEEDED"] == 3  # max_trial_number 4, the killed one counts
    assert counts["SYS_CANCELED"] + 4 == len(trials)  # the ones interrupted by a stop were re-run
    assert _trial_processes(cli.dir) == []


# -- `hpo check` says valid only for what `hpo create` accepts (issue 13, item 12) ------------------------------
@pytest.mark.parametrize("extra, needle", [
    ("trainingService: {platform: local, gpuIndices: [999]}\n",
     "config.training_service: training_service.gpu_indices: GPU(s) [999] not found; detected "),
    ("trialGpuNumber: 64\n", "config.training_service: trial_gpu_number=64 but only "),
    ("experimentWorkingDirectory: config.yml/runs\n", "config.experiment_working_directory: "),
    ("", "config.trial_command: trial_command uses {{ lr }} but the search space has no parameter 'lr'"),
    ("", "the experiments folder (HPO_HOME, default ~/hpo-experiments): "),
], ids=["missing-gpu", "too-many-gpus", "working-directory", "template", "hpo-home"])
def test_check_refuses_what_create_refuses(cli: Cli, extra: str, needle: str) -> None:
    path = Path(cli.config())
    text = path.read_text() + extra
    if "{{" in needle:
        text = text.replace("trial.py", "trial.py --lr={{ lr }}")
    if "HPO_HOME" in needle:
        cli.env["HPO_HOME"] = str(path / "home")  # under a file: cannot be created
    path.write_text(text)
    line = cli.error("check", "-f", str(path))
    assert needle in line, line
    assert cli.error("create", "--config", str(path), "--port", str(free_port())) == line
    assert not (cli.dir / "home").exists()  # nothing created


# -- stored text is escaped on the terminal (issue 13, item 15) ------------------------------------------------
def test_list_and_trials_escape_stored_text(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpo.registry import register
    from hpo.storage import ExperimentStore
    monkeypatch.setenv("HPO_HOME", cli.env["HPO_HOME"])
    name = "\x1b]0;title\x07\x1b[2Jred\u202e"
    directory = cli.dir / "home" / "evil1234"
    store = ExperimentStore(directory)
    store.create_experiment("evil1234", name, {"max_trial_number": 3})
    store.add_trial(1, "t1", {"x": "\x1b[31m"})
    store.trial_ended(1, "FAILED", 1, "boom\x1b[1A\rover")
    store.close()
    register("evil1234", name, directory)
    listed, trials = cli("list", "--all").stdout, cli("trials", "evil1234").stdout
    for out in (listed, trials):
        assert not any(c in out for c in "\x1b\x07\r\u202e"), repr(out)
    assert "\\x1b]0;title\\x07\\x1b[2Jred\\u202e" in listed
    assert trials.splitlines()[0].split()[-1] == "MESSAGE" and trials.rstrip().endswith("boom\\x1b[1A\\rover")


# -- a detached `hpo create` waits until the experiment runs (issue 13, item 16) --------------------------------
def test_detached_create_fails_with_the_reason_when_the_remote_machine_refuses(cli: Cli) -> None:
    import shutil
    import yaml
    from sshd import SshServer, client_key, unavailable, world_dir
    if unavailable():
        pytest.skip(unavailable())
    base = world_dir("hpo-test-cli-")
    key = client_key(base, "key")
    server = SshServer(base / "server", [key.with_suffix(".pub")], password_auth=True).start()
    other = SshServer(base / "other", [key.with_suffix(".pub")])  # never started: only its host key is used
    known_hosts = cli.dir / "known_hosts"
    where = f"remote machine {server.user}@127.0.0.1:{server.port}: "
    cases = [  # (known_hosts, login, the start of the reason)
        ("", {"sshKeyFile": str(key)}, "unknown host key"),
        (other.known_hosts_line().replace(f"]:{other.port} ", f"]:{server.port} "), {"sshKeyFile": str(key)},
         "host key mismatch"),
        (server.known_hosts_line(), {"password": "not-the-password"}, "authentication failed"),
    ]
    try:
        for known, login, reason in cases:
            known_hosts.write_text(known)
            config = yaml.safe_load(Path(cli.config()).read_text())
            config["trainingService"] = {
                "platform": "remote", "knownHostsFile": str(known_hosts), "remoteDirectory": str(base / "remote"),
                "machineList": [{"host": server.host, "port": server.port, "user": server.user, **login}]}
            path = cli.dir / "remote.yml"
            path.write_text(yaml.safe_dump(config))
            line = cli.error("create", "--config", str(path), "--port", str(free_port()))
            assert f"{where}{reason}" in line, line  # the engine's message: "ValueError: remote machine ..."
        assert [row["STATUS"] for row in cli.table("list", "--all")] == ["ERROR"] * len(cases)
        assert "no running experiment" in cli("list").stdout
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
