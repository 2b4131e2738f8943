"""Greedy exactness on architectures other than the embedded Llama: tiny random DeepSeek-V3 (MLA attention, MoE) and
GLM-4.5 (``glm4_moe``) models with MTP layers, built from transformers' own configs, drafted by transformers' MtpModel.

Two things a random build of these needs, neither in the decoder:
- ``experts_implementation="eager"``: the default grouped-mm experts kernel (``torch._grouped_mm``) has no float64.
- the MTP layers' MoE experts/router, which ``MtpModel`` leaves uninitialised, are initialised by ``build_mtp_model``
  (checked by ``init_moe_drafter`` in conftest).
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import DeepseekV3Config, Glm4MoeConfig

from specpolicy.decoding import generate
from specpolicy.models.loading import build_mtp_model

VOCAB = 128
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    moe_intermediate_size=16,
    num_hidden_layers=2,
    n_routed_experts=4,
    num_experts_per_tok=2,
    n_shared_experts=1,
    n_group=1,
    topk_group=1,
    first_k_dense_replace=1,  # layer 0 dense, layer 1 MoE (MTP layers are always MoE)
    max_position_embeddings=256,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
    experts_implementation="eager",
)


def _config(arch: str, k: int):
    if arch == "deepseek_v3":
        return DeepseekV3Config(
            **COMMON,
            num_attention_heads=4,
            num_key_value_heads=4,
            q_lora_rank=16,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=8,
            num_mtp_layers=k,
        )
    return Glm4MoeConfig(**COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_mtp_layers=k)


@pytest.mark.parametrize("arch", ["deepseek_v3", "glm4_moe"])
@pytest.mark.parametrize("k", [1, 2])
def test_moe_mtp_greedy_equals_hf(shape, hf_ref, lossless_checks, arch, k):
    model = build_mtp_model(_config(arch, k), seed=0)
    assert model.target.config.model_type == arch and model.num_mtp_layers == k
    assert type(model.drafter.layers[0].mtp_block).__name__.startswith(("DeepseekV3", "Glm4Moe"))
    shape(model, init_moe=True)
    assert all(torch.isfinite(p).all() for p in model.drafter.parameters())
    accepted, rejected = 0, 0
    for i, (policy, params) in enumerate(
        [
            ("ar", {}),
            ("fixed", {"k": 3}),
            ("fixed", {"k": 5}),
            ("threshold", {"tau_extend": 0.3, "k_max": 4}),
            ("heuristic", {}),
        ]
    ):
        prompt = random.Random(10 * i + k).choices(range(VOCAB), k=5 + 2 * i)
        ref = hf_ref(model, prompt, 30)
        res = generate(model, prompt, policy, max_new_tokens=30, **params)
        assert res.token_ids == ref, (policy, params)
        lossless_checks(res, 30)
        accepted += res.stats.accepted
        rejected += sum(s.accepted < len(s.drafts) for s in res.steps)
    assert accepted > 0 and rejected > 0  # both branches of the walk ran on this architecture
