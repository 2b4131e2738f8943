"""Every registered policy through the real decoder (one parametrised module, as Optuna checks every sampler).

Greedy and seeded sampling; determinism; a reused policy instance equals a fresh one (``reset`` works); the
``StepRecord`` invariants; the ``max_new_tokens`` budget. Also custom ``Policy`` subclasses that misbehave.
"""

from __future__ import annotations

import pytest

from specpolicy.decoding import generate
from specpolicy.policies import Action, Policy, get_policy, list_policies

PROMPT = [11, 4, 42, 7, 19, 3]
NAMES = list_policies()


@pytest.fixture(scope="module")
def model(tiny):
    return tiny(seed=3, k=2, tie=0.8)


def check_steps(res, max_new: int) -> None:
    """StepRecord invariants of a run that did not stop at EOS."""
    position = 1
    for i, s in enumerate(res.steps):
        m = len(s.drafts)
        assert s.step == i and s.position == position
        assert len(s.confidence) == len(s.entropy) == len(s.margin) == len(s.trusted) == m
        assert all(0.0 <= c <= 1.0 for c in s.confidence)
        assert all(e >= -1e-9 for e in s.entropy) and all(-1e-9 <= g <= 1.0 for g in s.margin)
        assert 0 <= s.accepted <= m
        assert len(s.verdicts) == len(s.accept_prob) == min(m, s.accepted + 1)  # walked drafts
        assert len(s.committed) == len(s.provenance) == len(s.target_tokens) == s.accepted + 1
        assert s.provenance[-1] == "target" and "target" not in s.provenance[:-1]
        assert m <= max_new - s.position - 1  # drafts never exceed what may still be committed
        assert s.draft_s >= 0 and s.verify_s >= 0
        assert s.action in ("verify", "trust") and (s.action == "trust") == any(s.trusted)
        position += len(s.committed)
    assert position == len(res.token_ids) <= max_new


@pytest.mark.parametrize("temperature", [0.0, 0.9], ids=["greedy", "sampling"])
@pytest.mark.parametrize("name", NAMES)
def test_policy_through_decoder(model, hf_ref, no_timings, name, temperature):
    run = dict(max_new_tokens=30, temperature=temperature, seed=11)
    first = generate(model, PROMPT, name, **run)
    again = generate(model, PROMPT, name, **run)
    assert no_timings(first) == no_timings(again)  # same seed, same everything
    assert len(first.token_ids) == 30 and first.finished_by == "length"
    check_steps(first, 30)
    assert first.stats.steps == len(first.steps) and first.stats.target_forwards == 1 + len(first.steps)
    policy = get_policy(name)
    reused = [generate(model, PROMPT, policy, **run) for _ in range(2)]
    assert no_timings(reused[0]) == no_timings(reused[1]) == no_timings(first)  # reset() restores the state
    other = generate(model, [5, 5, 60], policy, **run)  # a different prompt in between changes nothing either
    assert no_timings(generate(model, PROMPT, policy, **run)) == no_timings(first)
    assert other.prompt_ids == (5, 5, 60)
    if policy.lossless:
        assert first.lossless
        if temperature == 0.0:
            assert first.token_ids == hf_ref(model, PROMPT, 30)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("max_new", [1, 2, 3, 8])
def test_budget_respected(model, name, max_new):
    for temperature in (0.0, 1.0):
        res = generate(model, PROMPT, name, max_new_tokens=max_new, temperature=temperature, seed=1)
        assert len(res.token_ids) == max_new == res.stats.new_tokens
        check_steps(res, max_new)


def test_sampling_seed_changes_the_run(model):
    runs = {
        generate(model, PROMPT, "fixed", k=3, max_new_tokens=20, temperature=1.0, seed=s).token_ids for s in range(6)
    }
    assert len(runs) > 1


class _AlwaysExtend(Policy):
    """Always asks for one more draft: only the decoder's budget (max_draft, max_new_tokens) stops it."""

    name = "test_always_extend"

    def decide(self, state):
        return Action.extend()


class _TrustTooMuch(Policy):
    name = "test_trust_too_much"

    def decide(self, state):
        return Action.extend() if state.depth < 2 else Action.trust([True] * 3)


@pytest.mark.parametrize("max_draft", [0, 1, 3])
def test_decoder_caps_an_always_extending_policy(model, hf_ref, max_draft):
    res = generate(model, PROMPT, _AlwaysExtend(), max_new_tokens=20, max_draft=max_draft)
    assert all(len(s.drafts) <= max_draft for s in res.steps)
    assert any(len(s.drafts) == max_draft for s in res.steps)
    assert res.token_ids == hf_ref(model, PROMPT, 20)
    check_steps(res, 20)


def test_trust_mask_longer_than_drafts_is_an_error(model):
    with pytest.raises(ValueError, match="trust mask has 3 entries but only 2 drafts"):
        generate(model, PROMPT, _TrustTooMuch(), max_new_tokens=10)
