"""TpeTuner at concurrency 8 against its sequential self, for variants of its pending-point handling.

Usage (from the repository root)::

    python benchmarks/tpe_concurrency.py --tag liar                      # the defaults (constant liar)
    python benchmarks/tpe_concurrency.py --tag lp1 --settings '{"pending_penalty": 1.0}'
    python benchmarks/tpe_concurrency.py --tag liar --problems main      # one suite, scikit-learn included

A fast screen for batch-aware selection: only TpeTuner (``--settings``: fields of ``TpeSettings``
changed after construction, so internal knobs can be compared) at ``--conc`` pending suggestions
(oldest result first, exactly as ``benchmarks/tuners.py`` simulates them), its sequential run and
random search, on ``--problems`` (``synthetic``: the 15 synthetic problems of both suites, default;
``main``, ``holdout`` or names) x ``--seeds`` seeds (default 40).  Runs are cached by tag in
``--cache`` (JSON lines, in the temporary directory by default), so the sequential and random runs are made once.  Prints per-problem
normalised regret at ``--budget`` and the ratio concurrency / sequential of the mean normalised
regret with a 90% bootstrap interval over seeds, as ``benchmarks/tuners.py`` does (the reference
minimum of a problem without a known one is the best loss in the cache).
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import dataclasses
import importlib.util
import json
import multiprocessing as mp
import sys
import tempfile
import time
from typing import Any

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(0, os.path.dirname(_HERE))

from problems import HOLDOUT_PROBLEMS, PROBLEMS, get_problem  # noqa: E402

_spec = importlib.util.spec_from_file_location("_tuner_bench", os.path.join(_HERE, "tuners.py"))
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def run(task: tuple[str, str, dict[str, Any], int, int, int]) -> dict[str, Any]:
    pname, tag, settings, seed, conc, budget = task
    problem = get_problem(pname)
    bench.TPE_VARIANTS.clear()
    bench.TPE_VARIANTS["tpe"] = {}
    if tag == "random":
        losses, overhead = bench.run_hpo("random", problem, seed, budget, 1)
        return {"key": f"{pname}|{tag}|{seed}", "losses": losses, "overhead": overhead}
    from tuners import TpeTuner

    init = TpeTuner.__init__

    def patched(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.settings = dataclasses.replace(self.settings, **settings)

    TpeTuner.__init__ = patched  # type: ignore[method-assign]
    try:
        losses, overhead = bench.run_hpo("tpe", problem, seed, budget, conc)
    finally:
        TpeTuner.__init__ = init  # type: ignore[method-assign]
    return {"key": f"{pname}|{tag}|{seed}", "losses": losses, "overhead": overhead}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tag", required=True, help="name of the concurrent variant (cache key)")
    ap.add_argument("--settings", default="{}", help="JSON: TpeSettings fields of the concurrent variant")
    ap.add_argument("--seq", default="seq", help="tag of the sequential runs (defaults)")
    ap.add_argument("--conc", type=int, default=8, help="pending suggestions (default 8)")
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--problems", default="synthetic", help="synthetic | main | holdout | comma-separated names")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "hpo_tpe_concurrency.jsonl"),
                    help="JSON-lines file of runs by (problem, tag, seed)")
    a = ap.parse_args(argv)
    if a.problems == "synthetic":
        probs = [p.name for p in PROBLEMS + HOLDOUT_PROBLEMS if p.kind != "sklearn"]
    elif a.problems in ("main", "holdout"):
        probs = [p.name for p in (PROBLEMS if a.problems == "main" else HOLDOUT_PROBLEMS)]
    else:
        probs = a.problems.split(",")
    cache: dict[str, Any] = {}
    if os.path.exists(a.cache):
        with open(a.cache) as f:
            for line in f:
                r = json.loads(line)
                cache[r["key"]] = r
    tasks = [(p, tag, st, s, conc, a.budget)
             for tag, st, conc in ((a.tag, json.loads(a.settings), a.conc), ("random", {}, 1), (a.seq, {}, 1))
             for p in probs for s in range(a.seeds) if f"{p}|{tag}|{s}" not in cache]
    t0 = time.time()
    with mp.get_context("fork").Pool(a.jobs) as pool, open(a.cache, "a") as f:
        for r in pool.imap_unordered(run, tasks):
            f.write(json.dumps(r) + "\n")
            f.flush()
            cache[r["key"]] = r
    print(f"command: `{bench._command()}`; {len(tasks)} runs in {time.time() - t0:.0f} s")
    tags = (a.tag, a.seq, "random")
    r = {tag: np.zeros((len(probs), a.seeds)) for tag in tags}
    for i, p in enumerate(probs):
        problem = get_problem(p)
        found = min(min(c["losses"]) for k, c in cache.items() if k.startswith(p + "|"))
        ref = found if problem.optimum is None else min(problem.optimum, found)
        for tag in tags:
            for s in range(a.seeds):
                r[tag][i, s] = max(min(cache[f"{p}|{tag}|{s}"]["losses"][:a.budget]) - ref, 0.0)

    def norm(tag: str, idx: np.ndarray) -> np.ndarray:
        return bench._normalised(r[tag][:, idx].mean(1), r["random"][:, idx].mean(1))

    def ratio(idx: np.ndarray) -> float:
        return float(norm(a.tag, idx).mean() / norm(a.seq, idx).mean())

    rng = np.random.default_rng(0)
    boot = [ratio(rng.integers(0, a.seeds, a.seeds)) for _ in range(2000)]
    every = np.arange(a.seeds)
    n1, n0 = norm(a.tag, every), norm(a.seq, every)
    for i, p in enumerate(probs):
        print(f"  {p:18s} sequential {n0[i]:.3f}  {a.tag} {n1[i]:.3f}")
    print(f"{a.tag} (concurrency {a.conc}) / sequential: {n1.mean():.3f} / {n0.mean():.3f} = {ratio(every):.3f} "
          f"(90% interval [{np.percentile(boot, 5):.3f}, {np.percentile(boot, 95):.3f}]; {len(probs)} problems, "
          f"{a.seeds} seeds, normalised regret @{a.budget})")


if __name__ == "__main__":
    main()
