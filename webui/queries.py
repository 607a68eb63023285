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
        self._chart_lock = threading.Lock()
        self._background: dict[str, threading.Thread] = {}
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
        """The trials page's rows of these trials, in this order."""
        if not seqs:
            return []
        rows = self.query(f"SELECT {', '.join('t.' + c for c in _TRIAL_COLS)}, "
                          "(SELECT COUNT(*) FROM metrics m WHERE m.trial_seq = t.seq AND m.kind = 'intermediate'), "
                          "(SELECT value FROM metrics m WHERE m.trial_seq = t.seq AND m.kind = 'intermediate' "
                          "ORDER BY step DESC LIMIT 1) FROM trials t WHERE t.seq IN (SELECT value FROM json_each(?))",
                          (json.dumps(seqs),))
        by = {r[0]: r for r in rows}
        return [_row_json(by[s], now) for s in seqs if s in by]

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
        trial would show (:func:`_chart_sample`): the best trials, the worst, the longest, every running one,
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
                n = index.n
                chosen = np.arange(n) if n <= points else _chart_sample(index, maximize, points)
                cols = {"seq": index.seq[chosen], "status": index.status[chosen], "value": index.value[chosen],
                        "start": index.started[chosen], "end": index.ended[chosen],
                        "created": index.created[chosen]}
                extra = _chart_summary(index, maximize) if n > points else None
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
                     '],"id":[', ",".join(meta[s][0] for s in seqs), "]"]
            for j, name in enumerate(("status", "value", "start", "end", "created")):
                parts += [f',"{name}":[', ",".join(r[j] for r in rows), "]"]
            parts.append(',"params":{')
            parts.append(",".join(f"{json.dumps(name)}:[" + ",".join(meta[s][1].get(name, "null") for s in seqs) + "]"
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
                    values = index.value[valued]
                    best = valued[np.lexsort((valued, -values if maximize else values))[:n]]
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
                for seq, step, value in self.query(
                        "SELECT trial_seq, step, value FROM metrics WHERE kind='intermediate' AND trial_seq IN "
                        "(SELECT value FROM json_each(?)) ORDER BY trial_seq, step", (json.dumps(list(by_seq)),)):
                    c = by_seq[seq]
                    c["steps"].append(step)
                    c["values"].append(_num(value))
                for c in by_seq.values():
                    if len(c["steps"]) > CURVE_POINTS:
                        c["points"] = len(c["steps"])
                        c["steps"], c["values"] = downsample_curve(c["steps"], c["values"], CURVE_POINTS)
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


def _chart_sample(index: TrialIndex, maximize: bool, points: int) -> np.ndarray:
    """Positions of at most about ``points`` trials that keep what a chart of every trial shows: the best tenth
    of ``points`` trials and the worst fortieth, the longest fortieth, the running and waiting ones (the
    latest, up to a tenth), and per slice of the trial numbers the one with the lowest value, the one with the
    highest, and one without a value; in trial-number order."""
    n = index.n
    value = index.value[:n]
    valued = np.flatnonzero(np.isfinite(value))
    keep = [np.flatnonzero(np.isin(index.status[:n], [STATUSES.index("WAITING"), STATUSES.index("RUNNING")]))
            [-(points // 10):]]
    if len(valued):
        v = value[valued]
        k_best, k_worst = min(len(valued), max(1, points // 10)), min(len(valued), max(1, points // 40))
        better = -v if maximize else v
        keep.append(valued[[int(np.argmin(better))]])  # the best trial itself (the first of equals)
        keep.append(valued[np.argpartition(better, k_best - 1)[:k_best]])
        keep.append(valued[np.argpartition(-better, k_worst - 1)[:k_worst]])
    duration = index.ended[:n] - index.started[:n]
    timed = np.flatnonzero(np.isfinite(duration))
    if len(timed):
        k_long = min(len(timed), max(1, points // 40))
        keep.append(timed[np.argpartition(-duration[timed], k_long - 1)[:k_long]])
    room = max(0, points - sum(len(k) for k in keep))
    buckets = max(1, room // 3)
    if len(valued):
        keep += _bucket_extremes(valued, value[valued], buckets, n)
    unvalued = np.flatnonzero(~np.isfinite(value))
    if len(unvalued):
        b = unvalued * buckets // n
        keep.append(unvalued[np.flatnonzero(np.r_[True, b[1:] != b[:-1]])])
    return np.unique(np.concatenate(keep))


def _bucket_extremes(positions: np.ndarray, values: np.ndarray, buckets: int, n: int) -> list[np.ndarray]:
    """Of ``positions`` (ascending, with their ``values``), per slice of ``buckets`` equal slices of 0..n the
    first with the lowest value and the first with the highest: O(n), no sort."""
    b = positions * buckets // n                     # non-decreasing: each slice is a run
    starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
    run = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(b)]))
    out = []
    for reduce in (np.minimum, np.maximum):
        hits = np.flatnonzero(values == reduce.reduceat(values, starts)[run])
        out.append(positions[hits[np.r_[True, run[hits][1:] != run[hits][:-1]]]])
    return out


def _chart_summary(index: TrialIndex, maximize: bool) -> dict[str, Any]:
    """What a sample cannot say about every trial: legend counts, the best so far, durations' histogram."""
    n = index.n
    value, status = index.value[:n], index.status[:n]
    finite = np.isfinite(value)
    groups: dict[str, int] = {}
    for code, count in enumerate(np.bincount(status[finite], minlength=len(STATUSES)).tolist()):
        if count:
            groups[STATUSES[code]] = count
    ended = ~np.isnan(index.ended[:n])
    for st in ("FAILED", "SUCCEEDED"):
        count = int((~finite & ended & (status == STATUSES.index(st))).sum())
        if count:
            groups[f"{st}-lane"] = count
    best: dict[str, list[list[float]]] = {}
    valued = np.flatnonzero(finite)
    for axis in ("seq", "time"):
        if not len(valued):
            best[axis] = []
            continue
        if axis == "seq":
            xs, vs = index.seq[valued].astype(float), value[valued]
        else:
            when = index.ended[valued]
            when = np.where(np.isnan(when), index.started[valued], when)
            when = np.where(np.isnan(when), index.created[valued], when)
            order = np.argsort(when, kind="stable")
            xs, vs = when[order] * 1000.0, value[valued][order]
        run = np.maximum.accumulate(vs) if maximize else np.minimum.accumulate(vs)
        change = np.flatnonzero(np.r_[True, run[1:] != run[:-1]])
        pts = [[float(xs[i]), float(run[i])] for i in change]
        if change[-1] != len(xs) - 1:
            pts.append([float(xs[-1]), float(run[-1])])
        best[axis] = pts
    duration = index.ended[:n] - index.started[:n]
    duration = duration[np.isfinite(duration)]
    bins: list[list[float]] = []
    if len(duration):
        lo, hi = float(duration.min()), float(duration.max())
        k = min(40, max(5, math.ceil(math.sqrt(len(duration)))))
        width = (hi - lo) / k or 1.0
        counts = np.bincount(np.minimum(k - 1, ((duration - lo) / width).astype(np.int64)), minlength=k)
        bins = [[lo + i * width, lo + (i + 1) * width, int(c)] for i, c in enumerate(counts.tolist())]
    return {"groups": groups, "best": best, "duration_bins": bins}


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
