"""Small random MTP models for checks: float64, so a block forward and one-token forwards cannot flip an argmax.

A random model has a flat next-token distribution and a drafter that never agrees with the target. Two knobs make
checks exercise accepted AND rejected drafts:

- ``sharpen`` scales the LM head (shared by target and drafter), so p and q are peaked, as in a trained model;
- ``tie`` pulls each MTP layer's ``eh_proj`` towards ``[I, 0]`` (pass the token embedding through, ignore the
  hidden state). The target is then close to a bigram model (``context`` scales its attention/MLP outputs), and a
  tied drafter reading ``emb(t_{i+j})`` predicts roughly the target's next token after ``t_{i+j}``: drafts are often,
  not always, right. ``tie=0`` keeps a random drafter (q far from p: what sampling power checks need).

Example:
    >>> model = small_model(seed=0, k=2)                   # vocabulary 64, hidden 32, 2 layers, 2 MTP layers
    >>> generate(model, [1, 2, 3], "fixed", k=3, max_new_tokens=16).stats.tpf > 1
    True
"""

from __future__ import annotations

import functools

import torch

__all__ = ["shape_model", "small_model"]


def shape_model(model, sharpen: float = 20.0, tie: float = 1.0, context: float = 0.5, dtype=torch.float64):
    """Cast to ``dtype``; sharpen the shared head; scale the target's context mixing; tie eh_proj towards [I, 0].
    In place; returns the model."""
    model.target.to(dtype)
    model.drafter.to(dtype)
    hidden = model.target.config.get_text_config().hidden_size
    with torch.no_grad():
        model.target.get_output_embeddings().weight.mul_(sharpen)
        for layer in model.target.get_decoder().layers:
            layer.self_attn.o_proj.weight.mul_(context)
            down = getattr(layer.mlp, "down_proj", None)
            if isinstance(down, torch.nn.Linear):
                down.weight.mul_(context)
        for layer in model.drafter.layers:
            w = layer.eh_proj.weight  # [H, 2H]: input [enorm(emb(t)), hnorm(h)]
            w.mul_(1.0 - tie)
            w[:, :hidden] += tie * torch.eye(hidden, dtype=w.dtype)
    return model


@functools.lru_cache(maxsize=64)
def _small(seed, k, vocab, hidden, intermediate, sharpen, tie, context, eos_token_id, max_positions):
    from ..models.loading import TinyConfig, build_mtp_model

    cfg = TinyConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=intermediate, num_mtp_layers=k, max_position_embeddings=max_positions,
    ).to_hf(eos_token_id=list(eos_token_id) if isinstance(eos_token_id, tuple) else eos_token_id)
    return shape_model(build_mtp_model(cfg, tokenizer=None, seed=seed), sharpen=sharpen, tie=tie, context=context)


def small_model(seed: int = 0, k: int = 2, vocab: int = 64, hidden: int = 32, intermediate: int = 64,
                sharpen: float = 20.0, tie: float = 1.0, context: float = 0.5, eos_token_id=None,
                max_positions: int = 256):
    """A cached float64 Llama (2 layers) + K MTP layers shaped by the knobs above; a tuple ``eos_token_id`` becomes
    a list of EOS ids in the config. The weights depend on ``seed`` and the sizes only, not on ``eos_token_id``.
    Callers must not modify the returned model (it is shared)."""
    return _small(seed, k, vocab, hidden, intermediate, sharpen, tie, context, eos_token_id, max_positions)
