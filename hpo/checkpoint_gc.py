"""Checkpoint garbage collection: which checkpoints an experiment keeps, as a pure function.

Determined's policy, the union of three rules (each count may be 0):

* ``save_experiment_best``: the N best *validated* checkpoints over the whole experiment;
* ``save_trial_best``: for each trial, its N best validated checkpoints;
* ``save_trial_latest``: for each trial, its N latest checkpoints (validated or not), latest by
  ``steps_completed``, then by report ``order``.

Checkpoints whose uuid is in ``protected`` (registered in the model registry) are always kept.
A checkpoint without a value, or with a NaN value, is unvalidated: never "best", but it may be
"latest".  Ties between equal values go to the checkpoint reported first (smaller ``order``), so
the answer depends only on the input, never on its order.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Collection, Iterable

__all__ = ["CheckpointInfo", "checkpoints_to_keep", "checkpoints_to_delete", "validate_policy"]


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint as the GC policy sees it."""

    uuid: str
    trial: int  # the trial's sequence number
    steps_completed: int  # when it was taken (orders 'latest' within a trial; ties broken by `order`)
    order: int  # report order in the experiment (monotonic)
    value: float | None  # the searcher metric validated at that step; None (or NaN) = not validated


def validate_policy(save_experiment_best: int, save_trial_best: int, save_trial_latest: int) -> None:
    """Raise a one-line ValueError unless all three counts are integers >= 0."""
    for key, value in (("save_experiment_best", save_experiment_best), ("save_trial_best", save_trial_best),
                       ("save_trial_latest", save_trial_latest)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} must be an integer >= 0, got {value!r}")
        if value < 0:
            raise ValueError(f"{key} must be an integer >= 0, got {value}")


def _validated(ckpt: CheckpointInfo) -> bool:
    return ckpt.value is not None and not math.isnan(ckpt.value)


def checkpoints_to_keep(checkpoints: Iterable[CheckpointInfo], *, save_experiment_best: int = 0,
                        save_trial_best: int = 1, save_trial_latest: int = 1, smaller_is_better: bool = True,
                        protected: Collection[str] = ()) -> set[str]:
    """The uuids to keep: the union of the three rules, plus every uuid in ``protected``.

    The result always contains ``protected`` (even uuids not among ``checkpoints``), and it only
    grows when any count grows.  Raises ValueError for a bad policy or a repeated uuid.
    """
    validate_policy(save_experiment_best, save_trial_best, save_trial_latest)
    if isinstance(protected, str):
        raise ValueError(f"protected must be a collection of uuids, got the string {protected!r}")
    ckpts = list(checkpoints)
    seen: set[str] = set()
    for ckpt in ckpts:
        if ckpt.uuid in seen:
            raise ValueError(f"checkpoint uuid {ckpt.uuid!r} appears twice; expected each uuid once")
        seen.add(ckpt.uuid)
        if ckpt.value is not None and (isinstance(ckpt.value, bool) or not isinstance(ckpt.value, (int, float))):
            raise ValueError(f"checkpoint {ckpt.uuid!r} has value {ckpt.value!r}; expected a number or None")

    sign = 1.0 if smaller_is_better else -1.0

    def best_first(items: list[CheckpointInfo]) -> list[CheckpointInfo]:
        validated = [c for c in items if _validated(c)]
        return sorted(validated, key=lambda c: (sign * float(c.value), c.order))  # type: ignore[arg-type]

    keep: set[str] = set(protected)
    keep.update(c.uuid for c in best_first(ckpts)[:save_experiment_best])
    by_trial: dict[int, list[CheckpointInfo]] = defaultdict(list)
    for ckpt in ckpts:
        by_trial[ckpt.trial].append(ckpt)
    for items in by_trial.values():
        keep.update(c.uuid for c in best_first(items)[:save_trial_best])
        latest = sorted(items, key=lambda c: (c.steps_completed, c.order), reverse=True)
        keep.update(c.uuid for c in latest[:save_trial_latest])
    return keep


def checkpoints_to_delete(checkpoints: Iterable[CheckpointInfo], *, save_experiment_best: int = 0,
                          save_trial_best: int = 1, save_trial_latest: int = 1, smaller_is_better: bool = True,
                          protected: Collection[str] = ()) -> set[str]:
    """The uuids of ``checkpoints`` that the policy does not keep (never one in ``protected``)."""
    ckpts = list(checkpoints)
    keep = checkpoints_to_keep(ckpts, save_experiment_best=save_experiment_best, save_trial_best=save_trial_best,
                               save_trial_latest=save_trial_latest, smaller_is_better=smaller_is_better,
                               protected=protected)
    return {c.uuid for c in ckpts} - keep
