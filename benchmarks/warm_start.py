"""Warm trial starts (issue 16), side by side in one run: ``python benchmarks/orchestration.py --warm``.

Each case runs in its own child process (``--side CASE``), so its CPU and memory are its own:

* ``fn-cold`` / ``fn-warm``: 200 zero-work function trials (``trial_function``), concurrency 2, each trial a fresh
  interpreter or a child forked from the experiment's zygote;
* ``cmd-cold`` / ``cmd-warm``: the same as ``python hpo_trial.py`` command trials (``trial_warm_start: true``);
* ``optuna-sqlite`` / ``optuna-memory``: Optuna's random sampler on the same objective, in-process (no isolation),
  with SQLite storage (persisted, like hpo) and in memory;
* ``sklearn-cold`` / ``sklearn-warm``: function trials whose module imports scikit-learn;
* ``utilisation``: 1-second warm function trials at concurrency 16: the trials' own busy seconds over
  (first start to last end) x 16 slots, and the same in steady state (from the moment every slot has started a trial
  to the start of the last round: without the run's ramp-up and tail);
* with ``--remote``, ``ssh-cold`` / ``ssh-warm``: the command trials over SSH (a real sshd on 127.0.0.1, see
  ``orchestration.py --remote``), fresh interpreters against forks of the agent's zygote.

Reported: trials/s (median of ``--repeat`` runs), the engine's CPU per trial (the engine thread's), and ratios.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPACE = {"x": {"_type": "uniform", "_value": [0, 1]}, "y": {"_type": "choice", "_value": [1, 2, 3, 4, 5]}}
CASES = ["fn-cold", "fn-warm", "cmd-cold", "cmd-warm", "optuna-sqlite", "optuna-memory", "sklearn-cold",
         "sklearn-warm"]


def engine_cpu() -> float:
    """CPU seconds of the engine's thread so far (0 when it is not running)."""
    import psutil
    ids = {t.native_id for t in threading.enumerate() if t.name == "hpo-engine"}
    return sum(t.user_time + t.system_time for t in psutil.Process().threads() if t.id in ids)


def hpo_case(case: str, trials: int, concurrency: int, home: Path) -> dict:
    os.environ["HPO_HOME"] = str(home)
    sys.path[:0] = [str(ROOT), str(HERE)]
    from hpo import Experiment
    from tuners import RandomTuner

    kind, _, mode = case.partition("-")
    exp = Experiment(RandomTuner(seed=0), "remote" if kind == "ssh" else "local")
    c = exp.config
    if kind == "ssh":
        import importlib.util
        spec = importlib.util.spec_from_file_location("orchestration", HERE / "orchestration.py")
        orchestration = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(orchestration)  # type: ignore[union-attr]
        machine, options = orchestration._loopback_machine(home)
        c.training_service.machine_list = [{**machine, "max_trials": concurrency}]
        for key, value in options.items():
            setattr(c.training_service, key, value)
    c.search_space = SPACE if case != "utilisation" else {"x": SPACE["x"]}
    c.trial_concurrency, c.max_trial_number = concurrency, trials
    c.trial_code_directory = HERE
    if kind in ("cmd", "ssh"):
        c.trial_command = f"{sys.executable} hpo_trial.py"
    elif kind == "sklearn":
        from warm_sklearn_trial import with_sklearn
        c.trial_function = with_sklearn
    else:
        import warm_trials
        c.trial_function = warm_trials.one_second if kind == "utilisation" else warm_trials.zero
    c.trial_warm_start = mode != "cold"
    t0 = time.time()
    exp.start(0)
    cpu0 = engine_cpu()
    exp.wait()
    cpu1 = engine_cpu()
    seconds = time.time() - t0
    data = exp.export_data()
    exp.stop()
    out = {"case": case, "trials": trials, "completed": len(data), "seconds": round(seconds, 3),
           "trials_per_s": round(len(data) / seconds, 2),
           "engine_cpu_ms_per_trial": round((cpu1 - cpu0) * 1000 / max(1, len(data)), 3),
           "pairing_mismatches": sum(1 for d in data if case != "utilisation" and
                                     abs(d["parameter"]["x"] * 1000 + d["parameter"]["y"] - d["default"]) > 1e-6)}
    if case == "utilisation":
        starts = [d["value"]["start"] for d in data]
        ends = [d["value"]["end"] for d in data]
        busy = sum(e - s for s, e in zip(starts, ends))
        out["utilisation"] = round(busy / ((max(ends) - min(starts)) * concurrency), 4)
        # steady state: from the moment every slot has started its first trial to the start of the last round
        a, b = sorted(starts)[concurrency - 1], sorted(ends)[-concurrency]
        if b > a:
            inside = sum(max(0.0, min(e, b) - max(s, a)) for s, e in zip(starts, ends))
            out["utilisation_steady"] = round(inside / ((b - a) * concurrency), 4)
    return out


def optuna_case(case: str, trials: int, tmp: Path) -> dict:
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp / 'optuna.db'}" if case == "optuna-sqlite" else None
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")

    def objective(trial):
        return trial.suggest_float("x", 0, 1) * 1000 + trial.suggest_categorical("y", [1, 2, 3, 4, 5])

    t0 = time.time()
    study.optimize(objective, n_trials=trials)
    seconds = time.time() - t0
    return {"case": case, "trials": trials, "completed": trials, "seconds": round(seconds, 3),
            "trials_per_s": round(trials / seconds, 2), "engine_cpu_ms_per_trial": None, "pairing_mismatches": 0}


def side(case: str, trials: int, concurrency: int, home: Path) -> dict:
    if case.startswith("optuna"):
        return optuna_case(case, trials, home)
    return hpo_case(case, trials, concurrency, home)


def compare(trials: int, repeat: int, tmp: Path, run_child, remote: bool = False) -> list[str]:
    """Run every case ``repeat`` times (alternating, so a passing load falls on all alike); the report's lines."""
    cases = CASES + ["ssh-cold", "ssh-warm"] * remote
    runs: dict[str, list[dict]] = {case: [] for case in cases + ["utilisation"]}
    counts = {"sklearn-cold": max(10, trials // 10), "utilisation": 160}
    for i in range(repeat):
        for case in cases + ["utilisation"]:
            n = counts.get(case, trials)
            concurrency = 16 if case == "utilisation" else 2
            runs[case].append(run_child([sys.executable, __file__, "--side", case, "--trials", str(n),
                                         "--concurrency", str(concurrency), "--home", str(tmp / f"{case}-{i}")], 1800))
            print(f"{case} run {i + 1}: {runs[case][-1]['trials_per_s']} trials/s", file=sys.stderr)

    def med(case: str, key: str = "trials_per_s") -> float:
        values = [r[key] for r in runs[case] if r[key] is not None]
        return statistics.median(values) if values else float("nan")

    lines = [f"{'case':16}{'trials':>8}{'trials/s (median)':>20}{'engine CPU ms/trial':>22}   runs (trials/s)"]
    for case in cases:
        lines.append(f"{case:16}{runs[case][0]['trials']:>8}{med(case):>20.1f}"
                     f"{med(case, 'engine_cpu_ms_per_trial'):>22.2f}   {[r['trials_per_s'] for r in runs[case]]}")
    util = runs["utilisation"]
    lines += [
        f"warm vs cold function trials: {med('fn-warm') / med('fn-cold'):.1f}x; warm vs cold command trials: "
        f"{med('cmd-warm') / med('cmd-cold'):.1f}x",
        f"warm function trials vs Optuna with SQLite storage (in-process, not isolated): "
        f"{med('fn-warm') / med('optuna-sqlite'):.1f}x",
        f"scikit-learn trials, warm vs cold: {med('sklearn-warm') / med('sklearn-cold'):.1f}x",
        *([f"command trials over SSH, warm vs cold: {med('ssh-warm') / med('ssh-cold'):.1f}x"] if remote else []),
        f"1-second trials at concurrency 16 ({util[0]['trials']} trials): utilisation "
        f"{statistics.median(r['utilisation'] for r in util):.2%} (runs {[r['utilisation'] for r in util]}); in "
        f"steady state (every slot started, before the last round) "
        f"{statistics.median(r.get('utilisation_steady', float('nan')) for r in util):.2%}",
        f"pairing mismatches: {sum(r['pairing_mismatches'] for rs in runs.values() for r in rs)}",
    ]
    return lines


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", required=True)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--home", required=True)
    a = ap.parse_args()
    Path(a.home).mkdir(parents=True, exist_ok=True)
    print(json.dumps(side(a.side, a.trials, a.concurrency, Path(a.home))))
