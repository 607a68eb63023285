"""Distributed trials: one trial run by a gang of processes, shared by every training service.

A trial with ``trial_roles`` expands to :class:`GangProcess` es (chief first, ranks in that order).  A service
places all of them before any starts (all-or-nothing), gives each an address and a port, then starts each with
:func:`gang_environment`, the variables TensorFlow, PyTorch, MPI and Gradient's utilities read.  The chief
(rank 0) reports the trial's results; :func:`finishers` says whose exits end the trial.
"""
from __future__ import annotations

import base64
import json
import socket
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["GangProcess", "Placement", "gang_processes", "gang_environment", "mpi_hostfile", "finishers",
           "free_ports", "chief_role", "merged_line", "merged_lines"]

CHIEF_ROLES = ("chief", "master", "worker")  # the first of these present holds the chief (rank 0); else the first role


@dataclass(frozen=True)
class GangProcess:
    """One process of a distributed trial.  ``command`` None: a holder that runs nothing but keeps its place
    (an MPI rank that rank 0's ``mpirun`` starts itself)."""

    role: str
    index: int
    rank: int
    command: str | None
    gpu_number: int
    port: int | None = None   # fixed by the config; None: a free port is chosen when the gang is placed

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"

    @property
    def chief(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Placement:
    """Where a placed process runs: the address the other processes reach it at, and its port."""

    host: str
    port: int


def chief_role(roles: Mapping[str, Any]) -> str:
    """The role whose index 0 is the chief."""
    return next((r for r in CHIEF_ROLES if r in roles), next(iter(roles)))


def gang_processes(roles: Mapping[str, Any], trial_command: str | None, trial_gpu_number: int,
                   distribution: str) -> list[GangProcess]:
    """The processes ``roles`` (name -> object with count, command, gpu_number, port) expand to, chief first.

    With ``distribution='mpi'`` only rank 0 runs a command (its ``mpirun`` starts the others on the hostfile)."""
    first = chief_role(roles)
    order = [first] + [r for r in roles if r != first]
    out: list[GangProcess] = []
    for name in order:
        role = roles[name]
        command = role.command if role.command is not None else trial_command
        gpus = trial_gpu_number if role.gpu_number is None else role.gpu_number
        for index in range(role.count):
            rank = len(out)
            runs = command if distribution != "mpi" or rank == 0 else None
            out.append(GangProcess(name, index, rank, runs, gpus, role.port))
    return out


def finishers(processes: list[GangProcess]) -> set[str]:
    """Names of the processes whose successful exits end the trial: every process of the chief's role that runs
    a command.  Other processes still running then (parameter servers, MPI holders) are stopped, not failed."""
    role = processes[0].role
    return {p.name for p in processes if p.role == role and p.command is not None}


def _address(placement: Placement) -> str:
    return f"{placement.host}:{placement.port}"


def gang_environment(processes: list[GangProcess], placements: list[Placement], distribution: str, me: int,
                     hostfile: str | None = None) -> dict[str, str]:
    """The environment of ``processes[me]`` once every process is placed (``placements`` in the same order).

    Always: ``HPO_ROLE``/``HPO_ROLE_INDEX``/``HPO_RANK``/``HPO_WORLD_SIZE``/``HPO_PROCESS`` and Gradient's
    ``TYPE``, ``INDEX``, ``WORKER_HOSTS``, ``PS_HOSTS``, ``PS_CONFIG``.  ``tensorflow``: ``TF_CONFIG``;
    ``pytorch``: ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``;
    ``mpi``: the hostfile's path in ``HPO_MPI_HOSTFILE`` and ``OMPI_MCA_orte_default_hostfile``."""
    proc, place = processes[me], placements[me]
    cluster: dict[str, list[str]] = {}
    for p, pl in zip(processes, placements):
        cluster.setdefault(p.role, []).append(_address(pl))
    task = {"type": proc.role, "index": proc.index}
    env = {
        "HPO_ROLE": proc.role, "HPO_ROLE_INDEX": str(proc.index), "HPO_RANK": str(proc.rank),
        "HPO_WORLD_SIZE": str(len(processes)), "HPO_PROCESS": proc.name,
        "TYPE": proc.role, "INDEX": str(proc.index),
        "WORKER_HOSTS": ",".join(cluster.get("worker", [])), "PS_HOSTS": ",".join(cluster.get("ps", [])),
        "PS_CONFIG": base64.urlsafe_b64encode(json.dumps(
            {"cluster": cluster, "task": task, "environment": "cloud"}).encode()).decode(),
    }
    if distribution == "tensorflow":
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": task})
    elif distribution == "pytorch":
        same_host = [p.rank for p, pl in zip(processes, placements) if pl.host == place.host]
        env.update({"MASTER_ADDR": placements[0].host, "MASTER_PORT": str(placements[0].port),
                    "WORLD_SIZE": str(len(processes)), "RANK": str(proc.rank),
                    "LOCAL_RANK": str(same_host.index(proc.rank)), "LOCAL_WORLD_SIZE": str(len(same_host))})
    elif distribution == "mpi" and hostfile is not None:
        env.update({"HPO_MPI_HOSTFILE": hostfile, "OMPI_MCA_orte_default_hostfile": hostfile})
    return env


def mpi_hostfile(placements: list[Placement]) -> str:
    """An Open MPI / MPICH hostfile: one ``host slots=N`` line per host, in rank order."""
    slots: dict[str, int] = {}
    for pl in placements:
        slots[pl.host] = slots.get(pl.host, 0) + 1
    return "".join(f"{host} slots={n}\n" for host, n in slots.items())


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on this machine now (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def merged_line(name: str, line: bytes) -> bytes:
    """A line of process ``name``'s output as it appears in the trial's merged log."""
    return b"[" + name.encode() + b"] " + line


def merged_lines(name: str, pending: bytes, data: bytes) -> tuple[bytes, bytes]:
    """Output ``data`` of process ``name``, after ``pending`` (its unfinished line so far), as the trial's merged
    log takes it: the complete lines, each prefixed, and what is still unfinished."""
    text = pending + data
    end = text.rfind(b"\n") + 1
    return b"".join(merged_line(name, line) for line in text[:end].splitlines(keepends=True)), text[end:]
