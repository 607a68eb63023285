"""hpo's MedianstopAssessor against NNI 3.0's own MedianstopAssessor, call for call.

NNI's class runs in NNI's venv (tests/nni_support.py) over generated call sequences (several trials
interleaved, ties, trials that fail or end before ``start_step``, ids that end twice or were never seen,
both optimize modes); hpo's class answers the same calls here; every answer must be the same.
"""
from __future__ import annotations

import json
import random
import subprocess
import textwrap

import pytest

from nni_support import nni_python, nni_venv
from tuners.assessor import AssessResult
from tuners.medianstop import MedianstopAssessor

NNI_SIDE = """
    import json, logging, sys
    logging.disable(logging.CRITICAL)
    from nni.algorithms.hpo.medianstop_assessor import MedianstopAssessor
    from nni.assessor import AssessResult
    out = []
    for sc in json.load(sys.stdin):
        a = MedianstopAssessor(optimize_mode=sc["mode"], start_step=sc["start_step"])
        answers = []
        for call in sc["calls"]:
            if call[0] == "assess":
                answers.append(a.assess_trial(call[1], call[2]) is AssessResult.Good)
            else:
                a.trial_end(call[1], call[2])
        out.append(answers)
    print(json.dumps(out))
"""


def scenario(rng: random.Random) -> dict:
    """Trials interleaved as on several workers: each reports values one by one, then ends."""
    mode = rng.choice(["maximize", "minimize"])
    start_step = rng.choice([0, 0, 1, 2, 3, 5])
    grid = rng.choice([None, 0.5, 1.0])          # quantised values make ties between trials and with the median
    n_trials, workers = rng.randint(1, 14), rng.randint(1, 4)
    pending = [f"t{i}" for i in range(n_trials)]
    running: dict[str, tuple[list[float], int, float]] = {}
    calls: list[list] = []
    while pending or running:
        while pending and len(running) < workers:
            tid = pending.pop(0)
            if rng.random() < 0.1 and calls:            # an id seen before comes back (a retry with its id)
                tid = rng.choice([c[1] for c in calls])
            running[tid] = ([], rng.randint(1, 9), rng.uniform(-2, 2))
        tid = rng.choice(sorted(running))
        history, length, level = running[tid]
        if len(history) < length:
            value = level + rng.gauss(0.3 * len(history), 1.0)
            history.append(round(value / grid) * grid if grid else value)
            calls.append(["assess", tid, list(history)])
        else:
            del running[tid]
            calls.append(["end", tid, rng.random() < 0.8])
        if rng.random() < 0.02:
            calls.append(["end", "never-seen", True])
    return {"mode": mode, "start_step": start_step, "calls": calls}


def hpo_answers(sc: dict) -> list[bool]:
    a = MedianstopAssessor(optimize_mode=sc["mode"], start_step=sc["start_step"])
    answers = []
    for call in sc["calls"]:
        if call[0] == "assess":
            answers.append(a.assess_trial(call[1], call[2]) == AssessResult.Good)
        else:
            a.trial_end(call[1], call[2])
    return answers


def test_medianstop_decides_like_nnis_own_class():
    venv = nni_venv()
    if isinstance(venv, str):
        pytest.skip(venv)
    rng = random.Random(20240515)
    scenarios = [scenario(rng) for _ in range(600)]
    done = subprocess.run([nni_python(venv), "-c", textwrap.dedent(NNI_SIDE)], input=json.dumps(scenarios),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    nni = json.loads(done.stdout.strip().splitlines()[-1])
    total = stops = 0
    mismatches = []
    for i, (sc, theirs) in enumerate(zip(scenarios, nni, strict=True)):
        ours = hpo_answers(sc)
        total += len(ours)
        stops += ours.count(False)
        mismatches += [(i, k) for k, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    assert total > 10_000 and stops > 1_000          # the histories do exercise stopping
    assert mismatches == [], f"{len(mismatches)} of {total} decisions differ from NNI's, first: {mismatches[:5]}"
