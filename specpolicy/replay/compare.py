"""Replay vs real decoding: real decodes in replay terms (the same per-prompt fields and pooled summary), so replayed
and real runs compare field by field, and lossless ones must agree exactly.

``prompt_from_generation`` / ``summarise_generations`` work on ``GenerationResult``s duck-typed (``token_ids``,
``steps`` with ``drafts``, ``accepted``, ``verdicts``; ``provenance``; ``stats``; ``finished_by``).
``decode_real`` decodes a trace's prompts for real with the shared harness (``ar`` among the runners, for the
wall-clock reference) and ``compare_row`` puts one policy's replay and real figures side by side.

Example:
    >>> real, ar = decode_real(model, trace, {"threshold": get_policy("threshold")})
    >>> compare_row("threshold", get_policy("threshold"), trace, real["threshold"], ar)["exact"]
    True
"""

from __future__ import annotations

from collections import Counter

from specpolicy.decoding.cost import speedups
from specpolicy.policies import with_step_cost

from .simulate import HALF, PromptReplay, replay, summarise_prompts
from .trace import CostModel, Trace

__all__ = ["EXACT_FIELDS", "PER_PROMPT", "compare_row", "decode_real", "markdown", "prompt_from_generation",
           "side_by_side", "summarise_generations"]

PER_PROMPT = ("new_tokens", "steps", "accepted_hist", "accept_reached", "accept_ok", "shadow_rejects")
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
        accept_ok=tuple(ok), modelled_s=cost.generation_s(res),
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


def _norm(x):
    """Counts per depth compare without their trailing zeros; anything else as it is."""
    return _trim(x) if isinstance(x, tuple | list) else x


def _trim(hist):
    hist = list(hist or [])
    while hist and hist[-1] == 0:
        hist.pop()
    return hist


def decode_real(model, trace: Trace, policies: dict, progress: bool = True) -> tuple[dict, list]:
    """Decode every trace prompt with every policy (``max_new_tokens`` N, ``max_draft`` K and the engine of the
    trace) and with ``ar``, interleaved by the shared harness; a ``step_cost`` left None is filled from the trace's cost model, as
    ``replay`` fills it. Returns ({label: [GenerationResult per prompt]}, [ar result per
    prompt]); ``ar``'s wall clock is the reference of the wall-clock speedup."""
    from specpolicy.decoding.harness import interleaved, policy_runner

    policies = {label: with_step_cost(p, trace.cost) for label, p in policies.items()}  # as replay() fills them
    labels = {label: label for label in policies}
    ar_label = next(f"ar#{i}" for i in range(len(policies) + 1) if f"ar#{i}" not in labels)
    kw = {"max_draft": trace.k_max, "engine": trace.meta.get("engine", "auto")}
    runners = {label: policy_runner(model, (lambda p=p: p), **kw) for label, p in policies.items()}
    runners[ar_label] = policy_runner(model, "ar", **kw)
    out: dict[str, list] = {label: [None] * trace.n_prompts for label in runners}
    for c in interleaved(list(trace.prompt_ids), runners, trace.max_new_tokens, progress=progress, desc="decode"):
        out[c.label][c.index] = c.result
    ar = out.pop(ar_label)
    return out, ar


def compare_row(label: str, policy, trace: Trace, results: list, ar: list) -> dict:
    """One row: replayed vs real figures of ``policy`` on the trace's prompts (same prompts, same N and K)."""
    rep = replay(policy, trace)
    real = summarise_generations(results, trace.cost, trace.k_max, lossless=policy.lossless)
    same = 0
    for p_rep, res in zip(rep.prompts, results):
        p_real = prompt_from_generation(res, trace.cost, trace.k_max)
        same += all(_norm(getattr(p_rep, f)) == _norm(getattr(p_real, f)) for f in PER_PROMPT)
    s = rep.summary
    return {
        "policy": label, "lossless": policy.lossless, "prompts": len(results), "prompts_equal": same,
        # equal prompts of a half-precision trace (or one whose chain disagreed with the decoder while recording, or
        # of a drafter whose drafts depend on the block they are made in) are not called exact: near-ties can break
        # them on other prompts
        "exact": same == len(results) and trace.dtype not in HALF and not s["chain_mismatch"] and trace.block_invariant,
        "approximate": s["approximate"], "chain_mismatch": s["chain_mismatch"],
        "replay_tpf": s["tpf"], "real_tpf": real["tpf"],
        "replay_error": s["lossy_error_rate"], "real_error": real["lossy_error_rate"],
        "replay_lossy_rate": s["lossy_token_rate"], "real_lossy_rate": real["lossy_token_rate"],
        "replay_mean_draft": s["mean_draft_len"], "real_mean_draft": real["mean_draft_len"],
        "replay_speedup": s["modelled_speedup"], "real_speedup_modelled": real["modelled_speedup"],
        # decode phase (prefill and its token left out), as the modelled speedups are
        "real_speedup_wall": speedups(results, ar, trace.cost)["measured"],
        "depth_capped_steps": s["depth_capped_steps"],
    }


def markdown(rows: list[dict], trace: Trace) -> str:
    """The replay-vs-real table as markdown."""
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
    lines += ["", "*modelled with the trace's cost model (replay_report: the one below; prefill excluded); wall "
              "speedup: tokens/s vs ar decoded interleaved with the policies in the same process (noisy on a shared "
              "CPU)."]
    return "\n".join(lines) + "\n"
