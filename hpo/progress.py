"""Progress of a running experiment, shown where the user is looking.

* in a terminal: a tqdm bar (finished / max trials, then done, failed, running, best);
* in Jupyter: tqdm's notebook widget (when ipywidgets is installed);
* anywhere else (CI logs, ``nohup``, ``| tee``): one summary line every ``LINE_INTERVAL`` seconds
  while something changes, at least every ``QUIET_INTERVAL`` seconds, with an ETA.

At the end one line sums the experiment up (status, counts, best trial).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, TextIO

from hpo.storage import ExperimentStore

__all__ = ["Progress", "Snapshot", "snapshot"]

LINE_INTERVAL = 10.0
QUIET_INTERVAL = 60.0


@dataclass(frozen=True)
class Snapshot:
    """Trial counts and the best finished trial, read from the store."""

    finished: int
    succeeded: int
    failed: int
    running: int
    without_result: int
    best_value: float | None
    best_trial: str | None  # "s5sKN (#6)"

    def text(self, total: int | None = None) -> str:
        parts = [f"{self.finished}/{total}" if total else f"{self.finished} finished",
                 f"{self.succeeded} succeeded", f"{self.failed} failed", f"{self.running} running"]
        if self.without_result:
            parts.append(f"{self.without_result} without result")
        if self.best_trial is not None:
            parts.append(f"best {self.best_value:.6g} (trial {self.best_trial})")
        return ", ".join(parts)


def snapshot(store: ExperimentStore, maximize: bool) -> Snapshot:
    counts = store.status_counts()
    finished = sum(counts[s] for s in ("SUCCEEDED", "FAILED", "EARLY_STOPPED", "USER_CANCELED"))
    best = store.best_trial(maximize, finished_only=True)
    return Snapshot(finished, counts["SUCCEEDED"] + counts["EARLY_STOPPED"], counts["FAILED"], counts["RUNNING"],
                    store.count_without_result(), best["final_value"] if best else None,
                    f"{best['id']} (#{best['seq']})" if best else None)


def _in_notebook() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


class Progress:
    """Follows an experiment's store; call :meth:`update` periodically and :meth:`close` at the end.

    Args:
        store: the experiment's store (read-only).
        total: ``max_trial_number``, if any, or a function giving its current value (it can be updated while the
            experiment runs).
        maximize: the optimisation direction (for "best").
        label: the experiment's id.
        stream: where to write (stderr).
    """

    def __init__(self, store: ExperimentStore, total: int | None | Callable[[], int | None], maximize: bool,
                 label: str, stream: TextIO | None = None) -> None:
        self.store, self.maximize, self.label = store, maximize, label
        self._total = total
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._last_line, self._last_text = 0.0, ""
        self._finished_at_start: int | None = None
        self._bar: Any = None
        if _in_notebook() and _has_widgets():
            from tqdm.notebook import tqdm
            self._bar = tqdm(total=self.total, unit="trial", desc=label)
        elif _is_terminal(self.stream):
            from tqdm import tqdm
            sized = _columns(self.stream) > 0  # a terminal that reports no size (some ptys) gets 100 columns
            self._bar = tqdm(total=self.total, unit="trial", file=self.stream, dynamic_ncols=sized, leave=True,
                             ncols=None if sized else 100, nrows=None if sized else 24, desc=label,
                             bar_format="{desc}: {n_fmt}/{total_fmt} {bar} [{elapsed}]{postfix}")  # postfix: ", ..."

    @property
    def total(self) -> int | None:
        return self._total() if callable(self._total) else self._total

    def update(self) -> None:
        snap = snapshot(self.store, self.maximize)
        if self._bar is not None:
            if self._bar.total != self.total:
                self._bar.total = self.total
            self._bar.n = snap.finished
            parts = snap.text().split(", ")[1:]  # the bar shows the count itself
            self._bar.postfix = ", ".join(parts)
            self._bar.refresh()
            return
        now, text = time.monotonic(), snap.text(self.total)
        due = now - self._last_line >= (LINE_INTERVAL if text != self._last_text else QUIET_INTERVAL)
        if due:
            print(f"hpo: {self.label}: {text}, elapsed {_clock(now - self.started)}{self._eta(snap)}",
                  file=self.stream, flush=True)
            self._last_line, self._last_text = now, text

    def _eta(self, snap: Snapshot) -> str:
        """From the pace since this display started (a resumed experiment's earlier trials do not count)."""
        if self._finished_at_start is None:
            self._finished_at_start = snap.finished
        done_here = snap.finished - self._finished_at_start
        if not self.total or done_here <= 0 or snap.finished >= self.total:
            return ""
        elapsed = time.monotonic() - self.started
        return f", ETA {_clock(elapsed / done_here * (self.total - snap.finished))}"

    def close(self, status: str | None, message: str | None = None) -> None:
        """Close the bar and print the one-line summary of how the experiment ended."""
        if self._bar is not None:
            self.update()
            self._bar.close()
        snap = snapshot(self.store, self.maximize)
        print(f"hpo: experiment {self.label} {status}: {snap.text(self.total)}", file=self.stream, flush=True)
        if message:
            print(f"hpo: {message}", file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def _has_widgets() -> bool:
    import importlib.util
    return importlib.util.find_spec("ipywidgets") is not None
