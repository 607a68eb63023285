"""What a dead engine left behind: ending it without resuming the experiment.

An experiment whose engine was killed (kill -9, a lost machine) still says RUNNING in its store
and may have trial processes running.  ``hpo stop ID`` / ``Experiment.connect(id).stop()`` and
``hpo kill ID TRIAL`` end them here: this process claims the experiment's writer lock (so it
cannot race a resume or a live engine), asks the experiment's training service to end the
leftover processes, and records the outcome.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from hpo.storage import ACTIVE_STATES, CREATED, EXPERIMENT_END_STATES, ExperimentStore

__all__ = ["end_abandoned"]

log = logging.getLogger("hpo")


class _IgnoreEvents:
    """A TrialEvents sink: nothing is launched, so nothing is reported."""

    def started(self, *args: Any) -> None: ...

    def metric(self, *args: Any) -> None: ...

    def ended(self, *args: Any) -> None: ...


def end_abandoned(directory: Path, trial_id: str | None = None) -> tuple[str, int]:
    """End an experiment (or only trial ``trial_id`` of it) whose engine is gone.

    Without ``trial_id`` every leftover trial is ended (interrupted: a resume re-runs it) and the
    experiment is marked STOPPED; with it, that trial is ended as USER_CANCELED and the experiment
    keeps its state.  Returns the experiment's status and the number of trials ended.  Raises
    :class:`~hpo.storage.StoreLocked` if an engine holds the experiment (it is not abandoned).
    """
    from hpo.config import ExperimentConfig
    from training_services.base import create_training_service

    with ExperimentStore(directory) as store:  # recorded first, then acted on
        info = store.experiment()
        if trial_id is None:
            if info["status"] in EXPERIMENT_END_STATES:
                return info["status"], 0
            records = store.end_leftovers("interrupted: its engine had died")
            why = "stopped before it was started" if info["status"] == CREATED else "stopped after its engine died"
            store.set_status("STOPPED", why, store.elapsed_seconds())
        else:
            records = [r for r in store.trials(status=ACTIVE_STATES) if r["id"] == trial_id]
            for rec in records:
                store.trial_ended(rec["seq"], "USER_CANCELED", None, "killed by user (its engine had died)")
        if records:
            ts = ExperimentConfig.from_dict(info["config"]).training_service
            service = create_training_service(ts.platform, **ts.model_dump(exclude={"platform"}))
            service.leftover_cleanup(records)
            asyncio.run(_start_and_stop(service))
        return store.experiment()["status"], len(records)


async def _start_and_stop(service: Any) -> None:
    """Services end leftovers in start() (remote: once connected); a failure is logged, not raised:
    the store is updated either way, and a later resume tries again."""
    try:
        await service.start(_IgnoreEvents())
    except Exception as exc:  # noqa: BLE001 - e.g. a machine that is gone
        log.warning("could not reach the training service to end leftover trials: %s", exc)
        return
    await service.stop("SYS_CANCELED", "its engine had died")
