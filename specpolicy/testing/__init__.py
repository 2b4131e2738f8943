"""The harness users run on their own policy and drafter: is it well-behaved, and is it really lossless?

    check_policy(policy)                           the contract: well-formed actions within the budget, termination,
                                                   determinism, no state leak across reset, an honest ``lossless``
                                                   flag, a search space that samples valid parameters
    check_lossless(policy, drafter=None, model=None)
                                                   greedy: token for token ``target.generate(do_sample=False)`` on
                                                   small float64 models (and on ``model``); sampling: a chi-square
                                                   test of the first tokens' law, with a power check
    classify_divergence / self_consistency         precision-aware equivalence: a divergence from generate() is a
                                                   numerical near-tie or a mismatch (``precision``)
    small_model(...)                               the small float64 MTP models the checks use
    drafter_factory(kind), with_drafter            a drafter of every kind (mtp, medusa, draft, ngram) for them

No model is downloaded: the harness builds its own models. The project's own contract tests run both over every
registered policy.

Example:
    >>> from specpolicy.testing import check_lossless, check_policy
    >>> check_policy(MyPolicy())
    >>> check_lossless(MyPolicy(), drafter=lambda model: MyDrafter(model))
"""

from ..decoding.precision import (
    NEAR_TIE_MARGIN,
    Consistency,
    Divergence,
    classify_divergence,
    near_tie_tolerance,
    self_consistency,
)
from .contract import check_action, check_policy, random_state, simulate
from .drafters import DRAFTER_KINDS, drafter_factory, with_drafter
from .lossless import LosslessReport, check_lossless, exact_compare, greedy_accounting, hf_greedy
from .models import shape_model, small_model

__all__ = ["DRAFTER_KINDS", "NEAR_TIE_MARGIN", "Consistency", "Divergence", "LosslessReport", "check_action", "classify_divergence",
           "near_tie_tolerance", "self_consistency", "check_lossless", "check_policy", "exact_compare", "greedy_accounting",
           "drafter_factory", "hf_greedy", "random_state", "shape_model", "simulate", "small_model", "with_drafter"]
