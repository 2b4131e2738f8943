"""The shipped tiny model: loads offline from the package, is transformers' own classes, matches its card."""

import hashlib
import json
import math
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.modeling_layers import MtpLayer, MtpModel

from specpolicy.models.loading import ASSET_DIR, load_model

TINY = ASSET_DIR / "tiny"


def test_load_tiny_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    model = load_model("tiny")
    assert isinstance(model.target, PreTrainedModel) and model.target.config.model_type == "llama"
    assert isinstance(model.drafter, MtpModel)
    assert model.num_mtp_layers >= 2 and all(isinstance(layer, MtpLayer) for layer in model.drafter.layers)
    assert model.drafter.embed_tokens is model.target.get_input_embeddings()  # shared, as in DeepSeek-V3
    ids = model.tokenizer.encode("import os\n", add_special_tokens=False)
    assert model.tokenizer.decode(ids) == "import os\n"
    assert model.target(torch.tensor([ids])).logits.shape[-1] == len(model.tokenizer)


def test_shipped_assets_are_small_fp16():
    total = sum(f.stat().st_size for f in TINY.iterdir())
    assert total <= 40e6, f"shipped model is {total / 1e6:.1f} MB"
    from safetensors import safe_open

    with safe_open(str(TINY / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}


def test_model_card_is_consistent():
    card = json.loads((TINY / "model_card.json").read_text())
    cfg = json.loads((TINY / "config.json").read_text())
    assert card["weights_sha256"] == hashlib.sha256((TINY / "model.safetensors").read_bytes()).hexdigest()
    for k in ("hidden_size", "num_hidden_layers", "num_mtp_layers", "vocab_size"):
        assert card["architecture"][k] == cfg[k]
    assert len(card["corpus"]["fingerprint"]) == 64 and card["training"]["tokens_seen"] > 0
    ev = card["evaluation"]
    for name, (value, bar, ok) in ev["bar"].items():
        assert ok == (value <= bar if name == "loop_share" else value >= bar), name
    assert math.isclose(ev["bar"]["top1"][0], ev["next_token"]["top1"])
    assert math.isclose(ev["bar"]["depth1_agreement"][0], ev["depths"]["1"]["agreement"])
    md = (TINY / "MODEL_CARD.md").read_text()
    assert f"{ev['next_token']['top1']:.3f}" in md and f"{ev['depths']['1']['agreement']:.3f}" in md
    n_params = sum(p.numel() for p in load_model("tiny").target.parameters())
    assert n_params == card["parameters"]["target"]
    assert Path(TINY / "tokenizer.json").exists()
