"""The speed / error front of a tuning study: ``pareto.png`` in a ``python -m experiments.tune`` run directory.

Every trial is a grey dot (its objective: speed vs lossy error rate on the whole trace); the front is a line;
re-measured trials show the replay and the real decode on the same few prompts, joined by a segment, so the
simulator's error is visible at a glance (the subset's figures differ from the whole trace's: fewer prompts).

    python -m analysis.pareto runs/tune/2024-01-01_12-00-00_threshold        # (re)draw a study's figure

Example:
    >>> plot_pareto("runs/tune/2024-01-01_12-00-00_threshold")
    PosixPath('runs/tune/2024-01-01_12-00-00_threshold/pareto.png')
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from specpolicy.metrics.pareto import pareto_mask

__all__ = ["draw_study", "optuna_front_figure", "plot_pareto"]

SPEED_LABEL = {"speedup": "modelled speedup vs ar", "tpf": "tokens per target forward (TPF)"}


def _trial_frame(trials: pd.DataFrame) -> pd.DataFrame:
    """(number, speed, error) from Optuna's ``trials_dataframe`` (multi: values_0/values_1; single: value)."""
    done = trials[trials["state"] == "COMPLETE"] if "state" in trials else trials
    speed = done["values_0"] if "values_0" in done else done["value"]
    return pd.DataFrame({"number": done["number"], "speed": speed, "error": done["user_attrs_lossy_error_rate"]})


def draw_study(ax, run_dir: str | Path, speed_metric: str = "speedup", n_prompts_note: bool = True) -> int:
    """Draw one study's trials, replayed front and re-measured trials into ``ax``; returns the number of trials.

    Example:
        >>> fig, ax = plt.subplots(); draw_study(ax, "runs/tune/2024-01-01_12-00-00_threshold")  # doctest: +SKIP
        200
    """
    run_dir = Path(run_dir)
    trials = _trial_frame(pd.read_csv(run_dir / "trials.csv"))
    front = pd.read_csv(run_dir / "pareto.csv")
    ax.scatter(trials["error"], trials["speed"], s=8, color="0.7", label="Optuna trials (replayed)", zorder=1)
    mask = pareto_mask(trials["speed"], trials["error"])
    f = trials[mask].sort_values(["error", "speed"])
    ax.step(f["error"], f["speed"], where="post", color="C0", lw=1.4, label="front (replayed)", zorder=2)
    ax.scatter(f["error"], f["speed"], s=16, color="C0", zorder=3)
    if "real_tpf" in front:
        key_rep, key_real = (("replay_speedup", "real_speedup_modelled") if speed_metric == "speedup"
                             else ("replay_tpf", "real_tpf"))
        for _, r in front.iterrows():
            ax.plot([r["replay_error"], r["real_error"]], [r[key_rep], r[key_real]], color="C3", lw=0.8, zorder=4)
        n = int(front["prompts"].iloc[0])
        ax.scatter(front["replay_error"], front[key_rep], marker="o", facecolors="none", edgecolors="C3", s=30,
                   label=f"front trials replayed on {n} prompts", zorder=5)
        ax.scatter(front["real_error"], front[key_real], marker="x", color="C3", s=30,
                   label=f"front trials decoded ({n} prompts)", zorder=5)
    ax.set_xlabel("lossy error rate (shadow rejects / new token)")
    ax.set_ylabel(SPEED_LABEL.get(speed_metric, speed_metric))
    return len(trials)


def plot_pareto(run_dir: str | Path, speed_metric: str = "speedup") -> Path:
    """Draw ``pareto.png`` from ``trials.csv`` and ``pareto.csv`` in ``run_dir``; returns its path."""
    run_dir = Path(run_dir)
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(7.5, 5))
    draw_study(ax, run_dir, speed_metric)
    ax.set_title("speed vs error of the tuned policy")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = run_dir / "pareto.png"
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def optuna_front_figure(results):
    """The paper's figure of every tuning study in ``results.tune`` (one panel each, at most 3), legend below.
    Returns an ``analysis.style.Drawn``.

    Example:
        >>> optuna_front_figure(find_results(["runs/tune"])).caption                 # doctest: +SKIP
    """
    from .results import Skip, read_json
    from .style import WIDTH, Drawn, legend_below, new_figure

    if not results.tune:
        raise Skip("no experiments.tune results (trials.csv + pareto.csv)")
    studies = results.tune[:3]
    fig, axes = new_figure(1, len(studies), height_per_row=2.8, width=WIDTH if len(studies) > 1 else WIDTH * 0.7)
    parts = []
    for ax, d in zip(axes[0], studies):
        summary = read_json(d / "summary.json") if (d / "summary.json").is_file() else {}
        metric = summary.get("speed_metric", "speedup")
        n = draw_study(ax, d, metric)
        ax.set_title(f"{summary.get('study', d.name)} ({summary.get('mode', 'multi')})")
        parts.append(f"{d} ({n} trials, {summary.get('evaluator', 'replay')} evaluator)")
    legend_below(fig, ncol=2)
    fig.tight_layout()
    notes = [] if len(results.tune) <= 3 else [f"{len(results.tune)} studies: the first 3 are drawn"]
    caption = ("Optuna search over policy parameters: every trial (grey) scored by replaying a recorded trace, the "
               "replayed Pareto front (blue), and front trials decoded for real on a few prompts (red: replay o, "
               "real x, joined). From python -m experiments.tune: " + "; ".join(parts) + ".")
    return Drawn(fig, caption, notes)


if __name__ == "__main__":  # pragma: no cover - convenience
    metric = sys.argv[2] if len(sys.argv) > 2 else "speedup"
    print(plot_pareto(sys.argv[1], metric))
