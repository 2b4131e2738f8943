"""Lossy quality in the run summary: errors per trusted / relaxed / committed token, first error, the TV bound,
the NLL delta against ar with a paired interval, and the lossy table that ``experiments.run`` prints."""

import json

import pytest

from specpolicy.metrics import lossy_table, summarise_run


def rec(pid, policy, tokens, nll, trusted=0, t_rej=0, relaxed=0, r_rej=0, first=None, tv=None):
    n = len(tokens)
    return {"prompt_id": pid, "policy": policy, "token_ids": list(tokens), "nll_sum": nll, "nll_tokens": n,
            "stats": {"new_tokens": n, "target_forwards": max(1, n // 2), "wall_s": 1.0, "steps": 1, "drafted": 2,
                      "lossy_tokens": trusted + relaxed, "shadow_rejects": t_rej + r_rej, "trusted_tokens": trusted,
                      "relaxed_tokens": relaxed, "trusted_rejects": t_rej, "relaxed_rejects": r_rej,
                      "first_error": n if first is None else first, "lossy_tv_bound": float(t_rej + r_rej
                                                                                              if tv is None else tv)}}


def _records():
    out = []
    for i in range(10):
        out.append(rec(f"p{i}", "ar", [1, 2, 3, 4], nll=4.0))
        out.append(rec(f"p{i}", "threshold", [1, 2, 9, 4], nll=6.0, trusted=4, t_rej=1 if i < 5 else 0,
                       first=2 if i < 5 else None, tv=0.5 if i < 5 else 0.0))
    return out


def test_errors_per_trusted_token_first_error_tv_and_nll_delta():
    s = summarise_run(_records(), reference="ar", n_resamples=200,
                      policies={"ar": {"lossless": True}, "threshold": {"lossless": False}})
    t = s["policies"]["threshold"]
    assert t["errors_per_trusted_token"]["value"] == pytest.approx(5 / 40)
    assert t["errors_per_committed_token"]["value"] == pytest.approx(t["lossy_error_rate"]["value"]) == 5 / 40
    assert t["errors_per_relaxed_token"]["value"] is None  # nothing relaxed: 0 / 0
    assert t["first_error"]["value"] == pytest.approx((5 * 2 + 5 * 4) / 10)
    assert t["lossy_tv_bound"]["value"] == pytest.approx(2.5 / 40)
    d = t["nll_delta_vs_ar"]
    assert d["value"] == pytest.approx(0.5) and d["ci95"][0] == pytest.approx(0.5) == d["ci95"][1]
    assert s["policies"]["ar"]["nll_delta_vs_ar"]["value"] == 0.0
    assert json.dumps(s, allow_nan=False)
    table = lossy_table(s)
    assert table.splitlines()[1].startswith("threshold") and "err/trusted" in table and "+0.500" in table
    assert [ln.split()[0] for ln in table.splitlines()[1:-1]] == ["threshold"]  # lossless policies are left out


def test_old_records_without_the_new_statistics_give_none():
    old = [{**r, "stats": {k: v for k, v in r["stats"].items() if k not in ("trusted_rejects", "first_error")}}
           for r in _records()]
    t = summarise_run(old, reference="ar", n_resamples=10)["policies"]["threshold"]
    assert t["errors_per_trusted_token"] is None and t["first_error"] is None
    assert t["lossy_error_rate"]["value"] == pytest.approx(5 / 40)  # the existing figure is unchanged
