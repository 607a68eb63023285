"""The fake Kubernetes cluster shared by a test run (tests/fake_k8s), and helpers for tests that use it."""
from __future__ import annotations

import atexit
import itertools
import tempfile
from pathlib import Path
from typing import Any

import pytest

_cluster: Any = None
_namespaces = itertools.count(1)
_current: str | None = None


def unavailable() -> str | None:
    """Why the Kubernetes tests cannot run here (the optional extra is missing), or None."""
    from hpo.config import installed
    if not installed("kubernetes_asyncio"):
        return "kubernetes_asyncio is not installed (pip install 'hpo[kubernetes]')"
    return None


def shared_cluster(current: bool = False) -> tuple[Any, str]:
    """(the run's fake cluster, started on first use, a fresh namespace); ``current``: the last namespace given."""
    global _cluster, _current
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    if _cluster is None:
        from tests.fake_k8s import FakeCluster
        root = Path(tempfile.mkdtemp(prefix="hpo-fake-k8s-"))
        _cluster = FakeCluster(root=root, capacity={"cpu": "64", "memory": "256Gi", "nvidia.com/gpu": "0"},
                               token="contract-token").start()
        atexit.register(_cluster.stop)
    if not current or _current is None:
        _current = f"contract-{next(_namespaces)}"
    return _cluster, _current
