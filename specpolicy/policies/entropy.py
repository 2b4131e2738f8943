"""``entropy``: stop drafting when the drafter becomes uncertain (AdaEDL-like early draft stopping).

AdaEDL (Agrawal et al., 2024) lower-bounds the acceptance probability of d_m by 1 - sqrt(gamma * H(q_m)) and stops
drafting when that bound drops below lambda. With lambda fixed, the test is monotone in the entropy, so it is the
same as a threshold on H(q_m) itself:

    stop at depth m  iff  H(q_m) > max_entropy     (max_entropy = (1 - lambda)^2 / gamma),  or  m >= min(k_max, budget)

Only the drafter's own entropy is used (``StepState.entropy``, in nats); verification is the strict rule: lossless.

Example:
    >>> from specpolicy.policies import StepState
    >>> p = EntropyPolicy(max_entropy=1.0)
    >>> p.decide(StepState(drafts=(3,), confidence=(0.6,), entropy=(0.4,))).kind.value
    'extend'
    >>> p.decide(StepState(drafts=(3,), confidence=(0.6,), entropy=(2.5,))).kind.value
    'verify'
"""

from __future__ import annotations

from typing import Any

from specpolicy.policies.base import _EXTEND, _VERIFY, Action, Policy, StepState
from specpolicy.policies.registry import MAX_DEPTH, check_param, register_policy

__all__ = ["EntropyPolicy"]


@register_policy
class EntropyPolicy(Policy):
    """Extend until the last draft's entropy exceeds ``max_entropy`` (nats) or the depth reaches ``k_max``. Lossless."""

    name = "entropy"
    reads_stats = False  # decide reads the drafts' features and the budget only

    def __init__(self, max_entropy: float = 1.0, k_max: int = 6) -> None:
        self.max_entropy = check_param(self.name, "max_entropy", max_entropy, 0, None)
        self.k_max = check_param(self.name, "k_max", k_max, 1, MAX_DEPTH, integer=True)

    def decide(self, state: StepState) -> Action:
        m = len(state.drafts)
        if m >= self.k_max or m >= state.budget or (m > 0 and state.entropy[m - 1] > self.max_entropy):
            return _VERIFY
        return _EXTEND

    def decide_chain(self, state: StepState, chain: tuple) -> tuple[int, Action]:
        """``decide`` over a known chain in one call (``Policy.decide_chain``)."""
        ent, m, n = chain[2], len(state.drafts), len(chain[2])
        top = self.k_max if self.k_max < state.budget else state.budget
        while m < top and m < n and (m == 0 or ent[m - 1] <= self.max_entropy):
            m += 1
        return m, _VERIFY

    @classmethod
    def search_space(cls, trial) -> dict[str, Any]:
        """``max_entropy`` in [0.01, 8] nats (log scale), ``k_max`` in 1..16.

        Example:
            >>> import optuna
            >>> EntropyPolicy.search_space(optuna.trial.FixedTrial({"max_entropy": 0.5, "k_max": 8}))
            {'max_entropy': 0.5, 'k_max': 8}
        """
        return {
            "max_entropy": trial.suggest_float("max_entropy", 0.01, 8.0, log=True),
            "k_max": trial.suggest_int("k_max", 1, MAX_DEPTH),
        }
