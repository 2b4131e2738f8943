"""Acceptance rules as pure tensor functions: strict (greedy / speculative sampling) and relaxed (lossy).

Notation: ``p`` target distribution, ``q`` draft distribution over the vocabulary, ``d`` the drafted token.

- greedy strict:   accept iff d == argmax p.
- sampling strict: accept with prob min(1, p(d)/q(d)); on rejection resample from norm(max(0, p - q))
                   (Leviathan et al. 2023; Chen et al. 2023). Lossless: the output is distributed as p.
- typical (Medusa): accept iff p(d) > min(eps, delta * exp(-H(p))).
- topk (TensorRT-LLM relaxed acceptance): accept iff d is in the top-k of p and log p(top1) - log p(d) <= delta.

``warp`` turns logits into the distribution that is sampled from (temperature, top-k, top-p); the decoder applies it
identically to p and q, which is what keeps speculative sampling lossless for the warped distribution.
"""

from __future__ import annotations

import torch

from ..policies.base import AcceptanceRule


def warp(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p (nucleus) filtering. logits: [..., V] -> probs [..., V]."""
    logits = logits.float() / max(temperature, 1e-8)
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, -1).cumsum(-1)
        remove = cum - torch.softmax(sorted_logits, -1) >= top_p  # keep the smallest prefix with mass >= top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    return torch.softmax(logits, dim=-1)


def draft_features(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """[q(d), entropy(q) in nats, q(top1) - q(top2)] for q: [V], d: [] -> tensor [3] (one host transfer later)."""
    top2 = torch.topk(q, 2).values
    ent = -(q * torch.log(q.clamp_min(1e-30))).sum()
    return torch.stack([q[d], ent, top2[0] - top2[1]])


def sampling_accept(p: torch.Tensor, q: torch.Tensor, d: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Strict speculative-sampling verdict. p, q: [V]; d, u: []. Returns (accepted: bool [], accept prob [])."""
    ratio = (p[d] / q[d].clamp_min(1e-30)).clamp(max=1.0)
    return u < ratio, ratio


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)): where the correction token is drawn after a rejection. [V] -> [V]."""
    r = (p - q).clamp_min(0)
    s = r.sum()
    return r / s if s > 0 else p


def relaxed_accept(rule: AcceptanceRule, p: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Lossy rules that still consult the target. p: [V] (target probabilities), d: [] -> bool []."""
    if rule.kind == "typical":
        ent = -(p * torch.log(p.clamp_min(1e-30))).sum()
        return p[d] > torch.minimum(torch.tensor(rule.eps, device=p.device), rule.delta * torch.exp(-ent))
    if rule.kind == "topk":
        top = torch.topk(p, rule.k)
        in_topk = (top.indices == d).any()
        return in_topk & (torch.log(top.values[0]) - torch.log(p[d].clamp_min(1e-30)) <= rule.delta)
    raise ValueError(f"unknown acceptance rule {rule.kind!r}; allowed: typical, topk")
