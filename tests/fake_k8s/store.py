"""Object store: one global resourceVersion counter, bounded per-resource watch history.

Contracts:
* Every write (create, update, delete) bumps the single global resourceVersion; the object (and a
  DELETED event's final object) carries the new value as a string.
* ``history_since(resource, rv)`` returns the retained events with RV > rv, or raises
  ``ApiError(410 Expired)`` when events after ``rv`` were already dropped (history limit,
  ``compact()`` or ``reset_history()``).
* Mutations happen on the cluster's event loop thread; reads from other threads take ``lock``.
* ``listeners`` are called synchronously with ``(type, obj, old)`` on every write.
"""
from __future__ import annotations

import copy
import datetime as dt
import random
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import asyncio


@dataclass(frozen=True)
class Resource:
    """A served resource type."""
    name: str          # plural, e.g. "jobs"
    kind: str          # e.g. "Job"
    group: str         # "" for core
    version: str = "v1"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``jobs.batch`` / ``pods`` as used in Status messages."""
        return f"{self.name}.{self.group}" if self.group else self.name


RESOURCES: dict[str, Resource] = {r.name: r for r in [
    Resource("pods", "Pod", ""),
    Resource("configmaps", "ConfigMap", ""),
    Resource("services", "Service", ""),
    Resource("events", "Event", ""),
    Resource("persistentvolumeclaims", "PersistentVolumeClaim", ""),
    Resource("jobs", "Job", "batch"),
]}


class ApiError(Exception):
    """An error answered as a Kubernetes ``Status`` body."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure", "message": self.message,
                                "reason": self.reason, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


def not_found(res: Resource, name: str) -> ApiError:
    details = {"name": name, "kind": res.name}
    if res.group:
        details["group"] = res.group
    return ApiError(404, "NotFound", f'{res.qualified} "{name}" not found', details)


def now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(n: int = 5) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"   # the apiserver's alphabet (no vowels, no 0/1/3)
    return "".join(random.choice(alphabet) for _ in range(n))


@dataclass
class Event:
    rv: int
    type: str
    obj: dict[str, Any]
    old: dict[str, Any] | None


@dataclass
class _History:
    events: deque
    floor: int = 0    # every event with rv > floor is retained


class Store:
    """In-memory objects keyed by (resource, namespace, name)."""

    def __init__(self, history_limit: int = 1000):
        self.lock = threading.RLock()
        self.rv = 1
        self.history_limit = history_limit
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._history: dict[str, _History] = {r: _History(deque()) for r in RESOURCES}
        self._watchers: dict[str, set[asyncio.Queue]] = {r: set() for r in RESOURCES}
        self.listeners: list[Callable[[str, str, dict, dict | None], None]] = []

    # -- reads ---------------------------------------------------------------------------------
    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any]:
        """Deep copy of one object; ApiError 404 when absent."""
        with self.lock:
            obj = self._objects.get((resource, namespace, name))
            if obj is None:
                raise not_found(RESOURCES[resource], name)
            return copy.deepcopy(obj)

    def find(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self._objects.get((resource, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, resource: str, namespace: str | None = None,
             pred: Callable[[dict], bool] | None = None) -> tuple[list[dict[str, Any]], int]:
        """Matching objects (deep copies, sorted by namespace/name) and the current RV."""
        with self.lock:
            items = [copy.deepcopy(o) for (r, ns, _), o in sorted(self._objects.items())
                     if r == resource and (namespace is None or ns == namespace)
                     and (pred is None or pred(o))]
            return items, self.rv

    # -- writes --------------------------------------------------------------------------------
    def _bump(self) -> int:
        self.rv += 1
        return self.rv

    def create(self, resource: str, obj: dict[str, Any],
               hook: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Insert a new object, filling uid/creationTimestamp/resourceVersion/generateName.

        ``hook`` may fill fields that depend on the uid before the object is stored."""
        res = RESOURCES[resource]
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        with self.lock:
            if not meta.get("name") and meta.get("generateName"):
                for _ in range(20):
                    candidate = meta["generateName"] + random_suffix()
                    if (resource, meta["namespace"], candidate) not in self._objects:
                        break
                meta["name"] = candidate
            key = (resource, meta["namespace"], meta["name"])
            if key in self._objects:
                details = {"name": meta["name"], "kind": res.name}
                if res.group:
                    details["group"] = res.group
                raise ApiError(409, "AlreadyExists",
                               f'{res.qualified} "{meta["name"]}" already exists', details)
            obj["kind"], obj["apiVersion"] = res.kind, res.api_version
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            meta.setdefault("generation", 1)
            if hook is not None:
                hook(obj)
            meta["resourceVersion"] = str(self._bump())
            self._objects[key] = obj
            self._emit(resource, "ADDED", obj, None)
            return copy.deepcopy(obj)

    def update(self, resource: str, obj: dict[str, Any], check_rv: bool = False) -> dict[str, Any]:
        """Replace an existing object (identity fields kept); 409 Conflict on a stale RV if asked."""
        res = RESOURCES[resource]
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        with self.lock:
            key = (resource, meta.get("namespace", ""), meta.get("name", ""))
            old = self._objects.get(key)
            if old is None:
                raise not_found(res, meta.get("name", ""))
            old_meta = old["metadata"]
            if check_rv and meta.get("resourceVersion") and \
                    meta["resourceVersion"] != old_meta["resourceVersion"]:
                raise ApiError(409, "Conflict",
                               f'Operation cannot be fulfilled on {res.qualified} "{meta["name"]}": '
                               "the object has been modified; please apply your changes to the "
                               "latest version and try again",
                               {"name": meta["name"], "group": res.group, "kind": res.name})
            for k in ("uid", "creationTimestamp", "generation"):
                meta[k] = old_meta.get(k)
            if "deletionTimestamp" in old_meta:
                meta["deletionTimestamp"] = old_meta["deletionTimestamp"]
            obj["kind"], obj["apiVersion"] = res.kind, res.api_version
            if obj.get("spec") != old.get("spec"):
                meta["generation"] = (old_meta.get("generation") or 1) + 1
            obj_cmp = {k: v for k, v in obj.items()}
            obj_cmp["metadata"] = {k: v for k, v in meta.items() if k != "resourceVersion"}
            old_cmp = dict(old)
            old_cmp["metadata"] = {k: v for k, v in old_meta.items() if k != "resourceVersion"}
            if obj_cmp == old_cmp:          # a no-op write does not bump the RV (like the apiserver)
                return copy.deepcopy(old)
            meta["resourceVersion"] = str(self._bump())
            self._objects[key] = obj
            self._emit(resource, "MODIFIED", obj, old)
            return copy.deepcopy(obj)

    def mutate(self, resource: str, namespace: str, name: str,
               fn: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
        """Apply ``fn`` to a copy of the object and store it; None when the object is gone."""
        with self.lock:
            obj = self.find(resource, namespace, name)
            if obj is None:
                return None
            fn(obj)
            return self.update(resource, obj)

    def remove(self, resource: str, namespace: str, name: str) -> dict[str, Any]:
        """Remove an object now; the DELETED event carries its final state with a new RV."""
        with self.lock:
            key = (resource, namespace, name)
            old = self._objects.pop(key, None)
            if old is None:
                raise not_found(RESOURCES[resource], name)
            final = copy.deepcopy(old)
            final["metadata"]["resourceVersion"] = str(self._bump())
            self._emit(resource, "DELETED", final, old)
            return copy.deepcopy(final)

    # -- watch ---------------------------------------------------------------------------------
    def _emit(self, resource: str, type_: str, obj: dict, old: dict | None) -> None:
        ev = Event(self.rv, type_, copy.deepcopy(obj), copy.deepcopy(old) if old else None)
        hist = self._history[resource]
        hist.events.append(ev)
        while len(hist.events) > self.history_limit:
            hist.floor = hist.events.popleft().rv
        for q in list(self._watchers[resource]):
            q.put_nowait(ev)
        for listener in list(self.listeners):
            listener(type_, resource, ev.obj, ev.old)

    def subscribe(self, resource: str, since: int | None) -> tuple[asyncio.Queue, list[Event]]:
        """Register a live queue; return it with the retained events after ``since`` (None: none)."""
        with self.lock:
            backlog = self.history_since(resource, since) if since is not None else []
            q: asyncio.Queue = asyncio.Queue()
            self._watchers[resource].add(q)
            return q, backlog

    def unsubscribe(self, resource: str, q: asyncio.Queue) -> None:
        with self.lock:
            self._watchers[resource].discard(q)

    def history_since(self, resource: str, rv: int) -> list[Event]:
        with self.lock:
            hist = self._history[resource]
            if rv < hist.floor:
                oldest = hist.events[0].rv if hist.events else self.rv
                raise ApiError(410, "Expired", f"too old resource version: {rv} ({oldest})")
            return [e for e in hist.events if e.rv > rv]

    def compact(self) -> None:
        """Drop all watch history: a watch from any RV before now answers 410 Expired."""
        with self.lock:
            for hist in self._history.values():
                hist.events.clear()
                hist.floor = self.rv

    def snapshot(self, resource: str, namespace: str | None,
                 pred: Callable[[dict], bool] | None = None) -> list[dict]:
        return self.list(resource, namespace, pred)[0]


def object_key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata", {})
    return meta.get("namespace", ""), meta.get("name", "")


__all__ = ["ApiError", "Event", "RESOURCES", "Resource", "Store", "not_found", "now_rfc3339",
           "random_suffix", "object_key"]
