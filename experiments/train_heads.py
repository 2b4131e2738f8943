"""Train Medusa-1 heads for a frozen target by self-distillation on its own greedy continuations.

    python -m experiments.train_heads                                  # 4 heads for the embedded tiny model
    python -m experiments.train_heads smoke=true hydra.run.dir=runs/train_heads/smoke   # seconds: what the tests run
    python -m experiments.train_heads install=true                     # also ship them in assets/tiny/medusa/
    python -m experiments.train_heads model=hf model.path=DIR num_heads=3 out=DIR/medusa
    python -m experiments.train_heads n_prompts=16384 init_from=DIR distill=0.5   # warm start, soft labels

Data: ``n_prompts`` train-split prompts of ``prompt_tokens`` tokens, each continued greedily by the target for
``new_tokens`` tokens, its final hidden states kept (no grad). Head k at index i learns ``seq[i+k+1]`` for every
index i >= prompt_tokens - 1 whose label is inside the sequence (``specpolicy.models.medusa``): CE on that greedy
label, or with ``distill`` > 0 mixed with CE on the target's whole next-token distribution there (Medusa-2's
self-distillation). ``text_windows`` > 0 adds rows of train-split real text where it is the target's greedy chain
(one teacher-forced forward per window). ``num_layers`` residual blocks per head; ``init_from`` starts from a heads
directory; warmup, then a constant or (``min_lr_ratio`` < 1) cosine learning rate. The target stays frozen.

A checkpoint (heads, optimiser, step, generator) every ``ckpt_every`` steps: the same command with the same
``hydra.run.dir`` resumes (raising ``steps`` continues). Writes fp16 heads + config.json to ``out`` (default
``<run dir>/medusa``) and ``report.json`` / ``card.json``: per depth, the test-split teacher-forced agreement of head
j's argmax with the target's greedy token (untrained heads beside it), and TPF / acceptance by depth of ``fixed``
k=decode_k with the saved heads. Bad settings: one line on stderr, exit code 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from experiments.common import CONF_DIR, ModelConf, UserError, preflight, run_task

GROUPS = ("model",)
GEN_BATCH = 128  # prompts continued together (one KV-cached greedy decode per batch)
SMOKE = {"n_prompts": 16, "prompt_tokens": 32, "new_tokens": 32, "steps": 20, "batch_rows": 128, "ckpt_every": 10,
         "eval_prompts": 4, "decode_prompts": 2, "decode_tokens": 16}


@dataclass
class TrainHeadsConfig:
    model: ModelConf = field(default_factory=ModelConf)  # group model/
    num_heads: int = 4  # K
    num_layers: int = 1  # residual blocks per head (Medusa's medusa_num_layers)
    n_prompts: int = 384  # train-split prompts continued by the target
    prompt_tokens: int = 64
    new_tokens: int = 128
    text_windows: int = 0  # extra rows: train-split real-text windows where the text is the target's greedy chain
    text_tokens: int = 256  # tokens per real-text window
    steps: int = 400
    batch_rows: int = 1024  # (sequence, index) rows per step
    lr: float = 2e-3  # AdamW, linear warmup, then constant (min_lr_ratio=1: a resumed run with more steps continues
    min_lr_ratio: float = 1.0  # the same way) or cosine decay to lr * min_lr_ratio at ``steps`` (< 1)
    warmup_steps: int = 20
    weight_decay: float = 0.0
    init_from: str = ""  # a heads directory (config.json + heads.safetensors) to start from, e.g. the shipped ones
    distill: float = 0.0  # weight of the soft labels (the target's full next-token distribution), 0..1; 0: greedy only
    ckpt_every: int = 50
    eval_prompts: int = 64  # test-split prompts for the agreement figures
    decode_prompts: int = 16  # test-split prompts decoded with generate(.., "fixed", k=decode_k)
    decode_tokens: int = 96
    decode_k: int = 3
    seed: int = 0
    threads: int = 1
    smoke: bool = False  # true: settings left at their defaults take the SMOKE sizes (seconds)
    out: str = ""  # "" -> <run dir>/medusa
    install: bool = False  # copy the heads (and card) into specpolicy/models/assets/tiny/medusa/ (model.path=tiny)


ConfigStore.instance().store(name="train_heads_schema", node=TrainHeadsConfig)


def plan_of(cfg: DictConfig) -> TrainHeadsConfig:
    """The validated settings (smoke sizes applied); one-line ``UserError`` for anything out of range."""
    from specpolicy.runs import checks

    c = OmegaConf.to_object(cfg)
    if c.smoke:
        defaults = TrainHeadsConfig()
        c = dataclasses.replace(c, **{k: v for k, v in SMOKE.items() if getattr(c, k) == getattr(defaults, k)})
    for name in ("num_heads", "num_layers", "n_prompts", "prompt_tokens", "steps", "batch_rows", "ckpt_every",
                 "eval_prompts", "decode_tokens", "decode_k", "threads"):
        if not isinstance(getattr(c, name), int) or getattr(c, name) < 1:
            raise UserError(f"{name}={getattr(c, name)!r} is invalid; allowed: an integer >= 1")
    if c.new_tokens < c.num_heads + 2:
        raise UserError(f"new_tokens={c.new_tokens} leaves head {c.num_heads} no label; allowed: new_tokens >= "
                        f"num_heads + 2 = {c.num_heads + 2}")
    if c.decode_prompts < 0 or c.warmup_steps < 0 or c.weight_decay < 0 or c.text_windows < 0:
        raise UserError("decode_prompts, warmup_steps, weight_decay and text_windows must be >= 0; allowed: 0 or more")
    if c.text_windows and c.text_tokens < c.num_heads + 2:
        raise UserError(f"text_tokens={c.text_tokens} leaves head {c.num_heads} no label; allowed: text_tokens >= "
                        f"num_heads + 2 = {c.num_heads + 2}")
    if not c.lr > 0:
        raise UserError(f"lr={c.lr} is invalid; allowed: > 0")
    for name in ("distill", "min_lr_ratio"):
        if not 0 <= getattr(c, name) <= 1:
            raise UserError(f"{name}={getattr(c, name)} is invalid; allowed: 0 <= {name} <= 1")
    if c.distill and c.text_windows:
        raise UserError("distill > 0 needs greedy-continuation rows only; allowed: distill=0 with text_windows > 0")
    if c.install and c.model.path != "tiny":
        raise UserError(f"install=true ships heads for the embedded model only, not model.path={c.model.path!r}; "
                        "allowed: model=tiny, or out=<dir> for another model")
    checks.check_model(c.model)
    return c


def load_target(m: ModelConf):
    """The target (and tokenizer) only: ``drafter="ngram"`` loads no drafter weights."""
    from specpolicy.models.loading import ModelNotFoundError, load_model

    device = ("cuda" if torch.cuda.is_available() else "cpu") if m.device == "auto" else m.device
    try:
        model = load_model(str(m.path), device=device, dtype=m.dtype, drafter="ngram")
    except (ModelNotFoundError, OSError, ValueError) as err:
        raise UserError(f"model {m.path!r} could not be loaded: {str(err).strip().splitlines()[0]}") from None
    if model.tokenizer is None:
        raise UserError(f"model {m.path!r} has no tokenizer; allowed: a checkpoint with tokenizer files")
    model.target.requires_grad_(False)
    return model


@torch.no_grad()
def continuations(model, split: str, n: int, c: TrainHeadsConfig, seed: int, desc: str) -> torch.Tensor:
    """Token ids [n, P + new] of ``split`` prompts continued greedily by the target (batches of ``GEN_BATCH``)."""
    from tqdm.auto import tqdm

    from specpolicy.data import load_corpus, sample_prompts
    from specpolicy.models.unlikelihood import greedy_continue

    try:
        prompts = sample_prompts(load_corpus(), model.tokenizer, n, c.prompt_tokens, seed, split=split)
    except ValueError as err:
        raise UserError(str(err)) from None
    ids = torch.tensor([p.ids for p in prompts], device=model.device)  # [n, P]
    return torch.cat([greedy_continue(model.target, ids[a : a + GEN_BATCH], c.new_tokens)
                      for a in tqdm(range(0, n, GEN_BATCH), desc=desc, dynamic_ncols=True)])


@torch.no_grad()
def rows_of(model, seqs: torch.Tensor, c: TrainHeadsConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden-state rows [N * L, H] (indices P-1..T-1 of every sequence) and their labels [K, N * L]."""
    from specpolicy.models.medusa import medusa_labels

    start = c.prompt_tokens - 1
    body = model.target.get_decoder()
    h = torch.cat([body(input_ids=seqs[a : a + 32]).last_hidden_state[:, start:].float()
                   for a in range(0, len(seqs), 32)])  # [N, L, H]
    labels = medusa_labels(seqs, c.num_heads, start)  # [K, N, L]
    return h.reshape(-1, h.shape[-1]), labels.reshape(c.num_heads, -1)


def text_data(model, c: TrainHeadsConfig, d: Path) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``text_rows`` of ``text_windows`` random train-split windows, 32 at a time, kept in ``d`` (fp16 hidden)."""
    import numpy as np
    from tqdm.auto import tqdm

    from specpolicy.data import load_corpus
    from specpolicy.data.tokens import encode_split
    from specpolicy.models.medusa import text_rows

    if not c.text_windows:
        return [], []
    stream = encode_split(load_corpus(), model.tokenizer, "train")
    starts = np.random.default_rng(c.seed).integers(0, len(stream) - c.text_tokens, size=c.text_windows)
    hs, labels = [], []
    for a in tqdm(range(0, c.text_windows, 32), desc="real text (train)", dynamic_ncols=True):
        f = d / f"text_{a:07d}.pt"
        if not f.exists():
            win = torch.tensor(np.stack([stream[s : s + c.text_tokens] for s in starts[a : a + 32]]).astype(np.int64),
                               device=model.device)
            h, lab = text_rows(model.target, win, c.num_heads)
            torch.save({"hidden": h.half().cpu(), "labels": lab.cpu()}, f.with_suffix(".tmp"))
            os.replace(f.with_suffix(".tmp"), f)
        part = torch.load(f, map_location=model.device)
        hs.append(part["hidden"])
        labels.append(part["labels"])
    return hs, labels


def data_for(model, c: TrainHeadsConfig, run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Training rows: hidden states [N, H] (fp16) of indices P-1 .. T-2 of every train-split continuation and their
    labels [K, N]. Generated once, ``GEN_BATCH`` prompts at a time, each batch kept in ``run_dir/train_data/`` (fp16
    hidden states, so a resumed run, or one interrupted while generating, reads back exactly the same rows)."""
    from tqdm.auto import tqdm

    from specpolicy.data import load_corpus, sample_prompts
    from specpolicy.models.medusa import greedy_rows, medusa_labels

    d = run_dir / "train_data"
    d.mkdir(exist_ok=True)
    try:
        prompts = sample_prompts(load_corpus(), model.tokenizer, c.n_prompts, c.prompt_tokens, c.seed, split="train")
    except ValueError as err:
        raise UserError(str(err)) from None
    ids = torch.tensor([p.ids for p in prompts], device=model.device)  # [n, P]
    hs, labels = [], []
    for a in tqdm(range(0, len(ids), GEN_BATCH), desc="continue (train)", dynamic_ncols=True):
        f = d / f"{a:07d}.pt"
        if not f.exists():
            seqs, h = greedy_rows(model.target, ids[a : a + GEN_BATCH], c.new_tokens)
            torch.save({"seqs": seqs.cpu(), "hidden": h.half().cpu()}, f.with_suffix(".tmp"))
            os.replace(f.with_suffix(".tmp"), f)
        part = torch.load(f, map_location=model.device)
        hs.append(part["hidden"].reshape(-1, part["hidden"].shape[-1]))  # [B * new, H]
        labels.append(medusa_labels(part["seqs"], c.num_heads, c.prompt_tokens - 1)[:, :, :-1].reshape(c.num_heads, -1))
    text_h, text_labels = text_data(model, c, d)
    return torch.cat(hs + text_h), torch.cat(labels + text_labels, dim=1)


def settings_key(c: TrainHeadsConfig) -> dict:
    """What a checkpoint must share with the command that resumes it (``steps`` and the outputs may change)."""
    keep = ("num_heads", "num_layers", "n_prompts", "text_windows", "text_tokens", "prompt_tokens", "new_tokens",
            "batch_rows", "lr", "min_lr_ratio", "warmup_steps",
            "weight_decay", "seed") + tuple(k for k in ("distill", "init_from") if getattr(c, k))
    return {"model": str(c.model.path), **{k: getattr(c, k) for k in keep}}


def train(model, c: TrainHeadsConfig, run_dir: Path):
    """Train the heads (resuming from ``run_dir/ckpt.pt``); returns (heads, train info)."""
    from tqdm.auto import tqdm

    from specpolicy.models.medusa import MedusaHeads, load_medusa_heads, medusa_loss, soft_targets
    from specpolicy.models.training import warmup_cosine_lr

    lm_head = model.target.get_output_embeddings()
    V, H = lm_head.weight.shape
    torch.manual_seed(c.seed)
    heads = MedusaHeads(H, V, c.num_heads, c.num_layers).to(model.device)
    if c.init_from:
        start = load_medusa_heads(model.target, "", c.init_from, model.device, torch.float32)
        if (start.num_heads, start.num_layers) != (c.num_heads, c.num_layers):
            raise UserError(f"init_from={c.init_from!r} has other sizes; allowed: {c.num_heads} x {c.num_layers} heads")
        heads.load_state_dict(start.state_dict())
    opt = torch.optim.AdamW(heads.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    gen = torch.Generator().manual_seed(c.seed)
    ckpt, step, history, elapsed0 = run_dir / "ckpt.pt", 0, [], 0.0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=model.device, weights_only=True)
        if state["settings"] != settings_key(c):
            raise UserError(f"{ckpt} was written with other settings ({state['settings']}); allowed: the same "
                            "settings to resume (steps may grow), or a new hydra.run.dir")
        heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, history, elapsed0 = state["step"], state["history"], state["elapsed_s"]
        print(f"resumed from {ckpt} at step {step}", file=sys.stderr)
    n_rows = None if c.text_windows else c.n_prompts * c.new_tokens  # known without the data when no text rows
    if step < c.steps:  # rows [N, H] and labels [K, N]; a finished run re-evaluates without them
        h, labels = data_for(model, c, run_dir)
        n_rows = h.shape[0]

    def save(at: int) -> None:
        torch.save({"heads": heads.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "step": at,
                    "history": history, "elapsed_s": elapsed0 + time.perf_counter() - t0,
                    "settings": settings_key(c)}, ckpt.with_suffix(".tmp"))
        os.replace(ckpt.with_suffix(".tmp"), ckpt)

    t0 = time.perf_counter()
    bar = tqdm(total=c.steps, initial=min(step, c.steps), desc="train_heads", dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    heads.train()
    while step < c.steps:
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, c.lr, c.warmup_steps, c.steps, c.min_lr_ratio)
        idx = torch.randint(0, h.shape[0], (c.batch_rows,), generator=gen).to(h.device)
        soft = soft_targets(lm_head, h, idx, c.num_heads) if c.distill else None
        losses = medusa_loss(heads, lm_head, h[idx].float(), labels[:, idx], soft, c.distill)
        loss = torch.stack(losses).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % 10 == 0 or step == c.steps:
            history.append({"step": step, **{f"ce_{k + 1}": round(v.item(), 4) for k, v in enumerate(losses)}})
            bar.set_postfix(**{f"d{k + 1}": f"{v.item():.2f}" for k, v in enumerate(losses)})
        if step % c.ckpt_every == 0 or step == c.steps:
            save(step)
    bar.close()
    heads.eval()
    info = {"steps": step, "rows": n_rows, "history": history,
            "wall_clock_s": round(elapsed0 + time.perf_counter() - t0, 1)}
    return heads, info


def agreement(model, heads, c: TrainHeadsConfig) -> dict:
    """Per depth j: teacher-forced agreement of head j's argmax with the target's greedy token on test-split
    target-greedy continuations; the same for zero (untrained) heads, i.e. the next-token head read j tokens early."""
    from specpolicy.models.medusa import MedusaHeads, medusa_agreement

    lm_head = model.target.get_output_embeddings()
    seqs = continuations(model, "test", c.eval_prompts, c, c.seed + 1, "continue (test)")
    h, labels = rows_of(model, seqs, c)
    base = MedusaHeads(heads.hidden_size, heads.vocab_size, c.num_heads).to(h.device)
    trained = medusa_agreement(heads.float(), lm_head, h, labels)
    untrained = medusa_agreement(base, lm_head, h, labels)
    return {str(j + 1): {"agreement": a / n, "untrained": u / n, "n": n}
            for j, ((a, n), (u, _)) in enumerate(zip(trained, untrained))}


def decode(model, out: Path, c: TrainHeadsConfig) -> dict:
    """TPF and acceptance by depth of ``fixed`` k=decode_k with the heads as saved (fp16 weights, loaded back):
    conditional (accepted / drafts that reached depth j) and chain (accepted at depth j / steps)."""
    from specpolicy.data import load_corpus, sample_prompts
    from specpolicy.decoding import generate
    from specpolicy.decoding.drafters.medusa import MedusaDrafter
    from specpolicy.models.loading import resolve_model_path
    from specpolicy.models.medusa import load_medusa_heads

    if c.decode_prompts == 0:
        return {}
    heads = load_medusa_heads(model.target, resolve_model_path(str(c.model.path)), str(out), model.device,
                              model.dtype)
    prompts = sample_prompts(load_corpus(), model.tokenizer, c.decode_prompts, c.prompt_tokens, c.seed + 2, "test")
    reached, accepted, new, forwards = [0] * c.decode_k, [0] * c.decode_k, 0, 0
    for p in prompts:
        res = generate(model, list(p.ids), "fixed", k=c.decode_k, max_new_tokens=c.decode_tokens,
                       drafter=MedusaDrafter(heads, model.target))
        new, forwards = new + res.stats.new_tokens, forwards + res.stats.target_forwards
        for st in res.steps:
            for j, ok in enumerate(st.verdicts):  # walked drafts: depth j+1 reached
                reached[j] += 1
                accepted[j] += ok
    return {"policy": f"fixed(k={c.decode_k})", "prompts": c.decode_prompts, "max_new_tokens": c.decode_tokens,
            "tpf": new / forwards, "new_tokens": new, "target_forwards": forwards,
            "acceptance_by_depth": {str(j + 1): {"conditional": accepted[j] / max(1, reached[j]),
                                                 "chain": accepted[j] / max(1, reached[0]), "reached": reached[j]}
                                    for j in range(c.decode_k)}}


def execute(cfg: DictConfig, run_dir: Path) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from specpolicy.models.loading import ASSET_DIR
    from specpolicy.models.medusa import save_medusa_heads

    c = plan_of(cfg)
    torch.set_num_threads(c.threads)
    model = load_target(c.model)
    run_dir.mkdir(parents=True, exist_ok=True)
    heads, info = train(model, c, run_dir)
    command = " ".join(["python -m experiments.train_heads", *HydraConfig.get().overrides.task])
    out = Path(c.out) if c.out else run_dir / "medusa"
    sha = model.card.get("weights_sha256")
    meta = {"target": model.name, "target_fingerprint": model.fingerprint(), "target_weights_sha256": sha,
            "trained_with": command}
    save_medusa_heads(heads, out, meta)
    report = {"target": model.name, "target_weights_sha256": sha, "num_heads": c.num_heads,
              "parameters": sum(p.numel() for p in heads.parameters()),
              "agreement_by_depth": agreement(model, heads, c), "decode": decode(model, out, c),
              "training": {**{k: v for k, v in info.items() if k != "history"}, "settings": dataclasses.asdict(c),
                           "final_ce": info["history"][-1] if info["history"] else {}},
              "command": command, "threads": c.threads, "torch": torch.__version__}
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    files = {f.name: f.stat().st_size for f in sorted(out.iterdir()) if f.name != "card.json"}
    card = {**{k: report[k] for k in ("target", "target_weights_sha256", "num_heads", "parameters",
                                       "agreement_by_depth", "decode", "command")},
            "eval_split": "test", "train_split": "train", "files_bytes": files,
            "training": {k: report["training"][k] for k in ("steps", "rows", "wall_clock_s", "final_ce")}}
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    if c.install:
        dest = ASSET_DIR / "tiny" / "medusa"
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("heads.safetensors", "config.json", "card.json"):
            shutil.copyfile(out / f, dest / f)
        print(f"installed into {dest}", file=sys.stderr)
    summary = {j: round(d["agreement"], 4) for j, d in report["agreement_by_depth"].items()}
    print(json.dumps({"agreement_by_depth": summary, "tpf": report["decode"].get("tpf"), "out": str(out)}))
    return report


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train_heads")
def app(cfg: DictConfig):
    return run_task(cfg, execute)


def main() -> None:
    preflight("train_heads", plan_of, GROUPS)
    app()


if __name__ == "__main__":
    main()
