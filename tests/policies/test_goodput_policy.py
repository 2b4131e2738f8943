"""``goodput`` without a model: its decisions against the goodput rule written out independently, the cost model
reaching them (cheaper steps draft deeper, a jump in the cost is seen with lookahead), the acceptance sources, trust,
parameter errors, and the helpers that fill ``step_cost`` from a cost model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from specpolicy.decoding.step import draft_phase
from specpolicy.policies import (
    AcceptanceStats,
    ActionKind,
    GoodputPolicy,
    PolicyParamError,
    StepOutcome,
    StepState,
    get_policy,
    relative_step_cost,
    step_cost_missing,
    with_step_cost,
)
from specpolicy.testing.contract import random_state


def cost_at(step_cost, m):
    """T(m) with linear extrapolation past the end (slope of the last two entries, at least 0)."""
    if m < len(step_cost):
        return step_cost[m]
    return step_cost[-1] + (m - len(step_cost) + 1) * max(step_cost[-1] - step_cost[-2], 0.0)


def oracle(p: GoodputPolicy, state: StepState) -> ActionKind:
    """The rule of the module docstring, with the products and sums written out (no running sums)."""
    m, cost = state.depth, p.step_cost
    limit = min(p.k_max, state.budget)
    stats = state.stats

    def r(j):  # Beta posterior mean at depth j (1-based), raised to its upper confidence bound
        mean = stats.rate(j, p.prior_accept, p.prior_n)
        n = (stats.attempted[j - 1] if j <= len(stats.attempted) else 0) + p.prior_n
        return min(1.0, mean + p.explore * (mean * (1 - mean) / n) ** 0.5)

    trusted, a = True, []
    for j in range(1, m + 1):
        c = state.confidence[j - 1]
        trusted = trusted and p.tau_trust < 1 and c >= p.tau_trust
        a.append(1.0 if trusted else p.weight * c ** p.gamma + (1 - p.weight) * r(j))
    for h in range(1, p.lookahead + 1):
        j = m + h
        a.append(p.weight * state.confidence[m - 1] ** p.gamma + (1 - p.weight) * r(j) if m else r(j))

    def expected(n):  # E(n) = 1 + sum_i prod_{j <= i} a_j
        return 1 + sum(float(np.prod(a[:i])) for i in range(1, n + 1))

    g_now = expected(m) / cost_at(cost, m)
    pays = any(expected(m + h) / cost_at(cost, m + h) > g_now for h in range(1, min(p.lookahead, limit - m) + 1))
    if m < limit and pays:
        return ActionKind.EXTEND
    if m and p.tau_trust < 1 and state.confidence[0] >= p.tau_trust:
        return ActionKind.TRUST
    return ActionKind.VERIFY


@pytest.mark.parametrize("params", [
    {"step_cost": (1.0, 1.4)},
    {"step_cost": (1.0, 1.1, 1.25, 1.3, 2.4, 2.45), "lookahead": 3, "weight": 0.8, "gamma": 2.0},
    {"step_cost": (2.0, 2.2), "weight": 0.0, "prior_accept": 0.9, "prior_n": 2.0, "k_max": 5},
    {"step_cost": (1.0, 1.6, 1.7), "weight": 1.0, "gamma": 0.5, "tau_trust": 0.8, "lookahead": 2},
    {"step_cost": (1.0, 1.3, 1.5), "weight": 0.5, "explore": 0.0},
    {"step_cost": (1.0, 1.3, 1.5), "weight": 0.3, "explore": 2.5, "prior_accept": 0.4},
])
def test_decisions_follow_the_goodput_rule(params):
    p, rng, kinds = GoodputPolicy(**params), np.random.default_rng(0), set()
    for _ in range(3000):
        state = random_state(rng)
        got = p.decide(state)
        assert got.kind is oracle(p, state), state
        kinds.add(got.kind)
    assert ActionKind.EXTEND in kinds and ActionKind.VERIFY in kinds


@pytest.mark.parametrize("params", [
    {"step_cost": (1.0, 1.2, 1.5), "weight": 0.5, "gamma": 0.75, "prior_n": 16.0},
    {"step_cost": (1.0, 1.3), "weight": 0.0, "explore": 0.0, "k_max": 4},
])
def test_rates_cached_across_depths_and_steps_match_the_rule(params):
    """Stats as a generation grows them (each step adds a walked prefix), a reset now and then, and unrelated stats
    in between, each asked at a few depths: ``goodput``'s per-step cache of the counts and its table of rates give
    the oracle's decisions throughout."""
    p, rng, kinds = GoodputPolicy(**params), np.random.default_rng(1), set()
    stats = AcceptanceStats()
    for step in range(4000):
        if rng.random() < 0.02:
            p.reset()
            stats = AcceptanceStats()
        elif rng.random() < 0.05:
            stats = random_state(rng).stats  # not a prefix change of the last counts
        else:
            verdicts = tuple(bool(v) for v in rng.random(int(rng.integers(0, 10))) < 0.7)
            stats = stats.updated(StepOutcome(len(verdicts), 0, (False,) * len(verdicts), verdicts, 1))
        for m in range(int(rng.integers(1, 4))):  # a few depths of one step: the same stats object
            conf = tuple(float(c) for c in rng.random(m))
            state = StepState(drafts=(1,) * m, confidence=conf, budget=int(rng.integers(0, 10)), stats=stats)
            got = p.decide(state)
            assert got.kind is oracle(p, state), (step, state)
            kinds.add(got.kind)
    assert ActionKind.EXTEND in kinds and ActionKind.VERIFY in kinds


def test_rates_at_long_generation_counts_match_the_rule():
    """Counts of a long generation (hundreds to thousands of attempts per depth, past the rows the rate table computes
    at once) give the oracle's decisions too, and the table grows only as far as the counts seen."""
    p, rng, kinds = GoodputPolicy(step_cost=(1.0, 1.2, 1.5), weight=0.4, explore=1.5), np.random.default_rng(2), set()
    for _ in range(1500):
        depth = int(rng.integers(1, 9))
        att = np.sort(rng.integers(0, 3000, depth))[::-1]
        acc = (att * rng.uniform(0.3, 1.0, depth)).astype(int)
        stats = AcceptanceStats(tuple(int(x) for x in att), tuple(int(x) for x in acc))
        m = int(rng.integers(0, 4))
        state = StepState(drafts=(1,) * m, confidence=tuple(float(c) for c in rng.random(m)),
                          budget=int(rng.integers(1, 12)), stats=stats)
        got = p.decide(state)
        assert got.kind is oracle(p, state), state
        kinds.add(got.kind)
        if max(stats.attempted) >= len(p._table[0]):  # not read by this decide (m >= its limit): grown here
            p._grow(max(stats.attempted))
        rate, wr = p._table  # the table's entries are the rule's r_j, bit for bit (decisions rarely sit that close)
        for j, (n, a) in enumerate(zip(stats.attempted, stats.accepted), 1):
            mean = stats.rate(j, p.prior_accept, p.prior_n)
            r = min(1.0, mean + p.explore * math.sqrt(mean * (1 - mean) / (n + p.prior_n)))
            assert (rate[n][a], wr[n][a]) == (r, (1 - p.weight) * r), (n, a)
    assert ActionKind.EXTEND in kinds and ActionKind.VERIFY in kinds
    assert len(p._table[0]) <= 2 * 3000


def depth_reached(p: GoodputPolicy, conf: float, budget: int = 100) -> int:
    state = StepState(budget=budget)
    while p.decide(state).kind is ActionKind.EXTEND:
        state = state.extended(len(state.drafts), conf, 0.1, 0.5)
    return state.depth


@pytest.mark.parametrize("step_cost", [(1.0, 1.4), (1.0, 1.1, 1.25, 1.3, 2.4, 2.45), (1.0, 1.2, 1.2, 1.2, 1.5),
                                       (1.0, 1.5, 1.3, 1.6, 1.4), (1.0, 1.0)])
def test_the_lookahead_bound_skips_only_lookaheads_that_stop(step_cost):
    """``_bounds`` lets the rule stop without walking its look-ahead; the same policy with the bound switched off
    (every entry -inf: the look-ahead always walked) decides the same on every state, at every depth."""
    rng = np.random.default_rng(3)
    for lookahead, k_max in ((2, 16), (4, 16), (4, 5)):
        params = {"step_cost": step_cost, "lookahead": lookahead, "k_max": k_max, "weight": 0.7, "gamma": 1.5}
        fast, walked = GoodputPolicy(**params), GoodputPolicy(**params)
        walked._bound = tuple((-math.inf,) * len(row) for row in walked._bound)
        assert any(b > 0 for row in fast._bound for b in row[2:] if b < math.inf) or step_cost == (1.0, 1.0)
        for _ in range(1500):
            state = random_state(rng)
            assert fast.decide(state) == walked.decide(state), state


def test_cheaper_steps_draft_deeper():
    """Same confidences, growing cost per draft: the depth drafted never grows, and does shrink from end to end."""
    for conf in (0.6, 0.8, 0.95):
        depths = [depth_reached(GoodputPolicy(step_cost=(1.0, 1.0 + s), weight=1.0, k_max=16), conf)
                  for s in (0.02, 0.1, 0.2, 0.4, 0.8)]
        assert depths == sorted(depths, reverse=True) and depths[0] > depths[-1], (conf, depths)


def test_a_cost_jump_is_crossed_only_with_lookahead():
    jump = (1.0, 1.05, 1.1, 1.15, 2.0, 2.02, 2.04, 2.06, 2.08)  # a longer forward gets dearer at 5 tokens
    short = depth_reached(GoodputPolicy(step_cost=jump, weight=1.0, lookahead=1), 0.99)
    long = depth_reached(GoodputPolicy(step_cost=jump, weight=1.0, lookahead=4), 0.99)
    assert short == 3 and long == 8


def test_the_step_cost_is_extrapolated_linearly():
    short, long = GoodputPolicy(step_cost=(1.0, 1.3)), GoodputPolicy(step_cost=tuple(1 + 0.3 * m for m in range(17)))
    rng = np.random.default_rng(1)
    for _ in range(500):
        state = random_state(rng)
        assert short.decide(state) == long.decide(state)


def test_counts_and_confidence_are_the_two_sources():
    counts_only, conf_only = GoodputPolicy(step_cost=(1.0, 1.3), weight=0.0), GoodputPolicy(step_cost=(1.0, 1.3),
                                                                                             weight=1.0)
    good, bad = AcceptanceStats((50, 40), (45, 36)), AcceptanceStats((50, 40), (5, 1))
    sure, unsure = (0.99,), (0.01,)
    def kind(p, conf, stats):
        return p.decide(StepState(drafts=(1,), confidence=conf, stats=stats)).kind
    assert kind(counts_only, sure, good) is kind(counts_only, unsure, good) is ActionKind.EXTEND
    assert kind(counts_only, sure, bad) is kind(counts_only, unsure, bad) is ActionKind.VERIFY
    assert kind(conf_only, sure, bad) is ActionKind.EXTEND and kind(conf_only, unsure, good) is ActionKind.VERIFY


def test_trust_is_off_by_default_and_trusts_the_confident_prefix():
    assert GoodputPolicy().lossless and not GoodputPolicy(tau_trust=0.9).lossless
    p = GoodputPolicy(step_cost=(1.0, 1.3), tau_trust=0.9, k_max=3)
    state = StepState(drafts=(4, 8, 15), confidence=(0.95, 0.5, 0.99))
    assert p.decide(state).mask == (True, False, False)
    assert GoodputPolicy(step_cost=(1.0, 1.3), k_max=3).decide(state).kind is ActionKind.VERIFY


@pytest.mark.parametrize(("value", "match"), [
    ((1.0,), "is invalid"), ((1.0, -0.5), "is invalid"), ("1,2", "not a list"), ((1.0, float("nan")), "is invalid"),
    ((1.0, True), "is invalid"), (3.0, "not a list"),
])
def test_a_bad_step_cost_is_one_clear_line(value, match):
    with pytest.raises(PolicyParamError, match=rf"^goodput: step_cost=.* {match}.*; allowed: null .* >= 2 positive"):
        get_policy("goodput", step_cost=value)


class Linear:
    def __init__(self, t0=0.01, per_draft=0.003):
        self.t0, self.per_draft = t0, per_draft

    def step_s(self, m):
        return self.t0 + self.per_draft * m


def test_with_step_cost_fills_only_what_is_missing():
    p = GoodputPolicy(k_max=3, weight=0.2)
    filled = with_step_cost(p, Linear())
    assert filled.step_cost == (1.0, 1.3, 1.6, 1.9) and filled.params() == {**p.params(), "step_cost": filled.step_cost}
    assert with_step_cost(filled, Linear(per_draft=0.5)) is filled
    threshold = get_policy("threshold")
    assert with_step_cost(threshold, Linear()) is threshold
    assert step_cost_missing(p.params()) and not step_cost_missing(filled.params())
    assert relative_step_cost(Linear(0.02, 0.001), 2) == (1.0, 1.05, 1.1)
    with pytest.raises(PolicyParamError, match="step_s"):
        relative_step_cost(Linear(0.0, 0.1))


def test_with_step_cost_reaches_a_calibrated_base():
    import specpolicy.calibration  # noqa: F401 - registers ``calibrated``

    p = get_policy("calibrated", base="goodput", base_params={"k_max": 2}, calibrator="identity")
    assert step_cost_missing(p.params())
    filled = with_step_cost(p, Linear())
    assert filled.base_policy.step_cost == (1.0, 1.3, 1.6) and not step_cost_missing(filled.params())


def test_exploration_bonus_restarts_drafting_that_a_low_prior_would_stop_for_good():
    """Counts only grow where the policy drafts: with explore=0 a prior below the real acceptance never drafts at
    m = 0 (an absorbing state); the upper confidence bound drafts, and shrinks as attempts accumulate."""
    from specpolicy.policies import AcceptanceStats

    cost = (1.0, 1.7, 2.0, 2.3, 2.4)  # a = 0.6 at every depth: E(h) / T(h) <= 1 for h = 1..4
    fresh = StepState(budget=8)
    assert GoodputPolicy(step_cost=cost, prior_accept=0.6, explore=0.0).decide(fresh).kind is ActionKind.VERIFY
    assert GoodputPolicy(step_cost=cost, prior_accept=0.6, explore=1.0).decide(fresh).kind is ActionKind.EXTEND
    poor = StepState(budget=8, stats=AcceptanceStats(accepted=(10,), attempted=(100,)))  # 10% accepted at depth 1
    assert GoodputPolicy(step_cost=cost, prior_accept=0.6, explore=1.0).decide(poor).kind is ActionKind.VERIFY


def test_a_chain_from_no_draft_grows_the_rate_table_it_reads():
    """``decide_chain`` alone (the replay's lossless draft phase, which grows the rate table when a read falls past
    it) on counts rising to thousands: the depth and action that asking ``decide`` depth by depth gives."""
    rng = np.random.default_rng(5)
    params = {"step_cost": (1.0, 1.1, 1.5, 1.55, 1.6), "weight": 0.6, "lookahead": 3, "k_max": 6}
    chained, asked = GoodputPolicy(**params), GoodputPolicy(**params)
    for top in np.linspace(5, 3000, 300).astype(int):
        depth = int(rng.integers(0, 9))
        att = np.sort(rng.integers(0, top + 1, depth))[::-1]
        acc = (att * rng.uniform(0.3, 1.0, depth)).astype(int)
        stats = AcceptanceStats(tuple(int(x) for x in att), tuple(int(x) for x in acc))
        n = int(rng.integers(0, 9))
        chain = (tuple(range(n)), tuple(float(c) for c in rng.random(n)), (0.1,) * n, (0.5,) * n)
        start = StepState(budget=int(rng.integers(0, 10)), stats=stats)
        feats = {j: tuple(x[j - 1] for x in chain) for j in range(1, n + 1)}
        state, action = draft_phase(asked, start, feats.get)
        assert chained.decide_chain(start, chain) == (len(state.drafts), action), (top, stats, chain)
    assert len(chained._table[0]) > 2000
