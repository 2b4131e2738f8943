"""Real decodes in replay terms: the same per-prompt fields and pooled summary, so replayed and real runs compare
field by field (and lossless ones must agree exactly).

Works on ``GenerationResult``s without importing the decoder (duck-typed: ``token_ids``, ``steps`` with ``drafts``,
``accepted``, ``verdicts``, ``provenance``; ``stats.shadow_rejects``; ``finished_by``).

Example:
    >>> real = [generate(model, ids, pol, max_new_tokens=128, max_draft=trace.k_max) for ids in trace.prompt_ids]
    >>> side_by_side(replay(pol, trace).summary, summarise_generations(real, trace.cost, trace.k_max))["tpf"]
    {'replay': 2.91, 'real': 2.91, 'equal': True}
"""

from __future__ import annotations

from collections import Counter

from .simulate import PromptReplay, summarise_prompts
from .trace import CostModel

__all__ = ["EXACT_FIELDS", "prompt_from_generation", "side_by_side", "summarise_generations"]

EXACT_FIELDS = ("new_tokens", "steps", "target_forwards", "drafted", "tpf", "accepted_hist", "acceptance_by_depth",
                "lossy_error_rate", "modelled_speedup")


def prompt_from_generation(res, cost: CostModel, k_max: int) -> PromptReplay:
    """One real generation as a ``PromptReplay`` (modelled time from ``cost``; ``depth_capped_steps`` is 0)."""
    hist = [0] * (k_max + 1)
    for a, c in Counter(s.accepted for s in res.steps).items():
        while a >= len(hist):
            hist.append(0)
        hist[a] += c
    width = max((len(s.verdicts) for s in res.steps), default=0)
    reached, ok = [0] * width, [0] * width
    for s in res.steps:
        for j, v in enumerate(s.verdicts):
            reached[j] += 1
            ok[j] += int(v)
    prov = Counter(res.provenance)
    new = len(res.token_ids)
    return PromptReplay(
        new_tokens=new, steps=len(res.steps), drafted=sum(len(s.drafts) for s in res.steps),
        accepted=sum(s.accepted for s in res.steps), trusted_tokens=prov["trusted"], relaxed_tokens=prov["relaxed"],
        shadow_rejects=res.stats.shadow_rejects, accepted_hist=tuple(hist), accept_reached=tuple(reached),
        accept_ok=tuple(ok), modelled_s=sum(cost.step_s(len(s.drafts)) for s in res.steps),
        ar_modelled_s=(new - 1) * cost.step_s(0), finished_by=res.finished_by, depth_capped_steps=0,
        diverged=res.stats.shadow_rejects > 0,
    )


def summarise_generations(results, cost: CostModel, k_max: int, lossless: bool = True) -> dict:
    """The replay summary (``summarise_prompts``) of real generations; ``approximate`` is always False here."""
    out = summarise_prompts([prompt_from_generation(r, cost, k_max) for r in results], lossless=lossless)
    out.update(approximate=False, notes=[])
    wall = sum(r.stats.wall_s for r in results)
    out["wall_s"] = wall
    out["tokens_per_s"] = out["new_tokens"] / wall if wall > 0 else float("nan")
    return out


def side_by_side(replayed: dict, real: dict, fields=EXACT_FIELDS) -> dict:
    """{field: {"replay": x, "real": y, "equal": x == y}} (TPF and rates compared with a 1e-12 tolerance)."""
    out = {}
    for f in fields:
        a, b = replayed.get(f), real.get(f)
        if isinstance(a, float) and isinstance(b, float):
            eq = abs(a - b) <= 1e-12 * max(1.0, abs(a))
        elif f == "accepted_hist":
            eq = _trim(a) == _trim(b)
        else:
            eq = a == b
        out[f] = {"replay": a, "real": b, "equal": bool(eq)}
    return out


def _trim(hist):
    hist = list(hist or [])
    while hist and hist[-1] == 0:
        hist.pop()
    return hist
