"""The experiment store: one SQLite file (WAL) per experiment.

The engine is the only writer (:class:`ExperimentStore` opened with ``readonly=False``); every
write is committed before the engine acts on it, so a killed engine can be resumed from the
file.  Readers (dashboard, ``Experiment.connect``, the CLI) open their own read-only
connections and never block the writer.

Scale: counts by status are kept up to date incrementally (:class:`_Tally`), the best trial and the trials
without a result are index seeks, and every bulk read (``iter_trials``, ``iter_export``) pages by sequence
number (keyset), so that an experiment of 100,000 trials is as quick to run, resume and read as a small one,
and a reader never holds more than a page of trials.
"""
from __future__ import annotations

import errno
import fcntl
import itertools
import json
import math
import os
import sqlite3
import threading
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Iterable, Iterator, overload

__all__ = ["ExperimentStore", "ExportedData", "TrialRecord", "FINISHED_STATES", "ACTIVE_STATES", "TRIAL_STATES",
           "EXPERIMENT_END_STATES", "CREATED", "StoreError", "StoreWriteError", "StoreLocked", "engine_running", "maximizes"]

TRIAL_STATES = ("WAITING", "RUNNING", "SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED")
ACTIVE_STATES = ("WAITING", "RUNNING")
EXPERIMENT_END_STATES = ("DONE", "STOPPED", "ERROR")  # an experiment in one of these has ended
CREATED = "CREATED"  # recorded by Experiment.create(), never started: no engine, not crashed (a resume starts it)
FINISHED_STATES = ("SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED")
DB_NAME = "experiment.db"
LOCK_NAME = ".engine.lock"
RESERVE_NAME = ".space-reserve"
RESERVE_BYTES = 256 * 1024  # given back when the disk is full, so that the engine can record how it ended
_SQLITE_FULL = 13


class StoreError(RuntimeError):
    """The store cannot be read or written; the message is one line naming the file."""


class StoreWriteError(StoreError):
    """A write failed (disk full, I/O error): nothing of that write was committed."""


class StoreLocked(StoreError):
    """Another process holds the experiment (its engine runs): there is only ever one writer."""


def _lock_path(directory: Path) -> Path:
    return Path(directory) / LOCK_NAME


def engine_running(directory: str | Path, pid: int | None = None) -> bool:
    """Whether some process holds experiment ``directory`` for writing, i.e. its engine runs.

    The writer holds an exclusive ``flock`` on ``.engine.lock`` for as long as its store is open; the
    kernel drops it when that process exits, however it exits (kill -9 included): no pid files, no
    pid reuse.  ``pid``, the engine's recorded pid, covers the last moments of a dying engine (its
    threads still closing its files): if that process is already dead or a zombie, wait up to 3 s
    for the lock to go.
    """
    deadline = time.monotonic() + 3.0
    while _locked(Path(directory)):
        if pid is None or _pid_running(pid) or time.monotonic() > deadline:
            return True
        time.sleep(0.02)
    return False


def _pid_running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return not Path("/proc").is_dir()


def _locked(directory: Path) -> bool:
    try:
        fd = os.open(_lock_path(Path(directory)), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also releases our probe lock
    return False


def _acquire_writer_lock(directory: Path) -> int:
    """Take the experiment's writer lock (non-blocking); StoreLocked if another process holds it."""
    path = _lock_path(directory)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLocked(f"experiment folder {directory} is in use by another running engine; "
                          "stop that one first") from None
    return fd


def _describe_write_error(path: Path, exc: BaseException) -> str:
    code = getattr(exc, "sqlite_errorcode", None)
    if code == _SQLITE_FULL or getattr(exc, "errno", None) == errno.ENOSPC or "full" in str(exc).lower():
        return f"disk full writing {path}"
    return f"cannot write {path}: {exc}"

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
    elapsed_seconds REAL,
    resumed_at REAL,
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
    interrupted INTEGER NOT NULL DEFAULT 0,
    processes TEXT,
    continues INTEGER
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
CREATE TABLE IF NOT EXISTS checkpoints (
    uuid TEXT PRIMARY KEY,
    trial_seq INTEGER NOT NULL,
    steps_completed INTEGER NOT NULL,
    value REAL,
    metrics TEXT,
    metadata TEXT NOT NULL,
    resources TEXT NOT NULL,
    location TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT,
    report_time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS checkpoints_trial ON checkpoints(trial_seq, steps_completed);
CREATE TABLE IF NOT EXISTS process_metrics (
    trial_seq INTEGER NOT NULL,
    process TEXT NOT NULL,
    kind TEXT NOT NULL,
    step INTEGER NOT NULL,
    value REAL,
    data TEXT,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS process_metrics_trial ON process_metrics(trial_seq, process, kind, step);
"""
# Indexes a store gets from its engine (written before they existed, it gets them at its next resume): the
# best trial is a seek (trials_best), trials without a result a seek (trials_status_value), and counts by
# status a scan of a small covering index rather than of the table.
_INDEXES = """
CREATE INDEX IF NOT EXISTS trials_best ON trials(interrupted, final_value);
CREATE INDEX IF NOT EXISTS trials_status_value ON trials(status, final_value, interrupted);
"""
CHECKPOINT_STATES = ("COMPLETED", "ERROR", "DELETED")
_CHECKPOINT_COLUMNS = ("uuid", "trial_seq", "steps_completed", "value", "metrics", "metadata", "resources", "location",
                       "state", "message", "report_time")

_TRIAL_COLUMNS = ("seq", "id", "parameters", "status", "created_at", "started_at", "ended_at", "exit_code",
                  "message", "final", "final_value", "pid", "pgid", "host", "gpus", "rerun_of", "interrupted",
                  "processes", "continues")


class TrialRecord(dict):
    """A trial row as a dict: ``parameters`` and ``final`` decoded from JSON."""

    @classmethod
    def from_row(cls, row: sqlite3.Row | tuple) -> "TrialRecord":
        rec = cls(zip(_TRIAL_COLUMNS, row))
        rec["parameters"] = json.loads(rec["parameters"])
        rec["final"] = json.loads(rec["final"]) if rec["final"] is not None else None
        rec["gpus"] = json.loads(rec["gpus"]) if rec["gpus"] else None
        rec["processes"] = json.loads(rec["processes"]) if rec["processes"] else None
        return rec


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


def maximizes(config: dict[str, Any]) -> bool:
    """Whether an experiment's tuner maximizes its metric, from its config as stored."""
    args = (config.get("tuner") or {}).get("class_args") or {}
    return str(args.get("optimize_mode", "maximize")).lower() != "minimize"


def _event(kind: str, trial_seq: int | None, data: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """The statement recording an event (for :meth:`ExperimentStore._write` or a transaction)."""
    return ("INSERT INTO events (ts, kind, trial_seq, data) VALUES (?, ?, ?, ?)",
            (time.time(), kind, trial_seq, _dumps(data)))


def _event_dicts(rows: list[tuple]) -> list[dict[str, Any]]:
    return [{"id": r[0], "ts": r[1], "kind": r[2], "trial_seq": r[3], "data": json.loads(r[4] or "{}")} for r in rows]


class _Tally:
    """Trials counted by (status, interrupted, whether the final value is NULL), kept up to date from the rows
    that can have changed since the last look, not by counting the table again.

    Trials are only appended (the next sequence number is one past the highest), and a trial's row changes
    only while it is WAITING or RUNNING, plus one write outside that: the transaction that inserts a re-run
    also marks the trial it re-runs (``rerun_of``) as replaced (``interrupted=2``).  So a refresh re-reads the
    new trials, the active ones, and the ones a re-run names.  Finished trials whose ``interrupted`` is not 0
    (few) are remembered, so that a replaced trial's old key is known."""

    def __init__(self) -> None:
        self.version: Any = None
        self.last = 0                                       # highest sequence number counted
        self.counts: dict[tuple[str, int, bool], int] = {}
        self.known: dict[int, tuple[str, int, bool]] = {}   # active trials, and finished ones not interrupted=0

    def refresh(self, store: "ExperimentStore") -> None:
        # the writer's own commits are all the changes there are (one writer); a reader asks SQLite
        version = store._writes if not store.readonly else store._query("PRAGMA data_version")[0][0]
        if version == self.version:
            return
        with store._lock:
            conn = store._conn
            try:
                if store.readonly:
                    conn.execute("BEGIN")   # one snapshot for both queries
                try:
                    self._update(conn)
                finally:
                    if store.readonly:
                        conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise store._unreadable(exc) from None
        self.version = version

    def _load(self, conn: sqlite3.Connection) -> None:
        """The first look: counts by one GROUP BY (a covering index's scan where the store has it)."""
        self.last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM trials").fetchone()[0]
        self.counts = {(status, interrupted or 0, bool(no_value)): n for status, interrupted, no_value, n in conn.execute(
            "SELECT status, interrupted, final_value IS NULL, COUNT(*) FROM trials WHERE seq <= ? GROUP BY 1, 2, 3",
            (self.last,))}
        self.known = {seq: (status, interrupted or 0, bool(no_value)) for seq, status, interrupted, no_value in
                      conn.execute("SELECT seq, status, interrupted, final_value IS NULL FROM trials WHERE seq <= ? AND "
                                   "(status IN ('WAITING', 'RUNNING') OR interrupted > 0)", (self.last,))}

    def _update(self, conn: sqlite3.Connection) -> None:
        if self.version is None:
            self._load(conn)
            return
        columns = "seq, status, interrupted, final_value IS NULL, rerun_of"
        watch = [seq for seq, key in self.known.items() if key[0] in ACTIVE_STATES]
        # two indexed parts (an OR, or an ORDER BY, can make SQLite scan the table)
        rows = conn.execute(f"SELECT {columns} FROM trials WHERE seq > ? UNION ALL SELECT {columns} FROM trials "
                            "WHERE seq IN (SELECT value FROM json_each(?)) AND seq <= ?",
                            (self.last, json.dumps(watch), self.last)).fetchall()
        named = {r[4] for r in rows if r[4]} - {r[0] for r in rows}
        if named:
            rows += conn.execute(f"SELECT {columns} FROM trials WHERE seq IN (SELECT value FROM json_each(?))",
                                 (json.dumps(sorted(named)),)).fetchall()
        for seq, status, interrupted, no_value, _ in rows:
            key = (status, interrupted or 0, bool(no_value))
            if seq > self.last:
                old = None
            else:
                old = self.known.get(seq, (key[0], 0, key[2]) if key[0] not in ACTIVE_STATES else None)
            if old == key:
                continue
            if old is not None:
                self.counts[old] -= 1
            self.counts[key] = self.counts.get(key, 0) + 1
            if status in ACTIVE_STATES or key[1] != 0:
                self.known[seq] = key
            else:
                self.known.pop(seq, None)
        self.last = max([self.last] + [r[0] for r in rows])

    def status_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(TRIAL_STATES, 0)
        for (status, interrupted, _), n in self.counts.items():
            if interrupted != 2:
                counts[status] = counts.get(status, 0) + n
        return counts

    def counted(self) -> int:
        return sum(n for (_, interrupted, _), n in self.counts.items() if interrupted == 0)

    def without_result(self) -> int:
        return sum(n for (status, _, no_value), n in self.counts.items() if status == "SUCCEEDED" and no_value)


class ExperimentStore:
    """Access to one experiment's SQLite file.

    Args:
        directory: the experiment's folder; the database is ``directory/experiment.db``.
        readonly: open a read-only connection (readers); otherwise open the only writer, which
            holds the experiment's writer lock until :meth:`close` (:class:`StoreLocked` if another
            process holds it).

    Every failure to read the file raises :class:`StoreError` and every failed write
    :class:`StoreWriteError`, both with a one-line message naming the file.
    """

    def __init__(self, directory: str | Path, readonly: bool = False) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        self.readonly = readonly
        self._lock_fd: int | None = None
        self._lock = threading.Lock()  # a read-only store may be shared by reader threads
        self._tables: set[str] = set()  # tables newer than some stores, seen (a reader looks; once there, they stay)
        self._writes = 0  # the writer's own commits (its connection's data_version does not count them)
        self._tally = _Tally()  # counts by status, kept up to date incrementally (readers and the writer)
        # the writer's own counts (no other process writes): what next_seq and counted_trials would count
        self._max_seq: int | None = None
        self._counted: int | None = None
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"no experiment store at {self.path} (the folder was moved or deleted?)")
            try:
                self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
                                             timeout=5.0, isolation_level=None)
            except sqlite3.Error as exc:
                raise self._unreadable(exc) from None
            self._query("SELECT id FROM experiment LIMIT 1")  # a corrupt or foreign file fails here, in one line
            self._has_resumed_at = "resumed_at" in self._experiment_columns()
            present = {row[1] for row in self._query("PRAGMA table_info(trials)")}
            self._trial_columns = ", ".join(c if c in present else f"NULL AS {c}" for c in _TRIAL_COLUMNS)
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _acquire_writer_lock(self.directory)
            self._reserve_space()
        except OSError as exc:
            self.close()
            raise StoreWriteError(_describe_write_error(self.directory, exc)) from None
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=5.0, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            self._conn.executescript(_INDEXES)
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(experiment)")}
            for column in ("elapsed_seconds", "resumed_at"):  # a store written before these columns existed
                if column not in columns:
                    self._conn.execute(f"ALTER TABLE experiment ADD COLUMN {column} REAL")
            trial_columns = {row[1] for row in self._conn.execute("PRAGMA table_info(trials)")}
            for column, kind in (("processes", "TEXT"), ("continues", "INTEGER")):  # stores older than these
                if column not in trial_columns:
                    self._conn.execute(f"ALTER TABLE trials ADD COLUMN {column} {kind}")
            self._trial_columns = ", ".join(_TRIAL_COLUMNS)
            self._has_resumed_at = True
        except sqlite3.Error as exc:
            self.close()
            if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
                raise StoreWriteError(_describe_write_error(self.path, exc)) from None
            raise self._unreadable(exc) from None

    def _reserve_space(self) -> None:
        """Hold RESERVE_BYTES of real disk blocks in a file (see :meth:`release_reserve`)."""
        path = self.directory / RESERVE_NAME
        if path.exists() and path.stat().st_size >= RESERVE_BYTES:
            return
        with open(path, "wb") as fh:
            fh.write(b"\0" * RESERVE_BYTES)
            fh.flush()
            os.fsync(fh.fileno())

    def release_reserve(self) -> None:
        """Give back the reserved disk space: on a full disk, room for the last writes (how it ended)."""
        try:
            (self.directory / RESERVE_NAME).unlink()
        except OSError:
            pass

    def _unreadable(self, exc: BaseException) -> StoreError:
        return StoreError(f"cannot read the experiment store {self.path} ({exc}); it is damaged or not an hpo "
                          f"store: restore it from a backup, or delete the experiment folder {self.directory}")

    def close(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the writer lock
            self._lock_fd = None

    def __enter__(self) -> "ExperimentStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- low level -----------------------------------------------------------------------------
    def _write(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Cursor:
        if self.readonly:
            raise PermissionError("this store was opened read-only")
        try:
            cursor = self._conn.execute(sql, tuple(args))
        except sqlite3.Error as exc:
            raise StoreWriteError(_describe_write_error(self.path, exc)) from None
        self._writes += 1
        return cursor

    def _transaction(self, *statements: tuple[str, Iterable[Any]]) -> None:
        """Run write statements atomically: all are committed or none."""
        self._write("BEGIN")
        try:
            for sql, args in statements:
                self._write(sql, args)
            self._write("COMMIT")
        except BaseException:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # a failed COMMIT may already have rolled back
            raise

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(args)).fetchall()
            except sqlite3.Error as exc:
                raise self._unreadable(exc) from None

    # -- experiment ------------------------------------------------------------------------------
    def create_experiment(self, experiment_id: str, name: str | None, config: dict[str, Any],
                          status: str = "INITIALIZED") -> None:
        """Record the experiment: INITIALIZED (its engine starts now) or CREATED (started later by a resume)."""
        self._write("INSERT INTO experiment (id, name, config, status, created_at) VALUES (?, ?, ?, ?, ?)",
                    (experiment_id, name, _dumps(config), status, time.time()))

    def experiment(self) -> dict[str, Any]:
        """The experiment row: id, name, config, status, message, created_at, started_at (first start),
        resumed_at (start of the current run), ended_at, run_seconds (time used by earlier runs), pid,
        host, port."""
        if not self._has_resumed_at:  # a store written before the column, until its engine adds it
            self._has_resumed_at = "resumed_at" in self._experiment_columns()
        resumed = "COALESCE(resumed_at, started_at)" if self._has_resumed_at else "started_at"
        rows = self._query("SELECT id, name, config, status, message, created_at, started_at, ended_at, "
                           f"run_seconds, pid, host, port, {resumed} FROM experiment LIMIT 1")
        if not rows:
            raise LookupError(f"store {self.path} has no experiment")
        keys = ("id", "name", "config", "status", "message", "created_at", "started_at", "ended_at",
                "run_seconds", "pid", "host", "port", "resumed_at")
        exp = dict(zip(keys, rows[0]))
        exp["config"] = json.loads(exp["config"])
        return exp

    def _experiment_columns(self) -> set[str]:
        return {row[1] for row in self._query("PRAGMA table_info(experiment)")}

    def set_status(self, status: str, message: str | None = None, run_seconds: float | None = None) -> None:
        """Record the experiment's status; ``run_seconds`` (with RUNNING and the end states) is the
        experiment's total running time so far, counted by the engine across resumes."""
        now = time.time()
        event = _event("status", None, {"status": status, "message": message})
        if status == "RUNNING":
            update = ("UPDATE experiment SET status=?, message=?, started_at=COALESCE(started_at, ?), resumed_at=?, "
                      "ended_at=NULL, run_seconds=COALESCE(?, run_seconds), elapsed_seconds=COALESCE(?, elapsed_seconds)",
                      (status, message, now, now, run_seconds, run_seconds))
        elif status in EXPERIMENT_END_STATES:
            update = ("UPDATE experiment SET status=?, message=COALESCE(?, message), ended_at=?, "
                      "run_seconds=COALESCE(?, run_seconds + (? - COALESCE(resumed_at, started_at, ?))), "
                      "elapsed_seconds=NULL, pid=NULL, port=NULL", (status, message, now, run_seconds, now, now))
        else:
            update = ("UPDATE experiment SET status=?, message=COALESCE(?, message)", (status, message))
        self._transaction(update, event)

    def restore_status(self, status: str, message: str | None) -> None:
        """Put back a status recorded earlier, as it was (a resume that could not start)."""
        self._transaction(("UPDATE experiment SET status=?, message=?, pid=NULL, port=NULL", (status, message)),
                          _event("status", None, {"status": status, "message": message}))

    def record_elapsed(self, seconds: float) -> None:
        """Persist the running experiment's total running time (so a crash does not reset its budget)."""
        self._write("UPDATE experiment SET elapsed_seconds=?", (seconds,))

    def elapsed_seconds(self) -> float:
        """Running time the experiment has used so far, including a segment that ended in a crash."""
        run, elapsed = self._query("SELECT run_seconds, elapsed_seconds FROM experiment LIMIT 1")[0]
        return max(float(run or 0.0), float(elapsed or 0.0))

    def set_config(self, config: dict[str, Any]) -> None:
        self._transaction(("UPDATE experiment SET config=?", (_dumps(config),)),
                          _event("config", None, {}))

    def set_runtime(self, pid: int | None, host: str | None, port: int | None) -> None:
        self._write("UPDATE experiment SET pid=?, host=?, port=?", (pid, host, port))

    def add_event(self, kind: str, trial_seq: int | None, data: dict[str, Any]) -> None:
        self._write(*_event(kind, trial_seq, data))

    def events(self, since_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        return _event_dicts(self._query("SELECT id, ts, kind, trial_seq, data FROM events WHERE id > ? ORDER BY id "
                                        "LIMIT ?", (since_id, limit)))

    def events_of_kind(self, kind: str) -> list[dict[str, Any]]:
        return _event_dicts(self._query("SELECT id, ts, kind, trial_seq, data FROM events WHERE kind=? ORDER BY id",
                                        (kind,)))

    # -- trials --------------------------------------------------------------------------------
    def next_seq(self) -> int:
        if self._max_seq is None or self.readonly:
            self._max_seq = self._query("SELECT COALESCE(MAX(seq), 0) FROM trials")[0][0]
        return self._max_seq + 1

    def add_trial(self, seq: int, trial_id: str, parameters: dict[str, Any], rerun_of: int | None = None,
                  continues: int | None = None) -> None:
        """Insert a WAITING trial; with ``rerun_of``, atomically mark that interrupted trial as re-queued.
        ``continues``: the earlier trial whose checkpoint this one starts from (the tuner's choice)."""
        insert = ("INSERT INTO trials (seq, id, parameters, status, created_at, rerun_of, continues) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (seq, trial_id, _dumps(parameters), "WAITING", time.time(), rerun_of, continues))
        if rerun_of is None:
            self._transaction(insert)
            if self._counted is not None:
                self._counted += 1
        else:
            self._transaction(insert, ("UPDATE trials SET interrupted=2 WHERE seq=?", (rerun_of,)))
            self._counted = None
        self._max_seq = max(seq, self._max_seq or 0)

    def trial_started(self, seq: int, pid: int | None, pgid: int | None, host: str | None = None,
                      gpus: list[int] | None = None, processes: list[dict[str, Any]] | None = None) -> None:
        """The trial runs (``processes``: a distributed trial's, each with name, host, port, pid, gpus)."""
        self._write("UPDATE trials SET status='RUNNING', started_at=?, pid=?, pgid=?, host=?, gpus=?, processes=?, "
                    "message=NULL WHERE seq=?", (time.time(), pid, pgid, host, _dumps(gpus) if gpus is not None else None,
                                                 _dumps(processes) if processes is not None else None, seq))

    def trial_waiting(self, seq: int, message: str | None) -> None:
        """Why a WAITING trial is not running yet (an unschedulable pod, an image that cannot be pulled)."""
        self._write("UPDATE trials SET message=? WHERE seq=? AND status='WAITING'", (message, seq))

    def trial_ended(self, seq: int, status: str, exit_code: int | None = None, message: str | None = None,
                    interrupted: bool = False) -> None:
        assert status in FINISHED_STATES, status
        self._write("UPDATE trials SET status=?, ended_at=?, exit_code=?, message=?, interrupted=? WHERE seq=?",
                    (status, time.time(), exit_code, message, 1 if interrupted else 0, seq))
        if interrupted:
            self._counted = None

    def end_leftovers(self, message: str, keep: Iterable[str] = ()) -> list[TrialRecord]:
        """After an engine died: record its WAITING/RUNNING trials (but those in ``keep``, trial ids a training
        service adopted) as ended and return them (as they were).

        A trial whose final result is stored is finished (SUCCEEDED); the others are SYS_CANCELED and
        interrupted, to be re-run by a resume."""
        kept = set(keep)
        leftovers = [rec for rec in self.trials(status=ACTIVE_STATES) if rec["id"] not in kept]
        for rec in leftovers:
            if rec["final"] is not None:
                self.trial_ended(rec["seq"], "SUCCEEDED", None, f"{message} after its final result")
            else:
                self.trial_ended(rec["seq"], "SYS_CANCELED", None, message, interrupted=True)
        return leftovers

    def counted_trials(self) -> int:
        """Trials that count against ``max_trial_number`` (interrupted ones are replaced by their re-run)."""
        if self.readonly:
            self._tally.refresh(self)
            return self._tally.counted()
        if self._counted is None:
            self._counted = self._query("SELECT COUNT(*) FROM trials WHERE interrupted=0")[0][0]
        return self._counted

    def add_metric(self, seq: int, kind: str, step: int, value: float | None, data: Any) -> None:
        """Record an intermediate (``kind='intermediate'``) or final result of trial ``seq``."""
        insert = ("INSERT INTO metrics (trial_seq, kind, step, value, data, ts) VALUES (?, ?, ?, ?, ?, ?)",
                  (seq, kind, step, value, _dumps(data), time.time()))
        if kind == "final":
            self._transaction(insert, ("UPDATE trials SET final=?, final_value=? WHERE seq=?", (_dumps(data), value, seq)))
        else:
            self._write(*insert)

    def add_process_metric(self, seq: int, process: str, kind: str, value: float | None, data: Any) -> None:
        """Record a result that process ``process`` of distributed trial ``seq`` (not its chief) reported."""
        self._write("INSERT INTO process_metrics (trial_seq, process, kind, step, value, data, ts) VALUES "
                    "(?, ?, ?, (SELECT COUNT(*) + 1 FROM process_metrics WHERE trial_seq=? AND process=? AND kind=?), "
                    "?, ?, ?)", (seq, process, kind, seq, process, kind, value, _dumps(data), time.time()))

    def process_metrics(self, seq: int) -> list[dict[str, Any]]:
        """The results a distributed trial's other processes reported, by process, kind and step."""
        if not self._has_table("process_metrics"):
            return []
        rows = self._query("SELECT process, kind, step, value, data, ts FROM process_metrics WHERE trial_seq=? "
                           "ORDER BY process, kind, step", (seq,))
        return [{"process": p, "kind": k, "step": s, "value": v, "data": json.loads(d), "ts": t}
                for p, k, s, v, d, t in rows]

    def add_checkpoint(self, uuid: str, seq: int, steps_completed: int, value: float | None, metrics: Any,
                       metadata: dict[str, Any], resources: dict[str, int], location: str, state: str,
                       message: str | None = None) -> None:
        """Record a checkpoint of trial ``seq`` (its files are complete at ``location`` when ``state`` is COMPLETED)."""
        assert state in CHECKPOINT_STATES, state
        self._write("INSERT INTO checkpoints (uuid, trial_seq, steps_completed, value, metrics, metadata, resources, "
                    "location, state, message, report_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (uuid, seq, steps_completed, value, _dumps(metrics), _dumps(metadata), _dumps(resources), location,
                     state, message, time.time()))

    def set_checkpoint_state(self, uuids: Iterable[str], state: str, message: str | None = None) -> None:
        assert state in CHECKPOINT_STATES, state
        self._transaction(*[("UPDATE checkpoints SET state=?, message=? WHERE uuid=?", (state, message, u))
                            for u in uuids])

    def checkpoints(self, seq: int | None = None, state: str | None = None,
                    uuids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Checkpoints (of trial ``seq``, in ``state``, among ``uuids``) in the order they were reported, with the
        trial's id."""
        if not self._has_table("checkpoints"):
            return []
        where: list[str] = []
        args: list[Any] = []
        if uuids is not None:
            wanted = sorted(set(uuids))[:10000]
            if not wanted:
                return []
            where.append(f"c.uuid IN ({','.join('?' * len(wanted))})")
            args.extend(wanted)
        if seq is not None:
            where.append("c.trial_seq=?")
            args.append(seq)
        if state is not None:
            where.append("c.state=?")
            args.append(state)
        rows = self._query(f"SELECT {', '.join('c.' + c for c in _CHECKPOINT_COLUMNS)}, t.id FROM checkpoints c "
                           f"JOIN trials t ON t.seq = c.trial_seq {'WHERE ' + ' AND '.join(where) if where else ''} "
                           "ORDER BY c.report_time, c.rowid", args)
        out = []
        for row in rows:
            rec = dict(zip(_CHECKPOINT_COLUMNS, row[:-1]), trial_id=row[-1])
            for key in ("metrics", "metadata", "resources"):
                rec[key] = json.loads(rec[key]) if rec[key] is not None else None
            out.append(rec)
        return out

    def best_checkpoint(self, maximize: bool) -> dict[str, Any] | None:
        """The COMPLETED checkpoint with the best value (the earliest of equals), or None."""
        if not self._has_table("checkpoints"):
            return None
        rows = self._query("SELECT uuid FROM checkpoints WHERE state='COMPLETED' AND value IS NOT NULL "
                           f"ORDER BY value {'DESC' if maximize else 'ASC'}, report_time, rowid LIMIT 1")
        found = self.checkpoints(uuids=[rows[0][0]]) if rows else []
        return found[0] if found else None

    def checkpoint(self, uuid: str) -> dict[str, Any] | None:
        found = self.checkpoints(uuids=[uuid])
        return found[0] if found else None

    def _has_table(self, name: str) -> bool:
        """Whether the store has table ``name`` (one written before it existed, opened read-only, has not)."""
        if not self.readonly or name in self._tables:
            return True
        if self._query("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)):
            self._tables.add(name)
            return True
        return False

    def trials(self, status: str | Iterable[str] | None = None, limit: int | None = None, offset: int = 0,
               order_by: str = "seq", descending: bool = False, nulls_last: bool = False) -> list[TrialRecord]:
        """Trials (in ``status``) ordered by a column (then by sequence number), ``limit`` of them from ``offset``
        (``nulls_last``: trials without a value for the column after the others, in either direction).  Every
        trial at once: for many, :meth:`iter_trials` reads a page at a time."""
        if order_by not in _TRIAL_COLUMNS:
            raise ValueError(f"cannot order trials by {order_by!r}; expected one of {', '.join(_TRIAL_COLUMNS)}")
        where, args = "", []
        if status is not None:
            states = [status] if isinstance(status, str) else list(status)
            where = f"WHERE status IN ({','.join('?' * len(states))})"
            args.extend(states)
        nulls = f"{order_by} IS NULL, " if nulls_last and order_by != "seq" else ""
        sql = (f"SELECT {self._trial_columns} FROM trials {where} ORDER BY {nulls}{order_by} "
               f"{'DESC' if descending else 'ASC'}")
        if order_by != "seq":
            sql += ", seq"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [limit, offset]
        return [TrialRecord.from_row(r) for r in self._query(sql, args)]

    def trial(self, key: str | int) -> TrialRecord | None:
        column = "seq" if isinstance(key, int) else "id"
        rows = self._query(f"SELECT {self._trial_columns} FROM trials WHERE {column}=?", (key,))
        return TrialRecord.from_row(rows[0]) if rows else None

    def metrics(self, seq: int, kind: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT kind, step, value, data, ts FROM metrics WHERE trial_seq=?", [seq]
        if kind:
            sql += " AND kind=?"
            args.append(kind)
        rows = self._query(sql + " ORDER BY kind, step", args)
        return [{"kind": k, "step": s, "value": v, "data": json.loads(d), "ts": t} for k, s, v, d, t in rows]

    def count_without_result(self) -> int:
        """SUCCEEDED trials with no usable final result (none reported, or not a finite number)."""
        self._tally.refresh(self)
        return self._tally.without_result()

    def count_waiting_with_reason(self) -> int:
        """WAITING trials with a reason they cannot run yet (an unschedulable pod, an image that cannot be pulled)."""
        return self._query("SELECT COUNT(*) FROM trials WHERE status='WAITING' AND message IS NOT NULL")[0][0]

    def status_counts(self) -> dict[str, int]:
        """Trials per status; a trial that was interrupted and re-run counts once: as its re-run."""
        self._tally.refresh(self)
        return self._tally.status_counts()

    def best_trial(self, maximize: bool, finished_only: bool = False) -> TrialRecord | None:
        """The trial with the best final value (``finished_only``: among trials that have ended)."""
        order = "DESC" if maximize else "ASC"
        ended = f"AND status IN ({', '.join(repr(s) for s in FINISHED_STATES)}) " if finished_only else ""
        rows = self._query(f"SELECT {self._trial_columns} FROM trials WHERE final_value IS NOT NULL "
                           f"AND interrupted=0 {ended}ORDER BY final_value {order}, seq LIMIT 1")
        return TrialRecord.from_row(rows[0]) if rows else None

    def export_data(self) -> list[dict[str, Any]]:
        """Every trial with a final result, once: ``{trial_id, sequence_id, parameter, value, status}``
        (an interrupted trial that was re-run is represented by its re-run).  A list of all of them: for a
        large experiment, :meth:`iter_export` yields them a page at a time."""
        return list(self.iter_export())

    def iter_export(self, page: int = 1000, upto: int | None = None) -> Iterator[dict[str, Any]]:
        """:meth:`export_data`'s records one at a time, read ``page`` trials at a time by sequence number (each
        page one indexed query, so the store is never held between pages); ``upto``: only trials up to that
        sequence number."""
        return self._export_from(0, page, upto)

    def _export_from(self, after: int, page: int, upto: int | None) -> Iterator[dict[str, Any]]:
        last = after
        while True:
            rows = self._query("SELECT id, seq, parameters, final, final_value, status FROM trials WHERE seq > ? "
                               "AND seq <= ? AND final IS NOT NULL AND +interrupted=0 ORDER BY seq LIMIT ?",
                               (last, upto if upto is not None else 2 ** 62, page))
            for i, s, p, f, v, st in rows:
                yield {"trial_id": i, "sequence_id": s, "parameter": json.loads(p), "value": json.loads(f),
                       "default": v if v is None or math.isfinite(v) else None, "status": st}
            if len(rows) < page:
                return
            last = rows[-1][1]

    def export_slice(self, offset: int, limit: int, upto: int | None = None) -> list[dict[str, Any]]:
        """``limit`` of :meth:`iter_export`'s records from the ``offset``-th."""
        if limit <= 0:
            return []
        first = self._query("SELECT seq FROM trials WHERE seq <= ? AND final IS NOT NULL AND +interrupted=0 "
                            "ORDER BY seq LIMIT 1 OFFSET ?", (upto if upto is not None else 2 ** 62, offset))
        if not first:
            return []
        return list(itertools.islice(self._export_from(first[0][0] - 1, limit, upto), limit))

    def count_export(self, upto: int | None = None) -> int:
        """How many records :meth:`iter_export` yields (up to sequence number ``upto``)."""
        return self._query("SELECT COUNT(*) FROM trials WHERE seq <= ? AND final IS NOT NULL AND +interrupted=0",
                           (upto if upto is not None else 2 ** 62,))[0][0]

    def max_seq(self) -> int:
        """The highest sequence number (0 without trials)."""
        return self._query("SELECT COALESCE(MAX(seq), 0) FROM trials")[0][0]

    def iter_trials(self, status: str | Iterable[str] | None = None, page: int = 1000,
                    after: int = 0) -> Iterator[TrialRecord]:
        """Trials by sequence number (past ``after``), read ``page`` at a time (keyset pages: each an indexed
        query, nothing held between them), so that a reader of 100,000 trials holds one page."""
        where, args = "", []
        if status is not None:
            states = [status] if isinstance(status, str) else list(status)
            where = f" AND status IN ({','.join('?' * len(states))})"
            args = states
        last = after
        while True:
            rows = self._query(f"SELECT {self._trial_columns} FROM trials WHERE seq > ?{where} ORDER BY seq LIMIT ?",
                               [last, *args, page])
            for row in rows:
                yield TrialRecord.from_row(row)
            if len(rows) < page:
                return
            last = rows[-1][0]

    def tuner_history(self) -> list[dict[str, Any]]:
        """What a resumed tuner is given (``import_data``): ``{"parameter", "value", "parameter_id"}`` of every trial
        that ran (not an interrupted one: its re-run stands for it), by sequence number; ``value`` None for a trial
        that ended without a usable result.  Two columns read a page at a time: at 100,000 trials a fraction of a second
        and of the memory that whole trial records take."""
        out: list[dict[str, Any]] = []
        last = 0
        states = ",".join(f"'{s}'" for s in FINISHED_STATES)
        while True:
            rows = self._query(f"SELECT seq, parameters, final_value FROM trials WHERE seq > ? AND status IN ({states}) "
                               "AND +interrupted=0 ORDER BY seq LIMIT 5000", (last,))
            params = json.loads("[" + ",".join(p for _, p, _ in rows) + "]")  # one decode a page
            out.extend({"parameter": p, "value": r[2], "parameter_id": r[0]} for p, r in zip(params, rows))
            if len(rows) < 5000:
                return out
            last = rows[-1][0]

    def count_trials(self, status: str | Iterable[str] | None = None) -> int:
        """How many trials (in ``status``) there are."""
        if status is None:
            return self._query("SELECT COUNT(*) FROM trials")[0][0]
        states = [status] if isinstance(status, str) else list(status)
        return self._query(f"SELECT COUNT(*) FROM trials WHERE status IN ({','.join('?' * len(states))})",
                           states)[0][0]


class ExportedData(Sequence):  # type: ignore[type-arg]
    """What ``Experiment.export_data()`` returns: every trial with a final result (as
    :meth:`ExperimentStore.export_data`, up to the highest sequence number when it was made), as a read-only
    list that is read from the store when it is used, a page at a time: iterating over 100,000 records holds
    one page of them, ``len()`` is one count, ``[i]`` one indexed read.  ``list(...)`` makes a plain list.

    Each use opens its own read-only connection, so it outlives the handle it came from (a stopped experiment)."""

    def __init__(self, directory: str | Path, page: int = 1000) -> None:
        self.directory, self.page = Path(directory), page
        with ExperimentStore(self.directory, readonly=True) as store:
            self.upto = store.max_seq()
        self._len: int | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with ExperimentStore(self.directory, readonly=True) as store:
            yield from store.iter_export(self.page, self.upto)

    def __len__(self) -> int:
        if self._len is None:
            with ExperimentStore(self.directory, readonly=True) as store:
                self._len = store.count_export(self.upto)
        return self._len

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            with ExperimentStore(self.directory, readonly=True) as store:
                return store.export_slice(start, max(0, stop - start), self.upto)
        i = index + len(self) if index < 0 else index
        found = self[i:i + 1] if 0 <= i < len(self) else []
        if not found:
            raise IndexError("export_data index out of range")
        return found[0]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, ExportedData)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        n = len(self)
        if n <= 10:
            return repr(list(self))
        return f"<ExportedData: {n} trials with a final result, read a page at a time (list(...) for all of them)>"
