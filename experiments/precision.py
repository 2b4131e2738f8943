"""What lossless means in half precision, measured: every lossless built-in policy against ``generate()`` per dtype.

    python -m experiments.precision                               # 100 stdlib prompts x 64 tokens, bf16 and fp16
    python -m experiments.precision 'dtypes=[bfloat16]' data.n_prompts=20
    python -m experiments.precision model=hf model.path=DIR model.device=cuda 'dtypes=[bfloat16,float32]'

For each dtype the model is loaded in it, every prompt is decoded by transformers' ``generate(do_sample=False)``
(the reference) and by each lossless policy; every output that leaves the reference is classified at its first
differing position as a numerical near-tie or a mismatch (``specpolicy.decoding.precision``: the target's float32
gap between the two tokens on the reference's prefix, against ``NEAR_TIE_MARGIN * eps(dtype) * max|z|``), and every
output passes the self-consistency check (each committed verified/target token is the float32 argmax or within the
tolerance of it). The rounding itself is measured too: the largest difference between a logit from a block forward
(4 tokens) and from one-token forwards, in units of eps(dtype) * max|z|, the figure the margin rests on.
Writes ``precision.json`` and ``precision.md``; a lossless policy with any mismatch is printed as a BUG.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from experiments.common import CONF_DIR, DataConf, DrafterConf, ModelConf, UserError, preflight, run_task

LOSSLESS = ["ar", "fixed:{\"k\": 2}", "fixed:{\"k\": 4}", "threshold", "entropy", "heuristic", "calibrated"]


@dataclass
class PrecisionConfig:
    model: ModelConf = field(default_factory=ModelConf)
    drafter: DrafterConf = field(default_factory=DrafterConf)
    data: DataConf = field(default_factory=lambda: DataConf(n_prompts=100))
    dtypes: list = field(default_factory=lambda: ["bfloat16", "float16"])
    max_new_tokens: int = 64
    policies: list = field(default_factory=lambda: list(LOSSLESS))
    probe_prompts: int = 8  # prompts whose block-vs-one-token logit rounding is measured
    threads: int = 1  # one or two is faster by machine and load (README "Speed")


ConfigStore.instance().store(name="precision_schema", node=PrecisionConfig)


def validate(cfg) -> dict:
    from experiments.common import parse_policy_spec
    from specpolicy.models.loading import DTYPES
    from specpolicy.runs import checks

    for d in cfg.dtypes:
        if d not in DTYPES:
            raise UserError(f"dtypes: {d} is unknown; allowed: {', '.join(DTYPES)}")
    if cfg.max_new_tokens < 1 or cfg.threads < 1 or cfg.probe_prompts < 0:
        raise UserError("max_new_tokens and threads must be >= 1, probe_prompts >= 0")
    checks.check_model(cfg.model)
    checks.check_data(cfg.data)
    policies = dict(parse_policy_spec(s) for s in cfg.policies)
    lossy = [label for label, p in policies.items() if not p.lossless]
    if lossy:
        raise UserError(f"policies {', '.join(lossy)} are lossy; allowed: lossless policies (the check is theirs)")
    return policies


def rounding_probe(model, prompts, n: int, block: int = 4) -> float:
    """max over positions of |z_block - z_one-token| / (eps * max|z|): block forwards of ``block`` tokens vs one-token
    forwards after the same cached prefix (the prompt's first half), in the model's dtype."""
    import torch
    from transformers import DynamicCache

    body, head = model.target.get_decoder(), model.target.get_output_embeddings()
    eps, worst = torch.finfo(model.dtype).eps, 0.0
    with torch.inference_mode():
        for p in prompts[:n]:
            ids = torch.tensor([list(p.ids)], device=model.device)
            start = ids.shape[1] // 2
            caches = [DynamicCache(config=model.target.config) for _ in range(2)]
            for c in caches:
                body(input_ids=ids[:, :start], cache=c)
            for s in range(start, ids.shape[1] - block + 1, block):
                blk = head(body(input_ids=ids[:, s : s + block], cache=caches[0]).last_hidden_state)[0].float()
                for r in range(block):
                    one = head(body(input_ids=ids[:, s + r : s + r + 1], cache=caches[1]).last_hidden_state)[0, 0]
                    worst = max(worst, float((blk[r] - one.float()).abs().max() / (eps * one.float().abs().max())))
    return worst


def measure(cfg, policies: dict, dtype: str) -> dict:
    import torch
    from tqdm.auto import tqdm

    from specpolicy import generate
    from specpolicy.runs import checks
    from specpolicy.testing import classify_divergence, hf_greedy, self_consistency

    model = checks.load(OmegaConf.merge(cfg.model, {"dtype": dtype}), cfg.drafter)
    prompts, _ = checks.prompts_for(cfg.data, model.tokenizer)
    rows = {label: {"prompts": 0, "exact": 0, "near_tie": 0, "mismatch": 0, "gaps": [], "tolerances": [],
                    "consistency_checked": 0, "consistency_not_argmax": 0, "consistency_mismatches": 0}
            for label in policies}
    for p in tqdm(prompts, desc=f"precision {dtype}", unit="prompt", dynamic_ncols=True):
        ids = list(p.ids)
        ref = hf_greedy(model, ids, cfg.max_new_tokens)
        for label, policy in policies.items():
            res = generate(model, ids, policy, max_new_tokens=cfg.max_new_tokens)
            d = classify_divergence(model, ids, res.token_ids, ref)
            c = self_consistency(model, res)
            r = rows[label]
            r["prompts"] += 1
            r[d.kind] += 1
            if d.kind != "exact":
                r["gaps"].append(round(d.gap, 5))
                r["tolerances"].append(round(d.tolerance, 5))
            r["consistency_checked"] += c.checked
            r["consistency_not_argmax"] += c.not_argmax
            r["consistency_mismatches"] += len(c.mismatches)
    return {"dtype": dtype, "eps": torch.finfo(model.dtype).eps, "rounding_max_over_eps_z":
            rounding_probe(model, prompts, cfg.probe_prompts), "policies": rows}


def markdown(results: list[dict], cfg) -> str:
    from specpolicy.testing import NEAR_TIE_MARGIN

    lines = [f"Lossless policies vs generate(do_sample=False): {cfg.data.n_prompts} prompts x {cfg.max_new_tokens} "
             f"tokens; near-tie tolerance = {NEAR_TIE_MARGIN} x eps(dtype) x max|z| (float32 logits)", ""]
    for res in results:
        lines += [f"### {res['dtype']} (eps = {res['eps']:.3g}; largest block-vs-one-token logit difference "
                  f"{res['rounding_max_over_eps_z']:.2f} eps max|z|)", "",
                  "| policy | exact | near-tie | mismatch | gaps at the divergence (tolerance) | self-consistency: "
                  "checked / not argmax / mismatches |", "|---|---|---|---|---|---|"]
        for label, r in res["policies"].items():
            gaps = ", ".join(f"{g:.3f} ({t:.3f})" for g, t in zip(r["gaps"], r["tolerances"])) or "-"
            lines.append(f"| {label} | {r['exact']} | {r['near_tie']} | {r['mismatch']} | {gaps} | "
                         f"{r['consistency_checked']} / {r['consistency_not_argmax']} / "
                         f"{r['consistency_mismatches']} |")
        lines.append("")
    return "\n".join(lines)


def execute(cfg: DictConfig, run_dir: Path) -> list[dict]:
    import torch

    policies = validate(cfg)
    torch.set_num_threads(cfg.threads)
    results = [measure(cfg, policies, d) for d in cfg.dtypes]
    (run_dir / "precision.json").write_text(json.dumps({"config": OmegaConf.to_container(cfg), "results": results},
                                                       indent=1) + "\n")
    text = markdown(results, cfg)
    (run_dir / "precision.md").write_text(text)
    print(text)
    for res in results:
        for label, r in res["policies"].items():
            if r["mismatch"] or r["consistency_mismatches"]:
                print(f"BUG: {label} in {res['dtype']}: {r['mismatch']} mismatches against generate(), "
                      f"{r['consistency_mismatches']} self-consistency mismatches")
    print(f"results: {run_dir}")
    return results


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="precision")
def app(cfg: DictConfig) -> list[dict]:
    return run_task(cfg, execute)


def main() -> None:
    preflight("precision", validate, ("model", "drafter", "data"))
    app()


if __name__ == "__main__":
    main()
