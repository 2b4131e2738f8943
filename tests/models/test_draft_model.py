"""The separate draft model: the shipped one decodes losslessly and is small; save/load round trip; another
vocabulary and a corrupt weights file are one-line ``CheckpointError``s; the training app's smoke run and bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from specpolicy import generate, load_model
from specpolicy.models.draft_model import build_shared_draft, load_draft_model, save_draft_model
from specpolicy.models.loading import ASSET_DIR, CheckpointError
from specpolicy.testing import small_model
from specpolicy.testing.lossless import hf_greedy

SHIPPED = ASSET_DIR / "tiny" / "draft"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_draft():
    return load_model("tiny", drafter="draft")


def test_shipped_draft_model_is_lossless_and_accepted(tiny_draft):
    tok = tiny_draft.tokenizer
    accepted = 0
    for text in ("import os\nimport sys\n\n\ndef main(", "class Parser:\n    def __init__(self, "):
        ids = tok.encode(text, add_special_tokens=False)
        res = generate(tiny_draft, ids, "fixed", k=4, max_new_tokens=24)
        assert list(res.token_ids) == list(hf_greedy(tiny_draft, ids, 24))
        accepted += sum(st.accepted for st in res.steps)
    assert accepted > 0


def test_shipped_files_hold_only_the_draft_layers():
    sd = load_file(str(SHIPPED / "model.safetensors"))
    assert sd and not any("embed" in k or "lm_head" in k for k in sd)
    assert (SHIPPED / "model.safetensors").stat().st_size < 8_000_000
    record = json.loads((SHIPPED / "draft_for.json").read_text())
    target_card = json.loads((ASSET_DIR / "tiny" / "model_card.json").read_text())
    card = json.loads((SHIPPED / "card.json").read_text())
    assert record["target_weights_sha256"] == target_card["weights_sha256"] == card["target"]["weights_sha256"]
    assert card["file_bytes"]["model.safetensors"] == (SHIPPED / "model.safetensors").stat().st_size


def test_tied_to_the_target(tiny_draft):
    assert tiny_draft.drafter.get_input_embeddings() is tiny_draft.target.get_input_embeddings()
    assert tiny_draft.drafter.get_output_embeddings() is tiny_draft.target.get_output_embeddings()


@pytest.mark.parametrize("shared", [True, False], ids=["shared-head", "standalone"])
def test_save_load_round_trip(tmp_path, shared):
    target = small_model(seed=0, k=1).target
    draft = build_shared_draft(target, 1, init_layers=(1,))
    save_draft_model(draft, tmp_path, target_card={"name": "small", "weights_sha256": "ab" * 32}, shared=shared,
                     dtype=torch.float64, card={"note": "test"})
    assert (tmp_path / "draft_for.json").exists() == shared
    loaded = load_draft_model(target, None, "", str(tmp_path), "cpu", torch.float64)
    ids = torch.randint(0, 64, (2, 11))
    with torch.no_grad():
        assert torch.equal(draft(input_ids=ids).logits, loaded(input_ids=ids).logits)
    assert json.loads((tmp_path / "card.json").read_text())["note"] == "test"


def _one_line_error(match: str, fn):
    with pytest.raises(CheckpointError, match=match) as err:
        fn()
    assert "\n" not in str(err.value)


def test_another_vocabulary_is_one_line(tmp_path, tiny_draft):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "v100")
    _one_line_error("vocabulary size 100", lambda: load_model("tiny", drafter=f"draft:{tmp_path / 'v100'}"))
    # the same size, another token map: its tokenizer has a token the target's has not
    LlamaForCausalLM(LlamaConfig(**{**cfg.to_dict(), "vocab_size": 4096})).save_pretrained(tmp_path / "tok")
    tok = type(tiny_draft.tokenizer).from_pretrained(str(ASSET_DIR / "tiny"))
    tok.add_tokens(["<not in the target>"])
    tok.save_pretrained(tmp_path / "tok")
    _one_line_error("tokenizer", lambda: load_draft_model(tiny_draft.target, tiny_draft.tokenizer, str(ASSET_DIR / "tiny"),
                                                          str(tmp_path / "tok"), "cpu", torch.float32))


def test_truncated_weights_are_one_line(tmp_path, tiny_draft):
    bad = tmp_path / "draft"
    shutil.copytree(SHIPPED, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    _one_line_error("truncated or corrupt", lambda: load_draft_model(tiny_draft.target, None, str(ASSET_DIR / "tiny"),
                                                                     str(bad), "cpu", torch.float32))


def _app(*args):
    return subprocess.run([sys.executable, "-m", "experiments.train_draft", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


def test_train_app_smoke(tmp_path):
    run = _app("draft_size=smoke", f"hydra.run.dir={tmp_path}")
    assert run.returncode == 0, run.stderr[-2000:]
    card = json.loads((tmp_path / "export" / "card.json").read_text())
    assert card["training"]["steps"] == 4 and len(card["evaluation"]["draft"]["acceptance_by_depth"]) == 2
    assert 0.0 <= card["evaluation"]["draft"]["teacher_forced_agreement"] <= 1.0
    assert load_model("tiny", drafter=f"draft:{tmp_path / 'export'}").drafter_name == "draft"


def test_train_resumes_from_its_checkpoint(tmp_path, tiny_draft, capsys):
    from experiments.train_draft import DraftTrainConf, TrainDraftConfig, train

    tc = DraftTrainConf(n_prompts=2, prompt_tokens=8, new_tokens=4, gen_batch=2, batch_size=2, steps=2,
                        warmup_steps=1, ckpt_every=1)
    first, info = train(TrainDraftConfig(train=tc), tiny_draft, tmp_path)
    assert info["steps"] == 2 and (tmp_path / "ckpt.pt").exists() and "resumed" not in capsys.readouterr().err
    longer = TrainDraftConfig(train=DraftTrainConf(**{**tc.__dict__, "steps": 3}))
    again, info = train(longer, tiny_draft, tmp_path)
    assert info["steps"] == 3 and "resumed from" in capsys.readouterr().err


def test_train_app_bad_setting_exits_2(tmp_path):
    run = _app("train.loss=mse", f"hydra.run.dir={tmp_path}")
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and "train.loss" in lines[0]
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
