"""Contract tests every built-in assessor must pass.

An assessor is listed in ``ASSESSORS`` with class args that let it stop trials in these short workloads;
every test runs for every assessor.  The workloads are trials on 4 workers reporting interleaved, as the
engine calls an assessor (one call at a time, ``trial_end`` once per trial).
"""
from __future__ import annotations

import random

import pytest

from tuners.assessor import Assessor, AssessResult, create_assessor

# name -> class args for these workloads
ASSESSORS: dict[str, dict] = {"medianstop": {"start_step": 2}, "asha": {"max_steps": 12},
                              "evidencestop": {"min_completed": 4}}


def workload(seed: int, n_trials: int = 24, steps: int = 12, workers: int = 4) -> list[tuple]:
    """Calls of ``n_trials`` trials on ``workers`` workers: ('assess', id, history) after each value,
    ('end', id, success) at the end (a few fail, a few end early).  Curves of mixed quality and shape."""
    rng = random.Random(seed)
    plans = []
    for i in range(n_trials):
        level, rate, noise = rng.uniform(0, 1), rng.uniform(0.02, 0.3), rng.uniform(0, 0.05)
        length = steps if rng.random() < 0.85 else rng.randint(1, steps)
        values = [level * (1 - (1 - rate) ** k) + rng.gauss(0, noise) for k in range(1, length + 1)]
        plans.append((f"trial-{i}", values, rng.random() < 0.9))
    calls: list[tuple] = []
    queue, running = list(plans), []
    while queue or running:
        while queue and len(running) < workers:
            running.append([*queue.pop(0), 0])
        trial = rng.choice(running)
        tid, values, success, done = trial
        if done < len(values):
            trial[3] += 1
            calls.append(("assess", tid, values[:done + 1]))
        else:
            running.remove(trial)
            calls.append(("end", tid, success))
    return calls


def answers(assessor: Assessor, calls: list[tuple], stop_bad: bool = True) -> list[bool]:
    """Drive ``assessor`` through ``calls`` as the engine does (a stopped trial reports nothing more and
    ends unsuccessful when ``stop_bad``); the answers, True for Good."""
    out, stopped = [], set()
    for call in calls:
        if call[1] in stopped:
            continue
        if call[0] == "assess":
            result = assessor.assess_trial(call[1], list(call[2]))
            assert isinstance(result, AssessResult)
            out.append(result.value)
            if stop_bad and not result.value:
                stopped.add(call[1])
                assessor.trial_end(call[1], False)
        else:
            assessor.trial_end(call[1], call[2])
    return out


@pytest.fixture(params=sorted(ASSESSORS))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def make(name: str, mode: str = "maximize") -> Assessor:
    return create_assessor(name, {**ASSESSORS[name], "optimize_mode": mode})


def test_found_by_name_and_checks_its_arguments(name):
    assessor = make(name)
    assert isinstance(assessor, Assessor) and assessor.optimize_mode == "maximize"
    assert type(create_assessor(name.upper(), ASSESSORS[name])) is type(assessor)
    with pytest.raises(ValueError, match="optimize_mode"):
        make(name, "sideways")
    with pytest.raises(ValueError, match="bad class_args"):
        create_assessor(name, {"no_such_argument": 1})


def test_the_first_trial_is_never_stopped(name):
    calls = [("assess", "only", [0.1 * k for k in range(1, j + 1)]) for j in range(1, 13)]
    assert all(answers(make(name), calls))


def test_it_stops_something_and_keeps_something(name):
    """Not vacuous: on these workloads every assessor stops some trials and lets others finish."""
    out = [a for seed in range(5) for a in answers(make(name), workload(seed))]
    assert 0 < out.count(False) < out.count(True)


def test_deterministic(name):
    for seed in range(5):
        assert answers(make(name), workload(seed)) == answers(make(name), workload(seed))


def test_minimize_mirrors_maximize(name):
    for seed in range(5):
        calls = workload(seed)
        flipped = [(c[0], c[1], [-v for v in c[2]]) if c[0] == "assess" else c for c in calls]
        assert answers(make(name), calls) == answers(make(name, "minimize"), flipped)


def test_resumed_from_a_replayed_history_it_answers_the_same(name):
    """What the engine does on resume: a fresh assessor is shown every finished trial's values again, step by
    step, in trial order (not the order they ran or ended in), then ``trial_end``; from then on it answers
    every call as the assessor that saw the first run did."""
    for seed in range(5):
        first, rest = workload(seed), workload(seed + 100)
        rest = [(c[0], "r" + c[1], *c[2:]) for c in rest]
        original = make(name)
        before = answers(original, first)
        finished: dict[str, tuple[list[float], bool]] = {}
        history: dict[str, list[float]] = {}
        k = 0
        for call in first:                               # what the store keeps: values, then how it ended
            if call[1] in finished:
                continue
            if call[0] == "assess":
                history[call[1]] = list(call[2])
                if not before[k]:
                    finished[call[1]] = (history[call[1]], False)
                k += 1
            else:
                finished[call[1]] = (history.get(call[1], []), call[2])
        resumed = make(name)
        for tid in sorted(finished, key=lambda t: int(t.split("-")[1])):
            values, success = finished[tid]
            for j in range(1, len(values) + 1):
                resumed.assess_trial(tid, values[:j])
            resumed.trial_end(tid, success)
        assert answers(resumed, rest) == answers(original, rest)


def test_unknown_and_repeated_ends_are_harmless(name):
    assessor = make(name)
    assessor.trial_end("never-assessed", True)
    assessor.trial_end("never-assessed", False)
    assert assessor.assess_trial("a", [0.5]).value is True
    assessor.trial_end("a", True)
    assessor.trial_end("a", True)
