"""The ``Drafter`` protocol: what proposes d_j with its distribution q. A protocol, not a class hierarchy.

The decoder drives one generation at a time through five members (index n = the last committed token t_n, which
the target has not processed yet; ``tokens`` is the decoder's buffer [1, capacity] of committed tokens, followed
during a draft phase by the drafts d_1.. at indices n+1..):

    begin(tokens, n, hidden)    a new generation: the prompt is tokens[0, :n], t_n = tokens[0, n] is the prefill's
                                token, hidden [1, n, H] the target's final hidden states of the prompt positions
    draft(depth, tokens, n)     logits [V] of d_depth (the token at index n + depth), reading committed tokens and
                                d_1..d_{depth-1}; or None: no draft to offer at this depth (the step verifies what
                                it has). q = softmax(logits) (warped like p when sampling): return log q for a
                                drafter that has probabilities
    advance(hidden)             the target's final hidden states [1, m+1, H] of the block just verified (indices
                                n..n+m), before the crop
    crop(n)                     forget whatever read past the committed prefix: t_n is now the last committed token
    native_depths               how many depths it drafts natively (MTP layers, Medusa heads); policies see it as
                                ``StepState.native_depths``

and ``name`` (``"mtp"``, ``"medusa"``, ...), which traces and calibrators record. Any object with these members
works: ``generate(model, prompt, policy, drafter=MyDrafter())``. Policies never know which drafter they face.

Example (the smallest useful drafter: always propose the last committed token again, with certainty)::

    class Repeat:
        name, native_depths = "repeat", 1
        def begin(self, tokens, n, hidden): pass
        def advance(self, hidden): pass
        def crop(self, n): pass
        def draft(self, depth, tokens, n):
            logits = torch.full((vocab,), -math.inf)
            logits[tokens[0, n + depth - 1]] = 0.0          # log q: q is a point mass
            return logits
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["Drafter", "check_drafter"]


@runtime_checkable
class Drafter(Protocol):
    """See the module docstring."""

    name: str
    native_depths: int

    def begin(self, tokens: torch.Tensor, n: int, hidden: torch.Tensor) -> None: ...

    def draft(self, depth: int, tokens: torch.Tensor, n: int) -> torch.Tensor | None: ...

    def advance(self, hidden: torch.Tensor) -> None: ...

    def crop(self, n: int) -> None: ...


def check_drafter(drafter: object) -> Drafter:
    """``drafter`` if it has every member of the protocol; else ``TypeError`` naming the missing ones."""
    missing = [m for m in ("name", "native_depths", "begin", "draft", "advance", "crop") if not hasattr(drafter, m)]
    if missing:
        raise TypeError(f"drafter {type(drafter).__name__} lacks {', '.join(missing)}; allowed: an object with "
                        "name, native_depths, begin, draft, advance and crop (specpolicy.decoding.Drafter)")
    return drafter
