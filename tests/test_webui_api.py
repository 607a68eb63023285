"""The dashboard's JSON API against real experiments (real trial processes, real SQLite stores):
reads, sorting/filtering/paging, bulk chart data, logs, server-sent events, actions, security."""
from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path

import psutil
import pytest

from browser_support import CONTROLLED_SPACE, CONTROLLED_TRIAL, SseReader, get_json, request, serve_app
from conftest import wait_until
from hpo import Experiment
from hpo.storage import ExperimentStore

QUICK_TRIAL = """
import sys
import hpo
p = hpo.get_next_parameter()
print("hello <script>alert(1)</script>", flush=True)
for i in range(1, 31):
    print("line", i, flush=True)
for step in range(3):
    hpo.report_intermediate_result(p["x"] * (step + 1))
print("warn", file=sys.stderr, flush=True)
hpo.report_final_result({"default": p["x"], "loss": 1 - p["x"]})
"""
SPACE = {"x": {"_type": "uniform", "_value": [0, 1]}, "act": {"_type": "choice", "_value": ["relu", "tanh"]},
         "lr": {"_type": "loguniform", "_value": [1e-4, 1e-1]}}


def _token(exp: Experiment) -> str:
    return (Path(exp.directory) / ".token").read_text().strip()


@pytest.fixture
def finished(make_experiment):
    """A finished experiment with 10 quick trials (maximize x)."""
    exp = make_experiment(QUICK_TRIAL, search_space=SPACE, trial_concurrency=2, max_trial_number=10,
                          experiment_name="finished <b>one</b>")
    exp.start(port=0)
    assert exp.wait(60)
    return exp


def test_reads_sort_filter_page(finished: Experiment) -> None:
    base = f"http://127.0.0.1:{finished.port}/api/v1"
    exp = get_json(f"{base}/experiment")
    assert exp["status"] == "DONE" and exp["name"] == "finished <b>one</b>"
    assert exp["progress"]["trials_done"] == 10 and exp["progress"]["max_trial_number"] == 10
    assert exp["trial_counts"]["SUCCEEDED"] == 10 and exp["parameter_names"] == ["x", "act", "lr"]
    assert exp["best_trial"]["value"] == max(t["default"] for t in finished.export_data())
    assert exp["metric_keys"] == ["default", "loss"] and exp["maximize"] is True and exp["tuner"] == "random"

    status, headers, body = request(f"{base}/trials?sort=param.x&order=desc&limit=3")
    rows = json.loads(body)
    assert status == 200 and headers["X-Total-Count"] == "10" and len(rows) == 3
    xs = [r["parameters"]["x"] for r in rows]
    assert xs == sorted(xs, reverse=True) and rows[0]["steps"] == 3 and rows[0]["latest"] == pytest.approx(3 * xs[0])
    page2 = get_json(f"{base}/trials?sort=param.x&order=desc&limit=3&offset=3")
    assert page2[0]["parameters"]["x"] < xs[-1]
    # filters: parameter range, metric, categorical, final-dict key; all ANDed
    q = urllib.parse.urlencode([("filter", "param.x>=0.5"), ("filter", "value<=2"), ("limit", "100")])
    status, headers, body = request(f"{base}/trials?{q}")
    assert all(r["parameters"]["x"] >= 0.5 for r in json.loads(body))
    assert int(headers["X-Total-Count"]) == sum(1 for t in finished.export_data() if t["parameter"]["x"] >= 0.5)
    relu = get_json(f"{base}/trials?filter=param.act==relu&limit=100")
    assert all(r["parameters"]["act"] == "relu" for r in relu)
    low_loss = get_json(f"{base}/trials?sort=metric.loss&filter=metric.loss<0.5")
    assert [r["final"]["loss"] for r in low_loss] == sorted(r["final"]["loss"] for r in low_loss)
    assert get_json(f"{base}/trials?status=FAILED") == []
    one = rows[0]
    assert [r["id"] for r in get_json(f"{base}/trials?q={one['id']}")] == [one["id"]]
    for sort in ("value", "duration", "status", "id", "started_at", "final_value", "exit_code"):
        assert len(get_json(f"{base}/trials?sort={sort}&order=desc")) == 10
    for bad in ("sort=nope", "order=up", "limit=0", "limit=x", "offset=-1", "status=NOPE", "filter=value<abc",
                "filter=%3C%3E", 'filter=param."x>1', "filter=seq>abc", "offset=99999999999999999999"):
        status, _, body = request(f"{base}/trials?{bad}")
        assert status == 400, (bad, status, body)

    detail = get_json(f"{base}/trials/{one['id']}")
    assert detail["intermediate"] == [m["value"] for m in detail["metrics"] if m["kind"] == "intermediate"]
    assert [m["kind"] for m in detail["metrics"]] == ["intermediate"] * 3 + ["final"]
    assert detail["exit_code"] == 0 and detail["duration"] > 0 and detail["log_sizes"]["stdout"] > 0
    assert request(f"{base}/trials/nope")[0] == 404

    chart = get_json(f"{base}/chart-data")
    assert chart["count"] == 10 and set(chart["params"]) == {"x", "act", "lr"}
    i = chart["id"].index(one["id"])
    assert chart["params"]["x"][i] == one["parameters"]["x"] and chart["value"][i] == one["value"]
    curves = get_json(f"{base}/metrics?top=3&bands=true")
    assert len(curves["trials"]) == 3 and curves["trials"][0]["steps"] == [1, 2, 3]
    assert curves["bands"]["step"] == [1, 2, 3] and len(curves["bands"]["median"]) == 3
    picked = get_json(f"{base}/metrics?trials={one['id']},nope")
    assert [c["id"] for c in picked["trials"]] == [one["id"]]
    imp = get_json(f"{base}/importance")
    assert imp["n"] == 10 and {d["name"] for d in imp["importances"]} == {"x", "act", "lr"} and imp["method"]
    assert imp["importances"][0]["name"] == "x"  # the metric is x itself
    assert len(get_json(f"{base}/export")) == 10
    registry = get_json(f"{base}/experiments")
    assert [e["id"] for e in registry] == [finished.id] and registry[0]["current"] and registry[0]["trials"] == 10
    assert get_json(f"{base}/experiments/{finished.id}/trials?limit=2")[0]["sequence_id"] == 1
    assert request(f"{base}/experiments/nosuch/experiment")[0] == 404
    assert request(f"{base}/experiments/..%2F..%2Fetc/experiment")[0] == 404
    doc = get_json(f"{base}/openapi.json")
    assert doc["openapi"].startswith("3.") and "/api/v1/trials" in doc["paths"] and "/api/v1/events" in doc["paths"]


def test_logs_paging_tail_and_traversal(finished: Experiment) -> None:
    base = f"http://127.0.0.1:{finished.port}/api/v1"
    trial_id = finished.list_trial_jobs()[0]["id"]
    page = get_json(f"{base}/trials/{trial_id}/logs?line=1&limit=5")
    assert page["lines"] == [f"line {i}" for i in range(1, 6)] and page["line"] == 1 and page["next_line"] == 6
    assert page["total_lines"] == 31
    tail = get_json(f"{base}/trials/{trial_id}/logs?tail=2")
    assert tail["lines"] == ["line 29", "line 30"] and tail["line"] == 29
    assert get_json(f"{base}/trials/{trial_id}/logs?stream=stderr")["lines"] == ["warn"]
    assert request(f"{base}/trials/{trial_id}/logs?stream=../../.token")[0] == 400
    for bad in ("..", "..%2F..%2F.token", "%2e%2e", "x%00"):
        assert request(f"{base}/trials/{bad}/logs")[0] == 404
    status, _, body = request(f"http://127.0.0.1:{finished.port}/static/..%2F..%2Fhpo%2Fstorage.py")
    assert status in (403, 404) and b"ExperimentStore" not in body
    # the log stream of an ended trial sends what is left, then `end`
    sse = SseReader("127.0.0.1", finished.port, f"/api/v1/trials/{trial_id}/logs/stream?line=29")
    kind, data, _ = sse.next("lines")
    assert data == {"line": 29, "lines": ["line 29", "line 30"]}
    assert sse.next("end")[1] == {"line": 31}
    sse.close()


def test_live_events_actions_and_kill(make_experiment) -> None:
    exp = make_experiment(CONTROLLED_TRIAL, search_space=CONTROLLED_SPACE, trial_concurrency=1, max_trial_number=8)
    exp.start(port=0)
    base = f"http://127.0.0.1:{exp.port}/api/v1"
    auth = {"Authorization": f"Bearer {_token(exp)}"}
    sse = SseReader("127.0.0.1", exp.port, "/api/v1/events")
    try:
        hello = sse.next("hello")[1]
        assert hello["live"] is True and hello["read_only"] is False and hello["experiment_id"] == exp.id
        first = wait_until(lambda: exp.list_trial_jobs(status="RUNNING"), 10, what="a running trial")[0]
        chart = get_json(f"{base}/chart-data")  # cached per trial; running ones are re-read on change
        assert chart["status"][chart["id"].index(first["id"])] == "RUNNING"

        # concurrency 1 -> 3: two more trials start, and their WAITING/RUNNING events are pushed
        status, _, body = request(f"{base}/experiment", "PATCH", {"trial_concurrency": 3}, headers=auth)
        assert status == 200 and json.loads(body) == {"updated": ["trial_concurrency"]}
        wait_until(lambda: len(exp.list_trial_jobs(status="RUNNING")) == 3, 10, what="3 running trials")
        assert get_json(f"{base}/experiment")["config"]["trial_concurrency"] == 3
        for bad in ({"trial_concurrency": 0}, {"trial_concurrency": "2"}, {"nope": 1}, {}, [],
                    {"max_experiment_duration": "soon"}):
            assert request(f"{base}/experiment", "PATCH", bad, headers=auth)[0] == 400, bad
        status, _, _ = request(f"{base}/experiment", "PATCH", None, headers={**auth, "Content-Type": "application/json"})
        assert status == 400

        # kill: the process ends, the event arrives within 1 s of the store recording it
        pid = ExperimentStore(exp.directory, readonly=True).trial(first["id"])["pid"]
        assert psutil.pid_exists(pid)
        status, _, body = request(f"{base}/trials/{first['id']}/kill", "POST", headers=auth)
        assert status == 200
        while True:
            kind, data, t = sse.next("batch", timeout=5)
            done = [d for k, d in data["events"] if k == "trial" and d["id"] == first["id"] and d["status"] == "USER_CANCELED"]
            if done:
                break
        ended_at = exp.get_trial_job(first["id"])["ended_at"]
        assert time.time() - ended_at < 5 and t > 0  # pushed, not polled
        wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 5,
                   what="the killed trial's process to end")
        assert request(f"{base}/trials/{first['id']}/kill", "POST", headers=auth)[0] == 404
        chart = get_json(f"{base}/chart-data")
        assert chart["status"][chart["id"].index(first["id"])] == "USER_CANCELED" and chart["count"] >= 4
        assert chart["end"][chart["id"].index(first["id"])] == pytest.approx(ended_at)

        # a submitted trial runs with exactly the given parameters; out-of-space parameters are refused
        status, _, body = request(f"{base}/trials", "POST", {"parameters": {"x": 0.25, "mode": "fail"}}, headers=auth)
        assert status == 400 and b"search space" in body
        status, _, _ = request(f"{base}/experiment", "PATCH", {"search_space": {
            "x": {"_type": "uniform", "_value": [0, 1]}, "mode": {"_type": "choice", "_value": ["ok", "fail"]}}},
            headers=auth)
        assert status == 200
        status, _, body = request(f"{base}/trials", "POST", {"parameters": {"x": 0.25, "mode": "fail"}}, headers=auth)
        assert status == 202  # queued ahead of the tuner's suggestions, waiting for a free slot
        # the tuner itself must not suggest mode "fail" (then more trials would fail than the one submitted)
        assert request(f"{base}/experiment", "PATCH", {"search_space": CONTROLLED_SPACE}, headers=auth)[0] == 200
        assert request(f"{base}/experiment", "PATCH", {"trial_concurrency": 4}, headers=auth)[0] == 200
        failed = wait_until(lambda: [t for t in exp.list_trial_jobs(status="FAILED")], 15, what="the failing trial")[0]
        assert failed["parameters"] == {"x": 0.25, "mode": "fail"}
        for bad in ({"parameters": {"x": 2.0, "mode": "ok"}}, {"parameters": {"x": 0.1}}, {"params": {}}, [1]):
            assert request(f"{base}/trials", "POST", bad, headers=auth)[0] == 400, bad

        # re-run failed trials in bulk: a new trial with the same parameters, linked to the old one
        status, _, body = request(f"{base}/trials/rerun", "POST", {}, headers=auth)
        assert status == 200 and json.loads(body)["queued"] == [failed["id"]]
        assert request(f"{base}/experiment", "PATCH", {"trial_concurrency": 5}, headers=auth)[0] == 200
        rerun = wait_until(lambda: [t for t in exp.list_trial_jobs() if t["rerun_of"] == failed["seq"]], 15,
                           what="the re-run")[0]
        assert rerun["parameters"] == failed["parameters"]
        assert json.loads(request(f"{base}/trials/rerun", "POST", {}, headers=auth)[2])["queued"] == []
        assert request(f"{base}/trials/{failed['id']}/rerun", "POST", headers=auth)[0] == 409
        assert request(f"{base}/trials/nope/rerun", "POST", headers=auth)[0] == 404
        assert request(f"{base}/trials/rerun", "POST", {"trial_ids": "x"}, headers=auth)[0] == 400

        # live log stream of a running trial
        running = wait_until(lambda: exp.list_trial_jobs(status="RUNNING"), 10, what="a running trial")[0]
        logs = SseReader("127.0.0.1", exp.port, f"/api/v1/trials/{running['id']}/logs/stream")
        assert logs.next("lines", timeout=5)[1]["line"] == 0
        logs.close()

        # stop: STOPPING/STOPPED pushed; afterwards every change is refused
        (Path(exp.config.trial_code_directory) / "release").write_text("")
        assert request(f"{base}/experiment/stop", "POST", headers=auth)[0] == 200
        statuses = []
        while "STOPPED" not in statuses:
            kind, data, _ = sse.next("batch", timeout=10)
            statuses += [d["status"] for k, d in data["events"] if k == "status"]
        assert request(f"{base}/experiment", "PATCH", {"trial_concurrency": 2}, headers=auth)[0] == 409
        assert request(f"{base}/trials", "POST", {"parameters": {"x": 0.5, "mode": "ok"}}, headers=auth)[0] == 409
    finally:
        sse.close()


def test_security_loopback_and_public(finished: Experiment) -> None:
    directory, port = Path(finished.directory), finished.port
    base = f"http://127.0.0.1:{port}"
    token = _token(finished)
    # loopback: reads are open, actions need the token or a same-origin browser request
    status, headers, body = request(f"{base}/")
    assert status == 200 and b"<script type=\"module\"" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"
    assert request(f"{base}/api/v1/experiment/stop", "POST")[0] == 401
    assert request(f"{base}/api/v1/experiment/stop", "POST", headers={"Origin": "http://evil.example"})[0] == 401
    assert request(f"{base}/api/v1/experiment/stop", "POST", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert request(f"{base}/api/v1/experiment/stop", "POST", headers={"Origin": f"http://127.0.0.1:{port}"})[0] == 200
    assert request(f"{base}/api/v1/experiment/stop?token={token}", "POST")[0] == 200
    # DNS rebinding: a loopback server answers only loopback Host names
    assert request(f"{base}/api/v1/experiment", headers={"Host": f"evil.example:{port}"})[0] == 403
    assert request(f"{base}/api/v1/experiment", headers={"Host": f"localhost:{port}"})[0] == 200

    # public (non-loopback) server: the token for every request; the ?token= URL sets a cookie for the page
    with serve_app(directory, token="s3cret", public=True) as pub:
        assert request(f"{pub}/")[0] == 401
        assert request(f"{pub}/api/v1/experiment")[0] == 401
        assert request(f"{pub}/static/app.css")[0] == 401
        assert request(f"{pub}/api/v1/experiment?token=wrong")[0] == 401
        assert request(f"{pub}/api/v1/experiment", headers={"Authorization": "Bearer s3cret"})[0] == 200
        status, headers, _ = request(f"{pub}/?token=s3cret")
        assert status == 200 and "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        cookie = headers["Set-Cookie"].split(";")[0]
        assert request(f"{pub}/static/app.css", headers={"Cookie": cookie})[0] == 200
        assert request(f"{pub}/api/v1/experiment", headers={"Cookie": cookie})[0] == 200
        # an action with the cookie alone is refused unless same-origin (read-only here: 409 = allowed)
        assert request(f"{pub}/api/v1/experiment/stop", "POST", headers={"Cookie": cookie})[0] == 401
        origin = pub.replace("http://", "http://")
        assert request(f"{pub}/api/v1/experiment/stop", "POST", headers={"Cookie": cookie, "Origin": origin})[0] == 409
        assert request(f"{pub}/api/v1/experiment/stop", "POST", headers={"Authorization": "Bearer s3cret"})[0] == 409
        assert request(f"{pub}/api/v1/events")[0] == 401


def test_view_is_read_only_and_pushes_nothing(finished: Experiment) -> None:
    finished.stop()
    view = Experiment.view(finished.id, port=0, non_blocking=True)
    try:
        base = f"http://127.0.0.1:{view.port}/api/v1"
        exp = get_json(f"{base}/experiment")
        assert exp["read_only"] is True and exp["live"] is False and exp["status"] == "DONE"
        token = _token(finished)
        some = finished.list_trial_jobs()[0]["id"]
        for path, body in ((f"/trials/{some}/kill", None), ("/experiment/stop", None), ("/trials/rerun", {}),
                           ("/trials", {"parameters": {"x": 0.5}})):
            assert request(base + path, "POST", body, headers={"Authorization": f"Bearer {token}"})[0] == 409
        assert request(f"{base}/experiment", "PATCH", {"trial_concurrency": 2},
                       headers={"Authorization": f"Bearer {token}"})[0] == 409
        sse = SseReader("127.0.0.1", view.port, "/api/v1/events")
        hello = sse.next("hello")[1]
        assert hello["read_only"] is True
        with pytest.raises(TimeoutError):
            sse.next("batch", timeout=0.5)
        sse.close()
    finally:
        t = time.monotonic()
        view.stop()
        assert time.monotonic() - t < 5  # an open event stream does not hold the shutdown


def test_public_address_prints_a_token_url(make_experiment, capsys) -> None:
    exp = make_experiment(CONTROLLED_TRIAL, search_space=CONTROLLED_SPACE, trial_concurrency=1, max_trial_number=1)
    exp.start(port=0, host="0.0.0.0")
    try:
        url = capsys.readouterr().err.split("dashboard at ")[1].split()[0]
        token = _token(exp)
        assert url.endswith(f":{exp.port}/?token={token}")
        base = f"http://127.0.0.1:{exp.port}"
        assert request(f"{base}/api/v1/experiment")[0] == 401
        assert request(f"{base}/api/v1/experiment?token={token}")[0] == 200
        assert request(f"{base}/?token={token}")[0] == 200
    finally:
        (Path(exp.config.trial_code_directory) / "release").write_text("")


def test_importance_needs_neither_scikit_learn_nor_scipy(finished: Experiment, monkeypatch) -> None:
    import sys

    from webui.queries import Reader
    for name in ("sklearn", "scipy"):  # importing either fails: the forest is numpy's alone
        monkeypatch.setitem(sys.modules, name, None)
    reader = Reader(Path(finished.directory))
    imp = reader.importance(True)
    reader.close()
    assert imp["method"].startswith("extremely randomised trees") and imp["n"] == 10
    by_name = {d["name"]: d for d in imp["importances"]}
    assert imp["importances"][0]["name"] == "x" and by_name["act"]["kind"] == "categorical"
    assert sum(d["value"] for d in imp["importances"]) == pytest.approx(1.0)
