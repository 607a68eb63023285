"""GPU discovery (nvidia-smi) and assignment of GPUs to trials."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
from dataclasses import dataclass

__all__ = ["GpuInfo", "query_gpus", "detect_gpus", "GpuAllocator"]


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    busy: bool          # has compute processes not started by this engine


def query_gpus(own_pids: frozenset[int] = frozenset()) -> list[GpuInfo]:
    """GPUs seen by ``nvidia-smi`` (empty when it is absent or fails); blocking, see :func:`detect_gpus`."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    gpus = _query(exe, "--query-gpu=index,uuid", 2)
    apps = _query(exe, "--query-compute-apps=gpu_uuid,pid", 2)
    busy_uuids = {uuid for uuid, pid in apps if not pid.isdigit() or int(pid) not in own_pids}
    return [GpuInfo(int(idx), uuid, uuid in busy_uuids) for idx, uuid in gpus if idx.isdigit()]


async def detect_gpus(own_pids: frozenset[int] = frozenset()) -> list[GpuInfo]:
    """:func:`query_gpus` on a worker thread, for the engine's event loop."""
    return await asyncio.to_thread(query_gpus, own_pids)


def _query(exe: str, query: str, width: int) -> list[list[str]]:
    try:
        proc = subprocess.run([exe, query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if proc.returncode != 0:
        return []
    rows = [[c.strip() for c in line.split(",")] for line in proc.stdout.splitlines() if line.strip()]
    return [r for r in rows if len(r) == width]


class GpuAllocator:
    """Hands out GPU indices: at most ``per_gpu`` trials per GPU, least-loaded first.

    Args:
        gpus: the detected GPUs (already filtered by ``gpu_indices``).
        per_gpu: ``max_trial_number_per_gpu``.
        use_active_gpu: whether GPUs busy with other programs may be used.
    """

    def __init__(self, gpus: list[GpuInfo], per_gpu: int = 1, use_active_gpu: bool = False) -> None:
        self.gpus = gpus
        self.per_gpu = per_gpu
        self.use_active_gpu = use_active_gpu
        self.load = {g.index: 0 for g in gpus}

    def usable(self) -> list[GpuInfo]:
        return [g for g in self.gpus if self.use_active_gpu or not g.busy]

    def acquire(self, n: int) -> list[int] | None:
        """``n`` GPU indices, or None when not enough are free now."""
        if n <= 0:
            return []
        free = sorted((self.load[g.index], g.index) for g in self.usable() if self.load[g.index] < self.per_gpu)
        if len(free) < n:
            return None
        chosen = sorted(idx for _, idx in free[:n])
        for idx in chosen:
            self.load[idx] += 1
        return chosen

    def release(self, indices: list[int]) -> None:
        for idx in indices:
            self.load[idx] = max(0, self.load[idx] - 1)

    def refresh(self, gpus: list[GpuInfo]) -> None:
        """Update busy flags from a new detection, keeping current loads."""
        self.gpus = [g for g in gpus if g.index in self.load]
