"""Distil a frozen target into a small separate draft model (classic speculative decoding), then measure it.

    python -m experiments.train_draft                                  # the draft model of the embedded target
    python -m experiments.train_draft draft_size=smoke                 # seconds: what the tests run
    python -m experiments.train_draft install=true                     # ... and ship it in assets/tiny/draft/
    python -m experiments.train_draft train.loss=kl train.init_layers=[] hydra.run.dir=runs/draft_kl

The draft model has the target's layer shape, ``train.num_layers`` decoder layers initialised from the target layers
``train.init_layers`` (negative indices count from the end; ``[]``: random), and shares the target's token embedding
and LM head (frozen). It learns on the target's own greedy continuations of train-split corpus prompts (generated
once with the target's top-k log-probs at every position, and kept in the run directory): ``train.loss=kl`` minimises KL(p || q) against the target's full next-token
distribution at every position, ``ce`` the cross-entropy to the target's greedy token. A checkpoint (draft weights,
optimiser, step, RNG) is written every ``train.ckpt_every`` steps to ``<run dir>/ckpt.pt``; the same command with
the same ``hydra.run.dir`` resumes from it. The export (``<run dir>/export``: ``save_draft_model``'s files and
``card.json``) is then decoded through ``load_model(..., drafter="draft:<export>")`` on test-split prompts with
``fixed`` k: acceptance by depth (accepted / reached), TPF, and the teacher-forced agreement of the draft model's
argmax with the target's greedy token; the target's own MTP drafter is measured alike as the baseline.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from experiments.common import CONF_DIR, ModelConf, UserError, preflight, run_task
from specpolicy.data import load_corpus, sample_prompts
from specpolicy.runs import checks

LOSSES = ("kl", "ce")


@dataclass
class DraftTrainConf:
    num_layers: int = 2
    init_layers: list = field(default_factory=lambda: [0, -1])  # target layers copied into the draft's; []: random
    loss: str = "ce"  # ce: CE to the target's greedy token | kl: KL(p || q) over its top-k (ce measured better)
    n_prompts: int = 768  # train-split prompts continued greedily by the target
    prompt_tokens: int = 64
    new_tokens: int = 128
    gen_batch: int = 64
    topk: int = 64  # the target's top-k log-probs per position, computed once (the KL's p)
    batch_size: int = 16
    steps: int = 1200
    max_minutes: float = 0.0  # > 0: stop (and anneal the LR) by wall clock, whichever of steps/time ends first
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ckpt_every: int = 200


@dataclass
class DraftEvalConf:
    n_prompts: int = 16  # test-split prompts
    prompt_tokens: int = 64
    max_new_tokens: int = 96
    k: int = 4  # fixed k drafts per step
    baseline: bool = True  # also decode with the target's own MTP drafter


@dataclass
class TrainDraftConfig:
    model: ModelConf = field(default_factory=ModelConf)
    train: DraftTrainConf = field(default_factory=DraftTrainConf)
    eval: DraftEvalConf = field(default_factory=DraftEvalConf)
    threads: int = 1
    seed: int = 0
    install: bool = False  # model.path=tiny only: copy the export into specpolicy/models/assets/tiny/draft/


ConfigStore.instance().store(name="train_draft_schema", node=TrainDraftConfig)


def check_config(cfg: TrainDraftConfig) -> None:
    """Settings a user can get wrong, refused before anything is written (one line, exit 2)."""
    tc, ec = cfg.train, cfg.eval
    for ok, message in (
        (tc.loss in LOSSES, f"train.loss={tc.loss!r} is unknown; allowed: {', '.join(LOSSES)}"),
        (tc.num_layers >= 1, f"train.num_layers={tc.num_layers} is invalid; allowed: an integer >= 1"),
        (len(tc.init_layers) in (0, tc.num_layers), f"train.init_layers={list(tc.init_layers)} is invalid; allowed: "
         f"[] (random) or {tc.num_layers} target layer indices"),
        (tc.n_prompts >= 1 and tc.batch_size >= 1 and tc.gen_batch >= 1, "train.n_prompts, train.batch_size and "
         "train.gen_batch must be >= 1"),
        (tc.prompt_tokens >= 1 and tc.new_tokens >= 2, "train.prompt_tokens must be >= 1 and train.new_tokens >= 2"),
        (1 <= tc.topk <= 1024, f"train.topk={tc.topk} is invalid; allowed: 1 <= topk <= 1024"),
        (tc.steps >= 1 and tc.ckpt_every >= 1, f"train.steps={tc.steps} / train.ckpt_every={tc.ckpt_every} are "
         "invalid; allowed: integers >= 1"),
        (tc.lr > 0 and 0 <= tc.min_lr_ratio <= 1, f"train.lr={tc.lr} / train.min_lr_ratio={tc.min_lr_ratio} are "
         "invalid; allowed: lr > 0, 0 <= min_lr_ratio <= 1"),
        (ec.n_prompts >= 1 and ec.max_new_tokens >= 2 and 1 <= ec.k <= 16, "eval.n_prompts >= 1, "
         "eval.max_new_tokens >= 2 and 1 <= eval.k <= 16 are required"),
        (cfg.threads >= 1, f"threads={cfg.threads} is invalid; allowed: an integer >= 1"),
        (not cfg.install or cfg.model.path == "tiny", f"install=true with model.path={cfg.model.path!r}; allowed: "
         "install only for model.path=tiny (the draft model shipped beside the embedded target)"),
    ):
        if not ok:
            raise UserError(message)
    checks.check_model(cfg.model)


def _layers(target, spec: list) -> tuple[int, ...] | None:
    n = len(target.get_decoder().layers)
    if not spec:
        return None
    if not all(-n <= int(i) < n for i in spec):
        raise UserError(f"train.init_layers={list(spec)}: the target has {n} layers; allowed: indices in [{-n}, {n - 1}]")
    return tuple(int(i) % n for i in spec)


def continuations(target, tokenizer, n: int, prompt_tokens: int, new_tokens: int, batch: int, seed: int,
                  split: str) -> torch.Tensor:
    """The target's greedy continuations of ``n`` corpus prompts of ``split``: [n, prompt_tokens + new_tokens]."""
    from tqdm.auto import tqdm

    from specpolicy.models.unlikelihood import greedy_continue

    prompts = sample_prompts(load_corpus(), tokenizer, n, prompt_tokens, seed=seed, split=split)
    ids = torch.tensor([p.ids for p in prompts], device=target.device)  # [n, P]
    with torch.no_grad():
        return torch.cat([greedy_continue(target, ids[i : i + batch], new_tokens)
                          for i in tqdm(range(0, n, batch), desc=f"continue {split}", leave=False)])


@torch.no_grad()
def teacher_topk(target, seqs: torch.Tensor, k: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's top-k next-token log-probs at every position of seqs [N, T], computed once:
    (log p [N, T, k] float32, token ids [N, T, k] int16); index 0 is the target's greedy token."""
    vals, idx = [], []
    for i in range(0, len(seqs), batch):
        top = F.log_softmax(target(input_ids=seqs[i : i + batch]).logits.float(), -1).topk(k, dim=-1)
        vals.append(top.values.cpu())
        idx.append(top.indices.to(torch.int16).cpu())
    return torch.cat(vals), torch.cat(idx)


def distil_loss(draft, seqs: torch.Tensor, p_logp: torch.Tensor, p_idx: torch.Tensor, loss: str) -> torch.Tensor:
    """seqs [B, T]; the target's top-k p_logp, p_idx [B, T, k]. ``kl``: KL(p || q) with p renormalised over its
    top k (the mass outside them is negligible for a trained target); ``ce``: CE to the greedy token. Mean over
    every position."""
    q_logp = F.log_softmax(draft(input_ids=seqs).logits.float(), -1)  # [B, T, V]
    q_at = q_logp.gather(-1, p_idx.long())  # [B, T, k]
    if loss == "ce":
        return -q_at[..., 0].mean()
    p_logp = F.log_softmax(p_logp, -1)  # renormalised over the top k
    return (p_logp.exp() * (p_logp - q_at)).sum(-1).mean()


def lr_at(progress: float, step: int, tc: DraftTrainConf) -> float:
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def save_state(path: Path, draft, opt, step: int, gen: torch.Generator, elapsed: float, history: list) -> None:
    from specpolicy.models.draft_model import own_state_dict

    tmp = path.with_suffix(".tmp")
    torch.save({"draft": {k: v.detach() for k, v in own_state_dict(draft).items()}, "opt": opt.state_dict(),
                "step": step, "gen": gen.get_state(), "elapsed": elapsed, "history": history}, tmp)
    os.replace(tmp, path)


def train(cfg: TrainDraftConfig, model, run_dir: Path) -> tuple:
    """Distil ``model.target`` into a fresh shared-head draft model; resumes from ``run_dir/ckpt.pt``."""
    from tqdm.auto import tqdm

    from specpolicy.models.draft_model import build_shared_draft, own_state_dict

    tc, target = cfg.train, model.target
    torch.manual_seed(cfg.seed)
    draft = build_shared_draft(target, tc.num_layers, _layers(target, tc.init_layers)).float()
    data_path = run_dir / "train_sequences.pt"  # generated once per run directory (kept for resume)
    if data_path.exists():
        data = torch.load(data_path)
    else:
        seqs = continuations(target, model.tokenizer, tc.n_prompts, tc.prompt_tokens, tc.new_tokens, tc.gen_batch,
                             cfg.seed, "train")
        p_logp, p_idx = teacher_topk(target, seqs, tc.topk, tc.gen_batch)
        data = {"seqs": seqs.cpu(), "p_logp": p_logp, "p_idx": p_idx}
        torch.save(data, data_path)
    seqs = data["seqs"]
    params = list(own_state_dict(draft).values())  # the shared embedding/head stay frozen
    target.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=(0.9, 0.95), weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    ckpt, step, elapsed0, history = run_dir / "ckpt.pt", 0, 0.0, []
    if ckpt.exists():
        state = torch.load(ckpt, map_location=model.device, weights_only=True)
        draft.load_state_dict(state["draft"], strict=False)
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, elapsed0, history = state["step"], state["elapsed"], state["history"]
        print(f"resumed from {ckpt} at step {step}", file=sys.stderr)
    t0, max_s = time.perf_counter() - elapsed0, tc.max_minutes * 60
    bar = tqdm(total=tc.steps, initial=step, desc="train_draft", dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    draft.train()
    while step < tc.steps:
        progress = max(step / tc.steps, (time.perf_counter() - t0) / max_s if max_s > 0 else 0.0)
        if progress >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(progress, step, tc)
        i = torch.randint(0, len(seqs), (tc.batch_size,), generator=gen)
        loss = distil_loss(draft, seqs[i].to(model.device), data["p_logp"][i].to(model.device),
                           data["p_idx"][i].to(model.device), tc.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        step += 1
        bar.update(1)
        if step % 10 == 0 or step == 1:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            history.append({"step": step, "loss": round(loss.item(), 5)})
        if step % tc.ckpt_every == 0:
            save_state(ckpt, draft, opt, step, gen, time.perf_counter() - t0, history)
    bar.close()
    elapsed = time.perf_counter() - t0
    save_state(ckpt, draft, opt, step, gen, elapsed, history)
    return draft.eval(), {"steps": step, "wall_clock_s": round(elapsed, 1), "train_sequences": list(seqs.shape),
                          "final_loss": history[-1]["loss"] if history else None}


def acceptance_by_depth(results, k: int) -> dict:
    """Conditional acceptance at depth j (accepted at j / reached j: d_1..d_{j-1} all accepted), and TPF."""
    reached, accepted = [0] * k, [0] * k
    for res in results:
        for st in res.steps:
            for j in range(min(len(st.drafts), k)):
                if st.accepted >= j:
                    reached[j] += 1
                    accepted[j] += st.accepted > j
    tokens, steps = sum(len(r.token_ids) for r in results), sum(len(r.steps) for r in results)
    return {"acceptance_by_depth": [round(a / r, 4) if r else None for a, r in zip(accepted, reached)],
            "reached_by_depth": reached, "tpf": round(tokens / max(1, steps), 4)}


@torch.no_grad()
def evaluate(cfg: TrainDraftConfig, export: Path) -> dict:
    """Decode test-split prompts with the exported draft model (and the MTP baseline); teacher-forced agreement."""
    from specpolicy.decoding import generate

    ec = cfg.eval
    model = checks.load(cfg.model, drafter=f"draft:{export}")
    prompts = sample_prompts(load_corpus(), model.tokenizer, ec.n_prompts, ec.prompt_tokens, seed=cfg.seed,
                             split="test")
    out = {"prompts": ec.n_prompts, "max_new_tokens": ec.max_new_tokens, "policy": f"fixed(k={ec.k})"}
    runs = [generate(model, list(p.ids), "fixed", k=ec.k, max_new_tokens=ec.max_new_tokens) for p in prompts]
    out["draft"] = acceptance_by_depth(runs, ec.k)
    seqs = continuations(model.target, model.tokenizer, ec.n_prompts, ec.prompt_tokens, ec.max_new_tokens,
                         ec.n_prompts, cfg.seed, "test")  # [N, P + new]
    P = ec.prompt_tokens
    p_tok = model.target(input_ids=seqs).logits[:, P - 1 : -1].argmax(-1)  # the target's greedy tokens [N, new]
    q_tok = model.drafter(input_ids=seqs).logits[:, P - 1 : -1].argmax(-1)
    out["draft"]["teacher_forced_agreement"] = round((p_tok == q_tok).double().mean().item(), 4)
    if ec.baseline and getattr(model.target.config.get_text_config(), "num_mtp_layers", None):
        mtp = checks.load(cfg.model)
        base = [generate(mtp, list(p.ids), "fixed", k=ec.k, max_new_tokens=ec.max_new_tokens) for p in prompts]
        out["mtp_baseline"] = acceptance_by_depth(base, ec.k)
    return out


def execute(cfg, run_dir: Path) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from specpolicy.models.draft_model import save_draft_model
    from specpolicy.models.loading import ASSET_DIR

    overrides = " ".join(HydraConfig.get().overrides.task)
    cfg = OmegaConf.to_object(cfg)
    check_config(cfg)
    torch.set_num_threads(cfg.threads)
    model = checks.load(cfg.model)
    draft, training = train(cfg, model, run_dir)
    export = run_dir / "export"
    card = {"name": f"{model.name}-draft", "target": {"name": model.name,
                                                      "weights_sha256": model.card.get("weights_sha256")},
            "architecture": {"type": type(draft).__name__, "num_layers": cfg.train.num_layers,
                             "hidden_size": draft.config.hidden_size, "shares": "target embedding and LM head",
                             "init_layers": list(cfg.train.init_layers)},
            "parameters_own": sum(p.numel() for n, p in draft.named_parameters() if "embed" not in n
                                  and "lm_head" not in n),
            "training": {**training, "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
                         "threads": cfg.threads, "torch": torch.__version__,
                         "command": f"python -m experiments.train_draft {overrides}".strip()}}
    save_draft_model(draft, export, target_card=model.card)
    card["evaluation"] = evaluate(cfg, export)
    save_draft_model(draft, export, target_card=model.card, card=card)  # the card records the final file sizes
    if cfg.install:
        dest = ASSET_DIR / "tiny" / "draft"
        dest.mkdir(parents=True, exist_ok=True)
        for f in export.iterdir():
            shutil.copy2(f, dest / f.name)
        print(f"installed {dest}", file=sys.stderr)
    (run_dir / "report.json").write_text(json.dumps(card["evaluation"], indent=2) + "\n")
    print(json.dumps(card["evaluation"]))
    return card


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train_draft")
def app(cfg) -> None:
    run_task(cfg, execute)


def main() -> None:
    preflight("train_draft", lambda cfg: check_config(OmegaConf.to_object(cfg)), ("draft_size",))
    app()


if __name__ == "__main__":
    main()
