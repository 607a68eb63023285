"""The registry of experiments: where each experiment's folder is, by id.

One small SQLite file, ``$HPO_HOME/registry.db`` (default ``~/hpo-experiments``).  It holds
pointers only; an experiment's status always comes from its own store.
"""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

__all__ = ["hpo_home", "register", "unregister", "lookup", "all_experiments", "ExperimentNotFound"]


class ExperimentNotFound(LookupError):
    """No experiment with that id is registered."""


def hpo_home() -> Path:
    return Path(os.environ.get("HPO_HOME") or Path.home() / "hpo-experiments").expanduser()


def _connect(create: bool = True) -> sqlite3.Connection | None:
    home = hpo_home()
    if not create and not (home / "registry.db").exists():
        return None
    home.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(home / "registry.db", timeout=10.0, isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS experiments (id TEXT PRIMARY KEY, name TEXT, directory TEXT NOT NULL, "
                 "created_at REAL NOT NULL)")
    return conn


def register(experiment_id: str, name: str | None, directory: Path) -> None:
    conn = _connect()
    assert conn is not None
    try:
        conn.execute("INSERT OR REPLACE INTO experiments VALUES (?, ?, ?, ?)",
                     (experiment_id, name, str(Path(directory).resolve()), time.time()))
    finally:
        conn.close()


def unregister(experiment_id: str) -> None:
    """Forget experiment ``experiment_id`` (its folder is the caller's to remove); no error if it is not there."""
    conn = _connect(create=False)
    if conn is not None:
        try:
            conn.execute("DELETE FROM experiments WHERE id=?", (experiment_id,))
        finally:
            conn.close()


def lookup(experiment_id: str) -> Path:
    """The folder of experiment ``experiment_id``; raises ExperimentNotFound."""
    conn, row = _connect(create=False), None
    if conn is not None:
        try:
            row = conn.execute("SELECT directory FROM experiments WHERE id=?", (experiment_id,)).fetchone()
        finally:
            conn.close()
    if row is None:
        candidate = hpo_home() / experiment_id
        if (candidate / "experiment.db").exists():
            return candidate
        raise ExperimentNotFound(f"no experiment with id {experiment_id!r} (see `hpo list --all`)")
    return Path(row[0])


def all_experiments() -> list[dict[str, object]]:
    conn = _connect(create=False)
    if conn is None:
        return []
    try:
        rows = conn.execute("SELECT id, name, directory, created_at FROM experiments ORDER BY created_at").fetchall()
    finally:
        conn.close()
    return [{"id": i, "name": n, "directory": d, "created_at": c} for i, n, d, c in rows]
