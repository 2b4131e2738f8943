"""Sequence-level unlikelihood training (Welleck et al. 2020, "Neural Text Generation with Unlikelihood Training").

Small LMs decoded greedily fall into loops. Sequence-level unlikelihood fine-tuning decodes continuations with the
model itself, marks every token that completes an n-gram already seen in the sequence, and lowers its probability:

    L_UL = - sum_t  mask_t * log(1 - p(x_t | x_<t))

mixed with ordinary maximum-likelihood steps so that the model keeps its accuracy.

Example:
    >>> seq = torch.tensor([[1, 2, 3, 1, 2, 3, 1, 2]])
    >>> repeated_ngram_mask(seq, n=2, start=0)      # True where a bigram repeats an earlier one
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def repeated_ngram_mask(seqs: torch.Tensor, n: int = 4, start: int = 0) -> torch.Tensor:
    """Bool mask [B, T]: token t (t >= start) ends an n-gram that occurred earlier in the same row."""
    B, T = seqs.shape
    mask = torch.zeros(B, T, dtype=torch.bool)
    rows = seqs.tolist()
    for b, row in enumerate(rows):
        seen = set()
        for t in range(n - 1, T):
            gram = tuple(row[t - n + 1 : t + 1])
            if gram in seen and t >= start:
                mask[b, t - n + 1 : t + 1] = True
            seen.add(gram)
        mask[b, :start] = False
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
    logits = target(input_ids=seqs[:, :-1]).logits.float()  # [B, T-1, V]
    logp = F.log_softmax(logits, -1).gather(-1, seqs[:, 1:, None])[..., 0]  # [B, T-1]
    one_minus_p = torch.clamp(1.0 - logp.exp(), min=1e-5)
    m = mask[:, 1:].to(logits.device)
    if not m.any():
        return logits.sum() * 0.0
    return -(torch.log(one_minus_p) * m).sum() / m.sum()
