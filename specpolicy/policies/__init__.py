"""Speculation policies: what the decoder does after each draft -- EXTEND, VERIFY, or TRUST part of it.

Importing this package registers the built-ins (each through its ``@register_policy`` decorator, nowhere else):

    ar            no speculation (TPF = 1)                                     lossless
    fixed         draft k tokens, verify                                       lossless
    threshold     extend while q(d_m) >= tau_extend; trust the prefix >= tau_trust   lossless iff tau_trust = 1
    entropy       stop drafting when H(q_m) > max_entropy (AdaEDL-like)        lossless
    heuristic     transformers' assisted-decoding schedule: k += 2 / k -= 1     lossless
    goodput       extend while one more draft raises expected tokens per unit time   lossless iff tau_trust = 1
    typical       fixed(k) + Medusa typical acceptance                         lossy (relaxed)
    topk_relaxed  fixed(k) + TensorRT-LLM top-k/delta relaxed acceptance       lossy (relaxed)

Example:
    >>> from specpolicy.policies import get_policy, list_policies
    >>> {"ar", "fixed", "threshold", "entropy", "heuristic", "goodput", "typical", "topk_relaxed"} <= set(list_policies())
    True
    >>> get_policy("threshold", tau_trust=0.95).lossless
    False
"""

from specpolicy.policies.base import (
    AcceptanceRule,
    AcceptanceStats,
    Action,
    ActionKind,
    Policy,
    StepOutcome,
    StepState,
)
from specpolicy.policies.entropy import EntropyPolicy
from specpolicy.policies.fixed import ARPolicy, FixedPolicy
from specpolicy.policies.goodput import (
    NOMINAL_STEP_COST,
    GoodputPolicy,
    relative_step_cost,
    step_cost_missing,
    with_step_cost,
)
from specpolicy.policies.heuristic import HeuristicPolicy
from specpolicy.policies.registry import (
    PolicyParamError,
    UnknownPolicyError,
    check_param,
    get_policy,
    list_policies,
    policy_class,
    register_policy,
)
from specpolicy.policies.relaxed import TopKRelaxedPolicy, TypicalPolicy
from specpolicy.policies.threshold import ThresholdPolicy

__all__ = [
    "ARPolicy",
    "AcceptanceRule",
    "AcceptanceStats",
    "Action",
    "ActionKind",
    "EntropyPolicy",
    "FixedPolicy",
    "GoodputPolicy",
    "HeuristicPolicy",
    "NOMINAL_STEP_COST",
    "Policy",
    "PolicyParamError",
    "StepOutcome",
    "StepState",
    "ThresholdPolicy",
    "TopKRelaxedPolicy",
    "TypicalPolicy",
    "UnknownPolicyError",
    "check_param",
    "get_policy",
    "list_policies",
    "policy_class",
    "register_policy",
    "relative_step_cost",
    "step_cost_missing",
    "with_step_cost",
]
