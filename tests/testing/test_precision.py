"""Precision-aware equivalence on the shipped model in bfloat16: lossless policies' divergences from generate() are
near-ties and their self-consistency holds; injected bugs (a lossy rule in a policy that claims to be lossless, a
target-cache crop off by one) break the self-consistency check at a clear margin (gap > 3 x the tolerance)."""

from __future__ import annotations

import pytest
import torch

from specpolicy import generate, get_policy, load_model
from specpolicy.data import load_corpus, sample_prompts
from specpolicy.decoding import decoder as decoder_module
from specpolicy.policies import AcceptanceRule
from specpolicy.testing import classify_divergence, hf_greedy, near_tie_tolerance, self_consistency

pytestmark = pytest.mark.slow
N = 24


@pytest.fixture(scope="module")
def bf16():
    model = load_model("tiny", dtype="bfloat16")
    prompts = sample_prompts(load_corpus(), model.tokenizer, n=2, prompt_tokens=48, seed=11)
    return model, [list(p.ids) for p in prompts]


def test_tolerance_scales_with_the_dtype():
    assert near_tie_tolerance(torch.float64, 10.0) == 0.0
    assert near_tie_tolerance(torch.bfloat16, 10.0) == pytest.approx(4 * 2**-7 * 10)
    assert near_tie_tolerance(torch.float16, 10.0) < near_tie_tolerance(torch.bfloat16, 10.0)


def test_lossless_policies_are_consistent_in_bfloat16(bf16):
    model, prompts = bf16
    for ids in prompts:
        ref = hf_greedy(model, ids, N)
        for policy in (get_policy("fixed", k=3), get_policy("threshold")):
            res = generate(model, ids, policy, max_new_tokens=N)
            assert classify_divergence(model, ids, res.token_ids, ref).kind in ("exact", "near_tie")
            check = self_consistency(model, res)
            assert check.checked == N and not check.mismatches


class Liar(type(get_policy("fixed"))):
    """A lossy rule (top-5 within 4 nats) in a policy that claims to be lossless."""

    name = "liar_precision_test"

    @property
    def acceptance(self):
        return AcceptanceRule("topk", delta=4.0, k=5)

    @property
    def lossless(self):
        return True


def test_a_lossy_rule_called_lossless_is_a_mismatch(bf16):
    model, prompts = bf16
    found = []
    for ids in prompts:
        res = generate(model, ids, Liar(k=4), max_new_tokens=N)
        res = type(res)(res.prompt_ids, res.token_ids, res.text, tuple("verified" if p == "relaxed" else p
                                                                      for p in res.provenance), res.steps,
                        res.stats, res.finished_by)  # what a buggy decoder that mislabels them would return
        found += self_consistency(model, res).mismatches
    assert found and max(gap / tol for *_, gap, tol in found) > 3  # far outside the tolerance


def test_a_cache_crop_off_by_one_is_a_mismatch(bf16, monkeypatch):
    model, prompts = bf16

    def crop_one_too_few(self, block, h, m):  # the decoder's commit with the crop off by one
        n, n_new = self.n, self.n + len(block.committed)
        self.buf[0, n + 1 : n_new + 1] = torch.tensor(block.committed, device=self.device)
        if n + m + 1 > n_new + 1:
            self.fwd.crop(n_new + 1)  # keeps one rejected draft's entry in the target cache
        self.drafter.advance(h)
        self.drafter.crop(n_new)
        self.n, self.finished = n_new, block.eos
        self.new += block.committed
        self.prov += block.provenance

    monkeypatch.setattr(decoder_module._Loop, "commit", crop_one_too_few)
    res = [generate(model, ids, "fixed", k=4, max_new_tokens=N) for ids in prompts]
    monkeypatch.undo()
    verdicts = [classify_divergence(model, ids, r.token_ids, hf_greedy(model, ids, N)).kind
                for ids, r in zip(prompts, res)]
    assert "exact" not in verdicts  # the stale entry changes the outputs ...
    # ... and the self-consistency check sees wrong tokens far outside the tolerance (the first divergence from
    # generate() itself can sit at a near-tie: a small perturbation flips the closest decision first)
    mismatches = [m for r in res for m in self_consistency(model, r).mismatches]
    assert mismatches and max(gap / tol for *_, gap, tol in mismatches) > 3
