"""Model report: how good is an MTP model as a target and as a drafter, on the held-out test split.

    python -m experiments.evaluate_model                               # the embedded tiny model
    python -m experiments.evaluate_model model=hf model.path=/path/to/export write_card=true

Writes ``report.json`` to Hydra's run directory (``hydra.run.dir=...`` chooses it): next-token top-1 accuracy and
NLL on real test text; per MTP depth j the agreement of the depth-j draft with the target's greedy token
(teacher-forced on target-greedy continuations), conditional and chain acceptance, AUROC of q(d_j); and the share of
128-token greedy generations that loop (an 8-gram repeated 3+ times). ``write_card=true`` also stores the figures in
the model directory's ``model_card.json`` and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from experiments.common import CONF_DIR, ModelConf, UserError, preflight, run_task
from specpolicy.data import load_corpus, sample_prompts
from specpolicy.data.tokens import encode_split
from specpolicy.models.loading import resolve_model_path
from specpolicy.models.quality import draft_agreement, loop_share, next_token_accuracy
from specpolicy.runs import checks

BAR = {"top1": 0.40, "depth1_agreement": 0.65, "depth3_agreement": 0.40, "depth1_auroc": 0.75, "loop_share": 0.30}


@dataclass
class EvaluateConfig:
    model: ModelConf = field(default_factory=ModelConf)  # group model/
    n_windows: int = 64  # real-text windows for top-1 accuracy
    window_tokens: int = 512
    n_prompts: int = 64  # greedy generations for agreement and looping
    prompt_tokens: int = 64
    new_tokens: int = 128
    depths: int = 6
    seed: int = 0
    threads: int = 1  # one or two is faster by machine and load (README "Speed")
    write_card: bool = False


ConfigStore.instance().store(name="evaluate_model_schema", node=EvaluateConfig)


@torch.no_grad()
def evaluate(cfg: EvaluateConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    model = checks.load(cfg.model)
    load_s = time.perf_counter() - t0
    corpus = load_corpus()
    stream = encode_split(corpus, model.tokenizer, "test")
    acc = next_token_accuracy(model, stream, cfg.n_windows, cfg.window_tokens, cfg.seed)
    prompts = sample_prompts(corpus, model.tokenizer, cfg.n_prompts, cfg.prompt_tokens, cfg.seed)
    seqs, gens = [], []
    for p in tqdm(prompts, desc="greedy generations"):
        ids = torch.tensor([p.ids])
        out = model.target.generate(ids, max_new_tokens=cfg.new_tokens, do_sample=False,
                                    pad_token_id=model.tokenizer.pad_token_id)
        seqs.append(out[0])
        gens.append(out[0, len(p.ids):].tolist())
    agree = draft_agreement(model, seqs, [len(p.ids) for p in prompts], cfg.depths)
    report = {
        "model": cfg.model.path,
        "corpus_fingerprint": corpus.fingerprint(),
        "test_tokens": int(len(stream)),
        "next_token": acc,
        "depths": {str(j): v for j, v in agree.items()},
        "loop_share": loop_share(gens),
        "n_generations": len(gens),
        "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
        "seconds": round(time.perf_counter() - t0, 1),
        "load_seconds": round(load_s, 2),
    }
    report["bar"] = {
        "top1": (acc["top1"], BAR["top1"], acc["top1"] >= BAR["top1"]),
        "depth1_agreement": (agree[1]["agreement"], BAR["depth1_agreement"], agree[1]["agreement"] >= BAR["depth1_agreement"]),
        "depth3_agreement": (agree[3]["agreement"], BAR["depth3_agreement"], agree[3]["agreement"] >= BAR["depth3_agreement"]),
        "depth1_auroc": (agree[1]["auroc"], BAR["depth1_auroc"], agree[1]["auroc"] >= BAR["depth1_auroc"]),
        "loop_share": (report["loop_share"], BAR["loop_share"], report["loop_share"] <= BAR["loop_share"]),
    }
    return report


def _lineage_lines(init: dict | None) -> list[str]:
    """The training stages before a fine-tune, oldest last (each card keeps the one it started from)."""
    lines = []
    while init:
        tr = init.get("training", {})
        lines.append(f"- Started from `{init.get('path')}` (weights sha256 `{str(init.get('weights_sha256'))[:16]}`), "
                     f"itself trained {tr.get('tokens_seen')} tokens, {tr.get('wall_clock_s')} s on {tr.get('device')}"
                     + (f": `{tr['command']}`" if tr.get("command") else ""))
        init = tr.get("init_from")
    return lines


def model_card_markdown(card: dict) -> str:
    """A short human-readable model card from the JSON card."""
    ev = card.get("evaluation", {})
    arch = card.get("architecture", {})
    tr = card.get("training", {})
    lines = [
        f"# Model card: {card.get('name', 'model')}",
        "",
        "A Llama-architecture causal LM with DeepSeek-V3-style MTP layers (transformers `MtpModel`), trained on the",
        "Python standard library (split by top-level module; test code used as extra training text only).",
        "",
        f"- Backbone: {arch.get('num_hidden_layers')} layers, hidden {arch.get('hidden_size')}, "
        f"vocab {arch.get('vocab_size')}; MTP layers: {arch.get('num_mtp_layers')}",
        f"- Parameters: target {card.get('parameters', {}).get('target')}, MTP {card.get('parameters', {}).get('mtp')}",
        f"- Training: {tr.get('tokens_seen')} tokens seen, exported at step {tr.get('exported_step')} of "
        f"{tr.get('steps')} (best validation), {tr.get('wall_clock_s')} s on {tr.get('device')}",
        f"- Training corpus: CPython {card.get('corpus', {}).get('root_python')} standard library, fingerprint "
        f"`{card.get('corpus', {}).get('fingerprint', '')[:16]}`; evaluation corpus fingerprint "
        f"`{ev.get('corpus_fingerprint', '')[:16]}` (same module split: a module's split is a hash of its name)",
        f"- `load_model` time at evaluation: {ev.get('load_seconds')} s",
        *([f"- Training command: `{tr['command']}`"] if tr.get("command") else []),
        *_lineage_lines(tr.get("init_from")),
        *[f"- Note: {n}" for n in card.get("notes", [])],
        "",
        "## Measured on the test split (`python -m experiments.evaluate_model`)",
        "",
        "| figure | value | bar |",
        "|---|---|---|",
    ]
    for k, (v, bar, ok) in ev.get("bar", {}).items():
        lines.append(f"| {k} | {v:.3f} | {'<=' if k == 'loop_share' else '>='} {bar} {'(met)' if ok else '(NOT met)'} |")
    lines += ["", "| depth | agreement | conditional acceptance | chain acceptance | AUROC |", "|---|---|---|---|---|"]
    for j, d in ev.get("depths", {}).items():
        lines.append(f"| {j} | {d['agreement']:.3f} | {d['conditional_acceptance']:.3f} | "
                     f"{d['chain_acceptance']:.3f} | {d['auroc']:.3f} |")
    return "\n".join(lines) + "\n"


def drafter_card_lines(model_dir: Path) -> list[str]:
    """The Medusa heads' and the draft model's cards (``medusa/card.json``, ``draft/card.json`` beside the model), as
    markdown sections: what was trained, with which command, and what it measured on the test split."""
    lines = []
    medusa = model_dir / "medusa" / "card.json"
    if medusa.exists():
        c = json.loads(medusa.read_text())
        lines += ["", f"## Medusa heads (`medusa/`, {c['num_heads']} heads, {c['parameters']} parameters, "
                  f"{sum(c['files_bytes'].values())} bytes)", "",
                  f"Trained by `{c['command']}` on the frozen target's greedy continuations of "
                  f"{c['train_split']}-split prompts; measured on the {c['eval_split']} split.", "",
                  "| depth | agreement with the target's greedy token (untrained heads) |", "|---|---|"]
        lines += [f"| {j} | {d['agreement']:.3f} ({d['untrained']:.3f}) |" for j, d in c["agreement_by_depth"].items()]
        dec = c["decode"]
        lines += ["", f"Decoding {dec['prompts']} test prompts x {dec['max_new_tokens']} tokens with {dec['policy']}: "
                  f"TPF {dec['tpf']:.2f}."]
    draft = model_dir / "draft" / "card.json"
    if draft.exists():
        c = json.loads(draft.read_text())
        ev, arch = c["evaluation"], c["architecture"]
        lines += ["", f"## Draft model (`draft/`, {arch['num_layers']} layers, {c['parameters_own']} own parameters, "
                  f"{sum(c['file_bytes'].values())} bytes; shares the {arch['shares']})", "",
                  f"Trained by `{c['training']['command']}` ({c['training']['steps']} steps, "
                  f"{c['training']['wall_clock_s']:.0f} s); measured on {ev['prompts']} test prompts x "
                  f"{ev['max_new_tokens']} tokens with {ev['policy']}.", "",
                  "| drafter | TPF | acceptance at depth 1 / 2 / 3 / 4 |", "|---|---|---|"]
        for name, key in (("draft model", "draft"), ("MTP layers (same prompts)", "mtp_baseline")):
            if key in ev:
                acc = " / ".join(f"{a:.3f}" for a in ev[key]["acceptance_by_depth"])
                lines.append(f"| {name} | {ev[key]['tpf']:.2f} | {acc} |")
        if "teacher_forced_agreement" in ev.get("draft", {}):
            lines += ["", f"Teacher-forced next-token agreement with the target: "
                      f"{ev['draft']['teacher_forced_agreement']:.3f}."]
    return lines


def write_card(model_name: str, report: dict) -> Path:
    d = Path(resolve_model_path(model_name))
    card_path = d / "model_card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {"name": model_name}
    card["evaluation"] = {k: report[k] for k in ("next_token", "depths", "loop_share", "n_generations", "bar",
                                                 "test_tokens", "corpus_fingerprint", "config",
                                                 "load_seconds")}
    tmp = card_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, card_path)
    (d / "MODEL_CARD.md").write_text(model_card_markdown(card) + "\n".join(drafter_card_lines(d)) + "\n")
    return card_path


def validate(cfg) -> None:
    for key in ("n_windows", "window_tokens", "n_prompts", "prompt_tokens", "new_tokens", "depths", "threads"):
        if getattr(cfg, key) < 1:
            raise UserError(f"{key}={getattr(cfg, key)} is invalid; allowed: an integer >= 1")
    checks.check_model(cfg.model)


def execute(cfg: DictConfig, run_dir: Path) -> dict:
    c: EvaluateConfig = OmegaConf.to_object(cfg)
    validate(c)
    report = evaluate(c)
    out = run_dir / "report.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    for k, (v, bar, ok) in report["bar"].items():
        print(f"{k:>18}: {v:.3f}  (bar {bar}) {'ok' if ok else 'NOT MET'}")
    for j, d in report["depths"].items():
        print(f"  depth {j}: agreement {d['agreement']:.3f}  cond {d['conditional_acceptance']:.3f}  "
              f"chain {d['chain_acceptance']:.3f}  auroc {d['auroc']:.3f}")
    if c.write_card:
        print(f"card updated: {write_card(c.model.path, report)}")
    print(f"report: {out}")
    return report


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate_model")
def app(cfg: DictConfig) -> dict:
    return run_task(cfg, execute)


def main() -> None:
    preflight("evaluate_model", validate, ("model",))
    app()


if __name__ == "__main__":
    main()
