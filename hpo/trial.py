"""The trial API: what a trial process calls to get its parameters and report metrics.

Stdlib only: importing it must stay cheap (no numpy, scipy, aiohttp or pydantic).

A trial learns everything from environment variables set by its training service:

``HPO_EXPERIMENT_ID``, ``HPO_TRIAL_ID``, ``HPO_SEQUENCE_ID``, ``HPO_TRIAL_DIR``,
``HPO_PARAMETERS_FILE`` (JSON of the trial's parameters) and the report channel, one of
``HPO_REPORT_FD`` (a pipe inherited from the engine) or ``HPO_REPORT_FILE`` (a file the training
service follows).  Reports are JSON lines ``{"type": "intermediate"|"final", "value": ...}``.

A trial that cannot use this module reports by printing a line on stdout::

    HPO_INTERMEDIATE_RESULT=0.81
    HPO_FINAL_RESULT=0.93            # or a JSON object with a numeric "default" key

Outside an experiment (standalone) ``get_next_parameter`` returns None, the ids are
``'STANDALONE'`` and reports are written to the ``hpo`` logger.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

__all__ = ["get_next_parameter", "get_current_parameter", "report_intermediate_result", "report_final_result",
           "get_experiment_id", "get_trial_id", "get_sequence_id", "validate_metric", "parse_stdout_report",
           "parse_channel_report", "validate_checkpoint",
           "STDOUT_FINAL", "STDOUT_INTERMEDIATE", "STDOUT_CHECKPOINT"]

STDOUT_FINAL = "HPO_FINAL_RESULT="
STDOUT_INTERMEDIATE = "HPO_INTERMEDIATE_RESULT="
STDOUT_CHECKPOINT = "HPO_CHECKPOINT="
MAX_DEPTH = 32  # nesting levels a result may have (a dict result's values may be lists and dicts)
_FLOAT_MAX = int(sys.float_info.max)
_params: dict[str, Any] | None = None
_params_loaded = False
_final_reported = False


def _in_experiment() -> bool:
    return "HPO_TRIAL_ID" in os.environ


def get_experiment_id() -> str:
    """Id of the experiment this trial belongs to, or ``'STANDALONE'``."""
    return os.environ.get("HPO_EXPERIMENT_ID", "STANDALONE")


def get_trial_id() -> str:
    """Id of this trial, or ``'STANDALONE'``."""
    return os.environ.get("HPO_TRIAL_ID", "STANDALONE")


def get_sequence_id() -> int:
    """Sequence number of this trial in its experiment (1, 2, ...), or 0 when standalone."""
    return int(os.environ.get("HPO_SEQUENCE_ID", "0"))


def get_next_parameter() -> dict[str, Any] | None:
    """The parameters chosen for this trial (a dict), or None outside an experiment."""
    global _params, _params_loaded
    if not _params_loaded:
        path = os.environ.get("HPO_PARAMETERS_FILE")
        if path:
            with open(path, encoding="utf-8") as fh:
                _params = json.load(fh)
        elif "HPO_PARAMETERS" in os.environ:
            _params = json.loads(os.environ["HPO_PARAMETERS"])
        _params_loaded = True
    return _params


def get_current_parameter(tag: str | None = None) -> Any:
    """The current parameters, or one of them by name (``tag``)."""
    params = get_next_parameter()
    if tag is None or params is None:
        return params
    return params[tag]


def validate_metric(metric: Any, what: str = "metric") -> Any:
    """Return ``metric`` if it is a number (an integer one within float range) or a dict with such a
    ``"default"``, nested at most ``MAX_DEPTH`` levels deep; else raise ValueError."""
    def is_number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if hasattr(metric, "item") and not isinstance(metric, dict):  # numpy / torch scalars
        try:
            metric = metric.item()
        except Exception:
            pass
    if is_number(metric):
        if isinstance(metric, int) and abs(metric) > _FLOAT_MAX:
            raise ValueError(f"{what}: a {metric.bit_length()}-bit integer is too large to be a float")
        return metric
    if isinstance(metric, dict):
        if "default" not in metric:
            raise ValueError(f"{what}: a dict result needs a 'default' key holding the number to tune on; "
                             f"got keys {sorted(map(str, metric))}")
        default = validate_metric(metric["default"], f"{what}['default']")
        if _depth(metric) > MAX_DEPTH:
            raise ValueError(f"{what}: nested more than {MAX_DEPTH} levels deep")
        return {**metric, "default": default}
    try:
        shown = repr(metric)
    except RecursionError:
        shown = "..."
    shown = shown if len(shown) <= 100 else shown[:100] + "..."
    raise ValueError(f"{what}: expected a number or a dict with a numeric 'default' key, "
                     f"got {shown} ({type(metric).__name__})")


def _depth(value: Any) -> int:
    """How deeply lists, tuples and dicts nest in ``value`` (0 for a scalar); iterative, so never a RecursionError."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, (list, tuple, dict)):
            deepest = max(deepest, depth)
            todo.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def scalar(metric: Any) -> float | None:
    """The number tuned on, or None if it is not finite."""
    value = metric["default"] if isinstance(metric, dict) else metric
    value = float(value)
    return value if math.isfinite(value) else None


def _send(kind: str, metric: Any) -> None:
    line = json.dumps({"type": kind, "value": metric}, allow_nan=True, default=float) + "\n"
    fd_var = os.environ.get("HPO_REPORT_FD")
    if fd_var is not None:
        data = line.encode()
        fd = int(fd_var)
        while data:
            data = data[os.write(fd, data):]
        return
    path = os.environ.get("HPO_REPORT_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line)
        return
    if _in_experiment():
        prefix = {"final": STDOUT_FINAL, "checkpoint": STDOUT_CHECKPOINT}.get(kind, STDOUT_INTERMEDIATE)
        print(prefix + json.dumps(metric, default=float), flush=True)
    else:  # standalone: logging is imported only here, keeping the trial's import path light
        import logging
        logging.getLogger("hpo").info("%s result: %r", kind, metric)


def report_intermediate_result(metric: Any) -> None:
    """Report a per-epoch (or per-step) metric; used for curves and early stopping."""
    _send("intermediate", validate_metric(metric, "report_intermediate_result"))


def report_final_result(metric: Any) -> None:
    """Report the trial's final metric: a number, or a dict whose ``"default"`` is the number tuned on."""
    global _final_reported
    _send("final", validate_metric(metric, "report_final_result"))
    _final_reported = True


def parse_channel_report(line: bytes) -> tuple[str, Any]:
    """Parse one JSON line of the report channel; raises ValueError naming what is wrong."""
    try:
        msg = json.loads(line)
        kind = msg["type"]
        if kind == "checkpoint":
            return kind, validate_checkpoint(msg["value"])
        if kind not in ("intermediate", "final"):
            raise ValueError(f"unknown report type {kind!r}")
        return kind, validate_metric(msg["value"], f"{kind} result")
    except RecursionError:
        raise ValueError("bad report from trial: JSON nested too deeply") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"bad report from trial: {str(exc)[:200]}") from None


def parse_stdout_report(line: str | bytes) -> tuple[str, Any] | None:
    """Parse a printed ``HPO_FINAL_RESULT=...`` / ``HPO_INTERMEDIATE_RESULT=...`` line (None for any other).

    Raw bytes from a trial's stdout are accepted: other lines are skipped without being decoded.
    """
    if isinstance(line, bytes):
        if not line.startswith(b"HPO_"):
            return None
        line = line.decode("utf-8", "replace").strip()
    for prefix, kind in ((STDOUT_FINAL, "final"), (STDOUT_INTERMEDIATE, "intermediate"),
                         (STDOUT_CHECKPOINT, "checkpoint")):
        if line.startswith(prefix):
            text = line[len(prefix):].strip()
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                shown = text if len(text) <= 100 else text[:100] + "..."
                raise ValueError(f"{prefix[:-1]}: expected a number or a JSON object, got {shown!r}") from None
            except ValueError as exc:  # an integer of over 4300 digits
                raise ValueError(f"{prefix[:-1]}: {str(exc)[:200]}") from None
            except RecursionError:
                raise ValueError(f"{prefix[:-1]}: JSON nested too deeply") from None
            if kind == "checkpoint":
                return kind, validate_checkpoint(value)
            return kind, validate_metric(value, prefix[:-1])
    return None


def validate_checkpoint(report: Any) -> dict[str, Any]:
    """A checkpoint report ``{"uuid", "metadata", "resources"[, "error"]}`` as the trial API sends it; ValueError otherwise
    (the uuid names a folder: anything but a canonical uuid is refused)."""
    if not isinstance(report, dict) or not isinstance(report.get("uuid"), str):
        raise ValueError("bad checkpoint report: expected an object with a 'uuid'")
    uid = report["uuid"]
    if len(uid) != 36 or uid.lower() != uid or any(c not in "0123456789abcdef-" for c in uid) or \
            [len(part) for part in uid.split("-")] != [8, 4, 4, 4, 12]:
        raise ValueError(f"bad checkpoint report: {uid[:60]!r} is not a uuid")
    metadata, resources = report.get("metadata") or {}, report.get("resources") or {}
    if not isinstance(metadata, dict) or not isinstance(resources, dict) or \
            not all(isinstance(k, str) and isinstance(v, int) for k, v in resources.items()):
        raise ValueError("bad checkpoint report: metadata must be an object, resources an object of sizes")
    out = {"uuid": uid, "metadata": metadata, "resources": resources}
    if report.get("error") is not None:  # the trial could not write it (a full disk): recorded as ERROR
        out["error"] = " ".join(str(report["error"]).split())[:500]
    return out
