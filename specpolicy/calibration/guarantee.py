"""A trust threshold tau_trust with a finite-sample guarantee on the error rate of trusted drafts (Learn-then-Test).

A policy that TRUSTs every draft whose score (raw q(d_j) or a calibrated P(accept)) is >= tau commits a wrong token
whenever the strict rule would have rejected it (error = 1 - label, the shadow verdict). We want

    risk(tau) = P(error | score >= tau) <= alpha      with probability >= 1 - delta over the calibration data.

Learn-then-Test (Angelopoulos et al. 2021) turns this into multiple testing. For each candidate tau the null
hypothesis is H_tau: risk(tau) > alpha. Among the n_trusted calibration drafts with score >= tau, the error count is
Binomial(n_trusted, risk(tau)), so the exact one-sided p-value is ``scipy.stats.binom.cdf(n_errors, n_trusted, alpha)``
(a smaller count is even less likely when risk > alpha). Fixed-sequence testing walks a descending grid, from the most
conservative tau to the most trusting, rejects while p <= delta and stops at the first p > delta; the smallest tau
rejected is returned. Because the order is fixed before the labels are seen, the chance of rejecting any true null
(and so returning a tau whose risk exceeds alpha) is at most delta, with no correction for the size of the grid.

Candidates trusting fewer than ``min_calibration_size(alpha, delta)`` calibration drafts cannot be rejected whatever
their labels (even zero errors give p = (1 - alpha)^n > delta); they are skipped rather than allowed to end the walk
(``n_start`` skips further). The skip looks at scores only, never labels, so the guarantee is unchanged. If even the first candidate tested fails, nothing is trusted (tau=None).

Assumptions. The guarantee is per token, under exchangeability: calibration drafts and the drafts the threshold is
later used on are i.i.d. draws from one distribution (same target, drafter, decoding settings and prompt mix).
Drafts within one prompt are dependent (shared topic, shared prefix), so the binomial count is exact only when
prompts contribute few drafts each or the dependence is weak; with strong within-prompt correlation the effective
sample size is smaller and the guarantee is optimistic. Split calibration and test data by prompt
(``split_by_prompt``) and check the realised error on held-out prompts. The guarantee bounds the population risk;
the empirical error on a finite test set fluctuates around it.

Prompt-level dependence (``groups``). Real decoder drafts are strongly clustered: on the tiny model, token-level
p-values let the error among trusted drafts of held-out prompts exceed alpha in ~30% of random prompt splits
(delta = 10%). With ``groups`` (one prompt id per draft) only the prompts are assumed i.i.d.: for each tau the
binomial count is deflated by the design effect deff(tau) = Var_cluster(r) / Var_binomial(r) of the error rate r
among trusted drafts (Kish; Var_cluster from the per-prompt residuals e_i - r n_i, clipped at deff >= 1), and the
p-value is the binomial tail at n_trusted / deff trials and n_errors / deff errors (regularised incomplete beta, so
non-integer counts are fine). This is a large-sample (many prompts) correction, not an exact finite-sample one.
``future_groups`` = m certifies the error over the next m prompts instead of the long run: their own sampling noise
is added, deff * (1 + n_groups / m). That is what a check against a finite held-out set of m prompts measures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import betainc
from scipy.stats import binom


@dataclass(frozen=True)
class TrustThreshold:
    """A certified trust threshold. ``tau is None`` means trust nothing (no candidate could be certified).

    ``n_trusted``, ``n_errors`` and ``error`` describe the calibration drafts with score >= tau; ``p_value`` is the
    binomial p-value of that tau (for ``tau=None``: of the first candidate tested, or 1.0 if none was testable).
    """

    tau: float | None
    alpha: float
    delta: float
    n_cal: int
    n_trusted: int
    n_errors: int
    error: float  # n_errors / n_trusted, NaN when nothing is trusted
    p_value: float
    design_effect: float = 1.0  # deff at tau (with ``groups``); 1.0 for token-level p-values

    @property
    def trusts_nothing(self) -> bool:
        return self.tau is None

    @property
    def tau_trust(self) -> float:
        """The value for ``ThresholdPolicy(tau_trust=...)``, where 1.0 means never trust: ``tau``, or 1.0 if None.

        A certified tau of exactly 1.0 is thereby also read as "never trust", which errs on the safe side.
        """
        return 1.0 if self.tau is None else self.tau

    def trusted(self, score) -> np.ndarray:
        """Boolean mask of the drafts this threshold trusts (score >= tau).

        Example:
            >>> TrustThreshold(0.9, 0.05, 0.1, 100, 50, 1, 0.02, 0.03).trusted([0.95, 0.5]).tolist()
            [True, False]
        """
        score = np.asarray(score, dtype=float)
        return np.zeros(score.shape, bool) if self.tau is None else score >= self.tau

    def to_dict(self) -> dict:
        """Plain JSON-safe dict (NaN becomes None).

        Example:
            >>> TrustThreshold(None, 0.05, 0.1, 10, 0, 0, float("nan"), 1.0).to_dict()["error"] is None
            True
        """
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def min_calibration_size(alpha: float, delta: float) -> int:
    """Smallest n with (1 - alpha)^n <= delta: the trusted drafts needed to certify a tau even at zero errors.

    Example:
        >>> min_calibration_size(0.05, 0.1)
        45
    """
    _check_levels(alpha, delta)
    n = max(1, math.ceil(math.log(delta) / math.log1p(-alpha)))
    while n > 1 and (1 - alpha) ** (n - 1) <= delta:  # guard the float rounding of the ratio of logs
        n -= 1
    while (1 - alpha) ** n > delta:
        n += 1
    return n


def default_grid() -> np.ndarray:
    """The candidate thresholds, descending: steps of 0.001 on [0, 1] plus 1 - 10^-k for k in [3, 6], dense near 1
    where confident drafters put most of their mass. Fixed in advance, independent of any data.

    Example:
        >>> g = default_grid(); float(g[0]), float(g[-1]), bool(np.all(np.diff(g) < 0))
        (1.0, 0.0, True)
    """
    grid = np.concatenate([np.linspace(0.0, 1.0, 1001), 1.0 - np.logspace(-6, -3, 31)])
    return np.unique(np.round(grid, 12))[::-1]


def choose_tau_trust(
    score,
    label,
    alpha: float = 0.05,
    delta: float = 0.1,
    grid=None,
    n_start: int | None = None,
    groups=None,
    future_groups: int | None = None,
) -> TrustThreshold:
    """Learn-then-Test with fixed-sequence testing: the most trusting tau whose risk is certified <= alpha.

    ``score`` (n,) is what the policy will compare with tau; ``label`` (n,) is the strict verdict, 1 = accept.
    ``grid`` overrides ``default_grid()`` (any order; it is walked from the largest value down). The walk starts at
    the first candidate trusting at least ``n_start`` calibration drafts (default and minimum:
    ``min_calibration_size(alpha, delta)``). Starting later is equally valid, as the start looks at scores only, and
    makes it less likely that one unlucky early error ends the walk; fix it before looking at the labels.
    ``groups`` (n,) names the prompt of each draft: p-values then allow for within-prompt dependence (module
    docstring); ``future_groups`` certifies the error over that many future prompts rather than the long run.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> score = rng.uniform(size=5000)
        >>> label = rng.uniform(size=5000) >= (1 - score) ** 2        # P(error | s) = (1 - s)^2
        >>> t = choose_tau_trust(score, label, alpha=0.05, delta=0.1)
        >>> 0.55 < t.tau < 0.7, t.error <= 0.05                        # population risk <= alpha iff tau >= 0.61
        (True, True)
    """
    _check_levels(alpha, delta)
    score = np.asarray(score, dtype=float).ravel()  # (n,)
    label = np.asarray(label, dtype=float).ravel()  # (n,)
    if score.shape != label.shape or score.size == 0:
        raise ValueError(f"score and label need the same, non-zero length; got {score.size} and {label.size}")
    if not np.all((label == 0) | (label == 1)):
        raise ValueError("label must be 0/1 strict verdicts (1 = accept); soft labels have no binomial count")
    if np.isnan(score).any():
        raise ValueError("score contains NaN")
    grid = default_grid() if grid is None else np.unique(np.asarray(grid, dtype=float))[::-1]  # (g,) descending

    order = np.argsort(score, kind="stable")
    s_asc, err_asc = score[order], 1.0 - label[order]
    err_suffix = np.concatenate([np.cumsum(err_asc[::-1])[::-1], [0.0]])  # (n+1,) errors among rows i..n-1
    first = np.searchsorted(s_asc, grid, side="left")  # (g,) first row with score >= tau
    n_trusted = score.size - first  # (g,) non-decreasing along the grid
    n_errors = np.rint(err_suffix[first]).astype(int)  # (g,)
    deff = np.ones(grid.size)  # (g,)
    if groups is None:
        if future_groups is not None:
            raise ValueError("future_groups needs groups (the prompt of each draft)")
        p = binom.cdf(n_errors, n_trusted, alpha)  # (g,) exact binomial tail; 1.0 where nothing is trusted
    else:
        deff = _design_effect(score, 1.0 - label, groups, grid, future_groups)
        p = _binom_cdf(n_errors / deff, n_trusted / deff, alpha)

    # untestable: even zero errors cannot reject (deff is 1 at zero errors, times the label-free future factor)
    n_start = max(math.ceil(min_calibration_size(alpha, delta) * _future_factor(groups, future_groups)), n_start or 0)
    start = int(np.searchsorted(n_trusted, n_start, side="left"))  # first candidate tested
    fails = np.flatnonzero(p[start:] > delta)
    stop = start + (fails[0] if fails.size else grid.size - start)  # index of the first failure (or g)
    if stop == start:  # the first candidate tested already fails, or none is testable
        p0 = float(p[start]) if start < grid.size else 1.0
        return TrustThreshold(None, alpha, delta, score.size, 0, 0, float("nan"), p0, float(deff[min(start, grid.size - 1)]))
    k = stop - 1  # the last rejected candidate: the most trusting certified tau
    return TrustThreshold(
        tau=float(grid[k]),
        alpha=alpha,
        delta=delta,
        n_cal=int(score.size),
        n_trusted=int(n_trusted[k]),
        n_errors=int(n_errors[k]),
        error=float(n_errors[k] / n_trusted[k]),
        p_value=float(p[k]),
        design_effect=float(deff[k]),
    )


def _binom_cdf(k: np.ndarray, n: np.ndarray, alpha: float) -> np.ndarray:
    """P(Binomial(n, alpha) <= k) for real k, n >= 0 (= I_{1-alpha}(n - k, k + 1)); 1.0 where k >= n or n == 0."""
    out = np.ones_like(n, dtype=float)
    ok = k < n
    out[ok] = betainc(n[ok] - k[ok], k[ok] + 1.0, 1.0 - alpha)
    return out


def _design_effect(score, err, groups, grid, future_groups: int | None) -> np.ndarray:
    """(g,) Var_cluster / Var_binomial of the error rate among drafts with score >= tau, per grid value (descending).

    Per prompt i and candidate tau: n_i trusted drafts, e_i errors. r = sum e / sum n; Var_cluster(r) =
    P / (P - 1) * sum_i (e_i - r n_i)^2 / N^2 (the ratio estimator's cluster variance), Var_binomial(r) = r (1 - r) / N.
    """
    groups = np.asarray(groups).ravel()
    if groups.shape != score.shape:
        raise ValueError(f"groups has {groups.size} entries, score {score.size}")
    _, g = np.unique(groups, return_inverse=True)  # (n,) prompt index
    n_groups = int(g.max()) + 1
    if n_groups < 2:
        raise ValueError("groups needs at least two distinct prompts")
    asc = grid[::-1]  # (g,) ascending; the draft is trusted at asc[j] iff j < idx (asc[j] <= score)
    idx = np.searchsorted(asc, score, side="right")  # (n,)
    width = asc.size + 1
    hist_n = np.bincount(g * width + idx, minlength=n_groups * width).reshape(n_groups, width)
    hist_e = np.bincount(g * width + idx, weights=err, minlength=n_groups * width).reshape(n_groups, width)
    # n[i, j] = drafts of prompt i with idx > j: a suffix sum over idx, from j + 1
    n_i = np.cumsum(hist_n[:, ::-1], axis=1)[:, ::-1][:, 1:].astype(float)  # (P, g) ascending grid
    e_i = np.cumsum(hist_e[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (P, g)
    n_tot, e_tot = n_i.sum(0), e_i.sum(0)  # (g,)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = e_tot / n_tot
        var_cluster = n_groups / (n_groups - 1) * ((e_i - r * n_i) ** 2).sum(0) / n_tot**2
        deff = var_cluster / (r * (1 - r) / n_tot)
    deff = np.where(np.isfinite(deff), np.maximum(deff, 1.0), 1.0) * _future_factor(groups, future_groups)
    return deff[::-1]  # (g,) in the grid's descending order


def _future_factor(groups, future_groups: int | None) -> float:
    """1 + P / m: the variance of the error over m future prompts added to that of the estimate from P prompts."""
    if future_groups is None:
        return 1.0
    if future_groups < 1:
        raise ValueError(f"future_groups must be >= 1; got {future_groups}")
    return 1.0 + len(np.unique(np.asarray(groups).ravel())) / future_groups


def _check_levels(alpha: float, delta: float) -> None:
    if not (0 < alpha < 1 and 0 < delta < 1):
        raise ValueError(f"alpha and delta must lie in (0, 1); got alpha={alpha}, delta={delta}")
