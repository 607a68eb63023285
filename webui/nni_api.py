"""The part of NNI 3.0's REST API (``/api/v1/nni/...``) that NNI's own Python client and ``nnictl`` call.

With the real ``nni`` installed, ``nni.experiment.Experiment.connect(port)`` on a running hpo experiment gives
``get_status``, ``get_experiment_profile``, ``list_trial_jobs``, ``get_trial_job``, ``get_job_statistics``,
``get_job_metrics``, ``export_data``, the ``update_*`` calls, ``kill_trial_job`` and ``stop``.  Shapes follow
what NNI's client parses (``nni/experiment/data.py``): times in milliseconds, ``hyperParameters`` as JSON
strings, metric ``data`` JSON-encoded twice, export ``value`` once.  NNI's ``parameter_id`` is hpo's sequence
number.

Security: NNI's client sends no credentials (``nni.experiment.rest`` has no header, and always connects to
``http://localhost:PORT``), so these routes exist only on a dashboard bound to loopback.  There they need no
token, also for the calls that change the experiment, when they come from a loopback address without an
``Origin`` header (a browser always sends one on such a request, so a web page cannot make them); the rest of
the API keeps its rules.  A dashboard on any other address does not serve them.

NNI's ``connect`` keeps the ``pid`` of ``/experiments-info`` and its ``stop()`` waits for that process to end.
hpo's engine may run inside the caller's own process (a notebook), so the pid given is that of a small
*stand-in* process started on first request: it lives exactly as long as the experiment runs.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from hpo.storage import EXPERIMENT_END_STATES

__all__ = ["NNI_PREFIX", "add_nni_routes", "nni_status"]

NNI_PREFIX = "/api/v1/nni"
_UPDATES = {"TRIAL_CONCURRENCY": ("trialConcurrency", "trial_concurrency"),
            "MAX_TRIAL_NUM": ("maxTrialNumber", "max_trial_number"),
            "MAX_EXEC_DURATION": ("maxExperimentDuration", "max_experiment_duration"),
            "SEARCH_SPACE": ("searchSpace", "search_space")}
_VERBATIM = {"search_space", "class_args", "trial_env", "pod_template_patch", "node_selector"}  # user data


def nni_status(status: str) -> str:
    """NNI's name for an hpo experiment status (a crashed engine is NNI's ERROR)."""
    return "ERROR" if status == "CRASHED" else status


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def _camel(value: Any, key: str = "") -> Any:
    """hpo's snake_case config as NNI's camelCase (user data such as the search space left as it is)."""
    if isinstance(value, dict) and key not in _VERBATIM:
        return {_camel_name(k): _camel(v, k) for k, v in value.items() if v is not None}
    if isinstance(value, list) and key not in _VERBATIM:
        return [_camel(v) for v in value]
    return value


def _camel_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _parameter_record(seq: int, parameters: Any) -> str:
    return json.dumps({"parameter_id": seq, "parameter_source": "algorithm", "parameters": parameters,
                       "parameter_index": 0})


def _metric(trial_id: str, seq: int, kind: str, step: int, data: Any, ts: float) -> dict[str, Any]:
    return {"timestamp": _ms(ts), "trialJobId": trial_id, "parameterId": str(seq),
            "type": "FINAL" if kind == "final" else "PERIODICAL",
            "sequence": 0 if kind == "final" else step - 1,  # hpo counts steps from 1, NNI from 0
            "data": json.dumps(json.dumps(data))}


class _StandIn:
    """A child process that lives while the experiment runs: the pid NNI's client waits on in ``stop()``.

    It reads its stdin until end of file, so it also ends when the engine's process dies."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def pid(self, running: bool) -> int | None:
        if not running:
            self.close()
            return None
        if self.proc is None:
            self.proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.buffer.read()"],
                                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, close_fds=True)
        return self.proc.pid

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # type: ignore[union-attr]
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class NniApi:
    """Handlers of NNI's routes for one dashboard (``dash``: :class:`webui.server.Dashboard`)."""

    def __init__(self, dash: Any) -> None:
        self.dash = dash
        self.stand_in = _StandIn()
        engine = dash.main.engine
        self._unsubscribe = engine.subscribe(self._on_event) if engine is not None else None

    def _on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "status" and data.get("status") in EXPERIMENT_END_STATES:
            self.stand_in.close()

    def close(self) -> None:
        if self._unsubscribe is not None:
            with contextlib.suppress(ValueError):
                self._unsubscribe()
            self._unsubscribe = None
        self.stand_in.close()

    @property
    def api(self) -> Any:
        return self.dash.main

    async def _read(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def _engine(self) -> Any:
        engine = self.api.engine
        if engine is None:
            raise web.HTTPConflict(text="this experiment is open read-only (view); resume it to change it")
        return engine

    # -- reads ----------------------------------------------------------------------------------------
    async def check_status(self, request: web.Request) -> web.Response:
        exp = await self._read(self.api.experiment)
        errors = [exp["message"]] if exp["status"] == "ERROR" and exp.get("message") else []
        return web.json_response({"status": nni_status(exp["status"]), "errors": errors})

    async def profile(self, request: web.Request) -> web.Response:
        return web.json_response(await self._read(self._profile))

    def _profile(self) -> dict[str, Any]:
        exp = self.api.experiment()
        seq = self.api.reader.query("SELECT COALESCE(MAX(seq), 0) FROM trials")[0][0]
        out = {"id": exp["id"], "revision": 0, "execDuration": int(exp["elapsed_seconds"]),
               "logDir": exp["directory"], "nextSequenceId": seq + 1, "maxSequenceId": seq,
               "params": {**_camel(exp["config"]), "experimentName": exp.get("name")},
               "startTime": _ms(exp.get("started_at") or exp.get("created_at"))}
        if exp.get("ended_at") is not None:
            out["endTime"] = _ms(exp["ended_at"])
        return out

    async def experiments_info(self, request: web.Request) -> web.Response:
        return web.json_response([await self._read(self._info)])

    async def experiment_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(await self._read(self._info))

    def _info(self) -> dict[str, Any]:
        exp = self.api.experiment()
        running = self.api.live()
        port = exp.get("port")
        return {"id": exp["id"], "port": port, "startTime": _ms(exp.get("started_at") or exp.get("created_at")),
                "endTime": _ms(exp.get("ended_at")) or "N/A", "status": nni_status(exp["status"]),
                "platform": exp.get("training_service"), "experimentName": exp.get("name"), "tag": [],
                "pid": self.stand_in.pid(running), "webuiUrl": [f"http://localhost:{port}"] if port else [],
                "logDir": str(Path(exp["directory"]).parent), "prefixUrl": None}

    async def trial_jobs(self, request: web.Request) -> web.StreamResponse:
        from webui.server import stream_json_array
        status = request.query.get("status")
        return await stream_json_array(request, self._iter_trials(status), json.dumps)

    async def trial_job(self, request: web.Request) -> web.Response:
        trial_id = request.match_info["trial_id"]
        found = await self._read(self._trials, None, trial_id, 0, 1)
        if not found:
            raise web.HTTPNotFound(text=f"no trial {trial_id!r}")
        return web.json_response(found[0])

    def _iter_trials(self, status: str | None, page: int = 500) -> Any:
        """Every trial as NNI's TrialJob, by sequence number, read ``page`` trials at a time (keyset pages)."""
        after = 0
        while True:
            jobs = self._trials(status, None, after, page)
            yield from jobs
            if len(jobs) < page:
                return
            after = jobs[-1]["sequenceId"]

    def _trials(self, status: str | None, trial_id: str | None, after: int, limit: int) -> list[dict[str, Any]]:
        where, args = "WHERE interrupted != 2 AND seq > ?", [after]
        if status:
            where, args = where + " AND status = ?", args + [status]
        if trial_id is not None:
            where, args = where + " AND id = ?", args + [trial_id]
        rows = self.api.reader.query("SELECT seq, id, parameters, status, created_at, started_at, ended_at, message "
                                     f"FROM trials {where} ORDER BY seq LIMIT ?", args + [limit])
        finals = {seq: (step, data, ts) for seq, step, data, ts in self.api.reader.query(
            "SELECT trial_seq, step, data, ts FROM metrics WHERE kind = 'final' AND trial_seq IN "
            "(SELECT value FROM json_each(?))", [json.dumps([r[0] for r in rows])])} if rows else {}
        trials_dir = self.api.directory / "trials"
        out = []
        for seq, tid, params, st, created, started, ended, message in rows:
            job: dict[str, Any] = {
                "trialJobId": tid, "sequenceId": seq, "status": st, "startTime": _ms(started or created),
                "hyperParameters": [_parameter_record(seq, json.loads(params))],
                "logPath": f"file://localhost:{trials_dir / tid}", "stderrPath": str(trials_dir / tid / "stderr.log"),
                "message": message or "--"}
            if ended is not None:
                job["endTime"] = _ms(ended)
            if seq in finals:
                step, data, ts = finals[seq]
                job["finalMetricData"] = [_metric(tid, seq, "final", step, json.loads(data), ts)]
            out.append(job)
        return out

    async def job_statistics(self, request: web.Request) -> web.Response:
        counts = await self._read(self.api.reader.status_counts)
        return web.json_response([{"trialJobStatus": s, "trialJobNumber": n} for s, n in sorted(counts.items()) if n])

    async def metric_data(self, request: web.Request) -> web.StreamResponse:
        from webui.server import stream_json_array
        trial_id = request.match_info.get("trial_id")
        return await stream_json_array(request, self._iter_metrics(trial_id), json.dumps)

    def _iter_metrics(self, trial_id: str | None, page: int = 200) -> Any:
        """Every metric (of one trial, or of every trial ``page`` trials at a time by sequence number)."""
        after = 0
        while True:
            where, args = "interrupted != 2 AND seq > ?", [after]
            if trial_id is not None:
                where, args = where + " AND id = ?", args + [trial_id]
            trials = self.api.reader.query(f"SELECT seq, id FROM trials WHERE {where} ORDER BY seq LIMIT ?",
                                           args + [page])
            if not trials:
                return
            ids = dict(trials)
            rows = self.api.reader.query(
                "SELECT trial_seq, kind, step, value, data, ts FROM metrics WHERE trial_seq IN "
                "(SELECT value FROM json_each(?)) ORDER BY trial_seq, kind = 'final', step",
                [json.dumps(list(ids))])
            for s, k, step, v, d, ts in rows:
                yield _metric(ids[s], s, k, step, v if d is None else json.loads(d), ts)
            if len(trials) < page:
                return
            after = trials[-1][0]

    async def export_data(self, request: web.Request) -> web.StreamResponse:
        from webui.server import stream_json_array
        rows = ({"parameter": r["parameter"], "value": json.dumps(r["value"]), "trialJobId": r["trial_id"]}
                for r in self.api.store.iter_export())
        return await stream_json_array(request, rows, json.dumps)

    # -- changes --------------------------------------------------------------------------------------
    async def update(self, request: web.Request) -> web.Response:
        engine = self._engine()
        kind = request.query.get("update_type", "")
        if kind not in _UPDATES:
            raise web.HTTPBadRequest(text=f"update_type must be one of {', '.join(_UPDATES)}; got {kind!r}")
        camel, name = _UPDATES[kind]
        try:
            body = await request.json()
            value = body["params"][camel]
        except (ValueError, KeyError, TypeError):
            raise web.HTTPBadRequest(text=f"expected the experiment profile with params.{camel}") from None
        if engine.status in EXPERIMENT_END_STATES or engine.status == "STOPPING":
            raise web.HTTPConflict(text=f"the experiment is {engine.status}; it cannot be changed any more")
        try:
            engine.config.check_update(**{name: value})
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        engine.update_config(**{name: value})
        return web.Response()

    async def kill(self, request: web.Request) -> web.Response:
        trial_id = request.match_info["trial_id"]
        if not await self._engine().kill_trial(trial_id):
            raise web.HTTPNotFound(text=f"trial {trial_id!r} is not running")
        return web.Response()

    async def stop(self, request: web.Request) -> web.Response:
        self._engine().request_stop()
        return web.Response()


def add_nni_routes(app: web.Application, dash: Any) -> None:
    """Serve NNI's routes on ``app`` (a loopback dashboard's); the stand-in process ends with the app."""
    nni = NniApi(dash)
    r = app.router
    r.add_get(f"{NNI_PREFIX}/check-status", nni.check_status)
    r.add_get(f"{NNI_PREFIX}/experiment", nni.profile)
    r.add_put(f"{NNI_PREFIX}/experiment", nni.update)
    r.add_delete(f"{NNI_PREFIX}/experiment", nni.stop)
    r.add_get(f"{NNI_PREFIX}/experiment-metadata", nni.experiment_metadata)
    r.add_get(f"{NNI_PREFIX}/experiments-info", nni.experiments_info)
    r.add_get(f"{NNI_PREFIX}/trial-jobs", nni.trial_jobs)
    r.add_get(f"{NNI_PREFIX}/trial-jobs/{{trial_id}}", nni.trial_job)
    r.add_delete(f"{NNI_PREFIX}/trial-jobs/{{trial_id}}", nni.kill)
    r.add_get(f"{NNI_PREFIX}/job-statistics", nni.job_statistics)
    r.add_get(f"{NNI_PREFIX}/metric-data", nni.metric_data)
    r.add_get(f"{NNI_PREFIX}/metric-data/{{trial_id}}", nni.metric_data)
    r.add_get(f"{NNI_PREFIX}/export-data", nni.export_data)

    async def on_cleanup(_app: web.Application) -> None:
        nni.close()

    app.on_cleanup.append(on_cleanup)
