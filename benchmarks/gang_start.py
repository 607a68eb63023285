"""Distributed-trial start: time from "trial chosen" to "every process of the gang running", against a
one-process trial's start, side by side in one run (``python benchmarks/orchestration.py --gang 4``).

A trial is chosen when the engine records it (its ``created_at``); a process runs from its first line, which
writes ``time.time()`` to a marker file (the interpreter's start is in both measurements alike).  Locally and,
with ``--remote``, over SSH (one sshd on 127.0.0.1, so the processes of a gang share that one machine there).
Trials run one at a time (concurrency 1) so that each start is measured alone; reported: medians and the ratio.
With ``--warm`` the trials start warm (``trial_warm_start``: every process forked from the zygote, over SSH the
agent's) and cold, side by side.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

MARK = """import os, time
open(os.path.join({folder!r}, os.environ["HPO_TRIAL_ID"] + "-" + os.environ.get("HPO_PROCESS", "only")), "w").write(
    repr(time.time()))
"""


def gang_side(gang: int, trials: int, home: Path, remote: bool, warm: bool = False) -> dict[str, Any]:
    """In a child process: ``trials`` trials of ``gang`` processes (0: one-process trials); start latencies."""
    orchestration = _orchestration()
    os.environ["HPO_HOME"] = str(home)
    code, marks = home / "code", home / "marks"
    code.mkdir(parents=True)
    marks.mkdir()
    (code / "mark.py").write_text(MARK.format(folder=str(marks)))
    from hpo import Experiment
    from tuners import RandomTuner

    exp = Experiment(RandomTuner(seed=0), "remote" if remote else "local")
    if remote:
        machine, options = orchestration._loopback_machine(home)
        exp.config.training_service.machine_list = [{**machine, "max_trials": max(gang, 1)}]
        for key, value in options.items():
            setattr(exp.config.training_service, key, value)
    exp.config.search_space = {"x": {"_type": "uniform", "_value": [0, 1]}}
    exp.config.trial_command = f"{sys.executable} mark.py"
    exp.config.trial_code_directory = code
    exp.config.trial_concurrency = 1
    exp.config.max_trial_number = trials
    exp.config.trial_warm_start = warm
    if gang:
        exp.config.trial_roles = {"worker": {"count": gang}}
        exp.config.distribution = "pytorch"
    exp.run(orchestration.free_port())
    rows = exp.list_trial_jobs()
    latencies, spawned = [], []
    for t in rows:
        started = [float(p.read_text()) for p in marks.glob(f"{t['id']}-*")]
        if t["status"] == "SUCCEEDED" and len(started) == max(gang, 1):
            latencies.append(max(started) - t["created_at"])
            spawned.append(t["started_at"] - t["created_at"])
    latencies, spawned = latencies[1:], spawned[1:]  # the first trial also ships the code (SSH) and warms caches
    return {"gang": gang, "remote": remote, "trials": len(latencies), "median_s": statistics.median(latencies),
            "p90_s": sorted(latencies)[int(0.9 * (len(latencies) - 1))], "spawned_s": statistics.median(spawned)}


def _orchestration() -> Any:
    """benchmarks/orchestration.py as a module (this folder is not on sys.path: its tuners.py would shadow the
    package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("orchestration", Path(__file__).resolve().parent / "orchestration.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def compare(gang: int, trials: int, tmp: Path, remote: bool, run_child: Any, warm: bool = False) -> list[str]:
    """Run the one-process and the gang side by side (alternating, ``trials`` each); the report's lines."""
    here = Path(__file__).resolve()
    lines = []
    for where in (["local"] + ["warm"] * warm + ["ssh"] * remote + ["ssh-warm"] * (remote and warm)):
        results: dict[int, list[dict[str, Any]]] = {0: [], gang: []}
        for round_ in range(3):
            for size in (0, gang):
                results[size].append(run_child([sys.executable, str(here), "--side", str(size), "--trials", str(trials),
                                                "--home", str(tmp / f"g{size}-{where}-{round_}")]
                                               + {"local": [], "warm": ["--warm"], "ssh": ["--remote"],
                                                  "ssh-warm": ["--remote", "--warm"]}[where], 900))
        single = statistics.median(r["median_s"] for r in results[0])
        multi = statistics.median(r["median_s"] for r in results[gang])
        label = {"ssh": "SSH (one sshd on 127.0.0.1)", "local": "local", "warm": "local, warm starts",
                 "ssh-warm": "SSH, warm starts"}[where]
        lines.append(f"{label}: one process {single * 1000:.1f} ms, gang of {gang} {multi * 1000:.1f} ms "
                     f"(ratio {multi / single:.2f}; target <= 1.5); medians of 3 rounds x {trials - 1} trials: "
                     f"{[round(r['median_s'] * 1000, 1) for r in results[0]]} vs "
                     f"{[round(r['median_s'] * 1000, 1) for r in results[gang]]} ms")
        spawn1 = statistics.median(r["spawned_s"] for r in results[0])
        spawn_n = statistics.median(r["spawned_s"] for r in results[gang])
        lines.append(f"  of which the engine's part (trial chosen -> every process spawned, the rest is the "
                     f"interpreters starting): {spawn1 * 1000:.1f} ms vs {spawn_n * 1000:.1f} ms")
    return lines


if __name__ == "__main__":
    import argparse
    sys.path[:] = [p for p in sys.path if p not in (str(Path(__file__).resolve().parent), "")]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, required=True)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--home", required=True)
    ap.add_argument("--remote", action="store_true")
    ap.add_argument("--warm", action="store_true")
    args = ap.parse_args()
    print(json.dumps(gang_side(args.side, args.trials, Path(args.home), args.remote, args.warm)))
