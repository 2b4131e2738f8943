"""``heuristic``: the draft-length schedule of transformers' assisted decoding (``num_assistant_tokens_schedule``).

After each step: if every draft was accepted, k += 2; otherwise k = max(k_min, k - 1); k never exceeds k_max.
``reset()`` (called at the start of each generation) restores k = k_init, as transformers' "heuristic_transient"
does (its plain "heuristic" carries k over between ``generate`` calls). Verification is strict: lossless.

"All accepted" compares the accepted count with the drafts actually drafted (fewer than k when the budget ran out),
as recent transformers versions do (``num_matches == len(scores[0]) - 1``); older ones compared with k itself.
transformers has no upper cap; here ``k_max`` bounds the schedule.

Example:
    >>> from specpolicy.policies import StepOutcome
    >>> p = HeuristicPolicy(k_init=4)
    >>> p.observe(StepOutcome(drafted=4, accepted=4, trusted=(False,) * 4, verdicts=(True,) * 4, committed=5))
    >>> p.k
    6
    >>> p.reset(); p.k
    4
"""

from __future__ import annotations

from typing import Any

from specpolicy.policies.base import _EXTEND, _VERIFY, Action, Policy, StepOutcome, StepState
from specpolicy.policies.fixed import _fixed_depth
from specpolicy.policies.registry import MAX_DEPTH, PolicyParamError, check_param, register_policy

__all__ = ["HeuristicPolicy"]


@register_policy
class HeuristicPolicy(Policy):
    """Draft ``k`` tokens; grow k by 2 after a fully accepted step, shrink it by 1 otherwise (k_min <= k <= k_max)."""

    name = "heuristic"
    reads_stats = False  # decide reads the depth, the budget and its own k only

    def __init__(self, k_init: int = 4, k_min: int = 1, k_max: int = 16) -> None:
        self.k_init = check_param(self.name, "k_init", k_init, 1, MAX_DEPTH, integer=True)
        self.k_min = check_param(self.name, "k_min", k_min, 1, MAX_DEPTH, integer=True)
        self.k_max = check_param(self.name, "k_max", k_max, 1, MAX_DEPTH, integer=True)
        if not self.k_min <= self.k_init <= self.k_max:
            raise PolicyParamError(
                f"{self.name}: k_min={self.k_min}, k_init={self.k_init}, k_max={self.k_max} are out of order; "
                f"allowed: 1 <= k_min <= k_init <= k_max <= {MAX_DEPTH}"
            )
        self._k = self.k_init

    @property
    def k(self) -> int:
        """The current draft length."""
        return self._k

    def reset(self) -> None:
        self._k = self.k_init

    def observe(self, outcome: StepOutcome) -> None:
        if outcome.drafted == 0:  # nothing was drafted (budget exhausted): no evidence either way
            return
        if outcome.accepted >= outcome.drafted:
            self._k = min(self.k_max, self._k + 2)
        else:
            self._k = max(self.k_min, self._k - 1)

    def decide(self, state: StepState) -> Action:
        m = len(state.drafts)
        return _EXTEND if m < self._k and m < state.budget else _VERIFY

    def decide_chain(self, state: StepState, chain: tuple) -> tuple[int, Action]:
        """``decide`` over a known chain in one call (``Policy.decide_chain``)."""
        return _fixed_depth(len(state.drafts), self._k, state.budget, len(chain[0])), _VERIFY

    @classmethod
    def search_space(cls, trial) -> dict[str, Any]:
        """``k_max`` in 1..16 and ``k_init`` in 1..k_max (``k_min`` stays 1, as in transformers).

        Example:
            >>> import optuna
            >>> HeuristicPolicy.search_space(optuna.trial.FixedTrial({"k_max": 12, "k_init": 5}))
            {'k_max': 12, 'k_init': 5}
        """
        k_max = trial.suggest_int("k_max", 1, MAX_DEPTH)
        return {"k_max": k_max, "k_init": trial.suggest_int("k_init", 1, k_max)}
