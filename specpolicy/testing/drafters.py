"""Drafters of every kind for the harness's small float64 models, so checks can run the same policy over each.

``drafter_factory(kind)`` returns a factory ``model -> Drafter`` (what ``check_lossless(drafter=...)`` takes):

    mtp      the model's own MTP layers
    medusa   3 Medusa heads, random then fitted for 60 steps to the model's greedy continuations (drafts often,
             not always, right); cached per model
    draft    a 1-layer draft LM sharing the model's embedding and LM head, its layer copied from the target's first
    ngram    prompt lookup

``with_drafter(model, kind)`` is the same model as a ``load_model``-style container whose ``drafter_name`` is
``kind`` (what trace recording and the registry read).

Example:
    >>> check_lossless(get_policy("threshold"), drafter=drafter_factory("medusa"))
"""

from __future__ import annotations

import dataclasses
import functools

import torch

__all__ = ["DRAFTER_KINDS", "drafter_factory", "with_drafter"]

DRAFTER_KINDS = ("mtp", "medusa", "draft", "ngram")


@functools.lru_cache(maxsize=16)
def _medusa_heads(target, num_heads: int = 3, steps: int = 60):
    from ..models.medusa import MedusaHeads, medusa_labels, medusa_loss
    from ..models.unlikelihood import greedy_continue

    with torch.random.fork_rng():
        torch.manual_seed(0)
        cfg = target.config
        V, H = cfg.vocab_size, cfg.hidden_size
        prompts = torch.randint(0, V, (32, 4), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            seqs = greedy_continue(target, prompts, 24)  # [32, 28]
            h = target.get_decoder()(input_ids=seqs).last_hidden_state[:, 3:].reshape(-1, H)  # [32 * 25, H]
        labels = medusa_labels(seqs, num_heads, 3).reshape(num_heads, -1)
        heads = MedusaHeads(H, V, num_heads).to(next(target.parameters()).dtype)
        with torch.no_grad():
            for lin in heads.heads:
                lin.weight.normal_(0, H ** -0.5)
        opt = torch.optim.Adam(heads.parameters(), lr=1e-2)
        lm_head = target.get_output_embeddings()
        for _ in range(steps):
            loss = torch.stack(medusa_loss(heads, lm_head, h, labels)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return heads.requires_grad_(False)


@functools.lru_cache(maxsize=16)
def _draft_lm(target, init: bool = True):
    from ..models.draft_model import build_shared_draft

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_shared_draft(target, 1, init_layers=(0,) if init else None)


def _module(model, kind: str):
    """The drafter's weights for ``model`` (what ``load_model`` puts in ``model.drafter``)."""
    return {"mtp": lambda: model.drafter, "medusa": lambda: _medusa_heads(model.target),
            "draft": lambda: _draft_lm(model.target), "ngram": lambda: None}[kind]()


def with_drafter(model, kind: str):
    """``model`` (a ``load_model``-style container) with a drafter of ``kind`` for it."""
    if kind not in DRAFTER_KINDS:
        raise ValueError(f"unknown drafter kind {kind!r}; allowed: {', '.join(DRAFTER_KINDS)}")
    return dataclasses.replace(model, drafter=_module(model, kind), drafter_name=kind)


def drafter_factory(kind: str):
    """A factory ``model -> Drafter`` of ``kind`` for the harness's small models (module docstring)."""
    from ..decoding.drafters import drafter_for

    if kind not in DRAFTER_KINDS:
        raise ValueError(f"unknown drafter kind {kind!r}; allowed: {', '.join(DRAFTER_KINDS)}")
    return lambda model: drafter_for(with_drafter(model, kind))
