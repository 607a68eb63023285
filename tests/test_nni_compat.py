"""Moving from NNI without touching a line, proved with NNI 3.0's own code (tests/nni_support.py builds its venv).

NNI trial scripts run unchanged (with the real ``nni`` in the trial's interpreter, and with hpo's stand-in where
NNI is not installed); NNI's ``Experiment.connect(port)`` drives a running hpo experiment over hpo's NNI REST
subset; tuners and assessors written for NNI run in hpo's engine with NNI loaded there; hpo's own tuners and
assessors speak NNI's types to NNI code.  SSH trials: tests/test_remote.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from conftest import PY, ROOT, wait_until, write_script
from hpo.storage import ExperimentStore
from nni_support import nni_python, nni_site_packages, nni_venv

# NNI's mnist example, reduced to its NNI calls (defaults updated by the tuner's parameters, dict metrics)
MNIST_SHAPE = """
    import json, time
    import nni

    params = {"lr": 0.01, "momentum": 0.5}
    params.update(nni.get_next_parameter())
    accuracy = 0.0
    for epoch in range(3):
        accuracy = params["lr"] * (epoch + 1)
        nni.report_intermediate_result({"default": accuracy, "epoch": epoch})
    nni.report_final_result(accuracy)
    print("IDS " + json.dumps([nni.get_experiment_id(), nni.get_trial_id(), nni.get_sequence_id(),
                               nni.get_current_parameter("lr"), nni.__file__]))
"""
STAND_IN = str(ROOT / "hpo" / "nni_stub" / "nni" / "__init__.py")


@pytest.fixture(scope="session")
def nni_env() -> Path:
    venv = nni_venv()
    if isinstance(venv, str):
        pytest.skip(venv)
    return venv


def run_nni(venv: Path, script: str, *args: str, timeout: float = 120) -> Any:
    """Run ``script`` with NNI's interpreter; its last stdout line is JSON."""
    done = subprocess.run([nni_python(venv), "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_mnist_trials(exp: Any, expected_nni: str) -> None:
    trials = exp.list_trial_jobs()
    assert [t["status"] for t in trials] == ["SUCCEEDED"] * len(trials), [t["message"] for t in trials]
    for t in trials:
        assert t["final"] == pytest.approx(t["parameters"]["lr"] * 3)
        out = (exp.directory / "trials" / t["id"] / "stdout.log").read_text()
        ids = json.loads(out.split("IDS ", 1)[1].splitlines()[0])
        assert ids[:4] == [exp.id, t["id"], t["seq"], t["parameters"]["lr"]]
        assert Path(ids[4]).resolve() == Path(expected_nni).resolve()
        store = ExperimentStore(exp.directory, readonly=True)
        steps = [m["data"] for m in store.metrics(t["seq"], "intermediate")]
        store.close()
        assert steps == [{"default": pytest.approx(t["parameters"]["lr"] * (e + 1)), "epoch": e} for e in range(3)]


@pytest.mark.parametrize("which", ["real nni", "stand-in"])
def test_nni_trial_runs_unchanged_locally(which, nni_env, make_experiment):
    """The real nni is used where installed (hpo's stand-in, also on the trial's path, does not shadow it);
    without it, ``import nni`` is hpo's stand-in.  Parameters, ids and dict metrics arrive either way."""
    python = nni_python(nni_env) if which == "real nni" else PY
    exp = make_experiment(MNIST_SHAPE, command=f"{python} trial.py", max_trial_number=2, trial_concurrency=2,
                          search_space={"lr": {"_type": "uniform", "_value": [0.1, 0.9]}})
    assert exp.run(port=0)
    real = nni_site_packages(nni_env) + "/nni/__init__.py"
    check_mnist_trials(exp, real if which == "real nni" else STAND_IN)


CLIENT = """
    import json, sys
    from nni.experiment import Experiment

    exp = Experiment.connect(int(sys.argv[1]))
    jobs = exp.list_trial_jobs()
    running = [j.trialJobId for j in jobs if j.status == "RUNNING"]
    out = {
        "id": exp.id, "status": exp.get_status(), "pid": exp._proc.pid if exp._proc else None,
        "jobs": [[j.trialJobId, j.sequenceId, j.status, j.hyperParameters[0].parameters,
                  [m.data for m in j.finalMetricData]] for j in jobs],
        "one": exp.get_trial_job(jobs[0].trialJobId).trialJobId,
        "statistics": exp.get_job_statistics(),
        "metrics": {k: [[m.type, m.sequence, m.data] for m in v] for k, v in exp.get_job_metrics().items()},
        "metrics_one": [m.data for m in exp.get_job_metrics(jobs[0].trialJobId)[jobs[0].trialJobId]],
        "export": [[r.trialJobId, r.parameter, r.value] for r in exp.export_data()],
        "killed": running[0],
    }
    exp.update_trial_concurrency(3)
    exp.update_max_trial_number(40)
    out["params"] = exp.get_experiment_profile()["params"]
    exp.kill_trial_job(running[0])
    exp.stop()        # sends DELETE /experiment, then waits for the experiment's process to end
    print(json.dumps(out))
"""

SLOW_TRIAL = """
    import time
    import nni
    p = nni.get_next_parameter()
    for step in range(3):
        nni.report_intermediate_result(p["x"] + step)
        time.sleep(0.1)
    if nni.get_sequence_id() % 2:  # odd trials linger: there is always a running one and a finished one
        time.sleep(60)
    nni.report_final_result({"default": p["x"] * 10, "extra": 1})
"""


def test_nni_client_connects_and_drives_a_running_experiment(nni_env, make_experiment):
    exp = make_experiment(SLOW_TRIAL, max_trial_number=30, trial_concurrency=2)
    exp.start(port=0)
    wait_until(lambda: any(t["status"] == "SUCCEEDED" for t in exp.list_trial_jobs())
               and any(t["status"] == "RUNNING" for t in exp.list_trial_jobs()), 60, what="a finished and a running trial")
    out = run_nni(nni_env, CLIENT, str(exp.port))
    assert exp.wait(30) and exp.get_status() == "STOPPED"
    assert out["id"] == exp.id and out["status"] == "RUNNING"
    assert out["pid"] is not None and not psutil.pid_exists(out["pid"])  # the stand-in process ended with it
    ours = {t["id"]: t for t in exp.list_trial_jobs()}
    for tid, seq, status, params, finals in out["jobs"]:
        assert seq == ours[tid]["seq"] and params == ours[tid]["parameters"]
        assert finals == ([] if ours[tid]["final"] is None else [{"default": params["x"] * 10, "extra": 1}])
    assert out["one"] == out["jobs"][0][0]
    seen = {s["trialJobStatus"]: s["trialJobNumber"] for s in out["statistics"]}
    assert sum(seen.values()) == len(out["jobs"]) and seen.get("RUNNING", 0) >= 1
    first = out["jobs"][0]
    x = first[3]["x"]
    assert out["metrics"][first[0]][:3] == [["PERIODICAL", s, pytest.approx(x + s)] for s in range(3)]
    assert out["metrics_one"][:3] == [pytest.approx(x + s) for s in range(3)]
    assert sorted(out["export"]) == sorted([t["id"], t["parameters"], t["final"]] for t in ours.values()
                                           if t["final"] is not None and t["id"] in {j[0] for j in out["jobs"]})
    assert out["params"]["trialConcurrency"] == 3 and out["params"]["maxTrialNumber"] == 40
    assert exp.config.trial_concurrency == 3 and exp.config.max_trial_number == 40
    assert ours[out["killed"]]["status"] == "USER_CANCELED"


def test_nni_routes_refuse_browsers_and_are_loopback_only(nni_env, make_experiment):
    """Token-less changes through NNI's routes come only from loopback clients that are no web page (no Origin;
    the dashboard's own page, same-origin, may as it may on the rest of the API)."""
    exp = make_experiment(SLOW_TRIAL, max_trial_number=2, trial_concurrency=1)
    exp.start(port=0)
    base = f"http://127.0.0.1:{exp.port}/api/v1/nni"
    assert requests.get(f"{base}/check-status", timeout=10).json()["status"] in ("INITIALIZED", "RUNNING")
    evil = requests.delete(f"{base}/experiment", headers={"Origin": "http://evil.example"}, timeout=10)
    assert evil.status_code == 401
    assert exp.get_status() == "RUNNING"
    rebound = requests.get(f"{base}/check-status", headers={"Host": "attacker.example"}, timeout=10)
    assert rebound.status_code == 403
    bad = requests.put(f"{base}/experiment?update_type=TRIAL_CONCURRENCY", json={"params": {"trialConcurrency": 0}},
                       timeout=10)
    assert bad.status_code == 400 and "trial_concurrency" in bad.text and "\n" not in bad.text.strip()
    assert requests.delete(f"{base}/trial-jobs/nope", timeout=10).status_code == 404
    assert requests.delete(f"{base}/experiment", timeout=10).status_code == 200
    assert exp.wait(30) and exp.get_status() == "STOPPED"


PAIRING_TRIAL = """
    import nni
    p = nni.get_next_parameter()
    nni.report_final_result(p["x"] * 1000 + p["y"])
"""
PAIRING_CLIENT = """
    import json, sys
    from nni.experiment import Experiment
    exp = Experiment.connect(int(sys.argv[1]))
    jobs = {j.trialJobId: j for j in exp.list_trial_jobs()}
    records = exp.export_data()
    bad = [r.trialJobId for r in records
           if r.value != r.parameter["x"] * 1000 + r.parameter["y"]
           or jobs[r.trialJobId].hyperParameters[0].parameters != r.parameter
           or jobs[r.trialJobId].finalMetricData[0].data != r.value]
    print(json.dumps({"checked": len(records), "mismatches": bad, "status": exp.get_status(),
                      "statistics": exp.get_job_statistics()}))
"""


def test_pairing_through_nni_client_200_trials(nni_env, make_experiment):
    exp = make_experiment(PAIRING_TRIAL, max_trial_number=200, trial_concurrency=2,
                          search_space={"x": {"_type": "uniform", "_value": [0, 1]},
                                        "y": {"_type": "choice", "_value": [1, 2, 3]}})
    exp.start(port=0)
    assert exp.wait(240)
    out = run_nni(nni_env, PAIRING_CLIENT, str(exp.port))
    assert out == {"checked": 200, "mismatches": [], "status": "DONE",
                   "statistics": [{"trialJobStatus": "SUCCEEDED", "trialJobNumber": 200}]}


NNI_TUNER = """
    import json, os
    import nni
    from nni.assessor import Assessor, AssessResult
    from nni.tuner import Tuner

    class ListTuner(Tuner):
        '''Suggests x from a fixed list, then raises NNI's NoMoreTrialError; logs what it receives.'''
        def __init__(self, points, log):
            self.points, self.log = points, log
        def update_search_space(self, search_space):
            self._write({"space": sorted(search_space)})
        def generate_parameters(self, parameter_id, **kwargs):
            if not self.points:
                raise nni.NoMoreTrialError("list exhausted")
            return {"x": self.points.pop(0)}
        def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
            self._write({"result": [parameters["x"], value, kwargs.get("customized")]})
        def trial_end(self, parameter_id, success, **kwargs):
            self._write({"end": success})
        def _write(self, record):
            with open(self.log, "a") as fh:
                fh.write(json.dumps(record) + "\\n")

    class LowStop(Assessor):
        '''NNI's AssessResult: stop a trial whose latest value is under 0.5 once it has two.'''
        def assess_trial(self, trial_job_id, trial_history):
            if len(trial_history) >= 2 and trial_history[-1] < 0.5:
                return AssessResult.Bad
            return AssessResult.Good
"""
TUNED_TRIAL = """
    import time
    import nni
    x = nni.get_next_parameter()["x"]
    for step in range(4):
        nni.report_intermediate_result(x)
        time.sleep(0.3)
    nni.report_final_result({"default": x, "extra": 1})
"""


def test_nni_tuner_and_assessor_by_class_name(nni_env, tmp_path):
    """NNI loaded in hpo's engine (both installed, as a migrating user has them): an NNI tuner and assessor,
    named by class_name, run unchanged; NoMoreTrialError ends the search, AssessResult.Bad stops trials."""
    code = tmp_path / "code"
    write_script(code, "nni_algos.py", NNI_TUNER)
    write_script(code, "trial.py", TUNED_TRIAL)
    log = tmp_path / "tuner.log"
    config = {"search_space": {"x": {"_type": "uniform", "_value": [0, 1]}}, "trial_command": f"{PY} trial.py",
              "trial_code_directory": str(code), "trial_concurrency": 2, "max_trial_number": 10,
              "tuner": {"class_name": "nni_algos.ListTuner", "code_directory": str(code),
                        "class_args": {"points": [0.9, 0.1, 0.8, 0.2], "log": str(log)}},
              "assessor": {"class_name": "nni_algos.LowStop", "code_directory": str(code)}}
    script = write_script(tmp_path, "engine.py", f"""
        import json, sys
        sys.path.insert(0, {str(ROOT)!r})
        sys.path.append({nni_site_packages(nni_env)!r})
        from hpo import Experiment
        exp = Experiment("local")
        for key, value in json.loads({json.dumps(config)!r}).items():
            setattr(exp.config, key, value)
        exp.run(port=0)
        print(json.dumps([exp.get_status(), exp.list_trial_jobs()]))
    """)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    status, trials = json.loads(done.stdout.strip().splitlines()[-1])
    assert status == "DONE"
    assert {t["parameters"]["x"]: t["status"] for t in trials} == {0.9: "SUCCEEDED", 0.1: "EARLY_STOPPED",
                                                                   0.8: "SUCCEEDED", 0.2: "EARLY_STOPPED"}
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[0] == {"space": ["x"]}
    results = {r["result"][0]: r["result"][1:] for r in records if "result" in r}
    # as NNI's dispatcher gives them: the result as reported; an early-stopped trial's last intermediate value
    assert results == {0.9: [{"default": 0.9, "extra": 1}, False], 0.8: [{"default": 0.8, "extra": 1}, False],
                       0.1: [0.1, False], 0.2: [0.2, False]}
    assert sorted(r["end"] for r in records if "end" in r) == [False, False, True, True]


def test_hpo_tuners_and_assessors_speak_nni_types(nni_env, tmp_path):
    """Code written for NNI catches hpo's NoMoreTrials as NoMoreTrialError and gets NNI's AssessResult."""
    script = write_script(tmp_path, "harness.py", f"""
        import json, sys
        sys.path.insert(0, {str(ROOT)!r})
        sys.path.append({nni_site_packages(nni_env)!r})
        import nni
        from nni.assessor import AssessResult
        from tuners.asha import AshaAssessor
        from tuners.grid import GridTuner
        from tuners.medianstop import MedianstopAssessor
        from tuners.tpe import TpeTuner

        out = {{}}
        for tuner in (GridTuner(), TpeTuner(seed=0)):
            tuner.update_search_space({{"a": {{"_type": "choice", "_value": [1, 2]}}}})
            try:
                for i in range(5):
                    tuner.generate_parameters(i)
                out[type(tuner).__name__] = "never exhausted"
            except nni.NoMoreTrialError as exc:
                out[type(tuner).__name__] = [i, exc.errorinfo == str(exc)]
        median = MedianstopAssessor(optimize_mode="maximize", start_step=1)
        median.assess_trial("a", [1.0, 1.0]); median.trial_end("a", True)
        verdicts = [median.assess_trial("b", [0.0, 0.0]), AshaAssessor(min_steps=1).assess_trial("c", [1.0])]
        out["assessors"] = [isinstance(v, AssessResult) and v.name for v in verdicts]
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"GridTuner": [2, True], "TpeTuner": [2, True], "assessors": ["Bad", "Good"]}


NNI_FIELDS = """
    import dataclasses, json
    from nni.experiment.config import AlgorithmConfig, ExperimentConfig
    from nni.experiment.config.training_services import LocalConfig, RemoteConfig, RemoteMachineConfig
    print(json.dumps({name: [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
                      for name, cls in [("experiment", ExperimentConfig), ("local", LocalConfig),
                                        ("remote", RemoteConfig), ("machine", RemoteMachineConfig),
                                        ("algorithm", AlgorithmConfig)]}))
"""
SAMPLES = {"experiment_name": "e", "experiment_type": "hpo", "search_space_file": None, "trial_gpu_number": 0,
           "max_experiment_duration": "1h", "max_trial_number": 3, "max_trial_duration": "10m",
           "nni_manager_ip": "10.0.0.1", "use_annotation": True, "debug": True, "log_level": "debug",
           "experiment_working_directory": "wd", "tuner_gpu_indices": [0], "tuner": {"name": "tpe"},
           "assessor": {"name": "medianstop"}, "advisor": {"name": "hyperband"}, "shared_storage": {},
           "use_active_gpu": True, "max_trial_number_per_gpu": 2, "gpu_indices": [0], "reuse_mode": True,
           "port": 22, "password": "p", "ssh_key_file": "~/.ssh/id", "ssh_passphrase": "s", "python_path": "python3",
           "name": "tpe", "class_name": "m.C", "code_directory": ".", "class_args": {}}


def test_every_nni_config_field_is_honoured_or_refused_by_name(nni_env, tmp_path):
    """NNI 3.0's own config classes list the fields; each one loads, or is refused in one line naming it."""
    from hpo.config import ConfigError, ExperimentConfig
    fields = run_nni(nni_env, NNI_FIELDS)
    base = {"searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}}, "trialCommand": "python3 t.py",
            "trialCodeDirectory": str(tmp_path), "trialConcurrency": 1}
    machine = {"host": "h", "user": "u", "sshKeyFile": "~/.ssh/id"}
    refused = {}
    for group, names in fields.items():
        for name in names:
            if name in ("search_space", "trial_command", "trial_code_directory", "trial_concurrency", "platform",
                        "host", "user", "machine_list", "training_service"):
                continue
            value, key = SAMPLES[name], _camel(name)  # as NNI's YAML files spell them
            config = {**base, "trainingService": {"platform": "local"}}
            if group == "experiment":
                config[key] = value
            elif group == "local":
                config["trainingService"][key] = value
            elif group == "remote":
                config["trainingService"] = {"platform": "remote", "machineList": [machine], key: value}
            elif group == "machine":
                config["trainingService"] = {"platform": "remote", "machineList": [{**machine, key: value}]}
            else:
                config["tuner"] = {"name": "tpe", "classArgs": {}} if name == "name" else {
                    "className": "m.C", "codeDirectory": str(tmp_path), key: value}
            try:
                ExperimentConfig.from_dict(config)
            except ConfigError as exc:
                assert name in str(exc) or _camel(name) in str(exc), (name, str(exc))
                assert "\n" not in str(exc)
                refused[f"{group}.{name}"] = str(exc)
    # NNI's training-service configs also take the experiment-level trial fields: hpo takes them at the top only
    assert sorted(refused) == ["experiment.advisor", "experiment.debug", "experiment.experiment_type",
                               "experiment.nni_manager_ip", "experiment.shared_storage",
                               "experiment.tuner_gpu_indices", "experiment.use_annotation",
                               "local.debug", "local.nni_manager_ip", "local.trial_gpu_number",
                               "remote.debug", "remote.nni_manager_ip", "remote.trial_gpu_number"], refused


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)
