"""The remote training service against real OpenSSH servers on loopback (tests/sshd.py).

Two "hosts" are two sshd instances on 127.0.0.1 with separate users and folders: host A logs in
as the current user with a passphrase-protected key and runs this interpreter; host B (root only)
logs in as a second user with a password and runs Debian's /usr/bin/python3, which has no hpo
installed: the trial API it imports is the copy the service ships.  Servers are killed and
restarted mid-trial to drop connections.  Nothing is mocked.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from conftest import PY, wait_until
from sshd import (SECOND_USER, SshServer, client_key, create_user, free_port, remove_user, set_password, unavailable,
                  world_dir)
from test_training_service_contract import Recorder
from hpo.experiment import ExperimentError
from training_services import code_package
from training_services.base import TrialSpec, create_training_service

PASSPHRASE = "pp-" + secrets.token_hex(8)
PASSWORD = "pw-" + secrets.token_hex(8)


# -- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys():
    if unavailable():
        pytest.skip(unavailable())
    base = world_dir("hpo-test-remote-")
    ns = SimpleNamespace(base=base, key=client_key(base, "key"), pkey=client_key(base, "pkey", PASSPHRASE),
                         stranger=client_key(base, "stranger"))
    yield ns
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def second_user():
    if os.getuid() != 0:
        pytest.skip("a second login user needs root")
    if not os.path.exists("/usr/bin/python3"):
        pytest.skip("the second host runs /usr/bin/python3, which is missing")
    entry = create_user(SECOND_USER)  # deleted with its home after this module's tests
    try:
        set_password(SECOND_USER, PASSWORD)
        yield entry
    finally:
        remove_user(SECOND_USER)


@pytest.fixture
def rdir():
    """A remote_directory relative to each login's home; removed from every home afterwards."""
    name = f"hpo-test-{secrets.token_hex(4)}"
    yield name
    homes = {os.path.expanduser("~")}
    try:
        import pwd
        homes.add(pwd.getpwnam(SECOND_USER).pw_dir)
    except KeyError:
        pass
    for home in homes:
        shutil.rmtree(os.path.join(home, name), ignore_errors=True)


@pytest.fixture
def servers(keys, tmp_path):
    """``make(user=None, password_auth=False)`` starts an sshd; all are stopped at teardown."""
    made: list[SshServer] = []

    def make(user: str | None = None, password_auth: bool = False) -> SshServer:
        srv = SshServer(keys.base / f"srv-{secrets.token_hex(3)}", [keys.key.with_suffix(".pub"),
                        keys.pkey.with_suffix(".pub")], user=user, password_auth=password_auth).start()
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.stop()


def known_hosts(tmp_path: Path, *servers: SshServer) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text("".join(s.known_hosts_line() for s in servers))
    return path


def one_host(tmp_path: Path, srv: SshServer, keys: Any, **options: Any) -> dict[str, Any]:
    """The ``training_service`` of an experiment on the one sshd ``srv`` (key login, this interpreter), its remote
    folder ``tmp_path / "remote"``; ``max_trials`` goes to the machine, any other option to the service."""
    machine = srv.machine(keys.key, python_path=sys.executable,
                          **({"max_trials": options.pop("max_trials")} if "max_trials" in options else {}))
    return {"platform": "remote", "machine_list": [machine], "known_hosts_file": str(known_hosts(tmp_path, srv)),
            "remote_directory": str(tmp_path / "remote"), **options}


def host_a(srv: SshServer, keys: Any, **extra: Any) -> dict[str, Any]:
    return srv.machine(keys.pkey, ssh_passphrase=PASSPHRASE, python_path=sys.executable, **extra)


def host_b(srv: SshServer, **extra: Any) -> dict[str, Any]:
    return {"host": srv.host, "port": srv.port, "user": SECOND_USER, "password": PASSWORD,
            "python_path": "/usr/bin/python3", **extra}


def service(tmp_path: Path, machines: list[dict[str, Any]], *servers: SshServer, **options: Any) -> Any:
    options.setdefault("known_hosts_file", str(known_hosts(tmp_path, *servers)))
    options.setdefault("remote_directory", str(tmp_path / "remote"))
    options.setdefault("kill_grace", 1.0)
    return create_training_service("remote", machine_list=machines, **options)


def spec(tmp_path: Path, trial_id: str, script: str, parameters: dict[str, Any] | None = None,
         command: str | None = None, **kw: Any) -> TrialSpec:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / f"{trial_id}.py").write_text(textwrap.dedent(script).lstrip())
    return TrialSpec("exp1", trial_id, kw.pop("seq", 1), parameters or {}, command or f"{PY} {trial_id}.py",
                     code, tmp_path / "trials" / trial_id, **kw)


async def until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.02)


def our_processes(*roots: str) -> list[psutil.Process]:
    """Live processes whose command line or working folder is under one of ``roots``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            text = " ".join(proc.info["cmdline"] or [])
            cwd = proc.cwd()
        except psutil.Error:
            continue
        if any(r in text or cwd.startswith(r) for r in roots):
            found.append(proc)
    return found


def assert_none_left(*roots: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while our_processes(*roots) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = our_processes(*roots)
    assert not left, [(p.pid, p.info.get("cmdline")) for p in left]


def kill_groups(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


class HostRecorder(Recorder):
    """A Recorder that also keeps where each trial started (every start, re-runs included)."""

    def __init__(self) -> None:
        super().__init__()
        self.hosts: dict[str, list[str]] = {}

    def started(self, trial_id, pid, pgid, host, gpus, processes=None) -> None:
        super().started(trial_id, pid, pgid, host, gpus, processes)
        self.hosts.setdefault(trial_id, []).append(host)


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` (a trial's) still runs here."""
    return any(alive(p) for p in psutil.process_iter() if _pgid(p) == pgid)


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# -- configuration ----------------------------------------------------------------------------------------------
def test_config_yaml_python_and_secrets(tmp_path):
    from hpo import Experiment
    from hpo.config import ConfigError, RemoteConfig, load_config_files
    from hpo.experiment import _make_service

    yml = tmp_path / "exp.yml"
    yml.write_text(textwrap.dedent(f"""
        searchSpace: {{x: {{_type: uniform, _value: [0, 1]}}}}
        trialCommand: python3 trial.py
        trialCodeDirectory: {tmp_path}
        tuner: {{name: random}}
        trainingService:
          platform: remote
          acceptNewHostKeys: true
          reconnectTimeout: 30s
          restartAfter: 8s
          killGrace: 12
          machineList:
            - {{host: gpu1, port: 2222, user: me, sshKeyFile: ~/.ssh/id_ed25519, sshPassphrase: {PASSPHRASE},
               pythonPath: /opt/py/bin, gpuIndices: '0,1', useActiveGpu: true, maxTrialNumberPerGpu: 2,
               maxTrials: 3}}
            - {{host: gpu2, user: me, password: {PASSWORD}}}
    """))
    config = load_config_files([yml])
    ts = config.training_service
    assert isinstance(ts, RemoteConfig) and ts.accept_new_host_keys and ts.reconnect_timeout == "30s"
    first, second = ts.machine_list
    assert (first.host, first.port, first.gpu_indices, first.max_trial_number_per_gpu, first.max_trials) == \
        ("gpu1", 2222, [0, 1], 2, 3)
    assert first.ssh_passphrase.get_secret_value() == PASSPHRASE and second.password.get_secret_value() == PASSWORD
    # secrets: never in the stored dict, repr or str; the service still gets them
    stored = json.dumps(config.to_dict())
    assert PASSWORD not in stored and PASSPHRASE not in stored
    assert PASSWORD not in repr(config) and PASSPHRASE not in str(config)
    assert config.to_dict()["training_service"]["machine_list"][1]["password"] is None
    svc = _make_service(config)
    assert svc.machines[1].password == PASSWORD and svc.machines[0].ssh_passphrase == PASSPHRASE
    assert svc.machines[0].ssh_key_file == os.path.expanduser("~/.ssh/id_ed25519")
    assert PASSWORD not in repr(svc) and PASSWORD not in repr(svc.machines)
    assert svc.reconnect_timeout == 30.0 and svc.restart_after == 8.0 and svc.kill_grace == 12.0

    # Python: Experiment(tuner, 'remote') then machine_list assignment, validated with full paths
    exp = Experiment("random", "remote")
    assert isinstance(exp.config.training_service, RemoteConfig)
    exp.config.search_space = {"x": {"_type": "uniform", "_value": [0, 1]}}
    exp.config.trial_command = "python3 trial.py"
    exp.config.trial_code_directory = tmp_path
    with pytest.raises(ConfigError, match=r"training_service\.machine_list: is empty"):
        exp.config.validate_for_start()
    exp.config.training_service.machine_list = [{"host": "a", "user": "u"}]
    exp.config.trial_command, exp.config.trial_function = None, print
    with pytest.raises(ConfigError, match=r"^config\.trial_function: the remote training service runs a trial_command"):
        exp.config.validate_for_start()
    exp.config.trial_command, exp.config.trial_function = "python3 trial.py", None
    with pytest.raises(ConfigError, match=r"^config\.training_service\.machine_list\[1\]\.port: got 0"):
        exp.config.training_service.machine_list = [{"host": "a"}, {"host": "b", "port": 0}]
    with pytest.raises(ConfigError, match=r"^config\.training_service\.machine_list\[0\]\.max_trials: got 0"):
        exp.config.training_service.machine_list[0].max_trials = 0
    exp.config.validate_for_start()


def test_pack_code_ignores_and_warns_past_size(tmp_path, monkeypatch, capsys):
    code = tmp_path / "code"
    for rel in ("train.py", "pkg/model.py", "data/big.bin", ".git/HEAD", "pkg/__pycache__/m.pyc",
                ".venv/bin/python", "ckpt/a.pt", "notes.tmp"):
        (code / rel).parent.mkdir(parents=True, exist_ok=True)
        (code / rel).write_text("x" * 100)
    (code / ".nniignore").write_text("# data and checkpoints\n/data\nckpt/\n*.tmp\n")
    out = tmp_path / "code.tar.gz"
    files, size = code_package.pack_code(code, out)
    import tarfile
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == ["pkg/model.py", "train.py"]
    assert (files, size) == (2, 200)
    before = code_package.code_tree(code).version
    (code / "ckpt/b.pt").write_text("ignored files do not change the version")
    assert code_package.code_tree(code).version == before
    (code / "train.py").write_text("changed")
    assert code_package.code_tree(code).version != before

    monkeypatch.setattr(code_package, "CODE_SIZE_WARNING", 10)
    packer = code_package.CodePacker("every remote machine")
    asyncio.run(packer.version(code))
    packer.close()
    assert "WARNING: hpo: trial_code_directory" in capsys.readouterr().err


# -- a full experiment across two hosts ------------------------------------------------------------------------
TWO_HOST_TRIAL = """
import getpass, time, hpo
p = hpo.get_next_parameter()
hpo.report_intermediate_result(p["x"])
print("API", hpo.__file__, "USER", getpass.getuser(), flush=True)
time.sleep(0.3)
hpo.report_final_result(p["x"] * 1000 + p["y"])
"""


def test_experiment_across_two_hosts(tmp_path, keys, second_user, servers, rdir, make_experiment, capfd):
    a, b = servers(), servers(user=SECOND_USER, password_auth=True)
    machines = [host_a(a, keys, max_trials=2), host_b(b, max_trials=2)]
    exp = make_experiment(TWO_HOST_TRIAL, command="python3 trial.py", trial_concurrency=4, max_trial_number=8,
                          search_space={"x": {"_type": "uniform", "_value": [0, 1]},
                                        "y": {"_type": "choice", "_value": [1, 2, 3]}},
                          training_service={"platform": "remote", "machine_list": machines,
                                            "known_hosts_file": str(known_hosts(tmp_path, a, b)),
                                            "remote_directory": rdir})
    exp.start(port=0)
    assert exp.wait(60)
    trials = exp.list_trial_jobs()
    assert exp.get_status() == "DONE", exp.get_experiment_profile()["message"]
    assert [t["status"] for t in trials] == ["SUCCEEDED"] * 8, [(t["status"], t["message"]) for t in trials]
    for t in trials:
        assert t["final"] == pytest.approx(t["parameters"]["x"] * 1000 + t["parameters"]["y"])
    hosts = {t["host"] for t in trials}
    assert hosts == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}

    def max_overlap(rows: list[dict[str, Any]]) -> int:
        points = sorted([(r["started_at"], 1) for r in rows] + [(r["ended_at"], -1) for r in rows])
        level = peak = 0
        for _, step in points:
            level += step
            peak = max(peak, level)
        return peak

    for host in hosts:
        assert max_overlap([t for t in trials if t["host"] == host]) <= 2
    home_b = second_user.pw_dir
    for t in trials:
        out = (exp.directory / "trials" / t["id"] / "stdout.log").read_text()
        on_b = t["host"].endswith(str(b.port))
        user = SECOND_USER if on_b else psutil.Process().username()
        home = home_b if on_b else os.path.expanduser("~")
        assert f"USER {user}" in out and f"API {home}/{rdir}/.agent-" in out, out  # the shipped trial API
    exp.stop()
    assert_none_left(f"{os.path.expanduser('~')}/{rdir}", f"{home_b}/{rdir}")
    # secrets reach neither the store, the logs nor the console
    for path in exp.directory.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert PASSWORD.encode() not in data and PASSPHRASE.encode() not in data, path
    captured = capfd.readouterr()
    assert PASSWORD not in captured.out + captured.err and PASSPHRASE not in captured.out + captured.err


def test_hpo_create_across_two_hosts_from_yaml(tmp_path, keys, second_user, servers, rdir):
    """The CLI path: a YAML config in NNI's v2 camelCase form, `hpo create --foreground`, two real hosts."""
    import yaml

    a, b = servers(), servers(user=SECOND_USER, password_auth=True)
    code = tmp_path / "code"
    code.mkdir()
    (code / "trial.py").write_text(TWO_HOST_TRIAL)
    config = {
        "experimentName": "two-hosts-cli", "trialCommand": "python3 trial.py", "trialCodeDirectory": str(code),
        "trialConcurrency": 4, "maxTrialNumber": 6, "tuner": {"name": "random"},
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}, "y": {"_type": "choice", "_value": [1, 2, 3]}},
        "trainingService": {
            "platform": "remote", "knownHostsFile": str(known_hosts(tmp_path, a, b)), "remoteDirectory": rdir,
            "machineList": [
                {"host": a.host, "port": a.port, "user": a.user, "sshKeyFile": str(keys.pkey),
                 "sshPassphrase": PASSPHRASE, "pythonPath": sys.executable, "maxTrials": 2},
                {"host": b.host, "port": b.port, "user": SECOND_USER, "password": PASSWORD,
                 "pythonPath": "/usr/bin/python3", "maxTrials": 2},
            ]},
    }
    path = tmp_path / "remote.yml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "HPO_HOME": str(tmp_path / "home"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "hpo", "create", "--config", str(path), "--port", str(free_port()),
                           "--foreground"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    experiment_id = proc.stderr.split("experiment ", 1)[1].split()[0]
    trials = subprocess.run([sys.executable, "-m", "hpo", "export", experiment_id, "--format", "json"],
                            capture_output=True, text=True, env=env, timeout=60)
    rows = json.loads(trials.stdout)
    assert len(rows) == 6 and all(r["status"] == "SUCCEEDED" for r in rows), rows
    for r in rows:
        assert r["value"] == pytest.approx(r["parameter"]["x"] * 1000 + r["parameter"]["y"])
    from hpo.storage import ExperimentStore
    store = ExperimentStore(tmp_path / "home" / experiment_id, readonly=True)
    assert {t["host"] for t in store.trials()} == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}
    store.close()
    assert_none_left(f"{os.path.expanduser('~')}/{rdir}", f"{second_user.pw_dir}/{rdir}")
    assert PASSWORD not in proc.stdout + proc.stderr and PASSPHRASE not in proc.stdout + proc.stderr
    for f in (tmp_path / "home").rglob("*"):
        if f.is_file():
            assert PASSWORD.encode() not in f.read_bytes() and PASSPHRASE.encode() not in f.read_bytes(), f


def test_trial_with_children_killed_on_other_users_host(tmp_path, keys, second_user, servers, rdir):
    b = servers(user=SECOND_USER, password_auth=True)
    script = """
    import subprocess, time, hpo
    subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300"])
    subprocess.Popen(["sleep", "300"], start_new_session=True)  # left the group: found as a descendant
    hpo.report_intermediate_result(1)
    time.sleep(300)
    """

    async def main() -> tuple[Recorder, list[psutil.Process]]:
        rec = Recorder()
        svc = service(tmp_path, [host_b(b)], b, remote_directory=rdir)
        await svc.start(rec)
        await svc.launch(spec(tmp_path, "tree", script, command="python3 tree.py"))
        await until(lambda: rec.of("tree")[1:], 20, "the first report")
        await asyncio.sleep(0.2)
        root = psutil.Process(rec.pids["tree"])
        tree = [root] + root.children(recursive=True)
        assert len(tree) >= 5 and {p.username() for p in tree} == {SECOND_USER}
        await svc.kill("tree", "USER_CANCELED", "killed by user")
        await svc.stop()
        return rec, tree

    rec, tree = asyncio.run(main())
    assert [k for k, _ in rec.of("tree")] == ["started", "metric", "ended"]
    assert rec.ended_status["tree"] == "USER_CANCELED"
    assert not [p for p in tree if alive(p)]
    assert_none_left(f"{second_user.pw_dir}/{rdir}")


# -- scheduling -----------------------------------------------------------------------------------------------------
def test_least_loaded_host_first_within_max_trials(tmp_path, keys, servers):
    a, b = servers(), servers()
    sleeper = "import time, hpo\nhpo.report_intermediate_result(1)\ntime.sleep(300)\n"

    async def main() -> HostRecorder:
        rec = HostRecorder()
        svc = service(tmp_path, [host_a(a, keys, max_trials=1), host_a(b, keys, max_trials=2)], a, b)
        await svc.start(rec)
        for i in range(3):
            await svc.launch(spec(tmp_path, f"s{i}", sleeper, seq=i + 1))
        blocked = asyncio.ensure_future(svc.launch(spec(tmp_path, "s3", sleeper, seq=4)))
        await asyncio.sleep(0.5)
        assert not blocked.done() and "s3" not in rec.pids  # both machines are full
        await svc.kill("s0")
        await asyncio.wait_for(blocked, 10)
        await svc.stop()
        return rec

    rec = asyncio.run(main())
    ha, hb = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
    # s0: a tie, the first machine; s1: the empty one; s2: a is at max_trials; s3: waited for s0's slot
    assert rec.hosts == {"s0": [ha], "s1": [hb], "s2": [hb], "s3": [ha]}
    assert rec.ended_status == {"s0": "USER_CANCELED", "s1": "SYS_CANCELED", "s2": "SYS_CANCELED",
                                "s3": "SYS_CANCELED"}
    assert_none_left(str(tmp_path / "remote"))


def test_gpus_discovered_over_ssh_and_assigned(tmp_path, keys, servers):
    """A fake nvidia-smi on the remote PATH: GPU 0 free, GPU 1 busy with another program."""
    a = servers()
    env_dir = tmp_path / "remote-env"  # python_path as a folder: put first on PATH, holds python3
    env_dir.mkdir()
    (env_dir / "python3").symlink_to(sys.executable)
    smi = env_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\ncase \"$1\" in\n  --query-gpu=*) printf '0, GPU-aaa\\n1, GPU-bbb\\n' ;;\n"
                   "  --query-compute-apps=*) printf 'GPU-bbb, 999999\\n' ;;\nesac\n")
    smi.chmod(0o755)
    script = "import os, time, hpo\nhpo.report_intermediate_result(int(os.environ['CUDA_VISIBLE_DEVICES']))\n" \
             "time.sleep(300)\n"

    async def main() -> Recorder:
        rec = Recorder()
        svc = service(tmp_path, [a.machine(keys.key, python_path=str(env_dir))], a)
        await svc.start(rec)
        svc.check_gpu_request(2)  # the busy GPU may free up: it counts, as with the local service
        with pytest.raises(ValueError, match=rf"trial_gpu_number=3 .*127\.0\.0\.1:{a.port}: 2\)"):
            svc.check_gpu_request(3)
        await svc.launch(spec(tmp_path, "g1", script, gpu_number=1, command="python3 g1.py"))
        second = asyncio.ensure_future(svc.launch(spec(tmp_path, "g2", script, gpu_number=1, seq=2,
                                                       command="python3 g2.py")))
        await asyncio.sleep(0.4)
        assert not second.done()  # GPU 1 is busy with another program, GPU 0 taken
        await svc.kill("g1")
        await asyncio.wait_for(second, 10)
        await until(lambda: len(rec.of("g2")) >= 2, 10, "g2's report")
        await svc.stop()
        return rec

    rec = asyncio.run(main())
    assert rec.of("g1")[:2] == [("started", [0]), ("metric", ("intermediate", 0))]
    assert rec.of("g2")[:2] == [("started", [0]), ("metric", ("intermediate", 0))]

    async def missing() -> None:
        svc = service(tmp_path, [a.machine(keys.key, python_path=str(env_dir), gpu_indices=[1, 5])], a)
        await svc.start(Recorder())

    with pytest.raises(ValueError, match=r"gpu_indices: GPU\(s\) \[5\] not found; detected \[0, 1\]"):
        asyncio.run(missing())


# -- faults at start -----------------------------------------------------------------------------------------------
def test_start_errors_name_the_host_and_the_cause(tmp_path, keys, servers):
    a = servers()
    closed = SshServer(keys.base / "never-started", [keys.key.with_suffix(".pub")])  # its port is free

    def start_error(machine: dict[str, Any], **options: Any) -> str:
        async def main() -> None:
            svc = service(tmp_path, [machine], a, **options)
            try:
                await svc.start(Recorder())
            finally:
                await svc.stop()
        with pytest.raises(ValueError) as info:
            asyncio.run(main())
        return str(info.value)

    where = f"remote machine {a.user}@127.0.0.1:{a.port}: "
    msg = start_error(closed.machine(keys.key))
    assert msg.startswith(f"remote machine {closed.user}@127.0.0.1:{closed.port}: connection refused"), msg
    msg = start_error(a.machine(keys.stranger))
    assert msg.startswith(where + "authentication failed"), msg
    msg = start_error(a.machine(keys.pkey))
    assert msg.startswith(where) and "encrypted; set ssh_passphrase" in msg, msg
    msg = start_error(a.machine(keys.pkey, ssh_passphrase="not-the-passphrase"))
    assert msg.startswith(where) and "wrong ssh_passphrase" in msg and "not-the-passphrase" not in msg, msg
    msg = start_error(a.machine(keys.key, python_path="/nonexistent/python3"))
    assert msg.startswith(where + "cannot start the remote agent"), msg
    # host keys: unknown, then accepted when asked, then a changed key is refused
    empty = tmp_path / "kh" / "known_hosts"
    msg = start_error(a.machine(keys.key), known_hosts_file=str(empty))
    assert msg.startswith(where + "unknown host key") and "accept_new_host_keys" in msg, msg

    async def accept() -> None:
        svc = service(tmp_path, [a.machine(keys.key)], a, known_hosts_file=str(empty), accept_new_host_keys=True)
        await svc.start(Recorder())
        await svc.stop()

    asyncio.run(accept())
    assert empty.read_text() == a.known_hosts_line()
    other = servers()
    empty.write_text(other.known_hosts_line().replace(f"]:{other.port} ", f"]:{a.port} "))
    msg = start_error(a.machine(keys.key), known_hosts_file=str(empty), accept_new_host_keys=True)
    assert msg.startswith(where + "host key mismatch"), msg
    # two machines, one bad: the error names the bad one
    both = service(tmp_path, [a.machine(keys.key), a.machine(keys.stranger, user="nobody")], a)

    async def two() -> None:
        try:
            await both.start(Recorder())
        finally:
            await both.stop()

    with pytest.raises(ValueError, match=rf"^remote machine nobody@127\.0\.0\.1:{a.port}: authentication failed"):
        asyncio.run(two())


def test_wrong_key_fails_the_experiment_with_a_clear_message(tmp_path, keys, servers, make_experiment):
    a = servers()
    exp = make_experiment("print('never runs')\n", training_service={
        "platform": "remote", "machine_list": [a.machine(keys.stranger)],
        "known_hosts_file": str(known_hosts(tmp_path, a)), "remote_directory": str(tmp_path / "remote")})
    with pytest.raises(ExperimentError, match=rf"could not start: remote machine {a.user}@127\.0\.0\.1:{a.port}: "
                                              "authentication failed"):
        exp.start(port=0)
    profile = exp.get_experiment_profile()
    assert profile["status"] == "ERROR"
    assert f"remote machine {a.user}@127.0.0.1:{a.port}: authentication failed" in profile["message"]


# -- faults while running -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_connection_drop_mid_trial_is_reconciled(tmp_path, keys, servers, warm):
    a = servers()
    preload = [] if warm else None
    go = tmp_path / "go"
    script = f"""
    import os, time, hpo
    def wait(name):
        while not os.path.exists({str(go)!r} + name):
            time.sleep(0.02)
    hpo.report_intermediate_result(1)
    wait("1")
    print("while disconnected", flush=True)
    hpo.report_intermediate_result(2)
    wait("2")
    hpo.report_final_result(3)
    """

    async def main() -> tuple[Recorder, psutil.Process, psutil.Process]:
        rec = Recorder()
        svc = service(tmp_path, [host_a(a, keys)], a)
        await svc.start(rec)
        await svc.launch(spec(tmp_path, "drop", script, warm_start=preload))
        await svc.launch(spec(tmp_path, "victim", "import time\ntime.sleep(300)\n", seq=2, warm_start=preload))
        await until(lambda: len(rec.of("drop")) >= 2, 20, "the first report")
        trial = psutil.Process(rec.pids["drop"])
        victim = psutil.Process(rec.pids["victim"])
        assert warm == ("zygote" in " ".join(trial.cmdline()))  # forked by the agent's zygote: its supervisor
        a.kill()  # every connection drops; the trials are detached and keep running (a zygote ends with its agent)
        await until(lambda: svc.hosts[0].state == "reconnecting", 10, "the drop to be noticed")
        kill = asyncio.ensure_future(svc.kill("victim", "USER_CANCELED", "killed while disconnected"))
        go.with_name("go1").write_text("")
        await asyncio.sleep(0.5)
        assert alive(trial) and alive(victim) and not kill.done()
        a.start()  # same port: the service reconnects with backoff and reconciles
        await until(lambda: len(rec.of("drop")) >= 3, 20, "the report made while disconnected")
        await asyncio.wait_for(kill, 20)
        go.with_name("go2").write_text("")
        await rec.wait_ended("drop")
        await svc.stop()
        return rec, trial, victim

    rec, trial, victim = asyncio.run(main())
    assert rec.of("drop") == [("started", []), ("metric", ("intermediate", 1)), ("metric", ("intermediate", 2)),
                              ("metric", ("final", 3)), ("ended", "SUCCEEDED")]
    assert rec.ended_status["victim"] == "USER_CANCELED" and not alive(victim)
    assert "while disconnected" in (tmp_path / "trials" / "drop" / "stdout.log").read_text()
    assert not alive(trial)
    assert_none_left(str(tmp_path / "remote"))


def test_trial_gone_during_a_drop_is_restarted_within_max_trial_restarts(tmp_path, keys, servers):
    """A trial whose processes vanish while its machine is unreachable was lost to the platform: it is
    restarted while ``max_trial_restarts`` allows (not ``max_trial_retries``, the trial's own failures)."""
    a = servers()
    runs = tmp_path / "runs"
    script = f"""
    import time, hpo
    with open({str(runs)!r}, "a") as fh:
        fh.write("run\\n")
    if len(open({str(runs)!r}).readlines()) > int(open({str(runs)!r} + ".losses").read()):
        hpo.report_final_result(1.5)
    else:
        time.sleep(300)
    """

    async def run(restarts: int, trial_id: str, losses: int) -> Recorder:
        rec = Recorder()
        rec.config = SimpleNamespace(max_trial_restarts=restarts, max_trial_retries=5)  # what the engine exposes
        svc = service(tmp_path, [host_a(a, keys)], a)
        await svc.start(rec)
        runs.unlink(missing_ok=True)
        runs.with_suffix(".losses").write_text(str(losses))
        await svc.launch(spec(tmp_path, trial_id, script))
        for loss in range(1, losses + 1):
            await until(lambda: runs.exists() and len(runs.read_text().splitlines()) == loss, 20, f"run {loss}")
            await until(lambda: svc._trials[trial_id].current.started_sent, 20, "its start")
            a.kill()
            await until(lambda: svc.hosts[0].state == "reconnecting", 10, "the drop to be noticed")
            info = json.loads(Path(svc._trials[trial_id].current.remote_dir, "pid.json").read_text())
            os.kill(info["waiter"], signal.SIGKILL)  # everything of the trial vanishes while disconnected
            kill_groups([info["pgid"]])
            await asyncio.sleep(0.3)
            a.start()
        await rec.wait_ended(trial_id)
        await svc.stop()
        return rec

    rec = asyncio.run(run(0, "lost", losses=1))
    assert rec.ended_status["lost"] == "FAILED"
    assert rec.messages["lost"].startswith("lost: its processes on 127.0.0.1:") and "without an exit status" in \
        rec.messages["lost"], rec.messages
    rec = asyncio.run(run(1, "restarted", losses=1))
    assert [k for k, _ in rec.of("restarted")] == ["started", "started", "metric", "ended"]
    assert rec.ended_status["restarted"] == "SUCCEEDED"
    assert "restarting it on 127.0.0.1:" in (tmp_path / "trials" / "restarted" / "stderr.log").read_text()
    assert "(restart 1 of 1)" in (tmp_path / "trials" / "restarted" / "stderr.log").read_text()
    rec = asyncio.run(run(1, "exhausted", losses=2))
    assert [k for k, _ in rec.of("exhausted")] == ["started", "started", "ended"]
    assert rec.ended_status["exhausted"] == "FAILED"
    assert rec.messages["exhausted"].startswith("lost 2 times (max_trial_restarts 1): its processes on"), rec.messages
    assert_none_left(str(tmp_path / "remote"))


def test_trial_stranded_on_a_dead_host_restarts_elsewhere_at_once(tmp_path, keys, servers, make_experiment):
    """Three hosts; one dies mid-trial and stays down: its trial is restarted on another host after
    ``restart_after`` (5 s), not after ``reconnect_timeout`` (60 s), and succeeds there with its results
    reported once; when the host returns, the first copy (still running there) is killed."""
    hosts = [servers() for _ in range(3)]
    hold, keep = tmp_path / "hold", tmp_path / "keep"
    hold.write_text("")
    keep.mkdir()
    script = f"""
    import os, time, hpo
    hpo.get_next_parameter()
    copy = os.path.basename(os.environ["HPO_TRIAL_DIR"])  # <trial id>, then <trial id>.1 for a restart
    hpo.report_intermediate_result(1)
    while os.path.exists({str(hold)!r}) or os.path.exists(os.path.join({str(keep)!r}, copy)):
        time.sleep(0.05)
    time.sleep(1)
    hpo.report_intermediate_result(2)
    hpo.report_final_result(3)
    """
    exp = make_experiment(script, trial_concurrency=3, max_trial_number=3, training_service={
        "platform": "remote", "machine_list": [host_a(s, keys) for s in hosts], "reconnect_timeout": "60s",
        "known_hosts_file": str(known_hosts(tmp_path, *hosts)), "remote_directory": str(tmp_path / "remote"),
        "kill_grace": 1.0})
    label = {s: f"127.0.0.1:{s.port}" for s in hosts}
    exp.start(port=0)

    def all_running() -> list[dict[str, Any]] | None:
        rows = exp.list_trial_jobs()
        ready = len(rows) == 3 and all(r["status"] == "RUNNING" and exp.get_trial_job(r["id"])["intermediate"]
                                       for r in rows)
        return rows if ready else None

    rows = {r["host"]: r for r in wait_until(all_running, 60, what="three trials running")}
    assert set(rows) == set(label.values())  # the least loaded host first: one trial each
    stranded, kept = rows[label[hosts[2]]], rows[label[hosts[0]]]
    (keep / stranded["id"]).write_text("")  # its first copy runs until killed
    (keep / kept["id"]).write_text("")      # keeps the experiment running until the end of the test
    first_copy = stranded["pid"]
    t0 = time.monotonic()
    hosts[2].kill()  # and kept down
    hold.unlink()
    moved = wait_until(lambda: exp.get_trial_job(stranded["id"])["host"] != label[hosts[2]], 40,
                       what="the stranded trial to be restarted elsewhere")
    waited = time.monotonic() - t0
    assert moved and 5 <= waited < 30, waited  # restart_after is 5 s; reconnect_timeout 60 s
    wait_until(lambda: exp.get_trial_job(stranded["id"])["status"] != "RUNNING", 30, what="the restarted copy")
    assert exp.get_trial_job(stranded["id"])["status"] == "SUCCEEDED" and not hosts[2].accepts()
    assert group_alive(first_copy)  # on the unreachable host

    hosts[2].start()
    wait_until(lambda: not group_alive(first_copy), 40, what="the first copy to be killed once its host returned")
    (keep / kept["id"]).unlink()
    assert exp.wait(60)
    assert exp.get_status() == "DONE", exp.get_experiment_profile()["message"]
    trials = [exp.get_trial_job(r["id"]) for r in exp.list_trial_jobs()]
    assert [(t["status"], t["intermediate"], t["final"]) for t in trials] == [("SUCCEEDED", [1, 2], 3)] * 3
    note = (exp.directory / "trials" / stranded["id"] / "stderr.log").read_text()
    assert f"machine {label[hosts[2]]} unreachable for 5 s; restarting it on 127.0.0.1:" in note, note
    exp.stop()
    assert_none_left(str(tmp_path / "remote"))


def test_original_that_finished_while_unreachable_is_kept(tmp_path, keys, servers):
    """First result wins: the first copy finished while its host was down, the restarted copy had not
    reported a final result yet: the first copy's results are the trial's, the restarted copy is killed."""
    a, b = servers(), servers()
    go = tmp_path / "go"
    script = f"""
    import os, time, hpo
    copy = os.path.basename(os.environ["HPO_TRIAL_DIR"])
    hpo.report_intermediate_result(1)
    while not os.path.exists({str(go)!r} + copy):
        time.sleep(0.02)
    hpo.report_intermediate_result(2)
    hpo.report_final_result(10 if copy == "t" else 20)
    """

    async def main() -> tuple[HostRecorder, int]:
        rec = HostRecorder()
        svc = service(tmp_path, [host_a(a, keys), host_a(b, keys)], a, b, restart_after=0.5)
        await svc.start(rec)
        await svc.launch(spec(tmp_path, "t", script))
        await until(lambda: len(rec.of("t")) >= 2, 20, "the first report")
        first = svc._trials["t"].current
        a.kill()
        await until(lambda: len(rec.of("t")) >= 3, 20, "the restart on the other host")
        second = svc._trials["t"].current
        await until(lambda: Path(second.remote_dir, "reports.jsonl").read_text(), 20, "the restart's first report")
        Path(f"{go}t").write_text("")  # the first copy ends while its host is unreachable
        await until(lambda: Path(first.remote_dir, "exit.json").exists(), 20, "the first copy's end")
        a.start()
        await rec.wait_ended("t")
        await svc.stop()
        return rec, rec.pids["t"]

    rec, second_pid = asyncio.run(main())
    assert rec.hosts["t"] == [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
    assert rec.of("t")[1:] == [("metric", ("intermediate", 1)), ("started", []), ("metric", ("intermediate", 2)),
                               ("metric", ("final", 10)), ("ended", "SUCCEEDED")]
    assert not group_alive(second_pid)
    assert "is kept; the restarted copy on" in (tmp_path / "trials" / "t" / "stderr.log").read_text()
    assert_none_left(str(tmp_path / "remote"))


def test_host_that_keeps_failing_is_taken_out_of_rotation(tmp_path, keys, servers, capsys):
    a, b = servers(), servers()
    sleeper = "import time, hpo\nhpo.report_intermediate_result(1)\ntime.sleep(300)\n"
    quick = "import hpo\nhpo.report_final_result(2)\n"

    async def main() -> tuple[HostRecorder, list[int]]:
        rec = HostRecorder()
        rec.config = SimpleNamespace(max_trial_restarts=0)  # its trial fails with the machine
        svc = service(tmp_path, [host_a(a, keys), host_a(b, keys)], a, b, reconnect_timeout=1.0)
        await svc.start(rec)
        await svc.launch(spec(tmp_path, "on_a", sleeper, seq=1))
        await svc.launch(spec(tmp_path, "on_b", sleeper, seq=2))
        orphan = rec.pids["on_b"]
        b.kill()  # and never back
        await rec.wait_ended("on_b", timeout=15)
        assert svc.hosts[1].state == "out"
        for i in range(2):  # the other machine goes on, although it is the more loaded one
            await svc.launch(spec(tmp_path, f"q{i}", quick, seq=3 + i))
        await rec.wait_ended("q0", "q1")
        await svc.stop()
        return rec, [orphan]

    rec, orphans = asyncio.run(main())
    try:
        assert rec.ended_status["on_b"] == "FAILED"
        assert "unreachable" in rec.messages["on_b"], rec.messages
        ha, hb = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
        assert rec.hosts == {"on_a": [ha], "on_b": [hb], "q0": [ha], "q1": [ha]}
        assert rec.ended_status["q0"] == rec.ended_status["q1"] == "SUCCEEDED"
        assert "taken out of rotation" in capsys.readouterr().err
    finally:
        kill_groups(orphans)  # its trial ran on a machine we could no longer reach


def test_take_out_comes_after_the_full_reconnect_timeout(tmp_path, keys, servers, capsys):
    a = servers()

    async def main() -> tuple[Recorder, float, int]:
        rec = Recorder()
        rec.config = SimpleNamespace(max_trial_restarts=0)
        svc = service(tmp_path, [host_a(a, keys)], a, reconnect_timeout=4.0)
        await svc.start(rec)
        await svc.launch(spec(tmp_path, "t", "import time\ntime.sleep(300)\n"))
        t0 = time.monotonic()
        a.kill()  # and never back
        await until(lambda: svc.hosts[0].state == "out", 20, "the take-out")
        waited = time.monotonic() - t0
        await rec.wait_ended("t")
        await svc.stop()
        return rec, waited, rec.pids["t"]

    rec, waited, orphan = asyncio.run(main())
    try:
        assert 4.0 <= waited < 10, waited
        assert f"remote machine {a.user}@127.0.0.1:{a.port} taken out of rotation: unreachable for 4 s after " \
            in capsys.readouterr().err
        assert rec.ended_status["t"] == "FAILED" and rec.messages["t"].startswith("lost: machine 127.0.0.1:")
    finally:
        kill_groups([orphan])


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_leftover_trials_of_a_dead_engine_are_ended_on_resume(tmp_path, keys, servers, warm):
    """Trials outlive their engine (warm ones too: their zygote ends with the agent, their supervisors do not)."""
    a = servers()
    script = "import subprocess, time, hpo\nsubprocess.Popen(['sleep', '300'])\nhpo.report_intermediate_result(1)\n" \
             "time.sleep(300)\n"

    async def crashed_engine() -> dict[str, Any]:
        rec = HostRecorder()
        svc = service(tmp_path, [host_a(a, keys)], a)
        await svc.start(rec)
        await svc.launch(spec(tmp_path, "orphan", script, warm_start=[] if warm else None))
        await until(lambda: len(rec.of("orphan")) >= 2, 20, "the report")
        for host in svc.hosts:  # the engine dies: connections go, trials stay
            await host.close()
        return {"id": "orphan", "pgid": rec.pids["orphan"], "host": rec.hosts["orphan"][0], "started_at": time.time()}

    record = asyncio.run(crashed_engine())
    group = [p for p in psutil.process_iter() if _pgid(p) == record["pgid"]]
    group += [c for p in group for c in p.children(recursive=True) if c not in group]  # a warm trial's own group
    assert len(group) >= 3 and all(alive(p) for p in group)
    assert warm == any("zygote" in " ".join(p.cmdline()) for p in group)

    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a group that is not a trial's

    async def resumed_engine() -> None:
        svc = service(tmp_path, [host_a(a, keys)], a)
        svc.leftover_cleanup([record, {"id": "other", "pgid": bystander.pid, "host": record["host"]}])
        await svc.start(Recorder())
        await svc.stop()

    try:
        t0 = time.monotonic()
        asyncio.run(resumed_engine())
        assert time.monotonic() - t0 < 5
        assert not [p for p in group if alive(p)]
        assert bystander.poll() is None  # the trial id is checked before a group is killed
    finally:
        bystander.kill()
        bystander.wait()
    assert_none_left(str(tmp_path / "remote"))


def _pgid(proc: psutil.Process) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except OSError:
        return None


# -- checkpoints --------------------------------------------------------------------------------------------------
def test_checkpoints_written_on_the_remote_are_copied_back_whole(tmp_path, keys, servers, make_experiment):
    a = servers()
    body = """
import hpo, os
for step in (1, 2, 3):
    hpo.report_intermediate_result(10 - step if step != 2 else 50)
    with hpo.checkpoint_path({"steps_completed": step}) as path:
        (path / "weights.bin").write_bytes(bytes([step]) * 300_000)
        os.makedirs(path / "sub")
        (path / "sub" / "note.txt").write_text(f"step {step}")
hpo.report_final_result(1)
"""
    remote = tmp_path / "remote"
    exp = make_experiment(body, max_trial_number=1, training_service=one_host(tmp_path, a, keys))
    exp.run(port=0)
    rows = exp._store().checkpoints()
    assert exp.list_trial_jobs()[0]["status"] == "SUCCEEDED"
    assert [(r["steps_completed"], r["state"]) for r in rows] == [(1, "DELETED"), (2, "COMPLETED"), (3, "COMPLETED")]
    for r in rows[1:]:
        folder = Path(r["location"])
        assert folder.parent == exp.directory / "checkpoints"
        assert (folder / "weights.bin").read_bytes() == bytes([r["steps_completed"]]) * 300_000
        assert (folder / "sub" / "note.txt").read_text() == f"step {r['steps_completed']}"
        assert r["resources"]["weights.bin"] == 300_000
    assert not list(remote.rglob("checkpoints/*-*-*"))  # the remote copies were removed once pulled
    assert not list((exp.directory / "checkpoints").glob(".*"))


# -- distributed trials (trial_roles) -------------------------------------------------------------------------------
PS_JOB = Path(__file__).resolve().parent.parent / "examples" / "distributed" / "ps_job.py"


def test_a_parameter_server_job_spreads_over_two_hosts(tmp_path, keys, second_user, servers, rdir, make_experiment):
    a, b = servers(), servers(user=SECOND_USER, password_auth=True)
    make_experiment.code.mkdir(exist_ok=True)
    shutil.copy(PS_JOB, make_experiment.code / "ps_job.py")
    exp = make_experiment(command="python3 ps_job.py", max_trial_number=2, trial_concurrency=1,
                          search_space={"lr": {"_type": "choice", "_value": [0.2, 0.5]}}, trial_env={"STEPS": 6},
                          trial_roles={"worker": {"count": 2}, "ps": {"count": 1}},
                          training_service={"platform": "remote", "machine_list": [host_a(a, keys), host_b(b)],
                                            "known_hosts_file": str(known_hosts(tmp_path, a, b)),
                                            "remote_directory": rdir})
    exp.start(port=0)
    assert exp.wait(90)
    assert exp.get_status() == "DONE", exp.get_experiment_profile()["message"]
    from hpo.storage import ExperimentStore
    with ExperimentStore(exp.directory, readonly=True) as store:
        for t in store.trials():
            assert t["status"] == "SUCCEEDED", t["message"]
            machines = {p["name"]: p["machine"] for p in t["processes"]}
            assert machines["worker-0"] != machines["worker-1"], machines  # spread: least-loaded machine first
            assert set(machines.values()) == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}
            assert len(store.metrics(t["seq"], "intermediate")) == 6
            assert {m["process"] for m in store.process_metrics(t["seq"])} == {"worker-1"}
            merged = (exp.directory / "trials" / t["id"] / "stdout.log").read_text()
            assert "[ps-0] parameter server on port" in merged and "[worker-1] worker 1 done" in merged, merged
    exp.stop()
    assert_none_left(f"{os.path.expanduser('~')}/{rdir}", f"{second_user.pw_dir}/{rdir}")


GANG_FAILS = """
import os, sys, time
if os.environ["HPO_PROCESS"] == "worker-1":
    time.sleep(0.5)
    sys.exit("worker 1 gave up")
time.sleep(300)
"""


def test_a_failing_process_on_one_host_stops_the_gang_on_the_other(tmp_path, keys, servers):
    a, b = servers(), servers()
    roles = {"worker": SimpleNamespace(count=2, command=None, gpu_number=None, port=None),
             "ps": SimpleNamespace(count=1, command=None, gpu_number=None, port=None)}
    from training_services.gang import gang_processes

    async def main() -> Recorder:
        rec = Recorder()
        svc = service(tmp_path, [host_a(a, keys), host_a(b, keys)], a, b)
        await svc.start(rec)
        s = spec(tmp_path, "gang1", GANG_FAILS)
        s.processes = gang_processes(roles, s.command, 0, "tensorflow")
        t0 = time.monotonic()
        await svc.launch(s)
        await until(lambda: rec.ended_status.get("gang1"), 30, "the gang's end")
        assert time.monotonic() - t0 < 20
        await svc.stop()
        return rec

    rec = asyncio.run(main())
    assert (rec.ended_status["gang1"], rec.messages["gang1"]) == ("FAILED", "worker-1: worker 1 gave up")
    assert {p["machine"] for p in rec.processes["gang1"]} == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}
    assert_none_left(str(tmp_path / "remote"))


def test_gang_placement_is_all_or_nothing_and_checked_at_start(tmp_path, keys, servers):
    a = servers()
    from training_services.gang import gang_processes

    def roles(count: int, port: int | None = None) -> dict[str, Any]:
        return {"worker": SimpleNamespace(count=count, command=None, gpu_number=None, port=port)}

    async def main() -> None:
        rec = Recorder()
        svc = service(tmp_path, [host_a(a, keys, max_trials=2)], a)
        await svc.start(rec)
        with pytest.raises(ValueError, match="can never be placed at once on the 1 machine"):
            svc.check_gang(gang_processes(roles(3), "x", 0, "pytorch"))
        with pytest.raises(ValueError, match="no room for worker-1"):
            svc.check_gang(gang_processes(roles(2, port=7000), "x", 0, "pytorch"))
        svc.check_gang(gang_processes(roles(2), "x", 0, "pytorch"))
        # one trial holds the machine's two slots: a second gang waits whole, holding nothing
        first = spec(tmp_path, "g1", "import time\ntime.sleep(300)\n")
        first.processes = gang_processes(roles(2), first.command, 0, "pytorch")
        await svc.launch(first)
        second = spec(tmp_path, "g2", "print('ran')\n", seq=2)
        second.processes = gang_processes(roles(2), second.command, 0, "pytorch")
        waiting = asyncio.ensure_future(svc.launch(second))
        await asyncio.sleep(1.0)
        assert not waiting.done() and svc.hosts[0].assigned == 2
        await svc.kill("g1")
        await asyncio.wait_for(waiting, 20)
        await until(lambda: rec.ended_status.get("g2"), 20, "the second gang's end")
        assert rec.ended_status["g2"] == "SUCCEEDED", rec.messages["g2"]
        await svc.stop()

    asyncio.run(main())
    assert_none_left(str(tmp_path / "remote"))


def test_hpo_check_places_the_gang_and_tests_the_machines_reach_each_other(tmp_path, keys, servers, rdir):
    import yaml

    a, b = servers(), servers()
    config = {
        "trialCommand": "python3 ps_job.py", "trialCodeDirectory": str(tmp_path), "tuner": {"name": "random"},
        "searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
        "trialRoles": {"worker": {"count": 2}, "ps": {"count": 1}},
        "trainingService": {"platform": "remote", "knownHostsFile": str(known_hosts(tmp_path, a, b)),
                            "remoteDirectory": rdir, "machineList": [
                                {"host": s.host, "port": s.port, "user": s.user, "sshKeyFile": str(keys.key),
                                 "pythonPath": sys.executable, "maxTrials": 2} for s in (a, b)]},
    }
    path = tmp_path / "gang.yml"
    env = {**os.environ, "HPO_HOME": str(tmp_path / "home"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def check() -> subprocess.CompletedProcess[str]:
        path.write_text(yaml.safe_dump(config))
        return subprocess.run([sys.executable, "-m", "hpo", "check", "-f", str(path)], capture_output=True, text=True,
                              env=env, timeout=120)

    proc = check()
    assert proc.returncode == 0, proc.stderr[-2000:]
    pairs = [line.strip() for line in proc.stdout.splitlines() if " -> " in line]
    assert len(pairs) == 2 and all(line.endswith("reached") for line in pairs), proc.stdout
    config["trialRoles"]["worker"]["count"] = 4  # 5 processes, 4 slots
    proc = check()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "can never be placed at once on the 2 machine(s): no room for ps-0" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert_none_left(f"{os.path.expanduser('~')}/{rdir}")


def test_a_killed_or_orphaned_gang_ends_on_every_machine(tmp_path, keys, servers):
    """kill() ends every process of the gang on both machines; after an engine's death, the resume's cleanup finds
    each process of the gang on its own machine by the record the engine kept."""
    a, b = servers(), servers()
    from training_services.gang import gang_processes
    roles = {"worker": SimpleNamespace(count=2, command=None, gpu_number=None, port=None)}
    script = "import subprocess, time\nsubprocess.Popen(['sleep', '300'])\ntime.sleep(300)\n"

    async def killed() -> Recorder:
        rec = Recorder()
        svc = service(tmp_path, [host_a(a, keys), host_a(b, keys)], a, b)
        await svc.start(rec)
        s = spec(tmp_path, "gk", script)
        s.processes = gang_processes(roles, s.command, 0, "pytorch")
        await svc.launch(s)
        await until(lambda: rec.processes.get("gk"), 20, "the gang running")
        await svc.kill("gk", "USER_CANCELED", "killed by the test")
        await svc.stop()
        return rec

    rec = asyncio.run(killed())
    assert rec.ended_status["gk"] == "USER_CANCELED"
    assert len({p["machine"] for p in rec.processes["gk"]}) == 2
    assert_none_left(str(tmp_path / "remote"))

    async def crashed_engine() -> dict[str, Any]:
        rec = Recorder()
        svc = service(tmp_path, [host_a(a, keys), host_a(b, keys)], a, b)
        await svc.start(rec)
        s = spec(tmp_path, "go", script, seq=2)
        s.processes = gang_processes(roles, s.command, 0, "pytorch")
        await svc.launch(s)
        await until(lambda: rec.processes.get("go"), 20, "the gang running")
        for host in svc.hosts:  # the engine dies: connections go, the gang stays
            await host.close()
        return {"id": "go", "pgid": rec.pids["go"], "host": None, "processes": rec.processes["go"],
                "started_at": time.time()}

    record = asyncio.run(crashed_engine())
    groups = [p["pid"] for p in record["processes"]]
    assert all(group_alive(g) for g in groups)

    async def resumed_engine() -> None:
        svc = service(tmp_path, [host_a(a, keys), host_a(b, keys)], a, b)
        svc.leftover_cleanup([record])
        await svc.start(Recorder())
        await svc.stop()

    asyncio.run(resumed_engine())
    assert not [g for g in groups if group_alive(g)]
    assert_none_left(str(tmp_path / "remote"))


RESUMING = """
import hpo, json, os, sys
p = hpo.get_next_parameter()
prev = hpo.restore_checkpoint()
start = json.loads((prev / "state.json").read_text())["epoch"] if prev is not None else 0
if prev is not None:
    print("restored at epoch", start, "from", prev, flush=True)
for epoch in range(start + 1, 4):
    hpo.report_intermediate_result(epoch)
    with hpo.checkpoint_path({"steps_completed": epoch}) as path:
        (path / "state.json").write_text(json.dumps({"epoch": epoch}))
        os.makedirs(path / "sub")
        (path / "sub" / "weights.bin").write_bytes(bytes([epoch]) * 200_000)
    if epoch == 2 and prev is None:
        sys.exit("crash after epoch 2")
hpo.report_final_result(1)
"""


def test_a_retry_on_an_ssh_host_resumes_from_the_failed_trials_checkpoint(tmp_path, keys, servers, make_experiment):
    a = servers()
    remote = tmp_path / "remote"
    exp = make_experiment(RESUMING, max_trial_number=1, max_trial_retries=1, checkpoint_storage={
        "save_trial_latest": 3}, training_service=one_host(tmp_path, a, keys))
    exp.run(port=0)
    first, retry = exp.list_trial_jobs()
    assert (first["status"], retry["status"], retry["rerun_of"]) == ("FAILED", "SUCCEEDED", first["seq"])
    stdout = (exp.directory / "trials" / retry["id"] / "stdout.log").read_text()
    restored_at = f"{remote}/{exp.id}/trials/{retry['id']}/restore"
    assert f"restored at epoch 2 from {restored_at}\n" in stdout  # a copy on the host, not the engine's folder
    rows = exp._store().checkpoints()
    assert [(r["trial_id"], r["steps_completed"], r["state"]) for r in rows] == \
        [(first["id"], 1, "COMPLETED"), (first["id"], 2, "COMPLETED"), (retry["id"], 3, "COMPLETED")]
    assert (Path(rows[2]["location"]) / "sub" / "weights.bin").read_bytes() == bytes([3]) * 200_000
    assert not os.path.exists(restored_at) and not list(remote.rglob("restore*"))  # removed when the trial ended


def test_a_full_disk_on_the_engines_side_is_an_error_checkpoint(tmp_path, keys, servers, make_experiment, small_disk):
    a = servers()
    body = """
import hpo
for step, size in ((1, 3 * 2**20), (2, 1000)):  # the first does not fit on the engine's 1 MiB disk
    hpo.report_intermediate_result(step)
    with hpo.checkpoint_path({"steps_completed": step}) as path:
        (path / "weights.bin").write_bytes(b"w" * size)
hpo.report_final_result(1)
"""
    exp = make_experiment(body, max_trial_number=1, checkpoint_storage={"host_path": str(small_disk)},
                          training_service=one_host(tmp_path, a, keys))
    exp.run(port=0)
    assert exp.get_status() == "DONE" and exp.list_trial_jobs()[0]["status"] == "SUCCEEDED"
    failed, saved = exp._store().checkpoints()
    assert failed["state"] == "ERROR" and saved["state"] == "COMPLETED"
    assert failed["message"] == f"could not copy it from 127.0.0.1:{a.port}: No space left on device"
    assert [p.name for p in small_disk.iterdir()] == [saved["uuid"]]  # the half-copied one is gone


@pytest.mark.parametrize("which", ["real nni", "stand-in"])
def test_nni_trial_runs_unchanged_over_ssh(which, tmp_path, keys, servers, rdir, make_experiment):
    """NNI's mnist-shaped trial over SSH: the real nni where the machine's Python has it, else the stand-in shipped
    with the trial API; reports travel in hpo's report file, no port."""
    from nni_support import nni_python, nni_site_packages, nni_venv
    from test_nni_compat import MNIST_SHAPE, check_mnist_trials
    venv = nni_venv()
    if isinstance(venv, str):
        pytest.skip(venv)
    a = servers()
    python = nni_python(venv) if which == "real nni" else sys.executable
    exp = make_experiment(MNIST_SHAPE, command="python trial.py", max_trial_number=2, trial_concurrency=2,
                          search_space={"lr": {"_type": "uniform", "_value": [0.1, 0.9]}},
                          training_service={"platform": "remote", "machine_list": [{**host_a(a, keys), "python_path": python}],
                                            "known_hosts_file": str(known_hosts(tmp_path, a)), "remote_directory": rdir})
    assert exp.run(port=0)
    shipped = f"{os.path.expanduser('~')}/{rdir}"
    if which == "real nni":
        check_mnist_trials(exp, nni_site_packages(venv) + "/nni/__init__.py")
    else:
        trial = exp.list_trial_jobs()[0]
        out = (exp.directory / "trials" / trial["id"] / "stdout.log").read_text()
        assert f'"{shipped}/.agent-' in out and out.rstrip().endswith('/lib/nni/__init__.py"]'), out


# -- warm starts: one zygote per machine ------------------------------------------------------------------------------
WARM_MODULE = """
import os
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "imports.txt"), "a") as fh:
    fh.write(f"{os.getpid()}\\n")
"""
WARM_TRIAL = """
import os, sys, hpo, preloaded
seq = hpo.get_sequence_id()
print("ARGV", sys.argv, "CWD", os.getcwd() == os.path.dirname(os.path.abspath(__file__)), "PID", os.getpid(), flush=True)
if seq == 2:
    sys.exit(3)
if seq == 3:
    import time
    time.sleep(600)
hpo.report_final_result(hpo.get_next_parameter()["x"])
"""


def test_warm_trials_fork_from_one_zygote_per_machine(tmp_path, keys, servers, make_experiment, caplog):
    """trial_warm_start over SSH: the agent's zygote imports the preloaded module once for every trial, and a
    forked trial keeps a fresh interpreter's argv, cwd, exit status, kill and stop semantics."""
    a = servers()
    remote = tmp_path / "remote"
    exp = make_experiment(WARM_TRIAL, command=f"{PY} trial.py --lr 0.1", max_trial_number=5, trial_concurrency=2,
                          training_service=one_host(tmp_path, a, keys, kill_grace=1.0),
                          trial_warm_start=True, trial_preload=["preloaded"])
    (exp.config.trial_code_directory / "preloaded.py").write_text(WARM_MODULE)
    exp.start(port=0)
    wait_until(lambda: sum(t["status"] in ("SUCCEEDED", "FAILED") for t in exp.list_trial_jobs()) == 4, 60,
               what="four trials ended")
    sleeper = next(t for t in exp.list_trial_jobs() if t["seq"] == 3)
    assert sleeper["status"] == "RUNNING"
    exp.kill_trial_job(sleeper["id"])
    assert exp.wait(60)
    trials = sorted(exp.list_trial_jobs(), key=lambda t: t["seq"])
    assert [(t["status"], t["exit_code"]) for t in trials] == [
        ("SUCCEEDED", 0), ("FAILED", 3), ("USER_CANCELED", trials[2]["exit_code"]), ("SUCCEEDED", 0), ("SUCCEEDED", 0)]
    for t in trials[:2] + trials[3:]:
        out = (exp.directory / "trials" / t["id"] / "stdout.log").read_text()
        assert "ARGV ['trial.py', '--lr', '0.1'] CWD True PID" in out, out
    imports = (remote / "imports.txt").read_text().split()
    assert len(imports) == 1, imports  # imported once, by the zygote: no trial imported it again
    pids = {int((exp.directory / "trials" / t["id"] / "stdout.log").read_text().split("PID ")[1].split()[0])
            for t in trials}
    assert len(pids) == 5 and int(imports[0]) not in pids
    assert not [r for r in caplog.records if "start cold" in r.getMessage()]
    exp.stop()
    assert_none_left(str(remote))


def test_a_machine_whose_interpreter_differs_starts_trials_cold_saying_why(tmp_path, keys, servers, make_experiment,
                                                                            caplog):
    if os.path.realpath("/usr/bin/python3") == os.path.realpath(sys.executable) or \
            not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs a /usr/bin/python3 other than the interpreter running the tests")
    a = servers()
    remote = tmp_path / "remote"
    exp = make_experiment("import sys; print('PREFIX', sys.prefix); print('hi')", command="/usr/bin/python3 trial.py",
                          max_trial_number=2,
                          training_service=one_host(tmp_path, a, keys),
                          trial_warm_start=True)
    with caplog.at_level("WARNING", logger="hpo.remote"):
        assert exp.run(port=0) is True
    assert [t["status"] for t in exp.list_trial_jobs()] == ["SUCCEEDED"] * 2
    colds = [r.getMessage() for r in caplog.records if "start cold" in r.getMessage()]
    assert len(colds) == 1 and "/usr/bin/python3" in colds[0], colds  # once, naming the interpreter
    assert_none_left(str(remote))


def test_a_warm_gang_whose_processes_end_at_once_is_recorded_as_started(tmp_path, keys, servers, make_experiment):
    """Forked processes that end before the rest of their gang has started: the trial still has its start and
    every process's pid (the gang started once every member had, not once all ran at the same time)."""
    a = servers()
    remote = tmp_path / "remote"
    exp = make_experiment("import os; print('rank', os.environ['RANK'])", max_trial_number=4,
                          training_service=one_host(tmp_path, a, keys, max_trials=4),
                          trial_roles={"worker": {"count": 4}}, distribution="pytorch", trial_warm_start=True)
    assert exp.run(port=0) is True
    for t in exp.list_trial_jobs():
        assert t["status"] == "SUCCEEDED" and t["started_at"] is not None, t
        assert len({p["pid"] for p in t["processes"]}) == 4 and all(p["pid"] for p in t["processes"]), t
        log = (exp.directory / "trials" / t["id"] / "stdout.log").read_text()
        assert all(f"rank {r}" in log for r in range(4)), log
    assert_none_left(str(remote))


def test_a_zygote_that_dies_is_replaced_for_the_next_trials(tmp_path, keys, servers, make_experiment, caplog):
    """The first trial kills its machine's zygote (its supervisor's parent): it finishes all the same, and the next
    trials are forked from a new zygote, which imports the preloaded module once more."""
    a = servers()
    remote = tmp_path / "remote"
    body = """
import os, signal, hpo, preloaded
if hpo.get_sequence_id() == 1:
    with open(f"/proc/{os.getppid()}/stat") as fh:
        zygote = int(fh.read().rsplit(")", 1)[1].split()[1])
    os.kill(zygote, signal.SIGKILL)
hpo.report_final_result(1)
"""
    exp = make_experiment(body, max_trial_number=4, trial_concurrency=1,
                          training_service=one_host(tmp_path, a, keys),
                          trial_warm_start=True, trial_preload=["preloaded"])
    (exp.config.trial_code_directory / "preloaded.py").write_text(WARM_MODULE)
    with caplog.at_level("WARNING", logger="hpo.remote"):
        assert exp.run(port=0) is True
    assert [t["status"] for t in exp.list_trial_jobs()] == ["SUCCEEDED"] * 4
    assert len((remote / "imports.txt").read_text().split()) == 2  # two zygotes, no trial imported it itself
    assert not [r for r in caplog.records if "start cold" in r.getMessage()]
    assert_none_left(str(remote))
