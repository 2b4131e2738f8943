"""The policy contract, checked over every registered policy (one parametrised module, as Optuna does for samplers)
with ``specpolicy.testing.check_policy`` -- the same harness users run on their own policies -- plus what only the
registry knows (defaults inside the search space, parameters round-tripping through ``get_policy``).

Each registered policy is checked with its defaults and with parameters drawn from its own ``search_space``.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import optuna
import pytest

from specpolicy.policies import Action, Policy, get_policy, list_policies, policy_class
from specpolicy.testing import check_policy

optuna.logging.set_verbosity(optuna.logging.WARNING)
N_SAMPLED = 4  # parameter sets drawn from each search space, besides the defaults


def _cases() -> list[tuple[str, dict]]:
    cases = []
    for name in list_policies():
        cases.append((name, {}))
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
        for _ in range(N_SAMPLED):
            trial = study.ask()
            cases.append((name, policy_class(name).search_space(trial)))
            study.tell(trial, 0.0)
    return cases


CASES = _cases()
IDS = [f"{name}-{i % (N_SAMPLED + 1)}" for i, (name, _) in enumerate(CASES)]
NAMES = list_policies()


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_check_policy_holds(name, params):
    """``specpolicy.testing.check_policy``, the contract users run on their own policies: well-formed actions within
    the budget, termination, determinism, no state leak across reset, an honest lossless flag, a valid search space."""
    summary = check_policy(get_policy(name, **params))
    assert summary["actions"] > 800 and "verify" in summary["kinds"]


def test_check_policy_catches_broken_policies():
    class OverBudget(Policy):
        name = "over_budget_test"

        def decide(self, state):
            return Action.extend() if state.depth < 3 else Action.verify()

    class Leaky(Policy):
        name = "leaky_test"

        def __init__(self):
            self._seen = 0

        def observe(self, outcome):
            self._seen += 1

        def decide(self, state):
            return Action.extend() if state.depth < min(1 + self._seen % 3, state.budget) else Action.verify()

    class SecretlyLossy(Policy):
        name = "secretly_lossy_test"

        def decide(self, state):
            if state.depth < min(2, state.budget):
                return Action.extend()
            return Action.trust([True] * state.depth) if state.depth else Action.verify()

    for policy, match in ((OverBudget(), "EXTEND at depth"), (Leaky(), "leaks across reset"),
                          (SecretlyLossy(), "claims lossless but trusted")):
        with pytest.raises(AssertionError, match=match):
            check_policy(policy)


@pytest.mark.parametrize("name", NAMES)
def test_search_space_contains_the_defaults(name):
    cls = policy_class(name)
    defaults = get_policy(name).params()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FixedTrial warns when a value lies outside the suggested range
        space = cls.search_space(optuna.trial.FixedTrial(defaults))
    assert isinstance(space, dict)
    assert get_policy(name, **space).params() == defaults


@pytest.mark.parametrize("name", NAMES)
def test_search_space_params_are_accepted_by_get_policy(name):
    cls = policy_class(name)
    accepted = set(inspect.signature(cls).parameters)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    rng = np.random.default_rng(0)
    for _ in range(12):
        trial = study.ask()
        space = cls.search_space(trial)
        assert set(space) <= accepted
        assert space == trial.params  # every suggested value is returned under its own name
        policy = get_policy(name, **space)
        assert all(policy.params()[k] == v for k, v in space.items())
        study.tell(trial, float(rng.random()))


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_params_round_trip_through_the_registry(name, params):
    policy = get_policy(name, **params)
    assert policy.name == name and type(policy) is policy_class(name)
    again = get_policy(name, **policy.params())
    assert again.params() == policy.params()
    assert repr(again) == repr(policy) and repr(policy).startswith(type(policy).__name__ + "(")
