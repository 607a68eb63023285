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

NNI's ``connect`` keeps the ``pid`` of ``/experiments-info`` and its ``stop()`` waits for that process to end;
``nnictl`` reads the same pid from NNI's registry, and its ``stop`` sends it SIGTERM.  hpo's engine may run
inside the caller's own process (a notebook), so the pid given is that of a small *stand-in* process
(:class:`StandIn`): it lives exactly as long as the experiment runs, SIGTERM to it stops the experiment cleanly
(the caller's process goes on), and it owns the experiment's entry in NNI's registry while the experiment runs
(:mod:`hpo.nni_registry`).  With the registry off it is started on the first request that needs it.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from hpo import nni_registry
from hpo.nni_registry import RegistryError, remove_entry
from hpo.storage import EXPERIMENT_END_STATES

__all__ = ["NNI_PREFIX", "add_nni_routes", "nni_status", "StandIn"]

NNI_PREFIX = "/api/v1/nni"
_UPDATES = {"TRIAL_CONCURRENCY": ("trialConcurrency", "trial_concurrency"),
            "MAX_TRIAL_NUM": ("maxTrialNumber", "max_trial_number"),
            "MAX_EXEC_DURATION": ("maxExperimentDuration", "max_experiment_duration"),
            "SEARCH_SPACE": ("searchSpace", "search_space")}
_ROOT = str(Path(__file__).resolve().parent.parent)
log = logging.getLogger("hpo.nni")
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


class StandIn:
    """The process NNI's tools take for the experiment's manager: its pid is the ``pid`` of
    ``/experiments-info`` and of hpo's entry in NNI's registry (:mod:`hpo.nni_registry`, which runs it).

    It lives while the experiment runs, in a session of its own (a terminal's Ctrl-C does not reach it), and
    ends when :meth:`end` closes its stdin or the engine's process dies.  SIGTERM (``nnictl stop``, NNI's
    ``kill_command``) makes it ask for a clean stop (``on_stop`` on the loop) and stay until the experiment has
    stopped; if it dies otherwise (SIGKILL), ``on_lost`` is called on the loop, as NNI's experiment ends with
    its manager.  A reader thread takes its lines and reaps it as soon as it exits (a zombie would look alive
    to nnictl, which waits for the pid to go)."""

    READY_WAIT = 3.0  # seconds wait_ready() waits for the entry to be written (a busy registry: it goes on later)

    def __init__(self, on_stop: Callable[[], None], on_lost: Callable[[int], None]) -> None:
        self.on_stop, self.on_lost = on_stop, on_lost
        self.proc: subprocess.Popen[bytes] | None = None
        self.registry: Path | None = None
        self.experiment_id = ""
        self.error: str | None = None
        self.spent = False      # one stand-in per experiment: once it ended, no other is started
        self._ending = False
        self._ready = threading.Event()
        self._starting = threading.Lock()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None or self._ending or self.spent else self.proc.pid

    def start(self, loop: asyncio.AbstractEventLoop, entry: dict[str, Any] | None = None,
              registry: Path | None = None) -> int | None:
        """Start it (owning ``entry`` in ``registry`` when given); returns its pid."""
        with self._starting:  # two requests at once (reads run in worker threads) start one
            if self.proc is None and not self.spent:
                try:
                    self._start(loop, entry, registry)
                except OSError as exc:  # the experiment runs on; NNI's tools just do not see it
                    self.spent, self.error = True, f"cannot start its NNI stand-in process: {exc}"
                    self._ready.set()
                    log.warning("%s", self.error)
            return self.pid

    def _start(self, loop: asyncio.AbstractEventLoop, entry: dict[str, Any] | None, registry: Path | None) -> None:
        args = [] if entry is None or registry is None else [str(registry), json.dumps(entry)]
        self.registry, self.experiment_id = (registry, entry["id"]) if args else (None, "")
        boot = (f"import sys; sys.path.insert(0, {_ROOT!r}); "
                "from hpo.nni_registry import stand_in_main; stand_in_main()")
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", boot, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/",
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._read, args=(self.proc, loop), name="hpo-nni-stand-in",
                                        daemon=True)
        self._reader.start()

    def wait_ready(self, timeout: float = READY_WAIT) -> bool:
        return self._ready.wait(timeout)

    def _read(self, proc: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        assert proc.stdout is not None
        up = False  # it said something: it ran (one that never could is no reason to stop the experiment)
        for raw in proc.stdout:
            up = True
            word, _, rest = raw.decode("utf-8", "replace").strip().partition(" ")
            if word == "ready":
                self._ready.set()
            elif word == "error":
                self.error = rest
                self._ready.set()
            elif word == "stop":
                self._on_loop(loop, self.on_stop)
        code = proc.wait()
        self._ready.set()
        if not self._ending and up:
            self._on_loop(loop, self.on_lost, code)
        elif not up and not self._ending:
            self.spent, self.error = True, f"its NNI stand-in process exited at once (code {code})"
            log.warning("%s", self.error)
        if code != 0 and self.registry is not None:  # it could not remove its entry itself
            with contextlib.suppress(RegistryError, OSError):
                remove_entry(self.registry, self.experiment_id, proc.pid)

    @staticmethod
    def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing is left to stop
            loop.call_soon_threadsafe(fn, *args)

    def status(self, status: str) -> None:
        """The experiment's NNI status, for its registry entry."""
        if self.proc is not None and not self._ending and self.registry is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.write(f"status {status}\n".encode())  # type: ignore[union-attr]
                self.proc.stdin.flush()  # type: ignore[union-attr]

    def end(self) -> None:
        """The experiment has ended: the stand-in removes its entry and exits (reaped by its reader)."""
        if self.proc is not None and not self._ending:
            self._ending, self.spent = True, True
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.close()  # type: ignore[union-attr]

    def close(self, timeout: float = 15.0) -> None:
        """end(), and wait until it has exited (killed after ``timeout`` s; its entry removed either way)."""
        self.end()
        proc, reader = self.proc, self._reader
        if proc is None or reader is None:
            return
        reader.join(timeout)
        if reader.is_alive():
            proc.kill()
            reader.join()


class NniApi:
    """Handlers of NNI's routes for one dashboard (``dash``: :class:`webui.server.Dashboard`)."""

    def __init__(self, dash: Any) -> None:
        self.dash = dash
        self.stand_in = StandIn(self._stop_asked, self._stand_in_lost)
        self._loop: asyncio.AbstractEventLoop | None = None
        engine = dash.main.engine
        self._unsubscribe = engine.subscribe(self._on_event) if engine is not None else None

    async def register(self) -> None:
        """A running experiment's entry in NNI's registry, for nnictl (when :func:`hpo.nni_registry.enabled`)."""
        self._loop = loop = asyncio.get_running_loop()
        if self.api.engine is None or not self.api.live() or not nni_registry.enabled():
            return
        entry = await self._read(self._entry)
        if not self.api.live():  # it ended meanwhile (status events come on this loop: none is missed after this)
            return
        self.stand_in.start(loop, entry, nni_registry.registry_file())
        await loop.run_in_executor(None, self.stand_in.wait_ready)
        if self.stand_in.error:
            log.warning("nnictl will not list experiment %s: %s", entry["id"], self.stand_in.error)
        elif self.api.live():
            self.stand_in.status(nni_status(self.api.engine.status))  # a change while the entry was read

    def _entry(self) -> dict[str, Any]:
        info = self._info(with_pid=False)
        return {key: info[key] for key in ("id", "port", "startTime", "endTime", "status", "platform",
                                            "experimentName", "tag", "webuiUrl", "logDir", "prefixUrl")}

    def _stop_asked(self) -> None:
        engine = self.api.engine
        if engine is not None and engine.status not in EXPERIMENT_END_STATES:
            log.info("experiment %s: its NNI pid %s got SIGTERM (nnictl stop): stopping", self.api.experiment_id,
                     self.stand_in.pid)
            engine.request_stop()

    def _stand_in_lost(self, code: int) -> None:
        engine = self.api.engine
        if engine is not None and engine.status not in EXPERIMENT_END_STATES:
            log.warning("experiment %s: its NNI pid ended (exit code %s): stopping, as NNI does when its manager "
                        "ends", self.api.experiment_id, code)
            engine.request_stop()

    def _on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "status":
            if data.get("status") in EXPERIMENT_END_STATES:
                self.stand_in.end()
            else:
                self.stand_in.status(nni_status(str(data.get("status"))))

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

    def _info(self, with_pid: bool = True) -> dict[str, Any]:
        exp = self.api.experiment()
        running = self.api.live()
        port = exp.get("port")
        return {"id": exp["id"], "port": port, "startTime": _ms(exp.get("started_at") or exp.get("created_at")),
                "endTime": _ms(exp.get("ended_at")) or "N/A", "status": nni_status(exp["status"]),
                "platform": exp.get("training_service"), "experimentName": exp.get("name"), "tag": [],
                "pid": self._pid(running) if with_pid else None, "webuiUrl": [f"http://localhost:{port}"] if port else [],
                "logDir": str(Path(exp["directory"]).parent), "prefixUrl": None}

    def _pid(self, running: bool) -> int | None:
        if not running:
            self.stand_in.end()
            return None
        if self.stand_in.pid is None and self._loop is not None:  # the registry is off: started on first request
            return self.stand_in.start(self._loop)
        return self.stand_in.pid

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

    async def on_startup(_app: web.Application) -> None:
        await nni.register()

    async def on_cleanup(_app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, nni.close)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
