"""Prompt lookup (n-gram) drafting, model-free, as transformers' ``prompt_lookup_num_tokens`` and vLLM's ``ngram``.

To draft the token at index n + j, take the longest suffix of the context (committed tokens and d_1..d_{j-1}) of
length ``max_ngram`` down to ``min_ngram`` that also occurs earlier in the context; q is the empirical distribution
of the tokens that followed its earlier occurrences (not a point mass: a suffix seen three times, followed twice by
``a`` and once by ``b``, gives q(a) = 2/3, so a confidence threshold means something); the greedy draft is its mode
(the decoder's argmax: ties go to the lowest token id). No earlier occurrence of any such suffix: no draft (the step verifies what it has).
``draft`` returns log q (-inf outside the continuations seen).

Example:
    >>> res = generate(load_model("tiny", drafter="ngram"), "x = 1\\ny = 2\\nx = 1\\ny", "fixed", k=4)
"""

from __future__ import annotations

import math

import torch

__all__ = ["NgramDrafter"]


class NgramDrafter:
    """The ``Drafter`` of prompt lookup; ``vocab_size`` is the target's (the length of the logits it returns)."""

    name = "ngram"
    native_depths = 1  # one rule for every depth

    def __init__(self, vocab_size: int, max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"ngram: min_ngram={min_ngram}, max_ngram={max_ngram}; allowed: 1 <= min <= max")
        self.vocab_size, self.max_ngram, self.min_ngram = vocab_size, max_ngram, min_ngram

    def begin(self, tokens: torch.Tensor, n: int, hidden: torch.Tensor) -> None:
        pass

    def advance(self, hidden: torch.Tensor) -> None:
        pass

    def crop(self, n: int) -> None:
        pass  # stateless: every draft reads the committed tokens (and the drafts before it) from the buffer

    def draft(self, depth: int, tokens: torch.Tensor, n: int) -> torch.Tensor | None:
        counts = self.continuations(tokens[0, : n + depth].tolist())  # t_0..t_n, d_1..d_{depth-1}
        if not counts:
            return None
        logits = torch.full((self.vocab_size,), -math.inf, device=tokens.device)
        total = sum(counts.values())
        for t, c in counts.items():
            logits[t] = math.log(c / total)
        return logits

    def continuations(self, ctx: list[int]) -> dict[int, int]:
        """{token: count} of what followed the earlier occurrences of the longest suffix of ``ctx`` that has any."""
        L = len(ctx)
        for size in range(min(self.max_ngram, L - 1), self.min_ngram - 1, -1):
            suffix = ctx[L - size :]
            counts: dict[int, int] = {}
            for start in range(L - size - 1, -1, -1):  # latest first; start + size <= L - 1 leaves a continuation
                if ctx[start : start + size] == suffix:
                    nxt = ctx[start + size]
                    counts[nxt] = counts.get(nxt, 0) + 1
            if counts:
                return counts
        return {}
