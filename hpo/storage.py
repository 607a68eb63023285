"""The experiment store: one SQLite file (WAL) per experiment.

The engine is the only writer (:class:`ExperimentStore` opened with ``readonly=False``); every
write is committed before the engine acts on it, so a killed engine can be resumed from the
file.  Readers (dashboard, ``Experiment.connect``, the CLI) open their own read-only
connections and never block the writer.
"""
from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

__all__ = ["ExperimentStore", "TrialRecord", "FINISHED_STATES", "ACTIVE_STATES", "TRIAL_STATES"]

TRIAL_STATES = ("WAITING", "RUNNING", "SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED")
ACTIVE_STATES = ("WAITING", "RUNNING")
FINISHED_STATES = ("SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED")
DB_NAME = "experiment.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiment (
    id TEXT PRIMARY KEY,
    name TEXT,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    run_seconds REAL NOT NULL DEFAULT 0,
    pid INTEGER,
    host TEXT,
    port INTEGER
);
CREATE TABLE IF NOT EXISTS trials (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    parameters TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    exit_code INTEGER,
    message TEXT,
    final TEXT,
    final_value REAL,
    pid INTEGER,
    pgid INTEGER,
    host TEXT,
    gpus TEXT,
    rerun_of INTEGER,
    interrupted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS trials_status ON trials(status);
CREATE INDEX IF NOT EXISTS trials_final ON trials(final_value);
CREATE TABLE IF NOT EXISTS metrics (
    trial_seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    step INTEGER NOT NULL,
    value REAL,
    data TEXT,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_trial ON metrics(trial_seq, kind, step);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    trial_seq INTEGER,
    data TEXT
);
"""

_TRIAL_COLUMNS = ("seq", "id", "parameters", "status", "created_at", "started_at", "ended_at", "exit_code",
                  "message", "final", "final_value", "pid", "pgid", "host", "gpus", "rerun_of", "interrupted")


class TrialRecord(dict):
    """A trial row as a dict: ``parameters`` and ``final`` decoded from JSON."""

    @classmethod
    def from_row(cls, row: sqlite3.Row | tuple) -> "TrialRecord":
        rec = cls(zip(_TRIAL_COLUMNS, row))
        rec["parameters"] = json.loads(rec["parameters"])
        rec["final"] = json.loads(rec["final"]) if rec["final"] is not None else None
        rec["gpus"] = json.loads(rec["gpus"]) if rec["gpus"] else None
        return rec


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


class ExperimentStore:
    """Access to one experiment's SQLite file.

    Args:
        directory: the experiment's folder; the database is ``directory/experiment.db``.
        readonly: open a read-only connection (readers); the engine opens the only writer.
    """

    def __init__(self, directory: str | Path, readonly: bool = False) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        self.readonly = readonly
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"no experiment store at {self.path}")
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
                                         timeout=5.0, isolation_level=None)
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=5.0, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()  # a read-only store may be shared by reader threads

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "ExperimentStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- low level -----------------------------------------------------------------------------
    def _write(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Cursor:
        if self.readonly:
            raise PermissionError("this store was opened read-only")
        return self._conn.execute(sql, tuple(args))

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    # -- experiment ------------------------------------------------------------------------------
    def create_experiment(self, experiment_id: str, name: str | None, config: dict[str, Any]) -> None:
        self._write("INSERT INTO experiment (id, name, config, status, created_at) VALUES (?, ?, ?, ?, ?)",
                    (experiment_id, name, _dumps(config), "INITIALIZED", time.time()))

    def experiment(self) -> dict[str, Any]:
        rows = self._query("SELECT id, name, config, status, message, created_at, started_at, ended_at, "
                           "run_seconds, pid, host, port FROM experiment LIMIT 1")
        if not rows:
            raise LookupError(f"store {self.path} has no experiment")
        keys = ("id", "name", "config", "status", "message", "created_at", "started_at", "ended_at",
                "run_seconds", "pid", "host", "port")
        exp = dict(zip(keys, rows[0]))
        exp["config"] = json.loads(exp["config"])
        return exp

    def set_status(self, status: str, message: str | None = None) -> None:
        now = time.time()
        if status == "RUNNING":
            self._write("UPDATE experiment SET status=?, message=?, started_at=?, ended_at=NULL", (status, message, now))
        elif status in ("DONE", "STOPPED", "ERROR"):
            self._write("UPDATE experiment SET status=?, message=COALESCE(?, message), ended_at=?, "
                        "run_seconds=run_seconds + (? - COALESCE(started_at, ?)), pid=NULL, port=NULL",
                        (status, message, now, now, now))
        else:
            self._write("UPDATE experiment SET status=?, message=COALESCE(?, message)", (status, message))
        self.add_event("status", None, {"status": status, "message": message})

    def set_config(self, config: dict[str, Any]) -> None:
        self._write("UPDATE experiment SET config=?", (_dumps(config),))
        self.add_event("config", None, {})

    def set_runtime(self, pid: int | None, host: str | None, port: int | None) -> None:
        self._write("UPDATE experiment SET pid=?, host=?, port=?", (pid, host, port))

    def add_event(self, kind: str, trial_seq: int | None, data: dict[str, Any]) -> None:
        self._write("INSERT INTO events (ts, kind, trial_seq, data) VALUES (?, ?, ?, ?)",
                    (time.time(), kind, trial_seq, _dumps(data)))

    def events(self, since_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self._query("SELECT id, ts, kind, trial_seq, data FROM events WHERE id > ? ORDER BY id LIMIT ?",
                           (since_id, limit))
        return [{"id": r[0], "ts": r[1], "kind": r[2], "trial_seq": r[3], "data": json.loads(r[4] or "{}")}
                for r in rows]

    # -- trials --------------------------------------------------------------------------------
    def next_seq(self) -> int:
        return (self._query("SELECT COALESCE(MAX(seq), 0) FROM trials")[0][0]) + 1

    def add_trial(self, seq: int, trial_id: str, parameters: dict[str, Any], rerun_of: int | None = None) -> None:
        """Insert a WAITING trial; with ``rerun_of``, atomically mark that interrupted trial as re-queued."""
        self._conn.execute("BEGIN")
        try:
            self._write("INSERT INTO trials (seq, id, parameters, status, created_at, rerun_of) VALUES (?, ?, ?, ?, ?, ?)",
                        (seq, trial_id, _dumps(parameters), "WAITING", time.time(), rerun_of))
            if rerun_of is not None:
                self._write("UPDATE trials SET interrupted=2 WHERE seq=?", (rerun_of,))
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def trial_started(self, seq: int, pid: int | None, pgid: int | None, host: str | None = None,
                      gpus: list[int] | None = None) -> None:
        self._write("UPDATE trials SET status='RUNNING', started_at=?, pid=?, pgid=?, host=?, gpus=? WHERE seq=?",
                    (time.time(), pid, pgid, host, _dumps(gpus) if gpus is not None else None, seq))

    def trial_ended(self, seq: int, status: str, exit_code: int | None = None, message: str | None = None,
                    interrupted: bool = False) -> None:
        assert status in FINISHED_STATES, status
        self._write("UPDATE trials SET status=?, ended_at=?, exit_code=?, message=?, interrupted=? WHERE seq=?",
                    (status, time.time(), exit_code, message, 1 if interrupted else 0, seq))

    def counted_trials(self) -> int:
        """Trials that count against ``max_trial_number`` (interrupted ones are replaced by their re-run)."""
        return self._query("SELECT COUNT(*) FROM trials WHERE interrupted=0")[0][0]

    def add_metric(self, seq: int, kind: str, step: int, value: float | None, data: Any) -> None:
        """Record an intermediate (``kind='intermediate'``) or final result of trial ``seq``."""
        if kind == "final":
            self._conn.execute("BEGIN")
            try:
                self._write("INSERT INTO metrics (trial_seq, kind, step, value, data, ts) VALUES (?, ?, ?, ?, ?, ?)",
                            (seq, kind, step, value, _dumps(data), time.time()))
                self._write("UPDATE trials SET final=?, final_value=? WHERE seq=?", (_dumps(data), value, seq))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        else:
            self._write("INSERT INTO metrics (trial_seq, kind, step, value, data, ts) VALUES (?, ?, ?, ?, ?, ?)",
                        (seq, kind, step, value, _dumps(data), time.time()))

    def trials(self, status: str | Iterable[str] | None = None, limit: int | None = None, offset: int = 0,
               order_by: str = "seq", descending: bool = False) -> list[TrialRecord]:
        if order_by not in _TRIAL_COLUMNS:
            raise ValueError(f"cannot order trials by {order_by!r}; expected one of {', '.join(_TRIAL_COLUMNS)}")
        where, args = "", []
        if status is not None:
            states = [status] if isinstance(status, str) else list(status)
            where = f"WHERE status IN ({','.join('?' * len(states))})"
            args.extend(states)
        sql = f"SELECT {', '.join(_TRIAL_COLUMNS)} FROM trials {where} ORDER BY {order_by} {'DESC' if descending else 'ASC'}"
        if order_by != "seq":
            sql += ", seq"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [limit, offset]
        return [TrialRecord.from_row(r) for r in self._query(sql, args)]

    def trial(self, key: str | int) -> TrialRecord | None:
        column = "seq" if isinstance(key, int) else "id"
        rows = self._query(f"SELECT {', '.join(_TRIAL_COLUMNS)} FROM trials WHERE {column}=?", (key,))
        return TrialRecord.from_row(rows[0]) if rows else None

    def metrics(self, seq: int, kind: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT kind, step, value, data, ts FROM metrics WHERE trial_seq=?", [seq]
        if kind:
            sql += " AND kind=?"
            args.append(kind)
        rows = self._query(sql + " ORDER BY kind, step", args)
        return [{"kind": k, "step": s, "value": v, "data": json.loads(d), "ts": t} for k, s, v, d, t in rows]

    def status_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(TRIAL_STATES, 0)
        counts.update(dict(self._query("SELECT status, COUNT(*) FROM trials GROUP BY status")))
        return counts

    def best_trial(self, maximize: bool) -> TrialRecord | None:
        order = "DESC" if maximize else "ASC"
        rows = self._query(f"SELECT {', '.join(_TRIAL_COLUMNS)} FROM trials WHERE final_value IS NOT NULL "
                           f"ORDER BY final_value {order}, seq LIMIT 1")
        return TrialRecord.from_row(rows[0]) if rows else None

    def export_data(self) -> list[dict[str, Any]]:
        """Every trial with a final result: ``{trial_id, sequence_id, parameter, value, status}``."""
        rows = self._query("SELECT id, seq, parameters, final, final_value, status FROM trials "
                           "WHERE final IS NOT NULL ORDER BY seq")
        return [{"trial_id": i, "sequence_id": s, "parameter": json.loads(p), "value": json.loads(f),
                 "default": v if v is None or math.isfinite(v) else None, "status": st}
                for i, s, p, f, v, st in rows]
