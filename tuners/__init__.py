"""Tuners: the base class, the registry, and the built-in algorithms."""
from tuners.base import NoMoreTrials, Tuner, TryLater
from tuners.registry import create_tuner, register_tuner, tuner_class
from tuners.random_tuner import RandomTuner
from tuners.grid import GridTuner

__all__ = ["Tuner", "NoMoreTrials", "TryLater", "RandomTuner", "GridTuner",
           "create_tuner", "register_tuner", "tuner_class"]
