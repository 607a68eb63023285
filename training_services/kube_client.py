"""A small asyncio Kubernetes API client for the Kubernetes training service, on the engine's event loop.

Built on ``kubernetes_asyncio`` (the optional extra ``pip install hpo[kubernetes]``), chosen over kr8s
because it runs on aiohttp, which hpo already uses, and because it loads every kubeconfig form users have
(contexts, in-cluster service-account config, bearer tokens, client certificates, exec and OIDC plugins).
Only its configuration loading (and its token refresh) and TLS setup are used: requests go out as plain JSON
on an aiohttp session over its connection pool, because the generated methods lack what this service depends on
(``sinceTime`` on pod logs, raw watch streams whose ``ERROR``/410 events must trigger a re-list rather than an
exception after one retry) and cost a model (de)serialisation per object.  Proxies come from the kubeconfig or,
once at start, from ``HTTPS_PROXY``/``NO_PROXY`` (aiohttp would otherwise look them and ~/.netrc up per request).

:class:`Reflector` is the list+watch loop (an informer): it keeps a cache of the objects matching a label
selector, watches from the list's resourceVersion with bookmarks, and on ``410 Expired`` (in the stream or
as the HTTP status) or a dropped stream re-lists and reports the difference, so no change is missed.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Callable
from urllib.parse import urlencode

__all__ = ["KubeClient", "KubeError", "Reflector", "MISSING_EXTRA", "load_client"]

log = logging.getLogger("hpo.kubernetes")

try:  # watch events are whole objects, several per trial: orjson (in the kubernetes extra) decodes them ~3x faster
    import orjson
    _loads = orjson.loads

    def _dumps(body: Any) -> bytes:
        return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)  # ~10x faster than json.dumps
except ImportError:  # pragma: no cover - the extra brings it
    _loads = json.loads

    def _dumps(body: Any) -> bytes:
        return json.dumps(body, separators=(",", ":")).encode()

MISSING_EXTRA = ("the kubernetes training service needs the kubernetes extra: "
                 "pip install 'hpo[kubernetes]' (it installs kubernetes_asyncio)")
WATCH_SECONDS = 240          # a watch is renewed this often (the server ends it; resumed from the last RV)
REQUEST_TIMEOUT = 30.0
_BACKOFF_MAX = 5.0


class KubeError(Exception):
    """A failed API call: ``status`` is the HTTP code (0: no answer), ``reason`` the Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else message)
        self.status, self.reason, self.message = status, reason, message


def _kubernetes_asyncio() -> Any:
    try:
        import kubernetes_asyncio
    except ImportError:
        raise ValueError(MISSING_EXTRA) from None
    return kubernetes_asyncio


async def load_client(kubeconfig: str | Path | None = None, context: str | None = None) -> "KubeClient":
    """A client for ``kubeconfig`` (default: ``$KUBECONFIG``, then ``~/.kube/config``, then the in-cluster
    service account) and its ``context`` (default: the current one); raises ValueError saying what is wrong."""
    k8s = _kubernetes_asyncio()
    from kubernetes_asyncio.config import ConfigException
    configuration = k8s.client.Configuration()
    secrets_dir = tempfile.mkdtemp(prefix="hpo-kube-")  # 0700: where the library writes client-cert data
    namespace = None
    path = Path(kubeconfig).expanduser() if kubeconfig else None
    if path is None:
        env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
        path = Path(env).expanduser() if env else Path("~/.kube/config").expanduser()
        if not path.is_file() and not env:
            path = None
    try:
        if path is not None:
            if not path.is_file():
                raise ValueError(f"kubeconfig {path} does not exist")
            loader = await k8s.config.load_kube_config(config_file=str(path), context=context,
                                                       client_configuration=configuration,
                                                       persist_config=False, temp_file_path=secrets_dir)
            namespace = (loader.current_context.get("context") or {}).get("namespace")
            where = f"kubeconfig {path}" + (f" context {context!r}" if context else "")
        else:
            if context:
                raise ValueError(f"context {context!r} given but no kubeconfig found ($KUBECONFIG, ~/.kube/config)")
            k8s.config.load_incluster_config(client_configuration=configuration)
            ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            namespace = ns_file.read_text().strip() if ns_file.is_file() else None
            where = "the in-cluster service account"
    except (ConfigException, OSError, KeyError, TypeError) as exc:
        _forget_files(secrets_dir)
        raise ValueError(f"cannot load the Kubernetes configuration: {exc}") from None
    except ValueError:
        _forget_files(secrets_dir)
        raise
    api = k8s.client.ApiClient(configuration)  # its TLS context has read the certificate files: remove them now
    _forget_files(secrets_dir)
    return KubeClient(api, namespace or "default", where)


def _forget_files(secrets_dir: str) -> None:
    """Delete the client-certificate files the library wrote, and its memory of them (it would reuse the paths)."""
    from kubernetes_asyncio.config import kube_config
    cache = getattr(kube_config, "_temp_files", {})
    for key, name in list(cache.items()):
        if name.startswith(secrets_dir + os.sep):
            del cache[key]
    shutil.rmtree(secrets_dir, ignore_errors=True)


class KubeClient:
    """JSON requests and line streams against one API server; counts requests by (verb, resource)."""

    def __init__(self, api: Any, namespace: str, where: str) -> None:
        import aiohttp

        self.api, self.namespace, self.where = api, namespace, where
        self.server = api.configuration.host.rstrip("/")
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        rest = api.rest_client
        self._session = aiohttp.ClientSession(connector=rest.pool_manager.connector, connector_owner=False,
                                              trust_env=False, read_bufsize=2**21)
        self._proxy = rest.proxy or _env_proxy(self.server)
        self._proxy_headers = rest.proxy_headers if rest.proxy else None
        self._server_hostname = rest.server_hostname

    async def close(self) -> None:
        await self._session.close()
        await self.api.close()

    async def _send(self, method: str, path: str, query: dict[str, Any] | None, body: Any,
                    content_type: str | None, timeout: Any) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = _dumps(body)
            headers["Content-Type"] = content_type or "application/json"
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        try:
            await self.api.update_params_for_auth(headers, params, ["BearerToken"])
            url = self.server + path + ("?" + urlencode(params) if params else "")
            extra = {"server_hostname": self._server_hostname} if self._server_hostname else {}
            return await self._session.request(method, url, data=data, headers=headers, timeout=timeout,
                                               proxy=self._proxy, proxy_headers=self._proxy_headers, **extra)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # aiohttp / OS errors: no answer from the server
            raise KubeError(0, "Unreachable", f"cannot reach the Kubernetes API at {self.server}: "
                                              f"{type(exc).__name__}: {exc}") from None

    async def request(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
                      content_type: str | None = None, verb: str | None = None, decode: bool = True) -> dict[str, Any]:
        """One call; returns the decoded JSON body ({} unless ``decode``: a created or deleted object, read by no
        one, costs no decoding), raises :class:`KubeError` for any non-2xx answer."""
        import aiohttp
        self.requests[(verb or method.lower(), _resource(path))] += 1
        resp = await self._send(method, path, query, body, content_type, aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
        try:
            data = await resp.read()
        except Exception as exc:  # noqa: BLE001 - a connection dropped mid-answer
            raise KubeError(0, "Unreachable", f"connection to {self.server} dropped: {exc}") from None
        finally:
            resp.release()
        if not 200 <= resp.status < 300:
            raise _error(resp.status, data)
        try:
            return _loads(data) if data and decode else {}
        except ValueError:
            raise KubeError(resp.status, "BadResponse", f"not JSON: {data[:200]!r}") from None

    async def lines(self, path: str, query: dict[str, Any], verb: str) -> AsyncIterator[bytes]:
        """A streamed answer (a watch, a followed log), line by line without the newline.  Ends when the server
        ends it; raises :class:`KubeError` for a non-2xx answer or a dropped connection."""
        self.requests[(verb, _resource(path))] += 1
        import aiohttp
        resp = await self._send("GET", path, query, None, None, aiohttp.ClientTimeout(total=None, sock_connect=15))
        try:
            if not 200 <= resp.status < 300:
                raise _error(resp.status, await resp.read())
            pending = b""
            try:
                async for chunk in resp.content.iter_any():
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    for line in complete:
                        yield line
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
                raise KubeError(0, "StreamDropped", f"stream from {self.server} dropped: {exc}") from None
            if pending:
                yield pending
        finally:
            resp.release()


def _env_proxy(server: str) -> str | None:
    """The proxy the environment names for ``server`` (``HTTPS_PROXY`` ..., unless ``NO_PROXY`` covers it)."""
    import urllib.parse
    import urllib.request
    host = urllib.parse.urlsplit(server).hostname or ""
    if urllib.request.proxy_bypass_environment(host):
        return None
    return urllib.request.getproxies_environment().get(urllib.parse.urlsplit(server).scheme)


def _resource(path: str) -> str:
    """'jobs', 'pods', 'pods/log' ... from an API path."""
    parts = path.strip("/").split("/")
    if "namespaces" in parts:
        parts = parts[parts.index("namespaces") + 2:]
    else:
        parts = parts[2:] if parts[0] == "api" else parts[3:]
    return parts[0] + ("/" + parts[2] if len(parts) > 2 else "")


def _error(status: int, data: bytes) -> KubeError:
    try:
        body = json.loads(data)
        return KubeError(status, body.get("reason") or "Error", body.get("message") or data.decode()[:300])
    except (ValueError, AttributeError):
        return KubeError(status, "Error", data.decode("utf-8", "replace")[:300])


Handler = Callable[[str, dict[str, Any]], None]


class Reflector:
    """List + watch one collection (``path``, e.g. ``/apis/batch/v1/namespaces/ns/jobs``) by label selector.

    ``handler(event_type, obj)`` is called on the loop for every change (ADDED, MODIFIED, DELETED), including
    the differences found by a re-list after a 410 or a reconnect.  ``cache`` holds the objects by name;
    ``synced`` is set after the first list.  ``on_error(message)`` hears about failures it keeps retrying."""

    def __init__(self, client: KubeClient, path: str, selector: str, handler: Handler,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.client, self.path, self.selector, self.handler = client, path, selector, handler
        self.on_error = on_error
        self.cache: dict[str, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.relists = 0
        self._rv: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def relist(self) -> None:
        """List now and report what changed since the cache was last updated."""
        data = await self.client.request("GET", self.path, {"labelSelector": self.selector}, verb="list")
        self.relists += 1
        self._rv = data.get("metadata", {}).get("resourceVersion")
        fresh = {o["metadata"]["name"]: o for o in data.get("items") or []}
        gone = [name for name in self.cache if name not in fresh]
        for name in gone:
            self._emit("DELETED", self.cache.pop(name))
        for name, obj in fresh.items():
            old = self.cache.get(name)
            if old is None or old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self.cache[name] = obj
                self._emit("ADDED" if old is None else "MODIFIED", obj)
        self.synced.set()

    def _emit(self, kind: str, obj: dict[str, Any]) -> None:
        try:
            self.handler(kind, obj)
        except Exception:  # a handler bug must not stop the watch
            log.exception("handling %s %s", kind, obj.get("metadata", {}).get("name"))

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                if self._rv is None:
                    await self.relist()
                await self._watch()
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except KubeError as exc:
                if exc.status == 410:
                    self._rv = None  # too old: re-list at once
                    continue
                if self.on_error is not None:
                    self.on_error(str(exc))
                log.debug("watch %s: %s; retrying in %.1f s", self.path, exc, delay)
                await asyncio.sleep(delay)
                delay = min(_BACKOFF_MAX, delay * 2)

    async def _watch(self) -> None:
        query = {"watch": "true", "labelSelector": self.selector, "resourceVersion": self._rv,
                 "allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_SECONDS)}
        async for line in self.client.lines(self.path, query, "watch"):
            if not line.strip():
                continue
            try:
                event = _loads(line)
                kind, obj = event["type"], event["object"]
            except (ValueError, KeyError, TypeError):
                continue
            if kind == "ERROR":
                code = obj.get("code") if isinstance(obj, dict) else None
                raise KubeError(code or 500, obj.get("reason", "Error") if isinstance(obj, dict) else "Error",
                                obj.get("message", "watch error") if isinstance(obj, dict) else str(obj))
            rv = obj.get("metadata", {}).get("resourceVersion")
            if rv:
                self._rv = rv
            if kind == "BOOKMARK":
                continue
            name = obj["metadata"]["name"]
            if kind == "DELETED":
                self.cache.pop(name, None)
            else:
                self.cache[name] = obj
            self._emit(kind, obj)
