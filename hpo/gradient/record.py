"""What the Gradient client keeps beside an experiment's store, and the model it shows for it.

``gradient.json`` in the experiment's folder holds the Gradient fields as given (passwords hidden): written once,
atomically, by ``create_*`` before the experiment's engine ever runs (the store stays the engine's alone).  Its
presence is what makes an hpo experiment a Gradient one.  State and times are read from the store.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from hpo.gradient.models import MODELS, BaseExperiment
from hpo.gradient.state import gradient_state
from hpo.storage import EXPERIMENT_END_STATES, ExperimentStore, engine_running

__all__ = ["RECORD_FILE", "write_record", "read_record", "experiment_model", "is_live"]

RECORD_FILE = "gradient.json"


def write_record(directory: Path, record: dict[str, Any]) -> None:
    """Write ``record`` to ``directory``'s gradient.json (whole or not at all)."""
    path = Path(directory) / RECORD_FILE
    tmp = path.with_name(f".{RECORD_FILE}.tmp")
    tmp.write_text(json.dumps(record, default=str))
    os.replace(tmp, path)


def read_record(directory: str | Path) -> dict[str, Any] | None:
    """The Gradient record of the experiment in ``directory``; None if it has none (an hpo search) or is gone."""
    try:
        record = json.loads((Path(directory) / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("experiment_type_id") in MODELS else None


def is_live(directory: Path, info: dict[str, Any]) -> bool:
    """Whether the experiment's engine runs (it has not ended and holds its writer lock)."""
    return info["status"] not in EXPERIMENT_END_STATES and engine_running(directory, info.get("pid"))


def experiment_model(experiment_id: str, directory: Path, record: dict[str, Any],
                     store: ExperimentStore) -> BaseExperiment:
    """The model ``get`` returns: the recorded fields, with id, state and times from the store."""
    info = store.experiment()
    trials = store.trials(order_by="seq", descending=True, limit=1)
    state = gradient_state(info["status"], is_live(directory, info), trials[0] if trials else None)
    times = [info[k] for k in ("created_at", "started_at", "ended_at") if info[k]]
    model = MODELS[record["experiment_type_id"]]
    known = {k: v for k, v in record.items() if k in model.__dataclass_fields__}
    return model(**known, id=experiment_id, state=state, dt_created=_time(info["created_at"]),
                 dt_modified=_time(max(times)), dt_started=_time(info["started_at"]),
                 dt_stopped=_time(info["ended_at"]), dt_deleted=None)


def _time(ts: float | None) -> dt.datetime | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)
