"""A fake one-node Kubernetes cluster for tests: the real ``kubernetes_asyncio`` client talks to it.

Pieces: ``store`` (objects, one global resourceVersion, bounded watch history), ``server`` (HTTP
routes: core/v1 pods, configmaps, services, events, persistentvolumeclaims; batch/v1 jobs; pod log
and eviction; discovery), ``controllers`` (scheduler, Job controller, garbage collector, TTL),
``kubelet`` (pods run as local process groups), ``selectors``, ``validation``.

Deliberate difference from a real kubelet: no container images or filesystems. Commands run on
the host; volume mount paths are mapped under the pod's folder and rewritten in command, args,
env values and workingDir (see ``kubelet``).
"""
from .cluster import FakeCluster

__all__ = ["FakeCluster"]
