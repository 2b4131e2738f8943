"""Medusa heads: the maths of a head, save/load and its one-line errors, the shipped heads of the tiny model, and
``experiments.train_heads`` (smoke run, resume, bad settings)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from specpolicy import generate, load_model
from specpolicy.models.loading import ASSET_DIR, CheckpointError
from specpolicy.models.medusa import (
    MedusaHeads,
    greedy_rows,
    load_medusa_heads,
    medusa_labels,
    save_medusa_heads,
    text_rows,
)
from specpolicy.testing import hf_greedy, small_model

pytestmark = pytest.mark.slow  # model loads and app subprocesses

REPO = Path(__file__).resolve().parents[2]


def _random_heads(model, num_heads=2, seed=0):
    cfg = model.target.config
    torch.manual_seed(seed)
    heads = MedusaHeads(cfg.hidden_size, cfg.vocab_size, num_heads)
    with torch.no_grad():
        for lin in heads.heads:
            lin.weight.normal_(0, 0.1)
            lin.bias.normal_(0, 0.1)
    return heads


def test_zero_initialised_heads_are_the_next_token_head_and_cost_k_h2_plus_h():
    model = small_model(seed=0, k=1)
    H = model.target.config.hidden_size
    heads = MedusaHeads(H, model.target.config.vocab_size, 3).to(torch.float64)
    assert sum(p.numel() for p in heads.parameters()) == 3 * (H * H + H)
    h = torch.randn(5, H, dtype=torch.float64)
    lm_head = model.target.get_output_embeddings()
    for depth in (1, 2, 3, 7):
        assert torch.equal(heads.logits(h, depth, lm_head), lm_head(h))


def test_heads_of_several_blocks_compose_residual_blocks_and_cost_k_l_h2_plus_h():
    H = 32
    heads = MedusaHeads(H, 64, num_heads=2, num_layers=3).to(torch.float64)
    assert sum(p.numel() for p in heads.parameters()) == 2 * 3 * (H * H + H)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_(0, 0.2)
    h = torch.randn(4, H, dtype=torch.float64)
    x = h
    for lin in (heads.heads[1], *heads.blocks[1]):  # head index 1: block 1, then blocks 2 and 3
        x = x + torch.nn.functional.silu(x @ lin.weight.T + lin.bias)
    assert torch.allclose(heads.features(h, 1), x) and not torch.allclose(heads.features(h, 0), x)
    with pytest.raises(ValueError, match="num_layers=0"):
        MedusaHeads(H, 64, num_layers=0)


def test_labels_of_head_k_at_index_i_are_the_token_k_plus_1_later():
    seqs = torch.arange(10)[None] + 100  # [1, 10]
    labels = medusa_labels(seqs, num_heads=3, start=4)  # [3, 1, 6]: indices 4..9
    assert labels[0, 0].tolist() == [106, 107, 108, 109, -100, -100]
    assert labels[2, 0].tolist() == [108, 109, -100, -100, -100, -100]


def test_save_load_round_trip(tmp_path):
    model = small_model(seed=0, k=1)
    heads = _random_heads(model)
    save_medusa_heads(heads, tmp_path / "m", {"target_weights_sha256": None}, dtype=torch.float32)
    config = json.loads((tmp_path / "m/config.json").read_text())
    assert (config["hidden_size"], config["vocab_size"], config["num_heads"]) == (32, 64, 2)
    back = load_medusa_heads(model.target, "", str(tmp_path / "m"), "cpu", torch.float64)
    for a, b in zip(heads.state_dict().values(), back.state_dict().values()):
        assert b.dtype == torch.float64 and torch.equal(a.double(), b)


def test_several_blocks_round_trip_and_one_block_heads_without_num_layers_still_load(tmp_path):
    model = small_model(seed=0, k=1)
    heads = MedusaHeads(32, 64, num_heads=2, num_layers=2)
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_(0, 0.1)
    save_medusa_heads(heads, tmp_path / "deep", dtype=torch.float32)
    assert json.loads((tmp_path / "deep/config.json").read_text())["num_layers"] == 2
    back = load_medusa_heads(model.target, "", str(tmp_path / "deep"), "cpu", torch.float64)
    assert back.num_layers == 2 and set(back.state_dict()) == set(heads.state_dict())
    h = torch.randn(3, 32, dtype=torch.float64)
    assert torch.allclose(back.features(h, 1), heads.double().features(h, 1))
    save_medusa_heads(_random_heads(model), tmp_path / "old")  # a config as written before num_layers existed
    cfg = json.loads((tmp_path / "old/config.json").read_text())
    del cfg["num_layers"]
    (tmp_path / "old/config.json").write_text(json.dumps(cfg))
    assert load_medusa_heads(model.target, "", str(tmp_path / "old"), "cpu", torch.float64).num_layers == 1
    (tmp_path / "old/config.json").write_text(json.dumps({**cfg, "num_layers": 2}))  # weights of one block
    assert "num_layers=2" in _one_line_error(model.target, tmp_path / "old")


def test_real_text_rows_are_labelled_with_the_greedy_continuation_where_the_text_is_greedy():
    model = small_model(seed=0, k=1)
    torch.manual_seed(0)
    seqs, hidden = greedy_rows(model.target, torch.randint(2, 64, (2, 6)), 10)  # [2, 16]; hidden of indices 5..14
    with torch.no_grad():
        full = model.target.get_decoder()(input_ids=seqs).last_hidden_state
    assert torch.allclose(hidden, full[:, 5:15], atol=1e-10)
    assert torch.equal(seqs[:, 6:], model.target.get_output_embeddings()(full[:, 5:15]).argmax(-1))

    def labelled(text):  # {(b, i): labels of heads 1..3} of the counted rows, with the row's hidden state
        h, labels = text_rows(model.target, text, num_heads=3)
        with torch.no_grad():
            g = model.target.get_output_embeddings()(model.target.get_decoder()(input_ids=text).last_hidden_state)
        keys = [(b, i) for b in range(2) for i in range(16) if i < 15 and text[b, i + 1] == g[b, i].argmax()]
        assert h.shape[0] == len(keys) == labels.shape[1]
        return {key: labels[:, n].tolist() for n, key in enumerate(keys)}

    rows = labelled(seqs)
    cont = medusa_labels(seqs, 3, 0)  # head k at i: seqs[i+k+1]
    for b in range(2):
        for i in range(5, 15):  # greedy indices: labelled with the continuation itself
            want = cont[:, b, i].tolist()  # -100 past the sequence, where text_rows still has g_{i+k}
            assert [r for r, w in zip(rows[(b, i)], want) if w != -100] == [w for w in want if w != -100]
    broken = seqs.clone()
    broken[0, 10] = (seqs[0, 10] + 1) % 64  # x_10 is no longer the greedy token at index 9
    rows = labelled(broken)
    assert (0, 9) not in rows and rows[(0, 8)][0] == seqs[0, 10].item() and rows[(0, 8)][1:] == [-100, -100]
    assert rows[(0, 7)] == [seqs[0, 9].item(), seqs[0, 10].item(), -100]


def _one_line_error(target, where: Path) -> str:
    with pytest.raises(CheckpointError) as err:
        load_medusa_heads(target, "", str(where), "cpu", torch.float64)
    msg = str(err.value)
    assert "\n" not in msg and "allowed" in msg
    return msg


def test_heads_of_another_model_missing_or_corrupt_files_are_one_line_errors(tmp_path):
    model = small_model(seed=0, k=1)
    save_medusa_heads(_random_heads(model), tmp_path / "m")
    assert "hidden_size=32" in _one_line_error(small_model(seed=0, k=1, hidden=48).target, tmp_path / "m")
    assert "vocab_size=64" in _one_line_error(small_model(seed=0, k=1, vocab=80).target, tmp_path / "m")
    assert "no Medusa heads" in _one_line_error(model.target, tmp_path / "nowhere")
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "m", bad)
    data = (bad / "heads.safetensors").read_bytes()
    (bad / "heads.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    assert "corrupt" in _one_line_error(model.target, bad)
    (bad / "config.json").write_text("{not json")
    assert "unreadable" in _one_line_error(model.target, bad)
    cfg = json.loads((tmp_path / "m/config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "num_heads": 3}))  # weights of 2 heads
    shutil.copyfile(tmp_path / "m/heads.safetensors", bad / "heads.safetensors")
    assert "do not match" in _one_line_error(model.target, bad)


def test_load_model_refuses_heads_made_for_another_target(tmp_path):
    save_medusa_heads(_random_heads(small_model(seed=0, k=1)), tmp_path / "m")
    with pytest.raises(CheckpointError, match="hidden_size=32"):
        load_model("tiny", drafter=f"medusa:{tmp_path / 'm'}")


def test_shipped_heads_decode_like_target_generate():
    torch.set_num_threads(1)
    model = load_model("tiny", drafter="medusa")
    shipped = ASSET_DIR / "tiny" / "medusa"
    config = json.loads((shipped / "config.json").read_text())
    assert config["target_weights_sha256"] == model.card["weights_sha256"]
    drafted = accepted = 0
    for text in ("def parse(line):\n", "import os\nimport sys\n\n\nclass "):
        ids = model.tokenizer.encode(text, add_special_tokens=False)
        res = generate(model, ids, "fixed", k=3, max_new_tokens=48)
        assert res.token_ids == hf_greedy(model, ids, 48)
        drafted, accepted = drafted + res.stats.drafted, accepted + res.stats.accepted
    assert 0 < accepted < drafted


def _app(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "experiments.train_heads", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_train_heads_smoke_run_resumes_and_refuses_bad_settings(tmp_path, capsys):
    bad = subprocess.Popen([sys.executable, "-m", "experiments.train_heads", "num_heads=0",
                            f"hydra.run.dir={tmp_path / 'bad'}"], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    run = tmp_path / "run"
    first = _app("smoke=true", "steps=10", "eval_prompts=2", f"hydra.run.dir={run}")
    assert first.returncode == 0, first.stderr[-2000:]
    report = json.loads((run / "report.json").read_text())
    assert set(report["agreement_by_depth"]) == {"1", "2", "3", "4"} and report["training"]["steps"] == 10
    assert report["decode"]["tpf"] >= 1.0 and (run / "medusa/heads.safetensors").exists()
    card = json.loads((run / "medusa/card.json").read_text())
    assert card["files_bytes"]["heads.safetensors"] == (run / "medusa/heads.safetensors").stat().st_size

    # resume the run to 20 steps (the app's train(), in process) and compare with an uninterrupted 20-step run
    from experiments.train_heads import TrainHeadsConfig, load_target, plan_of, train

    torch.set_num_threads(1)
    plan = plan_of(OmegaConf.structured(TrainHeadsConfig(smoke=True, steps=20)))
    model = load_target(plan.model)
    resumed, _ = train(model, plan, run)
    assert "resumed from" in capsys.readouterr().err
    assert torch.load(run / "ckpt.pt", weights_only=False)["step"] == 20
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    shutil.copytree(run / "train_data", ref_dir / "train_data")  # the same data
    ref, _ = train(model, plan, ref_dir)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), ref.state_dict().values()))
    changed = load_file(run / "medusa/heads.safetensors")  # 10 steps: not the 20-step weights
    assert any(not torch.equal(changed[k], v.half()) for k, v in ref.state_dict().items())

    out, err = bad.communicate(timeout=300)
    assert bad.returncode == 2 and "num_heads=0" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
