"""Train the embedded ``tiny`` MTP model on the Python standard library.

    python -m experiments.train_tiny                      # the real model (CPU: hours; CUDA: minutes)
    python -m experiments.train_tiny train=smoke          # well under a minute, used by the tests
    python -m experiments.train_tiny out_dir=runs/tiny train.max_minutes=8 device=cuda

Loss = CE(main) + mtp_lambda * mean_j CE(depth j), j = 1..train_depths. Depths past the K MTP layers re-use the last
layer, so drafting deeper than K at inference is trained. Checkpoints (model, optimiser, step, RNG) are written every
``ckpt_every`` steps to ``out_dir/ckpt.pt`` (atomically); running the same command again resumes from there.
At the end the weights are exported in fp16 (DeepSeek layout) with the tokenizer and a model card to ``export_dir``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from specpolicy.data import load_corpus
from specpolicy.data.tokenizer import as_transformers, train_tokenizer
from specpolicy.data.tokens import encode_split
from specpolicy.models.loading import TinyConfig, build_mtp_model, load_model, save_checkpoint
from specpolicy.models.mtp import mtp_chain_logits
from specpolicy.models.unlikelihood import greedy_continue, repeated_ngram_mask, unlikelihood_loss


@dataclass
class DataPrep:
    vocab_size: int = 4096
    max_files: int = 0  # 0 = all files of each split (smoke runs use a few)
    use_test_code: bool = True  # the stdlib's own tests as extra training text (never evaluation)


@dataclass
class TrainConfig:
    seq_len: int = 512
    batch_size: int = 32
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 300
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    max_steps: int = 20000
    max_minutes: float = 0.0  # > 0: stop (and anneal the LR) by wall clock, whichever of steps/time ends first
    mtp_lambda: float = 0.8
    select_best: bool = True  # export the best-validation checkpoint (else the last)
    ul_prob: float = 0.0  # share of steps that are sequence-level unlikelihood steps (anti-looping fine-tune)
    ul_batch: int = 8
    ul_prefix: int = 64
    ul_new_tokens: int = 96
    ul_ngram: int = 4
    dropout: float = 0.0  # residual-branch and embedding dropout during training (hooks; the model is unchanged)
    train_depths: int = 4
    eval_every: int = 500
    eval_batches: int = 8
    ckpt_every: int = 500


@dataclass
class TrainTinyConfig:
    model: dict = field(default_factory=lambda: {})  # overrides of TinyConfig fields
    data: DataPrep = field(default_factory=DataPrep)
    train: TrainConfig = field(default_factory=TrainConfig)
    init_from: str = ""  # start from an exported checkpoint (fine-tuning) instead of random weights
    out_dir: str = "runs/train_tiny"
    export_dir: str = "runs/train_tiny/export"
    cache_dir: str = ".cache/specpolicy"
    device: str = "auto"
    threads: int = 2
    seed: int = 0
    resume: bool = True


ConfigStore.instance().store(name="train_tiny_schema", node=TrainTinyConfig)


def prepare_data(cfg: TrainTinyConfig, tokenizer=None):
    """Tokenizer + token streams, cached under ``cache_dir`` keyed by corpus fingerprint and settings.

    With ``tokenizer`` given (fine-tuning an exported model), the streams are encoded with it instead."""
    corpus = load_corpus()
    key = f"{corpus.fingerprint()[:12]}-v{cfg.data.vocab_size}-f{cfg.data.max_files}-t{int(cfg.data.use_test_code)}"
    if tokenizer is not None:
        vocab = json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()
        key += "-tok" + hashlib.sha256(vocab).hexdigest()[:12]
    cache = Path(cfg.cache_dir) / key
    tok_dir = cache / "tokenizer"
    if tokenizer is not None:
        cache.mkdir(parents=True, exist_ok=True)
    elif (tok_dir / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    else:
        texts = [d.read(corpus.root) for d in corpus.documents("train")[: cfg.data.max_files or None]]
        tokenizer = as_transformers(train_tokenizer(texts, cfg.data.vocab_size))
        tokenizer.save_pretrained(str(tok_dir))
    streams = {}
    for split in ("train", "valid") + (("train_extra",) if cfg.data.use_test_code else ()):
        f = cache / f"{split}.npy"
        if not f.exists():
            arr = encode_split(corpus, tokenizer, split, cfg.data.max_files or None)
            np.save(f.with_suffix(".tmp.npy"), arr)
            os.replace(f.with_suffix(".tmp.npy"), f)
        streams[split] = np.load(f)
    train = np.concatenate([streams["train"]] + ([streams["train_extra"]] if "train_extra" in streams else []))
    return corpus, tokenizer, train, streams["valid"]


def batch_at(stream: torch.Tensor, starts: torch.Tensor, seq_len: int) -> torch.Tensor:
    starts = starts.to(stream.device)
    idx = starts[:, None] + torch.arange(seq_len + 1, device=stream.device)[None, :]  # [B, T+1]
    return stream[idx].long()


def losses(model, ids: torch.Tensor, depths: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Main CE and per-depth MTP CE on a batch ids [B, T+1] (inputs ids[:, :T], labels shifted)."""
    x = ids[:, :-1]
    out = model.target.model(input_ids=x)
    h0 = out.last_hidden_state  # [B, T, H]
    main = F.cross_entropy(model.target.lm_head(h0).flatten(0, 1).float(), ids[:, 1:].flatten())
    mtp = []
    for j, logits in enumerate(mtp_chain_logits(model.drafter, h0, x, depths), start=1):
        # logits[:, i] predicts t_{i+j+1}; inside the window that label is ids[:, i+j+1] for i < T-j
        labels = ids[:, j + 1 :]  # [B, T-j]
        mtp.append(F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten()))
    return main, mtp


def add_dropout(model, p: float) -> None:
    """Dropout on every attention/MLP branch output and on the embeddings, active only in train mode.

    Llama has no residual dropout; on ~9M tokens of stdlib the model overfits within three epochs without it.
    Forward hooks keep the architecture (and the exported checkpoint) exactly transformers' own."""
    if p <= 0:
        return

    def hook(module, args, out):
        if not module.training:
            return out
        if isinstance(out, tuple):
            return (F.dropout(out[0], p, True),) + tuple(out[1:])
        return F.dropout(out, p, True)

    blocks = list(model.target.get_decoder().layers) + [layer.mtp_block for layer in model.drafter.layers]
    for block in blocks:
        block.self_attn.register_forward_hook(hook)
        block.mlp.register_forward_hook(hook)
    model.target.get_input_embeddings().register_forward_hook(hook)


def ul_step_loss(model, train_t: torch.Tensor, tc: TrainConfig, gen: torch.Generator, autocast) -> torch.Tensor:
    """Sequence-level unlikelihood: continue real prefixes greedily, penalise tokens of repeated n-grams."""
    starts = torch.randint(0, len(train_t) - tc.ul_prefix - 1, (tc.ul_batch,), generator=gen)
    prefix = batch_at(train_t, starts, tc.ul_prefix - 1)  # [B, ul_prefix]
    model.target.eval()
    with autocast():
        seqs = greedy_continue(model.target, prefix, tc.ul_new_tokens)
    model.target.train()
    mask = repeated_ngram_mask(seqs.cpu(), tc.ul_ngram, start=tc.ul_prefix)
    with autocast():
        return unlikelihood_loss(model.target, seqs, mask)


def lr_at(progress: float, step: int, tc: TrainConfig) -> float:
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * cos)


def _set_train(model, mode: bool) -> None:
    model.target.train(mode)
    model.drafter.train(mode)


def _snapshot(model) -> dict:
    return {"target": {k: v.detach().clone() for k, v in model.target.state_dict().items()},
            "drafter": {k: v.detach().clone() for k, v in model.drafter.state_dict().items() if k.startswith("layers.")}}


def save_state(path: Path, model, opt, step: int, gen: torch.Generator, elapsed: float, history: list) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "target": model.target.state_dict(),
            "drafter": {k: v for k, v in model.drafter.state_dict().items() if k.startswith("layers.")},
            "opt": opt.state_dict(),
            "step": step,
            "gen": gen.get_state(),
            "elapsed": elapsed,
            "history": history,
        },
        tmp,
    )
    os.replace(tmp, path)


@torch.no_grad()
def evaluate(model, valid: torch.Tensor, tc: TrainConfig, device, autocast) -> dict:
    g = torch.Generator().manual_seed(1234)
    starts = torch.randint(0, len(valid) - tc.seq_len - 1, (tc.eval_batches, tc.batch_size), generator=g)
    tot_main, tot_mtp = 0.0, np.zeros(tc.train_depths)
    for b in range(tc.eval_batches):
        with autocast():
            main, mtp = losses(model, batch_at(valid, starts[b], tc.seq_len).to(device), tc.train_depths)
        tot_main += main.item()
        tot_mtp += np.array([m.item() for m in mtp])
    return {"valid_main": tot_main / tc.eval_batches, **{f"valid_d{j+1}": v / tc.eval_batches for j, v in enumerate(tot_mtp)}}


def train(cfg: TrainTinyConfig) -> dict:
    from tqdm.auto import tqdm

    torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    tc = cfg.train
    src = load_model(cfg.init_from, dtype=torch.float32) if cfg.init_from else None
    corpus, tokenizer, train_np, valid_np = prepare_data(cfg, src.tokenizer if src else None)
    tiny = TinyConfig(**{**dict(cfg.model), "vocab_size": len(tokenizer)})
    hf_cfg = tiny.to_hf(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = build_mtp_model(hf_cfg, tokenizer, name="tiny", seed=cfg.seed)
    if src is not None:  # fine-tune: same architecture, weights of the exported model
        model.target.load_state_dict(src.target.state_dict())
        model.drafter.load_state_dict(src.drafter.state_dict())
    add_dropout(model, tc.dropout)
    model.target.to(device).train()
    model.drafter.to(device).train()
    params = list(model.target.parameters()) + [p for n, p in model.drafter.named_parameters() if n.startswith("layers.")]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=tc.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "ckpt.pt"
    step, elapsed0, history = 0, 0.0, []
    if cfg.resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.target.load_state_dict(state["target"])
        model.drafter.load_state_dict(state["drafter"], strict=False)
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, elapsed0, history = state["step"], state["elapsed"], state["history"]
        print(f"resumed from {ckpt} at step {step}", file=sys.stderr)
    train_t = torch.from_numpy(train_np.astype(np.int32)).to(device)
    valid_t = torch.from_numpy(valid_np.astype(np.int32)).to(device)
    best = {"score": float("inf"), "step": 0, "state": None}  # export the best validation checkpoint, not the last

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    t0 = time.perf_counter() - elapsed0
    max_s = tc.max_minutes * 60
    bar = tqdm(total=tc.max_steps, initial=step, desc="train_tiny", dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    tokens_per_step = tc.batch_size * tc.seq_len
    last = time.perf_counter()
    main, mtp, ul = torch.tensor(float("nan")), [], torch.tensor(float("nan"))
    while step < tc.max_steps:
        elapsed = time.perf_counter() - t0
        progress = max(step / tc.max_steps, elapsed / max_s if max_s > 0 else 0.0)
        if progress >= 1.0:
            break
        for gparam in opt.param_groups:
            gparam["lr"] = lr_at(progress, step, tc)
        if tc.ul_prob > 0 and torch.rand((), generator=gen).item() < tc.ul_prob:
            loss = ul = ul_step_loss(model, train_t, tc, gen, autocast)
        else:
            starts = torch.randint(0, len(train_t) - tc.seq_len - 1, (tc.batch_size,), generator=gen)
            ids = batch_at(train_t, starts, tc.seq_len)
            with autocast():
                main, mtp = losses(model, ids, tc.train_depths)
                loss = main + tc.mtp_lambda * torch.stack(mtp).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        step += 1
        bar.update(1)
        if step % 10 == 0 or step == 1:
            now = time.perf_counter()
            tps = tokens_per_step * (10 if step > 1 else 1) / max(now - last, 1e-9)
            last = now
            bar.set_postfix(loss=f"{main.item():.3f}", **({"ul": f"{ul.item():.3f}"} if tc.ul_prob > 0 else {}), **{f"d{j+1}": f"{m.item():.2f}" for j, m in enumerate(mtp)},
                            tok_s=f"{tps:,.0f}")
        if step % tc.eval_every == 0 or step == tc.max_steps:
            _set_train(model, False)
            ev = {"step": step, "elapsed_s": time.perf_counter() - t0, "train_main": main.item(),
                  **evaluate(model, valid_t, tc, device, autocast)}
            _set_train(model, True)
            history.append(ev)
            score = ev["valid_main"] + sum(ev[f"valid_d{j + 1}"] for j in range(tc.train_depths)) / tc.train_depths
            if score < best["score"] or not tc.select_best:
                best.update(score=score, step=step, state=_snapshot(model))
            bar.write(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in ev.items()}))
        if step % tc.ckpt_every == 0:
            save_state(ckpt, model, opt, step, gen, time.perf_counter() - t0, history)
    bar.close()
    elapsed = time.perf_counter() - t0
    _set_train(model, False)
    save_state(ckpt, model, opt, step, gen, elapsed, history)
    final = {"step": step, "elapsed_s": elapsed, **evaluate(model, valid_t, tc, device, autocast)}
    score = final["valid_main"] + sum(final[f"valid_d{j + 1}"] for j in range(tc.train_depths)) / tc.train_depths
    if best["state"] is not None and best["score"] < score:
        model.target.load_state_dict(best["state"]["target"])
        model.drafter.load_state_dict(best["state"]["drafter"], strict=False)
        final = {"step": best["step"], "elapsed_s": elapsed, **evaluate(model, valid_t, tc, device, autocast)}
    history.append(final)
    card = {
        "name": "tiny",
        "architecture": {"backbone": "LlamaForCausalLM", "drafter": "transformers MtpModel (DeepSeek-V3 MtpLayer)",
                         **{k: getattr(tiny, k) for k in tiny.__dataclass_fields__}},
        "parameters": {"target": sum(p.numel() for p in model.target.parameters()),
                       "mtp": sum(p.numel() for n, p in model.drafter.named_parameters() if n.startswith("layers."))},
        "training": {"config": OmegaConf.to_container(OmegaConf.structured(cfg)) if not isinstance(cfg, dict) else cfg,
                     "steps": step, "exported_step": final["step"], "tokens_seen": step * tokens_per_step, "wall_clock_s": round(elapsed, 1),
                     "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
                     "threads": cfg.threads, "torch": torch.__version__, "final_valid": final},
        "corpus": {**corpus.summary(), "train_tokens": int(len(train_np)), "valid_tokens": int(len(valid_np))},
    }
    out = save_checkpoint(model, cfg.export_dir, card=card)
    print(f"exported {out} ({sum(f.stat().st_size for f in out.iterdir()) / 1e6:.1f} MB): {json.dumps(final)}")
    return final


@hydra.main(version_base="1.3", config_path="conf", config_name="train_tiny")
def main(cfg) -> None:
    train(OmegaConf.to_object(cfg))


if __name__ == "__main__":
    main()
