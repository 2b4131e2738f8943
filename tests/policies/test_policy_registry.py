"""The registry: lookup, one-line errors with "did you mean", parameter checking, registration rules."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from specpolicy.policies import (
    Action,
    FixedPolicy,
    Policy,
    PolicyParamError,
    ThresholdPolicy,
    UnknownPolicyError,
    get_policy,
    list_policies,
    policy_class,
    register_policy,
)
from specpolicy.policies import registry as registry_module

BUILTINS = ["ar", "entropy", "fixed", "goodput", "heuristic", "threshold", "topk_relaxed", "typical"]


class _Unregistered(Policy):
    name = "mine_unregistered"

    def decide(self, state):
        return Action.verify()


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test vanish after it (the contract tests see only the built-ins)."""
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))


def test_builtins_are_registered_and_listed_sorted():
    names = list_policies()
    assert names == sorted(names)
    assert set(BUILTINS) <= set(names)
    assert policy_class("fixed") is FixedPolicy and policy_class("threshold") is ThresholdPolicy


def test_misspelt_name_suggests_the_closest_one():
    with pytest.raises(UnknownPolicyError) as err:
        get_policy("treshold")
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "'treshold'" in msg and "did you mean 'threshold'?" in msg
    assert all(name in msg for name in BUILTINS) and "\n" not in msg


def test_unknown_name_without_a_close_match_lists_the_allowed_names():
    with pytest.raises(UnknownPolicyError, match=r"unknown policy 'zzzz'; allowed: ar, ") as err:
        policy_class("zzzz")
    assert str(err.value).endswith(", ".join(list_policies()))
    assert "did you mean" not in str(err.value)


def test_unknown_parameter_names_the_allowed_ones():
    with pytest.raises(PolicyParamError) as err:
        get_policy("threshold", tau=0.5)
    msg = str(err.value)
    assert msg.startswith("threshold: unknown parameter tau")
    assert msg.endswith("allowed: tau_extend, tau_trust, k_max")
    with pytest.raises(PolicyParamError, match=r"^ar: unknown parameter k; allowed: none$"):
        get_policy("ar", k=4)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("threshold", {"tau_trust": 1.5}, "threshold: tau_trust=1.5 is out of range; allowed: 0 <= tau_trust <= 1"),
        ("threshold", {"tau_extend": -0.1}, "threshold: tau_extend=-0.1 is out of range; allowed: 0 <="),
        ("threshold", {"tau_extend": math.nan}, "threshold: tau_extend=nan is out of range"),
        ("threshold", {"tau_trust": "high"}, "threshold: tau_trust='high' is not a number; allowed: 0 <= tau_trust"),
        ("threshold", {"k_max": 17}, "threshold: k_max=17 is out of range; allowed: integer 1 <= k_max <= 16"),
        ("fixed", {"k": 0}, "fixed: k=0 is out of range; allowed: integer 1 <= k <= 16"),
        ("fixed", {"k": 2.5}, "fixed: k=2.5 is not an integer; allowed: integer 1 <= k <= 16"),
        ("fixed", {"k": True}, "fixed: k=True is not an integer"),
        ("entropy", {"max_entropy": -1}, "entropy: max_entropy=-1 is out of range; allowed: 0 <= max_entropy"),
        ("entropy", {"k_max": 0}, "entropy: k_max=0 is out of range"),
        ("heuristic", {"k_min": 5}, "heuristic: k_min=5, k_init=4, k_max=16 are out of order; allowed: 1 <= k_min"),
        ("heuristic", {"k_init": 8, "k_max": 6}, "heuristic: k_min=1, k_init=8, k_max=6 are out of order"),
        ("typical", {"eps": 1.2}, "typical: eps=1.2 is out of range; allowed: 0 <= eps <= 1"),
        ("typical", {"k": 0}, "typical: k=0 is out of range"),
        ("topk_relaxed", {"k_top": 0}, "topk_relaxed: k_top=0 is out of range; allowed: integer 1 <= k_top"),
        ("topk_relaxed", {"delta": -1.0}, "topk_relaxed: delta=-1.0 is out of range; allowed: 0 <= delta"),
    ],
)
def test_bad_parameter_values_give_one_clear_line(name, params, message):
    with pytest.raises(PolicyParamError, match="^" + re.escape(message)) as err:
        get_policy(name, **params)
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)


def test_boundary_and_numpy_values_are_accepted_as_plain_numbers():
    assert get_policy("threshold", tau_trust=0, tau_extend=1).params() == {
        "tau_extend": 1.0,
        "tau_trust": 0.0,
        "k_max": 6,
    }
    p = get_policy("fixed", k=np.int64(16))
    assert p.k == 16 and type(p.k) is int
    assert type(get_policy("threshold", tau_trust=np.float32(0.5)).tau_trust) is float


def test_an_instance_is_returned_as_is_even_unregistered():
    mine = _Unregistered()
    assert get_policy(mine) is mine
    assert "mine_unregistered" not in list_policies()
    with pytest.raises(PolicyParamError, match="given with a policy instance"):
        get_policy(mine, k=3)
    with pytest.raises(TypeError, match="expected a policy name or a Policy instance, got int"):
        get_policy(3)


def test_register_policy_adds_a_name_and_rejects_a_second_class_under_it(scratch_registry):
    @register_policy
    class Twice(Policy):
        name = "twice"

        def decide(self, state):
            return Action.extend() if state.depth < min(2, state.budget) else Action.verify()

    assert "twice" in list_policies() and isinstance(get_policy("twice"), Twice)
    assert register_policy(Twice) is Twice  # the same class again (e.g. a module reload) is fine

    class Other(Twice):
        name = "twice"

    with pytest.raises(ValueError, match="name 'twice' is already taken by .*Twice"):
        register_policy(Other)
    assert policy_class("twice") is Twice


def test_register_policy_needs_a_policy_class_with_its_own_name(scratch_registry):
    class NoName(FixedPolicy):  # inherits name "fixed"
        pass

    with pytest.raises(TypeError, match="NoName must define its own class attribute `name`"):
        register_policy(NoName)
    with pytest.raises(TypeError, match="is not a Policy subclass"):
        register_policy(int)
    assert policy_class("fixed") is FixedPolicy


def test_missing_required_parameter_of_a_user_policy(scratch_registry):
    @register_policy
    class Needs(Policy):
        name = "needs_alpha"

        def __init__(self, alpha):
            self.alpha = alpha

        def decide(self, state):
            return Action.verify()

    with pytest.raises(PolicyParamError, match=r"^needs_alpha: missing .*'alpha'.*; allowed: alpha$"):
        get_policy("needs_alpha")
    assert get_policy("needs_alpha", alpha=2).alpha == 2
