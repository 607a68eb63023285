"""State shared by the fake's components (one node, its capacity, injected failures)."""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path

from .store import Store

NODE_NAME = "fake-node"
_MEM_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
               "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
               "E": 10**18, "m": 10**-3}


def parse_quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("500m", "2", "4Gi", "1e3") as a plain number; ValueError if bad."""
    if isinstance(value, (int, float)):
        return float(value)
    m = re.fullmatch(r"\s*([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or (m.group(2) and m.group(2) not in _MEM_SUFFIX):
        raise ValueError(f"quantities must match the regular expression: {value!r}")
    return float(m.group(1)) * _MEM_SUFFIX.get(m.group(2), 1)


def parse_capacity(capacity: dict[str, str | int]) -> dict[str, float]:
    """Normalise a capacity mapping: cpu in cores, memory in bytes, nvidia.com/gpu in devices."""
    out = {"cpu": 4.0, "memory": float(8 * 2**30), "nvidia.com/gpu": 0.0}
    for key, value in capacity.items():
        key = {"gpu": "nvidia.com/gpu"}.get(key, key)
        out[key] = parse_quantity(value)
    return out


@dataclass
class Runtime:
    """What the controllers, scheduler and kubelet share; only touched on the loop thread."""
    store: Store
    root: Path
    capacity: dict[str, float]
    node_name: str = NODE_NAME
    pull_failures: list[str] = field(default_factory=list)
    pvcs: dict[tuple[str, str], Path] = field(default_factory=dict)
    wake: asyncio.Event | None = None

    def kick(self) -> None:
        """Wake the reconcile loop (called on every store write)."""
        if self.wake is not None:
            self.wake.set()
