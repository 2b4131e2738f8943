"""Acceptance rules: the strict ones (greedy / speculative sampling) and the relaxed, lossy ones, each written once.

Notation: ``p`` target distribution, ``q`` draft distribution over the vocabulary, ``d`` the drafted token.

- greedy strict:   accept iff d == argmax p.
- sampling strict: accept with prob min(1, p(d)/q(d)); on rejection resample from norm(max(0, p - q))
                   (Leviathan et al. 2023; Chen et al. 2023). Lossless: the output is distributed as p.
- relaxed rules (``RelaxedRule`` subclasses, registered by the ``kind`` a policy's ``AcceptanceRule`` names):
    typical (Medusa):  accept iff p(d) > min(eps, delta * exp(-H(p)))
    topk (TensorRT-LLM relaxed acceptance): accept iff d is in the top-k of p and log p(top1) - log p(d) <= delta

A relaxed rule has two methods that must agree: ``accept`` on the tensor p (the decoder) and ``accept_features`` on
the four numbers ``p_features`` computes (p(d), how many tokens p ranks strictly above d, max p, H(p)), which is
what a replay trace stores. A new rule is one class here plus the ``AcceptanceRule(kind=...)`` a policy returns.

``warp`` turns logits into the distribution that is sampled from (temperature, top-k, top-p); the decoder applies it
identically to p and q, which is what keeps speculative sampling lossless for the warped distribution.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, NamedTuple

import torch

from ..policies.base import AcceptanceRule

__all__ = ["RELAXED_RULES", "PFeatures", "RelaxedRule", "draft_features", "p_features", "register_rule",
           "relaxed_rule", "residual", "sampling_accept", "warp"]


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


def p_features(p: torch.Tensor, d: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a relaxed rule may read of p, batched. p: [..., V] probabilities, d: [...] drafted tokens.

    Returns ``p_draft`` p(d), ``p_rank`` (tokens p ranks strictly above d; 0 = top-1), ``p_top1`` max p and
    ``p_entropy`` H(p) in nats, each shaped [...].
    """
    p_d = p.gather(-1, d[..., None].long())[..., 0]
    return {"p_draft": p_d, "p_rank": (p > p_d[..., None]).sum(-1), "p_top1": p.max(-1).values,
            "p_entropy": -(p * torch.log(p.clamp_min(1e-30))).sum(-1)}


class PFeatures(NamedTuple):
    """``p_features`` of one draft as plain numbers (what a replay trace stores per drafted token)."""

    p_draft: float  # p(d)
    p_rank: int  # tokens p ranks strictly above d
    p_top1: float  # max p
    p_entropy: float  # H(p), nats


class RelaxedRule(ABC):
    """A lossy rule that still consults the target: ``accept`` (tensor p) and ``accept_features`` (trace numbers)."""

    kind: ClassVar[str]

    def __init__(self, spec: AcceptanceRule) -> None:
        self.spec = spec

    @abstractmethod
    def accept(self, p: torch.Tensor, d: torch.Tensor) -> bool:
        """Verdict from the target distribution p: [V] (probabilities) for the drafted token d: []."""

    @abstractmethod
    def accept_features(self, f: PFeatures) -> bool:
        """The same verdict from ``p_features`` of (p, d) as plain numbers (replay)."""


RELAXED_RULES: dict[str, type[RelaxedRule]] = {}


def register_rule(cls: type[RelaxedRule]) -> type[RelaxedRule]:
    """Class decorator: make ``cls`` the implementation of ``AcceptanceRule(kind=cls.kind)``."""
    if cls.kind in RELAXED_RULES:
        raise ValueError(f"acceptance rule kind {cls.kind!r} is already registered by {RELAXED_RULES[cls.kind]}")
    RELAXED_RULES[cls.kind] = cls
    return cls


def relaxed_rule(spec: AcceptanceRule | None) -> RelaxedRule | None:
    """The implementation of a policy's ``acceptance`` (None: the strict rule only).

    Example:
        >>> relaxed_rule(AcceptanceRule("topk", delta=1.0, k=3)).accept_features(PFeatures(0.3, 1, 0.5, 1.2))
        True
    """
    if spec is None:
        return None
    cls = RELAXED_RULES.get(spec.kind)
    if cls is None:
        raise ValueError(f"unknown acceptance rule {spec.kind!r}; allowed: {', '.join(sorted(RELAXED_RULES))}")
    return cls(spec)


@register_rule
class TypicalRule(RelaxedRule):
    """Medusa's typical acceptance: p(d) > min(eps, delta * exp(-H(p)))."""

    kind = "typical"

    def accept(self, p: torch.Tensor, d: torch.Tensor) -> bool:
        ent = -(p * torch.log(p.clamp_min(1e-30))).sum()
        bar = torch.minimum(torch.tensor(self.spec.eps, device=p.device), self.spec.delta * torch.exp(-ent))
        return bool(p[d] > bar)

    def accept_features(self, f: PFeatures) -> bool:
        return f.p_draft > min(self.spec.eps, self.spec.delta * math.exp(-f.p_entropy))


@register_rule
class TopKRule(RelaxedRule):
    """TensorRT-LLM's relaxed acceptance: d in the top-k of p and log p(top1) - log p(d) <= delta."""

    kind = "topk"

    def accept(self, p: torch.Tensor, d: torch.Tensor) -> bool:
        top = torch.topk(p, self.spec.k)
        in_topk = (top.indices == d).any()
        return bool(in_topk & (torch.log(top.values[0]) - torch.log(p[d].clamp_min(1e-30)) <= self.spec.delta))

    def accept_features(self, f: PFeatures) -> bool:
        return f.p_rank < self.spec.k and math.log(f.p_top1) - math.log(max(f.p_draft, 1e-30)) <= self.spec.delta
