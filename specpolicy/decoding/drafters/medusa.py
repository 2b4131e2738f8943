"""Medusa heads as a ``Drafter``: every depth reads the target's hidden state at the committed frontier.

With the last committed token t_n at index n, the frontier hidden state is ``h_{n-1}`` (the target produced t_n from
it). Head j (``specpolicy.models.medusa``) predicts the token j + 1 after the one its hidden state predicts, so head
j at ``h_{n-1}`` drafts index n + j: d_j. Unlike MTP layers the heads read no drafted token: d_j does not depend on
d_1..d_{j-1}, and a depth costs one small residual block plus the LM head. Depths past the K heads re-use the last
head. The drafter keeps the target's hidden states of the committed positions (``begin``: the prompt's;
``advance``: the verified block's; ``crop(n)``: the first n), so nothing is recomputed.

Example:
    >>> res = generate(load_model("tiny", drafter="medusa"), "def f(", "fixed", k=3)
    >>> res = generate(model, "def f(", "fixed", k=3, drafter=MedusaDrafter(heads, model.target))
"""

from __future__ import annotations

import torch

from . import register_drafter

__all__ = ["MedusaDrafter"]


class MedusaDrafter:
    """The ``Drafter`` of ``MedusaHeads`` on ``target`` (whose LM head the heads share)."""

    name = "medusa"

    def __init__(self, heads, target) -> None:
        self.heads, self.lm_head = heads, target.get_output_embeddings()
        self.native_depths = heads.num_heads
        self.hidden: torch.Tensor | None = None  # [1, L, H] target final hidden states of indices 0..L-1

    def begin(self, tokens: torch.Tensor, n: int, hidden: torch.Tensor) -> None:
        self.hidden = hidden  # [1, n, H]: the prompt t_0..t_{n-1}

    def advance(self, hidden: torch.Tensor) -> None:
        """Append the target's hidden states [1, m+1, H] of the verified block (indices n..n+m)."""
        self.hidden = torch.cat([self.hidden, hidden], dim=1)

    def crop(self, n: int) -> None:
        """Keep indices 0..n-1: the committed positions the target has processed (t_n it has not)."""
        if self.hidden.shape[1] > n:
            self.hidden = self.hidden[:, :n]

    def draft(self, depth: int, tokens: torch.Tensor, n: int) -> torch.Tensor:
        """Logits [V] of d_depth: head ``min(depth, K)`` on h_{n-1}."""
        h = self.hidden[0, n - 1]  # [H]
        return self.heads.logits(h, depth, self.lm_head)


register_drafter("medusa")(lambda model, engine: MedusaDrafter(model.drafter, model.target))
