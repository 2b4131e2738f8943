"""Checkpoints: DeepSeek-layout save/load through transformers' MtpModel.from_pretrained is bit-exact."""

import torch

from specpolicy.models.checkpoint import mtp_state_dict_deepseek_layout, save_checkpoint
from specpolicy.models.loading import TinyConfig, build_mtp_model, load_model
from specpolicy.models.mtp import layer_for_depth, mtp_chain_logits


def _tiny(seed=0, k=2):
    cfg = TinyConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=64, num_mtp_layers=k).to_hf()
    return build_mtp_model(cfg, seed=seed)


def test_save_load_round_trip_bit_identical(tmp_path):
    model = _tiny()
    # fp16 is the shipped dtype: make the weights fp16-representable, then the round trip must be exact
    # (parameters only: buffers such as RoPE's inv_freq are recomputed on load, not stored)
    with torch.no_grad():
        for prm in list(model.target.parameters()) + list(model.drafter.parameters()):
            prm.copy_(prm.half().float())
    save_checkpoint(model, tmp_path, card={"name": "t"})
    loaded = load_model(str(tmp_path), dtype="float32")
    ids = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        a, b = model.target(ids), loaded.target(ids)
        assert torch.equal(a.logits, b.logits)
        ha = model.target.model(ids).last_hidden_state
        hb = loaded.target.model(ids).last_hidden_state
        for la, lb in zip(mtp_chain_logits(model.drafter, ha, ids, 4), mtp_chain_logits(loaded.drafter, hb, ids, 4)):
            assert torch.equal(la, lb)
    assert (tmp_path / "model_card.json").exists()


def test_deepseek_layout_keys():
    model = _tiny(k=2)
    keys = mtp_state_dict_deepseek_layout(model)
    # MTP layer k is stored after the 2 backbone layers, as DeepSeek-V3 stores its layer 61
    assert "model.layers.2.eh_proj.weight" in keys and "model.layers.3.enorm.weight" in keys
    assert "model.layers.3.self_attn.q_proj.weight" in keys
    assert not any(".mtp_block." in k for k in keys)


def test_depth_reuses_last_layer():
    assert [layer_for_depth(j, 2) for j in range(1, 6)] == [0, 1, 1, 1, 1]
    assert [layer_for_depth(j, 1) for j in range(1, 4)] == [0, 0, 0]
