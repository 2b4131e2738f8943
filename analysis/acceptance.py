"""Acceptance by depth for each drafter, beside published per-position rates of large MTP models.

Two rates, because published figures and our summaries use different ones:

- **per-position (cumulative)** a_j = P(d_1 .. d_j all accepted) = accepted drafts at depth j / steps that drafted.
  This is what vLLM logs as "Per-position acceptance rate" (``vllm/v1/spec_decode/metrics.py``: accepted tokens per
  position / number of drafts; a draft at position j counts only when 1..j-1 were accepted). It is comparable only
  between runs that draft the same number of tokens every step: here, ``fixed`` with k >= 3, as the references
  use three MTP drafts.
- **conditional** c_j = P(d_j accepted | d_1 .. d_{j-1} accepted) = a_j / a_{j-1}: ``acceptance_by_depth`` of
  ``summary.json`` (every policy). The references are converted with the same identity.

References (``REFERENCES``): ROCm/ATOM pull request 1216 ("[atom-vllm benchmark MTP] refine benchmark command for
atom-vllm MTP case", https://github.com/ROCm/ATOM/pull/1216), MTP with three speculative tokens served through
vLLM (the atom-vllm plugin), "Accept ratio" per position: DeepSeek-V3.2 (TP4) 0.9393 0.6789 0.3387 and Qwen3-Next
(TP1) 0.9323 0.8153 0.6440. The PR reports vLLM's per-position rate, i.e. cumulative; the figures fall with
position as cumulative rates must. Their workload (gsm8k-style chat prompts on 671B/80B models) is not ours.

Example:
    >>> acceptance_figure(find_results(["runs/drafters"])).fig.savefig("acceptance.pdf")   # doctest: +SKIP
    >>> [round(c, 3) for c in conditional(REFERENCES["DeepSeek-V3.2 (MTP, 3 drafts)"])]
    [0.939, 0.723, 0.499]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .results import Results, Skip, read_json, read_records, run_meta
from .style import Drawn, colors_for, legend_below, new_figure

__all__ = ["REFERENCES", "REFERENCE_SOURCE", "acceptance_figure", "acceptance_frame", "conditional"]

REFERENCES = {
    "DeepSeek-V3.2 (MTP, 3 drafts)": (0.9393, 0.6789, 0.3387),
    "Qwen3-Next (MTP, 3 drafts)": (0.9323, 0.8153, 0.6440),
}
REFERENCE_SOURCE = ("ROCm/ATOM pull request 1216 (https://github.com/ROCm/ATOM/pull/1216), vLLM per-position "
                    "acceptance with three MTP drafts (cumulative)")


def conditional(cumulative) -> list[float]:
    """c_j = a_j / a_{j-1} (a_0 = 1): conditional rates from per-position (cumulative) ones.

    Example:
        >>> conditional([0.8, 0.4])
        [0.8, 0.5]
    """
    a = [1.0, *map(float, cumulative)]
    return [a[j] / a[j - 1] if a[j - 1] > 0 else float("nan") for j in range(1, len(a))]


def _at(counts, depth: int) -> float:
    counts = counts or []
    return counts[depth - 1] if len(counts) >= depth else 0


def _cumulative(records: list[dict], depth: int, n_boot: int, seed: int) -> tuple[float, float, float]:
    """a_j pooled over prompts with a prompt-bootstrap 95% interval: sum accepted at j / sum steps that drafted."""
    from specpolicy.metrics import bootstrap_ci

    ok = np.array([_at(r.get("accept_ok"), depth) for r in records], dtype=float)
    drafted = np.array([_at(r.get("accept_reached"), 1) for r in records], dtype=float)
    value = ok.sum() / drafted.sum() if drafted.sum() else float("nan")
    lo, hi = bootstrap_ci(lambda a, b: a.sum(-1) / b.sum(-1), [ok, drafted], n_resamples=n_boot, seed=seed)
    return float(value), lo, hi


def acceptance_frame(results: Results, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (run, policy, depth): drafter, policy, k, ``conditional`` (+ lo/hi, from summary.json) and, for
    ``fixed`` policies, ``cumulative`` (+ lo/hi, from records.jsonl; NaN for other policies).

    Example:
        >>> acceptance_frame(find_results(["runs/drafters"])).query("drafter == 'mtp'").head()  # doctest: +SKIP
    """
    rows = []
    for run_dir in results.run:
        meta = run_meta(run_dir)
        summary = read_json(run_dir / "summary.json")
        records = None
        for label, entry in (summary.get("policies") or {}).items():
            depths = entry.get("acceptance_by_depth") or []
            if not depths:
                continue
            k = (entry.get("params") or {}).get("k")
            fixed = entry.get("name", label) == "fixed" and k is not None
            if fixed and records is None:
                records = read_records(run_dir)
            for d in depths:
                lo, hi = (list(d.get("ci95") or []) + [None, None])[:2]
                row = {"run": str(run_dir), "drafter": meta["drafter"], "sampling": meta["sampling"],
                       "policy": label, "k": k, "depth": int(d["depth"]), "reached": d.get("reached", 0),
                       "conditional": np.nan if d.get("value") is None else d["value"],
                       "conditional_lo": np.nan if lo is None else lo, "conditional_hi": np.nan if hi is None else hi,
                       "cumulative": np.nan, "cumulative_lo": np.nan, "cumulative_hi": np.nan}
                if fixed and row["depth"] <= int(k):
                    mine = [r for r in records if r.get("policy") == label]
                    row["cumulative"], row["cumulative_lo"], row["cumulative_hi"] = _cumulative(
                        mine, row["depth"], n_boot, seed)
                rows.append(row)
    return pd.DataFrame(rows)


def _references(ax, kind: str) -> None:
    styles = ("--", ":")
    for (name, cum), ls in zip(REFERENCES.items(), styles):
        y = cum if kind == "cumulative" else conditional(cum)
        ax.plot(range(1, len(y) + 1), y, ls=ls, color="0.2", lw=1.2, marker="x", ms=5, label=name + " [ref.]")


def acceptance_figure(results: Results, max_depth: int = 6) -> Drawn:
    """Left: per-position (cumulative) acceptance of each drafter's ``fixed`` policy (k >= 3) with the published
    references; right: conditional acceptance P(accept | reached j) of every drafted policy, references converted.

    Example:
        >>> acceptance_figure(find_results(["runs/drafters"])).notes    # doctest: +SKIP
        []
    """
    frame = acceptance_frame(results)
    if frame.empty:
        raise Skip("no experiments.run results with drafted tokens (acceptance_by_depth)")
    frame = frame[frame["depth"] <= max_depth]
    notes = []
    fixed = frame[frame["cumulative"].notna() & (frame["k"].fillna(0) >= 3)]
    if fixed.empty:
        notes.append("no fixed policy with k >= 3: per-position (cumulative) panel shows the references only")
    kk = [f"(k={int(k)})" if pd.notna(k) else "" for k in frame["k"]]
    frame = frame.assign(series=frame["drafter"] + ": " + frame["policy"] + kk
                         + np.where(frame["sampling"], " (sampling)", ""))
    fixed = frame.loc[fixed.index]
    colors = colors_for(frame["drafter"])
    fig, axes = new_figure(1, 2, height_per_row=2.8)
    for ax, kind, part in ((axes[0, 0], "cumulative", fixed), (axes[0, 1], "conditional", frame)):
        for _series, s in part.groupby("series", sort=False):
            s = s.sort_values("depth")
            color = colors[s["drafter"].iloc[0]]
            ls = "-" if s["policy"].iloc[0] == "fixed" else "-."
            ax.plot(s["depth"], s[kind], ls=ls, marker="o", color=color, label=_series)
            ax.fill_between(s["depth"], s[kind + "_lo"], s[kind + "_hi"], color=color, alpha=0.15, lw=0)
        _references(ax, kind)
        ax.set(xlabel="depth j (drafted position)", ylim=(0, 1.02), xticks=range(1, max_depth + 1))
    axes[0, 0].set_ylabel("P(d_1..d_j all accepted)")
    axes[0, 0].set_title("per-position (cumulative), fixed k≥3")
    axes[0, 1].set_ylabel("P(d_j accepted | d_1..d_{j-1} accepted)")
    axes[0, 1].set_title("conditional, every drafting policy")
    legend_below(fig, ncol=2)
    fig.tight_layout()
    caption = ("Acceptance by depth, per drafter (bands: prompt-bootstrap 95% intervals). Left: per-position "
               "rate P(d_1..d_j accepted) of fixed-k drafting (k >= 3), the quantity vLLM reports; right: "
               "conditional rate P(accept | reached j) of every drafting policy. Crosses: " + REFERENCE_SOURCE
               + "; right panel converts them with c_j = a_j / a_{j-1}. Our runs: greedy unless marked, embedded "
               "model on the stdlib test split; the references: large MTP models on their own workload.")
    return Drawn(fig, caption, notes)
