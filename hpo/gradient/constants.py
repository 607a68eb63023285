"""Gradient's constants (``gradient.constants``), with the numbering of Gradient's documented SDK (CREATED=1,
PENDING=10)."""
from __future__ import annotations

__all__ = ["ExperimentState", "ExperimentType", "MULTI_NODE_EXPERIMENT_TYPES_MAP"]


class ExperimentState:
    """An experiment's state.  hpo reports CREATED (recorded, not started), PENDING (its run waits for a slot),
    RUNNING, and once the experiment has ended: STOPPED (success), FAILED (the command failed), CANCELLED
    (stopped by the user) or ERROR (hpo could not run it).  The network and provisioning states are Gradient's
    own and never reported."""

    CREATED = 1
    PROVISIONED = 2
    NETWORK_SETUP = 3
    RUNNING = 4
    STOPPED = 5
    ERROR = 6
    FAILED = 7
    CANCELLED = 8
    NETWORK_TEARDOWN = 9
    PENDING = 10
    PROVISIONING = 11
    NETWORK_SETTING_UP = 12
    NETWORK_TEARING_DOWN = 13

    _NAMES = {1: "created", 2: "provisioned", 3: "network setup", 4: "running", 5: "stopped", 6: "error",
              7: "failed", 8: "cancelled", 9: "network teardown", 10: "pending", 11: "provisioning",
              12: "network setting up", 13: "network tearing down"}

    @classmethod
    def get_state_str(cls, state_int: int) -> str:
        """The state's lower-case name; ``"undefined"`` for any other value."""
        return cls._NAMES.get(state_int, "undefined")  # type: ignore[call-overload]


class ExperimentType:
    """An experiment's kind (``experiment_type_id``)."""

    SINGLE_NODE = 1
    GRPC_MULTI_NODE = 2
    MPI_MULTI_NODE = 3
    HYPERPARAMETER_TUNING = 4

    _NAMES = {1: "single node", 2: "multi node (GRPC)", 3: "multi node (MPI)", 4: "hyperparameter tuning"}

    @classmethod
    def get_type_str(cls, type_int: int) -> str:
        """The type's name; ``"undefined"`` for any other value."""
        return cls._NAMES.get(type_int, "undefined")  # type: ignore[call-overload]


MULTI_NODE_EXPERIMENT_TYPES_MAP = {"GRPC": ExperimentType.GRPC_MULTI_NODE, "MPI": ExperimentType.MPI_MULTI_NODE}
