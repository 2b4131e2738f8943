"""Record a replay trace: greedy decodes of held-out prompts with the drafter's chain probed at every position.

    python -m experiments.record                                    # 100 stdlib prompts x 128 new tokens, K = 8
    python -m experiments.record data.n_prompts=20 probe_depth=6 hydra.run.dir=runs/record/small
    python -m experiments.record model=hf model.path=DIR data=file data.path=prompts.jsonl

Each prompt is decoded with ``generate(model, ids, "ar", max_new_tokens=N, probe_depth=K)``; every StepRecord then
holds the chain d_1..d_K drafted from that committed position (``probe*``); then one target forward over each chain
[t_n, d_1..d_K] (as the decoder verifies a block) adds the target's token after every chain prefix, p(d_j), the rank
of d_j under p, max p and H(p): the exact verdicts and relaxed-rule inputs along the chain. EOS is ignored while recording (N tokens
always), and its ids are stored: replay stops at EOS as the decoder does. The device cost model (target forward over
m = 1..K+1 tokens, one drafter step; ``measure_cost``) is measured in the same process, before decoding.
Writes ``trace.safetensors`` (see ``specpolicy.replay.trace``) to the run directory, or to ``out=PATH``.
Bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: OpenMP busy-waiting makes CPU timings 10x noisier

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import difflib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
import numpy as np  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from experiments.run import DataConf, ModelConf  # noqa: E402  (one definition of the model/data groups' schemas)
from specpolicy.replay import CostModel, Trace, rows_from_steps  # noqa: E402

CONF_DIR = Path(__file__).parent / "conf"


class UserError(ValueError):
    """Bad input a user can fix; ``str(err)`` is the one line to show."""


@dataclass
class TraceConf:
    """What a trace holds: N new tokens per prompt, the chain to depth K, the cost-curve repetitions."""

    max_new_tokens: int = 128
    probe_depth: int = 8  # K: drafts probed per position (replay serves policies up to this depth)
    cost_reps: int = 30  # repetitions per point of the cost curve (medians)


@dataclass
class RecordConfig(TraceConf):
    model: ModelConf = field(default_factory=ModelConf)
    data: DataConf = field(default_factory=DataConf)
    threads: int = 2  # torch.set_num_threads
    out: str = ""  # "" -> <run dir>/trace.safetensors


ConfigStore.instance().store(name="record_schema", node=RecordConfig)


@contextlib.contextmanager
def eos_ignored(model):
    """(a view of ``model`` that never stops at EOS, the EOS ids it would have stopped at)."""
    gc = model.target.generation_config
    saved = gc.eos_token_id
    eos = saved if saved is not None else model.eos_token_id
    eos = sorted(int(e) for e in (eos if isinstance(eos, list | tuple) else [eos] if eos is not None else []))
    gc.eos_token_id = None
    try:
        yield dataclasses.replace(model, tokenizer=None), eos
    finally:
        gc.eos_token_id = saved


def chain_features(model, prompt: list[int], tokens: list[int], draft: np.ndarray) -> dict[str, np.ndarray]:
    """The target along every drafted chain: for each row n one forward over [t_n, d_1..d_K] on a KV cache of
    prompt + t_0..t_{n-1} (cropped back to t_n after it), exactly the decoder's verify forward for a K-draft block.

    draft: [N-1, K] -> target_chain [N-1, K+1] (greedy token after [t_n, d_1..d_j], j = 0..K); p_draft, p_rank,
    p_top1, p_entropy [N-1, K] (p of d_j after [t_n, d_1..d_{j-1}]); and ``mismatch``: rows whose first target
    token differs from the recorded t_{n+1} (block vs one-token forward rounding; 0 in float64).
    """
    import torch
    from transformers import DynamicCache

    body, head = model.target.get_decoder(), model.target.get_output_embeddings()
    rows, k = draft.shape
    ids = torch.tensor([list(prompt)], device=model.device)
    chain = torch.as_tensor(np.concatenate([np.asarray(tokens[:rows], np.int64)[:, None], draft], 1),
                            device=model.device)  # [N-1, K+1]: t_n, d_1..d_K
    out = {"target_chain": np.empty((rows, k + 1), np.int32), "p_draft": np.empty((rows, k), np.float32),
           "p_rank": np.empty((rows, k), np.int32), "p_top1": np.empty((rows, k), np.float32),
           "p_entropy": np.empty((rows, k), np.float32)}
    with torch.inference_mode():
        cache = DynamicCache(config=model.target.config)
        body(input_ids=ids, cache=cache)
        for n in range(rows):
            logits = head(body(input_ids=chain[n][None], cache=cache).last_hidden_state)[0]  # [K+1, V]
            cache.crop(-k)  # keep t_n: the next row's block starts after it
            p = torch.softmax(logits[:k].float(), -1)  # [K, V]: row j-1 is p before d_j
            p_d = p.gather(1, chain[n, 1:, None])[:, 0]  # [K]
            ent = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
            out["target_chain"][n] = logits.argmax(-1).cpu().numpy()
            out["p_draft"][n], out["p_top1"][n] = p_d.cpu().numpy(), p.max(-1).values.cpu().numpy()
            out["p_rank"][n] = (p > p_d[:, None]).sum(-1).cpu().numpy()
            out["p_entropy"][n] = ent.cpu().numpy()
    out["mismatch"] = int((out["target_chain"][:, 0] != np.asarray(tokens[1 : rows + 1])).sum())
    return out


def measure_cost(model, ctx: list[int], k: int, reps: int) -> CostModel:
    """The device cost model, timed the way the decoder runs (medians of ``reps``; CUDA synchronised):

    t_target[m-1]: target forward + head over m new tokens after a KV cache of ``ctx`` (the cache is cropped back
                   after each call), m = 1..K+1, the m interleaved within each repetition -- the c(m) definition
                   of ``experiments.bench.cost_curve``;
    t_mtp:         one drafting step at depth 1 through ``DrafterState`` (one MTP layer on one position with its
                   cache over ``ctx``, plus the shared head), as the decoder drafts.
    """
    import statistics

    import torch
    from transformers import DynamicCache

    from specpolicy.decoding.drafter import DrafterState

    def timed(fn) -> float:
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        t0 = time.perf_counter()
        fn()
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        return time.perf_counter() - t0

    body, head = model.target.get_decoder(), model.target.get_output_embeddings()
    P = len(ctx)
    ids = torch.tensor([list(ctx) + [0] * (k + 2)], device=model.device)  # [1, P + K + 2]
    with torch.inference_mode():
        cache = DynamicCache(config=model.target.config)
        h = body(input_ids=ids[:, :P], cache=cache).last_hidden_state  # [1, P, H]
        vocab = model.target.config.get_text_config().vocab_size
        times: dict[int, list[float]] = {m: [] for m in range(1, k + 2)}
        for rep in range(reps + 1):  # m interleaved within each repetition: load drift hits every m alike
            for m in range(1, k + 2):
                x = torch.randint(0, vocab, (1, m), device=model.device)
                t = timed(lambda x=x: head(body(input_ids=x, cache=cache).last_hidden_state))
                cache.crop(-m)
                if rep:  # repetition 0 warms up
                    times[m].append(t)
        t_target = [statistics.median(times[m]) for m in range(1, k + 2)]
        ds = DrafterState(model.drafter, model.drafter.config)
        ds.extend_target_hidden(h)
        ds.draft(1, ids, P - 2)  # catch up the context once
        ts = []
        for _ in range(reps + 1):
            ds.crop(P - 1)  # forget the last position: the next draft processes exactly one index
            ts.append(timed(lambda: ds.draft(1, ids, P - 2)))
    return CostModel(tuple(t_target), statistics.median(ts[1:]))


def record_trace(model, prompts, max_new_tokens: int = 128, probe_depth: int = 8, cost_reps: int = 30,
                 names: list[str] | None = None, progress: bool = True, meta: dict | None = None) -> Trace:
    """Decode every prompt (token id lists) greedily with ``ar`` + ``probe_depth``; return the trace.

    Example:
        >>> trace = record_trace(load_model("tiny"), [p.ids for p in prompts], 128, 8)
        >>> trace.save("trace.safetensors")
    """
    from tqdm.auto import tqdm

    from specpolicy import generate

    N, K = max_new_tokens, probe_depth
    arrays = {k: [] for k in ("tokens", "draft", "q", "entropy", "margin", "target_chain", "p_draft", "p_rank",
                              "p_top1", "p_entropy")}
    cost = measure_cost(model, list(prompts[0]) * (1 + N // max(len(prompts[0]), 1)), K, cost_reps)  # first: fail fast
    mismatch, t0 = 0, time.perf_counter()
    with eos_ignored(model) as (quiet, eos):
        for ids in tqdm(prompts, desc="record", unit="prompt", disable=not progress, dynamic_ncols=True):
            res = generate(quiet, list(ids), "ar", max_new_tokens=N, probe_depth=K)
            rows = rows_from_steps(res.steps, N, K)
            feats = chain_features(model, list(ids), list(res.token_ids), rows["draft"])
            mismatch += feats.pop("mismatch")
            arrays["tokens"].append(np.asarray(res.token_ids, np.int32))
            for key, value in {**rows, **feats}.items():
                arrays[key].append(value)
    record_s = time.perf_counter() - t0
    info = {
        "model": model.name, "model_fingerprint": model.fingerprint(), "num_mtp_layers": model.num_mtp_layers,
        "dtype": str(model.dtype).removeprefix("torch."), "device": str(model.device), "eos_ids": eos,
        "prompt_names": list(names) if names else [f"prompt{i}" for i in range(len(prompts))],
        "chain_first_token_mismatch": mismatch, "record_s": round(record_s, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cost": cost.to_dict(), **(meta or {}),
    }
    stacked = {k: np.stack(v) for k, v in arrays.items()}
    return Trace(tuple(tuple(int(t) for t in p) for p in prompts), cost=cost, meta=info, **stacked)


# ---------------------------------------------------------------- command line (shared with experiments.tune)

def one_line(err: BaseException) -> str:
    """Hydra/OmegaConf error text folded into one line, without key dumps."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "reference_type="))]
    return "; ".join(lines) or type(err).__name__


def fail(message: str) -> None:
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(2)


def preflight(config_name: str, groups: tuple[str, ...], validate) -> None:
    """Compose the command line and ``validate`` it before Hydra starts: bad input -> one line, exit 2, nothing written."""
    try:
        cfg = compose(config_name, sys.argv[1:], groups)
        if cfg is not None:
            validate(cfg)
    except UserError as err:
        fail(str(err))


def _check_choice(group: str, value: str) -> None:
    if group == "policy":
        from specpolicy.policies import UnknownPolicyError, policy_class

        try:
            policy_class(value)
        except UnknownPolicyError as err:
            raise UserError(str(err)) from None
    allowed = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    if value not in allowed:
        close = difflib.get_close_matches(value, allowed, n=2, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ";"
        raise UserError(f"unknown {group} {value!r}{hint} allowed: {', '.join(allowed)}")


def compose(config_name: str, argv: list[str], groups: tuple[str, ...]) -> DictConfig | None:
    """The job config Hydra is about to run (None for --help and the like), or a one-line ``UserError``:
    unknown group options get a did-you-mean line (policies: the registry's), other composition errors one line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    if any(a.startswith("-") for a in argv):  # --help, --cfg, -m ...: Hydra's own business
        return None
    for a in argv:
        key, _, value = a.partition("=")
        if key in groups and value:
            _check_choice(key, value)
    app = [a for a in argv if not a.split("=", 1)[0].lstrip("+~").startswith("hydra")]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=config_name):
        try:
            return hydra_compose(config_name, overrides=app)
        except Exception as err:  # hydra / omegaconf composition errors
            raise UserError(one_line(err)) from None


def validate(cfg) -> None:
    from specpolicy.runs import checks

    for ok, message in (
        (cfg.max_new_tokens >= 2, f"max_new_tokens={cfg.max_new_tokens} is invalid; allowed: an integer >= 2"),
        (1 <= cfg.probe_depth <= 32, f"probe_depth={cfg.probe_depth} is invalid; allowed: 1 <= probe_depth <= 32"),
        (cfg.cost_reps >= 1, f"cost_reps={cfg.cost_reps} is invalid; allowed: an integer >= 1"),
        (cfg.threads >= 1, f"threads={cfg.threads} is invalid; allowed: an integer >= 1"),
    ):
        if not ok:
            raise UserError(message)
    try:
        checks.check_model(cfg.model)
        checks.check_data(cfg.data)
    except checks.UserError as err:
        raise UserError(str(err)) from None


def record_from_config(cfg, out: Path, progress: bool = True) -> Trace:
    """Load the model and prompts named by ``cfg`` (model, data, threads, TraceConf fields), record, save to ``out``."""
    import torch

    from specpolicy.runs import checks

    torch.set_num_threads(cfg.threads)
    try:
        model = checks.load(cfg.model)
        prompts, data_info = checks.prompts_for(cfg.data, model.tokenizer)
    except checks.UserError as err:
        raise UserError(str(err)) from None
    config = OmegaConf.to_container(OmegaConf.create({"model": cfg.model, "data": cfg.data, "trace": {
        "max_new_tokens": cfg.max_new_tokens, "probe_depth": cfg.probe_depth, "cost_reps": cfg.cost_reps}}))
    trace = record_trace(model, [p.ids for p in prompts], cfg.max_new_tokens, cfg.probe_depth, cfg.cost_reps,
                         names=[p.id for p in prompts], progress=progress,
                         meta={"data": data_info, "config": config, "threads": cfg.threads,
                               "torch": torch.__version__})
    trace.save(out)
    return trace


def describe(trace: Trace, path: Path) -> str:
    c = trace.cost
    return "\n".join([
        f"trace: {path}",
        f"  {trace.n_prompts} prompts x {trace.max_new_tokens} new tokens, probe depth K={trace.k_max}, "
        f"model {trace.meta.get('model_fingerprint')}, eos ids {trace.meta.get('eos_ids')}",
        f"  cost model: t_target(1) = {c.t_target[0] * 1e3:.2f} ms; c(m) = "
        + ", ".join(f"{m}: {c.c(m):.2f}" for m in range(1, len(c.t_target) + 1))
        + f"; drafter step = {c.t_mtp * 1e3:.2f} ms = {c.t_mtp / c.t_target[0]:.2f} x t_target(1)",
        f"  recorded in {trace.meta.get('record_s')} s; chain forward's first token != recorded token at "
        f"{trace.meta.get('chain_first_token_mismatch')} positions",
    ])


@hydra.main(version_base="1.3", config_path="conf", config_name="record")
def app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    out = Path(cfg.out) if cfg.out else run_dir / "trace.safetensors"
    try:
        trace = record_from_config(cfg, out)
    except UserError as err:
        fail(str(err))
    print(describe(trace, out))


def main() -> None:
    preflight("record", ("model", "data"), validate)
    app()


if __name__ == "__main__":
    main()
