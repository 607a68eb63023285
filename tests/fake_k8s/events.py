"""v1 Event objects recorded by the fake's components (kubelet, scheduler, job controller)."""
from __future__ import annotations

import uuid
from typing import Any

from .store import Store, now_rfc3339


def record(store: Store, involved: dict[str, Any], reason: str, message: str,
           type_: str = "Normal", component: str = "kubelet", host: str | None = None) -> None:
    """Create a namespaced Event about ``involved`` (a Pod or Job object)."""
    meta = involved.get("metadata", {})
    ts = now_rfc3339()
    source: dict[str, str] = {"component": component}
    if host:
        source["host"] = host
    store.create("events", {
        "metadata": {"name": f"{meta.get('name')}.{uuid.uuid4().hex[:16]}",
                     "namespace": meta.get("namespace", "default")},
        "involvedObject": {"kind": involved.get("kind"), "apiVersion": involved.get("apiVersion"),
                           "namespace": meta.get("namespace"), "name": meta.get("name"),
                           "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")},
        "reason": reason, "message": message, "type": type_, "count": 1,
        "firstTimestamp": ts, "lastTimestamp": ts, "source": source,
        "reportingComponent": component, "reportingInstance": host or "",
    })
