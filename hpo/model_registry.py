"""The model registry: named models and their numbered versions, each pointing at a checkpoint.

One SQLite file, ``$HPO_HOME/models.db``, shared by every experiment and process (Determined's
``Model`` / ``ModelVersion``).  The file is created, schema included, on the first write, and
atomically (built aside, then hard-linked into place), so a reader never sees it half made; a
read of a missing file returns empty results and creates nothing.  WAL lets readers run while a
writer holds its transaction; every write is one ``BEGIN IMMEDIATE`` transaction, so version
numbers (``MAX(version)+1`` per model, from 1) never repeat across processes.

Records come back as plain dicts; times are seconds since the epoch.  User mistakes raise a
one-line ValueError, ModelNotFound, ModelExists or VersionNotFound.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

from .registry import hpo_home

__all__ = ["ModelRegistry", "ModelNotFound", "ModelExists", "VersionNotFound", "DB_NAME"]

DB_NAME = "models.db"
BUSY_TIMEOUT_S = 30.0
MAX_NAME_LENGTH = 256
SORT_KEYS = ("name", "description", "creation_time", "last_updated_time", "num_versions")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    metadata TEXT NOT NULL DEFAULT '{}',
    labels TEXT NOT NULL DEFAULT '[]',
    archived INTEGER NOT NULL DEFAULT 0,
    creation_time REAL NOT NULL,
    last_updated_time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS model_versions (
    model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    checkpoint_uuid TEXT NOT NULL,
    experiment_id TEXT,
    trial_id TEXT,
    name TEXT,
    comment TEXT,
    notes TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    creation_time REAL NOT NULL,
    last_updated_time REAL NOT NULL,
    PRIMARY KEY (model_id, version)
);
CREATE INDEX IF NOT EXISTS model_versions_checkpoint ON model_versions(checkpoint_uuid);
PRAGMA user_version = 1;
"""

_MODEL_COLUMNS = ("m.name, m.description, m.metadata, m.labels, m.archived, m.creation_time, m.last_updated_time, "
                  "(SELECT COUNT(*) FROM model_versions v WHERE v.model_id = m.id) AS num_versions")
_VERSION_COLUMNS = ("m.name, v.version, v.checkpoint_uuid, v.experiment_id, v.trial_id, v.name, v.comment, v.notes, "
                    "v.metadata, v.creation_time, v.last_updated_time")


class ModelNotFound(LookupError):
    """No model of that name is registered."""


class ModelExists(ValueError):
    """A model of that name is already registered."""


class VersionNotFound(LookupError):
    """The model has no version of that number."""


def _check_name(name: object, what: str = "model name") -> str:
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a string, got {type(name).__name__}")
    if not name.strip():
        raise ValueError(f"{what} must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} must be at most {MAX_NAME_LENGTH} characters, got {len(name)}")
    if "/" in name:
        raise ValueError(f"{what} {name!r} must not contain '/'")
    return name


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _dump_metadata(metadata: object, what: str = "metadata") -> str:
    if not isinstance(metadata, dict):
        raise ValueError(f"{what} must be a dict, got {type(metadata).__name__}")
    bad = [k for k in metadata if not isinstance(k, str)]
    if bad:
        raise ValueError(f"{what} keys must be strings, got {bad[0]!r}")
    try:
        return json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable (no NaN/inf): {exc}") from None


def _check_labels(labels: object) -> list[str]:
    if isinstance(labels, str) or not isinstance(labels, (list, tuple)):
        raise ValueError(f"labels must be a list of strings, got {type(labels).__name__}")
    out: list[str] = []
    for label in labels:
        if not isinstance(label, str) or not label:
            raise ValueError(f"labels must be non-empty strings, got {label!r}")
        if label not in out:
            out.append(label)
    return out


def _check_version(version: object, allow_latest: bool) -> int:
    ok = isinstance(version, int) and not isinstance(version, bool) and (version >= 1 or
                                                                          (allow_latest and version == -1))
    if not ok:
        expected = "-1 (latest) or a version number >= 1" if allow_latest else "a version number >= 1"
        raise ValueError(f"version must be {expected}, got {version!r}")
    return version  # type: ignore[return-value]


def _check_order(order_by: object) -> str:
    key = order_by.lower() if isinstance(order_by, str) else None
    key = {"ascending": "asc", "descending": "desc"}.get(key, key)  # type: ignore[arg-type]
    if key not in ("asc", "desc"):
        raise ValueError(f"order_by must be 'asc' or 'desc', got {order_by!r}")
    return key  # type: ignore[return-value]


def _model_dict(row: tuple) -> dict[str, Any]:
    name, description, metadata, labels, archived, created, updated, num_versions = row
    return {"name": name, "description": description, "metadata": json.loads(metadata), "labels": json.loads(labels),
            "archived": bool(archived), "creation_time": created, "last_updated_time": updated,
            "num_versions": num_versions}


def _version_dict(row: tuple) -> dict[str, Any]:
    (model, version, ckpt, exp_id, trial_id, name, comment, notes, metadata, created, updated) = row
    return {"model_name": model, "version": version, "checkpoint_uuid": ckpt, "experiment_id": exp_id,
            "trial_id": trial_id, "name": name, "comment": comment, "notes": notes, "metadata": json.loads(metadata),
            "creation_time": created, "last_updated_time": updated}


class ModelRegistry:
    """The models of ``path`` (default ``hpo_home() / "models.db"``); safe to share between threads.

    Any number of processes may open the same file; each write is atomic.  ``close()`` (or ``with``)
    releases the connection.
    """

    def __init__(self, path: Path | str | None = None, readonly: bool = False) -> None:
        self.path = Path(path) if path is not None else hpo_home() / DB_NAME
        self.readonly = readonly  # opened with SQLite's mode=ro: every write fails
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    # --- connections ----------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        target, uri = (f"{self.path.resolve().as_uri()}?mode=ro", True) if self.readonly else (str(self.path), False)
        conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False, uri=uri)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        if not self.readonly:
            conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _create_file(self) -> None:
        """Make ``self.path`` with its schema unless it exists: built aside, linked in (atomic)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the file header
                conn.executescript(_SCHEMA)
            finally:
                conn.close()
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another process made it first
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
                leftover.unlink(missing_ok=True)

    def _reader(self) -> sqlite3.Connection | None:
        """The connection, or None while the file does not exist (reads never create it)."""
        if self._conn is None:
            if not self.path.exists():
                return None
            self._conn = self._open()
        return self._conn

    def _writer(self) -> sqlite3.Connection:
        if self.readonly:
            raise ValueError(f"the model registry {self.path} is open read-only")
        if self._conn is None:
            if not self.path.exists():
                self._create_file()
            self._conn = self._open()
        return self._conn

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            conn = self._reader()
            return [] if conn is None else conn.execute(sql, tuple(params)).fetchall()

    def _write(self, fn: Any) -> Any:
        """Run ``fn(conn)`` in one BEGIN IMMEDIATE transaction; commit, or roll back on any error."""
        with self._lock:
            conn = self._writer()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    def close(self) -> None:
        """Release the connection; the registry reopens it if used again."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> ModelRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- models ---------------------------------------------------------------------------------------

    @staticmethod
    def _model_id(conn: sqlite3.Connection, name: str) -> int:
        row = conn.execute("SELECT id FROM models WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise ModelNotFound(f"no model named {name!r} is registered")
        return row[0]

    def create_model(self, name: str, description: str = "", metadata: dict | None = None,
                     labels: list[str] | None = None) -> dict[str, Any]:
        """Register a new model; raises ModelExists if ``name`` is taken (also by another process)."""
        _check_name(name)
        _check_text(description, "description")
        meta = _dump_metadata({} if metadata is None else metadata)
        tags = json.dumps(_check_labels([] if labels is None else labels))

        def insert(conn: sqlite3.Connection) -> None:
            now = time.time()
            try:
                conn.execute("INSERT INTO models (name, description, metadata, labels, archived, creation_time, "
                             "last_updated_time) VALUES (?, ?, ?, ?, 0, ?, ?)", (name, description, meta, tags, now, now))
            except sqlite3.IntegrityError:
                raise ModelExists(f"a model named {name!r} already exists; choose another name") from None

        self._write(insert)
        return self.get_model(name)

    def get_model(self, name: str) -> dict[str, Any]:
        """The model ``name``: {name, description, metadata, labels, archived, creation_time,
        last_updated_time, num_versions}; raises ModelNotFound."""
        _check_name(name)
        rows = self._read(f"SELECT {_MODEL_COLUMNS} FROM models m WHERE m.name = ?", (name,))
        if not rows:
            raise ModelNotFound(f"no model named {name!r} is registered")
        return _model_dict(rows[0])

    def list_models(self, sort_by: str = "name", order_by: str = "asc", name: str | None = None,
                    labels: list[str] | None = None) -> list[dict[str, Any]]:
        """All models (archived ones too), sorted by ``sort_by`` (one of SORT_KEYS) then name.

        ``name`` keeps models whose name contains it (case-insensitive); ``labels`` keeps models
        that carry every one of them.
        """
        if sort_by not in SORT_KEYS:
            raise ValueError(f"sort_by must be one of {', '.join(SORT_KEYS)}; got {sort_by!r}")
        direction = _check_order(order_by).upper()
        wanted = _check_labels(labels) if labels is not None else []
        if name is not None:
            _check_text(name, "name filter")
        sql = f"SELECT {_MODEL_COLUMNS} FROM models m"
        params: list[Any] = []
        if name:
            sql += " WHERE instr(lower(m.name), lower(?)) > 0"
            params.append(name)
        sql += f" ORDER BY {sort_by} {direction}, m.name {direction}"
        models = [_model_dict(row) for row in self._read(sql, params)]
        return [m for m in models if all(label in m["labels"] for label in wanted)]

    def _update_model(self, name: str, assignments: str, params: tuple, transform: Any = None) -> dict[str, Any]:
        _check_name(name)

        def update(conn: sqlite3.Connection) -> None:
            model_id = self._model_id(conn, name)
            values = params
            if transform is not None:
                row = conn.execute("SELECT metadata, labels FROM models WHERE id = ?", (model_id,)).fetchone()
                values = transform(json.loads(row[0]), json.loads(row[1]))
            conn.execute(f"UPDATE models SET {assignments}, last_updated_time = ? WHERE id = ?",
                         (*values, time.time(), model_id))

        self._write(update)
        return self.get_model(name)

    def set_description(self, name: str, description: str) -> dict[str, Any]:
        """Replace the model's description."""
        return self._update_model(name, "description = ?", (_check_text(description, "description"),))

    def add_metadata(self, name: str, metadata: dict) -> dict[str, Any]:
        """Merge ``metadata`` into the model's, top level only (its values replace existing ones)."""
        _dump_metadata(metadata)
        return self._update_model(name, "metadata = ?", (),
                                  lambda meta, _labels: (_dump_metadata({**meta, **metadata}),))

    def remove_metadata(self, name: str, keys: list[str]) -> dict[str, Any]:
        """Remove these top-level keys from the model's metadata (missing keys are ignored)."""
        if isinstance(keys, str) or not isinstance(keys, (list, tuple, set)) or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"keys must be a list of strings, got {keys!r}")
        drop = set(keys)
        return self._update_model(name, "metadata = ?", (),
                                  lambda meta, _labels: (json.dumps({k: v for k, v in meta.items() if k not in drop}),))

    def set_labels(self, name: str, labels: list[str]) -> dict[str, Any]:
        """Replace the model's labels (duplicates dropped, order kept)."""
        return self._update_model(name, "labels = ?", (json.dumps(_check_labels(labels)),))

    def archive(self, name: str) -> dict[str, Any]:
        """Archive the model: still listed and readable, but it takes no new versions."""
        return self._update_model(name, "archived = ?", (1,))

    def unarchive(self, name: str) -> dict[str, Any]:
        """Undo :meth:`archive`."""
        return self._update_model(name, "archived = ?", (0,))

    def delete_model(self, name: str, force: bool = False) -> None:
        """Delete the model; refuses (ValueError) while it has versions unless ``force``, which
        deletes them too (their checkpoints are then no longer protected from GC)."""
        _check_name(name)

        def delete(conn: sqlite3.Connection) -> None:
            model_id = self._model_id(conn, name)
            count = conn.execute("SELECT COUNT(*) FROM model_versions WHERE model_id = ?", (model_id,)).fetchone()[0]
            if count and not force:
                raise ValueError(f"model {name!r} has {count} version(s); delete them first or pass force=True")
            conn.execute("DELETE FROM model_versions WHERE model_id = ?", (model_id,))
            conn.execute("DELETE FROM models WHERE id = ?", (model_id,))

        self._write(delete)

    # --- versions -------------------------------------------------------------------------------------

    def register_version(self, name: str, checkpoint_uuid: str, *, experiment_id: str | None = None,
                         trial_id: str | None = None, comment: str | None = None,
                         metadata: dict | None = None) -> dict[str, Any]:
        """Add version MAX(version)+1 (from 1) of model ``name``, pointing at ``checkpoint_uuid``.

        Atomic across processes.  Raises ModelNotFound, or ValueError if the model is archived.
        ``experiment_id`` / ``trial_id`` may be given as ints; they are stored as strings.
        """
        _check_name(name)
        if not isinstance(checkpoint_uuid, str) or not checkpoint_uuid.strip():
            raise ValueError(f"checkpoint_uuid must be a non-empty string, got {checkpoint_uuid!r}")
        ids = []
        for what, value in (("experiment_id", experiment_id), ("trial_id", trial_id)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
                raise ValueError(f"{what} must be a string or None, got {type(value).__name__}")
            ids.append(None if value is None else str(value))
        if comment is not None:
            _check_text(comment, "comment")
        meta = _dump_metadata({} if metadata is None else metadata)

        def insert(conn: sqlite3.Connection) -> int:
            model_id = self._model_id(conn, name)
            if conn.execute("SELECT archived FROM models WHERE id = ?", (model_id,)).fetchone()[0]:
                raise ValueError(f"model {name!r} is archived; unarchive it before registering versions")
            version = conn.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions WHERE model_id = ?",
                                   (model_id,)).fetchone()[0]
            now = time.time()
            conn.execute("INSERT INTO model_versions (model_id, version, checkpoint_uuid, experiment_id, trial_id, "
                         "comment, metadata, creation_time, last_updated_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (model_id, version, checkpoint_uuid, ids[0], ids[1], comment, meta, now, now))
            conn.execute("UPDATE models SET last_updated_time = ? WHERE id = ?", (now, model_id))
            return version

        version = self._write(insert)
        found = self.get_version(name, version)
        assert found is not None
        return found

    def get_version(self, name: str, version: int = -1) -> dict[str, Any] | None:
        """Version ``version`` of model ``name`` (-1: the latest); None when the model has no versions.

        Raises ModelNotFound, or VersionNotFound for a missing explicit version.
        """
        _check_name(name)
        _check_version(version, allow_latest=True)
        sql = f"SELECT {_VERSION_COLUMNS} FROM model_versions v JOIN models m ON m.id = v.model_id WHERE m.name = ?"
        if version == -1:
            rows = self._read(sql + " ORDER BY v.version DESC LIMIT 1", (name,))
        else:
            rows = self._read(sql + " AND v.version = ?", (name, version))
        if rows:
            return _version_dict(rows[0])
        model = self.get_model(name)  # raises ModelNotFound
        if version == -1:
            return None
        raise VersionNotFound(f"model {name!r} has no version {version} ({model['num_versions']} version(s) registered)")

    def list_versions(self, name: str, order_by: str = "desc") -> list[dict[str, Any]]:
        """Every version of model ``name``, by version number (newest first by default)."""
        _check_name(name)
        direction = _check_order(order_by).upper()
        rows = self._read(f"SELECT {_VERSION_COLUMNS} FROM model_versions v JOIN models m ON m.id = v.model_id "
                          f"WHERE m.name = ? ORDER BY v.version {direction}", (name,))
        if not rows:
            self.get_model(name)  # raises ModelNotFound
        return [_version_dict(row) for row in rows]

    def all_versions(self) -> list[dict[str, Any]]:
        """Every version of every model (one query), by model name, newest version first."""
        return [_version_dict(row) for row in self._read(
            f"SELECT {_VERSION_COLUMNS} FROM model_versions v JOIN models m ON m.id = v.model_id "
            "ORDER BY m.name, v.version DESC")]

    def _update_version(self, name: str, version: int, sql: str, params: tuple) -> dict[str, Any] | None:
        _check_name(name)
        _check_version(version, allow_latest=False)

        def update(conn: sqlite3.Connection) -> None:
            model_id = self._model_id(conn, name)
            cursor = conn.execute(sql, (*params, model_id, version))
            if cursor.rowcount == 0:
                raise VersionNotFound(f"model {name!r} has no version {version}")
            conn.execute("UPDATE models SET last_updated_time = ? WHERE id = ?", (time.time(), model_id))

        self._write(update)
        return None

    def set_version_name(self, name: str, version: int, version_name: str) -> dict[str, Any]:
        """Give version ``version`` of model ``name`` a display name."""
        _check_text(version_name, "version name")
        self._update_version(name, version, "UPDATE model_versions SET name = ?, last_updated_time = ? "
                             "WHERE model_id = ? AND version = ?", (version_name, time.time()))
        return self.get_version(name, version)  # type: ignore[return-value]

    def set_version_notes(self, name: str, version: int, notes: str) -> dict[str, Any]:
        """Replace the notes of version ``version`` of model ``name``."""
        _check_text(notes, "notes")
        self._update_version(name, version, "UPDATE model_versions SET notes = ?, last_updated_time = ? "
                             "WHERE model_id = ? AND version = ?", (notes, time.time()))
        return self.get_version(name, version)  # type: ignore[return-value]

    def delete_version(self, name: str, version: int) -> None:
        """Delete version ``version`` of model ``name``; its checkpoint is no longer protected from GC
        (unless another version points at it).  Raises ModelNotFound or VersionNotFound."""
        self._update_version(name, version, "DELETE FROM model_versions WHERE model_id = ? AND version = ?", ())

    def registered_checkpoints(self) -> set[str]:
        """The uuids of every checkpoint some version points at: GC must never delete these."""
        return {row[0] for row in self._read("SELECT DISTINCT checkpoint_uuid FROM model_versions")}
