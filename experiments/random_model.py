"""Write a randomly initialised MTP model in a real architecture's released checkpoint layout, for measuring the
engine on a model of realistic size without downloading one (the GPU check's ~1B DeepSeek-V3).

    python -m experiments.random_model out=runs/models/dsv3-1b                  # DeepSeek-V3 layout, ~1B parameters
    python -m experiments.random_model size=smoke out=runs/models/dsv3-smoke    # 61 narrow layers: seconds, on a CPU

The architecture is DeepSeek-V3 (MLA attention, MoE with shared experts, one MTP layer stored as decoder layer 61,
as transformers expects for this model type), with the embedded model's tokenizer and vocabulary (4096) so prompts
from the ``data`` group work. The weights are random: a draft is as good as chance, so what such a model measures
is the cost structure (c(m), the drafter's cost, the loop's overhead), not acceptance. The directory loads with
``load_model(out)`` (checked before the app returns: one greedy step). Bad input: one line, exit code 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from experiments.common import CONF_DIR, UserError, preflight, run_task

# DeepSeek-V3's layer count (61, hard-coded in transformers' MTP key mapping), narrowed. Parameter counts are those
# build_mtp_model reports for each (target + MTP layer).
SIZES = {
    "1b": dict(hidden_size=1280, intermediate_size=3072, moe_intermediate_size=640, n_routed_experts=4,
               num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1, first_k_dense_replace=3, num_attention_heads=16,
               num_key_value_heads=16, q_lora_rank=384, kv_lora_rank=256, qk_rope_head_dim=32, qk_nope_head_dim=64,
               v_head_dim=64),
    "smoke": dict(hidden_size=32, intermediate_size=64, moe_intermediate_size=16, n_routed_experts=4,
                  num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1, first_k_dense_replace=1, num_attention_heads=4,
                  num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                  v_head_dim=8),
}
DTYPES = ("bfloat16", "float16", "float32")


@dataclass
class RandomModelConfig:
    out: str = ""  # the checkpoint directory to write (required; must not exist or be empty)
    size: str = "1b"  # 1b | smoke
    dtype: str = "bfloat16"  # dtype of the stored weights
    seed: int = 0


ConfigStore.instance().store(name="random_model_schema", node=RandomModelConfig)


def validate(cfg) -> None:
    if cfg.size not in SIZES:
        raise UserError(f"size={cfg.size} is unknown; allowed: {', '.join(SIZES)}")
    if cfg.dtype not in DTYPES:
        raise UserError(f"dtype={cfg.dtype} is unknown; allowed: {', '.join(DTYPES)}")
    if not cfg.out:
        raise UserError("out is missing; allowed: out=<a new directory>")
    if Path(cfg.out).exists() and (not Path(cfg.out).is_dir() or any(Path(cfg.out).iterdir())):
        raise UserError(f"out={cfg.out} exists and is not an empty directory; allowed: a new or empty directory")


def execute(cfg: DictConfig, run_dir: Path) -> dict:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from specpolicy import generate, load_model
    from specpolicy.models.checkpoint import released_state_dict
    from specpolicy.models.loading import build_mtp_model

    validate(cfg)
    tiny = load_model("tiny")
    config = AutoConfig.for_model("deepseek_v3", vocab_size=tiny.target.config.vocab_size, num_hidden_layers=61,
                                  num_mtp_layers=1, max_position_embeddings=4096, eos_token_id=tiny.eos_token_id,
                                  pad_token_id=None, bos_token_id=None, **SIZES[cfg.size])
    model = build_mtp_model(config, tokenizer=tiny.tokenizer, seed=cfg.seed)
    n_params = sum(p.numel() for p in model.target.parameters()) + sum(p.numel() for p in model.drafter.parameters())
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model.target.config.save_pretrained(out)
    tiny.tokenizer.save_pretrained(out)
    dtype = getattr(torch, cfg.dtype)
    save_file({k: v.to(dtype) for k, v in released_state_dict(model, "deepseek").items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    del model
    back = load_model(str(out))
    step = generate(back, "def f(", "fixed", k=1, max_new_tokens=2)
    info = {"out": str(out), "architecture": "deepseek_v3", "size": cfg.size, "parameters": n_params,
            "dtype": cfg.dtype, "seed": cfg.seed, "loads": bool(step.token_ids), "mtp_layers": back.num_mtp_layers}
    (out / "random_model.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"random DeepSeek-V3 ({cfg.size}): {n_params / 1e6:.0f}M parameters, {cfg.dtype}, in {out}; "
          f"load_model(out) decodes with {back.num_mtp_layers} MTP layer(s)")
    return info


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="random_model")
def app(cfg: DictConfig) -> dict:
    return run_task(cfg, execute)


def main() -> None:
    preflight("random_model", validate)
    app()


if __name__ == "__main__":
    main()
