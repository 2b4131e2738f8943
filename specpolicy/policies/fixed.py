"""The two schedule-free baselines: ``ar`` (no speculation) and ``fixed`` (always draft k tokens).

``ar`` verifies at depth 0, so every step commits exactly the target's token: TPF = 1, the yardstick every speedup
is measured against in the same run. ``fixed(k)`` is plain speculative decoding with a constant draft length.

Example:
    >>> from specpolicy.policies import StepState, get_policy
    >>> get_policy("fixed", k=2).decide(StepState(drafts=(5,), confidence=(0.1,)))
    Action(kind=<ActionKind.EXTEND: 'extend'>, mask=())
    >>> get_policy("ar").decide(StepState())
    Action(kind=<ActionKind.VERIFY: 'verify'>, mask=())
"""

from __future__ import annotations

from typing import Any

from specpolicy.policies.base import _EXTEND, _VERIFY, Action, Policy, StepState
from specpolicy.policies.registry import MAX_DEPTH, check_param, register_policy

__all__ = ["ARPolicy", "FixedPolicy"]


def _fixed_depth(m: int, k: int, budget: int, n: int) -> int:
    """Where asking "extend while depth < k and < budget" from depth m stops with n drafts known: past d_n the
    drafter has none."""
    top = k if k < budget else budget
    return m if m >= top else (top if top < n else n)


@register_policy
class ARPolicy(Policy):
    """Plain autoregressive decoding: never draft, verify at depth 0 (the target commits one token per step)."""

    name = "ar"
    reads_stats = False  # decide reads nothing of the state

    def decide(self, state: StepState) -> Action:
        return _VERIFY

    def decide_chain(self, state: StepState, chain: tuple) -> tuple[int, Action]:
        return len(state.drafts), _VERIFY


@register_policy
class FixedPolicy(Policy):
    """Draft ``k`` tokens (fewer if the budget is smaller), then verify. Lossless.

    Example:
        >>> p = FixedPolicy(k=1)
        >>> p.decide(StepState()).kind.value, p.decide(StepState(drafts=(7,), confidence=(0.9,))).kind.value
        ('extend', 'verify')
    """

    name = "fixed"
    reads_stats = False  # decide reads the depth and the budget only

    def __init__(self, k: int = 4) -> None:
        self.k = check_param(self.name, "k", k, 1, MAX_DEPTH, integer=True)

    def decide(self, state: StepState) -> Action:
        m = len(state.drafts)
        return _EXTEND if m < self.k and m < state.budget else _VERIFY

    def decide_chain(self, state: StepState, chain: tuple) -> tuple[int, Action]:
        """``decide`` over a known chain in one call (``Policy.decide_chain``): up to k, the budget, the chain."""
        return _fixed_depth(len(state.drafts), self.k, state.budget, len(chain[0])), _VERIFY

    @classmethod
    def search_space(cls, trial) -> dict[str, Any]:
        """``k`` in 1..16.

        Example:
            >>> import optuna
            >>> FixedPolicy.search_space(optuna.trial.FixedTrial({"k": 3}))
            {'k': 3}
        """
        return {"k": trial.suggest_int("k", 1, MAX_DEPTH)}
