"""The JSON API (aiohttp), served from the engine's process on the engine's loop.

Reads go to a read-only store connection on a worker thread, so they never block the engine.
Actions (stop, kill, update) go to the engine and need the experiment's token
(``Authorization: Bearer TOKEN`` or ``?token=``), or a same-origin request from loopback.
A server bound to a non-loopback address needs the token for every request.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import socket
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from hpo.storage import TRIAL_STATES, ExperimentStore

__all__ = ["create_app", "ApiServer"]

API = "/api/v1"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _Api:
    def __init__(self, directory: Path, token: str, engine: Any = None, control: Any = None,
                 public: bool = False) -> None:
        self.directory = Path(directory)
        self.store = ExperimentStore(directory, readonly=True)
        self.token = token
        self.engine = engine        # None: read-only (view)
        self.control = control      # thread-safe facade for actions (the Experiment's runner)
        self.public = public

    async def read(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))

    def authorised(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip() or request.query.get("token", "")
        return bool(given) and hmac.compare_digest(given, self.token)

    # -- reads ---------------------------------------------------------------------------------------
    async def experiment(self, request: web.Request) -> web.Response:
        def collect() -> dict[str, Any]:
            exp = self.store.experiment()
            maximize = _maximize(exp["config"])
            best = self.store.best_trial(maximize)
            exp["trial_counts"] = self.store.status_counts()
            exp["best_trial"] = _trial_json(best) if best else None
            exp["read_only"] = self.engine is None
            if self.engine is not None:
                exp["status"] = self.engine.status
            return exp
        return web.json_response(await self.read(collect), dumps=_dumps)

    async def trials(self, request: web.Request) -> web.Response:
        q = request.query
        status = q.get("status")
        if status is not None:
            states = [s.strip().upper() for s in status.split(",") if s.strip()]
            bad = [s for s in states if s not in TRIAL_STATES]
            if bad:
                raise web.HTTPBadRequest(text=f"unknown status {bad[0]!r}; expected one of {', '.join(TRIAL_STATES)}")
            status = states  # type: ignore[assignment]
        limit = _int_arg(q, "limit", 100, 1, 10000)
        offset = _int_arg(q, "offset", 0, 0, None)
        order_by = q.get("sort", "seq")
        try:
            rows = await self.read(self.store.trials, status=status, limit=limit, offset=offset, order_by=order_by,
                                   descending=q.get("order", "asc") == "desc")
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc))
        return web.json_response([_trial_json(r) for r in rows], dumps=_dumps)

    async def trial(self, request: web.Request) -> web.Response:
        trial_id = request.match_info["trial_id"]

        def collect() -> dict[str, Any] | None:
            rec = self.store.trial(trial_id)
            if rec is None:
                return None
            out = _trial_json(rec)
            out["intermediate"] = [m["value"] for m in self.store.metrics(rec["seq"], "intermediate")]
            return out
        data = await self.read(collect)
        if data is None:
            raise web.HTTPNotFound(text=f"no trial {trial_id!r}")
        return web.json_response(data, dumps=_dumps)

    async def logs(self, request: web.Request) -> web.Response:
        trial_id = request.match_info["trial_id"]
        stream = request.query.get("stream", "stdout")
        if stream not in ("stdout", "stderr"):
            raise web.HTTPBadRequest(text="stream must be 'stdout' or 'stderr'")
        rec = await self.read(self.store.trial, trial_id)
        if rec is None:
            raise web.HTTPNotFound(text=f"no trial {trial_id!r}")
        path = (self.directory / "trials" / rec["id"] / f"{stream}.log").resolve()
        if self.directory.resolve() not in path.parents:
            raise web.HTTPForbidden(text="path outside the experiment folder")
        line = _int_arg(request.query, "line", 0, 0, None)
        limit = _int_arg(request.query, "limit", 1000, 1, 100000)
        lines = await self.read(_read_lines, path, line, limit)
        return web.json_response({"trial_id": trial_id, "stream": stream, "line": line, "lines": lines})

    async def export(self, request: web.Request) -> web.Response:
        return web.json_response(await self.read(self.store.export_data), dumps=_dumps)

    # -- actions ---------------------------------------------------------------------------------------
    def _require_engine(self) -> Any:
        if self.engine is None:
            raise web.HTTPConflict(text="this experiment is open read-only (view); resume it to change it")
        return self.engine

    async def stop(self, request: web.Request) -> web.Response:
        engine = self._require_engine()
        engine.request_stop()
        return web.json_response({"status": engine.status})

    async def kill(self, request: web.Request) -> web.Response:
        engine = self._require_engine()
        trial_id = request.match_info["trial_id"]
        if not await engine.kill_trial(trial_id):
            raise web.HTTPNotFound(text=f"trial {trial_id!r} is not running")
        return web.json_response({"killed": trial_id})

    async def update(self, request: web.Request) -> web.Response:
        engine = self._require_engine()
        try:
            body = await request.json()
        except json.JSONDecodeError:
            raise web.HTTPBadRequest(text="expected a JSON object")
        allowed = {"trial_concurrency", "max_trial_number", "max_experiment_duration", "search_space"}
        if not isinstance(body, dict) or not body or set(body) - allowed:
            raise web.HTTPBadRequest(text=f"expected a JSON object with some of: {', '.join(sorted(allowed))}")
        try:
            _validate_changes(engine.config, body)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc))
        engine.update_config(**body)
        return web.json_response({"updated": sorted(body)})


def _validate_changes(config: Any, changes: dict[str, Any]) -> None:
    """Validate on a copy, so a bad value changes nothing."""
    trial = type(config).from_dict(config.to_dict())
    for key, value in changes.items():
        setattr(trial, key, value)


def _maximize(config: dict[str, Any]) -> bool:
    args = (config.get("tuner") or {}).get("class_args") or {}
    return str(args.get("optimize_mode", "maximize")).lower() != "minimize"


def _trial_json(rec: dict[str, Any]) -> dict[str, Any]:
    return {"id": rec["id"], "sequence_id": rec["seq"], "parameters": rec["parameters"], "status": rec["status"],
            "created_at": rec["created_at"], "started_at": rec["started_at"], "ended_at": rec["ended_at"],
            "exit_code": rec["exit_code"], "message": rec["message"], "final": rec["final"],
            "value": rec["final_value"], "gpus": rec["gpus"], "rerun_of": rec["rerun_of"]}


def _int_arg(query: Any, name: str, default: int, low: int, high: int | None) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer, got {raw!r}")
    if value < low or (high is not None and value > high):
        raise web.HTTPBadRequest(text=f"{name} must be between {low} and {high if high is not None else 'inf'}")
    return value


def _read_lines(path: Path, start: int, limit: int) -> list[str]:
    if not path.exists():
        return []
    out: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh):
            if i < start:
                continue
            if len(out) >= limit:
                break
            out.append(line.rstrip("\n"))
    return out


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str, allow_nan=False) if _finite(obj) else json.dumps(_sanitise(obj), default=str)


def _finite(obj: Any) -> bool:
    try:
        json.dumps(obj, default=str, allow_nan=False)
        return True
    except ValueError:
        return False


def _sanitise(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj or obj in (float("inf"), float("-inf")):
        return None
    if isinstance(obj, dict):
        return {k: _sanitise(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_sanitise(v) for v in obj]
    return obj


_INDEX = """<!doctype html><html><head><meta charset="utf-8"><title>hpo experiment</title></head>
<body><h1>hpo</h1><p>The dashboard is being built; the JSON API is at <a href="/api/v1/experiment">/api/v1/experiment</a>.</p>
</body></html>"""


def create_app(directory: Path, token: str, engine: Any = None, public: bool = False) -> web.Application:
    """The aiohttp application for one experiment (``engine=None`` serves it read-only)."""
    api = _Api(directory, token, engine, public=public)

    @web.middleware
    async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
        mutating = request.method not in ("GET", "HEAD", "OPTIONS")
        if api.public or mutating:
            if not api.authorised(request):
                same_origin = _same_origin(request)
                if api.public or not (same_origin and _is_loopback(request.remote)):
                    raise web.HTTPUnauthorized(text="this action needs the experiment's token "
                                                    "(Authorization: Bearer TOKEN)")
        response = await handler(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    app = web.Application(middlewares=[security])
    async def index(request: web.Request) -> web.Response:
        return web.Response(text=_INDEX, content_type="text/html")

    app.router.add_get("/", index)
    app.router.add_get(f"{API}/experiment", api.experiment)
    app.router.add_patch(f"{API}/experiment", api.update)
    app.router.add_post(f"{API}/experiment/stop", api.stop)
    app.router.add_get(f"{API}/trials", api.trials)
    app.router.add_get(f"{API}/trials/{{trial_id}}", api.trial)
    app.router.add_get(f"{API}/trials/{{trial_id}}/logs", api.logs)
    app.router.add_post(f"{API}/trials/{{trial_id}}/kill", api.kill)
    app.router.add_get(f"{API}/export", api.export)
    app.on_cleanup.append(lambda _app: _close(api))
    return app


async def _close(api: _Api) -> None:
    api.store.close()


def _same_origin(request: web.Request) -> bool:
    """A browser request from the dashboard's own page (browsers send Origin on every POST/PATCH).

    Requests without an Origin (scripts, other local users) are not trusted: they need the token.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    return origin in (f"http://{request.host}", f"https://{request.host}")


class ApiServer:
    """Serves :func:`create_app` on an already-bound socket (so 'port in use' is found up front)."""

    def __init__(self, app: web.Application, sock: socket.socket) -> None:
        self.app, self.sock = app, sock
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock).start()

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
