"""Tune a policy's thresholds with Optuna on a replay trace (a trial costs milliseconds), then re-measure for real.

    python -m experiments.tune policy=threshold                         # records a small trace first (20 prompts)
    python -m experiments.tune policy=threshold trace=runs/record/<dir>/trace.safetensors study.n_trials=500
    python -m experiments.tune policy=threshold study=constrained study.epsilon=0.01     # max speed s.t. error <= eps
    python -m experiments.tune policy=entropy study.speed_metric=tpf study.sampler=tpe
    python -m experiments.tune policy=threshold 'study.fixed_params={tau_trust: 1.0}'     # the lossless variant only
    python -m experiments.tune policy=threshold trace=T study.storage=journal:runs/thr.log study.name=thr study.seed=1
    python -m experiments.tune policy=threshold trace=T study.storage=postgresql://user@host/db study.name=thr
    python -m experiments.tune bench_replay=true trace=T                # replay speed of every policy (a benchmark)

Each policy's ``search_space(trial)`` defines its parameters; other parameters come from ``policy.<param>``.
``study.mode=multi`` maximises speed (``study.speed_metric``: ``speedup`` = modelled speedup vs ar from the trace's
cost model, or ``tpf``) and minimises the lossy error rate (NSGA-II by default, ``study.sampler=tpe|random``);
``study.mode=constrained`` maximises speed subject to error <= ``study.epsilon``. Trials are evaluated by replay
(``study.evaluator=replay``) or by real decoding of a few prompts (``decode``). Storage: ``sqlite:///<run
dir>/study.db`` by default (``optuna-dashboard`` opens it), any RDB URL, or ``journal:<file>`` for several workers;
a study with the same ``study.name`` is resumed (and refuses trials of another objective definition or package
version). Several workers: record a trace once and give each ``trace=...``, the same storage and name, and its own
``study.seed``. The study itself is library code: ``specpolicy.tuning``.

Afterwards the Pareto set (multi) or the feasible front (constrained) is decoded for real on the shipped model
(``study.remeasure_prompts`` trace prompts, at most ``study.remeasure_max`` trials spread along the front) and
``pareto.csv`` (replayed vs real TPF / error / speedup), ``pareto.png``, ``trials.csv`` and ``summary.json`` are
written. Bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import optuna
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from experiments.common import (
    CONF_DIR,
    DataConf,
    DrafterConf,
    ModelConf,
    TraceConf,
    UserError,
    check_recording,
    preflight,
    record_into,
    run_task,
)
from specpolicy.tuning import StudyConf, check_study

GROUPS = ("policy", "model", "drafter", "data", "study")


@dataclass
class TuneConfig:
    policy: Any = MISSING  # {name: <registered policy>, <param>: value}: conf/policy/<name>.yaml
    model: ModelConf = field(default_factory=ModelConf)  # decode evaluator and re-measuring
    drafter: DrafterConf = field(default_factory=DrafterConf)  # must be the trace's (checked)
    data: DataConf = field(default_factory=DataConf)  # prompts of the trace recorded when trace is ""
    record: TraceConf = field(default_factory=TraceConf)
    study: StudyConf = field(default_factory=StudyConf)
    trace: str = ""  # a trace from experiments.record; "": record one into the run directory first
    max_new_tokens: int = 0  # replay horizon; 0: the trace's N
    threads: int = 1  # one or two is faster by machine and load (README "Speed")
    bench_replay: bool = False  # time replay of every registered policy on the trace, then exit


ConfigStore.instance().store(name="tune_schema", node=TuneConfig)


def base_params(cfg) -> dict:
    return {k: v for k, v in OmegaConf.to_container(cfg.policy, resolve=True).items() if k != "name"}


def recording_config(cfg) -> DictConfig:
    """What a recording needs (TraceConf fields, model, data, threads) from a tune config."""
    return OmegaConf.create({**OmegaConf.to_container(cfg.record), "model": cfg.model, "drafter": cfg.drafter,
                             "data": cfg.data, "threads": cfg.threads})


def validate(cfg) -> None:
    for ok, message in (
        (cfg.max_new_tokens >= 0, f"max_new_tokens={cfg.max_new_tokens} is invalid; allowed: 0 (trace's) or >= 1"),
        (cfg.threads >= 1, f"threads={cfg.threads} is invalid; allowed: an integer >= 1"),
    ):
        if not ok:
            raise UserError(message)
    check_study(cfg.study, cfg.policy.name, base_params(cfg), need_space=not cfg.bench_replay)
    if not cfg.trace:
        check_recording(recording_config(cfg))


def get_trace(cfg, run_dir: Path):
    from specpolicy.replay import load_trace
    from specpolicy.runs.checks import drafter_label_of

    if not cfg.trace:
        print(f"recording a trace ({cfg.data.n_prompts} prompts x {cfg.record.max_new_tokens} tokens, "
              f"K={cfg.record.probe_depth}) into {run_dir}")
        return record_into(recording_config(cfg), run_dir / "trace.safetensors")
    trace = load_trace(cfg.trace)
    mine = drafter_label_of(cfg.drafter)
    if mine != trace.drafter:
        raise UserError(f"the trace was recorded with drafter {trace.drafter}, not {mine}; allowed: "
                        f"the drafter {trace.drafter}, or a trace recorded with {mine}")
    if cfg.max_new_tokens > trace.max_new_tokens:
        raise UserError(f"max_new_tokens={cfg.max_new_tokens} exceeds the trace's {trace.max_new_tokens}; "
                        "allowed: 0 (the trace's) or less")
    return trace


def bench_replay(trace, run_dir: Path) -> dict:
    """Replay speed of every registered policy on the trace (``specpolicy.replay.replay_speed``), printed and saved."""
    from specpolicy.replay import replay_speed

    out = replay_speed(trace)
    print(f"replay benchmark: {trace.n_prompts} prompts x {trace.max_new_tokens} tokens, one process, median of "
          f"{out['reps']} interleaved rounds (list conversion once per trace: {out['rows_s']:.2f} s)")
    for name, r in out["policies"].items():
        lo, hi = (1e6 * r[k] / max(r["steps"], 1) for k in ("min_s", "max_s"))
        print(f"  {name:14s} {r['median_s']:7.3f} s  {r['steps']:6d} steps  {r['us_per_step']:6.1f} us/step "
              f"({lo:.1f}-{hi:.1f})  {r['steps_per_s'] / 1e3:7.1f}k steps/s  tpf {r['tpf']:.3f}")
    for name, why in out["skipped"].items():
        print(f"  {name:14s} skipped: {why}")
    (run_dir / "bench_replay.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def execute(cfg, run_dir: Path) -> dict:
    """Trace -> study -> front -> re-measure -> files."""
    import pandas as pd
    import torch

    from analysis.pareto import plot_pareto
    from specpolicy.runs import checks
    from specpolicy.tuning import (
        front_table,
        front_trials,
        make_evaluator,
        make_objective,
        open_storage,
        open_study,
        remeasure_table,
        remeasure_trials,
        spread,
    )

    validate(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    trace = get_trace(cfg, run_dir)
    if cfg.bench_replay:
        return bench_replay(trace, run_dir)
    s, name = cfg.study, cfg.policy.name
    max_new = cfg.max_new_tokens or trace.max_new_tokens
    model = None
    if s.evaluator == "decode" or s.remeasure_prompts:
        model = checks.load(cfg.model, cfg.drafter)
        trace.check_model(model)
    storage, where = open_storage(s.storage, run_dir)
    study = open_study(storage, s, name, trace, max_new)
    callbacks = []
    if s.max_trials:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
        callbacks.append(optuna.study.MaxTrialsCallback(s.max_trials, states=states))
    print(f"study {study.study_name!r} in {where}: {s.mode}, speed = {s.speed_metric}, evaluator = {s.evaluator}, "
          f"{len(study.trials)} trials already")
    t0 = time.perf_counter()
    objective = make_objective(s, name, base_params(cfg), make_evaluator(s, trace, max_new, model))
    study.optimize(objective, n_trials=s.n_trials, timeout=s.timeout_s, callbacks=callbacks,
                   show_progress_bar=True, gc_after_trial=False)
    study_s = time.perf_counter() - t0
    study.trials_dataframe().to_csv(run_dir / "trials.csv", index=False)
    front = front_trials(study, s.mode, s.epsilon)
    n_done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    print(f"\n{n_done} complete trials in the study; this process ran {s.n_trials} in {study_s:.1f} s "
          f"({1e3 * study_s / s.n_trials:.1f} ms per trial)")
    how = "replayed" if s.evaluator == "replay" else f"decoded on {s.decode_prompts} prompts"
    print(f"Pareto front ({len(front)} trials; speed = {s.speed_metric}, error = lossy error rate, {how}):")
    print(front_table(front, s.speed_metric))
    chosen = spread(front, s.remeasure_max)
    if s.remeasure_prompts and chosen:
        print(f"\nre-measuring {len(chosen)} front trials by real decoding on {s.remeasure_prompts} prompts ...")
        rows = remeasure_trials(name, chosen, trace, model, s.remeasure_prompts)
        print(remeasure_table(rows))
    else:
        rows = [{"trial": t.number, "params": json.dumps(t.params, sort_keys=True), "objective_speed": t.values[0],
                 "objective_error": t.user_attrs["lossy_error_rate"], "objective_tpf": t.user_attrs["tpf"]}
                for t in chosen]
    pd.DataFrame(rows).to_csv(run_dir / "pareto.csv", index=False)
    png = plot_pareto(run_dir, speed_metric=s.speed_metric)
    summary = {"study": study.study_name, "storage": where, "mode": s.mode, "speed_metric": s.speed_metric,
               "evaluator": s.evaluator, "trials_complete": n_done, "trials_this_process": s.n_trials,
               "study_s": study_s, "front": [t.number for t in front], "remeasured": rows,
               "trace": {"path": cfg.trace or str(run_dir / "trace.safetensors"), "prompts": trace.n_prompts,
                         "max_new_tokens": trace.max_new_tokens, "k_max": trace.k_max,
                         "cost": trace.cost.to_dict(), "model": trace.meta.get("model_fingerprint")}}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"results: {run_dir} (pareto.csv, {png.name}, trials.csv, summary.json)")
    return summary


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="tune")
def app(cfg: DictConfig) -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return run_task(cfg, execute)


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    preflight("tune", validate, GROUPS)
    app()


if __name__ == "__main__":
    main()
