"""``threshold``: confidence-gated drafting, and optionally trusting the confident prefix without verification.

At depth m >= 1 the policy looks at the confidence of the last draft, c_m (q(d_m), or a calibrated P(accept)):

    extend  while  c_m >= tau_extend  and  m < min(k_max, budget)
    stop    otherwise:  tau_trust == 1 -> VERIFY (lossless);
                        tau_trust <  1 -> TRUST the longest prefix d_1..d_t with c_j >= tau_trust for all j <= t,
                                          and verify d_{t+1}..d_m as usual.

Why only a prefix: the decoder walks d_1..d_m in order and stops at the first rejection, so a trusted draft behind a
rejected one would never be committed; trusting it would only pretend to save a verification. Trusting the confident
prefix keeps the mask's meaning exact: every True entry is a token that *will* be committed without the target's veto.

Example:
    >>> from specpolicy.policies import StepState
    >>> p = ThresholdPolicy(tau_extend=0.5, tau_trust=0.9, k_max=3)
    >>> p.decide(StepState(drafts=(4, 8), confidence=(0.95, 0.7))).kind.value       # c_2 >= tau_extend
    'extend'
    >>> p.decide(StepState(drafts=(4, 8, 15), confidence=(0.95, 0.7, 0.99))).mask    # k_max reached; prefix trust
    (True, False, False)
"""

from __future__ import annotations

from typing import Any

from specpolicy.policies.base import _EXTEND, _VERIFY, Action, Policy, StepState
from specpolicy.policies.registry import MAX_DEPTH, check_param, register_policy

__all__ = ["ThresholdPolicy"]


@register_policy
class ThresholdPolicy(Policy):
    """Extend while the last draft's confidence is >= ``tau_extend`` (up to ``k_max``); trust drafts >= ``tau_trust``.

    ``tau_trust = 1`` (the default) never trusts and is lossless; ``tau_trust < 1`` is lossy (``trusted`` tokens).
    """

    name = "threshold"
    reads_stats = False  # decide reads the drafts' features and the budget only

    def __init__(self, tau_extend: float = 0.5, tau_trust: float = 1.0, k_max: int = 6) -> None:
        self.tau_extend = check_param(self.name, "tau_extend", tau_extend, 0, 1)
        self.tau_trust = check_param(self.name, "tau_trust", tau_trust, 0, 1)
        self.k_max = check_param(self.name, "k_max", k_max, 1, MAX_DEPTH, integer=True)

    @property
    def lossless(self) -> bool:
        return self.tau_trust >= 1 and self.acceptance is None

    def decide(self, state: StepState) -> Action:
        m = len(state.drafts)
        if m < state.budget and (m == 0 or (m < self.k_max and state.confidence[m - 1] >= self.tau_extend)):
            return _EXTEND
        return self._final(state.confidence, m)

    def decide_chain(self, state: StepState, chain: tuple) -> tuple[int, Action]:
        """``decide`` over a known chain in one call (``Policy.decide_chain``; k_max >= 1, so depth 0 only needs
        budget)."""
        conf, m, n = chain[1], len(state.drafts), len(chain[1])
        top = self.k_max if self.k_max < state.budget else state.budget
        while m < top and m < n and (m == 0 or conf[m - 1] >= self.tau_extend):
            m += 1
        return m, self._final(conf, m)

    def _final(self, conf: tuple, m: int) -> Action:
        """VERIFY, or TRUST the prefix d_1..d_t whose confidences are all >= tau_trust."""
        if m == 0 or self.tau_trust >= 1:
            return _VERIFY
        t = 0
        while t < m and conf[t] >= self.tau_trust:
            t += 1
        return Action.trust([True] * t + [False] * (m - t))  # all False -> VERIFY

    @classmethod
    def search_space(cls, trial) -> dict[str, Any]:
        """``tau_extend`` in [0, 1], ``tau_trust`` in [0.5, 1], ``k_max`` in 1..16.

        To tune the lossless variant only, pin ``tau_trust=1`` (``optuna.samplers.PartialFixedSampler``).

        Example:
            >>> import optuna
            >>> ThresholdPolicy.search_space(optuna.trial.FixedTrial({"tau_extend": 0.3, "tau_trust": 1.0, "k_max": 4}))
            {'tau_extend': 0.3, 'tau_trust': 1.0, 'k_max': 4}
        """
        return {
            "tau_extend": trial.suggest_float("tau_extend", 0.0, 1.0),
            "tau_trust": trial.suggest_float("tau_trust", 0.5, 1.0),
            "k_max": trial.suggest_int("k_max", 1, MAX_DEPTH),
        }
