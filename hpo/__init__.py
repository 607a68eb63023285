"""hpo: hyperparameter optimisation with NNI's Python API.

In a trial::

    import hpo
    params = hpo.get_next_parameter()
    hpo.report_intermediate_result(acc)
    hpo.report_final_result(acc)

Importing ``hpo`` is cheap: the trial API is stdlib-only, and :class:`Experiment` (which
pulls in the engine) is imported on first use.
"""
from hpo.trial import (
    get_current_parameter,
    get_experiment_id,
    get_next_parameter,
    get_sequence_id,
    get_trial_id,
    report_final_result,
    report_intermediate_result,
)

__version__ = "0.1.0"
__all__ = ["Experiment", "ExperimentConfig", "get_next_parameter", "get_current_parameter",
           "report_intermediate_result", "report_final_result", "get_experiment_id", "get_trial_id",
           "get_sequence_id", "checkpoint_path", "report_checkpoint", "restore_checkpoint", "log_outputs", "log_metrics"]


def __getattr__(name: str):  # lazy: keep the trial's import path light
    if name == "Experiment":
        from hpo.experiment import Experiment
        return Experiment
    if name in ("checkpoint_path", "report_checkpoint", "restore_checkpoint"):
        from hpo import trial_checkpoint
        return getattr(trial_checkpoint, name)
    if name in ("log_outputs", "log_metrics"):
        from hpo import trial_outputs
        return getattr(trial_outputs, name)
    if name == "ExperimentConfig":
        from hpo.config import ExperimentConfig
        return ExperimentConfig
    raise AttributeError(f"module 'hpo' has no attribute {name!r}")
