"""Writing checkpoints in the DeepSeek-V3 layout (MTP layer k stored as ``model.layers.{L+k}.*``), which
``load_model`` reads back with transformers' own ``MtpModel.from_pretrained``.

Example:
    >>> save_checkpoint(build_mtp_model(TinyConfig().to_hf(), seed=0), "runs/export", card={"name": "mine"})
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .mtp import MTPModel

__all__ = ["mtp_state_dict_deepseek_layout", "save_checkpoint"]


def mtp_state_dict_deepseek_layout(model: MTPModel) -> dict[str, torch.Tensor]:
    """Target + MTP weights with MTP layer k stored as ``model.layers.{L+k}.*`` (shared head/embedding omitted)."""
    L = model.target.config.get_text_config().num_hidden_layers
    sd = dict(model.target.state_dict())
    for key, v in model.drafter.state_dict().items():
        if not key.startswith("layers."):
            continue  # embed_tokens / shared_head are the target's own
        _, idx, *rest = key.split(".")
        if rest[0] == "mtp_block":
            rest = rest[1:]
        sd[f"model.layers.{L + int(idx)}." + ".".join(rest)] = v
    return sd


def save_checkpoint(model: MTPModel, out_dir: str | Path, card: dict | None = None, dtype=torch.float16) -> Path:
    """Write config.json, model.safetensors (DeepSeek layout, ``dtype``), tokenizer files and model card."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in mtp_state_dict_deepseek_layout(model).items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    model.target.config.save_pretrained(out)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(out)
    if card is not None:
        card = dict(card, weights_sha256=hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest())
        (out / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return out
