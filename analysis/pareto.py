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

__all__ = ["plot_pareto"]

SPEED_LABEL = {"speedup": "modelled speedup vs ar", "tpf": "tokens per target forward (TPF)"}


def _trial_frame(trials: pd.DataFrame) -> pd.DataFrame:
    """(number, speed, error) from Optuna's ``trials_dataframe`` (multi: values_0/values_1; single: value)."""
    done = trials[trials["state"] == "COMPLETE"] if "state" in trials else trials
    speed = done["values_0"] if "values_0" in done else done["value"]
    return pd.DataFrame({"number": done["number"], "speed": speed, "error": done["user_attrs_lossy_error_rate"]})


def plot_pareto(run_dir: str | Path, speed_metric: str = "speedup") -> Path:
    """Draw ``pareto.png`` from ``trials.csv`` and ``pareto.csv`` in ``run_dir``; returns its path."""
    run_dir = Path(run_dir)
    trials = _trial_frame(pd.read_csv(run_dir / "trials.csv"))
    front = pd.read_csv(run_dir / "pareto.csv")
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.scatter(trials["error"], trials["speed"], s=12, color="0.7", label=f"trials ({len(trials)})", zorder=1)
    mask = pareto_mask(trials["speed"], trials["error"])
    f = trials[mask].sort_values(["error", "speed"])
    ax.step(f["error"], f["speed"], where="post", color="C0", lw=1.5, label="front (replayed)", zorder=2)
    ax.scatter(f["error"], f["speed"], s=22, color="C0", zorder=3)
    if "real_tpf" in front:
        key_rep, key_real = (("replay_speedup", "real_speedup_modelled") if speed_metric == "speedup"
                             else ("replay_tpf", "real_tpf"))
        for _, r in front.iterrows():
            ax.plot([r["replay_error"], r["real_error"]], [r[key_rep], r[key_real]], color="C3", lw=0.8, zorder=4)
        n = int(front["prompts"].iloc[0])
        ax.scatter(front["replay_error"], front[key_rep], marker="o", facecolors="none", edgecolors="C3", s=40,
                   label=f"re-measured trials, replayed on the same {n} prompts", zorder=5)
        ax.scatter(front["real_error"], front[key_real], marker="x", color="C3", s=40,
                   label=f"re-measured trials, real decoding ({n} prompts)", zorder=5)
    ax.set_xlabel("lossy error rate (committed tokens the target rejects / new tokens)")
    ax.set_ylabel(SPEED_LABEL.get(speed_metric, speed_metric))
    ax.set_title("speed vs error of the tuned policy")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = run_dir / "pareto.png"
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


if __name__ == "__main__":  # pragma: no cover - convenience
    metric = sys.argv[2] if len(sys.argv) > 2 else "speedup"
    print(plot_pareto(sys.argv[1], metric))
