"""The tuner contract (NNI-compatible): how the engine asks for parameters and reports results.

The engine calls, from one thread at a time:

* :meth:`Tuner.update_search_space` once before the first suggestion (and again when the user
  changes the space);
* :meth:`Tuner.generate_parameters` for each new trial; it returns a dict that lies in the
  space, raises :class:`NoMoreTrials` when nothing is left (the experiment then ends once the
  running trials finish), or :class:`TryLater` when it must wait for more results;
* :meth:`Tuner.receive_trial_result` with the trial's final *scalar* value (the number, or the
  ``"default"`` entry of a dict result), or the result as reported when ``receives_reported_value``;
* :meth:`Tuner.trial_end` when a trial ends, successfully or not;
* :meth:`Tuner.import_data` with earlier results, for warm start and resume;
* :meth:`Tuner.continues_from` right after each ``generate_parameters``: which earlier trial the new one
  continues (its latest checkpoint becomes the new trial's ``hpo.restore_checkpoint()``), or None (the default:
  every trial starts fresh).  Multi-fidelity tuners (Hyperband, BOHB) use it so that a configuration promoted to
  a larger resource trains only the additional epochs.
"""
from __future__ import annotations

import functools
import sys
from abc import ABC, abstractmethod
from typing import Any, Iterable, Mapping

from hpo.search_space import SearchSpace, parse_search_space

__all__ = ["Tuner", "NoMoreTrials", "TryLater", "OPTIMIZE_MODES"]

OPTIMIZE_MODES = ("maximize", "minimize")


class NoMoreTrials(Exception):
    """The tuner has nothing left to suggest (for example an exhausted grid).

    Where NNI is loaded, what is raised is also an ``nni.NoMoreTrialError``, so that code written for NNI (its
    dispatcher, a harness) that catches NNI's error catches hpo's tuners' too.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> "NoMoreTrials":
        nni_error = getattr(sys.modules.get("nni"), "NoMoreTrialError", None)
        if cls is NoMoreTrials and isinstance(nni_error, type) and issubclass(nni_error, Exception):
            cls = _speaking_nni(nni_error)
        return super().__new__(cls, *args, **kwargs)


@functools.lru_cache(maxsize=None)
def _speaking_nni(nni_error: type) -> type:
    """hpo's NoMoreTrials that is NNI's ``NoMoreTrialError`` too (with NNI's ``errorinfo``)."""

    class Both(NoMoreTrials, nni_error):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any) -> None:
            Exception.__init__(self, *args)
            self.errorinfo = str(args[0]) if args else "Search space fully explored"

        __str__ = Exception.__str__

    Both.__name__ = Both.__qualname__ = "NoMoreTrials"
    return Both


class TryLater(Exception):
    """The tuner cannot suggest now; the engine asks again after the next trial ends."""


class Tuner(ABC):
    """Base class of every tuner.

    Args:
        optimize_mode: ``"maximize"`` or ``"minimize"`` the reported metric.
        seed: seed of the tuner's random generator; the same seed and the same results give the
            same suggestions.
    """

    receives_reported_value = False  # True: receive_trial_result gets the result as reported (NNI's tuners)
    # True: every method is a quick computation that any thread may call; the engine then calls it on its own event
    # loop while its calls take under 2 ms (instead of a hop to the tuner's thread); False (wrappers, user tuners):
    # always on the tuner's thread
    loop_safe = False

    def __init__(self, optimize_mode: str = "maximize", seed: int | None = None) -> None:
        mode = str(optimize_mode).lower()
        if mode not in OPTIMIZE_MODES:
            raise ValueError(f"optimize_mode: got {optimize_mode!r}, expected 'maximize' or 'minimize'")
        self.optimize_mode = mode
        self.seed = seed
        self.space: SearchSpace | None = None

    def class_args(self) -> dict[str, Any]:
        """Constructor arguments that recreate this tuner (stored so a resumed experiment can)."""
        return {"optimize_mode": self.optimize_mode, "seed": self.seed}

    @property
    def maximize(self) -> bool:
        return self.optimize_mode == "maximize"

    def update_search_space(self, search_space: Mapping[str, Any] | SearchSpace) -> None:
        """Set (or replace) the space to search; raises SearchSpaceError if invalid."""
        self.space = parse_search_space(search_space)

    @abstractmethod
    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        """Return the parameters of trial ``parameter_id``; may raise NoMoreTrials or TryLater."""

    def receive_trial_result(self, parameter_id: int, parameters: Mapping[str, Any], value: float,
                             **kwargs: Any) -> None:
        """Record the final scalar ``value`` of a trial the tuner suggested (or that was imported)."""

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        """Called once per trial when it ends, whether or not it reported a result."""

    def continues_from(self, parameter_id: int) -> int | None:
        """The parameter_id of the earlier trial that trial ``parameter_id`` (just suggested) continues, or None.

        The engine records the link before the trial runs and points the trial's ``hpo.restore_checkpoint()`` at
        that trial's latest completed checkpoint (None when it has none: the trial starts fresh).  The trial still
        gets its own parameters; reading where the checkpoint stopped (its step) is the trial's job.  The id must
        be one the engine gave (a suggested trial's, or an imported record's ``parameter_id``); anything else ends
        the experiment with an error.  Default: None (no continuation)."""
        return None

    def import_data(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Feed earlier trials: records of ``{"parameter": dict, "value": number or None}``; on resume each record
        also has the trial's ``parameter_id`` (a tuner may ignore it; warm-start records have none).

        A None value is a trial that ran but gave no usable result (failed, cancelled); the base
        class skips it, tuners that must not repeat points (grid) record it as tried.
        """
        for i, record in enumerate(records):
            if record.get("value") is not None:
                self.receive_trial_result(-1 - i, record["parameter"], float(record["value"]), imported=True)
