"""How the decoder runs a causal LM over a growing, croppable KV cache: the lean forward where it reproduces the
model bit for bit (``models.lean``: Llama-family with SDPA), transformers' own modules with a ``DynamicCache``
otherwise. One object per generation; both kinds answer the same three calls.

    fwd = causal_forward(lm, engine="auto")   # "auto": lean where supported; "lean": insist; "transformers"
    h = fwd.forward(ids)                       # ids [1, m] appended after the cache -> final hidden states [1, m, H]
    fwd.crop(n)                                # keep the first n cache entries

Example:
    >>> fwd = causal_forward(model.target)
    >>> logits = model.target.get_output_embeddings()(fwd.forward(ids))
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from ..errors import UserError
from ..models.lean import LeanMTPLayer, LeanTarget, lean_unsupported

__all__ = ["ENGINES", "DecodeError", "TransformersForward", "causal_forward", "mtp_layer_forward"]

ENGINES = ("auto", "lean", "transformers")


class DecodeError(UserError):
    """Bad arguments to ``generate``, or a model it cannot run (one clear line: what is wrong, what is allowed)."""


class TransformersForward:
    """transformers' decoder modules (``lm.get_decoder()``) over a ``DynamicCache``."""

    kind = "transformers"

    def __init__(self, lm):
        self.body, self.cache = lm.get_decoder(), DynamicCache(config=lm.config)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.body(input_ids=ids, cache=self.cache).last_hidden_state

    def crop(self, n: int) -> None:
        drop = self.cache.get_seq_length() - n
        if drop > 0:
            try:
                self.cache.crop(-drop)
            except RuntimeError as err:  # linear-attention / short-conv layer states (transformers 5.24)
                raise DecodeError(f"the target's cache cannot be cropped to the committed prefix ({str(err)[:120]}); "
                                  "allowed: targets whose layers all keep a croppable KV cache") from None


class _Lean(LeanTarget):
    kind = "lean"


def _choose(config, engine: str, what: str) -> bool:
    """True for the lean forward."""
    if engine not in ENGINES:
        raise DecodeError(f"engine={engine!r} is unknown; allowed: {', '.join(ENGINES)}")
    why = lean_unsupported(config, what) if engine != "transformers" else "not asked for"
    if engine == "lean" and why is not None:
        raise DecodeError(f"engine='lean' cannot reproduce this {what} ({why}); allowed: engine='auto' or "
                          "'transformers'")
    return why is None


def causal_forward(lm, engine: str = "auto") -> _Lean | TransformersForward:
    """A fresh forward with an empty cache for the causal LM ``lm`` (module docstring)."""
    return _Lean(lm) if _choose(lm.config, engine, "target") else TransformersForward(lm)


def mtp_layer_forward(mtp, layer_idx: int, engine: str = "auto"):
    """``forward(h_prev, pos, input_ids)`` + ``crop(n)`` for MTP layer ``layer_idx`` with a cache of its own, or None
    where the transformers path (``mtp.forward_layer`` with a ``DynamicCache``) must be used."""
    return LeanMTPLayer(mtp, layer_idx) if _choose(mtp.config, engine, "mtp") else None
