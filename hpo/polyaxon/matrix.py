"""Polyaxon's matrix kinds (``V1RandomSearch`` ... ``V1Mapping``) and early-stopping policies, as models."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from hpo.polyaxon.base import V1Model
from hpo.polyaxon.errors import PolyaxonError
from hpo.polyaxon.hp import V1HpParam

__all__ = ["V1OptimizationMetric", "V1OptimizationResource", "V1MedianStoppingPolicy", "V1TruncationStoppingPolicy",
           "V1DiffStoppingPolicy", "V1MetricEarlyStopping", "V1FailureEarlyStopping", "V1RandomSearch",
           "V1GridSearch", "V1Hyperband", "V1Bayes", "V1Hyperopt", "V1Iterative", "V1Mapping", "V1Tuner",
           "V1GaussianProcessConfig", "V1UtilityFunctionConfig", "V1Matrix", "MATRIX_CLASSES"]

_Params = dict[str, V1HpParam]  # type: ignore[valid-type]


class V1OptimizationMetric(V1Model):
    name: str
    optimization: Literal["maximize", "minimize"] = "maximize"


class V1OptimizationResource(V1Model):
    name: str
    type: Literal["int", "float"] = "int"


class V1MedianStoppingPolicy(V1Model):
    kind: Literal["median"] = "median"
    evaluation_interval: int | None = None
    min_interval: int | None = None
    min_samples: int | None = None


class V1TruncationStoppingPolicy(V1Model):
    kind: Literal["truncation"] = "truncation"
    percent: float
    evaluation_interval: int | None = None
    min_interval: int | None = None
    min_samples: int | None = None
    include_succeeded: bool | None = None


class V1DiffStoppingPolicy(V1Model):
    kind: Literal["diff"] = "diff"
    percent: float
    evaluation_interval: int | None = None
    min_interval: int | None = None
    min_samples: int | None = None


_Policy = Annotated[Union[V1MedianStoppingPolicy, V1TruncationStoppingPolicy, V1DiffStoppingPolicy],
                    Field(discriminator="kind")]


class V1MetricEarlyStopping(V1Model):
    """Without a policy: once a run's ``metric`` meets ``value`` the experiment ends (DONE).  With a policy
    only the runs it judges are stopped."""

    kind: Literal["metric_early_stopping"] = "metric_early_stopping"
    metric: str
    value: float | None = None
    optimization: Literal["maximize", "minimize"] = "maximize"
    policy: _Policy | None = None

    @model_validator(mode="after")
    def _value_or_policy(self) -> V1MetricEarlyStopping:
        if self.value is None and self.policy is None:
            raise PolyaxonError(f"metric_early_stopping on {self.metric!r}: needs a value or a policy")
        return self


class V1FailureEarlyStopping(V1Model):
    kind: Literal["failure_early_stopping"] = "failure_early_stopping"
    percent: float = Field(gt=0, le=100)


_EarlyStopping = list[Annotated[Union[V1MetricEarlyStopping, V1FailureEarlyStopping], Field(discriminator="kind")]]


class V1Tuner(V1Model):
    """``hubRef`` names the tuner: in hpo a registered tuner name or a ``module.Class``."""

    hub_ref: str
    presets: list[str] | None = None
    queue: str | None = None
    namespace: str | None = None
    params: dict[str, Any] | None = None


class _Matrix(V1Model):
    concurrency: int | None = Field(None, ge=1)
    early_stopping: _EarlyStopping | None = None

    @field_validator("early_stopping", mode="before")
    @classmethod
    def _kinds(cls, rules: Any) -> Any:  # Polyaxon files may leave out kind for a metric rule
        if isinstance(rules, list):
            return [{"kind": "metric_early_stopping", **r} if isinstance(r, dict) and "kind" not in r else r
                    for r in rules]
        return rules


class V1RandomSearch(_Matrix):
    kind: Literal["random"] = "random"
    params: _Params
    num_runs: int = Field(ge=1)
    seed: int | None = None


class V1GridSearch(_Matrix):
    kind: Literal["grid"] = "grid"
    params: _Params
    num_runs: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _no_distributions(self) -> V1GridSearch:
        for name, hp in self.params.items():
            if hp.is_distribution:
                raise PolyaxonError(f"params.{name}: grid search takes no distributions, got kind {hp.kind!r}; "
                                    "use choice, range, linspace, logspace or geomspace")
        return self


class V1Hyperband(_Matrix):
    kind: Literal["hyperband"] = "hyperband"
    params: _Params
    max_iterations: int = Field(ge=1)
    eta: float = Field(3, gt=1)
    resource: V1OptimizationResource
    metric: V1OptimizationMetric
    resume: bool | None = None
    seed: int | None = None
    tuner: V1Tuner | None = None


class V1GaussianProcessConfig(V1Model):
    kernel: Literal["rbf", "matern"] = "matern"
    length_scale: float = Field(1.0, gt=0)
    nu: float = Field(1.5, gt=0)
    num_restarts_optimizer: int = Field(0, ge=0)


class V1UtilityFunctionConfig(V1Model):
    acquisition_function: Literal["ucb", "ei", "poi"] = "ucb"
    gaussian_process: V1GaussianProcessConfig | None = None
    kappa: float | None = None
    eps: float | None = None
    num_warmup: int | None = None
    num_iterations: int | None = None


class V1Bayes(_Matrix):
    kind: Literal["bayes"] = "bayes"
    params: _Params
    num_initial_runs: int = Field(ge=1)
    max_iterations: int = Field(ge=1)
    metric: V1OptimizationMetric
    utility_function: V1UtilityFunctionConfig | None = None
    seed: int | None = None
    tuner: V1Tuner | None = None


class V1Hyperopt(_Matrix):
    kind: Literal["hyperopt"] = "hyperopt"
    params: _Params
    metric: V1OptimizationMetric
    algorithm: Literal["tpe", "rand", "anneal"] = "tpe"
    max_iterations: int | None = Field(None, ge=1)
    num_runs: int | None = Field(None, ge=1)
    seed: int | None = None
    tuner: V1Tuner | None = None

    @model_validator(mode="after")
    def _budget(self) -> V1Hyperopt:
        if self.num_runs is None and self.max_iterations is None:
            raise PolyaxonError("hyperopt: needs numRuns or maxIterations (how many runs to make)")
        return self


class V1Iterative(_Matrix):
    kind: Literal["iterative"] = "iterative"
    params: _Params | None = None
    max_iterations: int = Field(ge=1)
    seed: int | None = None
    tuner: V1Tuner | None = None
    metric: V1OptimizationMetric | None = None


class V1Mapping(_Matrix):
    kind: Literal["mapping"] = "mapping"
    values: list[dict[str, Any]] = Field(min_length=1)


MATRIX_CLASSES = {c.model_fields["kind"].default: c for c in (
    V1RandomSearch, V1GridSearch, V1Hyperband, V1Bayes, V1Hyperopt, V1Iterative, V1Mapping)}
V1Matrix = Annotated[Union[tuple(MATRIX_CLASSES.values())], Field(discriminator="kind")]  # type: ignore[valid-type]
