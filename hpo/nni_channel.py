"""NNI 3.0's trial command channel, spoken through hpo's trial API.

A trial that imports the real ``nni`` finds ``NNI_TRIAL_COMMAND_CHANNEL=import://hpo.nni_channel.HpoTrialCommandChannel``
in its environment, and NNI's runtime loads this class: ``nni.get_next_parameter()`` gets the parameters hpo
chose, and ``nni.report_*_result()`` reach the engine exactly like ``hpo.report_*_result()``.  Imported only by
NNI itself (it subclasses NNI's channel class), inside the trial.
"""
from __future__ import annotations

from typing import Any

from nni.runtime.trial_command_channel.base import TrialCommandChannel

from hpo import trial

__all__ = ["HpoTrialCommandChannel"]


class HpoTrialCommandChannel(TrialCommandChannel):
    """Parameters from ``HPO_PARAMETERS_FILE`` / ``HPO_PARAMETERS``; metrics over hpo's report channel."""

    def receive_parameter(self) -> dict[str, Any] | None:
        """NNI's parameter record for this trial (the same one on every call)."""
        params = trial.get_next_parameter()
        return {"parameter_id": trial.get_sequence_id(), "parameter_source": "algorithm",
                "parameters": {} if params is None else params, "parameter_index": 0}

    def send_metric(self, type: str, parameter_id: int | None, trial_job_id: str,  # noqa: A002 (NNI's name)
                    sequence: int, value: Any) -> None:
        """Report ``value``: ``'FINAL'`` as the final result, ``'PERIODICAL'`` as an intermediate one."""
        if type == "FINAL":
            trial.report_final_result(value)
        else:
            trial.report_intermediate_result(value)
