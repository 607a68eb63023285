"""``FakeCluster``: the fake apiserver, controllers and process kubelet on a background loop.

Contract: every public method is callable from any thread while the cluster runs; mutations are
executed on the cluster's own event loop (``_call``), reads copy under the store lock.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import logging
import ssl
import threading
from pathlib import Path
from typing import Any, Callable

import yaml
from aiohttp import web

from .controllers import JobController, Scheduler
from .kubelet import Kubelet
from .runtime import Runtime, parse_capacity
from .selectors import parse_label_selector
from .server import Api
from .store import RESOURCES, Store
from .tlsutil import issue, make_ca

log = logging.getLogger("fake_k8s")


class FakeCluster:
    """A one-node Kubernetes look-alike served on 127.0.0.1 (see the package docstring)."""

    def __init__(self, root: str | Path, capacity: dict[str, Any] | None = None,
                 token: str | None = "test-token", tls: bool = False, history_limit: int = 1000):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.token, self.tls = token, tls
        self.store = Store(history_limit)
        self.rt = Runtime(self.store, self.root, parse_capacity(capacity or {}))
        self.kubelet = Kubelet(self.rt)
        self.scheduler = Scheduler(self.rt)
        self.jobs = JobController(self.rt, self.kubelet.active_uids)
        self.requests: collections.Counter = collections.Counter()
        self.watch_410_mode = "stream"           # or "http": 410 at connect instead of in-stream
        self.port: int | None = None
        self._streams: dict[int, web.Request] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._control_task: asyncio.Task | None = None
        self._stopped = False
        self._reopen_tasks: set[asyncio.Task] = set()
        self._kubeconfig: Path | None = None
        self._ssl: ssl.SSLContext | None = None
        if tls:
            self._make_certs()

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        if self._kubeconfig is None:
            raise RuntimeError("the cluster is not started")
        return self._kubeconfig

    def start(self) -> "FakeCluster":
        """Start the loop thread; return once the API listens on 127.0.0.1:<port>."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._astart())
            except BaseException as exc:          # noqa: BLE001 - reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=main, name="fake-k8s", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            self._thread = None
            raise failure[0]
        self._kubeconfig = self.write_kubeconfig(self.root / "kubeconfig.yaml",
                                                 auth="cert" if self.tls else "token")
        return self

    async def _astart(self) -> None:
        self.rt.wake = asyncio.Event()
        await self._open_site()
        self._control_task = asyncio.ensure_future(self._control())

    async def _open_site(self) -> None:
        runner = web.AppRunner(Api(self).make_app(), handle_signals=False, shutdown_timeout=0.2,
                               access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port or 0, ssl_context=self._ssl,
                           reuse_address=True)
        await site.start()
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def _close_site(self) -> None:
        self._abort_streams()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def _abort_streams(self) -> None:
        for request in list(self._streams.values()):
            transport = request.transport
            if transport is not None:
                transport.abort()
        self._streams.clear()

    async def _control(self) -> None:
        """The reconcile loop: scheduler, Job controller + GC + TTL, kubelet."""
        assert self.rt.wake is not None
        while True:
            try:
                await asyncio.wait_for(self.rt.wake.wait(), 0.25)
            except asyncio.TimeoutError:
                pass
            self.rt.wake.clear()
            for step in (self.scheduler.sync, self.jobs.sync, self.kubelet.sync):
                try:
                    step()
                except Exception:                  # noqa: BLE001 - keep the cluster alive
                    log.exception("fake-k8s %s failed", step)
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        """Kill every pod's process group, close the API, end the thread (idempotent)."""
        if self._stopped or self._thread is None or self._loop is None:
            self._stopped = True
            return
        self._stopped = True
        loop = self._loop
        try:
            asyncio.run_coroutine_threadsafe(self._astop(), loop).result(30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(30)

    async def _astop(self) -> None:
        if self._control_task is not None:
            self._control_task.cancel()
        for task in list(self._reopen_tasks):
            task.cancel()
        await self.kubelet.shutdown()
        await self._close_site()

    def __enter__(self) -> "FakeCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _call(self, fn: Callable[[], Any], timeout: float = 30) -> Any:
        """Run ``fn`` on the cluster loop (directly when the loop is not running)."""
        loop = self._loop
        if loop is None or not loop.is_running() or self._stopped:
            return fn()

        async def wrapper() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result
        return asyncio.run_coroutine_threadsafe(wrapper(), loop).result(timeout)

    # -- TLS / kubeconfig ----------------------------------------------------------------------
    def _make_certs(self) -> None:
        ca, ca_cert, ca_key = make_ca()
        server = issue(ca_cert, ca_key, "kube-apiserver", server=True)
        self.client_pem = issue(ca_cert, ca_key, "fake-admin", server=False,
                                organization="system:masters")
        self.ca_pem = ca.cert
        tls_dir = self.root / "tls"
        tls_dir.mkdir(parents=True, exist_ok=True)
        for name, data in [("ca.crt", ca.cert), ("server.crt", server.cert),
                           ("server.key", server.key), ("client.crt", self.client_pem.cert),
                           ("client.key", self.client_pem.key)]:
            (tls_dir / name).write_bytes(data)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(tls_dir / "server.crt", tls_dir / "server.key")
        ctx.load_verify_locations(cafile=str(tls_dir / "ca.crt"))
        ctx.verify_mode = ssl.CERT_OPTIONAL      # no cert: the bearer token must authenticate
        self._ssl = ctx

    def write_kubeconfig(self, path: str | Path, namespace: str = "default",
                         context: str = "fake", auth: str = "token") -> Path:
        """Write a kubeconfig for this cluster; ``auth`` is "token" or "cert" (tls only)."""
        b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
        cluster: dict[str, Any] = {"server": self.url}
        if self.tls:
            cluster["certificate-authority-data"] = b64(self.ca_pem)
        if auth == "cert":
            if not self.tls:
                raise ValueError("auth='cert' needs a cluster started with tls=True")
            user = {"client-certificate-data": b64(self.client_pem.cert),
                    "client-key-data": b64(self.client_pem.key)}
        elif auth == "token":
            user = {"token": self.token or ""}
        else:
            raise ValueError(f"auth must be 'token' or 'cert', not {auth!r}")
        config = {"apiVersion": "v1", "kind": "Config", "preferences": {},
                  "clusters": [{"name": "fake", "cluster": cluster}],
                  "users": [{"name": "fake-user", "user": user}],
                  "contexts": [{"name": context, "context": {"cluster": "fake",
                                                             "user": "fake-user",
                                                             "namespace": namespace}}],
                  "current-context": context}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # -- inspection and failure injection ------------------------------------------------------
    def objects(self, kind: str, namespace: str | None = "default",
                label_selector: str | None = None) -> list[dict[str, Any]]:
        """Current objects of a resource (``namespace=None``: all namespaces)."""
        if kind not in RESOURCES:
            raise ValueError(f"unknown kind {kind!r}; one of {sorted(RESOURCES)}")
        return self.store.list(kind, namespace, parse_label_selector(label_selector))[0]

    def set_capacity(self, cpu: Any = None, memory: Any = None, gpu: Any = None) -> None:
        """Change the node's allocatable resources (pending pods may then schedule)."""
        def apply() -> None:
            changes = {k: v for k, v in (("cpu", cpu), ("memory", memory),
                                         ("nvidia.com/gpu", gpu)) if v is not None}
            self.rt.capacity.update(parse_capacity(dict(self.rt.capacity, **changes)))
            self.scheduler.reported.clear()
            self.rt.kick()
        self._call(apply)

    def fail_image_pulls(self, pattern: str | None) -> None:
        """Matching images (fnmatch) never pull; ``None`` clears every pattern."""
        def apply() -> None:
            if pattern is None:
                self.rt.pull_failures.clear()
            else:
                self.rt.pull_failures.append(pattern)
        self._call(apply)

    def evict(self, pod_name: str, namespace: str = "default") -> None:
        """DisruptionTarget=True (EvictionByEvictionAPI), processes killed, phase Failed."""
        self._call(lambda: self._evict_now(namespace, pod_name))

    def _evict_now(self, namespace: str, name: str) -> None:
        self.kubelet.evict(namespace, name)
        self.rt.kick()

    def compact(self) -> None:
        """Drop the watch history: watches from an older resourceVersion get 410 Expired."""
        self._call(self.store.compact)

    def drop_streams(self) -> None:
        """Abruptly close every open watch and pod-log stream."""
        self._call(self._abort_streams)

    def restart_api(self, downtime: float = 1.0, wait: bool = False) -> None:
        """Close the listener and all connections, reopen on the same port after ``downtime``.

        Objects and running pods survive; the watch history is reset (old RVs answer 410).
        Returns once the listener is closed (``wait=True``: once it is open again)."""
        reopened = threading.Event()

        async def reopen() -> None:
            await asyncio.sleep(downtime)
            try:
                await self._open_site()
            finally:
                reopened.set()

        async def go() -> None:
            await self._close_site()
            with self.store.lock:          # a restarted apiserver's cache starts at a newer RV
                self.store.rv += 1
                self.store.compact()
            task = asyncio.ensure_future(reopen())
            self._reopen_tasks.add(task)
            task.add_done_callback(self._reopen_tasks.discard)
        self._call(go)
        if wait:
            reopened.wait(downtime + 30)

    def add_pvc(self, claim_name: str, host_path: str | Path, namespace: str = "default") -> None:
        """A bound PersistentVolumeClaim whose volume is the host folder ``host_path``."""
        folder = Path(host_path)
        folder.mkdir(parents=True, exist_ok=True)

        def apply() -> None:
            self.rt.pvcs[(namespace, claim_name)] = folder
            if self.store.find("persistentvolumeclaims", namespace, claim_name) is None:
                self.store.create("persistentvolumeclaims", {
                    "metadata": {"name": claim_name, "namespace": namespace},
                    "spec": {"accessModes": ["ReadWriteMany"], "volumeName": f"pv-{claim_name}",
                             "resources": {"requests": {"storage": "1Gi"}}},
                    "status": {"phase": "Bound", "accessModes": ["ReadWriteMany"]}})
            self.scheduler.reported.clear()
            self.rt.kick()
        self._call(apply)

    def pod_processes(self, pod_name: str, namespace: str = "default") -> list[int]:
        """Pids alive in the pod's container process groups."""
        def get() -> list[int]:
            run = self.kubelet.run_for(namespace, pod_name)
            return run.pids() if run is not None else []
        return self._call(get)

    def all_pod_processes(self) -> list[int]:
        """Pids alive in any container process group this cluster ever started."""
        from .kubelet import group_pids
        return [pid for pgid in self.kubelet.all_pgids() for pid in group_pids(pgid)]
