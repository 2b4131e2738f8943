"""Reliability diagrams: when the drafter (or a calibrator) says c, is the draft accepted c of the time? Per depth j.

One PNG per depth, raw q(d_j) against every calibrator of a ``python -m experiments.calibrate`` run, on its
evaluation split (prompts no calibrator was fitted on). Top: mean confidence against acceptance rate per equal-width
bin (on the diagonal = calibrated; the legend gives each ECE). Bottom: how many drafts fall in each bin.

    python -m analysis.reliability runs/calibrate/2024-01-01_12-00-00      # (re)draw a run's reliability_depth<j>.png

Example:
    >>> write_reliability_figures("runs/calibrate/2024-01-01_12-00-00")             # doctest: +SKIP
    [PosixPath('runs/calibrate/2024-01-01_12-00-00/reliability_depth1.png'), ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from specpolicy.calibration import ece, load_calibrator, reliability_table

__all__ = ["plot_reliability", "reliability_depth_figure", "reliability_frame", "run_scores",
           "write_reliability_figures"]


def reliability_frame(scores: dict[str, np.ndarray], label, n_bins: int = 15) -> pd.DataFrame:
    """One row per (method, non-empty bin): ``method, confidence, accuracy, count, ece`` (equal-width bins).

    Example:
        >>> reliability_frame({"raw": np.array([0.1, 0.9])}, [0, 1], n_bins=2)["accuracy"].tolist()
        [0.0, 1.0]
    """
    parts = []
    for method, conf in scores.items():
        tab = reliability_table(conf, label, n_bins=n_bins)
        parts.append(tab.assign(method=method, ece=ece(conf, label, n_bins=n_bins)))
    return pd.concat(parts, ignore_index=True)


def plot_reliability(scores: dict[str, np.ndarray], label, out: str | Path, title: str = "",
                     n_bins: int = 15) -> Path:
    """Draw the reliability diagram of each score in ``scores`` (method -> (n,) confidences) against ``label``.

    Example:
        >>> plot_reliability({"raw": q, "temperature": p_hat}, labels, "depth1.png", title="depth 1")  # doctest: +SKIP
    """
    frame = reliability_frame(scores, np.asarray(label, dtype=float), n_bins)
    frame["legend"] = [f"{m} (ECE {e:.3f})" for m, e in zip(frame["method"], frame["ece"])]
    with sns.axes_style("whitegrid"):
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=[3, 1], sharex=True)
        top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
        sns.lineplot(frame, x="confidence", y="accuracy", hue="legend", style="legend", markers=True, dashes=False,
                     ax=top, sort=True)
        top.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="acceptance rate", title=title)
        top.legend(fontsize=8, loc="upper left")
        width = 1.0 / n_bins
        for i, (method, part) in enumerate(frame.groupby("method", sort=False)):
            shift = (i - (frame["method"].nunique() - 1) / 2) * width / (frame["method"].nunique() + 1)
            bottom.bar(part["lower"] + width / 2 + shift, part["count"], width=width / (frame["method"].nunique() + 1),
                       label=method)
        bottom.set(yscale="log", xlabel="confidence (mean per bin)", ylabel="drafts")
        fig.tight_layout()
        out = Path(out)
        fig.savefig(out, dpi=120)
        plt.close(fig)
    return out


def run_scores(run_dir: str | Path, split: str = "evaluation") -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """(rows of ``split``, method -> scores): ``raw`` q(d_j) and each calibrator saved in ``run_dir/calibrators``.

    Example:
        >>> rows, scores = run_scores(run_dir); sorted(scores)                      # doctest: +SKIP
        ['isotonic', 'platt', 'raw', 'temperature']
    """
    run_dir = Path(run_dir)
    rows = pd.read_parquet(run_dir / "rows.parquet")
    if "split" in rows.columns:
        rows = rows[rows["split"] == split].reset_index(drop=True)
    scores = {"raw": rows["confidence"].to_numpy(float)}
    for path in sorted((run_dir / "calibrators").glob("*.json")):
        if path.stem != "identity":
            scores[path.stem] = load_calibrator(path).predict(rows["confidence"], rows["depth"].to_numpy(int))
    return rows, scores


def write_reliability_figures(run_dir: str | Path, split: str = "evaluation", n_bins: int = 15) -> list[Path]:
    """``reliability_depth<j>.png`` in ``run_dir`` for every depth j of its ``rows.parquet`` ``split`` rows.

    Example:
        >>> [p.name for p in write_reliability_figures(run_dir)][:1]                 # doctest: +SKIP
        ['reliability_depth1.png']
    """
    run_dir = Path(run_dir)
    rows, scores = run_scores(run_dir, split)
    out = []
    for depth in sorted(rows["depth"].unique()):
        keep = (rows["depth"] == depth).to_numpy()
        title = f"depth {depth}: {int(keep.sum())} drafts, {split} split"
        out.append(plot_reliability({m: s[keep] for m, s in scores.items()}, rows.loc[keep, "label"],
                                    run_dir / f"reliability_depth{depth}.png", title, n_bins))
    return out


def reliability_depth_figure(run_dir: str | Path, split: str = "evaluation", n_bins: int = 10,
                             max_depths: int = 6):
    """The paper's reliability diagrams: one panel per depth j (up to ``max_depths``), raw q(d_j) against every
    calibrator of the ``experiments.calibrate`` run in ``run_dir``, on its ``split`` rows; ECE in the legend.
    Returns an ``analysis.style.Drawn``.

    Example:
        >>> reliability_depth_figure("runs/calibrate/2024-01-01_12-00-00").caption     # doctest: +SKIP
    """
    from .results import Skip, read_json
    from .style import Drawn, colors_for, legend_below, new_figure

    run_dir = Path(run_dir)
    rows, scores = run_scores(run_dir, split)
    depths = sorted(int(d) for d in rows["depth"].unique())[:max_depths]
    if not depths:
        raise Skip(f"{run_dir}: no {split} rows")
    cols = min(3, len(depths))
    fig, axes = new_figure((len(depths) + cols - 1) // cols, cols, height_per_row=2.2, sharex=True, sharey=True)
    colors, eces = colors_for(scores), []
    for i, depth in enumerate(depths):
        ax = axes.flat[i]
        keep = (rows["depth"] == depth).to_numpy()
        frame = reliability_frame({m: sc[keep] for m, sc in scores.items()}, rows.loc[keep, "label"].to_numpy(float),
                                  n_bins)
        ax.plot([0, 1], [0, 1], ls=":", color="0.5", lw=1, label="perfect calibration")
        for method, part in frame.groupby("method", sort=False):
            ax.plot(part["confidence"], part["accuracy"], marker="o", ms=3, color=colors[method],
                    label=method, ls="-" if method == "raw" else "--")
        eces.append(f"depth {depth}: " + ", ".join(
            f"{m} {e:.3f}" for m, e in frame.groupby("method", sort=False)["ece"].first().items()))
        ax.set_title(f"depth {depth} (n={int(keep.sum())})")
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
    for ax in axes.flat[len(depths):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("acceptance rate")
    for ax in axes[-1, :]:
        ax.set_xlabel("confidence (mean per bin)")
    legend_below(fig, ncol=len(scores) + 1)
    fig.tight_layout()
    report = read_json(run_dir / "report.json") if (run_dir / "report.json").is_file() else {}
    drafter = (report.get("source") or {}).get("drafter", "mtp")
    caption = (f"Reliability of drafted-token confidence per depth, drafter {drafter}: raw q(d_j) and each "
               f"calibrator (fitted on other prompts) against the acceptance rate, {n_bins} equal-width bins, "
               f"{split} split. ECE: " + "; ".join(eces) + f". From python -m experiments.calibrate ({run_dir}).")
    return Drawn(fig, caption, [])


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "rows.parquet").is_file():
        print("usage: python -m analysis.reliability RUN_DIR  (a directory written by experiments.calibrate)",
              file=sys.stderr)
        sys.exit(2)
    for p in write_reliability_figures(sys.argv[1]):
        print(p)
