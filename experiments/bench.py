"""Speed benchmark of the decoder on the shipped model (a benchmark, not a test: run it on a quiet machine).

    python -m experiments.bench                                   # 20 held-out prompts x 128 tokens, 2 threads
    python -m experiments.bench repeats=5 new_tokens=256 hydra.run.dir=runs/bench_long
    python -m experiments.bench data=file data.path=prompts.jsonl # prompts of your own (the runner's data group)
    python -m experiments.bench mode=memory                       # peak RSS: 20 x 512 tokens vs 2 x 512 tokens

Greedy decoding; every (prompt, variant) pair is timed ``repeats`` times by the shared harness (variants rotated
per prompt and repetition, so load drift hits every variant alike); per variant the median over repetitions of the
total time is reported. Variants: our ``ar`` and each policy of ``policies``, transformers ``generate()`` greedy and
``generate(use_mtp=True)`` on the same weights. Also measured: the cost model (``specpolicy.decoding.cost``): c(m) =
time of a target forward over m tokens / over 1 token, and one drafting step relative to a 1-token target forward.
Writes ``bench.json`` and ``bench.md`` to the run directory.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from experiments.common import (
    CONF_DIR,
    DataConf,
    DrafterConf,
    ModelConf,
    UserError,
    parse_policy_spec,
    preflight,
    run_task,
)

LOSSLESS = [
    ("ar", {}), ("fixed", {"k": 2}), ("fixed", {"k": 3}), ("fixed", {"k": 4}), ("fixed", {"k": 5}), ("fixed", {"k": 6}),
    ("threshold", {}), ("entropy", {}), ("heuristic", {}),
]
MODES = ("speed", "memory")


@dataclass
class BenchConfig:
    model: ModelConf = field(default_factory=ModelConf)
    drafter: DrafterConf = field(default_factory=DrafterConf)
    data: DataConf = field(default_factory=DataConf)
    mode: str = "speed"  # speed | memory
    new_tokens: int = 128
    repeats: int = 3
    threads: int = 2
    hf_baselines: bool = True
    policies: list = field(default_factory=lambda: [f"{n}:{json.dumps(p)}" if p else n for n, p in LOSSLESS])
    cost_depth: int = 7  # the cost curve covers target forwards over m = 1..cost_depth + 1 tokens
    memory_policy: str = "fixed"


ConfigStore.instance().store(name="bench_schema", node=BenchConfig)


def validate(cfg) -> dict:
    """The policy variants ({label: policy}); one-line ``UserError`` for bad settings."""
    from specpolicy.runs import checks

    for ok, message in (
        (cfg.mode in MODES, f"mode={cfg.mode} is invalid; allowed: {', '.join(MODES)}"),
        (cfg.new_tokens >= 1, f"new_tokens={cfg.new_tokens} is invalid; allowed: an integer >= 1"),
        (cfg.repeats >= 1, f"repeats={cfg.repeats} is invalid; allowed: an integer >= 1"),
        (cfg.threads >= 1, f"threads={cfg.threads} is invalid; allowed: an integer >= 1"),
        (cfg.cost_depth >= 1, f"cost_depth={cfg.cost_depth} is invalid; allowed: an integer >= 1"),
    ):
        if not ok:
            raise UserError(message)
    checks.check_model(cfg.model)
    checks.drafter_spec(cfg.drafter)
    checks.check_data(cfg.data)
    policies = dict(parse_policy_spec(s) for s in cfg.policies)
    if "ar" not in policies:
        raise UserError("policies does not hold ar; allowed: a list with ar (the reference of every speedup)")
    return policies


def _hf_runner(model, **kw):
    import torch

    pad = model.tokenizer.pad_token_id

    def run(ids, index, n):
        x = torch.tensor([ids], device=model.device)
        out = model.target.generate(x, max_new_tokens=n, do_sample=False, pad_token_id=pad, **kw)
        return tuple(out[0, len(ids):].tolist())

    return run


def speed(cfg, policies: dict) -> dict:
    import torch

    from specpolicy.decoding.cost import measure_cost
    from specpolicy.decoding.harness import interleaved, policy_runner
    from specpolicy.runs import checks

    torch.set_num_threads(cfg.threads)
    model = checks.load(cfg.model, cfg.drafter)
    prompts, data_info = checks.prompts_for(cfg.data, model.tokenizer)
    runners = {label: policy_runner(model, (lambda p=p: p)) for label, p in policies.items()}
    if cfg.hf_baselines:
        runners["hf_generate"] = _hf_runner(model)
        if model.drafter_name == "mtp":
            runners["hf_generate_mtp"] = _hf_runner(model, use_mtp=True)
    times = {n: [0.0] * cfg.repeats for n in runners}
    outputs: dict[str, list] = {n: [None] * len(prompts) for n in runners}
    forwards = {n: 0 for n in runners}
    for c in interleaved(prompts, runners, cfg.new_tokens, repeats=cfg.repeats, progress=True, desc="bench"):
        times[c.label][c.repeat] += c.seconds
        tokens = c.result if isinstance(c.result, tuple) else c.result.token_ids
        outputs[c.label][c.index] = tuple(tokens)
        if c.repeat == 0 and not isinstance(c.result, tuple):
            forwards[c.label] += c.result.stats.target_forwards
    ref = outputs["ar"]
    rows = {}
    for n in runners:
        n_tok = sum(len(o) for o in outputs[n])
        med = statistics.median(times[n])
        rows[n] = {"tokens_per_s": n_tok / med, "median_total_s": med,
                   "tpf": n_tok / forwards[n] if forwards[n] else None, "identical_to_ar": outputs[n] == ref}
    for n in runners:
        rows[n]["speedup_vs_ar"] = rows[n]["tokens_per_s"] / rows["ar"]["tokens_per_s"]
    cost = measure_cost(model, list(prompts[0].ids) * 2, cfg.cost_depth, reps=30)
    t = cost.t_target
    return {"rows": rows, "cost": {"target_forward_s": {m: t[m - 1] for m in range(1, len(t) + 1)},
                                   "c": {m: cost.c(m) for m in range(1, len(t) + 1)},
                                   "mtp_step_s": cost.t_mtp, "mtp_step_rel": cost.t_mtp / t[0]},
            "n_prompts": len(prompts), "data": data_info, "new_tokens": cfg.new_tokens, "repeats": cfg.repeats,
            "threads": torch.get_num_threads(), "model": model.fingerprint(), "drafter": model.drafter_name, "torch": torch.__version__,
            "cpu": _cpu_name()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def memory_probe(model_conf: dict, n_prompts: int, new_tokens: int, policy: str, threads: int) -> int:
    """Peak RSS (KiB) of a process that loads the model and decodes n_prompts x new_tokens (run in a child)."""
    import torch

    from specpolicy import generate
    from specpolicy.data import load_corpus, sample_prompts
    from specpolicy.runs import checks

    torch.set_num_threads(threads)
    model = checks.load(ModelConf(**model_conf))
    prompts = sample_prompts(load_corpus(), model.tokenizer, n_prompts, 64, 0)
    for p in prompts:
        generate(model, list(p.ids), policy, max_new_tokens=new_tokens)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory(cfg) -> dict:
    out = {}
    conf = OmegaConf.to_container(cfg.model)
    for n in (2, 20):
        code = (f"from experiments.bench import memory_probe; print(memory_probe({conf!r}, {n}, 512, "
                f"{cfg.memory_policy!r}, {cfg.threads}))")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out[f"peak_rss_mib_{n}_prompts"] = int(r.stdout.strip().splitlines()[-1]) / 1024
    out["ratio_20_over_2"] = out["peak_rss_mib_20_prompts"] / out["peak_rss_mib_2_prompts"]
    out["policy"], out["new_tokens"] = cfg.memory_policy, 512
    return out


def table(res: dict) -> str:
    lines = ["| variant | tokens/s | speedup vs ar | TPF | identical to ar |", "|---|---|---|---|---|"]
    for n, r in res["rows"].items():
        tpf = f"{r['tpf']:.2f}" if r["tpf"] else "-"
        lines.append(f"| {n} | {r['tokens_per_s']:.1f} | {r['speedup_vs_ar']:.2f}x | {tpf} | {r['identical_to_ar']} |")
    c = res["cost"]
    lines += ["", "c(m): " + ", ".join(f"{m}: {v:.2f}" for m, v in c["c"].items()),
              f"drafter step: {c['mtp_step_s'] * 1e3:.2f} ms = {c['mtp_step_rel']:.2f} x a 1-token target forward "
              f"({c['target_forward_s'][1] * 1e3:.2f} ms)"]
    return "\n".join(lines)


def execute(cfg: DictConfig, run_dir: Path) -> dict:
    policies = validate(cfg)
    if cfg.mode == "memory":
        res = memory(cfg)
        print(json.dumps(res, indent=2))
        (run_dir / "memory.json").write_text(json.dumps(res, indent=2) + "\n")
        return res
    res = speed(cfg, policies)
    (run_dir / "bench.json").write_text(json.dumps(res, indent=2) + "\n")
    (run_dir / "bench.md").write_text(table(res) + "\n")
    print(table(res))
    print(f"results: {run_dir}")
    return res


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="bench")
def app(cfg: DictConfig) -> dict:
    return run_task(cfg, execute)


def main() -> None:
    preflight("bench", validate, ("model", "drafter", "data"))
    app()


if __name__ == "__main__":
    main()
