"""The device cost model of one decode step, and the one place it is measured.

A step with m drafts costs ``t_target(m+1)`` (one target forward over the block [t_n, d_1..d_m]) plus ``m`` drafter
steps plus the loop's own overhead. ``measure_cost`` times the model parts in isolation (medians of interleaved
repetitions, CUDA synchronised), or, with ``loop_reps``, reads all three off the decoder's own steps; replay, tuning,
the cost-aware policy and the benchmark all read the same ``CostModel``.

Example:
    >>> cost = measure_cost(load_model("tiny"), ctx=prompt_ids, k=8, reps=30, loop_reps=2)
    >>> cost.c(4), cost.t_mtp / cost.t_target[0], cost.t_overhead / cost.t_target[0]
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

from ..policies import Action, Policy, StepState

__all__ = ["CostModel", "fit_cost", "measure_cost", "prices_rows", "speedups", "sweep_policies"]


@dataclass(frozen=True)
class CostModel:
    """Device cost of one step with m drafts, in seconds:

        step_s(m) = t_target(m + 1) + m * t_mtp + [m > 0] * t_first + t_overhead + m * t_overhead_draft
        step_s(m, rows, fresh) = step_s(m) + (rows - m - fresh) * t_row + fresh * t_ctx

    ``t_target[m-1]``: a target forward + head over m tokens (m = 1..K+1); ``t_mtp``: one drafter step over one row;
    ``t_first``: what a step's draft phase costs beyond its drafts' ``t_mtp`` once it drafts at all (the first
    draft after a target forward; 0 for cost models that predate it);
    ``t_row``: each further row a draft catches up (the MTP drafter's pending indices, ``drafters.mtp.CatchUp``: after
    accepted tokens, at a depth the last step did not reach; 0 for other drafters and for cost models that predate
    it: then every draft costs ``t_mtp``); ``t_ctx``: each further row of a depth's first draft in a generation,
    which reads the whole context in one call (``fresh`` rows: a few large matmuls, cheaper per row than the
    steady catch-up of 1-9 rows; 0 for cost models that predate it: priced at ``t_row``);
    ``t_overhead``: the loop's fixed cost per step outside the draft phase and the verify phase (observe, records);
    ``t_overhead_draft``: a cost per draft beyond ``t_mtp`` (0 unless given). Measured from the decoder's own steps
    (``measure_cost(..., loop_reps=...)``) or 0 for a cost model of isolated model timings; ``compute_s`` leaves both
    out. ``c(m) = t_target[m-1] / t_target[0]``.

    Example:
        >>> cm = CostModel(t_target=(0.010, 0.011, 0.012), t_mtp=0.002, t_overhead=0.001)
        >>> round(cm.c(3), 2), round(cm.step_s(2), 4), round(cm.compute_s(2), 4)
        (1.2, 0.017, 0.016)
    """

    t_target: tuple[float, ...]
    t_mtp: float
    t_overhead: float = 0.0
    t_overhead_draft: float = 0.0
    t_row: float = 0.0
    t_ctx: float = 0.0
    t_first: float = 0.0

    def c(self, m: int) -> float:
        return self.forward_s(m) / self.t_target[0]

    def forward_s(self, m: int) -> float:
        """Seconds of a target forward over m tokens (linear extrapolation past the measured range)."""
        t = self.t_target
        if m <= len(t):
            return t[m - 1]
        slope = (t[-1] - t[-2]) if len(t) > 1 else t[-1]
        return t[-1] + (m - len(t)) * max(slope, 0.0)

    def compute_s(self, drafted: int, rows: int | None = None, fresh: int = 0) -> float:
        """Model compute of a step with ``drafted`` drafts over ``rows`` drafter rows in all (None: one each), of
        which ``fresh`` are further rows of first drafts at a depth (``CatchUp.fresh``): t_target(m+1) + m * t_mtp +
        [m > 0] * t_first + (rows - m - fresh) * t_row + fresh * t_ctx (no loop overhead)."""
        return self.forward_s(drafted + 1) + self.drafting_s(drafted) + self.catch_up_s(drafted, rows, fresh)

    def drafting_s(self, drafted: int) -> float:
        """Seconds of a draft phase of ``drafted`` drafts of one row each: m * t_mtp + [m > 0] * t_first."""
        return drafted * self.t_mtp + (self.t_first if drafted else 0.0)

    def catch_up_s(self, drafted: int, rows: int | None, fresh: int = 0) -> float:
        """Seconds of the rows beyond one per draft: (rows - drafted - fresh) * t_row + fresh * t_ctx (0 for None)."""
        if rows is None:
            return 0.0
        return (rows - drafted - fresh) * self.t_row + fresh * (self.t_ctx or self.t_row)

    def step_s(self, drafted: int, rows: int | None = None, fresh: int = 0) -> float:
        """Modelled wall-clock seconds of one step with ``drafted`` drafts (class docstring)."""
        return self.compute_s(drafted, rows, fresh) + self.t_overhead + drafted * self.t_overhead_draft

    def generation_s(self, res, compute_only: bool = False) -> float:
        """Modelled seconds of the steps of one ``GenerationResult`` (catch-up rows from ``CatchUp`` where priced):
        per step, its cost with one row a draft plus its catch-up rows' (``catch_up_s``), summed in step order, the
        arithmetic of the replay's ``modelled_s``, so a replay of the same steps gives the same bits."""
        cost = self.compute_s if compute_only else self.step_s
        if self.t_row or self.t_ctx:
            from .drafters.mtp import CatchUp

            cu = CatchUp(len(res.prompt_ids))
        else:
            cu = None
        total = 0.0
        for s in res.steps:
            m = len(s.drafts)
            total += cost(m) + (self.catch_up_s(m, cu.step(m, len(s.committed)), cu.fresh) if cu is not None else 0.0)
        return total

    def to_dict(self) -> dict:
        return {"t_target": list(self.t_target), "t_mtp": self.t_mtp, "t_overhead": self.t_overhead,
                "t_overhead_draft": self.t_overhead_draft, "t_row": self.t_row, "t_ctx": self.t_ctx,
                "t_first": self.t_first,
                "c": [self.c(m) for m in range(1, len(self.t_target) + 1)], "mtp_rel": self.t_mtp / self.t_target[0]}

    @classmethod
    def from_dict(cls, d: dict) -> CostModel:
        """Inverse of ``to_dict`` (cost models stored before the overhead terms existed load with them at 0)."""
        return cls(tuple(float(t) for t in d["t_target"]), float(d["t_mtp"]), float(d.get("t_overhead", 0.0)),
                   float(d.get("t_overhead_draft", 0.0)), float(d.get("t_row", 0.0)), float(d.get("t_ctx", 0.0)),
                   float(d.get("t_first", 0.0)))


def measure_cost(model, ctx: list[int], k: int, reps: int, drafter=None, loop_reps: int = 0, loop_tokens: int = 48,
                 engine: str = "auto") -> CostModel:
    """The cost model of ``model`` after a context ``ctx`` (token ids), timed as the decoder runs (medians of
    ``reps`` after one warm-up repetition; CUDA synchronised around every timed call; ``engine`` as in ``generate``):

    t_target[m-1]: target forward + head over m new tokens after a KV cache of ``ctx`` (the cache is cropped back
                   after each call), m = 1..K+1, interleaved within each repetition so load drift hits every m alike;
    t_mtp:         one drafting step at depth 1 of ``drafter`` (default: the model's own, ``drafter_for``) on one
                   new position, its state caught up over ``ctx`` first, as the decoder drafts;
    with ``loop_reps`` > 0 the same quantities are instead read off the decoder's own steps (``_from_decoder``:
                   ``generate`` decodes ``loop_tokens`` tokens after ``ctx`` with ``ar`` and K ``sweep_policies``
                   schedules, ``loop_reps`` rounds; ``fit_cost``): t_target[m] = median verify time of the steps
                   with m drafts, t_first + m * t_mtp fitted to the draft phases (MTP drafter: also t_row and
                   t_ctx, the cost of each row a draft catches up beyond its first),
                   t_overhead = median time per step outside both phases. Isolated timings run with cold caches
                   between calls of different sizes and a drafter caught up by exactly one position; their c(m)
                   rose more steeply than the decoder's (session 11, float32 drafter: c(9) 1.66 isolated vs
                   1.18-1.27 in the loop); the decoder's own steps are what a run pays.
    """
    import torch

    from .drafters import drafter_for
    from .engine import causal_forward

    def timed(fn) -> float:
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        t0 = time.perf_counter()
        fn()
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        return time.perf_counter() - t0

    P = len(ctx)
    ids = torch.tensor([list(ctx) + [0] * (k + 2)], device=model.device)  # [1, P + K + 2]
    with torch.inference_mode():
        fwd = causal_forward(model.target, engine)
        h = fwd.forward(ids[:, :P])  # [1, P, H]
        vocab = model.target.config.get_text_config().vocab_size
        times: dict[int, list[float]] = {m: [] for m in range(1, k + 2)}
        for rep in range(reps + 1):
            for m in range(1, k + 2):
                x = torch.randint(0, vocab, (1, m), device=model.device)
                t = timed(lambda x=x: fwd.logits(fwd.forward(x)))
                fwd.crop(P)
                if rep:  # repetition 0 warms up
                    times[m].append(t)
        t_target = [statistics.median(times[m]) for m in range(1, k + 2)]
        d = drafter_for(model, engine) if drafter is None else drafter
        n = P - 1  # t_n = ctx[-1] is the last committed token; the prompt hidden states cover 0..n-1
        d.begin(ids, n, h[:, :n])
        d.draft(1, ids, n)  # catch up over the context once
        ts = []
        for _ in range(reps + 1):
            d.crop(n)  # forget the last position: the next draft processes exactly one index
            ts.append(timed(lambda: d.draft(1, ids, n)))
    compute = CostModel(tuple(t_target), statistics.median(ts[1:]))
    if loop_reps <= 0:
        return compute
    return _from_decoder(model, list(ctx), k, compute, loop_reps, loop_tokens, engine, drafter)


class _Sweep(Policy):
    """A calibration schedule, not a research policy: step i drafts k_i tokens (fewer where the budget is smaller),
    the k_i running through seeded random permutations of 1..k, so every block size, and a spread of catch-up rows
    per draft, occur within each run (``sweep_policies``)."""

    name = "cost-sweep"
    reads_stats = False

    def __init__(self, k: int, seed: int) -> None:
        rng = random.Random(seed)
        self.k, self.seed = k, seed
        self._ks = tuple(j for _ in range(64) for j in rng.sample(range(1, k + 1), k))

    def decide(self, state: StepState) -> Action:
        m, k = len(state.drafts), self._ks[state.step % len(self._ks)]
        return Action.extend() if m < k and m < state.budget else Action.verify()


def sweep_policies(k: int, n: int, seed: int = 0) -> dict:
    """``n`` calibration schedules over block sizes 1..k (``{"cost-sweep#j": policy}``, seeds seed..seed+n-1): decode
    them beside ``ar`` and read the cost model off their steps with ``fit_cost``.

    Example:
        >>> sorted(sweep_policies(4, 2))
        ['cost-sweep#0', 'cost-sweep#1']
    """
    return {f"cost-sweep#{j}": _Sweep(k, seed + j) for j in range(n)}


def fit_cost(ar: list, sweeps: list, k: int, compute: CostModel, rows: bool = True) -> CostModel:
    """The cost model read off the decoder's own steps: ``ar`` and ``sweeps`` are ``GenerationResult``s of ``ar`` and
    of ``sweep_policies`` schedules (the same prompts, decoded interleaved). t_target[m] = the median verify time
    (forward + walk + commit) of the steps with m drafts; every m occurs within every sweep run, so drift of the
    machine's speed hits every m alike (per-m medians from one fixed-k run per m each drifted with its own stretch
    of time). A size with fewer than 5 steps falls back to the isolated forwards' curve (``compute``) scaled by the
    median ratio of all verify times to it. t_first and t_mtp, and with ``rows`` (the MTP drafter) t_row and t_ctx,
    fitted to the sweeps' draft phases and the rows they caught up (``CatchUp``, ``_fit_drafts``; varied schedules
    make the rows vary within a run; the median draft-phase time per draft where no fit is positive); t_overhead = the median, over runs, of the
    time per step outside both phases (observe, records, the loop)."""
    from .drafters.mtp import CatchUp

    verify: dict[int, list[float]] = {m: [] for m in range(k + 1)}
    per_draft, outside, drafts = [], [], []  # drafts: (m, steady catch-up rows, fresh rows, draft phase seconds)
    for res in [*ar, *sweeps]:
        if not res.steps:
            continue
        cu = CatchUp(len(res.prompt_ids))
        for st in res.steps:
            m = len(st.drafts)
            verify.setdefault(m, []).append(st.verify_s)
            r = cu.step(m, len(st.committed))
            if m:
                per_draft.append(st.draft_s / m)
                drafts.append((m, r - m - cu.fresh, cu.fresh, st.draft_s))
        inside = sum(st.draft_s + st.verify_s for st in res.steps)
        outside.append((res.stats.wall_s - res.stats.prefill_s - inside) / len(res.steps))
    ratios = [t / compute.forward_s(m + 1) for m in range(k + 1) for t in verify[m]]
    level = statistics.median(ratios) if ratios else 1.0
    t_target = tuple(statistics.median(verify[m]) if len(verify[m]) >= 5 else level * compute.forward_s(m + 1)
                     for m in range(k + 1))
    t_mtp, t_row, t_ctx, t_first = _fit_drafts(drafts, statistics.median(per_draft) if per_draft else compute.t_mtp,
                                               rows)
    return CostModel(t_target, t_mtp, statistics.median(outside) if outside else 0.0, t_row=t_row, t_ctx=t_ctx,
                     t_first=t_first)


def prices_rows(model, drafter=None) -> bool:
    """Whether the cost model prices the rows a draft catches up (``t_row``, ``t_ctx``): the MTP drafters."""
    return (drafter.name if drafter is not None else getattr(model, "drafter_label", None)) in ("mtp", "mtp-int8")


def _from_decoder(model, ctx: list[int], k: int, compute: CostModel, reps: int, tokens: int, engine: str,
                  drafter) -> CostModel:
    """The cost model read off the decoder's own steps after ``ctx``: ``reps`` rounds of ``generate`` with ar and
    k ``sweep_policies`` schedules (round 0 warms up), fitted by ``fit_cost``."""
    from ..policies import get_policy
    from .decoder import generate

    ar, sweeps = [], []
    for rep in range(reps + 1):
        for label, pol in {"ar": get_policy("ar"), **sweep_policies(k, k, seed=rep * k)}.items():
            res = generate(model, ctx, pol, max_new_tokens=tokens, max_draft=k, drafter=drafter, engine=engine)
            if rep:
                (ar if label == "ar" else sweeps).append(res)
    return fit_cost(ar, sweeps, k, compute, prices_rows(model, drafter))


def _fit_drafts(drafts: list[tuple[int, int, int, float]], fallback: float,
                rows: bool = True) -> tuple[float, float, float, float]:
    """(t_mtp, t_row, t_ctx, t_first) from draft phases ``(m drafts, steady catch-up rows beyond one per draft, fresh
    rows, seconds)``. Least squares of seconds ~ t_first + m * t_mtp + rows * t_row over the phases without fresh
    rows, refitted once without the phases more than 4 median absolute deviations off the first fit (timing spikes
    on a shared CPU); a term whose fit is not positive is left out and the rest refitted (t_first, then t_row; both
    0 where they cost nothing measurable); ``rows=False`` (drafters without catch-up rows): t_row and t_ctx 0. t_ctx:
    the median over the phases with fresh rows of what is left of their seconds per fresh row (0 without such
    phases: fresh rows are then priced at t_row). (``fallback``, 0, 0, 0) where t_mtp is not positive."""
    import numpy as np

    steady = [d for d in drafts if not d[2]]
    if len(steady) < 4:
        return fallback, 0.0, 0.0, 0.0
    x = np.array([(1.0, m, r) for m, r, _, _ in steady], float)  # columns: t_first, t_mtp, t_row
    y = np.array([d[3] for d in steady], float)
    cols = [0, 1, 2] if rows else [0, 1]
    res = y - x[:, cols] @ np.linalg.lstsq(x[:, cols], y, rcond=None)[0]
    mid = np.median(res)
    mad = float(np.median(np.abs(res - mid))) or float("inf")
    keep = np.abs(res - mid) <= 4 * mad
    while True:
        coef = dict(zip(cols, np.linalg.lstsq(x[keep][:, cols], y[keep], rcond=None)[0]))
        drop = next((c for c in (0, 2) if c in coef and coef[c] <= 0), None)
        if drop is None:
            break
        cols.remove(drop)
    t_first, t_mtp, t_row = (float(coef.get(c, 0.0)) for c in (0, 1, 2))
    if t_mtp <= 0:
        return fallback, 0.0, 0.0, 0.0
    if not rows:
        return t_mtp, 0.0, 0.0, t_first
    left = [(t - t_first - m * t_mtp - r * t_row) / f for m, r, f, t in drafts if f]
    t_ctx = float(np.median(left)) if left else 0.0
    return t_mtp, t_row, t_ctx if t_ctx > 0 else 0.0, t_first


def speedups(results, ar, cost: CostModel) -> dict:
    """Modelled, ceiling and measured speedup over ``ar`` of one policy's generations on the same prompts (decode
    phase: the prefill and the token it commits are left out of all three, so they measure the same thing).

    ``results``/``ar``: ``GenerationResult``s per prompt. ``modelled``: sum over prompts of (tokens - 1) x step_s(0)
    over the sum of step_s(m) of the policy's steps (what replay predicts); ``ceiling``: the same with model compute
    only (``compute_s``: TPF x t_step(0) / mean t_step(m) without the loop's overhead); ``measured``: decode-phase
    tokens/s of the policy over that of ``ar``; ``measured_over_modelled`` and ``measured_over_ceiling`` their ratios.

    Example:
        >>> s = speedups(results["threshold"], results["ar"], cost)
        >>> s["measured"], s["modelled"], s["ceiling"]
    """
    def rate(rs) -> float:
        secs = sum(r.stats.wall_s - r.stats.prefill_s for r in rs)
        return sum(len(r.token_ids) - 1 for r in rs) / secs if secs > 0 else float("nan")

    after_first = sum(len(r.token_ids) - 1 for r in results)
    steps = sum(len(r.steps) for r in results)
    modelled = after_first * cost.step_s(0) / sum(cost.generation_s(r) for r in results) if steps else float("nan")
    ceiling = (after_first * cost.compute_s(0) / sum(cost.generation_s(r, compute_only=True) for r in results)
               if steps else float("nan"))
    measured = rate(results) / rate(ar)
    return {"modelled": modelled, "ceiling": ceiling, "measured": measured,
            "measured_over_modelled": measured / modelled, "measured_over_ceiling": measured / ceiling}
