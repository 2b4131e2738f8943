"""The acceptance rules: warping as transformers does it, the speculative-sampling identity (accept-or-resample
reproduces p exactly), and the relaxed rules' definitions -- whose tensor form (decoder) and scalar form over
``p_features`` (replay) must agree on every token."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from specpolicy.decoding.acceptance import (
    RELAXED_RULES,
    PFeatures,
    draft_features,
    p_features,
    relaxed_rule,
    residual,
    sampling_accept,
    warp,
)
from specpolicy.policies import AcceptanceRule


def _hf_warp(logits, temperature, top_k, top_p):
    out = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        out = TopKLogitsWarper(top_k)(None, out)
    if top_p < 1.0:
        out = TopPLogitsWarper(top_p)(None, out)
    return torch.softmax(out, -1)


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.3, 5, 1.0), (1.0, 0, 0.7), (0.8, 6, 0.9), (2.0, 1, 1.0), (1.0, 0, 0.05)],
)
def test_warp_matches_transformers_warpers(temperature, top_k, top_p):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 20, generator=g, dtype=torch.float64) * 3  # [B, V]
    ours = warp(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    ref = _hf_warp(logits.float(), temperature, top_k, top_p)
    assert ours.shape == logits.shape
    assert torch.equal(ours > 0, ref > 0)  # the same tokens survive truncation
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.sum(-1), torch.ones(64), atol=1e-6, rtol=0)


def _law_of_accept_or_resample(p, q):
    """P(committed token = x) when d ~ q is accepted w.p. min(1, p(d)/q(d)), else x ~ residual(p, q)."""
    ratios = torch.stack([sampling_accept(p, q, torch.tensor(d), torch.tensor(0.0))[1] for d in range(len(p))])
    accept_mass = q * ratios  # [V]
    return accept_mass + (1 - accept_mass.sum()) * residual(p, q)


@pytest.mark.parametrize("seed", range(5))
def test_speculative_sampling_identity(seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(12, generator=g, dtype=torch.float64) * 2, -1)
    q = torch.softmax(torch.randn(12, generator=g, dtype=torch.float64) * 2, -1)
    q[3] = 0.0  # a token the drafter can never draft ...
    q = q / q.sum()
    torch.testing.assert_close(_law_of_accept_or_resample(p, q), p)  # ... still comes out with probability p
    torch.testing.assert_close(_law_of_accept_or_resample(p, p), p)  # q == p: always accepted, residual unused
    assert residual(p, p).sum() == pytest.approx(1.0)


def test_sampling_accept_threshold():
    p, q = torch.tensor([0.2, 0.8]), torch.tensor([0.4, 0.6])
    ok, ratio = sampling_accept(p, q, torch.tensor(0), torch.tensor(0.49))
    assert bool(ok) and float(ratio) == pytest.approx(0.5)
    ok, _ = sampling_accept(p, q, torch.tensor(0), torch.tensor(0.51))
    assert not bool(ok)
    ok, ratio = sampling_accept(p, q, torch.tensor(1), torch.tensor(0.999))
    assert bool(ok) and float(ratio) == 1.0


def test_residual_is_positive_part_of_p_minus_q():
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.6, 0.2])
    torch.testing.assert_close(residual(p, q), torch.tensor([1.0, 0.0, 0.0]))


def relaxed_accept(rule, p, d):
    """The tensor form, checked against the scalar form on the same draft (they are one rule)."""
    impl = relaxed_rule(rule)
    f = {k: v.item() for k, v in p_features(p, d).items()}
    tensor, scalar = impl.accept(p, d), impl.accept_features(PFeatures(**f))
    assert tensor == scalar, (rule, int(d))
    return tensor


def test_typical_rule():
    p = torch.tensor([0.7, 0.2, 0.06, 0.04])
    ent = float(-(p * p.log()).sum())
    rule = AcceptanceRule("typical", eps=0.09, delta=0.3)
    bar = min(0.09, 0.3 * torch.exp(torch.tensor(-ent)).item())
    for d in range(4):
        assert bool(relaxed_accept(rule, p, torch.tensor(d))) == (p[d].item() > bar)
    assert bool(relaxed_accept(rule, p, torch.tensor(1))) and not bool(relaxed_accept(rule, p, torch.tensor(3)))


def test_topk_rule():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    rule = AcceptanceRule("topk", k=3, delta=1.0)  # log(0.5/0.3) = 0.51, log(0.5/0.15) = 1.20
    verdicts = [bool(relaxed_accept(rule, p, torch.tensor(d))) for d in range(4)]
    assert verdicts == [True, True, False, False]
    wide = AcceptanceRule("topk", k=3, delta=2.0)
    assert [bool(relaxed_accept(wide, p, torch.tensor(d))) for d in range(4)] == [True, True, True, False]
    with pytest.raises(ValueError, match="unknown acceptance rule 'nope'; allowed: topk, typical"):
        relaxed_rule(AcceptanceRule("nope"))
    assert relaxed_rule(None) is None


@pytest.mark.parametrize("kind", sorted(RELAXED_RULES))
@pytest.mark.parametrize("seed", range(20))
def test_every_rule_tensor_and_scalar_forms_agree(kind, seed):
    """Every registered rule, on random p (peaked and flat) and every drafted token, random parameters."""
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(30, generator=g) * (0.5 + 3 * torch.rand((), generator=g)), -1)
    eps, delta, k = float(torch.rand((), generator=g)) * 0.3, float(torch.rand((), generator=g)) * 2, seed % 5 + 1
    rule = AcceptanceRule(kind, eps=eps, delta=delta, k=k)
    verdicts = [relaxed_accept(rule, p, torch.tensor(d)) for d in range(30)]
    assert any(verdicts) or kind == "typical"  # the top-1 token always passes top-k


def test_draft_features():
    q = torch.tensor([0.1, 0.6, 0.3])
    conf, ent, margin = draft_features(q, torch.tensor(2)).tolist()
    assert conf == pytest.approx(0.3)
    assert ent == pytest.approx(float(-(q * q.log()).sum()))
    assert margin == pytest.approx(0.3)
