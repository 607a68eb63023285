"""Distributed trials on SSH hosts: a gang's processes spread over the machines, placed all at once.

Mixed into :class:`training_services.remote.RemoteTrainingService`.  Each process of the gang is a *member*: a
``_Trial`` of its own (its logs under ``processes/<role>-<index>/``, its copy on one machine) that reports to
the gang instead of the engine.  Placement takes a slot (and GPUs) on a machine for every process before any
starts, least-loaded machines first (so processes spread), never two processes with the same fixed port on one
machine; the others reach a process at its machine's ``host`` and a port free there.  Members are not restarted
one by one (the others hold the old address): a member lost with its machine fails the trial, and the engine's
``max_trial_retries`` re-runs it as a whole.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training_services.base import TrialSpec
from training_services.gang import (GangProcess, Placement, finishers, gang_environment, merged_lines,
                                    mpi_hostfile)

if TYPE_CHECKING:
    from training_services.remote import RemoteTrainingService, _Host, _Trial

log = logging.getLogger("hpo.remote")


@dataclass
class _Gang:
    spec: TrialSpec
    merged: list[Any]                                   # the trial's stdout.log and stderr.log, lines prefixed
    members: list["_Trial"] = field(default_factory=list)
    holders: list[tuple["_Host", list[int]]] = field(default_factory=list)  # MPI ranks placed but not started
    placements: list[Placement] = field(default_factory=list)
    machines: list[str] = field(default_factory=list)   # each process's machine label
    to_finish: set[str] = field(default_factory=set)
    outcome: tuple[str, int | None, str | None] | None = None
    kill_status: str | None = None
    kill_reason: str | None = None
    started_sent: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


class RemoteGangs:
    """The gang half of the remote service (``self`` is the service)."""

    _gangs: dict[str, _Gang]

    def check_gang(self: "RemoteTrainingService", processes: list[GangProcess]) -> None:
        """ValueError if the machines, empty, could never hold the gang at once (slots, GPUs, fixed ports)."""
        free = [[h.m.max_trials if h.m.max_trials is not None else len(processes),
                 len(h.allocator.gpus) * h.m.max_trial_number_per_gpu, set()] for h in self.hosts]
        for p in processes:
            fits = [f for f in free if f[0] > 0 and f[1] >= p.gpu_number and p.port not in f[2]]
            if not fits:
                raise ValueError(f"a trial's {len(processes)} processes (trial_roles) can never be placed at once on "
                                 f"the {len(self.hosts)} machine(s): no room for {p.name} (slots, GPUs or its fixed "
                                 "port taken on every machine)")
            best = max(fits, key=lambda f: f[0])
            best[0] -= 1
            best[1] -= p.gpu_number
            if p.port is not None:
                best[2].add(p.port)

    async def check_reachable(self: "RemoteTrainingService") -> list[str]:
        """After :meth:`start`: whether every machine reaches every other one at its ``host`` over TCP (what a
        distributed trial's processes need); one line per pair, problems first marked ``cannot reach``."""
        lines = []
        for target in self.hosts:
            port = (await target.request({"op": "listen", "hold": 30}))["port"]
            for source in self.hosts:
                if source is target:
                    continue
                reply = await source.request({"op": "probe", "host": target.m.host, "port": port, "timeout": 3})
                where = f"{source.label} -> {target.m.host}:{port} ({target.label})"
                lines.append(f"{where}: reached" if reply.get("ok") else f"{where}: cannot reach ({reply.get('reason')})")
        return sorted(lines, key=lambda line: "cannot reach" not in line)

    async def _launch_gang(self: "RemoteTrainingService", spec: TrialSpec) -> None:
        from training_services.remote import RESTORE_FOLDER, _HostError, _Trial

        plan = await self._acquire_gang(spec)
        if plan is None:
            return
        spec.trial_dir.mkdir(parents=True, exist_ok=True)
        (spec.trial_dir / "parameters.json").write_text(json.dumps(spec.parameters))
        gang = _Gang(spec, [open(spec.trial_dir / n, "ab", buffering=0) for n in ("stdout.log", "stderr.log")])
        gang.machines = [host.label for host, _ in plan]
        gang.to_finish = finishers(spec.processes)
        self._gangs[spec.trial_id] = gang
        try:
            machines = list({host.label: host for host, _ in plan}.values())  # each machine of the gang, once
            ports: dict[str, list[int]] = {}
            for host in machines:
                wanted = sum(1 for (h, _), p in zip(plan, spec.processes) if h is host and p.port is None)
                ports[host.label] = (await host.request({"op": "ports", "n": wanted}))["ports"] if wanted else []
            gang.placements = [Placement(host.m.host, p.port if p.port is not None else ports[host.label].pop())
                               for (host, _), p in zip(plan, spec.processes)]
            code = {host.label: await host.ensure_code(spec.code_dir, spec.experiment_id) for host in machines}
            if spec.restore_checkpoint is not None:  # the chief continues from it (it reports the checkpoints)
                chief_host = plan[0][0]
                folder = f"{chief_host.root}/{spec.experiment_id}/trials/{spec.trial_id}.{spec.processes[0].name}"
                await chief_host.upload_folder(spec.restore_checkpoint, f"{folder}/{RESTORE_FOLDER}")
        except BaseException as exc:
            for host, gpus in plan:
                self._free_slot(host, gpus)
            self._gang_done(gang)
            if isinstance(exc, (ConnectionError, _HostError)):
                raise RuntimeError(f"could not place the trial's processes: {exc}") from None
            raise
        hostfile = mpi_hostfile(gang.placements) if spec.distribution == "mpi" else None
        for i, ((host, gpus), process) in enumerate(zip(plan, spec.processes)):
            if process.command is None:  # an MPI rank that rank 0's mpirun starts: its place is held
                gang.holders.append((host, gpus))
                continue
            folder = spec.trial_dir / "processes" / process.name
            folder.mkdir(parents=True, exist_ok=True)
            member = _Trial(spec, open(folder / "stdout.log", "ab", buffering=0),
                            open(folder / "stderr.log", "ab", buffering=0), asyncio.get_running_loop().create_future(),
                            gang=gang, process=process)
            member.kill_status, member.kill_reason = gang.kill_status, gang.kill_reason  # killed while placed
            gang.members.append(member)
            run = self._new_run(member, host, gpus, key=f"{spec.trial_id}.{process.name}")
            run.code_remote = code[host.label]
            hostfile_path = f"{run.remote_dir}/hostfile" if hostfile is not None else None
            member.extra_env = gang_environment(spec.processes, gang.placements, spec.distribution, i, hostfile_path)
            if spec.distribution == "mpi":  # rank 0's mpirun starts every rank: it gets the gang's GPUs
                member.extra_env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for _, gs in plan for g in gs)
            if hostfile is not None:
                member.files = {"hostfile": hostfile}
            self._send_launch(run)
        await asyncio.wait([m.started for m in gang.members])
        errors = [f"{m.process.name}: {m.launch_error}" for m in gang.members if m.launch_error and m.process]
        if errors:
            raise RuntimeError("; ".join(errors))

    def _gang_started(self: "RemoteTrainingService", gang: _Gang) -> None:
        """Once every member has started (a fast one may have ended already): the trial runs."""
        runs = [m.started_run for m in gang.members]
        if gang.started_sent or any(r is None or r.pid is None for r in runs):
            return
        gang.started_sent = True
        pids = {m.process.name: r.pid for m, r in zip(gang.members, runs) if m.process and r}
        gpus = {m.process.name: r.gpus for m, r in zip(gang.members, runs) if m.process and r}
        processes = [{"name": p.name, "host": pl.host, "port": pl.port, "machine": machine, "pid": pids.get(p.name),
                      "gpus": gpus.get(p.name, [])}
                     for p, pl, machine in zip(gang.spec.processes, gang.placements, gang.machines)]
        chief = runs[0]
        assert chief is not None
        self._events.started(gang.spec.trial_id, chief.pid, chief.pid, chief.host.label,  # type: ignore[union-attr]
                             [g for r in runs if r for g in r.gpus], processes=processes)

    async def _acquire_gang(self: "RemoteTrainingService", spec: TrialSpec) -> list[tuple["_Host", list[int]]] | None:
        """A slot (and GPUs) for every process at once; waits while the machines cannot hold them all.  None if
        the trial was killed meanwhile (reported ended) or the service stops."""
        assert self._change is not None
        trial_id = spec.trial_id
        self._waiting[trial_id] = None
        try:
            while True:
                change = self._change
                killed = self._waiting.get(trial_id)
                if killed is not None or self._closing:
                    status, reason = killed or ("SYS_CANCELED", "experiment stopped")
                    self._events.ended(trial_id, status, None, reason)  # type: ignore[union-attr]
                    return None
                usable = [h for h in self.hosts if h.state in ("up", "reconnecting")]
                if not usable:
                    why = "; ".join(f"{h.m.address}: {h.out_reason or h.state}" for h in self.hosts)
                    raise RuntimeError(f"no remote machine is usable ({why})")
                plan = self._plan_gang(spec.processes, [h for h in usable if h.state == "up"])
                if plan is not None:
                    return plan
                try:
                    await asyncio.wait_for(change.wait(), timeout=10)
                except asyncio.TimeoutError:  # other programs may have freed a GPU
                    if any(p.gpu_number for p in spec.processes):
                        await asyncio.gather(*(h.refresh_gpus() for h in self.hosts))
        finally:
            self._waiting.pop(trial_id, None)

    def _plan_gang(self, processes: list[GangProcess], hosts: list["_Host"]) -> list[tuple["_Host", list[int]]] | None:
        """Take a slot and GPUs for each process, least-loaded machine first; all or none."""
        plan: list[tuple[_Host, list[int]]] = []
        ports: dict[str, set[int]] = {}
        for p in processes:
            for host in sorted(hosts, key=lambda h: (h.assigned, h.index)):
                if host.m.max_trials is not None and host.assigned >= host.m.max_trials:
                    continue
                if p.port is not None and p.port in ports.get(host.label, ()):
                    continue
                gpus = host.allocator.acquire(p.gpu_number)
                if gpus is None:
                    continue
                host.assigned += 1
                ports.setdefault(host.label, set()).add(p.port) if p.port is not None else None
                plan.append((host, gpus))
                break
            else:
                for host, gpus in plan:
                    self._free_slot(host, gpus)
                return None
        return plan

    @staticmethod
    def _free_slot(host: "_Host", gpus: list[int]) -> None:
        host.assigned -= 1
        host.allocator.release(gpus)

    # the gang's members end ------------------------------------------------------------------------------------
    def _member_metric(self: "RemoteTrainingService", member: "_Trial", kind: str, value: Any) -> None:
        assert member.process is not None and self._events is not None
        if member.process.chief or kind == "checkpoint":
            self._events.metric(member.spec.trial_id, kind, value)
        else:
            self._events.process_metric(member.spec.trial_id, member.process.name, kind, value)

    def _member_output(self, member: "_Trial", stream: int, data: bytes) -> None:
        """Copy a member's stdout (1) or stderr (2) into the trial's merged log, complete lines prefixed."""
        gang, name = member.gang, member.process.name  # type: ignore[union-attr]
        assert gang is not None
        lines, member.merge_partial[stream - 1] = merged_lines(name, member.merge_partial[stream - 1], data)
        gang.merged[stream - 1].write(lines)

    def _member_ended(self: "RemoteTrainingService", member: "_Trial", status: str, code: int | None,
                      message: str | None) -> None:
        gang, name = member.gang, member.process.name  # type: ignore[union-attr]
        assert gang is not None
        member.end_status = (status, code, message)
        for stream in (1, 2):  # an unfinished last line
            if member.merge_partial[stream - 1] and not gang.done.is_set():
                self._member_output(member, stream, b"\n")
        if gang.outcome is None and gang.kill_status is None:
            if status != "SUCCEEDED":
                gang.outcome = ("FAILED", code, f"{name}: {message}" if message else f"{name} failed")
            else:
                gang.to_finish.discard(name)
                if not gang.to_finish:
                    chief = gang.members[0].end_status
                    gang.outcome = ("SUCCEEDED", chief[1] if chief else 0, None)
            if gang.outcome is not None:  # the rest of the gang is stopped (its end is not a failure)
                for other in gang.members:
                    if other.end_status is None:
                        self._kill_member(other, "SYS_CANCELED", None)
        if all(m.end_status is not None for m in gang.members):
            self._gang_done(gang)

    def _gang_done(self: "RemoteTrainingService", gang: _Gang) -> None:
        if gang.done.is_set():
            return
        for host, gpus in gang.holders:
            self._free_slot(host, gpus)
        gang.holders = []
        for fh in gang.merged:
            fh.close()
        self._gangs.pop(gang.spec.trial_id, None)
        self._notify()
        gang.done.set()
        chief = gang.members[0].end_status if gang.members else None
        if gang.kill_status is not None:
            end = (gang.kill_status, chief[1] if chief else None, gang.kill_reason)
        else:
            end = gang.outcome or ("FAILED", None, "could not start")
        if gang.members:
            self._events.ended(gang.spec.trial_id, *end)  # type: ignore[union-attr]

    def _kill_member(self: "RemoteTrainingService", member: "_Trial", status: str, reason: str | None) -> None:
        if member.kill_status is None:
            member.kill_status, member.kill_reason = status, reason
        run = member.current
        if run is None:
            self._finish(member, status, None, reason)
        elif run.host.state == "up" and run.host.runs.get(run.key) is run:
            self._send_kill(run)

    async def _kill_gang(self: "RemoteTrainingService", gang: _Gang, status: str, reason: str | None) -> None:
        if gang.kill_status is None and gang.outcome is None:
            gang.kill_status, gang.kill_reason = status, reason
        for member in gang.members:
            if member.end_status is None:
                self._kill_member(member, status, reason)
        await gang.done.wait()

    def _abandon_gangs(self: "RemoteTrainingService", status: str, reason: str | None) -> None:
        """At stop, after the kills' time ran out: end the members whose machine could not be reached."""
        for gang in list(self._gangs.values()):
            for member in gang.members:
                if member.end_status is None:
                    where = member.current.host.label if member.current is not None else "?"
                    self._finish(member, member.kill_status or status, None,
                                 f"{member.kill_reason or reason or 'stopped'} (machine {where} unreachable: its "
                                 "processes may still run)")
            self._gang_done(gang)

    @staticmethod
    def _gang_leftovers(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A dead engine's trials as (id, pgid, machine) to clean up: one per process of a distributed trial."""
        out = []
        for rec in records:
            processes = rec.get("processes") or []
            if not processes:
                out.append(rec)
            for p in processes:
                if p.get("pid") and p.get("machine"):
                    out.append({"id": rec["id"], "pgid": p["pid"], "host": p["machine"]})
        return out


def member_folder(member: "_Trial") -> Path:
    """Where a trial's (or a gang member's) local logs are."""
    if member.process is None:
        return member.spec.trial_dir
    return member.spec.trial_dir / "processes" / member.process.name
