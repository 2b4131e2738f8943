"""Writing checkpoints in the DeepSeek-V3 layout (MTP layer k stored as ``model.layers.{L+k}.*``), which
``load_model`` reads back with transformers' own ``MtpModel.from_pretrained``; and in the tensor layouts real MTP
checkpoints are released in (``released_state_dict``: per-expert MoE weights, the MTP extras named per family).

Example:
    >>> save_checkpoint(build_mtp_model(TinyConfig().to_hf(), seed=0), "runs/export", card={"name": "mine"})
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch

from .mtp import MTPModel

__all__ = ["LAYOUTS", "mtp_state_dict_deepseek_layout", "released_state_dict", "save_checkpoint"]

LAYOUTS = ("deepseek", "mellum", "inkling")  # DeepSeek-V3 / GLM-4.5 / sarvam; Mellum (Qwen3-Next style); Inkling


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


def released_state_dict(model: MTPModel, layout: str) -> dict[str, torch.Tensor]:
    """Target + MTP tensors named as the architecture's released checkpoints name them (``layout`` in ``LAYOUTS``).

    transformers' reverse conversion gives the released names of the target and of each MTP block (stored as
    decoder layer L+k); the MTP extras are then renamed per layout: DeepSeek-V3 / GLM-4.5 keep them at
    ``model.layers.{L+k}`` with ``shared_head.norm`` and copies of the head and embedding; Mellum at ``mtp.*`` with
    ``fc`` / ``pre_fc_norm_*``; Inkling at ``model.mtp.layers.k.*``.

    Example:
        >>> sd = released_state_dict(build_mtp_model(AutoConfig.for_model("deepseek_v3", ...)), "deepseek")
    """
    from transformers.core_model_loading import revert_weight_conversion

    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is unknown; allowed: {', '.join(LAYOUTS)}")
    L = model.target.config.get_text_config().num_hidden_layers
    sd = revert_weight_conversion(model.target, mtp_state_dict_deepseek_layout(model))
    head, embed = model.target.lm_head.weight, model.target.get_input_embeddings().weight
    out = {}
    for key, value in sd.items():
        m = re.match(r"model\.layers\.(\d+)\.(.*)", key)
        if not m or int(m.group(1)) < L:
            out[key] = value
            continue
        k, rest = int(m.group(1)) - L, m.group(2)
        if layout == "deepseek":
            out[f"model.layers.{L + k}." + rest.replace("post_norm.", "shared_head.norm.")] = value
            out[f"model.layers.{L + k}.shared_head.head.weight"] = head
            out[f"model.layers.{L + k}.embed_tokens.weight"] = embed
        elif layout == "mellum":
            extras = {"eh_proj.": "fc.", "enorm.": "pre_fc_norm_embedding.", "hnorm.": "pre_fc_norm_hidden.",
                      "post_norm.": "norm."}
            extra = next((v for p, v in extras.items() if rest.startswith(p)), None)
            out["mtp." + (extra + rest.split(".", 1)[1] if extra else f"layers.{k}.{rest}")] = value
        else:
            extras = {"enorm.": "embed_norm.", "hnorm.": "hidden_norm.", "eh_proj.": "input_proj."}
            extra = next((v for p, v in extras.items() if rest.startswith(p)), None)
            name = extra + rest.split(".", 1)[1] if extra else "transformer_block." + rest
            out[f"model.mtp.layers.{k}.{name}"] = value
    return {k: v.detach().contiguous().clone() for k, v in out.items()}
