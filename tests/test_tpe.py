"""TpeTuner: validity on every space type, determinism, resume, discrete exhaustion, quality, parallel use.

"As if it never stopped" (resume), precisely: let tuner A (seed s) run *sequentially*
(``generate_parameters`` for trial t, then ``receive_trial_result`` and ``trial_end`` for t, then
t + 1, ...) for n trials.  A new tuner B with the same class arguments and space that is given
``import_data`` of those n records, in the same order (as dicts that went through JSON, as the
store keeps them), then suggests exactly what A suggests from trial n on, bit for bit, as long
as both receive the same results.  The tests below check this inside and after the random
start-up phase, in both modes, on a space with nested choices.
"""
from __future__ import annotations

import json
import math
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpo.search_space import parse_search_space
from test_search_space import ALL_NNI
from tuners import NoMoreTrials, RandomTuner, TpeTuner, create_tuner, tuner_class

MIXED = {  # the ten NNI types (a boolean option added to the choice), a Polyaxon form, nested choices
    **ALL_NNI,
    "c": {"_type": "choice", "_value": ["a", 2, 3.5, True]},
    "lin": {"linspace": "0:1:5"},
    "model": {"_type": "choice", "_value": [
        {"_name": "svm", "C": {"_type": "loguniform", "_value": [1e-2, 1e2]}, "kernel": "rbf"},
        {"_name": "tree", "depth": {"_type": "randint", "_value": [1, 8]},
         "split": {"_type": "choice", "_value": [
             {"_name": "gini", "w": {"_type": "quniform", "_value": [0, 1, 0.25]}}, "entropy"]}},
        {"_name": "none"},
    ]},
}


def objective(params: dict[str, Any]) -> float:
    """A deterministic, arbitrary value of any point (same in every process)."""
    return (zlib.crc32(json.dumps(params, sort_keys=True, default=str).encode()) % 10007) / 10007.0


def run(tuner: Any, space: dict[str, Any], n: int, fn=objective, start: int = 0) -> list[dict[str, Any]]:
    tuner.update_search_space(space) if tuner.space is None else None
    out = []
    for i in range(start, start + n):
        p = tuner.generate_parameters(i)
        out.append(p)
        tuner.receive_trial_result(i, p, fn(p))
        tuner.trial_end(i, True)
    return out


def bits(points: list[dict[str, Any]]) -> str:
    """Points with every float written as its exact bit pattern."""
    def enc(v: Any) -> Any:
        if isinstance(v, float):
            return "f" + struct.pack("<d", v).hex()
        if isinstance(v, dict):
            return {k: enc(x) for k, x in v.items()}
        return v
    return json.dumps([enc(p) for p in points], sort_keys=True)


# -- every suggestion lies in its space ------------------------------------------------------------

def _numeric_spec(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["randint", "uniform", "quniform", "loguniform", "qloguniform", "normal",
                                 "qnormal", "lognormal", "qlognormal", "linspace", "values"]))
    if kind == "randint":
        low = draw(st.integers(-5, 5))
        return {"_type": kind, "_value": [low, low + draw(st.integers(1, 6))]}
    if kind in ("uniform", "quniform"):
        low = draw(st.integers(-10, 10)) / 2
        high = low + draw(st.sampled_from([0.5, 1, 3, 20]))
        if kind == "quniform":
            return {"_type": kind, "_value": [low, high, draw(st.sampled_from([0.1, 0.25, 1, 2]))]}
        return {"_type": kind, "_value": [low, high]}
    if kind in ("loguniform", "qloguniform"):
        low = draw(st.sampled_from([1e-5, 0.01, 0.5, 1, 3]))
        high = low * draw(st.sampled_from([2, 10, 1000]))
        if kind == "qloguniform":
            return {"_type": kind, "_value": [low, high, draw(st.sampled_from([0.01, 0.5, 1, 5]))]}
        return {"_type": kind, "_value": [low, high]}
    if kind in ("normal", "qnormal", "lognormal", "qlognormal"):
        mu = draw(st.integers(-3, 3))
        sigma = draw(st.sampled_from([0.1, 1, 4]))
        if kind.startswith("q"):
            return {"_type": kind, "_value": [mu, sigma, draw(st.sampled_from([0.1, 1, 2]))]}
        return {"_type": kind, "_value": [mu, sigma]}
    if kind == "linspace":
        return {"linspace": f"0:1:{draw(st.integers(1, 6))}"}
    return {"_type": "choice", "_value": draw(st.lists(st.one_of(st.integers(-3, 3), st.sampled_from(["x", "y", "z"]),
                                                                 st.booleans()), min_size=1, max_size=4, unique=True))}


@st.composite
def spaces(draw: Any, depth: int = 0) -> dict[str, Any]:
    n = draw(st.integers(1, 4))
    space: dict[str, Any] = {}
    for i in range(n):
        if depth < 2 and draw(st.integers(0, 4)) == 0:
            options = []
            for j in range(draw(st.integers(1, 3))):
                sub = draw(spaces(depth + 1)) if draw(st.booleans()) else {}
                options.append({"_name": f"o{j}", **sub})
            if draw(st.booleans()):
                options.append("plain")
            space[f"p{depth}_{i}"] = {"_type": "choice", "_value": options}
        else:
            space[f"p{depth}_{i}"] = _numeric_spec(draw)
    return space


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space=spaces(), multivariate=st.booleans(), seed=st.integers(0, 1000))
def test_every_suggestion_lies_in_its_space(space: dict[str, Any], multivariate: bool, seed: int) -> None:
    parsed = parse_search_space(space)
    tuner = TpeTuner(seed=seed, multivariate=multivariate, n_startup_trials=4)
    tuner.update_search_space(space)
    for i in range(16):
        try:
            p = tuner.generate_parameters(i)
        except NoMoreTrials:
            assert parsed.is_discrete
            break
        assert parsed.contains(p), p
        tuner.receive_trial_result(i, p, objective(p))
    # parallel suggestions (constant liar) too
    for i in range(16, 20):
        try:
            assert parsed.contains(tuner.generate_parameters(i))
        except NoMoreTrials:
            assert parsed.is_discrete


@pytest.mark.parametrize("multivariate", [True, False])
def test_all_types_and_nested_choices_in_both_modes(multivariate: bool) -> None:
    parsed = parse_search_space(MIXED)
    tuner = TpeTuner(seed=3, multivariate=multivariate, n_startup_trials=5)
    points = run(tuner, MIXED, 40)
    assert all(parsed.contains(p) for p in points)
    assert {p["model"]["_name"] for p in points} == {"svm", "tree", "none"}
    assert all(p["model"]["kernel"] == "rbf" for p in points if p["model"]["_name"] == "svm")  # constants kept


# -- determinism and resume ------------------------------------------------------------------------------

@pytest.mark.parametrize("multivariate", [True, False])
def test_seeded_run_is_reproducible_bit_for_bit(multivariate: bool) -> None:
    a = run(TpeTuner(seed=11, multivariate=multivariate, n_startup_trials=5), MIXED, 30)
    b = run(TpeTuner(seed=11, multivariate=multivariate, n_startup_trials=5), MIXED, 30)
    c = run(TpeTuner(seed=12, multivariate=multivariate, n_startup_trials=5), MIXED, 30)
    assert bits(a) == bits(b)
    assert bits(a) != bits(c)


@pytest.mark.parametrize("multivariate", [True, False])
@pytest.mark.parametrize("stop_after", [3, 17])  # inside and after the random start-up phase
def test_import_data_then_continue_equals_an_uninterrupted_run(multivariate: bool, stop_after: int) -> None:
    args = {"seed": 5, "multivariate": multivariate, "n_startup_trials": 6}
    original = TpeTuner(**args)
    first = run(original, MIXED, stop_after)
    rest = run(original, MIXED, 12, start=stop_after)

    records = json.loads(json.dumps([{"parameter": p, "value": objective(p)} for p in first]))
    resumed = TpeTuner(**args)
    resumed.update_search_space(MIXED)
    resumed.import_data(records)
    assert bits(run(resumed, MIXED, 12, start=1000)) == bits(rest)


def test_resume_replays_failed_trials_too() -> None:
    """A trial that failed (no result) is imported with value None and the run continues identically."""
    original = TpeTuner(seed=9, n_startup_trials=4)
    original.update_search_space(MIXED)
    records = []
    for i in range(12):
        p = original.generate_parameters(i)
        if i in (2, 7):
            original.trial_end(i, False)
            records.append({"parameter": p, "value": None})
        else:
            original.receive_trial_result(i, p, objective(p))
            original.trial_end(i, True)
            records.append({"parameter": p, "value": objective(p)})
    rest = run(original, MIXED, 8, start=12)
    resumed = TpeTuner(seed=9, n_startup_trials=4)
    resumed.update_search_space(MIXED)
    resumed.import_data(json.loads(json.dumps(records)))
    assert bits(run(resumed, MIXED, 8, start=500)) == bits(rest)


def test_class_args_recreate_the_tuner() -> None:
    tuner = TpeTuner(optimize_mode="minimize", seed=4, multivariate=False, gamma=0.2, n_ei_candidates=30)
    args = tuner.class_args()
    assert {"optimize_mode", "seed", "multivariate", "n_startup_trials", "gamma", "prior_weight",
            "n_ei_candidates", "constant_liar"} <= set(args)
    again = create_tuner("tpe", json.loads(json.dumps(args)))
    assert again.class_args() == args
    assert tuner_class("TPE") is TpeTuner is tuner_class("tpe")
    assert bits(run(tuner, MIXED, 15)) == bits(run(again, MIXED, 15))


def test_bad_arguments_are_rejected() -> None:
    for kwargs in ({"gamma": 0}, {"gamma": 1.5}, {"prior_weight": 0}, {"n_ei_candidates": 0},
                   {"bandwidth": "wide"}, {"optimize_mode": "up"}):
        with pytest.raises(ValueError):
            TpeTuner(**kwargs)


# -- discrete spaces: no duplicates, then NoMoreTrials --------------------------------------------------

DISCRETE = {
    "c": {"_type": "choice", "_value": ["a", "b", "c"]},
    "k": {"_type": "randint", "_value": [0, 4]},
    "q": {"_type": "quniform", "_value": [0, 1, 0.5]},
    "m": {"_type": "choice", "_value": [{"_name": "x", "d": {"_type": "randint", "_value": [0, 2]}}, "y"]},
}  # 3 * 4 * 3 * (2 + 1) = 108 points


@pytest.mark.parametrize("multivariate", [True, False])
@pytest.mark.parametrize("report", [True, False])  # results come back, or every trial stays pending
def test_discrete_space_no_duplicates_until_exhausted(multivariate: bool, report: bool) -> None:
    parsed = parse_search_space(DISCRETE)
    assert parsed.grid_size() == 108
    tuner = TpeTuner(seed=1, multivariate=multivariate, n_startup_trials=5)
    tuner.update_search_space(DISCRETE)
    seen = []
    with pytest.raises(NoMoreTrials):
        for i in range(200):
            p = tuner.generate_parameters(i)
            seen.append(json.dumps(p, sort_keys=True))
            if report:
                tuner.receive_trial_result(i, p, objective(p))
    assert len(seen) == 108 == len(set(seen))
    with pytest.raises(NoMoreTrials):
        tuner.generate_parameters(999)


def test_discrete_space_imported_points_are_not_suggested_again() -> None:
    rnd = RandomTuner(seed=0)
    rnd.update_search_space(DISCRETE)
    imported = {json.dumps(p, sort_keys=True): p for p in (rnd.generate_parameters(i) for i in range(60))}
    tuner = TpeTuner(seed=2)
    tuner.update_search_space(DISCRETE)
    tuner.import_data([{"parameter": p, "value": objective(p)} for p in imported.values()])
    fresh = set()
    with pytest.raises(NoMoreTrials):
        for i in range(200):
            p = tuner.generate_parameters(i)
            key = json.dumps(p, sort_keys=True)
            assert key not in imported and key not in fresh
            fresh.add(key)
            tuner.receive_trial_result(i, p, objective(p))
    assert len(fresh) + len(imported) == 108


# -- optimisation quality and direction --------------------------------------------------------------

SPACE_2D = {"x": {"_type": "uniform", "_value": [-5, 10]}, "y": {"_type": "uniform", "_value": [0, 15]}}


def branin(p: dict[str, Any]) -> float:
    x, y = p["x"], p["y"]
    return (y - 5.1 / (4 * math.pi ** 2) * x ** 2 + 5 / math.pi * x - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x) + 10


def test_tpe_beats_random_search_clearly_on_a_2d_function() -> None:
    """Branin, 60 trials, 6 seeds: TPE's mean regret is under a fifth of random search's."""
    optimum = 0.397887
    regret = {}
    for name in ("tpe", "random"):
        bests = []
        for seed in range(6):
            tuner = create_tuner(name, {"optimize_mode": "minimize", "seed": seed})
            points = run(tuner, SPACE_2D, 60, fn=branin)
            bests.append(min(branin(p) for p in points) - optimum)
        regret[name] = float(np.mean(bests))
    assert regret["tpe"] < regret["random"] / 5, regret


def test_minimize_and_maximize_are_mirror_images() -> None:
    """Maximising f and minimising -f give the same suggestions; maximising f finds large f."""
    f = lambda p: -((p["x"] - 2.0) ** 2) - (p["y"] - 7.0) ** 2  # noqa: E731
    maxi = run(TpeTuner(optimize_mode="maximize", seed=8), SPACE_2D, 40, fn=f)
    mini = run(TpeTuner(optimize_mode="minimize", seed=8), SPACE_2D, 40, fn=lambda p: -f(p))
    assert bits(maxi) == bits(mini)
    wrong = run(TpeTuner(optimize_mode="minimize", seed=8), SPACE_2D, 40, fn=f)  # minimising f: runs away
    assert max(f(p) for p in maxi) > -0.5
    assert np.mean([f(p) for p in maxi[20:]]) > np.mean([f(p) for p in wrong[20:]]) + 20


def test_nan_and_infinite_results_are_handled() -> None:
    """NaN counts as the worst result; infinities are ordered like any number."""
    tuner = TpeTuner(optimize_mode="maximize", seed=0, n_startup_trials=3)
    vals = iter([float("nan"), float("-inf"), 1.0, 2.0, float("nan")] + [0.5] * 20)
    points = run(tuner, SPACE_2D, 20, fn=lambda p: next(vals))
    assert all(parse_search_space(SPACE_2D).contains(p) for p in points)


# -- parallel use: constant liar ------------------------------------------------------------------------

def _min_pending_distance(seed: int, constant_liar: bool) -> float:
    """30 finished trials on Branin, then 8 suggestions with no result yet: their closest pair."""
    tuner = TpeTuner(optimize_mode="minimize", seed=seed, constant_liar=constant_liar)
    run(tuner, SPACE_2D, 30, fn=branin)
    pending = [tuner.generate_parameters(100 + i) for i in range(8)]
    unit = np.array([[(p["x"] + 5) / 15, p["y"] / 15] for p in pending])
    dist = np.sqrt(((unit[:, None, :] - unit[None, :, :]) ** 2).sum(-1))
    dist[np.diag_indices(8)] = np.inf
    return float(dist.min())


def test_pending_suggestions_are_distinct_and_not_near_duplicates() -> None:
    """No two of 8 pending suggestions within 2% of the box; the liar spreads them (without it the
    same suggestions crowd around the incumbent: closest pairs under 2% are common)."""
    with_liar = [_min_pending_distance(seed, True) for seed in range(5)]
    without = [_min_pending_distance(seed, False) for seed in range(5)]
    assert min(with_liar) > 0.02, with_liar
    assert np.mean(with_liar) > 2 * np.mean(without), (with_liar, without)


def test_finished_or_failed_trials_leave_the_pending_set() -> None:
    tuner = TpeTuner(seed=0, n_startup_trials=2)
    tuner.update_search_space(SPACE_2D)
    p0 = tuner.generate_parameters(0)
    tuner.generate_parameters(1)
    tuner.receive_trial_result(0, p0, 1.0)
    tuner.trial_end(0, True)
    tuner.trial_end(1, False)  # failed: no result
    assert not tuner._pending
    assert tuner._n == 1


def test_pending_copies_of_the_best_option_do_not_push_suggestions_onto_worse_options() -> None:
    """The constant liar counts a pending point's plain categorical value only half: with 7 pending
    suggestions on the clearly better option, the next ones mostly stay on it (a full liar moves
    about one in seven to the worse option)."""
    import dataclasses

    def share_on_good(mix: float) -> float:
        hits = 0
        for seed in range(20):
            tuner = TpeTuner("minimize", seed=seed)
            tuner.settings = dataclasses.replace(tuner.settings, liar_categorical=mix)
            tuner.update_search_space({"k": {"_type": "choice", "_value": ["good", "bad"]},
                                       "x": {"_type": "uniform", "_value": [0, 1]}})
            rng = np.random.default_rng(seed)
            for i in range(30):
                p = {"k": ["good", "bad"][i % 2], "x": float(rng.random())}
                tuner.receive_trial_result(-1 - i, p, (p["x"] - 0.3) ** 2 + (p["k"] == "bad"), imported=True)
            suggestions = [tuner.generate_parameters(i) for i in range(8)]
            hits += sum(p["k"] == "good" for p in suggestions[1:])
        return hits / (20 * 7)

    assert TpeTuner().settings.liar_categorical == 0.5
    assert share_on_good(0.5) >= 0.93
    assert share_on_good(0.5) > share_on_good(0.0)


def _next_after_pending(seed: int, **settings: Any) -> tuple[float, float]:
    """30 finished Branin trials, then 8 suggestions still pending (they gather around the incumbent):
    the distance (unit box) from a 9th suggestion to the nearest pending one, and to the incumbent."""
    import dataclasses

    tuner = TpeTuner(optimize_mode="minimize", seed=seed)
    tuner.settings = dataclasses.replace(tuner.settings, **settings)
    done = run(tuner, SPACE_2D, 30, fn=branin)
    pending = [tuner.generate_parameters(100 + i) for i in range(8)]
    nxt = tuner.generate_parameters(108)

    def unit(p: dict[str, Any]) -> np.ndarray:
        return np.array([(p["x"] + 5) / 15, p["y"] / 15])

    best = min(done, key=branin)
    return (float(min(np.linalg.norm(unit(nxt) - unit(p)) for p in pending)),
            float(np.linalg.norm(unit(nxt) - unit(best))))


def test_with_eight_pending_the_next_suggestion_is_not_a_near_duplicate() -> None:
    """The 9th suggestion keeps clear of the 8 pending ones (more than 4% of the box), with the
    constant liar (default) and with the local penalty; ignoring pending points, it mostly lands
    within 2% of one."""
    liar = [_next_after_pending(seed)[0] for seed in range(8)]
    assert min(liar) > 0.04, liar
    penalised = [_next_after_pending(seed, pending_penalty=1.0)[0] for seed in range(8)]
    assert min(penalised) > 0.04, penalised
    ignored = [_next_after_pending(seed, constant_liar=False)[0] for seed in range(8)]
    assert sum(d < 0.02 for d in ignored) >= 4, ignored


@pytest.mark.parametrize("multivariate", [True, False])
def test_pending_handling_leaves_sequential_suggestions_unchanged(multivariate: bool) -> None:
    """Everything that treats pending points acts only while some are pending: a sequential run is
    bit for bit that of a tuner with those features changed (so the sequential figures hold)."""
    import dataclasses

    a = TpeTuner(seed=7, multivariate=multivariate)
    b = TpeTuner(seed=7, multivariate=multivariate)
    b.settings = dataclasses.replace(b.settings, pending_penalty=1.0, liar_weight=0.3, liar_categorical=0.0,
                                     pending_candidates=48, startup_finished=3)
    assert bits(run(a, MIXED, 40)) == bits(run(b, MIXED, 40))


def test_parallel_run_with_pending_penalty_is_reproducible() -> None:
    """Concurrency 4 with the local penalty on: a pure function of (space, history incl. pending, seed)."""
    import dataclasses

    def go() -> str:
        tuner = TpeTuner(optimize_mode="minimize", seed=5, n_startup_trials=4)
        tuner.settings = dataclasses.replace(tuner.settings, pending_penalty=1.0)
        tuner.update_search_space(MIXED)
        out, queue = [], []
        for i in range(30):
            queue.append((i, tuner.generate_parameters(i)))
            out.append(queue[-1][1])
            if len(queue) == 4:
                pid, p = queue.pop(0)
                tuner.receive_trial_result(pid, p, objective(p))
                tuner.trial_end(pid, True)
        return bits(out)

    assert go() == go()
