"""How well does a confidence predict acceptance? Calibration metrics over drafted tokens, with prompt-level intervals.

Every function takes ``conf`` (a confidence per drafted token: raw q(d_j) or a calibrated P(accept)) and ``label``
(1 if the strict rule accepts the draft, else 0; a soft label min(1, p/q) in [0, 1] works wherever the maths allows:
ECE, MCE, Brier and log loss, not AUROC). Binning follows ``sklearn.calibration.calibration_curve``: ``"uniform"`` uses
equal-width bins on [0, 1], ``"quantile"`` equal-mass bins from the percentiles of ``conf``; a value on an inner edge
goes to the lower bin (``np.searchsorted(edges[1:-1], conf)``); empty bins are dropped.

``calibration_report`` tabulates all metrics per depth j and over all depths, each with a 95% interval from a cluster
bootstrap that resamples *prompts*: tokens of one prompt are dependent, so resampling rows would understate the spread.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

STRATEGIES = ("uniform", "quantile")
REPORT_METRICS = ("ece_uniform", "ece_quantile", "mce", "brier", "log_loss", "auroc")


def _arrays(conf, label) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(conf, dtype=float).ravel()  # (n,)
    label = np.asarray(label, dtype=float).ravel()  # (n,)
    if conf.shape != label.shape:
        raise ValueError(f"conf and label differ in length: {conf.size} vs {label.size}")
    if conf.size and (conf.min() < 0 or conf.max() > 1):
        raise ValueError("conf has values outside [0, 1]; pass probabilities")
    return conf, label


def _is_binary(label: np.ndarray) -> bool:
    return bool(np.all((label == 0) | (label == 1)))


def _bin_edges(conf: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        return np.percentile(conf, np.linspace(0, 100, n_bins + 1))
    raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")


def _binned(conf, label, n_bins: int, strategy: str):
    """Per non-empty bin: (index, count, sum of conf, sum of label), with the edges (n_bins + 1,)."""
    conf, label = _arrays(conf, label)
    if conf.size == 0:
        raise ValueError("no rows to bin")
    edges = _bin_edges(conf, n_bins, strategy)
    ids = np.searchsorted(edges[1:-1], conf)  # (n,), same rule as calibration_curve
    count = np.bincount(ids, minlength=n_bins)
    s_conf = np.bincount(ids, weights=conf, minlength=n_bins)
    s_label = np.bincount(ids, weights=label, minlength=n_bins)
    keep = np.flatnonzero(count)
    return keep, count[keep], s_conf[keep], s_label[keep], edges


def reliability_table(conf, label, n_bins: int = 15, strategy: str = "uniform") -> pd.DataFrame:
    """One row per non-empty bin: ``bin, lower, upper, count, confidence`` (mean conf), ``accuracy`` (mean label).

    ``accuracy`` and ``confidence`` equal ``calibration_curve``'s ``prob_true`` and ``prob_pred``.

    Example:
        >>> reliability_table([0.1, 0.2, 0.9], [0, 1, 1], n_bins=2)[["count", "confidence", "accuracy"]].values.tolist()
        [[2.0, 0.15000000000000002, 0.5], [1.0, 0.9, 1.0]]
    """
    keep, count, s_conf, s_label, edges = _binned(conf, label, n_bins, strategy)
    return pd.DataFrame(
        {
            "bin": keep,
            "lower": edges[keep],
            "upper": edges[keep + 1],
            "count": count.astype(float),
            "confidence": s_conf / count,
            "accuracy": s_label / count,
        }
    )


def ece(conf, label, n_bins: int = 15, strategy: str = "uniform") -> float:
    """Expected calibration error: sum over non-empty bins of (count / n) * |accuracy - mean confidence|.

    Example:
        >>> round(ece([0.1, 0.2, 0.9], [0, 1, 1], n_bins=2), 4)  # (2/3)*|0.5-0.15| + (1/3)*|1-0.9|
        0.2667
    """
    _, count, s_conf, s_label, _ = _binned(conf, label, n_bins, strategy)
    return float(np.sum(np.abs(s_label - s_conf)) / count.sum())  # count*|acc - conf| = |sum label - sum conf|


def mce(conf, label, n_bins: int = 15, strategy: str = "uniform") -> float:
    """Maximum calibration error: the largest |accuracy - mean confidence| over non-empty bins.

    Example:
        >>> round(mce([0.1, 0.2, 0.9], [0, 1, 1], n_bins=2), 4)
        0.35
    """
    _, count, s_conf, s_label, _ = _binned(conf, label, n_bins, strategy)
    return float(np.max(np.abs(s_label - s_conf) / count))


def brier(conf, label) -> float:
    """Mean squared error of conf against label (``sklearn.metrics.brier_score_loss``; plain mean for soft labels).

    Example:
        >>> round(brier([0.9, 0.2], [1, 0]), 4)
        0.025
    """
    conf, label = _arrays(conf, label)
    if not _is_binary(label):
        return float(np.mean((conf - label) ** 2))
    from sklearn import metrics as skm  # imported here: the apps import this module at start-up

    return float(skm.brier_score_loss(label, conf, labels=[0, 1]))


def log_loss(conf, label, eps: float = 1e-7) -> float:
    """Mean negative log-likelihood in nats, conf clipped to [eps, 1 - eps] (``sklearn.metrics.log_loss``).

    Soft labels give the cross-entropy -mean(y log c + (1 - y) log(1 - c)).

    Example:
        >>> round(log_loss([0.9, 0.2], [1, 0]), 4)
        0.1643
    """
    conf, label = _arrays(conf, label)
    conf = np.clip(conf, eps, 1 - eps)
    if not _is_binary(label):
        return float(-np.mean(label * np.log(conf) + (1 - label) * np.log1p(-conf)))
    from sklearn import metrics as skm

    return float(skm.log_loss(label, conf, labels=[0, 1]))


def auroc(conf, label) -> float:
    """Area under the ROC curve of conf for separating accepted from rejected drafts; NaN with one class only.

    Example:
        >>> auroc([0.9, 0.2, 0.6], [1, 0, 1])
        1.0
    """
    conf, label = _arrays(conf, label)
    if not _is_binary(label):
        raise ValueError("auroc needs 0/1 labels; got soft labels")
    if label.size == 0 or label.min() == label.max():
        return float("nan")
    from sklearn import metrics as skm

    return float(skm.roc_auc_score(label, conf))


def _all_metrics(conf: np.ndarray, label: np.ndarray, n_bins: int) -> np.ndarray:
    """(len(REPORT_METRICS),) in that order; AUROC is NaN for soft labels."""
    return np.array(
        [
            ece(conf, label, n_bins, "uniform"),
            ece(conf, label, n_bins, "quantile"),
            mce(conf, label, n_bins, "uniform"),
            brier(conf, label),
            log_loss(conf, label),
            auroc(conf, label) if _is_binary(label) else float("nan"),
        ]
    )


def calibration_report(
    df: pd.DataFrame,
    by: str | None = "depth",
    n_boot: int = 200,
    seed: int = 0,
    conf_col: str = "confidence",
    label_col: str = "label",
    n_bins: int = 15,
    level: float = 0.95,
) -> pd.DataFrame:
    """All metrics per value of ``by`` (default: depth j) and for ``"all"`` rows, with prompt-bootstrap intervals.

    Columns: ``group, n, n_prompts, base_rate`` then, per metric in ``REPORT_METRICS``, ``<metric>``,
    ``<metric>_lo`` and ``<metric>_hi``: the point estimate on all rows and the percentile interval at ``level`` over
    ``n_boot`` resamples of prompt ids drawn with replacement (each draw takes all that prompt's rows of the group).
    Resamples where a metric is undefined (AUROC with one class) are left out of that metric's interval.
    Binned ECE is biased upward on finite data (about sqrt(n_bins / n) even when perfectly calibrated), and so is its
    bootstrap distribution: read its interval as sampling spread, not as a confidence interval for the true ECE.

    Example:
        >>> traces = pd.DataFrame({"depth": [1, 1, 2, 2], "confidence": [0.9, 0.8, 0.6, 0.3],
        ...                        "label": [1, 1, 0, 1], "prompt_id": ["a", "b", "a", "b"]})
        >>> rep = calibration_report(traces, n_boot=50)
        >>> rep["group"].tolist(), rep["n"].tolist()
        (['1', '2', 'all'], [2, 2, 4])
    """
    needed = {conf_col, label_col, "prompt_id"} | ({by} if by else set())
    missing = needed - set(df.columns)
    if missing:
        raise ValueError(f"calibration_report needs columns {sorted(missing)}; got {list(df.columns)}")
    groups: list[tuple[object, pd.DataFrame]] = list(df.groupby(by, sort=True)) if by else []
    groups.append(("all", df))
    rng = np.random.default_rng(seed)
    rows = []
    for key, part in groups:
        conf = part[conf_col].to_numpy(float)
        label = part[label_col].to_numpy(float)
        row = {"group": key, "n": len(part), "n_prompts": part["prompt_id"].nunique(), "base_rate": label.mean()}
        point = _all_metrics(conf, label, n_bins)
        boots = _cluster_bootstrap(conf, label, part["prompt_id"].to_numpy(), n_boot, rng, n_bins)  # (n_boot, k)
        tail = 100 * (1 - level) / 2
        for i, name in enumerate(REPORT_METRICS):
            ok = boots[:, i][~np.isnan(boots[:, i])]
            lo, hi = np.percentile(ok, [tail, 100 - tail]) if ok.size else (np.nan, np.nan)
            row.update({name: point[i], f"{name}_lo": lo, f"{name}_hi": hi})
        rows.append(row)
    out = pd.DataFrame(rows)
    out["group"] = out["group"].astype(str)
    return out


def _cluster_bootstrap(conf, label, prompt_ids, n_boot: int, rng: np.random.Generator, n_bins: int) -> np.ndarray:
    """Metrics on ``n_boot`` resamples of whole prompts; (n_boot, len(REPORT_METRICS)).

    A resample is a multiplicity per prompt (how often it was drawn), i.e. an integer weight per row, so each metric
    is evaluated in its weighted form on rows sorted once (``_weighted_metrics``; the tests check it against the
    sklearn-based functions on the expanded rows). scipy.stats.bootstrap resamples single observations, and sklearn's
    per-call validation made a 200-resample report take seconds, hence this.
    """
    order = np.argsort(conf, kind="stable")
    conf, label = conf[order], label[order]  # (n,) sorted by confidence
    _, prompt = np.unique(np.asarray(prompt_ids)[order], return_inverse=True)  # (n,) prompt index of each row
    _, tie = np.unique(conf, return_inverse=True)  # (n,) index of each row's distinct confidence
    n_prompts = int(prompt.max()) + 1
    out = np.empty((n_boot, len(REPORT_METRICS)))
    for b in range(n_boot):
        draws = np.bincount(rng.integers(0, n_prompts, n_prompts), minlength=n_prompts)  # prompts with replacement
        out[b] = _weighted_metrics(conf, label, tie, draws[prompt].astype(float), n_bins)
    return out


def _weighted_metrics(conf, label, tie, w, n_bins: int, eps: float = 1e-7) -> np.ndarray:
    """``_all_metrics`` of the sample in which row i appears w[i] times; conf (n,) sorted ascending, tie (n,) the
    index of its distinct value, w (n,) non-negative integer weights."""
    total = w.sum()
    if total <= 0:
        return np.full(len(REPORT_METRICS), np.nan)
    gaps = []
    for edges in (np.linspace(0.0, 1.0, n_bins + 1), _weighted_percentile_edges(conf, w, n_bins)):
        ids = np.searchsorted(edges[1:-1], conf)
        count = np.bincount(ids, weights=w, minlength=n_bins)
        gap = np.abs(np.bincount(ids, weights=w * label, minlength=n_bins) - np.bincount(ids, w * conf, n_bins))
        gaps.append((gap, count))
    (gap_u, count_u), (gap_q, _) = gaps
    clipped = np.clip(conf, eps, 1 - eps)
    nll = -(label * np.log(clipped) + (1 - label) * np.log1p(-clipped))
    auc = float("nan")
    if _is_binary(label):  # Mann-Whitney: P(score of an accept > score of a reject), ties count one half
        pos = np.bincount(tie, weights=w * label)
        neg = np.bincount(tie, weights=w * (1 - label))
        if pos.sum() > 0 and neg.sum() > 0:
            below = np.cumsum(neg) - neg
            auc = float(np.sum(pos * (below + 0.5 * neg)) / (pos.sum() * neg.sum()))
    return np.array(
        [
            gap_u.sum() / total,
            gap_q.sum() / total,
            np.max(gap_u[count_u > 0] / count_u[count_u > 0]),
            np.sum(w * (conf - label) ** 2) / total,
            np.sum(w * nll) / total,
            auc,
        ]
    )


def _weighted_percentile_edges(conf, w, n_bins: int) -> np.ndarray:
    """``np.percentile`` (linear interpolation) of the expanded sample, at 0, 100/n_bins, ..., 100; conf sorted."""
    cum = np.cumsum(w)  # expanded index k sits at the first row with cum > k
    h = (cum[-1] - 1) * np.linspace(0.0, 1.0, n_bins + 1)
    lo = np.floor(h)
    x_lo = conf[np.searchsorted(cum, lo, side="right")]
    x_hi = conf[np.searchsorted(cum, np.minimum(lo + 1, cum[-1] - 1), side="right")]
    return x_lo + (h - lo) * (x_hi - x_lo)
