"""Sequence-level unlikelihood training (Welleck et al. 2020, "Neural Text Generation with Unlikelihood Training").

Small LMs decoded greedily fall into loops. Sequence-level unlikelihood fine-tuning decodes continuations with the
model itself, marks every token that completes an n-gram already seen in the sequence, and lowers its probability:

    L_UL = - sum_t  mask_t * log(1 - p(x_t | x_<t))

mixed with ordinary maximum-likelihood steps so that the model keeps its accuracy.

Example:
    >>> seq = torch.tensor([[1, 2, 3, 1, 2, 3, 1, 2]])
    >>> repeated_ngram_mask(seq, n=2, start=0).int().tolist()  # later copies of (1, 2), (2, 3), (3, 1)
    [[0, 0, 0, 1, 1, 1, 1, 1]]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def repeated_ngram_mask(seqs: torch.Tensor, n: int = 4, start: int = 0) -> torch.Tensor:
    """Bool mask [B, T]: the tokens of every n-gram that repeats an earlier n-gram of the same row.

    Only n-grams lying wholly at or after ``start`` (the generated part) count, so copying from the prompt is never
    penalised; the first occurrence is left alone and every later occurrence is masked in full."""
    B, T = seqs.shape
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, row in enumerate(seqs.tolist()):
        seen = set()
        for t in range(start + n - 1, T):
            gram = tuple(row[t - n + 1 : t + 1])
            if gram in seen:
                mask[b, t - n + 1 : t + 1] = True
            seen.add(gram)
    return mask


def copy_start_mask(seqs: torch.Tensor, n: int = 8, start: int = 0, span: int = 1) -> torch.Tensor:
    """Bool mask [B, T]: the first ``span`` tokens of every run of copying.

    Token t starts a copy when the n-gram *starting* at t repeats one that started earlier (both at or after
    ``start``) and the n-gram starting at t - 1 does not. That is the step at which greedy decoding chose to go round
    the loop again; the tokens after it merely follow. Penalising only these is far more targeted than masking whole
    repeated n-grams (:func:`repeated_ngram_mask`), whose tokens are mostly generic and also right in real code."""
    B, T = seqs.shape
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, row in enumerate(seqs.tolist()):
        seen, prev = set(), False
        for t in range(start, T - n + 1):
            gram = tuple(row[t : t + n])
            rep = gram in seen
            if rep and not prev:
                mask[b, t : t + span] = True
            seen.add(gram)
            prev = rep
    return mask


@torch.no_grad()
def greedy_continue(target, prefix: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy continuations of a batch of equal-length prefixes [B, P] -> [B, P + new_tokens] (KV cached)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=target.config)
    out = target(input_ids=prefix, cache=cache)
    seq = [prefix, out.logits[:, -1:].argmax(-1)]
    for _ in range(new_tokens - 1):
        out = target(input_ids=seq[-1], cache=cache)
        seq.append(out.logits[:, -1:].argmax(-1))
    return torch.cat(seq, dim=1)


def unlikelihood_loss(target, seqs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """-mean over masked tokens of log(1 - p(x_t | x_<t)); seqs, mask: [B, T]. Zero if nothing is masked."""
    return unlikelihood_from_logits(target(input_ids=seqs[:, :-1]).logits, seqs, mask)


def unlikelihood_from_logits(logits: torch.Tensor, seqs: torch.Tensor, mask: torch.Tensor,
                             weight: torch.Tensor | None = None) -> torch.Tensor:
    """Same as :func:`unlikelihood_loss` from logits [B, T-1, V] of ``seqs[:, :-1]`` (when they are already at hand).

    ``weight`` [B, T-1] (optional) scales each position's term; the sum is still divided by the number of masked
    tokens, so weights near zero switch a position off rather than being renormalised away."""
    logp = F.log_softmax(logits.float(), -1).gather(-1, seqs[:, 1:, None])[..., 0]  # [B, T-1]
    one_minus_p = torch.clamp(1.0 - logp.exp(), min=1e-5)
    m = mask[:, 1:].to(logits.device)
    if not m.any():
        return logits.sum() * 0.0
    terms = -torch.log(one_minus_p) * m
    if weight is not None:
        terms = terms * weight
    return terms.sum() / m.sum()
