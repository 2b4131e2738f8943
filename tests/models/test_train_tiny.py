"""experiments.train_tiny: the smoke config lowers the loss, checkpoints, and resumes after a kill."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _cmd(out, cache, *extra):
    return [sys.executable, "-m", "experiments.train_tiny", "train=smoke", f"out_dir={out}",
            f"export_dir={out}/export", f"cache_dir={cache}", *extra]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_smoke_training_lowers_loss(tmp_path, cache):
    r = subprocess.run(_cmd(tmp_path / "a", cache), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    card = json.loads((tmp_path / "a/export/model_card.json").read_text())
    final = card["training"]["final_valid"]
    vocab = card["architecture"]["vocab_size"]
    # a random model scores ~ln(V); the smoke run must be clearly better, for the main head and every MTP depth
    assert final["valid_main"] < math.log(vocab) - 0.5
    assert all(final[f"valid_d{j}"] < math.log(vocab) - 0.5 for j in range(1, 5))
    state = torch.load(tmp_path / "a/ckpt.pt", weights_only=False)
    hist = [h["valid_main"] for h in state["history"]]
    assert hist[-1] < hist[0] + 1e-6


def test_resume_after_kill_matches_uninterrupted(tmp_path, cache):
    extra = ("train.max_steps=80", "train.ckpt_every=10", "train.eval_every=40")
    ref = subprocess.run(_cmd(tmp_path / "ref", cache, *extra), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    # run again, kill it (SIGKILL: no cleanup) once a mid-run checkpoint exists, then resume with the same command
    proc = subprocess.Popen(_cmd(tmp_path / "cut", cache, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "cut/ckpt.pt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            try:
                if torch.load(ckpt, weights_only=False)["step"] >= 20:
                    break
            except Exception:  # being replaced right now (atomic rename); try again
                pass
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step_at_kill = torch.load(ckpt, weights_only=False)["step"]
    assert 0 < step_at_kill < 80 and not (tmp_path / "cut/export/model.safetensors").exists()
    res = subprocess.run(_cmd(tmp_path / "cut", cache, *extra), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "resumed from" in res.stderr
    a = load_file(tmp_path / "ref/export/model.safetensors")
    b = load_file(tmp_path / "cut/export/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_antiloop_finetune_keeps_lineage_and_monitors_loops(tmp_path, cache):
    """Fine-tune an exported model with unlikelihood steps, the KL anchor, MTP self-distillation and the loop monitor."""
    base = subprocess.run(_cmd(tmp_path / "base", cache, "train.max_steps=20"), capture_output=True, text=True,
                          timeout=300)
    assert base.returncode == 0, base.stderr[-2000:]
    ul = ("train.max_steps=6", "train.eval_every=3", "train.ul_prob=1.0", "train.ul_anchor=1.0", "train.ul_mtp=true",
          "train.ul_anchor_real=2.0", "train.ul_weight=entropy",
          "train.ul_source=train_extra", "train.ul_batch=2", "train.ul_prefix=16", "train.ul_new_tokens=24",
          "train.ul_ngram=2", "train.eval_loop_prompts=4", "train.eval_loop_tokens=24", "train.select_max_loop=0.5")
    r = subprocess.run(_cmd(tmp_path / "ft", cache, f"init_from={tmp_path}/base/export", *ul), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    card = json.loads((tmp_path / "ft/export/model_card.json").read_text())
    base_card = json.loads((tmp_path / "base/export/model_card.json").read_text())
    lineage = card["training"]["init_from"]
    assert lineage["weights_sha256"] == base_card["weights_sha256"]
    assert lineage["training"]["steps"] == 20 and "train.ul_anchor=1.0" in card["training"]["command"]
    hist = torch.load(tmp_path / "ft/ckpt.pt", weights_only=False)["history"]
    assert [h["step"] for h in hist] == [3, 6] and card["training"]["exported_step"] in (3, 6)
    assert all(0.0 <= h["valid_loop"] <= 1.0 for h in hist)
    a = load_file(tmp_path / "base/export/model.safetensors")
    b = load_file(tmp_path / "ft/export/model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the fine-tune moved the weights


def test_anchor_without_init_from_is_refused(tmp_path, cache):
    r = subprocess.run(_cmd(tmp_path / "x", cache, "train.ul_anchor=1.0", "train.ul_prob=0.5"), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "init_from" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x/export").exists()
