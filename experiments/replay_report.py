"""Replay vs real decoding, side by side: is the trace simulator exact for lossless policies, and how far off for lossy?

    python -m experiments.replay_report trace=runs/record/<dir>/trace.safetensors
    python -m experiments.replay_report trace=... n_prompts=5 'policies=[threshold:{"tau_trust":0.9}]'

For every policy (default: each registered policy at its defaults plus a few parameter sets), the trace's prompts are
decoded for real (``generate(..., max_new_tokens=N, max_draft=K)``, policies interleaved per prompt with ``ar``
before and after each prompt for the wall-clock reference) and replayed. Lossless policies must agree exactly per
prompt (steps, new tokens, accepted-length histogram, acceptance by depth); lossy ones are shown side by side (TPF,
lossy error rate), since their replay is an approximation (see ``specpolicy.replay.simulate``). Writes
``replay_report.md`` and ``replay_report.csv`` to the run directory. Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: OpenMP busy-waiting makes CPU timings 10x noisier

import json  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from experiments.record import UserError, fail, preflight  # noqa: E402
from experiments.run import ModelConf  # noqa: E402
from specpolicy.policies import Policy, PolicyParamError, UnknownPolicyError, get_policy, list_policies  # noqa: E402
from specpolicy.replay import (  # noqa: E402
    Trace,
    TraceError,
    load_trace,
    prompt_from_generation,
    replay,
    summarise_generations,
)

PARAM_SETS = {
    "fixed": [{"k": 2}, {"k": 6}],
    "threshold": [{"tau_extend": 0.3, "k_max": 8}, {"tau_extend": 0.7}, {"tau_trust": 0.9},
                  {"tau_extend": 0.3, "tau_trust": 0.7, "k_max": 8}],
    "entropy": [{"max_entropy": 0.5}, {"max_entropy": 2.0, "k_max": 8}],
    "heuristic": [{"k_init": 2, "k_max": 8}],
    "typical": [{"eps": 0.2, "delta": 0.5}],
    "topk_relaxed": [{"k_top": 5, "delta": 2.0}],
}
PER_PROMPT = ("new_tokens", "steps", "accepted_hist", "accept_reached", "accept_ok", "shadow_rejects")


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
    n_prompts: int = 0  # 0: every prompt of the trace
    policies: list = field(default_factory=default_specs)
    threads: int = 2


ConfigStore.instance().store(name="replay_report_schema", node=ReportConfig)


def parse_spec(spec: str) -> tuple[str, Policy]:
    """``"threshold:{"tau_trust": 0.9}"`` -> (label, policy); one-line ``UserError`` for bad names/params."""
    name, _, raw = str(spec).partition(":")
    try:
        params = json.loads(raw) if raw else {}
        policy = get_policy(name, **params)
    except (UnknownPolicyError, PolicyParamError) as err:
        raise UserError(str(err)) from None
    except (json.JSONDecodeError, TypeError) as err:
        raise UserError(f"policy spec {spec!r}: parameters are not a JSON object ({err}); "
                        'allowed: name or name:{"param": value}') from None
    label = name + ("(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")
    return label, policy


def decode_real(model, trace: Trace, policies: dict[str, Policy], progress: bool = True) -> tuple[dict, list]:
    """Decode every trace prompt with every policy (rotated order per prompt), ``ar`` before and after each prompt.

    Returns ({label: [GenerationResult per prompt]}, [(ar result, mean ar wall s) per prompt]).
    """
    from tqdm.auto import tqdm

    from specpolicy import generate

    kw = {"max_new_tokens": trace.max_new_tokens, "max_draft": trace.k_max}
    ids0 = list(trace.prompt_ids[0])
    for p in list(policies.values()) + [get_policy("ar")]:  # warm-up: first calls pay lazy initialisation
        generate(model, ids0, p, max_new_tokens=min(8, trace.max_new_tokens), max_draft=trace.k_max)
    out = {label: [] for label in policies}
    ar = []
    labels = list(policies)
    for i, ids in enumerate(tqdm(trace.prompt_ids, desc="decode", unit="prompt", disable=not progress)):
        first = generate(model, list(ids), "ar", **kw)
        order = labels[i % max(len(labels), 1):] + labels[: i % max(len(labels), 1)]
        for label in order:
            out[label].append(generate(model, list(ids), policies[label], **kw))
        last = generate(model, list(ids), "ar", **kw)
        ar.append((first, (first.stats.wall_s + last.stats.wall_s) / 2))
    return out, ar


def compare(label: str, policy: Policy, trace: Trace, results: list, ar: list) -> dict:
    """One row: replayed vs real figures of ``policy`` on the trace's prompts (same prompts, same N and K)."""
    rep = replay(policy, trace)
    real = summarise_generations(results, trace.cost, trace.k_max, lossless=policy.lossless)
    same = 0
    for p_rep, res in zip(rep.prompts, results):
        p_real = prompt_from_generation(res, trace.cost, trace.k_max)
        same += all(_norm(getattr(p_rep, f)) == _norm(getattr(p_real, f)) for f in PER_PROMPT)
    new = sum(len(r.token_ids) for r in results)
    wall = sum(r.stats.wall_s for r in results)
    ar_rate = sum(len(r.token_ids) for r, _ in ar) / sum(w for _, w in ar)
    s = rep.summary
    return {
        "policy": label, "lossless": policy.lossless, "prompts": len(results), "prompts_equal": same,
        "exact": same == len(results), "approximate": s["approximate"],
        "replay_tpf": s["tpf"], "real_tpf": real["tpf"],
        "replay_error": s["lossy_error_rate"], "real_error": real["lossy_error_rate"],
        "replay_lossy_rate": s["lossy_token_rate"], "real_lossy_rate": real["lossy_token_rate"],
        "replay_mean_draft": s["mean_draft_len"], "real_mean_draft": real["mean_draft_len"],
        "replay_speedup": s["modelled_speedup"], "real_speedup_modelled": real["modelled_speedup"],
        "real_speedup_wall": (new / wall) / ar_rate if wall > 0 else float("nan"),
        "depth_capped_steps": s["depth_capped_steps"],
    }


def _norm(x):
    if isinstance(x, tuple | list):
        x = list(x)
        while x and x[-1] == 0:
            x.pop()
    return x


def markdown(rows: list[dict], trace: Trace) -> str:
    lines = [
        f"Replay vs real decoding: {rows[0]['prompts'] if rows else 0} prompts x {trace.max_new_tokens} new tokens, "
        f"max_draft = K = {trace.k_max}, model {trace.meta.get('model_fingerprint')}",
        "",
        "| policy | lossless | exact prompts | replay TPF | real TPF | replay err | real err | replay speedup* "
        "| real speedup* | real wall speedup | approx. |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['lossless']} | {r['prompts_equal']}/{r['prompts']} | {r['replay_tpf']:.3f} | "
            f"{r['real_tpf']:.3f} | {r['replay_error']:.4f} | {r['real_error']:.4f} | {r['replay_speedup']:.3f} | "
            f"{r['real_speedup_modelled']:.3f} | {r['real_speedup_wall']:.2f} | {r['approximate']} |")
    lines += ["", "*modelled with the trace's cost model c(m) (prefill excluded); wall speedup: tokens/s vs ar "
              "decoded around each prompt in the same process (noisy on a shared CPU)."]
    return "\n".join(lines) + "\n"


def run_report(cfg, run_dir: Path) -> list[dict]:
    import pandas as pd
    import torch

    from specpolicy.runs import checks

    try:
        trace = load_trace(cfg.trace)
    except TraceError as err:
        raise UserError(str(err)) from None
    if cfg.n_prompts:
        trace = trace.select(range(min(cfg.n_prompts, trace.n_prompts)))
    policies = dict(parse_spec(s) for s in cfg.policies)
    torch.set_num_threads(cfg.threads)
    try:
        model = checks.load(cfg.model)
    except checks.UserError as err:
        raise UserError(str(err)) from None
    check_model_matches(model, trace)
    t0 = time.perf_counter()
    results, ar = decode_real(model, trace, policies)
    rows = [compare(label, p, trace, results[label], ar) for label, p in policies.items()]
    pd.DataFrame(rows).to_csv(run_dir / "replay_report.csv", index=False)
    text = markdown(rows, trace) + f"\ndecoding took {time.perf_counter() - t0:.0f} s ({cfg.threads} threads).\n"
    (run_dir / "replay_report.md").write_text(text)
    print(text)
    print(f"results: {run_dir}")
    return rows


def remeasure_trials(name: str, trials: list, trace: Trace, model, n_prompts: int) -> list[dict]:
    """Decode Optuna trials of policy ``name`` for real on the first ``n_prompts`` trace prompts and replay the
    same prompts: one ``compare`` row per trial, plus its number, parameters and objective values."""
    sub = trace.select(range(min(n_prompts, trace.n_prompts)))
    policies = {f"trial {t.number}": get_policy(name, **t.user_attrs["figures"]["policy_params"]) for t in trials}
    results, ar = decode_real(model, sub, policies)
    rows = []
    for t in trials:
        label = f"trial {t.number}"
        row = compare(label, policies[label], sub, results[label], ar)
        row.update(trial=t.number, params=json.dumps(t.params, sort_keys=True), objective_speed=t.values[0],
                   objective_error=t.user_attrs["lossy_error_rate"], objective_tpf=t.user_attrs["tpf"])
        rows.append(row)
    return rows


def remeasure_table(rows: list[dict]) -> str:
    lines = [f"{'trial':>6}  {'TPF replay/real':>17}  {'error replay/real':>19}  {'speedup* replay/real':>22}  "
             f"{'wall speedup':>12}  exact"]
    for r in rows:
        lines.append(f"{r['trial']:>6}  {r['replay_tpf']:>8.3f}/{r['real_tpf']:<8.3f}  "
                     f"{r['replay_error']:>9.4f}/{r['real_error']:<9.4f}  "
                     f"{r['replay_speedup']:>10.3f}/{r['real_speedup_modelled']:<11.3f}  "
                     f"{r['real_speedup_wall']:>12.2f}  {r['prompts_equal']}/{r['prompts']}")
    return "\n".join(lines) + "\n(*modelled with the trace's cost model; wall: tokens/s vs ar in the same process)"


def bench_replay(trace: Trace, run_dir: Path, reps: int = 3) -> dict:
    """Seconds to replay each registered policy (defaults) over the whole trace, one core: median of ``reps``.
    A benchmark (``python -m experiments.tune bench_replay=true trace=...``), not a test."""
    import statistics

    t0 = time.perf_counter()
    trace.rows  # noqa: B018 - the one-off list conversion, timed separately
    out = {"rows_s": time.perf_counter() - t0, "prompts": trace.n_prompts, "tokens": trace.max_new_tokens,
           "policies": {}}
    for name in list_policies():
        times, res = [], None
        for _ in range(reps):
            t = time.perf_counter()
            res = replay(name, trace)
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        out["policies"][name] = {"median_s": med, "steps": res.summary["steps"], "tpf": res.summary["tpf"],
                                 "us_per_step": 1e6 * med / max(res.summary["steps"], 1)}
    print(f"replay benchmark: {trace.n_prompts} prompts x {trace.max_new_tokens} tokens, one core, median of {reps}"
          f" (list conversion once per trace: {out['rows_s']:.2f} s)")
    for name, r in out["policies"].items():
        print(f"  {name:14s} {r['median_s']:7.3f} s  {r['steps']:6d} steps  {r['us_per_step']:6.1f} us/step  "
              f"tpf {r['tpf']:.3f}")
    (run_dir / "bench_replay.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def check_model_matches(model, trace: Trace) -> None:
    want = trace.meta.get("model_fingerprint")
    if trace.meta.get("synthetic"):
        raise UserError("the trace is synthetic (no model recorded it); allowed: a trace from experiments.record")
    if want and model.fingerprint() != want:
        raise UserError(f"the trace was recorded with model {want} but model.path gives {model.fingerprint()}; "
                        "allowed: the trace's model")


@hydra.main(version_base="1.3", config_path="conf", config_name="replay_report")
def app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    try:
        run_report(cfg, Path(HydraConfig.get().runtime.output_dir))
    except UserError as err:
        fail(str(err))


def _validate(cfg) -> None:
    if not cfg.trace:
        raise UserError("trace is missing; allowed: trace=<file from python -m experiments.record>")
    for spec in cfg.policies:
        parse_spec(spec)


def main() -> None:
    preflight("replay_report", ("model",), _validate)
    app()


if __name__ == "__main__":
    main()
