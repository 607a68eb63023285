"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright,
against real experiments with real trial processes.  Screenshots of every page are saved to
``$HPO_TEST_ARTIFACTS`` (default ``<tmp>/hpo-test-artifacts``)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from browser_support import (CONTROLLED_TRIAL, artifacts_dir, chromium_path, open_page, request, serve_app,
                             wait_js)
from conftest import wait_until
from hpo import Experiment
from hpo.storage import ExperimentStore

CHROMIUM = chromium_path()
# CI installs Chromium (.ci/run): there a missing browser is a failure, not a skip
pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="no Chromium: apt-get install chromium")

XSS_NAME = "browser <script>window.__xss=1</script>"
XSS_CHOICE = "<img src=x onerror=window.__xss=2>"
SPACE = {"x": {"_type": "uniform", "_value": [0, 1]}, "mode": {"_type": "choice", "_value": ["ok"]},
         "tag": {"_type": "choice", "_value": [XSS_CHOICE]}}
TRIAL = CONTROLLED_TRIAL.replace('print("started", p, flush=True)',
                                 'print("started <script>window.__xss=3</script>", p, flush=True)')


@pytest.fixture
def page(browser):
    pg = open_page(browser)
    yield pg
    pg.context.close()


def shot(pg, name: str) -> None:
    pg.wait_for_timeout(150)
    pg.screenshot(path=str(artifacts_dir() / f"{name}.png"), full_page=True)


def running(exp: Experiment) -> list[dict]:
    return exp.list_trial_jobs(status="RUNNING")


def test_live_experiment_in_the_browser(make_experiment, page) -> None:
    exp = make_experiment(TRIAL, search_space=SPACE, trial_concurrency=1, max_trial_number=6,
                          experiment_name=XSS_NAME)
    exp.start(port=0)
    url = f"http://localhost:{exp.port}/"
    try:
        wait_until(lambda: running(exp), 10, what="the first trial")
        # -- overview loads, live ---------------------------------------------------------------
        t0 = time.monotonic()
        page.goto(url + "#/overview")
        page.get_by_text(XSS_NAME, exact=True).first.wait_for()
        page.locator("#live-label", has_text="live").wait_for()
        page.locator("[data-testid=best-so-far-chart] canvas").wait_for()
        overview_s = time.monotonic() - t0
        assert page.locator("#tb-status .pill").inner_text() == "RUNNING"
        page.evaluate("window.__noReload = true")

        # -- editing concurrency changes how many run -------------------------------------------
        page.fill("[data-testid=edit-trial_concurrency]", "2")
        page.click("[data-testid=save-config]")
        wait_until(lambda: len(running(exp)) == 2, 10, what="2 running trials after editing concurrency")
        assert exp.config.trial_concurrency == 2
        shot(page, "overview")

        # -- trials appear live in the table, without reloading ---------------------------------
        page.click("[data-testid=nav-trials]")
        rows = page.locator(".vt-row[data-id]")
        page.locator(".vt-row .pill", has_text="RUNNING").nth(1).wait_for()
        assert rows.count() == 2
        t1 = time.monotonic()
        status, _, _ = request(f"http://127.0.0.1:{exp.port}/api/v1/experiment", "PATCH", {"trial_concurrency": 3},
                               headers={"Authorization": f"Bearer {(Path(exp.directory) / '.token').read_text()}"})
        assert status == 200
        page.locator(".vt-row .pill", has_text="RUNNING").nth(2).wait_for(timeout=10000)
        live_s = time.monotonic() - t1
        assert rows.count() == 3 and page.evaluate("window.__noReload") is True
        assert page.locator("[data-testid=trial-count]").inner_text().startswith("3 trials")

        # -- killing a trial from the UI ends its process -------------------------------------------
        victim = running(exp)[0]
        pid = ExperimentStore(exp.directory, readonly=True).trial(victim["id"])["pid"]
        assert psutil.pid_exists(pid)
        page.click(f"[data-testid=\"kill-{victim['id']}\"]")
        page.locator(f".vt-row[data-id=\"{victim['id']}\"] .pill", has_text="USER_CANCELED").wait_for(timeout=10000)
        wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 5,
                   what="the killed trial's process to end")
        assert exp.get_trial_job(victim["id"])["status"] == "USER_CANCELED"
        page.locator(".vt-row .pill", has_text="RUNNING").nth(2).wait_for(timeout=10000)  # a new one took the slot

        # -- choose columns, compare selected trials ------------------------------------------------------
        page.click("[data-testid=columns-button]")
        page.locator("[data-testid=column-menu] input[data-col='param.tag']").uncheck()
        assert page.locator(".vt-th[data-col='param.tag']").count() == 0
        assert page.locator(".vt-th[data-col='param.x']").count() == 1
        page.click("[data-testid=columns-button]")
        page.locator(".vt-row[data-id] input[type=checkbox]").nth(0).check()
        page.locator(".vt-row[data-id] input[type=checkbox]").nth(1).check()
        page.click("[data-testid=compare-button]")
        table = page.locator("[data-testid=compare-table]")
        table.wait_for()
        assert table.locator("thead th").count() == 3  # label column + 2 trials
        assert table.locator("tr.differs th", has_text="x").count() == 1  # x differs, highlighted
        page.locator("[data-testid=compare-chart] canvas").wait_for()
        shot(page, "trials")

        # -- trial detail: parameters, curve, live log; everything shown as text -----------------------
        target = running(exp)[0]["id"]
        page.click(f".vt-row[data-id=\"{target}\"] a")
        page.locator("[data-testid=params]").wait_for()
        assert page.locator("[data-testid=params]").get_by_text(XSS_CHOICE, exact=True).count() == 1
        log = page.locator("[data-testid=log]")
        log.get_by_text("started <script>window.__xss=3</script>", exact=False).wait_for()
        first_steps = log.locator(".line", has_text="step").count()
        wait_js(page, f"document.querySelectorAll('[data-testid=log] .line').length > {first_steps + 2}")
        # (the tail follows the running trial)
        page.locator("[data-testid=trial-curve] canvas").wait_for()
        shot(page, "trial")

        # -- charts ---------------------------------------------------------------------------------
        (Path(exp.config.trial_code_directory) / "release").write_text("")  # let trials finish with results
        wait_until(lambda: len(exp.list_trial_jobs(status="SUCCEEDED")) >= 3, 20, what="3 finished trials")
        page.click("[data-testid=nav-charts]")
        for name in ("history", "curves", "parallel", "duration"):
            page.locator(f"[data-testid=chart-{name}] canvas").wait_for()
        wait_js(page, "window.__hpo.ready.charts > 0")
        shot(page, "charts")

        # -- experiments ------------------------------------------------------------------------------
        page.click("[data-testid=nav-experiments]")
        page.locator(f"[data-testid=experiments-table] tr[data-id=\"{exp.id}\"]").wait_for()
        shot(page, "experiments")
        assert page.evaluate("window.__xss") is None
        assert page.evaluate("window.__noReload") is True
        assert not page.errors, page.errors
        print(f"overview interactive {overview_s:.2f} s; new trial shown {live_s:.2f} s after the change")
    finally:
        (Path(exp.config.trial_code_directory) / "release").write_text("")


def test_finished_experiment_opens_read_only(make_experiment, page) -> None:
    quick = "import hpo\np = hpo.get_next_parameter()\nhpo.report_intermediate_result(p['x'])\nhpo.report_final_result(p['x'])\n"
    other = make_experiment(quick, trial_concurrency=2, max_trial_number=3, experiment_name="the other one")
    other.run(port=0)
    exp = make_experiment(quick, trial_concurrency=2, max_trial_number=4, experiment_name="finished")
    exp.run(port=0)
    view = Experiment.view(exp.id, port=0, non_blocking=True)
    try:
        page.goto(f"http://127.0.0.1:{view.port}/#/overview")
        page.locator("[data-testid=read-only]").wait_for()
        page.locator("#live-label", has_text="read-only").wait_for()
        assert page.locator("#tb-status .pill").inner_text() == "DONE"
        page.locator("[data-testid=best-value]").wait_for()
        # nothing can change: no controls (the limits are under Progress)
        assert page.locator("[data-testid=stop-experiment]").count() == 0
        assert page.locator("[data-testid=save-config]").count() == 0
        shot(page, "view-overview")
        page.click("[data-testid=nav-trials]")
        page.locator(".vt-row[data-id]").nth(3).wait_for()
        assert page.locator(".vt-row[data-id]").count() == 4
        assert page.locator("[data-testid=kill-selected]").is_disabled()
        assert page.locator(".vt-row button", has_text="Kill").count() == 0
        # another stored experiment opens read-only from the experiments page
        page.click("[data-testid=nav-experiments]")
        page.click(f"[data-testid=\"open-{other.id}\"]")
        page.locator("#tb-id", has_text=other.id).wait_for()
        page.locator(".tb-banner", has_text="read-only").wait_for()
        page.click("[data-testid=nav-trials]")
        page.locator(".vt-row[data-id]").nth(2).wait_for()
        assert page.locator(".vt-row[data-id]").count() == 3
        shot(page, "view-other-trials")
        assert not page.errors, page.errors
    finally:
        view.stop()
    # on a non-loopback address the page works from the printed ?token= URL (cookie + Bearer), and not without
    with serve_app(Path(exp.directory), token="s3cret", public=True) as base:
        response = page.goto(f"{base}/#/overview")
        assert response.status == 401
        page.goto(f"{base}/?token=s3cret#/trials")
        page.locator(".vt-row[data-id]").nth(3).wait_for()
        assert "token" not in page.url  # taken out of the address bar (and so out of the history)
        page.locator("#live-label", has_text="read-only").wait_for()  # the event stream authenticated too
