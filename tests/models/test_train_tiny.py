"""experiments.train_tiny: the smoke config lowers the loss, checkpoints, and resumes after a kill.

One smoke run (``smoke``, module-scoped) is the model every test reads: the loss test checks it, the resume test
compares a killed-and-resumed run of the same command with it, and the fine-tune starts from its export."""

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


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, cache):
    """The uninterrupted smoke run (``train=smoke``: 60 steps, a checkpoint every 20, evaluation every 30)."""
    out = tmp_path_factory.mktemp("smoke") / "a"
    return out, subprocess.run(_cmd(out, cache), capture_output=True, text=True, timeout=300)


def test_smoke_training_lowers_loss(smoke):
    out, r = smoke
    assert r.returncode == 0, r.stderr[-2000:]
    card = json.loads((out / "export/model_card.json").read_text())
    final = card["training"]["final_valid"]
    vocab = card["architecture"]["vocab_size"]
    # a random model scores ~ln(V); the smoke run must be clearly better, for the main head and every MTP depth
    assert final["valid_main"] < math.log(vocab) - 0.5
    assert all(final[f"valid_d{j}"] < math.log(vocab) - 0.5 for j in range(1, 5))
    state = torch.load(out / "ckpt.pt", weights_only=False)
    hist = [h["valid_main"] for h in state["history"]]
    assert hist[-1] < hist[0] + 1e-6


def test_resume_after_kill_matches_uninterrupted(tmp_path, cache, smoke):
    ref, r = smoke
    assert r.returncode == 0, r.stderr[-2000:]
    # the same command again, killed (SIGKILL: no cleanup) once a mid-run checkpoint exists (step 20, before the
    # first evaluation at 30), then resumed with the same command
    proc = subprocess.Popen(_cmd(tmp_path / "cut", cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    assert 0 < step_at_kill < 60 and not (tmp_path / "cut/export/model.safetensors").exists()
    res = subprocess.run(_cmd(tmp_path / "cut", cache), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "resumed from" in res.stderr
    a = load_file(ref / "export/model.safetensors")
    b = load_file(tmp_path / "cut/export/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_antiloop_finetune_keeps_lineage_and_monitors_loops(tmp_path, cache, smoke):
    """Fine-tune an exported model with unlikelihood steps, the KL anchor, MTP self-distillation and the loop monitor."""
    base, r = smoke
    assert r.returncode == 0, r.stderr[-2000:]
    ul = ("train.max_steps=6", "train.eval_every=3", "train.ul_prob=1.0", "train.ul_anchor=1.0", "train.ul_mtp=true",
          "train.ul_anchor_real=2.0", "train.ul_weight=entropy",
          "train.ul_source=train_extra", "train.ul_batch=2", "train.ul_prefix=16", "train.ul_new_tokens=24",
          "train.ul_ngram=2", "train.eval_loop_prompts=4", "train.eval_loop_tokens=24", "train.select_max_loop=0.5")
    r = subprocess.run(_cmd(tmp_path / "ft", cache, f"init_from={base}/export", *ul), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    card = json.loads((tmp_path / "ft/export/model_card.json").read_text())
    base_card = json.loads((base / "export/model_card.json").read_text())
    lineage = card["training"]["init_from"]
    assert lineage["weights_sha256"] == base_card["weights_sha256"]
    assert lineage["training"]["steps"] == 60 and "train.ul_anchor=1.0" in card["training"]["command"]
    hist = torch.load(tmp_path / "ft/ckpt.pt", weights_only=False)["history"]
    assert [h["step"] for h in hist] == [3, 6] and card["training"]["exported_step"] in (3, 6)
    assert all(0.0 <= h["valid_loop"] <= 1.0 for h in hist)
    a = load_file(base / "export/model.safetensors")
    b = load_file(tmp_path / "ft/export/model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the fine-tune moved the weights


def test_anchor_without_init_from_is_refused(tmp_path, cache):
    r = subprocess.run(_cmd(tmp_path / "x", cache, "train.ul_anchor=1.0", "train.ul_prob=0.5"), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "init_from" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x/export").exists()
