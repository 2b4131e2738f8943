"""Lossy policies on one speed-versus-quality table, each against ar on the same prompts, with 95% intervals.

    python -m experiments.compare_lossy                                   # threshold(tau_trust=0.9), typical, topk_relaxed
    python -m experiments.compare_lossy 'policies=["typical:{\"eps\": 0.2}"]' data.n_prompts=40

Every prompt is decoded by ``ar`` and by each policy of ``policies`` (``name`` or ``name:{json params}``), interleaved,
with the target NLL of every output (the runner's ``decode_run``; records append atomically, so the same command with
the same ``hydra.run.dir`` resumes). Writes ``summary.json`` (``specpolicy.metrics.summary``) and prints the lossy
table (``specpolicy.metrics.lossy_table``): TPF, errors per trusted / relaxed / committed token, first error, first
divergence from ar, NLL delta against ar and the total-variation bound. Bad input is one line and exit code 2.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from experiments.common import (
    CONF_DIR,
    DataConf,
    DecodeConf,
    ModelConf,
    UserError,
    parse_policy_spec,
    preflight,
    run_task,
)


@dataclass
class CompareLossyConfig:
    policies: list[str] = field(default_factory=lambda: ['threshold:{"tau_trust": 0.9}', "typical", "topk_relaxed"])
    model: ModelConf = field(default_factory=ModelConf)
    data: DataConf = field(default_factory=DataConf)
    decode: DecodeConf = field(default_factory=DecodeConf)
    drafter: str = "mtp"
    threads: int = 1  # one or two is faster by machine and load (README "Speed")
    bootstrap: int = 2000


ConfigStore.instance().store(name="compare_lossy_schema", node=CompareLossyConfig)


def plan_of(cfg):
    """The ``RunPlan``: ar first, then every policy of ``cfg.policies`` (one-line ``UserError`` for a bad one)."""
    from specpolicy.runs import checks
    from specpolicy.runs.arms import Arm
    from specpolicy.runs.checks import RunPlan

    if not cfg.policies:
        raise UserError("policies is empty; allowed: a list of name or name:{json params}")
    arms = [Arm("ar", "ar", {}, "baseline")]
    for spec in cfg.policies:
        label, policy = parse_policy_spec(spec)
        if label in {a.label for a in arms}:
            raise UserError(f"policy {label} is listed twice; allowed: each policy once")
        arms.append(Arm(label, policy.name, policy.params(), "policy"))
    checks.check_model(cfg.model)
    checks.check_data(cfg.data)
    drafter = checks.drafter_spec(cfg.drafter)
    settings = {k: OmegaConf.to_container(OmegaConf.structured(getattr(cfg, k))) for k in ("model", "data", "decode")}
    key = hashlib.sha256(json.dumps({**settings, "drafter": drafter}, sort_keys=True).encode()).hexdigest()[:16]
    return RunPlan(tuple(arms), *(SimpleNamespace(**settings[k]) for k in ("model", "data", "decode")),
                   threads=cfg.threads, nll=True, bootstrap=cfg.bootstrap, run_key=key, drafter=drafter)


def execute(cfg: DictConfig, run_dir: Path) -> dict:
    import torch

    from specpolicy.metrics import lossy_table
    from specpolicy.runs import checks, runner

    c = OmegaConf.to_object(cfg)
    plan = plan_of(c)
    store = runner.open_store(run_dir, plan)
    torch.set_num_threads(plan.threads)
    model = checks.load(plan.model, plan.drafter)
    prompts, _ = checks.prompts_for(plan.data, model.tokenizer)
    runner.decode_run(plan, model, prompts, store)
    summary = runner.summarise_store(plan, store, run_dir)
    print(lossy_table(summary, [a.label for a in plan.arms[1:]]))
    print(f"results: {run_dir}")
    return summary


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="compare_lossy")
def app(cfg: DictConfig) -> dict:
    return run_task(cfg, execute)


def main() -> None:
    preflight("compare_lossy", lambda cfg: plan_of(OmegaConf.to_object(cfg)))
    app()


if __name__ == "__main__":
    main()
