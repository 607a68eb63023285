"""Malformed configs are refused in bounded time and memory, with one line (issue 13, item 12).

The risky cases run in a child process under a 2 GiB address-space cap and a timeout, so code
without these limits fails the test (a MemoryError traceback, a hang) instead of taking the
machine down: YAML alias bombs, deep nesting, overflowing numbers, billion-point grids, special
and huge files as ``searchSpaceFile``, and 10,000-parameter spaces.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from hpo.config import ConfigError, ExperimentConfig, load_config_files
from hpo.search_space import MAX_GRID_VALUES, MAX_NESTING, SearchSpaceError, parse_search_space
from tuners import RandomTuner

ROOT = Path(__file__).resolve().parent.parent
MEMORY_CAP = 2 << 30
BASE = "trialCommand: echo hi\ntrialCodeDirectory: .\n"
ONE = "{x: {_type: choice, _value: [1]}}"


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run(tmp_path: Path, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python argv`` in ``tmp_path`` under the memory cap, with its own HPO_HOME."""
    env = {k: v for k, v in os.environ.items() if k != "HPO_DEBUG"}
    env.update(HPO_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=_cap_memory)


def hpo_error(tmp_path: Path, *args: str) -> str:
    """Run a failing ``hpo`` command: exit code 1, one line ``hpo: error: ...``, nothing created."""
    proc = run(tmp_path, "-m", "hpo", *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("hpo: error: "), proc.stderr[-3000:]
    assert not (tmp_path / "home").exists()
    return lines[0]


def api_error(tmp_path: Path, code: str) -> str:
    """Run ``code`` in a capped child; it must raise a ValueError; returns ``Type: message`` (one line)."""
    script = f"try:\n{textwrap.indent(textwrap.dedent(code), '    ')}\nexcept ValueError as e:\n" \
             "    print(type(e).__name__, e, sep=': ')\nelse:\n    print('no error')\n"
    proc = run(tmp_path, "-c", script)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr[-3000:]
    out = proc.stdout.strip()
    assert out != "no error" and "\n" not in out, out
    return out


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def bomb(levels: int = 9) -> str:
    """A flow YAML list whose last item expands to 9**levels strings ("billion laughs") through anchors."""
    items = ["&a0 [" + ", ".join(["lol"] * 9) + "]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def nested_choice(depth: int) -> dict:
    """A choice nested ``depth`` levels deep (each level one option holding the next level)."""
    spec: dict = {"_type": "choice", "_value": [1, 2]}
    for i in range(depth):
        spec = {"_type": "choice", "_value": [{"_name": f"n{i}", "x": spec}]}
    return spec


# -- YAML --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [
    BASE + f"tuner: random\nsearchSpace: {{x: {{_type: choice, _value: {bomb()}}}}}\n",
    f"trialCommand: {bomb()}\ntrialCodeDirectory: .\ntuner: random\nsearchSpace: {ONE}\n",
    BASE + f"tuner: random\nsearchSpace: {ONE}\n"
           f"earlyStopping: [{{metric: m, value: 1, optimization: maximize, policy: {bomb()}}}]\n",
], ids=["search_space", "trial_command", "early_stopping"])
def test_alias_bomb_is_refused_in_any_field(tmp_path, config):
    path = write(tmp_path / "bomb.yml", config)
    for command in (["check", "-f", path], ["create", "--config", path]):
        line = hpo_error(tmp_path, *command)
        assert f"{path}: invalid YAML/JSON at line " in line and "aliases expand to more than 100000 values" in line


def test_alias_bomb_in_search_space_file(tmp_path):
    space = write(tmp_path / "space.yml", f"x: {{_type: choice, _value: {bomb()}}}\n")
    path = write(tmp_path / "exp.yml", BASE + f"tuner: random\nsearchSpaceFile: {space}\n")
    assert f"config.search_space_file: {space}: invalid YAML/JSON at line 1" in hpo_error(tmp_path, "check", "-f", path)
    out = api_error(tmp_path, f"""
        from hpo.config import load_config_files
        load_config_files([{path!r}]).validate_for_start()""")
    assert out.startswith("ConfigError: config.search_space_file: ") and "aliases expand" in out


def test_small_aliases_and_merge_keys_still_load(tmp_path):
    path = write(tmp_path / "exp.yml", BASE + textwrap.dedent("""\
        tuner: &t {name: random, classArgs: {seed: 1}}
        assessor: {<<: *t, name: Medianstop, classArgs: {}}
        searchSpace:
          a: &u {_type: uniform, _value: [0, 1]}
          b: *u
        """))
    config = load_config_files([path])
    assert config.search_space["b"] == config.search_space["a"] and config.assessor.name == "Medianstop"


@pytest.mark.parametrize("config, needle", [
    (BASE + "tuner: &a [*a]\n", "line 3, column 12: alias *a refers to a value that contains it"),
    (BASE + "tuner: " + "[" * 500 + "]" * 500 + "\n", "nested more than 128 levels deep"),
    (BASE + "trialConcurrency: " + "9" * 5000 + "\n", "invalid YAML/JSON: Exceeds the limit"),
], ids=["recursive-alias", "500-deep", "5000-digit-int"])
def test_recursive_deep_or_unconvertible_yaml_is_one_line(tmp_path, config, needle):
    assert needle in hpo_error(tmp_path, "check", "-f", write(tmp_path / "exp.yml", config))


# -- search spaces -----------------------------------------------------------------------------------------
def test_nesting_of_choices_is_capped(tmp_path):
    parse_search_space({"x": nested_choice(MAX_NESTING)})
    with pytest.raises(SearchSpaceError, match=rf"^search_space\.x\[n32\]\.x\[n31\]\..*\.x\[n0\]: nested choices go "
                                               rf"more than {MAX_NESTING} levels deep$"):
        parse_search_space({"x": nested_choice(MAX_NESTING + 1)})
    out = api_error(tmp_path, """
        from hpo.config import ExperimentConfig
        spec = {"_type": "choice", "_value": [1, 2]}
        for i in range(1000):
            spec = {"_type": "choice", "_value": [{"_name": f"n{i}", "x": spec}]}
        ExperimentConfig(search_space={"x": spec})""")
    assert out.startswith("ConfigError: config.search_space: search_space.x[n999].x[n998]")
    assert out.endswith("nested choices go more than 32 levels deep")
    spec = '{"_type": "choice", "_value": [1, 2]}'  # nested_choice(1000) as JSON (json.dumps recurses too deep)
    for i in range(1000):
        spec = f'{{"_type": "choice", "_value": [{{"_name": "n{i}", "x": {spec}}}]}}'
    deep = write(tmp_path / "deep.json", f'{{"trialCommand": "echo", "tuner": "random", '
                                          f'"searchSpace": {{"x": {spec}}}}}')
    assert "nested more than 128 levels deep" in hpo_error(tmp_path, "check", "-f", deep)


def test_spaces_built_from_shared_parts_are_bounded(tmp_path):
    """A Python-made space whose nested options share one sub-space: 2**30 parameters once expanded."""
    out = api_error(tmp_path, """
        from hpo.search_space import parse_search_space
        spec = {"_type": "choice", "_value": [1]}
        for i in range(30):
            spec = {"_type": "choice", "_value": [{"_name": "a", "x": spec}, {"_name": "b", "x": spec}]}
        parse_search_space({"x": spec})""")
    assert out == "SearchSpaceError: search_space: has more than 100000 parameters (nested ones included)"


@pytest.mark.parametrize("spec, needle", [
    ({"_type": "uniform", "_value": [-1e308, 1e308]}, "needs high - low to be a finite float"),
    ({"_type": "quniform", "_value": [0, 1e308, 1e-300]}, "too small for its range"),
    ({"_type": "qloguniform", "_value": [1e-300, 1e300, 1e-300]}, "too small for its range"),
    ({"_type": "randint", "_value": [0, 10 ** 30]}, "within -2**53 and 2**53"),
    ({"_type": "randint", "_value": [-1e300, 0]}, "within -2**53 and 2**53"),
    ({"_type": "uniform", "_value": [0, 10 ** 400]}, "as finite numbers"),
    ({"_type": "normal", "_value": [0, 1e308]}, "needs mu +- 10 sigma to be finite floats"),
    ({"_type": "qnormal", "_value": [0, 1e300, 1e-300]}, "too small for its range"),
    ({"_type": "lognormal", "_value": [0, 100]}, "needs exp(mu + 10 sigma) to be a finite float"),
    ({"_type": "qlognormal", "_value": [700, 1, 1e-300]}, "needs exp(mu + 10 sigma)"),
    ({"_type": "qlognormal", "_value": [600, 1, 1e-300]}, "too small for its range"),
    ({"linspace": [-1e308, 1e308, 5]}, "gives values beyond the float range"),
    ({"logspace": "0:400:3"}, "gives values beyond the float range"),
    ({"geomspace": [1, 1e308, 1e12]}, f"gives more than {MAX_GRID_VALUES} values"),
])
def test_numbers_that_overflow_are_refused(spec, needle):
    with pytest.raises(SearchSpaceError) as info:
        parse_search_space({"x": spec})
    assert str(info.value).startswith("search_space.x: ") and needle in str(info.value), str(info.value)


def test_extreme_but_valid_numbers_sample_finite_points():
    raw = {"u": {"_type": "uniform", "_value": [-8e307, 8e307]},
           "r": {"_type": "randint", "_value": [-2 ** 53, 2 ** 53]},
           "qu": {"_type": "quniform", "_value": [0, 1e300, 1e-7]}, "ln": {"_type": "lognormal", "_value": [0, 70]},
           "qn": {"_type": "qnormal", "_value": [0, 1e290, 1e-10]}}
    space = parse_search_space(raw)
    tuner = RandomTuner(seed=1)
    tuner.update_search_space(space)
    for i in range(200):
        point = tuner.generate_parameters(i)
        assert np.isfinite([float(v) for v in point.values()]).all() and space.contains(point), point


@pytest.mark.parametrize("field, value", [("max_experiment_duration", 10 ** 400), ("max_trial_duration", 10 ** 400),
                                          ("early_stopping", [{"metric": "m", "value": 10 ** 400,
                                                               "optimization": "maximize"}])])
def test_numbers_beyond_floats_in_other_fields_are_one_line(field, value):
    with pytest.raises(ConfigError, match=rf"^config\.{field}(\[0\]\.value)?: got 1000.*, expected "):
        ExperimentConfig(**{field: value})


# -- grids ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tuner, spec, needle", [
    ("random", "{range: '0:1e9:1'}", "search_space.x: range '0:1e9:1' gives more than 1000000 values"),
    ("random", "{_type: linspace, _value: [0, 1, 1000000000]}", "gives more than 1000000 values"),
    ("grid", "{_type: randint, _value: [0, 1000000000]}",
     "config.tuner (grid): parameter 'x' has 1000000000 grid values (randint [0, 1000000000)); "
     "at most 1000000 can be enumerated; or use the 'Logspace' tuner"),
    ("grid", "{_type: quniform, _value: [0, 1000000000, 1]}", "parameter 'x' has 1000000001 grid values"),
])
def test_billion_point_dimensions_are_refused(tmp_path, tuner, spec, needle):
    path = write(tmp_path / "exp.yml", BASE + f"tuner: {tuner}\nsearchSpace: {{x: {spec}}}\n")
    assert needle in hpo_error(tmp_path, "check", "-f", path, "-m")
    assert needle in hpo_error(tmp_path, "create", "--config", path)


def test_billion_point_grids_are_counted_not_listed(tmp_path):
    # a trillion-point grid of small dimensions is fine: counted, never materialised
    space = "".join(f"  d{i}: {{_type: randint, _value: [0, 10]}}\n" for i in range(12))
    out = run(tmp_path, "-m", "hpo", "check", "-m", "-f", write(tmp_path / "grid.yml", BASE + "tuner: grid\n"
                                                                   f"searchSpace:\n{space}"))
    assert out.returncode == 0 and "The matrix-space has 1000000000000 points: 1000000000000 experiments" in out.stdout
    # a billion-value dimension is valid for other tuners; -m describes the space instead of listing it
    path = write(tmp_path / "random.yml", BASE + "tuner: random\n"
                                                 "searchSpace: {x: {_type: randint, _value: [0, 1000000000]}}\n")
    out = run(tmp_path, "-m", "hpo", "check", "-m", "-f", path)
    assert out.returncode == 0 and not out.stderr, out.stderr[-3000:]
    assert "Config valid" in out.stdout and "The search space is too large (parameter 'x' has 1000000000 grid " \
                                            "values" in out.stdout and "x: randint [0, 1000000000)" in out.stdout
    # the helper model-based tuners use to notice a finite space is exhausted treats it as endless
    code = """
        import numpy as np
        from hpo.search_space import parse_search_space
        from tuners.grid import UnseenPoints
        unseen = UnseenPoints(parse_search_space({"x": {"_type": "quniform", "_value": [0, 1e9, 1]}}))
        unseen.add({"x": 5})
        print(unseen.exhausted, unseen.pick(np.random.default_rng(0)), {"x": 5} in unseen)"""
    out = run(tmp_path, "-c", textwrap.dedent(code))
    assert out.stdout == "False None True\n", out.stderr[-3000:]


# -- files -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["device", "fifo", "huge", "directory"])
def test_search_space_file_must_be_a_small_regular_file(tmp_path, kind):
    target = tmp_path / "space.yml"
    if kind == "device":
        target.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(target)  # nobody writes: reading it would block for ever
    elif kind == "huge":
        with open(target, "wb") as fh:
            fh.truncate(100 << 20)  # 100 MiB (sparse)
    else:
        target.mkdir()
    needle = {"device": "is a device; expected a regular file", "fifo": "is a FIFO; expected a regular file",
              "huge": "is 100.0 MiB; expected a file of at most 16 MiB",
              "directory": "is a directory; expected a regular file"}[kind]
    path = write(tmp_path / "exp.yml", BASE + f"tuner: random\nsearchSpaceFile: {target}\n")
    assert f"config.search_space_file: {target}: {needle}" in hpo_error(tmp_path, "check", "-f", path)
    out = api_error(tmp_path, f"""
        from hpo.config import ExperimentConfig
        config = ExperimentConfig(trial_command="echo", tuner="random", search_space_file={str(target)!r})
        config.validate_for_start()""")
    assert out == f"ConfigError: config.search_space_file: {target}: {needle}"


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_config_file_must_be_a_regular_file(tmp_path, kind):
    path = tmp_path / "exp.yml"
    if kind == "device":
        path.symlink_to("/dev/zero")
    else:
        os.mkfifo(path)
    what = {"device": "a device", "fifo": "a FIFO"}[kind]
    assert f"{path}: is {what}; expected a regular file" in hpo_error(tmp_path, "check", "-f", str(path))


# -- 10,000 parameters ---------------------------------------------------------------------------------------
def test_ten_thousand_parameters_validate_in_linear_time(tmp_path):
    space = {f"p{i}": {"_type": "choice", "_value": [1, 2, 3] if i == 0 else [i]} for i in range(10_000)}
    start = time.perf_counter()
    config = ExperimentConfig(trial_command="echo", tuner="grid", search_space=space).validate_for_start()
    api = time.perf_counter() - start
    path = write(tmp_path / "exp.json", json.dumps({"trialCommand": "echo", "tuner": "grid", "searchSpace": space}))
    start = time.perf_counter()
    assert load_config_files([path]).validate_for_start().search_space == config.search_space
    load = time.perf_counter() - start
    start = time.perf_counter()
    out = run(tmp_path, "-m", "hpo", "check", "-m", "-f", path)
    cli = time.perf_counter() - start
    assert out.returncode == 0, out.stderr[-3000:]
    assert "The matrix-space has 3 points: 3 experiments" in out.stdout
    print(f"10,000 parameters: API {api:.2f} s, file {load:.2f} s, `hpo check -m` {cli:.2f} s")
    assert api < 10 and load < 20 and cli < 60  # generous: the machine may be busy
