"""What policies do, step by step: how many tokens each drafts before verifying, and how many of them are accepted.

Read from each run's ``steps.parquet`` (one row per target forward: ``drafts``, ``accepted``, ``action`` ...,
``specpolicy.runs.steps``). ``draft_length_frame`` counts steps by draft length m per (drafter, policy);
``draft_length_figure`` draws the share of steps at each m (top) and at each accepted count (bottom), one column
per drafter. Policies that never draft (``ar``) are left out.

Example:
    >>> draft_length_frame(find_results(["runs/drafters"])).query("policy == 'threshold'")   # doctest: +SKIP
"""

from __future__ import annotations

import pandas as pd
from matplotlib.ticker import MaxNLocator

from .results import Results, ResultsError, Skip, run_meta
from .style import Drawn, colors_for, legend_below, new_figure

__all__ = ["draft_length_figure", "draft_length_frame"]


def _steps(run_dir) -> pd.DataFrame:
    path = run_dir / "steps.parquet"
    if not path.is_file():
        return pd.DataFrame()
    try:
        return pd.read_parquet(path, columns=["policy", "drafts", "accepted"])
    except (OSError, ValueError) as err:
        raise ResultsError(f"{path} cannot be read ({str(err).splitlines()[0]}); allowed: steps.parquet as "
                           "experiments.run writes it") from None


def draft_length_frame(results: Results) -> pd.DataFrame:
    """One row per (run, drafter, policy, what, m): ``what`` is "drafted" or "accepted", ``steps`` how many steps
    had m, ``share`` = steps / all steps of that policy in that run.

    Example:
        >>> f = draft_length_frame(res); f.groupby(["policy", "what"]).share.sum().round(6).unique()  # doctest: +SKIP
        array([1.])
    """
    parts = []
    for run_dir in results.run:
        steps = _steps(run_dir)
        if steps.empty:
            continue
        drafter = run_meta(run_dir)["drafter"]
        steps = steps.assign(drafted=steps["drafts"].map(len))
        for policy, s in steps.groupby("policy", sort=False):
            if s["drafted"].max() == 0:
                continue
            for what in ("drafted", "accepted"):
                counts = s[what].value_counts().sort_index()
                parts.append(pd.DataFrame({"run": str(run_dir), "drafter": drafter, "policy": policy, "what": what,
                                           "m": counts.index.astype(int), "steps": counts.to_numpy(),
                                           "share": counts.to_numpy() / len(s)}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def draft_length_figure(results: Results) -> Drawn:
    """Share of steps by draft length (top) and by accepted drafts (bottom), per policy, one column per drafter.

    Example:
        >>> draft_length_figure(find_results(["runs/drafters"])).fig.savefig("lengths.pdf")   # doctest: +SKIP
    """
    frame = draft_length_frame(results)
    if frame.empty:
        raise Skip("no experiments.run results with steps.parquet and a drafting policy")
    drafters = list(dict.fromkeys(frame["drafter"]))[:4]
    notes = [] if frame["drafter"].nunique() <= 4 else ["more than 4 drafters: the first 4 are drawn"]
    colors = colors_for(frame["policy"])
    fig, axes = new_figure(2, len(drafters), height_per_row=2.1, sharey="row")
    for c, drafter in enumerate(drafters):
        for r, what in enumerate(("drafted", "accepted")):
            ax = axes[r, c]
            part = frame[(frame["drafter"] == drafter) & (frame["what"] == what)]
            for (_run, policy), s in part.groupby(["run", "policy"], sort=False):
                ax.plot(s["m"], s["share"], marker="o", drawstyle="steps-mid", color=colors[policy], label=policy)
            ax.set_xlabel("drafted m" if what == "drafted" else "accepted")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if r == 0:
                ax.set_title(f"drafter: {drafter}")
            if c == 0:
                ax.set_ylabel("share of steps\n(by drafts per step)" if r == 0 else
                              "share of steps\n(by accepted drafts)")
            ax.set_ylim(0, None)
    legend_below(fig, ncol=4)
    fig.tight_layout()
    caption = ("Policy behaviour per step: share of target forwards (steps) by the number of drafted tokens m "
               "(top) and by the number of drafts accepted (bottom), per policy. From steps.parquet of "
               f"{frame['run'].nunique()} experiments.run directories.")
    return Drawn(fig, caption, notes)
