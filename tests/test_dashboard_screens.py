"""What a new user sees in the first hour, in a real browser (headless Chromium driven by Playwright) at the
common laptop sizes: every parameter of a six-parameter experiment in view, unclipped, on the trials page and in
the overview's top trials; full status names; the best trial marked; failure messages; a legend that says what
each colour is; failed trials on the metric chart and a time axis; a compact importance card that comes
quickly; logs that say when they are empty; the failure reason in red; one name per tuner; honest trial counts."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from browser_support import CONTROLLED_TRIAL, SETTLED, chromium_path, open_page, serve_app, wait_js
from conftest import PY, ROOT, wait_until, write_script
from hpo import Experiment

CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="no Chromium: apt-get install chromium")

SIZES = pytest.mark.parametrize("size", [(1280, 800), (1440, 900)], ids=["1280x800", "1440x900"])
SIX_SPACE = {
    "learning_rate": {"_type": "loguniform", "_value": [1e-5, 1e-1]},
    "batch_size": {"_type": "choice", "_value": [16, 32, 64, 128, 256]},
    "dropout": {"_type": "uniform", "_value": [0, 0.5]},
    "optimizer": {"_type": "choice", "_value": ["adam", "sgd", "rmsprop"]},
    "num_layers": {"_type": "randint", "_value": [1, 9]},
    "weight_decay": {"_type": "loguniform", "_value": [1e-6, 1e-2]},
}
# One trial at a time, each doing what its number says: #3 starts far worse than #1 and #2 (the median-stop
# assessor stops it), #4 fails, #5 says nothing and reports nothing, #6 is the best (minimize), #7-#10 close.
SIX_TRIAL = """
import sys, time
import hpo
hpo.get_next_parameter()
seq = hpo.get_sequence_id()
if seq == 3:
    hpo.report_intermediate_result(5.0)
    time.sleep(30)
if seq == 4:
    print("loading data", flush=True)
    print("Traceback (most recent call last):", file=sys.stderr)
    print("RuntimeError: CUDA out of memory", file=sys.stderr, flush=True)
    sys.exit(1)
if seq == 5:
    sys.exit(0)
value = {1: 0.5, 2: 0.45, 6: 0.2}.get(seq, 0.24 - seq / 400)  # each better than the median before it
print("epoch 1", flush=True)
hpo.report_intermediate_result(value)
hpo.report_final_result(value)
"""
QUICK_TRIAL = "import hpo\np = hpo.get_next_parameter()\nhpo.report_final_result(p['x'])\n"

# For each element of a selector: its box, whether it lies inside the scroll container (less its scroll bar)
# and the window, and whether its text is clipped (the cell, or the text element in it, overflows).
BOXES = """([selector, container]) => {
  const box = document.querySelector(container);
  const c = box.getBoundingClientRect();
  const right = Math.min(c.left + box.clientLeft + box.clientWidth, window.innerWidth);
  return [...document.querySelectorAll(selector)].map((el) => {
    const r = el.getBoundingClientRect();
    const inner = el.firstElementChild;
    return { text: el.textContent, left: r.left, right: r.right, inside: r.left >= c.left - 0.5 && r.right <= right + 0.5,
      clipped: el.scrollWidth > el.clientWidth || (!!inner && inner.scrollWidth > inner.clientWidth) };
  });
}"""
# An ECharts point of a series, as the page coordinates of its pixel, and its data.
POINT = """([testid, series]) => {
  const el = document.querySelector(`[data-testid=${testid}]`);
  const chart = echarts.getInstanceByDom(el);
  const s = chart.getOption().series.find((x) => x.id === series);
  const d = s.data[0];
  const [x, y] = chart.convertToPixel({ seriesId: series }, [d[0], d[1]]);
  const r = el.getBoundingClientRect();
  return { x: r.left + x, y: r.top + y, data: [d[0], d[1]], xAxis: chart.getOption().xAxis[0].type, color: s.itemStyle.color };
}"""


@pytest.fixture(scope="module")
def six(tmp_path_factory) -> Experiment:
    """A finished six-parameter experiment (10 trials, minimize): succeeded, early-stopped, failed, without result."""
    tmp = tmp_path_factory.mktemp("six")
    write_script(tmp / "code", "trial.py", SIX_TRIAL)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPO_HOME", str(tmp / "home"))
        exp = Experiment("random", "local")
        exp.config.tuner.class_args = {"optimize_mode": "minimize"}
        exp.config.assessor = {"name": "Medianstop", "class_args": {"optimize_mode": "minimize", "start_step": 1}}
        exp.config.search_space = SIX_SPACE
        exp.config.trial_command = f"{PY} trial.py"
        exp.config.trial_code_directory = tmp / "code"
        exp.config.trial_concurrency = 1
        exp.config.max_trial_number = 10
        assert exp.run(port=0)
    by_seq = {t["seq"]: t for t in exp.list_trial_jobs()}
    assert [by_seq[s]["status"] for s in (3, 4, 5, 6)] == ["EARLY_STOPPED", "FAILED", "SUCCEEDED", "SUCCEEDED"]
    exp.by_seq = by_seq  # type: ignore[attr-defined]
    return exp


@pytest.fixture
def viewer(six, browser):
    """Opens a page of the six-parameter experiment, served read-only, at a window size."""
    pages = []
    with serve_app(Path(six.directory)) as base:
        def open_at(path: str, size: tuple[int, int] = (1280, 800)):
            page = open_page(browser, *size)
            pages.append(page)
            page.goto(f"{base}/{path}")
            return page
        yield open_at
        for page in pages:
            assert not page.errors, page.errors
            page.context.close()


def boxes(page, selector: str, container: str) -> list[dict]:
    found = page.evaluate(BOXES, [selector, container])
    assert found, f"nothing matches {selector}"
    return found


@SIZES
def test_trials_page_shows_every_parameter(six, viewer, size) -> None:
    page = viewer("#/trials", size)
    page.locator(".vt-row[data-id]").nth(9).wait_for()
    page.evaluate(SETTLED)
    assert page.evaluate("document.querySelector('.vt-scroll').scrollLeft") == 0
    for name in SIX_SPACE:  # every parameter's column in view, unclipped, without scrolling sideways
        for cell in boxes(page, f".vt-th[data-col='param.{name}'], .vt-td[data-col='param.{name}']", ".vt-scroll"):
            assert cell["inside"] and not cell["clipped"], (name, cell, size)
    stopped = boxes(page, ".vt-td[data-col=status] .pill[data-status=EARLY_STOPPED]", ".vt-scroll")
    assert [c["text"] for c in stopped] == ["EARLY_STOPPED"] and not stopped[0]["clipped"]
    best = six.best_trial()["id"]
    assert best == six.by_seq[6]["id"]
    assert page.locator("[data-testid=best-marker]").count() == 1
    assert page.locator(f".vt-row[data-id='{best}'] [data-testid=best-marker]").is_visible()
    # a trial failed: the message column is there and says why
    failed = six.by_seq[4]["id"]
    assert page.locator(".vt-th[data-col=message]").count() == 1
    assert page.locator(f".vt-row[data-id='{failed}'] .vt-td[data-col=message]").inner_text() == "RuntimeError: CUDA out of memory"
    assert page.locator(f".vt-row[data-id='{six.by_seq[5]['id']}'] .vt-td[data-col=message]").inner_text() \
        == "finished without reporting a final result"
    # compact start times (the date is in the tooltip), and no actions column where nothing can be done
    started = page.locator(".vt-row[data-id] .vt-td[data-col=started]").first.inner_text()
    assert re.fullmatch(r"\d\d:\d\d:\d\d|[A-Za-z]{3} \d+,? \d\d:\d\d", started), started
    assert page.locator(".vt-th[data-col=actions]").count() == 0


@SIZES
def test_overview_top_trials_show_every_parameter_and_the_chart_is_above_the_fold(six, viewer, size) -> None:
    page = viewer("#/overview", size)
    page.locator("[data-testid=top-trials] tbody tr").nth(7).wait_for()
    table = "[data-testid=top-trials]"
    names = page.locator(f"{table} th").all_inner_texts()
    assert names == ["#", "value", *SIX_SPACE, "status", "duration"]
    for cell in boxes(page, f"{table} th, {table} td", ".ov-top"):
        assert cell["inside"] and not cell["clipped"], (cell, size)
    first = page.locator(f"{table} tbody tr").first
    assert first.get_attribute("data-id") == six.best_trial()["id"]
    assert first.locator("[data-testid=best-marker]").is_visible()
    # no card alone on a row (nothing to control here: no Controls card), and the chart starts above the fold
    tops = {round(b["y"]) for b in (c.bounding_box() for c in page.locator(".ov-grid > .card").all()) if b}
    assert len(tops) == 1, tops
    chart = page.locator("[data-testid=best-so-far-chart] canvas").first
    chart.wait_for()
    assert chart.bounding_box()["y"] + 150 < size[1]


def test_metric_chart_legend_failed_trials_and_time_axis(six, viewer) -> None:
    page = viewer("#/overview")
    legend = page.locator("[data-testid=metric-legend] .legend-item")
    legend.nth(4).wait_for()
    texts = [" ".join(t.split()) for t in legend.all_inner_texts()]
    assert texts == ["succeeded 7", "early stopped 1", "failed 1", "no result 1", "best so far"]
    # the failed trial is on the chart (in the lane of trials without a value) in its legend entry's colour
    point = page.evaluate(POINT, ["best-so-far-chart", "FAILED-lane"])
    assert point["data"][0] == 4 and point["xAxis"] == "value"
    swatch = page.locator("[data-testid=metric-legend] [data-series=FAILED-lane] .swatch")
    assert swatch.evaluate("(el) => getComputedStyle(el).color") == page.evaluate(
        "(c) => { const el = document.createElement('i'); el.style.color = c; document.body.append(el);"
        " const out = getComputedStyle(el).color; el.remove(); return out; }", point["color"])
    page.mouse.move(point["x"], point["y"])
    tooltip = page.locator("[data-testid=best-so-far-chart] div", has_text=f"trial #4 ({six.by_seq[4]['id']})").last
    tooltip.wait_for()
    assert "failed, no final result" in tooltip.inner_text()
    # the x axis by time: the same trial where it ended
    page.select_option("[data-testid=x-axis]", "time")
    wait_js(page, "echarts.getInstanceByDom(document.querySelector('[data-testid=best-so-far-chart]'))"
                  ".getOption().xAxis[0].type === 'time'")
    point = page.evaluate(POINT, ["best-so-far-chart", "FAILED-lane"])
    assert point["data"][0] == pytest.approx(six.by_seq[4]["ended_at"] * 1000)
    # a legend entry hides its trials
    page.click("[data-testid=metric-legend] [data-series=FAILED-lane]")
    assert page.locator("[data-testid=metric-legend] [data-series=FAILED-lane]").get_attribute("aria-pressed") == "false"
    # the Charts page has the same legend
    page.click("[data-testid=nav-charts]")
    page.locator("[data-testid=chart-history] canvas").first.wait_for()
    assert page.locator("[data-testid=metric-legend] .legend-item").count() == 5


def test_log_says_no_output_and_a_failed_trial_opens_on_stderr(six, viewer) -> None:
    page = viewer(f"#/trial/{six.by_seq[5]['id']}")
    empty = page.locator("[data-testid=log-empty]")
    empty.wait_for()
    assert empty.inner_text() == "No output on stdout." and empty.bounding_box()["height"] < 80
    assert not page.locator("[data-testid=log]").is_visible()
    page.click(".tab[data-stream=stderr]")
    page.locator("[data-testid=log-empty]", has_text="No output on stderr.").wait_for()

    page = viewer(f"#/trial/{six.by_seq[4]['id']}")
    error = page.locator("[data-testid=log] .line", has_text="RuntimeError: CUDA out of memory")
    error.wait_for()
    assert page.locator(".tab[data-stream=stderr]").get_attribute("aria-selected") == "true"
    assert not page.locator("[data-testid=log-empty]").is_visible()
    # in view at once: no empty chart of intermediate results (it reported none) pushes it below the fold
    assert page.locator("[data-testid=no-curve]").is_visible()
    box = error.bounding_box()
    assert box["y"] + box["height"] <= 800, box


def test_importance_is_quick_and_its_card_compact_while_it_is_computed(six, viewer) -> None:
    # the first computation in a fresh interpreter, as in a new `hpo view`: nothing heavy is imported
    probe = ("import sys, time; from webui.queries import Reader; r = Reader(sys.argv[1]); t = time.perf_counter(); "
             "imp = r.importance(False); print(round(time.perf_counter() - t, 3), len(imp['importances']), "
             "sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe, six.directory], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip().split(maxsplit=2)
    print(f"first importance computation: {out[0]} s")
    assert out[1:] == ["6", "[]"] and float(out[0]) < 2.0

    held: list = []
    page = viewer("#/trials")
    page.route("**/api/v1/importance", lambda route: held.append(route))  # answered once the card was looked at
    page.evaluate("location.hash = '#/overview'")
    card = page.locator("[data-testid=importance-card]")
    for name in SIX_SPACE:  # while it is computed: the parameters with empty bars, not a big blank box
        card.locator(".imp-name", has_text=name).wait_for()
    assert card.locator(".note").inner_text() == "computing…"
    height = card.bounding_box()["height"]
    assert height < 28 * len(SIX_SPACE) + 150, height
    wait_until(lambda: held or page.wait_for_timeout(20), 10, what="the importance request")
    held[0].continue_()
    card.locator("canvas").first.wait_for()
    assert card.locator(".note").inner_text().startswith("extremely randomised trees")
    assert not card.locator(".imp-skeleton").is_visible()


def test_live_overview_controls_share_the_first_row_and_actions_show(make_experiment, browser) -> None:
    space = {**{k: v for k, v in SIX_SPACE.items() if k not in ("dropout", "weight_decay")},
             "x": {"_type": "uniform", "_value": [0, 1]}, "mode": {"_type": "choice", "_value": ["ok"]}}
    exp = make_experiment(CONTROLLED_TRIAL, search_space=space, trial_concurrency=2, max_trial_number=2)
    exp.start(port=0)
    page = open_page(browser, 1280, 800)
    try:
        wait_until(lambda: len(exp.list_trial_jobs(status="RUNNING")) == 2, 20, what="2 running trials")
        page.goto(f"http://localhost:{exp.port}/#/overview")
        page.locator("[data-testid=save-config]").wait_for()
        tops = {round(c.bounding_box()["y"]) for c in page.locator(".ov-grid > .card").all()}
        assert page.locator(".ov-grid > .card").count() == 4 and len(tops) == 1, tops
        chart = page.locator("[data-testid=best-so-far-chart]")
        assert chart.bounding_box()["y"] + 150 < 800
        # trials that can be killed: the actions column is there, with a Kill button for each
        page.click("[data-testid=nav-trials]")
        page.locator(".vt-row[data-id] button", has_text="Kill").nth(1).wait_for()
        assert page.locator(".vt-th[data-col=actions]").count() == 1
        assert not page.errors, page.errors
    finally:
        (Path(exp.config.trial_code_directory) / "release").write_text("")
        page.context.close()


def test_experiments_list_one_tuner_name_honest_counts_and_the_failure_in_red(make_experiment, browser) -> None:
    from tuners.tpe import TpeTuner

    broken = make_experiment(tuner="tpe", command=f"{PY} -c 'import no_such_module_for_hpo'",
                             trial_concurrency=1, max_trial_number=20)
    assert broken.run(port=0) is False
    lowered = make_experiment(QUICK_TRIAL, tuner=TpeTuner(optimize_mode="maximize"), trial_concurrency=1,
                              max_trial_number=20)
    lowered.start(port=0)
    wait_until(lambda: len(lowered.list_trial_jobs(status="SUCCEEDED")) >= 3, 30, what="3 finished trials")
    lowered.update_max_trial_number(2)
    assert lowered.wait(30)
    done = len(lowered.list_trial_jobs())
    named = make_experiment(QUICK_TRIAL, tuner="TPE", trial_concurrency=1, max_trial_number=2)
    assert named.run(port=0)
    view = Experiment.view(named.id, port=0, non_blocking=True)
    page = open_page(browser, 1280, 800)
    try:
        page.goto(f"http://127.0.0.1:{view.port}/#/experiments")
        table = page.locator("[data-testid=experiments-table]")
        table.locator(f"tr[data-id='{broken.id}']").wait_for()
        assert table.locator("[data-testid=tuner]").all_inner_texts() == ["TPE", "TPE", "TPE"]
        count = table.locator(f"tr[data-id='{lowered.id}'] [data-testid=trials-count]").inner_text()
        assert done > 2 and count == f"{done}, over the max of 2", count
        reason = page.locator(f"[data-testid=reason-{broken.id}]")
        first, rest = reason.locator(".error-first"), reason.locator("pre")
        assert first.inner_text().startswith("the first 5 trials all failed; the first failure, trial ")
        assert first.evaluate("(el) => [getComputedStyle(el).color, getComputedStyle(el).fontWeight]") == ["rgb(197, 48, 48)", "700"]
        assert "    ModuleNotFoundError: No module named 'no_such_module_for_hpo'" in rest.inner_text()
        # and on its overview
        page.click(f"[data-testid=open-{broken.id}]")
        overview = page.locator("[data-testid=error-reason]")
        overview.wait_for()
        assert overview.locator(".error-first").inner_text().startswith("the first 5 trials all failed")
        assert "No module named 'no_such_module_for_hpo'" in overview.locator("pre").inner_text()
        assert overview.evaluate("(el) => getComputedStyle(el).color") == "rgb(197, 48, 48)"
        assert not page.errors, page.errors
    finally:
        view.stop()
        page.context.close()
