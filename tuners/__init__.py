"""Tuners and assessors: the base classes, the registry, and the built-in algorithms."""
from tuners.base import NoMoreTrials, Tuner, TryLater
from tuners.registry import create_tuner, register_tuner, tuner_class
from tuners.random_tuner import RandomTuner
from tuners.grid import GridTuner
from tuners.logspace import LogspaceTuner
from tuners.hyperopt_tuner import AnnealTuner, HyperoptTuner  # hyperopt itself is imported on first use
from tuners.optuna_tuner import OptunaTuner  # optuna itself is imported on first use
from tuners.tpe import TpeTuner
from tuners.gp import GpTuner
from tuners.assessor import Assessor, AssessResult
from tuners.medianstop import MedianstopAssessor
from tuners.asha import AshaAssessor
from tuners.evidence import EvidenceStopAssessor

__all__ = ["Tuner", "NoMoreTrials", "TryLater", "RandomTuner", "GridTuner", "TpeTuner", "GpTuner",
           "LogspaceTuner", "HyperoptTuner", "AnnealTuner", "OptunaTuner",
           "create_tuner", "register_tuner", "tuner_class", "Assessor", "AssessResult", "MedianstopAssessor",
           "AshaAssessor", "EvidenceStopAssessor"]
