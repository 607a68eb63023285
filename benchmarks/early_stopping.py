"""Early-stopping benchmark: every stopping rule on learning curves from real scikit-learn training runs.

Usage (from the repository root)::

    python benchmarks/early_stopping.py                 # every rule, every task, 30 seeds, budgets 40 and 100
    python benchmarks/early_stopping.py --seeds 5 --budget 40 --rules evidence,asha     # a quick look

(About 40 minutes on one busy core, most of it in Optuna's pruners; ``--jobs 2`` halves it where two
cores are free.)

The data are ``benchmarks/data/learning_curves.npz``, written by ``benchmarks/learning_curves.py``: nine
tasks (gradient boosting by stages, MLPs with warm-up schedules, Adam, SGD and passive-aggressive models by
epoch), 250 sampled configurations each, 30 steps of real training per configuration.  Three of them
(``gb_cancer``, ``mlp_reg``, ``pa_clf``) were generated after EvidenceStopAssessor's defaults were fixed on
the other six: a holdout.  For each task and seed the simulation runs random search over the task's table
(a seeded order of its configurations, the same for every rule) on 4 asynchronous workers: each step of a
trial costs one epoch; after every step the rule sees the trial's values so far and keeps or stops it; a
stopped trial ends with its last value as its result (as hpo's engine records it), a trial that reaches the
last step ends with its final value, and its worker starts the next configuration at once.  The run ends
when ``--budget`` x 30 epochs are spent (the cost of that many full trials; 40 and 100 by default).

Score: the area under the best-so-far regret curve over the epochs spent (regret: the table's best final
value minus the best result so far, capped at the regret of the table's median final, which is also the
regret before any result), divided by the same area without early stopping, per task (mean over seeds of
each, seeds paired); lower is better, 1 is no gain.  The table gives the mean over tasks and the worst
task, each with a 95% bootstrap interval over seeds, the holdout tasks' mean and worst, and every task's
ratio.

Rules: ``none``; hpo's ``medianstop`` (defaults: ``start_step`` 0), ``asha`` (defaults) and ``evidence``
(EvidenceStopAssessor, defaults); Optuna's ``optuna-median`` (MedianPruner), ``optuna-sha``
(SuccessiveHalvingPruner) and ``optuna-hyperband`` (HyperbandPruner), each with its defaults and driven
through ``ask``/``report``/``should_prune``/``tell``; ``nni-medianstop``: NNI 3.0's own
MedianstopAssessor (defaults), run by NNI's interpreter from the venv of ``tests/nni_support.py`` (built on
first use; the rule is skipped with a note where NNI cannot be installed).
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data" / "learning_curves.npz"
# run as a script, this folder is first on sys.path, and its tuners.py is named like the `tuners` package:
# the repository root takes its place
if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path[0] = str(ROOT)
WORKERS = 4
HOLDOUT = ("gb_cancer", "mlp_reg", "pa_clf")   # added after EvidenceStopAssessor's defaults were fixed
RULES = ["none", "medianstop", "asha", "evidence", "optuna-median", "optuna-sha", "optuna-hyperband",
         "nni-medianstop"]
LABELS = {"none": "no early stopping", "medianstop": "hpo MedianstopAssessor", "asha": "hpo AshaAssessor",
          "evidence": "hpo EvidenceStopAssessor", "optuna-median": "Optuna MedianPruner",
          "optuna-sha": "Optuna SuccessiveHalvingPruner", "optuna-hyperband": "Optuna HyperbandPruner",
          "nni-medianstop": "NNI Medianstop (NNI 3.0's class)"}


# ------------------------------------------------------------------------------------------------
# data

def load_tasks(path: str | Path = DATA) -> dict[str, dict[str, Any]]:
    """task -> {"curves": configs x steps (float64), "mode": "maximize" | "minimize", "about": ...}."""
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        return {task: {"curves": data[f"{task}/curves"].astype(np.float64), "mode": info["mode"],
                       "metric": info["metric"], "about": info["about"]}
                for task, info in meta["tasks"].items()}


# ------------------------------------------------------------------------------------------------
# rules: keep(trial, history) -> bool after every step; end(trial, completed) once

class NoStopping:
    def keep(self, trial: int, history: list[float]) -> bool:
        return True

    def end(self, trial: int, completed: bool) -> None:
        pass


class AssessorRule:
    """An hpo or NNI assessor (``assess_trial`` / ``trial_end``), as the engine drives it."""

    def __init__(self, assessor: Any) -> None:
        self.assessor = assessor

    def keep(self, trial: int, history: list[float]) -> bool:
        return bool(self.assessor.assess_trial(str(trial), history).value)

    def end(self, trial: int, completed: bool) -> None:
        self.assessor.trial_end(str(trial), completed)


class OptunaRule:
    """An Optuna pruner through a study's ask/tell interface (one Optuna trial per configuration)."""

    def __init__(self, pruner: Any, mode: str) -> None:
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(direction=mode, pruner=pruner, sampler=optuna.samplers.RandomSampler(0),
                                         storage=optuna.storages.InMemoryStorage())
        self.trials: dict[int, Any] = {}
        self.last: dict[int, float] = {}

    def keep(self, trial: int, history: list[float]) -> bool:
        t = self.trials.get(trial)
        if t is None:
            t = self.trials[trial] = self.study.ask()
        t.report(history[-1], len(history))
        self.last[trial] = history[-1]
        return not t.should_prune()

    def end(self, trial: int, completed: bool) -> None:
        import optuna
        t = self.trials.pop(trial)
        if completed:
            self.study.tell(t, self.last.pop(trial))
        else:
            self.study.tell(t, state=optuna.trial.TrialState.PRUNED)
            self.last.pop(trial, None)


def make_rule(name: str, mode: str) -> Any:
    if name == "none":
        return NoStopping()
    if name == "medianstop":
        from tuners.medianstop import MedianstopAssessor
        return AssessorRule(MedianstopAssessor(optimize_mode=mode))
    if name == "asha":
        from tuners.asha import AshaAssessor
        return AssessorRule(AshaAssessor(optimize_mode=mode))
    if name == "evidence":
        from tuners.evidence import EvidenceStopAssessor
        return AssessorRule(EvidenceStopAssessor(optimize_mode=mode))
    if name == "nni-medianstop":  # only in NNI's interpreter (see run_nni)
        import logging
        logging.disable(logging.CRITICAL)
        from nni.algorithms.hpo.medianstop_assessor import MedianstopAssessor as NniMedianstop
        return AssessorRule(NniMedianstop(optimize_mode=mode))
    import optuna
    pruners: dict[str, Callable[[], Any]] = {"optuna-median": optuna.pruners.MedianPruner,
                                             "optuna-sha": optuna.pruners.SuccessiveHalvingPruner,
                                             "optuna-hyperband": optuna.pruners.HyperbandPruner}
    return OptunaRule(pruners[name](), mode)


# ------------------------------------------------------------------------------------------------
# simulation

def simulate(curves: np.ndarray, mode: str, rule: Any, seed: int, budget: int,
             workers: int = WORKERS) -> dict[str, Any]:
    """One run of random search with ``rule`` on ``workers`` asynchronous workers until ``budget`` epochs are
    spent.  Returns the normalised area under the best-so-far regret curve and counts."""
    n, steps = curves.shape
    sign = 1.0 if mode == "maximize" else -1.0
    scores = sign * curves                       # higher is better from here on
    finals = scores[:, -1]
    best, cap = float(finals.max()), float(best_minus(finals))
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n) for _ in range(budget // n + 2)])
    next_config = 0
    running: list[list[Any]] = []                # [trial number, config, steps done]
    started = stopped = 0
    incumbent = -np.inf
    regret_sum, spent = 0.0, 0

    def start() -> list[Any]:
        nonlocal next_config, started
        trial = [started, int(order[next_config]), 0]
        next_config += 1
        started += 1
        return trial

    running = [start() for _ in range(workers)]
    while spent < budget:
        for w in range(workers):
            if spent >= budget:
                break
            trial = running[w]
            trial[2] += 1
            spent += 1
            k, cfg = trial[2], trial[1]
            history = [float(v) for v in curves[cfg, :k]]
            ended = False
            if k == steps:
                rule.keep(trial[0], history)
                rule.end(trial[0], True)
                incumbent = max(incumbent, scores[cfg, k - 1])
                ended = True
            elif not rule.keep(trial[0], history):
                rule.end(trial[0], False)
                incumbent = max(incumbent, scores[cfg, k - 1])
                stopped += 1
                ended = True
            regret_sum += min(best - incumbent, cap)
            if ended:
                running[w] = start()
    return {"auc": regret_sum / budget / max(cap, 1e-300), "started": started, "stopped": stopped}


def best_minus(finals: np.ndarray) -> float:
    """The regret cap: the table's best final minus its median final (a random configuration's level)."""
    return float(finals.max() - np.median(finals))


# ------------------------------------------------------------------------------------------------
# running it

_TASKS: dict[str, dict[str, Any]] = {}


def _init(path: str) -> None:
    _TASKS.update(load_tasks(path))


def run_one(job: tuple[str, str, int, int]) -> tuple[str, str, int, dict[str, Any]]:
    rule, task, seed, budget = job
    t = _TASKS[task]
    return rule, task, seed, simulate(t["curves"], t["mode"], make_rule(rule, t["mode"]), seed, budget)


def run_nni(tasks: list[str], seeds: list[int], budget: int, path: str) -> dict[tuple[str, int], dict[str, Any]] | str:
    """NNI's MedianstopAssessor, run by this file under NNI's interpreter; or why it cannot run."""
    sys.path.insert(0, str(ROOT / "tests"))
    from nni_support import nni_python, nni_venv
    venv = nni_venv()
    if isinstance(venv, str):
        return venv
    cmd = [nni_python(venv), __file__, "--nni-worker", "--tasks", ",".join(tasks), "--seeds", str(len(seeds)),
           "--first-seed", str(seeds[0]), "--budget", str(budget), "--data", path]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return f"NNI's run failed: {done.stderr.strip().splitlines()[-1:]}"
    return {(task, seed): res for task, seed, res in json.loads(done.stdout)}


def bootstrap(per_seed: dict[str, dict[str, np.ndarray]], base: dict[str, np.ndarray], reps: int = 2000,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Resampled (mean over tasks, worst task) of the ratio, seeds resampled with replacement (paired)."""
    rng = np.random.default_rng(seed)
    tasks = list(base)
    n = len(base[tasks[0]])
    idx = rng.integers(0, n, size=(reps, n))
    ratios = np.stack([per_seed[t][idx].mean(1) / base[t][idx].mean(1) for t in tasks], axis=1)
    return ratios.mean(1), ratios.max(1)


def report(results: dict[tuple[str, str, int], dict[str, Any]], rules: list[str], tasks: list[str],
           seeds: list[int], notes: list[str]) -> str:
    base = {t: np.array([results["none", t, s]["auc"] for s in seeds]) for t in tasks}
    rows, per_task_rows = [], []
    for rule in rules:
        if not all((rule, t, s) in results for t in tasks for s in seeds):
            continue
        per_seed = {t: np.array([results[rule, t, s]["auc"] for s in seeds]) for t in tasks}
        ratio = {t: per_seed[t].mean() / base[t].mean() for t in tasks}
        means, worsts = bootstrap(per_seed, base)
        mean, worst = float(np.mean(list(ratio.values()))), max(ratio.values())
        held = [ratio[t] for t in tasks if t in HOLDOUT]
        started = np.mean([results[rule, t, s]["started"] for t in tasks for s in seeds])
        worst_task = max(ratio, key=ratio.get)
        rows.append([LABELS[rule], f"{mean:.3f} [{np.quantile(means, 0.025):.3f}, {np.quantile(means, 0.975):.3f}]",
                     f"{worst:.3f} ({worst_task}) [{np.quantile(worsts, 0.025):.3f}, {np.quantile(worsts, 0.975):.3f}]",
                     f"{np.mean(held):.3f} / {max(held):.3f}" if held else "-", f"{started:.0f}"])
        per_task_rows.append([LABELS[rule]] + [f"{ratio[t]:.3f}" for t in tasks])
    out = [f"{len(tasks)} tasks x {len(seeds)} seeds, {WORKERS} workers; score = area under the best-so-far "
           "regret curve / the same without early stopping (lower is better; 95% bootstrap intervals over seeds)",
           "", _table(["rule", "mean over tasks", "worst task", "holdout tasks: mean / worst", "trials started"], rows),
           "", _table(["rule", *[f"{t}*" if t in HOLDOUT else t for t in tasks]], per_task_rows),
           "* holdout: tasks added after EvidenceStopAssessor's defaults were fixed"]
    return "\n".join(out + [f"note: {n}" for n in notes])


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=30, help="seeds per task and rule (default 30)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--budget", default="40,100",
                    help="comma-separated budgets, in full trials' epochs (default 40,100)")
    ap.add_argument("--rules", default=",".join(RULES), help=f"comma-separated (default: {','.join(RULES)})")
    ap.add_argument("--tasks", default=None, help="comma-separated (default: every task in the data)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1: none)")
    ap.add_argument("--nni-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    tasks_all = load_tasks(args.data)
    tasks = args.tasks.split(",") if args.tasks else list(tasks_all)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    steps = next(iter(tasks_all.values()))["curves"].shape[1]
    _init(args.data)
    if args.nni_worker:  # in NNI's interpreter: only NNI's rule
        budget = int(args.budget) * steps
        print(json.dumps([[t, s, run_one(("nni-medianstop", t, s, budget))[3]] for t in tasks for s in seeds]))
        return
    rules = args.rules.split(",")
    if "none" not in rules:
        rules.insert(0, "none")
    command = "python benchmarks/early_stopping.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for full_trials in [int(b) for b in args.budget.split(",")]:
        t0 = time.monotonic()
        budget = full_trials * steps
        notes: list[str] = []
        results: dict[tuple[str, str, int], dict[str, Any]] = {}
        jobs = [(r, t, s, budget) for r in rules if r != "nni-medianstop" for t in tasks for s in seeds]
        if args.jobs > 1:
            with mp.get_context("fork").Pool(args.jobs, initializer=_init, initargs=(args.data,)) as pool:
                done = pool.imap_unordered(run_one, jobs, chunksize=4)
                results.update({(r, t, s): res for r, t, s, res in done})
        else:
            results.update({(r, t, s): res for r, t, s, res in map(run_one, jobs)})
        if "nni-medianstop" in rules:
            nni = run_nni(tasks, seeds, full_trials, args.data)
            if isinstance(nni, str):
                notes.append(f"NNI Medianstop skipped: {nni}")
            else:
                results.update({("nni-medianstop", t, s): res for (t, s), res in nni.items()})
        print(f"## budget: {full_trials} full trials ({budget} epochs)\n")
        print(report(results, rules, tasks, seeds, notes))
        print(f"\n{len(seeds)} seeds, {time.monotonic() - t0:.0f} s; command: {command}\n", flush=True)


if __name__ == "__main__":
    main()
