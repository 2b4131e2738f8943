"""A certificate for the trust threshold of the deployed policy, from its own runs, with prompts as the sampling unit.

What is certified. Fix a trusting policy (``threshold`` on raw q(d_j), or ``calibrated`` with one calibrator file)
and a small grid of candidate thresholds tau, chosen before any label is seen. For each tau the policy decodes every
calibration prompt once (``trust_runs``). Per prompt i it trusts n_i(tau) tokens, e_i(tau) of which the strict rule
rejects (the shadow verdict against the committed prefix). The risk of tau is, for ``risk="prompt"`` (the default),

    R(tau) = E[ e(tau) / n(tau)  |  n(tau) >= 1 ]        the expected share of wrong tokens among the tokens the
                                                         policy trusts on a prompt, over prompts that trust any

and for ``risk="token"`` the pooled errors per trusted token  R(tau) = E[e(tau)] / E[n(tau)]. The expectation is over
prompts drawn like the calibration prompts (same corpus split and prompt length, same model, drafter, decode
settings and policy parameters); nothing is assumed about the drafts within a prompt (they may be strongly
dependent, a whole prompt may be wrong). The statement: with probability >= 1 - delta over the draw of the
calibration prompts, the returned tau has R(tau) <= alpha (tau None: nothing is certified; trust nothing).

How. Learn-then-Test (Angelopoulos, Bates, Candes, Jordan, Lei 2021, "Learn then Test: Calibrating predictive
algorithms to achieve risk control"): H_tau: R(tau) > alpha, tested in a fixed sequence from the most conservative
(largest) tau down, stopping at the first p-value > delta; the smallest tau rejected is returned; the family-wise
error is <= delta without a correction for the grid size, because the order is fixed in advance. The p-value is a
betting (test-supermartingale) bound on bounded per-prompt losses (Waudby-Smith & Ramdas 2023, "Estimating means of
bounded random variables by betting", JRSS-B; the "WSR" p-value of Learn-then-Test): with x_i in [0, 1] per prompt
(``risk="prompt"``: x_i = e_i / n_i over prompts with n_i >= 1; ``risk="token"``: x_i = (e_i - alpha n_i) / L + alpha
with L = ``max_trusted``, a bound on n_i fixed in advance, e.g. max_new_tokens),

    K = (1 / |C|) sum_{c in C} prod_i (1 - c (x_i - alpha) / (1 - alpha)),      p = min(1, 1 / K).

Under H_tau each factor has mean <= 1 - c (mu_i - alpha) / (1 - alpha) with sum_i (mu_i - alpha) >= 0, so by
independence of prompts and 1 - t <= exp(-t), E[K] <= 1 and Markov gives P(p <= delta) <= delta. This holds with zero
observed errors (K then grows like (1 / (1 - alpha))^n at c -> 1; with the default bets 53 error-free prompts
certify alpha = 0.05 at delta = 0.1, 26 certify alpha = 0.1) and for any dependence inside a prompt. Prompts sampled without
replacement from a finite pool are treated as independent draws.

Example:
    >>> table = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(80)] * 2, "tau": [0.9] * 80 + [0.8] * 80,
    ...                       "n_trusted": [5] * 160, "n_errors": [0] * 80 + [1] * 80,
    ...                       "new_tokens": [48] * 160, "target_forwards": [20] * 160})
    >>> c = certify_trust(table, alpha=0.05, delta=0.1)
    >>> c.tau, [round(s["risk"], 2) for s in c.steps]                  # 0.8 has risk 0.2 > alpha: the walk stops
    (0.9, [0.0, 0.2])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

__all__ = ["BETS", "RISKS", "TrustCertificate", "betting_p_value", "certify_trust", "per_prompt_losses",
           "risk_of"]

BETS = (0.5, 0.9, 0.99)  # fractions c of the largest bet 1 / (1 - alpha): a cautious, a bold and an all-in bettor
RISKS = ("prompt", "token")


def betting_p_value(x, alpha: float, bets=BETS) -> float:
    """p-value of H0: mean of x > alpha, for independent x_i in [0, 1] (module docstring: a mixture of betting
    test supermartingales). Valid for any n, including when every x_i is 0; 1.0 for an empty x.

    Example:
        >>> round(betting_p_value(np.zeros(60), 0.05), 4), betting_p_value([1.0, 1.0], 0.05)
        (0.0716, 1.0)
    """
    x = np.asarray(x, dtype=float).ravel()  # (n,)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha} is invalid; allowed: 0 < alpha < 1")
    if x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError("x must lie in [0, 1]")
    lam = np.asarray(bets, dtype=float)[:, None] / (1 - alpha)  # (|C|, 1); < 1 / (1 - alpha): factors stay > 0
    log_k = np.log1p(-lam * (x[None, :] - alpha)).sum(1)  # (|C|,) log capital per bettor
    log_mean = np.logaddexp.reduce(log_k) - math.log(lam.shape[0])
    return float(min(1.0, math.exp(-log_mean))) if log_mean < 700 else 0.0


def per_prompt_losses(n_trusted, n_errors, alpha: float, risk: str = "prompt",
                      max_trusted: int | None = None) -> np.ndarray:
    """The x_i in [0, 1] of ``betting_p_value`` for one tau (module docstring), from per-prompt counts.

    Example:
        >>> per_prompt_losses([0, 4, 2], [0, 1, 0], 0.05).tolist()                          # prompts that trust
        [0.25, 0.0]
        >>> per_prompt_losses([0, 4], [0, 1], 0.05, risk="token", max_trusted=10).tolist()
        [0.05, 0.13]
    """
    n, e = np.asarray(n_trusted, dtype=float), np.asarray(n_errors, dtype=float)
    if risk == "prompt":
        keep = n >= 1
        return e[keep] / n[keep]
    if risk != "token":
        raise ValueError(f"risk={risk!r} is unknown; allowed: {', '.join(RISKS)}")
    if max_trusted is None or max_trusted < 1:
        raise ValueError("risk='token' needs max_trusted >= 1: a bound on the trusted tokens of one prompt fixed in "
                         "advance (e.g. max_new_tokens)")
    if n.size and n.max() > max_trusted:
        raise ValueError(f"a prompt trusts {int(n.max())} tokens, more than max_trusted={max_trusted}")
    return np.round((e - alpha * n) / max_trusted + alpha, 12)


def risk_of(n_trusted, n_errors, risk: str = "prompt") -> float:
    """The empirical risk (module docstring) of one tau: mean per-prompt error share over prompts that trust any
    (``prompt``) or pooled errors per trusted token (``token``); NaN when nothing is trusted.

    Example:
        >>> risk_of([0, 4, 2], [0, 1, 0]), risk_of([0, 4, 2], [0, 1, 0], "token")
        (0.125, 0.16666666666666666)
    """
    n, e = np.asarray(n_trusted, dtype=float), np.asarray(n_errors, dtype=float)
    if risk == "token":
        return float(e.sum() / n.sum()) if n.sum() else float("nan")
    keep = n >= 1
    return float((e[keep] / n[keep]).mean()) if keep.any() else float("nan")


@dataclass(frozen=True)
class TrustCertificate:
    """A certified trust threshold of one deployed policy. ``tau is None``: nothing certified (trust nothing).

    ``steps`` lists every tau the walk tested, in order: tau, prompts, units (prompts entering the p-value), trusted
    tokens, errors, empirical risk, p-value and TPF on the calibration prompts.
    """

    tau: float | None
    alpha: float
    delta: float
    risk: str
    n_prompts: int
    steps: tuple = field(default_factory=tuple)
    max_trusted: int | None = None

    @property
    def tau_trust(self) -> float:
        """The value for ``tau_trust=``: the certified tau, or 1.0 (never trust) when none is."""
        return 1.0 if self.tau is None else self.tau

    def to_dict(self) -> dict:
        """JSON-safe dict (NaN -> None).

        Example:
            >>> TrustCertificate(None, 0.05, 0.1, "prompt", 0).to_dict()["tau"] is None
            True
        """
        def clean(v):
            return None if isinstance(v, float) and math.isnan(v) else v
        d = asdict(self)
        d["steps"] = [{k: clean(v) for k, v in s.items()} for s in self.steps]
        return {k: clean(v) for k, v in d.items()}


def certify_trust(table: pd.DataFrame, alpha: float = 0.05, delta: float = 0.1, risk: str = "prompt",
                  max_trusted: int | None = None, prompts=None, bets=BETS) -> TrustCertificate:
    """Learn-then-Test over the taus of ``table`` (``trust_runs.TABLE_COLUMNS``: one row per prompt and tau), walked
    from the largest down; ``prompts`` restricts it to those prompt ids (a calibration split).

    Every tau must have a row for every prompt (each was decoded once per prompt). Returns the most trusting tau
    whose ``risk`` is certified <= alpha with probability >= 1 - delta (module docstring).

    Example:
        >>> certify_trust(table, 0.05, 0.1).tau                                              # doctest: +SKIP
        0.9
    """
    if not (0 < alpha < 1 and 0 < delta < 1):
        raise ValueError(f"alpha and delta must lie in (0, 1); got alpha={alpha}, delta={delta}")
    if prompts is not None:
        table = table[table["prompt_id"].isin(set(prompts))]
    if table.empty:
        raise ValueError("no calibration rows: the table (or the chosen prompts) is empty")
    counts = table.groupby("tau")["prompt_id"].nunique()
    if counts.nunique() != 1 or table.duplicated(["tau", "prompt_id"]).any():
        raise ValueError("every tau needs exactly one row per prompt (decode each prompt once per tau)")
    n_prompts = int(counts.iloc[0])
    steps, certified = [], None
    for tau, t in sorted(table.groupby("tau"), key=lambda kv: -kv[0]):
        x = per_prompt_losses(t["n_trusted"], t["n_errors"], alpha, risk, max_trusted)
        p = betting_p_value(x, alpha, bets)
        steps.append({"tau": float(tau), "prompts": n_prompts, "units": int(x.size),
                      "n_trusted": int(t["n_trusted"].sum()), "n_errors": int(t["n_errors"].sum()),
                      "risk": risk_of(t["n_trusted"], t["n_errors"], risk), "p_value": p,
                      "tpf": float(t["new_tokens"].sum() / t["target_forwards"].sum())})
        if p > delta:
            break
        certified = float(tau)
    return TrustCertificate(certified, alpha, delta, risk, n_prompts, tuple(steps), max_trusted)
