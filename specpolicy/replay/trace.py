"""Traces: a greedy decode of each prompt recorded once, with the drafter's chain at every committed position.

``python -m experiments.record`` decodes every prompt greedily with ``ar`` and ``probe_depth=K``: at each committed
position the drafter drafts d_1..d_K (past the last MTP layer exactly as the decoder does) without verifying them.
Under greedy decoding that is everything a lossless policy can ever see: whatever the schedule, the committed sequence
is the target's greedy sequence, and the chain drafted from a committed position depends only on the tokens up to it.
So ``specpolicy.replay.replay`` can drive any policy over a trace without running a model.

Indexing (prompt i; new token n, with t_0 = tokens[i, 0] the prefill's token; N new tokens; K probe depth):

    tokens[i, n]                 new token n: the target's greedy sequence                      [P, N]        int32
    draft[i, n, j-1]             d_j drafted when token n is the last committed one: a guess    [P, N-1, K]   int32
                                 at tokens[i, n + j]  (rows n = 0..N-2: steps happen at 1..N-1 committed tokens)
    q / entropy / margin[i, n, j-1]   q(d_j), H(q_j) in nats, q(top-1) - q(top-2), as the decoder computes them
    target_chain[i, n, j]        the target's greedy token after [t_n, d_1..d_j], j = 0..K: one  [P, N-1, K+1] int32
                                 target forward over the whole chain, as the decoder's verify forward sees a block
    p_draft / p_rank[i, n, j-1]  p(d_j) after [t_n, d_1..d_{j-1}], and how many tokens p ranks strictly above d_j
    p_top1 / p_entropy[i, n, j-1]   max p and H(p) at that position                                          float32

While d_1..d_{j-1} are right, ``target_chain[i, n, j-1] == tokens[i, n + j]`` (the recorded path). After a wrong
draft that a lossy policy committed (trusted or relaxed), the chain arrays still hold the target's exact verdicts,
correction token and p for the rest of that block; only the steps after it leave the recorded path. The p arrays
serve the relaxed rules (typical, top-k). ``cost`` is the device cost model measured when recording.
The recording ignores EOS (it decodes N tokens whatever comes); ``eos_ids`` are kept so that replay stops where the
decoder would, and still knows the target's verdicts on drafts that lie past an EOS in the same block.

Stored as ONE safetensors file (arrays + a JSON header in the metadata).

Example:
    >>> trace = load_trace("runs/record/2024-01-01_12-00-00/trace.safetensors")
    >>> trace.n_prompts, trace.max_new_tokens, trace.k_max, trace.cost.c(4)
    (100, 128, 8, 2.03)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from specpolicy.decoding.cost import CostModel
from specpolicy.errors import UserError

__all__ = ["TRACE_VERSION", "CostModel", "Trace", "TraceError", "load_trace", "synthetic_trace"]

TRACE_VERSION = 1
_CHAIN = ("draft", "q", "entropy", "margin", "p_draft", "p_rank", "p_top1", "p_entropy")  # [P, N-1, K]
_ARRAYS = ("tokens", "target_chain") + _CHAIN


class TraceError(UserError):
    """A trace file that is missing, of another version, or inconsistent (one line: what and where)."""


@dataclass(frozen=True, eq=False)
class Trace:
    """A recorded trace (see the module docstring for the arrays). ``meta`` holds the JSON header: model and corpus
    fingerprints, prompt names, ``eos_ids``, ``num_mtp_layers``, the recording config."""

    prompt_ids: tuple[tuple[int, ...], ...]
    tokens: np.ndarray  # [P, N] int32
    draft: np.ndarray  # [P, N-1, K] int32
    q: np.ndarray  # [P, N-1, K] float32
    entropy: np.ndarray  # [P, N-1, K] float32
    margin: np.ndarray  # [P, N-1, K] float32
    target_chain: np.ndarray  # [P, N-1, K+1] int32
    p_draft: np.ndarray  # [P, N-1, K] float32
    p_rank: np.ndarray  # [P, N-1, K] int32
    p_top1: np.ndarray  # [P, N-1, K] float32
    p_entropy: np.ndarray  # [P, N-1, K] float32
    cost: CostModel
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        P, N = self.tokens.shape
        rows, K = max(N - 1, 0), self.draft.shape[-1]
        for name in _CHAIN:
            if getattr(self, name).shape != (P, rows, K):
                raise TraceError(f"trace array {name} has shape {getattr(self, name).shape}; expected ({P}, {rows}, K)")
        if self.target_chain.shape != (P, rows, K + 1):
            raise TraceError(f"trace array target_chain has shape {self.target_chain.shape}; "
                             f"expected ({P}, {rows}, {K + 1})")
        if len(self.prompt_ids) != P:
            raise TraceError(f"trace holds {len(self.prompt_ids)} prompts but {P} token rows")
        if len(self.cost.t_target) < 1:
            raise TraceError("trace cost model has no target timings")

    @property
    def n_prompts(self) -> int:
        return self.tokens.shape[0]

    @property
    def max_new_tokens(self) -> int:
        return self.tokens.shape[1]

    @property
    def k_max(self) -> int:
        return self.draft.shape[2]

    @property
    def dtype(self) -> str:
        """The dtype the trace was recorded in ("float32" for traces that predate the field)."""
        return str(self.meta.get("dtype", "float32"))

    @property
    def drafter(self) -> str:
        """The kind of drafter that made the drafts (``mtp`` for traces that predate the field)."""
        return str(self.meta.get("drafter", "mtp"))

    @property
    def block_invariant(self) -> bool:
        """Whether the recording drafter's draft at a position is the same whichever rows share its call (False for
        ``mtp-int8``, whose activations are quantized per call: the trace's one-row drafts and q can then differ
        from the decoder's catch-up blocks; True for traces that predate the field)."""
        return self.meta.get("drafter_block_invariant", True) is not False

    @property
    def native_depths(self) -> int:
        """The recording drafter's native depths (``StepState.native_depths``; ``num_mtp_layers`` in older traces)."""
        return int(self.meta.get("native_depths", self.meta.get("num_mtp_layers", 1)))

    @property
    def eos_ids(self) -> frozenset[int]:
        return frozenset(int(e) for e in self.meta.get("eos_ids", []))

    @property
    def prompt_names(self) -> list[str]:
        return list(self.meta.get("prompt_names") or [f"prompt{i}" for i in range(self.n_prompts)])

    def check_model(self, model) -> None:
        """``TraceError`` unless ``model`` is the one that recorded this trace (a synthetic trace has none)."""
        want = self.meta.get("model_fingerprint")
        if self.meta.get("synthetic"):
            raise TraceError("the trace is synthetic (no model recorded it); allowed: a trace from experiments.record")
        if want and model.fingerprint() != want:
            raise TraceError(f"the trace was recorded with model {want} but the model given is {model.fingerprint()};"
                             " allowed: the trace's model")
        mine = getattr(model, "drafter_label", "mtp")
        if mine != self.drafter:
            raise TraceError(f"the trace was recorded with drafter {self.drafter} but the model's drafter is {mine}; "
                             f"allowed: load the model with drafter={self.drafter}")

    def select(self, indices) -> Trace:
        """The trace of a subset of prompts (in the given order).

        Example:
            >>> trace.select(range(5)).n_prompts
            5
        """
        idx = np.asarray(list(indices), dtype=np.int64)
        meta = dict(self.meta, prompt_names=[self.prompt_names[i] for i in idx])
        arrays = {k: getattr(self, k)[idx] for k in _ARRAYS}
        return Trace(tuple(self.prompt_ids[i] for i in idx), cost=self.cost, meta=meta, **arrays)

    @cached_property
    def rows(self) -> dict[str, list]:
        """The arrays as nested Python lists (ints and floats), built once: the replay loop indexes these, since
        Python numbers are what the decoder hands a policy and list indexing is ~10x faster than numpy scalars."""
        return {k: getattr(self, k).tolist() for k in _ARRAYS}

    def save(self, path: str | Path) -> Path:
        """Write one safetensors file (atomically: a temporary file, then rename)."""
        from safetensors.numpy import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        flat = np.fromiter((t for p in self.prompt_ids for t in p), dtype=np.int32)
        offsets = np.cumsum([0] + [len(p) for p in self.prompt_ids]).astype(np.int64)
        arrays = {k: np.ascontiguousarray(getattr(self, k)) for k in _ARRAYS}
        arrays.update(prompt_tokens=flat, prompt_offsets=offsets)
        cost = {f.name: getattr(self.cost, f.name) for f in dataclasses.fields(self.cost)}  # t_target, t_mtp, ...
        header = {"version": TRACE_VERSION, "cost": {**cost, "t_target": list(self.cost.t_target)}, "meta": self.meta}
        tmp = path.with_name(path.name + ".tmp")
        save_file(arrays, str(tmp), metadata={"specpolicy_trace": json.dumps(header)})
        tmp.chmod(0o644)  # safetensors creates 0600 files; a trace is shared like any result
        tmp.replace(path)
        return path


def load_trace(path: str | Path) -> Trace:
    """Read a trace written by ``Trace.save`` (``python -m experiments.record``).

    Example:
        >>> load_trace("trace.safetensors").prompt_names[:1]
        ['asyncio/base_events.py:120']
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise TraceError(f"trace file {str(path)!r} does not exist; allowed: a file written by experiments.record")
    try:
        with safe_open(str(path), framework="numpy") as f:
            raw = (f.metadata() or {}).get("specpolicy_trace")
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise TraceError(f"trace file {str(path)!r} is not a safetensors trace ({err})") from None
    if raw is None:
        raise TraceError(f"{str(path)!r} is a safetensors file but not a specpolicy trace (no header)")
    header = json.loads(raw)
    if header.get("version") != TRACE_VERSION or any(k not in arrays for k in _ARRAYS):
        raise TraceError(f"trace {str(path)!r} has version {header.get('version')} or misses arrays; allowed: "
                         f"version {TRACE_VERSION} with {', '.join(_ARRAYS)} (record it again)")
    off, flat = arrays.pop("prompt_offsets"), arrays.pop("prompt_tokens")
    prompts = tuple(tuple(int(t) for t in flat[off[i] : off[i + 1]]) for i in range(len(off) - 1))
    known = {f.name for f in dataclasses.fields(CostModel)}  # traces before the overhead terms have only the first two
    terms = {k: float(v) for k, v in header["cost"].items() if k in known and k != "t_target"}
    cost = CostModel(tuple(float(t) for t in header["cost"]["t_target"]), **terms)
    return Trace(prompts, cost=cost, meta=header.get("meta", {}), **{k: arrays[k] for k in _ARRAYS})


def synthetic_trace(n_prompts: int = 8, max_new_tokens: int = 64, k_max: int = 8, seed: int = 0,
                    vocab: int = 50, eos_ids=()) -> Trace:
    """A random but self-consistent trace for tests and benchmarks: q is calibrated (a draft is right with
    probability q), deeper drafts are less confident, target_chain and the p_* fields agree with the verdicts.
    No model involved.

    Example:
        >>> from specpolicy.replay import replay
        >>> replay("fixed", synthetic_trace(seed=1)).summary["tpf"] > 1
        True
    """
    rng = np.random.default_rng(seed)
    P, N, K = n_prompts, max_new_tokens, k_max
    rows = max(N - 1, 0)
    tokens = rng.integers(2, vocab, size=(P, N), dtype=np.int32)
    after = np.minimum(np.arange(rows)[:, None] + np.arange(1, K + 2)[None, :], N - 1)  # [rows, K+1]: n + j + 1
    truth = tokens[:, after]  # [P, rows, K+1]: the recorded token each chain position guesses
    q = (rng.beta(4.0, 1.0, size=(P, rows, K)) ** np.arange(1, K + 1)).astype(np.float32)  # decays with depth
    right = rng.random((P, rows, K)) < q
    wrong = (truth[:, :, :K] + rng.integers(1, vocab - 2, size=(P, rows, K))) % vocab
    draft = np.where(right, truth[:, :, :K], wrong).astype(np.int32)
    # the target along each chain: the recorded token while the drafts are right; after a wrong draft it agrees with
    # the drafter's next guess 60% of the time (both continue the same wrong prefix), else with something else
    on_path = np.concatenate([np.ones((P, rows, 1), bool), np.cumprod(right, axis=2).astype(bool)], axis=2)
    nxt = np.concatenate([draft, rng.integers(2, vocab, size=(P, rows, 1))], axis=2)
    off = np.where(rng.random((P, rows, K + 1)) < 0.6, nxt, rng.integers(2, vocab, size=(P, rows, K + 1)))
    chain = np.where(on_path, truth, off).astype(np.int32)
    ok = draft == chain[:, :, :K]
    p_top1 = rng.uniform(0.3, 1.0, size=(P, rows, K)).astype(np.float32)
    p_entropy = rng.uniform(0.0, 3.0, size=(P, rows, K)).astype(np.float32)
    p_draft = np.where(ok, p_top1, p_top1 * rng.uniform(0.0, 1.0, size=ok.shape)).astype(np.float32)
    p_rank = np.where(ok, 0, rng.integers(1, 20, size=ok.shape)).astype(np.int32)
    entropy = (-np.log(np.clip(q, 1e-6, 1)) * 2).astype(np.float32)
    margin = np.clip(2 * q - 1, 0, 1).astype(np.float32)
    prompts = tuple(tuple(int(t) for t in rng.integers(2, vocab, size=8)) for _ in range(P))
    cost = CostModel(tuple(0.01 * (1 + 0.08 * m) for m in range(K + 1)), 0.0015)
    meta = {"model": "synthetic", "model_fingerprint": f"synthetic:seed={seed}", "num_mtp_layers": 2,
            "eos_ids": [int(e) for e in eos_ids], "prompt_names": [f"synthetic{i}" for i in range(P)],
            "synthetic": True}
    return Trace(prompts, tokens, draft, q, entropy, margin, chain, p_draft, p_rank, p_top1, p_entropy, cost, meta)
