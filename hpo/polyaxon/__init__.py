"""Polyaxon v1 on hpo: typed components, operations, matrices, ``RunClient``.

Importing this package is cheap (the trial-side launcher uses it): the models load on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "hpo.polyaxon.io": ("V1IO",),
    "hpo.polyaxon.component": ("V1Component", "V1Job", "V1Container", "V1Environment", "V1Init", "V1EnvVar",
                               "V1Termination"),
    "hpo.polyaxon.operation": ("V1Operation", "V1Param"),
    "hpo.polyaxon.matrix": ("V1RandomSearch", "V1GridSearch", "V1Hyperband", "V1Bayes", "V1Hyperopt", "V1Iterative",
                            "V1Mapping", "V1Tuner", "V1OptimizationMetric", "V1OptimizationResource",
                            "V1MetricEarlyStopping", "V1FailureEarlyStopping", "V1MedianStoppingPolicy",
                            "V1TruncationStoppingPolicy", "V1DiffStoppingPolicy", "V1UtilityFunctionConfig",
                            "V1GaussianProcessConfig"),
    "hpo.polyaxon.hp": ("V1HpChoice", "V1HpPChoice", "V1HpRange", "V1HpDateRange", "V1HpDateTimeRange",
                        "V1HpLinSpace", "V1HpLogSpace", "V1HpGeomSpace", "V1HpUniform", "V1HpQUniform",
                        "V1HpLogUniform", "V1HpQLogUniform", "V1HpNormal", "V1HpQNormal", "V1HpLogNormal",
                        "V1HpQLogNormal"),
    "hpo.polyaxon.client": ("RunClient",),
    "hpo.polyaxon.errors": ("PolyaxonError",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'hpo.polyaxon' has no attribute {name!r}")
