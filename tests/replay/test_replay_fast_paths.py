"""The replay's fast paths change no result: states grown from per-trace prefixes, strict walks memoised per
(trace, row, m), lossy walks memoised under their mask or the relaxed rule's answers, and the running stats
left out for policies that declare ``reads_stats = False`` (a declaration that lies fails loudly), and a policy's
one-pass draft phase (``decide_chain``) equal to asking its ``decide`` depth by depth."""

from __future__ import annotations

import copy
import itertools
import random

import pytest

import specpolicy.calibration  # noqa: F401 - registers ``calibrated``
import specpolicy.replay.simulate as simulate
from specpolicy.decoding.step import draft_phase
from specpolicy.policies import (
    AcceptanceStats,
    Action,
    FixedPolicy,
    GoodputPolicy,
    StepState,
    get_policy,
    list_policies,
)
from specpolicy.policies.base import chain_hook, reads_stats
from specpolicy.replay import replay, synthetic_trace

DECLARED = {"ar", "fixed", "threshold", "entropy", "heuristic", "typical", "topk_relaxed"}  # reads_stats = False
VARIANTS = [(name, {}) for name in list_policies()] + [
    ("threshold", {"tau_extend": 0.3, "tau_trust": 0.8, "k_max": 5}), ("heuristic", {"k_init": 2, "k_max": 6}),
    ("typical", {"eps": 0.2, "k": 3}), ("topk_relaxed", {"k_top": 2, "delta": 0.5, "k": 5}),
    ("goodput", {"tau_trust": 0.8}), ("goodput", {"explore": 0.0, "lookahead": 1, "weight": 0.3, "gamma": 2.0}),
    ("calibrated", {"base": "goodput", "calibrator": "isotonic"})]


def _traces():
    return [synthetic_trace(n_prompts=4, max_new_tokens=40, k_max=6, seed=21),
            synthetic_trace(n_prompts=4, max_new_tokens=40, k_max=6, seed=22, eos_ids=(5, 7, 9))]


def _digest(res):
    return repr((res.prompts, sorted(res.summary.items())))


def test_built_in_declarations():
    assert {name for name in list_policies() if not reads_stats(get_policy(name))} == DECLARED

    class Peeks(FixedPolicy):  # its own decide: the inherited promise does not cover it
        def decide(self, state):
            return Action.extend() if state.depth < 1 + (state.stats.rate(1) > 0.5) else Action.verify()

    assert reads_stats(Peeks(k=2)) and not reads_stats(FixedPolicy(k=2))


def test_leaving_stats_out_changes_no_result(monkeypatch):
    """Every registered policy and variant, with and without EOS, two horizons: the replay that leaves the stats
    out of the states (and tallies them at the end) equals the one that keeps them in every state."""
    cases = [(t, name, params, kw) for t, (name, params), kw in
             itertools.product(_traces(), VARIANTS, ({}, {"max_new_tokens": 17, "max_draft": 3}))]
    fast = [_digest(replay(name, t, **kw, **params)) for t, name, params, kw in cases]
    monkeypatch.setattr(simulate, "reads_stats", lambda policy: True)
    kept = [_digest(replay(name, t, **kw, **params)) for t, name, params, kw in cases]
    assert fast == kept


def test_a_policy_that_reads_stats_sees_them_and_a_false_declaration_fails():
    class Reader(FixedPolicy):
        def reset(self):
            self.expected, self.seen = AcceptanceStats(), []

        def observe(self, outcome):
            self.expected = self.expected.updated(outcome)

        def decide(self, state):
            self.seen.append(state.stats == self.expected)
            return super().decide(state) if state.stats.rate(1) > 0.2 else Action.verify()

    trace = _traces()[0]
    reader = Reader(k=3)
    res = replay(reader, trace)
    assert reader.seen and all(reader.seen) and res.prompts[-1].accept_reached == reader.expected.attempted

    class Liar(Reader):
        reads_stats = False  # declared next to a decide that reads them

        def decide(self, state):
            return Action.extend() if state.depth < 1 + (state.stats.rate(1) > 0.5) else Action.verify()

    with pytest.raises(TypeError, match="reads_stats = False"):
        replay(Liar(k=3), trace)

    class Copies(FixedPolicy):  # copies its state (Python probes __deepcopy__ and the like) but never reads stats
        reads_stats = False

        def decide(self, state):
            return super().decide(copy.deepcopy(state))

    assert _digest(replay(Copies(k=3), trace)) == _digest(replay(FixedPolicy(k=3), trace))
    assert not hasattr(simulate._STATS_LEFT_OUT, "__wrapped__")  # inspect.unwrap's probe (doctest collection)


def test_memoised_walks_do_not_depend_on_what_was_replayed_before():
    fresh = [_digest(replay("fixed", t, max_new_tokens=17, k=3)) for t in _traces()]
    warm = []
    for t in _traces():
        for name, params in VARIANTS:
            replay(name, t, **params)  # fills the memo along other schedules and the full horizon
        warm.append(_digest(replay("fixed", t, max_new_tokens=17, k=3)))
    assert warm == fresh


def test_states_grown_from_prefixes_equal_extended_ones():
    feats = {1: (11, 0.9, 0.2, 0.8), 2: (12, 0.4, 1.1, 0.1), 3: (13, 0.7, 0.5, 0.3)}
    prefixes, chain = simulate._prefixes([11, 12, 13, -1], [0.9, 0.4, 0.7, 0.0], [0.2, 1.1, 0.5, 0.0],
                                         [0.8, 0.1, 0.3, 0.0])
    assert chain == prefixes[3]
    for k, budget in itertools.product(range(1, 6), range(0, 5)):
        start = StepState(step=2, position=7, budget=budget, last_accepted=1, native_depths=2)
        slow = draft_phase(get_policy("fixed", k=k), start, feats.get)
        fast = draft_phase(get_policy("fixed", k=k), start, prefixes.__getitem__, StepState.with_prefix)
        assert fast == slow


GOODPUT = [{}, {"tau_trust": 0.8}, {"explore": 0.0, "lookahead": 1, "weight": 0.3, "gamma": 2.0},
           {"k_max": 3, "lookahead": 2, "prior_accept": 0.2, "step_cost": [1.0, 1.05, 1.5, 1.6]},
           {"weight": 0.0, "prior_n": 0.5, "tau_trust": 0.6, "step_cost": [1.0, 1.3]}]
CHAINED = {"ar", "fixed", "typical", "topk_relaxed", "heuristic", "threshold", "entropy", "goodput", "calibrated"}


def test_chains_equal_their_decide_depth_by_depth():
    """``decide_chain`` (the replay's one-pass draft phase) against ``draft_phase`` asking ``decide`` depth by depth,
    for every built-in policy that has one, on random chains (some shorter than the budget: the drafter runs out),
    stats, budgets and depths already reached."""
    variants = VARIANTS + [("goodput", params) for params in GOODPUT] + [
        ("threshold", {"tau_extend": 0.0, "k_max": 1}), ("entropy", {"max_entropy": 0.4, "k_max": 3}),
        ("fixed", {"k": 1}), ("heuristic", {"k_init": 1, "k_max": 2}),
        ("calibrated", {"base": "goodput", "calibrator": "isotonic"}),
        ("calibrated", {"base": "threshold", "base_params": {"tau_trust": 0.7}, "calibrator": "temperature"})]
    policies = [get_policy(name, **params) for name, params in variants]
    assert {p.name for p in policies if chain_hook(p) is not None} == CHAINED
    policies = [p for p in policies if chain_hook(p) is not None]
    rng = random.Random(11)
    for trial in range(3000):
        n = rng.randint(0, 7)
        conf = tuple(rng.choice([rng.random(), 0.99, 0.05, 0.5, 0.3, 0.8]) for _ in range(n))  # ties at thresholds too
        ent = tuple(rng.choice([rng.random() * 2, 0.01, 3.0, 1.0, 0.4]) for _ in range(n))
        chain = (tuple(range(10, 10 + n)), conf, ent, tuple(rng.random() for _ in range(n)))
        width = rng.randint(0, 8)
        att = tuple(rng.randint(0, rng.choice([30, 30, 900])) for _ in range(width))  # 900: past goodput's first table
        stats = AcceptanceStats(attempted=att, accepted=tuple(rng.randint(0, a) for a in att))
        m0 = rng.randint(0, n)
        start = StepState(budget=rng.randint(0, 9), stats=stats).with_prefix(tuple(x[:m0] for x in chain))
        feats = {j: tuple(x[j - 1] for x in chain) for j in range(m0 + 1, n + 1)}
        for policy in policies:
            if policy.name == "heuristic":
                policy._k = rng.randint(policy.k_min, policy.k_max)  # where observe has moved it
            state, action = draft_phase(policy, start, feats.get)
            assert policy.decide_chain(start, chain) == (len(state.drafts), action), (policy, trial)


def test_a_subclass_with_its_own_decide_does_not_inherit_the_chain():
    class Shallow(GoodputPolicy):
        def decide(self, state):
            return Action.verify() if state.depth >= 1 else super().decide(state)

    class Peeks(FixedPolicy):
        def decide(self, state):
            return Action.extend() if state.depth < 1 + (state.stats.rate(1) > 0.5) else Action.verify()

    assert chain_hook(GoodputPolicy()) is not None and chain_hook(Shallow()) is None and chain_hook(Peeks()) is None
    wrapped = get_policy("calibrated", base="goodput")
    assert chain_hook(wrapped) is not None  # its chain is its base's, on calibrated confidences
    wrapped._base = Shallow()
    assert chain_hook(wrapped) is None  # ... so a base without a chain leaves it without one
    t = _traces()[0]
    assert replay(Shallow(), t).summary["mean_draft_len"] <= 1


def test_chains_change_no_replay(monkeypatch):
    """Replays of every registered policy and variant through ``decide_chain`` equal those asking ``decide`` depth
    by depth, with and without EOS, two horizons."""
    variants = VARIANTS + [("goodput", params) for params in GOODPUT]
    cases = [(t, name, params, kw) for t, (name, params), kw in
             itertools.product(_traces(), variants, ({}, {"max_new_tokens": 17, "max_draft": 3}))]
    fast = [_digest(replay(name, t, **kw, **params)) for t, name, params, kw in cases]
    monkeypatch.setattr(simulate, "chain_hook", lambda policy: None)
    slow = [_digest(replay(name, t, **kw, **params)) for t, name, params, kw in cases]
    assert fast == slow


def test_lossy_walks_memoised_across_rule_parameters_equal_fresh_ones():
    """A study's trials: relaxed rules and trust thresholds with other parameters each, replayed one after another
    on the same traces (lossy walks memoised under their mask or the rule's answers, shared by every trial) give
    what each gives on freshly built tables; and the memo is shared: later trials find walks earlier ones stored."""
    rng = random.Random(11)
    trials = [("typical", {"eps": rng.uniform(0.02, 0.4), "delta": rng.uniform(0.05, 1.0), "k": rng.randint(1, 6)})
              for _ in range(6)]
    trials += [("topk_relaxed", {"k_top": rng.randint(1, 4), "delta": rng.uniform(0.0, 2.0), "k": rng.randint(1, 6)})
               for _ in range(6)]
    trials += [("threshold", {"tau_extend": 0.3, "tau_trust": rng.uniform(0.5, 0.95), "k_max": 6}) for _ in range(4)]
    for t in _traces():
        shared = [_digest(replay(name, t, **params)) for name, params in trials]
        stored = sum(len(row[8]) for table in simulate._row_tables(t) for row in table)
        fresh = []
        for name, params in trials:
            simulate._TABLES.pop(t, None)
            fresh.append(_digest(replay(name, t, **params)))
        assert shared == fresh
        assert stored > sum(len(row[8]) for table in simulate._row_tables(t) for row in table) > 0


def test_goodput_rates_reused_within_a_step_equal_fresh_ones():
    rng = random.Random(3)
    kept = GoodputPolicy(step_cost=(1.0, 1.2, 1.35, 1.5, 1.7))
    for _ in range(300):
        n = rng.randint(0, 4)
        att = tuple(rng.randint(0, 20) for _ in range(n))
        stats = AcceptanceStats(att, tuple(rng.randint(0, a) for a in att))
        state = StepState(budget=rng.randint(1, 9), stats=stats)
        while True:
            fresh = GoodputPolicy(step_cost=kept.step_cost).decide(state)
            assert kept.decide(state) == fresh
            if fresh.kind.value != "extend":
                break
            state = state.extended(1, rng.random(), 0.5, 0.5)
