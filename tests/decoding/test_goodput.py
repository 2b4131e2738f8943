"""``goodput`` through the real decoder: the cost model reaches its decisions, its replay equals real decoding when
both get the same ``step_cost`` (the trace's cost model, as ``replay`` and ``decode_real`` fill it), it stays
lossless, and a run fills ``step_cost`` from the measured cost model (or, resuming, from its records)."""

from __future__ import annotations

import dataclasses
import random
from types import SimpleNamespace

import pytest

from specpolicy import generate
from specpolicy.decoding.cost import CostModel, _fit_drafts, fit_cost, measure_cost, sweep_policies
from specpolicy.policies import get_policy, with_step_cost
from specpolicy.replay import prompt_from_generation, replay
from specpolicy.replay.compare import decode_real
from specpolicy.replay.record import record_trace
from specpolicy.testing import small_model

N, K = 20, 5
PROMPTS = [[(5 * i + 3 * j) % 60 + 2 for j in range(6 + i)] for i in range(4)]
FIELDS = ("new_tokens", "steps", "drafted", "accepted", "accept_reached", "accept_ok", "finished_by")


@pytest.fixture(scope="module")
def model():
    return small_model(seed=3, k=2, tie=0.8)


@pytest.fixture(scope="module")
def trace(model):
    return record_trace(model, PROMPTS, N, K, cost_reps=1, progress=False)


def trimmed(x):
    x = list(x) if isinstance(x, tuple) else x
    while isinstance(x, list) and x and x[-1] == 0:
        x.pop()
    return x


def test_replay_equals_real_decoding_with_the_same_step_cost(model, trace):
    cheap = CostModel(t_target=(0.010, 0.0101), t_mtp=0.0002)  # drafting almost free: goodput drafts deep
    for cost in (trace.cost, cheap):
        policy = with_step_cost(get_policy("goodput", lookahead=2), cost)
        rep = replay(policy, trace)
        assert rep.summary["params"]["step_cost"] == policy.step_cost and rep.summary["approximate"] is False
        for i, ids in enumerate(PROMPTS):
            real = prompt_from_generation(generate(model, ids, policy, max_new_tokens=N, max_draft=K), trace.cost, K)
            for f in FIELDS:
                assert trimmed(getattr(rep.prompts[i], f)) == trimmed(getattr(real, f)), (cost, i, f)


def test_replay_fills_the_traces_cost_and_decode_real_fills_the_same(model, trace):
    policy = get_policy("goodput")
    rep = replay(policy, trace)
    assert rep.summary["params"]["step_cost"] == with_step_cost(policy, trace.cost).step_cost
    real, _ = decode_real(model, trace.select([0, 1]), {"goodput": policy}, progress=False)
    for i, res in enumerate(real["goodput"]):
        got = prompt_from_generation(res, trace.cost, K)
        assert all(trimmed(getattr(rep.prompts[i], f)) == trimmed(getattr(got, f)) for f in FIELDS)


def test_the_cost_model_reaches_the_decisions_and_output_stays_lossless(model):
    ar = [generate(model, ids, "ar", max_new_tokens=N).token_ids for ids in PROMPTS]
    drafted = {}
    for per_draft in (0.02, 0.3, 2.0):
        policy = get_policy("goodput", step_cost=(1.0, 1.0 + per_draft))
        runs = [generate(model, ids, policy, max_new_tokens=N, max_draft=K) for ids in PROMPTS]
        assert [r.token_ids for r in runs] == ar
        drafted[per_draft] = sum(len(s.drafts) for r in runs for s in r.steps) / sum(len(r.steps) for r in runs)
    assert drafted[0.02] > drafted[0.3] > drafted[2.0] == 0.0


def plan_for(policy: str, **params):
    from specpolicy.runs.checks import validate

    return validate(SimpleNamespace(
        policy=SimpleNamespace(name=policy, **params), baselines=True, threads=1, bootstrap=0, nll=False,
        model=SimpleNamespace(path="tiny", device="cpu", dtype=None),
        data=SimpleNamespace(name="stdlib_test", n_prompts=2, prompt_tokens=16, seed=0, split="test"),
        decode=SimpleNamespace(temperature=0.0, top_p=1.0, top_k=0, seed=0, max_new_tokens=8, max_draft=8)))


def test_a_run_fills_step_cost_from_the_measured_cost_model_or_its_records(tmp_path):
    from specpolicy import __version__
    from specpolicy.runs import RecordStore
    from specpolicy.runs.checks import check_resume, fill_step_cost

    plan = plan_for("goodput", k_max=2)
    assert plan.arms[-1].params["step_cost"] is None
    calls = []
    measured = CostModel(t_target=(0.010, 0.011, 0.012), t_mtp=0.002)
    filled = fill_step_cost(plan, lambda: calls.append(1) or measured)
    assert filled.arms[-1].params["step_cost"] == (1.0, 1.3, 1.6) and calls == [1]
    assert [a.params for a in filled.arms[:-1]] == [a.params for a in plan.arms[:-1]]  # baselines untouched
    other = plan_for("threshold")
    assert fill_step_cost(other, lambda: calls.append(1)) is other and calls == [1]  # nothing to fill: no measuring
    record = {"prompt_id": "a.py:1", "policy": "goodput", "params": dict(filled.arms[-1].params,
              step_cost=[1.0, 1.3, 1.6]), "run_key": plan.run_key, "specpolicy_version": __version__}
    RecordStore(tmp_path).add(record, steps=[])  # a run that stopped after one record
    store = RecordStore(tmp_path)
    check_resume(store, plan, tmp_path, __version__)  # a step_cost left None resumes the recorded one
    check_resume(store, filled, tmp_path, __version__)  # the same numbers, JSON lists vs tuples
    again = fill_step_cost(plan, CostModel(t_target=(0.01, 0.02, 0.03), t_mtp=0.01), store)
    assert again.arms[-1].params["step_cost"] == (1.0, 1.3, 1.6)  # reused, not re-measured
    with pytest.raises(Exception, match="records of another configuration"):
        check_resume(store, plan_for("goodput", k_max=2, step_cost=[1.0, 2.0]), tmp_path, __version__)


def test_replay_prices_catch_up_rows_as_the_real_run_is_priced(model, trace):
    """With ``t_row`` (and ``t_ctx`` for a depth's first draft) the replay's modelled seconds are the real steps'
    (``CostModel.generation_s``) prompt by prompt, to the bit (a study's decode evaluator and its replay agree
    exactly), and more than without it: adaptive depths and first drafts at a depth catch up several rows. The costs
    are numbers like measured ones, whose sums round differently in another order."""
    plain = CostModel(t_target=(0.0100137, 0.0110291, 0.0120373), t_mtp=0.00201937, t_overhead=0.000537219,
                      t_first=0.000311713)
    rows = dataclasses.replace(plain, t_row=0.000301977)
    ctx = dataclasses.replace(rows, t_ctx=0.000129313)
    rng = random.Random(4)  # measured-like numbers: each sum of one step's costs rounds its own way
    drawn = [CostModel(t_target=tuple(rng.uniform(0.005, 0.012) for _ in range(3)), t_mtp=rng.uniform(1e-4, 2e-3),
                       t_overhead=rng.uniform(1e-5, 1e-3), t_first=rng.uniform(0, 1e-3), t_row=rng.uniform(1e-6, 1e-4),
                       t_ctx=rng.uniform(0, 1e-4)) for _ in range(30)]
    for policy in (get_policy("threshold", tau_extend=0.2, k_max=K), get_policy("fixed", k=2)):
        runs = [generate(model, ids, policy, max_new_tokens=N, max_draft=K) for ids in PROMPTS]
        for cost in drawn:
            replayed = replay(policy, dataclasses.replace(trace, cost=cost))
            assert [p.modelled_s for p in replayed.prompts] == [cost.generation_s(res) for res in runs], cost
        with_rows = replay(policy, dataclasses.replace(trace, cost=rows))
        with_ctx = replay(policy, dataclasses.replace(trace, cost=ctx))
        without = replay(policy, dataclasses.replace(trace, cost=plain))
        for i, res in enumerate(runs):
            assert with_rows.prompts[i].modelled_s == rows.generation_s(res)
            assert with_ctx.prompts[i].modelled_s == ctx.generation_s(res)
            assert without.prompts[i].modelled_s == plain.generation_s(res)
            assert without.prompts[i].modelled_s < with_ctx.prompts[i].modelled_s < with_rows.prompts[i].modelled_s
        assert with_rows.summary["modelled_speedup"] < without.summary["modelled_speedup"]


def test_the_loop_cost_model_fits_a_positive_catch_up_cost(model):
    cost = measure_cost(model, PROMPTS[3] * 3, 3, 2, loop_reps=2, loop_tokens=16)
    assert cost.t_mtp > 0 and cost.t_row >= 0
    assert CostModel.from_dict(cost.to_dict()) == cost


def test_a_sweep_drafts_every_block_size_in_every_k_steps_and_respects_the_budget(model):
    from specpolicy.policies import StepState

    sweep = sweep_policies(4, 2, seed=5)
    a, b = sweep.values()
    sizes = []
    for step in range(12):
        m = 0
        while a.decide(StepState(step=step, drafts=(1,) * m)).kind.value == "extend":
            m += 1
        sizes.append(m)
    assert [sorted(sizes[i : i + 4]) for i in (0, 4, 8)] == [[1, 2, 3, 4]] * 3 and a._ks != b._ks
    assert a.decide(StepState(step=0, budget=0)).kind.value == "verify"
    res = generate(model, PROMPTS[0], a, max_new_tokens=N, max_draft=4)
    assert {len(s.drafts) for s in res.steps} - {0} <= {1, 2, 3, 4}


def test_fit_cost_reads_the_verify_time_per_block_size_and_the_catch_up_rows_off_the_steps():
    """Synthetic runs with known costs: t_target[m] is the per-size median of the verify times, the draft phases give
    t_mtp and t_row, and a size without steps falls back to the isolated curve scaled to the runs' level."""
    from specpolicy.decoding.drafters.mtp import CatchUp

    rng = random.Random(1)
    verify = {m: 0.010 + 0.0005 * m for m in range(5)}  # m = 4 never occurs below

    def run(sizes, committed):
        cu, steps = CatchUp(32), []
        for m, c in zip(sizes, committed):
            rows = cu.step(m, c)
            d = 0.002 * m + 0.0001 * (rows - m - cu.fresh) + 0.00001 * cu.fresh if m else 0.0
            steps.append(SimpleNamespace(drafts=(7,) * m, committed=(7,) * c, draft_s=d,
                                         verify_s=verify[m] * rng.uniform(0.99, 1.01)))
        inside = sum(s.draft_s + s.verify_s for s in steps)
        stats = SimpleNamespace(wall_s=1.0 + inside + 0.0002 * len(steps), prefill_s=1.0)
        return SimpleNamespace(steps=steps, prompt_ids=(0,) * 32, stats=stats)

    ar = [run([0] * 40, [1] * 40)]
    sweeps = [run([rng.randint(1, 3) for _ in range(60)], [rng.randint(1, 4) for _ in range(60)]) for _ in range(3)]
    compute = CostModel(t_target=(0.005, 0.006, 0.007, 0.008, 0.009), t_mtp=0.001)
    cost = fit_cost(ar, sweeps, 4, compute)
    for m in range(4):
        assert cost.t_target[m] == pytest.approx(verify[m], rel=0.01)
    ratios = [verify[m] / compute.t_target[m] for m in range(4)]  # 2.0 .. 1.44: the runs' level, median over steps
    assert min(ratios) * 0.009 < cost.t_target[4] < max(ratios) * 0.009
    assert cost.t_mtp == pytest.approx(0.002, rel=0.01) and cost.t_row == pytest.approx(0.0001, rel=0.01)
    assert cost.t_first < 1e-9 and cost.drafting_s(2) == pytest.approx(0.004, rel=0.01)
    assert cost.t_overhead == pytest.approx(0.0002, rel=0.01)
    assert fit_cost(ar, sweeps, 4, compute, rows=False).t_row == 0.0


def test_the_draft_fit_recovers_the_three_costs_past_timing_spikes():
    rng = random.Random(0)
    drafts = []
    for i in range(300):
        m, r = rng.randint(1, 6), rng.choice([0, 1, 2, 3, 5, 9])
        fresh = rng.choice([0] * 9 + [60, 120])  # a depth's first draft over the context, now and then
        t = 0.8e-3 * m + 60e-6 * r + 20e-6 * fresh + rng.gauss(0, 2e-5)
        drafts.append((m, r, fresh, t * (8 if i % 50 == 0 else 1)))  # a spike every 50 phases
    t_mtp, t_row, t_ctx, t_first = _fit_drafts(drafts, fallback=1.0)
    assert t_mtp == pytest.approx(0.8e-3, rel=0.02) and t_row == pytest.approx(60e-6, rel=0.05)
    assert t_ctx == pytest.approx(20e-6, rel=0.05) and t_first == 0.0  # no cost per phase in these
    no_fresh = [(m, r, 0, t) for m, r, f, t in drafts if f == 0]
    t_mtp, t_row, t_ctx, _ = _fit_drafts(no_fresh, fallback=1.0)  # no first drafts at a depth: t_ctx 0 (t_row used)
    assert t_row == pytest.approx(60e-6, rel=0.05) and t_ctx == 0.0
    free = [(m, r, f, 0.8e-3 * m + 20e-6 * f + rng.gauss(0, 2e-5)) for m, r, f, _ in drafts]  # rows cost nothing
    t_mtp, t_row, t_ctx, _ = _fit_drafts(free, fallback=1.0)
    assert t_mtp == pytest.approx(0.8e-3, rel=0.02) and t_row >= 0 and t_ctx == pytest.approx(20e-6, rel=0.05)
    first = [(m, r, f, t + 0.5e-3) for m, r, f, t in drafts]  # each phase pays 0.5 ms once (its first draft)
    t_mtp, t_row, t_ctx, t_first = _fit_drafts(first, fallback=1.0)
    assert t_first == pytest.approx(0.5e-3, rel=0.05) and t_mtp == pytest.approx(0.8e-3, rel=0.02)
    assert t_row == pytest.approx(60e-6, rel=0.05)
    assert _fit_drafts(first, fallback=1.0, rows=False)[1:3] == (0.0, 0.0)
    assert _fit_drafts([(1, 0, 0, -1e-3), (2, 0, 0, -2e-3), (1, 0, 0, -1e-3), (3, 0, 0, -3e-3)],
                       fallback=1.5e-3) == (1.5e-3, 0.0, 0.0, 0.0)  # no positive fit


def test_a_cost_model_without_t_ctx_prices_fresh_rows_at_t_row():
    old = CostModel(t_target=(0.01, 0.011), t_mtp=0.002, t_row=0.0003)
    assert old.step_s(1, rows=61, fresh=59) == pytest.approx(old.step_s(1) + 60 * 0.0003)
    new = dataclasses.replace(old, t_ctx=0.0001)
    assert new.step_s(1, rows=61, fresh=59) == pytest.approx(old.step_s(1) + 0.0003 + 59 * 0.0001)
    assert CostModel.from_dict({k: v for k, v in new.to_dict().items() if k != "t_ctx"}) == old  # older traces
