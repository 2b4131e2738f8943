"""Validate the trust certificate with the real decoder: many random calibration/test splits of one pool of prompts.

    python -m experiments.validate_trust                                    # 200 prompts x 32 tokens x 5 taus
    python -m experiments.validate_trust hydra.run.dir=runs/validate_trust/main   # the same again: resumes

For every tau of ``taus`` (fixed in advance, most conservative first) the trusting policy ``threshold(tau_trust=tau,
tau_extend, k_max)`` -- or ``calibrated`` around it with ``calibrator=<name or path>`` -- decodes every prompt of the
pool once with the embedded model (greedy), plus the lossless ``threshold`` (tau_trust = 1) for the speed reference.
Records go to ``records.jsonl`` / ``steps.jsonl`` of the run directory as they are decoded (the runner's
``RecordStore``), so a killed run resumes. Then ``n_splits`` random splits certify a tau on ``cal_frac`` of the prompts
(``specpolicy.calibration.certify_trust``) and judge it on the rest, for each alpha
(``specpolicy.calibration.validate_trust``).

Writes ``table.parquet`` (one row per prompt and tau), ``validation.json`` and prints the table. Bad input is one line
on stderr and exit code 2. About 15 minutes on one idle CPU core, 30-40 on a loaded one (``threads=1``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from experiments.common import CONF_DIR, UserError, preflight, run_task


@dataclass
class ValidateTrustConfig:
    n_prompts: int = 200  # the pool split into calibration and test prompts
    prompt_tokens: int = 64
    max_new_tokens: int = 32
    data_split: str = "test"
    data_seed: int = 2  # not the runner's 0 nor calibrate's 1
    taus: list[float] = field(default_factory=lambda: [0.95, 0.9, 0.8, 0.7, 0.6])  # candidates, fixed in advance
    tau_extend: float = 0.5
    k_max: int = 6
    calibrator: Any = None  # null: raw q(d_j); else a calibrated policy with this calibrator (shipped name or path)
    alphas: list[float] = field(default_factory=lambda: [0.05, 0.1])
    delta: float = 0.1
    risk: str = "prompt"  # prompt | token (token: max_trusted = max_new_tokens)
    n_splits: int = 200
    cal_frac: float = 0.5
    split_seed: int = 0
    threads: int = 1


ConfigStore.instance().store(name="validate_trust_schema", node=ValidateTrustConfig)


def check(cfg: ValidateTrustConfig):
    """One-line ``UserError``s for every setting; returns the trusting arms plus the lossless reference."""
    from specpolicy.calibration import RISKS, trust_arms
    from specpolicy.policies import PolicyParamError, get_policy
    from specpolicy.runs.arms import Arm

    rules = [
        (cfg.n_prompts >= 4, f"n_prompts={cfg.n_prompts} is invalid; allowed: >= 4"),
        (cfg.max_new_tokens >= 2, f"max_new_tokens={cfg.max_new_tokens} is invalid; allowed: >= 2"),
        (cfg.prompt_tokens >= 1, f"prompt_tokens={cfg.prompt_tokens} is invalid; allowed: >= 1"),
        (cfg.data_split in ("test", "valid"), f"data_split={cfg.data_split} is invalid; allowed: test, valid"),
        (all(0 < a < 1 for a in cfg.alphas) and len(cfg.alphas) > 0,
         f"alphas={list(cfg.alphas)} is invalid; allowed: a non-empty list of values in (0, 1)"),
        (0 < cfg.delta < 1, f"delta={cfg.delta} is invalid; allowed: 0 < delta < 1"),
        (cfg.risk in RISKS, f"risk={cfg.risk} is unknown; allowed: {', '.join(RISKS)}"),
        (cfg.n_splits >= 1, f"n_splits={cfg.n_splits} is invalid; allowed: >= 1"),
        (0 < cfg.cal_frac < 1, f"cal_frac={cfg.cal_frac} is invalid; allowed: 0 < cal_frac < 1"),
        (cfg.threads >= 1, f"threads={cfg.threads} is invalid; allowed: >= 1"),
    ]
    for ok, message in rules:
        if not ok:
            raise UserError(message)
    base = {"tau_extend": cfg.tau_extend, "k_max": cfg.k_max}
    try:
        arms = trust_arms(list(cfg.taus), base, cfg.calibrator)
        lossless = get_policy("threshold", **base).params()
    except PolicyParamError as err:
        raise UserError(str(err)) from None
    except ValueError as err:
        raise UserError(str(err)) from None
    return [*arms, Arm("lossless", "threshold", lossless, "baseline")]


def execute(cfg: DictConfig, run_dir: Path) -> dict:
    import torch

    from specpolicy.calibration import trust_plan, trust_table, validate_trust, validation_table
    from specpolicy.runs import checks, runner

    c: ValidateTrustConfig = OmegaConf.to_object(cfg)
    arms = check(c)
    plan = trust_plan(arms, c.max_new_tokens, c.n_prompts, c.data_seed, c.prompt_tokens, c.data_split,
                      threads=c.threads)
    store = runner.open_store(run_dir, plan)
    torch.set_num_threads(c.threads)
    model = checks.load(plan.model, plan.drafter)
    prompts, _ = checks.prompts_for(plan.data, model.tokenizer)
    runner.decode_run(plan, model, prompts, store)
    table = trust_table(store)
    table.to_parquet(run_dir / "table.parquet", index=False)
    lossless = [r["stats"] for r in store.records if r["policy"] == "lossless"]
    lossless_tpf = sum(s["new_tokens"] for s in lossless) / sum(s["target_forwards"] for s in lossless)
    out = validate_trust(table, c.alphas, c.delta, c.n_splits, c.cal_frac, c.split_seed, c.risk,
                         c.max_new_tokens if c.risk == "token" else None)
    out["lossless_tpf"] = lossless_tpf
    out["config"] = OmegaConf.to_container(OmegaConf.structured(c))
    (run_dir / "validation.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(validation_table(out, lossless_tpf))
    print(f"results: {run_dir}")
    return out


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="validate_trust")
def app(cfg: DictConfig) -> dict:
    return run_task(cfg, execute)


def main() -> None:
    preflight("validate_trust", lambda cfg: check(OmegaConf.to_object(cfg)))
    app()


if __name__ == "__main__":
    main()
