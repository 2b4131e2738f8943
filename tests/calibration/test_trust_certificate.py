"""The deployed-policy trust certificate: the betting p-value is valid at and beyond the null (also with zero errors
and whole prompts wrong), the walk is the documented fixed sequence, the issue's stress case certifies in at most
delta of repetitions, and an i.i.d. case with 100 prompts keeps its power."""

import json

import numpy as np
import pandas as pd
import pytest

from specpolicy.calibration import (
    TrustCertificate,
    betting_p_value,
    certify_trust,
    per_prompt_losses,
    risk_of,
    validate_trust,
    validation_table,
)

ALPHA, DELTA = 0.05, 0.1
TAUS = (0.95, 0.9, 0.8, 0.7, 0.6)


def _table(rng, n_prompts: int, drafts: int, p_bad: float = 0.0, power: int | None = None) -> pd.DataFrame:
    """Per prompt ``drafts`` scores ~ U(0, 1); at tau the policy trusts the drafts with score >= tau. A bad prompt
    (probability ``p_bad``) is wrong on every trusted draft; otherwise a draft is wrong with prob (1 - s)^power."""
    score = rng.uniform(size=(n_prompts, drafts))  # [P, D]
    bad = rng.uniform(size=n_prompts) < p_bad  # [P]
    wrong = bad[:, None] | ((rng.uniform(size=score.shape) < (1 - score) ** power) if power else False)
    parts = []
    for tau in TAUS:
        trusted = score >= tau  # [P, D]
        n, e = trusted.sum(1), (trusted & wrong).sum(1)  # [P]
        parts.append(pd.DataFrame({"prompt_id": [f"p{i}" for i in range(n_prompts)], "tau": tau, "n_trusted": n,
                                   "n_errors": e, "new_tokens": drafts, "target_forwards": drafts - n // 2}))
    return pd.concat(parts, ignore_index=True)


def test_p_value_is_valid_at_the_null_with_whole_prompts_wrong():
    """2000 draws of 60 prompts whose error share is 1 w.p. alpha and 0 otherwise (risk exactly alpha, the hardest
    case for a [0, 1] bound): P(p <= delta) <= delta. Seen: ~0.045."""
    rng = np.random.default_rng(0)
    x = (rng.uniform(size=(2000, 60)) < ALPHA).astype(float)
    rejected = np.mean([betting_p_value(row, ALPHA) <= DELTA for row in x])
    assert rejected <= DELTA
    assert betting_p_value(np.zeros(53), ALPHA) <= DELTA < betting_p_value(np.zeros(52), ALPHA)  # zero errors
    assert betting_p_value([], ALPHA) == 1.0 and betting_p_value(np.ones(5), ALPHA) == 1.0


def test_stress_case_certifies_in_at_most_delta_of_repetitions():
    """The issue's case: 30 prompts x 50 drafts, 6% of prompts entirely wrong, risk 0.06 > alpha at every tau."""
    rng = np.random.default_rng(1)
    certified = 0
    for _ in range(200):
        table = _table(rng, 30, 50, p_bad=0.06)
        certified += certify_trust(table, ALPHA, DELTA).tau is not None
        certified += certify_trust(table, ALPHA, DELTA, risk="token", max_trusted=50).tau is not None
    assert certified / 400 <= DELTA


def test_power_on_an_iid_case_with_100_prompts():
    """100 prompts x 50 drafts, errors i.i.d. with P(error | s) = (1 - s)^2: risk(tau) = (1 - tau)^2 / 3 <= 0.05
    iff tau >= 0.61, so the oracle reaches tau = 0.7 on this grid (risk 0.03, 30% of drafts trusted).

    Seen: a tau certified in every repetition, 0.8 (risk 0.013, 20% trusted) in ~90%, 0.7 in ~3%. Without a bound on
    how wrong one prompt can be, 100 prompts cannot tell a risk of 0.03 from 0.05 at delta = 0.1 (a [0, 1] loss
    per prompt caps every bet at 1 / (1 - alpha)); error-free taus certify from 53 prompts on."""
    rng = np.random.default_rng(2)
    taus = [certify_trust(_table(rng, 100, 50, power=2), ALPHA, DELTA).tau for _ in range(40)]
    assert np.mean([t is not None for t in taus]) >= 0.95
    assert np.mean([t is not None and t <= 0.8 for t in taus]) >= 0.75
    assert all(t is None or t >= 0.7 for t in taus)  # tau 0.6 has risk 0.053 > alpha


def test_walk_stops_at_the_first_failure_and_reports_every_tested_tau():
    """tau 0.95 and 0.9 are error-free on 80 prompts, 0.8 is 20% wrong, 0.7 error-free again: the fixed sequence
    certifies 0.9 and never tests 0.7."""
    rows = []
    for tau, err in ((0.95, 0), (0.9, 0), (0.8, 1), (0.7, 0)):
        rows += [(f"p{i}", tau, 5, err, 40, 20) for i in range(80)]
    table = pd.DataFrame(rows, columns=["prompt_id", "tau", "n_trusted", "n_errors", "new_tokens", "target_forwards"])
    c = certify_trust(table, ALPHA, DELTA)
    assert c.tau == 0.9 and c.tau_trust == 0.9 and [s["tau"] for s in c.steps] == [0.95, 0.9, 0.8]
    assert c.steps[-1]["p_value"] > DELTA >= c.steps[1]["p_value"] and c.steps[2]["risk"] == pytest.approx(0.2)
    assert c.steps[0]["tpf"] == pytest.approx(2.0) and c.n_prompts == 80
    assert json.dumps(c.to_dict(), allow_nan=False)
    few = certify_trust(table, ALPHA, DELTA, prompts=[f"p{i}" for i in range(40)])  # 40 error-free: too few
    assert few.tau is None and few.tau_trust == 1.0 and len(few.steps) == 1


def test_losses_and_risks_follow_their_definitions():
    assert per_prompt_losses([0, 4, 2], [0, 1, 0], ALPHA).tolist() == [0.25, 0.0]
    x = per_prompt_losses([0, 10], [0, 10], ALPHA, risk="token", max_trusted=10)
    assert x.tolist() == [ALPHA, 1.0]  # nothing trusted: exactly at the null; all wrong at the bound: 1
    assert risk_of([2, 8], [1, 0]) == pytest.approx(0.25) and risk_of([2, 8], [1, 0], "token") == pytest.approx(0.1)
    assert np.isnan(risk_of([0], [0]))
    with pytest.raises(ValueError, match="max_trusted"):
        per_prompt_losses([3], [0], ALPHA, risk="token")
    with pytest.raises(ValueError, match="one row per prompt"):
        certify_trust(pd.DataFrame({"prompt_id": ["a", "a"], "tau": [0.9, 0.9], "n_trusted": [1, 1],
                                    "n_errors": [0, 0], "new_tokens": [1, 1], "target_forwards": [1, 1]}))
    assert TrustCertificate(None, ALPHA, DELTA, "prompt", 0).to_dict()["tau"] is None


def test_validation_over_splits_counts_failures_against_the_held_out_risk():
    """A pool where tau 0.95 is clean and 0.9 is 30% wrong: every split certifies 0.95 and none fails."""
    rows = []
    for tau, err in ((0.95, 0), (0.9, 3)):
        rows += [(f"p{i}", tau, 10, err, 40, 20) for i in range(240)]
    table = pd.DataFrame(rows, columns=["prompt_id", "tau", "n_trusted", "n_errors", "new_tokens", "target_forwards"])
    out = validate_trust(table, (0.05, 0.1), DELTA, n_splits=20)
    a = out["alphas"]["0.05"]
    assert a["certified_taus"] == {"0.95": 20} and a["violation_rate_heldout"] == 0 and a["oracle_tau"] == 0.95
    assert out["n_cal"] == out["n_test"] == 120 and a["mean_tpf_certified"] == pytest.approx(2.0)
    assert "20 random splits of 240 prompts" in validation_table(out, lossless_tpf=1.5)
