"""A user's own tuner: by ``class_name`` + ``code_directory``, and as an installed ``hpo.tuners`` plugin."""
from __future__ import annotations

import textwrap

import pytest

from hpo.config import ConfigError
from hpo.registry import hpo_home

MY_TUNER = '''
from tuners.base import NoMoreTrials, Tuner


class CountingTuner(Tuner):
    """Suggests x = 0.1, 0.2, ... and records what it was told."""

    def __init__(self, optimize_mode="maximize", seed=None, step=0.1):
        super().__init__(optimize_mode, seed)
        self.step, self.told = step, []

    def class_args(self):
        return {**super().class_args(), "step": self.step}

    def generate_parameters(self, parameter_id, **kwargs):
        if parameter_id > 4:
            raise NoMoreTrials("four is enough")
        return {"x": round(self.step * parameter_id, 6)}

    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        self.told.append((parameter_id, value))
'''

TRIAL = """
import hpo
p = hpo.get_next_parameter()
hpo.report_final_result(p["x"] * 10)
"""


def test_class_name_and_code_directory_run_a_users_tuner(tmp_path, make_experiment):
    tuner_dir = tmp_path / "my_tuners"
    tuner_dir.mkdir()
    (tuner_dir / "counting_tuner.py").write_text(textwrap.dedent(MY_TUNER))
    exp = make_experiment(TRIAL, tuner=None, max_trial_number=10)
    exp.config.tuner = {"class_name": "counting_tuner.CountingTuner", "code_directory": str(tuner_dir),
                        "class_args": {"step": 0.25}}
    assert exp.run(port=0)
    assert [t["parameters"]["x"] for t in exp.list_trial_jobs()] == [0.25, 0.5, 0.75, 1.0]
    assert exp.get_experiment_profile()["message"] == "the tuner has nothing left to suggest"


def test_bad_class_name_is_a_one_line_config_error(tmp_path, make_experiment):
    exp = make_experiment(TRIAL, tuner=None)
    exp.config.tuner = {"class_name": "no_such_module.Tuner", "code_directory": str(tmp_path)}
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
        exp.start(port=0)
    assert exp.id is None  # nothing was created: no experiment folder, no registry entry
    assert not list(hpo_home().glob("*/experiment.db"))


def test_installed_plugin_is_found_by_entry_point(tmp_path, monkeypatch):
    from tuners.registry import known_tuner_names, tuner_class

    site = tmp_path / "site"
    (site / "hpo_counting_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "hpo_counting_plugin-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: hpo-counting-plugin\nVersion: 1.0\n")
    (site / "hpo_counting_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[hpo.tuners]\nCounting = hpo_counting_plugin:CountingTuner\n")
    (site / "hpo_counting_plugin.py").write_text(textwrap.dedent(MY_TUNER))
    monkeypatch.syspath_prepend(str(site))
    assert "Counting" in known_tuner_names()
    cls = tuner_class("counting")  # case-insensitive, like the built-ins
    tuner = cls(step=0.5)
    tuner.update_search_space({"x": {"_type": "uniform", "_value": [0, 5]}})
    assert tuner.generate_parameters(2) == {"x": 1.0}
