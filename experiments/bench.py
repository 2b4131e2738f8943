"""Speed benchmark of the decoder on the shipped model against transformers' own decoders (a benchmark, not a test:
run it on a quiet machine).

    python -m experiments.bench                                   # 20 held-out prompts x 128 tokens, 2 threads
    python -m experiments.bench repeats=5 new_tokens=256 hydra.run.dir=runs/bench_long
    python -m experiments.bench data=file data.path=prompts.jsonl # prompts of your own (the runner's data group)
    python -m experiments.bench 'peers=[generate,use_mtp]'         # only these transformers peers ([] for none)
    python -m experiments.bench mode=memory                       # peak RSS: 20 x 512 tokens vs 2 x 512 tokens
    python -m experiments.bench engine=packed                     # our variants on the packed engine (CPU float32)

Greedy decoding; every (prompt, variant) pair is timed ``repeats`` times by the shared harness (variants rotated
per prompt and repetition, so load drift hits every variant alike); per variant the median over repetitions of the
total time is reported. Variants: our ``ar`` and each policy of ``policies`` (with the ``drafter`` group's drafter),
and the transformers peers of ``peers``, all on the same target weights and the same prompts (the ``data`` group;
``engine`` is our variants' ``generate(..., engine=...)``):

- ``generate``: ``generate(do_sample=False)``, the reference of the identical-output check;
- ``use_mtp``: ``generate(use_mtp=True)``, transformers' own MTP drafting (needs a target with ``num_mtp_layers``);
- ``assisted``: ``generate(assistant_model=draft)``, the draft model of ``assistant`` (default: the bench's drafter if
  it is a draft model, else the one shipped beside the target, which shares the target's tokenizer, embedding and
  LM head); ``assistant_tokens`` drafts per step, constant schedule (transformers' ``heuristic`` schedule carries its
  draft length from one call to the next, which would couple prompts and variants), no confidence stop;
- ``assisted_conf``: the same with ``assistant_confidence_threshold=assistant_confidence`` (drafting stops early
  when the draft's probability of its token falls below it; transformers re-fits the threshold within each call);
- ``prompt_lookup``: ``generate(prompt_lookup_num_tokens=lookup_tokens, max_matching_ngram_size=lookup_ngram)``.

Per variant: tokens/s, its ratio to our ``ar`` and to ``generate()``, TPF (our decoder counts its target forwards;
for a peer a forward hook on the target model counts them, prefill included as in ours), whether the run was
lossless (ours: no trusted or relaxed token; a greedy peer always is) and whether its output is identical to greedy
``generate()`` on every prompt (when the ``generate`` peer is off, its output is computed once, untimed). Also
measured: the cost model (``specpolicy.decoding.cost``): c(m) = time of a target forward over m tokens / over 1
token, and one drafting step relative to a 1-token target forward. Writes ``bench.json`` and ``bench.md``.
"""

from __future__ import annotations

import contextlib
import difflib
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
PEERS = ("generate", "use_mtp", "assisted", "assisted_conf", "prompt_lookup")  # transformers' decoders (docstring)
ASSISTED = ("assisted", "assisted_conf")


@dataclass
class BenchConfig:
    model: ModelConf = field(default_factory=ModelConf)
    drafter: DrafterConf = field(default_factory=DrafterConf)
    data: DataConf = field(default_factory=DataConf)
    mode: str = "speed"  # speed | memory
    new_tokens: int = 128
    repeats: int = 3
    threads: int = 1  # one or two is faster by machine and load (README "Speed")
    engine: str = "auto"  # our variants' engine: auto | lean | packed | transformers (README "Speed")
    policies: list = field(default_factory=lambda: [f"{n}:{json.dumps(p)}" if p else n for n, p in LOSSLESS])
    peers: list = field(default_factory=lambda: list(PEERS))  # transformers peers, any of PEERS; [] for none
    assistant: str = ""  # assisted peers: a draft model (dir or hub id); "": drafter=draft's, else the shipped one
    # num_assistant_tokens: 4 is the depth the shipped draft model was evaluated at (its card: fixed k=4, TPF 1.81);
    # transformers' default of 20 suits a draft that is rarely wrong, this one's depth-1 acceptance is ~0.42
    assistant_tokens: int = 4
    assistant_confidence: float = 0.4  # assisted_conf: assistant_confidence_threshold (transformers' default)
    lookup_tokens: int = 10  # prompt_lookup: prompt_lookup_num_tokens (the value of transformers' documentation)
    lookup_ngram: int = 2  # prompt_lookup: max_matching_ngram_size (transformers' default)
    cost_depth: int = 7  # the cost curve covers target forwards over m = 1..cost_depth + 1 tokens
    memory_policy: str = "fixed"


ConfigStore.instance().store(name="bench_schema", node=BenchConfig)


def check_peers(peers) -> list[str]:
    """The peer names, each one of ``PEERS`` and listed once; else a one-line ``UserError`` with a did-you-mean.

    Example:
        >>> check_peers(["generate", "use_mtp"])
        ['generate', 'use_mtp']
    """
    names = [str(n) for n in peers]
    for name in names:
        if name not in PEERS:
            close = difflib.get_close_matches(name, PEERS, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ";"
            raise UserError(f"unknown peer {name!r}{hint} allowed: a list of {', '.join(PEERS)} (e.g. "
                            "peers=[generate,use_mtp], or peers=[] for none)")
        if names.count(name) > 1:
            raise UserError(f"peers lists {name!r} twice; allowed: each of {', '.join(PEERS)} at most once")
    return names


def validate(cfg) -> dict:
    """The policy variants ({label: policy}); one-line ``UserError`` for bad settings."""
    from specpolicy.decoding.engine import unknown_engine
    from specpolicy.runs import checks

    for ok, message in (
        (cfg.mode in MODES, f"mode={cfg.mode} is invalid; allowed: {', '.join(MODES)}"),
        (cfg.new_tokens >= 1, f"new_tokens={cfg.new_tokens} is invalid; allowed: an integer >= 1"),
        (cfg.repeats >= 1, f"repeats={cfg.repeats} is invalid; allowed: an integer >= 1"),
        (cfg.threads >= 1, f"threads={cfg.threads} is invalid; allowed: an integer >= 1"),
        (cfg.cost_depth >= 1, f"cost_depth={cfg.cost_depth} is invalid; allowed: an integer >= 1"),
        (cfg.assistant_tokens >= 1, f"assistant_tokens={cfg.assistant_tokens} is invalid; allowed: an integer >= 1"),
        (0 < cfg.assistant_confidence < 1,
         f"assistant_confidence={cfg.assistant_confidence} is invalid; allowed: 0 < assistant_confidence < 1"),
        (cfg.lookup_tokens >= 1, f"lookup_tokens={cfg.lookup_tokens} is invalid; allowed: an integer >= 1"),
        (cfg.lookup_ngram >= 1, f"lookup_ngram={cfg.lookup_ngram} is invalid; allowed: an integer >= 1"),
        (unknown_engine(cfg.engine) is None, unknown_engine(cfg.engine)),
    ):
        if not ok:
            raise UserError(message)
    check_peers(cfg.peers)
    checks.check_model(cfg.model)
    checks.drafter_spec(cfg.drafter)
    checks.check_data(cfg.data)
    policies = dict(parse_policy_spec(s) for s in cfg.policies)
    if "ar" not in policies:
        raise UserError("policies does not hold ar; allowed: a list with ar (the reference of every speedup)")
    return policies


def peer_settings(cfg) -> dict[str, dict]:
    """{peer: the ``generate()`` arguments it is given}; ``assistant`` holds the draft model's ``GenerationConfig``
    fields (transformers reads the assisted settings from the assistant's config, not from ``generate``'s).

    Example:
        >>> peer_settings(OmegaConf.structured(BenchConfig))["prompt_lookup"]
        {'prompt_lookup_num_tokens': 10, 'max_matching_ngram_size': 2}
    """
    draft = {"num_assistant_tokens": cfg.assistant_tokens, "num_assistant_tokens_schedule": "constant"}
    return {
        "generate": {},
        "use_mtp": {"use_mtp": True},
        "assisted": {"assistant": {**draft, "assistant_confidence_threshold": 0.0}},  # 0: no confidence stop
        "assisted_conf": {"assistant": {**draft, "assistant_confidence_threshold": cfg.assistant_confidence}},
        "prompt_lookup": {"prompt_lookup_num_tokens": cfg.lookup_tokens, "max_matching_ngram_size": cfg.lookup_ngram},
    }


@dataclass(frozen=True)
class PeerResult:
    """A transformers peer's output on one prompt: its new tokens and the target forwards a forward hook counted."""

    token_ids: tuple[int, ...]
    target_forwards: int


@contextlib.contextmanager
def counting_forwards(module):
    """Count calls of ``module.forward`` while the block runs (a forward hook, removed on exit).

    Example:
        >>> with counting_forwards(model.target) as n:
        ...     model.target.generate(x, max_new_tokens=8)
        >>> n[0]   # 8: one forward per token for plain greedy decoding, prefill included
    """
    n = [0]
    handle = module.register_forward_hook(lambda *_: n.__setitem__(0, n[0] + 1))
    try:
        yield n
    finally:
        handle.remove()


def _peer_runner(model, assistant=None, assistant_config=None, **kw):
    """A harness runner for ``model.target.generate(**kw)``, greedy; with the assistant's config set per call."""
    import torch

    pad = model.tokenizer.pad_token_id
    if assistant is not None:
        kw["assistant_model"] = assistant

    def run(ids, index, n):
        x = torch.tensor([ids], device=model.device)
        if assistant is not None:  # copied by transformers when the call starts; two arms share one draft model
            assistant.generation_config = assistant_config
        with counting_forwards(model.target) as forwards:
            out = model.target.generate(x, max_new_tokens=n, do_sample=False, pad_token_id=pad, **kw)
        return PeerResult(tuple(out[0, len(ids):].tolist()), forwards[0])

    return run


def _assistant(cfg, model):
    """The draft LM for the assisted peers, tied to ``model.target``: the bench's own drafter when it is that draft
    model, else ``cfg.assistant`` (or the one shipped beside the target) loaded with ``load_draft_model``."""
    from specpolicy.models.draft_model import load_draft_model
    from specpolicy.models.loading import resolve_model_path

    if model.drafter_name == "draft" and (not cfg.assistant or cfg.assistant == model.drafter_arg):
        return model.drafter
    try:
        return load_draft_model(model.target, model.tokenizer, resolve_model_path(str(cfg.model.path)),
                                str(cfg.assistant), model.device, model.dtype)
    except UserError as err:
        raise UserError(f"peers {'/'.join(ASSISTED)} need a draft model: {err}; or leave them out of peers") from None


def peer_runners(cfg, model) -> dict:
    """{label ``hf_<peer>``: runner} for the peers of ``cfg.peers``; one-line ``UserError`` when the model lacks
    what a peer needs (MTP layers for ``use_mtp``, a draft model for the assisted ones)."""
    from transformers import GenerationConfig

    names, settings = check_peers(cfg.peers), peer_settings(cfg)
    if "use_mtp" in names and not getattr(model.target.config.get_text_config(), "num_mtp_layers", None):
        raise UserError(f"peer use_mtp needs a target with MTP layers (num_mtp_layers in its config); {cfg.model.path}"
                        " has none; allowed: peers without use_mtp")
    draft = _assistant(cfg, model) if set(ASSISTED) & set(names) else None
    runners = {}
    for name in names:
        kw = dict(settings[name])
        if "assistant" in kw:
            conf = GenerationConfig(**kw.pop("assistant"))
            runners[f"hf_{name}"] = _peer_runner(model, draft, conf, **kw)
        else:
            runners[f"hf_{name}"] = _peer_runner(model, **kw)
    return runners


def _tokens_forwards(result) -> tuple[tuple[int, ...], int, bool]:
    """(new tokens, target forwards, lossless) of a runner's result: ours (``GenerationResult``) or a peer's."""
    if isinstance(result, PeerResult):
        return result.token_ids, result.target_forwards, True  # greedy transformers decoding commits only p's argmax
    return tuple(result.token_ids), result.stats.target_forwards, result.lossless


def _rows(runners, times, outputs, forwards, lossless, reference) -> dict:
    """Per variant: tokens/s (median total time), ratios to ``ar`` and ``hf_generate``, TPF, the output checks."""
    rows = {}
    for n in runners:
        n_tok = sum(len(o) for o in outputs[n])
        med = statistics.median(times[n])
        rows[n] = {"tokens_per_s": n_tok / med, "median_total_s": med,
                   "tpf": n_tok / forwards[n] if forwards[n] else None,
                   "tpf_counted_by": "forward hook" if n.startswith("hf_") else "decoder",
                   "lossless": lossless[n], "identical_to_ar": outputs[n] == outputs["ar"],
                   "identical_to_generate": outputs[n] == reference}
    base = rows.get("hf_generate", {}).get("tokens_per_s")
    for r in rows.values():
        r["speedup_vs_ar"] = r["tokens_per_s"] / rows["ar"]["tokens_per_s"]
        r["speedup_vs_generate"] = r["tokens_per_s"] / base if base else None
    return rows


def speed(cfg, policies: dict) -> dict:
    import torch
    from transformers.utils import logging as hf_logging

    from specpolicy.decoding.cost import measure_cost
    from specpolicy.decoding.engine import check_engine
    from specpolicy.decoding.harness import interleaved, policy_runner
    from specpolicy.policies import step_cost_missing, with_step_cost
    from specpolicy.runs import checks
    from specpolicy.runs.environment import cpu_name

    torch.set_num_threads(cfg.threads)
    hf_logging.disable_progress_bar()  # generate(use_mtp=True) shows a weight-loading bar at every call
    model = checks.load(cfg.model, cfg.drafter)
    check_engine(model, cfg.engine)
    prompts, data_info = checks.prompts_for(cfg.data, model.tokenizer)
    cost = None
    if any(step_cost_missing(p.params()) for p in policies.values()):  # goodput: the cost model of this machine
        cost = measure_cost(model, list(prompts[0].ids) * 2, max(cfg.cost_depth, 8), reps=30, loop_reps=3,
                            loop_tokens=32, engine=cfg.engine)
        policies = {label: with_step_cost(p, cost) for label, p in policies.items()}
    runners = {label: policy_runner(model, (lambda p=p: p), engine=cfg.engine) for label, p in policies.items()}
    runners.update(peer_runners(cfg, model))
    times = {n: [0.0] * cfg.repeats for n in runners}
    outputs: dict[str, list] = {n: [None] * len(prompts) for n in runners}
    forwards, lossless = {n: 0 for n in runners}, {n: True for n in runners}
    for c in interleaved(prompts, runners, cfg.new_tokens, repeats=cfg.repeats, progress=True, desc="bench"):
        times[c.label][c.repeat] += c.seconds
        tokens, n_fwd, ok = _tokens_forwards(c.result)
        outputs[c.label][c.index] = tokens
        if c.repeat == 0:
            forwards[c.label] += n_fwd
            lossless[c.label] = lossless[c.label] and ok
    if "hf_generate" in runners:
        reference = outputs["hf_generate"]
    else:  # the identical-output check still needs greedy generate(): once per prompt, untimed
        greedy = _peer_runner(model)
        reference = [greedy(list(p.ids), i, cfg.new_tokens).token_ids for i, p in enumerate(prompts)]
    rows = _rows(runners, times, outputs, forwards, lossless, reference)
    cost = cost or measure_cost(model, list(prompts[0].ids) * 2, cfg.cost_depth, reps=30, engine=cfg.engine)
    t = cost.t_target
    return {"rows": rows, "cost": {"target_forward_s": {m: t[m - 1] for m in range(1, len(t) + 1)},
                                   "c": {m: cost.c(m) for m in range(1, len(t) + 1)},
                                   "mtp_step_s": cost.t_mtp, "mtp_step_rel": cost.t_mtp / t[0]},
            "peers": {f"hf_{n}": peer_settings(cfg)[n] for n in check_peers(cfg.peers)},
            "n_prompts": len(prompts), "data": data_info, "new_tokens": cfg.new_tokens, "repeats": cfg.repeats,
            "threads": torch.get_num_threads(), "engine": cfg.engine, "model": model.fingerprint(),
            "drafter": model.drafter_label,
            "torch": torch.__version__, "cpu": cpu_name()}


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
    """The markdown report: one row per variant, then the lossless variants whose output differs from generate()."""
    def ratio(x):
        return f"{x:.2f}x" if x is not None else "n/a"

    lines = ["| variant | tokens/s | vs ar | vs generate() | TPF | lossless | identical to generate() |",
             "|---|---|---|---|---|---|---|"]
    for n, r in res["rows"].items():
        tpf = f"{r['tpf']:.2f}" if r["tpf"] else "n/a"
        lines.append(f"| {n} | {r['tokens_per_s']:.1f} | {ratio(r['speedup_vs_ar'])} | "
                     f"{ratio(r['speedup_vs_generate'])} | {tpf} | {r['lossless']} | {r['identical_to_generate']} |")
    differ = [n for n, r in res["rows"].items() if r["lossless"] and not r["identical_to_generate"]]
    c = res["cost"]
    lines += ["", f"our variants' engine: {res.get('engine', 'auto')}",
              "lossless variants whose output differs from greedy generate(): " + (", ".join(differ) or "none"),
              "TPF: our decoder's target forwards; hf_*: a forward hook on the target (prefill included)",
              "", "c(m): " + ", ".join(f"{m}: {v:.2f}" for m, v in c["c"].items()),
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
