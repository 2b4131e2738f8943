"""The step core on its own (no model): the draft phase, the trust mask, the walk and its EOS cut.

The decoder and the replay both call these; here a scripted judge stands in for the target, so every branch of the
walk -- trusted, verified, relaxed, correction, bonus, EOS -- is exercised with known verdicts.
"""

from __future__ import annotations

import pytest

from specpolicy.decoding.step import RELAXED, TARGET, TRUSTED, VERIFIED, draft_phase, trust_mask, walk
from specpolicy.policies import Action, Policy, StepState, get_policy


class Scripted:
    """A judge with fixed verdicts; the target's token at position j is 100 + j; logs what it was asked."""

    def __init__(self, verdicts, relaxed=()):
        self.verdicts, self.relaxed_ok, self.log = list(verdicts), set(relaxed), []

    def strict(self, j, clean):
        self.log.append(("strict", j, clean))
        return self.verdicts[j], float(self.verdicts[j])

    def relaxed(self, j):
        self.log.append(("relaxed", j))
        return j in self.relaxed_ok

    def target(self, j, clean, rejected):
        self.log.append(("target", j, clean, rejected))
        return 100 + j


def test_all_accepted_commits_the_bonus():
    b = walk((1, 2, 3), (False,) * 3, Scripted([True, True, True]))
    assert b.committed == (1, 2, 3, 103) and b.provenance == (VERIFIED,) * 3 + (TARGET,)
    assert (b.accepted, b.walked, b.eos, b.verdicts) == (3, 4, False, (True, True, True))


def test_first_rejection_commits_the_correction_and_stops():
    judge = Scripted([True, False, True])
    b = walk((1, 2, 3), (False,) * 3, judge)
    assert b.committed == (1, 101) and b.provenance == (VERIFIED, TARGET) and b.verdicts == (True, False)
    assert judge.log[-1] == ("target", 1, True, True) and b.walked == 2


def test_trusted_wrong_draft_is_committed_and_the_block_is_no_longer_clean():
    judge = Scripted([False, True, False])
    b = walk((1, 2, 3), (True, False, False), judge)
    assert b.committed == (1, 2, 102) and b.provenance == (TRUSTED, VERIFIED, TARGET)
    assert b.verdicts == (False, True, False)  # the shadow verdict of the trusted draft is kept
    assert [e for e in judge.log if e[0] == "strict"] == [("strict", 0, True), ("strict", 1, False),
                                                          ("strict", 2, False)]
    assert judge.log[-1] == ("target", 2, False, True)


def test_relaxed_rule_is_asked_only_for_rejected_untrusted_drafts():
    judge = Scripted([True, False, False], relaxed={1})
    b = walk((1, 2, 3), (False,) * 3, judge, relaxed=True)
    assert b.provenance == (VERIFIED, RELAXED, TARGET) and b.committed == (1, 2, 102)
    assert [e for e in judge.log if e[0] == "relaxed"] == [("relaxed", 1), ("relaxed", 2)]
    plain = Scripted([True, False, False], relaxed={1})
    assert walk((1, 2, 3), (False,) * 3, plain).provenance == (VERIFIED, TARGET)  # no rule: never asked
    assert not [e for e in plain.log if e[0] == "relaxed"]


def test_eos_cuts_the_block_after_it_but_verdicts_cover_every_walked_draft():
    b = walk((1, 7, 3), (False,) * 3, Scripted([True, True, True]), eos={7})
    assert b.committed == (1, 7) and b.eos and b.accepted == 2 and b.verdicts == (True, True, True)
    assert b.walked == 4
    bonus = walk((1,), (False,), Scripted([True]), eos={101})
    assert bonus.committed == (1, 101) and bonus.eos and bonus.accepted == 1


def test_trust_mask():
    assert trust_mask(Action.trust([True, False]), 3) == (True, False, False)
    assert trust_mask(Action.verify(), 2) == (False, False) and trust_mask(Action.extend(), 1) == (False,)
    with pytest.raises(ValueError, match="trust mask has 2 entries but only 1 drafts exist"):
        trust_mask(Action.trust([True, True]), 1)


def test_draft_phase_drafts_while_the_policy_extends():
    calls = []

    def next_draft(j):
        calls.append(j)
        return (10 + j, 0.9, 0.1, 0.8)

    state, action = draft_phase(get_policy("fixed", k=3), StepState(budget=8, native_depths=2), next_draft)
    assert calls == [1, 2, 3] and state.drafts == (11, 12, 13) and state.native_depths == 2
    assert action.kind.value == "verify"
    state, _ = draft_phase(get_policy("fixed", k=3), StepState(budget=2), next_draft)
    assert state.depth == 2  # the budget stops drafting whatever the policy asks


class TrustAll(Policy):
    name = "trust_all_test"

    def decide(self, state):
        if state.depth < state.budget:
            return Action.extend()
        return Action.trust([True] * state.depth) if state.depth else Action.verify()


def test_no_draft_shrinks_the_budget_and_asks_the_policy_again():
    """A drafter with nothing to offer at depth 3: the policy still decides (here: trust) for d_1, d_2."""
    state, action = draft_phase(TrustAll(), StepState(budget=6), lambda j: (j, 0.99, 0.0, 0.9) if j < 3 else None)
    assert state.drafts == (1, 2) and state.budget == 2 and trust_mask(action, 2) == (True, True)
    state, action = draft_phase(TrustAll(), StepState(budget=6), lambda j: None)
    assert state.depth == 0 and action.kind.value == "verify"
