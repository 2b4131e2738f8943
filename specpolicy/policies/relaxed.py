"""Lossy-relaxed policies: draft like ``fixed(k)``, but let the decoder accept with a looser rule that still
consults the target p (committed tokens get ``relaxed`` provenance; their strict verdict is kept as the shadow verdict).

``typical`` -- Medusa's typical acceptance (``medusa/model/utils.py: evaluate_posterior``): accept d_j if

    p(d_j) > min(eps, delta * exp(-H(p)))

with eps = Medusa's ``posterior_threshold`` (a hard probability threshold, default 0.09) and delta = Medusa's
``posterior_alpha`` (scale of the entropy-dependent threshold, default 0.3 ~ sqrt(0.09)). A flat p (high H(p)) lowers
the bar: many continuations are plausible there, so a reasonable draft is accepted.

``topk_relaxed`` -- TensorRT-LLM's relaxed acceptance for DeepSeek MTP (``relaxed_topk``, ``relaxed_delta``): accept
d_j if it is among the top-``k_top`` tokens of p and  log p(top-1) - log p(d_j) <= delta.

The rules themselves are applied by the decoder (``AcceptanceRule`` in base); a policy only names them.

Example:
    >>> TypicalPolicy().acceptance
    AcceptanceRule(kind='typical', eps=0.09, delta=0.3, k=1)
    >>> TopKRelaxedPolicy(k_top=5).lossless
    False
"""

from __future__ import annotations

from typing import Any

from specpolicy.policies.base import AcceptanceRule
from specpolicy.policies.fixed import FixedPolicy
from specpolicy.policies.registry import check_param, register_policy

__all__ = ["TopKRelaxedPolicy", "TypicalPolicy"]


@register_policy
class TypicalPolicy(FixedPolicy):
    """Draft ``k`` tokens; accept d if p(d) > min(eps, delta * exp(-H(p))) (Medusa typical acceptance). Lossy."""

    name = "typical"

    def __init__(self, eps: float = 0.09, delta: float = 0.3, k: int = 4) -> None:
        self.eps = check_param(self.name, "eps", eps, 0, 1)
        self.delta = check_param(self.name, "delta", delta, 0, None)
        super().__init__(k=k)

    @property
    def acceptance(self) -> AcceptanceRule:
        return AcceptanceRule("typical", eps=self.eps, delta=self.delta)

    @classmethod
    def search_space(cls, trial) -> dict[str, Any]:
        """``eps`` in [0.01, 0.5] and ``delta`` in [0.05, 1] (log scale), ``k`` in 1..16.

        Example:
            >>> import optuna
            >>> TypicalPolicy.search_space(optuna.trial.FixedTrial({"eps": 0.09, "delta": 0.3, "k": 4}))
            {'eps': 0.09, 'delta': 0.3, 'k': 4}
        """
        return {
            "eps": trial.suggest_float("eps", 0.01, 0.5, log=True),
            "delta": trial.suggest_float("delta", 0.05, 1.0, log=True),
            **super().search_space(trial),
        }


@register_policy
class TopKRelaxedPolicy(FixedPolicy):
    """Draft ``k`` tokens; accept d if it is in the top-``k_top`` of p within ``delta`` nats of the top-1. Lossy."""

    name = "topk_relaxed"

    def __init__(self, k_top: int = 3, delta: float = 1.0, k: int = 4) -> None:
        self.k_top = check_param(self.name, "k_top", k_top, 1, None, integer=True)
        self.delta = check_param(self.name, "delta", delta, 0, None)
        super().__init__(k=k)

    @property
    def acceptance(self) -> AcceptanceRule:
        return AcceptanceRule("topk", delta=self.delta, k=self.k_top)

    @classmethod
    def search_space(cls, trial) -> dict[str, Any]:
        """``k_top`` in 1..10, ``delta`` in [0, 3] nats, ``k`` in 1..16.

        Example:
            >>> import optuna
            >>> TopKRelaxedPolicy.search_space(optuna.trial.FixedTrial({"k_top": 3, "delta": 1.0, "k": 4}))
            {'k_top': 3, 'delta': 1.0, 'k': 4}
        """
        return {
            "k_top": trial.suggest_int("k_top", 1, 10),
            "delta": trial.suggest_float("delta", 0.0, 3.0),
            **super().search_space(trial),
        }
