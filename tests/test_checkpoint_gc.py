"""The checkpoint GC policy (hpo.checkpoint_gc): Determined's documented examples, edge cases, properties."""
from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpo.checkpoint_gc import CheckpointInfo, checkpoints_to_delete, checkpoints_to_keep, validate_policy

# Determined's worked example (docs/reference/experiment-config-reference.rst, "Checkpoint Saving Policy",
# smaller_is_better: true): 2 trials, checkpoints 1-10, validation metric per checkpoint (None = null).
DOC_METRICS = {1: None, 2: None, 3: 0.6, 4: 0.5, 5: 0.4, 6: None, 7: 0.2, 8: 0.3, 9: None, 10: None}


def doc_checkpoints(metrics: dict[int, float | None] = DOC_METRICS) -> list[CheckpointInfo]:
    """Checkpoint n is uuid str(n); trial 1 holds 1-5 and trial 2 holds 6-10, taken in that order."""
    return [CheckpointInfo(uuid=str(n), trial=1 if n <= 5 else 2, steps_completed=100 * ((n - 1) % 5 + 1),
                           order=n, value=value) for n, value in metrics.items()]


def ids(uuids: set[str]) -> set[int]:
    return {int(u) for u in uuids}


# (save_experiment_best, save_trial_best, save_trial_latest) -> saved checkpoint ids, as the doc tabulates;
# the doc's ">= 5" and ">= 3" rows are checked at the boundary and well above it.
DOC_TABLE = [
    ((0, 0, 0), set()),
    ((2, 0, 0), {8, 7}),
    ((5, 0, 0), {8, 7, 5, 4, 3}),
    ((6, 0, 0), {8, 7, 5, 4, 3}),
    ((100, 0, 0), {8, 7, 5, 4, 3}),
    ((0, 1, 0), {7, 5}),
    ((0, 3, 0), {8, 7, 5, 4, 3}),
    ((0, 4, 0), {8, 7, 5, 4, 3}),
    ((0, 100, 0), {8, 7, 5, 4, 3}),
    ((0, 0, 1), {10, 5}),
    ((0, 0, 3), {10, 9, 8, 5, 4, 3}),
    ((2, 1, 0), {8, 7, 5}),
    ((2, 0, 1), {10, 8, 7, 5}),
    ((0, 1, 1), {10, 7, 5}),
    ((2, 1, 1), {10, 8, 7, 5}),
]


@pytest.mark.parametrize("policy,saved", DOC_TABLE, ids=[f"{p[0]}-{p[1]}-{p[2]}" for p, _ in DOC_TABLE])
def test_determined_worked_example(policy: tuple[int, int, int], saved: set[int]) -> None:
    ckpts = doc_checkpoints()
    e, b, latest = policy
    keep = checkpoints_to_keep(ckpts, save_experiment_best=e, save_trial_best=b, save_trial_latest=latest)
    assert ids(keep) == saved
    delete = checkpoints_to_delete(ckpts, save_experiment_best=e, save_trial_best=b, save_trial_latest=latest)
    assert ids(delete) == set(range(1, 11)) - saved


def test_defaults_are_trial_best_and_latest() -> None:
    assert ids(checkpoints_to_keep(doc_checkpoints())) == {10, 7, 5}


def test_input_order_does_not_matter() -> None:
    ckpts = doc_checkpoints()
    for seed in range(5):
        shuffled = ckpts[:]
        random.Random(seed).shuffle(shuffled)
        assert ids(checkpoints_to_keep(shuffled, save_experiment_best=2, save_trial_latest=3)) == {10, 9, 8, 7, 5, 4, 3}


def test_larger_is_better() -> None:
    ckpts = doc_checkpoints()
    assert ids(checkpoints_to_keep(ckpts, save_experiment_best=2, save_trial_best=0, save_trial_latest=0,
                                   smaller_is_better=False)) == {3, 4}
    assert ids(checkpoints_to_keep(ckpts, save_experiment_best=0, save_trial_best=1, save_trial_latest=0,
                                   smaller_is_better=False)) == {3, 8}
    assert ids(checkpoints_to_keep(ckpts, save_experiment_best=0, save_trial_best=1, save_trial_latest=1,
                                   smaller_is_better=False)) == {3, 5, 8, 10}


def test_protected_always_kept() -> None:
    ckpts = doc_checkpoints()
    assert checkpoints_to_keep(ckpts, save_experiment_best=0, save_trial_best=0, save_trial_latest=0,
                               protected={"1", "9"}) == {"1", "9"}
    delete = checkpoints_to_delete(ckpts, save_experiment_best=0, save_trial_best=0, save_trial_latest=0,
                                   protected=["1", "9"])
    assert ids(delete) == {2, 3, 4, 5, 6, 7, 8, 10}
    # a registered uuid from elsewhere is "kept" but never offered for deletion
    keep = checkpoints_to_keep(ckpts, save_experiment_best=0, save_trial_best=0, save_trial_latest=0,
                               protected=("other",))
    assert keep == {"other"}
    assert "other" not in checkpoints_to_delete(ckpts, protected=("other",))


def test_nan_counts_as_unvalidated() -> None:
    metrics = dict(DOC_METRICS)
    metrics[7] = math.nan  # trial 2's best goes; 8 becomes its best
    ckpts = doc_checkpoints(metrics)
    assert ids(checkpoints_to_keep(ckpts, save_experiment_best=1, save_trial_best=0, save_trial_latest=0)) == {8}
    assert ids(checkpoints_to_keep(ckpts, save_experiment_best=0, save_trial_best=1, save_trial_latest=0)) == {8, 5}
    assert ids(checkpoints_to_keep(ckpts, save_experiment_best=0, save_trial_best=0, save_trial_latest=4)) == {2, 3, 4, 5, 7, 8, 9, 10}


def test_trial_without_validations_keeps_only_its_latest() -> None:
    ckpts = [CheckpointInfo(f"t{n}", trial=3, steps_completed=n, order=n, value=None) for n in range(4)]
    assert checkpoints_to_keep(ckpts, save_experiment_best=5, save_trial_best=5, save_trial_latest=0) == set()
    assert checkpoints_to_keep(ckpts) == {"t3"}
    assert checkpoints_to_keep(ckpts, save_trial_latest=2) == {"t3", "t2"}


def test_ties_go_to_the_earlier_checkpoint() -> None:
    ckpts = [CheckpointInfo("a", 1, 100, order=2, value=0.5), CheckpointInfo("b", 2, 100, order=1, value=0.5),
             CheckpointInfo("c", 2, 200, order=3, value=0.5)]
    assert checkpoints_to_keep(ckpts, save_experiment_best=1, save_trial_best=0, save_trial_latest=0) == {"b"}
    assert checkpoints_to_keep(ckpts, save_experiment_best=2, save_trial_best=0, save_trial_latest=0) == {"b", "a"}
    assert checkpoints_to_keep(ckpts, save_experiment_best=0, save_trial_best=1, save_trial_latest=0) == {"a", "b"}


def test_latest_is_by_steps_then_order() -> None:
    # a resumed trial may report a checkpoint at an earlier step later on: steps decide, order breaks ties
    ckpts = [CheckpointInfo("s200", 1, 200, order=1, value=None), CheckpointInfo("s100", 1, 100, order=2, value=None),
             CheckpointInfo("s200b", 1, 200, order=3, value=None)]
    assert checkpoints_to_keep(ckpts, save_trial_best=0, save_trial_latest=1) == {"s200b"}
    assert checkpoints_to_keep(ckpts, save_trial_best=0, save_trial_latest=2) == {"s200b", "s200"}


def test_empty_input() -> None:
    assert checkpoints_to_keep([]) == set()
    assert checkpoints_to_delete([], protected={"x"}) == set()


@pytest.mark.parametrize("kwargs,needle", [
    ({"save_experiment_best": -1}, "save_experiment_best"),
    ({"save_trial_best": 1.5}, "save_trial_best"),
    ({"save_trial_latest": "2"}, "save_trial_latest"),
    ({"save_trial_latest": True}, "save_trial_latest"),
])
def test_bad_policy_is_one_line_value_error(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        checkpoints_to_keep(doc_checkpoints(), **kwargs)
    message = str(info.value)
    assert needle in message and ">= 0" in message and "\n" not in message
    args = {"save_experiment_best": 0, "save_trial_best": 1, "save_trial_latest": 1, **kwargs}
    with pytest.raises(ValueError, match=needle):
        validate_policy(**args)


def test_validate_policy_accepts_good_counts() -> None:
    validate_policy(0, 0, 0)
    validate_policy(3, 1, 10)


def test_bad_checkpoints_are_value_errors() -> None:
    with pytest.raises(ValueError, match="'1' appears twice"):
        checkpoints_to_keep(doc_checkpoints() + [CheckpointInfo("1", 3, 0, 99, None)])
    with pytest.raises(ValueError, match="expected a number or None"):
        checkpoints_to_keep([CheckpointInfo("x", 1, 0, 0, "0.5")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="collection of uuids"):
        checkpoints_to_keep(doc_checkpoints(), protected="1")


# --- properties ---------------------------------------------------------------------------------------

values = st.one_of(st.none(), st.just(math.nan), st.floats(-10, 10, allow_nan=False),
                   st.sampled_from([0.0, 1.0, 2.0]))  # repeated values exercise tie-breaking


@st.composite
def experiments(draw: st.DrawFn) -> tuple[list[CheckpointInfo], set[str]]:
    rows = draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6), values), max_size=25))
    ckpts = [CheckpointInfo(f"u{i}", trial, steps, order=i, value=value)
             for i, (trial, steps, value) in enumerate(rows)]
    uuids = [c.uuid for c in ckpts] + ["registered-elsewhere"]
    protected = set(draw(st.lists(st.sampled_from(uuids), max_size=4)))
    return ckpts, protected


counts = st.integers(0, 6)


@settings(max_examples=300, deadline=None)
@given(experiments(), counts, counts, counts, st.booleans(), st.integers(0, 3), st.sampled_from(range(3)))
def test_properties(exp: tuple[list[CheckpointInfo], set[str]], e: int, b: int, latest: int, smaller: bool,
                    extra: int, which: int) -> None:
    ckpts, protected = exp
    all_uuids = {c.uuid for c in ckpts}
    policy = [e, b, latest]
    keep = checkpoints_to_keep(ckpts, save_experiment_best=e, save_trial_best=b, save_trial_latest=latest,
                               smaller_is_better=smaller, protected=protected)
    delete = checkpoints_to_delete(ckpts, save_experiment_best=e, save_trial_best=b, save_trial_latest=latest,
                                   smaller_is_better=smaller, protected=protected)
    assert keep >= protected
    assert not keep & delete and (keep | delete) >= all_uuids and delete <= all_uuids

    bigger = policy[:]
    bigger[which] += extra
    keep_more = checkpoints_to_keep(ckpts, save_experiment_best=bigger[0], save_trial_best=bigger[1],
                                    save_trial_latest=bigger[2], smaller_is_better=smaller, protected=protected)
    assert keep_more >= keep

    n = len(ckpts)
    assert checkpoints_to_keep(ckpts, save_experiment_best=0, save_trial_best=0, save_trial_latest=n,
                               smaller_is_better=smaller) == all_uuids
    assert checkpoints_to_keep(ckpts, save_experiment_best=10**9, save_trial_best=10**9, save_trial_latest=10**9,
                               smaller_is_better=smaller, protected=protected) == all_uuids | protected
    validated = {c.uuid for c in ckpts if c.value is not None and not math.isnan(c.value)}
    assert checkpoints_to_keep(ckpts, save_experiment_best=n, save_trial_best=0, save_trial_latest=0,
                               smaller_is_better=smaller) == validated
