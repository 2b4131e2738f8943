"""Lossy runs account for every token the strict rule did not vouch for.

``trusted`` tokens (threshold with tau_trust < 1) and ``relaxed`` tokens (typical, topk_relaxed) are counted in
``stats.lossy_tokens``; each carries its strict (shadow) verdict, and ``shadow_rejects`` are the ones the strict rule
would have rejected. Under greedy decoding a shadow reject is exactly a token that differs from the target's argmax at
that position, so the first one is where the output leaves the lossless (HF greedy) output.
"""

from __future__ import annotations

import random

import pytest

from specpolicy.decoding import generate

LOSSY = ("trusted", "relaxed")
POLICIES = [
    ("threshold", {"tau_trust": 0.0, "tau_extend": 0.3}),
    ("threshold", {"tau_trust": 0.3}),
    ("typical", {}),
    ("typical", {"eps": 0.02, "delta": 0.1, "k": 3}),
    ("topk_relaxed", {}),
    ("topk_relaxed", {"k_top": 5, "delta": 3.0, "k": 2}),
]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(POLICIES)]


def _runs(tiny, name, params, temperature):
    for seed in range(4):
        model = tiny(seed=seed, k=2, tie=0.8)  # a less faithful drafter: confident AND wrong at times
        prompt = random.Random(seed).choices(range(64), k=8)
        res = generate(model, prompt, name, max_new_tokens=40, temperature=temperature, seed=seed, **params)
        yield model, prompt, res


def _lossy_entries(res):
    """(new-token index, step, draft index j) of every lossy committed token."""
    for s in res.steps:
        for j, prov in enumerate(s.provenance):
            if prov in LOSSY:
                yield s.position + j, s, j  # position counts the tokens before the step, prefill token included


def check_lossy_accounting(res) -> int:
    """The accounting every run satisfies; returns the number of lossy tokens."""
    stats, prov = res.stats, res.provenance
    assert stats.trusted_tokens == prov.count("trusted")
    assert stats.relaxed_tokens == prov.count("relaxed")
    assert stats.lossy_tokens == stats.trusted_tokens + stats.relaxed_tokens
    assert stats.shadow_rejects + stats.shadow_accepts == stats.lossy_tokens
    assert res.lossless == (stats.lossy_tokens == 0)
    entries = list(_lossy_entries(res))
    assert len(entries) == stats.lossy_tokens
    assert stats.shadow_rejects == sum(not s.verdicts[j] for _, s, j in entries)
    for idx, s, j in entries:
        assert res.token_ids[idx] == s.committed[j] == s.drafts[j]  # a lossy token is always a draft
        assert j < s.accepted
        if s.provenance[j] == "relaxed":
            assert not s.verdicts[j]  # the relaxed rule is only asked after the strict rule said no
            assert not s.trusted[j]
        else:
            assert s.trusted[j]
    for s in res.steps:
        assert s.accepted == sum(p != "target" for p in s.provenance)
        assert s.action == ("trust" if any(s.trusted) else "verify")
        # trusted drafts form a prefix and are all committed (threshold trusts its confident prefix)
        t = sum(s.trusted)
        assert s.trusted == (True,) * t + (False,) * (len(s.drafts) - t) and t <= s.accepted
    return stats.lossy_tokens


@pytest.mark.parametrize(("name", "params"), POLICIES, ids=IDS)
def test_greedy_lossy_accounting_and_divergence(tiny, hf_ref, name, params):
    total = rejects = accepts = 0
    for model, prompt, res in _runs(tiny, name, params, temperature=0.0):
        total += check_lossy_accounting(res)
        rejects += res.stats.shadow_rejects
        accepts += res.stats.shadow_accepts
        entries = list(_lossy_entries(res))
        for _idx, s, j in entries:
            # greedy: the shadow verdict is "draft == target's argmax at that position"
            assert s.verdicts[j] == (s.drafts[j] == s.target_tokens[j])
        ref = hf_ref(model, prompt, 40)
        first_reject = next((idx for idx, s, j in entries if not s.verdicts[j]), None)
        diverge = next((i for i, (a, b) in enumerate(zip(res.token_ids, ref)) if a != b), None)
        assert diverge == first_reject  # identical to HF greedy up to the first shadow reject, different there
        if first_reject is None:
            assert res.token_ids == ref
    assert total > 0 and rejects > 0
    if name == "threshold":
        assert accepts > 0  # trusted tokens the target agreed with
    else:
        assert accepts == 0  # relaxed tokens are by construction strict rejects


@pytest.mark.parametrize(("name", "params"), POLICIES[::2], ids=IDS[::2])
def test_sampling_lossy_accounting(tiny, name, params):
    total = rejects = 0
    for _model, _prompt, res in _runs(tiny, name, params, temperature=1.0):
        total += check_lossy_accounting(res)
        rejects += res.stats.shadow_rejects
        for s in res.steps:
            assert all(0.0 <= a <= 1.0 for a in s.accept_prob) and len(s.accept_prob) == len(s.verdicts)
    assert total > 0 and rejects > 0
