"""Replay vs real decoding, side by side: is the trace simulator exact for lossless policies, and how far off for lossy?

    python -m experiments.replay_report trace=runs/record/<dir>/trace.safetensors
    python -m experiments.replay_report trace=... n_prompts=5 'policies=[threshold:{"tau_trust":0.9}]'

For every policy (default: each registered policy at its defaults plus a few parameter sets), the trace's prompts are
decoded for real (``generate(..., max_new_tokens=N, max_draft=K, engine=<the trace's>)``, interleaved with ``ar`` by the shared harness)
and replayed (``specpolicy.replay.compare``). Lossless policies must agree exactly per prompt (steps, new tokens,
accepted-length histogram, acceptance by depth); lossy ones are shown side by side (TPF, lossy error rate), since
their replay is an approximation (see ``specpolicy.replay.simulate``).

Time: the cost model is read off calibration runs decoded interleaved with the policies on the same prompts
(``cost=interleaved``, the default): ``ar`` and ``sweeps`` schedules that draft 1..K tokens in a random order per
step (``decoding.cost.sweep_policies``, ``fit_cost``: verify time per block size, draft time per draft and per
caught-up row, time outside both), so drift of the machine's speed during the report hits the cost model and the
policies alike. ``cost=measure``: measured in this process just before decoding (``loop_reps`` rounds of ar and the
sweeps after the first prompt and its continuation; ``loop_reps=0``: isolated forward timings); ``cost=trace``: the
trace's own. A cost-aware policy (``goodput``) decides with the trace's cost model (``cost=measure``: the measured
one), in the real run and in its replay alike. Beside each policy's measured decode-phase speedup over ``ar``
(prefill excluded, as in the model) stand the modelled speedup (with overhead: what replay and tuning predict) and
the ceiling (model compute only: TPF x t_step(0) / mean t_step(m)), and their ratios. Writes ``replay_report.md``,
``replay_report.csv`` and ``cost.json`` to the run directory. Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from experiments.common import CONF_DIR, DrafterConf, ModelConf, UserError, parse_policy_spec, preflight, run_task
from specpolicy.policies import list_policies

PARAM_SETS = {
    "fixed": [{"k": 2}, {"k": 6}],
    "threshold": [{"tau_extend": 0.3, "k_max": 8}, {"tau_extend": 0.7}, {"tau_trust": 0.9},
                  {"tau_extend": 0.3, "tau_trust": 0.7, "k_max": 8}],
    "entropy": [{"max_entropy": 0.5}, {"max_entropy": 2.0, "k_max": 8}],
    "heuristic": [{"k_init": 2, "k_max": 8}],
    "typical": [{"eps": 0.2, "delta": 0.5}],
    "topk_relaxed": [{"k_top": 5, "delta": 2.0}],
}


def default_specs() -> list[str]:
    """Every registered policy at its defaults, plus ``PARAM_SETS``: ``name`` or ``name:{json params}``."""
    out = []
    for name in list_policies():
        out.append(name)
        out += [f"{name}:{json.dumps(p)}" for p in PARAM_SETS.get(name, [])]
    return out


@dataclass
class ReportConfig:
    trace: str = ""  # a trace from experiments.record (required)
    model: ModelConf = field(default_factory=ModelConf)
    drafter: DrafterConf = field(default_factory=DrafterConf)  # must be the trace's (checked)
    n_prompts: int = 0  # 0: every prompt of the trace
    policies: list = field(default_factory=default_specs)
    threads: int = 1  # one or two is faster by machine and load (README "Speed")
    cost: str = "interleaved"  # interleaved: calibration runs among the policies | measure: before decoding | trace
    sweeps: int = 4  # interleaved: calibration schedules decoded per prompt beside ar
    cost_reps: int = 20  # measure, interleaved: repetitions of each isolated model-part timing
    loop_reps: int = 2  # measure: rounds of decoder runs the cost model is read from; 0: isolated timings only


ConfigStore.instance().store(name="replay_report_schema", node=ReportConfig)


def validate(cfg) -> dict:
    """The policies to compare ({label: policy}); the trace and the model are checked when they are loaded."""
    if not cfg.trace:
        raise UserError("trace is missing; allowed: trace=<file from python -m experiments.record>")
    if cfg.n_prompts < 0:
        raise UserError(f"n_prompts={cfg.n_prompts} is invalid; allowed: 0 (all) or >= 1")
    if cfg.cost not in ("interleaved", "measure", "trace"):
        raise UserError(f"cost={cfg.cost} is unknown; allowed: interleaved, measure, trace")
    if cfg.cost_reps < 1 or cfg.loop_reps < 0 or cfg.sweeps < 1:
        raise UserError(f"cost_reps={cfg.cost_reps}, loop_reps={cfg.loop_reps}, sweeps={cfg.sweeps} are invalid; "
                        "allowed: cost_reps >= 1, loop_reps >= 0, sweeps >= 1")
    return dict(parse_policy_spec(s) for s in cfg.policies)


def execute(cfg: DictConfig, run_dir: Path) -> list[dict]:
    import pandas as pd
    import torch

    from specpolicy.decoding.cost import fit_cost, measure_cost, prices_rows, speedups, sweep_policies
    from specpolicy.policies import with_step_cost
    from specpolicy.replay import compare_row, decode_real, load_trace, markdown
    from specpolicy.runs import checks

    policies = validate(cfg)
    trace = load_trace(cfg.trace)
    if cfg.n_prompts:
        trace = trace.select(range(min(cfg.n_prompts, trace.n_prompts)))
    torch.set_num_threads(cfg.threads)
    model = checks.load(cfg.model, cfg.drafter)
    trace.check_model(model)
    t0 = time.perf_counter()
    ctx, engine = list(trace.prompt_ids[0]) + [int(t) for t in trace.tokens[0]], trace.meta.get("engine", "auto")
    if cfg.cost == "measure":
        trace = dataclasses.replace(trace, cost=measure_cost(model, ctx, trace.k_max, cfg.cost_reps,
                                                             loop_reps=cfg.loop_reps, loop_tokens=trace.max_new_tokens,
                                                             engine=engine))
    # the numbers a cost-aware policy decides with, in the real run and in its replay
    policies = {label: with_step_cost(p, trace.cost) for label, p in policies.items()}
    sweeps = sweep_policies(trace.k_max, cfg.sweeps) if cfg.cost == "interleaved" else {}
    compute = measure_cost(model, ctx, trace.k_max, cfg.cost_reps, engine=engine) if sweeps else None
    results, ar = decode_real(model, trace, {**policies, **sweeps})
    if sweeps:  # the cost model of the calibration runs decoded among the policies
        runs = [r for label in sweeps for r in results.pop(label)]
        trace = dataclasses.replace(trace, cost=fit_cost(ar, runs, trace.k_max, compute, prices_rows(model)))
    (run_dir / "cost.json").write_text(json.dumps({"source": cfg.cost, **trace.cost.to_dict()}, indent=2))
    rows = []
    for label, p in policies.items():
        row = compare_row(label, p, trace, results[label], ar)
        row.update({f"speedup_{k}": v for k, v in speedups(results[label], ar, trace.cost).items()})
        rows.append(row)
    pd.DataFrame(rows).to_csv(run_dir / "replay_report.csv", index=False)
    text = (markdown(rows, trace) + "\n" + _time_table(rows, trace.cost, cfg.cost)
            + f"\ndecoding took {time.perf_counter() - t0:.0f} s ({cfg.threads} threads).\n")
    (run_dir / "replay_report.md").write_text(text)
    print(text)
    print(f"results: {run_dir}")
    return rows


def _time_table(rows: list[dict], cost, source: str) -> str:
    """Measured decode-phase speedup beside the modelled one and the ceiling, per policy (markdown)."""
    t1 = cost.t_target[0]
    lines = [f"Cost model ({source}): t_target(1) = {t1 * 1e3:.2f} ms, c(m) = "
             + ", ".join(f"{cost.c(m):.2f}" for m in range(1, len(cost.t_target) + 1))
             + f"; drafter step {cost.t_mtp / t1:.2f} (+ {cost.t_first / t1:.2f} per draft phase), loop overhead "
             f"{cost.t_overhead / t1:.2f} per step + {cost.t_overhead_draft / t1:.2f} per draft (x t_target(1)); each "
             f"catch-up row of a draft beyond its first {cost.t_row * 1e6:.1f} us, of a depth's first draft over the "
             f"context {(cost.t_ctx or cost.t_row) * 1e6:.1f} us.", "",
             "| policy | lossless | measured speedup | modelled | measured / modelled | ceiling | measured / ceiling |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['lossless']} | {r['speedup_measured']:.3f} | {r['speedup_modelled']:.3f} | "
                     f"{r['speedup_measured_over_modelled']:.3f} | {r['speedup_ceiling']:.3f} | "
                     f"{r['speedup_measured_over_ceiling']:.3f} |")
    lines += ["", "decode phase (prefill and its token excluded) of all three; measured: tokens/s vs ar decoded "
              "interleaved in this process; modelled: TPF x t_step(0) / mean t_step(m) with the whole step; ceiling: "
              "the same without the loop's time outside the draft and verify phases (t_overhead)."]
    return "\n".join(lines) + "\n"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="replay_report")
def app(cfg: DictConfig) -> list[dict]:
    return run_task(cfg, execute)


def main() -> None:
    preflight("replay_report", validate, ("model", "drafter"))
    app()


if __name__ == "__main__":
    main()
