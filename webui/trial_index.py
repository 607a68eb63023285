"""An in-memory, column-wise index of an experiment's trials for the dashboard, kept up to date incrementally.

The dashboard sorts, filters, counts and charts every trial of an experiment while the engine keeps writing
to the store.  Doing that in SQL scans the whole ``trials`` table (and decodes every trial's parameters) once
per store version, which at 100,000 trials is a few hundred milliseconds on every change.  This index holds
the few columns those queries need as numpy arrays (about 50 bytes a trial) and, when the store changes,
re-reads only what can have changed:

* trials are only ever appended (sequence numbers grow; nothing is deleted), so new trials are those past the
  highest sequence number seen;
* a trial's row changes only while it is WAITING or RUNNING (started, its final result, its end), plus one
  write outside that: a re-run marks the trial it re-runs (``rerun_of``) as replaced, in the transaction that
  inserts the re-run, so the re-run's arrival also re-reads the old trial.

So a refresh is one query over the new and the active trials (plus the re-run ones), read in one snapshot of
the store; a count check falls back to a full reload should a store ever break that rule.

Any other column a sort or a filter needs (a parameter, a key of a dict final result, the message, a
``~`` filter or a search) is an SQL expression evaluated by SQLite itself, so that values and comparisons are
exactly SQLite's (a JSON ``true`` is 1, numbers sort before text, NULLs last); it is loaded by one scan the first
time it is asked for and then maintained like the base columns.  A sorted order is computed with numpy
(a stable sort, ties by sequence number, as ``ORDER BY key IS NULL, key, seq`` in SQL) and cached per version.

The index has its own read-only connection: the engine stays the only writer.
"""
from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from typing import Any, Iterable

import numpy as np

from hpo.storage import TRIAL_STATES

__all__ = ["TrialIndex", "STATUSES"]

STATUSES = tuple(sorted(TRIAL_STATES))  # status codes in text order: sorting the codes sorts the text
_STATUS_CODE = {s: i for i, s in enumerate(STATUSES)}
_ACTIVE_CODES = (_STATUS_CODE["WAITING"], _STATUS_CODE["RUNNING"])
_BASE = "seq, status, final_value, created_at, started_at, ended_at, interrupted, rerun_of"
_NULL, _NUM, _TEXT = 0, 1, 2
MAX_COLUMNS = 48   # SQL-expression columns kept (least recently used dropped first)
MAX_ORDERS = 24    # cached sorted orders


class Column:
    """One value per trial with SQLite's types: null, a number, or text (kept as a code into ``cats``)."""

    __slots__ = ("kind", "num", "code", "cats", "codes", "_ranks")

    def __init__(self, size: int) -> None:
        self.kind = np.zeros(size, np.int8)
        self.num = np.full(size, np.nan)
        self.code = np.full(size, -1, np.int32)
        self.cats: list[str] = []
        self.codes: dict[str, int] = {}
        self._ranks: np.ndarray | None = None

    def grow(self, size: int) -> None:
        old = len(self.kind)
        self.kind = np.concatenate([self.kind, np.zeros(size - old, np.int8)])
        self.num = np.concatenate([self.num, np.full(size - old, np.nan)])
        self.code = np.concatenate([self.code, np.full(size - old, -1, np.int32)])

    def set(self, pos: np.ndarray | list[int], values: list[Any]) -> None:
        pos = np.asarray(pos, dtype=np.int64)
        if not len(pos):
            return
        if all(v is None or type(v) in (int, float) for v in values):  # the common case: numbers and nulls
            nums = np.array(values, dtype=float)
            null = np.isnan(nums)  # SQLite has no NaN: a NaN here was a NULL
            self.kind[pos] = np.where(null, _NULL, _NUM)
            self.num[pos] = nums
            self.code[pos] = -1
            return
        for p, v in zip(pos.tolist(), values):
            if v is None:
                self.kind[p], self.num[p], self.code[p] = _NULL, np.nan, -1
            elif isinstance(v, (int, float)):
                self.kind[p], self.num[p], self.code[p] = _NUM, float(v), -1
            else:
                text = v if isinstance(v, str) else bytes(v).decode("utf-8", "replace")
                c = self.codes.get(text)
                if c is None:
                    c = self.codes[text] = len(self.cats)
                    self.cats.append(text)
                    self._ranks = None
                self.kind[p], self.num[p], self.code[p] = _TEXT, np.nan, c

    def ranks(self) -> np.ndarray:
        """The rank of each text code in text order (SQLite's BINARY collation is code-point order)."""
        if self._ranks is None or len(self._ranks) != len(self.cats):
            order = sorted(range(len(self.cats)), key=self.cats.__getitem__)
            ranks = np.empty(len(self.cats), np.int64)
            ranks[order] = np.arange(len(self.cats))
            self._ranks = ranks
        return self._ranks

    def has_text(self, n: int) -> bool:
        return bool(self.cats) and bool((self.kind[:n] == _TEXT).any())


def _numeric(values: np.ndarray) -> Column:
    """A view of a float array (NaN: null) as a Column."""
    col = Column(0)
    col.num = values
    col.kind = np.where(np.isnan(values), _NULL, _NUM).astype(np.int8)
    col.code = np.full(len(values), -1, np.int32)
    return col


def compare(col: Column, n: int, op: str, value: Any) -> np.ndarray:
    """The rows where ``column OP value`` is true, as SQLite evaluates it (``!=`` being ``IS NOT``).

    Comparisons with NULL are never true (but ``IS NOT``); a number is less than any text; numbers compare as
    numbers, text as text."""
    kind, num = col.kind[:n], col.num[:n]
    if value is None:
        null = kind == _NULL
        return ~null if op == "!=" else null
    if isinstance(value, bool):
        value = int(value)
    if op == "!=":
        return ~compare(col, n, "==", value) | (kind == _NULL)
    if isinstance(value, (int, float)):
        v = float(value)
        with np.errstate(invalid="ignore"):
            on_num = {"==": num == v, ">": num > v, ">=": num >= v, "<": num < v, "<=": num <= v}[op]
        on_num = on_num & (kind == _NUM)
        if op in (">", ">="):
            return on_num | (kind == _TEXT)
        return on_num
    text = str(value)
    table = np.array([{"==": c == text, ">": c > text, ">=": c >= text, "<": c < text, "<=": c <= text}[op]
                      for c in col.cats] + [False], dtype=bool)
    on_text = (kind == _TEXT) & table[col.code[:n]]
    if op in ("<", "<="):
        return on_text | (kind == _NUM)
    return on_text


def sort_order(col: Column, rows: np.ndarray, descending: bool) -> np.ndarray:
    """``rows`` (positions, in sequence order) sorted as ``ORDER BY key IS NULL, key [DESC], seq``."""
    kind = col.kind[rows]
    if not col.cats or not (kind == _TEXT).any():
        key = col.num[rows]
        key = -key if descending else key      # NaN (null) stays NaN: last either way
        return rows[np.argsort(key, kind="stable")]
    text = kind == _TEXT
    primary = np.where(text, col.ranks()[np.maximum(col.code[rows], 0)].astype(float), col.num[rows])
    primary = np.where(kind == _NULL, 0.0, primary)
    cls = kind.astype(np.int8)
    if descending:
        primary, cls = -primary, -cls
    return rows[np.lexsort((primary, cls, kind == _NULL))]


class TrialIndex:
    """Columns over every trial of one store (see the module's docstring); thread-safe."""

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=5.0,
                                     isolation_level=None)
        self.lock = threading.RLock()
        self.version = -1          # PRAGMA data_version the columns are up to date with
        self.generation = 0        # bumped whenever a value changed (not by commits that changed no trial)
        self._log: list[tuple[int, np.ndarray]] = []   # (generation, positions that changed to reach it)
        self._log_from = 0         # the log covers the changes after this generation
        self._counted = 0.0        # when the trial count was last checked against ours
        self.epoch = 0             # bumped when the store is read anew (what readers kept of it is stale)
        self.n = 0
        self._size = 0
        self.seq = np.zeros(0, np.int64)
        self.status = np.zeros(0, np.int8)
        self.value = np.zeros(0)
        self.created = np.zeros(0)
        self.started = np.zeros(0)
        self.ended = np.zeros(0)
        self.interrupted = np.zeros(0, np.int8)
        self.rerun_of = np.zeros(0, np.int64)
        self.active: set[int] = set()
        self.columns: dict[tuple[str, tuple[Any, ...]], Column] = {}
        self._orders: dict[Any, tuple[int, np.ndarray]] = {}   # query -> (generation, positions in order)
        self._status_col: tuple[int, Column] | None = None

    def close(self) -> None:
        with self.lock:
            self._conn.close()

    # -- loading --------------------------------------------------------------------------------------------
    def _ensure_size(self, size: int) -> None:
        if size <= self._size:
            return
        new = max(size, int(self._size * 1.5) + 1024)
        extra = new - self._size

        def grow(a: np.ndarray, fill: Any) -> np.ndarray:
            return np.concatenate([a, np.full(extra, fill, a.dtype)])
        self.seq, self.status = grow(self.seq, 0), grow(self.status, 0)
        self.value, self.created, self.started, self.ended = (grow(a, np.nan) for a in
                                                             (self.value, self.created, self.started, self.ended))
        self.interrupted, self.rerun_of = grow(self.interrupted, 0), grow(self.rerun_of, 0)
        for col in self.columns.values():
            col.grow(new)
        self._size = new

    def refresh(self, need: Iterable[tuple[str, tuple[Any, ...]]] = ()) -> None:
        """Bring the columns (and the SQL-expression columns in ``need``, loading those not there) up to date."""
        need = [k for k in need]
        with self.lock:
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            missing = [k for k in dict.fromkeys(need) if k not in self.columns]
            for key in need:  # recently used
                if key in self.columns:
                    self.columns[key] = self.columns.pop(key)
            if version == self.version and not missing:
                return
            self._conn.execute("BEGIN")
            try:
                if version != self.version:
                    changed = self._update() if self.version >= 0 else None
                    if changed is not None and time.monotonic() - self._counted > 2.0:
                        self._counted = time.monotonic()
                        if self.n != self._conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]:
                            changed = None  # a store that broke the append-only rule (replaced): read it again
                    if changed is None:
                        self._load_all()
                        self.generation += 1
                        self._log, self._log_from = [], self.generation
                    elif len(changed):
                        self.generation += 1
                        self._log.append((self.generation, changed))
                        if len(self._log) > 256:
                            self._log_from = self._log.pop(0)[0]
                if missing:
                    self._load_columns(missing)
            finally:
                self._conn.execute("COMMIT")
            while len(self.columns) > MAX_COLUMNS:
                self.columns.pop(next(iter(self.columns)))
            self.version = version

    def changed_since(self, generation: int, limit: int) -> np.ndarray | None:
        """Positions whose values changed after ``generation`` (new trials included); None if that is not known
        any more or more than ``limit`` changed (then recompute from scratch)."""
        if generation < self._log_from:
            return None
        parts = [pos for gen, pos in self._log if gen > generation]
        if sum(len(p) for p in parts) > limit:
            return None
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def _exprs(self) -> tuple[str, list[Any]]:
        sql, args = "", []
        for expr, eargs in self.columns:
            sql += f", {expr}"
            args.extend(eargs)
        return sql, args

    def _load_all(self) -> None:
        self.epoch += 1
        keys = list(self.columns)
        self.n, self._size, self.active = 0, 0, set()
        self.seq = np.zeros(0, np.int64)
        self.status = np.zeros(0, np.int8)
        self.value = self.created = self.started = self.ended = np.zeros(0)
        self.interrupted = np.zeros(0, np.int8)
        self.rerun_of = np.zeros(0, np.int64)
        self.columns = {}
        self._orders.clear()
        self._status_col = None
        rows = self._conn.execute(f"SELECT {_BASE} FROM trials ORDER BY seq").fetchall()
        self._ensure_size(len(rows))
        self._append(rows)
        if keys:
            self._load_columns(keys)

    def _load_columns(self, keys: list[tuple[str, tuple[Any, ...]]]) -> None:
        """New SQL-expression columns, all in one scan of the store."""
        cols = {key: Column(self._size) for key in keys}
        args = [a for _, eargs in keys for a in eargs]
        rows = self._conn.execute(f"SELECT seq, {', '.join(expr for expr, _ in keys)} FROM trials WHERE seq <= ?",
                                  [*args, int(self.seq[self.n - 1]) if self.n else 0]).fetchall()
        if rows:
            seqs = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            pos = np.searchsorted(self.seq[:self.n], seqs)
            for j, col in enumerate(cols.values()):
                col.set(pos, [r[j + 1] for r in rows])
        self.columns.update(cols)

    def _append(self, rows: list[tuple]) -> None:
        """New trials (rows of _BASE, by sequence number, past the last one) at the end."""
        if not rows:
            return
        k = len(rows)
        self._ensure_size(self.n + k)
        pos = np.arange(self.n, self.n + k)
        self.n += k
        self._set_base(pos, rows)

    def _set_base(self, pos: np.ndarray, rows: list[tuple]) -> None:
        cols = list(zip(*rows))
        self.seq[pos] = cols[0]
        self.status[pos] = [_STATUS_CODE.get(s, 0) for s in cols[1]]
        for target, values in ((self.value, cols[2]), (self.created, cols[3]), (self.started, cols[4]),
                               (self.ended, cols[5])):
            target[pos] = np.array(values, dtype=float)
        self.interrupted[pos] = [v or 0 for v in cols[6]]
        self.rerun_of[pos] = [v or 0 for v in cols[7]]
        for seq, status in zip(cols[0], cols[1]):
            if status in ("WAITING", "RUNNING"):
                self.active.add(seq)
            else:
                self.active.discard(seq)

    def _update(self) -> np.ndarray | None:
        """Re-read the new trials, the active ones and those a new re-run replaced; the positions whose values
        changed, or None if a full load is needed instead."""
        last = int(self.seq[self.n - 1]) if self.n else 0
        extra, eargs = self._exprs()
        width = 8
        watch = sorted(self.active)
        # two indexed parts (an OR, or an ORDER BY, would make SQLite scan the table)
        rows = self._conn.execute(f"SELECT {_BASE}{extra} FROM trials WHERE seq > ? UNION ALL "
                                  f"SELECT {_BASE}{extra} FROM trials WHERE seq IN (SELECT value FROM json_each(?)) "
                                  "AND seq <= ?", [*eargs, last, *eargs, json.dumps(watch), last]).fetchall()
        replaced = sorted({r[7] for r in rows if r[7]} - set(watch))
        if replaced:
            rows += self._conn.execute(f"SELECT {_BASE}{extra} FROM trials WHERE seq IN "
                                       "(SELECT value FROM json_each(?))", [*eargs, json.dumps(replaced)]).fetchall()
        changed = [np.zeros(0, np.int64)]
        if not rows:
            return changed[0]
        old = [r for r in rows if r[0] <= last]
        new = sorted((r for r in rows if r[0] > last), key=lambda r: r[0])
        if old:
            seqs = np.array([r[0] for r in old], np.int64)
            pos = np.searchsorted(self.seq[:self.n], seqs)
            if (pos >= self.n).any() or (self.seq[np.minimum(pos, self.n - 1)] != seqs).any():
                return None
            before = self._snapshot(pos)
            self._set_base(pos, [r[:width] for r in old])
            for j, col in enumerate(self.columns.values()):
                col.set(pos, [r[width + j] for r in old])
            after = self._snapshot(pos)
            differs = np.zeros(len(pos), dtype=bool)
            for a, b in zip(before, after):
                differs |= ~((a == b) | ((a != a) & (b != b)))   # NaN == NaN here
            changed.append(pos[differs])
        if new:
            start = self.n
            self._append([r[:width] for r in new])
            pos = np.arange(start, self.n)
            for j, col in enumerate(self.columns.values()):
                col.set(pos, [r[width + j] for r in new])
            changed.append(pos)
        return np.unique(np.concatenate(changed))

    def _snapshot(self, pos: np.ndarray) -> list[np.ndarray]:
        out = [self.status[pos], self.value[pos], self.created[pos], self.started[pos], self.ended[pos],
               self.interrupted[pos], self.rerun_of[pos]]
        for col in self.columns.values():
            out += [col.kind[pos], col.num[pos], col.code[pos]]
        return [a.copy() for a in out]

    # -- queries ------------------------------------------------------------------------------------------------
    def status_column(self) -> Column:
        """The status as a text Column (codes in STATUSES order)."""
        if self._status_col is None or self._status_col[0] != self.generation:
            col = Column(0)
            col.kind = np.full(self.n, _TEXT, np.int8)
            col.code = self.status[:self.n].astype(np.int32)
            col.num = np.full(self.n, np.nan)
            col.cats, col.codes = list(STATUSES), dict(_STATUS_CODE)
            self._status_col = (self.generation, col)
        return self._status_col[1]

    def base_column(self, name: str, now: float) -> Column | None:
        """One of the columns held anyway, as a Column: seq, value, created/started/ended, duration, status."""
        n = self.n
        if name == "status":
            return self.status_column()
        if name == "duration":
            return _numeric(np.where(np.isnan(self.ended[:n]), now, self.ended[:n]) - self.started[:n])
        arrays = {"seq": lambda: self.seq[:n].astype(float), "final_value": lambda: self.value[:n],
                  "created_at": lambda: self.created[:n], "started_at": lambda: self.started[:n],
                  "ended_at": lambda: self.ended[:n]}
        return _numeric(arrays[name]()) if name in arrays else None

    def ordered(self, key: Any, mask: Any, sort_key: Any, full: Any) -> np.ndarray:
        """The positions of the trials a query selects, in its order, kept per query and brought up to date
        incrementally: when few trials changed since, they are taken out and put back where they now belong
        (a binary search each), instead of sorting every trial again.

        ``mask()``: the selected trials (bool per position); ``sort_key()``: a float per position that sorts
        as the query does (NaN last, ties by position), or None when there is none (mixed numbers and text);
        ``full()``: the order computed from scratch."""
        n = self.n
        hit = self._orders.get(key)
        if hit is not None and hit[0] == self.generation:
            self._orders[key] = self._orders.pop(key)
            return hit[1]
        order = None
        if hit is not None:
            changed = self.changed_since(hit[0], max(256, n // 50))
            keys = sort_key() if changed is not None else None
            if keys is not None:
                order = _reorder(hit[1], changed, mask(), keys, n)
        if order is None:
            order = full()
        self._orders.pop(key, None)
        self._orders[key] = (self.generation, order)
        while len(self._orders) > MAX_ORDERS:
            self._orders.pop(next(iter(self._orders)))
        return order

    # -- aggregates -------------------------------------------------------------------------------------------
    def status_counts(self) -> dict[str, int]:
        """Trials per status; a trial that was interrupted and re-run counts once, as its re-run."""
        counts = dict.fromkeys(TRIAL_STATES, 0)
        keep = self.interrupted[:self.n] != 2
        for code, count in enumerate(np.bincount(self.status[:self.n][keep], minlength=len(STATUSES)).tolist()):
            counts[STATUSES[code]] = count
        return counts

    def counted(self) -> int:
        return int((self.interrupted[:self.n] == 0).sum())

    def without_result(self) -> int:
        return int(((self.status[:self.n] == _STATUS_CODE["SUCCEEDED"]) & np.isnan(self.value[:self.n])).sum())

    def positions(self, seqs: Iterable[int]) -> np.ndarray:
        seqs = np.asarray(list(seqs), np.int64)
        pos = np.searchsorted(self.seq[:self.n], seqs)
        ok = pos < self.n
        ok[ok] = self.seq[pos[ok]] == seqs[ok]
        return pos[ok]


def sort_key(col: Column, n: int, descending: bool) -> np.ndarray | None:
    """One float per position that sorts as :func:`sort_order` does (with a stable sort): the number, or the
    text's rank where a column has text only; None for a column with both."""
    kind = col.kind[:n]
    has_text = bool(col.cats) and bool((kind == _TEXT).any())
    if has_text and (kind == _NUM).any():
        return None
    key = np.where(kind == _TEXT, col.ranks()[np.maximum(col.code[:n], 0)], np.nan) if has_text else col.num[:n]
    return -key if descending else key


def _reorder(order: np.ndarray, changed: np.ndarray, mask: np.ndarray, key: np.ndarray, n: int) -> np.ndarray:
    """``order`` (positions sorted by ``key``, NaN last, ties by position) without the ``changed`` positions,
    then with those of them that ``mask`` selects put back in their place."""
    if len(changed):
        gone = np.zeros(n, dtype=bool)
        gone[changed] = True
        order = order[~gone[order]]
    add = changed[mask[changed]] if len(changed) else changed
    if not len(add):
        return order
    add = add[np.lexsort((add, key[add]))]
    sorted_keys = key[order]
    lo = np.searchsorted(sorted_keys, key[add], "left")
    hi = np.searchsorted(sorted_keys, key[add], "right")
    where = lo.copy()
    for i in np.flatnonzero(hi > lo).tolist():   # among equal keys, by position
        where[i] = lo[i] + np.searchsorted(order[lo[i]:hi[i]], add[i])
    return np.insert(order, where, add)


def finite(v: Any) -> float | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def now() -> float:
    return time.time()
