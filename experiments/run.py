"""The first command: decode prompts with a speculation policy and measure it against ar and fixed baselines.

    python -m experiments.run policy=threshold                        # defaults: tiny model, 20 stdlib prompts
    python -m experiments.run policy=threshold policy.tau_trust=0.95  # lossy: trust confident drafts
    python -m experiments.run policy=fixed policy.k=4 decode=sampling
    python -m experiments.run policy=threshold drafter=medusa         # drafter=mtp | mtp_int8 | medusa | draft | ngram
    python -m experiments.run --multirun policy=fixed,threshold hydra/launcher=joblib
    python -m experiments.run --help                                  # groups, options, every parameter

Each prompt is decoded by every policy in turn (the requested one plus ``ar`` and ``fixed`` unless
``baselines=false``), so machine-load drift hits them alike. Results land in Hydra's run directory
(``hydra.run.dir=...``): ``records.jsonl`` (appended atomically; the same command with the same ``hydra.run.dir``
resumes a killed run), ``steps.parquet``, ``summary.json`` (see ``specpolicy.metrics.summary``),
``environment.json``, ``config.yaml`` and ``overview.png``.

compose -> ``specpolicy.runs.checks.validate`` (the plan) -> ``specpolicy.runs.runner`` (decode, summarise) -> files.
Bad input (unknown policy/model/data option, a parameter out of range, a missing file, ...) is one line on stderr
and exit code 2, checked before Hydra creates a results directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from experiments.common import CONF_DIR, DataConf, DecodeConf, DrafterConf, ModelConf, preflight, run_task
from specpolicy.runs import checks

GROUPS = ("policy", "model", "drafter", "data", "decode", "experiment")


@dataclass
class RunConfig:
    policy: Any = MISSING  # {name: <registered policy>, <param>: value ...}: one file per policy in conf/policy/
    model: ModelConf = field(default_factory=ModelConf)
    drafter: DrafterConf = field(default_factory=DrafterConf)  # conf/drafter/: mtp | mtp_int8 | medusa | draft | ngram
    data: DataConf = field(default_factory=DataConf)
    decode: DecodeConf = field(default_factory=DecodeConf)
    baselines: bool = True  # also decode ar and fixed(k) on the same prompts (speedup and quality reference)
    threads: int = 1  # torch.set_num_threads; one or two is faster by machine and load (README "Speed")
    nll: bool = True  # score every output with one teacher-forced target forward (target_nll)
    bootstrap: int = 2000  # bootstrap resamples for the 95% intervals in summary.json
    figure: bool = True  # write overview.png


ConfigStore.instance().store(name="run_schema", node=RunConfig)

_MODELS: dict[tuple, object] = {}


def _model(m, drafter: str):
    """Load once per process: the jobs of a --multirun sweep on the basic launcher share one process."""
    key = (m.path, m.device, m.dtype, drafter)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = checks.load(m, drafter)
    return _MODELS[key]


def execute(cfg: DictConfig, run_dir: Path) -> dict:
    """Validate, load, decode (resuming), summarise, write the figure and print the table."""
    import torch

    from specpolicy.decoding.cost import measure_cost
    from specpolicy.decoding.engine import check_engine
    from specpolicy.metrics import lossy_table
    from specpolicy.runs import environment_info, runner
    from specpolicy.runs.report import console_table

    plan = checks.validate(cfg)
    store = runner.open_store(run_dir, plan)  # before the (slow) model load
    torch.set_num_threads(plan.threads)
    model = _model(plan.model, plan.drafter)
    check_engine(model, plan.generate_kw["engine"])
    prompts, data_info = checks.prompts_for(plan.data, model.tokenizer)
    # a cost-aware arm (goodput) without step_cost gets the cost model measured here (or its recorded one on resume)
    plan = checks.fill_step_cost(plan, lambda: measure_cost(model, list(prompts[0].ids), k=8, reps=10, loop_reps=3,
                                                         loop_tokens=32, engine=plan.generate_kw["engine"]),
                                 store)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    env = environment_info(model, plan.threads, data_info)
    (run_dir / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    runner.decode_run(plan, model, prompts, store)
    divergences = runner.classify_divergences(plan, model, prompts, store, run_dir)
    summary = runner.summarise_store(plan, store, run_dir, divergences)
    if cfg.figure:
        from analysis.run_overview import plot_run_overview

        plot_run_overview(run_dir)
    print(console_table(summary, precision=str(model.dtype) not in ("torch.float32", "torch.float64")
                        or bool(divergences)))
    lossy = lossy_table(summary)  # lossy policies: errors per trusted/relaxed/committed token, NLL delta vs ar, ...
    if lossy:
        print(lossy)
    print(f"results: {run_dir}")
    return summary


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="run")
def app(cfg: DictConfig) -> dict:
    """The Hydra task: one run directory. Bad input -> one stderr line, exit 2, no empty results directory left."""
    return run_task(cfg, execute)


def main() -> None:
    """Check the command line (groups, parameters, files) before Hydra creates anything, then run the app."""
    preflight("run", checks.validate, GROUPS)
    app()


if __name__ == "__main__":
    main()
