"""Read-side queries for the dashboard: trial pages with sorting and filtering, bulk chart data,
intermediate curves, parameter importance.

Each query is one SQL statement over indexed columns (or one scan of the ``trials`` table for
JSON-valued sorts and filters), run on a worker thread through a read-only connection of its own.
Bulk results are cached against SQLite's ``PRAGMA data_version``, which changes only when the
engine commits a write, so a read-only view (or a quiet experiment) serves them from memory.
"""
from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hpo.storage import DB_NAME, TRIAL_STATES, maximizes
from webui.trial_index import STATUSES, Column, TrialIndex, compare, sort_key, sort_order

__all__ = ["Reader", "QueryError", "parse_filter", "SORT_FIELDS"]

# Sortable fields that are plain columns (API name -> SQL expression); ``param.NAME`` and
# ``metric.KEY`` sort by a parameter or a key of a dict final result.
SORT_FIELDS: dict[str, str] = {
    "seq": "seq", "sequence_id": "seq", "id": "id", "status": "status",
    "value": "final_value", "final_value": "final_value", "duration": "duration",
    "created_at": "created_at", "started_at": "started_at", "ended_at": "ended_at",
    "exit_code": "exit_code", "message": "message", "rerun_of": "rerun_of",
    # legacy store column names (the API's first version sorted by these)
    "parameters": "parameters", "final": "final", "pid": "pid", "pgid": "pgid", "host": "host",
    "gpus": "gpus", "interrupted": "interrupted",
}
_FILTER_RE = re.compile(r"^\s*([A-Za-z_][\w.]*|param\.[^<>=!~]+|metric\.[^<>=!~]+)\s*(>=|<=|!=|==|=|>|<|~)\s*(.*?)\s*$",
                        re.S)
_NUMERIC_FIELDS = {"value", "seq", "duration", "exit_code", "created_at", "started_at", "ended_at"}
_TEXT_FIELDS = {"id", "status", "message"}
_TRIAL_COLS = ("seq", "id", "parameters", "status", "created_at", "started_at", "ended_at", "exit_code",
               "message", "final", "final_value", "gpus", "rerun_of", "interrupted")
_MAX_CURVES = 500
CHART_POINTS = 2000   # trials in a chart's data at most (past that, a sample that keeps the best and the outliers)
CURVE_POINTS = 500    # points of one intermediate curve at most (past that, each slice's lowest and highest)
_BASE_FIELDS = {"seq", "final_value", "created_at", "started_at", "ended_at", "duration", "status"}
_TEXT_AFFINITY = {"id", "status", "message", "host", "parameters", "final", "gpus"}


class QueryError(ValueError):
    """A bad sort, filter or selection (the API answers 400 with this message)."""


def _json_path(key: str) -> str:
    if not key or '"' in key or "\\" in key or len(key) > 200:
        raise QueryError(f"unsupported name {key!r} (empty, too long, or containing a quote or backslash)")
    return f'$."{key}"'


def _field_sql(field: str, now: float) -> tuple[str, list[Any]]:
    """SQL expression (and its arguments) for a sort/filter field."""
    if field.startswith("param."):
        return "json_extract(parameters, ?)", [_json_path(field[6:])]
    if field.startswith("metric."):
        return "(CASE WHEN json_type(final) = 'object' THEN json_extract(final, ?) END)", [_json_path(field[7:])]
    if field == "duration":
        return "(COALESCE(ended_at, ?) - started_at)", [now]
    if field in SORT_FIELDS:
        return SORT_FIELDS[field], []
    raise QueryError(f"unknown field {field!r}; expected one of {', '.join(sorted(set(SORT_FIELDS) - {'final', 'pid', 'pgid'}))}, "
                     "param.NAME or metric.KEY")


def parse_filter(text: str) -> tuple[str, str, Any]:
    """``'param.lr>=0.01'`` -> ``('param.lr', '>=', 0.01)``; ops: >= <= > < == != ~ (contains)."""
    if len(text) > 1000:
        raise QueryError("filter too long")
    m = _FILTER_RE.match(text)
    if not m:
        raise QueryError(f"bad filter {text!r}; expected FIELD OP VALUE, e.g. 'value<0.5', 'param.lr>=1e-3', "
                         "'param.act==relu', 'status==FAILED', 'message~oom'")
    field, op, raw = m.group(1).strip(), m.group(2), m.group(3)
    op = "==" if op == "=" else op
    value: Any = raw
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        value = raw[1:-1]
    elif raw.lower() in ("null", "none"):
        value = None
    elif raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        try:
            value = float(raw)
            if not math.isfinite(value):
                raise QueryError(f"bad filter {text!r}: the value must be finite")
        except ValueError:
            value = raw
    if field in _NUMERIC_FIELDS and op != "~" and value is not None and not isinstance(value, float):
        raise QueryError(f"bad filter {text!r}: {field} compares with a number")
    if op == "~" and not isinstance(value, str):
        value = raw
    if value is None and op not in ("==", "!="):
        raise QueryError(f"bad filter {text!r}: null only compares with == or !=")
    return field, op, value


class Reader:
    """A read-only connection to one experiment's store, shared by the API's worker threads, and the trial
    index (:mod:`webui.trial_index`) that sorts, filters, counts and samples trials without scanning the
    store on every change."""

    def __init__(self, directory: Path) -> None:
        path = Path(directory) / DB_NAME
        if not path.exists():
            raise FileNotFoundError(f"no experiment store at {path}")
        self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=5.0,
                                     isolation_level=None)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[int, float, Any]] = {}
        self.index = TrialIndex(str(path))
        self._meta: OrderedDict[int, tuple[str, dict[str, str]]] = OrderedDict()  # seq -> id, parameters (JSON)
        self._frags: dict[int, tuple[str, ...]] = {}  # seq -> a finished trial's chart columns (JSON)
        self._row_cache: OrderedDict[int, dict[str, Any]] = OrderedDict()  # seq -> a finished trial's page row
        self._row_epoch = self._chart_epoch = 0
        self._chart_prefix: dict[tuple[bool, int], Any] = {}  # (maximize, points) -> _ChartPrefix
        self._curve_cache: OrderedDict[int, tuple[list[int], list[Any], int]] = OrderedDict()  # a finished curve
        self._curve_epoch = 0
        self._chart_lock = threading.Lock()
        self._background: dict[str, threading.Thread] = {}
        self.warming: threading.Thread | None = None
        self._closed = False

    def warm(self) -> threading.Thread:
        """On a thread of its own: load the trial index, with a column per search-space parameter (two scans of
        the store; at 100,000 trials a second or two that the first page would otherwise wait for), then, for a
        large experiment, compute parameter importance and the quartile bands, which the first visit of the charts
        would wait for."""
        def work() -> None:
            try:
                config = json.loads(self.query("SELECT config FROM experiment LIMIT 1")[0][0])
                names = list((config.get("search_space") or {}) if isinstance(config, dict) else {})
                now = time.time()
                self.index.refresh([key for key in (self._column_key(f"param.{n}", now) for n in names[:32]
                                                    if '"' not in n and "\\" not in n) if key is not None])
                if self.index.n >= 2000 and not self._closed:  # (for fewer, the first request is quick)
                    self.importance(maximizes(config))
                    self.refreshed("bands", self._bands, min_age=15.0)
            except (sqlite3.Error, IndexError, ValueError, AttributeError, QueryError):
                pass  # closed meanwhile, or an odd store: the first request loads what it needs
        thread = threading.Thread(target=work, name="hpo-dashboard-index", daemon=True)
        thread.start()
        self.warming = thread
        return thread

    def close(self) -> None:
        self._closed = True
        with self._lock:
            self._conn.close()
        self.index.close()

    def query(self, sql: str, args: list[Any] | tuple[Any, ...] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    def version(self) -> int:
        return self.query("PRAGMA data_version")[0][0]

    def cached(self, key: str, compute: Callable[[], Any], min_age: float = 0.0) -> Any:
        """``compute()`` once per store version (and at most once per ``min_age`` seconds)."""
        version = self.version()
        hit = self._cache.get(key)
        if hit is not None and (hit[0] == version or time.monotonic() - hit[1] < min_age):
            return hit[2]
        value = compute()
        self._cache[key] = (version, time.monotonic(), value)
        if len(self._cache) > 64:
            self._cache.pop(next(iter(self._cache)))
        return value

    def refreshed(self, key: str, compute: Callable[[], Any], min_age: float) -> Any:
        """The last ``compute()`` at once (computed here the first time); when the store has changed since and it
        is older than ``min_age`` seconds, a new one is computed on a thread of its own for the next caller.
        For answers that take longer than a request may (importance, the quartile bands)."""
        version = self.version()
        hit = self._cache.get(key)
        if hit is None:
            return self.cached(key, compute)
        if hit[0] != version and time.monotonic() - hit[1] >= min_age and not self._closed:
            running = self._background.get(key)
            if running is None or not running.is_alive():
                def work() -> None:
                    try:
                        value = compute()
                    except Exception:  # the store went away (closed, replaced): keep the last answer
                        return
                    self._cache[key] = (version, time.monotonic(), value)
                thread = threading.Thread(target=work, name=f"hpo-dashboard-{key}", daemon=True)
                self._background[key] = thread
                thread.start()
        return hit[2]

    # -- trials ------------------------------------------------------------------------------------
    def _column_key(self, field: str, now: float) -> tuple[str, tuple[Any, ...]] | None:
        """The SQL-expression column of the index for a sort/filter field; None for a column it holds anyway."""
        if field.startswith(("param.", "metric.")):
            expr, args = _field_sql(field, now)
            return expr, tuple(args)
        name = SORT_FIELDS.get(field)
        if name is None:
            _field_sql(field, now)  # raises the QueryError naming the fields
        if name in _BASE_FIELDS:
            return None
        return name, ()

    def _column(self, field: str, now: float) -> Column:
        key = self._column_key(field, now)
        if key is None:
            col = self.index.base_column(SORT_FIELDS[field], now)
            assert col is not None
            return col
        return self.index.columns[key]

    def trials_page(self, *, status: list[str] | None = None, filters: list[str] = (),  # type: ignore[assignment]
                    search: str | None = None, sort: str = "seq", descending: bool = False,
                    limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """One page of trials (with their step count and latest intermediate value) and the total.

        The trial index orders and filters every trial in memory (sorting 100,000 trials takes a few ms, and the
        order is kept until the store changes); the page's rows are then read by sequence number."""
        now = time.time()
        status = list(status or [])
        bad = [s for s in status if s not in TRIAL_STATES]
        if bad:
            raise QueryError(f"unknown status {bad[0]!r}; expected one of {', '.join(TRIAL_STATES)}")
        parsed = [parse_filter(text) for text in filters]
        need: list[tuple[str, tuple[Any, ...]]] = []
        clauses: list[tuple[Any, ...]] = []
        for field, op, value in parsed:
            if op == "~":
                expr, eargs = _field_sql(field, now)
                key = (f"instr(lower(CAST({expr} AS TEXT)), lower(?)) > 0", (*eargs, value))
                clauses.append(("sql", key))
                need.append(key)
            else:
                key = self._column_key(field, now)
                if key is not None:
                    need.append(key)
                if SORT_FIELDS.get(field) in _TEXT_AFFINITY and isinstance(value, float):
                    value = self.query("SELECT CAST(? AS TEXT)", (value,))[0][0]  # as SQLite compares it
                clauses.append(("cmp", field, op, value))
        if search:
            key = ("(instr(lower(id), lower(?)) > 0 OR instr(lower(parameters), lower(?)) > 0 OR CAST(seq AS TEXT) = ?)",
                   (search, search, search.lstrip("#")))
            clauses.append(("sql", key))
            need.append(key)
        sort_column = self._column_key(sort, now)
        if sort_column is not None:
            need.append(sort_column)
        by_seq = SORT_FIELDS.get(sort) == "seq"
        index = self.index
        if by_seq and not status and not clauses and index.version < 0:
            # the index is still loading (a server that just started): the first page by sequence number from
            # the store itself, without waiting for it
            total = self.query("SELECT COUNT(*) FROM trials")[0][0]
            seqs = [r[0] for r in self.query(f"SELECT seq FROM trials ORDER BY seq {'DESC' if descending else 'ASC'} "
                                             "LIMIT ? OFFSET ?", (limit, offset))]
            return self._rows(seqs, now), total
        with index.lock:
            index.refresh(need)
            n = index.n
            if by_seq and not status and not clauses:
                total = n
                if descending:
                    chosen = index.seq[max(0, n - offset - limit):max(0, n - offset)][::-1]
                else:
                    chosen = index.seq[offset:offset + limit]
            else:
                def mask() -> np.ndarray:
                    selected = np.ones(n, dtype=bool)
                    if status:
                        selected &= np.isin(index.status[:n], [STATUSES.index(s) for s in status])
                    for clause in clauses:
                        if clause[0] == "sql":
                            col = index.columns[clause[1]]
                            selected &= (col.kind[:n] == 1) & (col.num[:n] != 0)
                        else:
                            selected &= compare(self._column(clause[1], now), n, clause[2], clause[3])
                    return selected

                def keys() -> np.ndarray | None:
                    if by_seq:
                        return -np.arange(n, dtype=float) if descending else np.arange(n, dtype=float)
                    if SORT_FIELDS.get(sort) == "duration":
                        return None  # changes with the clock while trials run
                    return sort_key(self._column(sort, now), n, descending)

                def full() -> np.ndarray:
                    rows = np.flatnonzero(mask())
                    if by_seq:
                        return rows[::-1] if descending else rows
                    return sort_order(self._column(sort, now), rows, descending)
                key = (tuple(status), tuple(filters), search, SORT_FIELDS.get(sort, sort), descending)
                ordered = index.ordered(key, mask, keys, full)
                total = len(ordered)
                chosen = index.seq[ordered[offset:offset + limit]]
            seqs = chosen.tolist()
        return self._rows(seqs, now), total

    def _rows(self, seqs: list[int], now: float) -> list[dict[str, Any]]:
        """The trials page's rows of these trials, in this order.  A finished trial's row never changes again
        (nor do its results), so the rows of the last few thousand finished trials shown are kept."""
        if not seqs:
            return []
        cache = self._row_cache
        if self._row_epoch != self.index.epoch:  # the store was read anew (replaced): forget what was kept
            cache.clear()
            self._row_epoch = self.index.epoch
        found = {s: cache[s] for s in seqs if s in cache}
        missing = [s for s in seqs if s not in found]
        if missing:
            rows = self.query(f"SELECT {', '.join('t.' + c for c in _TRIAL_COLS)}, "
                              "(SELECT COUNT(*) FROM metrics m WHERE m.trial_seq = t.seq AND m.kind = 'intermediate'), "
                              "(SELECT value FROM metrics m WHERE m.trial_seq = t.seq AND m.kind = 'intermediate' "
                              "ORDER BY step DESC LIMIT 1) FROM trials t WHERE t.seq IN "
                              "(SELECT value FROM json_each(?))", (json.dumps(missing),))
            for r in rows:
                row = found[r[0]] = _row_json(r, now)
                if row["status"] not in ("WAITING", "RUNNING"):
                    cache[r[0]] = row
        for s in found:
            if s in cache:
                cache.move_to_end(s)
        while len(cache) > 5000:
            cache.popitem(last=False)
        return [found[s] for s in seqs if s in found]

    def trial_metrics(self, seq: int) -> list[dict[str, Any]]:
        rows = self.query("SELECT kind, step, value, data, ts FROM metrics WHERE trial_seq=? "
                          "ORDER BY kind = 'final', step", (seq,))
        return [{"kind": k, "step": s, "value": _num(v), "data": _loads(d), "ts": t} for k, s, v, d, t in rows]

    def metric_keys(self) -> list[str]:
        """Keys of dict final results (from the latest 500 trials with one)."""
        def compute() -> list[str]:
            rows = self.query("SELECT DISTINCT j.key FROM (SELECT final FROM trials WHERE final IS NOT NULL "
                              "AND json_valid(final) AND json_type(final) = 'object' ORDER BY seq DESC LIMIT 500) f, "
                              "json_each(f.final) j WHERE j.type IN ('integer', 'real') LIMIT 50")
            return sorted(r[0] for r in rows)
        return self.cached("metric_keys", compute, min_age=2.0)

    # -- aggregates (from the trial index: no scan of the store) ------------------------------------------
    def status_counts(self) -> dict[str, int]:
        """Trials per status (a trial that was interrupted and re-run counts once: as its re-run)."""
        with self.index.lock:
            self.index.refresh()
            return self.index.status_counts()

    def counted_trials(self) -> int:
        with self.index.lock:
            self.index.refresh()
            return self.index.counted()

    def count_without_result(self) -> int:
        with self.index.lock:
            self.index.refresh()
            return self.index.without_result()

    def best_seq(self, maximize: bool) -> int | None:
        """The sequence number of the trial with the best final value (the first of equals), as
        ``ExperimentStore.best_trial``."""
        index = self.index
        with index.lock:
            index.refresh()
            n = index.n
            cand = np.flatnonzero(~np.isnan(index.value[:n]) & (index.interrupted[:n] == 0))
            if not len(cand):
                return None
            values = index.value[cand]
            return int(index.seq[cand[int(np.argmax(values) if maximize else np.argmin(values))]])

    # -- charts ------------------------------------------------------------------------------------
    def chart_data(self, maximize: bool = True, points: int = CHART_POINTS) -> bytes:
        """Trials in columns (seq, id, status, value, start, end, created, parameters), as JSON bytes.

        Up to ``points`` trials it is every trial.  Past that it is a sample that keeps what a chart of every
        trial would show (:func:`_chart_rows`): the best trials, the worst, the longest, every running one,
        and per slice of the trial numbers the lowest and the highest value; ``total`` says how many trials
        there are, ``groups`` how many of them each legend entry stands for, ``best`` the best-so-far line
        over every trial (by trial number and by time), and ``duration_bins`` the histogram of every
        trial's duration."""
        index = self.index
        with self._chart_lock:
            with index.lock:
                index.refresh()
                key = f"chart:{maximize}:{points}"
                hit = self._cache.get(key)
                if hit is not None and hit[0] == index.generation:
                    return hit[2]
                if self._chart_epoch != index.epoch:  # the store was read anew (replaced)
                    self._meta.clear()
                    self._frags.clear()
                    self._chart_epoch = index.epoch
                n = index.n
                extra = None
                if n <= points:
                    chosen = np.arange(n)
                else:
                    chosen, extra = _chart_rows(self, index, maximize, points)
                cols = {"seq": index.seq[chosen], "status": index.status[chosen], "value": index.value[chosen],
                        "start": index.started[chosen], "end": index.ended[chosen],
                        "created": index.created[chosen]}
                generation = index.generation
            seqs = cols["seq"].tolist()
            meta = self._trial_meta(seqs)
            rows = self._row_frags(seqs, cols)
            names: dict[str, None] = {}
            for s in seqs:
                names.update(dict.fromkeys(meta[s][1]))
            # JSON assembled from each trial's fragments (kept: a finished trial's never change)
            parts = ['{"version":', str(self.version()), ',"count":', str(len(seqs)), ',"total":', str(n),
                     ',"sampled":', "true" if n > points else "false", ',"seq":[', ",".join(map(str, seqs)),
                     '],"id":[', ",".join([meta[s][0] for s in seqs]), "]"]
            for j, name in enumerate(("status", "value", "start", "end", "created")):
                parts += [f',"{name}":[', ",".join([r[j] for r in rows]), "]"]
            parts.append(',"params":{')
            params = [meta[s][1] for s in seqs]
            parts.append(",".join(f"{json.dumps(name)}:[" + ",".join([p.get(name, "null") for p in params]) + "]"
                                  for name in names))
            parts.append("}")
            if extra is not None:
                parts += [',"summary":', json.dumps(extra, separators=(",", ":"), allow_nan=False)]
            parts.append("}")
            body = "".join(parts).encode()
            self._cache[key] = (generation, time.monotonic(), body)
            return body

    def _trial_meta(self, seqs: list[int]) -> dict[int, tuple[str, dict[str, str]]]:
        """Trial id and parameters (chart values), as JSON, by sequence number; kept for the trials charted last
        (neither ever changes)."""
        meta = self._meta
        missing = [s for s in seqs if s not in meta]
        for start in range(0, len(missing), 5000):
            for seq, tid, params in self.query("SELECT seq, id, parameters FROM trials WHERE seq IN "
                                               "(SELECT value FROM json_each(?))",
                                               (json.dumps(missing[start:start + 5000]),)):
                p = _loads(params)
                meta[seq] = (json.dumps(tid), {k: _json(_scalar(v)) for k, v in p.items()} if isinstance(p, dict)
                             else {})
        out = {}
        for s in seqs:
            if s in meta:
                meta.move_to_end(s)
                out[s] = meta[s]
            else:  # gone (a store replaced under us): charted without a name
                out[s] = ('""', {})
        while len(meta) > 3 * CHART_POINTS:
            meta.popitem(last=False)
        return out

    def _row_frags(self, seqs: list[int], cols: dict[str, np.ndarray]) -> list[tuple[str, ...]]:
        """Each trial's status, value, start, end and creation time as JSON; kept for finished trials (whose row
        no longer changes)."""
        frags = self._frags
        out = []
        statuses = cols["status"].tolist()
        values = {name: cols[name].tolist() for name in ("value", "start", "end", "created")}
        for i, s in enumerate(seqs):
            hit = frags.get(s)
            if hit is None:
                status = STATUSES[statuses[i]]
                hit = (f'"{status}"', _json(values["value"][i]), *(_json(round(values[k][i], 3))
                                                                  for k in ("start", "end", "created")))
                if status not in ("WAITING", "RUNNING"):
                    frags[s] = hit
            out.append(hit)
        while len(frags) > 3 * CHART_POINTS:
            frags.pop(next(iter(frags)))
        return out

    def curves(self, trials: list[str] | None, top: int | None, maximize: bool, bands: bool) -> bytes:
        """Intermediate results of some trials (by id, or the ``top`` best plus the running ones), each at most
        ``CURVE_POINTS`` points (past that, the first and last points and each slice's lowest and highest), and
        the per-step median and quartiles over a sample of the trials when ``bands``."""
        key = f"curves:{','.join(trials) if trials is not None else ''}:{top}:{maximize}:{bands}"

        def compute() -> bytes:
            if trials is not None:
                if len(trials) > _MAX_CURVES:
                    raise QueryError(f"at most {_MAX_CURVES} trials at once")
                rows = self.query(f"SELECT seq, id, status, final_value FROM trials WHERE id IN "
                                  f"({','.join('?' * len(trials))}) ORDER BY seq", trials) if trials else []
            else:
                n = min(top or 20, _MAX_CURVES)
                index = self.index
                with index.lock:
                    index.refresh()
                    count = index.n
                    valued = np.flatnonzero(~np.isnan(index.value[:count]))
                    values = -index.value[valued] if maximize else index.value[valued]
                    if len(valued) > n:  # the n best and any equal to the n-th (ties: by sequence number)
                        cut = np.partition(values, n - 1)[n - 1]
                        keep = values <= cut
                        valued, values = valued[keep], values[keep]
                    best = valued[np.lexsort((valued, values))[:n]]
                    picked = index.seq[best].tolist()
                    active = index.positions(sorted(index.active))
                    running = index.seq[active[index.status[active] == STATUSES.index("RUNNING")]][::-1][:50].tolist()
                have = set(picked)
                picked += [s for s in running if s not in have]
                found = {r[0]: r for r in self.query("SELECT seq, id, status, final_value FROM trials WHERE seq IN "
                                                     "(SELECT value FROM json_each(?))", (json.dumps(picked),))}
                rows = [found[s] for s in picked if s in found]
            by_seq: dict[int, dict[str, Any]] = {
                r[0]: {"seq": r[0], "id": r[1], "status": r[2], "value": _num(r[3]), "steps": [], "values": []}
                for r in rows}
            if by_seq:
                cache = self._curve_cache  # a finished trial's curve never changes
                if self._curve_epoch != self.index.epoch:
                    cache.clear()
                    self._curve_epoch = self.index.epoch
                wanted = [s for s in by_seq if s not in cache]
                if wanted:
                    for seq, step, value in self.query(
                            "SELECT trial_seq, step, value FROM metrics WHERE kind='intermediate' AND trial_seq IN "
                            "(SELECT value FROM json_each(?)) ORDER BY trial_seq, step", (json.dumps(wanted),)):
                        c = by_seq[seq]
                        c["steps"].append(step)
                        c["values"].append(_num(value))
                for seq, c in by_seq.items():
                    if seq in cache:
                        c["steps"], c["values"], points = cache[seq]
                        cache.move_to_end(seq)
                    else:
                        points = len(c["steps"])
                        if points > CURVE_POINTS:
                            c["steps"], c["values"] = downsample_curve(c["steps"], c["values"], CURVE_POINTS)
                        if c["status"] not in ("WAITING", "RUNNING"):
                            cache[seq] = (c["steps"], c["values"], points)
                    if points > CURVE_POINTS:
                        c["points"] = points
                while len(cache) > 2 * _MAX_CURVES:
                    cache.popitem(last=False)
            out: dict[str, Any] = {"version": self.version(), "trials": list(by_seq.values())}
            if bands:
                out["bands"] = self.refreshed("bands", self._bands, min_age=15.0)
            return json.dumps(out, separators=(",", ":"), allow_nan=False).encode()
        return self.cached(key, compute)

    def _bands(self) -> dict[str, Any]:
        """Per-step quartiles of the intermediate results over (a sample of at most 500) trials."""
        with self.index.lock:
            self.index.refresh()
            total = self.index.n
            every = max(1, math.ceil(total / 500))
            sample = self.index.seq[:total][::every].tolist()
        rows = self.query("SELECT step, value FROM metrics WHERE kind='intermediate' AND value IS NOT NULL "
                          "AND trial_seq IN (SELECT value FROM json_each(?))", (json.dumps(sample),))
        out: dict[str, Any] = {"step": [], "p25": [], "median": [], "p75": [], "count": [],
                               "trials_sampled": len(sample)}
        if not rows:
            return out
        arr = np.array(rows, dtype=float)
        arr = arr[np.isfinite(arr[:, 1])]
        arr = arr[np.lexsort((arr[:, 1], arr[:, 0]))]
        steps, starts, counts = np.unique(arr[:, 0], return_index=True, return_counts=True)
        if len(steps) > CURVE_POINTS:  # long curves: quartiles at CURVE_POINTS steps spread over them
            keep = np.unique(np.linspace(0, len(steps) - 1, CURVE_POINTS).round().astype(int))
            steps, starts, counts = steps[keep], starts[keep], counts[keep]
        for step, start, count in zip(steps, starts, counts):
            if count < 3:
                continue
            q = np.quantile(arr[start:start + count, 1], [0.25, 0.5, 0.75])
            out["step"].append(int(step))
            out["p25"].append(float(q[0]))
            out["median"].append(float(q[1]))
            out["p75"].append(float(q[2]))
            out["count"].append(int(count))
        return out

    def importance(self, maximize: bool) -> dict[str, Any]:
        """Parameter importance; recomputed on a thread of its own at most every 5 s while the store changes
        (a request gets the last one at once)."""
        return self.refreshed(f"importance:{maximize}", lambda: _importance(self), min_age=5.0)


_WAITING, _RUNNING = STATUSES.index("WAITING"), STATUSES.index("RUNNING")


class _ChartPrefix:
    """What the charts need of the trials before position ``end``, all of them finished when it was made: a
    finished trial's row never changes, so this holds until the store is read anew.  The chart of every trial
    is then this plus the trials from ``end`` on (the running ones, the new ones), which are few; so a chart
    while trials land costs little more than reading those."""

    def __init__(self, index: TrialIndex, maximize: bool, points: int, end: int, width: int) -> None:
        self.epoch, self.end, self.width, self.built_n = index.epoch, end, width, index.n
        self.maximize, self.points = maximize, points
        pos = np.arange(end)
        self.picks = _picks(index, pos, maximize, points)   # best, worst, longest candidates
        self.buckets = _buckets(index, pos, width)          # bucket -> (lowest, highest, first without a value)
        value, status = index.value[:end], index.status[:end]
        finite = np.isfinite(value)
        self.groups = np.bincount(status[finite], minlength=len(STATUSES))
        ended = ~np.isnan(index.ended[:end])
        self.lanes = {st: int((~finite & ended & (status == STATUSES.index(st))).sum()) for st in ("FAILED", "SUCCEEDED")}
        valued = np.flatnonzero(finite)
        run = _running(value[valued], maximize)
        self.seq_records = valued[np.flatnonzero(np.r_[True, run[1:] != run[:-1]])] if len(valued) else valued
        when = _when(index, valued)
        self.time_records = valued[_time_records(when, value[valued], maximize)] if len(valued) else valued
        self.last_when = float(np.nanmax(when)) if len(valued) else -math.inf
        self.last_valued = int(valued[-1]) if len(valued) else -1
        duration = index.ended[:end] - index.started[:end]
        self.durations = np.sort(duration[np.isfinite(duration)])


def _running(values: np.ndarray, maximize: bool) -> np.ndarray:
    return np.maximum.accumulate(values) if maximize else np.minimum.accumulate(values)


def _when(index: TrialIndex, positions: np.ndarray) -> np.ndarray:
    """When each trial's value came: its end, else its start, else its creation."""
    when = index.ended[positions]
    when = np.where(np.isnan(when), index.started[positions], when)
    return np.where(np.isnan(when), index.created[positions], when)


def _time_records(when: np.ndarray, values: np.ndarray, maximize: bool) -> np.ndarray:
    """Indices (into ``when``) of the trials that were the best so far when their value came."""
    if not len(when):
        return np.zeros(0, np.int64)
    order = np.argsort(when, kind="stable")
    run = _running(values[order], maximize)
    return order[np.flatnonzero(np.r_[True, run[1:] != run[:-1]])]


def _picks(index: TrialIndex, positions: np.ndarray, maximize: bool, points: int) -> dict[str, np.ndarray]:
    """Of ``positions``: the best tenth of ``points`` trials and the best itself (the first of equals), the
    worst fortieth, the longest fortieth."""
    value = index.value[positions]
    finite = np.isfinite(value)
    valued, v = positions[finite], value[finite]
    out = {"best": valued[:0], "worst": valued[:0], "longest": valued[:0]}
    if len(valued):
        better = -v if maximize else v
        k_best, k_worst = min(len(valued), max(1, points // 10)), min(len(valued), max(1, points // 40))
        first = valued[better == better.min()].min()   # the best trial itself (the first of equals)
        out["best"] = np.r_[first, valued[np.argpartition(better, k_best - 1)[:k_best]]]
        out["worst"] = valued[np.argpartition(-better, k_worst - 1)[:k_worst]]
    duration = index.ended[positions] - index.started[positions]
    timed = np.flatnonzero(np.isfinite(duration))
    if len(timed):
        k_long = min(len(timed), max(1, points // 40))
        out["longest"] = positions[timed[np.argpartition(-duration[timed], k_long - 1)[:k_long]]]
    return out


def _buckets(index: TrialIndex, positions: np.ndarray, width: int) -> dict[str, np.ndarray]:
    """Per bucket of ``width`` positions (``positions`` ascending): the first trial with the lowest value, the
    first with the highest, and the first without a value; as arrays indexed by bucket (-1: none)."""
    value = index.value[positions]
    finite = np.isfinite(value)
    size = int(positions[-1]) // width + 1 if len(positions) else 0
    out = {k: np.full(size, -1, np.int64) for k in ("low", "high", "none")}
    valued, v = positions[finite], value[finite]
    if len(valued):
        b = valued // width
        starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        run = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(b)]))
        for key, reduce in (("low", np.minimum), ("high", np.maximum)):
            hits = np.flatnonzero(v == reduce.reduceat(v, starts)[run])
            first = hits[np.r_[True, run[hits][1:] != run[hits][:-1]]]
            out[key][b[first]] = valued[first]
    unvalued = positions[~finite]
    if len(unvalued):
        b = unvalued // width
        first = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        out["none"][b[first]] = unvalued[first]
    return out


def _merge_buckets(index: TrialIndex, old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The positions of the prefix's buckets and the tail's, where a bucket has both: the lower (higher) value,
    the earlier trial of equals."""
    out = []
    size = max(len(old["low"]), len(new["low"]))
    for key in ("low", "high", "none"):
        a = np.r_[old[key], np.full(size - len(old[key]), -1, np.int64)]
        b = np.r_[new[key], np.full(size - len(new[key]), -1, np.int64)]
        both = (a >= 0) & (b >= 0)
        pick = np.where(a >= 0, a, b)
        if key != "none" and both.any():
            va, vb = index.value[a[both]], index.value[b[both]]
            take_b = vb < va if key == "low" else vb > va
            pick[np.flatnonzero(both)[take_b]] = b[both][take_b]
        out.append(pick[pick >= 0])
    return out


def _chart_rows(reader: "Reader", index: TrialIndex, maximize: bool, points: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The positions to chart (a sample of at most about ``points`` trials) and the summary of every trial."""
    n = index.n
    status = index.status[:n]
    active = np.flatnonzero((status == _WAITING) | (status == _RUNNING))
    first_active = int(active[0]) if len(active) else n
    key = (maximize, points)
    prefix = reader._chart_prefix.get(key)
    fixed = points // 10 * 2 + points // 40 * 2 + 1
    if (prefix is None or prefix.epoch != index.epoch or first_active - prefix.end > max(2000, n // 20)
            or n > 1.2 * prefix.built_n + 500):
        width = max(1, math.ceil(n / max(1, (points - fixed) // 3)))
        prefix = reader._chart_prefix[key] = _ChartPrefix(index, maximize, points, first_active, width)
    tail = np.arange(prefix.end, n)
    picks = _picks(index, np.r_[prefix.picks["best"], prefix.picks["worst"], prefix.picks["longest"],
                                tail].astype(np.int64), maximize, points)
    keep = [active[-(points // 10):], picks["best"], picks["worst"], picks["longest"]]
    keep += _merge_buckets(index, prefix.buckets, _buckets(index, tail, prefix.width))
    chosen = np.unique(np.concatenate(keep))
    # the summary: the prefix's counts and records, continued over the tail
    value = index.value[:n]
    t_value, t_status = value[prefix.end:], status[prefix.end:]
    t_finite = np.isfinite(t_value)
    counts = prefix.groups + np.bincount(t_status[t_finite], minlength=len(STATUSES))
    groups = {STATUSES[c]: int(k) for c, k in enumerate(counts.tolist()) if k}
    t_ended = ~np.isnan(index.ended[prefix.end:n])
    for st in ("FAILED", "SUCCEEDED"):
        count = prefix.lanes[st] + int((~t_finite & t_ended & (t_status == STATUSES.index(st))).sum())
        if count:
            groups[f"{st}-lane"] = count
    best: dict[str, list[list[float]]] = {}
    t_valued = tail[t_finite]
    cand = np.r_[prefix.seq_records, t_valued].astype(np.int64)
    if len(cand):
        run = _running(value[cand], maximize)
        change = np.flatnonzero(np.r_[True, run[1:] != run[:-1]])
        last_x = int(t_valued[-1]) if len(t_valued) else prefix.last_valued
        pts = [[float(index.seq[cand[i]]), float(run[i])] for i in change]
        if pts[-1][0] != float(index.seq[last_x]):
            pts.append([float(index.seq[last_x]), pts[-1][1]])
        best["seq"] = pts
        cand = np.r_[prefix.time_records, t_valued].astype(np.int64)
        when = _when(index, cand)
        records = _time_records(when, value[cand], maximize)
        pts = [[float(when[i]) * 1000.0, float(value[cand[i]])] for i in records]
        last = max(prefix.last_when, float(np.nanmax(when)))
        if pts[-1][0] != last * 1000.0:
            pts.append([last * 1000.0, pts[-1][1]])
        best["time"] = pts
    else:
        best = {"seq": [], "time": []}
    duration = index.ended[prefix.end:n] - index.started[prefix.end:n]
    duration = duration[np.isfinite(duration)]
    bins: list[list[float]] = []
    total = len(prefix.durations) + len(duration)
    if total:
        parts = [d for d in (prefix.durations[:1], prefix.durations[-1:], duration) if len(d)]
        lo, hi = float(min(p.min() for p in parts)), float(max(p.max() for p in parts))
        k = min(40, max(5, math.ceil(math.sqrt(total))))
        width = (hi - lo) / k or 1.0
        edges = np.searchsorted(prefix.durations, lo + width * np.arange(1, k), side="left")
        counts = np.diff(np.r_[0, edges, len(prefix.durations)])
        counts += np.bincount(np.minimum(k - 1, ((duration - lo) / width).astype(np.int64)), minlength=k)
        bins = [[lo + i * width, lo + (i + 1) * width, int(c)] for i, c in enumerate(counts.tolist())]
    return chosen, {"groups": groups, "best": best, "duration_bins": bins}


def downsample_curve(steps: list[Any], values: list[Any], points: int) -> tuple[list[Any], list[Any]]:
    """At most about ``points`` of a curve: the first and the last point and, per slice of the steps, the
    lowest and the highest value (so no spike or dip disappears), in step order."""
    n = len(steps)
    if n <= points:
        return steps, values
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    buckets = max(1, (points - 2) // 2)
    b = np.arange(n) * buckets // n
    keep = {0, n - 1}
    filled = np.where(np.isnan(v), np.inf, v)
    for lo_hi in (filled, np.where(np.isnan(v), -np.inf, -v)):
        order = np.lexsort((lo_hi, b))
        first = np.flatnonzero(np.r_[True, b[order][1:] != b[order][:-1]])
        keep.update(order[first].tolist())
    idx = sorted(keep)
    return [steps[i] for i in idx], [values[i] for i in idx]


def _importance(reader: Reader) -> dict[str, Any]:
    """How much each parameter explains the final metric: the impurity importance (sums to 1) of a forest of 32
    extremely randomised trees fitted to the metric's ranks over the latest 2,000 trials.

    The forest is grown with numpy alone, every tree and every node of a level at once, so nothing heavy is
    imported and the first answer comes as quickly as the next (a few ms for 100 trials, a quarter of a second
    for 2,000); its importances agree with scikit-learn's random forest to a few hundredths.
    """
    import numpy as np

    rows = reader.query("SELECT parameters, final_value FROM trials WHERE final_value IS NOT NULL "
                        "ORDER BY seq DESC LIMIT 2000")
    params = [p if isinstance(p := _loads(r[0]), dict) else {} for r in rows]
    y = np.array([r[1] for r in rows], dtype=float)
    keep = np.isfinite(y)
    params = [p for p, k in zip(params, keep) if k]
    y = y[keep]
    names = list(dict.fromkeys(k for p in params for k in p))
    result: dict[str, Any] = {"n": int(len(y)), "importances": [], "method": None, "note": None}
    if len(y) < 8 or not names:
        result["note"] = "needs at least 8 trials with a final result"
        return result
    _, tie, ties = np.unique(y, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(ties) - (ties - 1) / 2.0)[tie.reshape(-1)] / len(y)  # average ranks of ties
    columns, kinds = [], []
    for name in names:
        raw = [p.get(name) for p in params]
        nums = [v for v in raw if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(nums) == len(raw):
            columns.append(np.array(nums, dtype=float))
            kinds.append("numeric")
        else:
            labels = [json.dumps(v, sort_keys=True, default=str) for v in raw]
            index = {lab: i for i, lab in enumerate(dict.fromkeys(labels))}
            columns.append(np.array([index[lab] for lab in labels], dtype=float))
            kinds.append("categorical")
    X = np.nan_to_num(np.column_stack(columns), nan=0.0, posinf=0.0, neginf=0.0)
    values = _forest_importance(X, ranks, np)
    result["method"] = ("extremely randomised trees (32, depth 8, latest 2,000 trials) fitted to the metric's ranks; "
                        "impurity-based importance, sums to 1")
    result["importances"] = sorted(({"name": n, "value": float(v), "kind": k} for n, v, k in zip(names, values, kinds)),
                                   key=lambda d: -d["value"])
    return result


def _forest_importance(X: Any, y: Any, np: Any, trees: int = 32, depth: int = 8, min_leaf: int = 3) -> Any:
    """Impurity importance of ``trees`` extremely randomised regression trees (each node splits on the feature
    whose random threshold, the value of one of its trials, lowers the squared error most), grown level by level
    with every node of every tree in the same arrays: an entry is one (tree, trial) pair and its current node."""
    rng = np.random.default_rng(0)
    n, d = X.shape
    rows = np.tile(np.arange(n), trees)
    node = np.repeat(np.arange(trees), n)           # one root per tree
    gain = np.zeros(d)
    for _ in range(depth):
        nodes = int(node.max()) + 1
        yv = y[rows]
        count = np.bincount(node, minlength=nodes).astype(float)
        total, squares = np.bincount(node, yv, nodes), np.bincount(node, yv * yv, nodes)
        order = np.argsort(node, kind="stable")     # entries grouped by node: pick one per node and feature
        first = np.concatenate(([0], np.cumsum(count)[:-1])).astype(int)
        pick = order[first[:, None] + (rng.random((nodes, d)) * count[:, None]).astype(int)]
        left = X[rows] <= X[rows[pick], np.arange(d)][node]                      # (entries, d)
        key = (node[:, None] * d + np.arange(d)).ravel()
        lc, ls, lq = (np.bincount(key, (left * w).ravel(), nodes * d).reshape(nodes, d)
                      for w in (1.0, yv[:, None], (yv * yv)[:, None]))
        rc, rs, rq = count[:, None] - lc, total[:, None] - ls, squares[:, None] - lq
        with np.errstate(divide="ignore", invalid="ignore"):
            drop = (squares - total ** 2 / count)[:, None] - (lq - ls ** 2 / lc) - (rq - rs ** 2 / rc)
        drop[(lc < min_leaf) | (rc < min_leaf)] = -1.0
        best = drop.argmax(axis=1)
        best_drop = drop[np.arange(nodes), best]
        split = best_drop > 1e-12
        np.add.at(gain, best[split], best_drop[split])
        stay = split[node]
        if not stay.any():
            break
        child = np.cumsum(split) - 1                # split nodes renumbered; their children 2c and 2c+1
        right = ~left[np.arange(len(node)), best[node]]
        node, rows = (2 * child[node] + right)[stay], rows[stay]
    return gain / gain.sum() if gain.sum() > 0 else gain


def _row_json(r: tuple, now: float) -> dict[str, Any]:
    rec = dict(zip(_TRIAL_COLS, r[:len(_TRIAL_COLS)]))
    started, ended = rec["started_at"], rec["ended_at"]
    return {"id": rec["id"], "sequence_id": rec["seq"], "parameters": _loads(rec["parameters"]),
            "status": rec["status"], "created_at": rec["created_at"], "started_at": started, "ended_at": ended,
            "duration": None if started is None else (ended if ended is not None else now) - started,
            "exit_code": rec["exit_code"], "message": rec["message"], "final": _loads(rec["final"]),
            "value": _num(rec["final_value"]), "gpus": _loads(rec["gpus"]), "rerun_of": rec["rerun_of"],
            "steps": r[len(_TRIAL_COLS)], "latest": _num(r[len(_TRIAL_COLS) + 1])}


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _num(v: Any) -> float | None:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _json(v: Any) -> str:
    """One chart value as JSON: a non-finite number as null."""
    if v is None:
        return "null"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else "null"
    return json.dumps(v)


def _scalar(v: Any) -> Any:
    """A parameter value for a chart column: numbers and strings as they are, others as JSON text."""
    if v is None or isinstance(v, (str, bool)):
        return v
    if isinstance(v, (int, float)):
        return v if math.isfinite(v) else None
    if isinstance(v, dict) and "_name" in v:
        return str(v["_name"])
    return json.dumps(v, sort_keys=True, default=str)
