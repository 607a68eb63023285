"""Continuation of promoted configurations (``Tuner.continues_from``), with real trial processes that write
checkpoints: a promoted Hyperband trial restores the checkpoint of the trial that ran its configuration at the
rung before and trains only the additional epochs; a first-rung trial starts fresh; the links survive a resume and
an engine killed while a continued trial runs."""
from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from conftest import wait_until, resume_to_end
from hpo import Experiment
from hpo.storage import ExperimentStore
from tuners.base import Tuner
from tuners.hyperband import HyperbandTuner
from tuners.random_tuner import RandomTuner

SPACE = {"x": {"_type": "uniform", "_value": [0, 1]}, "k": {"_type": "choice", "_value": ["a", "b", "c"]}}
ARGS = {"optimize_mode": "maximize", "seed": 7, "R": 9, "eta": 3}

# Trains epochs start+1 .. TRIAL_BUDGET (start: the epoch of the restored checkpoint), a checkpoint after each.
# With a file "hold" in the code folder, a promoted 9-epoch trial waits after its restore until a file "go" appears.
TRIAL = """
import hpo, json, os, time
p = hpo.get_next_parameter()
prev = hpo.restore_checkpoint()
state = json.loads((prev / "state.json").read_text()) if prev is not None else None
print("RESTORED " + json.dumps(state), flush=True)
here = os.path.dirname(os.path.abspath(__file__))
hold, go = os.path.join(here, "hold"), os.path.join(here, "go")
while state is not None and p["TRIAL_BUDGET"] == 9 and os.path.exists(hold) and not os.path.exists(go):
    time.sleep(0.05)
start = state["epoch"] if state is not None else 0
for epoch in range(start + 1, p["TRIAL_BUDGET"] + 1):
    hpo.report_intermediate_result(p["x"] * epoch)
    with hpo.checkpoint_path({"steps_completed": epoch}) as path:
        (path / "state.json").write_text(json.dumps({"epoch": epoch, "x": p["x"], "k": p["k"],
                                                     "trial": os.environ["HPO_TRIAL_ID"]}))
hpo.report_final_result(p["x"] * p["TRIAL_BUDGET"] + {"a": 0.0, "b": 0.5, "c": 1.0}[p["k"]])
"""


def restored(directory: Path, trial: dict[str, Any]) -> dict[str, Any] | None:
    """What the trial's ``hpo.restore_checkpoint()`` held (None: nothing)."""
    out = (directory / "trials" / trial["id"] / "stdout.log").read_text()
    line = next(line for line in out.splitlines() if line.startswith("RESTORED "))
    return json.loads(line[len("RESTORED "):])


def check_links(directory: Path, trials: list[dict[str, Any]]) -> int:
    """Every trial whose configuration ran before at a smaller resource continues the latest such trial and
    restored that trial's last checkpoint; every other trial started fresh.  Returns how many continued."""
    by_seq = {t["seq"]: t for t in trials}
    continued = 0
    for t in sorted(trials, key=lambda t: t["seq"]):
        if t["status"] != "SUCCEEDED" or t["interrupted"]:
            continue
        config = {k: v for k, v in t["parameters"].items() if k != "TRIAL_BUDGET"}
        earlier = [e for e in by_seq.values() if e["seq"] < t["seq"] and e["status"] == "SUCCEEDED"
                   and {k: v for k, v in e["parameters"].items() if k != "TRIAL_BUDGET"} == config
                   and e["parameters"]["TRIAL_BUDGET"] < t["parameters"]["TRIAL_BUDGET"]]
        state = restored(directory, t)
        if not earlier:
            assert state is None and t["continues"] is None, t
            continue
        parent = max(earlier, key=lambda e: e["seq"])
        origin = by_seq[t["rerun_of"]] if t["rerun_of"] is not None else t
        assert origin["continues"] == parent["seq"], (t, parent)
        assert state == {"epoch": parent["parameters"]["TRIAL_BUDGET"], "x": config["x"], "k": config["k"],
                         "trial": parent["id"]}, (t, parent)
        continued += 1
    return continued


def intermediate_count(exp: Experiment, trial: dict[str, Any]) -> int:
    return len(exp.get_trial_job(trial["id"])["intermediate"])


def test_promoted_trials_continue_from_their_parents_checkpoint_across_a_resume(make_experiment):
    exp = make_experiment(TRIAL, tuner=HyperbandTuner(**ARGS), search_space=SPACE, max_trial_number=12,
                          trial_concurrency=2)
    assert exp.run(port=0) is True
    resumed = Experiment.resume(exp.id, port=0, max_trial_number=22)  # trial 13 continues one of 10-12
    assert resumed.get_status() == "DONE"
    trials = resumed.list_trial_jobs()
    assert len(trials) == 22 and all(t["status"] == "SUCCEEDED" for t in trials)
    assert check_links(exp.directory, trials) == 5  # 3 + 1 promotions in bracket 0, 1 in bracket 1
    for t in trials:  # a continued trial trains only the epochs its parent did not
        parent = next((p for p in trials if p["seq"] == t["continues"]), None)
        start = parent["parameters"]["TRIAL_BUDGET"] if parent is not None else 0
        assert intermediate_count(resumed, t) == t["parameters"]["TRIAL_BUDGET"] - start
    # the resumed tuner knew its parents from the replayed history (the records' parameter_id)
    assert [t for t in trials if t["seq"] > 12 and t["continues"] is not None and t["continues"] <= 12]


def test_without_resume_every_trial_starts_fresh(make_experiment):
    exp = make_experiment(TRIAL, tuner=HyperbandTuner(**{**ARGS, "R": 3}, resume=False), search_space=SPACE,
                          max_trial_number=6)
    assert exp.run(port=0) is True
    trials = exp.list_trial_jobs()
    assert [t["parameters"]["TRIAL_BUDGET"] for t in trials] == [1, 1, 1, 3, 3, 3]
    assert all(t["continues"] is None and restored(exp.directory, t) is None for t in trials)
    assert all(intermediate_count(exp, t) == t["parameters"]["TRIAL_BUDGET"] for t in trials)


def test_an_engine_killed_while_a_continued_trial_runs_resumes_it_from_the_parents_checkpoint(launcher):
    proc, exp_id, directory = launcher(TRIAL, search_space=SPACE, max_trial_number=13, trial_concurrency=1,
                                       tuner={"name": "hyperband", "class_args": ARGS})
    (Path(launcher.tmp_path) / "code" / "hold").write_text("")

    def holding() -> list[dict[str, Any]]:  # trial 13 (rung 2 of bracket 0) has restored and waits
        with ExperimentStore(directory, readonly=True) as store:
            return [t for t in store.trials(status="RUNNING") if t["seq"] == 13 and
                    "RESTORED {" in (directory / "trials" / t["id"] / "stdout.log").read_text()]
    held = wait_until(holding, 90, what="the first 9-epoch trial, holding after its restore")[0]
    assert held["continues"] in (10, 11, 12)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (Path(launcher.tmp_path) / "code" / "go").write_text("")
    resumed = resume_to_end(exp_id, 60)
    trials = resumed.list_trial_jobs()
    rerun = next(t for t in trials if t["rerun_of"] == 13)
    assert rerun["status"] == "SUCCEEDED" and rerun["continues"] is None
    # the re-run has no checkpoint of its own trial to go on from: it goes on from the one trial 13 continued
    assert check_links(directory, trials) == 4
    assert restored(directory, rerun)["trial"] == next(t["id"] for t in trials if t["seq"] == held["continues"])


class _Wrong(RandomTuner):
    """Says that every trial after the first continues a trial that does not exist."""

    def continues_from(self, parameter_id: int) -> int | None:
        return None if parameter_id == 1 else 999


def test_a_tuner_naming_no_earlier_trial_ends_the_experiment_with_a_clear_error(make_experiment):
    exp = make_experiment("import hpo\nhpo.report_final_result(1.0)\n", tuner=_Wrong(seed=1), max_trial_number=3)
    exp.run(port=0)
    assert exp.get_status() == "ERROR"
    message = exp._store().experiment()["message"]
    assert "continues_from" in message and "999" in message and "earlier trial" in message, message
    assert [t["seq"] for t in exp.list_trial_jobs()] == [1]


def test_the_default_is_no_continuation():
    assert Tuner.continues_from(RandomTuner(), 5) is None
    tuner = HyperbandTuner(**ARGS, resume=False)
    tuner.update_search_space(SPACE)
    assert tuner.class_args()["resume"] is False
    assert all(tuner.continues_from(i) is None for i in range(1, 10) if tuner.generate_parameters(i))


def test_the_dashboard_links_a_continued_trial_to_the_trial_it_continues(make_experiment, browser, monkeypatch):
    from browser_support import get_json, open_page

    exp = make_experiment(TRIAL, tuner=HyperbandTuner(**{**ARGS, "R": 3}), search_space=SPACE, max_trial_number=4)
    assert exp.run(port=0) is True
    trials = {t["seq"]: t for t in exp.list_trial_jobs()}
    child = next(t for t in trials.values() if t["continues"] is not None)
    parent, fresh = trials[child["continues"]], trials[1]
    view = Experiment.view(exp.id, port=0, non_blocking=True)
    try:
        base = f"http://127.0.0.1:{view.port}"
        shown = get_json(f"{base}/api/v1/trials/{child['id']}")
        assert (shown["continues"], shown["continues_id"], shown["rerun_of_id"]) == (parent["seq"], parent["id"], None)
        assert get_json(f"{base}/api/v1/trials/{fresh['id']}")["continues"] is None
        page = open_page(browser)
        try:
            page.goto(f"{base}/#/trial/{child['id']}")
            link = page.locator("[data-testid=parent-link]")
            link.wait_for()
            assert link.inner_text() == f"#{parent['seq']} {parent['id']}"
            link.click()
            page.locator("#tb-id").wait_for()
            page.wait_for_url(f"**/#/trial/{parent['id']}")
            assert page.locator("[data-testid=parent-link]").count() == 0  # a first-rung trial continues nothing
            assert not page.errors, page.errors
        finally:
            page.context.close()
    finally:
        view.stop()
