"""How the decoder runs a causal LM over a growing, croppable KV cache: the lean forward where it reproduces the
model bit for bit (``models.lean``: Llama-family with SDPA), transformers' own modules with a ``DynamicCache``
otherwise. One object per generation; both kinds answer the same calls.

    fwd = causal_forward(lm, engine="auto")   # "auto": lean where supported; "lean": insist; "transformers";
                                               # "packed": lean with oneDNN-packed projections (CPU float32, opt-in)
    h = fwd.forward(ids)                       # ids [1, m] appended after the cache -> final hidden states [1, m, H]
    fwd.logits(h)                              # the LM head
    fwd.crop(n)                                # keep the first n cache entries

"packed" is the one engine whose hidden states are not bit-identical to transformers' (``models.lean``, README
"What lossless means"); it is never chosen unless asked for.

Example:
    >>> fwd = causal_forward(model.target)
    >>> logits = fwd.logits(fwd.forward(ids))
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from ..errors import UserError
from ..models.lean import LeanMTPLayer, LeanTarget, int8_unsupported, lean_unsupported, packed_unsupported

__all__ = ["ENGINES", "DecodeError", "TransformersForward", "causal_forward", "check_engine", "int8_unsupported_for",
           "mtp_layer_forward", "unknown_engine"]

ENGINES = ("auto", "lean", "packed", "transformers")


class DecodeError(UserError):
    """Bad arguments to ``generate``, or a model it cannot run (one clear line: what is wrong, what is allowed)."""


class TransformersForward:
    """transformers' decoder modules (``lm.get_decoder()``) over a ``DynamicCache``."""

    kind = "transformers"

    def __init__(self, lm):
        self.body, self.cache = lm.get_decoder(), DynamicCache(config=lm.config)
        self.logits = lm.get_output_embeddings()

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


def unknown_engine(engine, key: str = "engine") -> str | None:
    """The one-line error for an engine name that is not one of ``ENGINES`` (``key``: the setting as the caller's
    config names it), or None for a known one; the apps check their settings with it before loading a model.

    Example:
        >>> unknown_engine("fast", "decode.engine"), unknown_engine("packed")
        ('decode.engine=fast is unknown; allowed: auto, lean, packed, transformers', None)
    """
    return None if engine in ENGINES else f"{key}={engine} is unknown; allowed: {', '.join(ENGINES)}"


def _choose(module, engine: str, what: str) -> bool:
    """True for the lean forward (packed or not)."""
    if engine not in ENGINES:
        raise DecodeError(unknown_engine(repr(engine)))
    why = lean_unsupported(module.config, what) if engine != "transformers" else "not asked for"
    if engine == "packed" and why is None:
        why = packed_unsupported(next(module.parameters()))
    if engine in ("lean", "packed") and why is not None:
        raise DecodeError(f"engine={engine!r} cannot run this {what} ({why}); allowed: engine='auto' or "
                          "'transformers'")
    return why is None


def causal_forward(lm, engine: str = "auto") -> _Lean | TransformersForward:
    """A fresh forward with an empty cache for the causal LM ``lm`` (module docstring)."""
    return _Lean(lm, packed=engine == "packed") if _choose(lm, engine, "target") else TransformersForward(lm)


def mtp_layer_forward(mtp, layer_idx: int, engine: str = "auto", int8: bool = False):
    """``forward(h_prev, pos, input_ids)``, ``logits(h)`` and ``crop(n)`` for MTP layer ``layer_idx`` with a cache of
    its own, or None where the transformers path (``mtp.forward_layer`` with a ``DynamicCache``) must be used.
    ``int8``: the lean layer with int8 projections whatever the engine (``DecodeError`` where it cannot run)."""
    if int8:
        _require_int8(mtp)
        return LeanMTPLayer(mtp, layer_idx, int8=True)
    return LeanMTPLayer(mtp, layer_idx, packed=engine == "packed") if _choose(mtp, engine, "mtp") else None


def int8_unsupported_for(mtp) -> str | None:
    """Why MTP layers ``mtp`` cannot run as the int8 drafter (the lean forward's checks, then the int8 kernels')."""
    return lean_unsupported(mtp.config, "mtp") or int8_unsupported(next(mtp.parameters()))


def _require_int8(mtp) -> None:
    why = int8_unsupported_for(mtp)
    if why is not None:
        raise DecodeError(f"the int8 MTP drafter cannot run here ({why}); allowed: drafter=mtp")


def check_engine(model, engine: str) -> None:
    """Raise the ``DecodeError`` ``generate(model, ..., engine=engine)`` would raise about the engine, before any
    decoding (apps call it right after loading the model).

    Example:
        >>> check_engine(load_model("tiny"), "packed")   # fine on CPU float32
    """
    _choose(model.target, engine, "target")
    if getattr(model, "drafter_name", None) == "mtp":
        if getattr(model, "drafter_arg", "") == "int8":
            _require_int8(model.drafter)
        else:
            _choose(model.drafter, engine, "mtp")
