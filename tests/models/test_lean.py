"""The lean forward reproduces transformers' Llama / MtpLayer forward bit for bit (float64 and float32, grouped-query
attention and not, prefill, single tokens and blocks after a cache, crops), and declines what it does not reproduce."""

import copy

import pytest
import torch
from transformers import DynamicCache

from specpolicy.models.lean import LeanMTPLayer, LeanTarget, lean_unsupported
from specpolicy.testing.models import small_model

BLOCKS = (1, 3, 1, 5, 2, 1, 7, 4, 1)


def _model(dtype, kv_heads):
    from specpolicy.models.loading import TinyConfig, build_mtp_model

    cfg = TinyConfig(vocab_size=96, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=kv_heads, intermediate_size=80, num_mtp_layers=2,
                     max_position_embeddings=256).to_hf()
    m = build_mtp_model(cfg, tokenizer=None, seed=3)
    m.target.to(dtype)
    m.drafter.to(dtype)
    return m


@pytest.mark.parametrize("dtype,kv_heads", [(torch.float64, 2), (torch.float32, 2), (torch.float32, 4)])
@torch.inference_mode()
def test_target_forward_is_bit_identical(dtype, kv_heads):
    m = _model(dtype, kv_heads)
    body = m.target.get_decoder()
    lean = LeanTarget(m.target)
    lean.kv.k = lean.kv.k[:, :, :, :8]  # a small capacity, so the cache has to grow
    lean.kv.v = lean.kv.v[:, :, :, :8]
    ids = torch.randint(0, 96, (1, 120), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache(config=m.target.config)
    assert torch.equal(body(input_ids=ids[:, :20], cache=cache).last_hidden_state, lean.forward(ids[:, :20]))
    p = 20
    for i, blk in enumerate(BLOCKS):
        ref = body(input_ids=ids[:, p : p + blk], cache=cache).last_hidden_state
        assert torch.equal(ref, lean.forward(ids[:, p : p + blk])), (i, blk)
        if blk > 1:  # a rejected block: keep one token of it, as the decoder does
            cache.crop(1 - blk)
            lean.crop(p + 1)
            p += 1
        else:
            p += blk


@torch.inference_mode()
def test_mtp_layer_is_bit_identical():
    m = _model(torch.float32, 2)
    mtp = m.drafter
    for layer_idx in range(2):
        cache, lean = DynamicCache(config=mtp.config), LeanMTPLayer(mtp, layer_idx)
        g = torch.Generator().manual_seed(layer_idx)
        h = torch.randn(1, 40, 48, generator=g)
        ids = torch.randint(0, 96, (1, 40), generator=g)
        lo, depth = 0, layer_idx + 1
        for blk in (6, 1, 3, 1, 2):
            pos = torch.arange(lo + depth, lo + depth + blk)[None]
            ref = mtp.forward_layer(layer_idx, h[:, lo : lo + blk], pos, cache, input_ids=ids[:, lo : lo + blk])
            got = lean.forward(h[:, lo : lo + blk], pos, ids[:, lo : lo + blk])
            assert torch.equal(ref, got), (layer_idx, blk)
            lo += blk


def test_declines_what_it_does_not_reproduce():
    cfg = small_model().target.config
    assert lean_unsupported(cfg) is None
    for field, value, feature in [("attention_bias", True, "biases"), ("hidden_act", "gelu", "activation 'gelu'"),
                                  ("rope_parameters", {"rope_type": "linear", "factor": 2.0}, "RoPE scaling")]:
        changed = copy.deepcopy(cfg)
        setattr(changed, field, value)
        assert lean_unsupported(changed) == feature
    eager = copy.deepcopy(cfg)
    eager._attn_implementation = "eager"
    assert lean_unsupported(eager) == "attention 'eager'"
