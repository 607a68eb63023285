"""Multi-fidelity methods on learning curves: regret against epochs spent (``benchmarks/tuners.py --curves``).

Each method runs one trial at a time on a curve problem (a loss per configuration and epoch count:
``--curve-suite synthetic``, the made-up curves of ``problems.CURVE_PROBLEMS``; ``sklearn``, the real runs of
``benchmarks/data/learning_curves.npz`` as tables, see ``table_curves.py``; ``all``, both) until it has spent
the epochs TPE without stopping spends on ``--curve-trials`` trials of ``R`` epochs.  Epochs are counted
honestly: a trial costs the epochs it trains; a trial stopped early by an assessor or a pruner costs the epochs it
ran; a configuration that Hyperband/BOHB promote *with continuation* restores its
checkpoint from the rung before and costs only the additional epochs (the loss at ``e`` epochs is the same whether
it was reached in one go or in two).  Regret after ``e`` epochs: the best noise-free loss of the trials ended so
far, each at the epochs it reached (the methods see noisy losses).

Methods (``--optimizers`` picks some; default all):

* ``tpe``: hpo's TpeTuner, every trial ``R`` epochs (the reference);  ``random``: random search, the same;
* ``tpe-asha``: TpeTuner + the ASHA assessor (rungs 1, 3, 9, 27; reduction 3), no sharing: a stopped trial's
  last loss is its result (what the engine does);
* ``hyperband`` / ``hyperband-fresh``: HyperbandTuner (``sampler='tpe'``, eta 3, R = the problem's epochs) with
  and without continuation (``resume``); ``hyperband-random`` / ``hyperband-random-fresh``: plain Hyperband;
* ``bohb``: BohbTuner (min_budget 1, max_budget R, eta 3; continuation on);
* ``optuna-hb``: Optuna's TPESampler (its defaults) + HyperbandPruner(min_resource 1, max_resource R, reduction 3),
  each trial reporting every epoch (a pruned trial costs the epochs it ran).
"""
from __future__ import annotations

import math
import multiprocessing as mp
import statistics
import time
import warnings
from typing import Any, Callable

import numpy as np

from problems import CURVE_PROBLEMS, CurveProblem, get_curve_problem
from table_curves import table_problems

__all__ = ["METHODS", "curves"]

METHODS = ["tpe", "random", "tpe-asha", "hyperband", "hyperband-fresh", "hyperband-random", "hyperband-random-fresh",
           "bohb", "optuna-hb"]
LABELS = {"tpe": "TPE, no stopping", "random": "random, no stopping", "tpe-asha": "TPE + ASHA (no sharing)",
          "hyperband": "Hyperband (tpe sampler), continuation",
          "hyperband-fresh": "Hyperband (tpe sampler), from scratch",
          "hyperband-random": "Hyperband (random), continuation",
          "hyperband-random-fresh": "Hyperband (random), from scratch", "bohb": "BOHB (hpo), continuation",
          "optuna-hb": "Optuna TPE + HyperbandPruner"}
OPTUNA_PARAMS: Callable[..., dict[str, Any]] | None = None  # benchmarks/tuners.py's optuna_params (set by it)
# more configurations to compare (--variant NAME=JSON): a name starting with "bohb" or "hyperband" is that method
# with these constructor arguments on top of its own
VARIANTS: dict[str, dict[str, Any]] = {}


class _Trace:
    """Epochs spent and the best noise-free loss so far, after each trial."""

    def __init__(self, problem: CurveProblem) -> None:
        self.problem, self.spent, self.best, self.points = problem, 0.0, math.inf, []

    def ended(self, params: dict[str, Any], epochs: float, cost: float) -> None:
        self.spent += cost
        self.best = min(self.best, self.problem.fn(params, epochs, noisy=False))
        self.points.append((self.spent, self.best))


def _bracketed(problem: CurveProblem, opt: str, seed: int, epochs: float) -> list[tuple[float, float]]:
    """Hyperband or BOHB, one trial at a time; a continued trial costs its additional epochs only."""
    from tuners.bohb import BohbTuner
    from tuners.hyperband import HyperbandTuner

    trace = _Trace(problem)
    extra = VARIANTS.get(opt, {})
    if opt.startswith("bohb"):
        tuner: Any = BohbTuner(**{"optimize_mode": "minimize", "seed": seed, "min_budget": 1,
                                  "max_budget": problem.R, "eta": 3, **extra})
    else:
        tuner = HyperbandTuner(**{"optimize_mode": "minimize", "seed": seed, "R": problem.R, "eta": 3, "rounds": 50,
                                  "sampler": "random" if opt.startswith("hyperband-random") else "tpe",
                                  "resume": not opt.endswith("-fresh"), **extra})
    tuner.update_search_space(problem.space)
    budget_of: dict[int, float] = {}
    pid = 0
    while trace.spent < epochs:
        pid += 1
        params = tuner.generate_parameters(pid)
        parent = tuner.continues_from(pid)
        budget = params["TRIAL_BUDGET"]
        config = {k: v for k, v in params.items() if k != "TRIAL_BUDGET"}
        loss = problem.fn(config, budget)
        budget_of[pid] = budget
        trace.ended(config, budget, budget - (budget_of[parent] if parent is not None else 0))
        tuner.receive_trial_result(pid, params, loss)
        tuner.trial_end(pid, True)
    return trace.points


def _whole(problem: CurveProblem, opt: str, seed: int, epochs: float) -> list[tuple[float, float]]:
    """TPE or random search, every trial R epochs; ``tpe-asha``: epoch by epoch under the ASHA assessor."""
    from tuners import AshaAssessor, RandomTuner, TpeTuner
    from tuners.assessor import is_bad

    trace = _Trace(problem)
    tuner: Any = RandomTuner(optimize_mode="minimize", seed=seed) if opt == "random" else \
        TpeTuner(optimize_mode="minimize", seed=seed)
    tuner.update_search_space(problem.space)
    asha = AshaAssessor("minimize", reduction_factor=3, min_steps=1, max_steps=problem.R) if opt == "tpe-asha" else None
    pid = 0
    while trace.spent < epochs:
        pid += 1
        params = tuner.generate_parameters(pid)
        if asha is None:
            loss, reached = problem.fn(params, problem.R), problem.R
        else:
            history: list[float] = []
            for e in range(1, problem.R + 1):
                history.append(problem.fn(params, e))
                if is_bad(asha.assess_trial(str(pid), history)):
                    break
            asha.trial_end(str(pid), len(history) == problem.R)
            loss, reached = history[-1], len(history)
        trace.ended(params, reached, reached)
        tuner.receive_trial_result(pid, params, loss)
        tuner.trial_end(pid, True)
    return trace.points


def _optuna_hb(problem: CurveProblem, opt: str, seed: int, epochs: float) -> list[tuple[float, float]]:
    import optuna

    from hpo.search_space import parse_search_space

    assert OPTUNA_PARAMS is not None
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    space = parse_search_space(problem.space)
    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=problem.R, reduction_factor=3)
    # a fixed study name: HyperbandPruner assigns trials to brackets by a hash of the study's name
    study = optuna.create_study(study_name=f"curves-{problem.name}-{seed}", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=pruner, direction="minimize")
    trace = _Trace(problem)
    while trace.spent < epochs:
        trial = study.ask()
        params = OPTUNA_PARAMS(trial, space)
        pruned, loss, e = False, math.nan, 0
        for e in range(1, problem.R + 1):
            loss = problem.fn(params, e)
            trial.report(loss, e)
            if e < problem.R and trial.should_prune():
                pruned = True
                break
        trace.ended(params, e, e)
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, loss)
    return trace.points


SUITES = {"synthetic": lambda: list(CURVE_PROBLEMS), "sklearn": table_problems,
          "all": lambda: list(CURVE_PROBLEMS) + table_problems()}


def problem_named(name: str) -> CurveProblem:
    """A synthetic curve problem, or ``sk_<task>`` of the scikit-learn table."""
    found = [p for p in table_problems() if p.name == name]
    return found[0] if found else get_curve_problem(name)


def run(task: tuple[str, str, int, float]) -> dict[str, Any]:
    problem_name, opt, seed, epochs = task
    problem = problem_named(problem_name)
    runner = _optuna_hb if opt == "optuna-hb" else _bracketed if opt.startswith(("hyperband", "bohb")) else _whole
    t0 = time.process_time()
    trace = runner(problem, opt, seed, epochs)
    return {"problem": problem_name, "optimizer": opt, "seed": seed, "trace": trace, "cpu": time.process_time() - t0}


def best_at(trace: list[tuple[float, float]], e: float) -> float:
    """Best loss after ``e`` epochs (inf before the first trial ended)."""
    best = math.inf
    for spent, b in trace:
        if spent > e + 1e-9:
            break
        best = b
    return best


GRID = np.arange(1, 201) / 200  # the shares of the reference's epochs at which curves are compared


def on_grid(trace: list[tuple[float, float]], total: float) -> np.ndarray:
    """Best loss after each share of ``total`` epochs in GRID (inf before the first trial ended)."""
    spent = np.array([p[0] for p in trace])
    best = np.array([p[1] for p in trace] + [math.inf])  # index -1: nothing ended yet
    return best[np.searchsorted(spent, GRID * total + 1e-9, side="right") - 1]


def _first(curve: np.ndarray, target: float) -> float:
    hit = np.flatnonzero(curve <= target + 1e-12 * max(abs(target), 1.0))  # the same sum in another order
    return float(GRID[hit[0]]) if hit.size else math.inf


def share_interval(method: np.ndarray, reference: np.ndarray, stat: Callable[..., Any],
                   resamples: int = 1000) -> tuple[float, float, float]:
    """The share of the reference's epochs after which ``stat`` (np.median or np.mean over seeds) of the method's best
    loss is down to ``stat`` of the reference's final one (inf: not within them), and a 95% bootstrap interval (seeds
    resampled with replacement, the same draws for both).  Rows: seeds; columns: GRID."""
    point = _first(stat(method, axis=0), float(stat(reference[:, -1])))
    rng = np.random.default_rng(0)
    boot = []
    for _ in range(resamples):
        idx = rng.integers(0, len(method), len(method))
        boot.append(_first(stat(method[idx], axis=0), float(stat(reference[idx, -1]))))
    return point, float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def _mean_interval(values: list[float]) -> tuple[float, float, float]:
    v = np.asarray(values, dtype=float)
    means = v[np.random.default_rng(0).integers(0, len(v), (2000, len(v)))].mean(axis=1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _share(x: float) -> str:
    return f"{x:.0%}" if math.isfinite(x) else "never"


def curves(args: Any, command: str, environment: Callable[[float, int], str],
           table: Callable[[list[str], list[list[str]]], str]) -> None:
    """Run every method on every problem and seed, and print the anytime tables and the targets."""
    problems = [problem_named(p) for p in args.problems.split(",")] if args.problems else \
        SUITES[args.curve_suite]()
    known = METHODS + list(VARIANTS)
    methods = [m for m in (args.optimizers.split(",") if args.optimizers else known) if m in known]
    if "tpe" not in methods:
        methods.insert(0, "tpe")
    seeds = list(range(args.seeds))
    budget = args.curve_trials
    tasks = [(p.name, o, s, budget * p.R) for p in problems for o in methods for s in seeds]
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(args.jobs) as pool:
        results = {(r["problem"], r["optimizer"], r["seed"]): r for r in pool.imap_unordered(run, tasks)}
    elapsed = time.perf_counter() - t0
    print(f"# Multi-fidelity benchmark: regret against epochs on learning curves ({len(problems)} problems, "
          f"{len(seeds)} seeds; the reference, TPE without stopping: {budget} trials of R epochs)")
    print(f"command: `{command}`")
    print(environment(elapsed, args.jobs))
    print("Epochs are counted as trained: a stopped trial costs the epochs it ran, a continued (promoted) trial "
          "only its additional epochs.  Regret: the best noise-free loss of the trials ended so far (minimum 0).  "
          "NNI's BOHB is not run: its advisor imports ConfigSpace and statsmodels (with pandas), which the cached NNI "
          "3.0 venv does not have.")
    fractions = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0]
    verdicts: dict[str, dict[str, tuple[float, float, float, float]]] = {}
    for p in problems:
        total = budget * p.R
        print(f"\n## {p.name}: {p.description} (R = {p.R}; TPE's total: {total} epochs)\n")
        print("Mean regret [95% bootstrap interval] after a share of TPE's epochs:\n")
        rows = []
        for o in methods:
            cells = []
            for f in fractions:
                m, lo, hi = _mean_interval([best_at(results[(p.name, o, s)]["trace"], f * total) for s in seeds])
                cells.append(f"{m:.4g} [{lo:.3g}, {hi:.3g}]" if math.isfinite(m) else "-")
            rows.append([LABELS.get(o, o)] + cells)
        print(table(["method"] + [f"{f:.0%} ({f * total:.0f} ep.)" for f in fractions], rows))
        reference = np.array([on_grid(results[(p.name, "tpe", s)]["trace"], total) for s in seeds])
        finals = list(reference[:, -1])
        verdicts[p.name] = {}
        rows = []
        for o in methods:
            traces = np.array([on_grid(results[(p.name, o, s)]["trace"], total) for s in seeds])
            med = share_interval(traces, reference, np.median)
            mean = share_interval(traces, reference, np.mean)
            verdicts[p.name][o] = (*med, mean[0])
            cpu = statistics.fmean(results[(p.name, o, s)]["cpu"] for s in seeds)
            rows.append([LABELS.get(o, o), f"{_share(med[0])} [{_share(med[1])}, {_share(med[2])}]",
                         f"{_share(mean[0])} [{_share(mean[1])}, {_share(mean[2])}]", f"{cpu:.1f}"])
        print(f"\nShare of TPE's {total} epochs after which the method's median (mean) regret over seeds is down to "
              f"TPE's final median {statistics.median(finals):.4g} (mean {statistics.fmean(finals):.4g}); "
              "95% bootstrap "
              "intervals over seeds:\n")
        print(table(["method", "median curve", "mean curve", "CPU s per run"], rows))
    print("\n## Targets (share of TPE's epochs after which the median regret over seeds is TPE's final median)\n")
    for name, by in verdicts.items():
        for o, bar in (("hyperband", 0.4), ("bohb", 0.3)):
            if o in by:
                med, lo, hi, mean_reach = by[o]
                print(f"- {name}: {LABELS.get(o, o)} {_share(med)} [{_share(lo)}, {_share(hi)}] (mean curves: "
                      f"{_share(mean_reach)}); bar <= {bar:.0%}: {'met' if med <= bar else 'MISSED'}")
