"""Drafters: the ``Drafter`` protocol (``base``) and its implementations, one module each, registered by kind:

    mtp      DeepSeek-V3 style MTP layers (per-depth caches; ``mtp:int8``   ``mtp.MTPDrafter``
             the same in int8, named ``mtp-int8``)
    medusa   Medusa-1 heads on the target's last hidden state             ``medusa.MedusaDrafter``
    draft    a separate small causal LM with its own KV cache              ``draft_model.DraftModelDrafter``
    ngram    prompt lookup, model-free                                     ``ngram.NgramDrafter``

``drafter_for(model, engine)`` builds a fresh drafter for a model from ``load_model`` (its ``drafter_name`` says which
kind; ``model.drafter`` holds the weights; ``engine`` says how drafters that run a model run it: ``decoding.engine``).

Example:
    >>> d = drafter_for(load_model("tiny")); d.name, d.native_depths
    ('mtp', 2)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from .base import Drafter, check_drafter
from .mtp import MTPDrafter
from .ngram import NgramDrafter

__all__ = ["DRAFTERS", "Drafter", "MTPDrafter", "NgramDrafter", "check_drafter", "drafter_for", "register_drafter"]

DRAFTERS: dict[str, Callable] = {}  # kind -> factory(model, engine) -> Drafter


def register_drafter(kind: str):
    """Decorator: ``factory(model, engine) -> Drafter`` builds the drafter of models whose ``drafter_name`` is ``kind``."""
    def deco(factory):
        if kind in DRAFTERS:
            raise ValueError(f"drafter kind {kind!r} is already registered")
        DRAFTERS[kind] = factory
        return factory

    return deco


def drafter_for(model, engine: str = "auto") -> Drafter:
    """A fresh drafter for ``model`` (one generation at a time), by its ``drafter_name``."""
    kind = getattr(model, "drafter_name", "mtp")
    try:
        factory = DRAFTERS[kind]
    except KeyError:
        close = difflib.get_close_matches(str(kind), DRAFTERS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ";"
        raise ValueError(f"no drafter registered for kind {kind!r}{hint} allowed: {', '.join(DRAFTERS)}") from None
    return factory(model, engine)


register_drafter("mtp")(lambda model, engine: MTPDrafter(model.drafter, engine,
                                                          int8=getattr(model, "drafter_arg", "") == "int8"))
register_drafter("ngram")(lambda model, engine: NgramDrafter(model.target.config.get_text_config().vocab_size))

from . import draft_model, medusa  # noqa: E402,F401  (register "draft" and "medusa"; they use register_drafter)
