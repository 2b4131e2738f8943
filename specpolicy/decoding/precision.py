"""What "lossless" means in finite precision: near-ties, mismatches and a self-consistency check.

A lossless policy's greedy output equals ``generate(do_sample=False)`` bit for bit in float64. In lower precision
the target's forward over a block [t_n, d_1..d_m] rounds differently from m+1 one-token forwards, so where the
target's top-2 logits are closer than that rounding, the two can pick different argmaxes: a *numerical near-tie*,
not a bug. Any other difference is a *mismatch*, and for a lossless policy a mismatch is a bug.

The tolerance. A logit z = w . h is computed from a hidden state that passed L layers in ``dtype``; each rounding of
a value x adds at most eps/2 |x| (eps = ``torch.finfo(dtype).eps``: bfloat16 2^-7, float16 2^-10, float32 2^-23),
and the errors of L layers compound roughly additively, so the logits of two roundings of the same computation
differ by about c * eps * |z| with c of the order of the depth. We bound the scale by the largest logit magnitude
at that position, measured in float32, and take

    tolerance = NEAR_TIE_MARGIN * eps(dtype) * max_v |z_v|            (z: float32 logits on the same prefix)

with NEAR_TIE_MARGIN = 4. Measured on the embedded model (8 layers; ``python -m experiments.precision``, which
measures it on every run and reports it beside the classifications): the largest block-vs-one-token difference of a
logit was 1.36 eps max|z| in bfloat16 and 1.33 in float16 (8 prompts, blocks of 4 tokens), and over 100 prompts x
64 tokens every lossless built-in's divergences from ``generate()`` had float32 gaps of at most 0.14 (bfloat16,
tolerance 0.41-0.65) and 0.009 (float16, tolerance 0.05-0.07). A
flip needs the two candidates' roundings to differ in opposite directions, up to about twice that, so 4 leaves room
while a wrong token committed by a bug (an off-by-one cache crop, a lossy rule called lossless) trails the argmax by
far more (the tests inject both and see them as mismatches).

- ``classify_divergence``: at the first position where an output leaves the reference, the reference's float32 gap
  between its token and ours, against the tolerance -> "exact" | "near_tie" | "mismatch".
- ``self_consistency``: recompute the target in float32 over the final sequence and check that every committed
  ``verified``/``target`` token is the float32 argmax at its position or within the tolerance of it. Unlike a
  comparison with ``generate()`` this needs no reference decode and still catches bugs (``ar`` runs one-token
  blocks, the shapes ``generate()`` runs, so it is no block-consistent reference either).

Example:
    >>> classify_divergence(model, prompt_ids, ours=res.token_ids, reference=ref_ids)
    Divergence(kind='near_tie', index=17, gap=0.041, tolerance=0.62)
    >>> self_consistency(model, res).mismatches
    []
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

__all__ = ["NEAR_TIE_MARGIN", "Consistency", "Divergence", "classify_divergence", "float32_target",
           "near_tie_tolerance", "self_consistency"]

NEAR_TIE_MARGIN = 4.0


def near_tie_tolerance(dtype: torch.dtype, logit_scale: float, margin: float = NEAR_TIE_MARGIN) -> float:
    """margin * eps(dtype) * logit_scale (module docstring); 0 in float64 (no near-ties are allowed there).

    Example:
        >>> round(near_tie_tolerance(torch.bfloat16, 20.0), 3)
        0.625
    """
    if dtype == torch.float64:
        return 0.0
    return margin * torch.finfo(dtype).eps * logit_scale


_FP32: dict[int, torch.nn.Module] = {}


def float32_target(model) -> torch.nn.Module:
    """The target in float32 (the model's own if it already is; else a float32 copy, made once per model)."""
    if model.dtype in (torch.float32, torch.float64):
        return model.target
    key = id(model.target)
    if key not in _FP32:
        _FP32.clear()
        _FP32[key] = copy.deepcopy(model.target).float().eval()
    return _FP32[key]


@torch.inference_mode()
def _logits32(model, ids: list[int]) -> torch.Tensor:
    """float32 logits [len(ids), V] of the target over ``ids``."""
    target = float32_target(model)
    x = torch.tensor([ids], device=model.device)
    return target(input_ids=x).logits[0].float()


@dataclass(frozen=True)
class Divergence:
    kind: str  # "exact" | "near_tie" | "mismatch"
    index: int  # first differing new-token index (the length when equal)
    gap: float = 0.0  # float32 z(reference token) - z(our token) at that position (>= 0 for a greedy reference)
    tolerance: float = 0.0

    def to_dict(self) -> dict:
        return {"kind": self.kind, "index": self.index, "gap": self.gap, "tolerance": self.tolerance}


def classify_divergence(model, prompt_ids, ours, reference, dtype: torch.dtype | None = None) -> Divergence:
    """Where ``ours`` first leaves the greedy ``reference``, is it a near-tie of the target in float32 on the
    reference's prefix (gap <= tolerance of ``dtype``, default the model's) or a mismatch? An output that is a
    prefix of the other (an earlier EOS) counts as a mismatch unless both are equal."""
    ours, reference = list(ours), list(reference)
    n = min(len(ours), len(reference))
    i = next((j for j in range(n) if ours[j] != reference[j]), n)
    if i == n:
        return Divergence("exact" if len(ours) == len(reference) else "mismatch", i)
    z = _logits32(model, list(prompt_ids) + reference[:i])[-1]  # [V]: predicts new token i
    gap = float(z[reference[i]] - z[ours[i]])
    tol = near_tie_tolerance(dtype or model.dtype, float(z.abs().max()))
    return Divergence("near_tie" if abs(gap) <= tol else "mismatch", i, gap, tol)


@dataclass
class Consistency:
    checked: int = 0  # committed verified/target tokens checked
    not_argmax: int = 0  # of those, not the float32 argmax (within the tolerance or not)
    max_gap_over_tolerance: float = 0.0  # max over checked tokens of gap / tolerance (inf when tolerance is 0)
    mismatches: list = field(default_factory=list)  # (new-token index, token, float32 argmax, gap, tolerance)


def self_consistency(model, result, dtype: torch.dtype | None = None) -> Consistency:
    """Every committed ``verified``/``target`` token of ``result`` is the float32 argmax of the target on the
    committed prefix, or within the tolerance of ``dtype`` (default the model's) of it; lossy tokens are skipped."""
    ids = list(result.prompt_ids) + list(result.token_ids)
    P = len(result.prompt_ids)
    z = _logits32(model, ids[:-1])[P - 1 :]  # [n, V]: row i predicts new token i
    out = Consistency()
    dtype = dtype or model.dtype
    for i, (t, prov) in enumerate(zip(result.token_ids, result.provenance)):
        if prov not in ("target", "verified"):
            continue
        row = z[i]
        best = int(row.argmax())
        gap = float(row[best] - row[t])
        tol = near_tie_tolerance(dtype, float(row.abs().max()))
        out.checked += 1
        out.not_argmax += best != t
        if best != t:
            out.max_gap_over_tolerance = max(out.max_gap_over_tolerance, gap / tol if tol else float("inf"))
        if gap > tol:
            out.mismatches.append((i, int(t), best, gap, tol))
    return out
