"""Progress is visible wherever run() is watched: a terminal, a log file or pipe, a notebook."""
from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from conftest import experiment_script, write_script
import hpo.progress

TRIAL = """
import time, hpo
p = hpo.get_next_parameter()
time.sleep(0.4)
hpo.report_final_result(p["x"])
"""


def test_periodic_summaries_when_stderr_is_not_a_terminal(make_experiment, capfd, monkeypatch):
    monkeypatch.setattr(hpo.progress, "LINE_INTERVAL", 0.3)
    exp = make_experiment(TRIAL, trial_concurrency=2, max_trial_number=8)
    assert exp.run(port=0) is True
    err = capfd.readouterr().err
    periodic = [ln for ln in err.splitlines() if ln.startswith(f"hpo: {exp.id}: ")]
    assert len(periodic) >= 3, err
    assert re.fullmatch(rf"hpo: {exp.id}: \d/8, \d succeeded, 0 failed, \d running(, best \S+ \(trial \w{{5}} "
                        r"\(#\d\)\))?, elapsed \d+s(, ETA \d+s)?", periodic[-1]), periodic[-1]
    assert "best" not in periodic[0] or not periodic[0].startswith(f"hpo: {exp.id}: 0/")
    best = exp.best_trial()
    summary = err.strip().splitlines()[-1]
    assert summary == (f"hpo: experiment {exp.id} DONE: 8/8, 8 succeeded, 0 failed, 0 running, "
                       f"best {best['final_value']:.6g} (trial {best['id']} (#{best['seq']}))")


def test_the_total_follows_max_trial_number_when_it_is_updated_during_the_run(make_experiment, capfd):
    import threading
    exp = make_experiment(TRIAL, trial_concurrency=1, max_trial_number=50)
    runner = threading.Thread(target=lambda: exp.run(port=0))
    runner.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            exp.update_max_trial_number(2)
            break
        except Exception:  # not running yet
            time.sleep(0.05)
    runner.join(60)
    summary = capfd.readouterr().err.strip().splitlines()[-1]
    assert summary.startswith(f"hpo: experiment {exp.id} DONE: 2/2, 2 succeeded"), summary


def test_the_summary_of_a_failed_experiment_shows_the_cause(make_experiment, capfd):
    exp = make_experiment("import sys; sys.exit('no such dataset: mnist.npz')", max_trial_number=3)
    assert exp.run(port=0) is False
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-3].startswith(f"hpo: experiment {exp.id} ERROR: 3/3, 0 succeeded, 3 failed")
    assert err[-2].startswith("hpo: all 3 trials failed; the first failure, trial ")
    assert err[-1] == "    no such dataset: mnist.npz"


def test_a_terminal_gets_a_tidy_bar(tmp_path):
    code = tmp_path / "code"
    write_script(code, "trial.py", TRIAL)
    script = experiment_script(tmp_path / "run.py", code, {"trial_concurrency": 2, "max_trial_number": 4},
                               "exp.run(port=0)\n")
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env=dict(os.environ, HPO_HOME=str(tmp_path / "home"), COLUMNS="160"))
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.5)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(10)
    os.close(master)
    text = out.decode("utf-8", "replace")
    frames = [f.strip() for f in re.split(r"[\r\n]", text) if "/4" in f]
    assert frames, text
    assert all(", ," not in f and " ," not in f for f in frames), frames
    assert not [f for f in frames if re.search(r": 0/4 .*best", f)], "a best value while nothing has finished"
    assert any(re.search(r": 4/4 .*4 succeeded, 0 failed, 0 running, best \S+ \(trial \w{5} \(#\d\)\)", f)
               for f in frames), frames


def test_a_notebook_gets_a_widget(tmp_path):
    nbformat = pytest.importorskip("nbformat")  # the test extra installs it (and nbclient, ipykernel, ipywidgets)
    from nbclient import NotebookClient

    code = tmp_path / "code"
    write_script(code, "trial.py", TRIAL)
    cell = experiment_script(tmp_path / "cell.py", code, {"max_trial_number": 3}, "exp.run(port=0)\n").read_text()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    os.environ.setdefault("HPO_HOME", str(tmp_path / "home"))
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[0].outputs
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs), outputs
    assert any("DONE: 3/3, 3 succeeded" in o.get("text", "") for o in outputs), outputs
