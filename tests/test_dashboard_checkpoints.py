"""Checkpoints and models in the dashboard, from real experiments (real trial processes writing checkpoints, the
engine's save_* policy deleting some) and a real model registry, in headless Chromium: the trial page's
Checkpoints card, copying a path, the overview's best checkpoint, the Models page, live updates, and the API
behind them (live and read-only view)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from browser_support import chromium_path, get_json, open_page, request, serve_app, wait_js
from conftest import PY, wait_until, write_script
from hpo import Experiment
from hpo.model_registry import ModelRegistry
from hpo.storage import ExperimentStore

pytestmark = pytest.mark.skipif(chromium_path() is None and not os.environ.get("CI"),
                                reason="no Chromium: apt-get install chromium")

# Four epochs, a checkpoint after each; epoch 2 has the best value (maximize), so the defaults (the trial's best and
# its latest) keep epochs 2 and 4 and delete 1 and 3.
EPOCHS = """
import hpo, os
p = hpo.get_next_parameter()
for epoch in range(1, 5):
    hpo.report_intermediate_result(100 + p["x"] if epoch == 2 else p["x"] * epoch)
    with hpo.checkpoint_path({"steps_completed": epoch, "lr": 0.01}) as path:
        (path / "weights.bin").write_bytes(os.urandom(3000))
hpo.report_final_result(p["x"])
"""
# One checkpoint, then (once ``release`` appears) a better one; ends once ``finish`` appears.
GATED = """
import hpo, os, time
hpo.get_next_parameter()
here = os.path.dirname(os.path.abspath(__file__))
def wait(name):
    deadline = time.time() + 30
    while not os.path.exists(os.path.join(here, name)) and time.time() < deadline:
        time.sleep(0.05)
for step, value in ((1, 0.1), (2, 0.9)):
    if step == 2:
        wait("release")
    hpo.report_intermediate_result(value)
    with hpo.checkpoint_path({"steps_completed": step}) as path:
        (path / "w.bin").write_bytes(b"x" * 100 * step)
wait("finish")
hpo.report_final_result(0.9)
"""
CLIPBOARD = ["clipboard-read", "clipboard-write"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[str, Any]:
    """A finished experiment of two trials with four checkpoints each (two kept), an ERROR checkpoint added to
    trial #2, and a model registered on the best checkpoint (plus one of another experiment)."""
    tmp = tmp_path_factory.mktemp("ckpt")
    home = tmp / "home"
    write_script(tmp / "code", "trial.py", EPOCHS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPO_HOME", str(home))
        exp = Experiment("random", "local")
        exp.config.search_space = {"x": {"_type": "uniform", "_value": [0, 1]}}
        exp.config.trial_command = f"{PY} trial.py"
        exp.config.trial_code_directory = tmp / "code"
        exp.config.trial_concurrency = 2
        exp.config.max_trial_number = 2
        assert exp.run(port=0)
        trials = {t["seq"]: t for t in exp.list_trial_jobs()}
        with ExperimentStore(exp.directory) as store:
            store.add_checkpoint("e" * 32, 2, 5, None, None, {"steps_completed": 5}, {}, "s3://bucket/ckpt/eee",
                                 "ERROR", "upload failed: access denied")
            rows = store.checkpoints()
        best = max((r for r in rows if r["state"] == "COMPLETED"), key=lambda r: r["value"])
        with ModelRegistry() as registry:
            registry.create_model("mnist-cnn", description="the digits classifier")
            registry.register_version("mnist-cnn", best["uuid"], experiment_id=exp.id, trial_id=best["trial_id"])
            registry.create_model("elsewhere")
            registry.register_version("elsewhere", "not-a-checkpoint-of-this-experiment")
    return {"exp": exp, "home": home, "trials": trials, "rows": rows, "best": best}


@pytest.fixture
def dashboard(finished, monkeypatch, browser):
    """Serves the finished experiment read-only (HPO_HOME: its own) and opens pages with clipboard access."""
    monkeypatch.setenv("HPO_HOME", str(finished["home"]))
    pages = []
    with serve_app(Path(finished["exp"].directory)) as base:
        def open_at(path: str) -> Any:
            page = open_page(browser)
            page.context.grant_permissions(CLIPBOARD, origin=base)
            pages.append(page)
            page.goto(f"{base}/{path}")
            return page
        open_at.base = base  # type: ignore[attr-defined]
        yield open_at
        for page in pages:
            assert not page.errors, page.errors
            page.context.close()


def test_api_checkpoints_models_and_best_in_view_mode(finished, monkeypatch) -> None:
    exp, trials, best = finished["exp"], finished["trials"], finished["best"]
    monkeypatch.setenv("HPO_HOME", str(finished["home"]))
    view = Experiment.view(exp.id, port=0, non_blocking=True)
    try:
        base = f"http://127.0.0.1:{view.port}/api/v1"
        one = get_json(f"{base}/checkpoints?trial={trials[1]['id']}")
        assert [(c["steps_completed"], c["state"]) for c in one] == [(4, "COMPLETED"), (3, "DELETED"),
                                                                      (2, "COMPLETED"), (1, "DELETED")]
        c = one[0]
        assert c["trial_id"] == trials[1]["id"] and c["trial_seq"] == 1 and c["metadata"] == {"steps_completed": 4,
                                                                                                "lr": 0.01}
        assert c["size"] == sum(c["resources"].values()) and c["resources"]["weights.bin"] == 3000
        assert c["location"] == str(Path(exp.directory) / "checkpoints" / c["uuid"])
        every = get_json(f"{base}/checkpoints")
        assert len(every) == 9 and every[0]["state"] == "ERROR" and every[0]["location"] == "s3://bucket/ckpt/eee"
        assert {x["uuid"] for x in get_json(f"{base}/checkpoints?state=deleted,error")} == \
            {x["uuid"] for x in every if x["state"] != "COMPLETED"}
        assert get_json(f"{base}/experiments/{exp.id}/checkpoints?state=COMPLETED&trial={trials[2]['id']}") == \
            [x for x in every if x["trial_seq"] == 2 and x["state"] == "COMPLETED"]
        for query, status in (("state=KEPT", 400), ("state=", 400), ("trial=../../x", 400), ("trial=nope", 404)):
            code, _, body = request(f"{base}/checkpoints?{query}")
            assert code == status and len(body.decode().strip().splitlines()) == 1, (query, code, body)
        info = get_json(f"{base}/experiment")
        assert info["read_only"] is True and info["best_checkpoint"]["uuid"] == best["uuid"]
        assert info["best_checkpoint"]["steps_completed"] == 2 and info["best_checkpoint"]["value"] > 100
        models = get_json(f"{base}/models")
        assert [(m["name"], m["num_versions"], len(m["versions"])) for m in models] == [("elsewhere", 1, 0),
                                                                                        ("mnist-cnn", 1, 1)]
        version = models[1]["versions"][0]
        assert (version["version"], version["checkpoint_uuid"], version["trial_id"], version["steps_completed"]) == \
            (1, best["uuid"], best["trial_id"], 2)
        doc = get_json(f"{base}/openapi.json")
        for path in ("/api/v1/checkpoints", "/api/v1/models", "/api/v1/experiments/{experiment_id}/checkpoints"):
            assert path in doc["paths"]
        assert "best_checkpoint" in doc["components"]["schemas"]["Experiment"]["properties"]
    finally:
        view.stop()
    # a home without a registry: no models, and no registry file made
    other = finished["home"].parent / "empty-home"
    monkeypatch.setenv("HPO_HOME", str(other))
    with serve_app(Path(exp.directory)) as url:
        assert get_json(f"{url}/api/v1/models") == []
    assert not (other / "models.db").exists()


def test_trial_page_lists_its_checkpoints_and_copies_a_path(finished, dashboard) -> None:
    trials = finished["trials"]
    page = dashboard(f"#/trial/{trials[1]['id']}")
    card = page.locator("[data-testid=checkpoints-card]")
    card.locator("tbody tr").first.wait_for()
    rows = card.locator("tbody tr")
    assert [rows.nth(i).get_attribute("data-state") for i in range(rows.count())] == \
        ["COMPLETED", "DELETED", "COMPLETED", "DELETED"]
    assert [t.strip() for t in card.locator("tbody tr td:first-child").all_inner_texts()] == ["4", "3", "2", "1"]
    first = rows.nth(0)
    assert "KiB" in first.locator("td").nth(2).inner_text() and "lr=0.01" in first.inner_text()
    deleted = rows.nth(1)
    assert float(deleted.locator("td").first.evaluate("(el) => getComputedStyle(el).opacity")) < 1
    assert deleted.locator("[data-testid=copy-path]").count() == 0
    # copy the newest checkpoint's path
    first.locator("[data-testid=copy-path]").click()
    location = str(Path(finished["exp"].directory) / "checkpoints" / first.get_attribute("data-uuid"))
    page.locator(".toast", has_text="Copied path").wait_for()
    assert page.evaluate("() => navigator.clipboard.readText()") == location
    # trial #2: its ERROR checkpoint in red, the reason on hover
    page.goto(f"{dashboard.base}/#/trial/{trials[2]['id']}")
    error = page.locator("[data-testid=checkpoints-card] tr[data-state=ERROR]")
    error.wait_for()
    assert page.locator("[data-testid=checkpoints-card] tbody tr").count() == 5
    cell = error.locator("td").nth(3)
    assert cell.get_attribute("title") == "upload failed: access denied"
    assert cell.evaluate("(el) => getComputedStyle(el).color") == "rgb(197, 48, 48)"


def test_overview_shows_the_best_checkpoint_and_models_page(finished, dashboard) -> None:
    best = finished["best"]
    page = dashboard("#/overview")
    box = page.locator("[data-testid=best-checkpoint]")
    box.wait_for()
    assert box.get_attribute("data-uuid") == best["uuid"]
    assert f"trial #{best['trial_seq']}" in box.inner_text() and "step 2" in box.inner_text()
    box.locator("[data-testid=best-checkpoint-copy]").click()
    page.locator(".toast", has_text="Copied path").wait_for()
    assert page.evaluate("() => navigator.clipboard.readText()") == best["location"]
    assert page.locator(".ov-grid > .card").count() == 4  # inside the Best trial card, not a card of its own
    box.locator("[data-testid=best-checkpoint-trial]").click()
    page.locator(f"[data-testid=checkpoints-card] tr[data-uuid='{best['uuid']}']").wait_for()
    assert page.url.endswith(f"#/trial/{best['trial_id']}")
    # the models page: both models, and the version on this experiment's checkpoint with its trial
    page.click("[data-testid=nav-models]")
    model = page.locator("[data-testid=model][data-name=mnist-cnn]")
    model.wait_for()
    assert page.locator("[data-testid=model]").count() == 2
    assert "the digits classifier" in model.inner_text()
    assert "1 version · 1 from this experiment" in model.locator("[data-testid=model-count]").inner_text()
    row = model.locator("[data-testid=model-versions] tbody tr")
    assert row.count() == 1 and best["uuid"][:8] in row.inner_text()
    row.locator("a").click()
    wait_js(page, f"location.hash === '#/trial/{best['trial_id']}'")
    page.locator("[data-testid=checkpoints-card] tbody tr").first.wait_for()


def test_models_page_empty_state(finished, browser, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HPO_HOME", str(tmp_path / "no-models"))
    with serve_app(Path(finished["exp"].directory)) as base:
        page = open_page(browser)
        try:
            page.goto(f"{base}/#/models")
            assert "No model registered yet" in page.locator("[data-testid=models-empty]").inner_text()
            assert not page.errors, page.errors
        finally:
            page.context.close()


def test_live_checkpoint_events_refresh_the_trial_page_and_the_overview(make_experiment, browser) -> None:
    exp = make_experiment(GATED, trial_concurrency=1, max_trial_number=1)
    exp.start(port=0)
    code = Path(exp.config.trial_code_directory)
    trial_page, overview = open_page(browser), open_page(browser)
    try:
        wait_until(lambda: len(exp._store().checkpoints()) == 1, 20, what="the first checkpoint")
        trial_id = exp.list_trial_jobs()[0]["id"]
        trial_page.goto(f"http://localhost:{exp.port}/#/trial/{trial_id}")
        overview.goto(f"http://localhost:{exp.port}/#/overview")
        rows = trial_page.locator("[data-testid=checkpoints-card] tbody tr")
        rows.first.wait_for()
        assert rows.count() == 1
        assert "step 1" in overview.locator("[data-testid=best-checkpoint]").inner_text()
        (code / "release").write_text("")
        wait_js(trial_page, "document.querySelectorAll('[data-testid=checkpoints-card] tbody tr').length === 2")
        assert rows.first.locator("td").first.inner_text().strip() == "2"
        wait_js(overview, "(document.querySelector('[data-testid=best-checkpoint]') || {}).textContent?.includes('step 2')")
        assert not trial_page.errors and not overview.errors, (trial_page.errors, overview.errors)
    finally:
        (code / "release").write_text("")
        (code / "finish").write_text("")
        trial_page.context.close()
        overview.context.close()
