"""Large experiments, as a user meets them: the benchmark's fast store is what the engine writes; the charts'
data is a sample that keeps the best trial, the worst and the running ones and says how many trials there are;
sorted and filtered trial pages stay right while trials land (kept up to date incrementally, compared with a
fresh reader); `hpo trials` pages; ``export_data()``, ``hpo export`` and the export routes stream with bounded
memory; long intermediate curves are downsampled without losing a spike; the charts page says what it draws."""
from __future__ import annotations

import csv
import io
import json
import os
import random
import sqlite3
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from browser_support import chromium_path, get_json, open_page, request, serve_app, wait_js
from conftest import ROOT
from hpo import Experiment
from hpo.registry import register
from hpo.storage import ExperimentStore, ExportedData

sys.path.insert(0, str(ROOT / "benchmarks"))
import dashboard as bench  # noqa: E402  (benchmarks/dashboard.py: the fast store and the trial lander)

from webui.queries import Reader, downsample_curve  # noqa: E402

TRIAL = """
import sys
import hpo
p = hpo.get_next_parameter()
for step in range(3):
    hpo.report_intermediate_result(p["x"] * (step + 1))
if hpo.get_sequence_id() == 2:
    sys.exit(1)
hpo.report_final_result({"default": p["x"], "loss": 1 - p["x"]})
"""


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """An experiment of 5,000 finished trials x 5 intermediate results (the benchmark's fast store)."""
    directory = tmp_path_factory.mktemp("big") / bench.EXPERIMENT_ID
    bench.build_store(directory, 5000, 5, seed=3)
    return directory


def _copy(directory: Path, to: Path) -> Path:
    """A copy of a store (tests that write to it leave the module's store as it was)."""
    to.mkdir(parents=True)
    src = sqlite3.connect(directory / "experiment.db")
    dst = sqlite3.connect(to / "experiment.db")
    src.backup(dst)
    src.close()
    dst.close()
    return to


# -- the fast store is the engine's ------------------------------------------------------------------------------
def _shape(directory: Path) -> dict[str, object]:
    """What a store holds, values aside: schema, each trial column's type by status, metrics per trial by kind
    and step, the experiment row's types, the event kinds."""
    conn = sqlite3.connect(directory / "experiment.db")
    out: dict[str, object] = {"schema": sorted(conn.execute("SELECT type, name, sql FROM sqlite_master "
                                                            "WHERE name NOT LIKE 'sqlite_%'").fetchall())}
    columns = [r[1] for r in conn.execute("PRAGMA table_info(trials)")]
    types = ", ".join(f"typeof({c})" for c in columns)
    out["trials"] = {st: sorted(set(conn.execute(f"SELECT {types} FROM trials WHERE status=?", (st,)).fetchall()))
                     for (st,) in conn.execute("SELECT DISTINCT status FROM trials")}
    out["metrics"] = sorted(set(conn.execute(
        "SELECT t.status, m.kind, group_concat(m.step), typeof(m.value), typeof(m.data), typeof(m.ts) FROM metrics m "
        "JOIN trials t ON t.seq = m.trial_seq GROUP BY m.trial_seq, m.kind").fetchall()))
    out["metric_data"] = all(json.loads(d) == v or (isinstance(json.loads(d), dict) and json.loads(d)["default"] == v)
                             for v, d in conn.execute("SELECT value, data FROM metrics"))
    out["ids"] = {len(i) for (i,) in conn.execute("SELECT id FROM trials")}
    columns = [r[1] for r in conn.execute("PRAGMA table_info(experiment)") if r[1] != "name"]  # the user's, or none
    out["experiment"] = conn.execute(f"SELECT {', '.join(f'typeof({c})' for c in columns)}, status FROM experiment"
                                     ).fetchall()
    out["events"] = [(k, json.loads(d).get("status")) for k, d in conn.execute("SELECT kind, data FROM events ORDER BY id")]
    conn.close()
    return out


def test_the_fast_store_is_what_the_engine_writes(make_experiment, tmp_path) -> None:
    exp = make_experiment(TRIAL, trial_concurrency=1, max_trial_number=4)
    exp.config.tuner.class_args = {"optimize_mode": "minimize"}
    assert exp.run(port=0) is True
    engine = _shape(Path(exp.directory))
    # the fast path with the same number of trials, the second of which fails part way (as the engine's #2)
    fast_dir = tmp_path / "fast" / bench.EXPERIMENT_ID
    bench.build_store(fast_dir, 4, 3, failures={2})
    fast = _shape(fast_dir)
    assert fast["schema"] == engine["schema"]
    assert fast["trials"] == engine["trials"] and set(fast["trials"]) == {"SUCCEEDED", "FAILED"}
    assert {m[:2] + m[3:] for m in fast["metrics"]} == {m[:2] + m[3:] for m in engine["metrics"]}
    assert {(m[0], m[1], m[2]) for m in engine["metrics"] if m[0] == "SUCCEEDED"} == \
        {("SUCCEEDED", "final", "0"), ("SUCCEEDED", "intermediate", "1,2,3")}
    assert {(m[0], m[1]) for m in fast["metrics"]} == {(m[0], m[1]) for m in engine["metrics"]}
    assert fast["metric_data"] is True and engine["metric_data"] is True
    assert fast["ids"] == engine["ids"] == {5}
    assert fast["experiment"] == engine["experiment"]
    assert fast["events"] == engine["events"]


# -- charts: a sample that keeps what matters -------------------------------------------------------------------
def test_chart_data_is_a_sample_that_keeps_the_best_the_worst_and_the_running(big, tmp_path) -> None:
    directory = _copy(big, tmp_path / "exp")
    with ExperimentStore(directory) as writer:
        seq = writer.next_seq()
        writer.add_trial(seq, "runnn", {"x": 1.0, "y": 2.0, "lr": 0.01, "act": "relu", "depth": 3})
        writer.trial_started(seq, 1, 1, "localhost", [])
    reader = Reader(directory)
    try:
        chart = json.loads(reader.chart_data(maximize=False, points=500))
        store = ExperimentStore(directory, readonly=True)
        best, worst = store.best_trial(False), store.best_trial(True)
        assert chart["sampled"] is True and chart["total"] == 5001 and chart["count"] <= 520
        assert best["id"] in chart["id"] and worst["id"] in chart["id"] and "runnn" in chart["id"]
        assert chart["status"][chart["id"].index("runnn")] == "RUNNING"
        i = chart["id"].index(best["id"])
        assert chart["value"][i] == best["final_value"] and chart["params"]["x"][i] == best["parameters"]["x"]
        assert chart["seq"] == sorted(chart["seq"])
        summary = chart["summary"]
        counts = store.status_counts()
        assert sum(summary["groups"].values()) == counts["SUCCEEDED"] + counts["FAILED"]  # every trial counted
        assert summary["best"]["seq"][-1][1] == best["final_value"]      # the best so far over every trial
        assert sum(b[2] for b in summary["duration_bins"]) == 5000       # every finished trial's duration
        # each stretch of trials keeps its lowest and highest value
        values = dict(store._query("SELECT seq, final_value FROM trials WHERE final_value IS NOT NULL"))
        shown = set(chart["seq"])
        for lo in range(0, 5000, 1000):
            stretch = {s: v for s, v in values.items() if lo < s <= lo + 1000}
            assert min(stretch, key=stretch.get) in shown and max(stretch, key=stretch.get) in shown
        # a new best trial lands: the next chart has it
        with ExperimentStore(directory) as writer:
            writer.add_metric(seq, "final", 0, -1.0, {"default": -1.0})
            writer.trial_ended(seq, "SUCCEEDED", 0, None)
        chart = json.loads(reader.chart_data(maximize=False, points=500))
        i = chart["id"].index("runnn")
        assert chart["status"][i] == "SUCCEEDED" and chart["value"][i] == -1.0
        assert chart["summary"]["best"]["seq"][-1][1] == -1.0
        store.close()
        # small experiments are charted whole, as before
        assert json.loads(reader.chart_data(False, points=20000))["count"] == 5001
    finally:
        reader.close()


def test_the_chart_route_samples_and_curves_are_downsampled(big) -> None:
    with serve_app(big) as base:
        chart = get_json(f"{base}/api/v1/chart-data")
        assert chart["sampled"] is True and chart["total"] == 5000 and chart["count"] <= 2100
        assert len(request(f"{base}/api/v1/chart-data")[2]) < 400_000
        assert get_json(f"{base}/api/v1/chart-data?points=20000")["count"] == 5000
        assert request(f"{base}/api/v1/chart-data?points=5")[0] == 400
    steps = list(range(1, 10001))
    values = [1.0 / s for s in steps]
    values[6000] = 50.0   # a spike
    values[7000] = -50.0  # a dip
    s, v = downsample_curve(steps, values, 500)
    assert len(s) <= 502 and s[0] == 1 and s[-1] == 10000 and s == sorted(s)
    assert 50.0 in v and -50.0 in v and v[s.index(6001)] == 50.0


# -- trial pages stay right while trials land ------------------------------------------------------------------------
QUERIES = [dict(), dict(descending=True, offset=4900), dict(sort="value", descending=True),
           dict(sort="param.lr", offset=2500), dict(sort="param.act", descending=True, offset=1700),
           dict(status=["SUCCEEDED"], filters=["param.x>=0", "param.x<5"], sort="value"),
           dict(filters=["param.act==relu"], sort="param.depth", descending=True), dict(search="tanh", sort="param.y"),
           dict(sort="status", offset=4990), dict(filters=["message~exit"]), dict(sort="duration", descending=True),
           dict(filters=["value<20", "value!=null"], sort="param.x")]


def _page(reader: Reader, q: dict) -> tuple[list[int], int]:
    rows, total = reader.trials_page(limit=30, **q)
    return [r["sequence_id"] for r in rows], total


def test_sorted_and_filtered_pages_stay_right_while_trials_land(big, tmp_path) -> None:
    directory = _copy(big, tmp_path / "exp")
    live = Reader(directory)
    try:
        for q in QUERIES:
            _page(live, q)   # cached orders, now kept up to date incrementally
        writer = ExperimentStore(directory)
        rng = random.Random(5)
        for round_ in range(4):
            for _ in range(3):  # trials landing: added, running, results, ended
                seq = writer.next_seq()
                p = bench._params(rng)
                writer.add_trial(seq, f"n{seq:04d}", p)
                writer.trial_started(seq, 1, 1, "localhost", [])
                writer.add_metric(seq, "intermediate", 1, 5.0, 5.0)
                if rng.random() < 0.7:
                    writer.add_metric(seq, "final", 0, rng.uniform(0, 50), {"default": 1.0})
                    writer.trial_ended(seq, "SUCCEEDED", 0, None)
            if round_ == 2:  # a failed trial re-run: the old one is replaced
                failed = writer.trials(status="FAILED", limit=1)[0]
                writer.add_trial(writer.next_seq(), "rerun", failed["parameters"], rerun_of=failed["seq"])
            fresh = Reader(directory)
            try:
                for q in QUERIES:
                    if q.get("sort") == "duration":
                        continue  # running trials' durations grow between the two reads
                    assert _page(live, q) == _page(fresh, q), q
                # the chart's summary of every trial, kept up to date from the trials that changed
                for maximize in (False, True):
                    a, b = (json.loads(r.chart_data(maximize, points=500)) for r in (live, fresh))
                    assert a["summary"]["groups"] == b["summary"]["groups"]
                    assert a["summary"]["best"] == b["summary"]["best"]
                    assert sum(x[2] for x in a["summary"]["duration_bins"]) == \
                        sum(x[2] for x in b["summary"]["duration_bins"])
                    assert writer.best_trial(maximize)["id"] in a["id"]
                    running = [t["id"] for t in writer.trials(status="RUNNING")]
                    assert set(running) <= set(a["id"]) and a["total"] == b["total"]
                assert live.status_counts() == fresh.status_counts() == writer.status_counts()
                assert live.counted_trials() == writer.counted_trials() == writer._query(
                    "SELECT COUNT(*) FROM trials WHERE interrupted=0")[0][0]
                assert live.best_seq(False) == writer.best_trial(False)["seq"]
            finally:
                fresh.close()
        reader = ExperimentStore(directory, readonly=True)
        counts = reader._query("SELECT status, COUNT(*) FROM trials WHERE interrupted != 2 GROUP BY status")
        assert {k: v for k, v in reader.status_counts().items() if v} == dict(counts)
        assert writer.count_without_result() == reader.count_without_result() == reader._query(
            "SELECT COUNT(*) FROM trials WHERE status='SUCCEEDED' AND final_value IS NULL")[0][0]
        reader.close()
        writer.close()
    finally:
        live.close()


# -- hpo trials pages ---------------------------------------------------------------------------------------------
def _hpo(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HPO_HOME": str(home), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "hpo", *args], env=env, text=True, capture_output=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc


def _seqs(out: str) -> list[int]:
    return [int(line.split()[0]) for line in out.strip().splitlines()[1:]]


def test_hpo_trials_pages(big, hpo_home) -> None:
    register(bench.EXPERIMENT_ID, "big", big)
    first = _hpo(hpo_home, "trials", bench.EXPERIMENT_ID)
    assert _seqs(first.stdout) == list(range(1, 101))  # a page by default, not 5,000 rows
    assert first.stderr.strip() == (f"trials 1-100 of 5000; next: hpo trials {bench.EXPERIMENT_ID} --offset 100 "
                                    "(--limit 0: every trial)")
    page = _hpo(hpo_home, "trials", bench.EXPERIMENT_ID, "--limit", "5", "--offset", "10")
    assert _seqs(page.stdout) == [11, 12, 13, 14, 15] and "trials 11-15 of 5000" in page.stderr
    assert "--offset 15 --limit 5" in page.stderr
    assert _seqs(_hpo(hpo_home, "trials", bench.EXPERIMENT_ID, "--limit", "5", "--page", "3").stdout) == \
        [11, 12, 13, 14, 15]
    last = _hpo(hpo_home, "trials", bench.EXPERIMENT_ID, "--limit", "5", "--desc")
    assert _seqs(last.stdout) == [5000, 4999, 4998, 4997, 4996]
    with ExperimentStore(big, readonly=True) as store:
        best = store.best_trial(False)
        failed = store.count_trials("FAILED")
    by_value = _hpo(hpo_home, "trials", bench.EXPERIMENT_ID, "--sort", "value", "--limit", "3")
    assert _seqs(by_value.stdout)[0] == best["seq"]  # minimize: the lowest first
    failures = _hpo(hpo_home, "trials", bench.EXPERIMENT_ID, "--status", "failed", "--limit", "0")
    assert len(_seqs(failures.stdout)) == failed and failures.stderr == ""
    tail = _hpo(hpo_home, "trials", bench.EXPERIMENT_ID, "--offset", "4990")
    assert _seqs(tail.stdout) == list(range(4991, 5001)) and tail.stderr.strip() == "trials 4991-5000 of 5000"


# -- export streams --------------------------------------------------------------------------------------------------
def test_export_data_streams_with_bounded_memory(big, hpo_home) -> None:
    register(bench.EXPERIMENT_ID, "big", big)
    with ExperimentStore(big, readonly=True) as store:
        everything = store.export_data()
    exported = Experiment.connect(bench.EXPERIMENT_ID).export_data()
    assert isinstance(exported, ExportedData) and len(exported) == len(everything) > 4800
    assert exported[0] == everything[0] and exported[-1] == everything[-1] and exported[100:103] == everything[100:103]
    assert exported == everything and [r["trial_id"] for r in exported][:5] == [r["trial_id"] for r in everything[:5]]
    tracemalloc.start()
    count = sum(1 for _ in ExportedData(big, page=200))
    streamed = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    whole = list(ExportedData(big))
    listed = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == len(whole) == len(everything)
    print(f"export_data of {count} trials: peak {streamed / 1024:.0f} KiB streamed, {listed / 1024:.0f} KiB as a list")
    assert streamed < listed / 4 and streamed < 2 * 2**20
    # hpo export (JSON and CSV) writes what it did before, a page at a time
    out = _hpo(hpo_home, "export", bench.EXPERIMENT_ID, "--format", "json").stdout
    records = json.loads(out)
    assert len(records) == 5000 and out == json.dumps(records, indent=2) + "\n"
    rows = list(csv.DictReader(io.StringIO(_hpo(hpo_home, "export", bench.EXPERIMENT_ID, "--format", "csv").stdout)))
    assert len(rows) == 5000 and {"trial_id", "x", "act", "final.loss"} <= set(rows[0])


def test_export_routes_stream_the_same_records(big) -> None:
    with ExperimentStore(big, readonly=True) as store:
        everything = store.export_data()
    with serve_app(big) as base:
        status, headers, body = request(f"{base}/api/v1/export")
        assert status == 200 and headers.get("Transfer-Encoding") == "chunked"
        assert json.loads(body) == json.loads(json.dumps(everything))
        nni = get_json(f"{base}/api/v1/nni/export-data")
        assert [r["trialJobId"] for r in nni] == [r["trial_id"] for r in everything]
        jobs = get_json(f"{base}/api/v1/nni/trial-jobs")   # pages of 500, one array
        assert [j["sequenceId"] for j in jobs] == list(range(1, 5001))
        assert all("finalMetricData" in j for j in jobs if j["status"] == "SUCCEEDED")
        metrics = get_json(f"{base}/api/v1/nni/metric-data")
        with ExperimentStore(big, readonly=True) as store:
            assert len(metrics) == store._query("SELECT COUNT(*) FROM metrics")[0][0]
        assert get_json(f"{base}/api/v1/nni/trial-jobs/{jobs[7]['trialJobId']}")["sequenceId"] == 8


# -- the charts page says what it draws ---------------------------------------------------------------------------
@pytest.mark.skipif(chromium_path() is None and not os.environ.get("CI"), reason="no Chromium: apt-get install chromium")
def test_charts_page_draws_a_sample_and_counts_every_trial(big, browser) -> None:
    with serve_app(big) as base:
        page = open_page(browser)
        page.goto(f"{base}/#/charts")
        wait_js(page, "window.__hpo && window.__hpo.ready && window.__hpo.ready.charts", 60)
        assert page.locator("[data-testid=sampled-note]").count() == 1
        assert page.locator("[data-testid=sampled-note]").inner_text().endswith("of 5,000 trials drawn")
        with ExperimentStore(big, readonly=True) as store:
            succeeded = store.status_counts()["SUCCEEDED"]
        legend = page.locator("[data-testid=metric-legend] [data-series=SUCCEEDED] b").inner_text()
        assert int(legend.replace(",", "")) == succeeded   # the legend counts every trial, not the sample
        assert not page.errors, page.errors
        page.context.close()
