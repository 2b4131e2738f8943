"""A separate draft model as a ``Drafter``: classic speculative decoding (Leviathan et al. 2023, Chen et al. 2023).

The draft model is a small causal LM over the target's vocabulary with its own KV cache (``decoding.engine``: the
lean forward or transformers' modules). Its cache holds the tokens at indices ``0..L-1`` of the decoder's buffer. Drafting
d_depth (the token at index n + depth) needs every token before it, ``tokens[0, : n + depth]`` (committed t_0..t_n,
then d_1..d_{depth-1}): the pending indices ``L..n+depth-1`` go through the draft model in ONE call (after accepted
drafts this is the catch-up of the correction/bonus token and of what the cache had not seen), and the last row's
logits are q of d_depth. ``crop(n)`` keeps the entries of indices ``< n``: t_n, the correction or bonus token, may
differ from what the draft model read at that index. The target's hidden states are never read (``advance`` does
nothing).

Every depth is native: the draft model drafts the next token of any context the same way, so ``native_depths`` is
``MAX_DEPTH`` (the deepest draft any built-in policy may ask for), which tells a policy that depth costs one draft
forward and nothing else.

Example:
    >>> model = load_model("tiny", drafter="draft")                # the shipped draft model, or draft:<dir or id>
    >>> res = generate(model, "def f(", "fixed", k=4)              # drafter_for(model) -> DraftModelDrafter
    >>> res = generate(target_model, "def f(", "fixed", k=4, drafter=DraftModelDrafter(my_small_lm))
"""

from __future__ import annotations

import torch

from ...policies.registry import MAX_DEPTH
from ..engine import causal_forward
from . import register_drafter

__all__ = ["DraftModelDrafter"]


class DraftModelDrafter:
    """The ``Drafter`` of a transformers causal LM ``lm`` sharing the target's vocabulary (one generation at a time)."""

    name = "draft"
    native_depths = MAX_DEPTH  # every depth is the same next-token forward of the draft model

    def __init__(self, lm, engine: str = "auto") -> None:
        self.lm, self.engine = lm, engine
        self.fwd = causal_forward(lm, engine)
        self.length = 0  # L: the cache holds indices 0..L-1

    def begin(self, tokens: torch.Tensor, n: int, hidden: torch.Tensor) -> None:
        """Prefill the prompt tokens[0, :n] (t_n, the prefill's token, is read by the first draft)."""
        self.fwd, self.length = causal_forward(self.lm, self.engine), 0
        if n > 0:
            self._forward(tokens[:, :n])

    def advance(self, hidden: torch.Tensor) -> None:
        pass  # the draft model reads tokens only

    def draft(self, depth: int, tokens: torch.Tensor, n: int) -> torch.Tensor:
        """Logits [V] of d_depth, having read tokens[0, : n + depth]."""
        end = n + depth  # the cache must hold indices 0..end-1; the last one gives the logits
        if self.length >= end:  # asked again for a depth it has passed: recompute the last index
            self.crop(end - 1)
        return self._forward(tokens[:, self.length : end])[0, -1]

    def crop(self, n: int) -> None:
        """Keep the entries of indices < n (t_n is the last committed token; the cache may not have seen it)."""
        if self.length > n:
            self.fwd.crop(n)
            self.length = n

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Run ids [1, k] (the pending indices L..L+k-1) through the draft model; logits [1, 1, V] of the last."""
        h = self.fwd.forward(ids)  # [1, k, H]
        self.length += ids.shape[1]
        return self.fwd.logits(h[:, -1:])  # as the causal LM's forward with logits_to_keep=1


register_drafter("draft")(lambda model, engine: DraftModelDrafter(model.drafter, engine))
