"""Process kubelet: runs each pod scheduled on ``fake-node`` as local process groups.

Contracts:
* Containers run with ``start_new_session=True`` (one process group each) in
  ``root/pods/<namespace>/<pod>/``; init containers run one by one first.
* **Deliberate difference from a real kubelet**: there is no container filesystem. A volume mount
  ``/x/y`` becomes ``<podroot>/x/y`` (a symlink to the volume's folder), and every occurrence of a
  mount path as a path prefix in command, args, env values and workingDir is rewritten to it.
* Pod deletion: SIGTERM to every process group, SIGKILL after the grace period, then the object is
  removed. Eviction: condition DisruptionTarget, processes killed, phase Failed (object kept).
* Memory limits: the group's RSS is sampled every ~100 ms and SIGKILLed above the limit (OOMKilled).
* Cluster DNS, for Python programs only: a running pod with ``hostname`` and ``subdomain`` naming a Service of its
  namespace is listed in ``root/hosts.json``; ``dns/sitecustomize.py`` (first on every container's PYTHONPATH)
  resolves those names to 127.0.0.1, the loopback all pods share (so pods of one gang need distinct ports).
"""
from __future__ import annotations

import asyncio
import base64
import fnmatch
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import psutil

from . import events
from .logs import ContainerLog
from .runtime import Runtime, parse_quantity
from .store import now_rfc3339

TERMINAL = ("Succeeded", "Failed")
DNS_DIR = Path(__file__).resolve().parent / "dns"


class ConfigError(Exception):
    """A container cannot be configured yet (missing ConfigMap...): it keeps waiting."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: unknown references stay as written, ``$$`` escapes."""
    def repl(m: re.Match) -> str:
        if m.group(0).startswith("$$"):
            return m.group(0)[1:]
        return env.get(m.group(1), m.group(0))
    return re.sub(r"\$\$(?:\([A-Za-z_][A-Za-z0-9_.-]*\))?|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", repl,
                  text)


def map_paths(text: str, mounts: list[tuple[str, str]]) -> str:
    """Rewrite each mount path used as a path prefix in ``text`` to its folder under the pod root."""
    for mount_path, mapped in mounts:          # longest first
        pattern = r"(?<![\w.\-/])" + re.escape(mount_path.rstrip("/")) + r"(?=/|$|[^\w.\-])"
        text = re.sub(pattern, lambda _m: mapped, text)
    return text


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_pids(pgid: int) -> list[int]:
    """Live pids whose process group is ``pgid``."""
    pids = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                pids.append(proc.pid)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return pids


class PodRun:
    """The kubelet's work for one pod: volumes, init containers, containers, status."""

    def __init__(self, kubelet: "Kubelet", pod: dict[str, Any]):
        self.k, self.rt = kubelet, kubelet.rt
        meta = pod["metadata"]
        self.ns, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.spec: dict[str, Any] = pod["spec"]
        self.root = self.rt.root / "pods" / self.ns / self.name
        self.logs: dict[str, ContainerLog] = {}
        self.statuses: dict[str, dict[str, Any]] = {}   # container name -> state dict
        self.pgids: dict[str, int] = {}
        self.stopping = asyncio.Event()
        self.grace: float = float(self.spec.get("terminationGracePeriodSeconds", 30))
        self.phase = "Pending"
        self.start_time = now_rfc3339()
        self.initialized = False
        self.extra_conditions: list[dict[str, Any]] = []
        self.task: asyncio.Task | None = None
        self.done = False
        for c in self.spec.get("initContainers") or []:
            self.statuses[c["name"]] = {"waiting": {"reason": "PodInitializing"}}
        reason = "PodInitializing" if self.spec.get("initContainers") else "ContainerCreating"
        for c in self.spec.get("containers") or []:
            self.statuses[c["name"]] = {"waiting": {"reason": reason}}

    # -- status --------------------------------------------------------------------------------
    def _container_status(self, c: dict[str, Any], init: bool) -> dict[str, Any]:
        state = self.statuses[c["name"]]
        running = "running" in state
        return {"name": c["name"], "image": c.get("image", ""), "imageID": "",
                "containerID": f"fake://{self.uid}/{c['name']}" if "waiting" not in state else None,
                "state": state, "lastState": {}, "ready": running and not init,
                "restartCount": 0, "started": running}

    def publish(self) -> None:
        """Write the pod's status to the store (no-op when unchanged)."""
        spec = self.spec
        inits = [self._container_status(c, True) for c in spec.get("initContainers") or []]
        mains = [self._container_status(c, False) for c in spec.get("containers") or []]
        ready = self.phase == "Running" and all(s["ready"] for s in mains)
        ts = now_rfc3339()

        def cond(type_: str, ok: bool, reason: str | None = None) -> dict[str, Any]:
            c = {"type": type_, "status": "True" if ok else "False", "lastProbeTime": None,
                 "lastTransitionTime": ts}
            if reason and not ok:
                c["reason"] = reason
            return c

        def apply(pod: dict[str, Any]) -> None:
            status = pod.setdefault("status", {})
            old = {c["type"]: c for c in status.get("conditions") or []}
            conds = [cond("PodScheduled", True),
                     cond("Initialized", self.initialized, "ContainersNotInitialized"),
                     cond("ContainersReady", ready, "ContainersNotReady"),
                     cond("Ready", ready, "ContainersNotReady")] + self.extra_conditions
            for c in conds:              # keep transition times of unchanged conditions
                prev = old.get(c["type"])
                if prev and prev.get("status") == c["status"]:
                    c["lastTransitionTime"] = prev.get("lastTransitionTime")
            status.update({"phase": self.phase, "conditions": conds, "hostIP": "127.0.0.1",
                           "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                           "startTime": self.start_time, "containerStatuses": mains,
                           "qosClass": "BestEffort"})
            if inits:
                status["initContainerStatuses"] = inits
        self.rt.store.mutate("pods", self.ns, self.name, apply)

    def pod(self) -> dict[str, Any] | None:
        return self.rt.store.find("pods", self.ns, self.name)

    def event(self, reason: str, message: str, type_: str = "Normal") -> None:
        pod = self.pod()
        if pod is not None:
            events.record(self.rt.store, pod, reason, message, type_, "kubelet", self.rt.node_name)

    # -- lifecycle -----------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.publish()
            volumes = await self._prepare_volumes()
            if volumes is None:
                return
            for c in self.spec.get("initContainers") or []:
                code = await self._run_container(c, volumes, init=True)
                if code != 0:
                    if not self.stopping.is_set():
                        self.phase = "Failed"
                    self._finish_waiting("Init:Error" if code is not None else "PodInitializing")
                    return
            self.initialized = True
            if self.stopping.is_set():
                return
            self.k.register_names(self)
            codes = await asyncio.gather(*(self._run_container(c, volumes, init=False)
                                           for c in self.spec.get("containers") or []))
            self.phase = "Succeeded" if all(c == 0 for c in codes) else "Failed"
        except asyncio.CancelledError:
            raise
        finally:
            if self.phase not in TERMINAL:
                self.phase = "Failed"
            self._finish_waiting("ContainerStatusUnknown")
            for pgid in self.pgids.values():
                _killpg(pgid, signal.SIGKILL)
            for log in self.logs.values():
                if not log.closed:
                    log.close()
            self.done = True
            self.k.register_names(self, remove=True)
            try:
                self.publish()
            finally:
                self.rt.kick()

    def _finish_waiting(self, reason: str) -> None:
        """Containers that never ran end as terminated (exit 137 when stopped)."""
        for name, state in self.statuses.items():
            if "waiting" in state:
                self.statuses[name] = {"terminated": {
                    "exitCode": 137 if self.stopping.is_set() else 1, "reason": reason,
                    "startedAt": None, "finishedAt": now_rfc3339()}}

    async def _prepare_volumes(self) -> dict[str, Path] | None:
        """Create every volume's folder; wait (ContainerCreating) while a ConfigMap is missing."""
        while True:
            try:
                return self._volumes()
            except ConfigError as exc:
                self.event("FailedMount", exc.message, "Warning")
                try:
                    await asyncio.wait_for(self.stopping.wait(), 1.0)
                    return None
                except asyncio.TimeoutError:
                    continue

    def _volumes(self) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for vol in self.spec.get("volumes") or []:
            name = vol["name"]
            folder = self.root / ".volumes" / name
            if "configMap" in vol:
                cm_ref = vol["configMap"]
                cm = self.rt.store.find("configmaps", self.ns, cm_ref.get("name", ""))
                if cm is None:
                    if cm_ref.get("optional"):
                        folder.mkdir(parents=True, exist_ok=True)
                        out[name] = folder
                        continue
                    raise ConfigError("FailedMount", f'MountVolume.SetUp failed for volume "{name}"'
                                      f' : configmap "{cm_ref.get("name")}" not found')
                files: dict[str, bytes] = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
                for k, v in (cm.get("binaryData") or {}).items():
                    files[k] = base64.b64decode(v)
                items = cm_ref.get("items")
                if items:
                    files = {it.get("path", it["key"]): files[it["key"]] for it in items
                             if it["key"] in files}
                folder.mkdir(parents=True, exist_ok=True)
                for rel, data in files.items():
                    target = folder / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
            elif "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"].get("claimName", "")
                folder = self.rt.pvcs[(self.ns, claim)]
            elif "hostPath" in vol:
                folder = Path(vol["hostPath"]["path"])
                folder.mkdir(parents=True, exist_ok=True)
            else:                                   # emptyDir and anything else
                folder.mkdir(parents=True, exist_ok=True)
            out[name] = folder
        return out

    def _mounts(self, c: dict[str, Any], volumes: dict[str, Path]) -> list[tuple[str, str]]:
        """Create the mount links under the pod root; return (mountPath, mapped) longest first."""
        mapped: list[tuple[str, str]] = []
        for m in c.get("volumeMounts") or []:
            source = volumes.get(m["name"])
            if source is None:
                continue
            if m.get("subPath"):
                source = source / m["subPath"]
                source.mkdir(parents=True, exist_ok=True)
            target = self.root / m["mountPath"].strip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
            target.symlink_to(source.resolve(), target_is_directory=True)
            mapped.append((m["mountPath"].rstrip("/") or "/", str(target)))
        mapped.sort(key=lambda p: len(p[0]), reverse=True)
        return mapped

    def _field_ref(self, path: str) -> str:
        pod = self.pod() or {}
        meta, spec = pod.get("metadata", {}), pod.get("spec", {})
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return (meta.get(m.group(1)) or {}).get(m.group(2), "")
        simple = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
                  "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
                  "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
                  "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}
        return str(simple.get(path) or "")

    def _env(self, c: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for src in c.get("envFrom") or []:
            ref = src.get("configMapRef")
            if not ref:
                continue
            cm = self.rt.store.find("configmaps", self.ns, ref.get("name", ""))
            if cm is None:
                if ref.get("optional"):
                    continue
                raise ConfigError("CreateContainerConfigError",
                                  f'configmap "{ref.get("name")}" not found')
            for k, v in (cm.get("data") or {}).items():
                env[src.get("prefix", "") + k] = v
        for item in c.get("env") or []:
            if "valueFrom" in item:
                vf = item["valueFrom"]
                if "fieldRef" in vf:
                    env[item["name"]] = self._field_ref(vf["fieldRef"].get("fieldPath", ""))
                elif "configMapKeyRef" in vf:
                    ref = vf["configMapKeyRef"]
                    cm = self.rt.store.find("configmaps", self.ns, ref.get("name", "")) or {}
                    value = (cm.get("data") or {}).get(ref.get("key"))
                    if value is None and not ref.get("optional"):
                        raise ConfigError("CreateContainerConfigError",
                                          f'couldn\'t find key {ref.get("key")} in ConfigMap '
                                          f'{self.ns}/{ref.get("name")}')
                    if value is not None:
                        env[item["name"]] = value
                else:
                    env[item["name"]] = ""
            else:
                env[item["name"]] = expand_vars(str(item.get("value", "")), env)
        return env

    async def _pull(self, c: dict[str, Any]) -> bool:
        """Simulate the image pull; False when the pod is stopping before the image arrives."""
        image = c.get("image", "")
        self.event("Pulling", f'Pulling image "{image}"')
        failing = lambda: any(fnmatch.fnmatchcase(image, p) for p in self.rt.pull_failures)  # noqa
        reason = "ErrImagePull"
        while failing():
            msg = (f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to '
                   f'pull and unpack image "{image}": not found') if reason == "ErrImagePull" \
                else f'Back-off pulling image "{image}"'
            self.statuses[c["name"]] = {"waiting": {"reason": reason, "message": msg}}
            self.publish()
            self.event("Failed" if reason == "ErrImagePull" else "BackOff", msg, "Warning")
            reason = "ImagePullBackOff" if reason == "ErrImagePull" else "ErrImagePull"
            try:
                await asyncio.wait_for(self.stopping.wait(), 0.5)
                return False
            except asyncio.TimeoutError:
                pass
        self.event("Pulled", f'Container image "{image}" already present on machine')
        return not self.stopping.is_set()

    async def _run_container(self, c: dict[str, Any], volumes: dict[str, Path],
                             init: bool) -> int | None:
        """Run one container to its end; return its exit code (None: never started)."""
        name = c["name"]
        if not await self._pull(c):
            return None
        while True:
            try:
                env = self._env(c)
                break
            except ConfigError as exc:
                self.statuses[name] = {"waiting": {"reason": exc.reason, "message": exc.message}}
                self.publish()
                try:
                    await asyncio.wait_for(self.stopping.wait(), 0.5)
                    return None
                except asyncio.TimeoutError:
                    continue
        mounts = self._mounts(c, volumes)
        env = {k: map_paths(v, mounts) for k, v in env.items()}
        argv = [map_paths(expand_vars(str(a), env), mounts)
                for a in (c.get("command") or []) + (c.get("args") or [])]
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "HOME": os.environ.get("HOME", "/root"),
                    "HOSTNAME": self.spec.get("hostname") or self.name, **env}
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(DNS_DIR), full_env.get("PYTHONPATH")) if p)
        full_env["HPO_FAKE_K8S_HOSTS"] = str(self.k.hosts_file)
        cwd = self.root
        if c.get("workingDir"):
            wd = map_paths(c["workingDir"], mounts)
            cwd = Path(wd) if wd != c["workingDir"] else self.root / wd.strip("/")
            cwd.mkdir(parents=True, exist_ok=True)
        log = self.logs[name] = ContainerLog()
        started = now_rfc3339()
        try:
            if not argv:
                raise OSError("no command specified (the fake kubelet ignores image entrypoints)")
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=str(cwd), env=full_env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True)
        except OSError as exc:
            log.close()
            self.statuses[name] = {"terminated": {
                "exitCode": 128, "reason": "StartError", "startedAt": started,
                "finishedAt": now_rfc3339(),
                "message": f"failed to create containerd task: exec: {exc}"}}
            self.event("Failed", f"Error: {exc}", "Warning")
            self.publish()
            return 128
        self.pgids[name] = proc.pid
        self.statuses[name] = {"running": {"startedAt": started}}
        if not init:
            self.phase = "Running"
        self.publish()
        self.event("Started", f"Started container {name}")
        limit = (c.get("resources") or {}).get("limits", {}).get("memory")
        oom = {"hit": False}
        watchers = [asyncio.ensure_future(self._pump(proc, log)),
                    asyncio.ensure_future(self._stopper(proc.pid))]
        if limit:
            watchers.append(asyncio.ensure_future(self._oom_guard(proc.pid,
                                                                  parse_quantity(limit), oom)))
        code = await proc.wait()
        _killpg(proc.pid, signal.SIGKILL)            # the container's other processes end with it
        await asyncio.wait_for(asyncio.shield(watchers[0]), 5) if not watchers[0].done() else None
        for w in watchers[1:]:
            w.cancel()
        log.close()
        exit_code = 128 - code if code < 0 else code
        if oom["hit"]:
            exit_code, reason = 137, "OOMKilled"
        else:
            reason = "Completed" if exit_code == 0 else "Error"
        term: dict[str, Any] = {"exitCode": exit_code, "reason": reason, "startedAt": started,
                                "finishedAt": now_rfc3339(),
                                "containerID": f"fake://{self.uid}/{name}"}
        if code < 0:
            term["signal"] = -code
        if exit_code != 0 and c.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            term["message"] = log.tail_text()
        self.statuses[name] = {"terminated": term}
        self.publish()
        return exit_code

    async def _pump(self, proc: asyncio.subprocess.Process, log: ContainerLog) -> None:
        assert proc.stdout is not None
        while True:
            data = await proc.stdout.read(65536)
            if not data:
                return
            log.feed(data)

    async def _stopper(self, pgid: int) -> None:
        await self.stopping.wait()
        _killpg(pgid, signal.SIGTERM)
        began = time.monotonic()
        while time.monotonic() - began < self.grace:     # a later delete may shorten the grace
            await asyncio.sleep(0.05)
        _killpg(pgid, signal.SIGKILL)

    async def _oom_guard(self, pid: int, limit: float, oom: dict[str, bool]) -> None:
        try:
            root = psutil.Process(pid)
        except psutil.Error:
            return
        while True:
            await asyncio.sleep(0.1)
            rss = 0
            try:
                for p in [root] + root.children(recursive=True):
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            if rss > limit:
                oom["hit"] = True
                _killpg(pid, signal.SIGKILL)
                return

    def stop(self, grace: float | None = None) -> None:
        """Begin terminating: SIGTERM now, SIGKILL after the grace period."""
        if grace is not None:
            self.grace = min(self.grace, grace) if self.stopping.is_set() else grace
        self.stopping.set()

    def pids(self) -> list[int]:
        out: list[int] = []
        for pgid in self.pgids.values():
            out += group_pids(pgid)
        return out


class Kubelet:
    """Starts a PodRun for every pod bound to the node; finishes graceful deletions."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.runs: dict[str, PodRun] = {}       # pod uid -> run
        self.names: dict[str, set[str]] = {}    # pod uid -> its DNS names (see the module's docstring)
        self.hosts_file = rt.root / "hosts.json"

    def register_names(self, run: PodRun, remove: bool = False) -> None:
        """List (or drop) a pod's DNS names: ``<hostname>.<subdomain>...`` when a Service ``<subdomain>`` exists."""
        host, sub = run.spec.get("hostname"), run.spec.get("subdomain")
        if remove:
            changed = self.names.pop(run.uid, None) is not None
        elif host and sub and self.rt.store.find("services", run.ns, sub) is not None:
            base = f"{host}.{sub}"
            self.names[run.uid] = {base, f"{base}.{run.ns}", f"{base}.{run.ns}.svc", f"{base}.{run.ns}.svc.cluster.local"}
            changed = True
        else:
            changed = False
        if changed:
            tmp = self.hosts_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(sorted(n for names in self.names.values() for n in names)))
            os.replace(tmp, self.hosts_file)

    def run_for(self, namespace: str, name: str) -> PodRun | None:
        pod = self.rt.store.find("pods", namespace, name)
        return self.runs.get(pod["metadata"]["uid"]) if pod else None

    def sync(self) -> None:
        """One reconcile pass over the node's pods."""
        store = self.rt.store
        pods = store.snapshot("pods", None, lambda p: (p.get("spec") or {}).get("nodeName")
                              == self.rt.node_name)
        live = set()
        for pod in pods:
            meta = pod["metadata"]
            uid = meta["uid"]
            live.add(uid)
            run = self.runs.get(uid)
            phase = (pod.get("status") or {}).get("phase")
            if run is None and phase not in TERMINAL and "deletionTimestamp" not in meta:
                run = self.runs[uid] = PodRun(self, pod)
                run.task = asyncio.ensure_future(run.run())
            if "deletionTimestamp" in meta:
                if run is not None and not run.done:
                    run.stop(meta.get("deletionGracePeriodSeconds"))
                else:
                    self._remove(pod)
        for uid in [u for u in self.runs if u not in live]:
            run = self.runs.pop(uid)
            run.stop(0)
            shutil.rmtree(run.root, ignore_errors=True)

    def _remove(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if meta.get("finalizers"):
            return
        try:
            self.rt.store.remove("pods", meta["namespace"], meta["name"])
        except Exception:
            pass

    def evict(self, namespace: str, name: str) -> bool:
        """Node-pressure / Eviction-API style: DisruptionTarget condition, processes killed."""
        pod = self.rt.store.find("pods", namespace, name)
        if pod is None:
            return False
        cond = {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                "message": "Eviction API: evicting", "lastProbeTime": None,
                "lastTransitionTime": now_rfc3339()}
        run = self.runs.get(pod["metadata"]["uid"])
        if run is not None and not run.done:
            run.extra_conditions = [cond]
            run.publish()
            run.stop()
            return True

        def apply(p: dict[str, Any]) -> None:
            status = p.setdefault("status", {})
            status["conditions"] = [c for c in status.get("conditions") or []
                                    if c["type"] != "DisruptionTarget"] + [cond]
            if status.get("phase") not in TERMINAL:
                status["phase"] = "Failed"
        self.rt.store.mutate("pods", namespace, name, apply)
        return True

    async def shutdown(self) -> None:
        """Kill every pod's process groups now and wait until they are gone (cluster stop)."""
        victims = [psutil.Process(pid) for pgid in self.all_pgids() for pid in group_pids(pgid)
                   if psutil.pid_exists(pid)]
        for run in self.runs.values():
            run.grace = 0
            run.stopping.set()
            for pgid in run.pgids.values():
                _killpg(pgid, signal.SIGKILL)
        tasks = [r.task for r in self.runs.values() if r.task and not r.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in victims):
            await asyncio.sleep(0.02)

    def active_uids(self) -> set[str]:
        """Uids of pods whose containers the kubelet is still running."""
        return {uid for uid, run in self.runs.items() if not run.done}

    def all_pgids(self) -> list[int]:
        return [pg for run in self.runs.values() for pg in run.pgids.values()]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
