"""Speed against quality for every policy of every run, and the threshold sweeps (from results, never rerun).

``speed_quality_figure``: one panel per quality figure (errors per trusted token, target NLL delta vs lossless,
lossy error rate per new token; lower is better), TPF above and wall-clock speedup vs ``ar`` below; every point is
one policy of one run with its bootstrap 95% intervals on both axes (prompts resampled, ``metrics.summary``); the
step line is the Pareto front (``metrics.pareto``: faster and no worse). Lossless policies sit at error 0.

``threshold_sweep_figure``: TPF, speedup and lossy error rate against ``tau_trust`` and ``tau_extend`` of the
``threshold`` policy: decoded runs (points with intervals) and, where a tuning study is given, its replayed
Optuna trials (small dots; replay is exact for lossless settings and approximate for lossy ones).

Example:
    >>> res = find_results(["runs"])
    >>> speed_quality_figure(res).fig.savefig("plane.pdf")              # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from .results import QUALITY, Results, Skip, policy_table, read_json
from .style import WIDTH, Drawn, colors_for, legend_below, markers_for, new_figure, note

__all__ = ["speed_quality_figure", "threshold_sweep_figure"]

SPEED = {"tpf": "tokens per target forward (TPF)", "speedup_vs_ar": "speedup vs ar\n(wall clock, same run)"}
ERROR_COLUMNS = ("errors_per_trusted", "lossy_error_rate")  # zero by definition for a lossless policy


def _xerr(df: pd.DataFrame, col: str) -> np.ndarray:
    v = df[col].to_numpy(float)
    return np.nan_to_num(np.abs(np.vstack([v - df[col + "_lo"].to_numpy(float), df[col + "_hi"].to_numpy(float) - v])))


def _front(ax, speed: np.ndarray, error: np.ndarray) -> None:
    from specpolicy.metrics.pareto import pareto_mask

    ok = np.isfinite(speed) & np.isfinite(error)
    if ok.sum() < 1:
        return
    s, e = speed[ok], error[ok]
    m = pareto_mask(s, e)
    order = np.argsort(e[m])
    ax.step(e[m][order], s[m][order], where="post", color="0.25", lw=1.0, ls="--", zorder=1, label="Pareto front")


def _plane_table(results: Results) -> tuple[pd.DataFrame, list[str], list[str]]:
    table = policy_table(results)
    if table.empty:
        raise Skip("no experiments.run results (summary.json with policies)")
    notes = []
    for col in (*ERROR_COLUMNS, "nll_delta"):  # lossless: no trusted/relaxed token; greedy: ar's very output
        fill = table["lossless"] & table[col].isna() & (col != "nll_delta" or ~table["sampling"])
        table.loc[fill, [col, col + "_lo", col + "_hi"]] = 0.0
    cols = []
    for col in QUALITY:
        lossy = ~table["lossless"]
        if table.loc[lossy, col].notna().any() or (col == "lossy_error_rate" and table[col].notna().any()):
            cols.append(col)
        else:
            notes.append(f"no run summary gives {col} for a lossy policy: its panel is left out")
    return table, cols, notes


def speed_quality_figure(results: Results) -> Drawn:
    """The speed-quality plane of every policy in ``results.run`` (see the module docstring).

    Example:
        >>> d = speed_quality_figure(find_results(["runs"])); d.notes     # doctest: +SKIP
        ['no run summary gives nll_delta for a lossy policy: its panel is left out']
    """
    table, cols, notes = _plane_table(results)
    fig, axes = new_figure(2, len(cols), height_per_row=2.4, sharex="col", sharey="row",
                           width=WIDTH if len(cols) > 1 else WIDTH * 0.7)
    colors, markers = colors_for(table["name"]), markers_for(table["drafter"])
    for c, col in enumerate(cols):
        for r, speed in enumerate(SPEED):
            ax = axes[r, c]
            for _, row in table.iterrows():
                one = row.to_frame().T
                ax.errorbar(row[col], row[speed], xerr=_xerr(one, col), yerr=_xerr(one, speed),
                            fmt=markers[row["drafter"]], color=colors[row["name"]], ms=5, capsize=2, lw=0.8,
                            mfc="white" if row["lossless"] else colors[row["name"]], zorder=3)
            _front(ax, table[speed].to_numpy(float), table[col].to_numpy(float))
            ax.set_ylabel(SPEED[speed] if c == 0 else "")
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
            if r == 1:
                ax.set_xlabel(QUALITY[col][0])
            ax.margins(x=0.08, y=0.1)
            if col in ERROR_COLUMNS:  # rates >= 0: start the axis at (just left of) zero
                hi = np.nanmax(np.r_[table[col + "_hi"].to_numpy(float), table[col].to_numpy(float), 1e-3])
                ax.set_xlim(-0.04 * hi, 1.08 * hi)
    handles = [Line2D([], [], color=colors[n], marker="o", ls="", label=f"policy: {n}") for n in colors]
    if len(markers) > 1:
        handles += [Line2D([], [], color="0.3", marker=m, ls="", mfc="white", label=f"drafter: {d}")
                    for d, m in markers.items()]
    handles += [Line2D([], [], color="0.3", marker="o", ls="", mfc="white", label="hollow: lossless"),
                Line2D([], [], color="0.25", ls="--", lw=1.0, label="Pareto front")]
    legend_below(fig, handles, [h.get_label() for h in handles], ncol=3)
    fig.tight_layout()
    runs = sorted(set(table["run"]))
    caption = ("Speed vs quality of every policy (hollow markers: lossless, filled: lossy); bars: percentile "
               "bootstrap 95% intervals over prompts; dashed: Pareto front (higher speed, lower error). TPF is "
               "hardware-neutral; the speedup is tokens/s against ar decoded interleaved in the same run. "
               f"From summary.json of {len(runs)} experiments.run directories: " + ", ".join(runs) + ".")
    return Drawn(fig, caption, notes)


def _trial_params(results: Results) -> pd.DataFrame:
    """Replayed Optuna trials of ``threshold`` studies: tau_trust, tau_extend, tpf, speed, error."""
    parts = []
    for d in results.tune:
        summary = read_json(d / "summary.json") if (d / "summary.json").is_file() else {}
        trials = pd.read_csv(d / "trials.csv")
        if "state" in trials:
            trials = trials[trials["state"] == "COMPLETE"]
        if not any(c in trials for c in ("params_tau_trust", "params_tau_extend")):
            continue
        speed = trials["values_0"] if "values_0" in trials else trials.get("value")
        metric = summary.get("speed_metric", "speedup")
        parts.append(pd.DataFrame({
            "tau_trust": trials.get("params_tau_trust"), "tau_extend": trials.get("params_tau_extend"),
            "tpf": trials.get("user_attrs_tpf"), "speedup_vs_ar": speed if metric == "speedup" else np.nan,
            "lossy_error_rate": trials.get("user_attrs_lossy_error_rate")}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def threshold_sweep_figure(results: Results) -> Drawn:
    """TPF, speedup and error of the ``threshold`` policy against ``tau_trust`` and ``tau_extend``.

    Example:
        >>> threshold_sweep_figure(find_results(["runs/sweep", "runs/tune"])).caption   # doctest: +SKIP
    """
    table = policy_table(results)
    runs = table[table["name"] == "threshold"].copy() if not table.empty else pd.DataFrame()
    if len(runs):
        params = [eval_params(p) for p in runs["params"]]
        runs["tau_trust"] = [p.get("tau_trust", np.nan) for p in params]
        runs["tau_extend"] = [p.get("tau_extend", np.nan) for p in params]
        runs["lossy_error_rate"] = runs["lossy_error_rate"].fillna(0.0)
    trials = _trial_params(results)
    settings = runs.groupby("drafter")["params"].nunique().max() if len(runs) else 0
    if settings < 2 and trials.empty:
        raise Skip("needs >= 2 decoded threshold settings for one drafter (experiments.run) or a threshold "
                   "tuning study")
    metrics = {"tpf": "TPF (tokens / target forward)", "speedup_vs_ar": "speedup vs ar",
               "lossy_error_rate": "lossy error rate\n(shadow rejects / new token)"}
    fig, axes = new_figure(len(metrics), 2, height_per_row=1.9, sharex="col")
    colors = colors_for(runs["drafter"] if len(runs) else [])
    for c, tau in enumerate(("tau_trust", "tau_extend")):
        for r, (m, label) in enumerate(metrics.items()):
            ax = axes[r, c]
            if not trials.empty and m in trials and trials[m].notna().any():
                ax.scatter(trials[tau], trials[m], s=6, color="0.6", alpha=0.6, lw=0, label="Optuna trials (replay)",
                           zorder=1)
            for drafter, part in runs.groupby("drafter", sort=False) if len(runs) else ():
                ax.errorbar(part[tau].to_numpy(float), part[m], yerr=_xerr(part, m), fmt="o", ms=4, capsize=2,
                            lw=0, elinewidth=0.8, color=colors[drafter], label=f"decoded, drafter {drafter} (95% CI)",
                            zorder=3)
            if not ax.has_data():
                note(ax, "no data")
            ax.set_ylabel(label if c == 0 else "")
            if r == len(metrics) - 1:
                ax.set_xlabel(f"{tau} (threshold on q(d_j))")
    legend_below(fig, ncol=2)
    fig.tight_layout()
    caption = ("Threshold policy: TPF, wall-clock speedup vs ar and lossy error rate against tau_trust (trust "
               "drafts with q >= tau_trust) and tau_extend (draft further while q >= tau_extend). Points: decoded "
               f"runs ({len(runs)}) with bootstrap 95% intervals; dots: replayed Optuna trials ({len(trials)}), "
               "speed = modelled speedup.")
    return Drawn(fig, caption, [])


def eval_params(text: str) -> dict:
    """The parameter dict of a ``policy_table`` row (stored as sorted JSON).

    Example:
        >>> eval_params('{"tau_trust": 0.9}')["tau_trust"]
        0.9
    """
    import json

    return json.loads(text)
