"""``StepState``: the drafter-neutral ``native_depths`` and its deprecated alias ``num_mtp_layers`` (keyword, old
positional slot and attribute), and the step core's fast ``extended``."""

from __future__ import annotations

import dataclasses

import pytest

from specpolicy.policies import AcceptanceStats, StepOutcome, StepState


def test_native_depths_is_a_field_and_the_old_name_warns():
    state = StepState(budget=3, native_depths=2)
    assert state.native_depths == 2 and "native_depths" in {f.name for f in dataclasses.fields(StepState)}
    with pytest.warns(DeprecationWarning, match="num_mtp_layers is deprecated; use native_depths"):
        assert state.num_mtp_layers == 2
    with pytest.warns(DeprecationWarning, match="num_mtp_layers=...\\) is deprecated"):
        assert StepState(num_mtp_layers=4).native_depths == 4
    with pytest.raises(TypeError, match="not both"), pytest.warns(DeprecationWarning):
        StepState(num_mtp_layers=4, native_depths=2)


def test_positional_construction_in_the_old_field_order_still_works():
    stats = AcceptanceStats((3,), (2,))
    with pytest.warns(DeprecationWarning):
        old = StepState((5,), (0.9,), (0.1,), (0.8,), 2, 7, 4, 3, stats, 1)  # ..., budget, num_mtp_layers, stats, last
    assert (old.budget, old.native_depths, old.stats, old.last_accepted) == (4, 3, stats, 1)


def test_replace_and_extended_keep_every_field():
    state = StepState(drafts=(1,), confidence=(0.5,), entropy=(0.2,), margin=(0.1,), step=3, position=9, budget=5,
                      stats=AcceptanceStats((1,), (1,)), last_accepted=2, native_depths=3)
    assert dataclasses.replace(state, budget=1).native_depths == 3
    assert dataclasses.replace(state, native_depths=1).native_depths == 1
    grown = state.extended(8, 0.7, 0.3, 0.4)
    assert grown == dataclasses.replace(state, drafts=(1, 8), confidence=(0.5, 0.7), entropy=(0.2, 0.3),
                                        margin=(0.1, 0.4))
    assert state.drafts == (1,) and grown.depth == 2  # the original is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        grown.budget = 0


def test_stats_fast_updates_equal_counting_verdict_by_verdict():
    """``AcceptanceStats.updated`` (``_plus``) and the replay's ``_walked`` (a strict walk: k accepts, then at most one
    reject) against counting each verdict, also past the prefix table (``_FIRST_LEN`` counts) and onto new depths."""
    import random

    rng = random.Random(4)
    for width in (3, 9, 300):
        stats, att, acc = AcceptanceStats(), [], []
        for _ in range(60):
            n = rng.randint(0, width)
            if rng.random() < 0.5:  # a strict walk
                k = rng.randint(max(n - 1, 0), n)
                verdicts, fast = (True,) * k + (False,) * (n - k), stats._walked(n, k)
            else:
                verdicts = tuple(rng.random() < 0.6 for _ in range(n))
                fast = stats.updated(StepOutcome(n, 0, (False,) * n, verdicts, 1))
            att += [0] * (n - len(att))
            acc += [0] * (n - len(acc))
            for j, v in enumerate(verdicts):
                att[j], acc[j] = att[j] + 1, acc[j] + v
            assert fast == AcceptanceStats(tuple(att), tuple(acc)) and all(type(x) is int for x in fast.accepted)
            stats = fast
