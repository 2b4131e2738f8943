"""The policies one run decodes ("arms"): the requested policy plus the lossless baselines ``ar`` and ``fixed``.

Baselines are decoded in the same process on the same prompts, interleaved per prompt (``decoding.harness``), so
speedup and quality are measured against a lossless reference under the same machine load. The ``fixed`` baseline drafts k = the policy's
``k`` (else its ``k_init``, else its ``k_max``, else 4). A baseline identical to the requested policy (same name and
parameters: ``policy=ar``, ``policy=fixed``) is not decoded twice.

Example:
    >>> [a.label for a in plan_arms("threshold", {"tau_trust": 0.95})]
    ['ar', 'fixed', 'threshold']
    >>> [a.label for a in plan_arms("fixed", {"k": 2})]
    ['ar', 'fixed']
"""

from __future__ import annotations

from dataclasses import dataclass, field

from specpolicy.policies import Policy, get_policy
from specpolicy.policies.registry import MAX_DEPTH

__all__ = ["Arm", "plan_arms"]

REFERENCE = "ar"


@dataclass(frozen=True)
class Arm:
    """One policy of a run: its label in records and summary, registry name, full parameters and role."""

    label: str
    name: str
    params: dict = field(default_factory=dict, hash=False)
    role: str = "policy"  # "policy" (what the user asked for) | "baseline"

    def policy(self) -> Policy:
        """A fresh policy instance (raises ``PolicyParamError`` / ``UnknownPolicyError`` for bad input)."""
        return get_policy(self.name, **self.params)

    @property
    def lossless(self) -> bool:
        return self.policy().lossless


def plan_arms(name: str, params: dict, baselines: bool = True) -> list[Arm]:
    """Baselines first (``ar``, then ``fixed``), the requested policy last; parameters are complete (defaults filled).

    Example:
        >>> [(a.label, a.params) for a in plan_arms("typical", {}, baselines=True)][1]
        ('fixed', {'k': 4})
    """
    main = Arm(name, name, get_policy(name, **params).params(), "policy")
    arms: list[Arm] = []
    if baselines:
        k = next((main.params[key] for key in ("k", "k_init", "k_max") if key in main.params), 4)
        k = int(min(max(int(k), 1), MAX_DEPTH))
        for base_name, base_params in ((REFERENCE, {}), ("fixed", {"k": k})):
            full = get_policy(base_name, **base_params).params()
            if base_name == main.name:  # the policy is this baseline (its k is the policy's own k): decode it once
                continue
            arms.append(Arm(base_name, base_name, full, "baseline"))
    return arms + [main]
