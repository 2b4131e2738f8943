"""``specpolicy.testing.check_lossless`` over every registered lossless policy (greedy on float64 models of 1..3 MTP
layers, sampling with a chi-square test that has power), and the harness seeing real bugs as failures."""

from __future__ import annotations

import pytest

from specpolicy.decoding import MTPDrafter
from specpolicy.policies import AcceptanceRule, get_policy, list_policies
from specpolicy.testing import check_lossless, small_model

LOSSLESS = [name for name in list_policies() if get_policy(name).lossless]


def test_every_registered_default_policy_is_checked():
    assert {"ar", "fixed", "threshold", "entropy", "heuristic", "calibrated"} <= set(LOSSLESS)
    assert not {"typical", "topk_relaxed"} & set(LOSSLESS)


@pytest.mark.parametrize("name", LOSSLESS)
def test_check_lossless_holds(name):
    report = check_lossless(get_policy(name), n_prompts=6, n_samples=600)
    assert report.ok and report.greedy_prompts == 18 and report.greedy_exact == 18
    assert report.sampling_p_value > 1e-3 and report.sampling_power_p_value < 1e-6


def test_a_drafter_factory_and_a_given_model():
    report = check_lossless(get_policy("fixed", k=3), drafter=lambda model: MTPDrafter(model.drafter),
                            model=small_model(seed=7, k=2, tie=0.8), n_prompts=4, sampling=False)
    assert report.ok and report.greedy_prompts == 16


def test_a_lossy_rule_in_a_policy_that_claims_lossless_is_caught():
    class Liar(type(get_policy("fixed"))):
        name = "liar_test"

        @property
        def acceptance(self):
            return AcceptanceRule("topk", delta=3.0, k=5)

        @property
        def lossless(self):
            return True

    report = check_lossless(Liar(k=4), n_prompts=6, sampling=False, raise_on_failure=False)
    assert not report.ok and report.mismatches
    with pytest.raises(AssertionError, match="is not lossless"):
        check_lossless(Liar(k=4), n_prompts=6, sampling=False)
