"""A tiny random MTP model whose drafts are often, not always, right; and a trace recorded from it.

float64, so block forwards and one-token forwards agree to the last bit that matters for an argmax. The shared LM
head is sharpened (p and q peaked, as in a trained model) and each MTP layer's ``eh_proj`` is pulled towards
``[I, 0]`` (pass the token embedding through), so the target is close to a bigram model and the drafter guesses its
next token well: acceptance is realistic (~40-70% at depth 1), which exercises accepted AND rejected drafts.
"""

from __future__ import annotations

import functools

import pytest
import torch

from specpolicy.models.loading import TinyConfig, build_mtp_model

VOCAB = 96


@functools.lru_cache(maxsize=4)
def tiny_model(seed: int = 0, eos_token_id: int | None = None, sharpen: float = 15.0, tie: float = 0.9):
    cfg = TinyConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=64, num_mtp_layers=2,
                     max_position_embeddings=512).to_hf(eos_token_id=eos_token_id)
    model = build_mtp_model(cfg, seed=seed)
    model.target.double()
    model.drafter.double()
    hidden = cfg.hidden_size
    with torch.no_grad():
        model.target.get_output_embeddings().weight.mul_(sharpen)
        for layer in model.target.get_decoder().layers:
            layer.self_attn.o_proj.weight.mul_(0.5)
            layer.mlp.down_proj.weight.mul_(0.5)
        for layer in model.drafter.layers:
            w = layer.eh_proj.weight  # [H, 2H]: input [enorm(emb(t)), hnorm(h)]
            w.mul_(1.0 - tie)
            w[:, :hidden] += tie * torch.eye(hidden, dtype=w.dtype)
    return model


def random_prompts(n: int, length: int = 12, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, VOCAB, (length,), generator=g).tolist() for _ in range(n)]


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="session")
def make_model():
    """``make_model(seed=0, eos_token_id=None)``: test modules here are not a package and cannot import conftest."""
    return tiny_model


@pytest.fixture(scope="session")
def model():
    return tiny_model(seed=0)


@pytest.fixture(scope="session")
def prompts():
    return random_prompts(20, seed=1)
