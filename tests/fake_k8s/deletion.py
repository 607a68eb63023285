"""Delete semantics shared by the HTTP API and the controllers.

Contract: ``delete(rt, resource, ns, name, propagation, grace)`` returns ``(obj, removed)``:
* batch/v1 Jobs default to **Orphan** (their pods lose the ownerReference and keep running);
  Background removes the Job now and the garbage collector deletes its pods; Foreground sets
  ``deletionTimestamp`` and finalizer ``foregroundDeletion`` and removes the Job after its pods.
* Pods delete gracefully when the kubelet runs them (``deletionTimestamp`` set, kubelet kills and
  then removes the object); unscheduled or finished pods are removed at once.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from .runtime import Runtime
from .store import RESOURCES, ApiError, now_rfc3339

POLICIES = ("Orphan", "Background", "Foreground")


def _owned_by(pod: dict[str, Any], uid: str) -> bool:
    return any(r.get("uid") == uid for r in pod["metadata"].get("ownerReferences") or [])


def delete(rt: Runtime, resource: str, namespace: str, name: str, propagation: str | None = None,
           grace: int | None = None, active_pod_uids: set[str] | None = None
           ) -> tuple[dict[str, Any], bool]:
    """Delete one object; return (object state, whether it is already gone)."""
    store = rt.store
    if propagation is not None and propagation not in POLICIES:
        raise ApiError(400, "BadRequest", f'propagationPolicy "{propagation}" is not supported; '
                       "supported values: Orphan, Background, Foreground")
    obj = store.get(resource, namespace, name)
    meta = obj["metadata"]
    if resource == "pods":
        return _delete_pod(rt, obj, grace, active_pod_uids)
    if resource == "jobs":
        if "deletionTimestamp" in meta:
            return obj, False
        policy = propagation or "Orphan"
        if policy == "Orphan":
            uid = meta["uid"]
            for pod in store.snapshot("pods", namespace, lambda p: _owned_by(p, uid)):
                store.mutate("pods", namespace, pod["metadata"]["name"], lambda p: p["metadata"]
                             .__setitem__("ownerReferences",
                                          [r for r in p["metadata"].get("ownerReferences") or []
                                           if r.get("uid") != uid]))
        elif policy == "Foreground":
            def mark(j: dict[str, Any]) -> None:
                j["metadata"]["deletionTimestamp"] = now_rfc3339()
                j["metadata"]["deletionGracePeriodSeconds"] = 0
                fins = j["metadata"].setdefault("finalizers", [])
                if "foregroundDeletion" not in fins:
                    fins.append("foregroundDeletion")
            updated = store.mutate("jobs", namespace, name, mark)
            rt.kick()
            return updated or obj, False
    if meta.get("finalizers"):
        updated = store.mutate(resource, namespace, name, lambda o: o["metadata"].setdefault(
            "deletionTimestamp", now_rfc3339()))
        return updated or obj, False
    final = store.remove(resource, namespace, name)
    rt.kick()
    return final, True


def _delete_pod(rt: Runtime, pod: dict[str, Any], grace: int | None,
                active_pod_uids: set[str] | None) -> tuple[dict[str, Any], bool]:
    meta, spec = pod["metadata"], pod.get("spec") or {}
    phase = (pod.get("status") or {}).get("phase")
    if grace is None:
        grace = int(spec.get("terminationGracePeriodSeconds", 30))
    running = active_pod_uids is None or meta["uid"] in active_pod_uids
    if not spec.get("nodeName") or phase in ("Succeeded", "Failed") or not running:
        if not meta.get("finalizers"):
            final = rt.store.remove("pods", meta["namespace"], meta["name"])
            rt.kick()
            return final, True

    def mark(p: dict[str, Any]) -> None:
        m = p["metadata"]
        current = m.get("deletionGracePeriodSeconds")
        if current is not None and current <= grace:
            return
        when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=grace)
        m["deletionTimestamp"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        m["deletionGracePeriodSeconds"] = grace
    updated = rt.store.mutate("pods", meta["namespace"], meta["name"], mark)
    rt.kick()
    return updated or pod, False


def success_status(resource: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The ``Status`` body answered after an immediate delete of a non-pod object."""
    res = RESOURCES[resource]
    details = {"name": obj["metadata"]["name"], "kind": res.name, "uid": obj["metadata"]["uid"]}
    if res.group:
        details["group"] = res.group
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": details}
