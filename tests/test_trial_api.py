"""The trial API: standalone mode, a light import path, and one-line errors for bad results."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import hpo
from hpo import trial

ROOT = Path(__file__).resolve().parent.parent


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def test_standalone_mode_outside_an_experiment(tmp_path):
    script = textwrap.dedent("""
        import logging, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
        import hpo
        print("params", hpo.get_next_parameter())
        print("current", hpo.get_current_parameter())
        print("ids", hpo.get_experiment_id(), hpo.get_trial_id(), hpo.get_sequence_id())
        hpo.report_intermediate_result(0.25)
        hpo.report_final_result({"default": 0.9, "loss": 0.1})
        print("done")
    """)
    out = subprocess.run([sys.executable, "-c", script], env=_clean_env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines == ["params None", "current None", "ids STANDALONE STANDALONE 0", "done"]
    assert "HPO_" not in out.stdout  # no stdout report lines outside an experiment
    assert "hpo INFO intermediate result: 0.25" in out.stderr
    assert "hpo INFO final result: {'default': 0.9, 'loss': 0.1}" in out.stderr


def test_standalone_bad_result_still_raises(tmp_path):
    script = "import hpo; hpo.report_final_result('abc')"
    out = subprocess.run([sys.executable, "-c", script], env=_clean_env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("ValueError: report_final_result: expected a number")


HEAVY = ("numpy", "scipy", "aiohttp", "pydantic", "yaml", "psutil", "tqdm", "cloudpickle")


def _imported_modules(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=_clean_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    modules = set()
    for line in out.stderr.splitlines():
        # "import time:       123 |        456 |   package.module"
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                modules.add(name)
    return modules


def test_importing_hpo_is_light():
    modules = _imported_modules("import hpo")
    assert {"hpo", "hpo.trial", "json"} <= modules  # the parse works: these must be there
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], f"`import hpo` pulled in {heavy}"


def test_trial_calls_stay_light():
    """A trial's whole use of the API (not just the import) avoids the engine's dependencies."""
    modules = _imported_modules("import hpo; hpo.get_next_parameter(); hpo.get_trial_id()")
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == []


def test_experiment_is_still_reachable_lazily():
    from hpo.experiment import Experiment

    assert hpo.Experiment is Experiment
    assert hpo.ExperimentConfig().trial_concurrency == 1
    with pytest.raises(AttributeError, match="no attribute 'Experimnet'"):
        hpo.Experimnet  # noqa: B018


@pytest.mark.parametrize("bad, needle", [
    ("abc", "expected a number or a dict with a numeric 'default' key, got 'abc' (str)"),
    ({"loss": 0.3}, "a dict result needs a 'default' key"),
    ({"default": "high"}, "report_final_result['default']: expected a number"),
    (None, "expected a number"),
    (True, "got True (bool)"),
    ([0.1, 0.2], "expected a number"),
])
def test_report_final_result_rejects_non_numbers_in_one_line(bad, needle):
    with pytest.raises(ValueError) as info:
        hpo.report_final_result(bad)
    message = str(info.value)
    assert message.startswith("report_final_result")
    assert needle in message
    assert "\n" not in message
    assert not trial._final_reported


def test_report_intermediate_result_rejects_non_numbers():
    with pytest.raises(ValueError, match=r"^report_intermediate_result: expected a number"):
        hpo.report_intermediate_result("0.5")


def test_numeric_results_are_accepted():
    assert trial.validate_metric(3) == 3
    assert trial.validate_metric(0.5) == 0.5
    assert trial.validate_metric({"default": 1, "acc": "n/a"}) == {"default": 1, "acc": "n/a"}

    class Scalar:  # numpy / torch scalars expose item()
        def item(self):
            return 0.75

    assert trial.validate_metric(Scalar()) == 0.75


@pytest.mark.parametrize("line, expected", [
    ("HPO_FINAL_RESULT=0.93", ("final", 0.93)),
    ("HPO_FINAL_RESULT= {\"default\": 2, \"x\": 1}", ("final", {"default": 2, "x": 1})),
    ("HPO_INTERMEDIATE_RESULT=7", ("intermediate", 7)),
    ("epoch 3: acc=0.5", None),
])
def test_parse_stdout_report(line, expected):
    assert trial.parse_stdout_report(line) == expected


@pytest.mark.parametrize("line, needle", [
    ("HPO_FINAL_RESULT=abc", "HPO_FINAL_RESULT: expected a number or a JSON object, got 'abc'"),
    ("HPO_FINAL_RESULT=\"abc\"", "expected a number"),
    ("HPO_INTERMEDIATE_RESULT={\"acc\": 1}", "'default' key"),
])
def test_parse_stdout_report_rejects_bad_values(line, needle):
    with pytest.raises(ValueError) as info:
        trial.parse_stdout_report(line)
    assert needle in str(info.value)
