"""HTTP routes of the fake apiserver (aiohttp).

Contracts: paths, verbs, Status error bodies, list/watch/log behaviour as documented in
``tests/fake_k8s/__init__.py``. Every request is counted in ``cluster.requests`` by
``(verb, resource)``; watch and log streams are registered so they can be dropped.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, Callable

import jsonpatch
from aiohttp import web

from .deletion import delete, success_status
from .logs import parse_rfc3339_seconds
from .selectors import parse_field_selector, parse_label_selector
from .store import RESOURCES, ApiError
from .validation import validate

GIT_VERSION = "v1.30.0"
_NS_PATH = re.compile(r"^/(?:api/v1|apis/(batch|policy)/v1)/namespaces/([^/]+)/([^/]+)"
                      r"(?:/([^/]+)(?:/([^/]+))?)?/?$")
_ALL_PATH = re.compile(r"^/(?:api/v1|apis/(batch)/v1)/([^/]+)/?$")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _error(exc: ApiError) -> web.Response:
    return _json(exc.status(), exc.code)


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def _int_param(request: web.Request, key: str) -> int | None:
    raw = request.query.get(key)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise _bad_request(f"invalid value for {key}: {raw!r}") from None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class Api:
    """Request handlers bound to one FakeCluster."""

    def __init__(self, cluster: Any):
        self.c = cluster
        self.rt = cluster.rt

    # -- plumbing ------------------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        try:
            if request.path not in ("/version", "/healthz", "/readyz", "/livez") and \
                    not self._authenticated(request):
                return _json({"kind": "Status", "apiVersion": "v1", "metadata": {},
                              "status": "Failure", "message": "Unauthorized",
                              "reason": "Unauthorized", "code": 401}, 401)
            return await handler(request)
        except ApiError as exc:
            return _error(exc)

    def _authenticated(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if self.c.token and header == f"Bearer {self.c.token}":
            return True
        transport = request.transport
        if self.c.tls and transport is not None and transport.get_extra_info("peercert"):
            return True
        return not self.c.token and not self.c.tls

    def count(self, verb: str, resource: str) -> None:
        with self.rt.store.lock:
            self.c.requests[(verb, resource)] += 1

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware], client_max_size=8 * 2**20)
        app.router.add_get("/version", self.version)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/api", self.api_versions)
        app.router.add_get("/apis", self.api_groups)
        app.router.add_get("/api/v1", self.core_resources)
        app.router.add_get("/apis/batch/v1", self.batch_resources)
        app.router.add_get("/api/v1/namespaces/{ns}", self.namespace)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    # -- discovery -----------------------------------------------------------------------------
    async def version(self, request: web.Request) -> web.Response:
        return _json({"major": "1", "minor": "30", "gitVersion": GIT_VERSION,
                      "gitCommit": "fake", "gitTreeState": "clean",
                      "buildDate": "2024-04-17T00:00:00Z", "goVersion": "go1.22.2",
                      "compiler": "gc", "platform": "linux/amd64"})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def api_versions(self, request: web.Request) -> web.Response:
        return _json({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}]})

    async def api_groups(self, request: web.Request) -> web.Response:
        groups = [{"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                   "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}}
                  for g in ("batch", "policy")]
        return _json({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})

    def _resource_list(self, group: str) -> dict[str, Any]:
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        items = [{"name": r.name, "singularName": r.kind.lower(), "namespaced": True,
                  "kind": r.kind, "verbs": verbs} for r in RESOURCES.values() if r.group == group]
        if group == "":
            items += [{"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod",
                       "verbs": ["get"]},
                      {"name": "pods/eviction", "singularName": "", "namespaced": True,
                       "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]}]
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/v1" if group else "v1", "resources": items}

    async def core_resources(self, request: web.Request) -> web.Response:
        return _json(self._resource_list(""))

    async def batch_resources(self, request: web.Request) -> web.Response:
        return _json(self._resource_list("batch"))

    async def namespace(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        return _json({"kind": "Namespace", "apiVersion": "v1", "metadata": {
            "name": ns, "uid": f"ns-{ns}", "resourceVersion": "1",
            "creationTimestamp": "2024-01-01T00:00:00Z"}, "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"}})

    # -- routing -------------------------------------------------------------------------------
    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path, method = request.path, request.method
        m = _NS_PATH.match(path)
        if m:
            group, ns, resource, name, sub = m.groups()
        else:
            m = _ALL_PATH.match(path)
            if not m:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            group, resource = m.groups()
            ns = name = sub = None
        res = RESOURCES.get(resource)
        if res is None or (res.group or None) != group:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if name is None:
            if method == "GET":
                if _truthy(request.query.get("watch")):
                    self.count("watch", resource)
                    return await self.watch(request, resource, ns)
                self.count("list", resource)
                return self.list(request, resource, ns)
            if method == "POST" and ns is not None:
                self.count("create", resource)
                return await self.create(request, resource, ns)
            if method == "DELETE" and ns is not None:
                self.count("deletecollection", resource)
                return await self.delete_collection(request, resource, ns)
        elif sub is None:
            if method == "GET":
                self.count("get", resource)
                return _json(self.rt.store.get(resource, ns, name))
            if method == "PUT":
                self.count("update", resource)
                return await self.replace(request, resource, ns, name)
            if method == "PATCH":
                self.count("patch", resource)
                return await self.patch(request, resource, ns, name)
            if method == "DELETE":
                self.count("delete", resource)
                return await self.delete_one(request, resource, ns, name)
        elif resource == "jobs" and sub == "status" and method == "GET":
            self.count("get", "jobs/status")
            return _json(self.rt.store.get(resource, ns, name))
        elif resource == "pods" and sub == "log" and method == "GET":
            self.count("get", "pods/log")
            return await self.log(request, ns, name)
        elif resource == "pods" and sub == "eviction" and method == "POST":
            self.count("create", "pods/eviction")
            self.rt.store.get("pods", ns, name)
            await self._body(request)
            self.c._evict_now(ns, name)
            return _json({"kind": "Status", "apiVersion": "v1", "metadata": {},
                          "status": "Success", "code": 201}, 201)
        elif sub is not None and not ((resource, sub) in {("jobs", "status"), ("pods", "log"),
                                                          ("pods", "eviction")}):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        raise ApiError(405, "MethodNotAllowed",
                       "the server does not allow this method on the requested resource")

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise _bad_request(f"error decoding request body: {exc}") from None

    def _predicate(self, request: web.Request) -> Callable[[dict], bool]:
        try:
            labels = parse_label_selector(request.query.get("labelSelector"))
            fields = parse_field_selector(request.query.get("fieldSelector"))
        except ValueError as exc:
            raise _bad_request(f"unable to parse requirement: {exc}") from None
        return lambda o: labels(o) and fields(o)

    # -- verbs ---------------------------------------------------------------------------------
    def list(self, request: web.Request, resource: str, ns: str | None) -> web.Response:
        res = RESOURCES[resource]
        items, rv = self.rt.store.list(resource, ns, self._predicate(request))
        return _json({"kind": f"{res.kind}List", "apiVersion": res.api_version,
                      "metadata": {"resourceVersion": str(rv)}, "items": items})

    async def create(self, request: web.Request, resource: str, ns: str) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            raise _bad_request("the request body must be a JSON object")
        meta = body.setdefault("metadata", {})
        if meta.get("namespace") not in (None, "", ns):
            raise _bad_request("the namespace of the provided object does not match the namespace "
                               "sent on the request")
        meta["namespace"] = ns
        for k in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp"):
            meta.pop(k, None)
        probe = dict(body, metadata=dict(meta))
        if not meta.get("name") and meta.get("generateName"):
            probe["metadata"]["name"] = meta["generateName"] + "abcde"
        validate(resource, probe)
        hook: Callable[[dict[str, Any]], None] | None = None
        if resource == "pods":
            body["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
            body["spec"].setdefault("terminationGracePeriodSeconds", 30)
            body["spec"].setdefault("restartPolicy", "Always")
        elif resource == "jobs":
            spec = body.setdefault("spec", {})
            spec.setdefault("parallelism", 1)
            if spec.get("completionMode", "NonIndexed") == "NonIndexed":
                spec.setdefault("completions", 1)
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completionMode", "NonIndexed")
            spec.setdefault("suspend", False)
            spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
            body["status"] = {}

            def job_hook(obj: dict[str, Any]) -> None:
                uid, name = obj["metadata"]["uid"], obj["metadata"]["name"]
                sel = {"batch.kubernetes.io/controller-uid": uid}
                obj["spec"].setdefault("selector", {"matchLabels": sel})
                tmeta = obj["spec"]["template"].setdefault("metadata", {})
                tmeta.setdefault("labels", {}).update({
                    "batch.kubernetes.io/controller-uid": uid, "controller-uid": uid,
                    "batch.kubernetes.io/job-name": name, "job-name": name})
            hook = job_hook
        elif resource == "services":
            spec = body.setdefault("spec", {})
            if spec.get("clusterIP") != "None":
                spec["clusterIP"] = f"10.96.{len(self.rt.store.snapshot('services', None)) % 250}.1"
        created = self.rt.store.create(resource, body, hook)
        self.rt.kick()
        return _json(created, 201)

    def _keep_status(self, resource: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        if resource in ("pods", "jobs"):
            new["status"] = old.get("status", {})

    async def replace(self, request: web.Request, resource: str, ns: str,
                      name: str) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            raise _bad_request("the request body must be a JSON object")
        meta = body.setdefault("metadata", {})
        if meta.get("name") not in (None, name):
            raise _bad_request("the name of the object does not match the name on the URL")
        meta["name"], meta["namespace"] = name, ns
        old = self.rt.store.get(resource, ns, name)
        if not meta.get("resourceVersion"):
            raise ApiError(422, "Invalid", f'{RESOURCES[resource].kind} "{name}" is invalid: '
                           "metadata.resourceVersion: Invalid value: 0x0: must be specified for "
                           "an update", {"name": name, "kind": RESOURCES[resource].kind,
                                         "causes": [{"reason": "FieldValueInvalid",
                                                     "field": "metadata.resourceVersion",
                                                     "message": "must be specified for an update"}]})
        self._keep_status(resource, old, body)
        validate(resource, body)
        updated = self.rt.store.update(resource, body, check_rv=True)
        self.rt.kick()
        return _json(updated)

    async def patch(self, request: web.Request, resource: str, ns: str,
                    name: str) -> web.Response:
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        body = await self._body(request)
        old = self.rt.store.get(resource, ns, name)
        if ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if not isinstance(body, dict):
                raise _bad_request("the patch must be a JSON object")
            new = merge_patch(old, body)
        elif ctype == "application/json-patch+json":
            try:
                new = jsonpatch.apply_patch(old, body or [])
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException,
                    TypeError) as exc:
                raise ApiError(422, "Invalid", f"the server rejected our request due to an error "
                               f"in our request: {exc}") from None
        else:
            raise ApiError(415, "UnsupportedMediaType",
                           'the body of the request was in an unknown format - accepted media '
                           'types include: application/json-patch+json, application/merge-patch+'
                           'json, application/strategic-merge-patch+json')
        patched_rv = (new.get("metadata") or {}).get("resourceVersion")
        check = patched_rv is not None and patched_rv != old["metadata"]["resourceVersion"]
        new.setdefault("metadata", {}).update(name=name, namespace=ns)
        self._keep_status(resource, old, new)
        validate(resource, new)
        updated = self.rt.store.update(resource, new, check_rv=check)
        self.rt.kick()
        return _json(updated)

    async def _delete_options(self, request: web.Request) -> tuple[str | None, int | None]:
        body = await self._body(request) or {}
        if not isinstance(body, dict):
            raise _bad_request("DeleteOptions must be a JSON object")
        policy = request.query.get("propagationPolicy") or body.get("propagationPolicy")
        orphan = body.get("orphanDependents", request.query.get("orphanDependents"))
        if policy is None and orphan is not None:
            policy = "Orphan" if orphan in (True, "true") else "Background"
        grace = _int_param(request, "gracePeriodSeconds")
        if grace is None and body.get("gracePeriodSeconds") is not None:
            grace = int(body["gracePeriodSeconds"])
        return policy, grace

    def _delete(self, resource: str, ns: str, name: str, policy: str | None,
                grace: int | None) -> tuple[dict[str, Any], bool]:
        return delete(self.rt, resource, ns, name, policy, grace,
                      active_pod_uids=self.c.kubelet.active_uids())

    async def delete_one(self, request: web.Request, resource: str, ns: str,
                         name: str) -> web.Response:
        policy, grace = await self._delete_options(request)
        obj, removed = self._delete(resource, ns, name, policy, grace)
        if resource == "pods":
            return _json(obj)
        if removed:
            return _json(success_status(resource, obj))
        return _json(obj, 202)

    async def delete_collection(self, request: web.Request, resource: str,
                                ns: str) -> web.Response:
        policy, grace = await self._delete_options(request)
        res = RESOURCES[resource]
        items, _ = self.rt.store.list(resource, ns, self._predicate(request))
        out = []
        for item in items:
            try:
                out.append(self._delete(resource, ns, item["metadata"]["name"], policy, grace)[0])
            except ApiError as exc:
                if exc.code != 404:
                    raise
        return _json({"kind": f"{res.kind}List", "apiVersion": res.api_version,
                      "metadata": {"resourceVersion": str(self.rt.store.rv)}, "items": out})

    # -- watch ---------------------------------------------------------------------------------
    async def watch(self, request: web.Request, resource: str,
                    ns: str | None) -> web.StreamResponse:
        res = RESOURCES[resource]
        store = self.rt.store
        pred = self._predicate(request)
        timeout = _int_param(request, "timeoutSeconds")
        bookmarks = _truthy(request.query.get("allowWatchBookmarks"))
        raw_rv = request.query.get("resourceVersion") or "0"
        try:
            since = int(raw_rv)
        except ValueError:
            raise _bad_request(f'invalid resource version: "{raw_rv}"') from None
        matches = lambda o: o is not None and (ns is None or o["metadata"].get("namespace") == ns) \
            and pred(o)  # noqa: E731
        expired: ApiError | None = None
        initial: list[dict[str, Any]] = []
        with store.lock:
            try:
                if since == 0:
                    initial = [{"type": "ADDED", "object": o}
                               for o in store.list(resource, ns, pred)[0]]
                    queue, backlog = store.subscribe(resource, None)
                else:
                    queue, backlog = store.subscribe(resource, since)
            except ApiError as exc:
                expired = exc
        if expired is not None and self.c.watch_410_mode == "http":
            return _error(expired)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                       "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if expired is not None:
            await resp.write((json.dumps({"type": "ERROR", "object": expired.status()}) + "\n")
                             .encode())
            await resp.write_eof()
            return resp
        self.c._streams[id(request)] = request
        deadline = time.monotonic() + timeout if timeout else None
        try:
            for ev in initial:
                await resp.write((json.dumps(ev) + "\n").encode())
            pending = list(backlog)
            while True:
                for ev in pending:
                    out = self._translate(ev, matches)
                    if out is not None:
                        await resp.write((json.dumps(out) + "\n").encode())
                pending = []
                wait = 1.0 if bookmarks else 30.0
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        break
                try:
                    pending.append(await asyncio.wait_for(queue.get(), wait))
                    while not queue.empty():
                        pending.append(queue.get_nowait())
                except asyncio.TimeoutError:
                    if bookmarks and queue.empty():
                        await resp.write((json.dumps({"type": "BOOKMARK", "object": {
                            "kind": res.kind, "apiVersion": res.api_version,
                            "metadata": {"resourceVersion": str(store.rv)}}}) + "\n").encode())
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError, RuntimeError):
            pass
        finally:
            store.unsubscribe(resource, queue)
            self.c._streams.pop(id(request), None)
        return resp

    @staticmethod
    def _translate(ev: Any, matches: Callable[[dict | None], bool]) -> dict[str, Any] | None:
        """A store event as this watcher sees it (selector transitions become ADDED/DELETED)."""
        now_ok, old_ok = matches(ev.obj), matches(ev.old)
        if ev.type == "ADDED":
            return {"type": "ADDED", "object": ev.obj} if now_ok else None
        if ev.type == "DELETED":
            return {"type": "DELETED", "object": ev.obj} if (old_ok or now_ok) else None
        if now_ok and old_ok:
            return {"type": "MODIFIED", "object": ev.obj}
        if now_ok:
            return {"type": "ADDED", "object": ev.obj}
        if old_ok:
            return {"type": "DELETED", "object": ev.obj}
        return None

    # -- logs ----------------------------------------------------------------------------------
    async def log(self, request: web.Request, ns: str, name: str) -> web.StreamResponse:
        pod = self.rt.store.get("pods", ns, name)
        q = request.query
        names = [c["name"] for c in pod["spec"].get("initContainers") or []] + \
                [c["name"] for c in pod["spec"].get("containers") or []]
        container = q.get("container")
        if not container:
            mains = [c["name"] for c in pod["spec"].get("containers") or []]
            if len(mains) != 1:
                raise _bad_request(f"a container name must be specified for pod {name}, choose "
                                   f"one of: [{' '.join(mains)}]")
            container = mains[0]
        if container not in names:
            raise _bad_request(f"container {container} is not valid for pod {name}")
        if _truthy(q.get("previous")):
            raise _bad_request(f'previous terminated container "{container}" in pod "{name}" '
                               "not found")
        run = self.c.kubelet.run_for(ns, name)
        log = run.logs.get(container) if run is not None else None
        if log is None:
            statuses = (pod.get("status") or {}).get("containerStatuses", []) + \
                (pod.get("status") or {}).get("initContainerStatuses", [])
            state = next((s.get("state") for s in statuses if s.get("name") == container), None)
            reason = ((state or {}).get("waiting") or {}).get("reason", "ContainerCreating")
            if reason in ("ErrImagePull", "ImagePullBackOff"):
                raise _bad_request(f'container "{container}" in pod "{name}" is waiting to start: '
                                   "trying and failing to pull image")
            raise _bad_request(f'container "{container}" in pod "{name}" is waiting to start: '
                               f"{reason}")
        since_time = None
        if q.get("sinceTime"):
            try:
                since_time = parse_rfc3339_seconds(q["sinceTime"])
            except ValueError:
                raise _bad_request(f"invalid sinceTime: {q['sinceTime']!r}") from None
        timestamps = _truthy(q.get("timestamps"))
        limit = _int_param(request, "limitBytes")
        index = log.select(_int_param(request, "sinceSeconds"), since_time,
                           _int_param(request, "tailLines"))
        if not _truthy(q.get("follow")):
            data = b"".join(log.line_bytes(e, timestamps) for e in log.lines[index:])
            if limit is not None:
                data = data[:limit]
            return web.Response(body=data, content_type="text/plain")
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        self.c._streams[id(request)] = request
        sent = 0
        try:
            while True:
                while index < len(log.lines):
                    chunk = log.line_bytes(log.lines[index], timestamps)
                    index += 1
                    if limit is not None:
                        chunk = chunk[:max(0, limit - sent)]
                    if chunk:
                        await resp.write(chunk)
                        sent += len(chunk)
                    if limit is not None and sent >= limit:
                        break
                if log.closed and index >= len(log.lines) or \
                        (limit is not None and sent >= limit):
                    break
                await log.wait(1.0)
                if self.rt.store.find("pods", ns, name) is None:
                    break
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError, RuntimeError):
            pass
        finally:
            self.c._streams.pop(id(request), None)
        return resp


__all__ = ["Api", "merge_patch"]
