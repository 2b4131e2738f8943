"""Does the trust certificate hold? Many random calibration/test splits of one table of deployed-policy runs.

The runs of every candidate tau on a pool of prompts (``trust_runs.trust_table``) are decoded once. Each split draws
``cal_frac`` of the prompts at random for calibration, certifies a tau on them (``certify_trust``) and judges the
statement on the other prompts: it fails when a tau was certified and its empirical risk on the held-out prompts
exceeds alpha. The held-out risk is itself an estimate from a finite set, so the share of failed splits overstates
the failure probability of a long-run certificate; the failure against the whole pool's risk (the population of
this finite pool, calibration prompts included) is reported beside it. Both should be <= delta.

Example:
    >>> out = validate_trust(table, alphas=(0.05, 0.1), delta=0.1, n_splits=200)         # doctest: +SKIP
    >>> print(validation_table(out))                                                    # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .trust_certificate import BETS, certify_trust, risk_of

__all__ = ["validate_trust", "validation_table"]


def _per_tau(table: pd.DataFrame, prompts, risk: str) -> dict[float, dict]:
    t = table[table["prompt_id"].isin(prompts)]
    return {float(tau): {"risk": risk_of(g["n_trusted"], g["n_errors"], risk),
                         "tpf": float(g["new_tokens"].sum() / g["target_forwards"].sum())}
            for tau, g in t.groupby("tau")}


def validate_trust(table: pd.DataFrame, alphas: Sequence[float] = (0.05, 0.1), delta: float = 0.1,
                   n_splits: int = 200, cal_frac: float = 0.5, seed: int = 0, risk: str = "prompt",
                   max_trusted: int | None = None, bets=BETS) -> dict:
    """Per alpha: the share of splits whose certified statement fails (on the held-out prompts, and against the
    whole pool), how often each tau is certified, and the held-out TPF and risk of the certified tau.

    Example:
        >>> validate_trust(table, (0.05,), n_splits=10)["alphas"]["0.05"]["violation_rate_heldout"]  # doctest: +SKIP
        0.0
    """
    prompts = np.array(sorted(table["prompt_id"].unique()))
    n_cal = int(round(cal_frac * prompts.size))
    if not 1 <= n_cal < prompts.size:
        raise ValueError(f"cal_frac={cal_frac} leaves no calibration or no test prompt of {prompts.size}")
    pool = _per_tau(table, prompts, risk)
    rng = np.random.default_rng(seed)
    splits = [rng.permutation(prompts) for _ in range(n_splits)]
    out = {"n_prompts": int(prompts.size), "n_cal": n_cal, "n_test": int(prompts.size - n_cal), "n_splits": n_splits,
           "delta": delta, "risk": risk, "taus": sorted(pool, reverse=True), "pool": pool, "alphas": {}}
    for alpha in alphas:
        fail_test = fail_pool = 0
        taus, tpf, test_risk = Counter(), [], []
        for perm in splits:
            cal, test = perm[:n_cal], perm[n_cal:]
            c = certify_trust(table, alpha, delta, risk, max_trusted, prompts=cal, bets=bets)
            taus[c.tau] += 1
            if c.tau is None:
                continue
            held = _per_tau(table, test, risk)[c.tau]
            r = held["risk"] if np.isfinite(held["risk"]) else 0.0  # nothing trusted on the test prompts: no error
            fail_test += r > alpha
            fail_pool += pool[c.tau]["risk"] > alpha
            tpf.append(held["tpf"])
            test_risk.append(r)
        oracle = None  # the most trusting tau the fixed sequence could reach if it knew the pool's risks
        for tau in out["taus"]:
            if not pool[tau]["risk"] <= alpha:
                break
            oracle = tau
        out["alphas"][str(alpha)] = {
            "alpha": alpha, "violation_rate_heldout": fail_test / n_splits, "violation_rate_pool": fail_pool / n_splits,
            "certified_rate": 1 - taus[None] / n_splits,
            "certified_taus": {("none" if k is None else f"{k:g}"): v for k, v in sorted(
                taus.items(), key=lambda kv: -1 if kv[0] is None else kv[0])},
            "mean_tpf_certified": float(np.mean(tpf)) if tpf else None,
            "mean_heldout_risk_certified": float(np.mean(test_risk)) if test_risk else None,
            "oracle_tau": oracle,
        }
    return out


def validation_table(out: dict, lossless_tpf: float | None = None) -> str:
    """The table of ``validate_trust``: one line per alpha, then the pool's risk and TPF per tau.

    Example:
        >>> validation_table(validate_trust(table)).splitlines()[0].split()[:2]              # doctest: +SKIP
        ['alpha', 'delta']
    """
    lines = [f"{out['n_splits']} random splits of {out['n_prompts']} prompts ({out['n_cal']} calibrate, "
             f"{out['n_test']} test); risk = {out['risk']}; certified tau: count over splits",
             f"{'alpha':>6} {'delta':>6} {'viol(test)':>10} {'viol(pool)':>10} {'certified':>9} {'tpf(cert)':>9} "
             f"{'risk(cert)':>10} {'oracle':>7}  certified taus"]
    for a in out["alphas"].values():
        tpf = "-" if a["mean_tpf_certified"] is None else f"{a['mean_tpf_certified']:.3f}"
        rk = "-" if a["mean_heldout_risk_certified"] is None else f"{a['mean_heldout_risk_certified']:.4f}"
        orc = "-" if a["oracle_tau"] is None else f"{a['oracle_tau']:g}"
        taus = ", ".join(f"{k}: {v}" for k, v in a["certified_taus"].items())
        lines.append(f"{a['alpha']:>6g} {out['delta']:>6g} {a['violation_rate_heldout']:>10.3f} "
                     f"{a['violation_rate_pool']:>10.3f} {a['certified_rate']:>9.2f} {tpf:>9} {rk:>10} {orc:>7}  "
                     f"{taus}")
    lines.append("pool (all prompts): " + "; ".join(f"tau {t:g}: risk {v['risk']:.4f}, tpf {v['tpf']:.3f}"
                                                    for t, v in sorted(out["pool"].items(), reverse=True)))
    if lossless_tpf is not None:
        lines.append(f"lossless (tau_trust = 1): tpf {lossless_tpf:.3f}")
    return "\n".join(lines)
