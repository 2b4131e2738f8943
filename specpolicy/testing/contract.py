"""``check_policy``: the contract every ``Policy`` must keep, checked without a model.

1. ``decide`` returns a well-formed ``Action`` for any state: EXTEND only below the budget, a TRUST mask with one
   bool per draft and at least one True, no mask otherwise (400 random states, confidences at the edges 0 and 1).
2. Drafting terminates: asked again and again with confident, unsure or random drafts, the policy stops by depth
   ``MAX_DEPTH`` and never drafts past the budget.
3. Same inputs, same actions: two simulated generations from the same seed agree (no hidden randomness).
4. No state leaks across ``reset``: after another generation (and odd outcomes), ``reset`` restores the behaviour of
   a freshly reset policy.
5. ``lossless`` tells the truth: a lossless policy names no relaxed rule and never trusts; a lossy one does one of
   them (seen on random states and simulated generations).
6. The search space samples valid parameters: every ``search_space(trial)`` point builds a policy of the same class
   whose ``params()`` hold the sampled values, and ``params()`` round-trips through the constructor.

States come from a seeded numpy RNG, so a failure reproduces exactly. Each check raises ``AssertionError`` with
what failed.

Example:
    >>> from specpolicy.testing import check_policy
    >>> check_policy(MyPolicy(k=3))          # raises AssertionError naming the broken rule, else returns a summary
    {'actions': 1634, 'kinds': ['extend', 'trust', 'verify'], 'search_space_points': 8}
"""

from __future__ import annotations

import copy
import math

import numpy as np

from ..policies import AcceptanceStats, Action, ActionKind, Policy, StepOutcome, StepState
from ..policies.registry import MAX_DEPTH

__all__ = ["check_action", "check_policy", "random_state", "simulate"]

EXTEND, VERIFY, TRUST = ActionKind.EXTEND, ActionKind.VERIFY, ActionKind.TRUST


def _confidences(rng: np.random.Generator, n: int) -> list[float]:
    """q(d_j) in [0, 1], with exact 0s and 1s mixed in (the edges of every threshold)."""
    u, pick = rng.random(n), rng.random(n)
    return [float(x) for x in np.where(pick < 0.2, 1.0, np.where(pick < 0.3, 0.0, u))]


def _entropies(rng: np.random.Generator, n: int) -> list[float]:
    return [float(x) for x in np.where(rng.random(n) < 0.2, 0.0, rng.exponential(1.5, n))]


def random_state(rng: np.random.Generator) -> StepState:
    """A random state: up to 8 drafts, any budget (also below the depth), random running statistics."""
    m, budget = int(rng.integers(0, 9)), int(rng.integers(0, 9))  # m > budget too: a policy must still not extend
    conf = _confidences(rng, m)
    attempted = [int(x) for x in rng.integers(0, 20, int(rng.integers(0, 6)))]
    stats = AcceptanceStats(tuple(attempted), tuple(int(rng.integers(0, a + 1)) for a in attempted))
    return StepState(
        drafts=tuple(int(x) for x in rng.integers(0, 50_000, m)), confidence=tuple(conf),
        entropy=tuple(_entropies(rng, m)), margin=tuple(float(c * x) for c, x in zip(conf, rng.random(m))),
        step=int(rng.integers(0, 100)), position=int(rng.integers(0, 500)), budget=budget, stats=stats,
        last_accepted=int(rng.integers(-1, 9)), native_depths=int(rng.integers(1, 4)),
    )


def _random_outcome(rng: np.random.Generator) -> StepOutcome:
    m = int(rng.integers(0, 9))
    verdicts = tuple(bool(v) for v in rng.random(m) < 0.6)
    accepted = next((j for j, ok in enumerate(verdicts) if not ok), m)
    return StepOutcome(m, accepted, (False,) * m, verdicts[: accepted + 1], accepted + 1)


def check_action(action: Action, state: StepState) -> None:
    """``AssertionError`` unless ``action`` is a well-formed answer to ``state``."""
    assert isinstance(action, Action) and isinstance(action.kind, ActionKind), f"decide returned {action!r}"
    if action.kind is EXTEND:
        assert state.depth < state.budget, f"EXTEND at depth {state.depth} with budget {state.budget}"
    if action.kind is TRUST:
        assert len(action.mask) == state.depth and any(action.mask), \
            f"TRUST mask {action.mask} for {state.depth} drafts (one bool per draft, at least one True)"
        assert all(isinstance(x, bool) for x in action.mask)
    else:
        assert action.mask == (), f"{action.kind.value} with a mask {action.mask}"


def simulate(policy: Policy, rng: np.random.Generator, max_new: int = 48) -> list[Action]:
    """One synthetic generation: draft while the policy extends, walk the drafts as the decoder does (strict
    verdicts drawn with probability q), observe; every action is checked. Returns the actions."""
    actions, position, step, stats, last = [], 0, 0, AcceptanceStats(), -1
    policy.reset()
    while position < max_new:
        budget = max_new - position - 1
        drafts, conf, ent = [], [], []
        for _ in range(MAX_DEPTH + 1):
            state = StepState(tuple(drafts), tuple(conf), tuple(ent), tuple(0.5 * c for c in conf), step=step,
                              position=position, budget=budget, stats=stats, last_accepted=last)
            action = policy.decide(state)
            check_action(action, state)
            actions.append(action)
            if action.kind is not EXTEND:
                break
            drafts.append(int(rng.integers(0, 1000)))
            conf += _confidences(rng, 1)
            ent += _entropies(rng, 1)
        else:
            raise AssertionError(f"{policy!r} still extends after {MAX_DEPTH + 1} calls")
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


def _terminates(policy: Policy, regime: str, budget: int, rng: np.random.Generator) -> None:
    for _ in range(5):  # let adaptive policies grow their draft length first
        policy.observe(StepOutcome(4, 4, (False,) * 4, (True,) * 4, 5))
    drafts, conf, ent = [], [], []
    for _ in range(MAX_DEPTH + 1):
        state = StepState(tuple(drafts), tuple(conf), tuple(ent), tuple(conf), budget=budget)
        action = policy.decide(state)
        check_action(action, state)
        if action.kind is not EXTEND:
            break
        drafts.append(len(drafts))
        c = {"confident": 1.0, "unsure": 0.0, "random": float(rng.random())}[regime]
        conf.append(c)
        ent.append(-math.log(max(c, 1e-9)))
    else:
        raise AssertionError(f"{policy!r} still extends after {MAX_DEPTH + 1} calls ({regime} drafts)")
    assert len(drafts) <= min(budget, MAX_DEPTH), f"{policy!r} drafted {len(drafts)} with budget {budget}"


def _search_space(policy: Policy, n_points: int) -> int:
    import optuna

    cls = type(policy)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line per check
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    finally:
        optuna.logging.set_verbosity(verbosity)
    for _ in range(n_points):
        trial = study.ask()
        space = cls.search_space(trial)
        assert isinstance(space, dict), f"{cls.__name__}.search_space returned {type(space).__name__}, not a dict"
        if not space:
            return 0
        assert space == trial.params, f"search_space returned {space}, but the trial suggested {trial.params}"
        sampled = cls(**space)
        assert all(sampled.params()[k] == v for k, v in space.items()), \
            f"{cls.__name__}(**{space}).params() = {sampled.params()} does not hold the sampled values"
        study.tell(trial, 0.0)
    return n_points


def check_policy(policy: Policy, seed: int = 0, n_points: int = 8) -> dict:
    """Check ``policy`` against the contract (module docstring); ``AssertionError`` on the first broken rule.

    ``policy`` is used as given (and copied for the independent runs); its class's ``search_space`` is sampled
    ``n_points`` times. Returns a small summary of what was exercised.
    """
    assert isinstance(policy, Policy), f"{policy!r} is not a specpolicy Policy"
    rng = np.random.default_rng(seed)
    kinds, n_actions = set(), 0
    fresh = copy.deepcopy(policy)
    for i in range(400):  # 1. any state
        if i % 7 == 0:
            fresh.observe(_random_outcome(rng))
        state = random_state(rng)
        action = fresh.decide(state)
        check_action(action, state)
        kinds.add(action.kind)
        n_actions += 1
    assert VERIFY in kinds, f"{policy!r} never verified (a state with budget 0 must verify or trust)"
    for regime in ("confident", "unsure", "random"):  # 2. termination
        for budget in (1 << 30, 0, 1, 5):
            _terminates(copy.deepcopy(policy), regime, budget, np.random.default_rng(seed + 1))
    first = simulate(copy.deepcopy(policy), np.random.default_rng(seed + 3))  # 3. determinism
    second = simulate(copy.deepcopy(policy), np.random.default_rng(seed + 3))
    assert len(first) > 1 and first == second, f"{policy!r}: the same inputs gave different actions"
    used = copy.deepcopy(policy)  # 4. reset
    simulate(used, np.random.default_rng(seed + 5))
    for _ in range(3):
        used.observe(StepOutcome(2, 0, (False, False), (False,), 1))
    assert simulate(used, np.random.default_rng(seed + 3)) == first, \
        f"{policy!r}: state leaks across reset (a used, reset policy acts unlike a fresh one)"
    actions = [fresh.decide(random_state(rng)) for _ in range(400)] + first  # 5. lossless flag
    n_actions += len(actions)
    trusts = any(a.kind is TRUST for a in actions)
    kinds |= {a.kind for a in actions}
    assert isinstance(policy.lossless, bool), f"{policy!r}.lossless is not a bool"
    if policy.lossless:
        assert policy.acceptance is None, f"{policy!r} claims lossless but names the rule {policy.acceptance}"
        assert not trusts, f"{policy!r} claims lossless but trusted drafts"
    else:
        assert policy.acceptance is not None or trusts, f"{policy!r} claims lossy but never trusted nor relaxed"
    points = _search_space(policy, n_points)  # 6. search space and params round trip
    try:
        again = type(policy)(**policy.params())
    except TypeError as err:
        raise AssertionError(f"{type(policy).__name__}(**params()) fails: {err}") from None
    assert again.params() == policy.params(), f"params() do not round-trip: {again.params()} != {policy.params()}"
    return {"actions": n_actions, "kinds": sorted(k.value for k in kinds), "search_space_points": points}
