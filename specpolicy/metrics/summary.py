"""Run summaries: speed and quality per policy, each with a seeded percentile bootstrap 95% interval over prompts.

Pure computations over *records* (plain dicts, one per (prompt, policy), as ``experiments.run`` writes them to
``records.jsonl``); nothing here runs a model. A record holds at least::

    prompt_id, policy, token_ids, stats{new_tokens, target_forwards, steps, drafted, lossy_tokens, shadow_rejects,
    wall_s}, accept_reached[j-1], accept_ok[j-1]  (walked / accepted drafts at depth j), nll_sum, nll_tokens

Every figure is a *ratio of sums over prompts* (pooled), so long and short generations weigh by their tokens:

    tpf               = sum new_tokens / sum target_forwards
    tokens_per_s      = sum new_tokens / sum wall_s
    speedup_vs_ar     = tokens_per_s(policy) / tokens_per_s(ar), same prompts, same process (pooled, not per prompt)
    acceptance_by_depth[j] = sum accepted at depth j / sum drafts that reached depth j (strict or shadow verdicts)
    lossy_token_rate  = sum lossy tokens / sum new tokens;   lossy_error_rate = sum shadow rejects / sum new tokens
    errors_per_trusted_token = sum trusted shadow rejects / sum trusted tokens (the risk a trust certificate bounds,
                        pooled); errors_per_relaxed_token likewise (1 by construction: a relaxed rule is asked only
                        after a strict rejection); errors_per_committed_token = lossy_error_rate. A shadow verdict is
                        the strict rule against the *committed* prefix: after a first wrong token, later drafts are
                        judged on the diverged text, which is why first_error / first_divergence stand beside them
    first_error       = mean index of the first committed token whose shadow verdict is reject (= length if none)
    lossy_tv_bound    = sum over lossy tokens of P(strict rule rejects it) / sum new tokens: an upper bound on the
                        mean per-token total-variation distance between the lossy rule's next-token distribution and
                        p given the same prefix (coupling with the strict rule; trusted: 1 - min(1, p/q), relaxed: 1).
                        The exact distance needs the full p and q at every step, which step records do not keep
    nll_delta_vs_ar   = target_nll(policy) - target_nll(ar) on the same prompts (paired bootstrap over prompts):
                        how much less likely the target finds the lossy output than the lossless one, nats per token
    exact_match_rate  = share of prompts whose output equals the reference's (``ar``) token for token
    near_tie_rate, mismatch_rate = (lossless policies, greedy) shares of prompts whose output leaves ar's at a
                        numerical near-tie / otherwise (``decoding.precision``); a lossless mismatch is a bug
    first_divergence  = mean index of the first differing token (= the length when equal)
    target_nll        = sum NLL / sum tokens of the output under the target (teacher forced)

Intervals resample prompts (tokens of one prompt are dependent); paired figures resample the same prompts for the
policy and the reference.

Example:
    >>> summary = summarise_run(records, reference="ar", n_resamples=2000, seed=0)
    >>> summary["policies"]["threshold"]["tpf"]        # {"value": 2.9, "ci95": [2.7, 3.1]}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "acceptance_counts",
    "bootstrap_ci",
    "first_divergence",
    "summarise_policy",
    "summarise_run",
]

SPEEDUP_DEFINITION = "pooled: (sum new tokens / sum wall s) of the policy over the same for ar, same prompts and process"


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int:
    """Index of the first position where ``a`` and ``b`` differ; the common length if one is a prefix of the other.

    Example:
        >>> first_divergence([1, 2, 3], [1, 2, 4]), first_divergence([1, 2], [1, 2]), first_divergence([1], [1, 5])
        (2, 2, 1)
    """
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def acceptance_counts(verdicts_per_step: Sequence[Sequence[bool]]) -> tuple[list[int], list[int]]:
    """Per depth j (index j-1): how many drafts were walked at depth j, and how many of those were accepted.

    ``verdicts_per_step`` holds each step's strict verdicts over its walked drafts d_1..d_w (the walk stops after the
    first rejection, so a draft "reached" depth j iff d_1..d_{j-1} were accepted). Shadow verdicts of trusted or
    relaxed drafts count as what the strict rule said.

    Example:
        >>> acceptance_counts([(True, True, False), (False,), ()])
        ([2, 1, 1], [1, 1, 0])
    """
    width = max((len(v) for v in verdicts_per_step), default=0)
    reached, ok = [0] * width, [0] * width
    for verdicts in verdicts_per_step:
        for j, v in enumerate(verdicts):
            reached[j] += 1
            ok[j] += int(bool(v))
    return reached, ok


def bootstrap_ci(
    stat: Callable[..., np.ndarray], arrays: Sequence[np.ndarray], n_resamples: int = 2000, seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over prompts: rows of every array are resampled *together*.

    ``stat`` maps arrays shaped [..., n] to values shaped [...] (reduce over the last axis), so all resamples are
    computed at once. Resamples where ``stat`` is NaN (e.g. nothing reached a depth) are ignored.

    Example:
        >>> x = np.arange(10.0)
        >>> lo, hi = bootstrap_ci(lambda a: a.mean(-1), [x], n_resamples=500, seed=0)
        >>> lo < x.mean() < hi
        True
    """
    arrays = [np.asarray(a, dtype=float) for a in arrays]
    n = len(arrays[0])
    if n == 0 or n_resamples <= 0:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))  # [B, n]
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = np.asarray(stat(*(a[idx] for a in arrays)), dtype=float)  # [B]
    boots = boots[np.isfinite(boots)]
    if boots.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    lo, hi = np.percentile(boots, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return num.sum(-1) / den.sum(-1)


def _figure(stat, arrays, n_resamples: int, seed: int) -> dict:
    """{"value": stat on all prompts, "ci95": [lo, hi]} with NaN written as None (valid JSON)."""
    arrays = [np.asarray(a, dtype=float) for a in arrays]
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(stat(*arrays)) if len(arrays[0]) else float("nan")
    lo, hi = bootstrap_ci(stat, arrays, n_resamples, seed)
    return {"value": _clean(value), "ci95": [_clean(lo), _clean(hi)]}


def _clean(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _stat(records: list[dict], key: str) -> np.ndarray:
    return np.array([float(r["stats"][key]) for r in records])


def _depth_matrix(records: list[dict], key: str, width: int) -> np.ndarray:
    """[depth, prompt] counts, zero-padded to ``width`` depths."""
    out = np.zeros((width, len(records)))
    for i, r in enumerate(records):
        row = r.get(key, [])
        out[: len(row), i] = row
    return out


def summarise_policy(
    records: list[dict], reference: list[dict] | None = None, n_resamples: int = 2000, seed: int = 0,
    divergences: dict | None = None,
) -> dict:
    """Figures of one policy from its records (one per prompt); paired ones against ``reference`` (same prompts).

    ``reference`` records are matched by ``prompt_id``; prompts missing from either side are left out of the paired
    figures (speedup, exact match, first divergence), which are None without a reference.

    Example:
        >>> s = summarise_policy(threshold_records, reference=ar_records)
        >>> s["speedup_vs_ar"]["value"], s["acceptance_by_depth"][0]
    """
    kw = {"n_resamples": n_resamples, "seed": seed}
    new, fwd, wall = _stat(records, "new_tokens"), _stat(records, "target_forwards"), _stat(records, "wall_s")
    steps, drafted = _stat(records, "steps"), _stat(records, "drafted")
    out = {
        "n_prompts": len(records),
        "new_tokens": int(new.sum()),
        "tpf": _figure(_ratio, [new, fwd], **kw),
        "tokens_per_s": _figure(_ratio, [new, wall], **kw),
        "target_forwards": _figure(lambda a: a.mean(-1), [fwd], **kw),
        "mean_draft_len": _figure(_ratio, [drafted, steps], **kw),
        "lossy_token_rate": _figure(_ratio, [_stat(records, "lossy_tokens"), new], **kw),
        "lossy_error_rate": _figure(_ratio, [_stat(records, "shadow_rejects"), new], **kw),
    }
    out.update(_lossy(records, new, kw))
    if all("nll_sum" in r for r in records):
        nll = np.array([r["nll_sum"] for r in records], dtype=float)
        out["target_nll"] = _figure(_ratio, [nll, np.array([r["nll_tokens"] for r in records], dtype=float)], **kw)
    else:
        out["target_nll"] = None
    width = max((len(r.get("accept_reached", [])) for r in records), default=0)
    reached, ok = _depth_matrix(records, "accept_reached", width), _depth_matrix(records, "accept_ok", width)
    out["acceptance_by_depth"] = [
        dict(depth=j + 1, reached=int(reached[j].sum()), **_figure(_ratio, [ok[j], reached[j]], **kw))
        for j in range(width)
    ]
    out.update(_paired(records, reference, kw, divergences))
    return out


def _lossy(records: list[dict], new: np.ndarray, kw: dict) -> dict:
    """Errors per trusted / relaxed / lossy / committed token, first error and the TV bound (None for records
    written before these statistics existed)."""
    keys = ("trusted_rejects", "relaxed_rejects", "first_error", "lossy_tv_bound")
    if not records or not all(k in r["stats"] for r in records for k in keys):
        return {k: None for k in ("errors_per_trusted_token", "errors_per_relaxed_token", "errors_per_lossy_token",
                                  "errors_per_committed_token", "first_error", "lossy_tv_bound")}
    return {
        "errors_per_trusted_token": _figure(_ratio, [_stat(records, "trusted_rejects"),
                                                     _stat(records, "trusted_tokens")], **kw),
        "errors_per_relaxed_token": _figure(_ratio, [_stat(records, "relaxed_rejects"),
                                                     _stat(records, "relaxed_tokens")], **kw),
        "errors_per_lossy_token": _figure(_ratio, [_stat(records, "shadow_rejects"), _stat(records, "lossy_tokens")],
                                          **kw),
        "errors_per_committed_token": _figure(_ratio, [_stat(records, "shadow_rejects"), new], **kw),
        "first_error": _figure(lambda a: a.mean(-1), [_stat(records, "first_error")], **kw),
        "lossy_tv_bound": _figure(_ratio, [_stat(records, "lossy_tv_bound"), new], **kw),
    }


def _nll_delta(mine: list[dict], theirs: list[dict], kw: dict) -> dict | None:
    """Pooled NLL per token of ``mine`` minus that of ``theirs`` (paired records), or None without NLLs."""
    if not all("nll_sum" in r for r in mine + theirs):
        return None
    arrays = [np.array([r[k] for r in rs], dtype=float) for rs in (mine, theirs) for k in ("nll_sum", "nll_tokens")]
    return _figure(lambda a, b, c, d: _ratio(a, b) - _ratio(c, d), arrays, **kw)


def _paired(records: list[dict], reference: list[dict] | None, kw: dict, divergences: dict | None = None) -> dict:
    """Speedup, exact match and first divergence against the reference, over the prompts both have; with
    ``divergences`` ({"<prompt>|<policy>": {"kind": "near_tie" | "mismatch", ...}}) the differing prompts are split
    into numerical near-ties and mismatches (a lossless policy with a mismatch is a bug)."""
    none = {"speedup_vs_ar": None, "exact_match_rate": None, "first_divergence": None, "nll_delta_vs_ar": None,
            "n_paired": 0}
    if reference is None:
        return none
    ref = {r["prompt_id"]: r for r in reference}
    pairs = [(r, ref[r["prompt_id"]]) for r in records if r["prompt_id"] in ref]
    if not pairs:
        return none
    mine, theirs = [p[0] for p in pairs], [p[1] for p in pairs]
    match = np.array([a["token_ids"] == b["token_ids"] for a, b in pairs], dtype=float)
    div = np.array([first_divergence(a["token_ids"], b["token_ids"]) for a, b in pairs], dtype=float)
    arrays = [_stat(mine, "new_tokens"), _stat(mine, "wall_s"), _stat(theirs, "new_tokens"), _stat(theirs, "wall_s")]
    out = {
        "speedup_vs_ar": _figure(lambda a, b, c, d: _ratio(a, b) / _ratio(c, d), arrays, **kw),
        "exact_match_rate": _figure(lambda a: a.mean(-1), [match], **kw),
        "first_divergence": _figure(lambda a: a.mean(-1), [div], **kw),
        "nll_delta_vs_ar": _nll_delta(mine, theirs, kw),
        "n_paired": len(pairs),
    }
    if divergences is not None:
        kinds = [divergences.get(f"{a['prompt_id']}|{a['policy']}", {}).get("kind") for a, _ in pairs]
        out["near_tie_rate"] = sum(k == "near_tie" for k in kinds) / len(pairs)
        out["mismatch_rate"] = sum(k == "mismatch" for k in kinds) / len(pairs)
        gaps = [divergences[f"{a['prompt_id']}|{a['policy']}"] for a, _ in pairs
                if f"{a['prompt_id']}|{a['policy']}" in divergences]
        out["divergence_gaps"] = [{"gap": g["gap"], "tolerance": g["tolerance"], "kind": g["kind"]} for g in gaps]
    return out


def summarise_run(
    records: list[dict], reference: str = "ar", sampling: bool = False, n_resamples: int = 2000, seed: int = 0,
    policies: dict[str, dict] | None = None, divergences: dict | None = None,
) -> dict:
    """summary.json of a run: ``summarise_policy`` for every policy label in ``records``, in first-seen order.

    ``policies`` (label -> {"name", "params", "role", "lossless"}) is copied into each entry. Without any
    ``reference`` records the paired figures are None.

    Example:
        >>> s = summarise_run(records, reference="ar")
        >>> sorted(s["policies"]), s["policies"]["fixed"]["exact_match_rate"]["value"]
    """
    by_label: dict[str, list[dict]] = {}
    for r in records:
        by_label.setdefault(r["policy"], []).append(r)
    ref = by_label.get(reference)
    note = (
        "sampling: the reference is one sample of ar with the same seed per prompt; exact match is not expected "
        "even for lossless policies (only equality in distribution)"
        if sampling
        else "greedy: lossless policies must match the reference token for token"
    )
    out = {
        "reference": reference if ref is not None else None,
        "reference_note": note,
        "speedup_definition": SPEEDUP_DEFINITION,
        "interval": f"percentile bootstrap 95% over prompts, {n_resamples} resamples, seed {seed}",
        "policies": {},
    }
    for label, recs in by_label.items():
        entry = dict((policies or {}).get(label, {}))
        lossless = entry.get("lossless", False) and label != reference
        entry.update(summarise_policy(recs, ref, n_resamples, seed, divergences if lossless else None))
        out["policies"][label] = entry
    return out
