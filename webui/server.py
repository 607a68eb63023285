"""The dashboard: a JSON API and a static single-page app (aiohttp), served from the engine's process
on the engine's loop.  The API is described by the OpenAPI document at ``/api/v1/openapi.json``.

Reads go to read-only store connections on worker threads, so they never block the engine.
Live changes are pushed to browsers as server-sent events (``/api/v1/events``) fed by
``Engine.subscribe``; a read-only server (``hpo view``) pushes nothing.

Security:

* a server bound to a loopback address answers only requests whose ``Host`` is a loopback name
  (no DNS rebinding), and reads need no token;
* a server bound to any other address needs the experiment's token for every request
  (``Authorization: Bearer TOKEN``, ``?token=TOKEN`` as in the printed URL, or the HttpOnly
  SameSite=Strict cookie that such a URL sets);
* actions (stop, kill, update, submit, re-run) need the token, or a same-origin browser request
  (``Origin`` equal to the server's own) from loopback (or, on a public server, with the cookie);
* on a public server another experiment of the registry is served only with that experiment's own token
  (the list shows this experiment only); a loopback server lists every experiment and opens the others
  read-only, as it serves its own reads, to local users;
* pages are served with a strict Content-Security-Policy (scripts from this server only), and the
  page renders every name, parameter and log line as text;
* a log is served only if it is a regular file with one link in the trial's own folder, opened without
  following links (a trial may turn its log into a link to the token or to any other file);
* resources are bounded: at most ``MAX_CONNECTIONS`` connections (a quarter of the descriptor limit,
  which the server raises to its hard limit so that trials keep headroom); a connection that has not made an
  authenticated request within ``IDLE_TIMEOUT`` s is closed, and past the cap the oldest such one makes room;
  request bodies are limited in size, depth and time; event streams are capped per kind (with and without
  the token) and the oldest of a kind makes room; a log's tail is read from its end;
* a bad request gets a 4xx with a one-line reason, an unexpected error a 500 with a one-line JSON reason,
  and the log gets at most one traceback per kind of error and at most ``_LOG_BURST`` lines a minute.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import resource
import socket
import sqlite3
import stat
import time
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

from aiohttp import web

from hpo.storage import (CHECKPOINT_STATES, CREATED, EXPERIMENT_END_STATES, TRIAL_STATES, ExperimentStore, engine_running,
                         maximizes)
from webui.nni_api import NNI_PREFIX, add_nni_routes
from webui.queries import CHART_POINTS, QueryError, Reader

__all__ = ["create_app", "ApiServer"]

log = logging.getLogger("hpo.webui")
API = "/api/v1"
STATIC = Path(__file__).resolve().parent / "static"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PROCESS_RE = re.compile(r"^[a-z][a-z0-9_]{0,30}-[0-9]{1,4}$")  # a distributed trial's process: <role>-<index>
_KEEPALIVE = 15.0
# Limits (module constants, so that tests can lower them).
MAX_CONNECTIONS = 256   # open connections at most (and at most a quarter of the open-files limit)
IDLE_TIMEOUT = 15.0     # s a connection may go without an authenticated request, or idle between requests
BODY_TIMEOUT = 30.0     # s for a request body to arrive
MAX_BODY = 1 << 20      # bytes of a request body
MAX_DEPTH = 32          # nesting levels of a JSON body
MAX_STREAMS = 64        # open event streams of each kind (with the token, without it)
_LOG_BURST = 20         # log records a minute at most
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        "form-action 'self'")
DASH_KEY = web.AppKey("dashboard", object)


class _Throttle(logging.Filter):
    """Keeps a flood of bad requests out of the engine's log: a traceback only the first time a kind of
    error (its type and the line that raised it) is seen, one line after that, and at most ``_LOG_BURST``
    records a minute (the next record that passes says how many were left out)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, str, int]] = set()
        self._window, self._count, self._dropped = 0.0, 0, 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._window >= 60.0:
            self._window, self._count = now, 0
        self._count += 1
        if self._count > _LOG_BURST:
            self._dropped += 1
            return False
        exc = record.exc_info[1] if record.exc_info else None
        text = record.getMessage()
        if exc is not None:
            frames = traceback.extract_tb(exc.__traceback__)
            key = (type(exc).__name__, frames[-1].filename, frames[-1].lineno or 0) if frames else \
                (type(exc).__name__, "", 0)
            if key in self._seen or len(self._seen) >= 256:
                text = f"{text}: {_one_line(exc)}"
                record.exc_info, record.exc_text = None, None
            else:
                self._seen.add(key)
        if self._dropped:
            text = f"{text} ({self._dropped} more log records in the last minute left out)"
            self._dropped = 0
        record.msg, record.args = text, ()
        return True


def _one_line(exc: BaseException) -> str:
    """``'TypeName: first line of the message'``, at most 300 characters."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:300] if first else type(exc).__name__


log.addFilter(_Throttle())


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _host_name(host_header: str) -> str:
    """``'[::1]:8080'`` -> ``'::1'``, ``'localhost:8080'`` -> ``'localhost'``."""
    host = host_header.strip()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class _Api:
    """The read side of one experiment, plus its engine when it runs in this process."""

    def __init__(self, directory: Path, engine: Any = None) -> None:
        self.directory = Path(directory)
        self.store = ExperimentStore(directory, readonly=True)
        self.reader = Reader(directory)
        self.reader.warm()
        self.engine = engine        # None: read-only (view)
        self.experiment_id = str(self.store.experiment()["id"])
        self._models: Any = None    # the model registry, opened read-only on first use

    def close(self) -> None:
        self.store.close()
        self.reader.close()
        if self._models is not None:
            self._models.close()

    @staticmethod
    async def read(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))

    def live(self) -> bool:
        return self.engine is not None and self.engine.status not in EXPERIMENT_END_STATES

    def maximize(self, config: dict[str, Any] | None = None) -> bool:
        if self.engine is not None:
            tuner = getattr(self.engine, "tuner", None)
            if tuner is not None and isinstance(getattr(tuner, "maximize", None), bool):
                return tuner.maximize
        return maximizes(config if config is not None else self.store.experiment()["config"])

    def experiment(self) -> dict[str, Any]:
        exp = self.store.experiment()
        config = exp["config"]
        maximize = self.maximize(config)
        # counts and the best from the trial index (no scan); while it loads (a server just started), the store's
        loaded = self.reader.index.version >= 0
        if loaded:
            best_seq = self.reader.best_seq(maximize)
            best = self.store.trial(best_seq) if best_seq is not None else None
        else:
            best = self.store.best_trial(maximize)
        counts = (self.reader if loaded else self.store).status_counts()
        now = time.time()
        status = self.engine.status if self.engine is not None else exp["status"]
        running_elsewhere = (self.engine is None and status not in EXPERIMENT_END_STATES
                             and engine_running(self.directory, exp.get("pid")))
        if self.engine is None and status not in EXPERIMENT_END_STATES and not running_elsewhere:
            status = "CRASHED" if exp.get("started_at") else status
        elapsed = float(exp.get("run_seconds") or 0.0)
        live = status not in EXPERIMENT_END_STATES and status != "CRASHED"
        if live and exp.get("started_at") and exp.get("ended_at") is None:
            elapsed += max(0.0, now - (exp.get("resumed_at") or exp["started_at"]))
        max_duration = _duration_seconds(config.get("max_experiment_duration"))
        tuner = config.get("tuner") or {}
        service = config.get("training_service") or {}
        counted = (self.reader if loaded else self.store).counted_trials()
        done = sum(counts[s] for s in ("SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED"))
        exp.update({
            "status": status,
            "trial_counts": counts,
            "best_trial": _trial_json(best) if best else None,
            "best_checkpoint": _checkpoint_json(self.store.best_checkpoint(maximize)),
            "read_only": self.engine is None,
            "paused": bool(getattr(self.engine, "paused", False)),
            "live": self.live(),
            "running_elsewhere": running_elsewhere,
            "maximize": maximize,
            "tuner": tuner.get("name") or tuner.get("class_name"), "tuner_label": _tuner_label(tuner),
            "training_service": service.get("platform") if isinstance(service, dict) else service,
            "elapsed_seconds": elapsed,
            "remaining_seconds": None if max_duration is None else max(0.0, max_duration - elapsed),
            "progress": {
                "trials_done": done, "trials_counted": counted, "trials_total": sum(counts.values()),
                "trials_without_result": (self.reader if loaded else self.store).count_without_result(),
                "trials_waiting_with_reason": self.store.count_waiting_with_reason(),
                "max_trial_number": config.get("max_trial_number"),
                "max_experiment_duration_seconds": max_duration,
                "trial_concurrency": config.get("trial_concurrency"),
            },
            "parameter_names": list((config.get("search_space") or {}).keys()),
            "metric_keys": self.reader.metric_keys(),
            "directory": str(self.directory),
            "server_time": now,
        })
        return exp

    def trial(self, trial_id: str) -> dict[str, Any] | None:
        rec = self.store.trial(trial_id)
        if rec is None:
            return None
        out = _trial_json(rec)
        metrics = self.reader.trial_metrics(rec["seq"])
        out["intermediate"] = [m["value"] for m in metrics if m["kind"] == "intermediate"]
        out["metrics"] = metrics
        started, ended = rec["started_at"], rec["ended_at"]
        out["duration"] = None if started is None else (ended if ended is not None else time.time()) - started
        out["log_sizes"] = {stream: _log_size(self.directory, rec["id"], stream) for stream in ("stdout", "stderr")}
        out["continues"] = rec.get("continues")
        for key in ("rerun_of", "continues"):  # the trial it re-runs or continues, by id, for a link
            parent = self.store.trial(rec[key]) if isinstance(rec.get(key), int) else None
            out[f"{key}_id"] = parent["id"] if parent else None
        if rec.get("processes"):  # a distributed trial: where each process runs and what it reported
            out["processes"] = rec["processes"]
            out["process_metrics"] = self.store.process_metrics(rec["seq"])
        return out


    def checkpoints(self, trial_id: str | None, states: list[str] | None) -> list[dict[str, Any]] | None:
        """The checkpoints (of one trial, in ``states``), newest first; None if there is no such trial."""
        seq = None
        if trial_id is not None:
            rec = self.store.trial(trial_id)
            if rec is None:
                return None
            seq = rec["seq"]
        rows = self.store.checkpoints(seq, states[0] if states and len(states) == 1 else None)
        return [_checkpoint_json(r) for r in reversed(rows) if not states or r["state"] in states]

    def models(self) -> list[dict[str, Any]]:
        """Every registered model with its version count, and the versions that point at this experiment's
        checkpoints (others' versions are not shown: another experiment is served only with its own token)."""
        from hpo.model_registry import ModelRegistry
        from hpo.registry import hpo_home

        if self._models is None:
            self._models = ModelRegistry(hpo_home() / "models.db", readonly=True)
        try:
            models, versions = self._models.list_models(), self._models.all_versions()
        except sqlite3.Error:
            self._models.close()  # replaced or unreadable: reopened on the next request
            raise
        ours = {c["uuid"]: c for c in self.store.checkpoints(uuids=[v["checkpoint_uuid"] for v in versions])}
        by_model: dict[str, list[dict[str, Any]]] = {}
        for v in versions:
            ckpt = ours.get(v["checkpoint_uuid"])
            if ckpt is not None:
                by_model.setdefault(v["model_name"], []).append({
                    "version": v["version"], "name": v["name"], "comment": v["comment"],
                    "checkpoint_uuid": v["checkpoint_uuid"], "creation_time": v["creation_time"],
                    "trial_id": ckpt["trial_id"], "trial_seq": ckpt["trial_seq"],
                    "steps_completed": ckpt["steps_completed"], "checkpoint_state": ckpt["state"]})
        return [{"name": m["name"], "description": m["description"], "labels": m["labels"], "archived": m["archived"],
                 "creation_time": m["creation_time"], "last_updated_time": m["last_updated_time"],
                 "num_versions": m["num_versions"], "versions": by_model.get(m["name"], [])} for m in models]


class _Client:
    """One server-sent-event stream's mailbox."""

    def __init__(self, wants_events: bool, tokened: bool) -> None:
        self.wants_events = wants_events
        self.tokened = tokened
        self.items: list[tuple[str, Any]] = []
        self.overflow = False
        self.closing = False
        self.wake = asyncio.Event()

    def push(self, item: tuple[str, Any]) -> None:
        if len(self.items) >= 5000:
            self.overflow, self.items = True, []
        elif not self.overflow:
            self.items.append(item)
        self.wake.set()

    def take(self) -> tuple[list[tuple[str, Any]], bool]:
        items, overflow = self.items, self.overflow
        self.items, self.overflow = [], False
        self.wake.clear()
        return items, overflow


class _Hub:
    """Fans the engine's events out to every open stream; closes them all at shutdown."""

    def __init__(self, engine: Any) -> None:
        self.clients: dict[_Client, None] = {}  # oldest first
        self.closing = False
        self._unsubscribe = engine.subscribe(self._on_event) if engine is not None else None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, wants_events: bool, tokened: bool) -> _Client:
        """A new stream's mailbox.  Streams that carry the token and streams that do not are counted apart
        (``MAX_STREAMS`` each), and past the cap the oldest stream of the same kind is closed: clients
        without the token never crowd out those with it, and no client is ever locked out."""
        same = [c for c in self.clients if c.tokened == tokened]
        for oldest in same[:max(0, len(same) - MAX_STREAMS + 1)]:
            self.remove(oldest)
            oldest.closing = True
            oldest.wake.set()
        self._loop = asyncio.get_running_loop()
        client = _Client(wants_events, tokened)
        self.clients[client] = None
        return client

    def remove(self, client: _Client) -> None:
        self.clients.pop(client, None)

    def _on_event(self, kind: str, data: dict[str, Any]) -> None:
        if not any(client.wants_events for client in list(self.clients)):
            return  # nobody follows: no hop to the dashboard's loop, no copy (most trials of a long run)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._loop is not None and running is not self._loop:
            self._loop.call_soon_threadsafe(self._on_event, kind, data)
            return
        item = (kind, _sanitise(data))
        for client in list(self.clients):
            if client.wants_events:
                client.push(item)

    def close(self) -> None:
        self.closing = True
        if self._unsubscribe is not None:
            try:
                self._unsubscribe()
            except ValueError:
                pass
            self._unsubscribe = None
        for client in list(self.clients):
            client.closing = True
            client.wake.set()


class Dashboard:
    """Everything one server needs: its own experiment, read-only views of the others, the event hub."""

    def __init__(self, directory: Path, token: str, engine: Any, public: bool) -> None:
        self.main = _Api(directory, engine)
        self.token = token
        self.public = public
        self.hub = _Hub(engine)
        self.connections = _Connections()
        self.others: OrderedDict[str, _Api] = OrderedDict()
        self.cookie = _cookie_name(self.main.experiment_id)
        self._index: bytes | None = None

    def close(self) -> None:
        self.hub.close()
        self.main.close()
        for api in self.others.values():
            api.close()
        self.others.clear()

    # -- auth ---------------------------------------------------------------------------------------
    def token_given(self, request: web.Request, token: str | None = None) -> bool:
        """Whether the request carries ``token`` (this experiment's by default) as ``Authorization: Bearer``
        or ``?token=``."""
        auth = request.headers.get("Authorization", "")
        given = auth[7:].strip() if auth.startswith("Bearer ") else ""
        return _same_secret(given or request.query.get("token", ""), self.token if token is None else token)

    def cookie_given(self, request: web.Request, experiment_id: str | None = None, token: str | None = None) -> bool:
        """Whether the request carries the token cookie of this experiment (or of ``experiment_id``, whose
        token is ``token``)."""
        if experiment_id is None or token is None:
            experiment_id, token = self.main.experiment_id, self.token
        return _same_secret(request.cookies.get(_cookie_name(experiment_id), ""), token)

    def credentials_given(self, request: web.Request) -> bool:
        """Whether the request carries this experiment's token (header, query or cookie)."""
        return self.token_given(request) or self.cookie_given(request)

    async def other_token_given(self, request: web.Request, experiment_id: str) -> bool:
        """Whether the request carries another registered experiment's own token (header, query or cookie)."""
        token = await _Api.read(_stored_token, experiment_id) if _ID_RE.match(experiment_id) else None
        return token is not None and (self.token_given(request, token)
                                      or self.cookie_given(request, experiment_id, token))

    async def api_for(self, request: web.Request) -> _Api:
        eid = request.match_info.get("experiment_id")
        if eid is None or eid == self.main.experiment_id:
            return self.main
        if not _ID_RE.match(eid):
            raise web.HTTPNotFound(text=f"no experiment with id {eid!r}")
        api = self.others.get(eid)
        if api is None:
            from hpo.registry import ExperimentNotFound, lookup
            try:
                directory = lookup(eid)
                api = await _Api.read(_Api, directory)
            except (ExperimentNotFound, LookupError, OSError, sqlite3.Error) as exc:
                raise web.HTTPNotFound(text=f"no experiment with id {eid!r}" if isinstance(exc, ExperimentNotFound)
                                       else f"experiment {eid!r} cannot be read: {_one_line(exc)}")
            self.others[eid] = api
            while len(self.others) > 8:  # each holds three store connections (three descriptors each)
                self.others.popitem(last=False)[1].close()
        self.others.move_to_end(eid)
        return api

    # -- pages --------------------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.Response:
        if self._index is None:
            self._index = (STATIC / "index.html").read_bytes()
        response = web.Response(body=self._index, content_type="text/html", charset="utf-8",
                                headers={"Cache-Control": "no-cache"})
        if self.public and request.query.get("token") and self.token_given(request):
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="Strict", path="/")
        return response

    async def openapi(self, request: web.Request) -> web.Response:
        from webui.openapi import openapi_document
        return web.json_response(openapi_document(), dumps=_dumps)

    # -- reads --------------------------------------------------------------------------------------
    async def experiment(self, request: web.Request) -> web.Response:
        api = await self.api_for(request)
        return web.json_response(await api.read(api.experiment), dumps=_dumps)

    async def experiments(self, request: web.Request) -> web.Response:
        rows = await _Api.read(_registry_rows, self.main.experiment_id, only_current=self.public)
        if "project" in request.query:
            rows = [row for row in rows if row.get("project") == request.query["project"]]
        return web.json_response(rows, dumps=_dumps)

    async def trials(self, request: web.Request) -> web.Response:
        api = await self.api_for(request)
        q = request.query
        status = None
        if "status" in q:
            status = [s.strip().upper() for s in q["status"].split(",") if s.strip()]
            bad = [s for s in status if s not in TRIAL_STATES]
            if bad:
                raise web.HTTPBadRequest(text=f"unknown status {bad[0]!r}; expected one of {', '.join(TRIAL_STATES)}")
        limit = _int_arg(q, "limit", 100, 1, 10000)
        offset = _int_arg(q, "offset", 0, 0, 10**9)
        order = q.get("order", "asc")
        if order not in ("asc", "desc"):
            raise web.HTTPBadRequest(text="order must be 'asc' or 'desc'")
        filters = q.getall("filter", [])
        if len(filters) > 20:
            raise web.HTTPBadRequest(text="at most 20 filters")
        try:
            rows, total = await api.read(api.reader.trials_page, status=status, filters=filters,
                                         search=q.get("q") or None, sort=q.get("sort", "seq") or "seq",
                                         descending=order == "desc", limit=limit, offset=offset)
        except QueryError as exc:
            raise web.HTTPBadRequest(text=str(exc))
        return web.json_response(rows, dumps=_dumps, headers={"X-Total-Count": str(total)})

    async def trial(self, request: web.Request) -> web.Response:
        api = await self.api_for(request)
        trial_id = request.match_info["trial_id"]
        data = await api.read(api.trial, trial_id)
        if data is None:
            raise web.HTTPNotFound(text=f"no trial {trial_id!r}")
        return web.json_response(data, dumps=_dumps)

    async def checkpoints(self, request: web.Request) -> web.Response:
        api = await self.api_for(request)
        q = request.query
        trial_id = q.get("trial")
        if trial_id is not None and not _ID_RE.match(trial_id):
            raise web.HTTPBadRequest(text=f"trial must be a trial id (letters, digits, _ and -), got {trial_id[:50]!r}")
        states = None
        if "state" in q:
            states = [s.strip().upper() for s in q["state"].split(",") if s.strip()]
            bad = [s for s in states if s not in CHECKPOINT_STATES] or ([] if states else [q["state"][:50]])
            if bad:
                raise web.HTTPBadRequest(text=f"unknown state {bad[0]!r}; expected one of {', '.join(CHECKPOINT_STATES)}")
        rows = await api.read(api.checkpoints, trial_id, states)
        if rows is None:
            raise web.HTTPNotFound(text=f"no trial {trial_id!r}")
        return web.json_response(rows, dumps=_dumps)

    async def models(self, request: web.Request) -> web.Response:
        api = await self.api_for(request)
        try:
            rows = await api.read(api.models)
        except sqlite3.Error as exc:
            raise web.HTTPServiceUnavailable(text=f"the model registry cannot be read: {_one_line(exc)}")
        return web.json_response(rows, dumps=_dumps)

    async def _log_target(self, request: web.Request) -> tuple[_Api, str, str, str | None]:
        """The log a request names: trial, stream and (for a distributed trial) one process, else the merged log."""
        api = await self.api_for(request)
        trial_id = request.match_info["trial_id"]
        stream = request.query.get("stream", "stdout")
        if stream not in ("stdout", "stderr"):
            raise web.HTTPBadRequest(text="stream must be 'stdout' or 'stderr'")
        rec = await api.read(api.store.trial, trial_id)
        if rec is None:
            raise web.HTTPNotFound(text=f"no trial {trial_id!r}")
        process = request.query.get("process") or None
        names = [p.get("name") for p in rec.get("processes") or []]
        if process is not None and process not in names:
            raise web.HTTPBadRequest(text=f"process must be one of the trial's processes ({', '.join(names) or 'none'}), "
                                          f"got {process[:50]!r}")
        return api, rec["id"], stream, process

    async def logs(self, request: web.Request) -> web.Response:
        api, trial_id, stream, process = await self._log_target(request)
        line = _int_arg(request.query, "line", 0, 0, 10**9)
        limit = _int_arg(request.query, "limit", 1000, 1, 100000)
        tail = _int_arg(request.query, "tail", 0, 0, 100000) if "tail" in request.query else None
        try:
            start, lines, total = await api.read(_read_log, api.directory, trial_id, stream, line, limit, tail,
                                                   process)
        except _UnsafeLog as exc:
            raise web.HTTPForbidden(text=str(exc))
        return web.json_response({"trial_id": trial_id, "stream": stream, "line": start, "lines": lines,
                                  "next_line": start + len(lines), "total_lines": total})

    async def logs_stream(self, request: web.Request) -> web.StreamResponse:
        """Follow a trial's log as server-sent events: ``lines`` events ``{line, lines}``, then ``end``."""
        api, trial_id, stream, process = await self._log_target(request)
        line = _int_arg(request.query, "line", 0, 0, 10**9)
        try:
            offset = await api.read(_log_line_offset, api.directory, trial_id, stream, line, process)
        except _UnsafeLog as exc:
            raise web.HTTPForbidden(text=str(exc))
        client = self.hub.add(wants_events=False, tokened=self.credentials_given(request))
        response = await _sse_start(request)
        try:
            pending, next_line, checked = b"", line, 0.0
            while not client.closing:
                chunk = await api.read(_read_log_chunk, api.directory, trial_id, stream, offset, 1 << 20, process)
                offset += len(chunk)
                finished = False
                if not chunk and time.monotonic() - checked > 0.5:
                    checked = time.monotonic()
                    rec = await api.read(api.store.trial, trial_id)
                    finished = rec is None or rec["status"] not in ("WAITING", "RUNNING") or not api.live()
                data = pending + chunk
                *complete, pending = data.split(b"\n")
                pending = pending[:_MAX_LINE_BYTES]  # a line that never ends is held only as far as it is shown
                if finished and pending:
                    complete.append(pending)
                    pending = b""
                if complete:
                    texts = [_line_text(raw) for raw in complete]
                    await response.write(_sse("lines", {"line": next_line, "lines": texts}))
                    next_line += len(texts)
                if finished:
                    await response.write(_sse("end", {"line": next_line}))
                    break
                if not chunk:
                    client.wake.clear()
                    try:
                        await asyncio.wait_for(client.wake.wait(), 0.25)
                    except asyncio.TimeoutError:
                        pass
        except (ConnectionResetError, ConnectionError, _UnsafeLog):
            pass
        finally:
            self.hub.remove(client)
        return response

    async def export(self, request: web.Request) -> web.StreamResponse:
        """Every trial with a final result, as NNI's ``export_data()``: a JSON array streamed a page at a time
        (the server never holds more than a page of trials, however many there are)."""
        api = await self.api_for(request)
        return await stream_json_array(request, api.store.iter_export(), _dumps)

    async def chart_data(self, request: web.Request) -> web.Response:
        api = await self.api_for(request)
        points = _int_arg(request.query, "points", CHART_POINTS, 100, 20000)
        body = await api.read(api.reader.chart_data, await api.read(api.maximize), points)
        return web.Response(body=body, content_type="application/json")

    async def metrics(self, request: web.Request) -> web.Response:
        api = await self.api_for(request)
        q = request.query
        trials = None
        if "trials" in q:
            trials = [t for t in q["trials"].split(",") if t][:501]
        top = _int_arg(q, "top", 20, 0, 500)
        bands = q.get("bands", "false").lower() in ("1", "true", "yes")
        try:
            body = await api.read(api.reader.curves, trials, top, await api.read(api.maximize), bands)
        except QueryError as exc:
            raise web.HTTPBadRequest(text=str(exc))
        return web.Response(body=body, content_type="application/json")

    async def importance(self, request: web.Request) -> web.Response:
        api = await self.api_for(request)
        data = await api.read(api.reader.importance, await api.read(api.maximize))
        return web.json_response(data, dumps=_dumps)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: ``hello`` once, then ``batch`` events ``{events: [[kind, data], ...]}``
        gathered over 100 ms (kinds: trial, metric, status, config, checkpoint), ``reset`` when a slow reader
        missed some (reload everything), and a comment every 15 s to keep the connection open."""
        api = self.main
        client = self.hub.add(wants_events=api.live(), tokened=self.credentials_given(request))
        response = await _sse_start(request)
        try:
            await response.write(_sse("hello", {"experiment_id": api.experiment_id, "read_only": api.engine is None,
                                                "live": api.live(),
                                                "status": api.engine.status if api.engine is not None else None}))
            while not client.closing:
                try:
                    await asyncio.wait_for(client.wake.wait(), _KEEPALIVE)
                except asyncio.TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if client.closing:
                    break
                await asyncio.sleep(0.1)  # gather a burst into one message
                items, overflow = client.take()
                if overflow:
                    await response.write(_sse("reset", {}))
                elif items:
                    await response.write(_sse("batch", {"events": [[k, d] for k, d in items]}))
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.hub.remove(client)
        return response

    # -- actions ------------------------------------------------------------------------------------
    def _require_engine(self) -> Any:
        engine = self.main.engine
        if engine is None:
            raise web.HTTPConflict(text="this experiment is open read-only (view); resume it to change it")
        if engine.status in EXPERIMENT_END_STATES or engine.status == "STOPPING":
            raise web.HTTPConflict(text=f"the experiment is {engine.status}; it cannot be changed any more")
        return engine

    async def stop(self, request: web.Request) -> web.Response:
        engine = self.main.engine
        if engine is None:
            raise web.HTTPConflict(text="this experiment is open read-only (view); resume it to change it")
        engine.request_stop()
        return web.json_response({"status": engine.status})

    async def pause(self, request: web.Request) -> web.Response:
        engine = self._require_engine()
        engine.pause()
        return web.json_response({"paused": True})

    async def activate(self, request: web.Request) -> web.Response:
        engine = self._require_engine()
        engine.activate()
        return web.json_response({"paused": False})

    async def kill(self, request: web.Request) -> web.Response:
        engine = self.main.engine
        if engine is None:
            raise web.HTTPConflict(text="this experiment is open read-only (view); resume it to change it")
        trial_id = request.match_info["trial_id"]
        if not await engine.kill_trial(trial_id):
            raise web.HTTPNotFound(text=f"trial {trial_id!r} is not running")
        return web.json_response({"killed": trial_id})

    async def update(self, request: web.Request) -> web.Response:
        engine = self._require_engine()
        body = await _json_body(request)
        allowed = {"trial_concurrency", "max_trial_number", "max_experiment_duration", "search_space"}
        if not isinstance(body, dict) or not body or set(body) - allowed:
            raise web.HTTPBadRequest(text=f"expected a JSON object with some of: {', '.join(sorted(allowed))}")
        try:
            engine.config.check_update(**body)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc))
        engine.update_config(**body)
        return web.json_response({"updated": sorted(body)})

    async def submit(self, request: web.Request) -> web.Response:
        engine = self._require_engine()
        body = await _json_body(request)
        params = body.get("parameters") if isinstance(body, dict) else None
        if not isinstance(body, dict) or set(body) - {"parameters"} or not isinstance(params, dict):
            raise web.HTTPBadRequest(text='expected {"parameters": {NAME: VALUE, ...}}')
        from hpo.search_space import SearchSpaceError, parse_search_space
        try:
            space = parse_search_space(engine.config.search_space)
        except SearchSpaceError as exc:
            raise web.HTTPConflict(text=f"the search space cannot be read: {exc}")
        if not space.contains(params):
            raise web.HTTPBadRequest(text="the parameters are not a point of the search space; expected every one of "
                                          + ", ".join(f"{d.name} ({d.describe()})" for d in space))
        engine.submit_custom(params)
        return web.json_response({"queued": params}, status=202, dumps=_dumps)

    async def rerun(self, request: web.Request) -> web.Response:
        engine = self._require_engine()
        body = await _json_body(request, default={})
        ids = body.get("trial_ids") if isinstance(body, dict) else None
        if not isinstance(body, dict) or set(body) - {"trial_ids"} or (
                ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)
                                     or len(ids) > 10000)):
            raise web.HTTPBadRequest(text='expected {} (every failed trial) or {"trial_ids": ["ID", ...]}')
        queued = engine.rerun_trials(ids)
        return web.json_response({"queued": queued})

    async def rerun_one(self, request: web.Request) -> web.Response:
        engine = self._require_engine()
        trial_id = request.match_info["trial_id"]
        if await _Api.read(self.main.store.trial, trial_id) is None:
            raise web.HTTPNotFound(text=f"no trial {trial_id!r}")
        queued = engine.rerun_trials([trial_id])
        if not queued:
            raise web.HTTPConflict(text=f"trial {trial_id!r} cannot be re-run: only a failed or cancelled trial "
                                        "that has not been re-run yet can")
        return web.json_response({"queued": queued})


async def _json_body(request: web.Request, default: Any = None) -> Any:
    """The request's JSON body (``default`` if it is empty and a default is given): 413 past ``MAX_BODY``
    bytes, 408 if it has not arrived within ``BODY_TIMEOUT`` s, 400 unless it is JSON nested at most
    ``MAX_DEPTH`` levels deep."""
    try:
        raw = await asyncio.wait_for(request.read(), BODY_TIMEOUT)
    except asyncio.TimeoutError:
        raise web.HTTPRequestTimeout(text=f"the request body did not arrive within {BODY_TIMEOUT:g} s")
    if not raw.strip() and default is not None:
        return default
    try:
        body = json.loads(raw)
        too_deep = _depth(body) > MAX_DEPTH
    except RecursionError:
        too_deep = True
    except ValueError:
        raise web.HTTPBadRequest(text="expected a JSON body")
    if too_deep:
        raise web.HTTPBadRequest(text=f"the JSON body is nested too deeply (at most {MAX_DEPTH} levels)")
    return body


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


async def _sse_start(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    response.force_close()  # a stream's end (closed for a newer one, or at shutdown) ends its connection
    _security_headers(response)
    await response.prepare(request)
    await response.write(b"retry: 2000\n\n")
    return response


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {_dumps(data)}\n\n".encode()


def _duration_seconds(value: Any) -> float | None:
    from hpo.config import parse_duration
    try:
        return parse_duration(value)
    except ValueError:
        return None


async def stream_json_array(request: web.Request, items: Iterator[Any], dumps: Callable[[Any], str],
                            page: int = 500) -> web.StreamResponse:
    """Answer with a JSON array of ``items`` (an iterator read on a worker thread, ``page`` items at a time),
    sent as it is read (chunked): memory stays at one page whatever the number of items."""
    loop = asyncio.get_running_loop()

    def take() -> list[Any]:
        out = []
        for item in items:
            out.append(item)
            if len(out) >= page:
                break
        return out

    chunk = await loop.run_in_executor(None, take)  # the first page before the headers: an error is still a 500
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    first = True
    while True:
        text = ",".join(dumps(item) for item in chunk)
        if text:
            await response.write((("[" if first else ",") + text).encode())
            first = False
        if len(chunk) < page:
            break
        chunk = await loop.run_in_executor(None, take)
    await response.write(b"[]" if first else b"]")
    await response.write_eof()
    return response


def _registry_rows(current: str, only_current: bool) -> list[dict[str, Any]]:
    """Every registered experiment (or only ``current``) with its status, trial counts and best value."""
    from hpo.registry import all_experiments

    out = []
    for entry in reversed(all_experiments()):
        if only_current and entry["id"] != current:
            continue
        row: dict[str, Any] = {"id": entry["id"], "name": entry["name"], "directory": entry["directory"],
                               "created_at": entry["created_at"], "current": entry["id"] == current}
        try:
            with ExperimentStore(str(entry["directory"]), readonly=True) as store:
                info = store.experiment()
                counts = store.status_counts()
                maximize = maximizes(info["config"])
                best = store.best_trial(maximize)
        except Exception as exc:  # a deleted or unreadable folder
            row.update({"status": "MISSING", "error": str(exc)})
            out.append(row)
            continue
        status = info["status"]
        running = status not in EXPERIMENT_END_STATES and engine_running(str(entry["directory"]), info.get("pid"))
        if status not in EXPERIMENT_END_STATES and status != CREATED and not running:
            status = "CRASHED"
        config = info["config"]
        tuner = config.get("tuner") or {}
        row.update({
            "name": info["name"], "project": config.get("project"), "status": status, "message": info["message"],
            "running": running,
            "port": info["port"] if running else None,
            "host": info["host"] if running else None, "started_at": info["started_at"], "ended_at": info["ended_at"],
            "trial_counts": counts, "trials": sum(counts.values()), "max_trial_number": config.get("max_trial_number"),
            "tuner": tuner.get("name") or tuner.get("class_name"), "tuner_label": _tuner_label(tuner), "maximize": maximize,
            "best_value": _finite(best["final_value"]) if best else None, "best_trial": best["id"] if best else None,
            "run_seconds": info["run_seconds"],
        })
        out.append(row)
    return out


def _tuner_label(tuner: dict[str, Any]) -> str | None:
    from tuners.registry import tuner_label  # imports no tuner
    return tuner_label(tuner.get("name"), tuner.get("class_name"))


def _trial_json(rec: dict[str, Any]) -> dict[str, Any]:
    return {"id": rec["id"], "sequence_id": rec["seq"], "parameters": rec["parameters"], "status": rec["status"],
            "created_at": rec["created_at"], "started_at": rec["started_at"], "ended_at": rec["ended_at"],
            "exit_code": rec["exit_code"], "message": rec["message"], "final": rec["final"],
            "value": _finite(rec["final_value"]), "gpus": rec["gpus"], "rerun_of": rec["rerun_of"]}


def _checkpoint_json(rec: dict[str, Any] | None) -> dict[str, Any] | None:
    """A checkpoint row as served, with ``size``: the bytes of its files (``location`` as stored)."""
    if rec is None:
        return None
    resources = rec["resources"] if isinstance(rec["resources"], dict) else {}
    size = sum(v for v in resources.values() if isinstance(v, int) and not isinstance(v, bool))
    return {**{k: rec[k] for k in ("uuid", "trial_id", "trial_seq", "steps_completed", "metrics", "metadata",
                                   "resources", "location", "state", "message", "report_time")},
            "value": _finite(rec["value"]), "size": size}


def _finite(v: Any) -> Any:
    return v if not isinstance(v, float) or math.isfinite(v) else None


def _int_arg(query: Any, name: str, default: int, low: int, high: int | None) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer, got {raw[:50]!r}")
    if value < low or (high is not None and value > high):
        raise web.HTTPBadRequest(text=f"{name} must be between {low} and {high if high is not None else 'inf'}")
    return value


_MAX_LINE = 65536              # characters of one log line served
_MAX_LINE_BYTES = 4 * _MAX_LINE   # bytes read of one line (enough for _MAX_LINE characters)
_MAX_PAGE = 16 << 20             # bytes of lines in one answer (``next_line`` says where to go on)
_BLOCK = 1 << 20                 # bytes read at once when scanning a log


class _UnsafeLog(Exception):
    """The log is not a regular file written by the training service (a link, a FIFO, a folder...)."""


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_LINE else text[:_MAX_LINE] + " …[line truncated]"


def _line_text(raw: bytes) -> str:
    return _clip(raw.decode("utf-8", "replace").rstrip("\r"))


@contextlib.contextmanager
def _log_file(directory: Path, trial_id: str, stream: str, process: str | None = None) -> Iterator[int | None]:
    """A read-only descriptor of a trial's log (None while there is none).

    The trials folder, the trial's folder and the log are opened one below the other without following
    links and without blocking (a FIFO), and the log must be a regular file with a single link: a trial can
    replace its log by a link (symbolic or hard) to the experiment's token or to any file it can name.
    Raises :class:`_UnsafeLog` otherwise."""
    if not _ID_RE.match(trial_id) or (process is not None and not _PROCESS_RE.match(process)):
        raise _UnsafeLog(f"trial id {trial_id!r} (process {process!r}) cannot name a log")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    fds: list[int] = []
    try:
        try:
            fds.append(os.open(Path(directory) / "trials", flags | os.O_DIRECTORY))
            fds.append(os.open(trial_id, flags | os.O_DIRECTORY, dir_fd=fds[-1]))
            for folder in ("processes", process) if process is not None else ():  # one process of a gang
                fds.append(os.open(folder, flags | os.O_DIRECTORY, dir_fd=fds[-1]))
            fds.append(os.open(f"{stream}.log", flags, dir_fd=fds[-1]))
        except FileNotFoundError:
            yield None
            return
        except OSError as exc:  # ELOOP: a link; ENOTDIR: a link or a file where a folder should be
            raise _UnsafeLog(f"the {stream} log of trial {trial_id} is not a regular file in its folder "
                             f"({exc.strerror}); it is not served") from None
        info = os.fstat(fds[-1])
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise _UnsafeLog(f"the {stream} log of trial {trial_id} is not a regular file with a single link; "
                             "it is not served")
        yield fds[-1]
    finally:
        for fd in fds:
            os.close(fd)


def _log_size(directory: Path, trial_id: str, stream: str) -> int | None:
    """The log's size in bytes (None if there is none, or it is not served)."""
    try:
        with _log_file(directory, trial_id, stream) as fd:
            return None if fd is None else os.fstat(fd).st_size
    except _UnsafeLog:
        return None


def _read_log(directory: Path, trial_id: str, stream: str, start: int, limit: int,
              tail: int | None, process: str | None = None) -> tuple[int, list[str], int]:
    """:func:`_read_lines` of a trial's log (nothing while there is none)."""
    with _log_file(directory, trial_id, stream, process) as fd:
        if fd is None:
            return (0 if tail is not None else start), [], 0
        return _read_lines(fd, start, limit, tail)


def _log_line_offset(directory: Path, trial_id: str, stream: str, line: int, process: str | None = None) -> int:
    """Byte offset where line ``line`` of a trial's log starts (its end if it has fewer lines; 0 if none)."""
    with _log_file(directory, trial_id, stream, process) as fd:
        return 0 if fd is None else _line_offset(fd, line)


def _read_log_chunk(directory: Path, trial_id: str, stream: str, offset: int, size: int,
                    process: str | None = None) -> bytes:
    """Up to ``size`` bytes of a trial's log from ``offset`` (none while there is no log)."""
    with _log_file(directory, trial_id, stream, process) as fd:
        return b"" if fd is None else os.pread(fd, size, offset)


def _read_lines(fd: int, start: int, limit: int, tail: int | None) -> tuple[int, list[str], int]:
    """Lines ``[start, start+limit)`` of a log (or its last ``tail`` lines): the first one's number, the lines
    (each clipped to ``_MAX_LINE`` characters), and the log's line count.

    Memory is bounded by the answer, not by the log: newlines are counted block by block, a tail is found
    by reading backwards from the end, each line is read only as far as it is shown, and an answer stops
    after ``_MAX_PAGE`` bytes of lines (a tail keeps the last ones)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return (0 if tail is not None else start), [], 0
    end = size - 1 if os.pread(fd, 1, size - 1) == b"\n" else size  # where the last line ends
    total = _count_newlines(fd, 0, end) + 1
    if tail is not None:
        bounds = _last_line_bounds(fd, end, min(tail, total))
    elif start >= total:
        return start, [], total
    else:
        bounds = _line_bounds(fd, end, start, limit)
    spans = list(zip(bounds, bounds[1:]))  # line i: bytes [begin, next begin - 1)
    chosen, budget = [], _MAX_PAGE
    for begin, after in (reversed(spans) if tail is not None else spans):
        length = min(after - 1 - begin, _MAX_LINE_BYTES)
        if chosen and length > budget:
            break
        budget -= length
        chosen.append(_line_text(os.pread(fd, length, begin)))
    if tail is not None:
        chosen.reverse()
        start = total - len(chosen)
    return start, chosen, total


def _count_newlines(fd: int, begin: int, end: int) -> int:
    count = 0
    while begin < end and (block := os.pread(fd, min(_BLOCK, end - begin), begin)):
        count += block.count(b"\n")
        begin += len(block)
    return count


def _last_line_bounds(fd: int, end: int, n: int) -> list[int]:
    """Where each of the last ``n`` lines before ``end`` starts, and ``end + 1`` (read backwards)."""
    starts: list[int] = []
    high = end
    while len(starts) < n and high > 0:
        low = max(0, high - _BLOCK)
        block = os.pread(fd, high - low, low)
        i = len(block)
        while len(starts) < n and (i := block.rfind(b"\n", 0, i)) >= 0:
            starts.append(low + i + 1)
        high = low
    if len(starts) < n:
        starts.append(0)
    return starts[::-1] + [end + 1]


def _line_bounds(fd: int, end: int, start: int, limit: int) -> list[int]:
    """Where lines ``start`` to ``start + limit`` begin (``end + 1`` after the last line before ``end``)."""
    bounds = [0] if start == 0 else []
    seen, pos = 0, 0  # newlines before ``pos``
    while pos < end and len(bounds) <= limit and (block := os.pread(fd, min(_BLOCK, end - pos), pos)):
        count = block.count(b"\n")
        if seen + count < start:
            seen += count
        else:
            i = 0
            while len(bounds) <= limit and (i := block.find(b"\n", i) + 1) > 0:
                seen += 1
                if seen >= start:
                    bounds.append(pos + i)
        pos += len(block)
    return bounds if len(bounds) > limit else bounds + [end + 1]


def _line_offset(fd: int, line: int) -> int:
    """Byte offset where line ``line`` starts (the end of the file if it has fewer lines)."""
    seen, offset = 0, 0
    while line and (chunk := os.pread(fd, _BLOCK, offset)):
        count = chunk.count(b"\n")
        if seen + count >= line:
            idx = -1
            for _ in range(line - seen):
                idx = chunk.index(b"\n", idx + 1)
            return offset + idx + 1
        seen += count
        offset += len(chunk)
    return offset


def _dumps(obj: Any) -> str:
    try:
        return json.dumps(obj, default=str, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(_sanitise(obj), default=str, separators=(",", ":"))


def _sanitise(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _sanitise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitise(v) for v in obj]
    return obj


def _security_headers(response: web.StreamResponse) -> None:
    h = response.headers
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "no-referrer")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Content-Security-Policy", _CSP)
    h.setdefault("Cross-Origin-Resource-Policy", "same-origin")


def _same_origin(request: web.Request) -> bool:
    """A browser request from the dashboard's own page (browsers send Origin on every POST/PATCH).

    Requests without an Origin (scripts, other local users) are not trusted: they need the token.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    return origin in (f"http://{request.host}", f"https://{request.host}")


def _same_secret(given: str, secret: str) -> bool:
    """Whether ``given`` (a header, query or cookie value, possibly not UTF-8) is ``secret``, in constant time."""
    return bool(given) and hmac.compare_digest(given.encode("utf-8", "replace"), secret.encode())


def _cookie_name(experiment_id: str) -> str:
    return f"hpo-token-{re.sub(r'[^A-Za-z0-9]', '', experiment_id)}"


def _stored_token(experiment_id: str) -> str | None:
    """The token another registered experiment's server asks for (None if it has none)."""
    from hpo.experiment import TOKEN_FILE
    from hpo.registry import lookup

    try:
        token = (lookup(experiment_id) / TOKEN_FILE).read_text().strip()
    except (LookupError, OSError, UnicodeDecodeError):
        return None
    return token or None


def create_app(directory: Path, token: str, engine: Any = None, public: bool = False) -> web.Application:
    """The aiohttp application for one experiment (``engine=None`` serves it read-only)."""
    dash = Dashboard(Path(directory), token, engine, public)

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        """An unexpected error: a 500 whose JSON says what in one line, and one line in the log."""
        try:
            return await handler(request)
        except (web.HTTPException, asyncio.CancelledError, ConnectionError):
            raise
        except Exception as exc:
            log.error("%s %s failed", request.method, request.path, exc_info=exc)
            if request.writer.output_size:  # a stream already under way: all that can be done is to end it
                raise ConnectionResetError("the stream ended on an internal error") from None
            response = web.json_response({"error": f"internal error: {_one_line(exc)}"}, status=500)
            _security_headers(response)
            return response

    @web.middleware
    async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not dash.public and not _is_loopback(_host_name(request.host)):
            raise web.HTTPForbidden(text="this dashboard listens on loopback only; open it as "
                                         "http://localhost:PORT or http://127.0.0.1:PORT")
        mutating = request.method not in ("GET", "HEAD", "OPTIONS")
        other = request.match_info.get("experiment_id")
        if dash.public and other is not None and other != dash.main.experiment_id:
            if not await dash.other_token_given(request, other):
                raise web.HTTPUnauthorized(text=f"experiment {other!r} is served here only with its own token "
                                                "(Authorization: Bearer TOKEN, or ?token=TOKEN)")
        elif dash.public or (mutating and not _nni_client(request)):
            if not dash.token_given(request):
                browser = _same_origin(request) and (dash.cookie_given(request) if dash.public
                                                     else _is_loopback(request.remote))
                if dash.public and not mutating:
                    browser = dash.cookie_given(request)
                if not browser:
                    raise web.HTTPUnauthorized(
                        text="this needs the experiment's token: open the URL printed with ?token=..., "
                             "or send Authorization: Bearer TOKEN" if dash.public else
                             "this action needs the experiment's token (Authorization: Bearer TOKEN)")
        dash.connections.trust(request.transport)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            _security_headers(exc)
            raise
        if not response.prepared:
            _security_headers(response)
        return response

    app = web.Application(middlewares=[errors, security], client_max_size=MAX_BODY)
    app[DASH_KEY] = dash
    r = app.router
    r.add_get("/", dash.index)
    r.add_static("/static", STATIC, follow_symlinks=False, append_version=False)
    r.add_get(f"{API}/openapi.json", dash.openapi)
    r.add_get(f"{API}/events", dash.events)
    r.add_get(f"{API}/experiments", dash.experiments)
    r.add_patch(f"{API}/experiment", dash.update)
    r.add_post(f"{API}/experiment/stop", dash.stop)
    r.add_post(f"{API}/experiment/pause", dash.pause)
    r.add_post(f"{API}/experiment/activate", dash.activate)
    r.add_post(f"{API}/trials", dash.submit)
    r.add_post(f"{API}/trials/rerun", dash.rerun)
    r.add_post(f"{API}/trials/{{trial_id}}/kill", dash.kill)
    r.add_post(f"{API}/trials/{{trial_id}}/rerun", dash.rerun_one)
    r.add_get(f"{API}/trials/{{trial_id}}/logs/stream", dash.logs_stream)
    for prefix in (API, f"{API}/experiments/{{experiment_id}}"):
        r.add_get(f"{prefix}/experiment", dash.experiment)
        r.add_get(f"{prefix}/trials", dash.trials)
        r.add_get(f"{prefix}/trials/{{trial_id}}", dash.trial)
        r.add_get(f"{prefix}/trials/{{trial_id}}/logs", dash.logs)
        r.add_get(f"{prefix}/export", dash.export)
        r.add_get(f"{prefix}/chart-data", dash.chart_data)
        r.add_get(f"{prefix}/metrics", dash.metrics)
        r.add_get(f"{prefix}/importance", dash.importance)
        r.add_get(f"{prefix}/checkpoints", dash.checkpoints)
        r.add_get(f"{prefix}/models", dash.models)

    async def on_shutdown(_app: web.Application) -> None:
        dash.hub.close()

    async def on_cleanup(_app: web.Application) -> None:
        dash.close()

    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    if not public:  # NNI's client sends no credentials: its API is served on loopback only (see webui.nni_api)
        add_nni_routes(app, dash)
    return app


def _nni_client(request: web.Request) -> bool:
    """A call of NNI's REST API from this machine that no browser page made (it has no ``Origin``)."""
    return (request.path.startswith(NNI_PREFIX + "/") and _is_loopback(request.remote)
            and "Origin" not in request.headers)


class _Connections:
    """A server's open connections, oldest first.

    A connection becomes *trusted* with its first authenticated request (on loopback: any request from a
    loopback name, as reads need no token there).  One still untrusted ``IDLE_TIMEOUT`` s after it was
    accepted is closed, and when a new one would pass the cap the oldest untrusted one is closed to make
    room; the newcomer is refused only when every open connection is trusted.  So idle, slow or
    unauthenticated clients never hold the engine's descriptors for long, nor lock the dashboard out."""

    def __init__(self) -> None:
        self._open: dict[asyncio.BaseTransport, tuple[socket.socket, asyncio.TimerHandle]] = {}
        self._trusted: set[asyncio.BaseTransport] = set()

    def add(self, transport: asyncio.BaseTransport, sock: socket.socket) -> None:
        timer = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._expire, transport)
        self._open[transport] = (sock, timer)

    def trust(self, transport: asyncio.BaseTransport | None) -> None:
        entry = self._open.get(transport) if transport is not None else None
        if entry is not None and transport not in self._trusted:
            self._trusted.add(transport)
            entry[1].cancel()

    def _expire(self, transport: asyncio.BaseTransport) -> None:
        if transport in self._open and transport not in self._trusted:
            transport.abort()

    def _forget(self, transport: asyncio.BaseTransport) -> None:
        self._open.pop(transport)[1].cancel()
        self._trusted.discard(transport)

    def make_room(self, cap: int) -> bool:
        """Whether one more connection may be opened (closing the oldest untrusted one if need be)."""
        for transport in [t for t, (sock, _) in self._open.items() if sock.fileno() == -1]:
            self._forget(transport)  # closed since
        if len(self._open) < cap:
            return True
        oldest = next((t for t in self._open if t not in self._trusted), None)
        if oldest is None:
            return False
        oldest.abort()
        self._forget(oldest)
        return True


class _CappedSite(web.BaseSite):
    """Serves a runner on a bound socket through an accept loop of its own, so that every connection is
    counted against ``cap`` before it is served (see :class:`_Connections`)."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket, connections: _Connections, cap: int) -> None:
        super().__init__(runner)
        self._sock, self._connections, self._cap = sock, connections, cap
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    async def start(self) -> None:
        await super().start()
        self._task = asyncio.get_running_loop().create_task(self._accept())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sock.close()
        await super().stop()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:  # out of descriptors (EMFILE, ENFILE) or memory: wait until some are freed
                log.warning("cannot accept a dashboard connection: %s", exc.strerror or exc)
                await asyncio.sleep(0.5)
                continue
            if not self._connections.make_room(self._cap):
                _refuse(conn)
                continue
            try:
                transport, _ = await loop.connect_accepted_socket(server, conn)
            except OSError:
                conn.close()
                continue
            self._connections.add(transport, conn)


def _refuse(conn: socket.socket) -> None:
    """Answer 503 on a just-accepted connection and close it (its send buffer is empty: the send fits)."""
    body = b"too many open connections to this dashboard; try again shortly\n"
    with contextlib.suppress(OSError):
        conn.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                  b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    conn.close()


def _raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (65536 at most), so that trials
    keep headroom next to the dashboard's connections; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return 65536 if soft == resource.RLIM_INFINITY else soft


class ApiServer:
    """Serves :func:`create_app` on an already-bound socket (so 'port in use' is found up front), with at
    most ``MAX_CONNECTIONS`` connections (a quarter of the open-files limit if that is less)."""

    def __init__(self, app: web.Application, sock: socket.socket) -> None:
        self.app, self.sock = app, sock
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        cap = min(MAX_CONNECTIONS, max(16, _raise_fd_limit() // 4))
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0, keepalive_timeout=IDLE_TIMEOUT,
                                    logger=log)
        await self.runner.setup()
        dash = self.app[DASH_KEY]
        assert isinstance(dash, Dashboard)
        await _CappedSite(self.runner, self.sock, dash.connections, cap).start()

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
