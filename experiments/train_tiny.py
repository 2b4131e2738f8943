"""Train the embedded ``tiny`` MTP model on the Python standard library.

    python -m experiments.train_tiny                      # the real model (CPU: hours; CUDA: minutes)
    python -m experiments.train_tiny train=smoke          # well under a minute, used by the tests
    python -m experiments.train_tiny out_dir=runs/tiny train.max_minutes=8 device=cuda

Loss = CE(main) + mtp_lambda * mean_j CE(depth j), j = 1..train_depths. Depths past the K MTP layers re-use the last
layer, so drafting deeper than K at inference is trained. Checkpoints (model, optimiser, step, RNG) are written every
``ckpt_every`` steps to ``out_dir/ckpt.pt`` (atomically); running the same command again resumes from there.
At the end the weights are exported in fp16 (DeepSeek layout) with the tokenizer and a model card to ``export_dir``.

Anti-looping fine-tune (sequence-level unlikelihood, ``specpolicy/models/unlikelihood.py``) of an exported model:

    python -m experiments.train_tiny init_from=specpolicy/models/assets/tiny train.ul_prob=1 train.ul_anchor=1 \
        train.ul_mtp=true train.ul_source=train_extra train.eval_loop_prompts=64 train.select_max_loop=0.25

Each UL step continues real prefixes greedily and penalises repeated n-grams (``ul_ngram``; ``ul_span`` > 0 only the
first tokens of each copy; ``ul_weight=entropy`` weighs each by the starting model's entropy there), holds the rest
of the distribution to the starting model (``ul_anchor``: KL), and distils the new target into the MTP layers
(``ul_mtp``). ``eval_loop_prompts`` adds the loop share of greedy runs from valid prompts to every evaluation, and the
export is the best-loss checkpoint whose loop share is at most ``select_max_loop``. The card keeps the lineage.
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
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from experiments.common import CONF_DIR, UserError, preflight, run_task
from specpolicy.data import load_corpus
from specpolicy.data.prompts import sample_prompts
from specpolicy.data.tokenizer import as_transformers, train_tokenizer
from specpolicy.data.tokens import encode_split
from specpolicy.models.checkpoint import save_checkpoint
from specpolicy.models.loading import TinyConfig, build_mtp_model, load_model, resolve_model_path
from specpolicy.models.training import add_dropout, batch_at, loop_monitor, mtp_losses, ul_step_loss


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
    ul_weight: str = "none"  # "entropy": scale each penalised token by the starting model's entropy there (decisions)
    ul_span: int = 0  # 0: penalise every token of a repeated n-gram (Welleck et al.); k > 0: the first k tokens of a copy
    ul_alpha: float = 1.0  # weight of the unlikelihood term in a UL step
    ul_mtp: bool = False  # UL steps also distil the current target into the MTP layers on the greedy continuation
    ul_anchor: float = 0.0  # UL steps: weight of KL(start model || model) on the continuation outside repeated n-grams
    ul_anchor_real: float = 0.0  # UL steps: weight of KL(start model || model) on a batch of real text from ul_source
    ul_anchor_region: str = "all"  # "all": every position not penalised; "clean": only up to the first penalised token
    ul_source: str = "train"  # prefixes for UL continuations: "train" or "train_extra" (the stdlib's test code)
    eval_loop_prompts: int = 0  # > 0: each evaluation also measures the loop share of greedy runs from valid prompts
    eval_loop_tokens: int = 128
    select_max_loop: float = 1.0  # with the loop monitor: export the best-loss checkpoint whose loop share is <= this
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
    need_extra = cfg.data.use_test_code or cfg.train.ul_source == "train_extra"
    for split in ("train", "valid") + (("train_extra",) if need_extra else ()):
        f = cache / f"{split}.npy"
        if not f.exists():
            arr = encode_split(corpus, tokenizer, split, cfg.data.max_files or None)
            np.save(f.with_suffix(".tmp.npy"), arr)
            os.replace(f.with_suffix(".tmp.npy"), f)
        streams[split] = np.load(f)
    train = np.concatenate([streams["train"]] + ([streams["train_extra"]] if cfg.data.use_test_code else []))
    return corpus, tokenizer, train, streams["valid"], streams.get("train_extra")


def selection_score(ev: dict, tc: TrainConfig) -> float:
    """Lower is better: mean of main and MTP validation losses; with the loop monitor, checkpoints whose loop share
    is above ``select_max_loop`` rank after every one that meets it (ordered by loop share among themselves)."""
    loss = ev["valid_main"] + sum(ev[f"valid_d{j + 1}"] for j in range(tc.train_depths)) / tc.train_depths
    if "valid_loop" in ev and ev["valid_loop"] > tc.select_max_loop:
        return 1e6 + ev["valid_loop"]
    return loss


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


def save_state(path: Path, model, opt, step: int, gen: torch.Generator, elapsed: float, history: list,
               tokens: int = 0) -> None:
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
            "tokens": tokens,
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
            main, mtp = mtp_losses(model, batch_at(valid, starts[b], tc.seq_len).to(device), tc.train_depths)
        tot_main += main.item()
        tot_mtp += np.array([m.item() for m in mtp])
    return {"valid_main": tot_main / tc.eval_batches, **{f"valid_d{j+1}": v / tc.eval_batches for j, v in enumerate(tot_mtp)}}


def check_config(cfg: TrainTinyConfig) -> None:
    """Settings a user can get wrong, refused before anything is written (one line, exit 2)."""
    tc = cfg.train
    if tc.ul_source not in ("train", "train_extra"):
        raise UserError(f"train.ul_source must be 'train' or 'train_extra', got {tc.ul_source!r}")
    if tc.ul_weight not in ("none", "entropy"):
        raise UserError(f"train.ul_weight must be 'none' or 'entropy', got {tc.ul_weight!r}")
    if tc.ul_anchor_region not in ("all", "clean"):
        raise UserError(f"train.ul_anchor_region must be 'all' or 'clean', got {tc.ul_anchor_region!r}")
    if not 0.0 <= tc.ul_prob <= 1.0:
        raise UserError(f"train.ul_prob is a share of steps in [0, 1], got {tc.ul_prob}")
    if (tc.ul_anchor > 0 or tc.ul_anchor_real > 0) and not cfg.init_from:
        raise UserError("train.ul_anchor / train.ul_anchor_real > 0 need init_from=<exported model> (the model the fine-tune is anchored to)")
    if cfg.init_from:
        try:
            resolve_model_path(cfg.init_from)
        except Exception as err:
            raise UserError(f"init_from={cfg.init_from!r}: {err}") from None


def train(cfg: TrainTinyConfig, command: str = "") -> dict:
    from tqdm.auto import tqdm

    torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    tc = cfg.train
    check_config(cfg)
    src = load_model(cfg.init_from, dtype=torch.float32) if cfg.init_from else None
    corpus, tokenizer, train_np, valid_np, extra_np = prepare_data(cfg, src.tokenizer if src else None)
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
    step, elapsed0, history, tokens_seen = 0, 0.0, [], 0
    if cfg.resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.target.load_state_dict(state["target"])
        model.drafter.load_state_dict(state["drafter"], strict=False)
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, elapsed0, history = state["step"], state["elapsed"], state["history"]
        tokens_seen = state.get("tokens", step * tc.batch_size * tc.seq_len)
        print(f"resumed from {ckpt} at step {step}", file=sys.stderr)
    train_t = torch.from_numpy(train_np.astype(np.int32)).to(device)
    ul_t = torch.from_numpy(extra_np.astype(np.int32)).to(device) if tc.ul_source == "train_extra" else train_t
    teacher = None
    if tc.ul_anchor > 0 or tc.ul_anchor_real > 0:  # the starting weights, frozen
        teacher = src.target.to(device).eval().requires_grad_(False)
    valid_t = torch.from_numpy(valid_np.astype(np.int32)).to(device)
    best = {"score": float("inf"), "step": 0, "state": None}  # export the best validation checkpoint, not the last
    loop_prompts = None
    if tc.eval_loop_prompts > 0:  # valid-split prompts, left-cut to a common length so they run as one batch
        ps = sample_prompts(corpus, tokenizer, tc.eval_loop_prompts, 64, seed=cfg.seed, split="valid")
        width = min(len(p.ids) for p in ps)
        loop_prompts = torch.tensor([p.ids[len(p.ids) - width:] for p in ps], device=device)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    t0 = time.perf_counter() - elapsed0
    max_s = tc.max_minutes * 60
    bar = tqdm(total=tc.max_steps, initial=step, desc="train_tiny", dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    tokens_per_step = tc.batch_size * tc.seq_len
    last = time.perf_counter()
    main, mtp, ul, anchor = torch.tensor(float("nan")), [], torch.tensor(float("nan")), torch.tensor(float("nan"))
    while step < tc.max_steps:
        elapsed = time.perf_counter() - t0
        progress = max(step / tc.max_steps, elapsed / max_s if max_s > 0 else 0.0)
        if progress >= 1.0:
            break
        for gparam in opt.param_groups:
            gparam["lr"] = lr_at(progress, step, tc)
        if tc.ul_prob > 0 and torch.rand((), generator=gen).item() < tc.ul_prob:
            ul, anchor, ul_mtp = ul_step_loss(model, ul_t, tc, gen, autocast, teacher)
            loss = tc.ul_alpha * ul + anchor + (tc.mtp_lambda * torch.stack(ul_mtp).mean() if ul_mtp else 0.0)
            mtp = ul_mtp
            tokens_seen += tc.ul_batch * (tc.ul_prefix + tc.ul_new_tokens)
        else:
            starts = torch.randint(0, len(train_t) - tc.seq_len - 1, (tc.batch_size,), generator=gen)
            ids = batch_at(train_t, starts, tc.seq_len)
            with autocast():
                main, mtp = mtp_losses(model, ids, tc.train_depths)
                loss = main + tc.mtp_lambda * torch.stack(mtp).mean()
            tokens_seen += tc.batch_size * tc.seq_len
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
            bar.set_postfix(loss=f"{main.item():.3f}", **({"ul": f"{ul.item():.3f}"} if tc.ul_prob > 0 else {}),
                            **({"kl": f"{anchor.item():.4f}"} if tc.ul_anchor > 0 or tc.ul_anchor_real > 0 else {}), **{f"d{j+1}": f"{m.item():.2f}" for j, m in enumerate(mtp)},
                            tok_s=f"{tps:,.0f}")
        if step % tc.eval_every == 0 or step == tc.max_steps:
            _set_train(model, False)
            ev = {"step": step, "elapsed_s": time.perf_counter() - t0, "train_main": main.item(),
                  **evaluate(model, valid_t, tc, device, autocast)}
            if loop_prompts is not None:
                ev["valid_loop"] = loop_monitor(model, loop_prompts, tc.eval_loop_tokens, autocast)
            _set_train(model, True)
            history.append(ev)
            score = selection_score(ev, tc)
            if score < best["score"] or not tc.select_best:
                best.update(score=score, step=step, state=_snapshot(model))
            bar.write(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in ev.items()}))
        if step % tc.ckpt_every == 0:
            save_state(ckpt, model, opt, step, gen, time.perf_counter() - t0, history, tokens_seen)
    bar.close()
    elapsed = time.perf_counter() - t0
    _set_train(model, False)
    save_state(ckpt, model, opt, step, gen, elapsed, history, tokens_seen)
    final = {"step": step, "elapsed_s": elapsed, **evaluate(model, valid_t, tc, device, autocast)}
    if loop_prompts is not None:
        final["valid_loop"] = loop_monitor(model, loop_prompts, tc.eval_loop_tokens, autocast)
    if best["state"] is not None and best["score"] < selection_score(final, tc):
        model.target.load_state_dict(best["state"]["target"])
        model.drafter.load_state_dict(best["state"]["drafter"], strict=False)
        final = {"step": best["step"], "elapsed_s": elapsed, **evaluate(model, valid_t, tc, device, autocast)}
        if loop_prompts is not None:
            final["valid_loop"] = loop_monitor(model, loop_prompts, tc.eval_loop_tokens, autocast)
    history.append(final)
    card = {
        "name": "tiny",
        "architecture": {"backbone": "LlamaForCausalLM", "drafter": "transformers MtpModel (DeepSeek-V3 MtpLayer)",
                         **{k: getattr(tiny, k) for k in tiny.__dataclass_fields__}},
        "parameters": {"target": sum(p.numel() for p in model.target.parameters()),
                       "mtp": sum(p.numel() for n, p in model.drafter.named_parameters() if n.startswith("layers."))},
        "training": {"config": OmegaConf.to_container(OmegaConf.structured(cfg)) if not isinstance(cfg, dict) else cfg,
                     "steps": step, "exported_step": final["step"], "tokens_seen": tokens_seen, "wall_clock_s": round(elapsed, 1),
                     "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
                     "threads": cfg.threads, "torch": torch.__version__, "final_valid": final},
        "corpus": {**corpus.summary(), "train_tokens": int(len(train_np)), "valid_tokens": int(len(valid_np))},
    }
    if command:
        card["training"]["command"] = command
    if src is not None:  # fine-tuned: keep the lineage (what the starting weights were and how they were trained)
        card["training"]["init_from"] = {"path": cfg.init_from, "training": src.card.get("training", {}),
                                         "corpus": src.card.get("corpus", {}),
                                         "weights_sha256": src.card.get("weights_sha256")}
        card["notes"] = list(src.card.get("notes", []))
    out = save_checkpoint(model, cfg.export_dir, card=card)
    print(f"exported {out} ({sum(f.stat().st_size for f in out.iterdir()) / 1e6:.1f} MB): {json.dumps(final)}")
    return final


def execute(cfg, run_dir: Path) -> None:
    from hydra.core.hydra_config import HydraConfig

    overrides = " ".join(HydraConfig.get().overrides.task)
    train(OmegaConf.to_object(cfg), command=f"python -m experiments.train_tiny {overrides}".strip())


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train_tiny")
def app(cfg) -> None:
    run_task(cfg, execute)


def main() -> None:
    preflight("train_tiny", lambda cfg: check_config(OmegaConf.to_object(cfg)), ("train",))
    app()


if __name__ == "__main__":
    main()
