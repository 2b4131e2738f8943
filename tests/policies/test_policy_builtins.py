"""Behaviour of the built-in policies on hand-written states: where each extends, stops, trusts and adapts."""

from __future__ import annotations

import pytest

from specpolicy.policies import (
    AcceptanceRule,
    ActionKind,
    EntropyPolicy,
    FixedPolicy,
    HeuristicPolicy,
    StepOutcome,
    StepState,
    ThresholdPolicy,
    TopKRelaxedPolicy,
    TypicalPolicy,
    get_policy,
)

EXTEND, VERIFY, TRUST = ActionKind.EXTEND, ActionKind.VERIFY, ActionKind.TRUST


def state(conf=(), entropy=None, budget=1 << 30) -> StepState:
    conf = tuple(conf)
    entropy = tuple(entropy) if entropy is not None else (0.0,) * len(conf)
    return StepState(drafts=tuple(range(len(conf))), confidence=conf, entropy=entropy, margin=conf, budget=budget)


def drafted_length(policy, conf=1.0, budget=1 << 30) -> int:
    """Depth at which the policy stops when every draft has confidence ``conf``."""
    m = 0
    while policy.decide(state((conf,) * m, budget=budget)).kind is EXTEND:
        m += 1
    return m


def outcome(drafted: int, accepted: int) -> StepOutcome:
    verdicts = (True,) * accepted + ((False,) if accepted < drafted else ())
    return StepOutcome(drafted, accepted, (False,) * drafted, verdicts, accepted + 1)


def test_ar_never_drafts():
    assert get_policy("ar").decide(state()).kind is VERIFY
    assert drafted_length(get_policy("ar")) == 0


@pytest.mark.parametrize(("k", "budget", "expected"), [(4, 1 << 30, 4), (4, 2, 2), (4, 0, 0), (16, 100, 16)])
def test_fixed_drafts_min_of_k_and_budget(k, budget, expected):
    assert drafted_length(FixedPolicy(k=k), conf=0.0, budget=budget) == expected


# threshold ------------------------------------------------------------------------------------------------------


def test_threshold_always_extends_at_depth_zero_unless_no_budget():
    p = ThresholdPolicy(tau_extend=0.99)
    assert p.decide(state()).kind is EXTEND
    assert p.decide(state(budget=0)).kind is VERIFY


@pytest.mark.parametrize(("last", "kind"), [(0.5, EXTEND), (0.7, EXTEND), (0.49, VERIFY), (0.0, VERIFY)])
def test_threshold_extends_while_last_confidence_reaches_tau_extend(last, kind):
    assert ThresholdPolicy(tau_extend=0.5).decide(state((0.1, last))).kind is kind  # only d_m's confidence counts


def test_threshold_stops_at_k_max_and_at_the_budget():
    assert drafted_length(ThresholdPolicy(k_max=3)) == 3
    assert drafted_length(ThresholdPolicy(k_max=6), budget=2) == 2
    assert drafted_length(ThresholdPolicy(tau_extend=0.6), conf=0.5) == 1


def test_threshold_with_tau_trust_one_never_trusts():
    p = ThresholdPolicy(tau_trust=1.0, k_max=3)
    assert p.lossless and p.acceptance is None
    assert p.decide(state((1.0, 1.0, 1.0))).kind is VERIFY


def test_threshold_trusts_only_the_confident_prefix():
    p = ThresholdPolicy(tau_extend=0.5, tau_trust=0.9, k_max=4)
    assert not p.lossless
    action = p.decide(state((0.99, 0.95, 0.3, 0.99)))  # d_4 is confident, but comes after an unsure d_3
    assert action.kind is TRUST and action.mask == (True, True, False, False)
    assert p.decide(state((0.95, 0.92, 0.91, 0.9))).mask == (True, True, True, True)
    stop_early = p.decide(state((0.95, 0.2)))  # stopped by tau_extend, d_1 still trusted
    assert stop_early.kind is TRUST and stop_early.mask == (True, False)


def test_threshold_verifies_when_the_first_draft_is_not_trusted():
    p = ThresholdPolicy(tau_trust=0.9, k_max=2)
    assert p.decide(state((0.8, 0.99))).kind is VERIFY


# entropy --------------------------------------------------------------------------------------------------------


def test_entropy_stops_when_the_last_entropy_exceeds_the_limit():
    p = EntropyPolicy(max_entropy=1.0, k_max=6)
    assert p.decide(state()).kind is EXTEND
    assert p.decide(state((0.5, 0.5), entropy=(3.0, 1.0))).kind is EXTEND  # 1.0 does not exceed 1.0
    assert p.decide(state((0.5, 0.5), entropy=(0.1, 1.01))).kind is VERIFY
    assert p.decide(state((0.5,) * 6, entropy=(0.0,) * 6)).kind is VERIFY  # k_max
    assert p.decide(state((0.5,) * 2, entropy=(0.0,) * 2, budget=2)).kind is VERIFY
    assert p.lossless


# heuristic ------------------------------------------------------------------------------------------------------


def test_heuristic_grows_by_two_and_shrinks_by_one():
    p = HeuristicPolicy(k_init=4, k_min=1, k_max=16)
    assert drafted_length(p) == 4
    p.observe(outcome(4, 4))
    assert p.k == 6 and drafted_length(p) == 6
    p.observe(outcome(6, 2))
    assert p.k == 5 and drafted_length(p) == 5
    p.observe(outcome(5, 0))
    assert p.k == 4


def test_heuristic_stays_within_k_min_and_k_max():
    p = HeuristicPolicy(k_init=15, k_min=2, k_max=16)
    p.observe(outcome(15, 15))
    assert p.k == 16
    p.observe(outcome(16, 16))
    assert p.k == 16
    q = HeuristicPolicy(k_init=2, k_min=2, k_max=16)
    q.observe(outcome(2, 0))
    assert q.k == 2


def test_heuristic_budget_and_reset():
    p = HeuristicPolicy(k_init=4)
    assert drafted_length(p, budget=3) == 3
    p.observe(outcome(3, 3))  # all the drafts that fit were accepted: grow
    assert p.k == 6
    p.observe(outcome(0, 0))  # nothing drafted: no evidence, no change
    assert p.k == 6
    p.reset()
    assert p.k == 4 and drafted_length(p) == 4
    assert p.params() == {"k_init": 4, "k_min": 1, "k_max": 16}  # the running k is not a parameter


# relaxed --------------------------------------------------------------------------------------------------------


def test_typical_names_medusa_typical_acceptance_and_drafts_like_fixed():
    p = TypicalPolicy(eps=0.09, delta=0.3, k=3)
    assert p.acceptance == AcceptanceRule("typical", eps=0.09, delta=0.3)
    assert not p.lossless and drafted_length(p, conf=0.0) == 3


def test_topk_relaxed_names_the_topk_rule_and_drafts_like_fixed():
    p = TopKRelaxedPolicy(k_top=5, delta=0.7, k=2)
    assert p.acceptance == AcceptanceRule("topk", delta=0.7, k=5)
    assert not p.lossless and drafted_length(p) == 2
