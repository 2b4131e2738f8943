"""Every drafter kind (mtp, medusa, draft model, ngram) with every lossless registered policy, through the same
harness users run: greedy equals ``target.generate(do_sample=False)``, sampling keeps the target's law (with a
power check per drafter), and the replay of a trace recorded with that drafter equals real decoding."""

from __future__ import annotations

import pytest

from specpolicy import generate
from specpolicy.policies import get_policy, list_policies
from specpolicy.replay import prompt_from_generation, replay
from specpolicy.replay.record import record_trace
from specpolicy.testing import DRAFTER_KINDS, check_lossless, drafter_factory, small_model, with_drafter

# calibrated belongs to the drafter its calibrator was fitted on: the shipped ones are the MTP layers'
LOSSLESS = [n for n in list_policies() if get_policy(n).lossless]
CASES = [(kind, name) for kind in DRAFTER_KINDS for name in LOSSLESS if name != "calibrated" or kind == "mtp"]


@pytest.mark.parametrize(("kind", "name"), CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_greedy_is_lossless(kind, name):
    report = check_lossless(get_policy(name), drafter=drafter_factory(kind), n_prompts=4, sampling=False)
    assert report.ok and report.greedy_exact == report.greedy_prompts == 12


@pytest.mark.parametrize("kind", DRAFTER_KINDS)
def test_sampling_keeps_the_law_and_the_test_has_power(kind):
    report = check_lossless(get_policy("fixed", k=3), drafter=drafter_factory(kind), n_prompts=2, n_samples=400)
    assert report.ok and report.sampling_p_value > 1e-3 and report.sampling_power_p_value < 1e-6


PER_PROMPT = ("new_tokens", "steps", "drafted", "accepted", "accept_reached", "accept_ok", "finished_by")


@pytest.mark.parametrize("kind", DRAFTER_KINDS)
def test_replay_equals_real_decoding(kind):
    model = with_drafter(small_model(seed=3, k=2, tie=0.8), kind)
    prompts = [[(5 * i + 3 * j) % 60 + 2 for j in range(6 + i)] for i in range(4)]
    trace = record_trace(model, prompts, 20, 5, cost_reps=1, progress=False)
    assert trace.drafter == kind
    for name, params in (("fixed", {"k": 3}), ("threshold", {"tau_extend": 0.3}), ("heuristic", {})):
        rep = replay(get_policy(name, **params), trace, drafter=kind)
        for i, ids in enumerate(prompts):
            real = generate(model, ids, get_policy(name, **params), max_new_tokens=20, max_draft=5)
            got = prompt_from_generation(real, trace.cost, trace.k_max)
            for f in PER_PROMPT:
                a, b = getattr(rep.prompts[i], f), getattr(got, f)
                if isinstance(a, tuple):
                    a, b = list(a), list(b)
                    while a and a[-1] == 0:
                        a.pop()
                    while b and b[-1] == 0:
                        b.pop()
                assert a == b, (kind, name, i, f)
