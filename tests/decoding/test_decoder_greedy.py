"""Greedy exactness: with lossless policies the decoder commits exactly what ``target.generate(do_sample=False)`` does.

Checked as a property over random tiny models (1..3 MTP layers, so depths past the last layer re-use it), prompts,
lengths and policies, together with the accounting that must hold for every lossless greedy run.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specpolicy.decoding import DraftProbe, generate
from specpolicy.policies import get_policy

VOCAB = 64  # make_tiny's default vocabulary


def _lossless_policies():
    k = st.integers(1, 6)
    return st.one_of(
        st.just(("ar", {})),
        st.builds(lambda k: ("fixed", {"k": k}), k),
        st.builds(
            lambda te, km: ("threshold", {"tau_extend": te, "tau_trust": 1.0, "k_max": km}), st.floats(0.0, 1.0), k
        ),
        st.builds(lambda h, km: ("entropy", {"max_entropy": h, "k_max": km}), st.floats(0.01, 4.0), k),
        st.builds(lambda ki, km: ("heuristic", {"k_init": min(ki, km), "k_max": km}), k, k),
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 5),
    k_layers=st.integers(1, 3),
    prompt=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=20),
    max_new=st.integers(1, 40),
    policy=_lossless_policies(),
)
def test_greedy_equals_hf_generate(tiny, hf_ref, lossless_checks, seed, k_layers, prompt, max_new, policy):
    model = tiny(seed=seed, k=k_layers)
    name, params = policy
    res = generate(model, prompt, name, max_new_tokens=max_new, **params)
    assert res.token_ids == hf_ref(model, prompt, max_new)
    assert res.finished_by == "length" and len(res.token_ids) == max_new
    lossless_checks(res, max_new)


def test_tiny_models_exercise_accepts_and_rejects(tiny, hf_ref):
    """The models of the property test are neither always right nor always wrong, at every depth we draft."""
    full, partial, rejected_at = 0, 0, set()
    accepted_at = set()
    for seed in range(6):
        for k_layers in (1, 2, 3):
            model = tiny(seed=seed, k=k_layers)
            prompt = random.Random(seed).choices(range(VOCAB), k=8)
            res = generate(model, prompt, "fixed", k=5, max_new_tokens=40)
            assert res.token_ids == hf_ref(model, prompt, 40)
            for s in res.steps:
                full += s.accepted == len(s.drafts) > 0
                partial += s.accepted < len(s.drafts)
                accepted_at |= set(range(1, s.accepted + 1))
                if s.accepted < len(s.drafts):
                    rejected_at.add(s.accepted + 1)
    assert full > 10 and partial > 10
    assert {1, 2, 3, 4, 5} <= accepted_at  # depths 4, 5 re-use the last MTP layer
    assert {1, 2, 3} <= rejected_at


@pytest.mark.parametrize(
    "policy",
    [
        ("ar", {}),
        ("fixed", {"k": 3}),
        ("fixed", {"k": 6}),
        ("threshold", {"tau_extend": 0.2, "k_max": 5}),
        ("heuristic", {}),
    ],
)
def test_eos_stops_like_hf(tiny, hf_ref, lossless_checks, policy):
    """EOS anywhere in the output (the bonus token, a correction, or a verified draft in mid-block) ends the run
    right after it, as HF does; nothing drafted after it is committed."""
    name, params = policy
    eos_as_verified_draft = 0
    for seed in range(3):
        base = tiny(seed=seed, k=2)
        prompt = random.Random(100 + seed).choices(range(VOCAB), k=6)
        free = hf_ref(base, prompt, 40)
        firsts = sorted({free.index(t) for t in free})  # EOS candidates: a token's first occurrence
        for idx in firsts[:6]:
            eos = free[idx]
            model = tiny(seed=seed, k=2, eos_token_id=eos)  # same weights, EOS in the config
            ref = hf_ref(model, prompt, 40)
            assert ref == free[: idx + 1]
            res = generate(model, prompt, name, max_new_tokens=40, **params)
            assert res.token_ids == ref
            assert res.finished_by == "eos"
            lossless_checks(res, 40)
            assert res.stats.target_forwards == 1 + len(res.steps)
            assert sum(len(s.committed) for s in res.steps) + 1 == len(res.token_ids)
            if res.steps and res.steps[-1].provenance[-1] == "verified":
                eos_as_verified_draft += 1  # the block went on past EOS and was cut there
    if name != "ar":
        assert eos_as_verified_draft > 0


def test_eos_list_and_eos_as_first_token(tiny, hf_ref):
    """A list of EOS ids (as in generation_config.json) and an EOS as the very first new token (no step at all)."""
    base = tiny(seed=1, k=2)
    prompt = [5, 9, 2, 33]
    free = hf_ref(base, prompt, 30)
    model = tiny(seed=1, k=2, eos_token_id=(free[0],))
    res = generate(model, prompt, "fixed", k=3, max_new_tokens=30)
    assert res.token_ids == free[:1] and res.finished_by == "eos" and res.steps == ()
    later = next(t for t in free if t != free[0])
    model = tiny(seed=1, k=2, eos_token_id=(VOCAB - 1 if later != VOCAB - 1 else 0, later))
    res = generate(model, prompt, "fixed", k=3, max_new_tokens=30)
    assert res.token_ids == hf_ref(model, prompt, 30) and res.token_ids[-1] == later


@pytest.mark.parametrize("k_layers", [1, 3])
def test_probe_records_chains_and_keeps_output(tiny, hf_ref, lossless_checks, k_layers):
    """A ``DraftProbe(4)`` with ``ar``: every step drafts 4 never-verified tokens; the output is still HF greedy."""
    model = tiny(seed=2, k=k_layers)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    probe = DraftProbe(4)
    res = generate(model, prompt, "ar", max_new_tokens=30, probe=probe)
    assert res.token_ids == hf_ref(model, prompt, 30)
    lossless_checks(res, 30)
    assert res.steps and len(probe.steps) == len(res.steps)
    for (step, position, m, chain), s in zip(probe.steps, res.steps):
        assert (step, position, m) == (s.step, s.position, 0) and s.drafts == () and len(chain) == 4
        assert all(0.0 <= c <= 1.0 and 0 <= d < VOCAB for d, c, _, _ in chain)
    # the probe's chain is what fixed(k=4) would have drafted from the same state
    fixed = generate(model, prompt, "fixed", k=4, max_new_tokens=30)
    by_position = {s.position: s.drafts for s in fixed.steps}
    shared = [(p, tuple(f[0] for f in c)) for _, p, _, c in probe.steps if len(by_position.get(p, ())) == 4]
    assert shared and all(chain == by_position[p] for p, chain in shared)
    # probes never change a lossless result of a drafting policy either
    deep = DraftProbe(5)
    probed = generate(model, prompt, "fixed", k=2, max_new_tokens=30, probe=deep)
    assert probed.token_ids == res.token_ids
    assert all(len(c) == 5 - len(s.drafts) and m == len(s.drafts) for (_, _, m, c), s in zip(deep.steps, probed.steps))


def test_policy_object_and_name_agree(tiny):
    model = tiny(seed=0, k=2)
    prompt = [7, 7, 1, 2]
    a = generate(model, prompt, "fixed", k=3, max_new_tokens=25)
    b = generate(model, prompt, get_policy("fixed", k=3), max_new_tokens=25)
    assert a.token_ids == b.token_ids and a.provenance == b.provenance
