"""The policies one run decodes ("arms"): the requested policy plus the lossless baselines ``ar`` and ``fixed``.

Baselines are decoded in the same process on the same prompts, interleaved per prompt (``decoding.harness``), so
speedup and quality are measured against a lossless reference under the same machine load. The ``fixed`` baseline drafts k = the policy's
``k`` (else its ``k_init``, else its ``k_max``, else 4). A baseline identical to the requested policy (same name and
parameters: ``policy=ar``, ``policy=fixed``) is not decoded twice. A cost-aware arm (``goodput``) given no
``step_cost`` is filled from the run's measured cost model (``with_step_costs``) before it decodes.

Example:
    >>> [a.label for a in plan_arms("threshold", {"tau_trust": 0.95})]
    ['ar', 'fixed', 'threshold']
    >>> [a.label for a in plan_arms("fixed", {"k": 2})]
    ['ar', 'fixed']
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from specpolicy.policies import Policy, get_policy, step_cost_missing, with_step_cost
from specpolicy.policies.registry import MAX_DEPTH

__all__ = ["Arm", "needs_step_cost", "plan_arms", "with_step_costs"]

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


def needs_step_cost(arms) -> bool:
    """Whether some arm has a ``step_cost`` left None (``goodput`` given none), which a cost model must fill.

    Example:
        >>> needs_step_cost(plan_arms("goodput", {})), needs_step_cost(plan_arms("threshold", {}))
        (True, False)
    """
    return any(step_cost_missing(a.params) for a in arms)


def with_step_costs(arms, cost) -> list[Arm]:
    """The arms with every ``step_cost`` left None filled from ``cost``: a ``decoding.cost.CostModel`` or anything
    with ``step_s(m)`` (seconds of a step with m drafts); the relative profile t_step(m) / t_step(0) for m = 0..k_max
    (``policies.relative_step_cost``). Other arms are returned as they are.

    Example:
        >>> class Linear:
        ...     def step_s(self, m): return 0.01 + 0.004 * m
        >>> with_step_costs(plan_arms("goodput", {"k_max": 2}), Linear())[-1].params["step_cost"]
        (1.0, 1.4, 1.8)
    """
    out = []
    for a in arms:
        policy = a.policy()
        filled = with_step_cost(policy, cost)
        out.append(a if filled is policy else replace(a, params=filled.params()))
    return out

