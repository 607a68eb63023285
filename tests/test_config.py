"""Tests for hpo.config: models, one-line errors, durations, validate_for_start and file loading."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpo.config import (AlgorithmConfig, ConfigError, ExperimentConfig, LocalConfig, load_config_files,
                        parse_duration)
from hpo.search_space import SearchSpaceError, parse_search_space

SPACE = {"lr": {"_type": "loguniform", "_value": [1e-4, 1e-1]}, "batch": {"_type": "choice", "_value": [16, 32]}}


def raises(fn, *args, **kwargs) -> str:
    """Run fn, expect a ConfigError, check its message is one line, return it."""
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "pydantic" not in message.lower(), message
    return message


def assign(obj, name, value):
    setattr(obj, name, value)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def startable(tmp_path: Path, **kwargs) -> ExperimentConfig:
    base = dict(trial_command="python trial.py", trial_code_directory=tmp_path, search_space=SPACE,
                tuner={"name": "TPE"})
    return ExperimentConfig(**{**base, **kwargs})


# ---------------------------------------------------------------------------------------------- defaults


def test_defaults():
    c = ExperimentConfig()
    assert c.trial_concurrency == 1 and c.trial_gpu_number == 0 and c.max_trial_retries == 0
    assert c.trial_code_directory == Path(".") and c.log_level == "info"
    assert c.search_space is None and c.trial_command is None and c.trial_function is None
    assert c.max_trial_number is None and c.max_experiment_duration_seconds is None
    assert c.tuner == AlgorithmConfig() and c.tuner.class_args == {} and c.assessor is None
    assert isinstance(c.training_service, LocalConfig)
    ts = c.training_service
    assert (ts.platform, ts.use_active_gpu, ts.max_trial_number_per_gpu, ts.gpu_indices, ts.reuse_mode) == \
        ("local", False, 1, None, False)
    assert ExperimentConfig().tuner is not c.tuner  # no shared mutable defaults


def test_nni_style_attribute_configuration(tmp_path):
    c = ExperimentConfig()
    c.experiment_name = "test"
    c.trial_concurrency = 2
    c.max_trial_number = 5
    c.search_space = SPACE
    c.trial_command = "python3 mnist.py"
    c.trial_code_directory = tmp_path
    c.training_service.use_active_gpu = True
    c.tuner.name = "Random"
    c.tuner.class_args["optimize_mode"] = "maximize"
    assert c.validate_for_start() is c
    assert c.tuner.name == "Random" and c.training_service.use_active_gpu is True


def test_snake_and_camel_keywords():
    a = ExperimentConfig(trialConcurrency=3, maxTrialNumber=4, trainingService={"useActiveGpu": True})
    b = ExperimentConfig(trial_concurrency=3, max_trial_number=4, training_service={"use_active_gpu": True})
    assert a == b and a.training_service.use_active_gpu is True


def test_string_shorthands():
    c = ExperimentConfig(tuner="TPE", assessor="Medianstop", training_service="local", log_level="DEBUG")
    assert c.tuner.name == "TPE" and c.assessor.name == "Medianstop" and c.log_level == "debug"
    assert isinstance(c.training_service, LocalConfig)


# ---------------------------------------------------------------------------------------------- assignment


def test_assignment_is_validated_and_old_value_kept():
    c = ExperimentConfig(trial_concurrency=4)
    assert raises(assign, c, "trial_concurrency", -1) == "config.trial_concurrency: got -1, expected an integer >= 1"
    assert c.trial_concurrency == 4
    msg = raises(assign, c.training_service, "max_trial_number_per_gpu", 0)
    assert msg.startswith("config.training_service.max_trial_number_per_gpu: got 0")
    assert c.training_service.max_trial_number_per_gpu == 1
    c.search_space = SPACE
    raises(assign, c, "search_space", {"x": {"_type": "uniform", "_value": [1, 0]}})
    assert c.search_space == SPACE


def test_unknown_attribute_suggestions():
    c = ExperimentConfig()
    assert raises(assign, c, "trial_concurency", 2) == \
        "config: unknown key 'trial_concurency'; did you mean 'trial_concurrency'?"
    msg = raises(assign, c.training_service, "use_activ_gpu", True)
    assert msg == "config.training_service: unknown key 'use_activ_gpu'; did you mean 'use_active_gpu'?"
    assert "config.tuner: unknown key 'nmae'; did you mean 'name'?" == raises(assign, c.tuner, "nmae", "TPE")
    assert "did you mean" in raises(assign, c, "max_trial_duration_seconds", 3)  # read-only property
    assert not hasattr(c, "trial_concurency")


def test_unknown_key_on_construction_and_from_dict():
    assert raises(ExperimentConfig, trial_concurency=2) == \
        "config: unknown key 'trial_concurency'; did you mean 'trial_concurrency'?"
    assert "did you mean 'trialConcurrency'?" in raises(ExperimentConfig.from_dict, {"trialConcurency": 2})
    msg = raises(ExperimentConfig, training_service={"use_activ_gpu": True})
    assert msg.startswith("config.training_service: unknown key 'use_activ_gpu'; did you mean 'use_active_gpu'")
    assert raises(ExperimentConfig, tuner={"nam": "TPE"}).startswith("config.tuner: unknown key 'nam'")
    assert "expected one of" in raises(ExperimentConfig, zzzzzz=1)


# ---------------------------------------------------------------------------------------------- bad values

BAD_VALUES = [
    ("experiment_name", 5), ("search_space", [1, 2]), ("search_space_file", 5), ("trial_command", ""),
    ("trial_command", 3), ("trial_function", "not callable"), ("trial_code_directory", None),
    ("trial_concurrency", 0), ("trial_concurrency", "2"), ("trial_concurrency", True), ("trial_concurrency", 1.5),
    ("trial_gpu_number", -1), ("max_experiment_duration", "abc"), ("max_trial_number", 0),
    ("max_trial_duration", "-5m"), ("max_trial_retries", -1), ("experiment_working_directory", 3),
    ("log_level", "verbose"), ("tuner", 5), ("tuner", None), ("assessor", 7), ("training_service", 5),
    ("early_stopping", "accuracy"),
]


@pytest.mark.parametrize("field,value", BAD_VALUES)
def test_bad_value_names_field_on_construction_and_assignment(field, value):
    msg = raises(ExperimentConfig, **{field: value})
    assert msg.startswith(f"config.{field}: "), msg
    assert "got" in msg and "expected" in msg, msg
    c = ExperimentConfig()
    before = getattr(c, field)
    assert raises(assign, c, field, value) == msg
    assert getattr(c, field) == before


NESTED_BAD = [
    ("training_service", "use_active_gpu", "yes"), ("training_service", "max_trial_number_per_gpu", 0),
    ("training_service", "gpu_indices", "a,b"), ("training_service", "reuse_mode", 2),
    ("training_service", "platform", "kubeflow"), ("tuner", "name", 3), ("tuner", "class_name", ""),
    ("tuner", "class_args", 3), ("tuner", "code_directory", 4),
]


@pytest.mark.parametrize("parent,field,value", NESTED_BAD)
def test_nested_bad_value_names_full_path(parent, field, value):
    msg = raises(ExperimentConfig, **{parent: {field: value}})
    assert msg.startswith(f"config.{parent}.{field}: "), msg
    assert repr(value) in msg
    c = ExperimentConfig()
    assert raises(assign, getattr(c, parent), field, value).startswith(f"config.{parent}.{field}: ")


def test_error_reports_first_problem_and_count():
    msg = raises(ExperimentConfig, trial_concurrency=0, trial_gpu_number=-1)
    assert msg == "config.trial_concurrency: got 0, expected an integer >= 1 (and 1 more problem)"


def test_unsupported_platform():
    assert raises(ExperimentConfig, training_service={"platform": "foo"}) == \
        "config.training_service.platform: 'foo' is not supported, expected 'local', 'remote' or 'kubernetes'"
    c = ExperimentConfig()
    assert raises(assign, c, "training_service", "foo") == \
        "config.training_service.platform: 'foo' is not supported, expected 'local', 'remote' or 'kubernetes'"


# ---------------------------------------------------------------------------------------------- durations


@pytest.mark.parametrize("value,seconds", [
    ("30m", 1800), ("2h", 7200), ("1d", 86400), (90, 90), ("1.5h", 5400), ("30s", 30), (0.5, 0.5),
    ("90", 90), (" 10 m ", 600), (None, None)])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds
    c = ExperimentConfig(max_experiment_duration=value, max_trial_duration=value)
    assert c.max_experiment_duration == value  # the given value is kept
    assert c.max_experiment_duration_seconds == seconds and c.max_trial_duration_seconds == seconds


@pytest.mark.parametrize("value", ["abc", "-5m", "5 minutes", "0", 0, -3, True, float("nan"), float("inf"), [1], "1w"])
def test_bad_durations(value):
    assert raises(parse_duration, value).startswith("duration: got ")
    assert raises(ExperimentConfig, max_trial_duration=value).startswith("config.max_trial_duration: got ")
    c = ExperimentConfig(max_experiment_duration="1h")
    raises(assign, c, "max_experiment_duration", value)
    assert c.max_experiment_duration_seconds == 3600


# ---------------------------------------------------------------------------------------------- gpu indices


@pytest.mark.parametrize("value,expected", [
    ("0,1", [0, 1]), ("0, 2", [0, 2]), ("3", [3]), (1, [1]), ([0, 1], [0, 1]), ((2,), [2]), (None, None)])
def test_gpu_indices_forms(value, expected):
    assert LocalConfig(gpu_indices=value).gpu_indices == expected
    assert ExperimentConfig(trainingService={"gpuIndices": value}).training_service.gpu_indices == expected


@pytest.mark.parametrize("value", ["a,b", "", "0,,1", -1, [0, 0], [True], [1.0], True, {"0": 1}])
def test_bad_gpu_indices(value):
    assert raises(LocalConfig, gpu_indices=value).startswith("config.training_service.gpu_indices: got ")


# ---------------------------------------------------------------------------------------------- search space


def test_search_space_is_validated_and_raw_kept():
    c = ExperimentConfig(search_space=SPACE)
    assert c.search_space == SPACE
    bad = {"lr": {"_type": "uniform", "_value": [1, 0]}}
    with pytest.raises(SearchSpaceError) as expected:
        parse_search_space(bad)
    msg = raises(assign, c, "search_space", bad)
    assert msg.startswith("config.search_space: ") and str(expected.value) in msg
    assert c.search_space == SPACE


def test_search_space_object_accepted():
    c = ExperimentConfig(search_space=parse_search_space(SPACE))
    assert c.search_space == SPACE


# ---------------------------------------------------------------------------------------------- early stopping


def test_early_stopping_rules():
    rules = [{"metric": "accuracy", "value": 0.9, "optimization": "maximize"},
             {"kind": "metric_early_stopping", "metric": "loss", "value": 1, "optimization": "minimize"}]
    assert ExperimentConfig(earlyStopping=rules).early_stopping == rules


@pytest.mark.parametrize("rule,where", [
    ({"value": 0.9, "optimization": "maximize"}, "[0].metric: missing"),
    ({"metric": "a", "value": "high", "optimization": "maximize"}, "[0].value: got 'high'"),
    ({"metric": "a", "value": True, "optimization": "maximize"}, "[0].value: got True"),
    ({"metric": "a", "value": 1, "optimization": "max"}, "[0].optimization: got 'max'"),
    ({"metric": "a", "value": 1, "optimisation": "maximize"}, "[0]: unknown key 'optimisation'; did you mean"),
    ("accuracy", "[0]: got 'accuracy'"),
])
def test_bad_early_stopping(rule, where):
    assert raises(ExperimentConfig, early_stopping=[rule]).startswith(f"config.early_stopping{where}")


# ---------------------------------------------------------------------------------------------- validate_for_start


def test_validate_for_start_ok_and_canonicalises(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "code").mkdir()
    c = startable(tmp_path, trial_code_directory="code", experiment_working_directory="work")
    assert c.validate_for_start() is c
    assert c.trial_code_directory == tmp_path / "code" and c.experiment_working_directory == tmp_path / "work"
    assert c.validate_for_start() is c  # idempotent


def test_validate_for_start_needs_exactly_one_trial(tmp_path):
    c = startable(tmp_path, trial_command=None)
    assert raises(c.validate_for_start) == \
        "config: neither trial_command nor trial_function is set; expected exactly one"
    c.trial_function = lambda: None
    c.validate_for_start()
    c.trial_command = "python x.py"
    assert "both trial_command and trial_function" in raises(c.validate_for_start)


def test_validate_for_start_code_directory(tmp_path):
    missing = tmp_path / "nope"
    assert raises(startable(tmp_path, trial_code_directory=missing).validate_for_start) == \
        f"config.trial_code_directory: {str(missing)!r} does not exist"
    afile = write(tmp_path / "f.txt", "x")
    assert "is not a directory" in raises(startable(tmp_path, trial_code_directory=afile).validate_for_start)


def test_validate_for_start_tuner(tmp_path):
    c = startable(tmp_path, tuner={"name": "TPE", "class_name": "my.Tuner"})
    assert raises(c.validate_for_start) == \
        "config.tuner: both name ('TPE') and class_name ('my.Tuner') are set; expected exactly one"
    c = startable(tmp_path, tuner={})
    assert raises(c.validate_for_start).startswith("config.tuner: neither name nor class_name is set")
    c.tuner.class_name = "my.Tuner"
    c.validate_for_start()
    c = startable(tmp_path, assessor={"class_args": {}})
    assert raises(c.validate_for_start).startswith("config.assessor: neither name nor class_name")
    c = startable(tmp_path, tuner={"class_name": "my.Tuner", "code_directory": tmp_path / "nope"})
    assert raises(c.validate_for_start).startswith("config.tuner.code_directory: ")


def test_validate_for_start_needs_search_space(tmp_path):
    c = startable(tmp_path, search_space=None)
    assert "neither search_space nor search_space_file" in raises(c.validate_for_start)


def test_an_empty_search_space_needs_max_trial_number(tmp_path):
    c = startable(tmp_path, search_space={})
    msg = raises(c.validate_for_start)
    assert msg.startswith("config.search_space: is empty and max_trial_number is not set") and "\n" not in msg
    c.max_trial_number = 1
    assert c.validate_for_start().search_space == {}


def test_validate_for_start_rechecks_in_place_edits(tmp_path):
    c = startable(tmp_path, early_stopping=[])
    c.search_space["lr"] = {"_type": "uniform", "_value": [1, 0]}
    assert raises(c.validate_for_start).startswith("config.search_space: search_space.lr: uniform needs low < high")
    c = startable(tmp_path, early_stopping=[])
    c.early_stopping.append({"metric": "acc", "value": 1, "optimization": "up"})
    assert raises(c.validate_for_start).startswith("config.early_stopping[0].optimization: got 'up'")
    c = startable(tmp_path, training_service={"gpu_indices": [0]})
    c.training_service.gpu_indices.append(0)
    assert raises(c.validate_for_start).startswith("config.training_service.gpu_indices: got [0, 0]")


def test_validate_for_start_gpu_count(tmp_path):
    c = startable(tmp_path, trial_gpu_number=2, training_service={"gpu_indices": "0"})
    assert raises(c.validate_for_start).startswith("config.trial_gpu_number: got 2, expected at most 1")


def test_search_space_file_loaded_relative_to_yaml(tmp_path, monkeypatch):
    write(tmp_path / "exp" / "space.json", json.dumps(SPACE))
    (tmp_path / "exp" / "src").mkdir()
    cfg = write(tmp_path / "exp" / "config.yml", "searchSpaceFile: space.json\ntrialCommand: python t.py\n"
                "trialCodeDirectory: src\ntuner: {name: TPE}\n")
    monkeypatch.chdir(tmp_path)  # not the yaml's directory
    c = load_config_files([cfg])
    assert c.search_space_file == tmp_path / "exp" / "space.json"
    assert c.trial_code_directory == tmp_path / "exp" / "src"
    c.validate_for_start()
    assert c.search_space == SPACE and c.search_space_file is None
    c.search_space = {"x": {"_type": "choice", "_value": [1]}}  # e.g. update_search_space after loading
    c.validate_for_start()


def test_search_space_file_errors(tmp_path):
    c = startable(tmp_path, search_space=None, search_space_file=tmp_path / "missing.json")
    msg = raises(c.validate_for_start)
    assert msg.startswith("config.search_space_file: ") and "missing.json" in msg and "does not exist" in msg
    bad = write(tmp_path / "bad.json", json.dumps({"lr": {"_type": "uniform", "_value": [1, 0]}}))
    c.search_space_file = bad
    msg = raises(c.validate_for_start)
    assert str(bad) in msg and "uniform needs low < high" in msg
    broken = write(tmp_path / "broken.yml", "lr: {_type: choice\n")
    c.search_space_file = broken
    assert "line" in raises(c.validate_for_start)
    other = write(tmp_path / "other.json", json.dumps({"x": {"_type": "choice", "_value": [1]}}))
    c = startable(tmp_path, search_space_file=other)  # search_space=SPACE differs from the file
    assert "differ" in raises(c.validate_for_start)


# ---------------------------------------------------------------------------------------------- files

NNI_YAML = """\
experimentName: mnist
searchSpace:
  learningRate: {_type: loguniform, _value: [0.0001, 0.1]}
  batch_size: {_type: choice, _value: [16, 32]}
trialCommand: python3 mnist.py
trialCodeDirectory: .
trialGpuNumber: 0
trialConcurrency: 2
maxExperimentDuration: 1h
maxTrialNumber: 10
tuner:
  name: TPE
  classArgs:
    optimize_mode: maximize
    someCamelArg: 1
trainingService:
  platform: local
  useActiveGpu: false
  gpuIndices: "0,1"
earlyStopping:
  - {metric: accuracy, value: 0.99, optimization: maximize}
"""


def test_nni_v2_yaml_loads(tmp_path):
    path = write(tmp_path / "config.yml", NNI_YAML)
    c = load_config_files([path])
    assert c.experiment_name == "mnist" and c.trial_concurrency == 2 and c.max_trial_number == 10
    assert c.max_experiment_duration_seconds == 3600
    assert set(c.search_space) == {"learningRate", "batch_size"}  # parameter names are user data
    assert c.tuner.name == "TPE" and c.tuner.class_args == {"optimize_mode": "maximize", "someCamelArg": 1}
    assert c.training_service.gpu_indices == [0, 1]
    assert c.trial_code_directory == tmp_path
    assert c.early_stopping == [{"metric": "accuracy", "value": 0.99, "optimization": "maximize"}]
    c.validate_for_start()


def test_json_config_loads(tmp_path):
    path = write(tmp_path / "config.json", json.dumps({"trialConcurrency": 3, "search_space": SPACE}))
    c = load_config_files([str(path)])
    assert c.trial_concurrency == 3 and c.search_space == SPACE
    assert load_config_files(path).trial_concurrency == 3  # a single path is accepted too


def test_two_files_merged_in_order(tmp_path):
    base = write(tmp_path / "base.yml", NNI_YAML)
    override = write(tmp_path / "over" / "override.yaml", """\
trial_concurrency: 8
searchSpace:
  batch_size: {_type: choice, _value: [64]}
tuner:
  classArgs: {optimize_mode: minimize}
trainingService:
  useActiveGpu: true
  gpu_indices: [2]
earlyStopping: []
""")
    c = load_config_files([base, override])
    assert c.trial_concurrency == 8 and c.max_trial_number == 10
    assert c.search_space["batch_size"] == {"_type": "choice", "_value": [64]}
    assert "learningRate" in c.search_space
    assert c.tuner.name == "TPE" and c.tuner.class_args == {"optimize_mode": "minimize", "someCamelArg": 1}
    ts = c.training_service
    assert ts.platform == "local" and ts.use_active_gpu is True and ts.gpu_indices == [2]
    assert c.early_stopping == []  # lists are replaced, not concatenated
    assert load_config_files([override, base]).trial_concurrency == 2  # order matters


def test_paths_resolved_against_the_file_that_sets_them(tmp_path):
    a = write(tmp_path / "a" / "a.yml", "trialCodeDirectory: code\nexperimentWorkingDirectory: ../runs\n")
    b = write(tmp_path / "b" / "b.yml", "tuner: {className: my.Tuner, codeDirectory: tuners}\n"
                                        "searchSpaceFile: space.json\n")
    c = load_config_files([a, b])
    assert c.trial_code_directory == tmp_path / "a" / "code"
    assert c.experiment_working_directory == tmp_path / "runs"
    assert c.tuner.code_directory == tmp_path / "b" / "tuners"
    assert c.search_space_file == tmp_path / "b" / "space.json"
    abs_dir = tmp_path / "abs"
    assert load_config_files([write(tmp_path / "c.yml", f"trialCodeDirectory: {abs_dir}\n")]).trial_code_directory \
        == abs_dir


def test_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.yml"
    assert raises(load_config_files, [missing]) == f"{missing}: file does not exist"
    broken = write(tmp_path / "broken.yml", "trialConcurrency: 2\ntuner: {name: TPE\n")
    msg = raises(load_config_files, [broken])
    assert msg.startswith(f"{broken}: invalid YAML/JSON at line ")
    listing = write(tmp_path / "list.yml", "- a\n- b\n")
    assert raises(load_config_files, [listing]) == f"{listing}: top level is a list; expected a mapping of config keys"
    empty = write(tmp_path / "empty.yml", "# nothing\n")
    assert "top level is empty" in raises(load_config_files, [empty])
    typo = write(tmp_path / "typo.yml", "trialConcurency: 2\n")
    assert raises(load_config_files, [typo]) == \
        f"{typo}: config: unknown key 'trialConcurency'; did you mean 'trialConcurrency'?"
    nested = write(tmp_path / "nested.yml", "trainingService: {useActivGpu: true}\n")
    assert "config.training_service: unknown key 'useActivGpu'; did you mean 'useActiveGpu'?" in \
        raises(load_config_files, [nested])
    bad = write(tmp_path / "bad.yml", "trialConcurrency: -1\n")
    assert raises(load_config_files, [bad]) == f"{bad}: config.trial_concurrency: got -1, expected an integer >= 1"
    platform = write(tmp_path / "platform.yml", "trainingService: {platform: kubeflow}\n")
    assert raises(load_config_files, [platform]).endswith(
        "config.training_service.platform: 'kubeflow' is not supported, expected 'local', 'remote' or 'kubernetes'")
    txt = write(tmp_path / "config.txt", "trialConcurrency: 2\n")
    assert "expected .yml, .yaml or .json" in raises(load_config_files, [txt])
    assert "no config files" in raises(load_config_files, [])


def test_bad_value_in_second_file_names_it(tmp_path):
    good = write(tmp_path / "good.yml", "trialConcurrency: 2\n")
    bad = write(tmp_path / "bad.yml", "maxTrialDuration: soon\n")
    assert raises(load_config_files, [good, bad]).startswith(f"{bad}: config.max_trial_duration: got 'soon'")


def test_duplicate_keys_in_one_file(tmp_path):
    dup = write(tmp_path / "dup.yml", "trialConcurrency: 2\ntrialConcurrency: 3\n")
    msg = raises(load_config_files, [dup])
    assert "duplicate key 'trialConcurrency'" in msg and "line 2" in msg
    both = write(tmp_path / "both.yml", "trialConcurrency: 2\ntrial_concurrency: 3\n")
    assert "both 'trialConcurrency' and 'trial_concurrency'" in raises(load_config_files, [both])


def test_camel_and_snake_collide_across_files(tmp_path):
    a = write(tmp_path / "a.yml", "trialConcurrency: 2\nmaxTrialNumber: 7\n")
    b = write(tmp_path / "b.yml", "trial_concurrency: 5\n")
    c = load_config_files([a, b])
    assert c.trial_concurrency == 5 and c.max_trial_number == 7


# ---------------------------------------------------------------------------------------------- serialisation


def test_to_dict_from_dict_round_trip(tmp_path):
    c = ExperimentConfig(experiment_name="x", search_space=SPACE, trial_command="python t.py",
                         trial_code_directory=tmp_path, trial_concurrency=3, max_experiment_duration="2h",
                         max_trial_duration=90, tuner={"name": "TPE", "class_args": {"optimize_mode": "maximize"}},
                         assessor="Medianstop", training_service={"gpu_indices": "0,1", "use_active_gpu": True},
                         early_stopping=[{"metric": "acc", "value": 0.9, "optimization": "maximize"}],
                         trial_function=lambda: None)
    d = c.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert "trial_function" not in d and d["trial_code_directory"] == str(tmp_path)
    assert d["max_trial_number"] is None and d["search_space_file"] is None  # None fields are kept
    assert d["training_service"]["gpu_indices"] == [0, 1] and d["max_experiment_duration"] == "2h"
    back = ExperimentConfig.from_dict(d)
    assert back.to_dict() == d and back.trial_function is None
    assert back.trial_code_directory == tmp_path and back.max_trial_duration_seconds == 90


def test_from_dict_accepts_camel_case():
    d = {"trialConcurrency": 2, "searchSpace": {"myParam": {"_type": "choice", "_value": [1]}},
         "tuner": {"name": "TPE", "classArgs": {"optimizeMode": "max"}}, "trainingService": {"gpuIndices": [0]}}
    c = ExperimentConfig.from_dict(d)
    assert c.trial_concurrency == 2 and "myParam" in c.search_space and c.tuner.class_args == {"optimizeMode": "max"}
    assert raises(ExperimentConfig.from_dict, {"tuner": {"classArgs": 3}}).startswith("config.tuner.class_args: ")


def test_tuner_name_on_default():
    c = ExperimentConfig()
    c.tuner.name = "Random"
    assert c.tuner.name == "Random" and c.to_dict()["tuner"]["name"] == "Random"
    c.tuner = AlgorithmConfig(class_name="pkg.Tuner")
    assert raises(assign, c.tuner, "class_args", 5).startswith("config.tuner.class_args: got 5")


def test_a_key_given_in_both_spellings_is_one_clear_line():
    with pytest.raises(ConfigError, match=r"^config: 'trialCommand' and 'trial_command' are both given; expected "
                                          r"one of them$"):
        ExperimentConfig.from_dict({"trialCommand": "python a.py", "trial_command": "python b.py"})
    machine = {"host": "a", "sshKeyFile": "k", "ssh_key_file": "k"}
    with pytest.raises(ConfigError, match=r"^config.training_service.machine_list\[0\]: 'sshKeyFile' and "
                                          r"'ssh_key_file' are both given"):
        ExperimentConfig.from_dict({"trainingService": {"platform": "remote", "machineList": [machine]}})
