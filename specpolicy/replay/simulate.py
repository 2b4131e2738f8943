"""Replay: drive any ``Policy`` over a recorded trace exactly as the decoder would, in milliseconds.

For each prompt, the decoder's step with the models replaced by trace lookups (n = index of the last committed new
token, row n of the trace); the step itself is the decoder's own (``specpolicy.decoding.step``):

    state = StepState(step, position=n+1, budget=min(max_new - (n+1) - 1, max_draft), stats, last_accepted, ...)
    draft_phase(policy, state, prefix, grow)      prefix(j) = (draft, q, H, margin)[n, :j] of the trace, built once
    walk(d_1..d_m, trust_mask(action), judge)     judge: verdict_j = (d_j == the target's token at chain position j),
                                                  read from tokens[n + j] (clean block) or target_chain[n, j-1];
                                                  relaxed rules read the trace's p features (``RelaxedRule``);
                                                  a strict walk is memoised per (trace, n, m): a pure function;
                                                  a lossy one also under its mask or the rule's answers
    policy.observe(StepOutcome(...)); stats.updated(outcome)     (the stats not for ``reads_stats = False`` policies)

Exact for lossless policies under greedy decoding: the committed sequence is the target's greedy sequence whatever
the schedule, so steps, TPF, the accepted-length histogram and acceptance by depth equal the real decoder's (run with
``max_draft = trace.k_max``: a policy is stopped at the trace's depth as ``max_draft`` stops it in the decoder;
``depth_capped_steps`` counts the steps that drafted that full depth with token budget to spare).

Exact, that is, up to rounding (``CONFIDENCE_TOLERANCE``). The trace's q(d_j) comes from the drafter run along the
recorded greedy path one position at a time, the decoder's from the same drafter inside speculative steps: the same
maths on caches filled in other block shapes, so in float32 the two differ in the last bits (up to ~1e-6 measured on
the shipped model, ``tests/replay/test_float32_exactness.py``; 0 in float64). A decision can therefore differ only
where a policy compares a confidence with a threshold within that distance of it; the test shows none does on its
prompts for any built-in policy. Flagged ``approximate`` with a note, never exact: a trace recorded in half precision
(bf16/fp16 round the block and one-token forwards differently, so the recorded chain can disagree with the decoder at
near-ties), a trace of a drafter whose drafts depend on the block they are made in (``mtp-int8``:
``Trace.block_invariant``), and a trace whose recorder saw its chain forward disagree with the one-token decode
(``chain_first_token_mismatch`` > 0: the chain's verdicts differ from the decoder's at those positions; the summary's
``chain_mismatch``). Approximate, and flagged ``approximate: True`` with a note, once a trusted or relaxed token the
target rejects is committed (an error): the rest of that step is still exact (the trace holds the target's tokens and
p along every drafted chain), but the replay then continues along the recorded target-greedy sequence, whereas the
real run continues after the wrong token and diverges from there. Relaxed rules read p from the recording's chain
forward, which may differ from the decoder's block forward in the last bits (decisions exactly at a rule's boundary).

Time is modelled with the trace's cost model: a step with m drafts costs ``CostModel.step_s`` (``c(m+1) * t_target(1)
+ m * t_mtp + t_first``, the loop's overhead, the rows its drafts catch up: ``CatchUp``, as the real run's are), and
``modelled_speedup = sum over prompts of (new_tokens - 1) * t_target(1)  /  sum of the policy's step costs``
(prefill excluded on both sides). ``StepOutcome.draft_s`` / ``verify_s`` carry these modelled times.

Example:
    >>> from specpolicy.replay import load_trace, replay
    >>> res = replay(get_policy("threshold", tau_extend=0.3), load_trace("trace.safetensors"))
    >>> res.summary["tpf"], res.summary["modelled_speedup"], res.summary["approximate"]
    (2.91, 2.12, False)
"""

from __future__ import annotations

from dataclasses import dataclass
from weakref import WeakKeyDictionary

import numpy as np

from specpolicy.decoding.acceptance import PFeatures, relaxed_rule
from specpolicy.decoding.drafters.mtp import CatchUp
from specpolicy.decoding.step import draft_phase, trust_mask, walk
from specpolicy.errors import UserError
from specpolicy.policies import ActionKind, Policy, StepOutcome, StepState, get_policy, with_step_cost
from specpolicy.policies.base import AcceptanceStats, chain_hook, reads_stats

from .trace import Trace
from .walks import _depth_counts, _lossy_block

_TRUST = ActionKind.TRUST

__all__ = ["CONFIDENCE_TOLERANCE", "PromptReplay", "ReplayError", "ReplayResult", "replay", "summarise_prompts"]

NOTE_TRUST = ("errors (committed trusted/relaxed tokens the target rejects) are exact within their step, but the replay "
              "then continues along the recorded target-greedy sequence; a real run continues after the wrong token")
NOTE_RELAXED = ("relaxed acceptance reads p from the recording's chain forward; decisions exactly at the rule's "
                "boundary may differ from the decoder's block forward")
NOTE_HALF = ("the trace was recorded in half precision: block and one-token forwards round differently there, so "
             "the recorded chain may disagree with the decoder's at numerical near-ties; replay is not exact")
NOTE_MISMATCH = ("the recorder's chain forward disagreed with the one-token decode at {n} positions "
                 "(chain_first_token_mismatch): verdicts there may differ from the decoder's; replay is not exact")
NOTE_BLOCK = "the drafter quantizes per call (mtp-int8): the trace's one-row drafts may differ from the decoder's blocks"
NOTE_CAPPED = ("some steps drafted the trace's full probe depth K with token budget to spare; replayed (exactly) as "
               "max_draft = K: a deeper trace would let the policy draft further")


HALF = ("bfloat16", "float16")
# |q(d_j) in the trace - q(d_j) in the decoder| that replay is exact within, per recording dtype (None: not exact,
# flagged approximate); float32: 10x the largest difference measured on the shipped model (1.3e-6)
CONFIDENCE_TOLERANCE = {"float64": 1e-12, "float32": 1e-5, "bfloat16": None, "float16": None}


class ReplayError(UserError):
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


_OK, _NO = (True, 1.0), (False, 0.0)  # greedy verdicts: (accepted, acceptance probability)
_VERDICT = (_NO, _OK).__getitem__  # bool -> verdict
_features = PFeatures._make  # (p_draft, p_rank, p_top1, p_entropy) -> PFeatures
_TABLES: WeakKeyDictionary = WeakKeyDictionary()  # trace -> (trace.rows and eos ids it was built for, tables)


def _prefixes(D, Q, E, M) -> tuple[list, tuple]:
    """``([j]: d_1..d_j of one row for StepState.with_prefix, j = 1..K; the chain d_1..d_n for decide_chain)``; None
    from the first depth without a recorded draft on (``draft_phase`` asks no deeper once ``next_draft`` has nothing)."""
    n = next((j for j, d in enumerate(D) if d < 0), len(D))  # depths with a recorded draft
    D, Q, E, M = tuple(D), tuple(Q), tuple(E), tuple(M)
    prefixes = [None, *((D[:j], Q[:j], E[:j], M[:j]) for j in range(1, n + 1))] + [None] * (len(D) - n)
    return prefixes, (D[:n], Q[:n], E[:n], M[:n])


def _row_tables(trace: Trace) -> list[list[tuple]]:
    """Per prompt i, per row n: what one step at row n reads, built once per trace (rebuilt if ``trace.rows`` or the
    EOS ids change): ``(prefixes, strict verdicts on the clean block, on the chain, the target's tokens
    on the clean block, on the chain, the p features per depth, strict walks, the drafts' chain, lossy walks)``;
    ``prefixes`` and the chain: ``_prefixes``; the clean block's target token at position j is ``tokens[n + 1 + j]``,
    the chain's ``target_chain[n, j]`` (``_Judge``); ``strict walks[m]``: ``_strict_block``, ``lossy walks``:
    ``walks._lossy_block``, both filled on first use. Each is a function of the trace and the row alone, so every
    later replay of the trace reuses it. (Prefixes and memos are tuples of plain numbers,
    which the garbage collector stops tracking: a big trace adds little to its full collections.)"""
    rows, key = trace.rows, trace.eos_ids
    cached = _TABLES.get(trace)
    if cached is not None and cached[0] is rows and cached[1] == key:
        return cached[2]
    P, N, K = trace.n_prompts, trace.max_new_tokens, trace.k_max
    after = np.minimum(np.arange(N - 1)[:, None] + np.arange(1, K + 1)[None, :], N - 1)  # [N-1, K]: n + 1 + j
    clean_ok = (trace.draft == trace.tokens[:, after]).tolist()  # [P, N-1, K]; read only where n + 1 + j < N
    chain_ok = (trace.draft == trace.target_chain[:, :, :K]).tolist()
    tables = []
    for i in range(P):
        toks, D, Q, E, M, C = (rows[k][i] for k in ("tokens", "draft", "q", "entropy", "margin", "target_chain"))
        pf = [rows[k][i] for k in PFeatures._fields]
        chains = [_prefixes(D[n], Q[n], E[n], M[n]) for n in range(N - 1)]
        tables.append([(chains[n][0].__getitem__, tuple(map(_VERDICT, clean_ok[i][n])),
                        tuple(map(_VERDICT, chain_ok[i][n])), toks[n + 1 : n + 2 + K], C[n],
                        tuple(zip(*(f[n] for f in pf))), [None] * (K + 1), chains[n][1], {}) for n in range(N - 1)])
    _TABLES[trace] = (rows, key, tables)
    return tables


class _Judge:
    """The judge of one prompt's step at row n (``at``: a row of ``_row_tables``). The target's token at chain position
    j is the recorded ``tokens[n + 1 + j]`` while the block is ``clean`` (every committed draft right), and
    ``target_chain[n, j]`` once a wrong draft was committed (trusted/relaxed): that one target forward over the whole
    chain is what the decoder's verify forward computes for the block."""

    __slots__ = ("ok_clean", "ok_chain", "t_clean", "t_chain", "pf", "accept")

    def __init__(self, rule):
        self.accept = rule.accept_features if rule is not None else None

    def at(self, row: tuple) -> _Judge:
        _, self.ok_clean, self.ok_chain, self.t_clean, self.t_chain, self.pf, _, _, _ = row
        return self

    def strict(self, j: int, clean: bool) -> tuple[bool, float]:
        return self.ok_clean[j] if clean else self.ok_chain[j]

    def relaxed(self, j: int) -> bool:
        return self.accept(_features(self.pf[j]))  # built per call: plain tuples in the table go untracked by gc

    def target(self, j: int, clean: bool, rejected: bool) -> int:
        return self.t_clean[j] if clean else self.t_chain[j]


class _StatsLeftOut:
    """``state.stats`` for a policy that declares ``reads_stats = False``: reading it is a broken declaration (special
    names, which ``copy`` and ``inspect`` probe, get the AttributeError they expect)."""

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise TypeError(f"a policy declares reads_stats = False but its decide read state.stats.{name}; allowed: "
                        "remove the declaration (the default, reads_stats = True)")


_STATS_LEFT_OUT = _StatsLeftOut()


def _strict_block(row: tuple, drafts: tuple, judge: _Judge, eos: frozenset) -> tuple:
    """The strict walk of the row's d_1..d_m (``drafts``), memoised in the row: ``(eos, accepted, verdicts, committed
    tokens, len(verdicts), leading accepts among them, the all-False trust mask)``; a strict walk's verdicts are that
    many accepts, then at most one reject."""
    m, mask = len(drafts), (False,) * len(drafts)
    block = walk(drafts, mask, judge.at(row), False, eos)
    v = block.verdicts
    memo = row[6][m] = (block.eos, block.accepted, v, len(block.committed), len(v), len(v) - (not v[-1] if v else 0),
                        mask)
    return memo


def _replay_prompt(policy: Policy, table: list[tuple], t0: int, rule, max_new: int, max_draft: int, full: int,
                   native_depths: int, eos: frozenset, costs: tuple, keep: bool, observe,
                   catch_up: tuple | None) -> PromptReplay:
    """One prompt's replay (``replay``'s plan: ``full`` is the trace's depth K if ``max_draft`` is K, else -1;
    ``catch_up``: (the cost model, prompt length) where it prices catch-up rows, else None)."""
    judge, relaxed, start_state, grow = _Judge(rule), rule is not None, StepState.at_step, StepState.with_prefix
    chain = chain_hook(policy)
    policy.reset()
    tally = {}  # {verdicts: steps} of the lossy steps, and tallies of the strict ones (``_depth_counts``)
    stats = AcceptanceStats() if keep else _STATS_LEFT_OUT
    last_accepted, new, steps, drafted, capped, lossy, time_s = -1, 1, 0, 0, 0, [0, 0, 0], 0.0
    hist, walked_n, ok_n = [0] * (max_draft + 1), [0] * (max_draft + 1), [0] * (max_draft + 1)
    step_cost, draft_s, verify_s = costs
    cu, catch_up_s = (CatchUp(catch_up[1]), catch_up[0].catch_up_s) if catch_up else (None, None)
    finished = t0 in eos
    while new < max_new and not finished:
        row = table[new - 1]
        left = max_new - new - 1
        state = start_state(steps, new, left if left < max_draft else max_draft, stats, last_accepted, native_depths)
        if chain is None:
            state, action = draft_phase(policy, state, row[0], grow)
            m = len(state.drafts)
        else:  # the policy's own one-pass draft phase over the recorded chain (``Policy.decide_chain``)
            m, action = chain(state, row[7])  # the state is not grown: a walk reads d_1..d_m off the chain, row[7][0]
        capped += m == full and left > m  # drafted the trace's full depth with token budget to spare
        if action.kind is not _TRUST:  # the strict walk: the same for every visit of (row, m)
            finished, accepted, verdicts, committed, n_walked, n_ok, mask = (
                row[6][m] or _strict_block(row, row[7][0][:m], judge, eos))
            strict = not relaxed or n_walked == n_ok  # a relaxed rule is asked at the first rejected draft, n_ok
        else:
            strict, mask, n_ok = False, trust_mask(action, m), 0
        if strict:
            if keep:
                stats = stats._walked(n_walked, n_ok)  # = stats.updated(outcome)
            else:  # the tallies ``_depth_counts`` turns into the stats' counts at the end
                walked_n[n_walked] += 1
                ok_n[n_ok] += 1
        else:  # trusted drafts, or a relaxed rule asked where the strict rule rejects
            finished, accepted, verdicts, committed, n_trusted, n_relaxed, wrong = _lossy_block(
                row, m, mask, judge.at(row), relaxed, eos, n_ok)
            lossy[0] += n_trusted
            lossy[1] += n_relaxed
            lossy[2] += wrong
            tally[verdicts] = tally.get(verdicts, 0) + 1
            if keep:
                stats = stats._plus(verdicts)  # = stats.updated(outcome)
        steps += 1
        drafted += m
        hist[accepted] += 1
        extra = catch_up_s(m, cu.step(m, committed), cu.fresh) if cu is not None else 0.0
        time_s += step_cost[m] + extra
        new += committed
        if observe is not None:
            observe(StepOutcome.of(m, accepted, mask, verdicts, committed, draft_s[m] + extra, verify_s[m]))
        last_accepted = accepted
    reached, ok = (stats.attempted, stats.accepted) if keep else _depth_counts(walked_n, ok_n, tally)
    return PromptReplay(
        new_tokens=new, steps=steps, drafted=drafted, accepted=sum(a * c for a, c in enumerate(hist)),
        trusted_tokens=lossy[0], relaxed_tokens=lossy[1], shadow_rejects=lossy[2], accepted_hist=tuple(hist),
        accept_reached=reached, accept_ok=ok, modelled_s=time_s, ar_modelled_s=(new - 1) * step_cost[0],
        finished_by="eos" if finished else "length", depth_capped_steps=capped, diverged=lossy[2] > 0,
    )


def replay(policy: str | Policy, trace: Trace, max_new_tokens: int | None = None, max_draft: int | None = None,
           drafter: str | None = None, **policy_params) -> ReplayResult:
    """Replay ``policy`` (a registered name or an instance) over every prompt of ``trace``.

    ``max_new_tokens`` defaults to the trace's N (it may be smaller, not larger); ``max_draft`` to the trace's probe
    depth K (the decoder's ``max_draft``; larger than K is refused: record a deeper trace). ``drafter``: the drafter
    the caller means (a trace of another drafter is refused); a policy fitted to one drafter (``requires_drafter``)
    is refused on a trace of another. A policy with a ``step_cost`` parameter left None (``goodput``) gets the
    trace's cost model (``policies.with_step_cost``; ``summary["params"]`` shows the numbers used): to compare with
    a real run, decode with ``with_step_cost(policy, trace.cost)`` too, as ``decode_real`` does.

    Example:
        >>> res = replay("fixed", trace, k=3)
        >>> res.summary["tpf"], res.prompts[0].accepted_hist
        (2.6, (12, 9, 8, 14))
    """
    policy = get_policy(policy, **policy_params) if isinstance(policy, str) else policy
    policy = with_step_cost(policy, trace.cost)  # a cost-aware policy left without a cost model: the trace's
    if drafter is not None and drafter != trace.drafter:
        raise ReplayError(f"the trace was recorded with drafter {trace.drafter}, not {drafter}; allowed: "
                          f"drafter={trace.drafter} or a trace recorded with {drafter}")
    if policy.requires_drafter is not None and policy.requires_drafter != trace.drafter:
        raise ReplayError(f"{policy.name} is fitted to drafter {policy.requires_drafter}, but the trace was recorded "
                          f"with {trace.drafter}; allowed: a trace of {policy.requires_drafter}")
    N, K = trace.max_new_tokens, trace.k_max
    max_new = N if max_new_tokens is None else max_new_tokens
    if not isinstance(max_new, int) or not 1 <= max_new <= N:
        raise ReplayError(f"max_new_tokens={max_new_tokens!r} is invalid; allowed: 1 <= max_new_tokens <= {N} "
                          "(the trace's length)")
    max_draft = K if max_draft is None else max_draft
    if not isinstance(max_draft, int) or not 0 <= max_draft <= K:
        raise ReplayError(f"max_draft={max_draft!r} is invalid; allowed: 0 <= max_draft <= {K} (the trace's probe "
                          "depth; record a deeper trace for more)")
    step, draft = ([f(m) for m in range(K + 1)] for f in (trace.cost.step_s, trace.cost.drafting_s))
    t0, costs = trace.rows["tokens"], (step, draft, [t - d for t, d in zip(step, draft)])  # costs: step/draft/verify_s
    observe = None if getattr(policy.observe, "__func__", None) is Policy.observe else policy.observe  # no-op hook
    plan = (relaxed_rule(policy.acceptance), max_new, max_draft, max_draft if max_draft == K else -1,
            trace.native_depths, trace.eos_ids, costs, reads_stats(policy), observe)
    rows = trace.cost.t_row > 0 or trace.cost.t_ctx > 0  # catch-up rows priced (``CatchUp`` from the prompt length)
    prompts = tuple(_replay_prompt(policy, table, t0[i][0], *plan,
                                   (trace.cost, len(trace.prompt_ids[i])) if rows else None)
                    for i, table in enumerate(_row_tables(trace)))
    summary = summarise_prompts(prompts, lossless=policy.lossless, relaxed=policy.acceptance is not None)
    summary.update(policy=policy.name, params=policy.params(), max_new_tokens=max_new, max_draft=max_draft,
                   dtype=trace.dtype)
    mismatch = int(trace.meta.get("chain_first_token_mismatch") or 0)
    summary.update(chain_mismatch=mismatch, confidence_tolerance=CONFIDENCE_TOLERANCE.get(trace.dtype))
    for flagged, note in ((trace.dtype in HALF, NOTE_HALF), (mismatch, NOTE_MISMATCH.format(n=mismatch)),
                          (not trace.block_invariant, NOTE_BLOCK)):
        if flagged:
            summary["approximate"] = True
            summary["notes"].append(note)
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
            reached[j], ok[j] = reached[j] + r, ok[j] + o
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
