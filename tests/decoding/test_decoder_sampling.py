"""Speculative sampling preserves the target distribution (and a lossy policy detectably does not).

On a 10-token vocabulary the exact law of the first 3 new tokens under the warped target (temperature, top-k, top-p
as transformers' logits warpers define them) is enumerated (``specpolicy.testing.lossless``, the harness users run); the decoder is run over many seeds and its empirical
law compared with a chi-square test (cells with expected count < 5 merged). Lossless policies must pass (p > 1e-3);
the same test must reject a lossy policy (p < 1e-6), which shows it has the power to see a wrong distribution.

The drafter is half random (``tie=0.5``): drafts are accepted ~70% of the time, so both the accept branch and the
residual ``norm(max(0, p - q))`` branch are sampled, and q is far enough from p that trusting it shows.
"""

from __future__ import annotations

from collections import Counter

import pytest

from specpolicy.decoding import generate
from specpolicy.testing.lossless import chi2_pvalue, exact_law

V = 10
PROMPT = [1, 2, 3]
N_RUNS = 1000
FIRST = 3  # new tokens whose joint law is enumerated

# (policy, params, decode kwargs, max_new_tokens, lossless)
CASES = {
    "fixed3": ("fixed", {"k": 3}, {"temperature": 1.0}, 4, True),  # depth-1/2 accepts and corrections
    "fixed1-topk": ("fixed", {"k": 1}, {"temperature": 0.7, "top_k": 4}, 3, True),  # the bonus token is token 3
    "threshold-topp": (
        "threshold",
        {"tau_extend": 0.3, "tau_trust": 1.0, "k_max": 3},
        {"temperature": 1.2, "top_p": 0.8},
        4,
        True,
    ),
    "trust-all": ("threshold", {"tau_extend": 0.0, "tau_trust": 0.0, "k_max": 3}, {"temperature": 1.0}, 4, False),
    "typical-loose": ("typical", {"eps": 0.02, "delta": 0.1, "k": 3}, {"temperature": 1.0}, 4, False),
}


@pytest.fixture(scope="module")
def model(tiny):
    return tiny(seed=0, k=2, vocab=V, sharpen=25.0, tie=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_sampling_law_of_first_tokens(model, case):
    name, params, decode, max_new, lossless = CASES[case]
    law = exact_law(model, PROMPT, FIRST, decode["temperature"], decode.get("top_k", 0), decode.get("top_p", 1.0))
    assert sum(law.values()) == pytest.approx(1.0)
    counts, accepted, corrected, lossy = Counter(), 0, 0, 0
    for seed in range(N_RUNS):
        res = generate(model, PROMPT, name, max_new_tokens=max_new, seed=seed, **params, **decode)
        assert len(res.token_ids) == max_new
        counts[res.token_ids[:FIRST]] += 1
        accepted += res.stats.accepted
        corrected += sum(s.accepted < len(s.drafts) for s in res.steps)
        lossy += res.stats.lossy_tokens
    assert sum(counts.values()) == N_RUNS
    assert all(law[s] > 0 for s in counts)  # no outcome that top-k/top-p truncation rules out
    p_value = chi2_pvalue(counts, law, N_RUNS)
    if lossless:
        assert lossy == 0
        assert accepted > N_RUNS // 4 and corrected > N_RUNS // 20  # both branches of the rule were sampled
        assert p_value > 1e-3, f"{case}: empirical law of the first {FIRST} tokens differs from p (p={p_value:.2g})"
    else:
        assert lossy > N_RUNS // 4
        assert p_value < 1e-6, f"{case}: the test failed to see the lossy policy's bias (p={p_value:.2g})"


def test_same_seed_same_sample_different_seed_differs(model):
    runs = [generate(model, PROMPT, "fixed", k=3, max_new_tokens=12, temperature=1.0, seed=s) for s in (5, 5, 6, 7)]
    assert runs[0].token_ids == runs[1].token_ids and runs[0].provenance == runs[1].provenance
    assert len({r.token_ids for r in runs}) >= 2


def test_greedy_ignores_seed(model):
    a = generate(model, PROMPT, "fixed", k=3, max_new_tokens=12, seed=1)
    b = generate(model, PROMPT, "fixed", k=3, max_new_tokens=12, seed=2)
    assert a.token_ids == b.token_ids
