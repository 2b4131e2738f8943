"""Replay against the real decoder, over every registered policy (one parametrised module, as Optuna checks every
sampler): lossless policies must agree exactly -- per prompt, and down to every ``StepState`` the policy saw and
every ``StepOutcome`` it was told; lossy ones run, flag ``approximate`` and agree exactly on prompts where neither run
committed a wrong token.
"""

from __future__ import annotations

import dataclasses
import zlib

import optuna
import pytest

from specpolicy import generate
from specpolicy.policies import Action, Policy, StepOutcome, get_policy, list_policies, policy_class
from specpolicy.replay import (
    ReplayError,
    prompt_from_generation,
    replay,
    side_by_side,
    summarise_generations,
)
from specpolicy.replay.record import record_trace
from specpolicy.replay.simulate import NOTE_CAPPED

N, K = 24, 6
PER_PROMPT = ("new_tokens", "steps", "drafted", "accepted", "accepted_hist", "accept_reached", "accept_ok",
              "trusted_tokens", "relaxed_tokens", "shadow_rejects", "finished_by")


@pytest.fixture(scope="module")
def trace(model, prompts):
    return record_trace(model, prompts, N, K, cost_reps=2, progress=False)


class Spy(Policy):
    """Wraps a policy and logs every state it is shown and every outcome it is told (timings blanked)."""

    name = "spy"

    def __init__(self, inner: Policy):
        self.inner, self.log = inner, []

    @property
    def acceptance(self):
        return self.inner.acceptance

    @property
    def lossless(self) -> bool:
        return self.inner.lossless

    def reset(self) -> None:
        self.log.append("reset")
        self.inner.reset()

    def decide(self, state):
        self.log.append(state)
        return self.inner.decide(state)

    def observe(self, outcome) -> None:
        self.log.append(dataclasses.replace(outcome, draft_s=0.0, verify_s=0.0))
        self.inner.observe(outcome)


def param_sets(name: str, n: int) -> list[dict]:
    """Defaults, then ``n`` random points of the policy's own search space (any registered policy)."""
    out = [{}]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=zlib.crc32(name.encode())))
    for _ in range(n):
        out.append(policy_class(name).search_space(study.ask()))
    return out


def real_runs(model, prompts, policy, max_new=N):
    return [generate(model, p, policy, max_new_tokens=max_new, max_draft=K) for p in prompts]


def check_against_real(model, prompts, trace, policy, max_new=N):
    spy_real, spy_rep = Spy(policy), Spy(policy)
    real = real_runs(model, prompts, spy_real, max_new)
    rep = replay(spy_rep, trace, max_new_tokens=max_new)
    per_prompt = [prompt_from_generation(r, trace.cost, K) for r in real]
    return real, rep, per_prompt, spy_real.log, spy_rep.log


def _fields(p):
    out = {f: getattr(p, f) for f in PER_PROMPT}
    hist = list(out["accepted_hist"])
    while hist and hist[-1] == 0:
        hist.pop()
    out["accepted_hist"] = hist
    return out


def check_exact(real, rep, per_prompt, log_real, log_rep, trace):
    for a, b in zip(rep.prompts, per_prompt):
        assert _fields(a) == _fields(b)
    assert log_rep == log_real  # every StepState and StepOutcome, in order
    real_summary = summarise_generations(real, trace.cost, K)
    for field, cmp in side_by_side(rep.summary, real_summary).items():
        assert cmp["equal"], (field, cmp)
    assert rep.summary["approximate"] is False
    assert rep.summary["notes"] == ([NOTE_CAPPED] if rep.summary["depth_capped_steps"] else [])


@pytest.mark.parametrize("name", list_policies())
def test_replay_matches_decoder_at_defaults(model, prompts, trace, name):
    policy = get_policy(name)
    real, rep, per_prompt, log_real, log_rep = check_against_real(model, prompts, trace, policy)
    assert len(prompts) >= 20
    if policy.lossless:
        check_exact(real, rep, per_prompt, log_real, log_rep, trace)
    else:
        check_lossy(rep, per_prompt, policy)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_policies())
def test_replay_matches_decoder_over_search_space(model, prompts, trace, name):
    for params in param_sets(name, 2)[1:]:
        policy = get_policy(name, **params)
        real, rep, per_prompt, log_real, log_rep = check_against_real(model, prompts, trace, policy)
        if policy.lossless:
            check_exact(real, rep, per_prompt, log_real, log_rep, trace)
        else:
            check_lossy(rep, per_prompt, policy)


def check_lossy(rep, per_prompt, policy):
    s = rep.summary
    assert s["approximate"] == bool(s["shadow_rejects"] or policy.acceptance is not None)
    assert bool([n for n in s["notes"] if n != NOTE_CAPPED]) == s["approximate"]
    assert 0 <= s["lossy_error_rate"] <= s["lossy_token_rate"] <= 1
    both_clean = [(a, b) for a, b in zip(rep.prompts, per_prompt) if not a.diverged and not b.diverged]
    for a, b in both_clean:  # no wrong token committed on either side: the runs are the same run
        assert _fields(a) == _fields(b)


@pytest.mark.parametrize("params", [{"tau_extend": 0.2, "tau_trust": 0.0, "k_max": 3},  # trust every draft
                                    {"tau_extend": 0.3, "tau_trust": 0.0, "k_max": K}])
def test_lossy_trust_is_exact_up_to_the_end_of_the_first_wrong_step(model, prompts, trace, params):
    """Per prompt, every state and outcome agrees with the real decoder up to and including the first step that
    commits a wrong trusted token (its later verdicts and its correction token come from the chain forward)."""
    policy = get_policy("threshold", **params)
    _, rep, per_prompt, log_real, log_rep = check_against_real(model, prompts, trace, policy)
    s = rep.summary
    assert s["lossy_tokens"] > 0 and s["shadow_rejects"] > 0 and s["approximate"] is True
    wrong_steps = 0
    for a, b in zip(_per_prompt(log_real), _per_prompt(log_rep)):
        cut = next((k for k, e in enumerate(a) if isinstance(e, StepOutcome)
                    and any(t and not v for t, v in zip(e.trusted, e.verdicts))), None)
        if cut is None:  # no error on this prompt: the whole run is exact
            assert a == b
        else:
            wrong_steps += 1
            assert a[: cut + 1] == b[: cut + 1]
    assert wrong_steps > 0
    real_err = sum(p.shadow_rejects for p in per_prompt) / sum(p.new_tokens for p in per_prompt)
    assert real_err > 0 and abs(s["lossy_error_rate"] - real_err) < 0.1


def _per_prompt(log):
    out = []
    for e in log:
        if e == "reset":
            out.append([])
        else:
            out[-1].append(e)
    return out


class StatsUser(Policy):
    """Reads everything StepState offers: running acceptance rates, last_accepted, budget, step and position."""

    name = "stats_user"

    def decide(self, state):
        m = state.depth
        limit = min(state.budget, 2 + max(state.last_accepted, 0) + (state.step + state.position) % 2)
        if m < limit and (m == 0 or state.stats.rate(m, prior=0.6) > 0.4 or state.margin[m - 1] > 0.5):
            return Action.extend()
        return Action.verify()


def test_unregistered_policy_using_stats(model, prompts, trace):
    check_exact(*check_against_real(model, prompts, trace, StatsUser()), trace)


@pytest.mark.parametrize("max_new", [1, 2, 7])
def test_shorter_horizon(model, prompts, trace, max_new):
    check_exact(*check_against_real(model, prompts[:6], trace.select(range(6)), get_policy("fixed", k=3), max_new),
                trace.select(range(6)))


def test_eos_stops_like_the_decoder(make_model, trace, prompts):
    """A common token made EOS: the recording went past it, replay stops where the decoder stops, and still knows
    the verdicts of drafts that lie past the EOS in the same block."""
    eos = int(max(set(trace.tokens[:, 1:].ravel().tolist()), key=trace.tokens[:, 1:].ravel().tolist().count))
    model = make_model(seed=0, eos_token_id=eos)  # same weights, generation config stops at eos
    eos_trace = dataclasses.replace(trace, meta=dict(trace.meta, eos_ids=[eos]))
    for policy in (get_policy("fixed", k=4), get_policy("heuristic"), get_policy("threshold", tau_extend=0.2)):
        real, rep, per_prompt, log_real, log_rep = check_against_real(model, prompts, eos_trace, policy)
        assert any(r.finished_by == "eos" for r in real)
        check_exact(real, rep, per_prompt, log_real, log_rep, eos_trace)


def test_bad_arguments(trace):
    with pytest.raises(ReplayError, match="max_new_tokens"):
        replay("fixed", trace, max_new_tokens=N + 1)
    with pytest.raises(ReplayError, match="probe depth"):
        replay("fixed", trace, max_draft=K + 1)


def test_capped_depth_is_reported(trace):
    deep, at_k = replay(get_policy("fixed", k=16), trace).summary, replay(get_policy("fixed", k=K), trace).summary
    assert deep["depth_capped_steps"] > 0 and not deep["approximate"] and deep["notes"]
    assert deep == {**at_k, "params": {"k": 16}}  # max_draft = K stops k = 16 exactly as it stops k = K
    assert replay(get_policy("fixed", k=K - 1), trace).summary["depth_capped_steps"] == 0


def test_modelled_time(trace):
    # catch-up rows priced separately (tests/decoding/test_goodput.py): here every draft costs t_mtp
    trace = dataclasses.replace(trace, cost=dataclasses.replace(trace.cost, t_row=0.0, t_ctx=0.0))
    spy = Spy(get_policy("fixed", k=2))
    s = replay(spy, trace).summary
    drafted = [e.drafted for e in spy.log if isinstance(e, StepOutcome)]
    assert s["ar_modelled_s"] == pytest.approx((s["new_tokens"] - s["n_prompts"]) * trace.cost.step_s(0))
    # every step costs step_s(its drafts) (a measured cost need not grow with m on a loaded machine: no bound on it)
    assert len(drafted) == s["steps"] and set(drafted) <= {0, 1, 2}
    assert s["modelled_s"] == pytest.approx(sum(trace.cost.step_s(m) for m in drafted))
    assert s["modelled_speedup"] == pytest.approx(s["ar_modelled_s"] / s["modelled_s"])
    ar = replay("ar", trace).summary
    assert ar["modelled_speedup"] == pytest.approx(1.0) and ar["tpf"] == pytest.approx(N / N)


def test_prompt_subset(model, prompts, trace):
    sub = trace.select([3, 1])
    assert sub.prompt_ids == (tuple(prompts[3]), tuple(prompts[1]))
    full = replay("entropy", trace).prompts
    assert replay("entropy", sub).prompts == (full[3], full[1])


def test_replay_speed_times_the_policies_named(trace):
    from specpolicy.replay import replay_speed

    out = replay_speed(trace, ["fixed", "ar"], reps=2)
    assert set(out["policies"]) == {"fixed", "ar"} and out["skipped"] == {} and out["reps"] == 2
    for name, row in out["policies"].items():
        assert row["steps"] == replay(name, trace).summary["steps"]
        assert row["min_s"] <= row["median_s"] <= row["max_s"]
    with pytest.raises(ValueError, match="reps=0"):
        replay_speed(trace, ["fixed"], reps=0)
