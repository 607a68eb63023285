"""Gradient's experiments client on hpo (``from hpo.gradient import ExperimentsClient, constants``).

A Gradient experiment is one run of a command, single- or multi-node, with no search: an hpo experiment with an
empty search space and one trial, run by hpo's engine in the background.  See :mod:`hpo.gradient.client`.
"""
from hpo.gradient import constants
from hpo.gradient.client import ExperimentsClient
from hpo.gradient.errors import GradientSdkError, InvalidParametersError, UnhonouredFieldWarning
from hpo.gradient.models import (BaseExperiment, LogRow, MpiMultiNodeExperiment, MultiNodeExperiment,
                                 SingleNodeExperiment)

__all__ = ["ExperimentsClient", "constants", "LogRow", "BaseExperiment", "SingleNodeExperiment",
           "MultiNodeExperiment", "MpiMultiNodeExperiment", "GradientSdkError", "InvalidParametersError",
           "UnhonouredFieldWarning"]
