"""Replay vs real decoding, and the cost model against the wall clock (from results, never rerun).

``replay_agreement_figure``: per policy of ``experiments.replay_report`` (``replay_report.csv``) and per re-measured
front trial of ``experiments.tune`` (``pareto.csv``), the replayed figure against the decoded one: TPF, lossy error
rate, modelled speedup. On the diagonal = replay is exact (it must be, for lossless policies in float32/64).

``cost_figure``: left, the cost curve c(m) = time of a target forward over m tokens / over 1 token as
``experiments.bench`` measured it (``bench.json``), beside the cost model that replay and tuning use (the trace's
``CostModel``, from a study's ``summary.json``; dashed past its measured range: linear extrapolation,
``CostModel.forward_s``); right, the cost model's predicted speedup (``real_speedup_modelled``: the decoded steps
priced by the model) against the measured wall-clock speedup (``real_speedup_wall``), with a +-7% band.

Example:
    >>> res = find_results(["runs"])
    >>> replay_agreement_figure(res).fig.savefig("agreement.pdf")     # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from .results import Results, ResultsError, Skip, read_json
from .style import WIDTH, Drawn, colors_for, legend_below, new_figure, note

__all__ = ["agreement_frame", "cost_figure", "replay_agreement_figure"]

PAIRS = {"tpf": ("replay_tpf", "real_tpf", "TPF"), "error": ("replay_error", "real_error", "lossy error rate"),
         "speedup": ("replay_speedup", "real_speedup_modelled", "modelled speedup vs ar")}


def _csv(path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise ResultsError(f"{path} cannot be read ({str(err).splitlines()[0]})") from None


def agreement_frame(results: Results) -> pd.DataFrame:
    """Rows of every ``replay_report.csv`` (source "replay_report") and re-measured ``pareto.csv`` (source "tune"):
    policy, family, lossless, and the replayed / real columns of ``PAIRS`` (+ ``real_speedup_wall``).

    Example:
        >>> agreement_frame(find_results(["runs/replay"]))[["policy", "replay_tpf", "real_tpf"]]  # doctest: +SKIP
    """
    parts = []
    for d in results.replay:
        f = _csv(d / "replay_report.csv").assign(source="replay_report", run=str(d))
        parts.append(f)
    for d in results.tune:
        f = _csv(d / "pareto.csv")
        if "real_tpf" in f:
            f = f.assign(source="tune", run=str(d), policy=[f"trial {t}" for t in f["trial"]], lossless=False)
            parts.append(f)
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, ignore_index=True)
    out["family"] = [str(p).split(":")[0].split("(")[0] if s == "replay_report" else "tuned trial"  # policy name
                     for p, s in zip(out["policy"], out["source"])]
    out["lossless"] = out["lossless"].astype(bool)
    return out


def _diagonal(ax, x, y) -> None:
    v = np.r_[np.asarray(x, float), np.asarray(y, float)]
    v = v[np.isfinite(v)]
    if v.size:
        lo, hi = v.min(), v.max()
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls=":", color="0.4", lw=1, zorder=0)


def replay_agreement_figure(results: Results) -> Drawn:
    """Replayed against decoded TPF, error and modelled speedup, one point per policy or tuned trial.

    Example:
        >>> replay_agreement_figure(find_results(["runs/replay"])).notes           # doctest: +SKIP
        []
    """
    frame = agreement_frame(results)
    if frame.empty:
        raise Skip("no experiments.replay_report results (replay_report.csv) and no re-measured tuning front")
    colors = colors_for(frame["family"])
    fig, axes = new_figure(1, 3, height_per_row=2.3)
    for ax, (rep, real, label) in zip(axes[0], PAIRS.values()):
        for _, r in frame.iterrows():
            c = colors[r["family"]]
            ax.scatter(r[rep], r[real], s=22, marker="o" if r["source"] == "replay_report" else "^",
                       facecolors="white" if r["lossless"] else c, edgecolors=c, zorder=3)
        _diagonal(ax, frame[rep], frame[real])
        ax.set(xlabel=f"replayed {label}", ylabel=f"decoded {label}")
    handles = [Line2D([], [], marker="o", ls="", color=c, label=f) for f, c in colors.items()]
    handles += [Line2D([], [], marker="o", ls="", color="0.3", mfc="white", label="hollow: lossless"),
                Line2D([], [], ls=":", color="0.4", label="replay = real")]
    legend_below(fig, handles, [h.get_label() for h in handles], ncol=4)
    fig.tight_layout()
    exact = frame[frame["lossless"] & (frame["source"] == "replay_report")]
    n_exact = int(exact["exact"].astype(bool).sum()) if "exact" in exact else 0
    caption = ("Replay vs real decoding on the same prompts, N and K: each policy of experiments.replay_report "
               f"(o; {n_exact} of {len(exact)} lossless policies exact on every prompt) and each re-measured front "
               "trial of experiments.tune (triangles). Modelled speedup prices the steps with the trace's cost "
               "model. From " + ", ".join(sorted(set(frame["run"]))) + ".")
    return Drawn(fig, caption, [])


def _bench_curve(bench: dict) -> pd.Series:
    c = (bench.get("cost") or {}).get("c") or {}
    if isinstance(c, list):
        c = {m + 1: v for m, v in enumerate(c)}
    return pd.Series({int(m): float(v) for m, v in c.items()}).sort_index()


def _model_curve(cost: dict, m_max: int) -> tuple[np.ndarray, np.ndarray, int]:
    from specpolicy.decoding.cost import CostModel

    model = CostModel(t_target=tuple(float(t) for t in cost["t_target"]), t_mtp=float(cost.get("t_mtp", 0.0)))
    m = np.arange(1, max(m_max, len(model.t_target)) + 1)
    return m, np.array([model.c(int(i)) for i in m]), len(model.t_target)


def cost_figure(results: Results) -> Drawn:
    """The measured cost curve with the cost model's, and predicted against measured speedup (module docstring).

    Example:
        >>> cost_figure(find_results(["runs/bench", "runs/replay"])).caption        # doctest: +SKIP
    """
    curves = [(d, _bench_curve(read_json(d / "bench.json"))) for d in results.bench]
    curves = [(d, c) for d, c in curves if len(c)]
    models = []
    for d in results.tune:
        cost = ((read_json(d / "summary.json") if (d / "summary.json").is_file() else {}).get("trace") or {}).get(
            "cost")
        if cost and cost.get("t_target"):
            models.append((d, cost))
    speed = agreement_frame(results)
    speed = speed[speed["source"] == "replay_report"] if len(speed) else speed
    if not curves and not models and speed.empty:
        raise Skip("no experiments.bench (bench.json), tuning-study cost model or replay_report results")
    fig, axes = new_figure(1, 2, height_per_row=2.6, width=WIDTH)
    ax = axes[0, 0]
    m_max = max([int(c.index.max()) for _, c in curves] + [2])
    for i, (d, c) in enumerate(curves):
        ax.plot(c.index, c.to_numpy(), marker="o", ls="-", color=f"C{i}", label=f"measured ({d.name})")
    for i, (d, cost) in enumerate(models):
        m, c, n = _model_curve(cost, m_max)
        ax.plot(m[:n], c[:n], ls="--", color=f"C{i + len(curves)}", label=f"cost model ({d.name})")
        if len(m) > n:
            ax.plot(m[n - 1:], c[n - 1:], ls=":", color=f"C{i + len(curves)}", label="cost model, extrapolated")
    if not curves and not models:
        note(ax, "no bench.json or cost model")
    ax.set(xlabel="tokens in the target forward m", ylabel="c(m) = t(m) / t(1)")
    ax = axes[0, 1]
    if len(speed) and speed["real_speedup_wall"].notna().any():
        x, y = speed["real_speedup_modelled"].to_numpy(float), speed["real_speedup_wall"].to_numpy(float)
        colors = colors_for(speed["family"])
        for f, xi, yi in zip(speed["family"], x, y):
            ax.scatter(xi, yi, s=22, color=colors[f], label=f, zorder=3)
        lo, hi = np.nanmin(np.r_[x, y]) * 0.9, np.nanmax(np.r_[x, y]) * 1.1
        grid = np.linspace(lo, hi, 2)
        ax.plot(grid, grid, ls=":", color="0.4", lw=1, label="prediction = measured")
        ax.fill_between(grid, grid * 0.93, grid * 1.07, color="0.5", alpha=0.15, lw=0, label="within 7%")
    else:
        note(ax, "no replay_report.csv with wall-clock speedups")
    ax.set(xlabel="predicted speedup (cost model)", ylabel="measured speedup\n(wall clock vs ar)")
    legend_below(fig, ncol=3)
    fig.tight_layout()
    caption = ("Left: cost of a target forward over m tokens relative to one token, measured by experiments.bench "
               "(medians of interleaved repeats) and as stored in the trace's cost model used by replay and tuning. "
               "Right: speedup the cost model predicts for the decoded steps vs the measured wall-clock speedup "
               "against ar in the same process (experiments.replay_report).")
    return Drawn(fig, caption, [])
