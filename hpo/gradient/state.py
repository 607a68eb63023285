"""hpo's experiment and trial states as Gradient's ``ExperimentState``.

A terminal state is reported only once hpo's experiment has ended (its logs are complete then):

* CREATED: recorded by ``create_*``, not started;  PENDING: its engine runs, its run waits for a slot;
  RUNNING: the run (or a process of its gang) runs, or has just ended and the engine is wrapping up.
* ended, by the latest run: SUCCEEDED -> STOPPED (Gradient's success); FAILED -> FAILED; otherwise an engine
  ERROR -> ERROR, and an experiment stopped (by ``stop`` or ``hpo stop``, before or during its run) or a run
  killed (``hpo kill``) -> CANCELLED.
* an engine that died before the experiment ended (kill -9): by the latest run as above, else ERROR.
"""
from __future__ import annotations

from typing import Any

from hpo.gradient.constants import ExperimentState
from hpo.storage import CREATED, EXPERIMENT_END_STATES

__all__ = ["gradient_state"]


def gradient_state(status: str, live: bool, last_trial: dict[str, Any] | None) -> int:
    """The Gradient state of an experiment in hpo ``status`` (``live``: its engine runs) whose latest trial is
    ``last_trial`` (None before the first)."""
    if status == CREATED:
        return ExperimentState.CREATED
    trial = None if last_trial is None else last_trial["status"]
    if live and status not in EXPERIMENT_END_STATES:
        return ExperimentState.PENDING if trial in (None, "WAITING") else ExperimentState.RUNNING
    if trial == "SUCCEEDED":
        return ExperimentState.STOPPED
    if trial == "FAILED":
        return ExperimentState.FAILED
    if status == "ERROR" or status not in EXPERIMENT_END_STATES:  # hpo could not run it, or its engine died
        return ExperimentState.ERROR
    return ExperimentState.CANCELLED  # stopped (before or during its run) or its run killed
