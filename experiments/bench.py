"""Speed benchmark of the decoder on the shipped model (a benchmark, not a test: run it on a quiet machine).

    python -m experiments.bench                                   # 20 held-out prompts x 128 tokens, 2 threads
    python -m experiments.bench repeats=5 new_tokens=256 hydra.run.dir=runs/bench_long
    python -m experiments.bench mode=memory                       # peak RSS: 20 x 512 tokens vs 2 x 512 tokens

Greedy decoding; every (prompt, variant) pair is timed ``repeats`` times with the order of variants rotated between
repeats (interleaved, so load drift hits every variant alike); per variant the median over repeats of the total time
is reported. Variants: our ``ar`` and each lossless policy, transformers ``generate()`` greedy and
``generate(use_mtp=True)`` on the same weights. Also measured: the cost curve c(m) = time of a target forward over m
tokens / over 1 token, and the cost of one MTP drafting step relative to a 1-token target forward.
Writes ``bench.json`` and ``bench.md`` to the run directory.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: OpenMP busy-waiting makes CPU timings 10x noisier

import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from specpolicy import generate, get_policy
from specpolicy.data import load_corpus, sample_prompts
from specpolicy.models.loading import load_model_conf

LOSSLESS = [
    ("ar", {}), ("fixed", {"k": 2}), ("fixed", {"k": 3}), ("fixed", {"k": 4}), ("fixed", {"k": 5}), ("fixed", {"k": 6}),
    ("threshold", {}), ("entropy", {}), ("heuristic", {}),
]


@dataclass
class BenchConfig:
    model: dict = field(default_factory=lambda: {"path": "tiny", "device": "cpu", "dtype": None})  # group model/
    mode: str = "speed"  # speed | memory
    n_prompts: int = 20
    prompt_tokens: int = 64
    new_tokens: int = 128
    repeats: int = 3
    threads: int = 2
    seed: int = 0
    hf_baselines: bool = True
    policies: list = field(default_factory=lambda: [f"{n}:{json.dumps(p)}" for n, p in LOSSLESS])
    memory_policy: str = "fixed"


ConfigStore.instance().store(name="bench_schema", node=BenchConfig)


def _variants(cfg: BenchConfig, model):
    out = {}
    for spec in cfg.policies:
        name, _, params = spec.partition(":")
        params = json.loads(params) if params else {}
        label = name + ("(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")
        pol = get_policy(name, **params)
        out[label] = lambda ids, n, pol=pol: generate(model, ids, pol, max_new_tokens=n).token_ids
    if cfg.hf_baselines:
        pad = model.tokenizer.pad_token_id

        def hf(ids, n, **kw):
            x = torch.tensor([ids], device=model.device)
            return tuple(model.target.generate(x, max_new_tokens=n, do_sample=False, pad_token_id=pad, **kw)[0, len(ids):].tolist())

        out["hf_generate"] = hf
        out["hf_generate_mtp"] = lambda ids, n: hf(ids, n, use_mtp=True)
    return out


@torch.inference_mode()
def cost_curve(model, ctx: list[int], max_m: int = 8, reps: int = 30) -> dict:
    """c(m) = median time of a target forward over m new tokens after ``ctx`` / the same for m = 1; MTP step cost."""
    from transformers import DynamicCache

    body, head = model.target.get_decoder(), model.target.get_output_embeddings()
    ids = torch.tensor([ctx], device=model.device)
    cache = DynamicCache(config=model.target.config)
    body(input_ids=ids, cache=cache)
    times = {}
    for m in range(1, max_m + 1):
        ts = []
        for _ in range(reps):
            x = torch.randint(0, model.target.config.vocab_size, (1, m), device=model.device)
            t0 = time.perf_counter()
            head(body(input_ids=x, cache=cache).last_hidden_state)
            ts.append(time.perf_counter() - t0)
            cache.crop(-m)
        times[m] = statistics.median(ts)
    h = torch.randn(1, 1, model.target.config.hidden_size, device=model.device, dtype=model.dtype)
    pos = torch.tensor([[len(ctx)]], device=model.device)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = model.drafter.forward_layer(0, h, pos, None, input_ids=torch.tensor([[5]], device=model.device))
        model.drafter._project_to_logits(out)
        ts.append(time.perf_counter() - t0)
    return {"target_forward_s": times, "c": {m: t / times[1] for m, t in times.items()},
            "mtp_step_s": statistics.median(ts), "mtp_step_rel": statistics.median(ts) / times[1]}


def speed(cfg: BenchConfig) -> dict:
    model = load_model_conf(cfg.model)
    prompts = sample_prompts(load_corpus(), model.tokenizer, cfg.n_prompts, cfg.prompt_tokens, cfg.seed)
    variants = _variants(cfg, model)
    names = list(variants)
    for name in names:  # warm-up (first-call allocations, lazy imports)
        variants[name](list(prompts[0].ids), 8)
    times = {n: [[0.0] * len(prompts) for _ in range(cfg.repeats)] for n in names}
    outputs: dict[str, list] = {n: [None] * len(prompts) for n in names}
    stats = {n: {"tokens": 0, "forwards": 0} for n in names}
    bar = tqdm(total=cfg.repeats * len(prompts) * len(names), desc="bench")
    for r in range(cfg.repeats):
        for i, p in enumerate(prompts):
            order = names[(r + i) % len(names):] + names[: (r + i) % len(names)]  # rotate: interleaved
            for n in order:
                t0 = time.perf_counter()
                out = variants[n](list(p.ids), cfg.new_tokens)
                times[n][r][i] = time.perf_counter() - t0
                outputs[n][i] = tuple(out)
                bar.update(1)
    bar.close()
    # TPF from one instrumented pass (same tokens: greedy decoding is deterministic)
    for n in names:
        if n.startswith("hf_"):
            continue
        spec = cfg.policies[names.index(n)]
        name, _, params = spec.partition(":")
        for p in prompts:
            res = generate(model, list(p.ids), get_policy(name, **(json.loads(params) if params else {})),
                           max_new_tokens=cfg.new_tokens)
            stats[n]["tokens"] += res.stats.new_tokens
            stats[n]["forwards"] += res.stats.target_forwards
    ref = outputs["ar"]
    rows = {}
    for n in names:
        totals = [sum(times[n][r]) for r in range(cfg.repeats)]
        n_tok = sum(len(o) for o in outputs[n])
        rows[n] = {
            "tokens_per_s": n_tok / statistics.median(totals),
            "median_total_s": statistics.median(totals),
            "tpf": stats[n]["tokens"] / stats[n]["forwards"] if stats[n]["forwards"] else None,
            "identical_to_ar": outputs[n] == ref,
        }
    for n in names:
        rows[n]["speedup_vs_ar"] = rows[n]["tokens_per_s"] / rows["ar"]["tokens_per_s"]
    return {"rows": rows, "cost": cost_curve(model, list(prompts[0].ids) * 2), "n_prompts": len(prompts),
            "new_tokens": cfg.new_tokens, "repeats": cfg.repeats, "threads": torch.get_num_threads(),
            "model": model.fingerprint(), "torch": torch.__version__, "cpu": _cpu_name()}


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
    torch.set_num_threads(threads)
    model = load_model_conf(model_conf)
    prompts = sample_prompts(load_corpus(), model.tokenizer, n_prompts, 64, 0)
    for p in prompts:
        generate(model, list(p.ids), policy, max_new_tokens=new_tokens)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory(cfg: BenchConfig) -> dict:
    out = {}
    for n in (2, 20):
        code = (f"from experiments.bench import memory_probe; print(memory_probe({dict(cfg.model)!r}, {n}, 512, "
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
              f"MTP step: {c['mtp_step_s'] * 1e3:.2f} ms = {c['mtp_step_rel']:.2f} x a 1-token target forward "
              f"({c['target_forward_s'][1] * 1e3:.2f} ms)"]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="conf", config_name="bench")
def main(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    c: BenchConfig = OmegaConf.to_object(cfg)
    if c.mode not in ("speed", "memory"):
        print(f"bench: mode={c.mode!r} is invalid; allowed: speed, memory", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(c.threads)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    if c.mode == "memory":
        res = memory(c)
        print(json.dumps(res, indent=2))
        (out_dir / "memory.json").write_text(json.dumps(res, indent=2) + "\n")
        return
    res = speed(c)
    (out_dir / "bench.json").write_text(json.dumps(res, indent=2) + "\n")
    (out_dir / "bench.md").write_text(table(res) + "\n")
    print(table(res))
    print(f"results: {out_dir}")


if __name__ == "__main__":
    main()
