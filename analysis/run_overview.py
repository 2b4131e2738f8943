"""One PNG that shows a run at a glance: ``overview.png`` in the run directory, drawn from ``summary.json``.

Four panels: TPF per policy and tokens/s per policy (bars with bootstrap 95% intervals, speedup vs ar written on the
bars), acceptance by depth P(accept | reached depth j) per policy, and the lossy token / lossy error rates.

    python -m analysis.run_overview runs/run/2024-01-01_12-00-00_threshold     # (re)draw a run's figure

Example:
    >>> plot_run_overview("runs/run/2024-01-01_12-00-00_threshold")
    PosixPath('runs/run/2024-01-01_12-00-00_threshold/overview.png')
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .results import figure_value

__all__ = ["overview_frames", "plot_run_overview"]


def overview_frames(summary: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per policy with value/low/high per figure, one row per (policy, depth) of acceptance).

    Example:
        >>> per_policy, by_depth = overview_frames(json.load(open("summary.json")))
        >>> per_policy.loc["ar", "tpf"]
        1.0
    """
    rows, depth_rows = [], []
    for label, s in summary["policies"].items():
        row = {"policy": label}
        for key in ("tpf", "tokens_per_s", "speedup_vs_ar", "lossy_token_rate", "lossy_error_rate", "exact_match_rate"):
            row[key], row[key + "_lo"], row[key + "_hi"] = figure_value(s.get(key))
        rows.append(row)
        for d in s.get("acceptance_by_depth", []):
            v, lo, hi = figure_value(d)
            depth_rows.append({"policy": label, "depth": d["depth"], "acceptance": v, "lo": lo, "hi": hi,
                               "reached": d.get("reached", 0)})
    return pd.DataFrame(rows).set_index("policy"), pd.DataFrame(depth_rows)


def _bars(ax, df: pd.DataFrame, key: str, title: str, colors, fmt: str = "{:.2f}") -> None:
    x = np.arange(len(df))
    vals = df[key].to_numpy(float)
    err = np.vstack([vals - df[key + "_lo"].to_numpy(float), df[key + "_hi"].to_numpy(float) - vals])
    ax.bar(x, vals, color=colors, yerr=np.nan_to_num(err), capsize=4)
    ax.set_xticks(x, df.index, rotation=20)
    ax.set_title(title)
    for xi, v in zip(x, vals):
        if np.isfinite(v):
            ax.annotate(fmt.format(v), (xi, v), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                        textcoords="offset points")


def plot_run_overview(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw ``overview.png`` (or ``out``) for the run in ``run_dir`` from its ``summary.json``; returns the path.

    Example:
        >>> plot_run_overview(run_dir).name
        'overview.png'
    """
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    df, depth = overview_frames(summary)
    colors = sns.color_palette("colorblind", len(df))
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    _bars(axes[0, 0], df, "tpf", "tokens per target forward (TPF)", colors)
    _bars(axes[0, 1], df, "tokens_per_s", "tokens/s (wall clock, same run)", colors, "{:.0f}")
    for xi, (_, row) in enumerate(df.iterrows()):
        if np.isfinite(row["speedup_vs_ar"]):
            axes[0, 1].annotate(f"x{row['speedup_vs_ar']:.2f}", (xi, 0), ha="center", va="bottom", fontsize=8,
                                color="white", xytext=(0, 4), textcoords="offset points", weight="bold")
    ax = axes[1, 0]
    if len(depth):
        palette = dict(zip(df.index, colors))
        for label, part in depth.groupby("policy", sort=False):
            ax.plot(part["depth"], part["acceptance"], marker="o", label=label, color=palette[label])
            ax.fill_between(part["depth"], part["lo"], part["hi"], alpha=0.2, color=palette[label])
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no drafts in this run", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="acceptance by depth: P(accept | reached j)", xlabel="depth j", ylim=(0, 1.02))
    ax = axes[1, 1]
    x = np.arange(len(df))
    for off, key, name in ((-0.2, "lossy_token_rate", "lossy tokens / new"), (0.2, "lossy_error_rate", "shadow rejects / new")):
        vals = df[key].to_numpy(float)
        err = np.vstack([vals - df[key + "_lo"].to_numpy(float), df[key + "_hi"].to_numpy(float) - vals])
        ax.bar(x + off, vals, width=0.4, yerr=np.nan_to_num(err), capsize=3, label=name)
    ax.set_xticks(x, df.index, rotation=20)
    ax.set(title="lossy token rate and lossy error rate", ylim=(0, max(0.05, float(np.nanmax(df[["lossy_token_rate_hi",
           "lossy_error_rate_hi"]].to_numpy(float), initial=0)) * 1.2)))
    ax.legend(fontsize=8)
    note = summary.get("reference_note", "")
    fig.suptitle(f"{run_dir.name}: {len(df)} policies, {summary['policies'][df.index[0]]['n_prompts']} prompts"
                 if len(df) else run_dir.name, fontsize=11)
    fig.text(0.5, 0.005, note, ha="center", fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    out = Path(out) if out is not None else run_dir / "overview.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["."]:
        print(plot_run_overview(arg))
