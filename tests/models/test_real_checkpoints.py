"""Real MTP architectures saved in their released tensor layouts load with their MTP weights, and decode losslessly;
unusable checkpoints fail with one line.

Each architecture of transformers whose config has ``num_mtp_layers`` gets a tiny random config (narrow layers, a
256-token vocabulary, a few small experts), is built with ``build_mtp_model`` and written the way its real checkpoints
are (the key names its ``_keys_to_ignore_on_load_unexpected`` and transformers' ``MtpModel`` conversions expect: per-
expert MoE weights, ``model.layers.{L+k}.*`` for DeepSeek-V3 / GLM-4.5, ``mtp.*`` for Mellum, ``model.mtp.*`` for
Inkling). ``load_model(dir)`` must give back exactly the saved MTP weights and greedy output equal to
``target.generate``. Checkpoints are built once per module.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from specpolicy.errors import UserError
from specpolicy.models.checkpoint import released_state_dict
from specpolicy.models.loading import CheckpointError, ModelNotFoundError, build_mtp_model, load_model

ROOT = Path(__file__).resolve().parents[2]
_ATTN = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256, eos_token_id=None, pad_token_id=None, bos_token_id=None)
_MOE = dict(moe_intermediate_size=16, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, n_group=1,
            topk_group=1, first_k_dense_replace=1)
_MLA = dict(kv_lora_rank=16, qk_rope_head_dim=8, v_head_dim=8, qk_nope_head_dim=8, num_key_value_heads=4)

# model_type -> (config kwargs, released MTP layout). deepseek_v3 / glm4_moe keep the layer counts of their releases
# (61 / 46) because transformers hard-codes their MTP keys to them.
ARCHS = {
    "deepseek_v3": (dict(_ATTN | _MLA, **_MOE, q_lora_rank=16, num_hidden_layers=61, num_mtp_layers=1), "deepseek"),
    "glm4_moe": (dict(_ATTN, **_MOE, head_dim=8, num_hidden_layers=46, num_mtp_layers=1), "deepseek"),
    "sarvam_mla": (dict(_ATTN | _MLA, **_MOE, q_lora_rank=None, num_hidden_layers=2, num_mtp_layers=2), "deepseek"),
    "sarvam_moe": (dict(_ATTN, **_MOE, head_dim=8, num_hidden_layers=2, num_mtp_layers=2), "deepseek"),
    "bailing_hybrid": (dict(_ATTN | _MLA, moe_intermediate_size=16, num_local_experts=4, num_experts_per_tok=2,
                            n_shared_experts=1, n_group=1, topk_group=1, first_k_dense_replace=1, head_dim=8,
                            layer_group_size=2, num_hidden_layers=2, num_mtp_layers=1, pad_token_id=0,
                            mtp_layer_types=["full_attention"], mtp_mlp_layer_types=["sparse"]), "deepseek"),
    "mellum": (dict(_ATTN, moe_intermediate_size=16, num_local_experts=4, num_experts_per_tok=2, head_dim=8,
                    num_hidden_layers=2, num_mtp_layers=1, sliding_window=64,
                    layer_types=["sliding_attention", "full_attention"]), "mellum"),
    "inkling_text": (dict(_ATTN, head_dim=8, swa_num_attention_heads=4, swa_num_key_value_heads=2, swa_head_dim=8,
                          sliding_window_size=16, d_rel=4, rel_extent=32, moe_intermediate_size=16, n_routed_experts=4,
                          num_experts_per_tok=2, n_shared_experts=1, num_hidden_layers=2, num_mtp_layers=1),
                     "inkling"),
}


def write_checkpoint(model, out: Path, state_dict: dict[str, torch.Tensor]) -> Path:
    """config.json + model.safetensors (float32) in ``out``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    model.target.config.save_pretrained(out)
    save_file({k: v.to(torch.float32) for k, v in state_dict.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """model_type -> (directory, the drafter's own weights as built); each written once per module."""
    from transformers import AutoConfig

    made = {}
    for arch, (kwargs, layout) in ARCHS.items():
        model = build_mtp_model(AutoConfig.for_model(arch, **kwargs), seed=0)
        out = write_checkpoint(model, tmp_path_factory.mktemp(arch), released_state_dict(model, layout))
        own = {k: v.detach().clone() for k, v in model.drafter.state_dict().items()
               if not k.startswith(("embed_tokens", "shared_head"))}
        made[arch] = (out, own)
    return made


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the machine is shared, and OpenMP's busy-wait makes tiny forwards 50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _drafter_weights(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.drafter.state_dict().items() if not k.startswith(("embed_tokens", "shared_head"))}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_released_layout_loads_the_saved_mtp_weights(arch, checkpoints):
    path, own = checkpoints[arch]
    loaded = _drafter_weights(load_model(str(path)))
    assert loaded.keys() == own.keys()
    for key, value in own.items():
        assert torch.equal(loaded[key], value.to(loaded[key].dtype)), f"{arch}: MTP weight {key} was not loaded"


# The decoder crops the target's cache after every step; linear-attention (bailing_hybrid's KDA) and short-conv
# (inkling) layer states cannot be cropped in transformers 5.24 unless past recording is switched on.
NO_CROP = ("bailing_hybrid", "inkling_text")  # the decoder says so in one line (DecodeError) instead of decoding
DECODE = [a for a in ARCHS if a not in NO_CROP]


@pytest.mark.parametrize("arch", DECODE)
def test_released_layout_decodes_losslessly(arch, checkpoints):
    from specpolicy.decoding import generate
    from specpolicy.policies import get_policy
    from specpolicy.testing.lossless import greedy_accounting, hf_greedy

    model = load_model(str(checkpoints[arch][0]))
    # float64 for an exact comparison; grouped_mm (the default MoE kernel) has no float64, the eager loop has
    for module in (model.target, model.drafter):
        module.double()
        module.set_experts_implementation("eager")
    for prompt in ([5, 17, 99, 3], [200, 1, 42, 42, 7, 8, 9], [11, 250, 60, 61, 62, 13, 14, 15, 16, 2]):
        res = generate(model, prompt, get_policy("fixed", k=3), max_new_tokens=12)
        assert list(res.token_ids) == list(hf_greedy(model, prompt, 12)), f"{arch}: greedy output differs"
        greedy_accounting(res, 12)
        assert sum(len(step.drafts) for step in res.steps) > 0, f"{arch}: the MTP layers drafted nothing"


@pytest.mark.parametrize("arch", NO_CROP)
def test_a_target_whose_cache_cannot_be_cropped_is_one_clear_error(arch, checkpoints):
    """The MTP weights load, but these layers keep states transformers 5.24 cannot crop to the committed prefix."""
    from specpolicy.decoding import DecodeError, generate

    model = load_model(str(checkpoints[arch][0]))
    with pytest.raises(DecodeError, match="cache cannot be cropped") as err:
        generate(model, [5, 17, 99, 3], "fixed", k=3, max_new_tokens=12)
    assert "\n" not in str(err.value)


def _one_line_error(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and len(message) < 500
    assert isinstance(exc_info.value, UserError)
    return message


def _copy_config(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst


@pytest.fixture(scope="module")
def bad(checkpoints, tmp_path_factory):
    """Broken variants of the sarvam_moe checkpoint: name -> directory."""
    from safetensors.torch import load_file, save_file

    src, _ = checkpoints["sarvam_moe"]
    root = tmp_path_factory.mktemp("bad")
    weights = (src / "model.safetensors").read_bytes()
    dirs = {}
    d = dirs["truncated"] = _copy_config(src, root / "truncated")
    (d / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    d = dirs["corrupt"] = _copy_config(src, root / "corrupt")
    (d / "model.safetensors").write_bytes(b"\xff" * 8 + weights[8:])
    d = dirs["no_mtp"] = _copy_config(src, root / "no_mtp")
    sd = load_file(str(src / "model.safetensors"))
    save_file({k: v for k, v in sd.items() if not re.match(r"model\.layers\.[23]\.", k)}, str(d / "model.safetensors"))
    d = dirs["half_mtp"] = _copy_config(src, root / "half_mtp")
    save_file({k: v for k, v in sd.items() if not k.startswith("model.layers.3.")}, str(d / "model.safetensors"))
    dirs["no_weights"] = _copy_config(src, root / "no_weights")
    d = dirs["bin_only"] = _copy_config(src, root / "bin_only")
    torch.save({"x": torch.zeros(1)}, d / "pytorch_model.bin")
    d = dirs["no_config"] = root / "no_config"
    d.mkdir()
    (d / "model.safetensors").write_bytes(weights)
    return dirs


@pytest.mark.parametrize(("case", "error", "words"), [
    ("truncated", CheckpointError, "truncated or corrupt"),
    ("corrupt", CheckpointError, "truncated or corrupt"),
    ("no_mtp", CheckpointError, "no MTP tensors"),
    ("half_mtp", CheckpointError, "lacks"),
    ("no_weights", CheckpointError, "no weights"),
    ("bin_only", CheckpointError, "only pickled weights"),
    ("no_config", ModelNotFoundError, "no config.json"),
])
def test_unusable_checkpoint_is_one_line(bad, case, error, words):
    with pytest.raises(error) as exc_info:
        load_model(str(bad[case]))
    assert words in _one_line_error(exc_info)


def test_architecture_without_a_causal_lm_is_one_line(tmp_path, checkpoints):
    """step3p7 (vision-language) has num_mtp_layers but no AutoModelForCausalLM class in transformers 5.24."""
    src, _ = checkpoints["sarvam_moe"]
    d = _copy_config(src, tmp_path / "step3p7")
    (d / "config.json").write_text(json.dumps({"model_type": "step3p7", "text_config": {"num_hidden_layers": 1}}))
    (d / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError) as exc_info:
        load_model(str(d))
    assert "model_type 'step3p7'" in _one_line_error(exc_info)


def test_mtp_layers_transformers_cannot_build_is_one_line(tmp_path, checkpoints):
    """bailing_hybrid without mtp_layer_types (its layer_types make get_mtp_config ambiguous): one line."""
    src, _ = checkpoints["bailing_hybrid"]
    d = _copy_config(src, tmp_path / "bailing")
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("mtp_layer_types")
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError) as exc_info:
        load_model(str(d))
    assert "cannot build the MTP layers of bailing_hybrid" in _one_line_error(exc_info)


def test_remote_code_is_off_unless_asked(tmp_path, checkpoints):
    src, _ = checkpoints["sarvam_moe"]
    d = _copy_config(src, tmp_path / "remote")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    cfg["model_type"] = "x_remote"
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError) as exc_info:
        load_model(str(d))
    assert "trust_remote_code" in _one_line_error(exc_info)


def test_device_map_is_auto_on_an_accelerator_with_accelerate(monkeypatch):
    from specpolicy.models import loading

    monkeypatch.setattr(loading, "_has_accelerate", lambda: True)
    assert loading._device_map(torch.device("cpu")) is None  # CPU: load, then move, as before
    assert loading._device_map(torch.device("cuda")) == "auto"
    assert loading._device_map(torch.device("cuda:1")) == {"": torch.device("cuda:1")}  # an explicit index is kept
    monkeypatch.setattr(loading, "_has_accelerate", lambda: False)
    assert loading._device_map(torch.device("cuda")) is None


def test_checks_load_turns_errors_into_user_errors(bad):
    from types import SimpleNamespace

    from specpolicy.runs.checks import load

    with pytest.raises(UserError) as exc_info:
        load(SimpleNamespace(path=str(bad["truncated"]), device="cpu", dtype=None))
    message = _one_line_error(exc_info)
    assert "truncated or corrupt" in message and "model.safetensors" in message


def test_run_app_exits_2_with_one_line_on_a_corrupt_checkpoint(bad, tmp_path):
    cmd = [sys.executable, "-m", "experiments.run", "model=hf", f"model.path={bad['corrupt']}", "data.n_prompts=1",
           "decode.max_new_tokens=4", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "truncated or corrupt" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
