"""Record a replay trace: greedy decodes with the drafter's chain probed at every committed position.

Each prompt is decoded with ``generate(model, ids, "ar", max_new_tokens=N, probe=ChainProbe(K))``: after every
(empty) draft phase the probe drafts d_1..d_K from that committed position, never verified; then one target forward
over each chain [t_n, d_1..d_K] (as the decoder verifies a block) adds the target's token after every chain prefix
and ``p_features`` of every d_j: the exact verdicts and relaxed-rule inputs along the chain. EOS is ignored while
recording (N tokens always) and its ids are stored: replay stops at EOS as the decoder does. The cost model
(``decoding.cost.measure_cost``, read off three interleaved rounds of the decoder's own steps: one round let a
transient load on a shared CPU put c(2) at 0.73 once) is measured in the same process, before decoding.

Example:
    >>> trace = record_trace(load_model("tiny"), [p.ids for p in prompts], max_new_tokens=128, probe_depth=8)
    >>> trace.save("trace.safetensors")
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import numpy as np

from specpolicy.decoding.probe import DraftProbe

from .trace import Trace, TraceError

__all__ = ["ChainProbe", "chain_features", "describe", "eos_ignored", "record_trace"]


class ChainProbe(DraftProbe):
    """The recording probe: every step's chain d_1..d_depth from the committed frontier, as trace rows.

    Row n is the step taken with n + 1 new tokens committed (trace indexing); it must come from a policy that never
    drafts (``ar``), so each chain starts at the committed frontier.
    """

    def __call__(self, state, next_draft) -> None:
        if state.depth:
            raise TraceError(f"step {state.step} drafted {state.depth} tokens; record with a policy that never drafts")
        super().__call__(state, next_draft)

    def arrays(self, n_new: int) -> dict[str, np.ndarray]:
        """draft / q / entropy / margin [N-1, K] (a missing draft: -1 and NaN)."""
        rows = max(n_new - 1, 0)
        chains = {position - 1: chain for _, position, _, chain in self.steps}
        if sorted(chains) != list(range(rows)):
            raise TraceError(f"steps cover {len(chains)} of {rows} positions; record without EOS stopping")
        out = {"draft": np.full((rows, self.depth), -1, np.int32)}
        out.update({name: np.full((rows, self.depth), np.nan, np.float32) for name in ("q", "entropy", "margin")})
        for n, chain in chains.items():
            for j, f in enumerate(chain):
                if f is not None:
                    out["draft"][n, j], out["q"][n, j], out["entropy"][n, j], out["margin"][n, j] = f
        return out


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


def chain_features(model, prompt: list[int], tokens: list[int], draft: np.ndarray,
                   engine: str = "auto") -> dict[str, np.ndarray]:
    """The target along every drafted chain: for each row n one forward over [t_n, d_1..d_K] on a KV cache of
    prompt + t_0..t_{n-1} (cropped back to t_n after it), exactly the decoder's verify forward for a K-draft block
    (the decoder's ``engine``).

    draft: [N-1, K] -> target_chain [N-1, K+1] (greedy token after [t_n, d_1..d_j], j = 0..K); p_draft, p_rank,
    p_top1, p_entropy [N-1, K] (``p_features`` of d_j after [t_n, d_1..d_{j-1}]); and ``mismatch``: rows whose first
    target token differs from the recorded t_{n+1} (block vs one-token forward rounding; 0 in float64).
    """
    import torch

    from specpolicy.decoding.acceptance import p_features
    from specpolicy.decoding.engine import causal_forward

    rows, k = draft.shape
    ids = torch.tensor([list(prompt)], device=model.device)
    chain = torch.as_tensor(np.concatenate([np.asarray(tokens[:rows], np.int64)[:, None], draft], 1),
                            device=model.device).clamp_min(0)  # [N-1, K+1]: t_n, d_1..d_K (no draft -> token 0)
    out = {"target_chain": np.empty((rows, k + 1), np.int32), "p_draft": np.empty((rows, k), np.float32),
           "p_rank": np.empty((rows, k), np.int32), "p_top1": np.empty((rows, k), np.float32),
           "p_entropy": np.empty((rows, k), np.float32)}
    with torch.inference_mode():
        fwd = causal_forward(model.target, engine)
        fwd.forward(ids)
        for n in range(rows):
            logits = fwd.logits(fwd.forward(chain[n][None]))[0]  # [K+1, V]
            fwd.crop(len(prompt) + n + 1)  # keep t_n: the next row's block starts after it
            feats = p_features(torch.softmax(logits[:k].float(), -1), chain[n, 1:])  # row j-1: p before d_j
            out["target_chain"][n] = logits.argmax(-1).cpu().numpy()
            for name, value in feats.items():
                out[name][n] = value.cpu().numpy()
    out["mismatch"] = int((out["target_chain"][:, 0] != np.asarray(tokens[1 : rows + 1])).sum())
    return out


def record_trace(model, prompts, max_new_tokens: int = 128, probe_depth: int = 8, cost_reps: int = 30,
                 names: list[str] | None = None, progress: bool = True, meta: dict | None = None,
                 engine: str = "auto") -> Trace:
    """Decode every prompt (token id lists) greedily with ``ar`` and a ``ChainProbe(probe_depth)`` on ``engine``
    (as ``generate``'s; the cost model and the chain forwards use it too, and ``meta["engine"]`` records it).

    Example:
        >>> trace = record_trace(load_model("tiny"), [p.ids for p in prompts], 128, 8)
        >>> trace.save("trace.safetensors")
    """
    from tqdm.auto import tqdm

    from specpolicy.decoding import drafter_for, generate
    from specpolicy.decoding.cost import measure_cost

    N, K = max_new_tokens, probe_depth
    arrays = {k: [] for k in ("tokens", "draft", "q", "entropy", "margin", "target_chain", "p_draft", "p_rank",
                              "p_top1", "p_entropy")}
    cost = measure_cost(model, list(prompts[0]) * (1 + N // max(len(prompts[0]), 1)), K, cost_reps,  # fail fast
                        loop_reps=3, loop_tokens=min(N, 32), engine=engine)
    mismatch, t0 = 0, time.perf_counter()
    with eos_ignored(model) as (quiet, eos):
        for ids in tqdm(prompts, desc="record", unit="prompt", disable=not progress, dynamic_ncols=True):
            probe = ChainProbe(K)
            res = generate(quiet, list(ids), "ar", max_new_tokens=N, probe=probe, engine=engine)
            rows = probe.arrays(N)
            feats = chain_features(model, list(ids), list(res.token_ids), rows["draft"], engine)
            mismatch += feats.pop("mismatch")
            arrays["tokens"].append(np.asarray(res.token_ids, np.int32))
            for key, value in {**rows, **feats}.items():
                arrays[key].append(value)
    drafter = drafter_for(model)
    info = {
        "model": model.name, "model_fingerprint": model.fingerprint(), "drafter": drafter.name,
        "native_depths": drafter.native_depths, "num_mtp_layers": model.num_mtp_layers,
        "drafter_block_invariant": bool(getattr(drafter, "block_invariant", True)),
        "dtype": str(model.dtype).removeprefix("torch."), "device": str(model.device), "eos_ids": eos,
        "prompt_names": list(names) if names else [f"prompt{i}" for i in range(len(prompts))],
        "chain_first_token_mismatch": mismatch, "record_s": round(time.perf_counter() - t0, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cost": cost.to_dict(), "engine": engine, **(meta or {}),
    }
    stacked = {k: np.stack(v) for k, v in arrays.items()}
    return Trace(tuple(tuple(int(t) for t in p) for p in prompts), cost=cost, meta=info, **stacked)


def describe(trace: Trace, path) -> str:
    """A few lines about a trace: size, model, cost model, recording time, chain mismatches."""
    c = trace.cost
    return "\n".join([
        f"trace: {path}",
        f"  {trace.n_prompts} prompts x {trace.max_new_tokens} new tokens, probe depth K={trace.k_max}, "
        f"model {trace.meta.get('model_fingerprint')}, drafter {trace.meta.get('drafter', 'mtp')}, "
        f"eos ids {trace.meta.get('eos_ids')}",
        f"  cost model: t_target(1) = {c.t_target[0] * 1e3:.2f} ms; c(m) = "
        + ", ".join(f"{m}: {c.c(m):.2f}" for m in range(1, len(c.t_target) + 1))
        + f"; drafter step = {c.t_mtp * 1e3:.2f} ms = {c.t_mtp / c.t_target[0]:.2f} x t_target(1)",
        f"  recorded in {trace.meta.get('record_s')} s; chain forward's first token != recorded token at "
        f"{trace.meta.get('chain_first_token_mismatch')} positions",
    ])
