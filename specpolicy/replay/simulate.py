"""Replay: drive any ``Policy`` over a recorded trace exactly as the decoder would, in milliseconds.

For each prompt, the same loop as ``specpolicy.decoding.decoder`` with the models replaced by trace lookups
(n = index of the last committed new token, row n of the trace):

    state = StepState(step, position=n+1, budget=min(max_new - (n+1) - 1, max_draft), num_mtp_layers, stats,
                      last_accepted)
    while policy.decide(state) is EXTEND and depth < budget:   state += (draft[n, j], q, H, margin)[j = depth]
    walk d_1..d_m: verdict_j = (d_j == tokens[n + j]); trusted -> commit; else strict (or relaxed) rule;
                   first rejection -> commit tokens[n + j] (the target's correction); all accepted -> bonus token
    EOS among the committed tokens cuts the block; policy.observe(StepOutcome(...)); stats.updated(outcome)

Exact for lossless policies under greedy decoding: the committed sequence is the target's greedy sequence whatever
the schedule, so steps, TPF, the accepted-length histogram and acceptance by depth equal the real decoder's (run with
``max_draft = trace.k_max``: a policy is stopped at the trace's depth as ``max_draft`` stops it in the decoder;
``depth_capped_steps`` counts the steps that drafted that full depth with token budget to spare).

Approximate, and flagged ``approximate: True`` with a note, once a trusted or relaxed token the target rejects is
committed (an error): the rest of that step is still exact (the trace holds the target's tokens and p along every
drafted chain), but the replay then continues along the recorded target-greedy sequence, whereas the real run
continues after the wrong token and diverges from there. Relaxed rules read p from the recording's chain forward,
which may differ from the decoder's block forward in the last bits (decisions exactly at a rule's boundary).

Time is modelled with the trace's cost model: a step with m drafts costs ``c(m+1) * t_target(1) + m * t_mtp``, and
``modelled_speedup = sum over prompts of (new_tokens - 1) * t_target(1)  /  sum of the policy's step costs``
(prefill excluded on both sides). ``StepOutcome.draft_s`` / ``verify_s`` carry these modelled times.

Example:
    >>> from specpolicy.replay import load_trace, replay
    >>> res = replay(get_policy("threshold", tau_extend=0.3), load_trace("trace.safetensors"))
    >>> res.summary["tpf"], res.summary["modelled_speedup"], res.summary["approximate"]
    (2.91, 2.12, False)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from specpolicy.policies import ActionKind, Policy, StepOutcome, StepState, get_policy
from specpolicy.policies.base import AcceptanceRule, AcceptanceStats

from .trace import Trace

__all__ = ["PromptReplay", "ReplayError", "ReplayResult", "replay", "summarise_prompts"]

_EXTEND, _TRUST = ActionKind.EXTEND, ActionKind.TRUST
NOTE_TRUST = ("errors (committed trusted/relaxed tokens the target rejects) are exact within their step, but the replay "
              "then continues along the recorded target-greedy sequence; a real run continues after the wrong token")
NOTE_RELAXED = ("relaxed acceptance reads p from the recording's chain forward; decisions exactly at the rule's "
                "boundary may differ from the decoder's block forward")
NOTE_CAPPED = ("some steps drafted the trace's full probe depth K with token budget to spare; replayed (exactly) as "
               "max_draft = K: a deeper trace would let the policy draft further")


class ReplayError(ValueError):
    """Replay arguments the trace cannot serve (one line: what is wrong, what is allowed)."""


@dataclass(frozen=True)
class PromptReplay:
    """What one prompt's replay produced; field names follow ``GenerationStats`` where they mean the same."""

    new_tokens: int
    steps: int
    drafted: int
    accepted: int  # drafts committed (verified + relaxed + trusted)
    trusted_tokens: int
    relaxed_tokens: int
    shadow_rejects: int  # committed lossy tokens the strict rule rejects (errors)
    accepted_hist: tuple[int, ...]  # [a] = steps that committed a drafts
    accept_reached: tuple[int, ...]  # [j-1] = walked drafts at depth j
    accept_ok: tuple[int, ...]  # [j-1] = of those, strict verdict accept
    modelled_s: float
    ar_modelled_s: float
    finished_by: str  # "eos" | "length"
    depth_capped_steps: int
    diverged: bool  # a committed lossy token was wrong: everything after it is approximate

    @property
    def target_forwards(self) -> int:
        return self.steps + 1

    @property
    def tpf(self) -> float:
        return self.new_tokens / self.target_forwards

    @property
    def lossy_tokens(self) -> int:
        return self.trusted_tokens + self.relaxed_tokens


@dataclass(frozen=True)
class ReplayResult:
    prompts: tuple[PromptReplay, ...]
    summary: dict


def _relaxed_ok(rule: AcceptanceRule, p_d: float, rank: int, top1: float, ent: float) -> bool:
    """The decoder's relaxed rules (``decoding.acceptance.relaxed_accept``) on the trace's p features."""
    if rule.kind == "typical":
        return p_d > min(rule.eps, rule.delta * math.exp(-ent))
    if rule.kind == "topk":
        return rank < rule.k and math.log(top1) - math.log(max(p_d, 1e-30)) <= rule.delta
    raise ReplayError(f"unknown acceptance rule {rule.kind!r}; allowed: typical, topk")


def _mask(action, m: int) -> tuple[bool, ...]:
    if action.kind is not _TRUST:
        return (False,) * m
    if len(action.mask) > m:
        raise ValueError(f"trust mask has {len(action.mask)} entries but only {m} drafts exist")
    return action.mask + (False,) * (m - len(action.mask))


def _walk(rows: dict, i: int, n: int, drafts: list[int], mask: tuple[bool, ...], rule, eos: frozenset):
    """The decoder's walk over d_1..d_m: (verdicts, committed tokens, kinds: 0 target 1 verified 2 relaxed 3 trusted).

    The target's token at chain position j (after [t_n, d_1..d_j]) is the recorded ``tokens[n + 1 + j]`` while
    every committed draft is right, and ``target_chain[n, j]`` once a wrong draft was committed (trusted/relaxed):
    that one target forward over the whole chain is what the decoder's verify forward computes for the block.
    Tokens after an EOS are cut (the block then ends with EOS); verdicts cover every walked draft, as in the decoder.
    """
    toks, chain = rows["tokens"][i], rows["target_chain"][i][n]
    verdicts, committed, kinds = [], [], []
    on_path = True  # every committed draft so far is the target's own token: we are on the recorded sequence
    for j, d in enumerate(drafts):
        ok = d == (toks[n + 1 + j] if on_path else chain[j])
        verdicts.append(ok)
        if mask[j] or ok:
            committed.append(d)
            kinds.append(3 if mask[j] else 1)
        elif rule is not None and _relaxed_ok(rule, rows["p_draft"][i][n][j], rows["p_rank"][i][n][j],
                                              rows["p_top1"][i][n][j], rows["p_entropy"][i][n][j]):
            committed.append(d)
            kinds.append(2)
        else:
            break
        on_path = on_path and ok
    a = len(committed)  # correction (first rejection) or bonus token: the target's
    committed.append(toks[n + 1 + a] if on_path else chain[a])
    kinds.append(0)
    if eos and any(t in eos for t in committed):  # nothing after EOS is committed
        cut = next(c for c, t in enumerate(committed) if t in eos) + 1
        committed, kinds = committed[:cut], kinds[:cut]
    return verdicts, committed, kinds


def _replay_prompt(policy: Policy, rows: dict, i: int, max_new: int, max_draft: int, k_trace: int,
                   num_mtp_layers: int, eos: frozenset, step_cost: list[float]) -> PromptReplay:
    toks, D, Q = rows["tokens"][i], rows["draft"][i], rows["q"][i]
    E, M = rows["entropy"][i], rows["margin"][i]
    rule = policy.acceptance
    policy.reset()
    stats, last_accepted = AcceptanceStats(), -1
    new, steps, drafted, acc_total, trusted_n, relaxed_n, rejects, capped = 1, 0, 0, 0, 0, 0, 0, 0
    hist = [0] * (max_draft + 1)
    time_s, t_mtp = 0.0, step_cost[-1]
    finished = "eos" if toks[0] in eos else "length"
    while new < max_new and finished != "eos":
        n = new - 1
        budget = min(max_new - new - 1, max_draft)
        drow = D[n]
        state = StepState(step=steps, position=new, budget=budget, num_mtp_layers=num_mtp_layers, stats=stats,
                          last_accepted=last_accepted)
        while True:
            action = policy.decide(state)
            if action.kind is not _EXTEND or state.depth >= budget:
                break
            j = state.depth + 1
            state = StepState(tuple(drow[:j]), tuple(Q[n][:j]), tuple(E[n][:j]), tuple(M[n][:j]), steps, new, budget,
                              num_mtp_layers, stats, last_accepted)
        m = state.depth
        if m == max_draft == k_trace and max_new - new - 1 > m:
            capped += 1  # drafted the trace's full depth with token budget to spare: a deeper trace might go on
        mask = _mask(action, m)
        verdicts, committed, kinds = _walk(rows, i, n, drow[:m], mask, rule, eos)
        if committed[-1] in eos:  # the walk cut the block after an EOS
            finished = "eos"
        accepted = sum(1 for k in kinds if k)
        for c in range(accepted):
            if kinds[c] >= 2:
                trusted_n += kinds[c] == 3
                relaxed_n += kinds[c] == 2
                rejects += not verdicts[c]
        steps += 1
        drafted += m
        acc_total += accepted
        hist[accepted] += 1
        cost = step_cost[m]
        time_s += cost
        new += len(committed)
        outcome = StepOutcome(drafted=m, accepted=accepted, trusted=mask, verdicts=tuple(verdicts),
                              committed=len(committed), draft_s=m * t_mtp, verify_s=cost - m * t_mtp)
        policy.observe(outcome)
        stats, last_accepted = stats.updated(outcome), accepted
    return PromptReplay(
        new_tokens=new, steps=steps, drafted=drafted, accepted=acc_total, trusted_tokens=trusted_n,
        relaxed_tokens=relaxed_n, shadow_rejects=rejects, accepted_hist=tuple(hist), accept_reached=stats.attempted,
        accept_ok=stats.accepted, modelled_s=time_s, ar_modelled_s=(new - 1) * step_cost[0], finished_by=finished,
        depth_capped_steps=capped, diverged=rejects > 0,
    )


def replay(policy: str | Policy, trace: Trace, max_new_tokens: int | None = None, max_draft: int | None = None,
           **policy_params) -> ReplayResult:
    """Replay ``policy`` (a registered name or an instance) over every prompt of ``trace``.

    ``max_new_tokens`` defaults to the trace's N (it may be smaller, not larger); ``max_draft`` to the trace's probe
    depth K (the decoder's ``max_draft``; larger than K is refused: record a deeper trace).

    Example:
        >>> res = replay("fixed", trace, k=3)
        >>> res.summary["tpf"], res.prompts[0].accepted_hist
        (2.6, (12, 9, 8, 14))
    """
    policy = get_policy(policy, **policy_params) if isinstance(policy, str) else policy
    N, K = trace.max_new_tokens, trace.k_max
    max_new = N if max_new_tokens is None else max_new_tokens
    if not isinstance(max_new, int) or not 1 <= max_new <= N:
        raise ReplayError(f"max_new_tokens={max_new_tokens!r} is invalid; allowed: 1 <= max_new_tokens <= {N} "
                          "(the trace's length)")
    max_draft = K if max_draft is None else max_draft
    if not isinstance(max_draft, int) or not 0 <= max_draft <= K:
        raise ReplayError(f"max_draft={max_draft!r} is invalid; allowed: 0 <= max_draft <= {K} (the trace's probe "
                          "depth; record a deeper trace for more)")
    step_cost = [trace.cost.step_s(m) for m in range(max_draft + 1)] + [trace.cost.t_mtp]  # [-1]: one draft
    rows, eos = trace.rows, trace.eos_ids
    prompts = tuple(_replay_prompt(policy, rows, i, max_new, max_draft, K, trace.num_mtp_layers, eos, step_cost)
                    for i in range(trace.n_prompts))
    summary = summarise_prompts(prompts, lossless=policy.lossless, relaxed=policy.acceptance is not None)
    summary.update(policy=policy.name, params=policy.params(), max_new_tokens=max_new, max_draft=max_draft)
    return ReplayResult(prompts, summary)


def summarise_prompts(prompts, lossless: bool = True, relaxed: bool = False) -> dict:
    """Pooled figures (ratios of sums over prompts) with the names a real run's summary uses.

    Works on ``PromptReplay``s and on anything with the same fields (``replay.compare`` builds them from real runs).
    """
    new = sum(p.new_tokens for p in prompts)
    steps = sum(p.steps for p in prompts)
    fwd = steps + len(prompts)
    drafted = sum(p.drafted for p in prompts)
    width = max((len(p.accept_reached) for p in prompts), default=0)
    reached, ok = [0] * width, [0] * width
    hist = [0] * max((len(p.accepted_hist) for p in prompts), default=1)
    for p in prompts:
        for j, (r, o) in enumerate(zip(p.accept_reached, p.accept_ok)):
            reached[j] += r
            ok[j] += o
        for a, c in enumerate(p.accepted_hist):
            hist[a] += c
    model_s = sum(p.modelled_s for p in prompts)
    ar_s = sum(p.ar_modelled_s for p in prompts)
    lossy = sum(p.trusted_tokens + p.relaxed_tokens for p in prompts)
    rejects = sum(p.shadow_rejects for p in prompts)
    capped = sum(p.depth_capped_steps for p in prompts)
    notes = []
    if rejects:
        notes.append(NOTE_TRUST)
    if relaxed:
        notes.append(NOTE_RELAXED)
    if capped:
        notes.append(NOTE_CAPPED)
    return {
        "n_prompts": len(prompts),
        "new_tokens": new,
        "target_forwards": fwd,
        "steps": steps,
        "drafted": drafted,
        "tpf": new / fwd if fwd else float("nan"),
        "mean_draft_len": drafted / steps if steps else 0.0,
        "acceptance_by_depth": [{"depth": j + 1, "reached": reached[j], "value": ok[j] / reached[j] if reached[j]
                                 else None} for j in range(width)],
        "accepted_hist": hist,
        "lossy_tokens": lossy,
        "shadow_rejects": rejects,
        "lossy_token_rate": lossy / new if new else 0.0,
        "lossy_error_rate": rejects / new if new else 0.0,
        "modelled_s": model_s,
        "ar_modelled_s": ar_s,
        "modelled_speedup": ar_s / model_s if model_s > 0 else 1.0,
        "depth_capped_steps": capped,
        "lossless_policy": lossless,
        "approximate": bool(rejects or relaxed),
        "notes": notes,
    }
