"""The progress bar shown by ``run()`` and ``hpo create --foreground`` (tqdm)."""
from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

from hpo.storage import ExperimentStore

__all__ = ["ProgressBar", "progress_text"]


def progress_text(store: ExperimentStore, maximize: bool) -> tuple[int, str]:
    """(finished trial count, 'done 3 | failed 1 | running 2 | best 0.93 (#4)')."""
    counts = store.status_counts()
    finished = sum(counts[s] for s in ("SUCCEEDED", "FAILED", "EARLY_STOPPED", "USER_CANCELED"))
    best = store.best_trial(maximize)
    best_text = f"{best['final_value']:.6g} (#{best['seq']})" if best else "-"
    text = (f"done {counts['SUCCEEDED']} | failed {counts['FAILED']} | running {counts['RUNNING']} | "
            f"best {best_text}")
    return finished, text


class ProgressBar:
    """A tqdm bar over finished trials with done/failed/running and the best value so far."""

    def __init__(self, store: ExperimentStore, total: int | None, maximize: bool) -> None:
        self.store, self.maximize = store, maximize
        self.started = time.monotonic()
        self.bar = tqdm(total=total, unit="trial", file=sys.stderr, dynamic_ncols=True, leave=True,
                        disable=None, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}] {postfix}")

    def update(self) -> None:
        finished, text = progress_text(self.store, self.maximize)
        self.bar.n = finished
        self.bar.set_postfix_str(text, refresh=False)
        self.bar.refresh()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()
