"""The policy contract, checked over every registered policy (one parametrised module, as Optuna does for samplers).

Each registered policy is checked with its defaults and with parameters drawn from its own ``search_space``. States
come from a seeded numpy RNG, so a failure reproduces exactly.
"""

from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
import optuna
import pytest

from specpolicy.policies import (
    AcceptanceRule,
    AcceptanceStats,
    Action,
    ActionKind,
    StepOutcome,
    StepState,
    get_policy,
    list_policies,
    policy_class,
)
from specpolicy.policies.registry import MAX_DEPTH

optuna.logging.set_verbosity(optuna.logging.WARNING)
EXTEND, VERIFY, TRUST = ActionKind.EXTEND, ActionKind.VERIFY, ActionKind.TRUST
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


def _confidences(rng: np.random.Generator, n: int) -> list[float]:
    """q(d_j) in [0, 1], with exact 0s and 1s mixed in (the edges of every threshold)."""
    u, pick = rng.random(n), rng.random(n)
    return [float(x) for x in np.where(pick < 0.2, 1.0, np.where(pick < 0.3, 0.0, u))]


def _entropies(rng: np.random.Generator, n: int) -> list[float]:
    return [float(x) for x in np.where(rng.random(n) < 0.2, 0.0, rng.exponential(1.5, n))]


def _random_state(rng: np.random.Generator) -> StepState:
    m, budget = int(rng.integers(0, 9)), int(rng.integers(0, 9))  # m > budget too: a policy must still not extend
    conf = _confidences(rng, m)
    attempted = [int(x) for x in rng.integers(0, 20, int(rng.integers(0, 6)))]
    stats = AcceptanceStats(tuple(attempted), tuple(int(rng.integers(0, a + 1)) for a in attempted))
    return StepState(
        drafts=tuple(int(x) for x in rng.integers(0, 50_000, m)),
        confidence=tuple(conf),
        entropy=tuple(_entropies(rng, m)),
        margin=tuple(float(c * x) for c, x in zip(conf, rng.random(m))),
        step=int(rng.integers(0, 100)),
        position=int(rng.integers(0, 500)),
        budget=budget,
        num_mtp_layers=int(rng.integers(1, 4)),
        stats=stats,
        last_accepted=int(rng.integers(-1, 9)),
    )


def _random_outcome(rng: np.random.Generator) -> StepOutcome:
    m = int(rng.integers(0, 9))
    verdicts = tuple(bool(v) for v in rng.random(m) < 0.6)
    accepted = next((j for j, ok in enumerate(verdicts) if not ok), m)
    return StepOutcome(m, accepted, (False,) * m, verdicts[: accepted + 1], accepted + 1)


def _check_action(action: Action, state: StepState) -> None:
    assert isinstance(action, Action) and isinstance(action.kind, ActionKind)
    if action.kind is EXTEND:
        assert state.depth < state.budget, f"EXTEND at depth {state.depth} with budget {state.budget}"
    if action.kind is TRUST:
        assert len(action.mask) == state.depth and any(action.mask)
        assert all(isinstance(x, bool) for x in action.mask)
    else:
        assert action.mask == ()


def _simulate(policy, rng: np.random.Generator, max_new: int = 48) -> list[Action]:
    """One synthetic generation: draft while the policy extends, walk the drafts as the decoder does, observe."""
    actions, position, step, stats, last = [], 0, 0, AcceptanceStats(), -1
    while position < max_new:
        budget = max_new - position - 1
        drafts, conf, ent = [], [], []
        for _ in range(MAX_DEPTH + 1):
            state = StepState(
                tuple(drafts), tuple(conf), tuple(ent), tuple(0.5 * c for c in conf),
                step=step, position=position, budget=budget, stats=stats, last_accepted=last,
            )  # fmt: skip
            action = policy.decide(state)
            _check_action(action, state)
            actions.append(action)
            if action.kind is not EXTEND:
                break
            drafts.append(int(rng.integers(0, 1000)))
            conf += _confidences(rng, 1)
            ent += _entropies(rng, 1)
        else:
            pytest.fail(f"{policy!r} still extends after {MAX_DEPTH + 1} calls")
        m = len(drafts)
        trusted = action.mask or (False,) * m
        verdicts, accepted = [], 0
        for j in range(m):  # trusted drafts commit whatever the (shadow) verdict; else first rejection stops
            verdicts.append(bool(rng.random() < conf[j]))
            if not (trusted[j] or verdicts[-1]):
                break
            accepted += 1
        outcome = StepOutcome(m, accepted, tuple(trusted), tuple(verdicts), accepted + 1)
        policy.observe(outcome)
        stats, last = stats.updated(outcome), accepted
        position, step = position + accepted + 1, step + 1
    return actions


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_decide_returns_a_valid_action_within_budget(name, params):
    policy = get_policy(name, **params)
    rng = np.random.default_rng(0)
    kinds = set()
    for i in range(400):
        if i % 7 == 0:
            policy.observe(_random_outcome(rng))
        state = _random_state(rng)
        action = policy.decide(state)
        _check_action(action, state)
        kinds.add(action.kind)
    assert VERIFY in kinds  # e.g. every state with budget 0 must verify


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
@pytest.mark.parametrize("regime", ["confident", "unsure", "random"])
@pytest.mark.parametrize("budget", [1 << 30, 0, 1, 5])
def test_drafting_terminates(name, params, regime, budget):
    policy = get_policy(name, **params)
    rng = np.random.default_rng(1)
    for _ in range(5):  # let adaptive policies grow their draft length first
        policy.observe(StepOutcome(4, 4, (False,) * 4, (True,) * 4, 5))
    drafts, conf, ent = [], [], []
    for _ in range(MAX_DEPTH + 1):
        state = StepState(tuple(drafts), tuple(conf), tuple(ent), tuple(conf), budget=budget)
        action = policy.decide(state)
        _check_action(action, state)
        if action.kind is not EXTEND:
            break
        drafts.append(len(drafts))
        c = {"confident": 1.0, "unsure": 0.0, "random": float(rng.random())}[regime]
        conf.append(c)
        ent.append(-math.log(max(c, 1e-9)))
    else:
        pytest.fail(f"{policy!r} still extends after {MAX_DEPTH + 1} calls")
    assert len(drafts) <= min(budget, MAX_DEPTH)


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_same_inputs_give_same_actions(name, params):
    first = _simulate(get_policy(name, **params), np.random.default_rng(3))
    second = _simulate(get_policy(name, **params), np.random.default_rng(3))
    assert len(first) > 1 and first == second


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_reset_restores_initial_behaviour(name, params):
    fresh = _simulate(get_policy(name, **params), np.random.default_rng(4))
    used = get_policy(name, **params)
    _simulate(used, np.random.default_rng(5))  # a different generation first: adaptive state moves
    for _ in range(3):
        used.observe(StepOutcome(2, 0, (False, False), (False,), 1))
    used.reset()
    assert _simulate(used, np.random.default_rng(4)) == fresh


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
def test_lossless_matches_acceptance_and_trust(name, params):
    policy = get_policy(name, **params)
    assert isinstance(policy.lossless, bool)
    assert policy.acceptance is None or (
        isinstance(policy.acceptance, AcceptanceRule) and policy.acceptance.kind in {"typical", "topk"}
    )
    rng = np.random.default_rng(6)
    actions = [policy.decide(_random_state(rng)) for _ in range(400)] + _simulate(policy, rng)
    trusts = any(a.kind is TRUST for a in actions)
    if policy.lossless:
        assert policy.acceptance is None and not trusts
    else:
        assert policy.acceptance is not None or trusts


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_params_round_trip_through_the_registry(name, params):
    policy = get_policy(name, **params)
    assert policy.name == name and type(policy) is policy_class(name)
    again = get_policy(name, **policy.params())
    assert again.params() == policy.params()
    assert repr(again) == repr(policy) and repr(policy).startswith(type(policy).__name__ + "(")
